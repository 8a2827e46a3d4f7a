// The replication core driven directly: a fake clock, in-memory stores and
// frames handed from core to core in this process. No sockets, no threads,
// no sleeps.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>

#include "gossip/frame.h"
#include "gossip/reconcile.capnp.h"
#include "gossip/replication-core.h"
#include "storage/merkle.h"
#include "support/seed.h"

using namespace chorus;
using namespace chorus::gossip;

namespace {

// A replica in memory, hashed exactly as storage::Store hashes (see
// storage/merkle.h). Merges complete at once, or when the test says.
class MemStore final : public ReplicaStore {
 public:
  Result<storage::Hash> root() override {
    storage::Hash sum{};
    for (const auto& [key, e] : entries_) sum = storage::hashAdd(sum, e.second);
    return sum;
  }
  Result<std::vector<storage::Hash>> children(int level, uint64_t index) override {
    std::vector<storage::Hash> out(kFanout, storage::Hash{});
    for (const auto& [key, e] : entries_) {
      uint64_t leaf = storage::leafIndexOf(e.first);
      if (storage::nodeAbove(leaf, level) != index) continue;
      uint64_t child = storage::nodeAbove(leaf, level + 1) - index * kFanout;
      out[child] = storage::hashAdd(out[child], e.second);
    }
    return out;
  }
  Result<std::vector<storage::LeafEntry>> leafEntries(uint64_t leafIndex) override {
    std::vector<storage::LeafEntry> out;
    for (const auto& [key, doc] : docs_) {
      uint64_t kh = storage::keyHash(key);
      if (storage::leafIndexOf(kh) == leafIndex) {
        out.push_back({kh, storage::digestOf(doc.encode()), key});
      }
    }
    std::sort(out.begin(), out.end(),
              [](const auto& a, const auto& b) { return a.keyHash < b.keyHash; });
    return out;
  }
  Result<std::optional<std::string>> encodedState(const crdt::ReviewKey& key) override {
    auto it = docs_.find(key);
    if (it == docs_.end()) return std::optional<std::string>();
    return std::optional<std::string>(it->second.encode());
  }
  void merge(crdt::ReviewDoc state, MergeDone done) override {
    if (deferMerges) {
      deferred_.push_back({std::move(state), std::move(done)});
      return;
    }
    apply(std::move(state), done);
  }
  // Completes the merges held back by deferMerges.
  void completeDeferred() {
    auto held = std::move(deferred_);
    deferred_.clear();
    for (auto& [state, done] : held) apply(std::move(state), done);
  }
  size_t deferred() const { return deferred_.size(); }

  // A local write; its delta.
  crdt::ReviewDoc write(const std::string& product, const std::string& author,
                        const std::string& body, uint64_t millis, crdt::ReplicaId replica) {
    crdt::ReviewKey key{product, author};
    auto [it, fresh] = docs_.try_emplace(key, key);
    auto delta =
        it->second.write(4, "title", body, crdt::Stamp{crdt::Hlc::fromParts(millis, 0), replica});
    rehash(key);
    return delta;
  }
  bool has(const std::string& product, const std::string& author) const {
    return docs_.count({product, author}) != 0;
  }
  size_t size() const { return docs_.size(); }
  storage::Hash rootHash() { return root().value(); }

  bool deferMerges = false;

 private:
  void apply(crdt::ReviewDoc state, const MergeDone& done) {
    crdt::ReviewKey key = state.key();
    auto [it, fresh] = docs_.try_emplace(key, key);
    crdt::ReviewDoc before = it->second;
    it->second.join(state);
    rehash(key);
    storage::Applied applied;
    applied.delta = state;
    applied.state = it->second;
    applied.changed = !(before == it->second);
    if (done) done(std::move(applied));
  }
  void rehash(const crdt::ReviewKey& key) {
    uint64_t kh = storage::keyHash(key);
    entries_[key] = {kh, storage::entryHash(kh, storage::digestOf(docs_.at(key).encode()))};
  }

  std::map<crdt::ReviewKey, crdt::ReviewDoc> docs_;
  std::map<crdt::ReviewKey, std::pair<uint64_t, storage::Hash>> entries_;
  std::vector<std::pair<crdt::ReviewDoc, MergeDone>> deferred_;
};

// One node: a store and its core.
struct Node {
  std::string id;
  std::string address;
  crdt::ReplicaId replica;
  MemStore store;
  std::unique_ptr<ReplicationCore> core;
  bool up = true;
  std::vector<std::vector<KnownMember>> persisted;  // every PersistMembers
  std::vector<std::string> dials;                   // every Dial, by address
  std::vector<uint64_t> dialTimes;
  std::vector<std::string> warnings;
};

// Reconcile message kinds seen on the wire, for the busy test.
struct WireLog {
  uint64_t busy = 0, roots = 0, deltaFrames = 0, deltaFrameMaxBytes = 0;
};

// Nodes and the links between their connections. Frames are delivered in
// order, with no latency, by run().
class Net {
 public:
  explicit Net(uint64_t seed) : seed_(seed) {}

  Node& add(const std::string& id, std::vector<std::string> seeds,
            const std::function<void(CoreOptions&)>& tweak = nullptr) {
    auto n = std::make_unique<Node>();
    n->id = id;
    n->address = id + ":7400";
    n->replica = nodes_.size() + 1;
    CoreOptions o;
    o.nodeId = id;
    o.gossipAddress = n->address;
    o.rpcAddress = id + ":7300";
    o.seeds = std::move(seeds);
    o.seed = seed_ + nodes_.size();
    if (tweak) tweak(o);
    n->core = std::make_unique<ReplicationCore>(o, n->store);
    n->core->start(now, {});
    nodes_.push_back(std::move(n));
    return *nodes_.back();
  }
  Node& operator[](const std::string& id) {
    for (auto& n : nodes_) {
      if (n->id == id) return *n;
    }
    FAIL("no node " << id);
    return *nodes_[0];
  }

  // Advances the clock to `until` in ticks of ReplicationCore::kTickMillis.
  void runUntil(uint64_t until) {
    while (now + ReplicationCore::kTickMillis <= until) {
      now += ReplicationCore::kTickMillis;
      for (auto& n : nodes_) {
        if (!n->up) continue;
        n->core->tick(now);
        settle();
      }
    }
  }
  void runFor(uint64_t millis) { runUntil(now + millis); }
  // Executes every pending action and delivery.
  void settle() {
    for (int rounds = 0; rounds < 100000; ++rounds) {
      bool any = false;
      for (auto& n : nodes_) {
        auto actions = n->core->takeActions();
        if (!actions.empty()) any = true;
        for (auto& a : actions) execute(*n, std::move(a));
      }
      while (!queue_.empty()) {
        any = true;
        auto [from, to, conn, body] = std::move(queue_.front());
        queue_.pop_front();
        if (!to->up) continue;
        lastHeard[{from->id, to->id}] = now;
        to->core->received(now, conn, *body);
      }
      if (!any) return;
    }
    FAIL("the cores never went quiet");
  }

  // A node stops: its connections close on the other side, it hears and
  // says nothing.
  void crash(Node& n) {
    n.up = false;
    for (auto it = links_.begin(); it != links_.end();) {
      if (it->first.first == &n) {
        auto [peer, peerConn] = it->second;
        links_.erase({peer, peerConn});
        it = links_.erase(it);
        if (peer->up) peer->core->closed(now, peerConn);
      } else {
        ++it;
      }
    }
    settle();
  }
  // Frames from `n` are lost (it stays connected): a silent peer.
  std::set<const Node*> muted;
  // Whether SendFrame bytes are drained at once (else they stay queued).
  bool autoDrain = true;
  WireLog wire;
  std::map<std::pair<std::string, std::string>, uint64_t> lastHeard;  // (from, to) -> time
  uint64_t now = 1'000'000;                                           // any start will do

 private:
  using End = std::pair<Node*, ConnId>;

  void execute(Node& n, Action a) {
    if (auto* s = std::get_if<SendFrame>(&a)) {
      observe(*s->body);
      auto link = links_.find({&n, s->conn});
      if (autoDrain) n.core->drained(s->conn, s->body->size() + 72, s->deltas);
      if (link == links_.end() || muted.count(&n)) return;
      queue_.push_back({&n, link->second.first, link->second.second, s->body});
    } else if (auto* d = std::get_if<Dial>(&a)) {
      n.dials.push_back(d->address);
      n.dialTimes.push_back(now);
      Node* target = nullptr;
      for (auto& other : nodes_) {
        if (other->address == d->address && other->up) target = other.get();
      }
      if (!target) {
        n.core->closed(now, d->conn);  // connection refused
        return;
      }
      ConnId theirs = target->core->accepted(now, n.address);
      links_[{&n, d->conn}] = {target, theirs};
      links_[{target, theirs}] = {&n, d->conn};
      target->core->opened(now, theirs);
      n.core->opened(now, d->conn);
    } else if (auto* c = std::get_if<Close>(&a)) {
      auto link = links_.find({&n, c->conn});
      if (link == links_.end()) return;
      End peer = link->second;
      links_.erase(link);
      links_.erase(peer);
      if (peer.first->up) peer.first->core->closed(now, peer.second);
    } else if (auto* m = std::get_if<Merge>(&a)) {
      for (auto& state : m->states) {
        uint64_t ticket = m->ticket;
        ReplicationCore* core = n.core.get();
        n.store.merge(std::move(state),
                      [core, ticket](Result<storage::Applied>) { core->merged(ticket); });
      }
    } else if (auto* p = std::get_if<PersistMembers>(&a)) {
      n.persisted.push_back(p->members);
    } else if (auto* w = std::get_if<Warn>(&a)) {
      n.warnings.push_back(w->message);
    }
  }
  void observe(const std::string& body) {
    auto frame = ParsedFrame::parse([&] {
      auto words = kj::heapArray<capnp::word>(body.size() / 8);
      std::memcpy(words.begin(), body.data(), body.size());
      return words;
    }());
    REQUIRE(frame.ok());
    auto root = frame.value()->root();
    if (root.which() == wire::Frame::DELTAS) {
      ++wire.deltaFrames;
      wire.deltaFrameMaxBytes = std::max<uint64_t>(wire.deltaFrameMaxBytes, body.size());
    }
    if (root.which() != wire::Frame::RECONCILE) return;
    auto data = root.getReconcile();
    auto words = kj::heapArray<capnp::word>(data.size() / 8);
    std::memcpy(words.begin(), data.begin(), data.size());
    capnp::FlatArrayMessageReader reader(words);
    auto message = reader.getRoot<wire::Reconcile>();
    if (message.which() == wire::Reconcile::BUSY) ++wire.busy;
    if (message.which() == wire::Reconcile::ROOT) ++wire.roots;
  }

  uint64_t seed_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::map<End, End> links_;
  std::deque<std::tuple<Node*, Node*, ConnId, std::shared_ptr<const std::string>>> queue_;
};

std::optional<MemberInfo> memberOf(Node& n, const std::string& id) {
  for (auto& m : n.core->members()) {
    if (m.nodeId == id) return m;
  }
  return std::nullopt;
}

size_t alive(Node& n) {
  size_t count = 0;
  for (auto& m : n.core->members()) count += m.state == PeerState::kAlive;
  return count;
}

void publish(Net& net, Node& n, const crdt::ReviewDoc& delta) {
  n.core->publish(net.now, {delta.encode()});
  net.settle();
}

}  // namespace

TEST_CASE("core: nodes join through a seed, learn every member and persist the list") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {});
  auto& n2 = net.add("n2", {"n1:7400"});
  auto& n3 = net.add("n3", {"n1:7400"});
  net.runFor(1000);
  CHECK(alive(n1) == 2);
  CHECK(alive(n2) == 2);
  CHECK(alive(n3) == 2);  // n2 learned from n1's heartbeats, not from a seed
  auto m = memberOf(n3, "n2");
  REQUIRE(m);
  CHECK(m->gossipAddress == "n2:7400");
  CHECK(m->rpcAddress == "n2:7300");
  // The list is persisted, at most once a second, once it changed.
  net.runFor(1500);
  REQUIRE_FALSE(n3.persisted.empty());
  auto& list = n3.persisted.back();
  REQUIRE(list.size() == 2);
  CHECK(list[0].nodeId == "n1");
  CHECK(list[1].nodeId == "n2");
  CHECK(list[1].gossipAddress == "n2:7400");
  size_t saves = n3.persisted.size();
  net.runFor(3000);
  CHECK(n3.persisted.size() == saves);  // unchanged: not saved again
  // A seed naming the node itself is not dialled.
  auto& n4 = net.add("n4", {"n4:7400", "n1:7400"});
  net.runFor(500);
  CHECK(std::count(n4.dials.begin(), n4.dials.end(), "n4:7400") == 0);
  CHECK(alive(n4) == 3);
}

TEST_CASE("core: a silent peer turns suspect, then dead, at the times phi accrual gives") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {});
  auto& n2 = net.add("n2", {"n1:7400"});
  net.runFor(3000);
  REQUIRE(memberOf(n1, "n2")->state == PeerState::kAlive);
  // n2 goes quiet; its connections stay open.
  net.muted.insert(&n2);
  uint64_t silentSince = net.lastHeard[{"n2", "n1"}];
  REQUIRE(net.now - silentSince < 200);
  std::optional<uint64_t> suspectAt, deadAt;
  while (net.now < silentSince + 10'000 && !deadAt) {
    net.runFor(ReplicationCore::kTickMillis);
    auto state = memberOf(n1, "n2")->state;
    if (state != PeerState::kAlive && !suspectAt) suspectAt = net.now - silentSince;
    if (state == PeerState::kDead) deadAt = net.now - silentSince;
  }
  // The mean interval is floored at the 200 ms heartbeat: phi 5 after
  // 5 * 200 ms * ln 10 = 2303 ms of silence, phi 10 after 4605 ms (seen at
  // the next tick).
  REQUIRE(suspectAt);
  REQUIRE(deadAt);
  CHECK(*suspectAt >= 2303);
  CHECK(*suspectAt <= 2303 + ReplicationCore::kTickMillis);
  CHECK(*deadAt >= 4605);
  CHECK(*deadAt <= 4605 + ReplicationCore::kTickMillis);
  // One frame makes it alive again.
  net.muted.clear();
  net.runFor(400);
  CHECK(memberOf(n1, "n2")->state == PeerState::kAlive);
}

TEST_CASE("core: a committed write is pushed to every peer, or to pushFanout of them") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto fanout = [](CoreOptions& o) { o.pushFanout = 2; };
  auto& n1 = net.add("n1", {}, fanout);
  for (int i = 2; i <= 5; ++i) net.add("n" + std::to_string(i), {"n1:7400"});
  net.runFor(1500);
  REQUIRE(alive(n1) == 4);
  auto& n2 = net["n2"];
  // From n2 (fanout 8): all four others get it in one frame each.
  uint64_t sentBefore = n2.core->stats().deltasSent;
  publish(net, n2, n2.store.write("sku-1", "ann", "hello", 1, n2.replica));
  CHECK(n2.core->stats().deltasSent - sentBefore == 4);
  for (auto id : {"n1", "n3", "n4", "n5"}) CHECK(net[id].store.has("sku-1", "ann"));
  for (auto id : {"n1", "n3", "n4", "n5"}) CHECK(net[id].core->stats().deltasReceived == 1);
  // From n1 (fanout 2): two of the four get it now.
  publish(net, n1, n1.store.write("sku-2", "bob", "hello", 2, n1.replica));
  CHECK(n1.core->stats().deltasSent == 2);
  int got = 0;
  for (auto id : {"n2", "n3", "n4", "n5"}) got += net[id].store.has("sku-2", "bob");
  CHECK(got == 2);
  // Anti-entropy brings it to the rest.
  net.runFor(5000);
  for (auto id : {"n2", "n3", "n4", "n5"}) CHECK(net[id].store.has("sku-2", "bob"));
}

TEST_CASE("core: deltas are cut into frames of about 1 MiB; a peer that does not read gets none") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {}, [](CoreOptions& o) { o.maxQueuedBytesPerPeer = 3u << 20; });
  auto& n2 = net.add("n2", {"n1:7400"});
  net.runFor(1000);
  REQUIRE(alive(n1) == 1);
  // Five deltas of ~400 KB: frames of at most two (the third would pass 1 MiB).
  std::vector<std::string> deltas;
  for (int i = 0; i < 5; ++i) {
    deltas.push_back(
        n1.store.write("sku", "u" + std::to_string(i), std::string(400'000, 'x'), 5, n1.replica)
            .encode());
  }
  net.wire = {};
  n1.core->publish(net.now, deltas);
  net.settle();
  CHECK(net.wire.deltaFrames == 3);
  CHECK(net.wire.deltaFrameMaxBytes < ReplicationCore::kMaxDeltaFrameBytes + 1024);
  CHECK(n2.store.size() == 5);
  CHECK(n1.core->stats().deltasSent == 5);
  // n2 stops reading: what is queued for it passes maxQueuedBytesPerPeer and
  // further deltas to it are dropped, counted, not queued.
  net.autoDrain = false;
  for (int round = 0; round < 5; ++round) {
    n1.core->publish(net.now, {n1.store
                                   .write("sku", "big-" + std::to_string(round),
                                          std::string(900'000, 'y'), 6, n1.replica)
                                   .encode()});
    net.settle();
  }
  // 3 MiB: four frames of 900 KB are queued, the fifth delta is dropped.
  CHECK(n1.core->stats().deltasDropped == 1);
  CHECK(memberOf(n1, "n2")->pendingDeltas == 4);
}

TEST_CASE("core: two cores with different stores converge through anti-entropy alone") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {});
  auto& n2 = net.add("n2", {"n1:7400"});
  // Divergent histories, never pushed: 300 reviews only on n1, 200 only on
  // n2, and 20 written on both.
  for (int i = 0; i < 300; ++i) n1.store.write("sku-a", "u" + std::to_string(i), "a", 10, 1);
  for (int i = 0; i < 200; ++i) n2.store.write("sku-b", "v" + std::to_string(i), "b", 10, 2);
  for (int i = 0; i < 20; ++i) {
    n1.store.write("sku-c", "w" + std::to_string(i), "on n1", 20 + i, 1);
    n2.store.write("sku-c", "w" + std::to_string(i), "on n2", 30 - i, 2);
  }
  REQUIRE(n1.store.rootHash() != n2.store.rootHash());
  net.runFor(3000);
  CHECK(n1.store.rootHash() == n2.store.rootHash());
  CHECK(n1.store.size() == 520);
  CHECK(n1.core->stats().syncCompleted + n2.core->stats().syncCompleted > 0);
  CHECK(n1.core->stats().statesRepaired + n2.core->stats().statesRepaired >= 500);
  CHECK(n1.core->mergesPending() == 0);
  // In sync: each later session is one round trip and repairs nothing.
  uint64_t repaired = n1.core->stats().statesRepaired + n2.core->stats().statesRepaired;
  net.runFor(3000);
  CHECK(n1.core->stats().statesRepaired + n2.core->stats().statesRepaired == repaired);
  CHECK(n1.core->stats().syncCompleted > 1);
}

TEST_CASE("core: a size cap splits a large repair into sessions that run back to back") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  // Reconcile messages are cut at half the frame limit: 4 KiB here.
  auto small = [](CoreOptions& o) { o.maxFrameBytes = 8192; };
  auto& n1 = net.add("n1", {}, small);
  auto& n2 = net.add("n2", {"n1:7400"}, small);
  for (int i = 0; i < 400; ++i) n1.store.write("sku", "u" + std::to_string(i), "xxxx", 10, 1);
  // Far more sessions than one a second each: `more` started the next at
  // once, so the whole store crossed in 1.5 s.
  net.runFor(1500);
  CHECK(n1.store.rootHash() == n2.store.rootHash());
  CHECK(n1.core->stats().syncStarted + n2.core->stats().syncStarted >= 5);
}

TEST_CASE("core: a node still merging a repair answers busy; the initiator rests it and retries") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {});
  auto& n2 = net.add("n2", {"n1:7400"});
  auto& n3 = net.add("n3", {"n1:7400"});
  net.runFor(1000);
  REQUIRE(alive(n3) == 2);
  // n1's and n2's stores stall: the states of a repair stay uncommitted.
  n1.store.deferMerges = true;
  n2.store.deferMerges = true;
  for (int i = 0; i < 50; ++i) n1.store.write("sku-a", "u" + std::to_string(i), "a", 10, 1);
  for (int i = 0; i < 50; ++i) n2.store.write("sku-b", "v" + std::to_string(i), "b", 10, 2);
  for (int i = 0; i < 50; ++i) n3.store.write("sku-c", "w" + std::to_string(i), "c", 10, 3);
  net.wire = {};
  net.runFor(3000);
  // n1 and n2 hold received states uncommitted and turn every new session
  // away; n3 keeps asking (resting each 50-250 ms after a busy).
  CHECK(n1.store.deferred() > 0);
  CHECK(n2.store.deferred() > 0);
  CHECK(n1.core->mergesPending() > 0);
  CHECK(net.wire.busy > 3);
  CHECK(net.wire.busy < net.wire.roots);
  CHECK(n3.store.rootHash() != n1.store.rootHash());
  // The stores catch up: sessions go through again and all converge.
  n1.store.deferMerges = false;
  n2.store.deferMerges = false;
  n1.store.completeDeferred();
  n2.store.completeDeferred();
  net.runFor(4000);
  CHECK(n1.store.rootHash() == n2.store.rootHash());
  CHECK(n1.store.rootHash() == n3.store.rootHash());
  CHECK(n1.store.size() == 150);
  CHECK(n1.core->mergesPending() == 0);
  CHECK(n2.core->mergesPending() == 0);
  net.wire = {};
  net.runFor(3000);
  CHECK(net.wire.busy == 0);
  CHECK(net.wire.roots > 0);
}

TEST_CASE("core: a peer that cannot be reached is redialled with jittered, doubling backoff") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {"n9:7400"});  // nobody there yet
  net.runFor(20'000);
  REQUIRE(n1.dialTimes.size() >= 8);
  std::vector<uint64_t> gaps;
  for (size_t i = 1; i < n1.dialTimes.size(); ++i) {
    gaps.push_back(n1.dialTimes[i] - n1.dialTimes[i - 1]);
  }
  // Backoff b is 100 ms doubling to 2 s; each wait is in [b/2, b], seen at
  // the next tick.
  uint64_t backoff = ReplicationCore::kMinBackoffMillis;
  for (uint64_t gap : gaps) {
    CHECK(gap >= backoff / 2);
    CHECK(gap <= backoff + ReplicationCore::kTickMillis);
    backoff = std::min(backoff * 2, ReplicationCore::kMaxBackoffMillis);
  }
  CHECK(gaps.back() >= ReplicationCore::kMaxBackoffMillis / 2);
  // It comes up: the next attempt connects, and a hello resets the backoff.
  auto& n9 = net.add("n9", {});
  net.runFor(2500);
  CHECK(alive(n1) == 1);
  CHECK(alive(n9) == 1);
  size_t dials = n1.dials.size();
  net.crash(n9);
  net.runFor(300);
  CHECK(n1.dials.size() > dials);  // redialled within the first backoff (100 ms)
}

TEST_CASE("core: malformed frames and connections that never say hello are closed and counted") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {});
  // Not a frame at all.
  ConnId a = n1.core->accepted(net.now, "10.0.0.1:5000");
  n1.core->opened(net.now, a);
  n1.core->received(net.now, a, std::string(16, '\xff'));
  auto actions = n1.core->takeActions();
  REQUIRE(actions.size() == 1);
  CHECK(std::get<Close>(actions[0]).conn == a);
  CHECK(n1.core->stats().malformedFrames == 1);
  CHECK(n1.core->stats().framesIn == 0);
  // A well-formed frame that is not a hello, first.
  ConnId b = n1.core->accepted(net.now, "10.0.0.1:5001");
  n1.core->opened(net.now, b);
  capnp::MallocMessageBuilder message;
  auto beat = newFrame(message, "mallory").initHeartbeat(1);
  beat[0].setNodeId("mallory");
  beat[0].setGossipAddress("10.0.0.1:7400");
  auto words = capnp::messageToFlatArray(message);
  n1.core->received(net.now, b, kj::heapArray<capnp::word>(words.asPtr()));
  actions = n1.core->takeActions();
  REQUIRE(actions.size() == 1);
  CHECK(std::get<Close>(actions[0]).conn == b);
  CHECK(n1.core->stats().malformedFrames == 2);
  CHECK(n1.core->members().empty());
  // Silence: a stranger is closed after 5 s, and counted.
  ConnId c = n1.core->accepted(net.now, "10.0.0.1:5002");
  n1.core->opened(net.now, c);
  net.runFor(ReplicationCore::kStrangerTimeoutMillis - 100);
  CHECK(n1.core->takeActions().empty());
  bool closed = false;
  for (int i = 0; i < 4 && !closed; ++i) {
    n1.core->tick(net.now += ReplicationCore::kTickMillis);
    for (auto& action : n1.core->takeActions()) {
      if (auto* close = std::get_if<Close>(&action)) closed = close->conn == c;
    }
  }
  CHECK(closed);
  CHECK(n1.core->stats().connectionsRefused == 1);
}

TEST_CASE("core: partition injection drops traffic both ways until heal; then the sides converge") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {});
  auto& n2 = net.add("n2", {"n1:7400"});
  auto& n3 = net.add("n3", {"n1:7400"});
  net.runFor(1500);
  REQUIRE(alive(n3) == 2);
  n3.core->partition({"n1", "n2"});
  n1.core->partition({"n3"});
  n2.core->partition({"n3"});
  for (int i = 0; i < 20; ++i) {
    publish(net, n1, n1.store.write("sku-2", "u" + std::to_string(i), "majority", 100, 1));
    publish(net, n3, n3.store.write("sku-3", "u" + std::to_string(i), "minority", 100, 3));
  }
  net.runFor(6000);
  CHECK(n1.store.rootHash() == n2.store.rootHash());
  CHECK(n1.store.rootHash() != n3.store.rootHash());
  CHECK(memberOf(n1, "n3")->state == PeerState::kDead);
  CHECK(memberOf(n1, "n3")->partitioned);
  CHECK(n3.core->stats().partitionDropped > 0);
  for (auto* n : {&n1, &n2, &n3}) n->core->heal();
  net.runFor(3000);
  CHECK(n1.store.rootHash() == n3.store.rootHash());
  CHECK(n2.store.rootHash() == n3.store.rootHash());
  CHECK(n2.store.has("sku-3", "u7"));
}

TEST_CASE("core: the same seed and inputs give the same actions") {
  auto trace = [](uint64_t seed) {
    Net net(seed);
    std::vector<std::string> out;
    auto& n1 = net.add("n1", {});
    net.add("n2", {"n1:7400"});
    net.add("n3", {"n1:7400"});
    net.runFor(2000);
    for (int i = 0; i < 30; ++i) {
      publish(net, n1, n1.store.write("sku", "u" + std::to_string(i), "x", 10, 1));
    }
    net.runFor(4000);
    for (auto id : {"n1", "n2", "n3"}) {
      auto& n = net[id];
      auto s = n.core->stats();
      out.push_back(std::to_string(s.framesOut) + "/" + std::to_string(s.bytesOut) + "/" +
                    std::to_string(s.syncStarted) + "/" + std::to_string(n.dialTimes.size()));
    }
    return out;
  };
  CHECK(trace(7) == trace(7));
}

namespace {

// A frame body from `from`, filled by `fill`.
template <typename Fill>
std::string frameFrom(const std::string& from, Fill fill) {
  capnp::MallocMessageBuilder message;
  fill(newFrame(message, from));
  return encodeFrame(message);
}

std::string helloFrom(const std::string& id) {
  return frameFrom(id, [&](wire::Frame::Builder f) {
    auto m = f.initHello();
    m.setNodeId(id);
    m.setGossipAddress(id + ":7400");
  });
}

}  // namespace

TEST_CASE(
    "core: a second-hand address that never answers stops being dialled; a node's own does not") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {}, [](CoreOptions& o) { o.forgetUnansweredAfterMillis = 3000; });
  // "teller" connects, says who it is, and names a member nobody can reach.
  ConnId conn = n1.core->accepted(net.now, "10.0.0.7:5000");
  n1.core->opened(net.now, conn);
  n1.core->received(net.now, conn, helloFrom("teller"));
  n1.core->received(net.now, conn, frameFrom("teller", [](wire::Frame::Builder f) {
                      auto list = f.initHeartbeat(2);
                      list[0].setNodeId("teller");
                      list[0].setGossipAddress("teller:7400");
                      list[1].setNodeId("ghost");
                      list[1].setGossipAddress("ghost:7400");
                    }));
  net.settle();
  CHECK(memberOf(n1, "ghost"));
  CHECK(n1.core->stats().dialers == 2);
  net.runFor(2000);
  CHECK(std::count(n1.dials.begin(), n1.dials.end(), "ghost:7400") > 0);
  net.runFor(3000);  // past forgetUnansweredAfter: pruned within a second
  size_t ghostDials = std::count(n1.dials.begin(), n1.dials.end(), "ghost:7400");
  size_t tellerDials = std::count(n1.dials.begin(), n1.dials.end(), "teller:7400");
  net.runFor(10'000);
  CHECK(std::count(n1.dials.begin(), n1.dials.end(), "ghost:7400") == ghostDials);
  CHECK(std::count(n1.dials.begin(), n1.dials.end(), "teller:7400") > tellerDials);
  CHECK(n1.core->stats().dialers == 1);
  CHECK(memberOf(n1, "ghost"));  // still a member, just not dialled
}

TEST_CASE("core: connections others opened are capped once they say hello") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {}, [](CoreOptions& o) { o.maxInbound = 2; });
  std::vector<ConnId> conns;
  for (int i = 0; i < 3; ++i) {
    conns.push_back(n1.core->accepted(net.now, "10.0.0.9:" + std::to_string(5000 + i)));
    n1.core->opened(net.now, conns.back());
  }
  // Strangers do not count: all three are open. The third to say hello is
  // one too many.
  for (int i = 0; i < 3; ++i) {
    n1.core->received(net.now, conns[i], helloFrom("p" + std::to_string(i)));
  }
  bool thirdClosed = false;
  for (auto& action : n1.core->takeActions()) {
    if (auto* close = std::get_if<Close>(&action)) thirdClosed = close->conn == conns[2];
  }
  CHECK(thirdClosed);
  CHECK(n1.core->stats().connectionsRefused == 1);
  CHECK(n1.core->helloReceived(conns[0]));
  CHECK(n1.core->helloReceived(conns[1]));
  CHECK_FALSE(n1.core->helloReceived(conns[2]));
}
