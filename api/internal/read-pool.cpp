#include "api/internal/read-pool.h"

#include <algorithm>

#include "api/metrics.h"

namespace chorus::api::internal {

unsigned readThreadsFor(unsigned requested) {
  if (requested != 0) return std::min(requested, kMaxReadThreads);
  return std::clamp(std::thread::hardware_concurrency(), 1u, kMaxReadThreads);
}

ReadPool::ReadPool(unsigned threads, size_t maxQueued, Metrics& metrics)
    : maxQueued_(std::max<size_t>(maxQueued, 1)), metrics_(metrics) {
  unsigned n = readThreadsFor(threads);
  threads_.reserve(n);
  for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this] { run(); });
  metrics_.readPoolStarted(n);
}

ReadPool::~ReadPool() { stop(); }

ReadPool::Submitted ReadPool::submit(Job job) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return Submitted::kClosed;  // `job` goes unrun
    if (queue_.size() >= maxQueued_) return Submitted::kFull;
    queue_.push_back(std::move(job));
    metrics_.readQueued(1);
  }
  ready_.notify_one();
  return Submitted::kQueued;
}

void ReadPool::close() {
  std::deque<Job> abandoned;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    abandoned.swap(queue_);
    metrics_.readQueued(-static_cast<int64_t>(abandoned.size()));
  }
  ready_.notify_all();
  abandoned.clear();  // outside the lock: a job's captures may be large
}

void ReadPool::stop() {
  close();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  metrics_.readPoolStarted(0);
}

void ReadPool::run() {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mutex_);
      ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping
      job = std::move(queue_.front());
      queue_.pop_front();
      metrics_.readQueued(-1);
      metrics_.readBusy(1);
    }
    job();
    job = nullptr;  // its captures go before the thread counts as idle
    metrics_.readBusy(-1);
  }
}

}  // namespace chorus::api::internal
