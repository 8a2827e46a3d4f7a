// The change feed through chorus::Node and over Cap'n Proto: pages and
// their limits, subscribe, ReviewStore.changes and follow, a consumer
// resuming from its stored cursor after a disconnect and after a node
// restart, and a slow follower held to one batch at a time.
#include <doctest/doctest.h>
#include <kj/async.h>
#include <kj/timer.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "api/client.h"
#include "api/metrics.h"
#include "api/node.h"
#include "api/wire.h"
#include "support/results.h"
#include "support/seed.h"
#include "temp-dir.h"

using chorus::ChangesPage;
using chorus::ErrorCode;
using chorus::FeedChange;
using chorus::Node;
using chorus::api::Client;
using chorus::test::failure;
using chorus::test::TempDir;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<Node> openNode(const std::string& dir, bool rpc = false) {
  Node::Options o;
  o.nodeId = "feed-node";
  o.dataDir = dir;
  if (rpc) o.listen = "127.0.0.1:0";
  o.rpc.noAuth = true;
  o.store.unsafeNoSync = true;
  auto node = Node::open(std::move(o));
  REQUIRE_MESSAGE(node.ok(), node.error().toString());
  return std::move(node).value();
}

std::unique_ptr<Client> connect(Node& node) {
  auto c = Client::connect(node.rpcAddress());
  REQUIRE_MESSAGE(c.ok(), c.error().toString());
  return std::move(c).value();
}

std::string keyOf(const FeedChange& c) { return c.product + "/" + c.author; }

// Writes `n` reviews of random keys (some erased) and waits for them.
void writeSome(Node& node, std::mt19937_64& rng, int n, const std::string& prefix = "u") {
  std::mutex m;
  std::condition_variable cv;
  int done = 0;
  for (int i = 0; i < n; ++i) {
    chorus::WriteRequest r;
    r.product = "p" + std::to_string(rng() % 4);
    r.author = prefix + std::to_string(rng() % 150);
    if (rng() % 7 == 0) {
      r.op = chorus::WriteOp::kDelete;
    } else {
      r.op = chorus::WriteOp::kPut;
      r.rating = static_cast<uint32_t>(1 + rng() % 5);
      r.title = "t" + std::to_string(i);
    }
    node.write(std::move(r), [&](chorus::Result<chorus::ReviewView>) {
      std::lock_guard lock(m);
      ++done;
      cv.notify_all();
    });
  }
  std::unique_lock lock(m);
  REQUIRE(cv.wait_for(lock, 30s, [&] { return done == n; }));
}

// What a consumer saw: the latest seq of each review, and its cursor.
struct Consumer {
  std::map<std::string, uint64_t> seen;
  uint64_t cursor = 0;

  void take(const ChangesPage& page) {
    for (const auto& c : page.changes) {
      REQUIRE(c.seq > cursor);  // in order, nothing twice within a run
      REQUIRE(c.seq <= page.lastSeq);
      seen[keyOf(c)] = c.seq;
    }
    REQUIRE(page.lastSeq >= cursor);
    cursor = page.lastSeq;
  }
  // Nothing was skipped iff it saw each review's latest seq.
  void checkComplete(Node& node) {
    std::map<std::string, uint64_t> all;
    for (uint64_t since = 0;;) {
      auto page = node.changes(since, 1000, false);
      REQUIRE(page.ok());
      for (const auto& c : page->changes) all[keyOf(c)] = c.seq;
      if (page->lastSeq == since) break;
      since = page->lastSeq;
    }
    CHECK(all.size() == seen.size());
    CHECK(all == seen);
  }
};

}  // namespace

TEST_CASE("embedded: changes pages the compacted feed; limits and cursors are checked") {
  TempDir tmp;
  auto node = openNode(tmp.path());
  REQUIRE(node->put("p1", "ann", 3, "one", "").ok());  // 1
  REQUIRE(node->put("p1", "bob", 4, "b", "").ok());    // 2
  REQUIRE(node->put("p1", "ann", 5, "two", "").ok());  // 3
  REQUIRE(node->vote("p1", "ann", "cy").ok());         // 4
  REQUIRE(node->vote("p1", "ann", "cy").ok());         // already counted: a new dot, 5
  REQUIRE(node->untag("p1", "ann", "none").ok());      // changes nothing: no seq
  REQUIRE(node->erase("p1", "bob").ok());              // 6
  CHECK(node->lastSeq() == 6);

  auto page = node->changes(0, 0, true);
  REQUIRE(page.ok());
  CHECK(page->lastSeq == 6);
  CHECK(page->replicaId == node->store().replicaId());
  REQUIRE(page->changes.size() == 2);
  CHECK(keyOf(page->changes[0]) == "p1/ann");
  CHECK(page->changes[0].seq == 5);
  REQUIRE(page->changes[0].review.has_value());
  CHECK(page->changes[0].review->title == "two");
  CHECK(page->changes[0].review->helpful == 1);
  CHECK(keyOf(page->changes[1]) == "p1/bob");
  CHECK(page->changes[1].deleted);
  CHECK(page->changes[1].review->deleted);
  CHECK_FALSE(node->changes(0, 10, false)->changes[0].review.has_value());

  auto first = node->changes(0, 1, false);
  REQUIRE(first->changes.size() == 1);
  CHECK(first->lastSeq == 5);  // more follow: the cursor is the last seq returned
  CHECK(node->changes(first->lastSeq, 1, false)->lastSeq == 6);
  CHECK(node->changes(chorus::storage::kSinceNow, 0, false)->changes.empty());
  CHECK(node->changes(chorus::storage::kSinceNow, 0, false)->lastSeq == 6);

  auto over = failure(node->changes(0, Node::kMaxFeedLimit + 1, false));
  CHECK(over.code == ErrorCode::kInvalidArgument);
  CHECK(over.message == "limit: at most 1000 changes (0 = 100)");
  CHECK(node->changes(0, Node::kMaxFeedLimit, false).ok());
  auto future = failure(node->changes(7, 0, false));
  CHECK(future.code == ErrorCode::kInvalidArgument);
  CHECK(future.message.rfind("since: 7 is beyond this node's last seq 6", 0) == 0);

  // limit 0 is 100.
  std::mt19937_64 rng(1);
  for (int i = 0; i < 150; ++i) REQUIRE(node->put("p2", "a" + std::to_string(i), 2, "", "").ok());
  CHECK(node->changes(6, 0, false)->changes.size() == Node::kDefaultFeedLimit);
}

TEST_CASE("embedded: subscribers are woken with the last seq after each commit that changed") {
  TempDir tmp;
  auto node = openNode(tmp.path());
  std::mutex m;
  std::vector<uint64_t> told;
  uint64_t id = node->subscribe([&](uint64_t last) {
    std::lock_guard lock(m);
    told.push_back(last);
  });
  REQUIRE(node->put("p", "a", 1, "", "").ok());
  REQUIRE(node->untag("p", "a", "x").ok());  // no change
  REQUIRE(node->put("p", "b", 1, "", "").ok());
  node->unsubscribe(id);
  REQUIRE(node->put("p", "c", 1, "", "").ok());
  std::lock_guard lock(m);
  CHECK(told == std::vector<uint64_t>{1, 2});
}

TEST_CASE("rpc: changes and follow; a consumer resumes from its cursor after a disconnect") {
  uint64_t seed = chorus::test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  TempDir tmp;
  auto node = openNode(tmp.path(), true);
  writeSome(*node, rng, 300);

  {
    auto c = connect(*node);
    auto page = c->changes(0, 5, true);
    REQUIRE(page.ok());
    REQUIRE(page->changes.size() == 5);
    CHECK(page->replicaId == node->store().replicaId());
    auto local = node->changes(0, 5, true);
    for (size_t i = 0; i < 5; ++i) {
      CHECK(page->changes[i].seq == local->changes[i].seq);
      CHECK(keyOf(page->changes[i]) == keyOf(local->changes[i]));
      CHECK(page->changes[i].deleted == local->changes[i].deleted);
      REQUIRE(page->changes[i].review.has_value());
      CHECK(page->changes[i].review->title == local->changes[i].review->title);
    }
    CHECK(page->lastSeq == local->lastSeq);
    CHECK_FALSE(c->changes(0, 5, false)->changes[0].review.has_value());
    auto tooMany = failure(c->changes(0, 1001, false));
    CHECK(tooMany.code == ErrorCode::kInvalidArgument);
    CHECK(tooMany.message.rfind("limit: ", 0) == 0);
    auto future = failure(c->changes(node->lastSeq() + 1, 0, false));
    CHECK(future.message.rfind("since: ", 0) == 0);
    auto badFollow = failure(c->follow(
        node->lastSeq() + 1, false, 0, [](const ChangesPage&) { return true; }, 1s));
    CHECK(badFollow.code == ErrorCode::kInvalidArgument);
    CHECK(badFollow.message.rfind("since: ", 0) == 0);
    CHECK(failure(c->follow(
                      0, false, 1001, [](const ChangesPage&) { return true; }, 1s))
              .message.rfind("limit: ", 0) == 0);
  }

  // A consumer follows from 0 while a writer adds more, stops after 400
  // changes (its connection then closes), and resumes from its cursor on a
  // new connection.
  Consumer consumer;
  std::atomic<bool> writing{true};
  std::thread writer([&] {
    std::mt19937_64 wrng(seed + 1);
    for (int round = 0; round < 20; ++round) {
      writeSome(*node, wrng, 25, "w");
      std::this_thread::sleep_for(5ms);
    }
    writing = false;
    REQUIRE(node->put("zz", "end", 1, "", "").ok());  // a batch after `writing` went false
  });
  {
    auto c = connect(*node);
    size_t taken = 0;
    uint64_t started = UINT64_MAX;
    auto st = c->follow(
        0, false, 50,
        [&](const ChangesPage& page) {
          CHECK(page.changes.size() <= 50);
          consumer.take(page);
          taken += page.changes.size();
          return taken < 400;
        },
        20s, [&](const ChangesPage& start) { started = start.lastSeq; });
    REQUIRE_MESSAGE(st.ok(), st.error().toString());
    CHECK(started == 0);
    CHECK(taken >= 400);
  }
  {
    auto c = connect(*node);
    auto st = c->follow(
        consumer.cursor, true, 0,
        [&](const ChangesPage& page) {
          for (const auto& ch : page.changes) CHECK(ch.review.has_value());
          consumer.take(page);
          return writing.load() || consumer.cursor < node->lastSeq();
        },
        30s);
    REQUIRE_MESSAGE(st.ok(), st.error().toString());
  }
  writer.join();
  // A last read, in case the final batch came before the writer stopped.
  for (;;) {
    auto page = node->changes(consumer.cursor, 1000, false);
    REQUIRE(page.ok());
    consumer.take(*page);
    if (page->changes.empty()) break;
  }
  consumer.checkComplete(*node);
  CHECK(node->metrics().calls(chorus::api::Metrics::kFollow) >= 2);
}

TEST_CASE("rpc: a consumer's cursor survives a node restart; since=now starts at the end") {
  uint64_t seed = chorus::test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  TempDir tmp;
  Consumer consumer;
  uint64_t lastBefore = 0;
  chorus::crdt::ReplicaId replica = 0;
  {
    auto node = openNode(tmp.path(), true);
    replica = node->store().replicaId();
    writeSome(*node, rng, 200);
    auto c = connect(*node);
    for (int i = 0; i < 3; ++i) {
      auto page = c->changes(consumer.cursor, 40, false);
      REQUIRE(page.ok());
      consumer.take(*page);
    }
    writeSome(*node, rng, 100);  // after the consumer's last read
    lastBefore = node->lastSeq();
  }
  auto node = openNode(tmp.path(), true);
  CHECK(node->lastSeq() == lastBefore);
  auto c = connect(*node);
  // since=now: only what is written from here on.
  std::vector<FeedChange> live;
  std::thread writer;
  auto st = c->follow(
      chorus::storage::kSinceNow, false, 0,
      [&](const ChangesPage& page) {
        for (const auto& ch : page.changes) live.push_back(ch);
        return live.size() < 1;
      },
      20s,
      [&](const ChangesPage& start) {
        CHECK(start.lastSeq == lastBefore);
        CHECK(start.replicaId == replica);
        writer = std::thread([&] { REQUIRE(node->put("p9", "late", 5, "", "").ok()); });
      });
  writer.join();
  REQUIRE(st.ok());
  REQUIRE(live.size() == 1);
  CHECK(keyOf(live[0]) == "p9/late");
  CHECK(live[0].seq == lastBefore + 1);

  // The stored cursor, after the restart: every later change, none skipped.
  auto resumed = c->follow(
      consumer.cursor, false, 0,
      [&](const ChangesPage& page) {
        consumer.take(page);
        return consumer.cursor < node->lastSeq();
      },
      20s);
  REQUIRE(resumed.ok());
  consumer.checkComplete(*node);
}

namespace {

// A FeedObserver that takes 20 ms per batch without blocking the client's
// event loop, so the node could send more meanwhile if it did not wait.
class SlowObserver final : public chorus::api::wire::FeedObserver::Server {
 public:
  SlowObserver(kj::Timer& timer, Consumer& consumer, uint64_t until, int& active, int& maxActive,
               int& calls, kj::Own<kj::PromiseFulfiller<void>> done)
      : timer_(timer),
        consumer_(consumer),
        until_(until),
        active_(active),
        maxActive_(maxActive),
        calls_(calls),
        done_(kj::mv(done)) {}

  kj::Promise<void> onChanges(OnChangesContext ctx) override {
    ++calls_;
    maxActive_ = std::max(maxActive_, ++active_);
    ChangesPage page;
    page.lastSeq = ctx.getParams().getLastSeq();
    for (auto c : ctx.getParams().getChanges()) page.changes.push_back(chorus::api::fromWire(c));
    return timer_.afterDelay(20 * kj::MILLISECONDS).then([this, page = std::move(page)] {
      --active_;
      consumer_.take(page);
      if (consumer_.cursor >= until_ && done_->isWaiting()) done_->fulfill();
    });
  }

 private:
  kj::Timer& timer_;
  Consumer& consumer_;
  uint64_t until_;
  int& active_;
  int& maxActive_;
  int& calls_;
  kj::Own<kj::PromiseFulfiller<void>> done_;
};

}  // namespace

TEST_CASE("rpc: a slow follower gets one batch at a time, whatever the backlog") {
  uint64_t seed = chorus::test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  TempDir tmp;
  auto node = openNode(tmp.path(), true);
  for (int i = 0; i < 2; ++i) writeSome(*node, rng, 400, "a" + std::to_string(i));
  uint64_t backlog = node->lastSeq();
  auto c = connect(*node);
  Consumer consumer;
  int active = 0, maxActive = 0, calls = 0;
  auto done = kj::newPromiseAndFulfiller<void>();
  // Everything written so far and 100 changes more, written while it follows.
  auto req = c->reviews().followRequest();
  req.setSince(0);
  req.setLimit(20);
  auto batches0 = node->metrics().feedBatchesSent();
  req.setObserver(kj::heap<SlowObserver>(c->timer(), consumer, backlog + 100, active, maxActive,
                                         calls, kj::mv(done.fulfiller)));
  auto resp = req.send().wait(c->waitScope());
  REQUIRE_FALSE(resp.hasError());
  auto handle = resp.getHandle();
  std::thread writer([&] {
    for (int i = 0; i < 100; ++i)
      REQUIRE(node->put("late", "w" + std::to_string(i), 3, "", "").ok());
  });
  c->timer().timeoutAfter(30 * kj::SECONDS, kj::mv(done.promise)).wait(c->waitScope());
  writer.join();
  CHECK(maxActive == 1);  // the node waited for each batch's return
  CHECK(consumer.cursor >= backlog + 100);
  // The backlog came in batches of at most 20 (Consumer::take checked the
  // order), so at least backlog / 20 of them, each sent once.
  CHECK(static_cast<uint64_t>(calls) * 20 >= consumer.seen.size());
  CHECK(node->metrics().feedBatchesSent() - batches0 == static_cast<uint64_t>(calls));
  consumer.checkComplete(*node);
}
