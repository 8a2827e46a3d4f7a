#include "tools/sim/faults.h"

#include <algorithm>

namespace chorus::sim {

const char* faultName(Fault::Kind kind) {
  switch (kind) {
    case Fault::Kind::kSplitRegion:
      return "split-region";
    case Fault::Kind::kIsolate:
      return "isolate";
    case Fault::Kind::kOneWay:
      return "one-way";
    case Fault::Kind::kCrash:
      return "crash";
    case Fault::Kind::kPause:
      return "pause";
    case Fault::Kind::kSkew:
      return "skew";
    case Fault::Kind::kJoin:
      return "join";
    case Fault::Kind::kLeave:
      return "leave";
  }
  return "?";
}

std::string describe(const Fault& f) {
  std::string s = std::to_string(double(f.at) / 1e6) + "s " + faultName(f.kind) + " " +
                  (f.kind == Fault::Kind::kSplitRegion ? "region " : "node ") +
                  std::to_string(f.target);
  if (f.duration) s += " for " + std::to_string(double(f.duration) / 1e6) + "s";
  if (f.kind == Fault::Kind::kSkew) s += " by " + std::to_string(f.skewMillis) + "ms";
  return s;
}

std::vector<Fault> makeSchedule(const FaultOptions& o, int initialNodes, int regions, Rng& rng) {
  std::vector<Fault> out;
  if (o.end <= o.begin || initialNodes <= 0) return out;
  Micros window = o.end - o.begin;
  auto start = [&] { return o.begin + Micros(rng.unit() * double(window)); };
  auto length = [&](Micros at) {
    Micros d = Micros(double(o.meanDuration) * (0.5 + rng.unit()));
    return std::max<Micros>(1, std::min(d, o.end - at));
  };
  // Per node, the intervals in which it is crashed, paused or gone.
  std::vector<std::vector<std::pair<Micros, Micros>>> busy(static_cast<size_t>(initialNodes));
  auto free = [&](int node, Micros a, Micros b) {
    for (auto [x, y] : busy[size_t(node)]) {
      if (a < y && x < b) return false;
    }
    return true;
  };
  auto nodeFault = [&](Fault::Kind kind, int count) {
    for (int i = 0; i < count; ++i) {
      for (int attempt = 0; attempt < 20; ++attempt) {
        Fault f;
        f.kind = kind;
        f.at = start();
        f.target = int(rng.below(uint64_t(initialNodes)));
        f.duration = kind == Fault::Kind::kLeave ? o.end - f.at : length(f.at);
        Micros until = kind == Fault::Kind::kLeave ? ~Micros{0} : f.at + f.duration;
        if (!free(f.target, f.at, until)) continue;
        if (kind == Fault::Kind::kLeave) f.duration = 0;
        busy[size_t(f.target)].emplace_back(f.at, until);
        out.push_back(f);
        break;
      }
    }
  };
  // Leaves first, so crashes and pauses avoid nodes that are gone.
  nodeFault(Fault::Kind::kLeave, std::min(o.leaves, initialNodes - 1));
  nodeFault(Fault::Kind::kCrash, o.crashes);
  nodeFault(Fault::Kind::kPause, o.pauses);
  // Faults over a window of their own, on a region or a node.
  auto timedFault = [&](Fault::Kind kind, int count, int targets) {
    for (int i = 0; i < count; ++i) {
      Fault f;
      f.kind = kind;
      f.at = start();
      f.target = int(rng.below(uint64_t(targets)));
      f.duration = length(f.at);
      out.push_back(f);
    }
  };
  if (regions > 1) timedFault(Fault::Kind::kSplitRegion, o.splits, regions);
  timedFault(Fault::Kind::kIsolate, o.isolations, initialNodes);
  timedFault(Fault::Kind::kOneWay, o.oneWay, initialNodes);
  for (int i = 0; i < o.skews; ++i) {
    Fault f;
    f.kind = Fault::Kind::kSkew;
    f.at = start();
    f.target = int(rng.below(uint64_t(initialNodes)));
    f.skewMillis = int64_t(rng.below(uint64_t(2 * o.maxSkewMillis + 1))) - o.maxSkewMillis;
    out.push_back(f);
  }
  for (int i = 0; i < o.joins; ++i) {
    Fault f;
    f.kind = Fault::Kind::kJoin;
    f.at = start();
    f.target = initialNodes + i;
    out.push_back(f);
  }
  // The burst draws nothing from `rng`: the rest of the schedule is the
  // same with or without it.
  for (int i = 0; i < o.joinBurst; ++i) {
    Fault f;
    f.kind = Fault::Kind::kJoin;
    f.at = o.joinBurstAt;
    f.target = initialNodes + o.joins + i;
    out.push_back(f);
  }
  if (o.finalSplit > 0 && regions > 1) {
    Fault f;
    f.kind = Fault::Kind::kSplitRegion;
    f.at = o.end > o.finalSplit ? o.end - o.finalSplit : 0;
    f.target = 0;
    f.duration = o.end - f.at;
    out.push_back(f);
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const Fault& a, const Fault& b) { return a.at < b.at; });
  return out;
}

}  // namespace chorus::sim
