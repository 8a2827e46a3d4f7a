// An in-memory replica store for the simulator: the same documents, merge
// and Merkle tree as storage::Store (LMDB), without a disk or threads, so a
// thousand of them fit in one process.
//
// Same as storage::Store, by construction:
//   - merge is crdt::ReviewDoc::join, after the HybridClock has observed the
//     remote's greatest stamp (a stamp more than maxDrift ahead of this
//     node's physical clock is refused with kClockDrift, as storage does);
//     keys are checked with storage's validateKey;
//   - a document is kept as its canonical encoding; the Merkle tree places
//     it by storage::keyHash and hashes it with storage::digestOf /
//     entryHash, node sums mod 2^128 (storage/merkle.h), so merkleRoot() of
//     a MemoryStore equals merkleRoot() of an LMDB Store holding the same
//     documents.
// Not kept: product aggregates and listings (the simulator does not read
// them). Writes apply at once, synchronously; there is no group commit.
//
// Single-threaded.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "crdt/hlc.h"
#include "crdt/result.h"
#include "crdt/review.h"
#include "storage/store.h"

namespace chorus::sim {

class MemoryStore {
 public:
  MemoryStore(crdt::ReplicaId replica, crdt::PhysicalClock clock,
              uint64_t maxDriftMillis = crdt::HybridClock::kDefaultMaxDriftMillis);

  crdt::ReplicaId replicaId() const { return clock_.replica(); }

  // Runs a local operation (storage::Mutation's contract) and stores the result.
  Result<storage::Applied> mutate(const crdt::ReviewKey& key, const storage::Mutation& mutation);
  // Joins a remote state or delta in. kClockDrift: a stamp too far ahead.
  Result<storage::Applied> merge(const crdt::ReviewDoc& remote);

  std::optional<crdt::ReviewDoc> get(const crdt::ReviewKey& key) const;
  std::optional<std::string> getEncoded(const crdt::ReviewKey& key) const;

  storage::Hash merkleRoot() const { return level0_; }
  // The 16 children of node (level, index), level 0-3 (storage's numbering).
  std::vector<storage::Hash> merkleChildren(int level, uint64_t index) const;
  // Entries of one leaf, sorted by (keyHash, docKey) as storage returns them.
  std::vector<storage::LeafEntry> leafEntries(uint64_t leafIndex) const;

  size_t documents() const { return docs_.size(); }
  uint64_t refusedStamps() const { return clock_.refusedCount(); }
  // Every document's canonical encoding, in docKey order.
  std::vector<std::string> allEncoded() const;

 private:
  struct Doc {
    std::string encoded;
    storage::Hash digest;
    uint64_t keyHash;
  };
  Result<storage::Applied> store(const std::string& docKey, const crdt::ReviewDoc& before,
                                 const crdt::ReviewDoc& after, crdt::ReviewDoc delta);
  Result<crdt::ReviewDoc> load(const crdt::ReviewKey& key, const std::string& docKey) const;
  void addToTree(uint64_t keyHash, const storage::Hash& entry, bool add);

  crdt::HybridClock clock_;
  std::unordered_map<std::string, Doc> docs_;  // by storage docKey
  // Leaves: entries by (keyHash, docKey) -> digest; and the sums of levels 0-4.
  std::unordered_map<uint32_t, std::map<std::pair<uint64_t, std::string>, storage::Hash>> leaves_;
  storage::Hash level0_{};
  std::array<storage::Hash, 16> level1_{};
  std::vector<storage::Hash> level2_ = std::vector<storage::Hash>(256);
  std::vector<storage::Hash> level3_ = std::vector<storage::Hash>(4096);
  std::unordered_map<uint32_t, storage::Hash> level4_;  // sparse: most leaves are empty
};

}  // namespace chorus::sim
