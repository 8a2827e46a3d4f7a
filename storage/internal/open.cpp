// Opening a store: the data dir and its lock, the LMDB environment, the
// schema check, and the migration of older schema versions.
#include <fcntl.h>
#include <sodium.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "storage/internal/store-impl.h"
#include "storage/key-schema.h"

namespace chorus::storage {

namespace internal {

LockFile::~LockFile() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

Result<LockFile> LockFile::acquire(const std::string& dir) {
  std::string path = dir + "/chorus.lock";
  LockFile lock;
  lock.fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock.fd_ < 0) {
    return makeError(ErrorCode::kIo, "cannot open lock file " + path + ": " + std::strerror(errno));
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

namespace {

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

struct Opened {
  Dbs dbs;
  crdt::ReplicaId replica = 0;
  crdt::Hlc highWater;
};

std::string encodeVersion(uint32_t version) {
  std::string out;
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((version >> (8 * i)) & 0xff));
  return out;
}

// The first schema version that holds the listing positions.
constexpr uint32_t kFirstListingsVersion = 4;

// Schema 3 to 4: the listing positions of every live review, built from the
// listing headers in `documents`, in the open transaction: a crash before
// it commits leaves a version 3 store that the next open migrates again.
// One product at a time, in key order (a product's positions sort after
// the previous product's), appended.
Status migrateToListings(Txn& txn, Dbs& dbs) {
  auto listings = txn.openDb(kDbListings, MDB_CREATE);
  if (!listings) return listings.error();
  dbs.listings = **listings;
  if (auto s = txn.clear(dbs.listings); !s) return s;  // a version 3 build never writes it
  auto docs = Cursor::open(txn, dbs.documents);
  if (!docs) return docs.error();
  auto out = Cursor::open(txn, dbs.listings);
  if (!out) return out.error();
  std::vector<std::string> positions;  // of the current product
  std::string product;
  auto flush = [&]() -> Status {
    std::sort(positions.begin(), positions.end());
    for (const std::string& p : positions) {
      if (auto s = out->append(p, {}); !s) return s;
    }
    positions.clear();
    return okStatus();
  };
  std::string_view k, v;
  for (auto at = docs->seek(MDB_FIRST, &k, &v);; at = docs->seek(MDB_NEXT, &k, &v)) {
    if (!at) return at.error();
    if (!*at) break;
    auto key = schema::parseDocKey(k);
    auto header = schema::peekListingHeader(v);
    if (!key || !header) {
      return corruption(
          "migrating storage schema 3 to 4: a stored review has a malformed key or listing "
          "header (key " +
          schema::toHex(k) + ")");
    }
    if (key->product != product) {
      if (auto s = flush(); !s) return s;
      product = key->product;
    }
    addListingKeys(positions, *key, Facts{header->live, header->rating, header->hlc, 0});
  }
  return flush();
}

// The migration steps, in order: step i takes a store of version `from`
// to `from + 1`. Opening a store of version v runs every step from v on,
// in the one write transaction of the open, then writes kSchemaVersion.
struct MigrationStep {
  uint32_t from;
  const char* what;  // for the notice
  Status (*run)(Txn& txn, Dbs& dbs);
};
constexpr MigrationStep kMigrations[] = {
    {1, "listing headers added, listing indexes and by-author dropped, Merkle tree rebuilt",
     migrateSchema1To2},
    {2, "aggregates re-encoded", migrateSchema2To3},
    {3, "listing positions built", migrateToListings},
};
constexpr uint32_t kOldestMigrated = 1;
static_assert(std::size(kMigrations) == kSchemaVersion - kOldestMigrated,
              "one migration step per schema version before this one");

// Runs the steps from `version` up to kSchemaVersion; returns what they did.
Result<std::string> migrate(Txn& txn, Dbs& dbs, uint32_t version) {
  std::string done;
  for (const MigrationStep& step : kMigrations) {
    if (step.from < version) continue;
    CHORUS_ASSERT(step.from == version, "migration steps out of order");
    if (auto s = step.run(txn, dbs); !s) return s.error();
    done += (done.empty() ? "" : "; ") + std::to_string(step.from) + " to " +
            std::to_string(step.from + 1) + ": " + step.what;
    ++version;
  }
  CHORUS_ASSERT(version == kSchemaVersion, "migration steps do not reach this version");
  if (auto s = txn.put(dbs.meta, schema::kMetaSchemaVersion, encodeVersion(kSchemaVersion)); !s) {
    return s.error();
  }
  return done;
}

Result<Opened> initSchema(Txn& txn, const std::string& dir, const Notice& notice) {
  Opened o;
  const std::pair<const char*, MDB_dbi*> all[] = {{kDbDocuments, &o.dbs.documents},
                                                  {kDbProducts, &o.dbs.products},
                                                  {kDbMerkle, &o.dbs.merkle},
                                                  {kDbLeafEntries, &o.dbs.leafEntries},
                                                  {kDbListings, &o.dbs.listings}};

  auto meta = txn.openDb(kDbMeta, 0);
  if (!meta) return meta.error();
  if (!*meta) {
    // A new store, provided the environment holds nothing else.
    auto main = txn.openDb(nullptr, 0);
    if (!main) return main.error();
    auto entries = txn.entries(**main);
    if (!entries) return entries.error();
    if (*entries != 0) {
      return makeError(ErrorCode::kInvalidArgument,
                       "data dir " + dir +
                           " holds an LMDB database that is not a Chorus store; "
                           "point the node at an empty directory or at its own data dir");
    }
    auto created = txn.openDb(kDbMeta, MDB_CREATE);
    if (!created) return created.error();
    o.dbs.meta = **created;
    for (auto [name, dbi] : all) {
      auto db = txn.openDb(name, MDB_CREATE);
      if (!db) return db.error();
      *dbi = **db;
    }
    do {
      randombytes_buf(&o.replica, sizeof o.replica);
    } while (o.replica == 0);
    std::string version = encodeVersion(kSchemaVersion), replica, hw;
    schema::putLe64(replica, o.replica);
    schema::putLe64(hw, 0);
    for (auto [k, v] : {std::pair{schema::kMetaSchemaVersion, std::string_view(version)},
                        std::pair{schema::kMetaReplicaId, std::string_view(replica)},
                        std::pair{schema::kMetaHlcHighWater, std::string_view(hw)}}) {
      if (auto s = txn.put(o.dbs.meta, k, v); !s) return s.error();
    }
    return o;
  }
  o.dbs.meta = **meta;

  std::string_view v;
  auto found = txn.get(o.dbs.meta, schema::kMetaSchemaVersion, &v);
  if (!found) return found.error();
  if (!*found || v.size() != 4) {
    return corruption("data dir " + dir + " has no readable schema version in its meta database");
  }
  uint32_t version = 0;
  for (int i = 3; i >= 0; --i) version = (version << 8) | uint8_t(v[static_cast<size_t>(i)]);
  if (version < kOldestMigrated || version > kSchemaVersion) {
    return makeError(
        ErrorCode::kInvalidArgument,
        "data dir " + dir + " uses storage schema version " + std::to_string(version) +
            (version > kSchemaVersion ? ", newer than this build knows" : ", which never existed") +
            ": this build of Chorus reads versions " + std::to_string(kOldestMigrated) + " to " +
            std::to_string(kSchemaVersion) + " (and migrates older ones to " +
            std::to_string(kSchemaVersion) +
            " at open). Run the Chorus release that wrote it (or a newer one), or move the "
            "directory aside and let the node resync from its peers");
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
    if (version < kFirstListingsVersion && std::string_view(name) == kDbListings) continue;
    auto db = txn.openDb(name, 0);
    if (!db) return db.error();
    if (!*db) return corruption("data dir " + dir + " lacks the database " + name);
    *dbi = **db;
  }
  if (version < kSchemaVersion) {
    auto done = migrate(txn, o.dbs, version);
    if (!done) return done.error();
    tell(notice, "data dir " + dir + " migrated from storage schema version " +
                     std::to_string(version) + " to " + std::to_string(kSchemaVersion) + " (" +
                     *done + ")");
  }
  return o;
}

}  // namespace

}  // namespace internal

using internal::Env;
using internal::Txn;

Result<std::unique_ptr<Store>> Store::open(Options options) {
  if (options.dir.empty()) return makeError(ErrorCode::kInvalidArgument, "no data dir given");
  if (options.maxBatch == 0) return makeError(ErrorCode::kInvalidArgument, "maxBatch must be >= 1");
  if (!options.clock) return makeError(ErrorCode::kInvalidArgument, "no physical clock given");
  if (auto made = internal::makePrivateDir(options.dir, options.notice); !made.ok()) {
    return made.error();
  }
  if (sodium_init() < 0) return makeError(ErrorCode::kInternal, "libsodium failed to initialize");

  auto lock = internal::LockFile::acquire(options.dir);
  if (!lock) return lock.error();

  uint64_t mapBytes = std::max<uint64_t>(options.initialMapBytes, 1 << 20);
  auto env = Env::create(16, internal::kMaxReaders, mapBytes);
  if (!env) return env.error();
  unsigned flags = MDB_NOTLS | (options.unsafeNoSync ? MDB_NOSYNC : 0u);
  if (auto s = env->open(options.dir, flags, 0600); !s) return s.error();
  // LMDB's mode applies only to files it creates: a store made by an older
  // version (0644) is tightened here.
  internal::tightenFile(options.dir + "/data.mdb", options.notice);
  internal::tightenFile(options.dir + "/lock.mdb", options.notice);
  if (auto s = env->readerCheck(); !s) return s.error();

  // One write transaction checks (or creates) the schema and migrates an
  // older version; a migration that fills the map grows it and starts over.
  Result<internal::Opened> opened = makeError(ErrorCode::kInternal, "not opened");
  for (;;) {
    Txn txn;
    if (auto s = txn.begin(*env, 0); !s) return s.error();
    opened = internal::initSchema(txn, options.dir, options.notice);
    Status committed = opened ? txn.commit() : Status(opened.error());
    if (committed) break;
    if (!txn.mapFull()) return committed.error();
    txn.abort();
    auto size = env->mapSize();
    if (!size) return size.error();
    if (*size >= internal::kMaxMapBytes) return committed.error();
    if (auto s = env->setMapSize(std::min(*size * 2, internal::kMaxMapBytes)); !s) return s.error();
  }

  return std::unique_ptr<Store>(new internal::StoreImpl(std::move(options), std::move(lock).value(),
                                                        std::move(env).value(), opened->dbs,
                                                        opened->replica, opened->highWater));
}

}  // namespace chorus::storage
