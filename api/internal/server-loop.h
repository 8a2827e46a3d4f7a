// What the RPC thread offers the front ends that run on it: the Cap'n Proto
// connections of api/rpc-server.cpp and the HTTP server of api/http/.
// Internal to api/.
//
// Threads: every method is called on the RPC thread (the KJ event loop that
// RpcServer runs), except post(), which any thread may call. Promises
// resolve on the RPC thread. Store work never runs here: writes go through
// Node::write (the store's group commit) and reads through the read pool
// (api/internal/read-pool.h); their results come back through post().
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <variant>

#include <kj/async-io.h>
#include <kj/exception.h>
#include <kj/timer.h>

#include "api/auth.h"
#include "api/log.h"
#include "api/node.h"
#include "api/types.h"
#include "crdt/result.h"

namespace chorus::api {
class Metrics;
}

namespace chorus::api::internal {

// A read in a session found that the node does not hold the session's
// write yet (the front end waits and tries again).
struct NotHeld {};

// What a pooled read answers (boxed in a kj::Own: g++ 12 reports false
// maybe-uninitialized warnings for a std::variant inside kj::Maybe).
using ReadOutcome =
    std::variant<Result<ReviewView>, Result<ReviewPage>, Result<storage::ProductSummary>,
                 Result<ProductPageView>, Result<ChangesPage>, NotHeld>;
// The store work of a read, run on a read thread: values only.
using ReadWork = std::function<ReadOutcome(Node&)>;

// The type-erased store work of a read of a `Result<T>`, for a read thread.
// A bug's exception becomes `internal` (on the RPC thread it failed the
// call; on a read thread it must not end the process).
template <typename T, typename Work>
ReadWork readWork(Work work) {
  return [work = std::move(work)](Node& node) -> ReadOutcome {
    try {
      return ReadOutcome(std::in_place_type<Result<T>>, work(node));
    } catch (const kj::Exception& e) {
      return ReadOutcome(std::in_place_type<Result<T>>,
                         makeError(ErrorCode::kInternal,
                                   std::string("read failed: ") + e.getDescription().cStr()));
    } catch (const std::exception& e) {
      return ReadOutcome(std::in_place_type<Result<T>>,
                         makeError(ErrorCode::kInternal, std::string("read failed: ") + e.what()));
    }
  };
}

// A ReadOutcome holding `error` as a Result<T> (a read refused before it ran).
template <typename T>
ReadOutcome refusedRead(Error error) {
  return ReadOutcome(std::in_place_type<Result<T>>, std::move(error));
}

class ServerLoop {
 public:
  virtual ~ServerLoop() noexcept(false) = default;

  virtual Node& node() = 0;
  virtual kj::Timer& timer() = 0;
  virtual Metrics& metrics() = 0;
  virtual const RpcLimits& limits() const = 0;
  // The node's tokens (they change at a reload); nullptr on a --no-auth node.
  virtual const TokenTable* tokens() const = 0;

  // Queues a write on the node; resolves once it committed (or was refused).
  virtual kj::Promise<kj::Own<Result<ReviewView>>> write(WriteRequest request) = 0;
  // Runs `work` on the read pool; resolves with its outcome. `method` and
  // `key` are for RpcLimits::beforeRead. A full queue resolves at once to
  // refuse(overloaded), a stopping server to refuse(unavailable), and `work`
  // never runs. If the promise is dropped meanwhile, the outcome is dropped
  // when it arrives.
  virtual kj::Promise<kj::Own<ReadOutcome>> read(const char* method, std::string key, ReadWork work,
                                                 ReadOutcome (*refuse)(Error)) = 0;
  // read() once the node holds the write of `token` (read your writes):
  // each attempt checks Node::holds on a read thread and reads there if
  // held; while not held it asks the peers for the review
  // (Node::pullSession) and waits, holding no read thread and not blocking
  // this one, for Node::waitSession's wake-up (or a periodic recheck). At
  // Node::Options::sessionWait it resolves to refuse(Node::notCaughtUp):
  // `unavailable`. Parse the token first (Node::parseSession).
  virtual kj::Promise<kj::Own<ReadOutcome>> readInSession(const char* method, std::string key,
                                                          ReadWork work, SessionToken token,
                                                          ReadOutcome (*refuse)(Error)) = 0;
  // Node::leave on a thread of its own; resolves with its answer.
  virtual kj::Promise<kj::Own<Status>> leave(std::chrono::milliseconds timeout) = 0;
  // Node::backup on a thread of its own; resolves with its answer.
  virtual kj::Promise<kj::Own<Result<storage::BackupManifest>>> backup(std::string dir) = 0;

  // A watch slot of the node's RpcLimits::maxWatches, shared by every front
  // end (Cap'n Proto watches and follows, HTTP watches and feeds): false when none is left (counted
  // as refused). Each true is given back with releaseWatch().
  virtual bool takeWatch() = 0;
  virtual void releaseWatch() = 0;

  // Any thread: runs `fn` on the RPC thread (RpcServer::post). After the
  // server stopped, `fn` is destroyed unrun on the calling thread.
  virtual void post(std::function<void()> fn) = 0;
};

// Logs at most one line per `interval`, saying how many were suppressed.
class RateLimitedLog {
 public:
  explicit RateLimitedLog(kj::Duration interval) : interval_(interval) {}
  template <typename... Args>
  void warn(kj::TimePoint now, const char* format, Args... args) {
    if (logged_ && now - last_ < interval_) {
      ++suppressed_;
      return;
    }
    std::string line = format;
    if (suppressed_ > 0) line += " (" + std::to_string(suppressed_) + " more not logged)";
    logf(LogLevel::kWarn, line.c_str(), args...);
    logged_ = true;
    last_ = now;
    suppressed_ = 0;
  }

 private:
  kj::Duration interval_;
  bool logged_ = false;
  kj::TimePoint last_ = kj::origin<kj::TimePoint>();
  uint64_t suppressed_ = 0;
};

// A token bucket: `perSecond` refill, `burst` capacity (RpcLimits'
// maxCallsPerSecond and callBurst), one per connection. perSecond 0 = no
// limit.
class CallBucket {
 public:
  CallBucket() = default;  // no limit
  CallBucket(uint32_t perSecond, uint32_t burst, kj::TimePoint now)
      : perSecond_(perSecond),
        burst_(burst < 1 ? 1.0 : double(burst)),
        tokens_(burst_),
        refilled_(now) {}
  // Takes one call; false when the bucket is empty.
  bool take(kj::TimePoint now) {
    if (perSecond_ == 0) return true;
    double seconds = double((now - refilled_) / kj::NANOSECONDS) / 1e9;
    refilled_ = now;
    tokens_ = std::min(burst_, tokens_ + seconds * perSecond_);
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
  }

 private:
  uint32_t perSecond_ = 0;
  double burst_ = 1.0;
  double tokens_ = 1.0;
  kj::TimePoint refilled_ = kj::origin<kj::TimePoint>();
};

// "1.2.3.4:5678" of the other end, for logs; "unknown" if the stream
// cannot tell.
std::string peerName(kj::AsyncIoStream& stream);
// "1.2.3.4" of "1.2.3.4:5678", "[::1]" of "[::1]:5678": the source address
// the per-address caps count.
std::string hostOf(const std::string& peer);

}  // namespace chorus::api::internal
