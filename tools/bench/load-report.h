// chorus-bench load: what a run measured, per operation type, and how it is
// printed (a table, or one JSON object).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace chorus::bench {

// One operation type's results. Owned by one thread while recording.
struct OpStats {
  std::vector<double> latencyMs;  // every answered operation, errors included
  uint64_t ok = 0;
  std::map<std::string, uint64_t> errors;  // by code: "not_found", "rpc_disconnected", ...

  void merge(const OpStats& other);
  uint64_t errorCount() const;
};

// Operation types by name ("page", "page.summary", "get", ...). One per
// thread while a run goes; merged after it.
struct Recorder {
  std::map<std::string, OpStats> ops;
  void merge(const Recorder& other);
};

// The summary of one op type over one run.
struct OpSummary {
  uint64_t ok = 0;
  uint64_t errors = 0;
  double opsPerSecond = 0;            // answered without error, per second of the run
  double p50 = 0, p99 = 0, p999 = 0;  // ms
  std::map<std::string, uint64_t> errorsByCode;
};

struct RunResult {
  std::string target;  // "rpc" or "embedded"
  double seconds = 0;
  std::map<std::string, OpSummary> ops;
  uint64_t errors() const;
};

RunResult summarize(std::string target, Recorder& recorder, double seconds);

// The nearest-rank percentile of sorted values; 0 when empty.
double percentile(const std::vector<double>& sorted, double p);

// The order operation names are printed in.
std::vector<std::string> opOrder(const std::map<std::string, OpSummary>& ops);

std::string jsonEscape(const std::string& s);

}  // namespace chorus::bench
