#include "gossip/snapshot-server.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>

#include "gossip/frame.h"
#include "storage/backup.h"

namespace chorus::gossip {

namespace {

// CRC-32C (Castagnoli, as iSCSI and ext4 use it): with SSE 4.2 eight bytes
// per instruction (several GB/s, against BLAKE2b's one), else by table.
uint32_t crc32cTable(uint32_t crc, const uint8_t* p, size_t n) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
      t[i] = c;
    }
    return t;
  }();
  for (size_t i = 0; i < n; ++i) crc = (crc >> 8) ^ table[(crc ^ p[i]) & 0xff];
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32cSse42(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    c = __builtin_ia32_crc32di(c, word);
  }
  auto c32 = uint32_t(c);
  for (; n > 0; --n, ++p) c32 = __builtin_ia32_crc32qi(c32, *p);
  return c32;
}
#endif

}  // namespace

uint64_t snapshotChunkChecksum(const uint8_t* data, size_t size) {
#if defined(__x86_64__)
  static const bool sse42 = __builtin_cpu_supports("sse4.2");
  if (sse42) return ~crc32cSse42(~0u, data, size);
#endif
  return ~crc32cTable(~0u, data, size);
}

// One snapshot: its directory, the copy's progress and its readers.
struct SnapshotServer::Snapshot {
  std::string id;
  std::string dir;
  uint64_t createdAt = 0;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  uint64_t lastUsed = 0;
  size_t users = 0;  // transfers attached
  int fd = -1;       // data.mdb, for reading, once the copy created it

  // Written by the worker thread under `mu`, taken by the loop.
  std::mutex mu;
  bool copied = false;
  std::optional<Error> copyError;
  std::optional<storage::BackupManifest> copyManifest;

  // Loop thread only.
  bool ready = false;   // the copy is complete: `manifest` and `size` are known
  bool failed = false;  // the copy failed: never served
  std::string manifest;
  uint64_t size = 0;

  ~Snapshot() {
    if (fd >= 0) ::close(fd);
  }

  // Bytes that may be sent: all of them once ready, else whole chunks
  // written so far.
  uint64_t available(size_t chunkBytes) {
    if (fd < 0) fd = ::open((dir + "/" + storage::kBackupDataFile).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    if (ready) return size;
    struct stat st {};
    if (::fstat(fd, &st) != 0) return 0;
    return uint64_t(st.st_size) / chunkBytes * chunkBytes;
  }
};

namespace {

std::string randomId() {
  uint8_t bytes[8];
  randombytes_buf(bytes, sizeof bytes);
  return storage::hexOf(bytes, sizeof bytes);
}

}  // namespace

SnapshotServer::SnapshotServer(SnapshotServerOptions options, storage::Store& store,
                               std::function<void()> wake)
    : options_(std::move(options)), store_(store), wake_(std::move(wake)) {
  if (!options_.dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(options_.dir, ec);  // an earlier run's: nobody resumes those
  }
}

SnapshotServer::~SnapshotServer() {
  if (worker_.joinable()) worker_.join();
  snapshots_.clear();
  if (!options_.dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(options_.dir, ec);
  }
}

std::string SnapshotServer::frame(const std::function<void(wire::Snapshot::Builder)>& fill) {
  capnp::MallocMessageBuilder message(options_.chunkBytes / sizeof(capnp::word) + 256);
  fill(newFrame(message, options_.nodeId).initSnapshot());
  return encodeFrame(message);
}

void SnapshotServer::fail(uint64_t conn, const std::string& why) {
  if (auto it = transfers_.find(conn); it != transfers_.end()) {
    --it->second.snapshot->users;  // ended here: nothing more is sent on it
    transfers_.erase(it);
  }
  sends_.push_back({conn, frame([&](auto s) { s.setError(why); }), false});
  sends_.push_back({conn, {}, true});
}

void SnapshotServer::info(uint64_t conn) {
  uint64_t keys = store_.stats().documents;
  sends_.push_back({conn, frame([&](auto s) {
                      auto i = s.initInfo();
                      i.setKeys(keys);
                      i.setSchemaVersion(storage::kSchemaVersion);
                      i.setServes(!options_.dir.empty());
                    }),
                    false});
}

void SnapshotServer::received(uint64_t now, uint64_t conn, wire::Snapshot::Reader message) {
  if (!transfers_.count(conn)) quiet_[conn] = now;  // (a transfer has its own clock)
  switch (message.which()) {
    case wire::Snapshot::QUERY:
      info(conn);
      return;
    case wire::Snapshot::REQUEST:
      serve(now, conn, message.getRequest());
      return;
    case wire::Snapshot::ACK: {
      auto it = transfers_.find(conn);
      if (it == transfers_.end()) return fail(conn, "ack without a transfer");
      Transfer& t = it->second;
      uint64_t offset = message.getAck();
      if (offset > t.next) return fail(conn, "ack beyond what was sent");
      t.acked = std::max(t.acked, offset);
      t.lastHeard = now;
      pump(conn, t);
      return;
    }
    default:
      return fail(conn, "unexpected snapshot message");
  }
}

std::shared_ptr<SnapshotServer::Snapshot> SnapshotServer::newSnapshot(uint64_t now) {
  if (worker_.joinable()) worker_.join();  // (a finished copy: one runs at a time)
  // Older snapshots nobody reads are superseded: on disk there are at most
  // the ones transfers use (maxTransfers) and this one.
  for (auto it = snapshots_.begin(); it != snapshots_.end();) {
    if (it->second->users == 0) {
      std::error_code ec;
      std::filesystem::remove_all(it->second->dir, ec);
      it = snapshots_.erase(it);
    } else {
      ++it;
    }
  }
  auto s = std::make_shared<Snapshot>();
  s->id = randomId();
  s->dir = options_.dir + "/" + s->id;
  s->createdAt = s->lastUsed = now;
  std::error_code ec;
  std::filesystem::create_directories(options_.dir, ec);
  ::chmod(options_.dir.c_str(), 0700);
  ++made_;
  worker_ = std::thread([this, s] {
    storage::BackupOptions o;
    o.nodeId = options_.nodeId;
    o.sync = false;           // deleted after use; a crash discards it anyway
    o.dropFromCache = false;  // streamed at once: read back from the page cache
    auto made = store_.backup(s->dir, o);
    {
      std::lock_guard lock(s->mu);
      s->copied = true;
      if (made.ok()) {
        s->copyManifest = std::move(made).value();
      } else {
        s->copyError = made.error();
      }
    }
    wake_();
  });
  snapshots_[s->id] = s;
  return s;
}

void SnapshotServer::serve(uint64_t now, uint64_t conn, wire::SnapshotRequest::Reader request) {
  if (options_.dir.empty()) return fail(conn, "this node keeps no data dir to make snapshots in");
  if (transfers_.count(conn)) return fail(conn, "a transfer is already under way here");
  if (transfers_.size() >= options_.maxTransfers) {
    return fail(conn, "busy: " + std::to_string(transfers_.size()) +
                          " snapshot transfers under way; try again later");
  }
  std::string id = request.getId();
  std::shared_ptr<Snapshot> snapshot;
  if (!id.empty()) {
    auto it = snapshots_.find(id);
    if (it == snapshots_.end() || it->second->failed) {
      return fail(conn, "unknown snapshot " + id +
                            " (it expired or was never made here): ask for a new one");
    }
    snapshot = it->second;
    if (snapshot->ready && request.getOffset() > snapshot->size) {
      return fail(conn, "offset beyond the snapshot's end");
    }
  } else {
    // The newest copy under way, or one made recently enough; else a new one.
    for (auto& [sid, s] : snapshots_) {
      if (s->failed) continue;
      if (!s->ready || now - s->createdAt < options_.reuseForMillis) {
        if (!snapshot || s->createdAt > snapshot->createdAt) snapshot = s;
      }
    }
    if (!snapshot) snapshot = newSnapshot(now);
  }
  uint64_t offset = id.empty() ? 0 : request.getOffset();
  Transfer t;
  t.snapshot = snapshot;
  t.next = t.acked = offset;
  t.window = std::clamp<uint32_t>(request.getWindow(), 1, options_.maxWindow);
  t.lastHeard = now;
  ++snapshot->users;
  snapshot->lastUsed = now;
  sends_.push_back({conn, frame([&](auto s) {
                      auto start = s.initStart();
                      start.setId(snapshot->id);
                      start.setOffset(offset);
                      start.setChunkBytes(uint32_t(options_.chunkBytes));
                    }),
                    false});
  quiet_.erase(conn);
  auto& placed = transfers_[conn] = std::move(t);
  pump(conn, placed);
}

void SnapshotServer::pump(uint64_t conn, Transfer& t) {
  Snapshot& s = *t.snapshot;
  if (s.failed || t.ended) return;
  uint64_t available = s.available(options_.chunkBytes);
  uint64_t limit = t.acked + uint64_t(t.window) * options_.chunkBytes;
  while (t.next < available && t.next < limit) {
    size_t n = size_t(std::min<uint64_t>(options_.chunkBytes, available - t.next));
    bool readOk = true;
    std::string body = frame([&](auto m) {
      auto chunk = m.initChunk();
      chunk.setOffset(t.next);
      auto data = chunk.initData(unsigned(n));
      for (size_t at = 0; at < n && readOk;) {
        ssize_t got = ::pread(s.fd, data.begin() + at, n - at, off_t(t.next + at));
        if (got <= 0) readOk = false;
        at += size_t(std::max<ssize_t>(got, 0));
      }
      chunk.setChecksum(snapshotChunkChecksum(data.begin(), n));
    });
    if (!readOk) return fail(conn, "cannot read the snapshot file");
    sends_.push_back({conn, std::move(body), false});
    t.next += n;
    ++chunksSent_;
  }
  if (s.ready && t.next == s.size) {
    t.ended = true;
    sends_.push_back({conn, frame([&](auto m) { m.setEnd(s.manifest); }), false});
  }
}

void SnapshotServer::finishCopies() {
  for (auto& [id, s] : snapshots_) {
    if (s->ready || s->failed) continue;
    std::lock_guard lock(s->mu);
    if (!s->copied) continue;
    if (s->copyManifest) {
      s->ready = true;
      s->manifest = s->copyManifest->encode();
      s->size = s->copyManifest->fileBytes;
      if (options_.notice) {
        char line[160];
        std::snprintf(
            line, sizeof line, "snapshot %s made: %llu reviews, %llu bytes in %.1f s",
            s->id.c_str(), (unsigned long long)s->copyManifest->keys, (unsigned long long)s->size,
            std::chrono::duration<double>(std::chrono::steady_clock::now() - s->started).count());
        options_.notice(line);
      }
    } else {
      s->failed = true;
      std::vector<uint64_t> readers;
      for (auto& [conn, t] : transfers_) {
        if (t.snapshot == s) readers.push_back(conn);
      }
      for (uint64_t conn : readers) {
        fail(conn, "the snapshot could not be made: " + s->copyError->toString());
      }
    }
  }
}

void SnapshotServer::poll(uint64_t now) {
  finishCopies();
  std::vector<uint64_t> idle;
  for (auto& [conn, t] : transfers_) {
    if (now - t.lastHeard > options_.idleTimeoutMillis) {
      idle.push_back(conn);
    } else {
      pump(conn, t);
    }
  }
  for (uint64_t conn : idle) {
    fail(conn, "no ack for " + std::to_string(options_.idleTimeoutMillis / 1000) + " s");
  }
  for (auto it = quiet_.begin(); it != quiet_.end();) {  // connected, asking nothing
    if (now - it->second > options_.idleTimeoutMillis) {
      fail(it->first, "no request for " + std::to_string(options_.idleTimeoutMillis / 1000) + " s");
      it = quiet_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = snapshots_.begin(); it != snapshots_.end();) {
    Snapshot& s = *it->second;
    bool copying = !s.ready && !s.failed;
    bool expired = s.failed || now - s.lastUsed > options_.keepForMillis;
    if (s.users == 0 && !copying && expired) {
      std::error_code ec;
      std::filesystem::remove_all(s.dir, ec);
      it = snapshots_.erase(it);
    } else {
      ++it;
    }
  }
}

void SnapshotServer::closed(uint64_t now, uint64_t conn) {
  quiet_.erase(conn);
  auto it = transfers_.find(conn);
  if (it == transfers_.end()) return;
  if (options_.notice) {
    const Transfer& t = it->second;
    options_.notice("snapshot " + t.snapshot->id + ": transfer " +
                    (t.ended ? "done" : "ended at byte " + std::to_string(t.next)) + ", " +
                    std::to_string(t.acked) + " bytes acknowledged");
  }
  --it->second.snapshot->users;
  it->second.snapshot->lastUsed = now;
  transfers_.erase(it);
}

std::vector<SnapshotServer::Send> SnapshotServer::takeSends() {
  std::vector<Send> out;
  out.swap(sends_);
  return out;
}

}  // namespace chorus::gossip
