// What the simulator promises to check: every acknowledged write reaches
// every node that is a member, and the replicas converge.
//
// While the run goes, the checker follows each acknowledged write to every
// node (a node holds a write once its document's content stamp is at least
// the write's: the write or a later one won there) and records when the
// last member got it: the write-to-all latency. At the end, verify() asks
// the stores themselves, not this bookkeeping.
//
// Single-threaded.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "crdt/review.h"
#include "tools/sim/event-loop.h"

namespace chorus::sim {

struct WriteRecord {
  uint32_t id = 0;
  int node = 0;  // the node that acknowledged it
  crdt::ReviewKey key;
  crdt::Stamp stamp;  // its content stamp
  Micros acked = 0;
  Micros allAt = 0;  // when every member held it; 0 = not yet
};

class Checker {
 public:
  explicit Checker(int maxNodes);

  // A node becomes a member (starts or joins) or stops being one (leaves).
  // A crashed node stays a member: its store survives and must catch up.
  void setMember(int node, bool member, Micros now);
  bool member(int node) const { return member_[size_t(node)] != 0; }

  // A write acknowledged by `node` (which holds it). Returns its id.
  uint32_t acked(int node, const crdt::ReviewKey& key, crdt::Stamp stamp, Micros now);
  // `node`'s store now holds `doc` (after a local write or a merge that changed it).
  void stored(int node, const crdt::ReviewDoc& doc, Micros now);

  const std::vector<WriteRecord>& writes() const { return writes_; }
  size_t incomplete() const { return incomplete_; }
  // Write-to-all latencies of the writes acknowledged in [from, to), in ms, sorted.
  std::vector<double> latenciesMillis(Micros from, Micros to) const;
  // Up to `examples` lines "write w (key) not yet held by members n1 n2 ...".
  std::vector<std::string> describeIncomplete(size_t examples) const;
  // Latest allAt over writes acknowledged before `before` (nullopt if one is incomplete).
  std::optional<Micros> allDelivered(Micros before) const;

  // The final check, against the stores: for every write and every node in
  // `live`, `stampAt(node, key)` (the stored content stamp, nullopt if
  // absent) must be at least the write's. Returns the writes missing
  // somewhere, and fills `missing` with up to `examples` "write w (key) not
  // on node n" lines.
  using StampAt = std::function<std::optional<crdt::Stamp>(int node, const crdt::ReviewKey& key)>;
  // `lostIds` (if given) receives the ids of the writes missing somewhere.
  size_t verify(const std::vector<int>& live, const StampAt& stampAt,
                std::vector<std::string>& missing, size_t examples = 5,
                std::vector<uint32_t>* lostIds = nullptr) const;

 private:
  void hold(WriteRecord& w, int node, Micros now);
  struct Tracking {
    std::vector<bool> holders;
    uint32_t memberHolders = 0;
  };
  int maxNodes_;
  std::vector<uint8_t> member_;
  uint32_t members_ = 0;
  std::vector<WriteRecord> writes_;
  std::vector<Tracking> tracking_;
  std::unordered_map<std::string, std::vector<uint32_t>> byKey_;  // "product\0author" -> writes
  size_t incomplete_ = 0;
};

}  // namespace chorus::sim
