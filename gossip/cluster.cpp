#include "gossip/cluster.h"

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

#include "gossip/failure-detector.h"
#include "gossip/frame.h"
#include "gossip/keyring.h"
#include "gossip/member-file.h"
#include "gossip/reconciler.h"
#include "gossip/secure-channel.h"

namespace chorus::gossip {

const char* peerStateName(PeerState state) {
  switch (state) {
    case PeerState::kAlive:
      return "alive";
    case PeerState::kSuspect:
      return "suspect";
    case PeerState::kDead:
      return "dead";
  }
  return "?";
}

namespace {

constexpr uint64_t kMinBackoffMillis = 100;
constexpr uint64_t kMaxBackoffMillis = 2000;
constexpr uint64_t kTickMillis = 50;
constexpr size_t kMaxDeltaFrameBytes = 1u << 20;  // one deltas frame carries at most ~this
constexpr size_t kMaxMembers = 1024;              // members accepted from gossip
constexpr size_t kMaxTokenBytes = 256;            // node ids and addresses
constexpr size_t kMaxInbound = 256;               // connections to us that completed hello
// Strangers: connections to us that have not completed hello (authenticated
// with a cluster key). A newcomer beyond either cap evicts the oldest one
// (of its address, else of all), so a peer with the key always gets its
// one round trip.
constexpr size_t kMaxStrangers = 64;
constexpr size_t kMaxStrangersPerHost = 8;
constexpr uint64_t kStrangerTimeoutMillis = 5'000;  // a connection to us must say hello by then
constexpr uint64_t kHelloTimeoutMillis = 10'000;    // a connection we dialled must answer by then
constexpr uint64_t kWarnEveryMillis = 10'000;       // authentication warnings per peer host
// Room in the kernel's queue for strangers reconnecting as they are evicted,
// so a peer's connection is not dropped there (SYN retried after 1, 3, 7 s).
constexpr int kListenBacklog = 1024;
// Accepted per loop turn at most. libuv accepts for as long as the kernel has
// connections waiting; strangers reconnecting as fast as they are evicted
// would keep it there, and no frame would ever be read.
constexpr int kAcceptsPerTurn = 16;

uint64_t unixMillis() {
  return uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
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

bool validToken(capnp::Text::Reader t) {
  if (t.size() == 0 || t.size() > kMaxTokenBytes) return false;
  for (unsigned char c : t) {
    if (c <= ' ' || c == 0x7f) return false;
  }
  return true;
}

std::string str(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

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

}  // namespace

class Cluster::Impl {
 public:
  Impl(ClusterOptions options, storage::Store& store, Merged onMerged)
      : options_(std::move(options)),
        store_(store),
        onMerged_(onMerged ? std::move(onMerged) : [](Result<storage::Applied>) {}),
        reconciler_(store, CountedMerge{mergesPending_, onMerged_},
                    std::min(Reconciler::kDefaultMaxMessageBytes, options_.maxFrameBytes / 2),
                    options_.admit),
        rng_(std::random_device{}()) {}

  Status start();
  void stop();
  Status loadKeyring();

  // ---- any thread (under mu_) -------------------------------------------
  mutable std::mutex mu_;
  std::vector<std::string> outbox_;  // encoded deltas, not yet handed to the loop
  size_t outboxBytes_ = 0;
  std::shared_ptr<const Keyring> keyring_;  // replaced whole on a change
  bool syncRequested_ = false;
  std::set<std::string> blocked_;
  ClusterStats stats_;
  std::string bound_;

  struct Peer {
    std::string gossipAddress;
    std::string rpcAddress;
    PeerState state = PeerState::kDead;
    uint64_t lastSyncUnixMillis = 0;
    uint64_t pendingDeltas = 0;
    double phi = INFINITY;
    PhiAccrualDetector detector;
    explicit Peer(double minMean) : detector(minMean) {}
  };
  std::map<std::string, Peer> peers_;  // by node id, never this node

  // Safe from any thread at any time, also during and after stop().
  void wake() {
    std::lock_guard lock(mu_);
    if (!wakeClosed_) uv_async_send(&wake_);
  }
  bool wakeClosed_ = false;  // guarded by mu_

  std::shared_ptr<const Keyring> keyring() const {
    std::lock_guard lock(mu_);
    return keyring_;
  }
  // Applies `change` to a copy of the keyring, persists it, then publishes
  // it. Any thread; changes are serialized.
  Status changeKeys(const std::function<Status(Keyring&)>& change);

  const ClusterOptions options_;

 private:
  struct Conn;
  struct Dialer {
    std::string address;
    Conn* conn = nullptr;
    uint64_t nextAttempt = 0;  // loop time, ms
    uint64_t backoff = kMinBackoffMillis;
    bool self = false;  // the address is this node's own: never dial
    // Dialled for good: a seed, an address a node gave for itself, or one
    // that answered with a hello. Any other (learned second-hand, or from
    // the member file) is dropped if unanswered after forgetUnansweredAfter.
    bool keep = false;
    uint64_t createdAt = 0;  // loop time
  };
  struct Conn {
    Impl* impl;
    uv_tcp_t tcp;
    Dialer* dialer = nullptr;  // set for connections this node dialled
    bool inbound = false;      // accepted, not dialled
    uint64_t serial = 0;       // accept order (inbound)
    std::string remote;        // the peer's address, for logs
    std::string host;          // remote without the port (inbound)
    std::string peerId;        // from the first frame the peer sent
    bool helloReceived = false;
    bool connected = false;
    bool closing = false;
    SecureChannel channel;
    size_t queuedBytes = 0;
    uint64_t queuedDeltas = 0;
    uint64_t openedAt = 0;  // loop time
    Conn(Impl* i, size_t maxFrame) : impl(i), channel(maxFrame) {}
  };
  struct Write {
    uv_write_t req;
    std::string bytes;
    Conn* conn;
    uint64_t deltas;
  };

  // ---- loop thread ------------------------------------------------------
  void run();
  void onWake();
  void onTick();
  void accept();
  void dial(Dialer& d);
  void connected(Conn* c, int status);
  void read(Conn* c, ssize_t n, const uv_buf_t* buf);
  void close(Conn* c);
  void closed(Conn* c);
  // Seals a frame (encodeFrame's bytes) for `c` and queues it.
  bool send(Conn* c, const std::string& frame, uint64_t deltas = 0);
  // Queues bytes as they are; `frame`: counted in framesOut.
  bool write(Conn* c, std::string bytes, uint64_t deltas, bool frame);
  void refused(Conn* c, SecureChannel::Received::Kind kind, const std::string& why);
  // `count` states from peer `from` that options_.admit refused (`why`, the
  // last one's reason): counted, and logged at most every kWarnEveryMillis.
  void refusedState(const std::string& from, const std::string& why, uint64_t count = 1);
  void handle(Conn* c, ParsedFrame& frame);
  void sendHello(Conn* c);
  std::string memberFrame(bool ack);
  void learnMembers(const std::string& from, capnp::List<wire::Member>::Reader list);
  void learn(const std::string& id, const std::string& gossip, const std::string& rpc,
             bool authoritative);
  // A dialler for `address` unless there is one; `keep` marks it for good.
  void addDialer(const std::string& address, bool keep);
  // Drops diallers that are no seed and no member's address, and second-hand
  // ones never answered within forgetUnansweredAfter.
  void pruneDialers();
  void heard(const std::string& id);
  void updateStates();
  void flushDeltas();
  void startSync(const std::string& peerId);
  void maybeSync();
  void sessionDone(const std::string& peerId);
  void persist();
  Conn* outboundTo(const std::string& peerId);
  bool blocked(const std::string& peerId);  // takes mu_
  uint64_t now() { return uv_now(&loop_); }
  // After this long a session (started or answered) is given up.
  uint64_t sessionTimeoutMillis() const {
    return std::max<uint64_t>(5000, 3 * uint64_t(options_.antiEntropyInterval.count()));
  }

  storage::Store& store_;
  Merged onMerged_;
  // States from anti-entropy handed to the store and not yet committed; a
  // node starts no session while its last one's states are still merging,
  // or it would be sent the same states again.
  // Shared with the store's callbacks (as is every counter below), which
  // may run after this Impl is gone: the store drains its queue when closed.
  std::shared_ptr<std::atomic<int64_t>> mergesPending_ = std::make_shared<std::atomic<int64_t>>(0);
  // Bytes of received deltas handed to the store and not yet committed.
  std::shared_ptr<std::atomic<int64_t>> deltaBytesMerging_ =
      std::make_shared<std::atomic<int64_t>>(0);
  struct CountedMerge {
    std::shared_ptr<std::atomic<int64_t>> pending;
    Merged user;
    void operator()(Result<storage::Applied> r) const {
      pending->fetch_sub(1);
      user(std::move(r));
    }
  };
  Reconciler reconciler_;  // loop thread
  std::mt19937_64 rng_;    // loop thread

  uv_loop_t loop_;
  uv_tcp_t server_;
  uv_async_t wake_;
  uv_timer_t tick_;
  uv_check_t afterIo_;  // after each turn's I/O: resumes accepting
  int acceptsThisTurn_ = 0;
  bool acceptWaiting_ = false;  // a connection is waiting for accept()
  std::thread thread_;
  std::atomic<bool> stopping_{false};

  std::set<Conn*> conns_;
  std::map<std::string, std::unique_ptr<Dialer>> dialers_;  // by address
  std::set<std::string> seeds_;  // options_.seeds, but this node's own address
  uint64_t acceptSerial_ = 0;
  uint64_t lastPrune_ = 0;
  std::string sessionPeer_;                    // anti-entropy session this node started
  bool sessionMore_ = false;                   // a message in it was cut to the size cap
  std::string syncAgain_;                      // continue with this peer at once
  std::map<std::string, uint64_t> busyUntil_;  // peers that answered busy: not before
  std::string respondingTo_;                   // the peer whose session this node is answering
  uint64_t respondingSince_ = 0;
  uint64_t sessionStarted_ = 0;
  uint64_t lastHeartbeat_ = 0;
  uint64_t lastAntiEntropy_ = 0;
  std::set<std::string> syncSoon_;              // peers that came back alive
  std::map<std::string, uint64_t> lastWarned_;  // peer host -> loop time of the last warning
  uint64_t lastRefusedStateWarning_ = 0;        // loop time; 0 = never
  std::mutex keyChangeMu_;  // serializes keyring changes (held across the file write)
  bool membersDirty_ = false;
  uint64_t lastPersist_ = 0;
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
  if (options_.antiEntropyInterval.count() <= 0 || options_.heartbeatInterval.count() <= 0 ||
      options_.forgetUnansweredAfter.count() <= 0) {
    return makeError(ErrorCode::kInvalidArgument,
                     "cluster: anti-entropy, heartbeat and forget intervals must be positive");
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
                     "cannot listen for gossip on " + options_.listen + ": " + uv_strerror(rc));
  }
  sockaddr_storage boundAddr;
  int len = sizeof boundAddr;
  uv_tcp_getsockname(&server_, reinterpret_cast<sockaddr*>(&boundAddr), &len);
  bound_ = formatAddress(boundAddr);

  if (!options_.dataDir.empty()) {
    auto known = loadMembers(options_.dataDir + "/members");
    if (known.ok()) {
      // Not said by the node itself: dialled until forgetUnansweredAfter
      // unless it answers (a node that is down then dials this one itself).
      for (const auto& m : known.value()) learn(m.nodeId, m.gossipAddress, m.rpcAddress, false);
    }
  }
  membersDirty_ = false;
  for (const auto& seed : options_.seeds) {
    if (seed == bound_ || seed == options_.advertise) continue;
    seeds_.insert(seed);
    addDialer(seed, true);
  }

  uv_async_init(&loop_, &wake_, [](uv_async_t* a) { static_cast<Impl*>(a->data)->onWake(); });
  wake_.data = this;
  uv_timer_init(&loop_, &tick_);
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
  tick_.data = this;
  uv_timer_start(
      &tick_, [](uv_timer_t* t) { static_cast<Impl*>(t->data)->onTick(); }, 0, kTickMillis);
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
  Keyring next = *keyring();
  if (auto changed = change(next); !changed.ok()) return changed;
  if (!options_.dataDir.empty()) {
    if (auto saved = next.save(options_.dataDir + "/keyring"); !saved.ok()) return saved.error();
  }
  std::lock_guard lock(mu_);
  keyring_ = std::make_shared<const Keyring>(std::move(next));
  return okStatus();
}

void Cluster::Impl::run() {
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

void Cluster::Impl::stop() {
  if (!thread_.joinable()) return;
  stopping_ = true;
  wake();
  thread_.join();
}

void Cluster::Impl::onWake() {
  if (stopping_) {
    if (membersDirty_) persist();
    uv_timer_stop(&tick_);
    for (Conn* c : std::vector<Conn*>(conns_.begin(), conns_.end())) close(c);
    uv_close(reinterpret_cast<uv_handle_t*>(&server_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&afterIo_), nullptr);
    {
      std::lock_guard lock(mu_);
      wakeClosed_ = true;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&wake_), nullptr);
    return;
  }
  flushDeltas();
  bool sync = false;
  {
    std::lock_guard lock(mu_);
    std::swap(sync, syncRequested_);
  }
  if (sync && sessionPeer_.empty()) lastAntiEntropy_ = 0;  // the tick starts one at once
}

// ---- connections ----------------------------------------------------------

void Cluster::Impl::accept() {
  if (stopping_) return;
  if (acceptsThisTurn_ >= kAcceptsPerTurn) {
    acceptWaiting_ = true;  // not taken: libuv stops listening until afterIo_
    return;
  }
  ++acceptsThisTurn_;
  auto* c = new Conn(this, options_.maxFrameBytes);
  uv_tcp_init(&loop_, &c->tcp);
  c->tcp.data = c;
  c->openedAt = now();
  conns_.insert(c);
  if (uv_accept(reinterpret_cast<uv_stream_t*>(&server_),
                reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) {
    close(c);
    return;
  }
  sockaddr_storage peer;
  int peerLen = sizeof peer;
  if (uv_tcp_getpeername(&c->tcp, reinterpret_cast<sockaddr*>(&peer), &peerLen) == 0) {
    c->remote = formatAddress(peer);
  }
  c->inbound = true;
  c->serial = ++acceptSerial_;
  c->host = hostOf(c->remote);
  // Until it says hello with a cluster key it is a stranger: past the caps,
  // the oldest stranger of its address (else of all) makes room. Evicting
  // rather than refusing: a peer with the key needs one round trip of the
  // pool's time, however many strangers keep reconnecting.
  size_t strangers = 0, fromHost = 0;
  Conn *oldest = nullptr, *oldestFromHost = nullptr;
  for (Conn* other : conns_) {
    if (other == c || !other->inbound || other->helloReceived || other->closing) continue;
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
    close(evict);
    std::lock_guard lock(mu_);
    ++stats_.connectionsRefused;
  }
  connected(c, 0);
}

void Cluster::Impl::dial(Dialer& d) {
  sockaddr_storage addr;
  if (!parseAddress(d.address, addr).ok()) {
    d.nextAttempt = now() + kMaxBackoffMillis;
    return;
  }
  auto* c = new Conn(this, options_.maxFrameBytes);
  uv_tcp_init(&loop_, &c->tcp);
  c->tcp.data = c;
  c->dialer = &d;
  c->remote = d.address;
  c->openedAt = now();
  d.conn = c;
  conns_.insert(c);
  auto* req = new uv_connect_t;
  req->data = c;
  int rc = uv_tcp_connect(req, &c->tcp, reinterpret_cast<sockaddr*>(&addr),
                          [](uv_connect_t* r, int status) {
                            auto* conn = static_cast<Conn*>(r->data);
                            delete r;
                            if (status == UV_ECANCELED) return;  // closed meanwhile
                            conn->impl->connected(conn, status);
                          });
  if (rc != 0) {
    delete req;
    close(c);
  }
}

void Cluster::Impl::connected(Conn* c, int status) {
  if (c->closing) return;
  if (status != 0) {
    close(c);
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
        conn->impl->read(conn, n, buf);
      });
  // Both sides send their challenge at once; the dialler says hello once it
  // has the acceptor's (see read()).
  write(c, c->channel.preamble(), 0, false);
}

void Cluster::Impl::read(Conn* c, ssize_t n, const uv_buf_t* buf) {
  if (n < 0) {
    if (c->dialer && c->channel.ready() && !c->helloReceived && !c->closing) {
      // The peer closes on a frame it cannot authenticate, silently: say
      // here, on the side that can act on it, what that most likely means.
      std::string host = hostOf(c->remote);
      auto it = lastWarned_.find(host);
      if (it == lastWarned_.end() || now() - it->second >= kWarnEveryMillis) {
        if (lastWarned_.size() >= 1024) lastWarned_.clear();
        lastWarned_[host] = now();
        warn("gossip: " + c->remote + " closed the connection without answering this node's " +
             "hello: it probably does not have this node's primary cluster key " +
             keyring()->primary().fingerprint() + " (`chorus cluster keys list` on both)");
      }
    }
    close(c);
    return;
  }
  if (c->closing) return;
  c->channel.append(buf->base, size_t(n));
  auto keys = keyring();
  using Kind = SecureChannel::Received::Kind;
  for (;;) {
    bool wasReady = c->channel.ready();
    auto received = c->channel.next(*keys);
    if (!wasReady && c->channel.ready() && c->dialer) {
      sendHello(c);  // the dialler speaks first
      if (c->closing) return;
    }
    if (received.kind == Kind::kNeedMore) return;
    if (received.kind != Kind::kFrame) {
      refused(c, received.kind, received.why);
      close(c);
      return;
    }
    size_t sealedBytes = received.body.size() * sizeof(capnp::word) + kSealOverheadBytes;
    std::optional<Error> bad;
    auto frame = ParsedFrame::parse(std::move(received.body));
    if (!frame.ok()) {
      bad = frame.error();
    } else {
      {
        std::lock_guard lock(mu_);
        ++stats_.framesIn;
        stats_.bytesIn += sealedBytes;
      }
      auto exception = kj::runCatchingExceptions([&] { handle(c, *frame.value()); });
      KJ_IF_MAYBE (e, exception) {
        bad = makeError(ErrorCode::kCorruption, e->getDescription().cStr());
      }
    }
    if (bad) {
      std::lock_guard lock(mu_);
      ++stats_.malformedFrames;
    }
    if (bad || c->closing) {
      close(c);
      return;
    }
  }
}

// Counts a refused frame and warns, at most once per peer host every 10 s.
void Cluster::Impl::refusedState(const std::string& from, const std::string& why, uint64_t count) {
  {
    std::lock_guard lock(mu_);
    stats_.statesRefused += count;
  }
  if (lastRefusedStateWarning_ != 0 && now() - lastRefusedStateWarning_ < kWarnEveryMillis) return;
  lastRefusedStateWarning_ = now();
  warn("gossip: refused " + std::to_string(count) + " review state(s) from " + from +
       " that this node's API would not accept (" + why +
       "); do all nodes run the same version and limits?");
}

void Cluster::Impl::refused(Conn* c, SecureChannel::Received::Kind kind, const std::string& why) {
  using Kind = SecureChannel::Received::Kind;
  {
    std::lock_guard lock(mu_);
    if (kind == Kind::kAuthFailed) {
      ++stats_.authFailures;
    } else if (kind == Kind::kReplayed) {
      ++stats_.replaysRefused;
    } else {
      ++stats_.malformedFrames;
    }
  }
  std::string host = hostOf(c->remote);
  auto it = lastWarned_.find(host);
  if (it != lastWarned_.end() && now() - it->second < kWarnEveryMillis) return;
  if (lastWarned_.size() >= 1024) lastWarned_.clear();  // bounded; at worst a few more lines
  lastWarned_[host] = now();
  std::string peer = c->remote.empty() ? "a peer" : c->remote;
  if (!c->peerId.empty()) peer += " (" + c->peerId + ")";
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

void Cluster::Impl::close(Conn* c) {
  if (c->closing) return;
  c->closing = true;
  if (c->dialer) {
    Dialer* d = c->dialer;
    d->conn = nullptr;
    c->dialer = nullptr;
    uint64_t jitter = std::uniform_int_distribution<uint64_t>(d->backoff / 2, d->backoff)(rng_);
    d->nextAttempt = now() + jitter;
    d->backoff = std::min(d->backoff * 2, kMaxBackoffMillis);
  }
  if (!c->peerId.empty() && c->peerId == sessionPeer_) sessionPeer_.clear();
  uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), [](uv_handle_t* h) {
    static_cast<Conn*>(h->data)->impl->closed(static_cast<Conn*>(h->data));
  });
}

void Cluster::Impl::closed(Conn* c) {
  conns_.erase(c);
  // Writes still queued were cancelled before this callback; their
  // callbacks already ran and released their bytes.
  delete c;
}

bool Cluster::Impl::send(Conn* c, const std::string& frame, uint64_t deltas) {
  if (c->closing || !c->connected || !c->channel.ready()) return false;
  if (!c->peerId.empty() && blocked(c->peerId)) {
    std::lock_guard lock(mu_);
    ++stats_.partitionDropped;
    return false;
  }
  // A peer that stops reading: deltas stop at maxQueuedBytesPerPeer
  // (flushDeltas); anything else stops a frame later, with the connection.
  if (c->queuedBytes + frame.size() > options_.maxQueuedBytesPerPeer + options_.maxFrameBytes) {
    close(c);
    return false;
  }
  std::string_view body(frame);
  body.remove_prefix(kFrameHeaderBytes);
  return write(c, c->channel.seal(keyring()->primary(), body), deltas, true);
}

bool Cluster::Impl::write(Conn* c, std::string bytes, uint64_t deltas, bool frame) {
  if (c->closing || !c->connected) return false;
  auto* w = new Write{uv_write_t{}, std::move(bytes), c, deltas};
  w->req.data = w;
  uv_buf_t buf = uv_buf_init(w->bytes.data(), unsigned(w->bytes.size()));
  c->queuedBytes += w->bytes.size();
  c->queuedDeltas += deltas;
  {
    std::lock_guard lock(mu_);
    stats_.framesOut += frame;
    stats_.bytesOut += w->bytes.size();
    if (deltas && !c->peerId.empty()) {
      auto it = peers_.find(c->peerId);
      if (it != peers_.end()) it->second.pendingDeltas += deltas;
    }
  }
  int rc = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&c->tcp), &buf, 1,
                    [](uv_write_t* req, int status) {
                      auto* w = static_cast<Write*>(req->data);
                      Conn* conn = w->conn;
                      Impl* impl = conn->impl;
                      conn->queuedBytes -= w->bytes.size();
                      conn->queuedDeltas -= w->deltas;
                      if (w->deltas && !conn->peerId.empty()) {
                        std::lock_guard lock(impl->mu_);
                        auto it = impl->peers_.find(conn->peerId);
                        if (it != impl->peers_.end()) {
                          it->second.pendingDeltas -= std::min(it->second.pendingDeltas, w->deltas);
                        }
                      }
                      delete w;
                      if (status != 0) impl->close(conn);
                    });
  if (rc != 0) {
    c->queuedBytes -= w->bytes.size();
    c->queuedDeltas -= deltas;
    delete w;
    close(c);
    return false;
  }
  return true;
}

bool Cluster::Impl::blocked(const std::string& peerId) {
  std::lock_guard lock(mu_);
  return blocked_.count(peerId) != 0;
}

Cluster::Impl::Conn* Cluster::Impl::outboundTo(const std::string& peerId) {
  std::string address;
  {
    std::lock_guard lock(mu_);
    auto it = peers_.find(peerId);
    if (it == peers_.end()) return nullptr;
    address = it->second.gossipAddress;
  }
  auto d = dialers_.find(address);
  if (d != dialers_.end() && d->second->conn && d->second->conn->helloReceived &&
      d->second->conn->peerId == peerId && !d->second->conn->closing) {
    return d->second->conn;
  }
  // A seed dialled under another address spelling.
  for (auto& [addr, dialer] : dialers_) {
    Conn* c = dialer->conn;
    if (c && c->helloReceived && c->peerId == peerId && !c->closing) return c;
  }
  return nullptr;
}

// ---- frames ---------------------------------------------------------------

void Cluster::Impl::sendHello(Conn* c) {
  capnp::MallocMessageBuilder message(128);
  auto m = newFrame(message, options_.nodeId).initHello();
  m.setNodeId(options_.nodeId);
  m.setGossipAddress(options_.advertise.empty() ? bound_ : options_.advertise);
  m.setRpcAddress(options_.rpcAddress);
  send(c, encodeFrame(message));
}

std::string Cluster::Impl::memberFrame(bool ack) {
  capnp::MallocMessageBuilder message;
  auto frame = newFrame(message, options_.nodeId);
  std::lock_guard lock(mu_);
  auto list = ack ? frame.initAck(unsigned(peers_.size() + 1))
                  : frame.initHeartbeat(unsigned(peers_.size() + 1));
  list[0].setNodeId(options_.nodeId);
  list[0].setGossipAddress(options_.advertise.empty() ? bound_ : options_.advertise);
  list[0].setRpcAddress(options_.rpcAddress);
  unsigned i = 1;
  for (const auto& [id, p] : peers_) {
    list[i].setNodeId(id);
    list[i].setGossipAddress(p.gossipAddress);
    list[i].setRpcAddress(p.rpcAddress);
    ++i;
  }
  return encodeFrame(message);
}

void Cluster::Impl::handle(Conn* c, ParsedFrame& frame) {
  auto root = frame.root();
  if (!validToken(root.getFrom())) {
    close(c);
    std::lock_guard lock(mu_);
    ++stats_.malformedFrames;
    return;
  }
  std::string from = str(root.getFrom());
  if (from == options_.nodeId) {  // dialled ourselves (a seed list naming this node)
    if (c->dialer) c->dialer->self = true;
    close(c);
    return;
  }
  if (c->peerId.empty()) {
    c->peerId = from;
  } else if (c->peerId != from) {
    close(c);  // a connection speaks for one node only
    std::lock_guard lock(mu_);
    ++stats_.malformedFrames;
    return;
  }
  if (blocked(from)) {
    std::lock_guard lock(mu_);
    ++stats_.partitionDropped;
    return;
  }
  if (root.which() != wire::Frame::HELLO && !c->helloReceived) {
    close(c);  // every connection starts with a hello
    std::lock_guard lock(mu_);
    ++stats_.malformedFrames;
    return;
  }
  heard(from);
  switch (root.which()) {
    case wire::Frame::HELLO: {
      auto m = root.getHello();
      if (!validToken(m.getGossipAddress()) || str(m.getNodeId()) != from) {
        close(c);
        std::lock_guard lock(mu_);
        ++stats_.malformedFrames;
        return;
      }
      bool first = !c->helloReceived;
      if (first && c->inbound) {  // no longer a stranger: counts as a peer's connection
        size_t peers = 0;
        for (Conn* other : conns_) {
          peers += other->inbound && other->helloReceived && !other->closing;
        }
        if (peers >= kMaxInbound) {
          close(c);
          std::lock_guard lock(mu_);
          ++stats_.connectionsRefused;
          return;
        }
      }
      c->helloReceived = true;
      learn(from, str(m.getGossipAddress()), str(m.getRpcAddress()), true);
      if (c->dialer) {
        c->dialer->backoff = kMinBackoffMillis;
        c->dialer->keep = true;  // it answered
      } else if (first) {
        sendHello(c);
      }
      return;
    }
    case wire::Frame::HEARTBEAT:
      learnMembers(from, root.getHeartbeat());
      send(c, memberFrame(true));
      return;
    case wire::Frame::ACK:
      learnMembers(from, root.getAck());
      return;
    case wire::Frame::DELTAS: {
      uint64_t received = 0, dropped = 0;
      for (auto data : root.getDeltas()) {
        // The store queues without bound: past maxPendingDeltaBytes not yet
        // committed, drop (the sender's write is durable there, and
        // anti-entropy brings it once the store caught up).
        int64_t size = int64_t(data.size());
        if (deltaBytesMerging_->load() + size > int64_t(options_.maxPendingDeltaBytes)) {
          ++dropped;
          continue;
        }
        auto doc = crdt::ReviewDoc::decode(
            std::string_view(reinterpret_cast<const char*>(data.begin()), data.size()));
        if (!doc.ok()) {
          std::lock_guard lock(mu_);
          ++stats_.malformedFrames;
          continue;  // drop this delta; anti-entropy will bring the state
        }
        if (options_.admit) {
          if (auto admitted = options_.admit(*doc); !admitted.ok()) {
            refusedState(from, admitted.error().message);
            continue;
          }
        }
        ++received;
        *deltaBytesMerging_ += size;
        store_.merge(std::move(doc).value(), [merging = deltaBytesMerging_, user = onMerged_,
                                              size](Result<storage::Applied> r) {
          *merging -= size;
          user(std::move(r));
        });
      }
      std::lock_guard lock(mu_);
      stats_.deltasReceived += received;
      stats_.receivedDeltasDropped += dropped;
      return;
    }
    case wire::Frame::RECONCILE: {
      auto data = root.getReconcile();
      {
        std::lock_guard lock(mu_);
        stats_.antiEntropyBytes += frame.bytes();
      }
      // One repair at a time: while this node runs its own session or still
      // commits the states of one, it turns new sessions away; otherwise
      // after a heal every node would be sent the same states by several
      // peers at once.
      if (!respondingTo_.empty() && now() - respondingSince_ > sessionTimeoutMillis()) {
        respondingTo_.clear();
      }
      bool busy = !sessionPeer_.empty() || (!respondingTo_.empty() && respondingTo_ != from) ||
                  mergesPending_->load() > 0;
      uint64_t before = reconciler_.counters().statesReceived;
      uint64_t refusedBefore = reconciler_.counters().refused;
      // Counted before handing over: the store may commit them at once.
      int64_t guess = int64_t(data.size() / 64) + 1;  // about the states in it; corrected below
      *mergesPending_ += guess;
      auto reply = reconciler_.handle(
          std::string_view(reinterpret_cast<const char*>(data.begin()), data.size()), busy);
      uint64_t merged = reconciler_.counters().statesReceived - before;
      *mergesPending_ -= guess - int64_t(merged);
      if (uint64_t refused = reconciler_.counters().refused - refusedBefore; refused > 0) {
        refusedState(from, reconciler_.lastRefusal(), refused);
      }
      {
        std::lock_guard lock(mu_);
        stats_.statesRepaired += merged;
      }
      if (!reply.ok()) {
        if (reply.error().code == ErrorCode::kCorruption) {
          close(c);
          std::lock_guard lock(mu_);
          ++stats_.malformedFrames;
        }
        if (from == sessionPeer_) sessionPeer_.clear();
        return;
      }
      if (reconciler_.peerBusy() && from == sessionPeer_) {
        // Try elsewhere now, this peer a little later.
        sessionPeer_.clear();
        busyUntil_[from] = now() + std::uniform_int_distribution<uint64_t>(50, 250)(rng_);
        lastAntiEntropy_ = 0;
        return;
      }
      if (from == sessionPeer_ &&
          (reconciler_.peerHasMore() || (reply.value() && reply.value()->more))) {
        sessionMore_ = true;  // cut to the size cap: go again once it ends
      }
      if (from != sessionPeer_ && reply.value() && !reply.value()->last) {
        respondingTo_ = from;  // a session of the peer's is under way
        respondingSince_ = now();
      }
      if (reply.value()) {
        capnp::MallocMessageBuilder message;
        auto& out = *reply.value();
        newFrame(message, options_.nodeId)
            .setReconcile(capnp::Data::Reader(reinterpret_cast<const uint8_t*>(out.bytes.data()),
                                              out.bytes.size()));
        std::string bytes = encodeFrame(message);
        {
          std::lock_guard lock(mu_);
          stats_.antiEntropyBytes += bytes.size();
        }
        send(c, std::move(bytes));
        if (out.last && !out.busy) sessionDone(from);
      } else {
        sessionDone(from);
      }
      return;
    }
    default:
      return;
  }
}

// ---- membership -------------------------------------------------------------

void Cluster::Impl::learnMembers(const std::string& from, capnp::List<wire::Member>::Reader list) {
  size_t n = 0;
  for (auto m : list) {
    if (++n > kMaxMembers) break;
    if (!validToken(m.getNodeId()) || !validToken(m.getGossipAddress())) continue;
    std::string id = str(m.getNodeId());
    if (id == options_.nodeId) continue;
    std::string rpc = m.getRpcAddress().size() <= kMaxTokenBytes ? str(m.getRpcAddress()) : "";
    learn(id, str(m.getGossipAddress()), rpc, id == from);
  }
}

// `authoritative`: the node said this of itself (hello, or its own entry).
void Cluster::Impl::learn(const std::string& id, const std::string& gossip, const std::string& rpc,
                          bool authoritative) {
  if (id == options_.nodeId) return;
  bool isNew = false;
  std::string address;
  {
    std::lock_guard lock(mu_);
    auto it = peers_.find(id);
    if (it == peers_.end()) {
      if (peers_.size() >= kMaxMembers) return;
      it = peers_.emplace(id, Peer(double(options_.heartbeatInterval.count()))).first;
      it->second.gossipAddress = gossip;
      it->second.rpcAddress = rpc;
      membersDirty_ = true;
      isNew = true;
    } else if (authoritative &&
               (it->second.gossipAddress != gossip || it->second.rpcAddress != rpc)) {
      it->second.gossipAddress = gossip;
      it->second.rpcAddress = rpc;
      membersDirty_ = true;
    }
    address = it->second.gossipAddress;
  }
  // Only a member's own address is dialled (so diallers are bounded like
  // members); a second-hand mention of a known member adds none (its
  // dialler may have been dropped as unanswered: the node reaches this one
  // itself, or after a restart the member file brings it back).
  if (isNew || authoritative) addDialer(address, authoritative);
}

void Cluster::Impl::addDialer(const std::string& address, bool keep) {
  auto& d = dialers_[address];
  if (!d) {
    d = std::make_unique<Dialer>();
    d->address = address;
    d->createdAt = now();
    if (address == bound_ || address == options_.advertise) d->self = true;
  }
  d->keep = d->keep || keep;
  std::lock_guard lock(mu_);
  stats_.dialers = dialers_.size();
}

void Cluster::Impl::pruneDialers() {
  uint64_t t = now();
  lastPrune_ = t;
  std::set<std::string> addresses;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, p] : peers_) addresses.insert(p.gossipAddress);
  }
  uint64_t forgetAfter = uint64_t(options_.forgetUnansweredAfter.count());
  for (auto it = dialers_.begin(); it != dialers_.end();) {
    Dialer& d = *it->second;
    bool seed = seeds_.count(d.address) != 0;
    // No member's address any more (it gave another one for itself).
    bool orphan = !seed && !addresses.count(d.address);
    bool unanswered = !seed && !d.keep && !d.conn && t - d.createdAt >= forgetAfter;
    if (orphan && d.conn) close(d.conn);  // clears d.conn
    if (orphan || unanswered) {
      it = dialers_.erase(it);
    } else {
      ++it;
    }
  }
  std::lock_guard lock(mu_);
  stats_.dialers = dialers_.size();
}

void Cluster::Impl::heard(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = peers_.find(id);
  if (it != peers_.end()) it->second.detector.heartbeat(now());
}

void Cluster::Impl::updateStates() {
  std::vector<std::string> revived;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, p] : peers_) {
      p.phi = p.detector.phi(now());
      PeerState next = p.phi < options_.suspectPhi ? PeerState::kAlive
                       : p.phi < options_.deadPhi  ? PeerState::kSuspect
                                                   : PeerState::kDead;
      if (next == PeerState::kAlive && p.state != PeerState::kAlive) revived.push_back(id);
      p.state = next;
    }
  }
  // A peer back from a partition, a restart or a first contact: repair now
  // rather than at its turn.
  for (auto& id : revived) syncSoon_.insert(id);
}

void Cluster::Impl::persist() {
  membersDirty_ = false;
  lastPersist_ = now();
  if (options_.dataDir.empty()) return;
  std::vector<KnownMember> list;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, p] : peers_) list.push_back({id, p.gossipAddress, p.rpcAddress});
  }
  (void)saveMembers(options_.dataDir + "/members", list);  // best effort: seeds still work
}

// ---- the periodic work --------------------------------------------------------

void Cluster::Impl::onTick() {
  uint64_t t = now();
  // Close connections that never said who they are.
  for (Conn* c : std::vector<Conn*>(conns_.begin(), conns_.end())) {
    if (c->closing || c->helloReceived) continue;
    if (c->inbound && t - c->openedAt > kStrangerTimeoutMillis) {
      close(c);
      std::lock_guard lock(mu_);
      ++stats_.connectionsRefused;
    } else if (!c->inbound && t - c->openedAt > kHelloTimeoutMillis) {
      close(c);
    }
  }
  if (t - lastPrune_ >= 1000) pruneDialers();
  // Dial what is not connected.
  for (auto& [address, d] : dialers_) {
    if (!d->self && !d->conn && t >= d->nextAttempt) dial(*d);
  }
  if (t - lastHeartbeat_ >= uint64_t(options_.heartbeatInterval.count())) {
    lastHeartbeat_ = t;
    std::string beat = memberFrame(false);
    for (auto& [address, d] : dialers_) {
      Conn* c = d->conn;
      if (!c || !c->connected || c->closing) continue;
      if (!c->helloReceived) {
        sendHello(c);  // the first one may have been dropped by a partition
      } else {
        send(c, beat);
      }
    }
  }
  updateStates();
  if (membersDirty_ && t - lastPersist_ >= 1000) persist();
  maybeSync();
}

void Cluster::Impl::maybeSync() {
  uint64_t t = now();
  if (!sessionPeer_.empty() && t - sessionStarted_ < sessionTimeoutMillis()) {
    syncSoon_.clear();  // the session under way repairs as much (see below)
    return;
  }
  // The last session's states are still committing (bounded: a store that
  // stalls must not stop repair for good).
  if (mergesPending_->load() > 0 && t - sessionStarted_ < 30'000) return;
  sessionPeer_.clear();
  sessionMore_ = false;
  if (!syncAgain_.empty()) {  // the last session was cut short: carry on
    std::string id;
    std::swap(id, syncAgain_);
    if (outboundTo(id) && !blocked(id)) {
      startSync(id);
      return;
    }
  }
  // One revived peer at once, chosen at random. Only one: when a partition
  // heals, every node sees the whole other side revive together, and one
  // session each already carries every difference across the split; the
  // rest follow at their turn (least recently synced first), by which time
  // they are small.
  auto resting = [&](const std::string& id) {
    auto it = busyUntil_.find(id);
    return it != busyUntil_.end() && t < it->second;
  };
  std::vector<std::string> revived;
  for (const auto& id : syncSoon_) {
    if (outboundTo(id) && !blocked(id) && !resting(id)) revived.push_back(id);
  }
  syncSoon_.clear();
  if (!revived.empty()) {
    startSync(revived[std::uniform_int_distribution<size_t>(0, revived.size() - 1)(rng_)]);
    return;
  }
  if (t - lastAntiEntropy_ < uint64_t(options_.antiEntropyInterval.count())) return;
  lastAntiEntropy_ = t;
  // The alive, reachable peer synced least recently (random among equals).
  std::vector<std::pair<uint64_t, std::string>> candidates;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, p] : peers_) {
      if (p.state == PeerState::kAlive && !blocked_.count(id)) {
        candidates.emplace_back(p.lastSyncUnixMillis, id);
      }
    }
  }
  std::shuffle(candidates.begin(), candidates.end(), rng_);
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [last, id] : candidates) {
    if (!outboundTo(id)) continue;
    if (resting(id)) {
      // It was busy a moment ago. Wait for it rather than settle for a peer
      // synced more recently: it is the one most likely to differ.
      lastAntiEntropy_ = 0;
      return;
    }
    startSync(id);
    return;
  }
}

void Cluster::Impl::startSync(const std::string& peerId) {
  Conn* c = outboundTo(peerId);
  if (!c) return;
  auto first = reconciler_.start();
  if (!first.ok()) return;
  capnp::MallocMessageBuilder message;
  newFrame(message, options_.nodeId)
      .setReconcile(capnp::Data::Reader(reinterpret_cast<const uint8_t*>(first->bytes.data()),
                                        first->bytes.size()));
  std::string bytes = encodeFrame(message);
  size_t size = bytes.size();
  if (!send(c, std::move(bytes))) return;
  sessionPeer_ = peerId;
  sessionStarted_ = now();
  lastAntiEntropy_ = now();
  std::lock_guard lock(mu_);
  ++stats_.syncStarted;
  stats_.antiEntropyBytes += size;
}

void Cluster::Impl::sessionDone(const std::string& peerId) {
  if (peerId == respondingTo_) respondingTo_.clear();
  std::lock_guard lock(mu_);
  auto it = peers_.find(peerId);
  if (it != peers_.end()) it->second.lastSyncUnixMillis = unixMillis();
  if (peerId == sessionPeer_) {
    sessionPeer_.clear();
    ++stats_.syncCompleted;
    if (sessionMore_) syncAgain_ = peerId;
    sessionMore_ = false;
  }
}

// ---- the fast path ------------------------------------------------------------

void Cluster::Impl::flushDeltas() {
  std::vector<std::string> encoded;
  {
    std::lock_guard lock(mu_);
    encoded.swap(outbox_);
    outboxBytes_ = 0;
  }
  if (encoded.empty()) return;

  // Targets: every connected peer, or pushFanout random ones.
  std::vector<Conn*> targets;
  std::vector<std::string> ids;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, p] : peers_) ids.push_back(id);
  }
  size_t unreachable = 0;
  for (const auto& id : ids) {
    Conn* c = blocked(id) ? nullptr : outboundTo(id);
    if (c && c->queuedBytes < options_.maxQueuedBytesPerPeer) {
      targets.push_back(c);
    } else {
      ++unreachable;
    }
  }
  if (targets.size() > options_.pushFanout) {  // the others get it by anti-entropy
    std::shuffle(targets.begin(), targets.end(), rng_);
    targets.resize(options_.pushFanout);
  }
  // Frames of at most ~kMaxDeltaFrameBytes each.
  uint64_t sent = 0;
  size_t begin = 0;
  while (begin < encoded.size()) {
    size_t end = begin, bytes = 0;
    while (end < encoded.size() &&
           (end == begin || bytes + encoded[end].size() < kMaxDeltaFrameBytes)) {
      bytes += encoded[end++].size();
    }
    capnp::MallocMessageBuilder message;
    auto list = newFrame(message, options_.nodeId).initDeltas(unsigned(end - begin));
    for (size_t i = begin; i < end; ++i) {
      list.set(unsigned(i - begin),
               capnp::Data::Reader(reinterpret_cast<const uint8_t*>(encoded[i].data()),
                                   encoded[i].size()));
    }
    std::string frame = encodeFrame(message);
    for (Conn* c : targets) {
      if (send(c, frame, end - begin)) sent += end - begin;
    }
    begin = end;
  }
  std::lock_guard lock(mu_);
  stats_.deltasSent += sent;
  stats_.deltasDropped += unreachable * encoded.size();
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
  std::string encoded = delta.encode();  // on the caller's thread, not the loop's
  {
    std::lock_guard lock(impl_->mu_);
    // A loop that cannot keep up: drop the push (the write is durable here;
    // anti-entropy carries it), counted once per peer it did not reach.
    if (impl_->outboxBytes_ + encoded.size() > impl_->options_.maxPendingDeltaBytes) {
      impl_->stats_.deltasDropped += impl_->peers_.size();
      return;
    }
    impl_->outboxBytes_ += encoded.size();
    impl_->outbox_.push_back(std::move(encoded));
  }
  impl_->wake();
}

void Cluster::partition(const std::vector<std::string>& nodeIds) {
  std::lock_guard lock(impl_->mu_);
  for (const auto& id : nodeIds) {
    if (id != impl_->options_.nodeId) impl_->blocked_.insert(id);
  }
}

void Cluster::heal() {
  std::lock_guard lock(impl_->mu_);
  impl_->blocked_.clear();
}

std::vector<std::string> Cluster::partitioned() const {
  std::lock_guard lock(impl_->mu_);
  return {impl_->blocked_.begin(), impl_->blocked_.end()};
}

std::vector<MemberInfo> Cluster::members() const {
  std::lock_guard lock(impl_->mu_);
  std::vector<MemberInfo> out;
  for (const auto& [id, p] : impl_->peers_) {
    MemberInfo m;
    m.nodeId = id;
    m.gossipAddress = p.gossipAddress;
    m.rpcAddress = p.rpcAddress;
    m.state = p.state;
    m.partitioned = impl_->blocked_.count(id) != 0;
    m.lastSyncUnixMillis = p.lastSyncUnixMillis;
    m.pendingDeltas = p.pendingDeltas;
    m.phi = std::isinf(p.phi) ? -1 : p.phi;
    out.push_back(std::move(m));
  }
  return out;
}

ClusterStats Cluster::stats() const {
  std::lock_guard lock(impl_->mu_);
  return impl_->stats_;
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

std::vector<KeyInfo> Cluster::keys() const { return impl_->keyring()->list(); }

void Cluster::syncNow() {
  {
    std::lock_guard lock(impl_->mu_);
    impl_->syncRequested_ = true;
  }
  impl_->wake();
}

}  // namespace chorus::gossip
