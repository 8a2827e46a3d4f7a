// StoreImpl, the Store on LMDB, and what its parts share. Layout:
// storage/key-schema.h and storage/README.md. The implementation is split by
// job:
//   storage/store.cpp                  construction, shared helpers, the
//                                      public non-virtual members
//   storage/internal/open.cpp          data dir, LMDB environment, schema
//                                      check and migration (Store::open)
//   storage/internal/write-pipeline.cpp  queue, prepare, apply, commit
//   storage/internal/reads.cpp         get, listings, summaries, Merkle reads
//   storage/internal/verify.cpp        verify()
// Every LMDB call goes through storage/internal/lmdb.h.
//
// Threads: one writer thread (the store thread) owns every write
// transaction; a preparer thread runs the next batch's CPU work during the
// store thread's commits, and the HybridClock belongs to whichever of the two
// is preparing a batch; reads open their own read-only transactions on the
// calling thread (MDB_NOTLS). A ResizeGate keeps readers out while the
// writer grows the map, because mdb_env_set_mapsize remaps the file under
// every transaction of this process.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "storage/internal/lmdb.h"
#include "storage/store.h"

namespace chorus::storage::internal {

// How often the writer clears reader slots left by dead processes.
inline constexpr uint64_t kReaderCheckEveryCommits = 1000;
// The map doubles on MDB_MAP_FULL up to this size; beyond it writes fail
// with kIo (the disk is the real limit long before).
inline constexpr uint64_t kMaxMapBytes = uint64_t{1} << 42;  // 4 TiB
inline constexpr unsigned kMaxReaders = 512;

inline constexpr const char* kDbDocuments = "documents";
inline constexpr const char* kDbProducts = "products";
inline constexpr const char* kDbMerkle = "merkle";
inline constexpr const char* kDbLeafEntries = "leaf-entries";
inline constexpr const char* kDbListings = "listings";
inline constexpr const char* kDbMeta = "meta";

struct Dbs {
  MDB_dbi documents = 0;
  MDB_dbi products = 0;     // aggregates
  MDB_dbi merkle = 0;       // inner nodes
  MDB_dbi leafEntries = 0;  // leaf sums and entries; also the by-author listing
  MDB_dbi listings = 0;     // positions of live reviews in both product orders
  MDB_dbi meta = 0;
};

// kCorruption: `what`, and what an operator should do about it.
Error corruption(const std::string& what);

// ---- one process per data dir ----------------------------------------------

// An exclusive flock on <dir>/chorus.lock, held while the store is open. The
// kernel drops it when the process dies, so a crash never leaves it stale.
class LockFile {
 public:
  LockFile() = default;
  LockFile(LockFile&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  LockFile& operator=(LockFile&&) = delete;
  LockFile(const LockFile&) = delete;
  ~LockFile();

  static Result<LockFile> acquire(const std::string& dir);

 private:
  int fd_ = -1;
};

// ---- readers versus map growth ---------------------------------------------

// Shared/exclusive gate with writer preference. Every transaction (the
// writer's too) holds it shared; growing the map holds it exclusively.
class ResizeGate {
 public:
  void enterShared() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !resizing_; });
    ++holders_;
  }
  void exitShared() {
    std::lock_guard lock(mu_);
    CHORUS_ASSERT(holders_ > 0, "gate released more often than entered");
    if (--holders_ == 0) cv_.notify_all();
  }
  void beginExclusive() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !resizing_; });
    resizing_ = true;
    cv_.wait(lock, [&] { return holders_ == 0; });
  }
  void endExclusive() {
    std::lock_guard lock(mu_);
    resizing_ = false;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t holders_ = 0;
  bool resizing_ = false;
};

// Adopts a map size grown by another process (MDB_MAP_RESIZED). The caller
// holds no transaction.
Status adoptMapSize(Env& env, ResizeGate& gate);

// A read-only transaction holding the gate shared for its lifetime.
class ReadTxn {
 public:
  explicit ReadTxn(ResizeGate& gate) : gate_(gate) {}
  ReadTxn(const ReadTxn&) = delete;
  ReadTxn& operator=(const ReadTxn&) = delete;
  ~ReadTxn() {
    txn_.abort();
    if (entered_) gate_.exitShared();
  }

  Status begin(Env& env);
  Txn& txn() { return txn_; }

 private:
  ResizeGate& gate_;
  bool entered_ = false;
  Txn txn_;
};

// ---- derived facts of a document -------------------------------------------

// What the aggregates and the listing positions depend on.
struct Facts {
  bool live = false;
  uint8_t rating = 0;
  crdt::Hlc hlc;  // of the content: orders "newest"
  uint64_t helpful = 0;
};

Facts factsOf(const crdt::ReviewDoc& doc);

// count, histogram[5], ratingSum, helpfulTotal: the aggregate fields as a
// signed delta.
using SummaryDelta = std::array<int64_t, 8>;
void addFacts(SummaryDelta& d, const Facts& f, int64_t sign);
void addFacts(ProductSummary& s, const Facts& f);
bool sameSummary(const ProductSummary& a, const ProductSummary& b);

// A live review's `listings` key (its rating position); none for a tombstone.
void addListingKeys(std::vector<std::string>& out, const crdt::ReviewKey& key, const Facts& f);

// Decodes a stored state that passed its checksum; kCorruption if it does
// not decode or holds another key's review.
Result<crdt::ReviewDoc> decodeStored(std::string_view canonical, const crdt::ReviewKey& key);

// The whole of Store::verify() in `txn` (any transaction, read-only will
// do) over `dbs`, a store of this build's schema. For a backup's copy too.
Status verifyDbs(Txn& txn, const Dbs& dbs);

// Steps that migrate an older schema, each from one version to the next, in
// the open's write transaction (internal/open.cpp chains them and writes
// the new version). `dbs` holds the databases the older version has.
Status migrateSchema1To2(Txn& txn, Dbs& dbs);  // internal/migrate.cpp
Status migrateSchema2To3(Txn& txn, Dbs& dbs);  // internal/migrate.cpp

// ---- the write queue -------------------------------------------------------

struct Pending {
  crdt::ReviewKey key;
  Mutation mutation;                      // a local operation, or
  std::optional<crdt::ReviewDoc> remote;  // a state or delta to merge
  Done done;
};

using Results = std::vector<std::optional<Result<Applied>>>;

// One document as a batch sees it.
struct Working {
  crdt::ReviewKey key;
  uint64_t keyHash = 0;
  bool existed = false;  // stored before the batch
  Hash oldDigest{};
  Facts oldFacts;
  crdt::ReviewDoc doc;  // current state within the batch
  bool dirty = false;
  bool written = false;  // the batch stores a new state (doc), digest newDigest
  Hash newDigest{};
};

// A batch of writes prepared outside the write transaction: mutations run,
// documents decoded, merged, encoded and hashed, and the key of every entry
// to write computed. Applying it is then only B-tree operations plus the
// read-modify-writes of aggregates and Merkle node sums, and a retry after
// MDB_MAP_FULL applies the same prepared batch again.
struct Prepared {
  std::vector<Pending> batch;
  Results results;                      // per write: its outcome if the batch commits
  std::vector<char> refused;            // per write: refused for clock drift
  std::optional<Error> failure;         // a batch-wide failure: nothing is applied
  std::map<std::string, Working> work;  // by docKey

  std::vector<std::pair<std::string, std::string>> docPuts;  // docKey order
  std::vector<std::pair<std::string, Hash>> leafPuts;        // sorted
  std::vector<std::string> listingDels;                      // sorted: positions left
  std::vector<std::string> listingPuts;                      // sorted: positions taken
  std::map<std::string, SummaryDelta> summaryDeltas;         // by aggregate key
  std::map<uint64_t, Hash> nodeDeltas;                       // by packNode(level, index)
  uint64_t highWater = 0;  // the clock's high-water mark after preparing
};

inline uint64_t packNode(int level, uint64_t index) { return (uint64_t(level) << 32) | index; }

// Runs posted jobs one at a time on its own thread, in order. Drains them
// before the destructor returns.
class Worker {
 public:
  Worker() : thread_([this] { loop(); }) {}
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  template <class F>
  auto post(F f) -> std::future<decltype(f())> {
    auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
    auto future = task->get_future();
    {
      std::lock_guard lock(mu_);
      jobs_.push_back([task] { (*task)(); });
    }
    cv_.notify_one();
    return future;
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;  // guarded by mu_
  bool stopping_ = false;                   // guarded by mu_
  std::thread thread_;                      // last
};

// ---- the store -------------------------------------------------------------

class StoreImpl final : public Store {
 public:
  StoreImpl(Options options, LockFile lock, Env env, Dbs dbs, crdt::ReplicaId replica,
            crdt::Hlc highWater);
  ~StoreImpl() override;

  crdt::ReplicaId replicaId() const override { return replica_; }

  // write-pipeline.cpp
  void mutate(crdt::ReviewKey key, Mutation mutation, Done done) override;
  void merge(crdt::ReviewDoc remote, Done done) override;

  // reads.cpp
  Result<std::optional<crdt::ReviewDoc>> get(const crdt::ReviewKey& key) override;
  Result<std::optional<std::string>> getEncoded(const crdt::ReviewKey& key) override;
  Result<Page> listProduct(const std::string& product, Order order, const std::string& cursor,
                           size_t limit) override;
  Result<ProductPage> productPage(const std::string& product, Order order,
                                  const std::string& cursor, size_t limit) override;
  Result<ProductSummary> summary(const std::string& product) override;
  Result<Page> listAuthor(const std::string& author, const std::string& cursor,
                          size_t limit) override;
  Result<Hash> merkleRoot() override;
  Result<std::vector<Hash>> merkleChildren(int level, uint64_t index) override;
  Result<std::vector<LeafEntry>> leafEntries(uint64_t leafIndex) override;
  StoreStats stats() override;

  // verify.cpp
  Status verify() override;

  // backup.cpp
  Result<BackupManifest> backup(const std::string& dir, const BackupOptions& options) override;

 private:
  // ---- write-pipeline.cpp ----
  void enqueue(Pending p);
  std::vector<Pending> takeBatch(bool wait);
  size_t pipelineThreshold() const;
  void run();
  std::unique_ptr<Prepared> prepare(std::vector<Pending> batch, const Prepared* base);
  static std::optional<Working> stateAfter(const Prepared& base, const std::string& dk);
  Result<Working> load(Txn& txn, const crdt::ReviewKey& key, const std::string& dk);
  static void derive(Prepared& p);
  Status commitPrepared(const Prepared& p, const std::function<void()>& beforeCommit);
  void acknowledge(Prepared& p, const Status& committed, std::chrono::nanoseconds took);
  Status growMap();
  Status apply(Txn& txn, const Prepared& p);

  // ---- reads.cpp ----
  Result<std::optional<crdt::ReviewDoc>> readDoc(Txn& txn, const crdt::ReviewKey& key);
  Result<ProductSummary> readSummary(Txn& txn, const std::string& aggregateKey);
  Result<Hash> readNode(Txn& txn, int level, uint64_t index);
  Result<Page> readProductPage(Txn& txn, const std::string& product, Order order,
                               const std::string& cursor, size_t limit);
  static Result<std::string> cursorStart(const std::string& cursor, char tag,
                                         const std::string& prefix);
  static Result<crdt::ReviewDoc> decodeListed(const crdt::ReviewKey& key, std::string_view value);

  Options options_;
  LockFile lock_;  // declared before env_: released after the env closes
  Env env_;
  Dbs dbs_;
  crdt::ReplicaId replica_;
  crdt::HybridClock clock_;  // used only by prepare(), one batch at a time
  ResizeGate gate_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;  // guarded by mu_
  bool stopping_ = false;      // guarded by mu_

  std::atomic<uint64_t> commits_{0};
  std::atomic<uint64_t> writes_{0};
  std::atomic<uint64_t> mapGrowths_{0};
  std::atomic<uint64_t> refused_{0};

  Worker preparer_;     // prepares the next batch while the store thread commits
  std::thread writer_;  // last: starts after everything it uses exists
};

}  // namespace chorus::storage::internal
