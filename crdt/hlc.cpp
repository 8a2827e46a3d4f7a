#include "hlc.h"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>

namespace chorus::crdt {

std::string Hlc::toString() const {
  return std::to_string(millis()) + "." + std::to_string(logical());
}

std::string Stamp::toString() const {
  char replicaHex[17];
  std::snprintf(replicaHex, sizeof replicaHex, "%016" PRIx64, replica);
  return hlc.toString() + "@" + replicaHex;
}

PhysicalClock systemClock() {
  return [] {
    auto now = std::chrono::system_clock::now().time_since_epoch();
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(now).count());
  };
}

HybridClock::HybridClock(ReplicaId replica, PhysicalClock physical, Hlc highWater,
                         uint64_t maxDriftMillis)
    : replica_(replica),
      physical_(std::move(physical)),
      last_(highWater),
      maxDriftMillis_(maxDriftMillis) {
  CHORUS_ASSERT(replica_ != 0, "replica id 0 is reserved");
}

Stamp HybridClock::now() {
  uint64_t physicalMillis = std::min(physical_(), Hlc::kMaxMillis);
  // Taking the max of (last + 1) and (physical, 0) is the HLC rule: follow
  // physical time when it moves ahead, otherwise bump the logical counter.
  // A logical overflow carries into the millis, which keeps order.
  Hlc fromPhysical = Hlc::fromParts(physicalMillis, 0);
  last_ = std::max(Hlc{last_.bits + 1}, fromPhysical);
  return Stamp{last_, replica_};
}

bool HybridClock::isTooFarAhead(Hlc remote) const {
  uint64_t physicalMillis = physical_();
  return remote.millis() > physicalMillis && remote.millis() - physicalMillis > maxDriftMillis_;
}

Status HybridClock::observe(Hlc remote) {
  if (isTooFarAhead(remote)) {
    ++refused_;
    return makeError(ErrorCode::kClockDrift, "remote clock stamp " + remote.toString() + " is " +
                                                 std::to_string(remote.millis() - physical_()) +
                                                 " ms ahead of local time, more than the allowed " +
                                                 std::to_string(maxDriftMillis_) +
                                                 " ms; refused (check NTP on the sending node)");
  }
  last_ = std::max(last_, remote);
  return okStatus();
}

}  // namespace chorus::crdt
