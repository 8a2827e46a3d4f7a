// RAII wrappers for LMDB handles and the translation of LMDB return codes
// into chorus::Error. Internal to storage/: nothing outside this module sees
// an LMDB type or an LMDB int.
#pragma once

#include <lmdb.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "crdt/result.h"

namespace chorus::storage::internal {

// "<what>: <LMDB's message>", with an ErrorCode chosen by what an operator
// can do about it (kCorruption for a damaged file, kIo for the OS, ...).
Error lmdbError(int rc, std::string_view what);

inline MDB_val toVal(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
inline std::string_view toView(const MDB_val& v) {
  return std::string_view(static_cast<const char*>(v.mv_data), v.mv_size);
}

// Owns an MDB_env. Move-only; closes the environment on destruction.
class Env {
 public:
  Env() = default;
  Env(Env&& other) noexcept : env_(std::exchange(other.env_, nullptr)) {}
  Env& operator=(Env&& other) noexcept {
    if (this != &other) {
      reset();
      env_ = std::exchange(other.env_, nullptr);
    }
    return *this;
  }
  Env(const Env&) = delete;
  Env& operator=(const Env&) = delete;
  ~Env() { reset(); }

  // mdb_env_create plus the limits that must be set before open.
  static Result<Env> create(unsigned maxDbs, unsigned maxReaders, uint64_t mapBytes);
  Status open(const std::string& dir, unsigned flags, unsigned mode);

  MDB_env* get() const { return env_; }
  void reset() {
    if (env_ != nullptr) mdb_env_close(std::exchange(env_, nullptr));
  }

  // mdb_env_set_mapsize: 0 adopts the size another process set. Remaps the
  // file: no transaction of this process may be active.
  Status setMapSize(uint64_t bytes);
  Result<uint64_t> mapSize() const;
  // Pages in use, in bytes.
  Result<uint64_t> usedBytes() const;
  // Clears reader slots left by dead processes.
  Status readerCheck();
  // mdb_env_copyfd2 with MDB_CP_COMPACT: writes a compacted copy of the
  // environment to `fd` sequentially (a pipe will do), in a read
  // transaction of its own. Any thread; no map growth may happen meanwhile.
  Status copyCompact(int fd);

 private:
  MDB_env* env_ = nullptr;
};

// Owns an MDB_txn: aborted on destruction unless committed. Remembers
// whether any call through it failed with MDB_MAP_FULL so the writer can grow
// the map and retry the whole transaction.
class Txn {
 public:
  Txn() = default;
  Txn(Txn&& other) noexcept
      : txn_(std::exchange(other.txn_, nullptr)),
        mapFull_(other.mapFull_),
        mapResized_(other.mapResized_) {}
  Txn& operator=(Txn&& other) noexcept {
    if (this != &other) {
      abort();
      txn_ = std::exchange(other.txn_, nullptr);
      mapFull_ = other.mapFull_;
      mapResized_ = other.mapResized_;
    }
    return *this;
  }
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;
  ~Txn() { abort(); }

  // On success *this owns the new transaction. When it fails because
  // another process grew the map, mapResized() is true: adopt the size
  // (Env::setMapSize(0)) with no transaction active and begin again.
  Status begin(const Env& env, unsigned flags);
  // Commits and releases the handle (LMDB frees it either way).
  Status commit();
  void abort() {
    if (txn_ != nullptr) mdb_txn_abort(std::exchange(txn_, nullptr));
  }

  MDB_txn* get() const { return txn_; }
  bool active() const { return txn_ != nullptr; }
  bool mapFull() const { return mapFull_; }
  bool mapResized() const { return mapResized_; }

  // Opens a named database: nullopt when it does not exist and `flags`
  // lacks MDB_CREATE; name nullptr = the main database.
  Result<std::optional<MDB_dbi>> openDb(const char* name, unsigned flags);
  // Entries in a database.
  Result<uint64_t> entries(MDB_dbi dbi);
  // Deletes every entry of a database (keeps the database).
  Status clear(MDB_dbi dbi);
  // Deletes a database and its entries; `dbi` is invalid afterwards.
  Status dropDb(MDB_dbi dbi);

  // Thin, checked forms of the LMDB calls. get: std::nullopt-like via bool.
  // Returns true and sets *out if found; false if absent; an Error otherwise.
  Result<bool> get(MDB_dbi dbi, std::string_view key, std::string_view* out);
  Status put(MDB_dbi dbi, std::string_view key, std::string_view value, unsigned flags = 0);
  // Deleting an absent key is not an error.
  Status del(MDB_dbi dbi, std::string_view key);

  // Records a failed LMDB call made directly on get(); returns the Error.
  Error fail(int rc, std::string_view what);

 private:
  MDB_txn* txn_ = nullptr;
  bool mapFull_ = false;
  bool mapResized_ = false;
};

// Owns an MDB_cursor of a transaction that outlives it.
class Cursor {
 public:
  Cursor() = default;
  Cursor(Cursor&& other) noexcept
      : cursor_(std::exchange(other.cursor_, nullptr)), txn_(other.txn_) {}
  Cursor& operator=(Cursor&& other) noexcept {
    if (this != &other) {
      close();
      cursor_ = std::exchange(other.cursor_, nullptr);
      txn_ = other.txn_;
    }
    return *this;
  }
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;
  ~Cursor() { close(); }

  static Result<Cursor> open(Txn& txn, MDB_dbi dbi);
  void close() {
    if (cursor_ != nullptr) mdb_cursor_close(std::exchange(cursor_, nullptr));
  }

  // Positions the cursor; returns true with key/value set when it landed on
  // an entry, false at MDB_NOTFOUND, an Error otherwise.
  Result<bool> seek(MDB_cursor_op op, std::string_view* key, std::string_view* value);
  // MDB_SET_RANGE: the first entry with key >= `target`.
  Result<bool> seekAtLeast(std::string_view target, std::string_view* key, std::string_view* value);
  // MDB_SET_KEY: positions on exactly `target`; true and *value set if it
  // exists, false if not.
  Result<bool> seekExact(std::string_view target, std::string_view* value);
  // mdb_cursor_put with MDB_APPEND: `key` must sort after every key of
  // the database (bulk loads in key order).
  Status append(std::string_view key, std::string_view value);
  // mdb_cursor_put. Puts in key order through one cursor stay on the
  // current leaf page instead of descending from the root each time.
  Status put(std::string_view key, std::string_view value);
  // Replaces the value of the entry the cursor is on (MDB_CURRENT); `key`
  // must be that entry's key.
  Status putCurrent(std::string_view key, std::string_view value);
  // Deletes the entry the cursor is on.
  Status delCurrent();

 private:
  MDB_cursor* cursor_ = nullptr;
  Txn* txn_ = nullptr;
};

}  // namespace chorus::storage::internal
