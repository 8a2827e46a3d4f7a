// Phi-accrual failure detection (Hayashibara et al.), with exponentially
// distributed heartbeat inter-arrival times: phi = t / (mean * ln 10), where t
// is the time since the last heartbeat and mean the average interval over a
// window. phi = 1 means about a 10% chance the peer is still alive, 2 means
// 1%, and so on. The mean is floored at the configured heartbeat interval so
// a burst of traffic does not make the detector jumpy.
#pragma once

#include <cmath>
#include <cstdint>
#include <deque>

namespace chorus::gossip {

class PhiAccrualDetector {
 public:
  explicit PhiAccrualDetector(double minMeanMillis, size_t window = 100)
      : minMean_(minMeanMillis), window_(window) {}

  // A sign of life from the peer at `nowMillis` (monotonic).
  void heartbeat(uint64_t nowMillis) {
    if (heard_) {
      intervals_.push_back(double(nowMillis - last_));
      sum_ += intervals_.back();
      if (intervals_.size() > window_) {
        sum_ -= intervals_.front();
        intervals_.pop_front();
      }
    }
    heard_ = true;
    last_ = nowMillis;
  }

  // Suspicion now; infinite if never heard from.
  double phi(uint64_t nowMillis) const {
    if (!heard_) return INFINITY;
    double mean = intervals_.empty() ? minMean_ : sum_ / double(intervals_.size());
    if (mean < minMean_) mean = minMean_;
    double t = nowMillis > last_ ? double(nowMillis - last_) : 0.0;
    return t / (mean * std::log(10.0));
  }

  bool heard() const { return heard_; }

 private:
  double minMean_;
  size_t window_;
  std::deque<double> intervals_;
  double sum_ = 0;
  uint64_t last_ = 0;
  bool heard_ = false;
};

}  // namespace chorus::gossip
