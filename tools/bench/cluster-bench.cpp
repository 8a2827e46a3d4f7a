// chorus-bench cluster: N nodes (real stores, real gossip over loopback TCP)
// in this process.
//
// Phase 1, latency: writes at a steady rate, spread over the nodes; each
// write's latency runs from submission until it has committed on every node
// (locally, then through delta push on each peer).
// Phase 2, convergence: splits the cluster in two (first half | rest) with
// partition injection, makes `--split-writes` new reviews on each side,
// waits until each side agrees internally, heals, and times how long until
// every node reports the same Merkle root. Anti-entropy bytes are summed
// over all nodes for that phase.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gossip/cluster.h"
#include "storage/store.h"

namespace chorus::bench {

namespace {

using SteadyClock = std::chrono::steady_clock;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct Options {
  int nodes = 5;
  double rate = 2000;       // phase 1 writes/s, whole cluster
  double seconds = 5;       // phase 1 length
  uint64_t splitWrites = 10'000;  // phase 2 writes per side
  int antiEntropyMs = 1000;
  bool noSync = false;
  std::string dir;
  bool json = false;
};

double ms(SteadyClock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

std::string keyString(const crdt::ReviewKey& k) { return k.product + '\x1f' + k.author; }

// Tracks, per key, on how many nodes a write has committed.
class Visibility {
 public:
  explicit Visibility(int nodes) : nodes_(nodes) {}
  void submitted(const std::string& key) {
    std::lock_guard lock(mu_);
    pending_[key] = {SteadyClock::now(), 0};
  }
  void committed(const std::string& key) {
    std::lock_guard lock(mu_);
    auto it = pending_.find(key);
    if (it == pending_.end()) return;
    if (++it->second.second == nodes_) {
      latencies_.push_back(ms(SteadyClock::now() - it->second.first));
      pending_.erase(it);
      cv_.notify_all();
    }
  }
  bool waitAll(std::chrono::seconds limit) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return pending_.empty(); });
  }
  std::vector<double> latencies() {
    std::lock_guard lock(mu_);
    return latencies_;
  }
  size_t pending() {
    std::lock_guard lock(mu_);
    return pending_.size();
  }

 private:
  int nodes_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::pair<SteadyClock::time_point, int>> pending_;
  std::vector<double> latencies_;
};

struct BenchNode {
  std::string id;
  std::unique_ptr<storage::Store> store;
  std::unique_ptr<gossip::Cluster> cluster;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size())))];
}

std::string body(uint64_t i) {
  std::string b = "review " + std::to_string(i) + ": ";
  while (b.size() < 400) b += "fits well, good value, would buy again. ";
  return b;
}

crdt::ReviewKey keyOf(const char* phase, uint64_t i) {
  char product[32], author[48];
  std::snprintf(product, sizeof product, "sku-%05llu", (unsigned long long)(i % 1000));
  std::snprintf(author, sizeof author, "%s-%08llx", phase,
                (unsigned long long)((i * 0x9E3779B97F4A7C15ull) >> 32));
  return {product, author};
}

class Bench {
 public:
  explicit Bench(Options o) : o_(std::move(o)), visible_(o_.nodes) {}

  int run() {
    base_ = o_.dir.empty() ? fs::temp_directory_path() /
                                 ("chorus-bench-cluster-" + std::to_string(::getpid()))
                           : fs::path(o_.dir);
    fs::remove_all(base_);
    int rc = runPhases();
    nodes_.clear();  // stops clusters, then stores
    fs::remove_all(base_);
    return rc;
  }

 private:
  int fail(const std::string& what) {
    std::fprintf(stderr, "chorus-bench cluster: %s\n", what.c_str());
    return 1;
  }

  Status start() {
    std::string key = gossip::generateClusterKey();  // one cluster, one key
    for (int i = 0; i < o_.nodes; ++i) {
      auto n = std::make_unique<BenchNode>();
      n->id = "n" + std::to_string(i + 1);
      storage::Options so;
      so.dir = (base_ / n->id).string();
      so.unsafeNoSync = o_.noSync;
      so.initialMapBytes = 256ull << 20;
      auto store = storage::Store::open(so);
      if (!store.ok()) return store.error();
      n->store = std::move(store).value();
      gossip::ClusterOptions co;
      co.nodeId = n->id;
      co.listen = "127.0.0.1:0";
      co.dataDir = so.dir;
      co.keys = {key};
      co.antiEntropyInterval = std::chrono::milliseconds(o_.antiEntropyMs);
      if (!nodes_.empty()) co.seeds = {nodes_[0]->cluster->address()};
      auto cluster = gossip::Cluster::start(co, *n->store, [this](Result<storage::Applied> r) {
        if (r.ok() && r->changed) visible_.committed(keyString(r->state.key()));
      });
      if (!cluster.ok()) return cluster.error();
      n->cluster = std::move(cluster).value();
      nodes_.push_back(std::move(n));
    }
    return okStatus();
  }

  bool waitUntil(std::chrono::milliseconds limit, const std::function<bool()>& ready) {
    auto deadline = SteadyClock::now() + limit;
    while (SteadyClock::now() < deadline) {
      if (ready()) return true;
      std::this_thread::sleep_for(5ms);
    }
    return ready();
  }

  bool allAlive() {
    for (auto& n : nodes_) {
      size_t alive = 0;
      for (auto& m : n->cluster->members()) alive += m.state == gossip::PeerState::kAlive;
      if (alive + 1 < nodes_.size()) return false;
    }
    return true;
  }

  bool sameRoot(size_t begin, size_t end) {
    auto first = nodes_[begin]->store->merkleRoot();
    for (size_t i = begin + 1; i < end; ++i) {
      auto r = nodes_[i]->store->merkleRoot();
      if (!first.ok() || !r.ok() || r.value() != first.value()) return false;
    }
    return true;
  }

  // A local write, as chorus::Node does it: mutate, then push the delta.
  void write(BenchNode& n, crdt::ReviewKey key, uint64_t i, std::function<void(bool)> done) {
    gossip::Cluster* cluster = n.cluster.get();
    n.store->mutate(
        key,
        [i](crdt::ReviewDoc& doc, crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
          return doc.write(uint8_t(1 + i % 5), "Review " + std::to_string(i), body(i), clock.now());
        },
        [cluster, done](Result<storage::Applied> r) {
          if (r.ok() && r->changed) cluster->publish(r->delta);
          done(r.ok());
        });
  }

  int runPhases() {
    auto started = start();
    if (!started.ok()) return fail(started.error().toString());
    if (!waitUntil(30s, [&] { return allAlive(); })) return fail("nodes did not all see each other in 30 s");

    // ---- phase 1: write-to-everywhere latency at a steady rate ----
    std::atomic<uint64_t> failed{0};
    uint64_t total = uint64_t(o_.rate * o_.seconds);
    auto t0 = SteadyClock::now();
    for (uint64_t i = 0; i < total; ++i) {
      std::this_thread::sleep_until(t0 + std::chrono::duration_cast<SteadyClock::duration>(
                                             std::chrono::duration<double>(double(i) / o_.rate)));
      auto key = keyOf("lat", i);
      visible_.submitted(keyString(key));
      auto& node = *nodes_[i % nodes_.size()];
      std::string k = keyString(key);
      write(node, key, i, [this, k, &failed](bool ok) {
        if (ok) {
          visible_.committed(k);
        } else {
          ++failed;
        }
      });
    }
    double offered = double(total) / std::chrono::duration<double>(SteadyClock::now() - t0).count();
    if (!visible_.waitAll(60s)) {
      return fail(std::to_string(visible_.pending()) + " writes not visible everywhere after 60 s");
    }
    if (failed) return fail(std::to_string(failed.load()) + " writes failed");
    auto lat = visible_.latencies();
    p50_ = percentile(lat, 0.50);
    p99_ = percentile(lat, 0.99);
    if (!waitUntil(30s, [&] { return sameRoot(0, nodes_.size()); })) {
      return fail("roots differ after the latency phase");
    }

    // ---- phase 2: a 2|3 split, writes on both sides, heal, converge ----
    size_t half = nodes_.size() / 2;
    std::vector<std::string> left, right;
    for (size_t i = 0; i < nodes_.size(); ++i) (i < half ? left : right).push_back(nodes_[i]->id);
    for (size_t i = 0; i < nodes_.size(); ++i) nodes_[i]->cluster->partition(i < half ? right : left);
    std::mutex mu;
    std::condition_variable cv;
    uint64_t inFlight = 0, acked = 0;
    const uint64_t kWindow = 512;
    auto splitStart = SteadyClock::now();
    for (uint64_t i = 0; i < 2 * o_.splitWrites; ++i) {
      bool leftSide = i % 2 == 0;
      uint64_t j = i / 2;
      size_t nodeIndex = leftSide ? j % half : half + j % (nodes_.size() - half);
      {
        std::unique_lock lock(mu);
        if (!cv.wait_for(lock, 60s, [&] { return inFlight < kWindow; })) {
          return fail("split writes stalled");
        }
        ++inFlight;
      }
      write(*nodes_[nodeIndex], keyOf(leftSide ? "left" : "right", j), j, [&](bool ok) {
        std::lock_guard lock(mu);
        --inFlight;
        ++acked;
        if (!ok) ++failed;
        cv.notify_all();
      });
    }
    {
      std::unique_lock lock(mu);
      if (!cv.wait_for(lock, 120s, [&] { return inFlight == 0; })) return fail("split writes stalled");
    }
    if (failed) return fail(std::to_string(failed.load()) + " split writes failed");
    splitSeconds_ = std::chrono::duration<double>(SteadyClock::now() - splitStart).count();
    if (!waitUntil(60s, [&] { return sameRoot(0, half) && sameRoot(half, nodes_.size()); })) {
      return fail("the sides did not agree internally within 60 s");
    }
    if (sameRoot(0, nodes_.size())) return fail("the partition let writes through");
    uint64_t bytesBefore = 0;
    for (auto& n : nodes_) bytesBefore += n->cluster->stats().antiEntropyBytes;
    auto healed = SteadyClock::now();
    for (auto& n : nodes_) n->cluster->heal();
    if (!waitUntil(120s, [&] { return sameRoot(0, nodes_.size()); })) {
      return fail("no convergence within 120 s of the heal");
    }
    convergeSeconds_ = std::chrono::duration<double>(SteadyClock::now() - healed).count();
    uint64_t bytesAfter = 0;
    for (auto& n : nodes_) {
      auto st = n->cluster->stats();
      bytesAfter += st.antiEntropyBytes;
      sessions_ += st.syncCompleted;
      statesRepaired_ += st.statesRepaired;
    }
    antiEntropyBytes_ = bytesAfter - bytesBefore;
    bool verified = true;
    for (auto& n : nodes_) verified = verified && n->store->verify().ok();
    if (!verified) return fail("a store failed verify() after convergence");

    bool met = p99_ <= 50 && convergeSeconds_ <= 2;
    if (o_.json) {
      std::printf(
          "{\"bench\":\"cluster\",\"nodes\":%d,\"rate\":%.1f,\"latency_phase_s\":%.3f,"
          "\"anti_entropy_ms\":%d,\"ops_per_s\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
          "\"offered_writes_per_s\":%.1f,\"writes\":%llu,\"durable\":%s,"
          "\"latency_p50_ms\":%.3f,\"latency_p99_ms\":%.3f,\"split_writes_per_side\":%llu,"
          "\"converge_s\":%.3f,\"anti_entropy_bytes\":%llu,\"anti_entropy_bytes_per_write\":%.1f,"
          "\"targets_met\":%s}\n",
          o_.nodes, o_.rate, o_.seconds, o_.antiEntropyMs, offered, p50_, p99_, offered,
          (unsigned long long)total, o_.noSync ? "false" : "true", p50_, p99_,
          (unsigned long long)o_.splitWrites, convergeSeconds_,
          (unsigned long long)antiEntropyBytes_, double(antiEntropyBytes_) / double(2 * o_.splitWrites),
          met ? "true" : "false");
    } else {
      std::printf("cluster of %d nodes on loopback, %s commits\n", o_.nodes,
                  o_.noSync ? "unsynced (--unsafe-no-sync)" : "durable");
      std::printf("  write-to-everywhere   %llu writes at %.0f/s: p50 %.2f ms, p99 %.2f ms"
                  "   (target p99 <= 50 ms)\n",
                  (unsigned long long)total, offered, p50_, p99_);
      std::printf("  split %zu|%zu           %llu writes per side in %.2f s\n", half,
                  nodes_.size() - half, (unsigned long long)o_.splitWrites, splitSeconds_);
      std::printf("  converge after heal   %.3f s   (target <= 2 s)\n", convergeSeconds_);
      std::printf("  anti-entropy bytes    %llu (%.0f per divergent write), all stores verified\n",
                  (unsigned long long)antiEntropyBytes_,
                  double(antiEntropyBytes_) / double(2 * o_.splitWrites));
      std::printf("  sessions              %llu completed, %llu states received by anti-entropy\n",
                  (unsigned long long)sessions_, (unsigned long long)statesRepaired_);
      std::printf("  targets               %s\n", met ? "met" : "NOT met");
    }
    return 0;
  }

  Options o_;
  fs::path base_;
  Visibility visible_;
  std::vector<std::unique_ptr<BenchNode>> nodes_;
  double p50_ = 0, p99_ = 0, splitSeconds_ = 0, convergeSeconds_ = 0;
  uint64_t antiEntropyBytes_ = 0;
  uint64_t sessions_ = 0, statesRepaired_ = 0;  // whole run, all nodes
};

}  // namespace

void addClusterBench(CLI::App& app, int& exitCode) {
  auto options = std::make_shared<Options>();
  auto* sub = app.add_subcommand(
      "cluster",
      "N real nodes gossiping over loopback in this process: write-to-everywhere latency at a "
      "steady rate, then convergence time and anti-entropy bytes after healing a split");
  sub->add_option("--nodes", options->nodes, "Nodes (at least 2)")
      ->check(CLI::Range(2, 32))
      ->capture_default_str();
  sub->add_option("--rate", options->rate, "Writes/s for the latency phase, whole cluster")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--seconds", options->seconds, "Length of the latency phase")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--split-writes", options->splitWrites,
                  "New reviews written on each side of the split")
      ->capture_default_str();
  sub->add_option("--anti-entropy-ms", options->antiEntropyMs, "Anti-entropy interval")
      ->check(CLI::Range(10, 60'000))
      ->capture_default_str();
  sub->add_flag("--unsafe-no-sync", options->noSync,
                "Commit without fsync (faster, not durable; default: durable)");
  sub->add_option("--dir", options->dir, "Scratch directory (default: a new one under /tmp)");
  sub->add_flag("--json", options->json, "One JSON object on stdout");
  sub->callback([options, &exitCode] { exitCode = Bench(*options).run(); });
}

}  // namespace chorus::bench
