// The threads that run the RPC server's reads. Internal to api/rpc-server.cpp.
//
// A read's store work (an LMDB read transaction and decoding: Node::get,
// list, summary, byAuthor) runs here instead of on the RPC thread, so reads
// use every core and one slow listing never holds up another connection's
// calls. LMDB read transactions are MVCC: any number run on any threads
// while the store thread commits (storage/store.h, "Threads").
//
// A job carries values only (strings, a call id) and hands its result back
// to the RPC thread through RpcServer::post(); it never touches a KJ or
// Cap'n Proto object, which belong to the RPC thread.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace chorus::api {
class Metrics;
}

namespace chorus::api::internal {

class ReadPool {
 public:
  using Job = std::function<void()>;

  // Starts readThreadsFor(threads) threads; at most
  // `maxQueued` jobs (at least 1) wait for a thread. `metrics` (which must
  // outlive the pool) gets the queue depth, the busy threads and the pool
  // size.
  ReadPool(unsigned threads, size_t maxQueued, Metrics& metrics);
  // stop().
  ~ReadPool();

  ReadPool(const ReadPool&) = delete;
  ReadPool& operator=(const ReadPool&) = delete;

  enum class Submitted { kQueued, kFull, kClosed };
  // Any thread: queues `job` to run once on a pool thread. kFull when
  // `maxQueued` jobs already wait, kClosed after close(): then `job` is
  // destroyed unrun on the calling thread.
  Submitted submit(Job job);

  // Any thread: refuses new jobs and destroys the jobs not yet started,
  // unrun; running ones go on. Idempotent.
  void close();
  // Any thread but a pool thread: close(), then waits for the running jobs
  // to return and joins the threads. Idempotent.
  void stop();

  unsigned threads() const { return static_cast<unsigned>(threads_.size()); }
  size_t maxQueued() const { return maxQueued_; }

 private:
  void run();  // a pool thread's body

  const size_t maxQueued_;
  Metrics& metrics_;
  std::mutex mutex_;  // guards queue_ and stopping_
  std::condition_variable ready_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

// The pool size for RpcLimits::readThreads: `requested`, or one per core
// (at least 1) for 0; at most kMaxReadThreads.
constexpr unsigned kMaxReadThreads = 1'024;
unsigned readThreadsFor(unsigned requested);

}  // namespace chorus::api::internal
