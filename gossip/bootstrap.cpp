#include "gossip/bootstrap.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "gossip/frame.h"
#include "gossip/keyring.h"
#include "gossip/member-file.h"
#include "gossip/secure-channel.h"
#include "gossip/snapshot-server.h"
#include "storage/backup.h"
#include "storage/store.h"

namespace chorus::gossip {

const char* bootstrapModeName(BootstrapMode mode) {
  switch (mode) {
    case BootstrapMode::kAuto:
      return "auto";
    case BootstrapMode::kSnapshot:
      return "snapshot";
    case BootstrapMode::kAntiEntropy:
      return "anti-entropy";
  }
  return "?";
}

Result<BootstrapMode> parseBootstrapMode(std::string_view text) {
  for (auto mode : {BootstrapMode::kAuto, BootstrapMode::kSnapshot, BootstrapMode::kAntiEntropy}) {
    if (text == bootstrapModeName(mode)) return mode;
  }
  return makeError(ErrorCode::kInvalidArgument, "bootstrap mode '" + std::string(text) +
                                                    "': must be auto, snapshot or anti-entropy");
}

namespace {

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr const char* kTransferFile = "transfer";  // peer, snapshot id, chunk size
constexpr const char* kMergedMarker = "merged";    // far behind: the merge finished
constexpr int kFreshAttempts = 2;                  // snapshots fetched, at most
constexpr int kMaxResumes = 20;                    // reconnections within one snapshot
constexpr uint64_t kWritebackBytes = 8u << 20;     // writeback started every this many

double seconds(SteadyClock::duration d) { return std::chrono::duration<double>(d).count(); }

Error ioError(const std::string& what) {
  return makeError(ErrorCode::kIo, what + ": " + std::strerror(errno));
}

// The keyring a Cluster would start with: <dataDir>/keyring, else `keys`.
Result<std::shared_ptr<const Keyring>> loadKeys(const BootstrapOptions& o) {
  auto loaded = Keyring::load(o.dataDir + "/keyring");
  if (!loaded.ok()) return loaded.error();
  if (*loaded) return std::make_shared<const Keyring>(std::move(**loaded));
  auto fresh = Keyring::fromBase64(o.keys);
  if (!fresh.ok()) return fresh.error();
  return std::make_shared<const Keyring>(std::move(fresh).value());
}

// "ip:port" (IPv4, or IPv6 in brackets).
Result<sockaddr_storage> parseAddress(const std::string& text) {
  sockaddr_storage out{};
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return makeError(ErrorCode::kInvalidArgument, "address '" + text + "' is not host:port");
  }
  std::string host = text.substr(0, colon);
  int port = std::atoi(text.c_str() + colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    auto* a = reinterpret_cast<sockaddr_in6*>(&out);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(uint16_t(port));
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a->sin6_addr) == 1)
      return out;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&out);
    a->sin_family = AF_INET;
    a->sin_port = htons(uint16_t(port));
    if (inet_pton(AF_INET, host.c_str(), &a->sin_addr) == 1) return out;
  }
  return makeError(ErrorCode::kInvalidArgument,
                   "address '" + text + "': host must be a numeric IP address");
}

// One sealed gossip connection to a peer, blocking with deadlines: the
// newcomer's end of a snapshot transfer.
class Link {
 public:
  static Result<std::unique_ptr<Link>> open(const std::string& address,
                                            std::shared_ptr<const Keyring> keys,
                                            size_t maxFrameBytes,
                                            std::chrono::milliseconds timeout) {
    auto addr = parseAddress(address);
    if (!addr.ok()) return addr.error();
    int fd = ::socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return ioError("socket");
    std::unique_ptr<Link> link(new Link(fd, std::move(keys), maxFrameBytes));
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    socklen_t len = addr->ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&*addr), len) != 0) {
      if (errno != EINPROGRESS) return ioError("connect to " + address);
      pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, int(timeout.count())) != 1) {
        return makeError(ErrorCode::kUnavailable, "connect to " + address + ": timed out");
      }
      int err = 0;
      socklen_t errLen = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errLen);
      if (err != 0) {
        errno = err;
        return ioError("connect to " + address);
      }
    }
    auto deadline = SteadyClock::now() + timeout;
    if (auto s = link->writeAll(link->channel_.preamble(), deadline); !s.ok()) return s.error();
    // The peer's preamble: its challenge, which our frames must carry.
    while (!link->channel_.ready()) {
      auto got = link->channel_.next(*link->keys_);
      if (got.kind != SecureChannel::Received::Kind::kNeedMore) {
        return makeError(ErrorCode::kUnavailable, address + " is not a gossip peer: " + got.why);
      }
      if (link->channel_.ready()) break;
      if (auto s = link->readSome(deadline); !s.ok()) return s.error();
    }
    return link;
  }

  ~Link() { ::close(fd_); }

  Status send(const std::string& body, std::chrono::milliseconds timeout) {
    return writeAll(channel_.seal(keys_->primary(), body), SteadyClock::now() + timeout);
  }

  // The next snapshot frame. kUnavailable: the connection broke or went
  // silent; kCorruption: the peer sent something else.
  Result<std::unique_ptr<ParsedFrame>> receive(std::chrono::milliseconds timeout) {
    auto deadline = SteadyClock::now() + timeout;
    for (;;) {
      auto got = channel_.next(*keys_);
      using Kind = SecureChannel::Received::Kind;
      if (got.kind == Kind::kFrame) {
        auto parsed = ParsedFrame::parse(std::move(got.body));
        if (!parsed.ok()) return parsed.error();
        if (parsed.value()->root().which() != wire::Frame::SNAPSHOT) {
          return makeError(ErrorCode::kCorruption, "the peer answered with a non-snapshot frame");
        }
        return parsed;
      }
      if (got.kind != Kind::kNeedMore) {
        return makeError(ErrorCode::kUnavailable, "the peer's stream failed: " + got.why);
      }
      if (auto s = readSome(deadline); !s.ok()) return s.error();
    }
  }

 private:
  Link(int fd, std::shared_ptr<const Keyring> keys, size_t maxFrameBytes)
      : fd_(fd), keys_(std::move(keys)), channel_(maxFrameBytes) {}

  Status writeAll(const std::string& bytes, SteadyClock::time_point deadline) {
    size_t at = 0;
    while (at < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + at, bytes.size() - at, MSG_NOSIGNAL);
      if (n > 0) {
        at += size_t(n);
        continue;
      }
      if (n < 0 && errno != EAGAIN && errno != EINTR) return ioError("send");
      if (auto s = wait(POLLOUT, deadline); !s.ok()) return s;
    }
    return okStatus();
  }

  Status readSome(SteadyClock::time_point deadline) {
    for (;;) {
      char buf[64 * 1024];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) {
        channel_.append(buf, size_t(n));
        return okStatus();
      }
      if (n == 0) return makeError(ErrorCode::kUnavailable, "the peer closed the connection");
      if (errno != EAGAIN && errno != EINTR) {
        return makeError(ErrorCode::kUnavailable, std::string("recv: ") + std::strerror(errno));
      }
      if (auto s = wait(POLLIN, deadline); !s.ok()) return s;
    }
  }

  Status wait(short events, SteadyClock::time_point deadline) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
    if (left.count() <= 0) return makeError(ErrorCode::kUnavailable, "the peer went silent");
    pollfd p{fd_, events, 0};
    int r = ::poll(&p, 1, int(left.count()));
    if (r == 0) return makeError(ErrorCode::kUnavailable, "the peer went silent");
    if (r < 0 && errno != EINTR) return ioError("poll");
    return okStatus();
  }

  int fd_;
  std::shared_ptr<const Keyring> keys_;
  SecureChannel channel_;
};

std::string snapshotFrame(const std::string& from,
                          const std::function<void(wire::Snapshot::Builder)>& fill) {
  capnp::MallocMessageBuilder message(256);
  fill(newFrame(message, from).initSnapshot());
  return encodeFrame(message);
}

struct PeerInfo {
  std::string nodeId;
  uint64_t keys = 0;
  uint32_t schemaVersion = 0;
  bool serves = false;
};

// query -> info on a fresh link.
Result<PeerInfo> ask(Link& link, const BootstrapOptions& o) {
  auto sent = link.send(snapshotFrame(o.nodeId, [](auto s) { s.setQuery(); }), o.connectTimeout);
  if (!sent.ok()) return sent.error();
  auto got = link.receive(std::max(o.connectTimeout, std::chrono::milliseconds(5'000)));
  if (!got.ok()) return got.error();
  auto root = got.value()->root();
  auto s = root.getSnapshot();
  if (s.which() == wire::Snapshot::ERROR) {
    return makeError(ErrorCode::kUnavailable, std::string(s.getError().cStr()));
  }
  if (s.which() != wire::Snapshot::INFO) {
    return makeError(ErrorCode::kCorruption, "the peer did not answer the query with info");
  }
  PeerInfo info;
  info.nodeId = root.getFrom();
  info.keys = s.getInfo().getKeys();
  info.schemaVersion = s.getInfo().getSchemaVersion();
  info.serves = s.getInfo().getServes();
  return info;
}

// The transfer's record: which peer, which snapshot, what chunk size.
struct TransferState {
  std::string peer;
  std::string id;
  uint64_t chunkBytes = 0;
};

std::optional<TransferState> readTransfer(const std::string& dir) {
  std::ifstream in(dir + "/" + kTransferFile);
  TransferState t;
  std::string word;
  while (in >> word) {
    if (word == "peer") in >> t.peer;
    if (word == "id") in >> t.id;
    if (word == "chunk") in >> t.chunkBytes;
  }
  if (t.peer.empty() || t.id.empty() || t.chunkBytes == 0) return std::nullopt;
  return t;
}

Status writeTextFile(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ioError("cannot create " + tmp);
  bool ok = ::write(fd, text.data(), text.size()) == ssize_t(text.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) return ioError("cannot write " + path);
  return okStatus();
}

class Blake256 {
 public:
  Blake256() { crypto_generichash_init(&state_, nullptr, 0, 32); }
  void update(const uint8_t* data, size_t size) { crypto_generichash_update(&state_, data, size); }
  std::array<uint8_t, 32> final() {
    std::array<uint8_t, 32> out{};
    crypto_generichash_final(&state_, out.data(), out.size());
    return out;
  }

 private:
  crypto_generichash_state state_;
};

// Reviews in the store at `dataDir`, 0 when it holds none. (Opening it
// tightens loose modes, as the node's own open would: said through `notice`.)
Result<uint64_t> localKeys(const std::string& dataDir,
                           const std::function<void(const std::string&)>& notice) {
  if (::access((dataDir + "/" + storage::kBackupDataFile).c_str(), F_OK) != 0) return uint64_t{0};
  storage::Options so;
  so.dir = dataDir;
  so.notice = notice;
  auto store = storage::Store::open(std::move(so));
  if (!store.ok()) return store.error();
  return (*store)->stats().documents;
}

class Fetcher {
 public:
  Fetcher(const BootstrapOptions& o, std::shared_ptr<const Keyring> keys, BootstrapOutcome& out)
      : o_(o), keys_(std::move(keys)), out_(out), dir_(o.dataDir + "/bootstrap") {}

  // Fetches one snapshot from `address` into dir_ and checks it against
  // its manifest's checksum. kCorruption: it does not match (deleted).
  Status fetch(const std::string& address, std::unique_ptr<Link> link) {
    auto state = readTransfer(dir_);
    if (!state || state->peer != address) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
      state = TransferState{address, "", 0};
    }
    fs::create_directories(dir_);
    ::chmod(dir_.c_str(), 0700);
    std::string path = dir_ + "/" + storage::kBackupDataFile;
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return ioError("cannot create " + path);
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};

    int resumes = 0;
    bool dropped = false;
    if (!link) {  // a fresh attempt after a refused snapshot
      auto opened = Link::open(address, keys_, o_.maxFrameBytes, o_.connectTimeout);
      if (!opened.ok()) return makeError(ErrorCode::kUnavailable, opened.error().message);
      link = std::move(opened).value();
    }
    for (;;) {
      if (!link) {
        if (++resumes > kMaxResumes) {
          return makeError(ErrorCode::kUnavailable, "gave up after " + std::to_string(kMaxResumes) +
                                                        " reconnections to " + address);
        }
        ++out_.resumes;
        std::this_thread::sleep_for(std::min(2000ms, 100ms * resumes));
        auto opened = Link::open(address, keys_, o_.maxFrameBytes, o_.connectTimeout);
        if (!opened.ok()) continue;
        link = std::move(opened).value();
        tell("resuming the snapshot transfer from " + address);
      }
      // What we hold: whole chunks of the snapshot we asked for before.
      struct stat st {};
      ::fstat(fd, &st);
      uint64_t held = state->chunkBytes == 0 || state->id.empty()
                          ? 0
                          : uint64_t(st.st_size) / state->chunkBytes * state->chunkBytes;
      auto request = snapshotFrame(o_.nodeId, [&](auto s) {
        auto r = s.initRequest();
        r.setId(state->id);
        r.setOffset(held);
        r.setWindow(o_.window);
      });
      if (!link->send(request, o_.connectTimeout).ok()) {
        link.reset();
        continue;
      }
      auto started = link->receive(o_.receiveTimeout);
      if (!started.ok()) {
        link.reset();
        continue;
      }
      auto s = started.value()->root().getSnapshot();
      if (s.which() == wire::Snapshot::ERROR) {
        std::string why = s.getError();
        if (!state->id.empty() && why.rfind("unknown snapshot", 0) == 0) {
          tell("the peer no longer has snapshot " + state->id + "; starting a new one");
          state->id.clear();
          link.reset();
          continue;
        }
        return makeError(ErrorCode::kUnavailable, address + " refused the snapshot: " + why);
      }
      if (s.which() != wire::Snapshot::START) {
        return makeError(ErrorCode::kCorruption, "the peer did not start the transfer");
      }
      auto start = s.getStart();
      uint64_t offset = start.getOffset();
      if (std::string(start.getId().cStr()) != state->id) offset = 0;  // a new snapshot
      if (offset > held || start.getChunkBytes() == 0) {
        return makeError(ErrorCode::kCorruption, "the peer started at an offset not asked for");
      }
      state->id = start.getId();
      state->chunkBytes = start.getChunkBytes();
      if (::ftruncate(fd, off_t(offset)) != 0) return ioError("cannot truncate " + path);
      auto saved = writeTextFile(dir_ + "/" + kTransferFile,
                                 "peer " + address + "\nid " + state->id + "\nchunk " +
                                     std::to_string(state->chunkBytes) + "\n");
      if (!saved.ok()) return saved;
      // The checksum covers the whole file: hash what is held first.
      Blake256 hash;
      if (auto h = hashPrefix(fd, offset, hash); !h.ok()) return h;
      uint64_t at = offset;
      uint64_t flushed = offset;  // writeback started below this
      auto requested = SteadyClock::now(), firstChunk = requested, lastProgress = requested;
      for (;;) {
        auto got = link->receive(o_.receiveTimeout);
        if (!got.ok()) {
          if (got.error().code == ErrorCode::kCorruption) return got.error();
          tell("snapshot transfer from " + address + " broke at byte " + std::to_string(at) + ": " +
               got.error().message);
          link.reset();
          break;
        }
        auto m = got.value()->root().getSnapshot();
        if (m.which() == wire::Snapshot::CHUNK) {
          auto chunk = m.getChunk();
          auto data = chunk.getData();
          if (at == offset) firstChunk = SteadyClock::now();
          if (chunk.getOffset() != at ||
              snapshotChunkChecksum(data.begin(), data.size()) != chunk.getChecksum()) {
            tell("a snapshot chunk at byte " + std::to_string(chunk.getOffset()) +
                 " failed its checksum; resuming");
            link.reset();
            break;
          }
          const uint8_t* bytes = data.begin();
          std::string flipped;
          if (o_.testCorruptOnce && !corrupted_ && data.size() > 4096) {
            corrupted_ = true;  // FOR TESTS: as if the disk or memory had flipped a bit
            flipped.assign(reinterpret_cast<const char*>(bytes), data.size());
            flipped[4096] = char(flipped[4096] ^ 0x01);
            bytes = reinterpret_cast<const uint8_t*>(flipped.data());
          }
          for (size_t w = 0; w < data.size();) {
            ssize_t n = ::pwrite(fd, bytes + w, data.size() - w, off_t(at + w));
            if (n <= 0) return ioError("cannot write " + path);
            w += size_t(n);
          }
          hash.update(bytes, data.size());
          at += data.size();
          ++chunks_;
          if (SteadyClock::now() - lastProgress >= 10s) {
            lastProgress = SteadyClock::now();
            tell("received " + std::to_string(at >> 20) + " MiB of the snapshot so far");
          }
          // Start writeback of what is written (without waiting, and kept
          // in the page cache for the verify that follows), so the final
          // fsync does not write the whole file after the transfer.
          if (at - flushed >= kWritebackBytes) {
            (void)::sync_file_range(fd, off_t(flushed), off_t(at - flushed), SYNC_FILE_RANGE_WRITE);
            flushed = at;
          }
          auto ack = snapshotFrame(o_.nodeId, [&](auto a) { a.setAck(at); });
          if (!link->send(ack, o_.connectTimeout).ok()) {
            link.reset();
            break;
          }
          if (o_.testExitAfterChunks != 0 && chunks_ == o_.testExitAfterChunks) {
            tell("test: exiting after " + std::to_string(chunks_) + " chunks");
            std::_Exit(86);  // FOR TESTS: a crash mid-transfer
          }
          if (o_.testDropAfterChunks != 0 && !dropped && chunks_ == o_.testDropAfterChunks) {
            dropped = true;  // FOR TESTS: a connection lost mid-transfer
            tell("test: dropping the snapshot connection after " + std::to_string(chunks_) +
                 " chunks");
            link.reset();
            break;
          }
          continue;
        }
        if (m.which() == wire::Snapshot::END) {
          auto manifest = storage::BackupManifest::decode(m.getEnd().cStr());
          if (!manifest.ok()) return manifest.error();
          if (manifest->fileBytes != at || manifest->checksum != hash.final()) {
            return makeError(ErrorCode::kCorruption,
                             "the snapshot from " + address +
                                 " does not match its manifest's checksum (" + std::to_string(at) +
                                 " bytes received, " + std::to_string(manifest->fileBytes) +
                                 " in the manifest)");
          }
          auto syncing = SteadyClock::now();
          if (::fsync(fd) != 0) return ioError("cannot sync " + path);
          char line[200];
          std::snprintf(line, sizeof line,
                        "received %llu bytes from byte %llu: first chunk after %.1f s, last after "
                        "%.1f s, synced in %.1f s",
                        (unsigned long long)at, (unsigned long long)offset,
                        seconds(firstChunk - requested), seconds(syncing - requested),
                        seconds(SteadyClock::now() - syncing));
          tell(line);
          out_.keys = manifest->keys;
          out_.bytes = at;
          return writeTextFile(dir_ + "/" + storage::kBackupManifestFile, m.getEnd().cStr());
        }
        if (m.which() == wire::Snapshot::ERROR) {
          return makeError(ErrorCode::kUnavailable,
                           address + " ended the transfer: " + std::string(m.getError().cStr()));
        }
        return makeError(ErrorCode::kCorruption, "unexpected message during the transfer");
      }
    }
  }

  const std::string& dir() const { return dir_; }

 private:
  void tell(const std::string& what) {
    if (o_.notice) o_.notice("bootstrap: " + what);
  }

  static Status hashPrefix(int fd, uint64_t bytes, Blake256& hash) {
    std::vector<uint8_t> buf(1 << 20);
    for (uint64_t at = 0; at < bytes;) {
      ssize_t n =
          ::pread(fd, buf.data(), size_t(std::min<uint64_t>(buf.size(), bytes - at)), off_t(at));
      if (n <= 0) return ioError("cannot read the partial snapshot");
      hash.update(buf.data(), size_t(n));
      at += uint64_t(n);
    }
    return okStatus();
  }

  const BootstrapOptions& o_;
  std::shared_ptr<const Keyring> keys_;
  BootstrapOutcome& out_;
  std::string dir_;
  uint64_t chunks_ = 0;
  bool corrupted_ = false;
};

// Merges every review of the store at `from` into the store at `into`
// (both closed when it returns). Returns how many.
Result<uint64_t> mergeAll(const std::string& from, const std::string& into) {
  storage::Options oldOptions;
  oldOptions.dir = from;
  auto old = storage::Store::open(std::move(oldOptions));
  if (!old.ok()) return old.error();
  storage::Options newOptions;
  newOptions.dir = into;
  auto fresh = storage::Store::open(std::move(newOptions));
  if (!fresh.ok()) return fresh.error();
  std::mutex mu;
  std::condition_variable cv;
  uint64_t queued = 0, done = 0;
  std::optional<Error> failure;
  for (uint64_t leaf = 0; leaf < (uint64_t{1} << (4 * storage::Store::kDepth)) && !failure;
       ++leaf) {
    auto entries = (*old)->leafEntries(leaf);
    if (!entries.ok()) return entries.error();
    for (const auto& e : entries.value()) {
      auto encoded = (*old)->getEncoded(e.key);
      if (!encoded.ok()) return encoded.error();
      if (!encoded.value()) continue;
      auto doc = crdt::ReviewDoc::decode(*encoded.value());
      if (!doc.ok()) return doc.error();
      {
        std::unique_lock lock(mu);  // at most 4,096 in flight
        cv.wait(lock, [&] { return queued - done < 4096; });
        ++queued;
      }
      (*fresh)->merge(std::move(doc).value(), [&](Result<storage::Applied> r) {
        std::lock_guard lock(mu);
        if (!r.ok() && !failure) failure = r.error();
        ++done;
        cv.notify_all();
      });
    }
  }
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return done == queued; });
  if (failure) return *failure;
  return queued;
}

// Far behind: a restored snapshot in `fresh` (holding the local reviews
// merged in, marked by kMergedMarker) replaces the store in `dataDir`.
// Safe to run again after a crash at any point.
Status swapIn(const std::string& dataDir, const std::string& bootstrapDir,
              const std::string& fresh) {
  std::string live = dataDir + "/" + storage::kBackupDataFile;
  std::string next = fresh + "/" + storage::kBackupDataFile;
  if (::access(next.c_str(), F_OK) == 0) {
    if (::access(live.c_str(), F_OK) == 0 &&
        ::rename(live.c_str(), (bootstrapDir + "/old.mdb").c_str()) != 0) {
      return ioError("cannot move the old store aside");
    }
    if (::rename(next.c_str(), live.c_str()) != 0) return ioError("cannot move the snapshot in");
    int dfd = ::open(dataDir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }
  std::error_code ec;
  fs::remove_all(bootstrapDir, ec);
  return okStatus();
}

}  // namespace

Result<BootstrapOutcome> bootstrapDataDir(const BootstrapOptions& o) {
  BootstrapOutcome out;
  auto tell = [&](const std::string& what) {
    if (o.notice) o.notice("bootstrap: " + what);
  };
  std::string dir = o.dataDir + "/bootstrap";
  std::string fresh = dir + "/new";
  // A far-behind swap that a crash interrupted: finish it first.
  if (::access((fresh + "/" + kMergedMarker).c_str(), F_OK) == 0) {
    tell("finishing a snapshot swap interrupted by a stop");
    if (auto s = swapIn(o.dataDir, dir, fresh); !s.ok()) return s.error();
  }
  if (o.mode == BootstrapMode::kAntiEntropy) {
    std::error_code ec;
    fs::remove_all(dir, ec);
    out.reason = "--bootstrap anti-entropy";
    return out;
  }
  bool forced = o.mode == BootstrapMode::kSnapshot;
  auto stay = [&](const std::string& why) -> Result<BootstrapOutcome> {
    out.reason = why;
    if (forced) {
      return makeError(ErrorCode::kUnavailable, "--bootstrap snapshot: " + why);
    }
    std::error_code ec;
    fs::remove_all(dir, ec);  // (a partial transfer is of no use to anti-entropy)
    return out;
  };
  auto keys = loadKeys(o);
  if (!keys.ok()) return keys.error();

  std::vector<std::string> peers;
  if (auto state = readTransfer(dir)) peers.push_back(state->peer);  // resume there first
  for (const auto& p : o.peers) {
    if (std::find(peers.begin(), peers.end(), p) == peers.end()) peers.push_back(p);
  }
  if (peers.empty()) return stay("no peer to ask (no --join, no member list)");

  // auto: one pass, a few seconds at most (peers that are down refuse at
  // once; a start must not wait long for an optimisation).
  auto deadline = SteadyClock::now() + (forced ? o.findPeerFor : std::min(o.findPeerFor, 3000ms));
  std::string lastWhy = "no peer answered";
  for (int pass = 0;; ++pass) {
    for (const auto& address : peers) {
      if (SteadyClock::now() >= deadline) break;
      auto link = Link::open(address, *keys, o.maxFrameBytes, o.connectTimeout);
      if (!link.ok()) {
        lastWhy = address + ": " + link.error().message;
        continue;
      }
      auto info = ask(**link, o);
      if (!info.ok()) {
        lastWhy = address + ": " + info.error().message;
        continue;
      }
      if (info->nodeId == o.nodeId) continue;  // ourselves
      if (!info->serves) {
        lastWhy = info->nodeId + " keeps no data dir and serves no snapshots";
        continue;
      }
      if (info->schemaVersion > storage::kSchemaVersion) {
        lastWhy = info->nodeId + "'s store has schema " + std::to_string(info->schemaVersion) +
                  ", newer than this build's " + std::to_string(storage::kSchemaVersion);
        continue;
      }
      // This node's own count, once a peer answered (a start whose peers
      // are all down does not open the store twice).
      auto local = localKeys(o.dataDir, [&](const std::string& what) { tell("storage: " + what); });
      if (!local.ok()) return local.error();
      if (!forced) {
        if (info->keys < o.minKeys) {
          return stay(info->nodeId + " holds " + std::to_string(info->keys) +
                      " reviews, fewer than --bootstrap-min-keys " + std::to_string(o.minKeys) +
                      ": anti-entropy catches up");
        }
        if (*local > 0 && *local * 2 >= info->keys) {
          return stay("this node holds " + std::to_string(*local) + " of " + info->nodeId + "'s " +
                      std::to_string(info->keys) +
                      " reviews (not far behind): anti-entropy catches up");
        }
      }
      tell("fetching a snapshot of " + info->nodeId + " (" + address + ", " +
           std::to_string(info->keys) + " reviews; this node holds " + std::to_string(*local) +
           ")");
      out.peer = info->nodeId;
      // kBusy out of this: the peer could not serve one now (busy, gone
      // mid-transfer); a forced bootstrap tries the next peer, or again.
      auto fetched = [&]() -> Result<BootstrapOutcome> {
        Fetcher fetcher(o, *keys, out);
        auto first = std::move(link).value();
        for (int attempt = 1; attempt <= kFreshAttempts; ++attempt) {
          auto fetching = SteadyClock::now();
          auto got = fetcher.fetch(address, std::move(first));
          out.fetchSeconds = std::chrono::duration<double>(SteadyClock::now() - fetching).count();
          if (!got.ok()) {
            if (got.error().code == ErrorCode::kCorruption) {
              std::error_code ec;
              fs::remove_all(dir, ec);  // never used, never resumed
              ++out.refused;
              tell("refused the snapshot and deleted it: " + got.error().message);
              continue;
            }
            // (kept for a resume, unless `stay` falls back to anti-entropy)
            if (forced) return makeError(ErrorCode::kBusy, got.error().message);
            return stay("fetching from " + address + " failed: " + got.error().message);
          }
          if (*local > 0) {
            std::error_code ec;
            fs::remove_all(fresh, ec);  // an earlier attempt's
          }
          storage::RestoreOptions ro;
          ro.notice = [&](const std::string& what) { tell(what); };
          ro.consume = true;          // moved into place, checked once
          ro.checksumChecked = true;  // hashed as it was written (Fetcher::fetch)
          auto restoring = SteadyClock::now();
          std::string target = *local > 0 ? fresh : o.dataDir;
          auto restored = storage::restoreBackup(dir, target, ro);
          if (!restored.ok()) {
            std::error_code ec;
            fs::remove_all(dir, ec);
            if (restored.error().code == ErrorCode::kCorruption) {
              ++out.refused;
              tell("refused the snapshot and deleted it: " + restored.error().message);
              continue;
            }
            return restored.error();
          }
          out.replicaId = restored->replicaId;
          out.restoreSeconds =
              std::chrono::duration<double>(SteadyClock::now() - restoring).count();
          if (*local > 0) {
            auto merged = mergeAll(o.dataDir, fresh);
            if (!merged.ok()) {
              std::error_code ec;
              fs::remove_all(dir, ec);
              return stay("merging this node's reviews into the snapshot failed (" +
                          merged.error().message + "); kept the old store");
            }
            out.localMerged = *merged;
            if (auto s = writeTextFile(fresh + "/" + kMergedMarker, "merged\n"); !s.ok()) {
              return s.error();
            }
            if (auto s = swapIn(o.dataDir, dir, fresh); !s.ok()) return s.error();
          } else {
            std::error_code ec;
            fs::remove_all(dir, ec);
          }
          out.fromSnapshot = true;
          out.reason = "snapshot of " + out.peer;
          return out;
        }
        return stay("no verified snapshot after " + std::to_string(kFreshAttempts) + " attempts");
      }();
      if (fetched.ok() || fetched.error().code != ErrorCode::kBusy) return fetched;
      lastWhy = "fetching from " + address + " failed: " + fetched.error().message;
      tell(lastWhy);
    }
    if (!forced || SteadyClock::now() >= deadline) break;
    std::this_thread::sleep_for(500ms);
  }
  return stay(lastWhy);
}

}  // namespace chorus::gossip
