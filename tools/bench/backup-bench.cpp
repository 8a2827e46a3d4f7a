// chorus-bench backup: a hot backup (Store::backup) of a store of --keys
// reviews while an open-loop writer offers --rate writes/s to the same
// store, in one run:
//   - the backup's duration and size, and the time to copy the store's
//     data.mdb (read + write + fsync, 1 MiB chunks) on the same disk as the
//     physical baseline;
//   - the latency of the writes scheduled while the backup ran, from the
//     moment each was scheduled (no coordinated omission), against the
//     writes of the seconds before it (baseline);
//   - verifyBackup's duration (checksum and full recount of the copy).
// The store is filled without fsync first (fast), then reopened durable
// (unless --unsafe-no-sync) for the measured phase.
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <random>
#include <semaphore>
#include <string>
#include <thread>
#include <vector>

#include "storage/backup.h"
#include "storage/store.h"
#include "tools/bench/commands.h"

namespace chorus::bench {

namespace {

using Clock = std::chrono::steady_clock;

struct BackupBenchOptions {
  size_t keys = 1'000'000;
  size_t products = 0;  // 0: keys / 100
  size_t contentBytes = 400;
  double rate = 1000;    // writes/s offered while measuring
  double baselineS = 3;  // seconds of writes before the backup
  double tailS = 1;      // seconds of writes after it
  bool noSync = false;   // the measured phase without fsync
  bool verify = true;
  uint64_t seed = 1;
  bool json = false;
  bool keep = false;
  std::string dir;
};

// Review i of the fill: a unique author per review, products round the
// --products ids; ~contentBytes of text.
struct Review {
  crdt::ReviewKey key;
  uint8_t rating;
  std::string title, body;
};

Review makeReview(std::mt19937_64& rng, const std::string& authorPrefix, size_t i, size_t products,
                  size_t contentBytes) {
  static const char* const kWords[] = {"fits",  "true", "to", "size",  "the", "fabric", "feels",
                                       "cheap", "but",  "is", "great", "buy", "again",  "sturdy"};
  auto text = [&](size_t bytes) {
    std::string out;
    while (out.size() < bytes) {
      if (!out.empty()) out.push_back(' ');
      out += kWords[rng() % std::size(kWords)];
    }
    out.resize(bytes);
    return out;
  };
  char product[32], author[48];
  std::snprintf(product, sizeof product, "sku-%06zu", static_cast<size_t>(rng() % products));
  std::snprintf(author, sizeof author, "%s%09zu", authorPrefix.c_str(), i);
  size_t titleBytes = std::min<size_t>(40, contentBytes / 4);
  return Review{{product, author},
                static_cast<uint8_t>(1 + rng() % 5),
                text(titleBytes),
                text(contentBytes - titleBytes)};
}

storage::Mutation writeOf(Review r) {
  return [r = std::move(r)](crdt::ReviewDoc& doc,
                            crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
    return doc.write(r.rating, r.title, r.body, clock.now());
  };
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  size_t i = std::min(v.size() - 1, static_cast<size_t>(q * double(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<ptrdiff_t>(i), v.end());
  return v[i];
}

// Copies `from` to `to` in 1 MiB chunks and fsyncs it: the physical
// baseline. Returns seconds, or a negative number on failure.
double timeFileCopy(const std::string& from, const std::string& to) {
  auto t0 = Clock::now();
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  bool ok = in >= 0 && out >= 0;
  std::vector<char> buf(1 << 20);
  while (ok) {
    ssize_t n = ::read(in, buf.data(), buf.size());
    if (n <= 0) {
      ok = n == 0;
      break;
    }
    ok = ::write(out, buf.data(), static_cast<size_t>(n)) == n;
  }
  ok = ok && ::fsync(out) == 0;
  if (in >= 0) ::close(in);
  if (out >= 0) ::close(out);
  return ok ? seconds(Clock::now() - t0) : -1;
}

int runBackupBench(const BackupBenchOptions& o) {
  auto say = [&](const char* fmt, auto... args) {
    std::fprintf(stderr, fmt, args...);
    std::fflush(stderr);
  };
  if (o.keys == 0 || o.rate <= 0 || o.baselineS < 0.5) {
    std::fprintf(stderr,
                 "chorus-bench backup: --keys and --rate must be > 0, --baseline-s >= 0.5\n");
    return 2;
  }
  size_t products = o.products != 0 ? o.products : std::max<size_t>(1, o.keys / 100);
  std::string root = o.dir;
  bool made = false;
  if (root.empty()) {
    char pattern[] = "/var/tmp/chorus-bench-backup-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) {
      std::perror("chorus-bench backup: mkdtemp");
      return 2;
    }
    root = pattern;
    made = true;
  }
  std::string storeDir = root + "/store", backupDir = root + "/backup";
  std::error_code ec;
  std::filesystem::remove_all(backupDir, ec);
  std::filesystem::remove(root + "/copy.mdb", ec);

  // 1. Fill, without fsync.
  std::mt19937_64 rng(o.seed);
  {
    storage::Options so;
    so.dir = storeDir;
    so.unsafeNoSync = true;
    so.initialMapBytes = uint64_t{1} << 30;
    auto store = storage::Store::open(so);
    if (!store) {
      std::fprintf(stderr, "chorus-bench backup: %s\n", store.error().toString().c_str());
      return 2;
    }
    uint64_t have = (*store)->stats().documents;
    auto t0 = Clock::now();
    std::counting_semaphore<> window(4000);
    std::atomic<uint64_t> failures{0};
    for (size_t i = have; i < o.keys; ++i) {
      window.acquire();
      Review r = makeReview(rng, "fill-", i, products, o.contentBytes);
      crdt::ReviewKey key = r.key;
      (*store)->mutate(std::move(key), writeOf(std::move(r)), [&](Result<storage::Applied> res) {
        if (!res) failures.fetch_add(1);
        window.release();
      });
    }
    store->reset();  // drains
    if (failures.load() != 0) {
      std::fprintf(stderr, "chorus-bench backup: %" PRIu64 " fill writes failed\n",
                   failures.load());
      return 1;
    }
    if (o.keys > have) {
      say("filled %zu reviews in %.1f s\n", o.keys - have, seconds(Clock::now() - t0));
    }
  }

  // 2. The measured phase: writes at --rate, the backup in the middle.
  storage::Options so;
  so.dir = storeDir;
  so.unsafeNoSync = o.noSync;
  auto opened = storage::Store::open(so);
  if (!opened) {
    std::fprintf(stderr, "chorus-bench backup: %s\n", opened.error().toString().c_str());
    return 2;
  }
  std::unique_ptr<storage::Store> store = std::move(opened).value();
  uint64_t keysAtStart = store->stats().documents;

  struct Sample {
    double scheduledS;  // from t0
    double latencyMs;
    bool ok;
  };
  std::mutex mu;
  std::vector<Sample> samples;
  std::atomic<bool> stop{false};
  std::atomic<size_t> inFlight{0};
  auto t0 = Clock::now();
  std::thread writer([&] {
    std::mt19937_64 wrng(o.seed + 1);
    for (size_t i = 0; !stop.load() && i < static_cast<size_t>(o.rate * 3600); ++i) {
      auto at = t0 + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(double(i) / o.rate));
      std::this_thread::sleep_until(at);
      Review r = makeReview(wrng, "live-", i, products, o.contentBytes);
      crdt::ReviewKey key = r.key;
      inFlight.fetch_add(1);
      store->mutate(std::move(key), writeOf(std::move(r)), [&, at](Result<storage::Applied> res) {
        double ms = std::chrono::duration<double, std::milli>(Clock::now() - at).count();
        {
          std::lock_guard lock(mu);
          samples.push_back({seconds(at - t0), ms, res.ok()});
        }
        inFlight.fetch_sub(1);
      });
    }
  });
  std::this_thread::sleep_until(
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.baselineS)));
  say("backing up %" PRIu64 " reviews while writing %.0f/s...\n", keysAtStart, o.rate);
  double backupStartS = seconds(Clock::now() - t0);
  auto manifest = store->backup(backupDir, storage::BackupOptions{});
  double backupEndS = seconds(Clock::now() - t0);
  std::this_thread::sleep_for(std::chrono::duration<double>(o.tailS));
  stop = true;
  writer.join();
  for (int i = 0; i < 60'000 && inFlight.load() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!manifest) {
    std::fprintf(stderr, "chorus-bench backup: %s\n", manifest.error().toString().c_str());
    return 1;
  }
  double backupS = backupEndS - backupStartS;
  uint64_t storeFileBytes = 0;
  if (auto size = std::filesystem::file_size(storeDir + "/data.mdb", ec); !ec) {
    storeFileBytes = size;
  }
  double copyS = timeFileCopy(storeDir + "/data.mdb", root + "/copy.mdb");
  std::filesystem::remove(root + "/copy.mdb", ec);
  store.reset();

  std::vector<double> during, baseline;
  uint64_t failed = 0;
  {
    std::lock_guard lock(mu);
    for (const Sample& s : samples) {
      if (!s.ok) ++failed;
      if (s.scheduledS >= backupStartS && s.scheduledS <= backupEndS) during.push_back(s.latencyMs);
      if (s.scheduledS >= 0.5 && s.scheduledS < backupStartS) baseline.push_back(s.latencyMs);
    }
  }
  double verifyS = -1;
  bool verified = true;
  if (o.verify) {
    auto v0 = Clock::now();
    auto v = storage::verifyBackup(backupDir);
    verifyS = seconds(Clock::now() - v0);
    verified = v.ok();
    if (!verified)
      std::fprintf(stderr, "chorus-bench backup: verify: %s\n", v.error().toString().c_str());
  }

  double p50 = percentile(during, 0.50), p99 = percentile(during, 0.99);
  double maxMs = during.empty() ? 0 : *std::max_element(during.begin(), during.end());
  double baseP50 = percentile(baseline, 0.50), baseP99 = percentile(baseline, 0.99);
  double achieved = backupS > 0 ? double(during.size()) / backupS : 0;
  bool targetsMet = backupS <= 10 && p99 <= 50 && verified && failed == 0;
  if (o.json) {
    std::printf(
        "{\"bench\":\"backup\",\"keys\":%zu,\"products\":%zu,\"content_bytes\":%zu,"
        "\"offered_writes_per_s\":%.0f,\"durable\":%s,\"baseline_s\":%.1f,"
        "\"backup_s\":%.3f,\"backup_bytes\":%" PRIu64 ",\"backup_keys\":%" PRIu64
        ",\"store_file_bytes\":%" PRIu64
        ",\"file_copy_s\":%.3f,\"backup_vs_copy\":%.2f,"
        "\"writes_during_backup\":%zu,\"ops_per_s\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
        "\"max_ms\":%.3f,\"baseline_p50_ms\":%.3f,\"baseline_p99_ms\":%.3f,\"failures\":%" PRIu64
        ",\"verify_s\":%.3f,\"verified\":%s,\"targets_met\":%s}\n",
        o.keys, products, o.contentBytes, o.rate, o.noSync ? "false" : "true", o.baselineS, backupS,
        manifest->fileBytes, manifest->keys, storeFileBytes, copyS,
        copyS > 0 ? backupS / copyS : 0.0, during.size(), achieved, p50, p99, maxMs, baseP50,
        baseP99, failed, verifyS, verified ? "true" : "false", targetsMet ? "true" : "false");
  } else {
    std::printf("chorus-bench backup: %" PRIu64 " reviews, %.0f writes/s offered (%s)\n",
                manifest->keys, o.rate, o.noSync ? "no fsync" : "durable");
    std::printf("  backup        %8.2f s   %" PRIu64 " bytes (store file %" PRIu64 " bytes)\n",
                backupS, manifest->fileBytes, storeFileBytes);
    std::printf("  file copy     %8.2f s   (data.mdb read, written, fsynced: baseline)\n", copyS);
    std::printf(
        "  writes        %8zu during the backup, %.0f/s: p50 %.2f ms, p99 %.2f ms, "
        "max %.2f ms\n",
        during.size(), achieved, p50, p99, maxMs);
    std::printf("  baseline      %8zu before it: p50 %.2f ms, p99 %.2f ms\n", baseline.size(),
                baseP50, baseP99);
    if (o.verify) {
      std::printf("  verify        %8.2f s   %s\n", verifyS, verified ? "ok" : "FAILED");
    }
    std::printf("  targets (backup <= 10 s, write p99 <= 50 ms): %s\n",
                targetsMet ? "met" : "NOT met");
  }
  if (!o.keep) {
    std::filesystem::remove_all(backupDir, ec);
    if (made) std::filesystem::remove_all(root, ec);
  }
  return verified && failed == 0 ? 0 : 1;
}

}  // namespace

void addBackupBench(CLI::App& app, int& exitCode) {
  auto o = std::make_shared<BackupBenchOptions>();
  auto* cmd = app.add_subcommand(
      "backup",
      "A hot backup (Store::backup) of --keys reviews while --rate writes/s go to the same\n"
      "store: backup time and size against a plain copy of data.mdb, the writes' latency\n"
      "during the backup against the seconds before it, and verifyBackup's time.\n"
      "Targets (issue 18): backup <= 10 s and write p99 <= 50 ms at 1M reviews, 1,000/s");
  cmd->add_option("--keys,-n", o->keys, "Reviews in the store (it is filled without fsync)")
      ->capture_default_str();
  cmd->add_option("--products", o->products, "Distinct products (0 = keys / 100)");
  cmd->add_option("--content-bytes", o->contentBytes, "Title + body bytes per review")
      ->capture_default_str();
  cmd->add_option("--rate", o->rate, "Writes per second offered while measuring (open loop)")
      ->capture_default_str();
  cmd->add_option("--baseline-s", o->baselineS, "Seconds of writes before the backup starts")
      ->capture_default_str();
  cmd->add_option("--tail-s", o->tailS, "Seconds of writes after it ends")->capture_default_str();
  cmd->add_flag("--unsafe-no-sync", o->noSync, "Measured writes without fsync");
  cmd->add_flag("!--no-verify", o->verify, "Skip timing verifyBackup");
  cmd->add_option("--seed", o->seed, "Dataset seed")->capture_default_str();
  cmd->add_option("--dir", o->dir,
                  "Work dir (store/ and backup/ inside; an existing store/ is reused and "
                  "filled up to --keys). Default: a new dir under /var/tmp, removed after");
  cmd->add_flag("--keep", o->keep, "Keep the backup (and a --dir's store)");
  cmd->add_flag("--json", o->json, "One JSON object on stdout");
  cmd->callback([o, &exitCode] { exitCode = runBackupBench(*o); });
}

}  // namespace chorus::bench
