#include "storage/internal/lmdb.h"

namespace chorus::storage::internal {

Error lmdbError(int rc, std::string_view what) {
  ErrorCode code = ErrorCode::kIo;
  switch (rc) {
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_INCOMPATIBLE:
      code = ErrorCode::kCorruption;
      break;
    case MDB_READERS_FULL:
      code = ErrorCode::kBusy;
      break;
    case MDB_TXN_FULL:
    case MDB_BAD_TXN:
    case MDB_BAD_VALSIZE:
    case MDB_BAD_DBI:
    case MDB_BAD_RSLOT:
      code = ErrorCode::kInternal;
      break;
    default:  // MDB_MAP_FULL, ENOSPC, EIO, EACCES, ENOMEM, ...
      code = ErrorCode::kIo;
      break;
  }
  return makeError(code, std::string(what) + ": " + mdb_strerror(rc));
}

Result<Env> Env::create(unsigned maxDbs, unsigned maxReaders, uint64_t mapBytes) {
  Env env;
  if (int rc = mdb_env_create(&env.env_); rc != 0) {
    return lmdbError(rc, "creating an LMDB environment");
  }
  if (int rc = mdb_env_set_maxdbs(env.env_, maxDbs); rc != 0) {
    return lmdbError(rc, "configuring LMDB");
  }
  if (int rc = mdb_env_set_maxreaders(env.env_, maxReaders); rc != 0) {
    return lmdbError(rc, "configuring LMDB");
  }
  if (int rc = mdb_env_set_mapsize(env.env_, static_cast<size_t>(mapBytes)); rc != 0) {
    return lmdbError(rc, "configuring LMDB");
  }
  return env;
}

Status Env::open(const std::string& dir, unsigned flags, unsigned mode) {
  if (int rc = mdb_env_open(env_, dir.c_str(), flags, static_cast<mdb_mode_t>(mode)); rc != 0) {
    return lmdbError(rc, "opening the LMDB environment in " + dir);
  }
  return okStatus();
}

Status Env::setMapSize(uint64_t bytes) {
  if (int rc = mdb_env_set_mapsize(env_, static_cast<size_t>(bytes)); rc != 0) {
    return lmdbError(
        rc, bytes == 0 ? "adopting the map size another process set" : "growing the LMDB map");
  }
  return okStatus();
}

Result<uint64_t> Env::mapSize() const {
  MDB_envinfo info;
  if (int rc = mdb_env_info(env_, &info); rc != 0) return lmdbError(rc, "reading the map size");
  return uint64_t{info.me_mapsize};
}

Result<uint64_t> Env::usedBytes() const {
  MDB_envinfo info;
  MDB_stat st;
  if (int rc = mdb_env_info(env_, &info); rc != 0) return lmdbError(rc, "reading the map size");
  if (int rc = mdb_env_stat(env_, &st); rc != 0) return lmdbError(rc, "reading the page size");
  return (uint64_t{info.me_last_pgno} + 1) * uint64_t{st.ms_psize};
}

Status Env::readerCheck() {
  int dead = 0;
  if (int rc = mdb_reader_check(env_, &dead); rc != 0) {
    return lmdbError(rc, "clearing stale LMDB reader slots");
  }
  return okStatus();
}

Status Env::copyCompact(int fd) {
  if (int rc = mdb_env_copyfd2(env_, fd, MDB_CP_COMPACT); rc != 0) {
    return lmdbError(rc, "copying the store");
  }
  return okStatus();
}

Status Txn::begin(const Env& env, unsigned flags) {
  abort();
  mapFull_ = false;
  mapResized_ = false;
  int rc = mdb_txn_begin(env.get(), nullptr, flags, &txn_);
  if (rc == 0) return okStatus();
  txn_ = nullptr;
  mapResized_ = rc == MDB_MAP_RESIZED;
  return lmdbError(rc, (flags & MDB_RDONLY) != 0 ? "starting a read transaction"
                                                 : "starting a write transaction");
}

Result<std::optional<MDB_dbi>> Txn::openDb(const char* name, unsigned flags) {
  MDB_dbi dbi = 0;
  int rc = mdb_dbi_open(txn_, name, flags, &dbi);
  if (rc == MDB_NOTFOUND) return std::optional<MDB_dbi>();
  if (rc != 0) {
    return fail(rc, name == nullptr ? std::string("opening the main database")
                                    : std::string("opening database ") + name);
  }
  return std::optional<MDB_dbi>(dbi);
}

Result<uint64_t> Txn::entries(MDB_dbi dbi) {
  MDB_stat st;
  if (int rc = mdb_stat(txn_, dbi, &st); rc != 0) return fail(rc, "counting entries");
  return uint64_t{st.ms_entries};
}

Status Txn::clear(MDB_dbi dbi) {
  if (int rc = mdb_drop(txn_, dbi, 0); rc != 0) return fail(rc, "emptying a database");
  return okStatus();
}

Status Txn::dropDb(MDB_dbi dbi) {
  if (int rc = mdb_drop(txn_, dbi, 1); rc != 0) return fail(rc, "deleting a database");
  return okStatus();
}

Status Txn::commit() {
  CHORUS_ASSERT(txn_ != nullptr, "commit without a transaction");
  int rc = mdb_txn_commit(std::exchange(txn_, nullptr));
  if (rc != 0) return fail(rc, "committing a write transaction");
  return okStatus();
}

Error Txn::fail(int rc, std::string_view what) {
  if (rc == MDB_MAP_FULL) mapFull_ = true;
  return lmdbError(rc, what);
}

Result<bool> Txn::get(MDB_dbi dbi, std::string_view key, std::string_view* out) {
  MDB_val k = toVal(key);
  MDB_val v;
  int rc = mdb_get(txn_, dbi, &k, &v);
  if (rc == MDB_NOTFOUND) return false;
  if (rc != 0) return fail(rc, "reading a key");
  *out = toView(v);
  return true;
}

Status Txn::put(MDB_dbi dbi, std::string_view key, std::string_view value, unsigned flags) {
  MDB_val k = toVal(key);
  MDB_val v = toVal(value);
  int rc = mdb_put(txn_, dbi, &k, &v, flags);
  if (rc != 0) return fail(rc, "writing a key");
  return okStatus();
}

Status Txn::del(MDB_dbi dbi, std::string_view key) {
  MDB_val k = toVal(key);
  int rc = mdb_del(txn_, dbi, &k, nullptr);
  if (rc != 0 && rc != MDB_NOTFOUND) return fail(rc, "deleting a key");
  return okStatus();
}

Result<Cursor> Cursor::open(Txn& txn, MDB_dbi dbi) {
  Cursor c;
  c.txn_ = &txn;
  int rc = mdb_cursor_open(txn.get(), dbi, &c.cursor_);
  if (rc != 0) return lmdbError(rc, "opening a cursor");
  return c;
}

Result<bool> Cursor::seek(MDB_cursor_op op, std::string_view* key, std::string_view* value) {
  MDB_val k{0, nullptr};
  MDB_val v{0, nullptr};
  int rc = mdb_cursor_get(cursor_, &k, &v, op);
  if (rc == MDB_NOTFOUND) return false;
  if (rc != 0) return lmdbError(rc, "moving a cursor");
  *key = toView(k);
  if (value != nullptr) *value = toView(v);
  return true;
}

Result<bool> Cursor::seekAtLeast(std::string_view target, std::string_view* key,
                                 std::string_view* value) {
  MDB_val k = toVal(target);
  MDB_val v{0, nullptr};
  int rc = mdb_cursor_get(cursor_, &k, &v, MDB_SET_RANGE);
  if (rc == MDB_NOTFOUND) return false;
  if (rc != 0) return lmdbError(rc, "positioning a cursor");
  *key = toView(k);
  if (value != nullptr) *value = toView(v);
  return true;
}

Result<bool> Cursor::seekExact(std::string_view target, std::string_view* value) {
  MDB_val k = toVal(target);
  MDB_val v{0, nullptr};
  int rc = mdb_cursor_get(cursor_, &k, &v, MDB_SET_KEY);
  if (rc == MDB_NOTFOUND) return false;
  if (rc != 0) return txn_->fail(rc, "positioning a cursor");
  if (value != nullptr) *value = toView(v);
  return true;
}

Status Cursor::putCurrent(std::string_view key, std::string_view value) {
  MDB_val k = toVal(key);
  MDB_val v = toVal(value);
  int rc = mdb_cursor_put(cursor_, &k, &v, MDB_CURRENT);
  if (rc != 0) return txn_->fail(rc, "replacing a value through a cursor");
  return okStatus();
}

Status Cursor::delCurrent() {
  int rc = mdb_cursor_del(cursor_, 0);
  if (rc != 0) return txn_->fail(rc, "deleting through a cursor");
  return okStatus();
}

Status Cursor::append(std::string_view key, std::string_view value) {
  MDB_val k = toVal(key);
  MDB_val v = toVal(value);
  int rc = mdb_cursor_put(cursor_, &k, &v, MDB_APPEND);
  if (rc != 0) return txn_->fail(rc, "appending a key through a cursor");
  return okStatus();
}

Status Cursor::put(std::string_view key, std::string_view value) {
  MDB_val k = toVal(key);
  MDB_val v = toVal(value);
  int rc = mdb_cursor_put(cursor_, &k, &v, 0);
  if (rc != 0) return txn_->fail(rc, "writing a key through a cursor");
  return okStatus();
}

}  // namespace chorus::storage::internal
