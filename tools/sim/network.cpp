#include "tools/sim/network.h"

#include <algorithm>
#include <cstdlib>

namespace chorus::sim {

namespace {

Error bad(const std::string& why) { return makeError(ErrorCode::kInvalidArgument, why); }

// Splits "12.5ms" into 12.5 and "ms".
bool splitNumber(const std::string& text, double& value, std::string& unit) {
  char* end = nullptr;
  value = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || value < 0) return false;
  unit = std::string(end);
  return true;
}

}  // namespace

Result<Micros> parseDuration(const std::string& text) {
  double v;
  std::string unit;
  if (!splitNumber(text, v, unit)) return bad("'" + text + "' is not a duration (e.g. 80ms)");
  double scale;
  if (unit == "us") {
    scale = 1;
  } else if (unit == "ms") {
    scale = 1e3;
  } else if (unit == "s" || unit.empty()) {
    scale = 1e6;
  } else if (unit == "m" || unit == "min") {
    scale = 60e6;
  } else {
    return bad("'" + text + "': unit must be us, ms, s or min");
  }
  return Micros(v * scale + 0.5);
}

Result<uint64_t> parseBandwidth(const std::string& text) {
  double v;
  std::string unit;
  if (!splitNumber(text, v, unit)) return bad("'" + text + "' is not a bandwidth (e.g. 1gbit)");
  double scale;
  if (unit == "bit" || unit.empty()) {
    scale = 1;
  } else if (unit == "kbit") {
    scale = 1e3;
  } else if (unit == "mbit") {
    scale = 1e6;
  } else if (unit == "gbit") {
    scale = 1e9;
  } else {
    return bad("'" + text + "': unit must be bit, kbit, mbit or gbit");
  }
  return uint64_t(v * scale);
}

Result<std::vector<Region>> parseRegions(const std::string& text) {
  std::vector<Region> out;
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t comma = text.find(',', begin);
    std::string item =
        text.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin);
    size_t colon = item.find(':');
    Region r;
    r.name = item.substr(0, colon);
    if (r.name.empty()) return bad("--regions: empty region name in '" + text + "'");
    for (const auto& other : out) {
      if (other.name == r.name) return bad("--regions: '" + r.name + "' named twice");
    }
    if (colon != std::string::npos) {
      auto latency = parseDuration(item.substr(colon + 1));
      if (!latency.ok()) return bad("--regions: " + latency.error().message);
      r.latency = latency.value();
    }
    out.push_back(std::move(r));
    if (comma == std::string::npos) break;
    begin = comma + 1;
  }
  if (out.empty()) return bad("--regions: no region");
  return out;
}

Network::Network(NetworkOptions options, std::vector<int> regionOf, Rng rng)
    : options_(std::move(options)),
      regionOf_(std::move(regionOf)),
      nodes_(regionOf_.size()),
      links_(nodes_ * nodes_),
      rng_(rng) {}

Micros Network::latency(int from, int to) const {
  int a = regionOf_[size_t(from)], b = regionOf_[size_t(to)];
  return a == b ? options_.regions[size_t(a)].latency : options_.wanLatency;
}

bool Network::blocked(int from, int to) const {
  if (from == to) return false;
  for (const auto& [id, b] : blocks_) {
    switch (b.kind) {
      case Block::Kind::kRegion:
        if ((regionOf_[size_t(from)] == b.region) != (regionOf_[size_t(to)] == b.region)) {
          return true;
        }
        break;
      case Block::Kind::kNode:
        if (from == b.node || to == b.node) return true;
        break;
      case Block::Kind::kOneWay:
        if (from == b.node) return true;
        break;
    }
  }
  return false;
}

std::optional<Network::Transit> Network::send(Micros now, int from, int to, size_t bytes) {
  if (blocked(from, to)) return std::nullopt;
  Link& link = links_[size_t(from) * nodes_ + size_t(to)];
  Micros serialize = options_.bandwidthBitsPerSecond == 0
                         ? 0
                         : Micros(double(bytes) * 8e6 / double(options_.bandwidthBitsPerSecond));
  Micros departs = std::max(now, link.freeAt) + serialize;
  link.freeAt = departs;
  Micros base = latency(from, to);
  Micros arrives = departs + base;
  if (options_.jitter > 0) arrives += Micros(rng_.unit() * options_.jitter * double(base));
  if (rng_.chance(options_.loss)) arrives += std::max<Micros>(200 * kMillis, 2 * base);
  arrives = std::max(arrives, link.lastArrival);
  link.lastArrival = arrives;
  return Transit{departs, arrives};
}

uint64_t Network::add(Block block) {
  blocks_.emplace_back(nextBlock_, block);
  return nextBlock_++;
}

void Network::remove(uint64_t id) {
  blocks_.erase(
      std::remove_if(blocks_.begin(), blocks_.end(), [id](const auto& b) { return b.first == id; }),
      blocks_.end());
}

}  // namespace chorus::sim
