// chorus-bench reconcile: Merkle anti-entropy between two real stores over
// an in-memory link, running the real protocol code (gossip/reconciler).
//
// Builds one store of N reviews, copies it to a second, then for each D
// makes the two diverge by D reviews (half on each side; of each half, half
// new reviews and half edits of existing ones), runs one reconcile session
// and waits until both stores have committed what they received. Reports
// bytes each way split into protocol overhead and payload (the review states
// themselves), round trips and time, next to the naive cost of sending every
// (key hash, digest) pair, and checks that both stores end identical.
#include <CLI/CLI.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "gossip/reconciler.h"
#include "storage/store.h"

namespace chorus::bench {

namespace {

using SteadyClock = std::chrono::steady_clock;
namespace fs = std::filesystem;

struct Options {
  uint64_t keys = 1'000'000;
  std::vector<uint64_t> diffs;
  std::string dir;
  bool json = false;
};

// Counts committed merges so the bench can wait for them (bounded).
class MergeCounter {
 public:
  storage::Done callback() {
    return [this](Result<storage::Applied> r) {
      std::lock_guard lock(mu_);
      ++done_;
      if (!r.ok()) {
        ++failed_;
        if (firstError_.empty()) firstError_ = r.error().toString();
      }
      cv_.notify_all();
    };
  }
  bool waitFor(uint64_t count, std::chrono::seconds limit) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return done_ >= count; });
  }
  uint64_t done() {
    std::lock_guard lock(mu_);
    return done_;
  }
  uint64_t failed() {
    std::lock_guard lock(mu_);
    return failed_;
  }
  std::string firstError() {
    std::lock_guard lock(mu_);
    return firstError_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t done_ = 0;
  uint64_t failed_ = 0;
  std::string firstError_;
};

uint64_t nowMillis() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

crdt::ReviewKey keyOf(uint64_t i) {
  char product[16], author[24];
  std::snprintf(product, sizeof product, "sku-%06llu", static_cast<unsigned long long>(i % 10'000));
  std::snprintf(author, sizeof author, "user-%08llx",
                static_cast<unsigned long long>((i * 0x9E3779B97F4A7C15ull) >> 32));
  return {product, author};
}

crdt::ReviewDoc review(uint64_t i, crdt::Stamp stamp, const char* flavour) {
  crdt::ReviewDoc doc(keyOf(i));
  std::string body = std::string(flavour) + " review " + std::to_string(i) + ": ";
  while (body.size() < 300) body += "fits well, good value, would buy again. ";
  (void)doc.write(static_cast<uint8_t>(1 + i % 5), "Review " + std::to_string(i), body, stamp);
  return doc;
}

Result<std::unique_ptr<storage::Store>> openStore(const fs::path& dir) {
  storage::Options o;
  o.dir = dir.string();
  o.unsafeNoSync = true;  // both sides equally; the protocol is what is measured
  o.initialMapBytes = 4ull << 30;
  return storage::Store::open(o);
}

// Merges docs from `next` into `store` with a bounded number in flight.
template <class Next>
Status load(storage::Store& store, uint64_t count, Next next) {
  MergeCounter counter;
  constexpr uint64_t kWindow = 20'000;
  for (uint64_t i = 0; i < count; ++i) {
    if (i >= kWindow && !counter.waitFor(i - kWindow + 1, std::chrono::seconds(120))) {
      return makeError(ErrorCode::kInternal, "store stopped committing during load");
    }
    store.merge(next(i), counter.callback());
  }
  if (!counter.waitFor(count, std::chrono::seconds(300))) {
    return makeError(ErrorCode::kInternal, "load did not finish");
  }
  if (counter.failed() != 0) return makeError(ErrorCode::kInternal, counter.firstError());
  return okStatus();
}

struct Row {
  uint64_t keys = 0, diff = 0;
  gossip::SessionStats stats;
  double seconds = 0;
  uint64_t naiveBytes = 0;
  bool identical = false;
};

int run(Options& o) {
  if (o.diffs.empty()) o.diffs = {0, 1, 100, 10'000};
  fs::path base = o.dir.empty() ? fs::temp_directory_path() /
                                      ("chorus-bench-reconcile-" + std::to_string(::getpid()))
                                : fs::path(o.dir);
  fs::remove_all(base);
  fs::path dirA = base / "a", dirB = base / "b";
  auto fail = [&](const std::string& what) {
    std::fprintf(stderr, "chorus-bench reconcile: %s\n", what.c_str());
    fs::remove_all(base);
    return 1;
  };

  // One store of N reviews, copied to make the second: identical trees.
  if (!o.json) std::fprintf(stderr, "loading %llu reviews...\n", (unsigned long long)o.keys);
  auto loadStart = SteadyClock::now();
  uint64_t t0 = nowMillis() - 1'000'000;
  {
    auto a = openStore(dirA);
    if (!a.ok()) return fail(a.error().toString());
    Status s = load(*a.value(), o.keys, [&](uint64_t i) {
      return review(i, crdt::Stamp{crdt::Hlc::fromParts(t0 + i / 1000, 0), 100}, "base");
    });
    if (!s.ok()) return fail(s.error().toString());
  }
  fs::copy(dirA, dirB, fs::copy_options::recursive);
  if (!o.json) {
    std::fprintf(stderr, "loaded and copied in %.1f s\n",
                 std::chrono::duration<double>(SteadyClock::now() - loadStart).count());
  }
  auto a = openStore(dirA);
  if (!a.ok()) return fail(a.error().toString());
  auto b = openStore(dirB);
  if (!b.ok()) return fail(b.error().toString());

  std::vector<Row> rows;
  uint64_t nextNew = o.keys;  // new reviews get fresh indexes
  uint64_t nextEdit = 0;      // edits walk the existing ones
  for (uint64_t diff : o.diffs) {
    // Diverge: half the differences on each side; half new, half edits.
    uint64_t stampMillis = nowMillis();
    for (int side = 0; side < 2; ++side) {
      uint64_t mine = side == 0 ? diff / 2 : diff - diff / 2;
      uint64_t fresh = mine / 2 + mine % 2, edits = mine / 2;
      storage::Store& store = side == 0 ? *a.value() : *b.value();
      crdt::ReplicaId replica = 101 + static_cast<crdt::ReplicaId>(side);
      Status s = load(store, fresh + edits, [&](uint64_t i) {
        uint64_t index = i < fresh ? nextNew++ : (nextEdit++ * 7919) % o.keys;
        return review(index, crdt::Stamp{crdt::Hlc::fromParts(stampMillis, 0), replica},
                      side == 0 ? "left" : "right");
      });
      if (!s.ok()) return fail(s.error().toString());
    }
    MergeCounter mergedA, mergedB;
    gossip::Reconciler ra(*a.value(), mergedA.callback());
    gossip::Reconciler rb(*b.value(), mergedB.callback());
    auto start = SteadyClock::now();
    auto stats = gossip::reconcileDirect(ra, rb);
    if (!stats.ok()) return fail("reconcile failed: " + stats.error().toString());
    if (!mergedA.waitFor(ra.counters().statesReceived, std::chrono::seconds(120)) ||
        !mergedB.waitFor(rb.counters().statesReceived, std::chrono::seconds(120))) {
      return fail("merges did not commit");
    }
    Row row;
    row.seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
    row.diff = diff;
    row.stats = stats.value();
    row.keys = a.value()->stats().documents;
    row.naiveBytes = row.keys * (8 + 8);  // every (key hash, digest) at our wire sizes
    auto rootA = a.value()->merkleRoot();
    auto rootB = b.value()->merkleRoot();
    row.identical = rootA.ok() && rootB.ok() && rootA.value() == rootB.value() &&
                    mergedA.failed() == 0 && mergedB.failed() == 0;
    rows.push_back(row);
  }
  a.value().reset();
  b.value().reset();
  fs::remove_all(base);

  bool allIdentical = true;
  if (o.json) {
    for (const Row& r : rows) allIdentical = allIdentical && r.identical;
    std::printf("{\"bench\":\"reconcile\",\"keys\":%llu,\"identical\":%s,\"rows\":[",
                (unsigned long long)o.keys, allIdentical ? "true" : "false");
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::printf(
          "%s{\"keys\":%llu,\"diff\":%llu,\"overhead_bytes\":%llu,\"payload_bytes\":%llu,"
          "\"bytes_to_responder\":%llu,\"bytes_to_initiator\":%llu,\"round_trips\":%d,"
          "\"seconds\":%.4f,\"naive_bytes\":%llu,\"identical\":%s}",
          i ? "," : "", (unsigned long long)r.keys, (unsigned long long)r.diff,
          (unsigned long long)r.stats.overheadBytes(),
          (unsigned long long)(r.stats.payloadToInitiator + r.stats.payloadToResponder),
          (unsigned long long)r.stats.bytesToResponder,
          (unsigned long long)r.stats.bytesToInitiator, r.stats.roundTrips, r.seconds,
          (unsigned long long)r.naiveBytes, r.identical ? "true" : "false");
    }
    std::printf("]}\n");
  } else {
    std::printf("%-9s %-7s %12s %12s %12s %12s %10s %4s %9s %12s %s\n", "keys", "diff",
                "overhead B", "B/diff", "payload B", "->resp B", "->init B", "RTs", "seconds",
                "naive B", "identical");
    for (const Row& r : rows) {
      double perDiff = r.diff ? double(r.stats.overheadBytes()) / double(r.diff) : 0.0;
      std::printf("%-9llu %-7llu %12llu %12.1f %12llu %12llu %10llu %4d %9.3f %12llu %s\n",
                  (unsigned long long)r.keys, (unsigned long long)r.diff,
                  (unsigned long long)r.stats.overheadBytes(), perDiff,
                  (unsigned long long)(r.stats.payloadToInitiator + r.stats.payloadToResponder),
                  (unsigned long long)r.stats.bytesToResponder,
                  (unsigned long long)r.stats.bytesToInitiator, r.stats.roundTrips, r.seconds,
                  (unsigned long long)r.naiveBytes, r.identical ? "yes" : "NO");
      allIdentical = allIdentical && r.identical;
    }
  }
  return allIdentical ? 0 : 1;
}

}  // namespace

void addReconcileBench(CLI::App& app, int& exitCode) {
  auto options = std::make_shared<Options>();
  auto* sub = app.add_subcommand(
      "reconcile",
      "Merkle anti-entropy between two real stores over an in-memory link: overhead and "
      "payload bytes, round trips and time per number of differences");
  sub->add_option("--keys", options->keys, "Reviews in each store")->capture_default_str();
  sub->add_option("--diff", options->diffs,
                  "Differing reviews, split between both sides (repeatable; default 0 1 100 "
                  "10000)");
  sub->add_option("--dir", options->dir, "Scratch directory (default: a new one under /tmp)");
  sub->add_flag("--json", options->json,
                "One JSON object on stdout: bench, keys, identical, and rows (one per --diff)");
  sub->callback([options, &exitCode] { exitCode = run(*options); });
}

}  // namespace chorus::bench
