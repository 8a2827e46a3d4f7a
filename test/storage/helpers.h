// Shared pieces of the storage tests: temporary data dirs, common
// mutations and raw LMDB access for fault injection.
#pragma once

#include <doctest/doctest.h>
#include <lmdb.h>
#include <stdlib.h>

#include <filesystem>
#include <functional>
#include <string>

#include "crdt/review.h"
#include "storage/store.h"

namespace chorus::test {

// A fresh directory under /tmp, removed with everything in it on scope exit.
class TempDir {
 public:
  TempDir() {
    std::string pattern = "/tmp/chorus-storage-test-XXXXXX";
    char* made = ::mkdtemp(pattern.data());
    REQUIRE(made != nullptr);
    path_ = made;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline storage::Options optionsFor(const std::string& dir) {
  storage::Options o;
  o.dir = dir;
  return o;
}

inline std::unique_ptr<storage::Store> openStore(storage::Options o) {
  auto store = storage::Store::open(std::move(o));
  if (!store) FAIL(store.error().toString());
  return std::move(store).value();
}

inline storage::Mutation writeReview(uint8_t rating, std::string title, std::string body) {
  return [=](crdt::ReviewDoc& doc, crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
    return doc.write(rating, title, body, clock.now());
  };
}

inline storage::Mutation eraseReview() {
  return [](crdt::ReviewDoc& doc, crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
    return doc.erase(clock.now());
  };
}

inline storage::Mutation voteHelpful(std::string voter) {
  return [=](crdt::ReviewDoc& doc, crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
    return doc.vote(voter, clock.replica());
  };
}

inline storage::Mutation tagReview(std::string tag) {
  return [=](crdt::ReviewDoc& doc, crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
    return doc.tag(tag, clock.replica());
  };
}

// Opens the LMDB environment of a closed store directly and runs `body` in
// one write transaction on the named database; commits if body returns true.
inline void withRawDb(const std::string& dir, const char* dbName,
                      const std::function<bool(MDB_txn*, MDB_dbi)>& body) {
  MDB_env* env = nullptr;
  REQUIRE(mdb_env_create(&env) == 0);
  mdb_env_set_maxdbs(env, 16);
  REQUIRE(mdb_env_open(env, dir.c_str(), 0, 0644) == 0);
  MDB_txn* txn = nullptr;
  REQUIRE(mdb_txn_begin(env, nullptr, 0, &txn) == 0);
  MDB_dbi dbi;
  REQUIRE(mdb_dbi_open(txn, dbName, 0, &dbi) == 0);
  if (body(txn, dbi)) {
    REQUIRE(mdb_txn_commit(txn) == 0);
  } else {
    mdb_txn_abort(txn);
  }
  mdb_env_close(env);
}

// Makes a closed store's data dir look like one a schema 4 build wrote:
// documents in record format 2 (no seq), no `changes` database, no
// `last-seq`, version 4 in meta.
inline void downgradeToV4(const std::string& dir) {
  withRawDb(dir, "documents", [&](MDB_txn* txn, MDB_dbi dbi) {
    MDB_cursor* cursor = nullptr;
    REQUIRE(mdb_cursor_open(txn, dbi, &cursor) == 0);
    MDB_val k, v;
    for (int rc = mdb_cursor_get(cursor, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) {
      std::string key(static_cast<const char*>(k.mv_data), k.mv_size);
      std::string value(static_cast<const char*>(v.mv_data), v.mv_size);
      REQUIRE(value.size() > 35);
      REQUIRE(value[0] == '\x03');
      value[0] = '\x02';
      value.erase(27, 8);  // the seq
      MDB_val nk{key.size(), key.data()}, nv{value.size(), value.data()};
      REQUIRE(mdb_cursor_put(cursor, &nk, &nv, MDB_CURRENT) == 0);
    }
    mdb_cursor_close(cursor);
    MDB_dbi changes;
    REQUIRE(mdb_dbi_open(txn, "changes", 0, &changes) == 0);
    REQUIRE(mdb_drop(txn, changes, 1) == 0);
    return true;
  });
  withRawDb(dir, "meta", [&](MDB_txn* txn, MDB_dbi dbi) {
    std::string seq("last-seq");
    MDB_val sk{seq.size(), seq.data()};
    REQUIRE(mdb_del(txn, dbi, &sk, nullptr) == 0);
    std::string k("schema-version");
    std::string v("\x04\x00\x00\x00", 4);
    MDB_val key{k.size(), k.data()}, val{v.size(), v.data()};
    REQUIRE(mdb_put(txn, dbi, &key, &val, 0) == 0);
    return true;
  });
}

}  // namespace chorus::test

#include <condition_variable>
#include <mutex>
#include <optional>
#include <vector>

namespace chorus::test {

// Gathers the results of asynchronous writes: done(i) is the Done of write i.
class Collector {
 public:
  explicit Collector(size_t n) : results_(n) {}
  storage::Done done(size_t i) {
    return [this, i](Result<storage::Applied> r) {
      std::lock_guard lock(mu_);
      results_[i] = std::move(r);
      ++count_;
      cv_.notify_all();
    };
  }
  // Waits (at most 60 s) until every write was acknowledged.
  void wait() {
    std::unique_lock lock(mu_);
    bool all = cv_.wait_for(lock, std::chrono::seconds(60), [&] { return count_ == results_.size(); });
    REQUIRE(all);
  }
  Result<storage::Applied>& operator[](size_t i) { return *results_[i]; }
  size_t size() const { return results_.size(); }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::optional<Result<storage::Applied>>> results_;
  size_t count_ = 0;
};

// A one-shot latch.
class Latch {
 public:
  void open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

// Holds the store thread inside a write until release(), so that writes
// queued meanwhile land together in the next batch.
class WriterBlock {
 public:
  explicit WriterBlock(storage::Store& store) {
    store.mutate({"block", "block"},
                 [this](crdt::ReviewDoc& doc, crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
                   entered_.open();
                   release_.wait();
                   return doc.write(1, "", "", clock.now());
                 },
                 [this](Result<storage::Applied>) { finished_.open(); });
    entered_.wait();
  }
  void release() {
    release_.open();
    finished_.wait();
  }

 private:
  Latch entered_, release_, finished_;
};

}  // namespace chorus::test
