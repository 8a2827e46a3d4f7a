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

int Txn::begin(MDB_env* env, unsigned flags) {
  abort();
  mapFull_ = false;
  return mdb_txn_begin(env, nullptr, flags, &txn_);
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

Status Cursor::put(std::string_view key, std::string_view value) {
  MDB_val k = toVal(key);
  MDB_val v = toVal(value);
  int rc = mdb_cursor_put(cursor_, &k, &v, 0);
  if (rc != 0) return txn_->fail(rc, "writing a key through a cursor");
  return okStatus();
}

}  // namespace chorus::storage::internal
