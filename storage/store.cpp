// Store on LMDB. Layout: storage/key-schema.h and storage/README.md.
//
// Threads: one writer thread (the store thread) owns every write
// transaction; a preparer thread runs the next batch's CPU work during the
// store thread's commits, and the HybridClock belongs to whichever of the two
// is preparing a batch; reads open their own read-only transactions on the
// calling thread (MDB_NOTLS). A ResizeGate keeps readers out while the
// writer grows the map, because mdb_env_set_mapsize remaps the file under
// every transaction of this process.
#include "storage/store.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "storage/internal/lmdb.h"
#include "storage/key-schema.h"
#include "storage/merkle.h"

namespace chorus::storage {

namespace {

using internal::Cursor;
using internal::Env;
using internal::lmdbError;
using internal::Txn;

// How often the writer clears reader slots left by dead processes.
constexpr uint64_t kReaderCheckEveryCommits = 1000;
// The map doubles on MDB_MAP_FULL up to this size; beyond it writes fail
// with kIo (the disk is the real limit long before).
constexpr uint64_t kMaxMapBytes = uint64_t{1} << 42;  // 4 TiB
constexpr unsigned kMaxReaders = 512;

constexpr const char* kDbDocuments = "documents";
constexpr const char* kDbProducts = "products";
constexpr const char* kDbMerkle = "merkle";
constexpr const char* kDbLeafEntries = "leaf-entries";
constexpr const char* kDbMeta = "meta";

struct Dbs {
  MDB_dbi documents = 0;
  MDB_dbi products = 0;     // aggregates
  MDB_dbi merkle = 0;       // inner nodes
  MDB_dbi leafEntries = 0;  // leaf sums and entries; also the by-author listing
  MDB_dbi meta = 0;
};

Error corruption(const std::string& what) {
  return makeError(ErrorCode::kCorruption,
                   what + ". Restore the data dir from a backup, or move it aside and let the "
                          "node resync from its peers");
}

// ---- one process per data dir ----------------------------------------------

// An exclusive flock on <dir>/chorus.lock, held while the store is open. The
// kernel drops it when the process dies, so a crash never leaves it stale.
class LockFile {
 public:
  LockFile() = default;
  LockFile(LockFile&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  LockFile& operator=(LockFile&&) = delete;
  LockFile(const LockFile&) = delete;
  ~LockFile() {
    if (fd_ >= 0) ::close(fd_);  // releases the lock
  }

  static Result<LockFile> acquire(const std::string& dir) {
    std::string path = dir + "/chorus.lock";
    LockFile lock;
    lock.fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock.fd_ < 0) {
      return makeError(ErrorCode::kIo,
                       "cannot open lock file " + path + ": " + std::strerror(errno));
    }
    (void)::fchmod(lock.fd_, 0600);  // it holds a pid only; best effort
    if (::flock(lock.fd_, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      if (err != EWOULDBLOCK) {
        return makeError(ErrorCode::kIo, "cannot lock " + path + ": " + std::strerror(err));
      }
      char buf[32] = {};
      ssize_t n = ::pread(lock.fd_, buf, sizeof buf - 1, 0);
      std::string holder = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
      while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
      return makeError(ErrorCode::kBusy,
                       "data dir " + dir + " is already open in another process" +
                           (holder.empty() ? "" : " (pid " + holder + ")") +
                           "; stop that process first, or give this node its own data dir");
    }
    // The pid is for the message above only; failing to write it is harmless.
    std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(lock.fd_, 0) == 0 &&
        ::pwrite(lock.fd_, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
      // ignored, see above
    }
    return lock;
  }

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
Status adoptMapSize(MDB_env* env, ResizeGate& gate) {
  gate.beginExclusive();
  int rc = mdb_env_set_mapsize(env, 0);
  gate.endExclusive();
  if (rc != 0) return lmdbError(rc, "adopting the map size another process set");
  return okStatus();
}

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

  Status begin(MDB_env* env) {
    for (int attempt = 0;; ++attempt) {
      gate_.enterShared();
      entered_ = true;
      int rc = txn_.begin(env, MDB_RDONLY);
      if (rc == 0) return okStatus();
      gate_.exitShared();
      entered_ = false;
      if (rc != MDB_MAP_RESIZED || attempt >= 3) {
        return lmdbError(rc, "starting a read transaction");
      }
      if (auto s = adoptMapSize(env, gate_); !s) return s;
    }
  }
  Txn& txn() { return txn_; }

 private:
  ResizeGate& gate_;
  bool entered_ = false;
  Txn txn_;
};

// ---- derived facts of a document -------------------------------------------

// What the aggregates depend on.
struct Facts {
  bool live = false;
  uint8_t rating = 0;
  crdt::Hlc hlc;  // of the content: orders "newest"
  uint64_t helpful = 0;
};

Facts factsOf(const crdt::ReviewDoc& doc) {
  Facts f;
  f.live = doc.exists();
  if (f.live) {
    f.rating = doc.content().value().rating;
    f.hlc = doc.content().stamp().hlc;
    f.helpful = doc.helpfulCount();
  }
  return f;
}

// count, histogram[5], ratingSum, helpfulTotal: the aggregate fields as a
// signed delta.
using SummaryDelta = std::array<int64_t, 8>;

void addFacts(SummaryDelta& d, const Facts& f, int64_t sign) {
  if (!f.live) return;
  d[0] += sign;
  d[static_cast<size_t>(f.rating)] += sign;  // histogram[rating-1] sits at 1 + rating - 1
  d[6] += sign * f.rating;
  d[7] += sign * static_cast<int64_t>(f.helpful);
}

void addFacts(ProductSummary& s, const Facts& f) {
  if (!f.live) return;
  ++s.count;
  ++s.histogram[f.rating - 1u];
  s.ratingSum += f.rating;
  s.helpfulTotal += f.helpful;
}

bool sameSummary(const ProductSummary& a, const ProductSummary& b) {
  return a.count == b.count && a.histogram == b.histogram && a.ratingSum == b.ratingSum &&
         a.helpfulTotal == b.helpfulTotal;
}

Result<crdt::ReviewDoc> decodeStored(std::string_view canonical, const crdt::ReviewKey& key) {
  auto doc = crdt::ReviewDoc::decode(canonical);
  if (!doc) {
    return corruption("stored review (" + schema::describeKey(key) +
                      ") passes its checksum but does not decode: " + doc.error().message);
  }
  if (doc->key() != key) {
    return corruption("stored review under (" + schema::describeKey(key) + ") holds the review of (" +
                      schema::describeKey(doc->key()) + ")");
  }
  return doc;
}

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
  std::map<std::string, SummaryDelta> summaryDeltas;         // by aggregate key
  std::map<uint64_t, Hash> nodeDeltas;                       // by packNode(level, index)
  uint64_t highWater = 0;  // the clock's high-water mark after preparing
};

uint64_t packNode(int level, uint64_t index) { return (uint64_t(level) << 32) | index; }

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

class StoreImpl final : public Store {
 public:
  StoreImpl(Options options, LockFile lock, Env env, Dbs dbs, crdt::ReplicaId replica,
            crdt::Hlc highWater)
      : options_(std::move(options)),
        lock_(std::move(lock)),
        env_(std::move(env)),
        dbs_(dbs),
        replica_(replica),
        clock_(replica, options_.clock, highWater, options_.maxDriftMillis) {
    writer_ = std::thread([this] { run(); });
  }

  ~StoreImpl() override {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    writer_.join();
  }

  crdt::ReplicaId replicaId() const override { return replica_; }

  void mutate(crdt::ReviewKey key, Mutation mutation, Done done) override {
    CHORUS_ASSERT(static_cast<bool>(mutation), "mutate() needs a mutation");
    enqueue(Pending{std::move(key), std::move(mutation), std::nullopt, std::move(done)});
  }

  void merge(crdt::ReviewDoc remote, Done done) override {
    crdt::ReviewKey key = remote.key();
    enqueue(Pending{std::move(key), {}, std::move(remote), std::move(done)});
  }

  Result<std::optional<crdt::ReviewDoc>> get(const crdt::ReviewKey& key) override {
    if (auto s = schema::validateKey(key); !s) return s.error();
    ReadTxn rt(gate_);
    if (auto s = rt.begin(env_.get()); !s) return s.error();
    return readDoc(rt.txn(), key);
  }

  Result<std::optional<std::string>> getEncoded(const crdt::ReviewKey& key) override {
    if (auto s = schema::validateKey(key); !s) return s.error();
    ReadTxn rt(gate_);
    if (auto s = rt.begin(env_.get()); !s) return s.error();
    std::string_view value;
    auto found = rt.txn().get(dbs_.documents, schema::docKey(key), &value);
    if (!found) return found.error();
    if (!*found) return std::optional<std::string>();
    auto rec = schema::parseDocRecord(value, key);
    if (!rec) return rec.error();
    return std::optional<std::string>(std::string(rec->canonical));
  }

  // One cursor range of `documents` (the product's reviews, tombstones
  // included): reads every listing header in it, orders the live ones in
  // memory and decodes only the page returned. O(n log limit) for a product
  // of n reviews, on every page.
  Result<Page> listProduct(const std::string& product, Order order, const std::string& cursor,
                           size_t limit) override {
    if (auto s = schema::validateKey({product, "-"}); !s) return s.error();
    if (limit == 0) return makeError(ErrorCode::kInvalidArgument, "listing limit must be >= 1");
    bool byRating = order != Order::kNewest;
    bool descending = order == Order::kHighestRating;
    char tag = !byRating ? 'n' : descending ? 'h' : 'l';
    std::string sortPrefix =
        schema::productRangePrefix(product, byRating ? schema::kListRating : schema::kListNewest);
    auto start = cursorStart(cursor, tag, sortPrefix);
    if (!start) return start.error();

    ReadTxn rt(gate_);
    if (auto s = rt.begin(env_.get()); !s) return s.error();
    auto cur = Cursor::open(rt.txn(), dbs_.documents);
    if (!cur) return cur.error();
    struct Candidate {
      std::string sortKey;
      std::string_view author;  // both views point into the map: valid during rt
      std::string_view value;
    };
    std::vector<Candidate> candidates;
    std::string prefix = schema::idPrefix(product);
    std::string_view k, v;
    for (auto at = cur->seekAtLeast(prefix, &k, &v);; at = cur->seek(MDB_NEXT, &k, &v)) {
      if (!at) return at.error();
      if (!*at || !k.starts_with(prefix)) break;
      crdt::ReviewKey key{product, std::string(k.substr(prefix.size()))};
      auto header = schema::peekListingHeader(v);
      if (key.author.empty() || !header) {
        return corruption("stored review (" + schema::describeKey(key) +
                          ") has a malformed key or listing header");
      }
      if (!header->live) continue;
      std::string sortKey = byRating ? schema::ratingSortKey(key, header->rating, header->hlc)
                                     : schema::newestSortKey(key, header->hlc);
      if (!start->empty() && (descending ? sortKey > *start : sortKey < *start)) continue;
      candidates.push_back(Candidate{std::move(sortKey), k.substr(prefix.size()), v});
    }
    size_t wanted = std::min(candidates.size(), limit + 1);
    auto before = [descending](const Candidate& a, const Candidate& b) {
      return descending ? a.sortKey > b.sortKey : a.sortKey < b.sortKey;
    };
    std::partial_sort(candidates.begin(), candidates.begin() + static_cast<ptrdiff_t>(wanted),
                      candidates.end(), before);
    Page page;
    for (size_t i = 0; i < wanted; ++i) {
      if (i == limit) {
        page.nextCursor = schema::toHex(std::string(1, tag) + candidates[i].sortKey);
        break;
      }
      auto doc = decodeListed({product, std::string(candidates[i].author)}, candidates[i].value);
      if (!doc) return doc.error();
      page.reviews.push_back(std::move(doc).value());
    }
    return page;
  }

  Result<ProductSummary> summary(const std::string& product) override {
    if (auto s = schema::validateKey({product, "-"}); !s) return s.error();
    ReadTxn rt(gate_);
    if (auto s = rt.begin(env_.get()); !s) return s.error();
    return readSummary(rt.txn(), schema::aggregateKey(product));
  }

  // The author's range of Merkle leaf entries (merkle.h: the key hash
  // starts with a hash of the author), which names every review of the
  // author and of authors sharing that 32-bit hash: filtered, ordered by
  // product in memory, then each looked up in `documents` until a page of
  // live ones is found. O(n log n) for an author of n reviews, on every page.
  Result<Page> listAuthor(const std::string& author, const std::string& cursor,
                          size_t limit) override {
    if (auto s = schema::validateKey({"-", author}); !s) return s.error();
    if (limit == 0) return makeError(ErrorCode::kInvalidArgument, "listing limit must be >= 1");
    std::string cursorPrefix = schema::idPrefix(author);
    auto start = cursorStart(cursor, 'a', cursorPrefix);
    if (!start) return start.error();
    std::string_view startProduct;
    if (!start->empty()) startProduct = std::string_view(*start).substr(cursorPrefix.size());

    ReadTxn rt(gate_);
    if (auto s = rt.begin(env_.get()); !s) return s.error();
    auto cur = Cursor::open(rt.txn(), dbs_.leafEntries);
    if (!cur) return cur.error();
    std::vector<std::pair<std::string, std::string_view>> products;  // product, docKey
    std::string prefix = schema::authorLeafPrefix(author);
    std::string_view k;
    for (auto at = cur->seekAtLeast(prefix, &k, nullptr);; at = cur->seek(MDB_NEXT, &k, nullptr)) {
      if (!at) return at.error();
      if (!*at || !k.starts_with(prefix)) break;
      auto key = k.size() > 8 ? schema::parseDocKey(k.substr(8)) : std::nullopt;
      if (!key) return corruption("malformed Merkle leaf entry");
      if (key->author != author || key->product < startProduct) continue;
      products.emplace_back(std::move(key->product), k.substr(8));
    }
    std::sort(products.begin(), products.end());
    Page page;
    for (const auto& [product, docKey] : products) {
      std::string_view value;
      auto found = rt.txn().get(dbs_.documents, docKey, &value);
      if (!found) return found.error();
      crdt::ReviewKey key{product, author};
      auto header = *found ? schema::peekListingHeader(value) : std::nullopt;
      if (!header) {
        return corruption("a Merkle leaf entry names (" + schema::describeKey(key) +
                          ") but no such review is stored, or its listing header is malformed");
      }
      if (!header->live) continue;
      if (page.reviews.size() == limit) {
        page.nextCursor = schema::toHex("a" + cursorPrefix + product);
        break;
      }
      auto doc = decodeListed(key, value);
      if (!doc) return doc.error();
      page.reviews.push_back(std::move(doc).value());
    }
    return page;
  }

  Result<Hash> merkleRoot() override {
    ReadTxn rt(gate_);
    if (auto s = rt.begin(env_.get()); !s) return s.error();
    return readNode(rt.txn(), 0, 0);
  }

  Result<std::vector<Hash>> merkleChildren(int level, uint64_t index) override {
    if (level < 0 || level >= kDepth || index >= (uint64_t{1} << (4 * level))) {
      return makeError(ErrorCode::kInvalidArgument,
                       "no inner Merkle node (level " + std::to_string(level) + ", index " +
                           std::to_string(index) + "); levels are 0-" +
                           std::to_string(kDepth - 1) + " with 16^level nodes each");
    }
    ReadTxn rt(gate_);
    if (auto s = rt.begin(env_.get()); !s) return s.error();
    std::vector<Hash> children(kFanout, Hash{});
    if (level + 1 == kDepth) {  // leaf sums, each at the head of its leaf's range
      for (int i = 0; i < kFanout; ++i) {
        auto h = readNode(rt.txn(), kDepth, index * kFanout + static_cast<uint64_t>(i));
        if (!h) return h.error();
        children[static_cast<size_t>(i)] = *h;
      }
      return children;
    }
    auto cursor = Cursor::open(rt.txn(), dbs_.merkle);
    if (!cursor) return cursor.error();
    std::string first = schema::merkleNodeKey(level + 1, index * kFanout);
    std::string_view k, v;
    auto at = cursor->seekAtLeast(first, &k, &v);
    while (true) {
      if (!at) return at.error();
      if (!*at || k.size() != first.size() || k[0] != first[0]) break;
      uint64_t child = schema::getBe64(std::string(4, '\0') + std::string(k.substr(1)));
      if (child >= (index + 1) * kFanout) break;
      if (v.size() != 16) return corruption("Merkle node value of wrong size");
      std::copy(v.begin(), v.end(),
                reinterpret_cast<char*>(children[child - index * kFanout].data()));
      at = cursor->seek(MDB_NEXT, &k, &v);
    }
    return children;
  }

  Result<std::vector<LeafEntry>> leafEntries(uint64_t leafIndex) override {
    if (leafIndex >= kMerkleLeaves) {
      return makeError(ErrorCode::kInvalidArgument,
                       "leaf index " + std::to_string(leafIndex) + " out of range (0-" +
                           std::to_string(kMerkleLeaves - 1) + ")");
    }
    ReadTxn rt(gate_);
    if (auto s = rt.begin(env_.get()); !s) return s.error();
    auto cursor = Cursor::open(rt.txn(), dbs_.leafEntries);
    if (!cursor) return cursor.error();
    std::string prefix = schema::leafPrefix(static_cast<uint32_t>(leafIndex));
    std::vector<LeafEntry> out;
    std::string_view k, v;
    auto at = cursor->seekAtLeast(prefix, &k, &v);
    while (true) {
      if (!at) return at.error();
      if (!*at || !k.starts_with(prefix)) break;
      if (k.size() == schema::kLeafSumKeyBytes) {  // the leaf's sum
        at = cursor->seek(MDB_NEXT, &k, &v);
        continue;
      }
      auto key = k.size() > 8 ? schema::parseDocKey(k.substr(8)) : std::nullopt;
      if (!key || v.size() != 16) return corruption("malformed Merkle leaf entry");
      LeafEntry e{schema::getBe64(k), Hash{}, std::move(*key)};
      std::copy(v.begin(), v.end(), reinterpret_cast<char*>(e.digest.data()));
      out.push_back(std::move(e));
      at = cursor->seek(MDB_NEXT, &k, &v);
    }
    return out;
  }

  Status verify() override;

  StoreStats stats() override {
    StoreStats s;
    s.commits = commits_.load();
    s.writes = writes_.load();
    s.mapGrowths = mapGrowths_.load();
    s.refusedStamps = refused_.load();
    ReadTxn rt(gate_);
    if (rt.begin(env_.get())) {
      MDB_stat st;
      if (mdb_stat(rt.txn().get(), dbs_.documents, &st) == 0) s.documents = st.ms_entries;
      MDB_envinfo info;
      MDB_stat envStat;
      if (mdb_env_info(env_.get(), &info) == 0 && mdb_env_stat(env_.get(), &envStat) == 0) {
        s.mapBytes = info.me_mapsize;
        s.usedBytes = (info.me_last_pgno + 1) * uint64_t{envStat.ms_psize};
      }
    }
    return s;
  }

 private:
  void enqueue(Pending p) {
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(p));
    }
    cv_.notify_one();
  }

  // Up to maxBatch queued writes; with `wait`, blocks until there is one or
  // the store is stopping (then returns none).
  std::vector<Pending> takeBatch(bool wait) {
    std::unique_lock lock(mu_);
    if (wait) cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    size_t n = std::min(queue_.size(), options_.maxBatch);
    std::vector<Pending> batch(std::make_move_iterator(queue_.begin()),
                               std::make_move_iterator(queue_.begin() + static_cast<ptrdiff_t>(n)));
    queue_.erase(queue_.begin(), queue_.begin() + static_cast<ptrdiff_t>(n));
    return batch;
  }

  // Queued writes that make it worth preparing the next batch during a
  // commit instead of after it.
  size_t pipelineThreshold() const { return std::max<size_t>(1, options_.maxBatch / 4); }

  // The store thread. Each round applies a prepared batch in one write
  // transaction and, just before committing it, hands the next queued writes
  // (when enough are queued) to the preparer thread, so that their CPU work runs while this thread
  // waits for the commit's fsync. The next batch is prepared on top of the
  // documents this batch writes; if this batch fails to commit, it is
  // prepared again from the store (its mutations run again, as Mutation
  // allows). Drains the queue before exiting.
  void run() {
    std::unique_ptr<Prepared> current;
    for (;;) {
      if (!current) {
        std::vector<Pending> batch = takeBatch(true);
        if (batch.empty()) return;  // stopping, and nothing left
        current = prepare(std::move(batch), nullptr);
      }
      std::future<std::unique_ptr<Prepared>> next;
      auto startNext = [&] {
        if (next.valid()) return;  // a retried transaction starts it once
        {
          // Under light load, writes arriving during the commit are better
          // off joining the next batch than waiting one more commit.
          std::lock_guard lock(mu_);
          if (queue_.size() < pipelineThreshold()) return;
        }
        std::vector<Pending> batch = takeBatch(false);
        if (batch.empty()) return;
        next = preparer_.post([this, b = std::move(batch), base = current.get()]() mutable {
          return prepare(std::move(b), base);
        });
      };
      Status committed =
          current->failure ? Status(*current->failure) : commitPrepared(*current, startNext);
      acknowledge(*current, committed);
      std::unique_ptr<Prepared> following;
      if (next.valid()) {
        following = next.get();
        if (!committed) following = prepare(std::move(following->batch), nullptr);
      }
      current = std::move(following);
    }
  }

  // Reads the state before the batch (from `base`, the batch committing
  // meanwhile, else from the store), runs the writes on it and derives
  // everything apply() will write. Runs on the preparer thread while the
  // store thread commits `base`, or on the store thread when nothing else
  // runs: it is the only user of clock_ while it runs.
  std::unique_ptr<Prepared> prepare(std::vector<Pending> batch, const Prepared* base) {
    auto p = std::make_unique<Prepared>();
    p->batch = std::move(batch);
    p->results.assign(p->batch.size(), std::nullopt);
    p->refused.assign(p->batch.size(), 0);
    ReadTxn rt(gate_);
    bool reading = false;
    for (size_t i = 0; i < p->batch.size(); ++i) {
      const Pending& w = p->batch[i];
      if (auto s = schema::validateKey(w.key); !s) {
        p->results[i] = s.error();
        continue;
      }
      if (w.remote) {
        if (auto s = clock_.observe(w.remote->maxHlc()); !s) {
          p->refused[i] = 1;
          p->results[i] = s.error();
          continue;
        }
      }
      std::string dk = schema::docKey(w.key);
      auto it = p->work.find(dk);
      if (it == p->work.end()) {
        std::optional<Working> fromBase = base ? stateAfter(*base, dk) : std::nullopt;
        if (fromBase) {
          it = p->work.emplace(std::move(dk), std::move(*fromBase)).first;
        } else {
          if (!reading) {
            if (auto s = rt.begin(env_.get()); !s) {
              p->failure = s.error();
              return p;
            }
            reading = true;
          }
          auto loaded = load(rt.txn(), w.key, dk);
          if (!loaded) {
            // A damaged document fails the writes to it, not the batch.
            if (loaded.error().code != ErrorCode::kCorruption) {
              p->failure = loaded.error();
              return p;
            }
            p->results[i] = loaded.error();
            continue;
          }
          it = p->work.emplace(std::move(dk), std::move(loaded).value()).first;
        }
      }
      Working& doc = it->second;
      crdt::ReviewDoc next = doc.doc;
      crdt::ReviewDoc delta;
      if (w.mutation) {
        Result<crdt::ReviewDoc> r = w.mutation(next, clock_);
        if (!r) {
          p->results[i] = r.error();
          continue;
        }
        CHORUS_ASSERT(next.key() == w.key, "a Mutation changed the document's key");
        delta = std::move(r).value();
      } else {
        next.join(*w.remote);
        delta = *w.remote;
      }
      bool changed = !(next == doc.doc);
      if (changed && !w.mutation && options_.admitMerge) {
        if (Status admitted = options_.admitMerge(next); !admitted.ok()) {
          p->results[i] = admitted.error();
          continue;
        }
      }
      if (changed) {
        doc.doc = next;
        doc.dirty = true;
      }
      p->results[i] = Applied{std::move(delta), std::move(next), changed};
    }
    p->highWater = clock_.highWater().bits;
    derive(*p);
    return p;
  }

  // The stored state of `dk` once `base` commits, if `base` read or wrote it.
  static std::optional<Working> stateAfter(const Prepared& base, const std::string& dk) {
    auto it = base.work.find(dk);
    if (it == base.work.end()) return std::nullopt;
    const Working& b = it->second;
    Working w;
    w.key = b.key;
    w.keyHash = b.keyHash;
    w.doc = b.doc;
    if (b.written) {
      w.existed = true;
      w.oldDigest = b.newDigest;
      w.oldFacts = factsOf(b.doc);
    } else {  // unchanged, or changed back to identical bytes
      w.existed = b.existed;
      w.oldDigest = b.oldDigest;
      w.oldFacts = b.oldFacts;
    }
    return w;
  }

  Result<Working> load(Txn& txn, const crdt::ReviewKey& key, const std::string& dk) {
    Working w;
    w.key = key;
    w.keyHash = keyHashOfDocKey(dk);
    std::string_view value;
    auto found = txn.get(dbs_.documents, dk, &value);
    if (!found) return found.error();
    if (!*found) {
      w.doc = crdt::ReviewDoc(key);
      return w;
    }
    auto rec = schema::parseDocRecord(value, key);
    if (!rec) return rec.error();
    auto doc = decodeStored(rec->canonical, key);
    if (!doc) return doc.error();
    w.existed = true;
    w.oldDigest = rec->digest;
    w.oldFacts = factsOf(*doc);
    w.doc = std::move(doc).value();
    return w;
  }

  // Encodes the changed documents and computes what changes in every
  // derived database: Merkle leaf entries and node sums, aggregates.
  static void derive(Prepared& p) {
    for (auto& [dk, w] : p.work) {
      if (!w.dirty) continue;
      std::string canonical = w.doc.encode();
      Hash digest = digestOf(canonical);
      if (w.existed && digest == w.oldDigest) continue;
      w.written = true;
      w.newDigest = digest;
      p.docPuts.emplace_back(dk, schema::encodeDocRecord(digest, schema::listingHeaderOf(w.doc),
                                                         canonical));
      p.leafPuts.emplace_back(schema::leafEntryKey(w.keyHash, dk), digest);
      Hash d = entryHash(w.keyHash, digest);
      if (w.existed) d = hashSub(d, entryHash(w.keyHash, w.oldDigest));
      uint64_t leaf = leafIndexOf(w.keyHash);
      for (int level = 0; level <= kDepth; ++level) {
        Hash& acc = p.nodeDeltas[packNode(level, nodeAbove(leaf, level))];
        acc = hashAdd(acc, d);
      }

      Facts nf = factsOf(w.doc);
      const Facts& of = w.oldFacts;
      if (of.live || nf.live) {
        SummaryDelta& sd = p.summaryDeltas[schema::aggregateKey(w.key.product)];
        addFacts(sd, of, -1);
        addFacts(sd, nf, +1);
      }
    }
    std::sort(p.leafPuts.begin(), p.leafPuts.end());
  }

  // Applies and commits a prepared batch, growing the map and starting over
  // on MDB_MAP_FULL, so it is either fully committed or not at all. Calls
  // beforeCommit() after each successful apply, just before committing.
  template <class F>
  Status commitPrepared(const Prepared& p, F beforeCommit) {
    for (;;) {
      gate_.enterShared();
      Txn txn;
      int rc = txn.begin(env_.get(), 0);
      Status st = rc == 0 ? apply(txn, p) : Status(lmdbError(rc, "starting a write transaction"));
      if (st) {
        beforeCommit();
        st = txn.commit();
      }
      txn.abort();
      gate_.exitShared();
      if (st) return st;
      if (rc == MDB_MAP_RESIZED) {
        if (auto s = adoptMapSize(env_.get(), gate_); !s) return s;
        continue;
      }
      if (!txn.mapFull()) return st;
      if (auto s = growMap(); !s) return s;
    }
  }

  // Gives every write of the batch its result and runs the callbacks.
  void acknowledge(Prepared& p, const Status& committed) {
    uint64_t acknowledged = 0;
    for (size_t i = 0; i < p.batch.size(); ++i) {
      std::optional<Result<Applied>>& r = p.results[i];
      if (!committed && (!r || r->ok())) r = committed.error();  // nothing was written
      CHORUS_ASSERT(r.has_value(), "a write of the batch got no result");
      if (r->ok()) ++acknowledged;
      if (p.refused[i]) refused_.fetch_add(1);
    }
    if (committed) {
      uint64_t commits = commits_.fetch_add(1) + 1;
      if (commits % kReaderCheckEveryCommits == 0) {
        int dead = 0;
        mdb_reader_check(env_.get(), &dead);  // best effort; open() checked too
      }
    }
    writes_.fetch_add(acknowledged);
    for (size_t i = 0; i < p.batch.size(); ++i) {
      if (p.batch[i].done) p.batch[i].done(std::move(*p.results[i]));
    }
  }

  Status growMap() {
    MDB_envinfo info;
    if (int rc = mdb_env_info(env_.get(), &info); rc != 0) return lmdbError(rc, "reading map size");
    uint64_t size = info.me_mapsize;
    if (size >= kMaxMapBytes) {
      return makeError(ErrorCode::kIo, "the LMDB map reached its " + std::to_string(size >> 30) +
                                           " GiB limit; the store cannot grow further");
    }
    gate_.beginExclusive();
    int rc = mdb_env_set_mapsize(env_.get(), static_cast<size_t>(std::min(size * 2, kMaxMapBytes)));
    gate_.endExclusive();
    if (rc != 0) return lmdbError(rc, "growing the LMDB map");
    mapGrowths_.fetch_add(1);
    return okStatus();
  }

  // Writes a prepared batch: documents and Merkle leaf entries in key order
  // through cursors, then the read-modify-writes of aggregates and Merkle
  // node sums, and the HLC high-water mark. Touches no clock and no
  // document state, so it may run again after the map grows.
  Status apply(Txn& txn, const Prepared& p) {
    auto putAll = [&](MDB_dbi dbi, const auto& puts, auto valueOf) -> Status {
      if (puts.empty()) return okStatus();
      auto cursor = Cursor::open(txn, dbi);
      if (!cursor) return cursor.error();
      for (const auto& put : puts) {
        auto [key, value] = valueOf(put);
        if (auto s = cursor->put(key, value); !s) return s;
      }
      return okStatus();
    };
    auto pair = [](const std::pair<std::string, std::string>& kv) {
      return std::pair<std::string_view, std::string_view>(kv.first, kv.second);
    };
    auto hash = [](const std::pair<std::string, Hash>& kv) {
      return std::pair<std::string_view, std::string_view>(
          kv.first, std::string_view(reinterpret_cast<const char*>(kv.second.data()), 16));
    };
    if (auto s = putAll(dbs_.documents, p.docPuts, pair); !s) return s;
    if (auto s = putAll(dbs_.leafEntries, p.leafPuts, hash); !s) return s;

    // Read-modify-writes in key order, each through one cursor: a point
    // read positions the cursor, so the write needs no second descent.
    auto update = [&](Cursor& cursor, const std::string& key, auto modify) -> Status {
      std::string_view value;
      auto found = cursor.seekExact(key, &value);
      if (!found) return found.error();
      std::optional<std::string_view> current;
      if (*found) current = value;
      Result<std::optional<std::string>> next = modify(current);
      if (!next) return next.error();
      if (!*next) return *found ? cursor.delCurrent() : okStatus();
      return *found ? cursor.putCurrent(key, **next) : cursor.put(key, **next);
    };

    if (!p.summaryDeltas.empty()) {
      auto cursor = Cursor::open(txn, dbs_.products);
      if (!cursor) return cursor.error();
      for (const auto& [productKey, sd] : p.summaryDeltas) {
        if (std::all_of(sd.begin(), sd.end(), [](int64_t x) { return x == 0; })) continue;
        Status s = update(
            *cursor, productKey,
            [&](std::optional<std::string_view> stored) -> Result<std::optional<std::string>> {
              ProductSummary current;
              if (stored) {
                auto decoded = schema::decodeSummary(*stored);
                if (!decoded) return corruption("product aggregate record has the wrong size");
                current = *decoded;
              }
              std::array<uint64_t*, 8> fields = {&current.count,        &current.histogram[0],
                                                 &current.histogram[1], &current.histogram[2],
                                                 &current.histogram[3], &current.histogram[4],
                                                 &current.ratingSum,    &current.helpfulTotal};
              for (size_t f = 0; f < fields.size(); ++f) {
                if (sd[f] < 0 && *fields[f] < static_cast<uint64_t>(-sd[f])) {
                  return corruption(
                      "product aggregate would go negative: the stored aggregates no "
                      "longer match the documents");
                }
                *fields[f] += static_cast<uint64_t>(sd[f]);
              }
              if (current.count == 0 && current.helpfulTotal == 0 && current.ratingSum == 0) {
                return std::optional<std::string>();
              }
              return std::optional<std::string>(schema::encodeSummary(current));
            });
        if (!s) return s;
      }
    }

    // Node sums: inner nodes in `merkle`, leaf sums in `leaf-entries`; the
    // deltas are ordered by (level, index), which is also key order.
    std::optional<Cursor> inner, leaves;
    for (const auto& [packed, delta] : p.nodeDeltas) {
      if (isZero(delta)) continue;
      int level = static_cast<int>(packed >> 32);
      uint64_t index = packed & 0xffffffffu;
      std::optional<Cursor>& cursor = level == kDepth ? leaves : inner;
      if (!cursor) {
        auto opened = Cursor::open(txn, level == kDepth ? dbs_.leafEntries : dbs_.merkle);
        if (!opened) return opened.error();
        cursor = std::move(opened).value();
      }
      std::string key = level == kDepth ? schema::leafPrefix(static_cast<uint32_t>(index))
                                        : schema::merkleNodeKey(level, index);
      Status s = update(
          *cursor, key,
          [&](std::optional<std::string_view> stored) -> Result<std::optional<std::string>> {
            Hash current{};
            if (stored) {
              if (stored->size() != current.size())
                return corruption("Merkle node value of wrong size");
              std::copy(stored->begin(), stored->end(), reinterpret_cast<char*>(current.data()));
            }
            Hash next = hashAdd(current, delta);
            if (isZero(next)) return std::optional<std::string>();
            return std::optional<std::string>(
                std::string(reinterpret_cast<const char*>(next.data()), next.size()));
          });
      if (!s) return s;
    }

    std::string hw;
    schema::putLe64(hw, p.highWater);
    return txn.put(dbs_.meta, schema::kMetaHlcHighWater, hw);
  }

  Result<std::optional<crdt::ReviewDoc>> readDoc(Txn& txn, const crdt::ReviewKey& key) {
    std::string_view value;
    auto found = txn.get(dbs_.documents, schema::docKey(key), &value);
    if (!found) return found.error();
    if (!*found) return std::optional<crdt::ReviewDoc>();
    auto rec = schema::parseDocRecord(value, key);
    if (!rec) return rec.error();
    auto doc = decodeStored(rec->canonical, key);
    if (!doc) return doc.error();
    return std::optional<crdt::ReviewDoc>(std::move(doc).value());
  }

  Result<ProductSummary> readSummary(Txn& txn, const std::string& aggregateKey) {
    std::string_view value;
    auto found = txn.get(dbs_.products, aggregateKey, &value);
    if (!found) return found.error();
    if (!*found) return ProductSummary{};
    auto s = schema::decodeSummary(value);
    if (!s) return corruption("product aggregate record has the wrong size");
    return *s;
  }

  // A node sum: inner nodes in `merkle`, leaf sums in `leaf-entries`.
  Result<Hash> readNode(Txn& txn, int level, uint64_t index) {
    std::string_view value;
    auto found = level == kDepth
                     ? txn.get(dbs_.leafEntries, schema::leafPrefix(static_cast<uint32_t>(index)), &value)
                     : txn.get(dbs_.merkle, schema::merkleNodeKey(level, index), &value);
    if (!found) return found.error();
    Hash h{};
    if (!*found) return h;
    if (value.size() != h.size()) return corruption("Merkle node value of wrong size");
    std::copy(value.begin(), value.end(), reinterpret_cast<char*>(h.data()));
    return h;
  }

  // Where a listing resumes: the position in `cursor` ("" = from the
  // start). A cursor is hex of tag || position, and every position of a
  // listing starts with `prefix`, so a cursor of another listing is refused.
  static Result<std::string> cursorStart(const std::string& cursor, char tag,
                                         const std::string& prefix) {
    if (cursor.empty()) return std::string();
    auto raw = schema::fromHex(cursor);
    if (!raw || raw->size() <= 1 + prefix.size() || (*raw)[0] != tag ||
        raw->compare(1, prefix.size(), prefix) != 0) {
      return makeError(ErrorCode::kInvalidArgument,
                       "listing cursor was not returned by this listing (another product, "
                       "author or order, or altered); start again with an empty cursor");
    }
    return raw->substr(1);
  }

  // Decodes a review a listing returns, checking its listing header against
  // the state (the checksum does not cover the header).
  static Result<crdt::ReviewDoc> decodeListed(const crdt::ReviewKey& key, std::string_view value) {
    auto rec = schema::parseDocRecord(value, key);
    if (!rec) return rec.error();
    auto doc = decodeStored(rec->canonical, key);
    if (!doc) return doc.error();
    if (schema::listingHeaderOf(*doc) != rec->header) {
      return corruption("the listing header of stored review (" + schema::describeKey(key) +
                        ") does not match its state");
    }
    return doc;
  }

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

Status StoreImpl::verify() {
  ReadTxn rt(gate_);
  if (auto s = rt.begin(env_.get()); !s) return s;
  Txn& txn = rt.txn();
  auto mismatch = [](const std::string& what) {
    return corruption("verify: " + what + "; derived data no longer matches the documents");
  };
  auto nodeBytes = [](const Hash& h) {
    return std::string_view(reinterpret_cast<const char*>(h.data()), h.size());
  };

  // 1. Recompute from the documents; check that each one's entries exist.
  std::vector<std::vector<Hash>> nodes(kDepth + 1);
  for (int level = 0; level <= kDepth; ++level) {
    nodes[static_cast<size_t>(level)].assign(uint64_t{1} << (4 * level), Hash{});
  }
  std::map<std::string, ProductSummary> sums;  // by aggregate key
  uint64_t docCount = 0;
  crdt::Hlc maxHlc;

  auto docs = Cursor::open(txn, dbs_.documents);
  if (!docs) return docs.error();
  std::string_view k, v;
  for (auto at = docs->seek(MDB_FIRST, &k, &v);; at = docs->seek(MDB_NEXT, &k, &v)) {
    if (!at) return at.error();
    if (!*at) break;
    auto key = schema::parseDocKey(k);
    if (!key || schema::docKey(*key) != k) {
      return mismatch("malformed document key " + schema::toHex(k));
    }
    auto rec = schema::parseDocRecord(v, *key);
    if (!rec) return rec.error();
    auto doc = decodeStored(rec->canonical, *key);
    if (!doc) return doc.error();
    if (schema::listingHeaderOf(*doc) != rec->header) {
      return mismatch("the listing header of (" + schema::describeKey(*key) +
                      ") differs from its state");
    }
    ++docCount;
    maxHlc = std::max(maxHlc, doc->maxHlc());

    uint64_t kh = keyHashOfDocKey(k);
    std::string_view leafDigest;
    auto found = txn.get(dbs_.leafEntries, schema::leafEntryKey(kh, k), &leafDigest);
    if (!found) return found.error();
    if (!*found || leafDigest != nodeBytes(rec->digest)) {
      return mismatch("Merkle leaf entry of (" + schema::describeKey(*key) + ") is missing or stale");
    }
    Hash e = entryHash(kh, rec->digest);
    uint64_t leaf = leafIndexOf(kh);
    for (int level = 0; level <= kDepth; ++level) {
      Hash& n = nodes[static_cast<size_t>(level)][nodeAbove(leaf, level)];
      n = hashAdd(n, e);
    }

    Facts f = factsOf(*doc);
    if (f.live) addFacts(sums[schema::aggregateKey(key->product)], f);
  }
  docs->close();

  // 2. Walk the derived databases: sums and aggregates must equal the
  // recomputed ones, and entry counts must match (every expected entry was
  // found above, so equal counts mean there are no extras).
  uint64_t leafEntryCount = 0;
  uint64_t storedNodes = 0;
  auto leaves = Cursor::open(txn, dbs_.leafEntries);
  if (!leaves) return leaves.error();
  for (auto at = leaves->seek(MDB_FIRST, &k, &v);; at = leaves->seek(MDB_NEXT, &k, &v)) {
    if (!at) return at.error();
    if (!*at) break;
    if (k.size() != schema::kLeafSumKeyBytes) {
      ++leafEntryCount;
      continue;
    }
    uint64_t leaf = (uint64_t(uint8_t(k[0])) << 8) | uint8_t(k[1]);
    if (v != nodeBytes(nodes[kDepth][leaf])) {
      return mismatch("Merkle leaf " + std::to_string(leaf) + " sum differs from its recomputed value");
    }
    ++storedNodes;
  }
  if (leafEntryCount != docCount) {
    return mismatch("leaf-entries holds " + std::to_string(leafEntryCount) +
                    " Merkle leaf entries for " + std::to_string(docCount) + " documents");
  }

  auto merkle = Cursor::open(txn, dbs_.merkle);
  if (!merkle) return merkle.error();
  for (auto at = merkle->seek(MDB_FIRST, &k, &v);; at = merkle->seek(MDB_NEXT, &k, &v)) {
    if (!at) return at.error();
    if (!*at) break;
    if (k.size() != 5 || v.size() != 16) return mismatch("malformed Merkle node record");
    int level = static_cast<uint8_t>(k[0]);
    uint64_t index = schema::getBe64(std::string(4, '\0') + std::string(k.substr(1)));
    if (level >= kDepth || index >= nodes[static_cast<size_t>(level)].size()) {
      return mismatch("Merkle node out of range");
    }
    if (v != nodeBytes(nodes[static_cast<size_t>(level)][index])) {
      return mismatch("Merkle node (level " + std::to_string(level) + ", index " +
                      std::to_string(index) + ") differs from the recomputed sum");
    }
    ++storedNodes;
  }
  uint64_t expectedNodes = 0;
  for (const auto& level : nodes) {
    expectedNodes += static_cast<uint64_t>(
        std::count_if(level.begin(), level.end(), [](const Hash& h) { return !isZero(h); }));
  }
  if (storedNodes != expectedNodes) {
    return mismatch("Merkle tree stores " + std::to_string(storedNodes) +
                    " non-empty nodes, expected " + std::to_string(expectedNodes));
  }

  uint64_t storedSums = 0;
  auto products = Cursor::open(txn, dbs_.products);
  if (!products) return products.error();
  for (auto at = products->seek(MDB_FIRST, &k, &v);; at = products->seek(MDB_NEXT, &k, &v)) {
    if (!at) return at.error();
    if (!*at) break;
    size_t idLen = k.size() >= 2 ? ((size_t(uint8_t(k[0])) << 8) | uint8_t(k[1])) : 0;
    if (idLen == 0 || k.size() != 3 + idLen || k[2 + idLen] != schema::kProductAggregate) {
      return mismatch("products holds a key that is no aggregate's: " + schema::toHex(k));
    }
    auto stored = schema::decodeSummary(v);
    auto it = sums.find(std::string(k));
    if (!stored || it == sums.end() || !sameSummary(*stored, it->second)) {
      return mismatch("aggregate of product '" + std::string(k.substr(2, idLen)) +
                      "' differs from a recount of its reviews");
    }
    ++storedSums;
  }
  if (storedSums != sums.size()) {
    return mismatch("aggregates exist for " + std::to_string(storedSums) + " products, expected " +
                    std::to_string(sums.size()));
  }

  std::string_view hw;
  auto found = txn.get(dbs_.meta, schema::kMetaHlcHighWater, &hw);
  if (!found) return found.error();
  if (!*found || hw.size() != 8 || schema::getLe64(hw) < maxHlc.bits) {
    return mismatch("the persisted HLC high-water mark is missing or below a stored stamp");
  }
  return okStatus();
}

// ---- open --------------------------------------------------------------------

struct Opened {
  Dbs dbs;
  crdt::ReplicaId replica = 0;
  crdt::Hlc highWater;
};

Result<Opened> initSchema(Txn& txn, const std::string& dir) {
  Opened o;
  const std::pair<const char*, MDB_dbi*> all[] = {{kDbDocuments, &o.dbs.documents},
                                                   {kDbProducts, &o.dbs.products},
                                                   {kDbMerkle, &o.dbs.merkle},
                                                   {kDbLeafEntries, &o.dbs.leafEntries}};

  int rc = mdb_dbi_open(txn.get(), kDbMeta, 0, &o.dbs.meta);
  if (rc == MDB_NOTFOUND) {
    // A new store, provided the environment holds nothing else.
    MDB_dbi main;
    MDB_stat st;
    if ((rc = mdb_dbi_open(txn.get(), nullptr, 0, &main)) != 0 ||
        (rc = mdb_stat(txn.get(), main, &st)) != 0) {
      return txn.fail(rc, "reading the main database of " + dir);
    }
    if (st.ms_entries != 0) {
      return makeError(ErrorCode::kInvalidArgument,
                       "data dir " + dir + " holds an LMDB database that is not a Chorus store; "
                       "point the node at an empty directory or at its own data dir");
    }
    if ((rc = mdb_dbi_open(txn.get(), kDbMeta, MDB_CREATE, &o.dbs.meta)) != 0) {
      return txn.fail(rc, "creating the meta database");
    }
    for (auto [name, dbi] : all) {
      if ((rc = mdb_dbi_open(txn.get(), name, MDB_CREATE, dbi)) != 0) {
        return txn.fail(rc, std::string("creating database ") + name);
      }
    }
    do {
      randombytes_buf(&o.replica, sizeof o.replica);
    } while (o.replica == 0);
    std::string version, replica, hw;
    for (int i = 0; i < 4; ++i) version.push_back(static_cast<char>((kSchemaVersion >> (8 * i)) & 0xff));
    schema::putLe64(replica, o.replica);
    schema::putLe64(hw, 0);
    for (auto [k, v] : {std::pair{schema::kMetaSchemaVersion, std::string_view(version)},
                        std::pair{schema::kMetaReplicaId, std::string_view(replica)},
                        std::pair{schema::kMetaHlcHighWater, std::string_view(hw)}}) {
      if (auto s = txn.put(o.dbs.meta, k, v); !s) return s.error();
    }
    return o;
  }
  if (rc != 0) return txn.fail(rc, "opening the meta database of " + dir);

  std::string_view v;
  auto found = txn.get(o.dbs.meta, schema::kMetaSchemaVersion, &v);
  if (!found) return found.error();
  if (!*found || v.size() != 4) {
    return corruption("data dir " + dir + " has no readable schema version in its meta database");
  }
  uint32_t version = 0;
  for (int i = 3; i >= 0; --i) version = (version << 8) | uint8_t(v[static_cast<size_t>(i)]);
  if (version >= 1 && version < kSchemaVersion) {
    return makeError(ErrorCode::kInvalidArgument,
                     "data dir " + dir + " uses storage schema version " + std::to_string(version) +
                         ", but this build of Chorus reads only version " +
                         std::to_string(kSchemaVersion) +
                         " (listings moved into the documents, the Merkle key hash and the "
                         "aggregate encoding changed). No release migrates older versions (they "
                         "never ran in production): move the directory aside and let the node "
                         "resync from its peers, or delete it if it held only test data");
  }
  if (version != kSchemaVersion) {
    return makeError(ErrorCode::kInvalidArgument,
                     "data dir " + dir + " uses storage schema version " + std::to_string(version) +
                         ", but this build of Chorus reads only version " +
                         std::to_string(kSchemaVersion) +
                         ". Run the Chorus release that wrote it (or a newer one that migrates "
                         "it), or move the directory aside and let the node resync from its peers");
  }
  found = txn.get(o.dbs.meta, schema::kMetaReplicaId, &v);
  if (!found) return found.error();
  if (!*found || v.size() != 8 || schema::getLe64(v) == 0) {
    return corruption("data dir " + dir + " has no valid replica id in its meta database");
  }
  o.replica = schema::getLe64(v);
  found = txn.get(o.dbs.meta, schema::kMetaHlcHighWater, &v);
  if (!found) return found.error();
  if (!*found || v.size() != 8) {
    return corruption("data dir " + dir + " has no valid HLC high-water mark in its meta database");
  }
  o.highWater = crdt::Hlc{schema::getLe64(v)};
  for (auto [name, dbi] : all) {
    rc = mdb_dbi_open(txn.get(), name, 0, dbi);
    if (rc == MDB_NOTFOUND) return corruption("data dir " + dir + " lacks the database " + name);
    if (rc != 0) return txn.fail(rc, std::string("opening database ") + name);
  }
  return o;
}

using Notice = std::function<void(const std::string&)>;

void tell(const Notice& notice, const std::string& what) {
  if (notice) notice(what);
}

std::string octal(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// `dir` (and missing parents) created, the dir itself 0700 whatever the
// umask; an existing one group or others may use is chmod-ed 0700.
Status makePrivateDir(const std::string& dir, const Notice& notice) {
  std::error_code ec;
  auto parent = std::filesystem::path(dir).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (ec) {
    return makeError(ErrorCode::kIo, "cannot create data dir " + dir + ": " + ec.message());
  }
  if (::mkdir(dir.c_str(), 0700) == 0) {
    if (::chmod(dir.c_str(), 0700) != 0) {  // the umask may have taken bits from the owner
      return makeError(ErrorCode::kIo,
                       "cannot chmod data dir " + dir + ": " + std::strerror(errno));
    }
    return okStatus();
  }
  if (errno != EEXIST) {
    return makeError(ErrorCode::kIo, "cannot create data dir " + dir + ": " + std::strerror(errno));
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    return makeError(ErrorCode::kIo, "cannot stat data dir " + dir + ": " + std::strerror(errno));
  }
  if (!S_ISDIR(st.st_mode)) {
    return makeError(ErrorCode::kInvalidArgument, "data dir " + dir + " is not a directory");
  }
  if ((st.st_mode & 077) == 0) return okStatus();
  if ((st.st_mode & S_ISVTX) != 0) {
    return makeError(ErrorCode::kInvalidArgument,
                     "data dir " + dir + " is a shared directory (mode " + octal(st.st_mode) +
                         ", sticky, like /tmp); give the node a directory of its own, e.g. " + dir +
                         "/chorus");
  }
  if (st.st_uid != ::geteuid() || ::chmod(dir.c_str(), 0700) != 0) {
    tell(notice, "data dir " + dir + " has mode " + octal(st.st_mode) +
                     " and could not be made 0700 (" +
                     (st.st_uid != ::geteuid() ? std::string("owned by another user")
                                               : std::string(std::strerror(errno))) +
                     "); other users may list it (the store's files stay 0600): chmod 700 " + dir);
    return okStatus();
  }
  tell(notice, "data dir " + dir + " had mode " + octal(st.st_mode) +
                   ", open to other users; changed it to 0700");
  return okStatus();
}

// A store file group or others may use: chmod-ed 0600.
void tightenFile(const std::string& path, const Notice& notice) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || (st.st_mode & 077) == 0) return;
  if (::chmod(path.c_str(), 0600) != 0) {
    tell(notice, "store file " + path + " has mode " + octal(st.st_mode) +
                     " and could not be made 0600 (" + std::strerror(errno) + "): chmod 600 " +
                     path);
    return;
  }
  tell(notice, "store file " + path + " had mode " + octal(st.st_mode) +
                   ", readable by other users; changed it to 0600");
}

}  // namespace

Result<std::unique_ptr<Store>> Store::open(Options options) {
  if (options.dir.empty()) return makeError(ErrorCode::kInvalidArgument, "no data dir given");
  if (options.maxBatch == 0) return makeError(ErrorCode::kInvalidArgument, "maxBatch must be >= 1");
  if (!options.clock) return makeError(ErrorCode::kInvalidArgument, "no physical clock given");
  if (auto made = makePrivateDir(options.dir, options.notice); !made.ok()) return made.error();
  if (sodium_init() < 0) return makeError(ErrorCode::kInternal, "libsodium failed to initialize");

  auto lock = LockFile::acquire(options.dir);
  if (!lock) return lock.error();

  MDB_env* raw = nullptr;
  if (int rc = mdb_env_create(&raw); rc != 0) return lmdbError(rc, "creating an LMDB environment");
  Env env(raw);
  uint64_t mapBytes = std::max<uint64_t>(options.initialMapBytes, 1 << 20);
  if (int rc = mdb_env_set_maxdbs(raw, 16); rc != 0) return lmdbError(rc, "configuring LMDB");
  if (int rc = mdb_env_set_maxreaders(raw, kMaxReaders); rc != 0) {
    return lmdbError(rc, "configuring LMDB");
  }
  if (int rc = mdb_env_set_mapsize(raw, static_cast<size_t>(mapBytes)); rc != 0) {
    return lmdbError(rc, "configuring LMDB");
  }
  unsigned flags = MDB_NOTLS | (options.unsafeNoSync ? MDB_NOSYNC : 0u);
  if (int rc = mdb_env_open(raw, options.dir.c_str(), flags, 0600); rc != 0) {
    return lmdbError(rc, "opening the LMDB environment in " + options.dir);
  }
  // LMDB's mode applies only to files it creates: a store made by an older
  // version (0644) is tightened here.
  tightenFile(options.dir + "/data.mdb", options.notice);
  tightenFile(options.dir + "/lock.mdb", options.notice);
  int dead = 0;
  if (int rc = mdb_reader_check(raw, &dead); rc != 0) {
    return lmdbError(rc, "clearing stale LMDB reader slots in " + options.dir);
  }

  Txn txn;
  if (int rc = txn.begin(raw, 0); rc != 0) {
    return lmdbError(rc, "starting the first transaction in " + options.dir);
  }
  auto opened = initSchema(txn, options.dir);
  if (!opened) return opened.error();
  if (auto s = txn.commit(); !s) return s.error();

  return std::unique_ptr<Store>(new StoreImpl(std::move(options), std::move(lock).value(),
                                              std::move(env), opened->dbs, opened->replica,
                                              opened->highWater));
}

Result<Applied> Store::mutateSync(crdt::ReviewKey key, Mutation mutation) {
  std::promise<Result<Applied>> promise;
  auto future = promise.get_future();
  mutate(std::move(key), std::move(mutation),
         [&promise](Result<Applied> r) { promise.set_value(std::move(r)); });
  return future.get();
}

Result<Applied> Store::mergeSync(crdt::ReviewDoc remote) {
  std::promise<Result<Applied>> promise;
  auto future = promise.get_future();
  merge(std::move(remote), [&promise](Result<Applied> r) { promise.set_value(std::move(r)); });
  return future.get();
}

}  // namespace chorus::storage
