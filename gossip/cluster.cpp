// gossip::Cluster: the libuv transport under the replication core
// (gossip/replication-core.h). It owns the sockets, the sealed streams
// (SecureChannel), the inbound connection caps, the loop thread and its
// timer, and executes the core's actions; the protocol itself (membership,
// failure detection, push, anti-entropy, backoff) is the core's.
//
// Locking: one mutex, mu_, guards the core and what the other public
// methods touch; the loop thread holds it for the whole of each callback.
// publish() and the store thread's merge completions never take it: they
// queue their delta or ticket in the Wake (its own small mutex, taken after
// mu_ when both are) and wake the loop, which hands them to the core. So the
// core runs on the loop thread only, and neither a writer nor the store
// thread waits for the loop's work.
#include "gossip/cluster.h"

#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "gossip/frame.h"
#include "gossip/keyring.h"
#include "gossip/member-file.h"
#include "gossip/replica-store.h"
#include "gossip/replication-core.h"
#include "gossip/secure-channel.h"
#include "gossip/snapshot-server.h"

namespace chorus::gossip {

namespace {

constexpr size_t kMaxTokenBytes = ReplicationCore::kMaxTokenBytes;
// Strangers: connections to us that have not completed hello (authenticated
// with a cluster key). A newcomer beyond either cap evicts the oldest one
// (of its address, else of all), so a peer with the key always gets its
// one round trip. (Connections that completed hello are capped by the core.)
constexpr size_t kMaxStrangers = 64;
constexpr size_t kMaxStrangersPerHost = 8;
constexpr uint64_t kWarnEveryMillis = 10'000;  // authentication warnings per peer host
// Room in the kernel's queue for strangers reconnecting as they are evicted,
// so a peer's connection is not dropped there (SYN retried after 1, 3, 7 s).
constexpr int kListenBacklog = 1024;
// Accepted per loop turn at most. libuv accepts for as long as the kernel has
// connections waiting; strangers reconnecting as fast as they are evicted
// would keep it there, and no frame would ever be read.
constexpr int kAcceptsPerTurn = 16;
static_assert(kSealOverheadBytes == 72, "CoreOptions::frameOverheadBytes is the seal's");

uint64_t unixMillis() {
  return uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count());
}

// The core's clock: monotonic milliseconds.
uint64_t steadyMillis() {
  return uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}

// Parses "ip:port" (IPv4, or IPv6 in brackets) into `out`.
Status parseAddress(const std::string& text, sockaddr_storage& out) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) {
    return makeError(ErrorCode::kInvalidArgument,
                     "address '" + text + "' is not host:port (e.g. 127.0.0.1:7410)");
  }
  std::string host = text.substr(0, colon);
  std::string portText = text.substr(colon + 1);
  char* end = nullptr;
  long port = std::strtol(portText.c_str(), &end, 10);
  if (*end != '\0' || port < 0 || port > 65535) {
    return makeError(ErrorCode::kInvalidArgument, "address '" + text + "': bad port");
  }
  std::memset(&out, 0, sizeof out);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
    if (uv_ip6_addr(host.c_str(), int(port), reinterpret_cast<sockaddr_in6*>(&out)) == 0) {
      return okStatus();
    }
  } else if (uv_ip4_addr(host.c_str(), int(port), reinterpret_cast<sockaddr_in*>(&out)) == 0) {
    return okStatus();
  }
  return makeError(ErrorCode::kInvalidArgument,
                   "address '" + text + "': host must be a numeric IP address");
}

std::string formatAddress(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = {0};
  if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    uv_ip6_name(a, host, sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
  uv_ip4_name(a, host, sizeof host);
  return std::string(host) + ":" + std::to_string(ntohs(a->sin_port));
}

// "10.0.0.1:7410" -> "10.0.0.1", "[::1]:7410" -> "[::1]".
std::string hostOf(const std::string& address) {
  auto colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

// Gossip has no logger of its own (api/ has one and depends on gossip): a
// line in the same format, written at once.
void warn(const std::string& message) {
  std::fprintf(stderr, "chorus: warn: %s\n", message.c_str());
}

// Adds the transport's counters to the core's.
void addCounters(ClusterStats& to, const ClusterStats& from) {
  to.framesIn += from.framesIn;
  to.framesOut += from.framesOut;
  to.bytesIn += from.bytesIn;
  to.bytesOut += from.bytesOut;
  to.malformedFrames += from.malformedFrames;
  to.authFailures += from.authFailures;
  to.replaysRefused += from.replaysRefused;
  to.connectionsRefused += from.connectionsRefused;
  to.deltasDropped += from.deltasDropped;
  to.versionRefused += from.versionRefused;
}

// Whether a frame body (already authenticated) is a snapshot frame of this
// protocol version. Reads the body in place; anything malformed is "no"
// (the core then refuses it as usual).
bool isSnapshotFrame(const kj::Array<capnp::word>& body) {
  bool snapshot = false;
  (void)kj::runCatchingExceptions([&] {
    capnp::ReaderOptions limits;
    limits.traversalLimitInWords = body.size() + 64;
    capnp::FlatArrayMessageReader reader(body, limits);
    auto root = reader.getRoot<wire::Frame>();
    snapshot = root.getVersion() == wire::PROTOCOL_VERSION && root.which() == wire::Frame::SNAPSHOT;
  });
  return snapshot;
}

// The loop's wake-up and the merge completions that come with it. Shared
// with the store's callbacks, which may run after the Cluster is gone (the
// store drains its queue when closed): `async` is null once the loop closed.
struct Wake {
  std::mutex mu;
  uv_async_t* async = nullptr;
  std::vector<uint64_t> merged;  // tickets of completed merges, for the core
  // Published deltas (encoded), not yet handed to the core: publish() never
  // waits for the loop's mutex, which the loop holds while it works.
  std::vector<std::string> outbox;
  size_t outboxBytes = 0;
  uint64_t outboxDropped = 0;  // deltasDropped: pushes refused for a full outbox
  // Pulls asked for (key, preferred node), not yet handed to the core; at
  // most kMaxPulls (more are dropped: the reads waiting ask again).
  static constexpr size_t kMaxPulls = 4096;
  std::vector<std::pair<crdt::ReviewKey, std::string>> pulls;
  bool stopping = false;
  void send() {
    std::lock_guard lock(mu);
    if (async) uv_async_send(async);
  }
};

}  // namespace

class Cluster::Impl {
 public:
  Impl(ClusterOptions options, storage::Store& store, Merged onMerged)
      : options_(std::move(options)), replica_(store), onMerged_(std::move(onMerged)) {}

  Status start();
  void stop();
  Status loadKeyring();
  Status changeKeys(const std::function<Status(Keyring&)>& change);

  const ClusterOptions options_;

  // ---- under mu_ ----------------------------------------------------------
  mutable std::mutex mu_;
  std::unique_ptr<ReplicationCore> core_;   // created in start(), before the loop runs
  std::atomic<size_t> peerCount_{0};        // the core's, after each loop callback
  std::shared_ptr<const Keyring> keyring_;  // replaced whole on a change
  ClusterStats wire_;                       // the transport's own counters
  std::string bound_;
  std::shared_ptr<Wake> wake_ = std::make_shared<Wake>();

 private:
  struct Conn {
    Impl* impl;
    uv_tcp_t tcp;
    ConnId id = 0;
    bool inbound = false;
    bool connected = false;
    bool closing = false;
    bool snapshot = false;   // serves a snapshot transfer: the core does not know it
    bool finishing = false;  // closes once its queued writes are out (finish())
    uint64_t serial = 0;     // accept order (inbound)
    std::string remote;      // the peer's address, for logs
    std::string host;        // remote without the port
    SecureChannel channel;
    Conn(Impl* i, size_t maxFrame) : impl(i), channel(maxFrame) {}
  };
  struct Write {
    uv_write_t req;
    std::string bytes;
    Conn* conn;
    uint64_t deltas;
    bool frame;  // a sealed frame the core queued (else the preamble)
  };

  // ---- loop thread, under mu_ ----------------------------------------------
  void run();
  void onWake();
  void onTick();
  void accept();
  void dial(ConnId id, const std::string& address);
  void connected(Conn* c, int status);
  void read(Conn* c, ssize_t n, const uv_buf_t* buf);
  // Closes the socket; `tell`: report it to the core (not after its Close).
  void close(Conn* c, bool tell);
  void closed(Conn* c);
  // `frame`: a sealed frame of the core's (else the preamble).
  void write(Conn* c, std::string bytes, uint64_t deltas, bool frame);
  void refused(Conn* c, SecureChannel::Received::Kind kind, const std::string& why);
  void execute();  // the core's actions, until there are none
  // A frame on a connection that serves (or, as its first frame, asks for)
  // a snapshot; its frames go to snapshots_, never to the core.
  void serveSnapshot(Conn* c, kj::Array<capnp::word> body);
  void executeSnapshots();  // snapshots_'s sends
  // Closes `c` once every write queued on it is out (uv_shutdown).
  void finish(Conn* c);
  void takeOutbox();
  uint64_t now() const { return steadyMillis(); }
  // Times the core's anti-entropy sessions for options_.onAntiEntropySession.
  CoreOptions withSessionTimer(CoreOptions o);
  std::chrono::steady_clock::time_point sessionStarted_;  // loop thread

  StoreReplica replica_;
  Merged onMerged_;
  std::unique_ptr<SnapshotServer> snapshots_;  // loop thread (made in start())
  uv_loop_t loop_;
  uv_tcp_t server_;
  uv_async_t async_;
  uv_timer_t tick_;
  uv_check_t afterIo_;          // after each turn's I/O: resumes accepting
  int acceptsThisTurn_ = 0;     // loop thread
  bool acceptWaiting_ = false;  // a connection is waiting for accept(); loop thread
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::map<ConnId, Conn*> conns_;
  uint64_t acceptSerial_ = 0;
  std::map<std::string, uint64_t> lastWarned_;  // peer host -> time of the last warning
  std::mutex keyChangeMu_;  // serializes keyring changes (held across the file write)
};

// ---- start and stop -------------------------------------------------------

Status Cluster::Impl::start() {
  if (options_.nodeId.empty() || options_.nodeId.size() > kMaxTokenBytes) {
    return makeError(ErrorCode::kInvalidArgument, "cluster: node id must be 1-256 bytes");
  }
  for (unsigned char c : options_.nodeId) {
    if (c <= ' ' || c == 0x7f) {
      return makeError(ErrorCode::kInvalidArgument,
                       "cluster: node id '" + options_.nodeId + "' has spaces or control bytes");
    }
  }
  if (options_.antiEntropyInterval.count() <= 0 ||
      options_.crossRegionAntiEntropyInterval.count() <= 0 ||
      options_.probeInterval.count() <= 0 || options_.gossipInterval.count() <= 0 ||
      options_.forgetDeadAfter.count() <= 0) {
    return makeError(ErrorCode::kInvalidArgument,
                     "cluster: anti-entropy, probe, gossip and forget intervals must be positive");
  }
  if (options_.region.empty() || options_.region.size() > 64 ||
      options_.region.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789-_.") != std::string::npos) {
    return makeError(ErrorCode::kInvalidArgument,
                     "cluster: region '" + options_.region +
                         "' must be 1-64 letters, digits, '-', '_' or '.'");
  }
  sockaddr_storage addr;
  auto parsed = parseAddress(options_.listen, addr);
  if (!parsed.ok())
    return makeError(ErrorCode::kInvalidArgument, "--gossip-listen: " + parsed.error().message);
  for (const auto& seed : options_.seeds) {
    sockaddr_storage ignored;
    auto ok = parseAddress(seed, ignored);
    if (!ok.ok()) return makeError(ErrorCode::kInvalidArgument, "seed: " + ok.error().message);
  }
  if (options_.maxFrameBytes < 1024 || options_.maxFrameBytes > (1u << 30)) {
    return makeError(ErrorCode::kInvalidArgument, "cluster: maxFrameBytes must be 1 KiB-1 GiB");
  }
  if (options_.maxPendingDeltaBytes == 0 || options_.maxQueuedBytesPerPeer == 0) {
    return makeError(ErrorCode::kInvalidArgument,
                     "cluster: maxPendingDeltaBytes and maxQueuedBytesPerPeer must be positive");
  }
  if (auto keys = loadKeyring(); !keys.ok()) return keys.error();

  uv_loop_init(&loop_);
  uv_tcp_init(&loop_, &server_);
  server_.data = this;
  int rc = uv_tcp_bind(&server_, reinterpret_cast<sockaddr*>(&addr), 0);
  if (rc == 0) {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(&server_), kListenBacklog,
                   [](uv_stream_t* s, int status) {
                     if (status == 0) static_cast<Impl*>(s->data)->accept();
                   });
  }
  if (rc != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&server_), nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
    return makeError(ErrorCode::kIo,
                     "cannot listen for gossip on " + options_.listen + ": " + uv_strerror(rc) +
                         (rc == UV_EADDRINUSE ? " (another process holds it; pick another port)"
                                              : ""));
  }
  sockaddr_storage boundAddr;
  int len = sizeof boundAddr;
  uv_tcp_getsockname(&server_, reinterpret_cast<sockaddr*>(&boundAddr), &len);

  std::vector<KnownMember> known;
  if (!options_.dataDir.empty()) {
    auto loaded = loadMembers(options_.dataDir + "/members");
    if (loaded.ok()) known = std::move(loaded).value();
  }
  {
    std::lock_guard lock(mu_);
    bound_ = formatAddress(boundAddr);
    core_ = std::make_unique<ReplicationCore>(
        // Incarnation: above the last run's (the member file's entry for
        // this node, see ReplicationCore::start) and, without one, the wall
        // clock's seconds, so a restart with a lost member file still
        // outranks what peers remember of the previous run.
        withSessionTimer(coreOptionsFrom(
            options_, bound_, std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32),
            unixMillis() / 1000)),
        replica_);
    core_->start(now(), known);
  }

  uv_async_init(&loop_, &async_, [](uv_async_t* a) { static_cast<Impl*>(a->data)->onWake(); });
  async_.data = this;
  {
    std::lock_guard lock(wake_->mu);
    wake_->async = &async_;
  }
  SnapshotServerOptions so;
  so.dir = options_.dataDir.empty() ? "" : options_.dataDir + "/snapshots";
  so.nodeId = options_.nodeId;
  so.notice = [](const std::string& what) {
    std::fprintf(stderr, "chorus: info: gossip: %s\n", what.c_str());
  };
  snapshots_ =
      std::make_unique<SnapshotServer>(so, replica_.store(), [wake = wake_] { wake->send(); });
  uv_timer_init(&loop_, &tick_);
  tick_.data = this;
  uv_check_init(&loop_, &afterIo_);
  afterIo_.data = this;
  uv_check_start(&afterIo_, [](uv_check_t* h) {
    auto* impl = static_cast<Impl*>(h->data);
    impl->acceptsThisTurn_ = 0;
    if (impl->acceptWaiting_) {
      impl->acceptWaiting_ = false;
      impl->accept();  // uv_accept restarts listening
    }
  });
  uv_timer_start(
      &tick_, [](uv_timer_t* t) { static_cast<Impl*>(t->data)->onTick(); }, 0,
      ReplicationCore::kTickMillis);
  thread_ = std::thread([this] { run(); });
  return okStatus();
}

// <dataDir>/keyring if it exists (it reflects rotations), else options.keys,
// saved there.
Status Cluster::Impl::loadKeyring() {
  std::string path = options_.dataDir.empty() ? "" : options_.dataDir + "/keyring";
  std::optional<Keyring> ring;
  if (!path.empty()) {
    auto loaded = Keyring::load(path);
    if (!loaded.ok()) return loaded.error();
    ring = std::move(loaded).value();
  }
  if (ring) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
      warn("gossip: " + path + " holds the cluster keys and is readable by others (mode " +
           std::to_string((st.st_mode >> 6) & 7) + std::to_string((st.st_mode >> 3) & 7) +
           std::to_string(st.st_mode & 7) + "): chmod 600 it");
    }
    for (size_t i = 0; i < options_.keys.size(); ++i) {
      auto key = parseClusterKey(options_.keys[i]);
      if (!key.ok()) {
        return makeError(ErrorCode::kInvalidArgument,
                         "key " + std::to_string(i + 1) + ": " + key.error().message);
      }
      if (!ring->contains(key.value())) {
        warn("gossip: cluster key " + key->fingerprint() + " from the options is not in " + path +
             ", which wins (it reflects key rotations); install it (`chorus cluster keys "
             "install`) if this node should accept it");
      }
    }
  } else {
    auto fresh = Keyring::fromBase64(options_.keys);
    if (!fresh.ok()) return fresh.error();
    ring = std::move(fresh).value();
    if (!path.empty()) {
      if (auto saved = ring->save(path); !saved.ok()) return saved.error();
    }
  }
  std::lock_guard lock(mu_);
  keyring_ = std::make_shared<const Keyring>(std::move(*ring));
  return okStatus();
}

Status Cluster::Impl::changeKeys(const std::function<Status(Keyring&)>& change) {
  std::lock_guard serial(keyChangeMu_);
  Keyring next = [&] {
    std::lock_guard lock(mu_);
    return *keyring_;
  }();
  if (auto changed = change(next); !changed.ok()) return changed;
  if (!options_.dataDir.empty()) {
    if (auto saved = next.save(options_.dataDir + "/keyring"); !saved.ok()) return saved.error();
  }
  std::lock_guard lock(mu_);
  keyring_ = std::make_shared<const Keyring>(std::move(next));
  return okStatus();
}

void Cluster::Impl::run() {
  // libuv writes with write(2): to a peer that has closed, that raises
  // SIGPIPE, which kills a host process that does not ignore it (a service
  // embedding a Node without RPC). Blocked on this thread, the write fails
  // with EPIPE instead and the connection closes as usual.
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

void Cluster::Impl::stop() {
  if (!thread_.joinable()) return;
  stopping_ = true;
  wake_->send();
  thread_.join();
  snapshots_.reset();  // waits for a copy under way, deletes the snapshots
}

void Cluster::Impl::onWake() {
  std::vector<uint64_t> merged;
  {
    std::lock_guard lock(wake_->mu);
    merged.swap(wake_->merged);
  }
  std::lock_guard lock(mu_);
  for (uint64_t ticket : merged) core_->merged(ticket);
  if (stopping_) {
    core_->stop(now());  // persists the member list, closes every connection
    execute();
    for (auto& [id, c] : std::map<ConnId, Conn*>(conns_)) close(c, false);
    uv_timer_stop(&tick_);
    uv_close(reinterpret_cast<uv_handle_t*>(&server_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&afterIo_), nullptr);
    {
      std::lock_guard wakeLock(wake_->mu);
      wake_->async = nullptr;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
    return;
  }
  takeOutbox();
  execute();
  snapshots_->poll(now());
  executeSnapshots();
}

void Cluster::Impl::takeOutbox() {
  std::vector<std::string> encoded;
  std::vector<std::pair<crdt::ReviewKey, std::string>> pulls;
  {
    std::lock_guard lock(wake_->mu);
    encoded.swap(wake_->outbox);
    wake_->outboxBytes = 0;
    pulls.swap(wake_->pulls);
  }
  if (!encoded.empty()) core_->publish(now(), std::move(encoded));
  for (const auto& [key, prefer] : pulls) core_->pull(now(), key, prefer);
}

void Cluster::Impl::onTick() {
  std::lock_guard lock(mu_);
  if (stopping_) return;
  takeOutbox();
  core_->tick(now());
  execute();
  snapshots_->poll(now());
  executeSnapshots();
}

CoreOptions Cluster::Impl::withSessionTimer(CoreOptions o) {
  if (!options_.onAntiEntropySession) return o;
  o.onSessionStarted = [this] { sessionStarted_ = std::chrono::steady_clock::now(); };
  o.onSessionCompleted = [this](bool crossRegion) {
    options_.onAntiEntropySession(std::chrono::steady_clock::now() - sessionStarted_, crossRegion);
  };
  return o;
}

// ---- the core's actions ----------------------------------------------------

void Cluster::Impl::execute() {
  peerCount_ = core_->peerCount();
  for (int rounds = 0; rounds < 1000; ++rounds) {
    auto actions = core_->takeActions();
    if (actions.empty()) return;
    for (auto& action : actions) {
      if (auto* send = std::get_if<SendFrame>(&action)) {
        auto it = conns_.find(send->conn);
        if (it == conns_.end() || it->second->closing || !it->second->channel.ready()) {
          // (never: the core sends only on connections opened and not closed)
          core_->drained(send->conn, send->body->size() + kSealOverheadBytes, send->deltas);
          continue;
        }
        Conn* c = it->second;
        write(c, c->channel.seal(keyring_->primary(), *send->body), send->deltas, true);
      } else if (auto* dial = std::get_if<Dial>(&action)) {
        this->dial(dial->conn, dial->address);
      } else if (auto* close = std::get_if<Close>(&action)) {
        auto it = conns_.find(close->conn);
        if (it != conns_.end()) this->close(it->second, false);
      } else if (auto* merge = std::get_if<Merge>(&action)) {
        for (auto& state : merge->states) {
          // The write's stamp, for onDeltaApplied (0: none, or not a pushed delta).
          uint64_t stampMillis = merge->repair ? 0 : state.maxHlc().millis();
          // (`r` by const reference and copied for `user`: g++ 12 at -O2
          // reports a false maybe-uninitialized for a moved Result here.)
          replica_.merge(std::move(state), [wake = wake_, user = onMerged_, ticket = merge->ticket,
                                            lag = stampMillis ? options_.onDeltaApplied : nullptr,
                                            stampMillis](const Result<storage::Applied>& r) {
            if (lag && r.ok() && r->changed) {
              auto since = std::chrono::system_clock::now().time_since_epoch() -
                           std::chrono::milliseconds(stampMillis);
              lag(std::max(std::chrono::nanoseconds(0),
                           std::chrono::duration_cast<std::chrono::nanoseconds>(since)));
            }
            if (user) user(r);
            std::lock_guard lock(wake->mu);
            wake->merged.push_back(ticket);
            if (wake->async) uv_async_send(wake->async);
          });
        }
      } else if (auto* persist = std::get_if<PersistMembers>(&action)) {
        if (!options_.dataDir.empty()) {
          // best effort: seeds still work
          (void)saveMembers(options_.dataDir + "/members", persist->members);
        }
      } else if (auto* line = std::get_if<Warn>(&action)) {
        warn(line->message);
      }
    }
  }
}

// ---- connections ----------------------------------------------------------

void Cluster::Impl::accept() {
  if (stopping_) return;
  if (acceptsThisTurn_ >= kAcceptsPerTurn) {
    acceptWaiting_ = true;  // not taken: libuv stops listening until afterIo_
    return;
  }
  ++acceptsThisTurn_;
  std::lock_guard lock(mu_);
  auto* c = new Conn(this, options_.maxFrameBytes);
  uv_tcp_init(&loop_, &c->tcp);
  c->tcp.data = c;
  c->inbound = true;
  if (uv_accept(reinterpret_cast<uv_stream_t*>(&server_),
                reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) {
    c->closing = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp),
             [](uv_handle_t* h) { delete static_cast<Conn*>(h->data); });
    return;
  }
  sockaddr_storage peer;
  int peerLen = sizeof peer;
  if (uv_tcp_getpeername(&c->tcp, reinterpret_cast<sockaddr*>(&peer), &peerLen) == 0) {
    c->remote = formatAddress(peer);
  }
  c->serial = ++acceptSerial_;
  c->host = hostOf(c->remote);
  // Until it says hello with a cluster key it is a stranger: past the caps,
  // the oldest stranger of its address (else of all) makes room. Evicting
  // rather than refusing: a peer with the key needs one round trip of the
  // pool's time, however many strangers keep reconnecting.
  size_t strangers = 0, fromHost = 0;
  Conn *oldest = nullptr, *oldestFromHost = nullptr;
  for (auto& [id, other] : conns_) {
    if (!other->inbound || other->closing || other->snapshot || core_->helloReceived(id)) continue;
    ++strangers;
    if (!oldest || other->serial < oldest->serial) oldest = other;
    if (other->host == c->host) {
      ++fromHost;
      if (!oldestFromHost || other->serial < oldestFromHost->serial) oldestFromHost = other;
    }
  }
  Conn* evict = fromHost >= kMaxStrangersPerHost ? oldestFromHost
                : strangers >= kMaxStrangers     ? oldest
                                                 : nullptr;
  if (evict) {
    close(evict, true);
    ++wire_.connectionsRefused;
  }
  c->id = core_->accepted(now(), c->remote);
  conns_[c->id] = c;
  connected(c, 0);
  execute();
}

void Cluster::Impl::dial(ConnId id, const std::string& address) {
  auto* c = new Conn(this, options_.maxFrameBytes);
  uv_tcp_init(&loop_, &c->tcp);
  c->tcp.data = c;
  c->id = id;
  c->remote = address;
  c->host = hostOf(address);
  conns_[id] = c;
  sockaddr_storage addr;
  if (!parseAddress(address, addr).ok()) {
    close(c, true);
    return;
  }
  auto* req = new uv_connect_t;
  req->data = c;
  int rc = uv_tcp_connect(req, &c->tcp, reinterpret_cast<sockaddr*>(&addr),
                          [](uv_connect_t* r, int status) {
                            auto* conn = static_cast<Conn*>(r->data);
                            delete r;
                            if (status == UV_ECANCELED) return;  // closed meanwhile
                            std::lock_guard lock(conn->impl->mu_);
                            conn->impl->connected(conn, status);
                            conn->impl->execute();
                          });
  if (rc != 0) {
    delete req;
    close(c, true);
  }
}

void Cluster::Impl::connected(Conn* c, int status) {
  if (c->closing) return;
  if (status != 0) {
    close(c, true);
    return;
  }
  c->connected = true;
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&c->tcp),
      [](uv_handle_t*, size_t, uv_buf_t* buf) {
        static thread_local char buffer[64 * 1024];
        *buf = uv_buf_init(buffer, sizeof buffer);
      },
      [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
        auto* conn = static_cast<Conn*>(s->data);
        std::lock_guard lock(conn->impl->mu_);
        conn->impl->read(conn, n, buf);
        conn->impl->execute();
      });
  // Both sides send their challenge at once; the dialler says hello once it
  // has the acceptor's (the core, when told the connection opened).
  write(c, c->channel.preamble(), 0, false);
}

void Cluster::Impl::read(Conn* c, ssize_t n, const uv_buf_t* buf) {
  if (c->closing) return;
  if (n < 0) {
    if (!c->inbound && c->channel.ready() && !core_->helloReceived(c->id)) {
      // The peer closes on a frame it cannot authenticate, silently: say
      // here, on the side that can act on it, what that most likely means.
      auto it = lastWarned_.find(c->host);
      if (it == lastWarned_.end() || now() - it->second >= kWarnEveryMillis) {
        if (lastWarned_.size() >= 1024) lastWarned_.clear();
        lastWarned_[c->host] = now();
        warn("gossip: " + c->remote + " closed the connection without answering this node's " +
             "hello: it probably does not have this node's primary cluster key " +
             keyring_->primary().fingerprint() + " (`chorus cluster keys list` on both)");
      }
    }
    close(c, true);
    return;
  }
  c->channel.append(buf->base, size_t(n));
  auto keys = keyring_;
  using Kind = SecureChannel::Received::Kind;
  for (;;) {
    bool wasReady = c->channel.ready();
    auto received = c->channel.next(*keys);
    if (!wasReady && c->channel.ready()) {
      core_->opened(now(), c->id);  // the dialler speaks first
      execute();
      if (c->closing) return;
    }
    if (received.kind == Kind::kNeedMore) return;
    if (received.kind != Kind::kFrame) {
      refused(c, received.kind, received.why);
      close(c, true);
      return;
    }
    if (c->snapshot ||
        (c->inbound && !core_->helloReceived(c->id) && isSnapshotFrame(received.body))) {
      serveSnapshot(c, std::move(received.body));
      if (c->closing) return;
      continue;
    }
    core_->received(now(), c->id, std::move(received.body));
    execute();
    if (c->closing) return;
  }
}

void Cluster::Impl::serveSnapshot(Conn* c, kj::Array<capnp::word> body) {
  if (c->finishing) return;  // it was told why it ends; nothing more is read
  if (!c->snapshot) {
    c->snapshot = true;
    core_->closed(now(), c->id);  // not a member's connection: the core forgets it
  }
  size_t bytes = body.size() * sizeof(capnp::word) + kSealOverheadBytes;
  auto parsed = ParsedFrame::parse(std::move(body));
  if (!parsed.ok() || parsed.value()->root().which() != wire::Frame::SNAPSHOT) {
    ++wire_.malformedFrames;
    close(c, false);
    return;
  }
  ++wire_.framesIn;
  wire_.bytesIn += bytes;
  snapshots_->received(now(), c->id, parsed.value()->root().getSnapshot());
  executeSnapshots();
}

void Cluster::Impl::executeSnapshots() {
  for (auto& send : snapshots_->takeSends()) {
    auto it = conns_.find(send.conn);
    if (it == conns_.end() || it->second->closing || !it->second->snapshot ||
        it->second->finishing) {
      continue;
    }
    Conn* c = it->second;
    if (send.close) {
      finish(c);
    } else {
      write(c, c->channel.seal(keyring_->primary(), send.body), 0, true);
    }
  }
}

void Cluster::Impl::finish(Conn* c) {
  if (c->closing || c->finishing) return;
  c->finishing = true;
  auto* req = new uv_shutdown_t;
  req->data = c;
  int rc =
      uv_shutdown(req, reinterpret_cast<uv_stream_t*>(&c->tcp), [](uv_shutdown_t* r, int status) {
        auto* conn = static_cast<Conn*>(r->data);
        delete r;
        if (status == UV_ECANCELED) return;  // closed meanwhile
        std::lock_guard lock(conn->impl->mu_);
        conn->impl->close(conn, false);
      });
  if (rc != 0) {
    delete req;
    close(c, false);
  }
}

// Counts a refused frame and warns, at most once per peer host every 10 s.
void Cluster::Impl::refused(Conn* c, SecureChannel::Received::Kind kind, const std::string& why) {
  using Kind = SecureChannel::Received::Kind;
  if (kind == Kind::kAuthFailed) {
    ++wire_.authFailures;
  } else if (kind == Kind::kReplayed) {
    ++wire_.replaysRefused;
  } else {
    ++wire_.malformedFrames;
  }
  auto it = lastWarned_.find(c->host);
  if (it != lastWarned_.end() && now() - it->second < kWarnEveryMillis) return;
  if (lastWarned_.size() >= 1024) lastWarned_.clear();  // bounded; at worst a few more lines
  lastWarned_[c->host] = now();
  std::string peer = c->remote.empty() ? "a peer" : c->remote;
  if (std::string id = core_->peerOf(c->id); !id.empty()) peer += " (" + id + ")";
  switch (kind) {
    case Kind::kAuthFailed:
      warn("gossip: frame from " + peer +
           " failed authentication: the peer uses a cluster key this node does not have, or "
           "the frame was tampered with (" +
           why +
           "); connection closed. Give every node the same key (`chorus cluster keys "
           "install`); `chorus cluster keys list` shows fingerprints");
      break;
    case Kind::kNotSealed:
      warn("gossip: refused a connection from " + peer + ": " + why +
           "; every node needs this version and a cluster key");
      break;
    case Kind::kReplayed:
      warn("gossip: frame from " + peer + " refused as a replay: " + why + "; connection closed");
      break;
    default:
      warn("gossip: stream from " + peer + " is not gossip: " + why + "; connection closed");
      break;
  }
}

void Cluster::Impl::close(Conn* c, bool tell) {
  if (c->closing) return;
  c->closing = true;
  conns_.erase(c->id);
  if (c->snapshot) {
    snapshots_->closed(now(), c->id);
  } else if (tell) {
    core_->closed(now(), c->id);
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), [](uv_handle_t* h) {
    static_cast<Conn*>(h->data)->impl->closed(static_cast<Conn*>(h->data));
  });
}

void Cluster::Impl::closed(Conn* c) {
  // Writes still queued were cancelled before this callback; their
  // callbacks already ran.
  delete c;
}

void Cluster::Impl::write(Conn* c, std::string bytes, uint64_t deltas, bool frame) {
  if (c->closing || !c->connected) {
    if (frame && !c->snapshot) core_->drained(c->id, bytes.size(), deltas);
    return;
  }
  auto* w = new Write{uv_write_t{}, std::move(bytes), c, deltas, frame};
  w->req.data = w;
  uv_buf_t buf = uv_buf_init(w->bytes.data(), unsigned(w->bytes.size()));
  int rc = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&c->tcp), &buf, 1,
                    [](uv_write_t* req, int status) {
                      auto* w = static_cast<Write*>(req->data);
                      Conn* conn = w->conn;
                      Impl* impl = conn->impl;
                      // On the loop thread, from the loop (also the
                      // writes a close cancelled): mu_ is not held here.
                      std::lock_guard lock(impl->mu_);
                      if (!conn->closing && w->frame && !conn->snapshot) {
                        impl->core_->drained(conn->id, w->bytes.size(), w->deltas);
                      }
                      if (!conn->closing && status != 0) impl->close(conn, true);
                      if (!conn->closing) impl->execute();
                      delete w;
                    });
  if (rc != 0) {
    delete w;
    close(c, true);
    return;
  }
  // The core counts the frames it queued; the transport adds the preamble
  // and the snapshot frames.
  if (!frame || c->snapshot) wire_.bytesOut += buf.len;
  if (frame && c->snapshot) ++wire_.framesOut;
}

// ---- Cluster --------------------------------------------------------------------

Result<std::unique_ptr<Cluster>> Cluster::start(ClusterOptions options, storage::Store& store,
                                                Merged onMerged) {
  auto impl = std::make_unique<Impl>(std::move(options), store, std::move(onMerged));
  auto started = impl->start();
  if (!started.ok()) return started.error();
  return std::unique_ptr<Cluster>(new Cluster(std::move(impl)));
}

Cluster::Cluster(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Cluster::~Cluster() { impl_->stop(); }

const std::string& Cluster::nodeId() const { return impl_->options_.nodeId; }

std::string Cluster::address() const {
  std::lock_guard lock(impl_->mu_);
  return impl_->bound_;
}

void Cluster::publish(const crdt::ReviewDoc& delta) {
  if (!impl_->options_.pushDeltas) return;
  std::string encoded = delta.encode();  // on the caller's thread, not the loop's
  auto& wake = *impl_->wake_;
  std::lock_guard lock(wake.mu);
  // A loop that cannot keep up: drop the push (the write is durable here;
  // anti-entropy carries it), counted once per peer it did not reach.
  if (wake.outboxBytes + encoded.size() > impl_->options_.maxPendingDeltaBytes) {
    wake.outboxDropped += impl_->peerCount_.load();
    return;
  }
  wake.outboxBytes += encoded.size();
  wake.outbox.push_back(std::move(encoded));
  if (wake.async) uv_async_send(wake.async);
}

void Cluster::pull(const crdt::ReviewKey& key, const std::string& preferNode) {
  auto& wake = *impl_->wake_;
  std::lock_guard lock(wake.mu);
  if (wake.pulls.size() >= Wake::kMaxPulls) return;
  wake.pulls.emplace_back(key, preferNode);
  if (wake.async) uv_async_send(wake.async);
}

void Cluster::partition(const std::vector<std::string>& nodeIds) {
  std::lock_guard lock(impl_->mu_);
  impl_->core_->partition(nodeIds);
}

void Cluster::heal() {
  std::lock_guard lock(impl_->mu_);
  impl_->core_->heal();
}

std::vector<std::string> Cluster::partitioned() const {
  std::lock_guard lock(impl_->mu_);
  return impl_->core_->partitioned();
}

std::vector<MemberInfo> Cluster::members() const {
  std::vector<MemberInfo> out;
  {
    std::lock_guard lock(impl_->mu_);
    out = impl_->core_->members();
  }
  // The core keeps sync times in its (monotonic) clock: as wall-clock time.
  uint64_t steady = steadyMillis(), unix = unixMillis();
  for (auto& m : out) {
    if (m.lastSyncUnixMillis != 0) {
      m.lastSyncUnixMillis = unix - std::min(unix, steady - std::min(steady, m.lastSyncUnixMillis));
    }
  }
  return out;
}

const std::string& Cluster::region() const { return impl_->options_.region; }

Status Cluster::leave(std::chrono::milliseconds timeout) {
  {
    std::lock_guard lock(impl_->mu_);
    impl_->core_->leave(steadyMillis());
  }
  impl_->wake_->send();  // the loop executes the core's actions
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    {
      std::lock_guard lock(impl_->mu_);
      if (impl_->core_->leaveDone()) return okStatus();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return makeError(ErrorCode::kUnavailable,
                   "left, but no peer confirmed holding this node's writes within " +
                       std::to_string(timeout.count()) +
                       " ms (the announcement may still spread; anti-entropy did not finish)");
}

Status Cluster::remove(const std::string& nodeId) {
  Status s = okStatus();
  {
    std::lock_guard lock(impl_->mu_);
    s = impl_->core_->remove(steadyMillis(), nodeId);
  }
  impl_->wake_->send();
  return s;
}

bool Cluster::removed() const {
  std::lock_guard lock(impl_->mu_);
  return impl_->core_->removed();
}

ClusterStats Cluster::stats() const {
  std::lock_guard lock(impl_->mu_);
  ClusterStats s = impl_->core_->stats();
  addCounters(s, impl_->wire_);
  std::lock_guard wakeLock(impl_->wake_->mu);
  s.deltasDropped += impl_->wake_->outboxDropped;
  return s;
}

Status Cluster::installKey(const std::string& key) {
  auto parsed = parseClusterKey(key);
  if (!parsed.ok()) return parsed.error();
  return impl_->changeKeys([&](Keyring& ring) { return ring.install(parsed.value()); });
}

Status Cluster::useKey(const std::string& keyOrFingerprint) {
  return impl_->changeKeys([&](Keyring& ring) { return ring.use(keyOrFingerprint); });
}

Status Cluster::removeKey(const std::string& keyOrFingerprint) {
  return impl_->changeKeys([&](Keyring& ring) { return ring.remove(keyOrFingerprint); });
}

std::vector<KeyInfo> Cluster::keys() const {
  std::lock_guard lock(impl_->mu_);
  return impl_->keyring_->list();
}

}  // namespace chorus::gossip
