// Bootstrap from a snapshot (issue 18, gossip/bootstrap.h): a new node
// starts from a verified copy of a peer's store while that peer takes
// writes, then catches up by anti-entropy; a transfer dropped mid-way
// resumes; a corrupted snapshot is refused; a far-behind node keeps the
// reviews only it held. Scaled down for the suite (6,000 reviews, ~7
// chunks); chorus-bench bootstrap measures 100k-1M.
#include <doctest/doctest.h>

#include <atomic>
#include <latch>
#include <thread>

#include "checks.h"
#include "storage/store.h"

using namespace chorus::test::cluster;

namespace {

// Writes `n` reviews of `product` straight into the store in `dir`, before
// its node starts (much quicker than through RPC).
void seedStore(const std::string& dir, int n, const std::string& product) {
  chorus::storage::Options o;
  o.dir = dir;
  o.unsafeNoSync = true;
  auto store = chorus::storage::Store::open(o);
  REQUIRE_MESSAGE(store.ok(), store.error().toString());
  std::latch done(n);
  std::atomic<int> failed{0};
  for (int i = 0; i < n; ++i) {
    (*store)->mutate(
        {product, "a" + std::to_string(i)},
        [i](chorus::crdt::ReviewDoc& doc,
            chorus::crdt::HybridClock& clock) -> chorus::Result<chorus::crdt::ReviewDoc> {
          return doc.write(uint8_t(1 + i % 5), "seeded " + std::to_string(i),
                           std::string(500, char('a' + i % 26)), clock.now());
        },
        [&](chorus::Result<chorus::storage::Applied> r) {
          if (!r.ok()) ++failed;
          done.count_down();
        });
  }
  done.wait();
  REQUIRE(failed == 0);
}

// Puts reviews of product "live" on one node from a thread of its own (a
// Client lives on one thread) until stopped.
class Writer {
 public:
  explicit Writer(std::string address) : address_(std::move(address)) {
    thread_ = std::thread([this] {
      auto client = chorus::api::Client::connect(address_);
      if (!client.ok()) {
        failed_ = true;
        return;
      }
      for (int i = 0; !stop_ && i < 100'000; ++i) {
        chorus::WriteRequest r;
        r.op = chorus::WriteOp::kPut;
        r.product = "live";
        r.author = "w" + std::to_string(i);
        r.rating = 4;
        r.title = "during the bootstrap";
        if (!(*client)->write(r).ok()) {
          failed_ = true;
          return;
        }
        ++written_;
        std::this_thread::sleep_for(2ms);
      }
    });
  }
  ~Writer() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int written() const { return written_; }
  bool failed() const { return failed_; }

 private:
  std::string address_;
  std::atomic<bool> stop_{false}, failed_{false};
  std::atomic<int> written_{0};
  std::thread thread_;
};

// Opens each stopped node's store: verify() passes on every one and all
// roots are equal.
void verifyStores(Harness& h, const std::vector<std::string>& ids) {
  std::optional<chorus::storage::Hash> first;
  for (const auto& id : ids) {
    chorus::storage::Options o;
    o.dir = h.dataDir(id);
    auto store = chorus::storage::Store::open(o);
    REQUIRE_MESSAGE(store.ok(), id << ": " << store.error().toString());
    auto verified = (*store)->verify();
    CHECK_MESSAGE(verified.ok(), id << ": " << verified.error().toString());
    auto root = (*store)->merkleRoot();
    REQUIRE(root.ok());
    if (!first) first = *root;
    CHECK_MESSAGE(*root == *first, id << "'s root differs from " << ids[0] << "'s");
  }
}

bool says(Daemon& d, const std::string& text) { return d.ownLog().find(text) != std::string::npos; }

}  // namespace

TEST_CASE("bootstrap: a new node starts from a snapshot while its peer takes writes") {
  auto began = Clock::now();
  Harness h;
  seedStore(h.dataDir("n1"), 6000, "tome");
  h.start("n1");
  Writer writer(h.node("n1").rpc());
  REQUIRE(h.waitUntil("writes under way", 20s, [&] { return writer.written() >= 20; }));

  auto& n2 = h.start("n2", {h.node("n1").gossip()}, {"--bootstrap", "snapshot"});
  CHECK_MESSAGE(says(n2, "bootstrap: from a snapshot of n1"), n2.ownLog());
  int atStart = writer.written();
  REQUIRE(h.waitUntil("writes after the bootstrap", 20s,
                      [&] { return writer.written() >= atStart + 20; }));
  writer.stop();
  CHECK_FALSE(writer.failed());
  REQUIRE(h.waitUntil("n1 and n2 alive", 30s, [&] { return allAlive(h, {"n1", "n2"}); }));
  converge(h, "n1");
  auto r = roots(h, {"n1", "n2"});
  CHECK_MESSAGE(allEqual(r), show(r));
  // The new node stamps with a replica id of its own, never its peer's.
  auto s1 = nodeStatus(h, "n1"), s2 = nodeStatus(h, "n2");
  CHECK(!s1["replica_id"].str().empty());
  CHECK(s1["replica_id"].str() != s2["replica_id"].str());
  CHECK(s2["keys"].u64() == 6000 + uint64_t(writer.written()));
  // Snapshot files do not outlive the transfer on the newcomer.
  CHECK_FALSE(std::filesystem::exists(h.dataDir("n2") + "/bootstrap"));
  h.stopAll();
  verifyStores(h, {"n1", "n2"});
  MESSAGE("snapshot bootstrap under writes took " << secondsSince(began) << " s");
}

TEST_CASE(
    "bootstrap: a dropped transfer resumes, also after a crash; a corrupted snapshot is refused") {
  auto began = Clock::now();
  Harness h;
  seedStore(h.dataDir("n1"), 6000, "tome");
  h.start("n1");
  // The connection drops after 2 of ~7 chunks: the transfer resumes from
  // the bytes n2 holds, on a new connection, with the same snapshot.
  auto& n2 = h.start("n2", {h.node("n1").gossip()},
                     {"--bootstrap", "snapshot", "--test-snapshot-drop-after", "2"});
  CHECK_MESSAGE(says(n2, "resuming the snapshot transfer"), n2.ownLog());
  CHECK_MESSAGE(says(n2, "1 resume(s), 0 refused"), n2.ownLog());
  // One byte of the first snapshot flipped as it is written: its checksum
  // fails, it is deleted, and a second one is fetched and used.
  auto& n3 = h.start("n3", {h.node("n1").gossip()},
                     {"--bootstrap", "snapshot", "--test-snapshot-corrupt"});
  CHECK_MESSAGE(says(n3, "refused the snapshot and deleted it"), n3.ownLog());
  CHECK_MESSAGE(says(n3, "0 resume(s), 1 refused"), n3.ownLog());
  CHECK_FALSE(std::filesystem::exists(h.dataDir("n3") + "/bootstrap"));
  // n4 stops dead after 3 chunks; its next start resumes the same snapshot
  // from the bytes it kept, instead of starting over.
  Daemon* crashed =
      h.tryStart("n4", {h.node("n1").gossip()},
                 {"--bootstrap", "snapshot", "--test-snapshot-exit-after", "3"}, "0", "0");
  CHECK(crashed == nullptr);
  CHECK(h.node("n4").stop(SIGKILL, 10s) == 86);
  CHECK(std::filesystem::exists(h.dataDir("n4") + "/bootstrap/transfer"));
  auto& n4 = h.start("n4", {h.node("n1").gossip()}, {"--bootstrap", "snapshot"});
  CHECK_MESSAGE(says(n4, "bytes from byte 3145728"), n4.ownLog());  // 3 chunks of 1 MiB
  auto r = roots(h, {"n1", "n2", "n3", "n4"});
  CHECK_MESSAGE(allEqual(r), show(r));
  h.stopAll();
  verifyStores(h, {"n1", "n2", "n3", "n4"});
  MESSAGE("resume and refusal test took " << secondsSince(began) << " s");
}

TEST_CASE("bootstrap: a far-behind node keeps the reviews only it held") {
  auto began = Clock::now();
  Harness h;
  // n2 writes three reviews alone, then stops.
  h.start("n2");
  clientPuts(h, "n2", "mine", {"x0", "x1", "x2"}, "only on n2 ");
  REQUIRE(h.node("n2").stop(SIGTERM, 15s) == 0);
  seedStore(h.dataDir("n1"), 6000, "tome");
  h.start("n1");
  // Three of 6,000: far behind. auto takes a snapshot (above the lowered
  // minimum), and merges n2's own reviews into it.
  auto& n2 = h.start("n2", {h.node("n1").gossip()}, {"--bootstrap-min-keys", "1000"});
  CHECK_MESSAGE(says(n2, "3 local review(s) merged in"), n2.ownLog());
  REQUIRE(h.waitUntil("n1 and n2 alive", 30s, [&] { return allAlive(h, {"n1", "n2"}); }));
  converge(h, "n1");
  CHECK(missing(h, "n1", "mine", titled({"x0", "x1", "x2"}, "only on n2 ")).empty());
  auto r = roots(h, {"n1", "n2"});
  CHECK_MESSAGE(allEqual(r), show(r));
  // With the default minimum (10,000 reviews), auto leaves 6,000 to anti-entropy.
  auto& n3 = h.start("n3", {h.node("n1").gossip()});
  CHECK_MESSAGE(says(n3, "bootstrap: by anti-entropy"), n3.ownLog());
  h.stopAll();
  verifyStores(h, {"n1", "n2"});
  MESSAGE("far-behind test took " << secondsSince(began) << " s");
}
