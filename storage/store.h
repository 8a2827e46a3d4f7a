// The durable store of one Chorus node: review documents in LMDB, with
// product aggregates and a Merkle tree kept in the same transactions.
//
// Threads: a Store owns one writer thread (the "store thread") and a helper
// that prepares the next batch while the store thread commits. Writes are
// queued from any thread and committed on the store thread in groups (group
// commit); their callbacks run on the store thread after the transaction
// holding them has committed durably, so callbacks must be short and must
// not block (post the result to your own loop). Reads run on the calling
// thread in their own LMDB read transaction and may be made from any thread.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "crdt/hlc.h"
#include "crdt/result.h"
#include "crdt/review.h"

namespace chorus::storage {

// On-disk format version, stored in meta and checked at open.
inline constexpr uint32_t kSchemaVersion = 4;

struct Options {
  // Created if missing, mode 0700 whatever the umask; the store's files in
  // it are 0600. An existing dir that group or others may enter, or a store
  // file they may read, is tightened at open (and `notice` told); a shared
  // sticky dir such as /tmp is refused.
  std::string dir;
  uint64_t initialMapBytes = 64ull << 20;    // grows on MDB_MAP_FULL
  size_t maxBatch = 1000;                    // writes per transaction, at most
  // Skips fsync at commit (MDB_NOSYNC): an OS crash may lose acknowledged
  // writes. Off by default; for benchmarks and throwaway test clusters only.
  bool unsafeNoSync = false;
  crdt::PhysicalClock clock = crdt::systemClock();
  uint64_t maxDriftMillis = crdt::HybridClock::kDefaultMaxDriftMillis;
  // Called during open() with what an operator should hear about (a mode
  // tightened, or one that could not be); nothing is said when unset.
  std::function<void(const std::string&)> notice;
  // Called with the document a merge would store (the stored one joined
  // with the remote state or delta) whenever that changes it; an error
  // refuses just that merge (its Done gets the error, nothing is stored).
  // Deltas are checked here, joined, because each alone may be small. Runs
  // on one of the store's threads: pure, quick, no locks. Unset: all pass.
  std::function<Status(const crdt::ReviewDoc& merged)> admitMerge;
  // Called on the store thread after each write transaction committed,
  // before its writes are acknowledged, with how long the commit took (from
  // beginning the transaction to its durable commit: applying the batch,
  // fsync, and any map growth and retry) and the writes it acknowledged
  // (those that failed alone, e.g. not found, are not counted). For
  // metrics: it delays every write of the batch, so it must be quick and
  // must not block. Unset: nothing is called.
  std::function<void(std::chrono::nanoseconds took, size_t writes)> onCommit;
};

// What a committed write did.
struct Applied {
  crdt::ReviewDoc delta;   // what changed: ship this to peers
  crdt::ReviewDoc state;   // the stored document after the write
  bool changed = false;    // false when the write was already known
};

using Done = std::function<void(Result<Applied>)>;

// A local operation: called on one of the store's threads (never two at
// once) with the current document (empty if none) and the store's clock;
// mutates `doc` through one of ReviewDoc's delta mutators and returns the
// delta. May return an Error (e.g. not found) to abort just this write. May
// run more than once (when the batch committing before its own fails), so it
// must have no effects beyond `doc` and `clock`.
using Mutation = std::function<Result<crdt::ReviewDoc>(crdt::ReviewDoc& doc,
                                                        crdt::HybridClock& clock)>;

enum class Order { kNewest, kHighestRating, kLowestRating };

struct Page {
  std::vector<crdt::ReviewDoc> reviews;
  std::string nextCursor;  // empty when there is no more
};

struct ProductSummary {
  uint64_t count = 0;                     // live (non-deleted) reviews
  std::array<uint64_t, 5> histogram{};    // histogram[r-1] = reviews rated r
  uint64_t ratingSum = 0;
  uint64_t helpfulTotal = 0;
  double average() const { return count == 0 ? 0.0 : double(ratingSum) / double(count); }
};

// A product page: the summary and one page of the listing.
struct ProductPage {
  ProductSummary summary;
  Page page;
};

// A 128-bit Merkle hash.
using Hash = std::array<uint8_t, 16>;

// One entry of a Merkle leaf bucket.
struct LeafEntry {
  uint64_t keyHash;    // hash of the review key; places it in the tree
  Hash digest;         // hash of the document's canonical bytes
  crdt::ReviewKey key;
};

struct BackupManifest;  // storage/backup.h
struct BackupOptions;   // storage/backup.h

struct StoreStats {
  uint64_t documents = 0;
  uint64_t mapBytes = 0;       // current LMDB map size
  uint64_t usedBytes = 0;      // pages in use
  uint64_t commits = 0;        // write transactions since open
  uint64_t writes = 0;         // writes acknowledged since open
  uint64_t mapGrowths = 0;
  uint64_t refusedStamps = 0;  // remote stamps refused for clock drift
};

class Store {
 public:
  // Opens (creating if needed) the store in options.dir. Errors: kBusy if
  // another process has it open, kCorruption / kInvalidArgument for a
  // damaged or unknown-version store (the message says what to do), kIo.
  static Result<std::unique_ptr<Store>> open(Options options);
  virtual ~Store() = default;  // drains queued writes, then closes

  virtual crdt::ReplicaId replicaId() const = 0;

  // ---- writes: any thread; `done` runs on the store thread after commit ---
  // Runs a local operation on the current document.
  virtual void mutate(crdt::ReviewKey key, Mutation mutation, Done done) = 0;
  // Merges a remote state or delta. Refused with kClockDrift when a stamp in
  // it is too far ahead of local time.
  virtual void merge(crdt::ReviewDoc remote, Done done) = 0;
  // Blocking forms of the above, for tools and tests.
  Result<Applied> mutateSync(crdt::ReviewKey key, Mutation mutation);
  Result<Applied> mergeSync(crdt::ReviewDoc remote);

  // ---- reads: any thread ---------------------------------------------------
  // Deleted reviews are returned by get (so callers see the tombstone) but
  // skipped by the listings and the summary.
  virtual Result<std::optional<crdt::ReviewDoc>> get(const crdt::ReviewKey& key) = 0;
  // The stored canonical encoding (ReviewDoc::encode) of a review, checksum
  // verified but not decoded: for shipping states to peers.
  virtual Result<std::optional<std::string>> getEncoded(const crdt::ReviewKey& key) = 0;
  virtual Result<Page> listProduct(const std::string& product, Order order,
                                   const std::string& cursor, size_t limit) = 0;
  virtual Result<ProductSummary> summary(const std::string& product) = 0;
  // summary() and listProduct() read from one snapshot, so they agree (the
  // LMDB store reads both in one read transaction; this default, for other
  // implementations, makes the two calls).
  virtual Result<ProductPage> productPage(const std::string& product, Order order,
                                          const std::string& cursor, size_t limit);
  virtual Result<Page> listAuthor(const std::string& author, const std::string& cursor,
                                  size_t limit) = 0;

  // ---- Merkle tree, for anti-entropy: any thread ---------------------------
  // Nodes are numbered by (level, index): level 0 is the root; a node's
  // children are (level + 1, index * kFanout + i); leaves sit at kDepth.
  static constexpr int kFanout = 16;
  static constexpr int kDepth = 4;
  virtual Result<Hash> merkleRoot() = 0;
  virtual Result<std::vector<Hash>> merkleChildren(int level, uint64_t index) = 0;
  virtual Result<std::vector<LeafEntry>> leafEntries(uint64_t leafIndex) = 0;
  // Recomputes the tree and aggregates from the documents and compares;
  // kCorruption names the first mismatch.
  virtual Status verify() = 0;

  virtual StoreStats stats() = 0;

  // ---- backup: any thread --------------------------------------------------
  // Writes a consistent, compacted copy of the store and its manifest into
  // `dir` (storage/backup.h), which must not exist or be empty (created
  // 0700). The copy is one read transaction's snapshot, so writes go on
  // being committed meanwhile. Growing the map must wait until the copy
  // ends (it would remap the file under it), so the map is grown first
  // when more than half full; should it fill anyway, writes and reads wait
  // for the copy. Blocks the calling thread for about the time of writing
  // the compacted file. Errors: kInvalidArgument (dir not empty or not a
  // directory), kIo.
  virtual Result<BackupManifest> backup(const std::string& dir, const BackupOptions& options) = 0;
};

}  // namespace chorus::storage
