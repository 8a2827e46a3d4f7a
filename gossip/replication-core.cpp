#include "gossip/replication-core.h"

#include <kj/exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "gossip/frame.h"

namespace chorus::gossip {

namespace {

bool validToken(capnp::Text::Reader t, size_t max = ReplicationCore::kMaxTokenBytes) {
  if (t.size() == 0 || t.size() > max) return false;
  for (unsigned char c : t) {
    if (c <= ' ' || c == 0x7f) return false;
  }
  return true;
}

std::string str(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

std::shared_ptr<const std::string> bodyOf(capnp::MessageBuilder& message) {
  return std::make_shared<const std::string>(encodeFrame(message));
}

int rank(PeerState s) {
  switch (s) {
    case PeerState::kAlive:
      return 0;
    case PeerState::kSuspect:
      return 1;
    case PeerState::kDead:
      return 2;
    case PeerState::kLeft:
      return 3;
  }
  return 0;
}

PeerState fromWire(wire::MemberState s) {
  switch (s) {
    case wire::MemberState::ALIVE:
      return PeerState::kAlive;
    case wire::MemberState::SUSPECT:
      return PeerState::kSuspect;
    case wire::MemberState::DEAD:
      return PeerState::kDead;
    case wire::MemberState::LEFT:
      return PeerState::kLeft;
  }
  return PeerState::kAlive;
}

wire::MemberState toWire(PeerState s) {
  switch (s) {
    case PeerState::kAlive:
      return wire::MemberState::ALIVE;
    case PeerState::kSuspect:
      return wire::MemberState::SUSPECT;
    case PeerState::kDead:
      return wire::MemberState::DEAD;
    case PeerState::kLeft:
      return wire::MemberState::LEFT;
  }
  return wire::MemberState::ALIVE;
}

PeerState fromName(const std::string& s) {
  if (s == "suspect") return PeerState::kSuspect;
  if (s == "dead") return PeerState::kDead;
  if (s == "left") return PeerState::kLeft;
  return PeerState::kAlive;
}

// FNV-1a: the bridges' ranking must be the same on every node and platform.
uint64_t fnv(std::string_view a, std::string_view b) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](std::string_view s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
  };
  mix(a);
  mix("|");
  mix(b);
  return h;
}

}  // namespace

CoreOptions coreOptionsFrom(const ClusterOptions& options, const std::string& boundAddress,
                            uint64_t seed, uint64_t incarnation) {
  CoreOptions o;
  o.nodeId = options.nodeId;
  o.gossipAddress = options.advertise.empty() ? boundAddress : options.advertise;
  o.selfAddresses = {boundAddress};
  if (!options.advertise.empty()) o.selfAddresses.push_back(options.advertise);
  o.rpcAddress = options.rpcAddress;
  o.region = options.region;
  o.seeds = options.seeds;
  o.incarnation = incarnation;
  o.rejoin = options.rejoin;
  o.probeIntervalMillis = uint64_t(options.probeInterval.count());
  o.probeTimeoutMillis = std::max<uint64_t>(1, o.probeIntervalMillis / 2);
  o.gossipIntervalMillis = uint64_t(options.gossipInterval.count());
  o.antiEntropyIntervalMillis = uint64_t(options.antiEntropyInterval.count());
  o.crossRegionAntiEntropyIntervalMillis = uint64_t(options.crossRegionAntiEntropyInterval.count());
  o.forgetDeadAfterMillis = uint64_t(options.forgetDeadAfter.count());
  o.maxFrameBytes = options.maxFrameBytes;
  o.maxQueuedBytesPerPeer = options.maxQueuedBytesPerPeer;
  o.maxPendingDeltaBytes = options.maxPendingDeltaBytes;
  o.admit = options.admit;
  o.seed = seed;
  return o;
}

ReplicationCore::ReplicationCore(CoreOptions options, ReplicaStore& store)
    : options_(std::move(options)),
      store_(store),
      rng_(options_.seed),
      reconciler_(
          store, [this](crdt::ReviewDoc doc) { received_.push_back(std::move(doc)); },
          std::min(options_.maxSyncMessageBytes, options_.maxFrameBytes / 2),
          options_.admit),
      incarnation_(options_.incarnation) {}

ReplicationCore::~ReplicationCore() = default;

std::vector<Action> ReplicationCore::takeActions() {
  std::vector<Action> out;
  out.swap(actions_);
  return out;
}

// ---- randomness: spelled out, so a seed means the same on every platform ---

uint64_t ReplicationCore::uniform(uint64_t lo, uint64_t hi) {
  if (hi <= lo) return lo;
  uint64_t span = hi - lo + 1;
  if (span == 0) return rng_();  // the whole range
  uint64_t limit = UINT64_MAX - UINT64_MAX % span;
  uint64_t x;
  do {
    x = rng_();
  } while (x >= limit);
  return lo + x % span;
}

template <typename T>
void ReplicationCore::shuffle(std::vector<T>& v) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[uniform(0, i - 1)]);
}

void ReplicationCore::warn(uint64_t now, uint64_t& last, const std::string& message) {
  if (last != 0 && now - last < kWarnEveryMillis) return;
  last = std::max<uint64_t>(now, 1);
  actions_.push_back(Warn{message});
}

// ---- start, stop and the periodic work ------------------------------------

void ReplicationCore::start(uint64_t now, const std::vector<KnownMember>& known) {
  now_ = now;
  started_ = true;
  for (const auto& k : known) {
    if (k.nodeId == options_.nodeId) {  // our own last run: start above it
      incarnation_ = std::max(incarnation_, k.incarnation + 1);
      continue;
    }
    if (members_.size() >= kMaxMembers || members_.count(k.nodeId)) continue;
    Member m;
    m.gossipAddress = k.gossipAddress;
    m.rpcAddress = k.rpcAddress;
    m.region = k.region;
    m.incarnation = k.incarnation;
    m.state = fromName(k.state);
    // Not heard from in this run: suspect until it answers a probe or
    // refutes (it is told so when probed).
    if (m.state == PeerState::kAlive) m.state = PeerState::kSuspect;
    m.stateSince = now;
    m.suspectedAt = now;
    members_.emplace(k.nodeId, std::move(m));
  }
  for (auto& [id, m] : members_) {
    if (m.state == PeerState::kSuspect) m.suspectDeadline = now + suspicionTimeout(m);
  }
  enqueue(options_.nodeId);  // announce this run's incarnation
  for (const auto& seed : options_.seeds) {
    bool self = seed == options_.gossipAddress ||
                std::find(options_.selfAddresses.begin(), options_.selfAddresses.end(), seed) !=
                    options_.selfAddresses.end();
    if (!self) seeds_.insert(seed);
  }
  // Random phases, so that nodes started together do not probe in step.
  lastProbe_ = now - std::min(now, uniform(0, options_.probeIntervalMillis));
  lastGossip_ = now - std::min(now, uniform(0, options_.gossipIntervalMillis));
  lastAntiEntropy_ = now - std::min(now, uniform(0, options_.antiEntropyIntervalMillis));
  lastCrossAntiEntropy_ = now;
  lastPushPull_ = now;
  lastPersist_ = now;
  lastForget_ = now;
}

void ReplicationCore::stop(uint64_t now) {
  now_ = now;
  if (membersDirty_) persist(now);
  for (auto& [id, c] : std::map<ConnId, Conn>(conns_)) close(now, id, true);
}

void ReplicationCore::tick(uint64_t now) {
  now_ = now;
  // Connections that never said who they are, and idle transient ones.
  std::vector<ConnId> ending;
  for (const auto& [id, c] : conns_) {
    if (!c.helloReceived) {
      if (!c.outbound && now - c.openedAt > kStrangerTimeoutMillis) {
        ending.push_back(id);
        ++stats_.connectionsRefused;
      } else if (c.outbound &&
                 now - c.openedAt > (c.wantActive || c.seed ? kHelloTimeoutMillis
                                                            : 2 * options_.probeIntervalMillis)) {
        // A probe's connection is of no use after its probe: do not let a
        // dial across a partition (SYNs retried for minutes) outlive it.
        ending.push_back(id);
      }
    } else if (!c.active && now - c.lastUsed > options_.idleTransientMillis &&
               c.peerId != sessionPeer_ && c.peerId != respondingTo_) {
      ending.push_back(id);
    }
  }
  for (ConnId id : ending) close(now, id, true);
  if (removed_) return;

  if (!leaving_) {
    // Join: through the seeds (or remembered members) until one full
    // exchange of member lists succeeded.
    if (!joined_ && now >= nextSeedDial_) {
      nextSeedDial_ = now + uniform(seedBackoff_ / 2, seedBackoff_);
      seedBackoff_ = std::min(seedBackoff_ * 2, kMaxBackoffMillis);
      for (const auto& seed : seeds_) {
        bool dialling = false;
        for (const auto& [id, c] : conns_) dialling = dialling || (c.seed && c.dialAddress == seed);
        if (!dialling) dial(seed, false, true);
      }
      if (seeds_.empty() && !members_.empty()) {
        std::vector<std::string> ids;
        for (const auto& [id, m] : members_) {
          if (m.state != PeerState::kLeft) ids.push_back(id);
        }
        if (!ids.empty()) pushPull(now, ids[uniform(0, ids.size() - 1)]);
      }
    }
    uint64_t period = options_.probeIntervalMillis * uint64_t(1 + health_);
    if (now - lastProbe_ >= period) probe(now);
  }
  checkProbes(now);
  // Suspicions that ran out (scanned only when the earliest is due).
  if (now >= nextDeadline_) {
    nextDeadline_ = UINT64_MAX;
    for (auto& [id, m] : members_) {
      if (m.state != PeerState::kSuspect) continue;
      if (now >= m.suspectDeadline) {
        setState(id, m, PeerState::kDead);
        enqueue(id);
        membersDirty_ = true;
      } else {
        nextDeadline_ = std::min(nextDeadline_, m.suspectDeadline);
      }
    }
  }
  if (now - lastGossip_ >= options_.gossipIntervalMillis) gossip(now);
  if (!leaving_ && joined_) {
    size_t n = members_.size() + 1;
    uint64_t scale = 1;
    if (n > 32) scale = uint64_t(std::ceil(std::log2(double(n)) - 5.0)) + 1;
    if (now - lastPushPull_ >= options_.pushPullIntervalMillis * scale) {
      lastPushPull_ = now;
      std::vector<std::string> ids;
      for (const auto& [id, m] : members_) {
        if (m.state == PeerState::kAlive) ids.push_back(id);
      }
      if (!ids.empty()) pushPull(now, ids[uniform(0, ids.size() - 1)]);
    }
  }
  if (!leaving_ && (viewDirty_ || now - lastView_ >= 1000)) maintainView(now);
  // Announcements go out every other tick, in one frame per peer.
  if (now - lastLazy_ >= 2 * kTickMillis) {
    lastLazy_ = now;
    flushLazy(now);
  }
  graftMissing(now);
  if (now - lastForget_ >= 1000) {
    lastForget_ = now;
    forget(now);
    expireSeen(now);
    for (auto it = pulled_.begin(); it != pulled_.end();) {
      it = now - it->second >= kPullRepeatMillis ? pulled_.erase(it) : std::next(it);
    }
  }
  if (membersDirty_ && now - lastPersist_ >= 5000) persist(now);
  maybeSync(now);
  size_t peers = 0, active = 0, outbound = 0;
  for (const auto& [id, c] : conns_) {
    peers += c.helloReceived;
    active += c.active;
    outbound += c.outbound && !c.helloReceived;
  }
  stats_.connections = peers;
  stats_.activePeers = active;
  stats_.dialers = outbound;
}

// ---- connections ------------------------------------------------------------

ConnId ReplicationCore::accepted(uint64_t now, std::string remote) {
  now_ = now;
  ConnId id = nextConn_++;
  Conn c;
  c.remote = std::move(remote);
  c.openedAt = now;
  c.lastUsed = now;
  conns_.emplace(id, std::move(c));
  return id;
}

// With peers (hello done) or being dialled: what maxConnections bounds.
size_t ReplicationCore::openConnections() const {
  size_t open = 0;
  for (const auto& [id, c] : conns_) open += c.helloReceived || c.outbound;
  return open;
}

// At the cap, a probe or repair connection unused the longest makes room
// (never a partial-view link, nor one carrying a repair): probes must get
// through for failure detection to hold.
bool ReplicationCore::evictTransient(ConnId keep) {
  ConnId oldest = 0;
  uint64_t oldestUse = UINT64_MAX;
  for (const auto& [id, c] : conns_) {
    if (id == keep || c.active || !c.helloReceived || c.peerId == sessionPeer_ ||
        c.peerId == respondingTo_) {
      continue;
    }
    if (c.lastUsed < oldestUse) {
      oldestUse = c.lastUsed;
      oldest = id;
    }
  }
  if (!oldest) return false;
  close(now_, oldest, true);
  return true;
}

ConnId ReplicationCore::dial(const std::string& address, bool wantActive, bool seed) {
  if (openConnections() >= options_.maxConnections && !evictTransient(0)) return 0;
  ConnId id = nextConn_++;
  Conn c;
  c.outbound = true;
  c.dialAddress = address;
  c.remote = address;
  c.wantActive = wantActive;
  c.seed = seed;
  c.openedAt = now_;
  c.lastUsed = now_;
  conns_.emplace(id, std::move(c));
  actions_.push_back(Dial{id, address});
  return id;
}

void ReplicationCore::opened(uint64_t now, ConnId id) {
  now_ = now;
  auto it = conns_.find(id);
  if (it == conns_.end() || it->second.ready) return;
  it->second.ready = true;
  if (it->second.outbound) sendHello(id);  // the dialler speaks first
}

void ReplicationCore::closed(uint64_t now, ConnId id) {
  now_ = now;
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  // A partial-view peer's connection broke: find out at once whether it
  // is gone (a crashed process resets its connections).
  std::string peer = it->second.active ? it->second.peerId : std::string();
  // A dial that failed before its hello (refused, reset): the probes
  // waiting on it learn now that the target cannot be reached directly.
  if (it->second.outbound && !it->second.helloReceived) {
    const std::string& address = it->second.dialAddress;
    for (auto& [seq, p] : probes_) {
      if (p.sent != 0) continue;
      auto m = members_.find(p.target);
      if (m != members_.end() && m->second.gossipAddress == address) p.unreachable = true;
    }
  }
  close(now, id, false);
  if (!peer.empty() && alive(peer) && !leaving_ && !removed_) {
    bool probing = false;
    for (const auto& [seq, p] : probes_) probing = probing || (p.forPeer.empty() && p.target == peer);
    if (!probing) probeMember(now, peer);
  }
}

void ReplicationCore::close(uint64_t now, ConnId id, bool emit) {
  (void)now;
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  if (!c.peerId.empty() && c.peerId == sessionPeer_) {
    // The session's connection: only if no other carries it.
    bool other = false;
    for (const auto& [oid, o] : conns_) other = other || (oid != id && o.peerId == c.peerId && o.helloReceived);
    if (!other) sessionPeer_.clear();
  }
  conns_.erase(it);
  if (emit) actions_.push_back(Close{id});
}

void ReplicationCore::malformed(uint64_t now, ConnId id, const std::string& why) {
  ++stats_.malformedFrames;
  if (why.find("protocol version") != std::string::npos) {
    ++stats_.versionRefused;
    auto it = conns_.find(id);
    std::string remote = it != conns_.end() ? it->second.remote : "?";
    warn(now, lastVersionWarning_, "gossip: refused " + remote + ": " + why);
  }
  close(now, id, true);
}

void ReplicationCore::drained(ConnId id, uint64_t bytes, uint64_t deltas) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  c.queuedBytes -= std::min(c.queuedBytes, bytes);
  c.queuedDeltas -= std::min(c.queuedDeltas, deltas);
}

bool ReplicationCore::send(ConnId id, std::shared_ptr<const std::string> body, uint64_t deltas) {
  auto it = conns_.find(id);
  if (it == conns_.end() || !it->second.ready) return false;
  Conn& c = it->second;
  if (!c.peerId.empty() && blocked(c.peerId)) {
    ++stats_.partitionDropped;
    return false;
  }
  uint64_t size = body->size() + options_.frameOverheadBytes;
  // A peer that stops reading: deltas stop at maxQueuedBytesPerPeer
  // (broadcast); anything else stops a frame later, with the connection.
  if (c.queuedBytes + size > options_.maxQueuedBytesPerPeer + options_.maxFrameBytes) {
    close(now_, id, true);
    return false;
  }
  c.queuedBytes += size;
  c.queuedDeltas += deltas;
  c.lastUsed = now_;
  ++stats_.framesOut;
  stats_.bytesOut += size;
  actions_.push_back(SendFrame{id, std::move(body), deltas});
  return true;
}

ConnId ReplicationCore::connTo(const std::string& peerId) const {
  ConnId any = 0;
  for (const auto& [id, c] : conns_) {
    if (!c.helloReceived || !c.ready || c.peerId != peerId) continue;
    if (c.active) return id;
    if (!any) any = id;
  }
  return any;
}

bool ReplicationCore::sendTo(const std::string& peerId, std::shared_ptr<const std::string> body) {
  if (ConnId c = connTo(peerId)) return send(c, std::move(body));
  if (blocked(peerId)) {
    ++stats_.partitionDropped;
    return false;
  }
  auto m = members_.find(peerId);
  if (m == members_.end() || m->second.state == PeerState::kLeft) return false;
  for (auto& [id, c] : conns_) {  // a dial under way
    if (c.outbound && !c.helloReceived && c.dialAddress == m->second.gossipAddress) {
      if (c.pending.size() < 16) c.pending.push_back(std::move(body));
      return true;
    }
  }
  ConnId id = dial(m->second.gossipAddress, false, false);
  if (!id) return false;
  conns_.at(id).pending.push_back(std::move(body));
  return true;
}

size_t ReplicationCore::peerConnections() const {
  size_t n = 0;
  for (const auto& [id, c] : conns_) n += c.helloReceived;
  return n;
}

bool ReplicationCore::isActive(const std::string& peerId) const {
  for (const auto& [id, c] : conns_) {
    if (c.active && c.peerId == peerId) return true;
  }
  return false;
}

bool ReplicationCore::helloReceived(ConnId id) const {
  auto it = conns_.find(id);
  return it != conns_.end() && it->second.helloReceived;
}

std::string ReplicationCore::peerOf(ConnId id) const {
  auto it = conns_.find(id);
  return it == conns_.end() ? std::string() : it->second.peerId;
}

bool ReplicationCore::alive(const std::string& id) const {
  auto it = members_.find(id);
  return it != members_.end() &&
         (it->second.state == PeerState::kAlive || it->second.state == PeerState::kSuspect);
}

// ---- frames -----------------------------------------------------------------

void ReplicationCore::writeMember(wire::Member::Builder b, const std::string& id) const {
  if (id == options_.nodeId) {
    b.setNodeId(options_.nodeId);
    b.setGossipAddress(options_.gossipAddress);
    b.setRpcAddress(options_.rpcAddress);
    b.setRegion(options_.region);
    b.setIncarnation(incarnation_);
    b.setState(leaving_ ? wire::MemberState::LEFT : wire::MemberState::ALIVE);
    b.setRejoin(options_.rejoin && !leaving_);
    return;
  }
  auto it = members_.find(id);
  if (it == members_.end()) return;
  const Member& m = it->second;
  b.setNodeId(id);
  b.setGossipAddress(m.gossipAddress);
  b.setRpcAddress(m.rpcAddress);
  b.setRegion(m.region.empty() ? "default" : m.region);
  b.setIncarnation(m.incarnation);
  b.setState(toWire(m.state));
  b.setRejoin(m.rejoin);
}

uint64_t ReplicationCore::transmitLimit() const {
  double n = double(members_.size() + 2);
  return options_.retransmitMult * uint64_t(std::max(1.0, std::ceil(std::log10(n))));
}

void ReplicationCore::enqueue(const std::string& id) {
  auto it = queue_.find(id);
  if (it != queue_.end()) {
    order_.erase({it->second.transmits, it->second.order, id});
    it->second = Queued{0, --queueOrder_};
  } else {
    it = queue_.emplace(id, Queued{0, --queueOrder_}).first;
  }
  order_.insert({0, it->second.order, id});
}

void ReplicationCore::dequeue(const std::string& id) {
  auto it = queue_.find(id);
  if (it == queue_.end()) return;
  order_.erase({it->second.transmits, it->second.order, id});
  queue_.erase(it);
}

void ReplicationCore::fillPiggyback(wire::Frame::Builder& f, const std::string& about) {
  // The updates sent least often first (newest first among equals):
  // order_ is sorted so.
  bool withAbout = !about.empty() && (about == options_.nodeId || members_.count(about));
  size_t room = kMaxPiggyback - (withAbout ? 1 : 0);
  std::vector<std::tuple<uint64_t, uint64_t, std::string>> picks;
  for (auto it = order_.begin(); it != order_.end() && picks.size() < room; ++it) {
    if (std::get<2>(*it) != about) picks.push_back(*it);
  }
  if (picks.empty() && !withAbout) return;
  auto list = f.initMembers(unsigned(picks.size() + (withAbout ? 1 : 0)));
  unsigned i = 0;
  if (withAbout) writeMember(list[i++], about);
  uint64_t limit = transmitLimit();
  for (auto& pick : picks) {
    const std::string& id = std::get<2>(pick);
    writeMember(list[i++], id);
    order_.erase(pick);
    auto& q = queue_.at(id);
    if (++q.transmits >= limit) {
      queue_.erase(id);
    } else {
      order_.insert({q.transmits, q.order, id});
    }
  }
}

std::shared_ptr<const std::string> ReplicationCore::frame(
    const std::function<void(wire::Frame::Builder&)>& fill, const std::string& about) {
  capnp::MallocMessageBuilder message(256);
  auto f = newFrame(message, options_.nodeId);
  fillPiggyback(f, about);
  fill(f);
  return bodyOf(message);
}

void ReplicationCore::sendHello(ConnId id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  bool active = it->second.outbound ? it->second.wantActive : it->second.active;
  capnp::MallocMessageBuilder message(256);
  auto h = newFrame(message, options_.nodeId).initHello();
  writeMember(h.initMember(), options_.nodeId);
  h.setActive(active);
  send(id, bodyOf(message));
}

void ReplicationCore::received(uint64_t now, ConnId id, std::string_view body) {
  auto words =
      kj::heapArray<capnp::word>((body.size() + sizeof(capnp::word) - 1) / sizeof(capnp::word));
  if (body.size() % sizeof(capnp::word) != 0) {  // not a frame body
    if (conns_.count(id)) malformed(now, id);
    return;
  }
  std::memcpy(words.begin(), body.data(), body.size());
  received(now, id, std::move(words));
}

void ReplicationCore::received(uint64_t now, ConnId id, kj::Array<capnp::word> body) {
  now_ = now;
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  handle(now, id, it->second, std::move(body));
}

void ReplicationCore::handle(uint64_t now, ConnId id, Conn& c, kj::Array<capnp::word> body) {
  size_t wireBytes = body.size() * sizeof(capnp::word) + options_.frameOverheadBytes;
  auto parsed = ParsedFrame::parse(std::move(body));
  if (!parsed.ok()) {
    malformed(now, id, parsed.error().message);
    return;
  }
  ++stats_.framesIn;
  stats_.bytesIn += wireBytes;
  if (removed_) return;
  bool bad = false;
  auto exception = kj::runCatchingExceptions([&] {
    auto root = parsed.value()->root();
    if (!validToken(root.getFrom())) {
      bad = true;
      return;
    }
    std::string from = str(root.getFrom());
    if (from == options_.nodeId) {  // dialled ourselves (a seed list naming this node)
      if (!c.dialAddress.empty()) seeds_.erase(c.dialAddress);
      close(now, id, true);
      return;
    }
    if (c.peerId.empty()) {
      c.peerId = from;
      c.peerIx = intern(from);
    } else if (c.peerId != from) {
      bad = true;  // a connection speaks for one node only
      return;
    }
    if (blocked(from)) {
      ++stats_.partitionDropped;
      return;
    }
    auto which = root.which();
    if (which != wire::Frame::HELLO && !c.helloReceived) {
      bad = true;  // every connection starts with a hello
      return;
    }
    c.lastUsed = now;
    if (which == wire::Frame::HELLO) {
      handleHello(now, id, c, root.getHello());
      if (!conns_.count(id)) return;
    }
    size_t n = 0;
    for (auto m : root.getMembers()) {
      if (++n > kMaxPiggyback + 1) break;
      learn(m, from);
    }
    if (!conns_.count(id)) return;  // learned that the peer was removed
    switch (which) {
      case wire::Frame::HELLO:
      case wire::Frame::GOSSIP:
        return;
      case wire::Frame::PING:
        handlePing(now, id, from, root.getPing());
        return;
      case wire::Frame::ACK:
        handleAck(now, root.getAck().getSeq(), false);
        return;
      case wire::Frame::NACK:
        handleAck(now, root.getNack().getSeq(), true);
        return;
      case wire::Frame::PING_REQ:
        handlePingReq(now, from, root.getPingReq());
        return;
      case wire::Frame::PUSH_PULL:
      case wire::Frame::PUSH_PULL_REPLY: {
        auto list = which == wire::Frame::PUSH_PULL ? root.getPushPull() : root.getPushPullReply();
        size_t k = 0;
        bulk_ = true;  // new members from a full list are not news to pass on
        for (auto m : list) {
          if (++k > kMaxMembers + 1) break;
          learn(m, from);
        }
        bulk_ = false;
        if (which == wire::Frame::PUSH_PULL) {
          sendPushPull(id, true);
        } else {
          joined_ = true;
          seedBackoff_ = kMinBackoffMillis;
        }
        return;
      }
      case wire::Frame::BROADCAST:
        handleBroadcast(now, id, from, root.getBroadcast());
        return;
      case wire::Frame::IHAVE:
        handleIhave(now, from, root.getIhave());
        return;
      case wire::Frame::GRAFT:
        handleGraft(now, id, root.getGraft());
        return;
      case wire::Frame::PRUNE: {
        size_t k = 0;
        for (auto o : root.getPrune()) {
          if (++k > kMaxMembers || !validToken(o)) break;
          setLazy(str(o), from, true);
        }
        return;
      }
      case wire::Frame::RECONCILE:
        handleReconcile(now, id, from, root.getReconcile(), wireBytes);
        return;
      case wire::Frame::PULL:
        handlePull(id, root.getPull());
        return;
      case wire::Frame::PULLED:
        handlePulled(now, from, root.getPulled());
        return;
      case wire::Frame::SNAPSHOT:
        bad = true;  // only on a snapshot connection, which the driver serves (never here)
        return;
      default:
        return;
    }
  });
  if (exception != nullptr) bad = true;
  if (bad && conns_.count(id)) malformed(now, id);
}

void ReplicationCore::handleHello(uint64_t now, ConnId id, Conn& c, wire::Hello::Reader hello) {
  auto m = hello.getMember();
  if (!validToken(m.getGossipAddress()) || str(m.getNodeId()) != c.peerId ||
      m.getRegion().size() > kMaxTokenBytes) {
    malformed(now, id);
    return;
  }
  bool first = !c.helloReceived;
  if (first && !c.outbound && openConnections() >= options_.maxConnections && !evictTransient(id)) {
    ++stats_.connectionsRefused;
    close(now, id, true);
    return;
  }
  c.helloReceived = true;
  std::string peer = c.peerId;
  learn(m, peer);
  if (!conns_.count(id)) return;
  auto known = members_.find(peer);
  if (known != members_.end() && known->second.state == PeerState::kLeft) {
    // Left or removed: tell it so (its tombstone rides along); it stops on
    // hearing it, and the connection, never in the partial view, idles out.
    if (first && !c.outbound) sendHello(id);
    send(id, frame([](wire::Frame::Builder& f) { f.setGossip(); }, peer));
    return;
  }
  if (!first) return;
  if (c.outbound) {
    c.active = c.wantActive && hello.getActive() && !leaving_;
    auto pending = std::move(c.pending);
    c.pending.clear();
    bool seed = c.seed;
    for (auto& body : pending) send(id, std::move(body));
    for (auto& [seq, p] : probes_) {  // their pings just left
      if (p.sent == 0 && p.target == peer) p.sent = now;
    }
    if (seed) sendPushPull(id, false);
  } else {
    size_t active = 0;
    bool already = false;
    for (const auto& [oid, o] : conns_) {
      active += o.active;
      already = already || (o.active && o.peerId == peer);
    }
    c.active = hello.getActive() && !already && active < options_.maxActive && !leaving_;
    sendHello(id);
  }
  auto it = conns_.find(id);
  if (it != conns_.end() && it->second.active) {
    viewDirty_ = true;
    syncSoon_.insert(peer);
  }
}

void ReplicationCore::sendPushPull(ConnId id, bool reply) {
  capnp::MallocMessageBuilder message;
  auto f = newFrame(message, options_.nodeId);
  auto list = reply ? f.initPushPullReply(unsigned(members_.size() + 1))
                    : f.initPushPull(unsigned(members_.size() + 1));
  writeMember(list[0], options_.nodeId);
  unsigned i = 1;
  for (const auto& [id, m] : members_) writeMember(list[i++], id);
  send(id, bodyOf(message));
}

void ReplicationCore::pushPull(uint64_t now, const std::string& peerId) {
  (void)now;
  ++stats_.pushPulls;
  if (ConnId c = connTo(peerId)) {
    sendPushPull(c, false);
    return;
  }
  auto m = members_.find(peerId);
  if (m == members_.end() || blocked(peerId)) return;
  dial(m->second.gossipAddress, false, true);  // a "seed" dial: push-pull on hello
}

// ---- membership -------------------------------------------------------------

void ReplicationCore::learn(wire::Member::Reader m, const std::string& from) {
  if (!validToken(m.getNodeId()) || !validToken(m.getGossipAddress()) ||
      m.getRegion().size() > 64 || m.getRpcAddress().size() > kMaxTokenBytes) {
    return;
  }
  auto state = fromWire(m.getState());
  if (unsigned(m.getState()) > unsigned(wire::MemberState::LEFT)) return;
  apply(str(m.getNodeId()), str(m.getGossipAddress()), str(m.getRpcAddress()), str(m.getRegion()),
        m.getIncarnation(), state, m.getRejoin(), from);
}

void ReplicationCore::aboutSelf(PeerState state, uint64_t incarnation, bool rejoin) {
  (void)rejoin;
  if (leaving_ || removed_) return;
  if (state == PeerState::kLeft) {
    // Someone removed this node. A node started with rejoin comes back
    // above the tombstone it was started to override; anything else stays
    // out until an operator restarts it with --rejoin.
    if (options_.rejoin && incarnation < options_.incarnation) return;
    removed_ = true;
    actions_.push_back(Warn{"gossip: this node was removed from the cluster (or left it); it "
                            "gossips no more. Restart it with --rejoin to join again."});
    for (auto& [id, c] : std::map<ConnId, Conn>(conns_)) close(now_, id, true);
    return;
  }
  if (state == PeerState::kAlive || incarnation < incarnation_) return;
  // Suspected or declared dead at our incarnation: refute with a higher one.
  incarnation_ = incarnation + 1;
  ++stats_.refutations;
  enqueue(options_.nodeId);
}

void ReplicationCore::apply(const std::string& id, const std::string& gossip,
                            const std::string& rpc, const std::string& region,
                            uint64_t incarnation, PeerState state, bool rejoin,
                            const std::string& from) {
  if (id == options_.nodeId) {
    aboutSelf(state, incarnation, rejoin);
    return;
  }
  auto it = members_.find(id);
  if (it == members_.end()) {
    // Dead or gone members we never knew are not worth learning.
    if (state == PeerState::kDead || state == PeerState::kLeft) return;
    if (members_.size() >= kMaxMembers) return;
    Member m;
    m.gossipAddress = gossip;
    m.rpcAddress = rpc;
    m.region = region;
    m.incarnation = incarnation;
    m.rejoin = rejoin;
    m.state = state;
    m.stateSince = now_;
    if (state == PeerState::kSuspect) {
      startSuspicion(m, from);
    }
    members_.emplace(id, std::move(m));
    if (!bulk_) enqueue(id);
    membersDirty_ = true;
    return;
  }
  Member& m = it->second;
  bool newer;
  if (m.state == PeerState::kLeft) {
    newer = incarnation > m.incarnation &&
            (state == PeerState::kLeft || (state == PeerState::kAlive && rejoin));
  } else {
    newer = incarnation > m.incarnation || (incarnation == m.incarnation && rank(state) > rank(m.state));
  }
  if (!newer) {
    if (state == PeerState::kSuspect && m.state == PeerState::kSuspect &&
        incarnation == m.incarnation && m.confirmations.insert(from).second) {
      // Lifeguard: an independent confirmation shortens the suspicion.
      m.suspectDeadline = m.suspectedAt + suspicionTimeout(m);
      nextDeadline_ = std::min(nextDeadline_, m.suspectDeadline);
    }
    return;
  }
  if (!gossip.empty()) m.gossipAddress = gossip;
  m.rpcAddress = rpc;
  if (!region.empty()) m.region = region;
  m.incarnation = incarnation;
  m.rejoin = rejoin;
  if (state == PeerState::kSuspect) startSuspicion(m, from);
  setState(id, m, state);
  enqueue(id);
  membersDirty_ = true;
}

void ReplicationCore::setState(const std::string& id, Member& m, PeerState state) {
  if (m.state == state) return;
  m.state = state;
  m.stateSince = now_;
  if (state == PeerState::kDead) {
    // Out of the partial view (it is replaced at the next maintenance).
    for (auto& [cid, c] : std::map<ConnId, Conn>(conns_)) {
      if (c.peerId == id && c.active) close(now_, cid, true);
    }
  } else if (state == PeerState::kLeft) {
    // Out of the partial view, but not cut off: a leaving node's last
    // repair may still be under way on it. Idle, it closes.
    for (auto& [cid, c] : conns_) {
      if (c.peerId == id && c.active) {
        c.active = false;
        viewDirty_ = true;
      }
    }
  }
}

uint64_t ReplicationCore::suspicionTimeout(const Member& m) const {
  double n = double(std::max<size_t>(members_.size() + 1, 10));
  double min = options_.suspicionMult * std::log10(n) * double(options_.probeIntervalMillis);
  double max = options_.maxSuspicionMult * min;
  double c = double(m.confirmations.size() > 0 ? m.confirmations.size() - 1 : 0);
  double k = double(kSuspicionConfirmations);
  double t = max - (max - min) * std::log(c + 1) / std::log(k + 1);
  return uint64_t(std::max(min, t));
}

// A suspicion of `m` begins now, said by `by` (its first confirmation).
void ReplicationCore::startSuspicion(Member& m, const std::string& by) {
  m.suspectedAt = now_;
  m.confirmations = {by};
  m.suspectDeadline = now_ + suspicionTimeout(m);
  nextDeadline_ = std::min(nextDeadline_, m.suspectDeadline);
}

void ReplicationCore::suspect(uint64_t now, const std::string& id, const std::string& by) {
  now_ = now;
  auto it = members_.find(id);
  if (it == members_.end() || it->second.state != PeerState::kAlive) return;
  Member& m = it->second;
  startSuspicion(m, by);
  setState(id, m, PeerState::kSuspect);
  enqueue(id);
  membersDirty_ = true;
}

void ReplicationCore::probe(uint64_t now) {
  lastProbe_ = now;
  // Round robin over the members that may be alive, in a new random order
  // each pass (SWIM's bounded time to first detection).
  std::string target;
  for (size_t tries = 0; tries < 2 && target.empty(); ++tries) {
    while (probeNext_ < probeOrder_.size() && target.empty()) {
      const std::string& id = probeOrder_[probeNext_++];
      if (alive(id)) target = id;
    }
    if (target.empty()) {
      probeOrder_.clear();
      probeNext_ = 0;
      for (const auto& [id, m] : members_) {
        if (m.state == PeerState::kAlive || m.state == PeerState::kSuspect) probeOrder_.push_back(id);
      }
      shuffle(probeOrder_);
    }
  }
  if (!target.empty()) probeMember(now, target);
  // And one member held dead, so that a healed partition is found again:
  // the probe tells it it is dead, it refutes.
  std::vector<const std::string*> dead;
  for (const auto& [id, m] : members_) {
    if (m.state == PeerState::kDead) dead.push_back(&id);
  }
  if (!dead.empty()) {
    std::string id = *dead[uniform(0, dead.size() - 1)];
    uint64_t seq = nextSeq_++;
    Probe p;
    p.target = id;
    p.started = now;
    p.indirectSent = true;  // no indirect probes, no suspicion: it is dead already
    p.indirectAt = now;
    probes_.emplace(seq, std::move(p));
    sendTo(id, frame([seq](wire::Frame::Builder& f) { f.initPing().setSeq(seq); }, id));
  }
}

void ReplicationCore::probeMember(uint64_t now, const std::string& id) {
  uint64_t seq = nextSeq_++;
  Probe p;
  p.target = id;
  p.started = now;
  // Timed from when the ping leaves: a probe that needs a new connection
  // (most do: targets are any member) waits for its hello first.
  if (connTo(id)) p.sent = now;
  probes_.emplace(seq, std::move(p));
  ++stats_.probes;
  // The target's record as we see it rides first: told it is suspect, it
  // refutes in its ack (Lifeguard's buddy system).
  bool sent = sendTo(id, frame([seq](wire::Frame::Builder& f) { f.initPing().setSeq(seq); }, id));
  if (!sent) probes_.at(seq).sent = 1;  // no connection possible: straight to indirect
}

// How long an ack may take once the ping left: the probe timeout (scaled
// by Lifeguard's local health) plus twice the round trip seen to the
// target's region (WAN links are slower than the timeout's LAN default).
uint64_t ReplicationCore::probeWait(const std::string& target) const {
  uint64_t wait = options_.probeTimeoutMillis * uint64_t(1 + health_);
  auto m = members_.find(target);
  if (m != members_.end()) {
    auto r = rtt_.find(m->second.region);
    if (r != rtt_.end()) wait += uint64_t(2 * r->second);
  }
  return wait;
}

void ReplicationCore::checkProbes(uint64_t now) {
  std::vector<uint64_t> done;
  for (auto& [seq, p] : probes_) {
    uint64_t wait = probeWait(p.target);
    if (!p.forPeer.empty()) {  // probing for another node: nack in time (80%)
      if (p.unreachable ||
          (p.sent ? now - p.sent >= wait * 8 / 10 : now - p.started >= options_.probeIntervalMillis)) {
        uint64_t forSeq = p.forSeq;
        sendTo(p.forPeer, frame([forSeq](wire::Frame::Builder& f) { f.initNack().setSeq(forSeq); }));
        done.push_back(seq);
      }
      continue;
    }
    // Direct: no ack within `wait` of the ping, or no connection within a
    // probe interval: ask k others.
    bool directFailed = p.unreachable ||
                        (p.sent ? now - p.sent >= wait : now - p.started >= options_.probeIntervalMillis);
    if (!p.indirectSent && directFailed) {
      p.indirectSent = true;
      p.indirectAt = now;
      // Helpers: partial-view peers first (connected, near), then others.
      std::vector<std::string> helpers, others;
      std::set<std::string> seen;
      for (const auto& [cid, c] : conns_) {
        if (c.active && c.peerId != p.target && alive(c.peerId) && !blocked(c.peerId) &&
            seen.insert(c.peerId).second) {
          helpers.push_back(c.peerId);
        }
      }
      shuffle(helpers);
      if (helpers.size() < options_.indirectProbes) {
        for (const auto& [id, m] : members_) {
          if (m.state == PeerState::kAlive && id != p.target && !blocked(id) && !seen.count(id)) {
            others.push_back(id);
          }
        }
        shuffle(others);
        helpers.insert(helpers.end(), others.begin(), others.end());
      }
      if (helpers.size() > options_.indirectProbes) helpers.resize(options_.indirectProbes);
      auto t = members_.find(p.target);
      std::string address = t != members_.end() ? t->second.gossipAddress : std::string();
      for (const auto& h : helpers) {
        uint64_t s = seq;
        const std::string& target = p.target;
        if (sendTo(h, frame([&](wire::Frame::Builder& f) {
              auto r = f.initPingReq();
              r.setSeq(s);
              r.setTarget(target);
              r.setTargetAddress(address);
            }))) {
          ++p.nacksExpected;
        }
      }
    }
    // Indirect: the helpers may need a connection to the target too. Every
    // helper's nack in (none could reach it either): no need to wait.
    bool allNacked = p.nacksExpected > 0 && p.nacks >= p.nacksExpected;
    if (p.indirectSent && (allNacked || now - p.indirectAt >= wait + options_.probeIntervalMillis)) {
      done.push_back(seq);
      auto t = members_.find(p.target);
      if (t == members_.end() || t->second.state != PeerState::kAlive) continue;
      ++stats_.probesFailed;
      // Lifeguard: missing nacks mean this node may be the slow one.
      if (p.nacks < p.nacksExpected) health_ = std::min(health_ + 1, kMaxHealth);
      suspect(now, p.target, options_.nodeId);
    }
  }
  for (uint64_t seq : done) probes_.erase(seq);
}

void ReplicationCore::handlePing(uint64_t now, ConnId id, const std::string& from,
                                 wire::Probe::Reader p) {
  (void)now;
  (void)from;
  uint64_t seq = p.getSeq();
  send(id, frame([seq](wire::Frame::Builder& f) { f.initAck().setSeq(seq); }));
}

void ReplicationCore::handlePingReq(uint64_t now, const std::string& from, wire::Probe::Reader p) {
  if (!validToken(p.getTarget())) return;
  std::string target = str(p.getTarget());
  if (target == options_.nodeId || !members_.count(target)) return;
  if (probes_.size() > 256) return;  // bounded: a flood of requests is not our job
  uint64_t seq = nextSeq_++;
  Probe r;
  r.target = target;
  r.started = now;
  if (connTo(target)) r.sent = now;
  r.forPeer = from;
  r.forSeq = p.getSeq();
  probes_.emplace(seq, std::move(r));
  sendTo(target, frame([seq](wire::Frame::Builder& f) { f.initPing().setSeq(seq); }, target));
}

void ReplicationCore::handleAck(uint64_t now, uint64_t seq, bool nack) {
  auto it = probes_.find(seq);
  if (it == probes_.end()) return;
  Probe& p = it->second;
  if (!p.forPeer.empty()) {
    if (nack) return;
    uint64_t forSeq = p.forSeq;
    std::string to = p.forPeer;
    probes_.erase(it);
    sendTo(to, frame([forSeq](wire::Frame::Builder& f) { f.initAck().setSeq(forSeq); }));
    return;
  }
  if (nack) {
    ++p.nacks;
    return;
  }
  if (p.sent > 1 && !p.indirectSent) {  // a direct round trip: learn the region's
    auto m = members_.find(p.target);
    if (m != members_.end()) {
      double sample = double(now - p.sent);
      auto [r, fresh] = rtt_.try_emplace(m->second.region, sample);
      if (!fresh) r->second = 0.8 * r->second + 0.2 * sample;
    }
  }
  probes_.erase(it);
  health_ = std::max(health_ - 1, 0);
}

void ReplicationCore::gossip(uint64_t now) {
  lastGossip_ = now;
  if (queue_.empty()) return;
  std::vector<std::string> targets;
  for (const auto& [id, c] : conns_) {
    if (c.active && c.helloReceived && !blocked(c.peerId)) targets.push_back(c.peerId);
  }
  std::sort(targets.begin(), targets.end());
  targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
  if (targets.empty() || leaving_) {  // joining, alone in a region, or leaving: any members
    for (const auto& [id, m] : members_) {
      if (m.state == PeerState::kAlive && !blocked(id)) targets.push_back(id);
    }
  }
  shuffle(targets);
  if (targets.size() > options_.gossipFanout) targets.resize(options_.gossipFanout);
  for (const auto& t : targets) {
    if (queue_.empty()) break;
    sendTo(t, frame([](wire::Frame::Builder& f) { f.setGossip(); }));
  }
}

void ReplicationCore::forget(uint64_t now) {
  for (auto it = members_.begin(); it != members_.end();) {
    const Member& m = it->second;
    if ((m.state == PeerState::kDead || m.state == PeerState::kLeft) &&
        now - m.stateSince >= options_.forgetDeadAfterMillis) {
      dequeue(it->first);
      busyUntil_.erase(it->first);
      it = members_.erase(it);
      membersDirty_ = true;
    } else {
      ++it;
    }
  }
}

void ReplicationCore::persist(uint64_t now) {
  membersDirty_ = false;
  lastPersist_ = now;
  PersistMembers out;
  out.members.push_back({options_.nodeId, options_.gossipAddress, options_.rpcAddress,
                         options_.region, incarnation_, leaving_ ? "left" : "alive"});
  for (const auto& [id, m] : members_) {
    out.members.push_back(
        {id, m.gossipAddress, m.rpcAddress, m.region, m.incarnation, peerStateName(m.state)});
  }
  actions_.push_back(std::move(out));
}

std::vector<MemberInfo> ReplicationCore::members() const {
  std::map<std::string, std::pair<bool, uint64_t>, std::less<>> conns;  // active, pending deltas
  for (const auto& [id, c] : conns_) {
    if (c.peerId.empty()) continue;
    auto& e = conns[c.peerId];
    e.first = e.first || c.active;
    e.second += c.queuedDeltas;
  }
  std::vector<MemberInfo> out;
  out.reserve(members_.size());
  for (const auto& [id, m] : members_) {
    MemberInfo i;
    i.nodeId = id;
    i.gossipAddress = m.gossipAddress;
    i.rpcAddress = m.rpcAddress;
    i.region = m.region;
    i.incarnation = m.incarnation;
    i.state = m.state;
    if (auto c = conns.find(id); c != conns.end()) {
      i.active = c->second.first;
      i.pendingDeltas = c->second.second;
    }
    i.partitioned = blocked_.count(id) != 0;
    i.lastSyncUnixMillis = m.synced ? m.lastSync : 0;
    out.push_back(std::move(i));
  }
  return out;
}

void ReplicationCore::partition(const std::vector<std::string>& nodeIds) {
  for (const auto& id : nodeIds) {
    if (id != options_.nodeId) blocked_.insert(id);
  }
}

void ReplicationCore::heal() { blocked_.clear(); }

// ---- lifecycle ----------------------------------------------------------------

void ReplicationCore::leave(uint64_t now) {
  now_ = now;
  if (leaving_ || removed_) return;
  leaving_ = true;
  leaveStarted_ = now;
  ++incarnation_;  // above any suspicion of this run
  enqueue(options_.nodeId);
  // Tell every peer this node is connected to at once, and a few others;
  // gossip() repeats it to more until the retransmit limit.
  std::set<std::string> told;
  for (const auto& [id, c] : std::map<ConnId, Conn>(conns_)) {
    if (c.helloReceived && told.insert(c.peerId).second) {
      send(id, frame([](wire::Frame::Builder& f) { f.setGossip(); }, options_.nodeId));
    }
  }
  gossip(now);
  // One last repair with a peer of the region, so that what this node
  // acknowledged is held elsewhere before it goes.
  maybeSync(now);  // after the session under way, if any
}

bool ReplicationCore::leaveDone() const {
  if (!leaving_ || !leaveSynced_) return false;
  for (const auto& [id, c] : conns_) {
    if (c.helloReceived && c.queuedBytes > 0) return false;
  }
  return true;
}

Status ReplicationCore::remove(uint64_t now, const std::string& nodeId) {
  now_ = now;
  if (nodeId == options_.nodeId) {
    return makeError(ErrorCode::kInvalidArgument,
                     "cannot remove this node itself; ask it to leave instead");
  }
  auto it = members_.find(nodeId);
  if (it == members_.end()) {
    return makeError(ErrorCode::kNotFound, "no member '" + nodeId + "' is known to this node");
  }
  if (it->second.state == PeerState::kLeft) return okStatus();
  Member& m = it->second;
  setState(nodeId, m, PeerState::kLeft);
  m.rejoin = false;
  enqueue(nodeId);
  membersDirty_ = true;
  return okStatus();
}

// ---- the partial view ---------------------------------------------------------

std::vector<std::string> ReplicationCore::bridgesOf(const std::string& region,
                                                    const std::string& toward) const {
  std::vector<std::pair<uint64_t, std::string>> ranked;
  if (region == options_.region && !leaving_) {
    ranked.emplace_back(fnv(options_.nodeId, toward), options_.nodeId);
  }
  for (const auto& [id, m] : members_) {
    if (m.region == region && m.state == PeerState::kAlive) ranked.emplace_back(fnv(id, toward), id);
  }
  size_t k = std::min(options_.bridgesPerRegion, ranked.size());
  std::partial_sort(ranked.begin(), ranked.begin() + long(k), ranked.end());
  std::vector<std::string> out;
  for (size_t i = 0; i < k; ++i) out.push_back(ranked[i].second);
  return out;
}

void ReplicationCore::maintainView(uint64_t now) {
  lastView_ = now;
  viewDirty_ = false;
  // Links to members no longer alive go (setState closes those declared
  // dead; a suspect one stays until decided).
  std::set<std::string> regions;
  for (const auto& [id, m] : members_) {
    if (m.state == PeerState::kAlive && !m.region.empty() && m.region != options_.region) {
      regions.insert(m.region);
    }
  }
  // Bridges: this node's partner in each other region, if it is one of its
  // region's bridges towards that region.
  std::set<std::string> partners;
  primaryPartners_.clear();
  for (const auto& r : regions) {
    auto mine = bridgesOf(options_.region, r);
    auto it = std::find(mine.begin(), mine.end(), options_.nodeId);
    if (it == mine.end()) continue;
    auto theirs = bridgesOf(r, options_.region);
    if (theirs.empty()) continue;
    size_t rank = size_t(it - mine.begin());
    partners.insert(theirs[rank % theirs.size()]);
    if (rank == 0) primaryPartners_.insert(theirs[0]);
  }
  size_t inRegion = 0, active = 0;
  std::set<std::string> linked;
  std::vector<ConnId> drop;
  for (const auto& [id, c] : conns_) {
    bool wanted = c.active || (c.outbound && c.wantActive && !c.helloReceived);
    if (!wanted) continue;
    ++active;
    linked.insert(c.peerId.empty() ? c.dialAddress : c.peerId);
    auto m = members_.find(c.peerId);
    bool sameRegion = m == members_.end() || m->second.region == options_.region;
    if (sameRegion) {
      inRegion += c.outbound;
    } else if (c.outbound && c.helloReceived && !partners.count(c.peerId)) {
      drop.push_back(id);  // no longer this node's bridge partner
    }
  }
  for (ConnId id : drop) close(now, id, true);
  std::vector<std::string> dial;
  for (const auto& p : partners) {
    auto m = members_.find(p);
    if (m == members_.end() || linked.count(p) || linked.count(m->second.gossipAddress) ||
        blocked(p)) {
      continue;
    }
    dial.push_back(p);
  }
  if (inRegion < options_.activeInRegion) {
    std::vector<std::string> candidates;
    for (const auto& [id, m] : members_) {
      if (m.state == PeerState::kAlive && m.region == options_.region && !linked.count(id) &&
          !linked.count(m.gossipAddress) && !blocked(id)) {
        candidates.push_back(id);
      }
    }
    shuffle(candidates);
    size_t want = options_.activeInRegion - inRegion;
    for (size_t i = 0; i < candidates.size() && i < want; ++i) dial.push_back(candidates[i]);
  }
  for (const auto& id : dial) {
    if (active >= options_.maxActive) break;
    // An existing transient connection is not upgraded: a new one is
    // dialled for the view (the other closes when idle).
    if (this->dial(members_.at(id).gossipAddress, true, false)) ++active;
  }
}

// ---- broadcast (Plumtree) -------------------------------------------------------

void ReplicationCore::publish(uint64_t now, std::vector<std::string> encoded) {
  now_ = now;
  if (encoded.empty() || removed_) return;
  std::vector<Cached> items;
  items.reserve(encoded.size());
  for (auto& e : encoded) {
    uint64_t id = rng_();
    Cached c;
    c.data = std::make_shared<const std::string>(std::move(e));
    c.origin = options_.nodeId;
    c.at = now;
    seen_[id] = now;
    seenOrder_.emplace_back(now, id);
    cacheBytes_ += c.data->size();
    cache_[id] = c;
    cacheOrder_.push_back(id);
    items.push_back(std::move(c));
    items.back().round = 0;
    // the id travels with the item: kept in `at`'s place below
    items.back().at = id;
  }
  broadcast(now, std::move(items), {});
}

// `items`: their `at` holds the broadcast id (the cache keeps the time).
void ReplicationCore::broadcast(uint64_t now, std::vector<Cached> items, const std::string& except) {
  (void)now;
  if (items.empty()) return;
  // All items share their scope and origin (callers group them).
  const std::string& scope = items.front().scope;
  std::vector<ConnId> eager;
  std::vector<uint32_t> reached;
  const auto& lazySet = tree(items.front().origin);
  for (auto& [id, c] : conns_) {
    if (!c.active || !c.helloReceived || c.peerId == except || blocked(c.peerId)) continue;
    if (std::find(reached.begin(), reached.end(), c.peerIx) != reached.end()) continue;
    reached.push_back(c.peerIx);  // one link per peer
    if (!scope.empty()) {
      auto m = members_.find(c.peerId);
      if (m == members_.end() || m->second.region != scope) continue;
    }
    bool eagerLink = options_.eagerPush &&
                     std::find(lazySet.begin(), lazySet.end(), c.peerIx) == lazySet.end();
    if (eagerLink && c.queuedBytes < options_.maxQueuedBytesPerPeer) {
      eager.push_back(id);
    } else {
      for (const auto& item : items) c.lazy.push_back(item.at);
      if (!eagerLink) continue;
      stats_.deltasDropped += items.size();  // queue full: announced instead
    }
  }
  std::vector<ConnId> dialling;
  if (reached.empty() && scope.empty() && except.empty() && options_.eagerPush) {
    // No partial view yet (just joined): a few live members of the region
    // get it directly (over probe connections); they forward it.
    std::vector<std::string> members;
    for (const auto& [id, m] : members_) {
      if (m.state == PeerState::kAlive && m.region == options_.region && !blocked(id)) {
        members.push_back(id);
      }
    }
    shuffle(members);
    size_t fanout = std::max(options_.activeInRegion, options_.gossipFanout);
    if (members.size() > fanout) members.resize(fanout);
    for (const auto& id : members) {
      if (!connTo(id)) sendTo(id, frame([](wire::Frame::Builder& f) { f.setGossip(); }));
      if (ConnId c = connTo(id)) {
        eager.push_back(c);
      } else {  // being dialled: the frames wait for its hello
        for (auto& [cid, c] : conns_) {
          if (c.outbound && !c.helloReceived && c.dialAddress == members_.at(id).gossipAddress) {
            dialling.push_back(cid);
          }
        }
      }
    }
  }
  if (eager.empty() && dialling.empty()) return;
  size_t begin = 0;
  while (begin < items.size()) {
    size_t end = begin, bytes = 0;
    while (end < items.size() &&
           (end == begin || bytes + items[end].data->size() < kMaxDeltaFrameBytes)) {
      bytes += items[end++].data->size();
    }
    capnp::MallocMessageBuilder message(unsigned(bytes / 8 + 64 * (end - begin) + 64));
    auto list = newFrame(message, options_.nodeId).initBroadcast(unsigned(end - begin));
    for (size_t i = begin; i < end; ++i) {
      auto b = list[unsigned(i - begin)];
      b.setId(items[i].at);
      b.setRound(items[i].round);
      b.setOrigin(items[i].origin);
      if (!items[i].scope.empty()) b.setScope(items[i].scope);
      b.setData(capnp::Data::Reader(reinterpret_cast<const uint8_t*>(items[i].data->data()),
                                    items[i].data->size()));
    }
    auto body = bodyOf(message);
    for (ConnId c : eager) {
      if (send(c, body, end - begin)) stats_.deltasSent += end - begin;
    }
    for (ConnId c : dialling) {
      auto it = conns_.find(c);
      if (it != conns_.end() && it->second.pending.size() < 16) it->second.pending.push_back(body);
    }
    begin = end;
  }
}

void ReplicationCore::handleBroadcast(uint64_t now, ConnId id, const std::string& from,
                                      capnp::List<wire::Broadcast>::Reader list) {
  std::vector<Cached> forward;
  std::vector<crdt::ReviewDoc> states;
  std::vector<int64_t> sizes;
  uint64_t duplicates = 0, dropped = 0;
  std::set<std::string> dupOrigins;
  int64_t merging = deltaBytesMerging_;
  for (auto b : list) {
    uint64_t bid = b.getId();
    if (!validToken(b.getOrigin())) continue;
    if (seen_.count(bid)) {
      ++duplicates;
      dupOrigins.insert(str(b.getOrigin()));
      continue;
    }
    seen_[bid] = now;
    seenOrder_.emplace_back(now, bid);
    missing_.erase(bid);
    auto data = b.getData();
    Cached c;
    c.data = std::make_shared<const std::string>(reinterpret_cast<const char*>(data.begin()),
                                                 data.size());
    c.scope = b.getScope().size() <= 64 ? str(b.getScope()) : std::string();
    c.origin = str(b.getOrigin());
    ++delivered_[intern(c.origin)];
    // Pushed to us: the link is in this origin's tree on both ends.
    setLazy(c.origin, from, false);
    c.round = uint16_t(std::min<unsigned>(b.getRound() + 1u, 65535u));
    c.at = now;
    cacheBytes_ += c.data->size();
    cache_[bid] = c;
    cacheOrder_.push_back(bid);
    // The store queues without bound: past maxPendingDeltaBytes not yet
    // committed, drop (the write is durable where it was accepted, and
    // anti-entropy brings it once the store caught up). Forwarded anyway.
    int64_t size = int64_t(data.size());
    if (merging + size > int64_t(options_.maxPendingDeltaBytes)) {
      ++dropped;
    } else if (auto doc = crdt::ReviewDoc::decode(*c.data); !doc.ok()) {
      ++stats_.malformedFrames;  // this delta only; anti-entropy will bring the state
    } else if (options_.admit && !options_.admit(*doc).ok()) {
      refusedState(now, from, options_.admit(*doc).error().message, 1);
    } else {
      merging += size;
      sizes.push_back(size);
      states.push_back(std::move(doc).value());
    }
    c.at = bid;
    forward.push_back(std::move(c));
  }
  stats_.deltasReceived += forward.size();
  stats_.receivedDeltasDropped += dropped;
  if (duplicates) {
    stats_.broadcastDuplicates += duplicates;
    // Plumtree: a second copy means this link is redundant in the tree.
    auto it = conns_.find(id);
    std::vector<std::string> prune;
    for (const auto& o : dupOrigins) {
      if (setLazy(o, from, true)) prune.push_back(o);
    }
    if (it != conns_.end() && it->second.active && !prune.empty()) {
      send(id, frame([&](wire::Frame::Builder& f) {
             auto list = f.initPrune(unsigned(prune.size()));
             for (size_t i = 0; i < prune.size(); ++i) list.set(unsigned(i), prune[i]);
           }));
    }
  }
  if (!states.empty()) {
    deltaBytesMerging_ = merging;
    mergeStates(from, std::move(states), std::move(sizes));
  }
  // Forward, grouped by scope and origin.
  auto group = [](const Cached& a) { return std::tie(a.scope, a.origin); };
  std::stable_sort(forward.begin(), forward.end(),
                   [&](const Cached& a, const Cached& b) { return group(a) < group(b); });
  size_t begin = 0;
  while (begin < forward.size()) {
    size_t end = begin;
    while (end < forward.size() && group(forward[end]) == group(forward[begin])) ++end;
    broadcast(now, std::vector<Cached>(forward.begin() + long(begin), forward.begin() + long(end)),
              from);
    begin = end;
  }
}

void ReplicationCore::mergeStates(const std::string& from, std::vector<crdt::ReviewDoc> states,
                                  std::vector<int64_t> sizes) {
  uint64_t ticket = newTicket(false, std::move(sizes), states.size());
  actions_.push_back(Merge{ticket, from, false, std::move(states)});
}

// ---- pulls (read-your-writes sessions) ----------------------------------------

void ReplicationCore::pull(uint64_t now, const crdt::ReviewKey& key, const std::string& prefer) {
  now_ = now;
  if (removed_) return;
  if (auto it = pulled_.find(key); it != pulled_.end()) {
    if (now - it->second < kPullRepeatMillis) return;
    it->second = now;
  } else if (pulled_.size() < kMaxPulledKeys) {
    pulled_.emplace(key, now);
  }
  // Whom to ask: the write's origin, partial-view peers, then any live member.
  std::vector<std::string> ask;
  auto add = [&](const std::string& id) {
    if (ask.size() >= kPullFanout || id == options_.nodeId || !alive(id) || blocked(id)) return;
    if (std::find(ask.begin(), ask.end(), id) == ask.end()) ask.push_back(id);
  };
  if (!prefer.empty()) add(prefer);
  for (const auto& [id, c] : conns_) {
    if (c.active) add(c.peerId);
  }
  std::vector<std::string> others;
  for (const auto& [id, m] : members_) others.push_back(id);
  shuffle(others);
  for (const auto& id : others) add(id);
  if (ask.empty()) return;
  auto body = frame([&](wire::Frame::Builder& f) {
    auto k = f.initPull(1)[0];
    k.setProduct(key.product);
    k.setAuthor(key.author);
  });
  for (const auto& id : ask) {
    if (sendTo(id, body)) ++stats_.pullsSent;
  }
}

void ReplicationCore::handlePull(ConnId id, capnp::List<wire::ReviewKey>::Reader keys) {
  capnp::MallocMessageBuilder message;
  std::vector<std::string> states;
  size_t bytes = 0, n = 0;
  for (auto k : keys) {
    if (++n > kMaxPullKeys) break;
    if (k.getProduct().size() > kMaxTokenBytes || k.getAuthor().size() > kMaxTokenBytes) continue;
    auto state = store_.encodedState(crdt::ReviewKey{str(k.getProduct()), str(k.getAuthor())});
    if (!state.ok() || !state.value()) continue;  // not held (or unreadable): nothing to say
    if (bytes + state.value()->size() > kMaxDeltaFrameBytes && !states.empty()) break;
    bytes += state.value()->size();
    states.push_back(std::move(*state.value()));
  }
  if (states.empty()) return;
  auto body = frame([&](wire::Frame::Builder& f) {
    auto list = f.initPulled(unsigned(states.size()));
    for (size_t i = 0; i < states.size(); ++i) {
      list.set(unsigned(i), capnp::Data::Reader(reinterpret_cast<const uint8_t*>(states[i].data()),
                                                states[i].size()));
    }
  });
  if (send(id, std::move(body))) ++stats_.pullsServed;
}

void ReplicationCore::handlePulled(uint64_t now, const std::string& from,
                                   capnp::List<capnp::Data>::Reader list) {
  std::vector<crdt::ReviewDoc> states;
  std::vector<int64_t> sizes;
  int64_t merging = deltaBytesMerging_;
  size_t n = 0;
  for (auto data : list) {
    if (++n > kMaxPullKeys) break;
    int64_t size = int64_t(data.size());
    if (merging + size > int64_t(options_.maxPendingDeltaBytes)) {
      ++stats_.receivedDeltasDropped;  // the store is behind: a later pull or repair brings it
      continue;
    }
    auto doc = crdt::ReviewDoc::decode(
        std::string_view(reinterpret_cast<const char*>(data.begin()), data.size()));
    if (!doc.ok()) {
      ++stats_.malformedFrames;  // this state only
      continue;
    }
    if (options_.admit) {
      if (auto admitted = options_.admit(*doc); !admitted.ok()) {
        refusedState(now, from, admitted.error().message, 1);
        continue;
      }
    }
    merging += size;
    sizes.push_back(size);
    states.push_back(std::move(doc).value());
  }
  if (states.empty()) return;
  stats_.statesPulled += states.size();
  deltaBytesMerging_ = merging;
  uint64_t ticket = newTicket(false, std::move(sizes), states.size());
  // Merged like a repair (no push lag to report), accounted like deltas.
  actions_.push_back(Merge{ticket, from, true, std::move(states)});
}

void ReplicationCore::handleIhave(uint64_t now, const std::string& from,
                                  capnp::List<uint64_t>::Reader ids) {
  for (uint64_t id : ids) {
    if (seen_.count(id)) continue;
    auto it = missing_.find(id);
    if (it == missing_.end()) {
      if (missing_.size() >= kMaxMissing) continue;
      it = missing_.emplace(id, Missing{}).first;
      it->second.deadline = now + options_.graftTimeoutMillis;
    }
    if (it->second.announcers.size() < 8) it->second.announcers.push_back(from);
  }
}

void ReplicationCore::graftMissing(uint64_t now) {
  if (missing_.empty()) return;
  std::map<std::string, std::vector<uint64_t>> grafts;  // by announcer
  for (auto it = missing_.begin(); it != missing_.end();) {
    Missing& m = it->second;
    if (now < m.deadline) {
      ++it;
      continue;
    }
    std::string to;
    while (!m.announcers.empty() && to.empty()) {
      std::string a = m.announcers.front();
      m.announcers.erase(m.announcers.begin());
      if (connTo(a) && !blocked(a)) to = a;
    }
    if (to.empty()) {  // nobody left to ask: anti-entropy will bring it
      it = missing_.erase(it);
      continue;
    }
    grafts[to].push_back(it->first);
    m.deadline = now + options_.graftTimeoutMillis;
    ++it;
  }
  for (auto& [peer, ids] : grafts) {
    ConnId c = connTo(peer);
    if (!c) continue;

    // (The link joins the deltas' trees when they arrive: handleBroadcast.)
    stats_.grafts += ids.size();
    send(c, frame([&](wire::Frame::Builder& f) {
           auto list = f.initGraft(unsigned(ids.size()));
           for (size_t i = 0; i < ids.size(); ++i) list.set(unsigned(i), ids[i]);
         }));
  }
}

void ReplicationCore::handleGraft(uint64_t now, ConnId id, capnp::List<uint64_t>::Reader ids) {
  (void)now;
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  std::vector<Cached> items;
  size_t n = 0;
  for (uint64_t bid : ids) {
    if (++n > 4096) break;
    auto c = cache_.find(bid);
    if (c == cache_.end()) continue;
    Cached item = c->second;
    item.at = bid;
    setLazy(item.origin, it->second.peerId, false);  // into this origin's tree
    items.push_back(std::move(item));
  }
  if (items.empty()) return;
  capnp::MallocMessageBuilder message;
  auto list = newFrame(message, options_.nodeId).initBroadcast(unsigned(items.size()));
  for (size_t i = 0; i < items.size(); ++i) {
    auto b = list[unsigned(i)];
    b.setId(items[i].at);
    b.setRound(items[i].round);
    b.setOrigin(items[i].origin);
    if (!items[i].scope.empty()) b.setScope(items[i].scope);
    b.setData(capnp::Data::Reader(reinterpret_cast<const uint8_t*>(items[i].data->data()),
                                  items[i].data->size()));
  }
  if (send(id, bodyOf(message), items.size())) stats_.deltasSent += items.size();
}

void ReplicationCore::flushLazy(uint64_t now) {
  (void)now;
  for (auto& [id, c] : conns_) {
    if (c.lazy.empty()) continue;
    std::vector<uint64_t> ids;
    ids.swap(c.lazy);
    if (!c.helloReceived) continue;
    ConnId cid = id;
    capnp::MallocMessageBuilder message(unsigned(ids.size() + 32));
    auto list = newFrame(message, options_.nodeId).initIhave(unsigned(ids.size()));
    for (size_t i = 0; i < ids.size(); ++i) list.set(unsigned(i), ids[i]);
    send(cid, bodyOf(message));
  }
}

void ReplicationCore::expireSeen(uint64_t now) {
  while (!seenOrder_.empty() && now - seenOrder_.front().first >= kSeenMillis) {
    auto it = seen_.find(seenOrder_.front().second);
    if (it != seen_.end() && it->second == seenOrder_.front().first) seen_.erase(it);
    seenOrder_.pop_front();
  }
  while (!cacheOrder_.empty()) {
    auto it = cache_.find(cacheOrder_.front());
    if (it != cache_.end() && now - it->second.at < kCacheMillis && cacheBytes_ <= kMaxCacheBytes) {
      break;
    }
    if (it != cache_.end()) {
      cacheBytes_ -= it->second.data->size();
      cache_.erase(it);
    }
    cacheOrder_.pop_front();
  }
}

// ---- merges -------------------------------------------------------------------

uint64_t ReplicationCore::newTicket(bool repair, std::vector<int64_t> bytes, uint64_t count) {
  uint64_t ticket = nextTicket_++;
  Ticket t;
  t.repair = repair;
  t.remaining = count;
  t.bytes = std::move(bytes);
  std::reverse(t.bytes.begin(), t.bytes.end());  // released from the back, in order
  tickets_.emplace(ticket, std::move(t));
  return ticket;
}

void ReplicationCore::merged(uint64_t ticket) {
  auto it = tickets_.find(ticket);
  if (it == tickets_.end()) return;
  Ticket& t = it->second;
  if (t.repair) {
    --mergesPending_;
  } else if (!t.bytes.empty()) {
    deltaBytesMerging_ -= t.bytes.back();
    t.bytes.pop_back();
  }
  if (--t.remaining == 0) tickets_.erase(it);
}

void ReplicationCore::refusedState(uint64_t now, const std::string& from, const std::string& why,
                                   uint64_t count) {
  stats_.statesRefused += count;
  warn(now, lastRefusedStateWarning_,
       "gossip: refused " + std::to_string(count) + " review state(s) from " + from +
           " that this node's API would not accept (" + why +
           "); do all nodes run the same version and limits?");
}

// ---- anti-entropy -------------------------------------------------------------

void ReplicationCore::handleReconcile(uint64_t now, ConnId id, const std::string& from,
                                      capnp::Data::Reader data, size_t bytes) {
  stats_.antiEntropyBytes += bytes;
  // One repair at a time: while this node runs its own session or still
  // commits the states of one, it turns new sessions away; otherwise after
  // a heal every node would be sent the same states by several peers at
  // once.
  if (!respondingTo_.empty() && now - respondingSince_ > sessionTimeoutMillis()) {
    respondingTo_.clear();
  }
  bool busy = !sessionPeer_.empty() || (!respondingTo_.empty() && respondingTo_ != from) ||
              mergesPending_ > 0;
  uint64_t refusedBefore = reconciler_.counters().refused;
  received_.clear();
  auto reply = reconciler_.handle(
      std::string_view(reinterpret_cast<const char*>(data.begin()), data.size()), busy);
  if (uint64_t refused = reconciler_.counters().refused - refusedBefore; refused > 0) {
    refusedState(now, from, reconciler_.lastRefusal(), refused);
  }
  if (!received_.empty()) {
    uint64_t n = received_.size();
    stats_.statesRepaired += n;
    // Repaired from another region (through a bridge): spread it in this
    // region by broadcast rather than leave it to one session per peer.
    auto peer = members_.find(from);
    if (peer != members_.end() && !peer->second.region.empty() &&
        peer->second.region != options_.region) {
      std::vector<Cached> items;
      items.reserve(received_.size());
      for (const auto& doc : received_) {
        uint64_t bid = rng_();
        Cached c;
        c.data = std::make_shared<const std::string>(doc.encode());
        c.scope = options_.region;
        c.origin = options_.nodeId;
        c.at = now;
        seen_[bid] = now;
        seenOrder_.emplace_back(now, bid);
        cacheBytes_ += c.data->size();
        cache_[bid] = c;
        cacheOrder_.push_back(bid);
        c.at = bid;
        items.push_back(std::move(c));
      }
      broadcast(now, std::move(items), from);
    }
    mergesPending_ += int64_t(n);
    uint64_t ticket = newTicket(true, {}, n);
    actions_.push_back(Merge{ticket, from, true, std::move(received_)});
    received_.clear();
  }
  if (!reply.ok()) {
    if (reply.error().code == ErrorCode::kCorruption) {
      malformed(now, id);
    }
    if (from == sessionPeer_) sessionPeer_.clear();
    return;
  }
  if (reconciler_.peerBusy() && from == sessionPeer_) {
    // Try elsewhere now, this peer a little later; a bridge partner across
    // regions stays due (its link may be all that crosses).
    sessionPeer_.clear();
    busyUntil_[from] = now + uniform(50, 250);
    syncDue_ = true;
    auto m = members_.find(from);
    if (sessionRevived_ && m != members_.end() && m->second.region != options_.region) {
      syncSoon_.insert(from);
    }
    return;
  }
  if (from == sessionPeer_ &&
      (reconciler_.peerHasMore() || (reply.value() && reply.value()->more))) {
    sessionMore_ = true;  // cut to the size cap: go again once it ends
  }
  if (from != sessionPeer_ && reply.value() && !reply.value()->last) {
    respondingTo_ = from;  // a session of the peer's is under way
    respondingSince_ = now;
  }
  if (reply.value()) {
    capnp::MallocMessageBuilder message;
    auto& out = *reply.value();
    newFrame(message, options_.nodeId)
        .setReconcile(capnp::Data::Reader(reinterpret_cast<const uint8_t*>(out.bytes.data()),
                                          out.bytes.size()));
    auto body = bodyOf(message);
    stats_.antiEntropyBytes += body->size() + options_.frameOverheadBytes;
    send(id, std::move(body));
    if (out.last && !out.busy) sessionDone(now, from);
  } else {
    sessionDone(now, from);
  }
}

uint64_t ReplicationCore::sessionTimeoutMillis() const {
  return std::max<uint64_t>(5000, 3 * options_.antiEntropyIntervalMillis);
}

void ReplicationCore::maybeSync(uint64_t now) {
  if (removed_) return;
  if (!sessionPeer_.empty() && now - sessionStarted_ < sessionTimeoutMillis()) {
    // The session under way repairs as much as one with a revived peer of
    // this region would; one across regions (a bridge link back after a
    // WAN partition) still has to run.
    for (auto it = syncSoon_.begin(); it != syncSoon_.end();) {
      auto m = members_.find(*it);
      bool remote = m != members_.end() && m->second.region != options_.region;
      it = remote ? std::next(it) : syncSoon_.erase(it);
    }
    return;
  }
  // The last session's states are still committing (bounded: a store that
  // stalls must not stop repair for good).
  if (mergesPending_ > 0 && now - sessionStarted_ < 30'000) return;
  sessionPeer_.clear();
  sessionMore_ = false;
  if (leaving_) {  // one completed session before going (leave())
    if (leaveSynced_) return;
    std::vector<std::string> peers;
    for (const auto& [id, c] : conns_) {
      if (c.helloReceived && alive(c.peerId) && !blocked(c.peerId)) peers.push_back(c.peerId);
    }
    // None reachable (yet): try again at the next tick; the driver decides
    // how long to wait (Cluster::leave's timeout).
    if (!peers.empty()) startSync(now, peers[uniform(0, peers.size() - 1)]);
    return;
  }
  auto usable = [&](const std::string& id) { return connTo(id) && !blocked(id) && alive(id); };
  if (!syncAgain_.empty()) {  // the last session was cut short: carry on
    std::string id;
    std::swap(id, syncAgain_);
    if (usable(id)) {
      startSync(now, id);
      return;
    }
  }
  auto resting = [&](const std::string& id) {
    auto it = busyUntil_.find(id);
    return it != busyUntil_.end() && now < it->second;
  };
  // One peer that just joined the partial view (a heal, a restart, a
  // first contact), at random: one session carries every difference.
  std::vector<std::string> revived;
  for (auto it = syncSoon_.begin(); it != syncSoon_.end();) {
    if (!usable(*it)) {
      it = syncSoon_.erase(it);
    } else {
      if (!resting(*it)) revived.push_back(*it);  // a resting one waits its turn
      ++it;
    }
  }
  if (!revived.empty()) {
    for (const auto& id : revived) syncSoon_.erase(id);
  }
  if (!revived.empty()) {
    startSync(now, revived[uniform(0, revived.size() - 1)]);
    sessionRevived_ = true;
    return;
  }
  // Partial-view peers: in-region every antiEntropyInterval, across
  // regions (bridges) every crossRegionAntiEntropyInterval.
  std::vector<std::pair<uint64_t, std::string>> local, remote;
  std::set<std::string> seen;
  for (const auto& [cid, c] : conns_) {
    if (!c.active || !seen.insert(c.peerId).second || blocked(c.peerId)) continue;
    auto m = members_.find(c.peerId);
    if (m == members_.end() || m->second.state != PeerState::kAlive) continue;
    auto key = std::make_pair(m->second.synced ? m->second.lastSync + 1 : 0, c.peerId);
    (m->second.region == options_.region ? local : remote).push_back(key);
  }
  std::vector<std::pair<uint64_t, std::string>>* pool = nullptr;
  if (!remote.empty() &&
      now - lastCrossAntiEntropy_ >= options_.crossRegionAntiEntropyIntervalMillis) {
    lastCrossAntiEntropy_ = now;
    pool = &remote;
  } else if (syncDue_ || now - lastAntiEntropy_ >= options_.antiEntropyIntervalMillis) {
    syncDue_ = false;
    lastAntiEntropy_ = now;
    pool = local.empty() ? &remote : &local;
  }
  if (!pool || pool->empty()) return;
  shuffle(*pool);
  std::stable_sort(pool->begin(), pool->end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [last, id] : *pool) {
    if (resting(id)) {
      // It was busy a moment ago. Wait for it rather than settle for a peer
      // synced more recently: it is the one most likely to differ.
      syncDue_ = true;
      return;
    }
    startSync(now, id);
    return;
  }
}

void ReplicationCore::startSync(uint64_t now, const std::string& peerId) {
  ConnId c = connTo(peerId);
  if (!c) return;
  auto first = reconciler_.start();
  if (!first.ok()) return;
  capnp::MallocMessageBuilder message;
  newFrame(message, options_.nodeId)
      .setReconcile(capnp::Data::Reader(reinterpret_cast<const uint8_t*>(first->bytes.data()),
                                        first->bytes.size()));
  auto body = bodyOf(message);
  size_t size = body->size() + options_.frameOverheadBytes;
  if (!send(c, std::move(body))) return;
  sessionPeer_ = peerId;
  sessionStarted_ = now;
  syncDue_ = false;
  leaveSession_ = leaving_;
  sessionRevived_ = false;
  leaveStatesSent_ = reconciler_.counters().statesSent;
  sessionMoved_ = reconciler_.counters().statesSent + stats_.statesRepaired;
  ++stats_.syncStarted;
  stats_.antiEntropyBytes += size;
  if (options_.onSessionStarted) options_.onSessionStarted();
}

void ReplicationCore::sessionDone(uint64_t now, const std::string& peerId) {
  if (peerId == respondingTo_) respondingTo_.clear();
  auto it = members_.find(peerId);
  if (it != members_.end()) {
    it->second.synced = true;
    it->second.lastSync = now;
  }
  if (peerId == sessionPeer_) {
    sessionPeer_.clear();
    ++stats_.syncCompleted;
    if (options_.onSessionCompleted) {
      options_.onSessionCompleted(it != members_.end() && it->second.region != options_.region);
    }
    // A session across regions that repaired something: the WAN link was
    // behind (a heal); the next one follows at the in-region pace, not
    // after crossRegionAntiEntropyInterval, until one finds nothing.
    // (A few states differ in any session while writes flow; a heal's
    // backlog is many more.)
    uint64_t moved = reconciler_.counters().statesSent + stats_.statesRepaired - sessionMoved_;
    if (it != members_.end() && it->second.region != options_.region && moved > kBacklogStates) {
      uint64_t soon = options_.antiEntropyIntervalMillis;
      uint64_t cross = options_.crossRegionAntiEntropyIntervalMillis;
      lastCrossAntiEntropy_ = now + std::min(soon, cross) - std::min(now + soon, cross);
    }
    // Leaving: done once a session begun after leave() found nothing the
    // peer lacked. A session that sent states hands them over, but their
    // merge may not have committed yet: the next one checks.
    if (leaving_ && leaveSession_ && !sessionMore_ &&
        reconciler_.counters().statesSent == leaveStatesSent_) {
      leaveSynced_ = true;
    }
    leaveSession_ = false;
    if (sessionMore_) syncAgain_ = peerId;
    sessionMore_ = false;
  }
}

}  // namespace chorus::gossip

namespace chorus::gossip {

uint32_t ReplicationCore::intern(const std::string& id) {
  auto [it, fresh] = interned_.try_emplace(id, uint32_t(interned_.size()));
  if (fresh) names_.push_back(id);
  return it->second;
}

// A new origin's tree: every partial-view link in this region is eager
// (duplicates prune it to a tree), but across regions only the link to
// this node's first-ranked bridge partner, and only for origins of this
// region: a write enters each other region once, through its origin
// region's bridges, and the other links only announce it.
std::vector<uint32_t>& ReplicationCore::tree(const std::string& origin) {
  uint32_t o = intern(origin);
  if (auto known = lazy_.find(o); known != lazy_.end()) return known->second;
  // A tree formed for one origin spans the partial views (its links are
  // eager at both ends), so it carries any other origin's deltas once to
  // every node too: a new origin starts with a formed tree, that of the
  // lowest-named origin with kReferenceDeltas delivered here (every node
  // picks the same one once all saw that many), and adjusts from there.
  // In a cluster no larger than a partial view, a first delta flooding the
  // region costs a few copies once, and copying trees formed at different
  // times left a write in a hundred to a graft.
  const std::string* best = nullptr;
  uint32_t reference = 0;
  for (const auto& [ix, count] : delivered_) {
    if (members_.size() + 1 <= options_.maxActive) break;
    if (count < kReferenceDeltas || ix == o || !lazy_.count(ix)) continue;
    if (!best || names_[ix] < *best) {
      best = &names_[ix];
      reference = ix;
    }
  }
  std::vector<uint32_t> start;
  if (best) {
    // Its links within the region only: across regions the rule below holds.
    for (uint32_t p : lazy_.at(reference)) {
      auto m = members_.find(names_[p]);
      if (m != members_.end() && m->second.region == options_.region) start.push_back(p);
    }
  }
  auto [it, fresh] = lazy_.try_emplace(o, std::move(start));
  std::string originRegion = options_.region;
  if (origin != options_.nodeId) {
    auto m = members_.find(origin);
    originRegion = m != members_.end() ? m->second.region : std::string();
  }
  for (const auto& [id, c] : conns_) {
    if (!c.active) continue;
    auto m = members_.find(c.peerId);
    if (m == members_.end() || m->second.region == options_.region) continue;
    if (originRegion == options_.region && primaryPartners_.count(c.peerId)) continue;
    uint32_t p = intern(c.peerId);
    if (std::find(it->second.begin(), it->second.end(), p) == it->second.end()) {
      it->second.push_back(p);
    }
  }
  return it->second;
}

bool ReplicationCore::setLazy(const std::string& origin, const std::string& peer, bool lazy) {
  auto& set = tree(origin);
  uint32_t p = intern(peer);
  auto it = std::find(set.begin(), set.end(), p);
  if (lazy == (it != set.end())) return false;
  if (lazy) {
    set.push_back(p);
  } else {
    set.erase(it);
  }
  return true;
}


}  // namespace chorus::gossip
