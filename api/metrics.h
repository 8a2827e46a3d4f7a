// Counters for the Prometheus endpoint. Lock-free: record() may be called
// from any thread; render() reads a consistent-enough snapshot.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gossip/cluster.h"
#include "storage/store.h"

namespace chorus::api {

// A Prometheus histogram: counts of observations by upper bound (`le`,
// inclusive), their sum and count. observe() is lock-free and may be called
// from any thread; render() reads each bucket once, so the +Inf bucket and
// _count always agree (_sum may include an observation still being added).
class Histogram {
 public:
  // Seconds, for durations: 100 us to 10 s, about 2.5x apart.
  static constexpr std::array<double, 16> kDurationBounds = {
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
      0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   5.0,  10.0};

  // `bounds`: the finite upper bounds, ascending (+Inf is implied).
  explicit Histogram(std::span<const double> bounds = kDurationBounds);

  void observe(double value);

  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const { return sum_.load(std::memory_order_relaxed); }
  // Observations <= bounds[i] (i < bounds.size()), or all of them
  // (i == bounds.size(), the +Inf bucket): cumulative, as exposed.
  uint64_t cumulative(size_t i) const;
  std::span<const double> bounds() const { return bounds_; }

  // Appends "# HELP" and "# TYPE <name> histogram" lines, once per family.
  static void renderHeader(std::string& out, std::string_view name, std::string_view help);
  // Appends <name>_bucket{<labels>,le="..."} for every bound and +Inf, then
  // <name>_sum{<labels>} and <name>_count{<labels>}. `labels` is empty or
  // `key="value",...` without braces, already escaped.
  void render(std::string& out, std::string_view name, std::string_view labels) const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1, not cumulative
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0.0};
};

class Metrics {
 public:
  // RPC methods, in the order of the labels.
  enum Method {
    kPut,
    kErase,
    kVote,
    kUnvote,
    kTag,
    kUntag,
    kModerate,
    kReply,
    kGet,
    kList,
    kSummary,
    kByAuthor,
    kWatch,
    kStatus,
    kPartition,
    kHeal,
    kCluster,
    kAuthenticate,
    kKeys,
    kLeave,
    kRemove,
    kReviews,  // Chorus.reviews and Chorus.admin (the bootstrap's)
    kAdmin,
    kHealth,
    kPage,
    kBackup,
    kMethodCount
  };
  static const char* methodName(Method m);

  // One finished call, `seconds` from its arrival to its results (reads:
  // queue wait and store work included), in
  // chorus_rpc_call_duration_seconds. `errorCode` is empty for success, else
  // the wire code name ("invalidArgument", ...).
  void record(Method method, double seconds, const char* errorCode);
  const Histogram& callDuration(Method m) const { return methods_[m].duration; }

  // The RPC server's read pool (api/internal/read-pool.h): its size, the
  // reads waiting for a thread, the threads running one, and the reads
  // refused with `overloaded` because the queue was full.
  void readPoolStarted(unsigned threads) { readThreads_.store(threads); }
  void readQueued(int64_t delta) { readQueued_.fetch_add(delta, std::memory_order_relaxed); }
  void readBusy(int64_t delta) { readBusy_.fetch_add(delta, std::memory_order_relaxed); }
  void readQueueFull() { readQueueFull_.fetch_add(1, std::memory_order_relaxed); }
  int64_t readsQueued() const { return readQueued_.load(); }
  int64_t readThreadsBusy() const { return readBusy_.load(); }
  uint64_t readsRefusedQueueFull() const { return readQueueFull_.load(); }
  void connectionOpened() { connections_.fetch_add(1, std::memory_order_relaxed); }
  void connectionClosed() { connections_.fetch_sub(1, std::memory_order_relaxed); }
  void watchOpened() { watches_.fetch_add(1, std::memory_order_relaxed); }
  void watchClosed() { watches_.fetch_sub(1, std::memory_order_relaxed); }
  void changesDropped(uint64_t n) { dropped_.fetch_add(n, std::memory_order_relaxed); }
  // Security counters: authenticate with an unknown token; calls refused by
  // the per-connection rate limit; connections refused because
  // maxConnections were open (closed at accept with noAuth, authenticate
  // answering `overloaded` otherwise).
  void authFailed() { authFailures_.fetch_add(1, std::memory_order_relaxed); }
  void rateLimited() { rateLimited_.fetch_add(1, std::memory_order_relaxed); }
  void connectionRefused() { connectionsRefused_.fetch_add(1, std::memory_order_relaxed); }
  // Connections the server closed because of a limit (RpcLimits), by why.
  enum CloseReason {
    kUnfinishedCalls,  // too many calls not finished
    kReplyQueue,       // too many reply bytes queued: the client stopped reading
    kMemory,           // the connection's memory figure
    kAuthTimeout,      // no valid token within authTimeout
    kEvicted,          // an unauthenticated connection made room for a newer one
    kCloseReasonCount
  };
  static const char* closeReasonName(CloseReason r);
  void closedByLimit(CloseReason r) { closed_[r].fetch_add(1, std::memory_order_relaxed); }
  uint64_t closedBy(CloseReason r) const { return closed_[r].load(); }
  void unauthenticatedOpened() { unauthenticated_.fetch_add(1, std::memory_order_relaxed); }
  void unauthenticatedClosed() { unauthenticated_.fetch_sub(1, std::memory_order_relaxed); }
  int64_t unauthenticatedConnections() const { return unauthenticated_.load(); }
  void watchRefused() { watchesRefused_.fetch_add(1, std::memory_order_relaxed); }
  uint64_t watchesRefused() const { return watchesRefused_.load(); }
  uint64_t authFailures() const { return authFailures_.load(); }
  uint64_t rateLimitedCalls() const { return rateLimited_.load(); }
  uint64_t connectionsRefused() const { return connectionsRefused_.load(); }

  // Store commits (storage::Options::onCommit, on the store thread): each
  // write transaction's duration, in chorus_store_commit_duration_seconds,
  // and the writes it acknowledged, in chorus_store_commit_batch_size.
  void storeCommitted(double seconds, size_t writes) {
    commitDuration_.observe(seconds);
    commitBatchSize_.observe(double(writes));
  }
  const Histogram& commitDuration() const { return commitDuration_; }
  const Histogram& commitBatchSize() const { return commitBatchSize_; }
  // Writes per commit: 1 to storage::Options::maxBatch (default 1000).
  static constexpr std::array<double, 13> kBatchBounds = {1,   2,   5,    10,   20,   50,   100,
                                                          200, 500, 1000, 2000, 5000, 10000};
  // Replication (gossip::ClusterOptions' observers): anti-entropy sessions
  // this node started, by scope; and delta push lag, origin's write stamp to
  // local commit (clock skew included), in seconds.
  void antiEntropySession(double seconds, bool crossRegion) {
    sessionDuration_[crossRegion ? 1 : 0].observe(seconds);
  }
  void deltaApplied(double lagSeconds) { deltaLag_.observe(lagSeconds); }
  const Histogram& antiEntropySessions(bool crossRegion) const {
    return sessionDuration_[crossRegion ? 1 : 0];
  }
  const Histogram& deltaLag() const { return deltaLag_; }
  // Lag: 1 ms (the HLC's resolution) to a minute.
  static constexpr std::array<double, 15> kLagBounds = {
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0};

  // Prometheus text exposition format 0.0.4.
  std::string render(const storage::StoreStats& stats, uint64_t uptimeMillis) const;
  // The replication part, appended on a node that runs a cluster; `region`
  // is this node's.
  static std::string renderCluster(const gossip::ClusterStats& stats,
                                   const std::vector<gossip::MemberInfo>& members,
                                   uint64_t mergesRefused, const std::string& region);
  // The replication histograms (anti-entropy sessions, delta push lag),
  // appended after renderCluster's part.
  std::string renderGossip() const;

  uint64_t calls(Method m) const { return methods_[m].calls.load(); }
  uint64_t errors(Method m) const { return methods_[m].errors.load(); }

 private:
  static constexpr int kErrorCodes = 7;
  struct PerMethod {
    std::atomic<uint64_t> calls{0};
    std::atomic<uint64_t> errors{0};
    std::array<std::atomic<uint64_t>, kErrorCodes> errorsByCode{};
    Histogram duration;
  };
  std::array<PerMethod, kMethodCount> methods_;
  std::atomic<int64_t> connections_{0};
  std::atomic<int64_t> watches_{0};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> authFailures_{0};
  std::atomic<uint64_t> rateLimited_{0};
  std::atomic<uint64_t> connectionsRefused_{0};
  std::array<std::atomic<uint64_t>, kCloseReasonCount> closed_{};
  std::atomic<int64_t> unauthenticated_{0};
  std::atomic<uint64_t> watchesRefused_{0};
  std::atomic<unsigned> readThreads_{0};
  std::atomic<int64_t> readQueued_{0};
  std::atomic<int64_t> readBusy_{0};
  std::atomic<uint64_t> readQueueFull_{0};
  Histogram commitDuration_;
  Histogram commitBatchSize_{kBatchBounds};
  std::array<Histogram, 2> sessionDuration_;  // in region, across regions
  Histogram deltaLag_{kLagBounds};
};

}  // namespace chorus::api
