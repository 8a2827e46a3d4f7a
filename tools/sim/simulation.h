// chorus-sim's engine: N nodes in one process, each a real
// gossip::ReplicationCore over a store, on a simulated network, driven by
// one discrete-event loop in simulated time, with a seeded fault schedule,
// a workload and a checker. See tools/sim/README.md.
//
// Timeline of a run:
//   [0, warmup)                 nodes start and find each other
//   [warmup, warmup + duration) writes and reads at the given rates; faults
//   warmup + duration           every fault heals (crashed and paused nodes
//                               come back), writes stop
//   then, up to `settle`        until every acknowledged write is on every
//                               member and all roots are equal
// and then the checker verifies against the stores themselves.
//
// Deterministic: the same options (seed included) give the same trace hash.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tools/sim/event-loop.h"
#include "tools/sim/faults.h"
#include "tools/sim/network.h"

namespace chorus::sim {

enum class StoreKind { kMemory, kLmdb };
// kCore: gossip::ReplicationCore. kFlood: the trivial baseline of
// tools/sim/protocol.h, to measure the simulator's own cost.
enum class ProtocolKind { kCore, kFlood };

struct SimOptions {
  int nodes = 5;  // started at time 0 (joins add more)
  uint64_t seed = 1;
  NetworkOptions network;
  Micros warmup = 5 * kSeconds;
  Micros duration = 30 * kSeconds;  // of the workload
  Micros settle = 60 * kSeconds;    // at most, after the final heal
  double writeRate = 10;            // per second, over the whole cluster
  double readRate = 10;
  int products = 100;
  double updateFraction = 0.1;  // writes that edit an existing review
  size_t bodyBytes = 200;
  FaultOptions faults;  // begin/end default to the workload window
  StoreKind store = StoreKind::kMemory;
  ProtocolKind protocol = ProtocolKind::kCore;
  std::string lmdbDir;  // for kLmdb: one subdirectory per node
  // Replica ids of the nodes' stores; empty = drawn from the seed (memory)
  // or chosen by the store (LMDB).
  std::vector<uint64_t> replicaIds;
  Micros pollInterval = 100 * kMillis;  // membership views sampled this often
  Micros commitLatency = 0;             // a merge commits this long after it is handed over
  // Core options
  uint64_t heartbeatMillis = 200;
  uint64_t antiEntropyMillis = 1000;
  size_t pushFanout = 8;
  bool verbose = false;  // faults and progress on stderr
};

struct SimResult {
  int nodes = 0;       // started at time 0
  int totalNodes = 0;  // including joins
  int regions = 0;
  double simulatedS = 0, wallS = 0;
  double cpuS = 0;       // CPU time of the process (the machine may be shared)
  double coreWallS = 0;  // wall time inside the replication cores and stores
  uint64_t events = 0;
  uint64_t frames = 0;
  uint64_t writes = 0, reads = 0, staleReads = 0;
  double writeToAllP50Ms = -1, writeToAllP99Ms = -1, writeToAllMaxMs = -1;
  double healConvergeS = -1;              // after the final heal; -1 = did not converge in `settle`
  double bytesPerNodePerS = 0;            // everything sent, workload window
  double membershipBytesPerNodePerS = 0;  // hello, heartbeat, ack frames
  double bytesPerWrite = 0;               // delta and reconcile frames per write
  double crossRegionBytesPerWrite = 0;
  double detectDeadS = -1;  // crash or leave -> every live node sees it dead (mean); -1 = none
  uint64_t crashesDetected = 0, crashesUndetected = 0;
  uint64_t suspicions = 0;           // a peer went alive -> suspect or dead in a view
  uint64_t wronglyDeclaredDead = 0;  // ... -> dead while up and able to reach the viewer
  uint64_t lost = 0;                 // acknowledged writes missing on a live node at the end
  uint64_t lostWithLeaver = 0;       // of which acknowledged by a node that later left for good
  bool rootsEqual = false;
  uint64_t refusedStamps = 0;         // merges refused for clock drift
  std::vector<std::string> problems;  // what failed, for humans
  std::string traceHash;
  std::vector<uint64_t> replicaIds;
  std::vector<std::vector<std::string>> contents;  // per live node, sorted; when requested

  bool ok() const { return lost == 0 && rootsEqual && healConvergeS >= 0; }
};

// Runs one simulation. `keepContents`: fill SimResult::contents (for
// comparing store kinds). Errors: kInvalidArgument (options), or a store
// that failed to open.
Result<SimResult> runSimulation(const SimOptions& options, bool keepContents = false);

}  // namespace chorus::sim
