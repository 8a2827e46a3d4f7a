// Counters for the Prometheus endpoint. Lock-free: record() may be called
// from any thread; render() reads a consistent-enough snapshot.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "gossip/cluster.h"
#include "storage/store.h"

namespace chorus::api {

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
    kMethodCount
  };
  static const char* methodName(Method m);

  // Upper bounds of the latency histogram buckets, in seconds (+Inf implied).
  static constexpr std::array<double, 12> kBuckets = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
                                                      0.05,   0.1,   0.25,  0.5,   1.0,  5.0};

  // One finished call. `errorCode` is empty for success, else the wire code
  // name ("invalidArgument", ...).
  void record(Method method, double seconds, const char* errorCode);
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

  // Prometheus text exposition format 0.0.4.
  std::string render(const storage::StoreStats& stats, uint64_t uptimeMillis) const;
  // The replication part, appended on a node that runs a cluster; `region`
  // is this node's.
  static std::string renderCluster(const gossip::ClusterStats& stats,
                                   const std::vector<gossip::MemberInfo>& members,
                                   uint64_t mergesRefused, const std::string& region);

  uint64_t calls(Method m) const { return methods_[m].calls.load(); }
  uint64_t errors(Method m) const { return methods_[m].errors.load(); }

 private:
  static constexpr int kErrorCodes = 7;
  struct PerMethod {
    std::atomic<uint64_t> calls{0};
    std::atomic<uint64_t> errors{0};
    std::array<std::atomic<uint64_t>, kErrorCodes> errorsByCode{};
    std::array<std::atomic<uint64_t>, kBuckets.size() + 1> buckets{};
    std::atomic<uint64_t> sumMicros{0};
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
};

}  // namespace chorus::api
