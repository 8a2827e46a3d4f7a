// chorus-chaos: a Jepsen-style checker. Starts local chorusd nodes, runs
// concurrent clients that record every operation and its outcome, injects
// faults on a schedule drawn from a seed (partitions of four shapes, SIGKILL
// and restart, SIGSTOP/SIGCONT, clock skew), then heals everything, waits
// for the nodes to converge and checks every node against what the clients
// were told. See README.md "Failure semantics".
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace chorus::chaos {

struct Config {
  std::string chorusd;  // path of the chorusd binary
  int nodes = 5;
  int clients = 4;
  double durationS = 60;  // of the faulted workload
  uint64_t seed = 0;      // draws the fault schedule (and the workload)
  std::string dir;        // scratch dir; a new one under $TMPDIR if empty
  bool keep = false;      // keep data and logs even on success
  double maxSkewS = 50;   // clock offsets drawn from [-max, +max] seconds
  int antiEntropyMs = 300;
  double convergeTimeoutS = 60;
  int callTimeoutMs = 3000;   // per client call; beyond it the outcome is unknown
  bool unsafeNoSync = false;  // pass --unsafe-no-sync to the nodes
  bool verbose = false;       // print each fault as it is injected
  // After convergence, sneak in a review no client wrote and remove a tag
  // acknowledged as added, on node 1: the checker must report both.
  bool selfTest = false;
};

// One fault of the schedule (all drawn from the seed before the run).
struct Fault {
  enum Kind { kPartition, kHeal, kKill, kRestart, kPause, kResume, kSkew, kUnskew };
  double at = 0;  // seconds after the workload started
  Kind kind = kHeal;
  int node = -1;                          // kKill .. kUnskew
  int64_t offsetMs = 0;                   // kSkew
  std::string shape;                      // kPartition: halves, isolated, bridge, ring
  std::vector<std::vector<int>> blocked;  // kPartition: per node, the nodes it drops
};

std::vector<Fault> schedule(const Config& config);
std::string describe(const Fault& f);

struct Report {
  uint64_t operations = 0, acknowledged = 0, failed = 0, unknown = 0;
  uint64_t lost = 0, unexpected = 0;
  uint64_t reordered = 0;  // an earlier write won by its later HLC stamp (clock skew)
  uint64_t partitions = 0, heals = 0, kills = 0, pauses = 0, skews = 0;
  std::map<std::string, uint64_t> shapes;  // partitions by shape
  int64_t maxSkewMs = 0;
  uint64_t reviews = 0;  // reviews the clients wrote (any outcome)
  bool converged = false;
  double convergeS = -1;  // after the final heal; -1 if not converged
  double workloadS = 0, totalS = 0;
  bool interrupted = false;
  uint64_t crashes = 0;               // nodes that exited by themselves (a bug in chorusd)
  uint64_t unverified = 0;            // stores failing Store::verify() after the nodes stopped
  std::vector<std::string> problems;  // first few lost/unexpected findings
  std::string dir;                    // where data and logs are (kept on failure)
  bool ok() const {
    return !interrupted && converged && lost == 0 && unexpected == 0 && crashes == 0 &&
           unverified == 0;
  }
};

// Runs the whole thing. Progress goes to stderr; the report is returned.
Report run(const Config& config);

std::string toJson(const Report& r, const Config& c);
std::string toText(const Report& r, const Config& c);

}  // namespace chorus::chaos
