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
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tools/sim/event-loop.h"
#include "tools/sim/faults.h"
#include "tools/sim/network.h"

namespace chorus::gossip {
struct CoreOptions;
}

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
  // Core options (the rest are CoreOptions' defaults, unless `tuneCore`
  // changes them). Each core also gets its region's name, an incarnation
  // (its start in simulated milliseconds + 1: it grows across restarts),
  // rejoin = false, a seed from the run's, and its peers' addresses: the
  // first three nodes' as seeds.
  uint64_t probeIntervalMillis = 1000;
  uint64_t gossipIntervalMillis = 200;
  uint64_t antiEntropyMillis = 1000;
  uint64_t crossRegionAntiEntropyMillis = 10'000;
  size_t maxConnections = 32;
  bool eagerPush = true;  // false: deltas are only announced (Plumtree's lazy path)
  // Last word on every core's options (tests: repair-path-only cores...).
  std::function<void(gossip::CoreOptions&)> tuneCore;
  // A leaving node runs until its core's leaveDone(), at most this long, then stops.
  Micros leaveTimeout = 5 * kSeconds;
  bool verbose = false;  // faults and progress on stderr
};

struct SimResult {
  int nodes = 0;       // started at time 0
  int totalNodes = 0;  // including joins
  int regions = 0;
  double simulatedS = 0, wallS = 0;
  double cpuS = 0;       // CPU time of the process (the machine may be shared)
  double coreWallS = 0;  // wall time inside the replication cores and stores
  double viewWallS = 0;  // of the rest: reading the cores' member lists (polls)
  uint64_t events = 0;
  uint64_t frames = 0;
  uint64_t writes = 0, reads = 0, staleReads = 0;
  double writeToAllP50Ms = -1, writeToAllP99Ms = -1, writeToAllMaxMs = -1;
  double healConvergeS = -1;  // after the final heal; -1 = did not converge in `settle`
  // Bytes are frames on the wire (body + the 72-byte seal), sent in the
  // workload window unless said otherwise. Frame kinds: membership (hello,
  // ping, ack, nack, pingReq, gossip, pushPull, pushPullReply),
  // dissemination (broadcast, ihave, graft, prune), repair (reconcile).
  double bytesPerNodePerS = 0;            // everything sent, per node started at 0
  double membershipBytesPerNodePerS = 0;  // of which membership frames
  double disseminationBytesPerNodePerS = 0;
  double bytesPerWrite = 0;  // dissemination and repair frames per write acknowledged in the window
  double crossRegionBytesPerWrite = 0;  // ... of which between regions
  // Connections open at a node whose hello went both ways (the simulator's
  // own count, not the core's): the maximum any node had at any time of
  // the run, and the mean over running nodes (sampled at each poll in the
  // window).
  uint64_t maxConnectionsPerNode = 0;
  double meanConnectionsPerNode = 0;
  // The cores' own count (ClusterStats::connections), sampled at each poll:
  // the largest.
  uint64_t maxCoreConnectionsPerNode = 0;
  double deltaBytesMean = 0;  // encoded delta of a write published in the window
  // Dissemination frames delivered to a running node, per write, per
  // running node (mean over the polls in the window); and its ratio to
  // deltaBytesMean.
  double receivedDisseminationBytesPerWritePerNode = 0;
  double receiveRatio = 0;
  // Dissemination and repair frames delivered between the two regions of a
  // pair (either way), per write: the largest pair; and its ratio to
  // deltaBytesMean. 0 with one region.
  double crossRegionDisseminationBytesPerWrite = 0;
  double regionPairRatioMax = 0;
  // Crash or leave -> every running node that started before it sees it
  // dead or left (mean, max); -1 = none.
  double detectDeadS = -1, detectDeadMaxS = -1;
  uint64_t crashesDetected = 0, crashesUndetected = 0;
  // A joined node (--joins, --join-burst) -> every running node lists it
  // alive: max over joiners; -1 = none joined or not all known by the end.
  double joinKnownS = -1;
  uint64_t joinsKnown = 0, joinsUnknown = 0;
  // A leave -> every running node lists the leaver left: max; -1 = none.
  double leaveKnownS = -1;
  uint64_t suspicions = 0;  // a peer went alive -> suspect or dead in a view
  // ... -> dead (not suspect) while it and the viewer were up, unpaused and
  // not partitioned from each other for longer than the detector needs
  // (see wrongDeadQuiet in simulation.cpp).
  uint64_t wronglyDeclaredDead = 0;
  // The live cores' counters at the end (a restarted core starts at 0).
  uint64_t probesFailed = 0, refutations = 0, broadcastDuplicates = 0, grafts = 0;
  uint64_t lost = 0;                 // acknowledged writes missing on a live node at the end
  uint64_t lostWithLeaver = 0;       // of which acknowledged by a node that later left
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
