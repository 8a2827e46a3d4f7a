// chorus-bench rpc: write throughput and latency through Cap'n Proto RPC
// against the embedded chorus::Node rate, measured in the same run.
//
// Both modes write distinct reviews (rating 1-5, short title) to a fresh
// store with the same durability; both keep clients x depth writes in
// flight. RPC: `clients` threads, each with its own connection, pipelining
// `depth` put calls. Embedded: the same number of outstanding Node::write
// calls from one thread. Latency is per RPC call, send to reply.
#include <kj/async.h>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "api/client.h"
#include "api/node.h"

namespace chorus::bench {

namespace {

using Clock = std::chrono::steady_clock;

struct RpcBenchOptions {
  int clients = 4;
  int depth = 16;
  int writes = 20'000;  // per mode
  bool json = false;
  std::string dir;
};

std::string makeTempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "chorus-bench-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) return {};
  return pattern;
}

Result<std::unique_ptr<Node>> openNode(const std::string& dir, bool rpc) {
  Node::Options o;
  o.nodeId = "bench";
  o.dataDir = dir;
  if (rpc) o.listen = "127.0.0.1:0";
  o.rpc.maxInFlightPerConnection = 100'000;
  o.rpc.maxCallsPerSecond = 0;  // measure the node, not the per-connection rate limit
  // Clients write as many authors: no tokens. Authentication is one call per
  // connection; the per-call role check is a lookup, not measured here.
  o.rpc.noAuth = true;
  return Node::open(std::move(o));
}

WriteRequest request(int client, int seq) {
  WriteRequest r;
  r.op = WriteOp::kPut;
  r.product = "bench-" + std::to_string(seq % 64);
  r.author = "c" + std::to_string(client) + "-" + std::to_string(seq);
  r.rating = uint32_t(1 + seq % 5);
  r.title = "benchmark review";
  r.body = "a short body of a benchmark review";
  return r;
}

// Embedded: `window` outstanding async writes; returns writes/s.
Result<double> runEmbedded(Node& node, int writes, int window) {
  std::mutex m;
  std::condition_variable cv;
  int outstanding = 0, done = 0, failed = 0;
  std::string firstError;
  auto start = Clock::now();
  for (int i = 0; i < writes; ++i) {
    {
      std::unique_lock lock(m);
      cv.wait(lock, [&] { return outstanding < window; });
      ++outstanding;
    }
    node.write(request(1000, i), [&](Result<ReviewView> r) {
      std::lock_guard lock(m);
      --outstanding;
      ++done;
      if (!r.ok() && failed++ == 0) firstError = r.error().toString();
      cv.notify_all();
    });
  }
  std::unique_lock lock(m);
  cv.wait(lock, [&] { return done == writes; });
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (failed > 0) {
    return makeError(ErrorCode::kInternal,
                     std::to_string(failed) + " embedded writes failed, first: " + firstError);
  }
  return double(writes) / seconds;
}

struct RpcRun {
  double writesPerSecond = 0;
  std::vector<double> latenciesMs;
};

// One client thread: keeps `depth` puts in flight until `count` are done.
Status rpcClient(const std::string& address, int client, int count, int depth,
                 std::vector<double>& latencies) {
  auto c = api::Client::connect(address);
  if (!c.ok()) return c.error();
  auto reviews = (*c)->reviews();
  latencies.reserve(size_t(count));
  int sent = 0;
  int errors = 0;
  std::string firstError;
  kj::Vector<kj::Promise<void>> chains;
  std::function<kj::Promise<void>()> next = [&]() -> kj::Promise<void> {
    if (sent >= count) return kj::READY_NOW;
    WriteRequest r = request(client, sent++);
    auto q = reviews.putRequest();
    q.setProduct(r.product);
    q.setAuthor(r.author);
    q.setRating(uint8_t(r.rating));
    q.setTitle(r.title);
    q.setBody(r.body);
    auto t0 = Clock::now();
    return q.send().then([&, t0](auto resp) {
      latencies.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      if (resp.hasError() && errors++ == 0) firstError = resp.getError().getMessage().cStr();
      return next();
    });
  };
  for (int i = 0; i < depth; ++i) chains.add(next());
  try {
    kj::joinPromises(chains.releaseAsArray()).wait((*c)->waitScope());
  } catch (kj::Exception& e) {
    return makeError(ErrorCode::kUnavailable,
                     std::string("rpc bench client: ") + e.getDescription().cStr());
  }
  if (errors > 0) {
    return makeError(ErrorCode::kInternal,
                     std::to_string(errors) + " rpc writes failed, first: " + firstError);
  }
  return okStatus();
}

Result<RpcRun> runRpc(const std::string& address, int writes, int clients, int depth) {
  std::vector<std::vector<double>> latencies(static_cast<size_t>(clients));
  std::vector<Status> results(size_t(clients), okStatus());
  std::vector<std::thread> threads;
  auto start = Clock::now();
  for (int i = 0; i < clients; ++i) {
    int count = writes / clients + (i < writes % clients ? 1 : 0);
    threads.emplace_back([&, i, count] {
      results[size_t(i)] = rpcClient(address, i, count, depth, latencies[size_t(i)]);
    });
  }
  for (auto& t : threads) t.join();
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (auto& r : results) {
    if (!r.ok()) return r.error();
  }
  RpcRun run;
  run.writesPerSecond = double(writes) / seconds;
  for (auto& l : latencies) run.latenciesMs.insert(run.latenciesMs.end(), l.begin(), l.end());
  std::sort(run.latenciesMs.begin(), run.latenciesMs.end());
  return run;
}

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t i = size_t(p * double(sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

int runRpcBench(const RpcBenchOptions& o) {
  std::string root = o.dir.empty() ? makeTempDir() : o.dir;
  if (root.empty()) {
    std::fprintf(stderr, "chorus-bench rpc: cannot create a temporary directory\n");
    return 1;
  }
  int code = 0;
  {
    auto embedded = openNode(root + "/embedded", false);
    auto served = openNode(root + "/rpc", true);
    if (!embedded.ok() || !served.ok()) {
      std::fprintf(stderr, "chorus-bench rpc: %s\n",
                   (!embedded.ok() ? embedded.error() : served.error()).toString().c_str());
      code = 1;
    } else {
      auto e = runEmbedded(**embedded, o.writes, o.clients * o.depth);
      auto r = runRpc((*served)->rpcAddress(), o.writes, o.clients, o.depth);
      if (!e.ok() || !r.ok()) {
        std::fprintf(stderr, "chorus-bench rpc: %s\n",
                     (!e.ok() ? e.error() : r.error()).toString().c_str());
        code = 1;
      } else {
        double ratio = r->writesPerSecond / *e;
        double p50 = percentile(r->latenciesMs, 0.50), p99 = percentile(r->latenciesMs, 0.99);
        if (o.json) {
          std::printf(
              "{\"bench\":\"rpc\",\"clients\":%d,\"depth\":%d,\"writes\":%d,"
              "\"ops_per_s\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
              "\"rpc_writes_per_s\":%.1f,\"embedded_writes_per_s\":%.1f,\"ratio\":%.3f}\n",
              o.clients, o.depth, o.writes, r->writesPerSecond, p50, p99, r->writesPerSecond, *e,
              ratio);
        } else {
          std::printf("rpc bench: %d writes per mode, %d clients x %d in flight\n", o.writes,
                      o.clients, o.depth);
          std::printf("  embedded   %10.0f writes/s\n", *e);
          std::printf("  rpc        %10.0f writes/s  p50 %.2f ms  p99 %.2f ms\n",
                      r->writesPerSecond, p50, p99);
          std::printf("  ratio      %10.2f  (target >= 0.5; p99 target <= 20 ms)\n", ratio);
        }
      }
    }
  }
  if (o.dir.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(root, ignored);
  }
  return code;
}

}  // namespace

// Registers `rpc` on chorus-bench's command line.
void addRpcBench(CLI::App& app, int& exitCode) {
  auto options = std::make_shared<RpcBenchOptions>();
  auto* sub = app.add_subcommand(
      "rpc", "Writes/s and p50/p99 latency through RPC vs the embedded Node, same run");
  sub->add_option("--clients,-c", options->clients, "Concurrent RPC connections (threads)")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  sub->add_option("--depth,-d", options->depth, "Pipelined calls in flight per client")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  sub->add_option("--writes,-n", options->writes, "Writes per mode")
      ->capture_default_str()
      ->check(CLI::Range(1, 100'000'000));
  sub->add_option("--dir", options->dir, "Data directory (default: a fresh temporary one)");
  sub->add_flag("--json", options->json, "One JSON object on stdout");
  sub->callback([options, &exitCode] { exitCode = runRpcBench(*options); });
}

}  // namespace chorus::bench
