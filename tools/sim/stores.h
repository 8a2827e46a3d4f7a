// A simulated node's store, as the simulator drives it: the replication
// core reads it through gossip::ReplicaStore; the workload writes to it; the
// checker reads stamps and roots. It outlives the node's crashes (volatile
// state does not).
//
// Two kinds: MemoryStore (tools/sim/memory-store.h), for any N, and the real
// LMDB storage::Store through the core's adapter (gossip::StoreReplica), for
// small N. Both merge synchronously as the simulator sees it: mergeNow
// returns once the merge has committed (for LMDB: the store thread's
// callback ran), so a run does not depend on thread timing.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "crdt/hlc.h"
#include "crdt/result.h"
#include "crdt/review.h"
#include "gossip/replica-store.h"
#include "storage/store.h"

namespace chorus::sim {

class SimStore {
 public:
  virtual ~SimStore() = default;
  virtual crdt::ReplicaId replicaId() = 0;
  // What the replication core reads (it merges through mergeNow, via the driver).
  virtual gossip::ReplicaStore& replica() = 0;
  // A local write (storage::Mutation's contract), committed when it returns.
  virtual Result<storage::Applied> write(const crdt::ReviewKey& key,
                                         const storage::Mutation& mutation) = 0;
  // A state from a peer, committed (or refused) when it returns.
  virtual Result<storage::Applied> mergeNow(crdt::ReviewDoc state) = 0;
  virtual Result<storage::Hash> root() = 0;
  // The stored content stamp of a review; nullopt if absent.
  virtual Result<std::optional<crdt::Stamp>> contentStamp(const crdt::ReviewKey& key) = 0;
  virtual uint64_t documents() = 0;
};

std::unique_ptr<SimStore> makeMemoryStore(crdt::ReplicaId replica, crdt::PhysicalClock clock);
// Opens (creating) an LMDB store in `dir`, without fsync (a crash in the
// simulator is a process crash: the OS keeps what was written).
Result<std::unique_ptr<SimStore>> openLmdbStore(const std::string& dir, crdt::PhysicalClock clock);

// Every document's canonical encoding, by walking the Merkle tree through
// the interface (only into non-empty subtrees), sorted: comparable across
// store kinds.
Result<std::vector<std::string>> storeContents(gossip::ReplicaStore& store);

}  // namespace chorus::sim
