#include "api/metrics.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>

namespace chorus::api {

namespace {

constexpr const char* kCodeNames[] = {"invalidArgument", "notFound",    "forbidden",
                                      "overloaded",      "unavailable", "internal"};

void appendf(std::string& out, const char* fmt, auto... args) {
  char buf[512];
  int n = std::snprintf(buf, sizeof buf, fmt, args...);
  if (n > 0) out.append(buf, std::min<size_t>(size_t(n), sizeof buf - 1));
}

}  // namespace

const char* Metrics::methodName(Method m) {
  static constexpr const char* kNames[] = {
      "put",  "erase",   "vote",     "unvote", "tag",    "untag",     "moderate", "reply",  "get",
      "list", "summary", "byAuthor", "watch",  "status", "partition", "heal",     "cluster"};
  static_assert(sizeof kNames / sizeof kNames[0] == kMethodCount);
  return kNames[m];
}

void Metrics::record(Method method, double seconds, const char* errorCode) {
  PerMethod& pm = methods_[method];
  pm.calls.fetch_add(1, std::memory_order_relaxed);
  if (errorCode != nullptr && *errorCode != '\0') {
    pm.errors.fetch_add(1, std::memory_order_relaxed);
    for (int i = 0; i < kErrorCodes; ++i) {
      if (std::strcmp(kCodeNames[i], errorCode) == 0) {
        pm.errorsByCode[i].fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
  size_t b = 0;
  while (b < kBuckets.size() && seconds > kBuckets[b]) ++b;
  pm.buckets[b].fetch_add(1, std::memory_order_relaxed);
  pm.sumMicros.fetch_add(uint64_t(seconds * 1e6), std::memory_order_relaxed);
}

std::string Metrics::render(const storage::StoreStats& s, uint64_t uptimeMillis) const {
  std::string out;
  out += "# HELP chorus_rpc_calls_total RPC calls finished, by method.\n";
  out += "# TYPE chorus_rpc_calls_total counter\n";
  for (int m = 0; m < kMethodCount; ++m) {
    appendf(out, "chorus_rpc_calls_total{method=\"%s\"} %" PRIu64 "\n", methodName(Method(m)),
            methods_[m].calls.load());
  }
  out += "# HELP chorus_rpc_errors_total RPC calls that returned an error, by method and code.\n";
  out += "# TYPE chorus_rpc_errors_total counter\n";
  for (int m = 0; m < kMethodCount; ++m) {
    for (int c = 0; c < kErrorCodes; ++c) {
      uint64_t n = methods_[m].errorsByCode[c].load();
      if (n == 0) continue;
      appendf(out, "chorus_rpc_errors_total{method=\"%s\",code=\"%s\"} %" PRIu64 "\n",
              methodName(Method(m)), kCodeNames[c], n);
    }
  }
  out += "# HELP chorus_rpc_latency_seconds RPC call latency, by method.\n";
  out += "# TYPE chorus_rpc_latency_seconds histogram\n";
  for (int m = 0; m < kMethodCount; ++m) {
    const PerMethod& pm = methods_[m];
    if (pm.calls.load() == 0) continue;
    uint64_t cumulative = 0;
    for (size_t b = 0; b < kBuckets.size(); ++b) {
      cumulative += pm.buckets[b].load();
      appendf(out, "chorus_rpc_latency_seconds_bucket{method=\"%s\",le=\"%g\"} %" PRIu64 "\n",
              methodName(Method(m)), kBuckets[b], cumulative);
    }
    cumulative += pm.buckets[kBuckets.size()].load();
    appendf(out, "chorus_rpc_latency_seconds_bucket{method=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
            methodName(Method(m)), cumulative);
    appendf(out, "chorus_rpc_latency_seconds_sum{method=\"%s\"} %.6f\n", methodName(Method(m)),
            double(pm.sumMicros.load()) / 1e6);
    appendf(out, "chorus_rpc_latency_seconds_count{method=\"%s\"} %" PRIu64 "\n",
            methodName(Method(m)), cumulative);
  }
  auto gauge = [&](const char* name, const char* help, const char* type, double v) {
    appendf(out, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
  };
  gauge("chorus_rpc_connections", "Open RPC connections.", "gauge", double(connections_.load()));
  gauge("chorus_watches", "Active watches.", "gauge", double(watches_.load()));
  gauge("chorus_watch_changes_dropped_total", "Changes not delivered to slow observers.", "counter",
        double(dropped_.load()));
  gauge("chorus_documents", "Review documents stored (including tombstones).", "gauge",
        double(s.documents));
  gauge("chorus_store_map_bytes", "LMDB map size.", "gauge", double(s.mapBytes));
  gauge("chorus_store_used_bytes", "Bytes of LMDB pages in use.", "gauge", double(s.usedBytes));
  gauge("chorus_store_commits_total", "Write transactions committed since start.", "counter",
        double(s.commits));
  gauge("chorus_store_writes_total", "Writes acknowledged since start.", "counter",
        double(s.writes));
  gauge("chorus_store_commit_batch_size_avg", "Mean writes per commit since start.", "gauge",
        s.commits == 0 ? 0.0 : double(s.writes) / double(s.commits));
  gauge("chorus_store_map_growths_total", "Times the LMDB map grew.", "counter",
        double(s.mapGrowths));
  gauge("chorus_refused_stamps_total", "Remote stamps refused for clock drift.", "counter",
        double(s.refusedStamps));
  gauge("chorus_uptime_seconds", "Seconds since the node opened.", "gauge",
        double(uptimeMillis) / 1000.0);
  return out;
}

}  // namespace chorus::api
