// Hot backup and restore (storage/backup.h): Store::backup writing a
// compacted copy and its manifest, the manifest's encoding, verifyBackup
// and restoreBackup.
#include "storage/backup.h"

#include <dirent.h>
#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "storage/internal/store-impl.h"
#include "storage/key-schema.h"

namespace chorus::storage {

namespace {

using internal::Dbs;
using internal::Env;
using internal::Txn;

// Files are read and copied in pieces of this size: memory stays bounded
// whatever the store's size.
constexpr size_t kChunkBytes = size_t{1} << 20;
constexpr const char* kManifestHeader = "chorus-backup";
constexpr const char* kStagingDir = "restore-staging";

Error ioError(const std::string& what, int err) {
  return makeError(ErrorCode::kIo, what + ": " + std::strerror(err));
}

// An owned file descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&&) = delete;
  Fd(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  }

 private:
  int fd_;
};

Status writeAll(int fd, const char* data, size_t size, const std::string& path) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ioError("cannot write " + path, errno);
    data += n;
    size -= static_cast<size_t>(n);
  }
  return okStatus();
}

// fsync of a file or directory by path.
Status syncPath(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ioError("cannot open " + path + " to sync it", errno);
  if (::fsync(fd.get()) != 0) return ioError("cannot sync " + path, errno);
  return okStatus();
}

class Blake256 {
 public:
  Blake256() { crypto_generichash_init(&state_, nullptr, 0, 32); }
  void update(const char* data, size_t size) {
    crypto_generichash_update(&state_, reinterpret_cast<const unsigned char*>(data), size);
  }
  std::array<uint8_t, 32> final() {
    std::array<uint8_t, 32> out{};
    crypto_generichash_final(&state_, out.data(), out.size());
    return out;
  }

 private:
  crypto_generichash_state state_;
};

// Keeps the dirty pages of a file being written sequentially to about two
// windows: each full window is handed to writeback at once, and the one
// before it waited for and dropped from the page cache. Without it a
// backup leaves a gigabyte dirty, and the store's next fsync (ext4 commits
// every file's ordered data with its journal) waits for all of it: writes
// stalled for most of a second (p99 687 ms at 1M reviews, 1,000 writes/s).
// Write p99 during the backup by window (chorus-bench backup, 2 shared
// cores at load 8-10, p99 before the backup 36-172 ms): 1 MiB 96-171 ms,
// 2 MiB 35-107, 4 MiB 64-132, 8 MiB 186-202, 32 MiB 457. Errors are
// ignored: the final fsync reports any that matter.
class WriteBehind {
 public:
  static constexpr uint64_t kWindowBytes = uint64_t{2} << 20;
  WriteBehind(int fd, bool drop) : fd_(fd), drop_(drop) {}
  // `end`: bytes written so far.
  void wrote(uint64_t end) {
    while (end - started_ >= kWindowBytes) {
      (void)::sync_file_range(fd_, static_cast<off_t>(started_), kWindowBytes,
                              SYNC_FILE_RANGE_WRITE);
      if (started_ >= kWindowBytes) {
        auto previous = static_cast<off_t>(started_ - kWindowBytes);
        (void)::sync_file_range(
            fd_, previous, kWindowBytes,
            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
        if (drop_) (void)::posix_fadvise(fd_, previous, kWindowBytes, POSIX_FADV_DONTNEED);
      }
      started_ += kWindowBytes;
    }
  }

 private:
  int fd_;
  bool drop_;
  uint64_t started_ = 0;  // windows before this offset were handed to writeback
};

// `dir` created 0700 (with its parents) when missing; an existing one must
// be an empty directory.
Status prepareEmptyDir(const std::string& dir) {
  std::error_code ec;
  auto parent = std::filesystem::path(dir).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (ec)
    return makeError(ErrorCode::kIo, "cannot create " + parent.string() + ": " + ec.message());
  if (::mkdir(dir.c_str(), 0700) == 0) {
    if (::chmod(dir.c_str(), 0700) != 0) return ioError("cannot chmod " + dir, errno);
    return okStatus();
  }
  if (errno != EEXIST) return ioError("cannot create backup dir " + dir, errno);
  if (!std::filesystem::is_directory(dir, ec)) {
    return makeError(ErrorCode::kInvalidArgument, "backup dir " + dir + " is not a directory");
  }
  if (!std::filesystem::is_empty(dir, ec) || ec) {
    return makeError(ErrorCode::kInvalidArgument,
                     "backup dir " + dir +
                         " is not empty; give a new directory (a backup never overwrites files)");
  }
  return okStatus();
}

uint64_t nowUnixMillis() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

// What a copy of a store says about itself, read from its own meta and tree.
struct CopyFacts {
  uint32_t schemaVersion = 0;
  crdt::ReplicaId replicaId = 0;
  uint64_t hlcHighWater = 0;
  Hash merkleRoot{};
  uint64_t keys = 0;
};

// Opens <dir>/data.mdb read-only without a lock file (the directory is not
// modified), reads its facts and, with `deep` and this build's schema, runs
// the whole verify() on it.
Result<CopyFacts> readCopy(const std::string& dir, bool deep) {
  std::string path = dir + "/" + kBackupDataFile;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return ioError("cannot stat " + path, errno);
  auto env = Env::create(16, 8, std::max<uint64_t>(uint64_t(st.st_size), 1 << 20));
  if (!env) return env.error();
  if (auto s = env->open(dir, MDB_RDONLY | MDB_NOLOCK | MDB_NOTLS, 0600); !s) return s.error();
  Txn txn;
  if (auto s = txn.begin(*env, MDB_RDONLY); !s) return s.error();
  auto notStore = [&](const std::string& why) {
    return makeError(ErrorCode::kCorruption, path + " is not a readable Chorus store: " + why);
  };
  auto meta = txn.openDb(internal::kDbMeta, 0);
  if (!meta) return meta.error();
  if (!*meta) return notStore("it has no meta database");
  CopyFacts f;
  std::string_view v;
  auto found = txn.get(**meta, schema::kMetaSchemaVersion, &v);
  if (!found) return found.error();
  if (!*found || v.size() != 4) return notStore("no schema version");
  for (int i = 3; i >= 0; --i) {
    f.schemaVersion = (f.schemaVersion << 8) | uint8_t(v[static_cast<size_t>(i)]);
  }
  if (f.schemaVersion > kSchemaVersion) {
    return makeError(ErrorCode::kInvalidArgument,
                     path + " uses storage schema version " + std::to_string(f.schemaVersion) +
                         ", newer than this build knows (" + std::to_string(kSchemaVersion) +
                         "); use the Chorus release that wrote it or a newer one");
  }
  found = txn.get(**meta, schema::kMetaReplicaId, &v);
  if (!found) return found.error();
  if (!*found || v.size() != 8) return notStore("no replica id");
  f.replicaId = schema::getLe64(v);
  found = txn.get(**meta, schema::kMetaHlcHighWater, &v);
  if (!found) return found.error();
  if (!*found || v.size() != 8) return notStore("no HLC high-water mark");
  f.hlcHighWater = schema::getLe64(v);

  Dbs dbs;
  dbs.meta = **meta;
  const std::pair<const char*, MDB_dbi*> all[] = {
      {internal::kDbDocuments, &dbs.documents}, {internal::kDbProducts, &dbs.products},
      {internal::kDbMerkle, &dbs.merkle},       {internal::kDbLeafEntries, &dbs.leafEntries},
      {internal::kDbListings, &dbs.listings},   {internal::kDbChanges, &dbs.changes}};
  for (auto [name, dbi] : all) {
    auto db = txn.openDb(name, 0);
    if (!db) return db.error();
    if (!*db) {
      // Older schemas lack some databases; this build's must have them all.
      if (f.schemaVersion == kSchemaVersion) return notStore(std::string("no database ") + name);
      continue;
    }
    *dbi = **db;
  }
  if (dbs.documents == 0 || dbs.merkle == 0) return notStore("no documents or Merkle tree");
  auto keys = txn.entries(dbs.documents);
  if (!keys) return keys.error();
  f.keys = *keys;
  found = txn.get(dbs.merkle, schema::merkleNodeKey(0, 0), &v);
  if (!found) return found.error();
  if (*found) {
    if (v.size() != f.merkleRoot.size()) return notStore("a Merkle root of the wrong size");
    std::copy(v.begin(), v.end(), reinterpret_cast<char*>(f.merkleRoot.data()));
  }
  if (deep && f.schemaVersion == kSchemaVersion) {
    if (auto s = internal::verifyDbs(txn, dbs); !s) return s.error();
  }
  return f;
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// Compares a copy's facts with its manifest; kCorruption names the first
// difference.
Status sameFacts(const CopyFacts& f, const BackupManifest& m, const std::string& where) {
  auto differs = [&](const std::string& what, const std::string& copy, const std::string& man) {
    return makeError(ErrorCode::kCorruption, where + ": the copy's " + what + " (" + copy +
                                                 ") differs from the manifest's (" + man +
                                                 "); the backup is damaged, do not restore it");
  };
  if (f.schemaVersion != m.schemaVersion) {
    return differs("schema version", std::to_string(f.schemaVersion),
                   std::to_string(m.schemaVersion));
  }
  if (f.replicaId != m.replicaId) {
    return differs("replica id", hex64(f.replicaId), hex64(m.replicaId));
  }
  if (f.keys != m.keys) return differs("key count", std::to_string(f.keys), std::to_string(m.keys));
  if (f.merkleRoot != m.merkleRoot) {
    return differs("Merkle root", hexOf(f.merkleRoot.data(), 16), hexOf(m.merkleRoot.data(), 16));
  }
  if (f.hlcHighWater != m.hlcHighWater) {
    return differs("HLC high-water mark", std::to_string(f.hlcHighWater),
                   std::to_string(m.hlcHighWater));
  }
  return okStatus();
}

Status writeManifest(const std::string& dir, const BackupManifest& m) {
  std::string tmp = dir + "/" + kBackupManifestFile + ".tmp";
  std::string path = dir + "/" + kBackupManifestFile;
  {
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) return ioError("cannot create " + tmp, errno);
    std::string text = m.encode();
    if (auto s = writeAll(fd.get(), text.data(), text.size(), tmp); !s) return s;
    if (::fsync(fd.get()) != 0) return ioError("cannot sync " + tmp, errno);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) return ioError("cannot rename " + tmp, errno);
  return syncPath(dir);
}

// Copies `from` to a new file `to` (0600) in chunks, hashing what it reads,
// and syncs it.
Result<FileChecksum> copyFile(const std::string& from, const std::string& to) {
  Fd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return ioError("cannot open " + from, errno);
  Fd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!out) return ioError("cannot create " + to, errno);
  std::vector<char> buf(kChunkBytes);
  Blake256 hash;
  FileChecksum r;
  for (;;) {
    ssize_t n = ::read(in.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ioError("cannot read " + from, errno);
    if (n == 0) break;
    hash.update(buf.data(), static_cast<size_t>(n));
    r.bytes += static_cast<uint64_t>(n);
    if (auto s = writeAll(out.get(), buf.data(), static_cast<size_t>(n), to); !s) return s.error();
  }
  if (::fsync(out.get()) != 0) return ioError("cannot sync " + to, errno);
  r.checksum = hash.final();
  return r;
}

// Removes a staging dir left by a failed or interrupted restore: only the
// files a restore puts there, then the dir itself.
Status removeStaging(const std::string& staging) {
  for (const char* name : {"data.mdb", "lock.mdb", "chorus.lock"}) {
    std::string p = staging + "/" + name;
    if (::unlink(p.c_str()) != 0 && errno != ENOENT) return ioError("cannot remove " + p, errno);
  }
  if (::rmdir(staging.c_str()) != 0 && errno != ENOENT) {
    return ioError("cannot remove " + staging + " (it holds files a restore did not put there)",
                   errno);
  }
  return okStatus();
}

// Writes `replica` into the meta database of the store in `dir`.
Status setReplicaId(const std::string& dir, crdt::ReplicaId replica) {
  struct stat st {};
  std::string path = dir + "/" + kBackupDataFile;
  if (::stat(path.c_str(), &st) != 0) return ioError("cannot stat " + path, errno);
  // Room for the one page a meta update dirties, beyond the file itself.
  auto env = Env::create(16, 8, uint64_t(st.st_size) + (64 << 20));
  if (!env) return env.error();
  if (auto s = env->open(dir, MDB_NOTLS, 0600); !s) return s;
  Txn txn;
  if (auto s = txn.begin(*env, 0); !s) return s;
  auto meta = txn.openDb(internal::kDbMeta, 0);
  if (!meta) return meta.error();
  if (!*meta) return makeError(ErrorCode::kCorruption, path + " has no meta database");
  std::string v;
  schema::putLe64(v, replica);
  if (auto s = txn.put(**meta, schema::kMetaReplicaId, v); !s) return s;
  return txn.commit();
}

}  // namespace

std::string hexOf(const uint8_t* bytes, size_t size) {
  return schema::toHex(std::string_view(reinterpret_cast<const char*>(bytes), size));
}

std::string BackupManifest::encode() const {
  std::string out =
      std::string(kManifestHeader) + " " + std::to_string(kBackupFormatVersion) + "\n";
  auto line = [&out](const char* k, const std::string& v) {
    out += std::string(k) + "=" + v + "\n";
  };
  line("node-id", nodeId);
  line("replica-id", hex64(replicaId));
  line("schema-version", std::to_string(schemaVersion));
  line("merkle-root", hexOf(merkleRoot.data(), merkleRoot.size()));
  line("keys", std::to_string(keys));
  line("hlc-high-water", std::to_string(hlcHighWater));
  line("file-bytes", std::to_string(fileBytes));
  line("checksum", "blake2b-256:" + hexOf(checksum.data(), checksum.size()));
  line("created-unix-ms", std::to_string(createdUnixMillis));
  return out;
}

Result<BackupManifest> BackupManifest::decode(std::string_view text) {
  auto bad = [](const std::string& why) {
    return makeError(ErrorCode::kCorruption, "backup manifest unreadable: " + why);
  };
  std::vector<std::string_view> lines;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    lines.push_back(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
  }
  std::string header = std::string(kManifestHeader) + " ";
  if (lines.empty() || lines[0].substr(0, header.size()) != header) {
    return bad("it does not start with '" + header + "<version>'");
  }
  if (lines[0].substr(header.size()) != std::to_string(kBackupFormatVersion)) {
    return bad("backup format " + std::string(lines[0].substr(header.size())) +
               ", this build reads format " + std::to_string(kBackupFormatVersion));
  }
  std::map<std::string, std::string, std::less<>> kv;
  for (size_t i = 1; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;
    size_t eq = lines[i].find('=');
    if (eq == std::string_view::npos) return bad("line " + std::to_string(i + 1) + " has no '='");
    kv[std::string(lines[i].substr(0, eq))] = std::string(lines[i].substr(eq + 1));
  }
  auto field = [&](const char* k) -> std::optional<std::string> {
    auto it = kv.find(k);
    if (it == kv.end()) return std::nullopt;
    return it->second;
  };
  auto number = [&](const char* k, uint64_t& out) -> bool {
    auto v = field(k);
    if (!v || v->empty() || v->size() > 20) return false;
    uint64_t n = 0;
    for (char c : *v) {
      if (c < '0' || c > '9') return false;
      uint64_t next = n * 10 + uint64_t(c - '0');
      if (next / 10 != n) return false;  // overflow
      n = next;
    }
    out = n;
    return true;
  };
  auto bytes = [&](const char* k, std::string_view prefix, uint8_t* out, size_t size) -> bool {
    auto v = field(k);
    if (!v || v->substr(0, prefix.size()) != prefix) return false;
    auto raw = schema::fromHex(std::string_view(*v).substr(prefix.size()));
    if (!raw || raw->size() != size) return false;
    std::copy(raw->begin(), raw->end(), reinterpret_cast<char*>(out));
    return true;
  };
  BackupManifest m;
  auto node = field("node-id");
  if (!node) return bad("no node-id");
  m.nodeId = *node;
  uint8_t replica[8];
  if (!bytes("replica-id", "", replica, 8)) return bad("no valid replica-id");
  for (uint8_t b : replica) m.replicaId = (m.replicaId << 8) | b;
  uint64_t schemaVersion = 0;
  if (!number("schema-version", schemaVersion) || schemaVersion > UINT32_MAX) {
    return bad("no valid schema-version");
  }
  m.schemaVersion = static_cast<uint32_t>(schemaVersion);
  if (!bytes("merkle-root", "", m.merkleRoot.data(), m.merkleRoot.size())) {
    return bad("no valid merkle-root");
  }
  if (!number("keys", m.keys)) return bad("no valid keys");
  if (!number("hlc-high-water", m.hlcHighWater)) return bad("no valid hlc-high-water");
  if (!number("file-bytes", m.fileBytes)) return bad("no valid file-bytes");
  if (!bytes("checksum", "blake2b-256:", m.checksum.data(), m.checksum.size())) {
    return bad("no valid checksum (blake2b-256:<64 hex>)");
  }
  if (!number("created-unix-ms", m.createdUnixMillis)) return bad("no valid created-unix-ms");
  return m;
}

Result<BackupManifest> readBackupManifest(const std::string& dir) {
  std::string path = dir + "/" + kBackupManifestFile;
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) {
      return makeError(ErrorCode::kNotFound,
                       dir + " holds no " + kBackupManifestFile +
                           ": it is not a Chorus backup, or one that did not finish");
    }
    return ioError("cannot open " + path, errno);
  }
  std::string text;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ioError("cannot read " + path, errno);
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > 64 * 1024) return makeError(ErrorCode::kCorruption, path + " is too large");
  }
  auto m = BackupManifest::decode(text);
  if (!m) return makeError(ErrorCode::kCorruption, path + ": " + m.error().message);
  return m;
}

Result<FileChecksum> checksumFile(const std::string& path) {
  if (sodium_init() < 0) return makeError(ErrorCode::kInternal, "libsodium failed to initialize");
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ioError("cannot open " + path, errno);
  (void)::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  std::vector<char> buf(kChunkBytes);
  Blake256 hash;
  FileChecksum r;
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ioError("cannot read " + path, errno);
    if (n == 0) break;
    hash.update(buf.data(), static_cast<size_t>(n));
    r.bytes += static_cast<uint64_t>(n);
  }
  r.checksum = hash.final();
  return r;
}

Result<BackupManifest> verifyBackup(const std::string& dir) {
  auto m = readBackupManifest(dir);
  if (!m) return m.error();
  std::string path = dir + "/" + kBackupDataFile;
  auto sum = checksumFile(path);
  if (!sum) return sum.error();
  if (sum->bytes != m->fileBytes) {
    return makeError(ErrorCode::kCorruption, path + " holds " + std::to_string(sum->bytes) +
                                                 " bytes, the manifest says " +
                                                 std::to_string(m->fileBytes) +
                                                 "; the backup is damaged, do not restore it");
  }
  if (sum->checksum != m->checksum) {
    return makeError(ErrorCode::kCorruption, path +
                                                 " does not match the manifest's checksum; the "
                                                 "backup is damaged, do not restore it");
  }
  auto facts = readCopy(dir, true);
  if (!facts) return facts.error();
  if (auto s = sameFacts(*facts, *m, dir); !s) return s.error();
  return m;
}

Result<BackupManifest> restoreBackup(const std::string& backupDir, const std::string& dataDir,
                                     const RestoreOptions& options) {
  auto tell = [&](const std::string& what) {
    if (options.notice) options.notice(what);
  };
  // 1. The backup, as it is on disk (consumed: step 5 is its deep check).
  auto manifest = options.consume ? readBackupManifest(backupDir) : verifyBackup(backupDir);
  if (!manifest) return manifest.error();
  if (options.consume && !options.checksumChecked) {
    auto sum = checksumFile(backupDir + "/" + kBackupDataFile);
    if (!sum) return sum.error();
    if (sum->bytes != manifest->fileBytes || sum->checksum != manifest->checksum) {
      return makeError(ErrorCode::kCorruption,
                       backupDir + "/" + kBackupDataFile +
                           " does not match the manifest's size and checksum; the backup is "
                           "damaged, do not restore it");
    }
  }

  // 2. The target: no store in it, and ours alone while we work.
  std::error_code ec;
  std::filesystem::create_directories(dataDir, ec);
  if (ec)
    return makeError(ErrorCode::kIo, "cannot create data dir " + dataDir + ": " + ec.message());
  if (::chmod(dataDir.c_str(), 0700) != 0) return ioError("cannot chmod " + dataDir, errno);
  std::string target = dataDir + "/" + kBackupDataFile;
  if (::access(target.c_str(), F_OK) == 0) {
    return makeError(ErrorCode::kInvalidArgument,
                     "data dir " + dataDir +
                         " already holds a store (data.mdb); restore into an empty directory, "
                         "or move that store aside first");
  }
  auto lock = internal::LockFile::acquire(dataDir);
  if (!lock) return lock.error();
  std::string staging = dataDir + "/" + kStagingDir;
  if (auto s = removeStaging(staging); !s) return s.error();
  if (::mkdir(staging.c_str(), 0700) != 0) return ioError("cannot create " + staging, errno);
  auto fail = [&](const Error& e) -> Result<BackupManifest> {
    (void)removeStaging(staging);
    return e;
  };

  // 3. The copy, checked against the manifest as it is written (the file
  // may have changed since step 1); consumed: moved.
  if (options.consume) {
    if (::rename((backupDir + "/" + kBackupDataFile).c_str(),
                 (staging + "/" + kBackupDataFile).c_str()) != 0) {
      return fail(ioError("cannot move " + backupDir + "/" + kBackupDataFile + " into " + staging +
                              " (restore with consume needs one file system)",
                          errno));
    }
  }
  auto copied = options.consume ? Result<FileChecksum>(FileChecksum{manifest->checksum,
                                                                    manifest->fileBytes})
                                : copyFile(backupDir + "/" + kBackupDataFile,
                                           staging + "/" + kBackupDataFile);
  if (!copied) return fail(copied.error());
  if (copied->bytes != manifest->fileBytes || copied->checksum != manifest->checksum) {
    return fail(makeError(ErrorCode::kCorruption,
                          backupDir + "/" + kBackupDataFile +
                              " changed while it was copied; the copy does not match the "
                              "manifest's checksum"));
  }

  // 4. The replica id.
  crdt::ReplicaId replica = manifest->replicaId;
  if (!options.keepReplicaId) {
    do {
      randombytes_buf(&replica, sizeof replica);
    } while (replica == 0 || replica == manifest->replicaId);
    if (auto s = setReplicaId(staging, replica); !s) return fail(s.error());
    tell("restored store gets the new replica id " + hex64(replica) + " (the backup's was " +
         hex64(manifest->replicaId) + ")");
  } else {
    tell("restored store keeps the backup's replica id " + hex64(replica) +
         " (--replace): the node it came from must never run again");
  }

  // 5. Opened as a store (an older schema migrates here), verified and
  // compared with the manifest.
  {
    Options o;
    o.dir = staging;
    o.notice = options.notice;
    auto store = Store::open(std::move(o));
    if (!store) return fail(store.error());
    if (auto s = (*store)->verify(); !s) return fail(s.error());
    auto root = (*store)->merkleRoot();
    if (!root) return fail(root.error());
    uint64_t keys = (*store)->stats().documents;
    if (*root != manifest->merkleRoot || keys != manifest->keys) {
      return fail(makeError(ErrorCode::kCorruption,
                            "the restored store's Merkle root or key count (" +
                                hexOf(root->data(), root->size()) + ", " + std::to_string(keys) +
                                ") differs from the backup manifest's (" +
                                hexOf(manifest->merkleRoot.data(), 16) + ", " +
                                std::to_string(manifest->keys) + ")"));
    }
    if ((*store)->replicaId() != replica) {
      return fail(makeError(ErrorCode::kInternal, "the restored store's replica id was not set"));
    }
  }

  // 6. Into place: one rename, so dataDir holds either no store or this one.
  if (::rename((staging + "/" + kBackupDataFile).c_str(), target.c_str()) != 0) {
    return fail(ioError("cannot move the restored store into " + dataDir, errno));
  }
  if (auto s = syncPath(dataDir); !s) return s.error();
  (void)removeStaging(staging);
  manifest->replicaId = replica;
  return manifest;
}

namespace internal {

Result<BackupManifest> StoreImpl::backup(const std::string& dir, const BackupOptions& options) {
  if (auto s = prepareEmptyDir(dir); !s) return s.error();
  std::string path = dir + "/" + kBackupDataFile;
  Fd out(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!out) return ioError("cannot create " + path, errno);
  auto fail = [&](const Error& e) -> Result<BackupManifest> {
    ::unlink(path.c_str());
    ::unlink((dir + "/" + kBackupManifestFile + ".tmp").c_str());
    return e;
  };

  // Growing the map must wait for the copy (it remaps the file under the
  // copy's transaction): grow it now if the copy may take long enough for
  // writes to fill it.
  auto used = env_.usedBytes();
  auto size = env_.mapSize();
  if (used && size && *used > *size / 2) {
    if (auto s = growMap(); !s) return fail(s.error());
  }

  // LMDB writes the compacted copy into a pipe; this thread hashes and
  // writes it to the file, so the checksum costs no second read.
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return fail(ioError("cannot create a pipe", errno));
  Fd readEnd(fds[0]), writeEnd(fds[1]);
  (void)::fcntl(writeEnd.get(), F_SETPIPE_SZ, static_cast<int>(kChunkBytes));  // fewer wakeups
  Blake256 hash;
  uint64_t bytes = 0;
  Status written = okStatus();
  WriteBehind behind(out.get(), options.dropFromCache);
  std::thread drain([&] {
    std::vector<char> buf(kChunkBytes);
    for (;;) {
      ssize_t n = ::read(readEnd.get(), buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        if (n < 0) written = ioError("cannot read the copy's pipe", errno);
        break;
      }
      hash.update(buf.data(), static_cast<size_t>(n));
      bytes += static_cast<uint64_t>(n);
      // After a failed write, go on reading (and dropping) so LMDB finishes.
      if (written) written = writeAll(out.get(), buf.data(), static_cast<size_t>(n), path);
      if (written) behind.wrote(bytes);
    }
  });
  gate_.enterShared();
  Status copied = env_.copyCompact(writeEnd.get());
  gate_.exitShared();
  writeEnd.reset();
  drain.join();
  readEnd.reset();
  if (!copied) return fail(copied.error());
  if (!written) return fail(written.error());
  if (options.sync && ::fsync(out.get()) != 0) return fail(ioError("cannot sync " + path, errno));
  out.reset();

  auto facts = readCopy(dir, false);
  if (!facts) return fail(facts.error());
  BackupManifest m;
  m.nodeId = options.nodeId;
  m.replicaId = facts->replicaId;
  m.schemaVersion = facts->schemaVersion;
  m.merkleRoot = facts->merkleRoot;
  m.keys = facts->keys;
  m.hlcHighWater = facts->hlcHighWater;
  m.fileBytes = bytes;
  m.checksum = hash.final();
  m.createdUnixMillis = nowUnixMillis();
  if (auto s = writeManifest(dir, m); !s) return fail(s.error());
  return m;
}

}  // namespace internal

}  // namespace chorus::storage
