// chorus::Node in-process, and its RPC server driven by the C++ client in
// the same process: every operation, validation, watch, limits, shutdown.
#include <doctest/doctest.h>

#include <capnp/message.h>
#include <kj/async.h>
#include <kj/timer.h>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "api/client.h"
#include "api/metrics.h"
#include "api/node.h"
#include "api/wire.h"
#include "cluster/json.h"
#include "gossip/keyring.h"
#include "http-client.h"
#include "support/results.h"
#include "temp-dir.h"

using chorus::ErrorCode;
using chorus::Node;
using chorus::WriteOp;
using chorus::WriteRequest;
using chorus::test::HttpAnswer;
using chorus::test::HttpConnection;
using chorus::test::Json;
using chorus::test::TempDir;
using namespace std::chrono_literals;
using chorus::test::failure;

namespace {

std::unique_ptr<Node> openNode(const std::string& dir, bool rpc = false,
                               chorus::RpcLimits limits = {}) {
  Node::Options o;
  o.nodeId = "test-node";
  o.dataDir = dir;
  if (rpc) o.listen = "127.0.0.1:0";
  o.rpc = limits;
  o.rpc.noAuth = true;  // tokens: test/api/rpc-auth-test.cpp
  auto node = Node::open(std::move(o));
  REQUIRE_MESSAGE(node.ok(), node.error().toString());
  return std::move(node).value();
}

}  // namespace

TEST_CASE("embedded: every write operation, then reads") {
  TempDir tmp;
  auto node = openNode(tmp.path());

  auto put = node->put("p1", "ann", 4, "Solid", "Does the job");
  REQUIRE(put.ok());
  CHECK(put->rating == 4);
  CHECK(put->title == "Solid");
  CHECK(put->editedAtMillis > 0);
  REQUIRE(node->put("p1", "bob", 2, "Meh", "").ok());

  CHECK(node->vote("p1", "ann", "bob")->helpful == 1);
  CHECK(node->vote("p1", "ann", "bob")->helpful == 1);  // a retried vote counts once
  CHECK(node->vote("p1", "ann", "cy")->helpful == 2);
  CHECK(node->unvote("p1", "ann", "cy")->helpful == 1);
  CHECK(node->tag("p1", "ann", "durable")->tags == std::vector<std::string>{"durable"});
  CHECK(node->tag("p1", "ann", "cheap")->tags.size() == 2);
  CHECK(node->untag("p1", "ann", "cheap")->tags == std::vector<std::string>{"durable"});
  auto mod = node->moderate("p1", "bob", chorus::crdt::Visibility::kFlagged, "spam?");
  REQUIRE(mod.ok());
  CHECK(mod->visibility == chorus::crdt::Visibility::kFlagged);
  CHECK(mod->moderationReason == "spam?");
  CHECK(node->reply("p1", "ann", "Thanks!")->reply == "Thanks!");

  auto got = node->get("p1", "ann");
  REQUIRE(got.ok());
  CHECK(got->body == "Does the job");
  CHECK(got->helpful == 1);
  CHECK(got->reply == "Thanks!");

  auto summary = node->summary("p1");
  REQUIRE(summary.ok());
  CHECK(summary->count == 2);
  CHECK(summary->histogram[3] == 1);
  CHECK(summary->histogram[1] == 1);
  CHECK(summary->average() == doctest::Approx(3.0));

  auto byRating = node->list("p1", chorus::storage::Order::kHighestRating, "", 10);
  REQUIRE(byRating.ok());
  REQUIRE(byRating->reviews.size() == 2);
  CHECK(byRating->reviews[0].author == "ann");
  auto byAuthor = node->byAuthor("ann", "", 10);
  REQUIRE(byAuthor.ok());
  REQUIRE(byAuthor->reviews.size() == 1);
  CHECK(byAuthor->reviews[0].product == "p1");

  REQUIRE(node->erase("p1", "bob").ok());
  CHECK(failure(node->get("p1", "bob")).code == ErrorCode::kNotFound);
  CHECK(node->summary("p1")->count == 1);

  auto status = node->status();
  REQUIRE(status.ok());
  CHECK(status->nodeId == "test-node");
  CHECK(status->keyCount == 2);  // the tombstone is a key too
  CHECK(status->apiVersion == chorus::api::kApiVersion);
}

TEST_CASE("embedded: errors are values naming the field; nothing is stored") {
  TempDir tmp;
  auto node = openNode(tmp.path());
  auto bad = node->put("p1", "ann", 6, "t", "b");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == ErrorCode::kInvalidArgument);
  CHECK(bad.error().message.rfind("rating: ", 0) == 0);
  CHECK(failure(node->put("p 1", "ann", 5, "", "")).message.rfind("product: ", 0) == 0);
  CHECK(failure(node->put("p1", "ann", 5, std::string(201, 'x'), "")).message.rfind("title: ", 0) ==
        0);
  CHECK(failure(node->put("p1", "ann", 5, "", "\xc3(")).message.rfind("body: ", 0) == 0);
  CHECK(failure(node->get("p1", "ann")).code == ErrorCode::kNotFound);
  CHECK(node->status()->keyCount == 0);

  CHECK(failure(node->vote("p1", "nobody", "bob")).code == ErrorCode::kNotFound);
  CHECK(failure(node->erase("p1", "nobody")).code == ErrorCode::kNotFound);
  REQUIRE(node->put("p1", "ann", 5, "", "").ok());
  auto self = node->vote("p1", "ann", "ann");
  REQUIRE_FALSE(self.ok());
  CHECK(self.error().code == ErrorCode::kForbidden);
  CHECK(node->get("p1", "ann")->helpful == 0);
}

TEST_CASE("embedded: watchers see committed changes of their product only") {
  TempDir tmp;
  auto node = openNode(tmp.path());
  std::mutex m;
  std::vector<chorus::Change> seen;
  auto id = node->watch("p1", [&](const chorus::Change& c) {
    std::lock_guard lock(m);
    seen.push_back(c);
  });
  REQUIRE(id.ok());
  REQUIRE(node->put("p1", "ann", 5, "a", "").ok());
  REQUIRE(node->put("p2", "ann", 5, "b", "").ok());
  REQUIRE(node->vote("p1", "ann", "bob").ok());
  node->unwatch(*id);
  REQUIRE(node->put("p1", "cy", 3, "c", "").ok());
  std::lock_guard lock(m);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].op == "put");
  CHECK(seen[0].review.title == "a");
  CHECK(seen[1].op == "vote");
  CHECK(seen[1].review.helpful == 1);
}

TEST_CASE("embedded: shutdown commits accepted writes and refuses new ones") {
  TempDir tmp;
  {
    auto node = openNode(tmp.path());
    std::atomic<int> acked{0};
    std::atomic<int> done{0};
    for (int i = 0; i < 200; ++i) {
      WriteRequest r;
      r.op = WriteOp::kPut;
      r.product = "p1";
      r.author = "a" + std::to_string(i);
      r.rating = 1 + i % 5;
      node->write(r, [&](chorus::Result<chorus::ReviewView> res) {
        if (res.ok()) ++acked;
        ++done;
      });
    }
    node->shutdown();
    CHECK(done == 200);
    CHECK(acked == 200);
    auto refused = node->put("p1", "late", 5, "", "");
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().code == ErrorCode::kUnavailable);
  }
  auto reopened = openNode(tmp.path());
  CHECK(reopened->summary("p1")->count == 200);
  CHECK(failure(reopened->get("p1", "late")).code == ErrorCode::kNotFound);
}

TEST_CASE("rpc in-process: client round trip, structured errors, watch") {
  TempDir tmp;
  auto node = openNode(tmp.path(), true);
  auto client = chorus::api::Client::connect(node->rpcAddress());
  REQUIRE_MESSAGE(client.ok(), client.error().toString());
  auto& c = **client;

  WriteRequest put;
  put.op = WriteOp::kPut;
  put.product = "p1";
  put.author = "ann";
  put.rating = 5;
  put.title = "Über";
  REQUIRE(c.write(put).ok());
  CHECK(node->get("p1", "ann")->title == "Über");  // same store

  // The raw error carries code and field separately.
  auto req = c.reviews().putRequest();
  req.setProduct("p1");
  req.setAuthor("bob");
  req.setRating(0);
  auto resp = req.send().wait(c.waitScope());
  REQUIRE(resp.hasError());
  CHECK(resp.getError().getCode() == chorus::api::wire::ErrorCode::INVALID_ARGUMENT);
  CHECK(resp.getError().getField() == "rating");
  CHECK_FALSE(resp.hasReview());
  CHECK(failure(node->get("p1", "bob")).code == ErrorCode::kNotFound);

  // Watch: changes made through the embedded API reach the RPC observer.
  std::vector<chorus::Change> changes;
  std::thread writer;
  auto st = c.watch(
      "p1",
      [&](const chorus::Change& ch) {
        changes.push_back(ch);
        return changes.size() < 3;
      },
      10s,
      [&] {
        writer = std::thread([&] {
          REQUIRE(node->vote("p1", "ann", "bob").ok());
          REQUIRE(node->tag("p1", "ann", "gift").ok());
          REQUIRE(node->erase("p1", "ann").ok());
        });
      });
  writer.join();
  REQUIRE(st.ok());
  REQUIRE(changes.size() == 3);
  CHECK(changes[0].op == "vote");
  CHECK(changes[1].op == "tag");
  CHECK(changes[2].op == "delete");
  CHECK(changes[2].review.deleted);
  CHECK(changes[2].review.title.empty());  // erasure: the text is gone
  CHECK(node->metrics().calls(chorus::api::Metrics::kWatch) == 1);
}

TEST_CASE("wire: a change's opCode is its op as an enum, for every op") {
  using chorus::api::wire::ChangeOp;
  const std::pair<WriteOp, ChangeOp> ops[] = {
      {WriteOp::kPut, ChangeOp::PUT},           {WriteOp::kDelete, ChangeOp::ERASE},
      {WriteOp::kVote, ChangeOp::VOTE},         {WriteOp::kUnvote, ChangeOp::UNVOTE},
      {WriteOp::kTag, ChangeOp::TAG},           {WriteOp::kUntag, ChangeOp::UNTAG},
      {WriteOp::kModerate, ChangeOp::MODERATE}, {WriteOp::kReply, ChangeOp::REPLY}};
  for (const auto& [op, code] : ops) {
    CAPTURE(chorus::writeOpName(op));
    capnp::MallocMessageBuilder message;
    auto b = message.initRoot<chorus::api::wire::Change>();
    chorus::api::toWire(chorus::Change{chorus::writeOpName(op), {}, 0}, b);
    CHECK(b.asReader().getOpCode() == code);
    CHECK(std::string(b.asReader().getOp().cStr()) == chorus::writeOpName(op));
  }
  CHECK(chorus::api::changeOpOf("merge") == ChangeOp::MERGE);
}

TEST_CASE("rpc in-process: too many calls in flight get `overloaded`") {
  TempDir tmp;
  chorus::RpcLimits limits;
  limits.maxInFlightPerConnection = 4;
  auto node = openNode(tmp.path(), true, limits);
  auto client = chorus::api::Client::connect(node->rpcAddress());
  REQUIRE(client.ok());
  auto& c = **client;
  auto calls = kj::heapArrayBuilder<kj::Promise<void>>(200);
  int ok = 0, overloaded = 0;
  for (int i = 0; i < 200; ++i) {
    auto req = c.reviews().putRequest();
    req.setProduct("p1");
    req.setAuthor("a" + std::to_string(i));
    req.setRating(3);
    calls.add(req.send().then([&](auto resp) {
      if (!resp.hasError()) {
        ++ok;
      } else if (resp.getError().getCode() == chorus::api::wire::ErrorCode::OVERLOADED) {
        ++overloaded;
      }
    }));
  }
  kj::joinPromises(calls.finish()).wait(c.waitScope());
  CHECK(ok + overloaded == 200);
  CHECK(ok >= 4);
  CHECK(overloaded > 0);
  CHECK(node->summary("p1")->count == uint64_t(ok));  // refused calls stored nothing
}

TEST_CASE("rpc in-process: oversized messages refused, idle connections closed") {
  TempDir tmp;
  chorus::RpcLimits limits;
  limits.maxMessageBytes = 64 * 1024;
  limits.idleTimeout = 200ms;
  auto node = openNode(tmp.path(), true, limits);
  {
    auto client = chorus::api::Client::connect(node->rpcAddress());
    REQUIRE(client.ok());
    WriteRequest big;
    big.op = WriteOp::kPut;
    big.product = "p1";
    big.author = "ann";
    big.rating = 5;
    big.body = std::string(100 * 1024, 'x');  // over the message limit
    auto r = (*client)->write(big);
    REQUIRE_FALSE(r.ok());
    CHECK(failure(node->get("p1", "ann")).code == ErrorCode::kNotFound);
  }
  auto client = chorus::api::Client::connect(node->rpcAddress());
  REQUIRE(client.ok());
  REQUIRE((*client)->status().ok());
  std::this_thread::sleep_for(700ms);
  auto after = (*client)->status();
  REQUIRE_FALSE(after.ok());
  CHECK(after.error().code == ErrorCode::kUnavailable);
}

TEST_CASE("rpc in-process: concurrent clients on threads") {
  TempDir tmp;
  auto node = openNode(tmp.path(), true);
  constexpr int kClients = 4, kEach = 50;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      auto client = chorus::api::Client::connect(node->rpcAddress());
      if (!client.ok()) {
        failures += kEach;
        return;
      }
      for (int i = 0; i < kEach; ++i) {
        WriteRequest r;
        r.op = WriteOp::kPut;
        r.product = "p1";
        r.author = "c" + std::to_string(t) + "-" + std::to_string(i);
        r.rating = 1 + (i % 5);
        if (!(*client)->write(r).ok()) ++failures;
        if (!(*client)->get("p1", r.author).ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failures == 0);
  CHECK(node->summary("p1")->count == kClients * kEach);
}

TEST_CASE("cluster: a node without one answers unavailable, in-process and over RPC") {
  TempDir tmp;
  auto node = openNode(tmp.path(), true);
  CHECK(node->cluster() == nullptr);
  CHECK(node->status()->gossipAddress.empty());
  for (const auto& error :
       {failure(node->clusterView()), failure(node->partition({"n2"})), failure(node->heal()),
        failure(node->leave(1s)), failure(node->remove("n2"))}) {
    CHECK(error.code == ErrorCode::kUnavailable);
    CHECK(error.message.find("--gossip-listen") != std::string::npos);
  }

  auto client = chorus::api::Client::connect(node->rpcAddress());
  REQUIRE(client.ok());
  auto& c = **client;
  CHECK(failure(c.cluster()).code == ErrorCode::kUnavailable);
  CHECK(failure(c.heal()).code == ErrorCode::kUnavailable);
  auto partition = c.partition({"n2"});
  REQUIRE_FALSE(partition.ok());
  CHECK(partition.error().code == ErrorCode::kUnavailable);
  CHECK(partition.error().message.find("--gossip-listen") != std::string::npos);
  // Raw: the wire code, and no view.
  auto resp = c.admin().clusterRequest().send().wait(c.waitScope());
  REQUIRE(resp.hasError());
  CHECK(resp.getError().getCode() == chorus::api::wire::ErrorCode::UNAVAILABLE);
  CHECK_FALSE(resp.hasView());
  CHECK(node->metrics().calls(chorus::api::Metrics::kCluster) == 2);
  // leave and remove: unavailable too, with the same hint.
  for (const auto& error : {failure(c.leave(1s)), failure(c.remove("n2"))}) {
    CHECK(error.code == ErrorCode::kUnavailable);
    CHECK(error.message.find("--gossip-listen") != std::string::npos);
  }
  auto leave = c.admin().leaveRequest().send().wait(c.waitScope());
  REQUIRE(leave.hasError());
  CHECK(leave.getError().getCode() == chorus::api::wire::ErrorCode::UNAVAILABLE);
  CHECK(node->metrics().calls(chorus::api::Metrics::kLeave) == 2);
  CHECK(node->metrics().errors(chorus::api::Metrics::kRemove) == 1);
  // Without a cluster, writes are not refused for being out of one.
  CHECK_FALSE(node->outOfCluster());
  CHECK(node->put("p1", "ann", 5, "t", "").ok());
}

namespace {

std::unique_ptr<Node> openClustered(const std::string& dir, const std::string& id,
                                    std::vector<std::string> seeds = {},
                                    std::string region = "default",
                                    const std::function<void(Node::Options&)>& tweak = {}) {
  Node::Options o;
  o.nodeId = id;
  o.dataDir = dir;
  o.listen = "127.0.0.1:0";
  o.rpc.noAuth = true;
  o.store.unsafeNoSync = true;
  o.cluster.listen = "127.0.0.1:0";
  static const std::string key = chorus::gossip::generateClusterKey();  // one cluster per process
  o.cluster.keys = {key};
  o.cluster.seeds = std::move(seeds);
  o.cluster.region = std::move(region);
  o.cluster.antiEntropyInterval = 100ms;
  o.cluster.probeInterval = 200ms;
  o.cluster.gossipInterval = 50ms;
  if (tweak) tweak(o);
  auto node = Node::open(std::move(o));
  REQUIRE_MESSAGE(node.ok(), node.error().toString());
  return std::move(node).value();
}

}  // namespace

TEST_CASE("cluster: Admin partition/heal/cluster on a clustered node") {
  TempDir tmp;
  auto node = openClustered(tmp.sub("a"), "a");
  REQUIRE(node->cluster() != nullptr);
  CHECK(node->status()->gossipAddress == node->cluster()->address());

  auto client = chorus::api::Client::connect(node->rpcAddress());
  REQUIRE(client.ok());
  auto& c = **client;
  REQUIRE(node->put("p1", "ann", 5, "t", "").ok());
  auto view = c.cluster();
  REQUIRE_MESSAGE(view.ok(), view.error().toString());
  CHECK(view->nodeId == "a");
  CHECK(view->rpcAddress == node->rpcAddress());
  CHECK(view->gossipAddress == node->cluster()->address());
  CHECK(view->keyCount == 1);
  CHECK(view->merkleRoot == node->status()->merkleRoot);
  CHECK(view->members.empty());
  CHECK(view->nowUnixMillis > 0);

  // Validation: this node's own id, an empty id; nothing partitioned.
  auto self = c.partition({"a"});
  REQUIRE_FALSE(self.ok());
  CHECK(self.error().code == ErrorCode::kInvalidArgument);
  CHECK(self.error().message.rfind("peers: ", 0) == 0);
  CHECK(failure(c.partition({"b", ""})).code == ErrorCode::kInvalidArgument);
  CHECK(c.cluster()->partitioned.empty());

  // Ids not (yet) members are kept.
  REQUIRE(c.partition({"b", "c"}).ok());
  CHECK(c.cluster()->partitioned == std::vector<std::string>{"b", "c"});
  REQUIRE(c.heal().ok());
  CHECK(c.cluster()->partitioned.empty());
}

TEST_CASE("cluster: a peer's write reaches watchers as a merge") {
  TempDir tmp;
  auto a = openClustered(tmp.sub("a"), "a");
  auto b = openClustered(tmp.sub("b"), "b", {a->cluster()->address()});
  std::mutex m;
  std::condition_variable cv;
  std::vector<chorus::Change> seen;
  auto id = b->watch("p1", [&](const chorus::Change& c) {
    std::lock_guard lock(m);
    seen.push_back(c);
    cv.notify_all();
  });
  REQUIRE(id.ok());
  REQUIRE(a->put("p1", "ann", 4, "from a", "").ok());
  {
    std::unique_lock lock(m);
    REQUIRE(cv.wait_for(lock, 10s, [&] { return !seen.empty(); }));
    CHECK(seen[0].op == "merge");
    CHECK(seen[0].review.title == "from a");
  }
  b->unwatch(*id);
  CHECK(b->get("p1", "ann")->title == "from a");
  CHECK(b->mergesApplied() >= 1);
  // The merge is in b's change feed, numbered by b (b's only change).
  auto feed = b->changes(0, 10, true);
  REQUIRE(feed.ok());
  REQUIRE(feed->changes.size() == 1);
  CHECK(feed->changes[0].seq == 1);
  CHECK(feed->changes[0].author == "ann");
  CHECK(feed->changes[0].review->title == "from a");
  CHECK(feed->replicaId == b->store().replicaId());
  CHECK(feed->replicaId != a->store().replicaId());
  // b learnt a's RPC address through gossip.
  auto view = b->clusterView();
  REQUIRE(view.ok());
  REQUIRE(view->members.size() == 1);
  CHECK(view->members[0].nodeId == "a");
  CHECK(view->members[0].rpcAddress == a->rpcAddress());
}

TEST_CASE("metrics: gossip counters and members by state") {
  chorus::gossip::ClusterStats s;
  s.framesIn = 7;
  s.malformedFrames = 2;
  s.deltasDropped = 3;
  std::vector<chorus::gossip::MemberInfo> members(3);
  members[0].state = chorus::gossip::PeerState::kAlive;
  members[1].state = chorus::gossip::PeerState::kDead;
  members[1].partitioned = true;
  members[2].state = chorus::gossip::PeerState::kAlive;
  s.probes = 11;
  s.probesFailed = 2;
  s.activePeers = 5;
  s.connections = 6;
  s.versionRefused = 1;
  s.grafts = 3;
  members.emplace_back().state = chorus::gossip::PeerState::kLeft;
  auto text = chorus::api::Metrics::renderCluster(s, members, 4, "eu-west");
  CHECK(text.find("chorus_gossip_frames_total{direction=\"in\"} 7\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_members{state=\"left\"} 1\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_members{state=\"suspect\"} 0\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_region_info{region=\"eu-west\"} 1\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_probes_total 11\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_probes_failed_total 2\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_active_peers 5\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_connections 6\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_version_refused_total 1\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_grafts_total 3\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_refutations_total 0\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_broadcast_duplicates_total 0\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_push_pulls_total 0\n") != std::string::npos);
  CHECK(text.find("# TYPE chorus_gossip_active_peers gauge\n") != std::string::npos);
  CHECK(text.find("# TYPE chorus_gossip_probes_total counter\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_malformed_frames_total 2\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_deltas_total{outcome=\"dropped\"} 3\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_merges_refused_total 4\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_members{state=\"alive\"} 2\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_members{state=\"dead\"} 1\n") != std::string::npos);
  CHECK(text.find("chorus_gossip_partitioned_members 1\n") != std::string::npos);
}

TEST_CASE("cluster: a bad region is refused at open, naming the field") {
  TempDir tmp;
  for (std::string bad : {std::string(), std::string("us east"), std::string(65, 'r')}) {
    CAPTURE(bad);
    Node::Options o;
    o.nodeId = "a";
    o.dataDir = tmp.sub("a");
    o.cluster.listen = "127.0.0.1:0";
    o.cluster.keys = {chorus::gossip::generateClusterKey()};
    o.cluster.region = bad;
    auto node = Node::open(std::move(o));
    REQUIRE_FALSE(node.ok());
    CHECK(node.error().code == ErrorCode::kInvalidArgument);
    CHECK(node.error().message.rfind("region: ", 0) == 0);
  }
  // Without a cluster the region is not used, so not checked.
  Node::Options o;
  o.nodeId = "b";
  o.dataDir = tmp.sub("b");
  o.cluster.region = "";
  CHECK(Node::open(std::move(o)).ok());
}

TEST_CASE("cluster: Admin.remove and Admin.leave map their errors to the API's codes") {
  TempDir tmp;
  auto node = openClustered(tmp.sub("a"), "a", {}, "eu-west");
  CHECK(node->status()->region == "eu-west");
  auto client = chorus::api::Client::connect(node->rpcAddress());
  REQUIRE(client.ok());
  auto& c = **client;
  auto view = c.cluster();
  REQUIRE(view.ok());
  CHECK(view->region == "eu-west");
  CHECK(view->state == chorus::gossip::PeerState::kAlive);
  CHECK_FALSE(view->removed);
  CHECK(c.status()->region == "eu-west");

  // An unknown node: notFound, on the wire too.
  auto unknown = c.remove("nobody");
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().code == ErrorCode::kNotFound);
  CHECK(unknown.error().message.find("'nobody'") != std::string::npos);
  auto q = c.admin().removeRequest();
  q.setNode("nobody");
  auto raw = q.send().wait(c.waitScope());
  REQUIRE(raw.hasError());
  CHECK(raw.getError().getCode() == chorus::api::wire::ErrorCode::NOT_FOUND);
  // This node itself, an empty or oversized id: invalidArgument, field "node".
  for (std::string bad : {std::string("a"), std::string(), std::string(129, 'x')}) {
    CAPTURE(bad);
    auto q = c.admin().removeRequest();
    q.setNode(bad);
    auto r = q.send().wait(c.waitScope());
    REQUIRE(r.hasError());
    CHECK(r.getError().getCode() == chorus::api::wire::ErrorCode::INVALID_ARGUMENT);
    CHECK(std::string(r.getError().getField().cStr()) == "node");
  }
  CHECK(failure(c.remove("a")).message.find("leave") != std::string::npos);
  // leave: a timeout past 5 min is refused before anything happens.
  auto lq = c.admin().leaveRequest();
  lq.setTimeoutMillis(300'001);
  auto tooLong = lq.send().wait(c.waitScope());
  REQUIRE(tooLong.hasError());
  CHECK(tooLong.getError().getCode() == chorus::api::wire::ErrorCode::INVALID_ARGUMENT);
  CHECK(std::string(tooLong.getError().getField().cStr()) == "timeoutMillis");
  CHECK(failure(c.leave(0ms)).code == ErrorCode::kInvalidArgument);  // checked by the client
  CHECK(failure(node->leave(0ms)).code == ErrorCode::kInvalidArgument);
  CHECK(failure(node->leave(6min)).code == ErrorCode::kInvalidArgument);
  // Still a member: writes work.
  CHECK_FALSE(node->outOfCluster());
  CHECK(node->put("p1", "ann", 5, "t", "").ok());
}

namespace {
// Waits up to 10 s for `ready`.
bool eventually(const std::function<bool()>& ready) {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (ready()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return ready();
}

std::optional<chorus::gossip::MemberInfo> memberOf(Node& node, const std::string& id) {
  auto view = node.clusterView();
  if (!view.ok()) return std::nullopt;
  for (const auto& m : view->members) {
    if (m.nodeId == id) return m;
  }
  return std::nullopt;
}
}  // namespace

TEST_CASE("cluster: leave hands the data to a peer, then the node refuses writes") {
  TempDir tmp;
  auto a = openClustered(tmp.sub("a"), "a");
  auto b = openClustered(tmp.sub("b"), "b", {a->cluster()->address()});
  REQUIRE(eventually([&] {
    auto m = memberOf(*a, "b");
    return m && m->state == chorus::gossip::PeerState::kAlive;
  }));
  REQUIRE(a->put("p1", "ann", 5, "from a", "").ok());
  auto client = chorus::api::Client::connect(a->rpcAddress());
  REQUIRE(client.ok());
  auto& c = **client;
  auto left = c.leave(5s);
  REQUIRE_MESSAGE(left.ok(), left.error().toString());
  CHECK(b->get("p1", "ann").ok());  // a peer holds its data
  CHECK(a->outOfCluster());
  auto put = a->put("p1", "bob", 4, "t", "");
  REQUIRE_FALSE(put.ok());
  CHECK(put.error().code == ErrorCode::kUnavailable);
  CHECK(put.error().message.find("--rejoin") != std::string::npos);
  CHECK(a->get("p1", "ann").ok());  // reads still work
  auto view = c.cluster();
  REQUIRE(view.ok());
  CHECK(view->state == chorus::gossip::PeerState::kLeft);
  CHECK_FALSE(view->removed);
  // Over RPC, the write is refused the same way.
  chorus::WriteRequest w;
  w.op = WriteOp::kPut;
  w.product = "p1";
  w.author = "cy";
  w.rating = 3;
  CHECK(failure(c.write(w)).code == ErrorCode::kUnavailable);
  CHECK(eventually([&] {
    auto m = memberOf(*b, "a");
    return m && m->state == chorus::gossip::PeerState::kLeft;
  }));
  // b is still a member and takes writes.
  CHECK(b->put("p1", "dan", 2, "t", "").ok());
}

TEST_CASE("cluster: a node alone may leave; it refuses writes afterwards") {
  TempDir tmp;
  auto node = openClustered(tmp.sub("a"), "a");
  auto left = node->leave(600ms);
  // Nobody to hand data to: the core may go at once or time out.
  if (!left.ok()) CHECK(left.error().code == ErrorCode::kUnavailable);
  CHECK(node->outOfCluster());
  CHECK(failure(node->put("p1", "ann", 5, "t", "")).code == ErrorCode::kUnavailable);
  CHECK(node->clusterView()->state == chorus::gossip::PeerState::kLeft);
}

TEST_CASE("cluster: remove marks a known member left; region, incarnation on the wire") {
  TempDir tmp;
  auto a = openClustered(tmp.sub("a"), "a", {}, "us");
  auto b = openClustered(tmp.sub("b"), "b", {a->cluster()->address()}, "eu");
  auto client = chorus::api::Client::connect(a->rpcAddress());
  REQUIRE(client.ok());
  auto& c = **client;
  auto memberB = [&]() -> std::optional<chorus::gossip::MemberInfo> {
    auto view = c.cluster();  // over the wire
    if (!view.ok()) return std::nullopt;
    for (const auto& m : view->members) {
      if (m.nodeId == "b") return m;
    }
    return std::nullopt;
  };
  REQUIRE(eventually([&] {
    auto m = memberB();
    return m && m->state == chorus::gossip::PeerState::kAlive && m->rpcAddress == b->rpcAddress();
  }));
  auto m = memberB();
  REQUIRE(m.has_value());
  CHECK(m->region == "eu");
  CHECK(m->incarnation == memberOf(*a, "b")->incarnation);
  CHECK(m->active == memberOf(*a, "b")->active);

  REQUIRE(c.remove("b").ok());
  m = memberB();
  REQUIRE(m.has_value());
  CHECK(m->state == chorus::gossip::PeerState::kLeft);
  CHECK(c.remove("b").ok());  // again: nothing more to do
  // b learns it was removed, and refuses writes from then on.
  CHECK(eventually([&] { return b->outOfCluster(); }));
  CHECK(failure(b->put("p1", "ann", 5, "t", "")).code == ErrorCode::kUnavailable);
  CHECK(b->clusterView()->removed);
  CHECK(b->clusterView()->state == chorus::gossip::PeerState::kLeft);
}

// ---- read your writes ----------------------------------------------------------

namespace {

// A node of a cluster where writes travel only by pulls: no delta push, and
// anti-entropy once an hour (so not during the test).
std::unique_ptr<Node> openPullOnly(const std::string& dir, const std::string& id,
                                   std::vector<std::string> seeds,
                                   std::chrono::milliseconds sessionWait = 2s, bool http = false) {
  return openClustered(dir, id, std::move(seeds), "default", [&](Node::Options& o) {
    o.cluster.pushDeltas = false;
    o.cluster.antiEntropyInterval = std::chrono::hours(1);
    o.sessionWait = sessionWait;
    o.rpc.readThreads = 1;
    if (http) o.httpListen = "127.0.0.1:0";
  });
}

// Every node sees every peer alive and in its partial view, and no
// anti-entropy session started for 400 ms: those a new link starts are
// over, so (with the hour-long interval) writes from now on travel only by
// pulls.
bool settled(const std::vector<Node*>& nodes) {
  uint64_t started = 0;
  for (Node* node : nodes) {
    auto view = node->clusterView();
    if (!view.ok() || view->members.size() != nodes.size() - 1) return false;
    for (const auto& m : view->members) {
      if (m.state != chorus::gossip::PeerState::kAlive || !m.active) return false;
    }
    started += view->stats.syncStarted;
  }
  std::this_thread::sleep_for(400ms);
  uint64_t later = 0;
  for (Node* node : nodes) later += node->cluster()->stats().syncStarted;
  return later == started;
}

chorus::WriteRequest writeOf(WriteOp op, std::string arg = {}) {
  chorus::WriteRequest w;
  w.op = op;
  w.product = "p1";
  w.author = "ann";
  w.rating = 5;
  w.title = "from a";
  w.arg = std::move(arg);
  return w;
}

}  // namespace

TEST_CASE("sessions: a write on A is read at once on B with its token, without delta push") {
  TempDir tmp;
  auto a = openPullOnly(tmp.sub("a"), "a", {});
  auto b = openPullOnly(tmp.sub("b"), "b", {a->cluster()->address()});
  auto c = openPullOnly(tmp.sub("c"), "c", {a->cluster()->address()});
  REQUIRE(eventually([&] { return settled({a.get(), b.get(), c.get()}); }));
  // put on A over RPC: its results carry the session.
  chorus::Result<chorus::ReviewView> put = chorus::Error{ErrorCode::kInternal, "not run"};
  {
    auto onA = chorus::api::Client::connect(a->rpcAddress());  // one client per thread at a time
    REQUIRE(onA.ok());
    put = (*onA)->write(writeOf(WriteOp::kPut));
  }
  REQUIRE_MESSAGE(put.ok(), put.error().toString());
  REQUIRE(put->session.rfind("s1", 0) == 0);
  // At once on B, over RPC, with the token: B pulls it.
  auto onB = chorus::api::Client::connect(b->rpcAddress());
  REQUIRE(onB.ok());
  chorus::ReadOptions session{put->session};
  auto got = (*onB)->get("p1", "ann", session);
  REQUIRE_MESSAGE(got.ok(), got.error().toString());
  CHECK(got->title == "from a");
  CHECK(got->session.empty());  // reads carry none
  CHECK(b->cluster()->stats().statesPulled >= 1);
  CHECK(a->cluster()->stats().pullsServed >= 1);

  // A vote (an OR-set add) on A, read on B's product page and summary.
  auto vote = a->write(writeOf(WriteOp::kVote, "bob"));
  REQUIRE(vote.ok());
  auto page = (*onB)->page("p1", chorus::storage::Order::kNewest, "", 10, {vote->session});
  REQUIRE_MESSAGE(page.ok(), page.error().toString());
  REQUIRE(page->page.reviews.size() == 1);
  CHECK(page->page.reviews[0].helpful == 1);
  CHECK(page->summary.helpfulTotal == 1);
  // Its removal (an unvote: dots removed) on A, read on B, which holds the vote.
  auto unvote = a->write(writeOf(WriteOp::kUnvote, "bob"));
  REQUIRE(unvote.ok());
  auto listed = (*onB)->list("p1", chorus::storage::Order::kNewest, "", 10, {unvote->session});
  REQUIRE(listed.ok());
  REQUIRE(listed->reviews.size() == 1);
  CHECK(listed->reviews[0].helpful == 0);
  // Reply, then erase, read in-process on C (the Node API blocks instead).
  auto reply = a->write(writeOf(WriteOp::kReply, "thanks"));
  REQUIRE(reply.ok());
  CHECK(c->get("p1", "ann", {reply->session})->reply == "thanks");
  auto erased = a->write(writeOf(WriteOp::kDelete));
  REQUIRE(erased.ok());
  CHECK(erased->deleted);
  REQUIRE_FALSE(erased->session.empty());
  CHECK(failure(c->get("p1", "ann", {erased->session})).code == ErrorCode::kNotFound);
  CHECK(failure((*onB)->get("p1", "ann", {erased->session})).code == ErrorCode::kNotFound);
  CHECK((*onB)->summary("p1", {erased->session})->count == 0);
  CHECK((*onB)->byAuthor("ann", "", 10, {erased->session})->reviews.empty());
}

TEST_CASE("sessions over HTTP: Chorus-Session from a write on A is read at once on B and C") {
  TempDir tmp;
  auto a = openPullOnly(tmp.sub("a"), "a", {}, 1s, true);
  auto b = openPullOnly(tmp.sub("b"), "b", {a->cluster()->address()}, 1s, true);
  auto c = openPullOnly(tmp.sub("c"), "c", {a->cluster()->address()}, 1s, true);
  REQUIRE(eventually([&] { return settled({a.get(), b.get(), c.get()}); }));
  HttpConnection onA(a->httpAddress()), onB(b->httpAddress()), onC(c->httpAddress());
  REQUIRE((onA.connected() && onB.connected() && onC.connected()));
  auto json = [](const HttpAnswer& x) {
    auto j = Json::parse(x.body);
    REQUIRE_MESSAGE(j.has_value(), x.body);
    return *j;
  };
  auto put = onA.request("PUT", "/v1/products/p1/reviews/ann", R"({"rating":5,"title":"from a"})");
  REQUIRE_MESSAGE(put.status == 200, put.body);
  std::string token = put.header("chorus-session");
  REQUIRE(token.rfind("s1", 0) == 0);
  CHECK(json(put)["session"].str() == token);
  // Without the token B answers what it has: nothing (no push, no repair).
  CHECK(onB.request("GET", "/v1/products/p1/reviews/ann").status == 404);
  // With it, at once: B pulls the review and serves it.
  auto got =
      onB.request("GET", "/v1/products/p1/reviews/ann", "", "Chorus-Session: " + token + "\r\n");
  REQUIRE_MESSAGE(got.status == 200, got.body);
  CHECK(json(got)["review"]["title"].str() == "from a");
  CHECK(got.header("chorus-session").empty());  // reads carry none
  // A vote on A; C's summary with ?session= counts it.
  auto vote = onA.request("PUT", "/v1/products/p1/reviews/ann/votes/bob");
  REQUIRE(vote.status == 200);
  auto summary =
      onC.request("GET", "/v1/products/p1/summary?session=" + vote.header("chorus-session"));
  REQUIRE_MESSAGE(summary.status == 200, summary.body);
  CHECK(json(summary)["summary"]["helpfulTotal"].u64() == 1);
  // An erase answers its token too; B's listing in that session is empty.
  auto erased = onA.request("DELETE", "/v1/products/p1/reviews/ann");
  REQUIRE(erased.status == 200);
  REQUIRE_FALSE(erased.header("chorus-session").empty());
  CHECK(json(erased)["session"].str() == erased.header("chorus-session"));
  auto listed = onB.request("GET", "/v1/authors/ann/reviews", "",
                            "Chorus-Session: " + erased.header("chorus-session") + "\r\n");
  REQUIRE(listed.status == 200);
  CHECK(json(listed)["page"]["reviews"].items().empty());
  // Malformed: 400 naming `session`; header and query disagreeing too.
  auto bad = onB.request("GET", "/v1/products/p1/page?session=garbage");
  CHECK(bad.status == 400);
  CHECK(json(bad)["field"].str() == "session");
  auto twice = onB.request("GET", "/v1/products/p1/summary?session=" + token, "",
                           "Chorus-Session: " + vote.header("chorus-session") + "\r\n");
  CHECK(twice.status == 400);
  // A write no node holds: 503 unavailable after the wait.
  chorus::api::SessionToken absent;
  absent.key = {"nowhere", "nobody"};
  absent.origin = "a";
  absent.content = chorus::crdt::Stamp{chorus::crdt::Hlc::fromParts(1'000, 1), 7};
  auto late = onC.request("GET", "/v1/products/nowhere/reviews/nobody", "",
                          "Chorus-Session: " + absent.encode() + "\r\n");
  CHECK(late.status == 503);
  CHECK(json(late)["code"].str() == "unavailable");
  CHECK(c->metrics().sessionsTimedOut() == 1);
}

TEST_CASE("sessions: a write no node holds answers unavailable within the wait; bad tokens") {
  TempDir tmp;
  auto a = openPullOnly(tmp.sub("a"), "a", {}, 300ms);
  auto b = openPullOnly(tmp.sub("b"), "b", {a->cluster()->address()}, 300ms);
  REQUIRE(eventually([&] { return settled({a.get(), b.get()}); }));
  auto onB = chorus::api::Client::connect(b->rpcAddress());
  REQUIRE(onB.ok());
  auto& client = **onB;

  // A key absent everywhere, and a stamp far ahead of every clock.
  chorus::api::SessionToken absent;
  absent.key = {"nowhere", "nobody"};
  absent.origin = "a";
  absent.content = chorus::crdt::Stamp{chorus::crdt::Hlc::fromParts(1'000, 1), 7};
  REQUIRE(a->put("p1", "ann", 4, "t", "").ok());
  chorus::api::SessionToken ahead;
  ahead.key = {"p1", "ann"};
  ahead.origin = "a";
  ahead.content =
      chorus::crdt::Stamp{chorus::crdt::Hlc::fromParts(chorus::crdt::Hlc::kMaxMillis, 0), 7};
  for (const auto& token : {absent, ahead}) {
    auto start = std::chrono::steady_clock::now();
    auto r = client.get(token.key.product, token.key.author, {token.encode()});
    auto took = std::chrono::steady_clock::now() - start;
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == ErrorCode::kUnavailable);
    CHECK(r.error().message.find("has not caught up") != std::string::npos);
    CHECK(r.error().message.find("node 'a'") != std::string::npos);
    CHECK(took >= 300ms);  // it waited its bound
    CHECK(took < 10s);     // and no longer (generous: a shared machine)
    // In-process too.
    CHECK(failure(b->get(token.key.product, token.key.author, {token.encode()})).code ==
          ErrorCode::kUnavailable);
  }
  CHECK(b->metrics().sessionsTimedOut() == 2);
  CHECK(b->metrics().sessionsWaited() == 2);
  // The node asked its peer: the pulls went out, and a found nothing to send
  // for the absent key (the ahead one it holds at an older stamp, so B got
  // that state, which still does not hold the write).
  CHECK(b->cluster()->stats().pullsSent >= 2);

  // Malformed tokens: invalidArgument, field "session", before any wait.
  auto raw = client.reviews().getRequest();
  raw.setProduct("p1");
  raw.setAuthor("ann");
  raw.setSession("s1notbase64!");
  auto refused = raw.send().wait(client.waitScope());
  REQUIRE(refused.hasError());
  CHECK(refused.getError().getCode() == chorus::api::wire::ErrorCode::INVALID_ARGUMENT);
  CHECK(std::string(refused.getError().getField().cStr()) == "session");
  for (const std::string& bad : {std::string("garbage"), std::string(5000, 's')}) {
    CHECK(failure(client.list("p1", chorus::storage::Order::kNewest, "", 10, {bad})).code ==
          ErrorCode::kInvalidArgument);
    CHECK(failure(b->summary("p1", {bad})).message.rfind("session: ", 0) == 0);
  }
  // A bad argument is answered at once, not after the wait.
  auto waited = b->metrics().sessionsWaited();
  auto tooMany =
      failure(client.list("p1", chorus::storage::Order::kNewest, "", 101, {absent.encode()}));
  CHECK(tooMany.message.rfind("limit: ", 0) == 0);
  CHECK(failure(client.get("p1", "", {absent.encode()})).message.rfind("author: ", 0) == 0);
  CHECK(b->metrics().sessionsWaited() == waited);
  chorus::api::SessionToken badKey = ahead;
  badKey.key.product = "has space";
  CHECK(failure(client.get("p1", "ann", {badKey.encode()})).message.rfind("session: ", 0) == 0);
}

TEST_CASE("sessions: a waiting session read holds no read thread") {
  TempDir tmp;
  // One read thread: if the session wait held it, the plain read below
  // would queue behind it until the wait ran out.
  auto a = openPullOnly(tmp.sub("a"), "a", {}, 3s);
  auto client = chorus::api::Client::connect(a->rpcAddress());
  REQUIRE(client.ok());
  auto& c = **client;
  REQUIRE(a->put("p1", "ann", 4, "t", "").ok());
  chorus::api::SessionToken never;
  never.key = {"p1", "bob"};
  never.content = chorus::crdt::Stamp{chorus::crdt::Hlc::fromParts(1'000, 1), 7};
  auto waiting = c.reviews().getRequest();
  waiting.setProduct("p1");
  waiting.setAuthor("bob");
  waiting.setSession(never.encode());
  auto pending = waiting.send();
  // Turn the client's event loop (the request goes out) until the node waits.
  for (int i = 0; i < 500 && a->metrics().sessionsWaited() == 0; ++i) {
    c.timer().afterDelay(10 * kj::MILLISECONDS).wait(c.waitScope());
  }
  REQUIRE(a->metrics().sessionsWaited() == 1);
  auto plain = c.get("p1", "ann");  // served while the session read waits
  REQUIRE(plain.ok());
  CHECK_FALSE(pending.poll(c.waitScope()));
  // A write that makes the node hold it ends the wait before its bound.
  auto start = std::chrono::steady_clock::now();
  REQUIRE(a->put("p1", "bob", 3, "now", "").ok());  // a later stamp than `never`'s
  auto answer = pending.wait(c.waitScope());
  CHECK(std::chrono::steady_clock::now() - start < 3s);
  REQUIRE_FALSE(answer.hasError());
  CHECK(std::string(answer.getReview().getTitle().cStr()) == "now");
}

TEST_CASE("limits: a limit above 100 is refused as invalidArgument, in-process and over RPC") {
  TempDir tmp;
  auto node = openNode(tmp.path(), true);
  REQUIRE(node->put("p1", "ann", 4, "t", "").ok());
  auto client = chorus::api::Client::connect(node->rpcAddress());
  REQUIRE(client.ok());
  auto& c = **client;
  for (uint32_t limit : {0u, 1u, 100u}) {
    CHECK(node->list("p1", chorus::storage::Order::kNewest, "", limit).ok());
    CHECK(c.page("p1", chorus::storage::Order::kNewest, "", limit).ok());
    CHECK(c.byAuthor("ann", "", limit).ok());
  }
  for (uint32_t limit : {101u, 1000u, UINT32_MAX}) {
    CAPTURE(limit);
    for (const auto& e : {failure(node->list("p1", chorus::storage::Order::kNewest, "", limit)),
                          failure(node->byAuthor("ann", "", limit)),
                          failure(c.list("p1", chorus::storage::Order::kNewest, "", limit)),
                          failure(c.page("p1", chorus::storage::Order::kNewest, "", limit)),
                          failure(c.byAuthor("ann", "", limit))}) {
      CHECK(e.code == ErrorCode::kInvalidArgument);
      CHECK(e.message.rfind("limit: at most 100", 0) == 0);
    }
  }
  auto raw = c.reviews().listRequest();
  raw.setProduct("p1");
  raw.setLimit(101);
  auto r = raw.send().wait(c.waitScope());
  REQUIRE(r.hasError());
  CHECK(std::string(r.getError().getField().cStr()) == "limit");
  CHECK_FALSE(r.hasPage());
}
