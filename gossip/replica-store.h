// gossip::ReplicaStore: the narrow view of a replica's store that
// replication needs, in the spirit of negentropy's StorageBase: the Merkle
// tree (root, children of a node, leaf entries), the canonical encoded state
// of a review, and merge.
//
// The tree is storage's (storage/merkle.h): 16-ary, kDepth levels below the
// root, leaves placed by the top 16 bits of a key hash, node hashes the sum
// of their entries. Any implementation must place and hash exactly as
// storage::Store does, or replicas of different kinds never agree.
//
// Merges are asynchronous: merge() may call `done` before it returns (an
// in-memory store, a simulator completing at once), later from another
// thread (storage::Store's store thread, after the commit), or later on the
// caller's thread (a simulator modelling commit latency). `done` runs exactly
// once per merge. Reads see every merge whose `done` has run.
//
// StoreReplica adapts a storage::Store (reads on the calling thread, merges
// committed on the store thread).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "crdt/result.h"
#include "crdt/review.h"
#include "storage/store.h"

namespace chorus::gossip {

using MergeDone = std::function<void(Result<storage::Applied>)>;

class ReplicaStore {
 public:
  static constexpr int kFanout = storage::Store::kFanout;  // children per node
  static constexpr int kDepth = storage::Store::kDepth;    // leaves sit at this level

  virtual ~ReplicaStore() = default;

  // The root hash (level 0).
  virtual Result<storage::Hash> root() = 0;
  // The kFanout child hashes of node (level, index), level < kDepth; the
  // children are (level + 1, index * kFanout + i).
  virtual Result<std::vector<storage::Hash>> children(int level, uint64_t index) = 0;
  // The entries of one leaf bucket, sorted by keyHash.
  virtual Result<std::vector<storage::LeafEntry>> leafEntries(uint64_t leafIndex) = 0;
  // A review's canonical encoding (crdt::ReviewDoc::encode), as a peer is
  // sent it; nullopt if the store does not hold it.
  virtual Result<std::optional<std::string>> encodedState(const crdt::ReviewKey& key) = 0;
  // Joins a state from a peer into the stored one (crdt::ReviewDoc::merge
  // under the store's clock-drift rules); `done` as described above.
  virtual void merge(crdt::ReviewDoc state, MergeDone done) = 0;
};

// A storage::Store as a ReplicaStore. `done` of merge runs on the store
// thread after the commit (see storage/store.h).
class StoreReplica final : public ReplicaStore {
 public:
  explicit StoreReplica(storage::Store& store) : store_(store) {}

  Result<storage::Hash> root() override { return store_.merkleRoot(); }
  Result<std::vector<storage::Hash>> children(int level, uint64_t index) override {
    return store_.merkleChildren(level, index);
  }
  Result<std::vector<storage::LeafEntry>> leafEntries(uint64_t leafIndex) override {
    return store_.leafEntries(leafIndex);
  }
  Result<std::optional<std::string>> encodedState(const crdt::ReviewKey& key) override {
    return store_.getEncoded(key);
  }
  void merge(crdt::ReviewDoc state, MergeDone done) override {
    store_.merge(std::move(state), std::move(done));
  }

  storage::Store& store() { return store_; }

 private:
  storage::Store& store_;
};

}  // namespace chorus::gossip
