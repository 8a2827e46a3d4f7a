// The simulated network: named regions, per-link latency, jitter, loss and
// bandwidth, and partitions.
//
// A directed link (from, to) carries frames in order, as a TCP connection
// does: a frame leaves when the link has serialized the ones before it
// (bytes / bandwidth), then travels for the link's latency plus jitter, and
// never overtakes an earlier frame. Latency is the region's own within a
// region and the WAN latency between regions. Loss is TCP's, not a lost
// frame: a lost segment is retransmitted after an RTO (at least 200 ms), so
// the frame and every frame behind it arrive that much later.
//
// Partitions drop frames: a frame whose link is blocked when it is sent or
// when it would arrive is lost, and connections stay open (this is what
// Cluster::partition does, and what `chorus cluster partition` injects). A
// connection attempt across a blocked link is not answered: the dialler's
// SYNs are retried at 1, 3, 7, 15, 31 and 63 s and it gives up at 127 s
// (Linux's defaults), so one across a partition that heals in time succeeds
// at the next retry.
//
// Single-threaded; deterministic given the Rng.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "crdt/result.h"
#include "tools/sim/event-loop.h"

namespace chorus::sim {

struct Region {
  std::string name;
  Micros latency = 500;  // one way, between two nodes of this region
};

struct NetworkOptions {
  std::vector<Region> regions{Region{"local", 500}};
  Micros wanLatency = 80 * kMillis;  // one way, between regions
  double jitter = 0.1;               // up to this fraction of the latency, added uniformly
  double loss = 0;                   // probability a frame needs a retransmission
  uint64_t bandwidthBitsPerSecond = 1'000'000'000;  // per directed link; 0 = unlimited
};

// "us:0.5ms,eu:0.5ms,ap:2ms" -> regions. Errors: kInvalidArgument.
Result<std::vector<Region>> parseRegions(const std::string& text);
// "80ms", "0.5ms", "2s", "300us" -> micros. Errors: kInvalidArgument.
Result<Micros> parseDuration(const std::string& text);
// "1gbit", "100mbit", "10kbit", "0" -> bits per second.
Result<uint64_t> parseBandwidth(const std::string& text);

// A reason frames from `from` to `to` are dropped.
struct Block {
  enum class Kind {
    kRegion,  // the nodes of `region` from everyone else, both ways
    kNode,    // node `node` from everyone, both ways
    kOneWay,  // nothing `node` sends arrives (it still hears everyone)
  };
  Kind kind;
  int region = -1;
  int node = -1;
};

class Network {
 public:
  Network(NetworkOptions options, std::vector<int> regionOf, Rng rng);

  size_t regionCount() const { return options_.regions.size(); }
  int regionOf(int node) const { return regionOf_[size_t(node)]; }
  const std::vector<Region>& regions() const { return options_.regions; }
  Micros latency(int from, int to) const;

  // When a frame of `bytes` sent now (`now`) from `from` to `to` leaves the
  // sender (`departs`) and arrives (`arrives`); nullopt when a block drops it.
  struct Transit {
    Micros departs;
    Micros arrives;
  };
  std::optional<Transit> send(Micros now, int from, int to, size_t bytes);
  // Whether frames from `from` to `to` are dropped now.
  bool blocked(int from, int to) const;

  // Returns an id for remove().
  uint64_t add(Block block);
  void remove(uint64_t id);
  void clear() { blocks_.clear(); }
  bool anyBlocks() const { return !blocks_.empty(); }

 private:
  struct Link {
    Micros freeAt = 0;       // serialization of the last frame ends
    Micros lastArrival = 0;  // FIFO
  };
  NetworkOptions options_;
  std::vector<int> regionOf_;
  size_t nodes_;
  std::vector<Link> links_;  // nodes_ x nodes_
  Rng rng_;
  std::vector<std::pair<uint64_t, Block>> blocks_;
  uint64_t nextBlock_ = 1;
};

}  // namespace chorus::sim
