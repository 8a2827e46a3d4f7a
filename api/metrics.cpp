#include "api/metrics.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <iterator>

namespace chorus::api {

namespace {

constexpr const char* kCodeNames[] = {"invalidArgument", "notFound", "forbidden",      "overloaded",
                                      "unavailable",     "internal", "unauthenticated"};

void appendf(std::string& out, const char* fmt, auto... args) {
  char buf[512];
  int n = std::snprintf(buf, sizeof buf, fmt, args...);
  if (n > 0) out.append(buf, std::min<size_t>(size_t(n), sizeof buf - 1));
}

}  // namespace

Histogram::Histogram(std::span<const double> bounds)
    : bounds_(bounds.begin(), bounds.end()),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds.size() + 1)) {}

void Histogram::observe(double value) {
  // The first bound >= value: `le` is inclusive.
  size_t b = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  buckets_[b].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

uint64_t Histogram::cumulative(size_t i) const {
  uint64_t n = 0;
  for (size_t b = 0; b <= i && b <= bounds_.size(); ++b) n += buckets_[b].load();
  return n;
}

void Histogram::renderHeader(std::string& out, std::string_view name, std::string_view help) {
  std::string n(name), h(help);
  appendf(out, "# HELP %s %s\n# TYPE %s histogram\n", n.c_str(), h.c_str(), n.c_str());
}

void Histogram::render(std::string& out, std::string_view name, std::string_view labels) const {
  std::string n(name), l(labels);
  const char* comma = l.empty() ? "" : ",";
  // One snapshot of the buckets; _count is their total so the +Inf bucket
  // and _count always agree.
  uint64_t cumulative = 0;
  for (size_t b = 0; b < bounds_.size(); ++b) {
    cumulative += buckets_[b].load(std::memory_order_relaxed);
    appendf(out, "%s_bucket{%s%sle=\"%g\"} %" PRIu64 "\n", n.c_str(), l.c_str(), comma, bounds_[b],
            cumulative);
  }
  cumulative += buckets_[bounds_.size()].load(std::memory_order_relaxed);
  appendf(out, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", n.c_str(), l.c_str(), comma, cumulative);
  if (l.empty()) {
    appendf(out, "%s_sum %.9g\n%s_count %" PRIu64 "\n", n.c_str(), sum(), n.c_str(), cumulative);
  } else {
    appendf(out, "%s_sum{%s} %.9g\n%s_count{%s} %" PRIu64 "\n", n.c_str(), l.c_str(), sum(),
            n.c_str(), l.c_str(), cumulative);
  }
}

const char* Metrics::methodName(Method m) {
  static constexpr const char* kNames[] = {
      "put",       "erase", "vote",    "unvote",       "tag",      "untag", "moderate",
      "reply",     "get",   "list",    "summary",      "byAuthor", "watch", "status",
      "partition", "heal",  "cluster", "authenticate", "keys",     "leave", "remove",
      "reviews",   "admin", "health",  "page",         "backup"};
  static_assert(sizeof kNames / sizeof kNames[0] == kMethodCount);
  return kNames[m];
}

const char* Metrics::closeReasonName(CloseReason r) {
  static constexpr const char* kNames[] = {"unfinished_calls", "reply_queue", "memory",
                                           "auth_timeout", "evicted"};
  static_assert(sizeof kNames / sizeof kNames[0] == kCloseReasonCount);
  return kNames[r];
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
  pm.duration.observe(seconds);
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
  Histogram::renderHeader(out, "chorus_rpc_call_duration_seconds",
                          "RPC calls, from arrival to results, by method (reads: queue wait "
                          "and store work included).");
  for (int m = 0; m < kMethodCount; ++m) {
    const PerMethod& pm = methods_[m];
    if (pm.duration.count() == 0) continue;
    std::string labels = std::string("method=\"") + methodName(Method(m)) + "\"";
    pm.duration.render(out, "chorus_rpc_call_duration_seconds", labels);
  }
  auto gauge = [&](const char* name, const char* help, const char* type, double v) {
    appendf(out, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
  };
  gauge("chorus_rpc_connections", "Open RPC connections.", "gauge", double(connections_.load()));
  gauge("chorus_watches", "Active watches.", "gauge", double(watches_.load()));
  gauge("chorus_watch_changes_dropped_total", "Changes not delivered to slow observers.", "counter",
        double(dropped_.load()));
  gauge("chorus_rpc_auth_failures_total", "authenticate calls with an unknown token.", "counter",
        double(authFailures_.load()));
  gauge("chorus_rpc_rate_limited_total", "Calls refused by the per-connection rate limit.",
        "counter", double(rateLimited_.load()));
  gauge("chorus_rpc_connections_refused_total",
        "Connections refused: --max-connections authenticated ones were open.", "counter",
        double(connectionsRefused_.load()));
  gauge("chorus_rpc_unauthenticated_connections",
        "Open RPC connections without a valid token (yet).", "gauge",
        double(unauthenticated_.load()));
  out +=
      "# HELP chorus_rpc_connections_closed_total Connections the server closed for a limit, by "
      "reason.\n# TYPE chorus_rpc_connections_closed_total counter\n";
  for (int r = 0; r < kCloseReasonCount; ++r) {
    appendf(out, "chorus_rpc_connections_closed_total{reason=\"%s\"} %" PRIu64 "\n",
            closeReasonName(CloseReason(r)), closed_[r].load());
  }
  gauge("chorus_rpc_read_threads", "Threads of the read pool (get, list, summary, byAuthor).",
        "gauge", double(readThreads_.load()));
  gauge("chorus_rpc_read_queue_depth", "Reads waiting for a read-pool thread.", "gauge",
        double(readQueued_.load()));
  gauge("chorus_rpc_read_threads_busy", "Read-pool threads running a read.", "gauge",
        double(readBusy_.load()));
  gauge("chorus_rpc_read_queue_full_total",
        "Reads refused with `overloaded`: the read queue was full (--max-queued-reads).", "counter",
        double(readQueueFull_.load()));
  gauge("chorus_rpc_watches_refused_total",
        "watch calls refused: the per-connection or per-node watch limit.", "counter",
        double(watchesRefused_.load()));
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
  Histogram::renderHeader(out, "chorus_store_commit_duration_seconds",
                          "Write transactions, from beginning to durable commit (apply, fsync, "
                          "map growth).");
  commitDuration_.render(out, "chorus_store_commit_duration_seconds", "");
  Histogram::renderHeader(out, "chorus_store_commit_batch_size",
                          "Writes acknowledged per committed write transaction.");
  commitBatchSize_.render(out, "chorus_store_commit_batch_size", "");
  gauge("chorus_uptime_seconds", "Seconds since the node opened.", "gauge",
        double(uptimeMillis) / 1000.0);
  return out;
}

std::string Metrics::renderCluster(const gossip::ClusterStats& s,
                                   const std::vector<gossip::MemberInfo>& members,
                                   uint64_t mergesRefused, const std::string& region) {
  std::string out;
  auto family = [&](const char* name, const char* help, const char* type) {
    appendf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
  };
  auto sample = [&](const char* name, const char* labels, uint64_t v) {
    appendf(out, "%s%s %" PRIu64 "\n", name, labels, v);
  };
  family("chorus_gossip_frames_total", "Gossip frames, by direction.", "counter");
  sample("chorus_gossip_frames_total", "{direction=\"in\"}", s.framesIn);
  sample("chorus_gossip_frames_total", "{direction=\"out\"}", s.framesOut);
  family("chorus_gossip_bytes_total", "Gossip bytes, by direction.", "counter");
  sample("chorus_gossip_bytes_total", "{direction=\"in\"}", s.bytesIn);
  sample("chorus_gossip_bytes_total", "{direction=\"out\"}", s.bytesOut);
  family("chorus_gossip_malformed_frames_total",
         "Frames refused as malformed or oversized (each closed its connection).", "counter");
  sample("chorus_gossip_malformed_frames_total", "", s.malformedFrames);
  family("chorus_gossip_partition_dropped_frames_total", "Frames dropped by an injected partition.",
         "counter");
  sample("chorus_gossip_partition_dropped_frames_total", "", s.partitionDropped);
  family("chorus_gossip_connections_refused_total",
         "Inbound gossip connections closed by a bound: past the cap after hello, or strangers "
         "(no hello yet) evicted past 64 (8 per address) or closed at their 5 s deadline.",
         "counter");
  sample("chorus_gossip_connections_refused_total", "", s.connectionsRefused);
  family("chorus_gossip_auth_failures_total",
         "Gossip frames failing the cluster key check: a peer without the key, or tampering.",
         "counter");
  sample("chorus_gossip_auth_failures_total", "", s.authFailures);
  family("chorus_gossip_replays_refused_total",
         "Authentic gossip frames refused as replayed or out of order.", "counter");
  sample("chorus_gossip_replays_refused_total", "", s.replaysRefused);
  family("chorus_gossip_states_refused_total",
         "Review states from peers refused by this node's API rules (not merged).", "counter");
  sample("chorus_gossip_states_refused_total", "", s.statesRefused);
  family("chorus_gossip_deltas_total", "Write deltas pushed to or from peers, by outcome.",
         "counter");
  sample("chorus_gossip_deltas_total", "{outcome=\"sent\"}", s.deltasSent);
  sample("chorus_gossip_deltas_total", "{outcome=\"received\"}", s.deltasReceived);
  sample("chorus_gossip_deltas_total", "{outcome=\"dropped\"}", s.deltasDropped);
  family("chorus_gossip_syncs_total", "Anti-entropy sessions, by phase.", "counter");
  sample("chorus_gossip_syncs_total", "{phase=\"started\"}", s.syncStarted);
  sample("chorus_gossip_syncs_total", "{phase=\"completed\"}", s.syncCompleted);
  family("chorus_gossip_anti_entropy_bytes_total", "Reconcile frame bytes, both directions.",
         "counter");
  sample("chorus_gossip_anti_entropy_bytes_total", "", s.antiEntropyBytes);
  family("chorus_gossip_states_repaired_total", "Review states received through anti-entropy.",
         "counter");
  sample("chorus_gossip_states_repaired_total", "", s.statesRepaired);
  family("chorus_gossip_merges_refused_total",
         "States from peers the store refused (e.g. clock drift).", "counter");
  sample("chorus_gossip_merges_refused_total", "", mergesRefused);
  family("chorus_gossip_connections", "Gossip connections with peers (hello done), now.", "gauge");
  sample("chorus_gossip_connections", "", s.connections);
  family("chorus_gossip_active_peers",
         "Peers in this node's partial view (its broadcast links), now.", "gauge");
  sample("chorus_gossip_active_peers", "", s.activePeers);
  family("chorus_gossip_probes_total", "Direct SWIM probes sent.", "counter");
  sample("chorus_gossip_probes_total", "", s.probes);
  family("chorus_gossip_probes_failed_total",
         "Probes unanswered, directly and through others: the member became suspect.", "counter");
  sample("chorus_gossip_probes_failed_total", "", s.probesFailed);
  family("chorus_gossip_refutations_total", "Suspicions of this node that it refuted.", "counter");
  sample("chorus_gossip_refutations_total", "", s.refutations);
  family("chorus_gossip_broadcast_duplicates_total",
         "Broadcast deltas received again (each prunes a tree link).", "counter");
  sample("chorus_gossip_broadcast_duplicates_total", "", s.broadcastDuplicates);
  family("chorus_gossip_grafts_total", "Deltas fetched after an announcement alone.", "counter");
  sample("chorus_gossip_grafts_total", "", s.grafts);
  family("chorus_gossip_push_pulls_total", "Full member-list exchanges started.", "counter");
  sample("chorus_gossip_push_pulls_total", "", s.pushPulls);
  family("chorus_gossip_version_refused_total",
         "Gossip frames refused for another protocol version.", "counter");
  sample("chorus_gossip_version_refused_total", "", s.versionRefused);
  constexpr gossip::PeerState kStates[] = {gossip::PeerState::kAlive, gossip::PeerState::kSuspect,
                                           gossip::PeerState::kDead, gossip::PeerState::kLeft};
  uint64_t byState[std::size(kStates)] = {};
  uint64_t partitioned = 0;
  for (const auto& m : members) {
    for (size_t i = 0; i < std::size(kStates); ++i) byState[i] += m.state == kStates[i];
    if (m.partitioned) ++partitioned;
  }
  family("chorus_gossip_members", "Peers this node knows, by membership state.", "gauge");
  for (size_t i = 0; i < std::size(kStates); ++i) {
    appendf(out, "chorus_gossip_members{state=\"%s\"} %" PRIu64 "\n",
            gossip::peerStateName(kStates[i]), byState[i]);
  }
  family("chorus_gossip_partitioned_members", "Peers whose traffic is dropped by a partition.",
         "gauge");
  sample("chorus_gossip_partitioned_members", "", partitioned);
  // The region is checked (api::checkRegion): no quote or backslash to escape.
  family("chorus_gossip_region_info", "This node's region, as a label; always 1.", "gauge");
  appendf(out, "chorus_gossip_region_info{region=\"%s\"} 1\n", region.c_str());
  return out;
}

std::string Metrics::renderGossip() const {
  std::string out;
  Histogram::renderHeader(out, "chorus_gossip_anti_entropy_session_duration_seconds",
                          "Anti-entropy sessions this node started and completed, first frame "
                          "to last reply, by the peer's scope (in_region, cross_region).");
  sessionDuration_[0].render(out, "chorus_gossip_anti_entropy_session_duration_seconds",
                             "scope=\"in_region\"");
  sessionDuration_[1].render(out, "chorus_gossip_anti_entropy_session_duration_seconds",
                             "scope=\"cross_region\"");
  Histogram::renderHeader(out, "chorus_gossip_delta_push_lag_seconds",
                          "Pushed deltas that changed this node: from the write's HLC stamp on "
                          "its origin to this node's wall clock after the merge committed; "
                          "includes clock skew between the nodes (floored at 0); votes and tags "
                          "carry no stamp and are not counted.");
  deltaLag_.render(out, "chorus_gossip_delta_push_lag_seconds", "");
  return out;
}

}  // namespace chorus::api
