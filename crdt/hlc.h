// Hybrid logical clock (HLC) and stamps.
//
// An Hlc packs 48 bits of milliseconds since the Unix epoch and a 16-bit
// logical counter into one uint64, so comparing two Hlc values compares
// (millis, logical). A Stamp adds the writing replica's id; stamps are totally
// ordered by (hlc, replica), which is what every LWW register uses.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>
#include <string>

#include "result.h"

namespace chorus::crdt {

// Identifies a replica (one node's store). Chosen at random once per data
// directory and persisted by storage; 0 is reserved for "no replica".
using ReplicaId = uint64_t;

struct Hlc {
  uint64_t bits = 0;  // millis << 16 | logical

  static constexpr uint64_t kMaxMillis = (uint64_t{1} << 48) - 1;
  static Hlc fromParts(uint64_t millis, uint16_t logical) { return Hlc{(millis << 16) | logical}; }
  uint64_t millis() const { return bits >> 16; }
  uint16_t logical() const { return static_cast<uint16_t>(bits & 0xffff); }
  bool isZero() const { return bits == 0; }

  auto operator<=>(const Hlc&) const = default;
  std::string toString() const;  // "1732612345678.3"
};

struct Stamp {
  Hlc hlc;
  ReplicaId replica = 0;

  bool isZero() const { return hlc.isZero() && replica == 0; }
  auto operator<=>(const Stamp&) const = default;
  std::string toString() const;  // "1732612345678.3@00000000000000ab"
};

// Source of physical time in milliseconds since the Unix epoch. Injected so
// tests are deterministic and `--clock-offset` can skew a node's clock.
using PhysicalClock = std::function<uint64_t()>;

// The system's wall clock.
PhysicalClock systemClock();

// A hybrid logical clock for one replica. Not thread-safe: owned by the
// thread that stamps writes (the store's thread).
//
// Monotonic across restarts provided the caller persists highWater() with
// every write and passes it back to the constructor.
class HybridClock {
 public:
  static constexpr uint64_t kDefaultMaxDriftMillis = 60'000;

  HybridClock(ReplicaId replica, PhysicalClock physical, Hlc highWater = {},
              uint64_t maxDriftMillis = kDefaultMaxDriftMillis);

  // A fresh stamp, strictly greater than every stamp this clock issued or
  // observed.
  Stamp now();

  // Folds a remote stamp in so later now() calls order after it. A stamp
  // more than maxDrift ahead of physical time is refused (kClockDrift),
  // counted, and not adopted, so one bad clock cannot pin the future.
  Status observe(Hlc remote);

  // True when `remote` would be refused by observe() right now.
  bool isTooFarAhead(Hlc remote) const;

  ReplicaId replica() const { return replica_; }
  Hlc highWater() const { return last_; }
  uint64_t refusedCount() const { return refused_; }
  uint64_t maxDriftMillis() const { return maxDriftMillis_; }

 private:
  ReplicaId replica_;
  PhysicalClock physical_;
  Hlc last_;
  uint64_t maxDriftMillis_;
  uint64_t refused_ = 0;
};

}  // namespace chorus::crdt
