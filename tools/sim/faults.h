// The fault schedule of a run, drawn from the seed before it starts:
// partitions (a region split from the rest, an isolated node, a node whose
// frames are lost one way), node crashes and restarts, pauses, clock skew,
// joins and leaves.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tools/sim/event-loop.h"

namespace chorus::sim {

struct Fault {
  enum class Kind {
    kSplitRegion,  // `target` region cut off from the others, both ways, for `duration`
    kIsolate,      // node `target` cut off from everyone, both ways
    kOneWay,       // what node `target` sends is lost; it still receives
    kCrash,        // node `target` dies (its store survives), restarts after `duration`
    kPause,        // node `target` stops running (no ticks, nothing handled) for `duration`
    kSkew,         // node `target`'s wall clock jumps by `skewMillis` (the HLC sees it)
    kJoin,         // node `target` (not started at time 0) starts and joins
    kLeave,        // node `target` leaves for good (announces it, then stops)
  };
  Micros at = 0;
  Kind kind = Kind::kCrash;
  int target = 0;
  Micros duration = 0;  // 0 for instant faults (skew, join, leave)
  int64_t skewMillis = 0;
};

const char* faultName(Fault::Kind kind);
std::string describe(const Fault& fault);

struct FaultOptions {
  // Random faults of each kind begin uniformly within [begin, end) and last
  // meanDuration x U[0.5, 1.5], cut so they are over by `end`.
  Micros begin = 0;
  Micros end = 0;
  Micros meanDuration = 5 * kSeconds;
  int splits = 0, isolations = 0, oneWay = 0, crashes = 0, pauses = 0, skews = 0;
  int64_t maxSkewMillis = 5000;  // a skew is uniform in [-max, +max]
  // A region split ending exactly at `end` and lasting this long (0 = none):
  // the scenario whose heal convergence is measured. Cuts off region 0
  // (with one region: nothing, there is no other region).
  Micros finalSplit = 0;
  // Nodes [initialNodes, initialNodes + joins) start during the window;
  // `leaves` of the initial nodes leave during it.
  int joins = 0, leaves = 0;
  // Nodes [initialNodes + joins, initialNodes + joins + joinBurst) all start
  // at `joinBurstAt` (simulated time, not bound to the window): a burst of
  // joins.
  int joinBurst = 0;
  Micros joinBurstAt = 0;
};

// Sorted by time (then as drawn). Nodes [0, initialNodes) run from time 0.
// A node is the target of at most one crash, pause or leave at a time, and
// a node that leaves is not crashed or paused afterwards.
std::vector<Fault> makeSchedule(const FaultOptions& options, int initialNodes, int regions,
                                Rng& rng);

}  // namespace chorus::sim
