// Merkle anti-entropy between two real stores over an in-memory link.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>

#include "gossip/reconciler.h"
#include "support/seed.h"

using namespace chorus;
using chorus::gossip::Reconciler;

namespace {

// A store in a fresh temporary directory, removed at the end.
struct TempStore {
  std::filesystem::path dir;
  std::unique_ptr<storage::Store> store;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t merged = 0;

  explicit TempStore(const std::string& name) {
    dir = std::filesystem::temp_directory_path() /
          ("chorus-reconcile-test-" + name + "-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    storage::Options options;
    options.dir = dir.string();
    options.unsafeNoSync = true;  // throwaway data
    auto opened = storage::Store::open(options);
    REQUIRE_MESSAGE(opened.ok(), (opened.ok() ? "" : opened.error().toString()));
    store = std::move(opened).value();
  }
  ~TempStore() {
    store.reset();
    std::filesystem::remove_all(dir);
  }

  storage::Done onMerged() {
    return [this](Result<storage::Applied> r) {
      CHECK(r.ok());
      std::lock_guard lock(mu);
      ++merged;
      cv.notify_all();
    };
  }
  // Waits (bounded) until `count` merges have committed.
  bool waitMerged(uint64_t count) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(30), [&] { return merged >= count; });
  }

  void write(const std::string& product, const std::string& author, uint8_t rating,
             const std::string& body) {
    auto r = store->mutateSync(
        {product, author},
        [&](crdt::ReviewDoc& doc, crdt::HybridClock& c) -> Result<crdt::ReviewDoc> {
          return doc.write(rating, "title", body, c.now());
        });
    REQUIRE(r.ok());
  }
};

void expectSameRoots(TempStore& a, TempStore& b) {
  auto ra = a.store->merkleRoot();
  auto rb = b.store->merkleRoot();
  REQUIRE(ra.ok());
  REQUIRE(rb.ok());
  CHECK(ra.value() == rb.value());
  CHECK(a.store->verify().ok());
  CHECK(b.store->verify().ok());
}

}  // namespace

TEST_CASE("in-sync stores reconcile in one small round trip") {
  TempStore a("a1"), b("b1");
  for (int i = 0; i < 200; ++i) {
    crdt::ReviewDoc doc({"sku-" + std::to_string(i % 20), "user-" + std::to_string(i)});
    (void)doc.write(4, "same", "same body", crdt::Stamp{crdt::Hlc::fromParts(1000 + i, 0), 7});
    REQUIRE(a.store->mergeSync(doc).ok());
    REQUIRE(b.store->mergeSync(doc).ok());
  }
  Reconciler ra(*a.store, a.onMerged()), rb(*b.store, b.onMerged());
  auto stats = gossip::reconcileDirect(ra, rb);
  REQUIRE_MESSAGE(stats.ok(), (stats.ok() ? "" : stats.error().toString()));
  CHECK(stats->roundTrips == 1);
  CHECK(stats->overheadBytes() <= 256);
  CHECK(stats->payloadToInitiator + stats->payloadToResponder == 0);
}

TEST_CASE("differences on both sides are repaired in at most 4 round trips") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  TempStore a("a2"), b("b2");
  // Common history.
  for (int i = 0; i < 500; ++i) {
    crdt::ReviewDoc doc({"sku-" + std::to_string(i % 50), "user-" + std::to_string(i)});
    (void)doc.write(3, "t", "common", crdt::Stamp{crdt::Hlc::fromParts(1000 + i, 0), 9});
    REQUIRE(a.store->mergeSync(doc).ok());
    REQUIRE(b.store->mergeSync(doc).ok());
  }
  // Divergence: new reviews on each side, and the same reviews edited on both.
  int onlyA = 1 + static_cast<int>(rng() % 40), onlyB = 1 + static_cast<int>(rng() % 40);
  for (int i = 0; i < onlyA; ++i) a.write("sku-a", "user-" + std::to_string(i), 5, "from a");
  for (int i = 0; i < onlyB; ++i) b.write("sku-b", "user-" + std::to_string(i), 2, "from b");
  for (int i = 0; i < 10; ++i) {
    std::string author = "user-" + std::to_string(rng() % 500);
    std::string product = "sku-" + std::to_string(std::stoi(author.substr(5)) % 50);
    a.write(product, author, 1, "edited on a");
    b.write(product, author, 5, "edited on b");
  }
  Reconciler ra(*a.store, a.onMerged()), rb(*b.store, b.onMerged());
  auto stats = gossip::reconcileDirect(ra, rb);
  REQUIRE_MESSAGE(stats.ok(), (stats.ok() ? "" : stats.error().toString()));
  CHECK(stats->roundTrips <= 4);
  REQUIRE(a.waitMerged(ra.counters().statesReceived));
  REQUIRE(b.waitMerged(rb.counters().statesReceived));
  expectSameRoots(a, b);
  CHECK(ra.counters().malformed == 0);
  // A second round finds nothing left to do.
  auto again = gossip::reconcileDirect(ra, rb);
  REQUIRE(again.ok());
  CHECK(again->roundTrips == 1);
}

TEST_CASE("an empty store catches up from a full one") {
  TempStore a("a3"), b("b3");
  for (int i = 0; i < 300; ++i)
    a.write("sku-" + std::to_string(i % 7), "u" + std::to_string(i), 4, "x");
  Reconciler ra(*a.store, a.onMerged()), rb(*b.store, b.onMerged());
  auto stats = gossip::reconcileDirect(rb, ra);  // the empty side starts
  REQUIRE_MESSAGE(stats.ok(), (stats.ok() ? "" : stats.error().toString()));
  REQUIRE(b.waitMerged(300));
  expectSameRoots(a, b);
}

TEST_CASE("messages stay under the size cap; what does not fit comes in further sessions") {
  TempStore a("a5"), b("b5");
  for (int i = 0; i < 300; ++i) a.write("sku-" + std::to_string(i % 7), "u" + std::to_string(i), 4, "x");
  for (int i = 0; i < 200; ++i) b.write("sku-b", "v" + std::to_string(i), 2, "y");
  constexpr size_t kCap = 4096;
  Reconciler ra(*a.store, a.onMerged(), kCap), rb(*b.store, b.onMerged(), kCap);
  int sessions = 0;
  bool more = true;
  for (; more && sessions < 200; ++sessions) {
    auto stats = gossip::reconcileDirect(rb, ra);
    REQUIRE_MESSAGE(stats.ok(), (stats.ok() ? "" : stats.error().toString()));
    // States in one message stop once they pass the cap (by one state at
    // most; the tree levels above the leaves are bounded by the tree's shape).
    CHECK(stats->payloadToResponder <= kCap + 1024);
    CHECK(stats->payloadToInitiator <= kCap + 1024);
    REQUIRE(a.waitMerged(ra.counters().statesReceived));
    REQUIRE(b.waitMerged(rb.counters().statesReceived));
    more = a.store->merkleRoot().value() != b.store->merkleRoot().value();
  }
  CHECK(sessions > 2);  // the cap did cut
  expectSameRoots(a, b);
}

TEST_CASE("malformed messages are refused with an error and counted") {
  TempStore a("a4");
  Reconciler ra(*a.store, a.onMerged());
  auto start = ra.start();
  REQUIRE(start.ok());
  std::string good = start->bytes;
  CHECK_FALSE(ra.handle("").ok());
  CHECK_FALSE(ra.handle(std::string(13, 'x')).ok());
  CHECK_FALSE(ra.handle(std::string(64, '\xff')).ok());
  for (size_t cut = 8; cut < good.size(); cut += 8) {
    auto r = ra.handle(std::string_view(good).substr(0, cut));
    CHECK_FALSE(r.ok());
  }
  CHECK(ra.counters().malformed >= 3);
}
