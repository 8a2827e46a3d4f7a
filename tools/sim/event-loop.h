// The simulator's clock and scheduler: a discrete-event loop over simulated
// time, plus the seeded randomness and the trace hash everything in the
// simulator shares.
//
// Determinism: events run in (time, seq) order, where seq is the order in
// which they were scheduled, so two events at the same instant always run in
// the same order. Nothing here reads the wall clock or any global source of
// randomness; given the same seed and the same inputs, a run schedules and
// runs the same events, in the same order, at the same times.
//
// Single-threaded: every method runs on the thread that calls run().
#pragma once

#include <sodium.h>

#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

namespace chorus::sim {

// Simulated time in microseconds since the start of the run.
using Micros = uint64_t;
inline constexpr Micros kMillis = 1000;
inline constexpr Micros kSeconds = 1000 * kMillis;

// xoshiro256** seeded through splitmix64: small, fast, and the same on every
// platform and standard library (std:: distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  // Uniform in [0, n); n > 0.
  uint64_t below(uint64_t n);
  // Uniform in [0, 1).
  double unit();
  // True with probability p.
  bool chance(double p) { return p > 0 && unit() < p; }
  // Exponentially distributed with the given mean.
  double exponential(double mean);
  // A generator for a sub-component, independent of this one's later draws.
  Rng fork(uint64_t salt);

 private:
  uint64_t s_[4];
};

// A running BLAKE2b-256 over every event the simulator runs: two runs with
// equal hashes ran the same events at the same times with the same bytes.
class TraceHash {
 public:
  TraceHash();
  void add(uint64_t a, uint64_t b = 0, uint64_t c = 0, uint64_t d = 0);
  void addBytes(std::string_view bytes);
  uint64_t events() const { return events_; }
  // Hex of the first 16 bytes of the digest so far (does not end the hash).
  std::string hex() const;

 private:
  crypto_generichash_state state_;
  uint64_t events_ = 0;
};

class EventLoop {
 public:
  using Task = std::function<void()>;

  Micros now() const { return now_; }
  // Runs `task` at `at` (at least now()); tasks at equal times run in the
  // order they were scheduled.
  void at(Micros at, Task task);
  void after(Micros delay, Task task) { at(now_ + delay, std::move(task)); }
  // Runs events until none is left before `until` (exclusive) or stop() is
  // called; now() is then `until` (or the time of the stopping event).
  void runUntil(Micros until);
  void stop() { stopped_ = true; }
  uint64_t eventsRun() const { return eventsRun_; }
  size_t pending() const { return heap_.size(); }

 private:
  struct Entry {
    Micros time;
    uint64_t seq;
    uint32_t slot;
  };
  static bool later(const Entry& a, const Entry& b) {
    return a.time != b.time ? a.time > b.time : a.seq > b.seq;
  }
  std::vector<Entry> heap_;
  std::vector<Task> tasks_;
  std::vector<uint32_t> free_;
  Micros now_ = 0;
  uint64_t seq_ = 0;
  uint64_t eventsRun_ = 0;
  bool stopped_ = false;
};

}  // namespace chorus::sim
