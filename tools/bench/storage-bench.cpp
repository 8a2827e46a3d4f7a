// chorus-bench storage: the store's real write path (Store::mutate: document,
// aggregates, Merkle tree, durable group commit) against plain LMDB
// puts of the same keys and values in batches of the same size, in one run.
//
// Throughput mode keeps --in-flight writes queued (closed loop) and reports
// both rates, their ratio, bytes on disk per review and ack latency. --rate
// mode offers a steady open-loop load and reports the latency of each write
// from the moment it was scheduled, so a stalled store cannot hide its
// backlog (no coordinated omission).
#include <lmdb.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <latch>
#include <mutex>
#include <random>
#include <semaphore>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "storage/key-schema.h"
#include "storage/merkle.h"
#include "storage/store.h"
#include "tools/bench/commands.h"

namespace chorus::bench {

namespace {

using Clock = std::chrono::steady_clock;

struct StorageBenchOptions {
  size_t count = 200'000;
  size_t products = 10'000;
  size_t contentBytes = 400;
  size_t batch = 1000;
  size_t inFlight = 0;  // 0: 4 x batch
  double rate = 0;      // writes/s offered; 0 = throughput mode
  double seconds = 10;  // --rate run length unless --count is given
  uint64_t mapMiB = 1024;
  uint64_t seed = 1;
  bool noSync = false;
  bool json = false;
  bool keep = false;
  bool check = false;
  std::vector<size_t> pageSizes;  // --page-latency SMALL,LARGE: product sizes
  size_t pageLimit = 20;
  std::string dir;
};

struct Item {
  crdt::ReviewKey key;
  uint8_t rating;
  std::string title;
  std::string body;
};

const char* const kWords[] = {"fits",   "true",  "to",     "size",  "the",    "fabric", "feels",
                              "cheap",  "but",   "colour", "is",    "great",  "arrived", "late",
                              "would",  "buy",   "again",  "runs",  "small",  "comfortable",
                              "sturdy", "after", "a",      "month", "of",     "daily",  "use"};

std::string words(std::mt19937_64& rng, size_t bytes) {
  std::string out;
  while (out.size() < bytes) {
    if (!out.empty()) out.push_back(' ');
    out += kWords[rng() % std::size(kWords)];
  }
  out.resize(bytes);
  return out;
}

// Realistic ids: "sku-000123" products, "user-5f3a9c..." authors, unique keys.
std::vector<Item> makeDataset(const StorageBenchOptions& o) {
  std::mt19937_64 rng(o.seed);
  std::vector<Item> items;
  items.reserve(o.count);
  std::unordered_set<std::string> seen;
  size_t titleBytes = std::min<size_t>(40, o.contentBytes / 4);
  while (items.size() < o.count) {
    char product[32], author[32];
    std::snprintf(product, sizeof product, "sku-%06zu", static_cast<size_t>(rng() % o.products));
    std::snprintf(author, sizeof author, "user-%012" PRIx64, static_cast<uint64_t>(rng() & 0xffffffffffffull));
    crdt::ReviewKey key{product, author};
    if (!seen.insert(storage::schema::docKey(key)).second) continue;
    items.push_back(Item{std::move(key), static_cast<uint8_t>(1 + rng() % 5), words(rng, titleBytes),
                         words(rng, o.contentBytes - titleBytes)});
  }
  return items;
}

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

struct Percentiles {
  double p50 = 0, p90 = 0, p99 = 0, max = 0;
};

Percentiles percentiles(std::vector<double> v) {
  Percentiles p;
  if (v.empty()) return p;
  auto at = [&](double q) {
    size_t i = std::min(v.size() - 1, static_cast<size_t>(q * double(v.size())));
    std::nth_element(v.begin(), v.begin() + static_cast<ptrdiff_t>(i), v.end());
    return v[i];
  };
  p.p50 = at(0.50);
  p.p90 = at(0.90);
  p.p99 = at(0.99);
  p.max = *std::max_element(v.begin(), v.end());
  return p;
}

uint64_t fileBytes(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

struct StoreRun {
  double seconds = 0;
  std::vector<double> latencyMs;
  uint64_t failures = 0;
  std::string firstError;
  storage::StoreStats stats;
  uint64_t fileBytes = 0;
};

Result<StoreRun> runStore(const StorageBenchOptions& o, const std::vector<Item>& items,
                          const std::string& dir) {
  storage::Options so;
  so.dir = dir;
  so.maxBatch = o.batch;
  so.initialMapBytes = o.mapMiB << 20;
  so.unsafeNoSync = o.noSync;
  auto opened = storage::Store::open(so);
  if (!opened) return opened.error();
  std::unique_ptr<storage::Store> store = std::move(opened).value();

  StoreRun run;
  run.latencyMs.assign(items.size(), 0.0);
  std::mutex errorMu;
  std::atomic<uint64_t> failures{0};
  std::latch done(static_cast<ptrdiff_t>(items.size()));
  std::counting_semaphore<> window(static_cast<ptrdiff_t>(o.inFlight));
  bool open = o.rate > 0;  // open loop: no window
  auto t0 = Clock::now();
  for (size_t i = 0; i < items.size(); ++i) {
    Clock::time_point start;
    if (open) {
      start = t0 + std::chrono::duration_cast<Clock::duration>(
                       std::chrono::duration<double>(double(i) / o.rate));
      std::this_thread::sleep_until(start);
    } else {
      window.acquire();
      start = Clock::now();
    }
    const Item* item = &items[i];
    store->mutate(
        item->key,
        [item](crdt::ReviewDoc& doc, crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
          return doc.write(item->rating, item->title, item->body, clock.now());
        },
        [&, i, start, open](Result<storage::Applied> r) {
          run.latencyMs[i] = ms(Clock::now() - start);
          if (!r) {
            if (failures.fetch_add(1) == 0) {
              std::lock_guard lock(errorMu);
              run.firstError = r.error().toString();
            }
          }
          if (!open) window.release();
          done.count_down();
        });
  }
  done.wait();
  run.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  run.failures = failures.load();
  run.stats = store->stats();
  store.reset();  // drains and closes
  run.fileBytes = fileBytes(dir + "/data.mdb");
  return run;
}

struct LmdbRun {
  double seconds = 0;
  uint64_t mapGrowths = 0;
  uint64_t usedBytes = 0;
  uint64_t fileBytes = 0;
};

Result<LmdbRun> runPlainLmdb(const StorageBenchOptions& o, const std::vector<Item>& items,
                             const std::string& dir) {
  // The same keys and the same stored bytes (checksum and listing header +
  // canonical state), computed before the clock starts.
  std::vector<std::pair<std::string, std::string>> kv;
  kv.reserve(items.size());
  crdt::HybridClock clock(1, crdt::systemClock());
  uint64_t seq = 0;
  for (const Item& item : items) {
    crdt::ReviewDoc doc(item.key);
    doc.write(item.rating, item.title, item.body, clock.now());
    std::string canonical = doc.encode();
    kv.emplace_back(
        storage::schema::docKey(item.key),
        storage::schema::encodeDocRecord(storage::digestOf(canonical),
                                         storage::schema::listingHeaderOf(doc), ++seq, canonical));
  }
  std::filesystem::create_directories(dir);
  auto fail = [](int rc, const char* what) {
    return makeError(ErrorCode::kIo, std::string("plain LMDB: ") + what + ": " + mdb_strerror(rc));
  };
  MDB_env* env = nullptr;
  if (int rc = mdb_env_create(&env); rc != 0) return fail(rc, "create");
  std::unique_ptr<MDB_env, void (*)(MDB_env*)> envGuard(env, mdb_env_close);
  mdb_env_set_maxdbs(env, 4);
  mdb_env_set_mapsize(env, static_cast<size_t>(o.mapMiB << 20));
  unsigned flags = MDB_NOTLS | (o.noSync ? MDB_NOSYNC : 0u);
  if (int rc = mdb_env_open(env, dir.c_str(), flags, 0644); rc != 0) return fail(rc, "open");
  MDB_dbi dbi;
  {
    MDB_txn* txn = nullptr;
    if (int rc = mdb_txn_begin(env, nullptr, 0, &txn); rc != 0) return fail(rc, "begin");
    if (int rc = mdb_dbi_open(txn, "documents", MDB_CREATE, &dbi); rc != 0) {
      mdb_txn_abort(txn);
      return fail(rc, "dbi_open");
    }
    if (int rc = mdb_txn_commit(txn); rc != 0) return fail(rc, "commit");
  }
  LmdbRun run;
  auto t0 = Clock::now();
  // Like the store, a full map is doubled and the whole batch retried.
  auto grow = [&]() -> Status {
    MDB_envinfo info;
    if (int rc = mdb_env_info(env, &info); rc != 0) return fail(rc, "env_info");
    if (int rc = mdb_env_set_mapsize(env, info.me_mapsize * 2); rc != 0) return fail(rc, "grow");
    ++run.mapGrowths;
    return okStatus();
  };
  for (size_t start = 0; start < kv.size();) {
    MDB_txn* txn = nullptr;
    if (int rc = mdb_txn_begin(env, nullptr, 0, &txn); rc != 0) return fail(rc, "begin");
    int rc = 0;
    for (size_t i = start; rc == 0 && i < std::min(kv.size(), start + o.batch); ++i) {
      MDB_val k{kv[i].first.size(), kv[i].first.data()};
      MDB_val v{kv[i].second.size(), kv[i].second.data()};
      rc = mdb_put(txn, dbi, &k, &v, 0);
    }
    if (rc != 0) {
      mdb_txn_abort(txn);
    } else {
      rc = mdb_txn_commit(txn);
    }
    if (rc == MDB_MAP_FULL) {
      if (auto s = grow(); !s) return s.error();
      continue;
    }
    if (rc != 0) return fail(rc, "put or commit");
    start += o.batch;
  }
  run.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  MDB_envinfo info;
  MDB_stat st;
  mdb_env_info(env, &info);
  mdb_env_stat(env, &st);
  run.usedBytes = (info.me_last_pgno + 1) * uint64_t{st.ms_psize};
  envGuard.reset();
  run.fileBytes = fileBytes(dir + "/data.mdb");
  return run;
}

// --page-latency: the first page of a product of SMALL and of LARGE reviews
// (no-sync writes, then reads only), in each order: p50 and p99 of 1,000
// listProduct calls each, from one thread.
int runPageLatency(const StorageBenchOptions& o, const std::string& dir) {
  if (o.pageSizes.size() != 2 || o.pageSizes[0] == 0 || o.pageSizes[1] == 0 || o.pageLimit == 0) {
    std::fprintf(stderr, "chorus-bench storage: --page-latency takes SMALL,LARGE (both >= 1)\n");
    return 2;
  }
  storage::Options so;
  so.dir = dir;
  so.maxBatch = o.batch;
  so.initialMapBytes = o.mapMiB << 20;
  so.unsafeNoSync = true;
  auto opened = storage::Store::open(so);
  if (!opened) {
    std::fprintf(stderr, "chorus-bench storage: %s\n", opened.error().toString().c_str());
    return 2;
  }
  std::unique_ptr<storage::Store> store = std::move(opened).value();
  std::mt19937_64 rng(o.seed);
  const char* names[2] = {"product-small", "product-large"};
  size_t total = o.pageSizes[0] + o.pageSizes[1];
  std::latch written(static_cast<ptrdiff_t>(total));
  std::atomic<uint64_t> failures{0};
  std::counting_semaphore<> window(static_cast<ptrdiff_t>(4 * o.batch));
  size_t titleBytes = std::min<size_t>(40, o.contentBytes / 4);
  for (int p = 0; p < 2; ++p) {
    for (size_t i = 0; i < o.pageSizes[p]; ++i) {
      char author[32];
      std::snprintf(author, sizeof author, "user-%09zu", i);
      auto rating = static_cast<uint8_t>(1 + rng() % 5);
      std::string title = words(rng, titleBytes), body = words(rng, o.contentBytes - titleBytes);
      window.acquire();
      store->mutate(
          {names[p], author},
          [=](crdt::ReviewDoc& doc, crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
            return doc.write(rating, title, body, clock.now());
          },
          [&](Result<storage::Applied> r) {
            if (!r) failures.fetch_add(1);
            window.release();
            written.count_down();
          });
    }
  }
  written.wait();
  if (failures.load() != 0) {
    std::fprintf(stderr, "chorus-bench storage: %" PRIu64 " writes failed\n", failures.load());
    return 1;
  }
  std::printf("chorus-bench storage --page-latency: first page of %zu reviews, 1000 calls each "
              "(ms)\n", o.pageLimit);
  std::printf("  %-8s  %22s  %22s  %s\n", "order", names[0], names[1], "p50 ratio");
  const std::pair<storage::Order, const char*> orders[] = {
      {storage::Order::kNewest, "newest"},
      {storage::Order::kLowestRating, "lowest"},
      {storage::Order::kHighestRating, "highest"}};
  for (auto [order, name] : orders) {
    Percentiles lat[2];
    for (int p = 0; p < 2; ++p) {
      std::vector<double> ms1;
      for (int i = 0; i < 1000; ++i) {
        auto t0 = Clock::now();
        auto page = store->listProduct(names[p], order, "", o.pageLimit);
        ms1.push_back(ms(Clock::now() - t0));
        if (!page || page->reviews.size() != std::min(o.pageLimit, o.pageSizes[p])) {
          std::fprintf(stderr, "chorus-bench storage: a listing failed or came back short\n");
          return 1;
        }
      }
      lat[p] = percentiles(ms1);
    }
    char cell[2][64];
    for (int p = 0; p < 2; ++p) {
      std::snprintf(cell[p], sizeof cell[p], "%zu: p50 %.3f p99 %.3f", o.pageSizes[p], lat[p].p50,
                    lat[p].p99);
    }
    std::printf("  %-8s  %22s  %22s  %.2f\n", name, cell[0], cell[1], lat[1].p50 / lat[0].p50);
  }
  return 0;
}

int run(StorageBenchOptions o) {
  if (o.count == 0 || o.products == 0 || o.batch == 0 || o.contentBytes < 8) {
    std::fprintf(stderr, "chorus-bench storage: --count, --products, --batch must be >= 1 and "
                         "--content-bytes >= 8\n");
    return 2;
  }
  if (o.inFlight == 0) o.inFlight = 4 * o.batch;
  bool rateMode = o.rate > 0;

  std::string dir = o.dir;
  bool removeDir = false;
  if (dir.empty()) {
    std::string pattern = "/tmp/chorus-bench-storage-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      std::perror("chorus-bench storage: mkdtemp");
      return 2;
    }
    dir = pattern;
    removeDir = !o.keep;
  }
  struct Cleanup {
    std::string dir;
    bool active;
    ~Cleanup() {
      std::error_code ec;
      if (active) std::filesystem::remove_all(dir, ec);
    }
  } cleanup{dir, removeDir};

  if (!o.pageSizes.empty()) return runPageLatency(o, dir + "/pages");

  std::vector<Item> items = makeDataset(o);
  auto store = runStore(o, items, dir + "/store");
  if (!store) {
    std::fprintf(stderr, "chorus-bench storage: %s\n", store.error().toString().c_str());
    return 2;
  }
  std::optional<LmdbRun> lmdb;
  if (!rateMode) {
    auto plain = runPlainLmdb(o, items, dir + "/lmdb");
    if (!plain) {
      std::fprintf(stderr, "chorus-bench storage: %s\n", plain.error().toString().c_str());
      return 2;
    }
    lmdb = *plain;
  }

  double n = double(items.size());
  double storeRate = n / store->seconds;
  double lmdbRate = lmdb ? n / lmdb->seconds : 0;
  double ratio = lmdb ? storeRate / lmdbRate : 0;
  Percentiles lat = percentiles(store->latencyMs);
  double diskPerReview = double(store->stats.usedBytes) / n;
  double avgBatch = store->stats.commits ? n / double(store->stats.commits) : 0;
  bool ratioMet = !lmdb || ratio >= 0.5;
  bool latencyMet = !rateMode || o.rate > 5000 || lat.p99 <= 10.0;

  if (o.json) {
    std::printf(
        "{\"bench\":\"storage\",\"mode\":\"%s\",\"count\":%zu,\"products\":%zu,\"content_bytes\":%"
        "zu,"
        "\"batch\":%zu,\"in_flight\":%zu,\"durable\":%s,",
        rateMode ? "rate" : "throughput", items.size(), o.products, o.contentBytes, o.batch,
        rateMode ? size_t{0} : o.inFlight, o.noSync ? "false" : "true");
    if (rateMode) std::printf("\"offered_writes_per_s\":%.1f,", o.rate);
    std::printf("\"ops_per_s\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,", storeRate, lat.p50, lat.p99);
    std::printf("\"store_writes_per_s\":%.1f,", storeRate);
    if (lmdb) {
      std::printf("\"lmdb_puts_per_s\":%.1f,\"ratio\":%.3f,\"lmdb_disk_bytes_per_review\":%.1f,"
                  "\"lmdb_map_growths\":%" PRIu64 ",",
                  lmdbRate, ratio, double(lmdb->usedBytes) / n, lmdb->mapGrowths);
    } else {
      std::printf("\"lmdb_puts_per_s\":null,\"ratio\":null,");
    }
    std::printf("\"ack_p50_ms\":%.3f,\"ack_p90_ms\":%.3f,\"ack_p99_ms\":%.3f,\"ack_max_ms\":%.3f,"
                "\"disk_bytes_per_review\":%.1f,\"commits\":%" PRIu64
                ",\"avg_batch\":%.1f,\"map_growths\":%" PRIu64 ",\"failures\":%" PRIu64 "}\n",
                lat.p50, lat.p90, lat.p99, lat.max, diskPerReview, store->stats.commits, avgBatch,
                store->stats.mapGrowths, store->failures);
  } else {
    std::printf("chorus-bench storage: %zu reviews, %zu products, %zu-byte content, batch %zu, %s\n",
                items.size(), o.products, o.contentBytes, o.batch,
                o.noSync ? "UNSAFE no-sync" : "durable (fsync per commit)");
    if (rateMode) {
      std::printf("  offered load              %10.0f writes/s (open loop, latency from schedule)\n",
                  o.rate);
      std::printf("  Store::mutate achieved    %10.0f writes/s   %7.2f s\n", storeRate, store->seconds);
    } else {
      std::printf("  in flight                 %10zu writes\n", o.inFlight);
      std::printf("  %-24s  %10s   %9s   %12s\n", "", "writes/s", "time", "bytes/review");
      std::printf("  %-24s  %10.0f   %7.2f s   %12.0f\n", "Store::mutate", storeRate,
                  store->seconds, diskPerReview);
      std::printf("  %-24s  %10.0f   %7.2f s   %12.0f\n", "plain LMDB puts", lmdbRate,
                  lmdb->seconds, double(lmdb->usedBytes) / n);
      std::printf("  ratio store / LMDB        %10.2f   (target >= 0.50: %s)\n", ratio,
                  ratioMet ? "met" : "NOT MET");
    }
    std::printf("  ack latency ms            p50 %.2f  p90 %.2f  p99 %.2f  max %.2f", lat.p50, lat.p90,
                lat.p99, lat.max);
    if (rateMode && o.rate <= 5000) {
      std::printf("   (target p99 <= 10 ms: %s)", latencyMet ? "met" : "NOT MET");
    }
    std::printf("\n  store: %" PRIu64 " commits (avg %.1f writes each), %" PRIu64
                " map growths, data.mdb %.1f MB on disk\n",
                store->stats.commits, avgBatch, store->stats.mapGrowths,
                double(store->fileBytes) / 1e6);
    if (lmdb) {
      std::printf("  plain LMDB: %" PRIu64 " map growths, data.mdb %.1f MB on disk\n",
                  lmdb->mapGrowths, double(lmdb->fileBytes) / 1e6);
    }
    if (store->failures) {
      std::printf("  FAILED writes: %" PRIu64 " (first: %s)\n", store->failures,
                  store->firstError.c_str());
    }
  }
  if (store->failures) return 1;
  if (o.check && !(ratioMet && latencyMet)) return 1;
  return 0;
}

}  // namespace

void addStorageBench(CLI::App& app, int& exitCode) {
  auto o = std::make_shared<StorageBenchOptions>();
  auto* sub = app.add_subcommand(
      "storage",
      "Store write path (document + aggregates + Merkle tree, durable group commit) "
      "versus plain LMDB puts of the same keys and values in batches of the same size; "
      "with --rate, ack latency under a steady offered load");
  sub->add_option("-n,--count", o->count, "Reviews to write (with --rate: default rate x --seconds)")
      ->capture_default_str();
  sub->add_option("--products", o->products, "Distinct products (sku-000000...)")->capture_default_str();
  sub->add_option("--content-bytes", o->contentBytes, "Title + body bytes per review")
      ->capture_default_str();
  sub->add_option("--batch", o->batch, "Store maxBatch, and plain LMDB puts per transaction")
      ->capture_default_str();
  sub->add_option("--in-flight", o->inFlight, "Writes kept queued in throughput mode (default 4 x batch)");
  sub->add_option("--rate", o->rate, "Offer this many writes/s (open loop) and report latency only");
  sub->add_option("--seconds", o->seconds, "Length of a --rate run when --count is not given")
      ->capture_default_str();
  sub->add_option("--map-mib", o->mapMiB, "Initial LMDB map size for both runs, MiB (each doubles when full)")
      ->capture_default_str();
  sub->add_option("--seed", o->seed, "Seed of the generated reviews")->capture_default_str();
  sub->add_option("--dir", o->dir, "Scratch directory, kept afterwards (default: new one under /tmp, removed)");
  sub->add_flag("--keep", o->keep, "Keep the default scratch directory");
  sub->add_flag("--unsafe-no-sync", o->noSync, "Both runs without fsync (MDB_NOSYNC)");
  auto* pageOpt = sub->add_option("--page-latency", o->pageSizes,
                  "SMALL,LARGE: instead of writes, time the first page of a product of SMALL "
                  "and one of LARGE reviews (built with no-sync writes) in each order");
  pageOpt->delimiter(',')->expected(2);
  sub->add_option("--page-limit", o->pageLimit, "Reviews per page for --page-latency")
      ->capture_default_str();
  sub->add_flag("--json", o->json, "Print one JSON object instead of the table");
  sub->add_flag("--check", o->check,
                "Exit 1 if a target is missed (ratio >= 0.5; p99 <= 10 ms at --rate <= 5000)");
  auto* countOpt = sub->get_option("--count");
  sub->callback([o, countOpt, &exitCode] {
    StorageBenchOptions opts = *o;
    if (opts.rate > 0 && countOpt->count() == 0) {
      opts.count = static_cast<size_t>(opts.rate * opts.seconds);
    }
    exitCode = run(opts);
  });
}

}  // namespace chorus::bench
