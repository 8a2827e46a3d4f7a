// chorus-bench bootstrap: an empty node catching up with a node of N reviews
// (issue 18), as two chorusd processes on loopback.
//
// 1. A dataset of N reviews (chorus-bench load's, tools/bench/load-dataset.h)
//    written straight into a store (in this process, unsynced), or reused
//    from --dataset-dir when it holds the same N, seed and body size.
// 2. The physical baseline: the time to copy that data.mdb to another file
//    in the scratch dir (1 MiB reads and writes, then fdatasync), same run.
// 3. The idle RssAnon of an empty node (chorusd started on an empty dir,
//    sampled after 1 s) and of the sender once it serves the dataset.
// 4. The receiver: chorusd on an empty data dir, --join the sender,
//    --bootstrap MODE. Timed from its start until its Merkle root equals the
//    sender's (polled over RPC every 20 ms). Both processes' RssAnon are read
//    from /proc/PID/status every --sample-ms meanwhile; bytes sent are the
//    sender's gossip bytesOut (snapshot chunks included) over the run.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <latch>
#include <map>
#include <mutex>
#include <semaphore>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "api/client.h"
#include "gossip/keyring.h"
#include "storage/store.h"
#include "tools/bench/load-chorusd.h"
#include "tools/bench/load-dataset.h"

namespace chorus::bench {

namespace {

using SteadyClock = std::chrono::steady_clock;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct Options {
  uint64_t keys = 100'000;
  size_t bodyBytes = 400;
  uint64_t seed = 1;
  std::string mode = "auto";
  std::string dir;
  std::string datasetDir;
  std::string chorusd;
  bool noSync = false;
  bool json = false;
  int timeoutSeconds = 900;
  int sampleMs = 5;
};

double seconds(SteadyClock::duration d) { return std::chrono::duration<double>(d).count(); }
double mb(uint64_t bytes) { return double(bytes) / double(1 << 20); }

// RssAnon of `pid` in bytes (/proc/PID/status), 0 if it cannot be read.
uint64_t rssAnon(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("RssAnon:", 0) == 0) {
      return std::strtoull(line.c_str() + 8, nullptr, 10) * 1024;  // "RssAnon:  1234 kB"
    }
  }
  return 0;
}

// Reads the RssAnon of some processes every `period` on a thread of its own
// and keeps each one's peak.
class RssSampler {
 public:
  explicit RssSampler(std::chrono::milliseconds period) : period_(period) {
    thread_ = std::thread([this] { run(); });
  }
  ~RssSampler() {
    stop_ = true;
    thread_.join();
  }
  void watch(pid_t pid) {
    std::lock_guard lock(mu_);
    peaks_[pid] = rssAnon(pid);
  }
  uint64_t peak(pid_t pid) {
    std::lock_guard lock(mu_);
    return peaks_[pid];
  }
  uint64_t samples() const { return samples_.load(); }

 private:
  void run() {
    while (!stop_) {
      {
        std::lock_guard lock(mu_);
        for (auto& [pid, peak] : peaks_) peak = std::max(peak, rssAnon(pid));
      }
      ++samples_;
      std::this_thread::sleep_for(period_);
    }
  }
  std::chrono::milliseconds period_;
  std::mutex mu_;
  std::map<pid_t, uint64_t> peaks_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> samples_{0};
  std::thread thread_;
};

std::string readText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Writes the dataset into `dir` (replacing what is there). Returns seconds.
Result<double> writeDataset(const Options& o, const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  storage::Options so;
  so.dir = dir;
  so.unsafeNoSync = true;  // a fixture: fsync'd once below
  so.initialMapBytes = 1ull << 30;
  auto opened = storage::Store::open(so);
  if (!opened.ok()) return opened.error();
  auto store = std::move(opened).value();
  Dataset data(o.seed, o.keys);
  std::counting_semaphore<> window(4096);
  std::latch done(static_cast<ptrdiff_t>(o.keys));
  std::atomic<uint64_t> failures{0};
  auto t0 = SteadyClock::now();
  for (uint64_t i = 0; i < o.keys; ++i) {
    auto request = std::make_shared<WriteRequest>(data.put(data.preloadKey(i), 1, o.bodyBytes));
    window.acquire();
    store->mutate(
        {request->product, request->author},
        [request](crdt::ReviewDoc& doc, crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
          return doc.write(uint8_t(request->rating), request->title, request->body, clock.now());
        },
        [&](Result<storage::Applied> r) {
          if (!r.ok()) ++failures;
          window.release();
          done.count_down();
        });
    if (!o.json && i > 0 && i % 100'000 == 0) {
      std::fprintf(stderr, "  dataset: %llu of %llu reviews\n", (unsigned long long)i,
                   (unsigned long long)o.keys);
    }
  }
  done.wait();
  store.reset();
  if (failures > 0) {
    return makeError(ErrorCode::kIo, std::to_string(failures.load()) + " dataset writes failed");
  }
  int fd = ::open((dir + "/data.mdb").c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  std::ofstream(dir + "/bench-dataset")
      << "keys " << o.keys << " seed " << o.seed << " body " << o.bodyBytes << "\n";
  return seconds(SteadyClock::now() - t0);
}

// Copies `from` to `to` (1 MiB reads and writes, then fdatasync): the
// physical baseline. Returns seconds.
Result<double> copyFile(const std::string& from, const std::string& to) {
  auto t0 = SteadyClock::now();
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return makeError(ErrorCode::kIo, "cannot open " + from);
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out < 0) {
    ::close(in);
    return makeError(ErrorCode::kIo, "cannot create " + to);
  }
  std::vector<char> buffer(1 << 20);
  bool ok = true;
  while (ok) {
    ssize_t n = ::read(in, buffer.data(), buffer.size());
    if (n <= 0) {
      ok = n == 0;
      break;
    }
    for (ssize_t at = 0; at < n;) {
      ssize_t w = ::write(out, buffer.data() + at, size_t(n - at));
      if (w <= 0) {
        ok = false;
        break;
      }
      at += w;
    }
  }
  ok = ok && ::fdatasync(out) == 0;
  ::close(in);
  ::close(out);
  if (!ok) return makeError(ErrorCode::kIo, "copying " + from + " failed");
  return seconds(SteadyClock::now() - t0);
}

class Bench {
 public:
  explicit Bench(Options o) : o_(std::move(o)) {}

  int run() {
    std::error_code ec;
    std::string base = o_.dir;
    if (base.empty()) {
      char tmpl[] = "/tmp/chorus-bootstrap-XXXXXX";
      if (!mkdtemp(tmpl)) return fail("cannot create a scratch directory");
      base = tmpl;
      cleanup_ = base;
    }
    fs::create_directories(base, ec);
    std::string dataset = o_.datasetDir.empty() ? base + "/sender" : o_.datasetDir;
    std::string binary = o_.chorusd.empty() ? LocalChorusd::defaultBinary() : o_.chorusd;
    int code = measure(base, dataset, binary);
    if (!cleanup_.empty()) fs::remove_all(cleanup_, ec);
    return code;
  }

 private:
  int fail(const std::string& why) {
    std::fprintf(stderr, "chorus-bench bootstrap: %s\n", why.c_str());
    return 1;
  }
  void note(const std::string& line) {
    if (!o_.json) std::fprintf(stderr, "%s\n", line.c_str());
  }

  std::vector<std::string> nodeArgs(const std::string& id, const std::string& dir,
                                    const std::string& keyFile) {
    std::vector<std::string> args = {"--node-id",   id,
                                     "--data-dir",  dir,
                                     "--listen",    "127.0.0.1:0",
                                     "--no-auth",   "--rate-limit",
                                     "0",           "--gossip-listen",
                                     "127.0.0.1:0", "--cluster-key-file",
                                     keyFile,       "--log-level",
                                     "info"};
    if (o_.noSync) args.push_back("--unsafe-no-sync");
    return args;
  }

  // Whether `binary --help` lists --bootstrap (an older chorusd does not).
  static bool chorusdHasBootstrap(const std::string& binary, const std::string& base) {
    std::string log = base + "/help.log";
    std::error_code ec;
    fs::remove(log, ec);
    auto help = LocalChorusd::spawn(binary, {"--help"}, log);
    if (!help.ok()) return false;
    for (int i = 0; i < 500 && (*help)->running(); ++i) std::this_thread::sleep_for(10ms);
    return readText(log).find("--bootstrap") != std::string::npos;
  }

  int measure(const std::string& base, const std::string& dataset, const std::string& binary) {
    std::error_code ec;
    // 1. The dataset.
    std::string want = "keys " + std::to_string(o_.keys) + " seed " + std::to_string(o_.seed) +
                       " body " + std::to_string(o_.bodyBytes) + "\n";
    if (readText(dataset + "/bench-dataset") != want || !fs::exists(dataset + "/data.mdb")) {
      note("writing the dataset (" + std::to_string(o_.keys) + " reviews) in " + dataset);
      auto wrote = writeDataset(o_, dataset);
      if (!wrote.ok()) return fail("dataset: " + wrote.error().toString());
      char line[96];
      std::snprintf(line, sizeof line, "  dataset written in %.1f s", *wrote);
      note(line);
    } else {
      note("reusing the dataset in " + dataset);
    }
    std::string keyFile = dataset + "/bench-cluster.key";
    if (!fs::exists(keyFile)) {
      int fd = ::open(keyFile.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (fd < 0) return fail("cannot write " + keyFile);
      std::string key = gossip::generateClusterKey() + "\n";
      bool wrote = ::write(fd, key.data(), key.size()) == ssize_t(key.size());
      ::close(fd);
      if (!wrote) return fail("cannot write " + keyFile);
    }
    uint64_t fileBytes = fs::file_size(dataset + "/data.mdb", ec);

    // 2. The physical baseline.
    auto copied = copyFile(dataset + "/data.mdb", base + "/copy.mdb");
    fs::remove(base + "/copy.mdb", ec);
    if (!copied.ok()) return fail(copied.error().toString());
    fileCopy_ = *copied;

    // 3. Idle figures: an empty node, then the sender.
    {
      std::string idleDir = base + "/idle";
      fs::remove_all(idleDir, ec);
      auto idle =
          LocalChorusd::spawn(binary, nodeArgs("bench-idle", idleDir, keyFile), base + "/idle.log");
      if (!idle.ok()) return fail(idle.error().toString());
      auto up = (*idle)->waitFor("listening", 60s);
      if (!up.ok()) return fail("idle node: " + up.error().toString());
      std::this_thread::sleep_for(1s);
      receiverIdle_ = rssAnon((*idle)->pid());
      (*idle)->stop(SIGTERM, 30s);
      fs::remove_all(idleDir, ec);
    }
    fs::remove(base + "/sender.log", ec);
    auto sender = LocalChorusd::spawn(binary, nodeArgs("bench-sender", dataset, keyFile),
                                      base + "/sender.log");
    if (!sender.ok()) return fail(sender.error().toString());
    auto senderRpc = (*sender)->waitFor("listening", 120s);
    if (!senderRpc.ok()) return fail("sender: " + senderRpc.error().toString());
    auto senderGossip = (*sender)->waitFor("gossip", 10s);
    if (!senderGossip.ok()) return fail("sender: " + senderGossip.error().toString());
    Result<NodeStatus> senderStatus = makeError(ErrorCode::kUnavailable, "not asked");
    uint64_t bytesBefore = 0;
    {
      // One Client per thread at a time (each owns a KJ event loop).
      auto senderClient = api::Client::connect(*senderRpc);
      if (!senderClient.ok()) return fail("sender RPC: " + senderClient.error().toString());
      senderStatus = (*senderClient)->status();
      if (!senderStatus.ok()) return fail("sender status: " + senderStatus.error().toString());
      auto before = (*senderClient)->cluster();
      if (!before.ok()) return fail("sender cluster: " + before.error().toString());
      bytesBefore = before->stats.bytesOut;
    }
    if (senderStatus->keyCount != o_.keys) {
      return fail("the sender holds " + std::to_string(senderStatus->keyCount) + " reviews, not " +
                  std::to_string(o_.keys));
    }
    std::this_thread::sleep_for(1s);
    senderIdle_ = rssAnon((*sender)->pid());

    // 4. The receiver.
    std::string receiverDir = base + "/receiver";
    fs::remove_all(receiverDir, ec);
    fs::remove(base + "/receiver.log", ec);
    auto args = nodeArgs("bench-receiver", receiverDir, keyFile);
    args.push_back("--join");
    args.push_back(*senderGossip);
    if (chorusdHasBootstrap(binary, base)) {
      args.push_back("--bootstrap");
      args.push_back(o_.mode);
    } else {
      note("this chorusd has no --bootstrap: it catches up by anti-entropy");
      o_.mode = "anti-entropy (chorusd without --bootstrap)";
    }
    note("receiver starts (--bootstrap " + o_.mode + ")");
    bool reached = false;
    {
      RssSampler sampler(std::chrono::milliseconds(o_.sampleMs));
      sampler.watch((*sender)->pid());
      auto t0 = SteadyClock::now();
      auto receiver = LocalChorusd::spawn(binary, args, base + "/receiver.log");
      if (!receiver.ok()) return fail(receiver.error().toString());
      sampler.watch((*receiver)->pid());
      auto deadline = t0 + std::chrono::seconds(o_.timeoutSeconds);
      auto receiverRpc = (*receiver)->waitFor("listening", std::chrono::seconds(o_.timeoutSeconds));
      if (!receiverRpc.ok()) return fail("receiver: " + receiverRpc.error().toString());
      serving_ = seconds(SteadyClock::now() - t0);
      auto receiverClient = api::Client::connect(*receiverRpc);
      if (!receiverClient.ok()) return fail("receiver RPC: " + receiverClient.error().toString());
      uint64_t lastKeys = 0;
      auto lastNote = SteadyClock::now();
      while (SteadyClock::now() < deadline) {
        auto st = (*receiverClient)->status();
        if (st.ok()) {
          lastKeys = st->keyCount;
          if (st->merkleRoot == senderStatus->merkleRoot) {
            reached = true;
            break;
          }
        }
        if (SteadyClock::now() - lastNote > 5s) {
          lastNote = SteadyClock::now();
          char line[96];
          std::snprintf(line, sizeof line, "  %.0f s: the receiver holds %llu reviews",
                        seconds(lastNote - t0), (unsigned long long)lastKeys);
          note(line);
        }
        std::this_thread::sleep_for(20ms);
      }
      bootstrap_ = seconds(SteadyClock::now() - t0);
      senderPeak_ = sampler.peak((*sender)->pid());
      receiverPeak_ = sampler.peak((*receiver)->pid());
      samples_ = sampler.samples();
      receiverClient.value().reset();
      if (auto senderClient = api::Client::connect(*senderRpc); senderClient.ok()) {
        auto after = (*senderClient)->cluster();
        if (after.ok()) bytesSent_ = after->stats.bytesOut - bytesBefore;
      }
      std::string log = readText(base + "/receiver.log");
      size_t at = log.find("bootstrap: from a snapshot");
      if (at == std::string::npos) at = log.find("bootstrap: by anti-entropy");
      if (at != std::string::npos) how_ = log.substr(at, log.find('\n', at) - at);
      (*receiver)->stop(SIGTERM, 60s);
    }
    (*sender)->stop(SIGTERM, 60s);
    fs::remove_all(receiverDir, ec);
    if (!reached) {
      return fail("the receiver's root did not equal the sender's within " +
                  std::to_string(o_.timeoutSeconds) + " s (logs in " + base + ")");
    }
    report(fileBytes);
    return 0;
  }

  void report(uint64_t fileBytes) {
    double senderAbove = mb(senderPeak_ - std::min(senderPeak_, senderIdle_));
    double receiverAbove = mb(receiverPeak_ - std::min(receiverPeak_, receiverIdle_));
    if (o_.json) {
      std::printf(
          "{\"bench\":\"bootstrap\",\"keys\":%llu,\"mode\":\"%s\",\"body_bytes\":%zu,"
          "\"durable\":%s,\"bootstrap_s\":%.3f,\"serving_s\":%.3f,\"bytes_sent\":%llu,"
          "\"file_bytes\":%llu,\"file_copy_s\":%.3f,\"ratio_to_copy\":%.2f,"
          "\"sender_rss_anon_peak_mb\":%.1f,\"receiver_rss_anon_peak_mb\":%.1f,"
          "\"sender_rss_anon_idle_mb\":%.1f,\"receiver_rss_anon_idle_mb\":%.1f,"
          "\"rss_samples\":%llu,\"from_snapshot\":%s}\n",
          (unsigned long long)o_.keys, o_.mode.c_str(), o_.bodyBytes, o_.noSync ? "false" : "true",
          bootstrap_, serving_, (unsigned long long)bytesSent_, (unsigned long long)fileBytes,
          fileCopy_, bootstrap_ / std::max(fileCopy_, 1e-9), senderAbove, receiverAbove,
          mb(senderIdle_), mb(receiverIdle_), (unsigned long long)samples_,
          how_.rfind("bootstrap: from a snapshot", 0) == 0 ? "true" : "false");
      return;
    }
    std::printf("bootstrap of an empty node from one holding %llu reviews (--bootstrap %s, %s)\n",
                (unsigned long long)o_.keys, o_.mode.c_str(), o_.noSync ? "unsynced" : "durable");
    if (!how_.empty()) std::printf("  receiver said         %s\n", how_.c_str());
    std::printf("  to equal roots        %8.2f s   (serving after %.2f s; target <= 15 s)\n",
                bootstrap_, serving_);
    std::printf(
        "  copy of data.mdb      %8.2f s   (%.0f MB; bootstrap is %.2fx it, target <= 3x)\n",
        fileCopy_, mb(fileBytes), bootstrap_ / std::max(fileCopy_, 1e-9));
    std::printf("  bytes sent            %8.0f MB\n", mb(bytesSent_));
    std::printf(
        "  RssAnon peak above idle: sender %.1f MB (idle %.1f), receiver %.1f MB (idle "
        "%.1f); target <= 64 MB\n",
        senderAbove, mb(senderIdle_), receiverAbove, mb(receiverIdle_));
  }

  Options o_;
  std::string cleanup_;
  double fileCopy_ = 0, bootstrap_ = 0, serving_ = 0;
  uint64_t senderIdle_ = 0, receiverIdle_ = 0, senderPeak_ = 0, receiverPeak_ = 0;
  uint64_t bytesSent_ = 0, samples_ = 0;
  std::string how_;
};

}  // namespace

void addBootstrapBench(CLI::App& app, int& exitCode) {
  auto options = std::make_shared<Options>();
  auto* sub = app.add_subcommand(
      "bootstrap",
      "An empty node catching up with a node of N reviews (two chorusd on loopback): time to "
      "equal roots, bytes sent, both nodes' RssAnon peaks, and the plain copy of data.mdb");
  sub->add_option("--keys", options->keys, "Reviews on the sender")
      ->check(CLI::Range(uint64_t{1}, uint64_t{100'000'000}))
      ->capture_default_str();
  sub->add_option("--body-bytes", options->bodyBytes, "Body of each review")
      ->check(CLI::Range(size_t{1}, size_t{10'000}))
      ->capture_default_str();
  sub->add_option("--seed", options->seed, "Dataset seed")->capture_default_str();
  sub->add_option("--bootstrap", options->mode, "The receiver's chorusd --bootstrap")
      ->check(CLI::IsMember({"auto", "snapshot", "anti-entropy"}))
      ->capture_default_str();
  sub->add_option("--dir", options->dir,
                  "Scratch directory, kept (default: a new one under /tmp, removed)");
  sub->add_option("--dataset-dir", options->datasetDir,
                  "Sender's data dir, reused when it holds the same --keys, --seed and "
                  "--body-bytes (default: in the scratch directory)");
  sub->add_option("--chorusd", options->chorusd,
                  "chorusd binary (default: the one next to chorus-bench in a build tree)");
  sub->add_flag("--unsafe-no-sync", options->noSync, "Both nodes commit without fsync");
  sub->add_option("--timeout", options->timeoutSeconds, "Give up after this many seconds")
      ->check(CLI::Range(1, 86'400))
      ->capture_default_str();
  sub->add_option("--sample-ms", options->sampleMs, "RssAnon sampling period")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  sub->add_flag("--json", options->json, "One JSON object on stdout");
  sub->callback([options, &exitCode] { exitCode = Bench(*options).run(); });
}

}  // namespace chorus::bench
