#include "tools/bench/load-report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace chorus::bench {

void OpStats::merge(const OpStats& other) {
  latencyMs.insert(latencyMs.end(), other.latencyMs.begin(), other.latencyMs.end());
  ok += other.ok;
  for (const auto& [code, n] : other.errors) errors[code] += n;
}

uint64_t OpStats::errorCount() const {
  uint64_t n = 0;
  for (const auto& [code, count] : errors) n += count;
  return n;
}

void Recorder::merge(const Recorder& other) {
  for (const auto& [name, stats] : other.ops) ops[name].merge(stats);
}

uint64_t RunResult::errors() const {
  uint64_t n = 0;
  for (const auto& [name, op] : ops) {
    if (name.find('.') == std::string::npos) n += op.errors;  // parts count in their whole
  }
  return n;
}

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t rank = size_t(std::ceil(p * double(sorted.size())));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

RunResult summarize(std::string target, Recorder& recorder, double seconds) {
  RunResult r;
  r.target = std::move(target);
  r.seconds = seconds;
  for (auto& [name, stats] : recorder.ops) {
    std::sort(stats.latencyMs.begin(), stats.latencyMs.end());
    OpSummary s;
    s.ok = stats.ok;
    s.errors = stats.errorCount();
    s.errorsByCode = stats.errors;
    s.opsPerSecond = seconds > 0 ? double(stats.ok) / seconds : 0;
    s.p50 = percentile(stats.latencyMs, 0.50);
    s.p99 = percentile(stats.latencyMs, 0.99);
    s.p999 = percentile(stats.latencyMs, 0.999);
    r.ops[name] = std::move(s);
  }
  return r;
}

std::vector<std::string> opOrder(const std::map<std::string, OpSummary>& ops) {
  static const std::vector<std::string> kOrder = {
      "page",          "page.summary", "page.list",          "page-hot",        "page-hot.summary",
      "page-hot.list", "page-small",   "page-small.summary", "page-small.list", "get",
      "vote",          "write"};
  std::vector<std::string> out;
  for (const auto& name : kOrder) {
    if (ops.count(name)) out.push_back(name);
  }
  for (const auto& [name, op] : ops) {
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  }
  return out;
}

std::string jsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace chorus::bench
