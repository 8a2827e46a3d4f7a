#include "gossip/replication-core.h"

#include <kj/exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "gossip/frame.h"

namespace chorus::gossip {

namespace {

bool validToken(capnp::Text::Reader t) {
  if (t.size() == 0 || t.size() > ReplicationCore::kMaxTokenBytes) return false;
  for (unsigned char c : t) {
    if (c <= ' ' || c == 0x7f) return false;
  }
  return true;
}

std::string str(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

std::shared_ptr<const std::string> bodyOf(capnp::MessageBuilder& message) {
  return std::make_shared<const std::string>(encodeFrame(message));
}

}  // namespace

CoreOptions coreOptionsFrom(const ClusterOptions& options, const std::string& boundAddress,
                            uint64_t seed) {
  CoreOptions o;
  o.nodeId = options.nodeId;
  o.gossipAddress = options.advertise.empty() ? boundAddress : options.advertise;
  o.selfAddresses = {boundAddress};
  if (!options.advertise.empty()) o.selfAddresses.push_back(options.advertise);
  o.rpcAddress = options.rpcAddress;
  o.seeds = options.seeds;
  o.antiEntropyIntervalMillis = uint64_t(options.antiEntropyInterval.count());
  o.heartbeatIntervalMillis = uint64_t(options.heartbeatInterval.count());
  o.suspectPhi = options.suspectPhi;
  o.deadPhi = options.deadPhi;
  o.pushFanout = options.pushFanout;
  o.maxFrameBytes = options.maxFrameBytes;
  o.maxQueuedBytesPerPeer = options.maxQueuedBytesPerPeer;
  o.maxPendingDeltaBytes = options.maxPendingDeltaBytes;
  o.forgetUnansweredAfterMillis = uint64_t(options.forgetUnansweredAfter.count());
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
          std::min(Reconciler::kDefaultMaxMessageBytes, options_.maxFrameBytes / 2),
          options_.admit) {}

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

// ---- start, stop and the periodic work ------------------------------------

void ReplicationCore::start(uint64_t now, const std::vector<KnownMember>& known) {
  now_ = now;
  // Not said by the nodes themselves: dialled until forgetUnansweredAfter
  // unless they answer (a node that is down then dials this one itself).
  for (const auto& m : known) learn(m.nodeId, m.gossipAddress, m.rpcAddress, false);
  membersDirty_ = false;
  lastPersist_ = now;
  for (const auto& seed : options_.seeds) {
    bool self = seed == options_.gossipAddress ||
                std::find(options_.selfAddresses.begin(), options_.selfAddresses.end(), seed) !=
                    options_.selfAddresses.end();
    if (self) continue;
    seeds_.insert(seed);
    addDialer(seed, true);
  }
}

void ReplicationCore::stop(uint64_t now) {
  now_ = now;
  if (membersDirty_) persist(now);
  for (auto& [id, c] : std::map<ConnId, Conn>(conns_)) close(now, id, true);
}

void ReplicationCore::tick(uint64_t now) {
  now_ = now;
  // Close connections that never said who they are.
  std::vector<ConnId> silent;
  for (const auto& [id, c] : conns_) {
    if (c.helloReceived) continue;
    if (!c.outbound && now - c.openedAt > kStrangerTimeoutMillis) {
      silent.push_back(id);
      ++stats_.connectionsRefused;
    } else if (c.outbound && now - c.openedAt > kHelloTimeoutMillis) {
      silent.push_back(id);
    }
  }
  for (ConnId id : silent) close(now, id, true);
  if (!pruned_ || now - lastPrune_ >= 1000) pruneDialers(now);
  // Dial what is not connected.
  for (auto& [address, d] : dialers_) {
    if (d.self || d.conn != 0 || now < d.nextAttempt) continue;
    ConnId id = nextConn_++;
    Conn c;
    c.outbound = true;
    c.dialAddress = address;
    c.remote = address;
    c.openedAt = now;
    conns_.emplace(id, std::move(c));
    d.conn = id;
    actions_.push_back(Dial{id, address});
  }
  if (!heartbeatSent_ || now - lastHeartbeat_ >= options_.heartbeatIntervalMillis) {
    heartbeatSent_ = true;
    lastHeartbeat_ = now;
    std::shared_ptr<const std::string> beat;
    for (auto& [address, d] : dialers_) {
      auto it = conns_.find(d.conn);
      if (d.conn == 0 || it == conns_.end() || !it->second.ready) continue;
      if (!it->second.helloReceived) {
        sendHello(d.conn);  // the first one may have been dropped by a partition
      } else {
        if (!beat) beat = memberFrame(false);
        send(d.conn, beat);
      }
    }
  }
  updateStates(now);
  if (membersDirty_ && now - lastPersist_ >= 1000) persist(now);
  maybeSync(now);
}

// ---- connections ------------------------------------------------------------

ConnId ReplicationCore::accepted(uint64_t now, std::string remote) {
  now_ = now;
  ConnId id = nextConn_++;
  Conn c;
  c.remote = std::move(remote);
  c.openedAt = now;
  conns_.emplace(id, std::move(c));
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
  close(now, id, false);
}

void ReplicationCore::close(uint64_t now, ConnId id, bool emit) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  if (!c.dialAddress.empty()) {
    auto d = dialers_.find(c.dialAddress);
    if (d != dialers_.end() && d->second.conn == id) {
      d->second.conn = 0;
      d->second.nextAttempt = now + uniform(d->second.backoff / 2, d->second.backoff);
      d->second.backoff = std::min(d->second.backoff * 2, kMaxBackoffMillis);
    }
  }
  if (!c.peerId.empty()) {
    if (c.peerId == sessionPeer_) sessionPeer_.clear();
    auto p = peers_.find(c.peerId);
    if (p != peers_.end()) {
      p->second.pendingDeltas -= std::min(p->second.pendingDeltas, c.queuedDeltas);
    }
  }
  conns_.erase(it);
  if (emit) actions_.push_back(Close{id});
}

void ReplicationCore::malformed(uint64_t now, ConnId id) {
  ++stats_.malformedFrames;
  close(now, id, true);
}

void ReplicationCore::drained(ConnId id, uint64_t bytes, uint64_t deltas) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  c.queuedBytes -= std::min(c.queuedBytes, bytes);
  c.queuedDeltas -= std::min(c.queuedDeltas, deltas);
  if (deltas && !c.peerId.empty()) {
    auto p = peers_.find(c.peerId);
    if (p != peers_.end()) p->second.pendingDeltas -= std::min(p->second.pendingDeltas, deltas);
  }
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
  // (flushDeltas); anything else stops a frame later, with the connection.
  if (c.queuedBytes + size > options_.maxQueuedBytesPerPeer + options_.maxFrameBytes) {
    close(now_, id, true);
    return false;
  }
  c.queuedBytes += size;
  c.queuedDeltas += deltas;
  ++stats_.framesOut;
  stats_.bytesOut += size;
  if (deltas && !c.peerId.empty()) {
    auto p = peers_.find(c.peerId);
    if (p != peers_.end()) p->second.pendingDeltas += deltas;
  }
  actions_.push_back(SendFrame{id, std::move(body), deltas});
  return true;
}

ConnId ReplicationCore::outboundTo(const std::string& peerId) const {
  auto p = peers_.find(peerId);
  if (p == peers_.end()) return 0;
  auto good = [&](ConnId id) {
    auto c = conns_.find(id);
    return id != 0 && c != conns_.end() && c->second.helloReceived && c->second.peerId == peerId;
  };
  auto d = dialers_.find(p->second.gossipAddress);
  if (d != dialers_.end() && good(d->second.conn)) return d->second.conn;
  // A seed dialled under another address spelling.
  for (const auto& [address, dialer] : dialers_) {
    if (good(dialer.conn)) return dialer.conn;
  }
  return 0;
}

bool ReplicationCore::helloReceived(ConnId id) const {
  auto it = conns_.find(id);
  return it != conns_.end() && it->second.helloReceived;
}

std::string ReplicationCore::peerOf(ConnId id) const {
  auto it = conns_.find(id);
  return it == conns_.end() ? std::string() : it->second.peerId;
}

// ---- frames -----------------------------------------------------------------

void ReplicationCore::sendHello(ConnId id) {
  capnp::MallocMessageBuilder message(128);
  auto m = newFrame(message, options_.nodeId).initHello();
  m.setNodeId(options_.nodeId);
  m.setGossipAddress(options_.gossipAddress);
  m.setRpcAddress(options_.rpcAddress);
  send(id, bodyOf(message));
}

std::shared_ptr<const std::string> ReplicationCore::memberFrame(bool ack) {
  auto& cached = ack ? ackFrame_ : heartbeatFrame_;
  if (cached) return cached;
  capnp::MallocMessageBuilder message;
  auto frame = newFrame(message, options_.nodeId);
  auto list = ack ? frame.initAck(unsigned(peers_.size() + 1))
                  : frame.initHeartbeat(unsigned(peers_.size() + 1));
  list[0].setNodeId(options_.nodeId);
  list[0].setGossipAddress(options_.gossipAddress);
  list[0].setRpcAddress(options_.rpcAddress);
  unsigned i = 1;
  for (const auto& [id, p] : peers_) {
    list[i].setNodeId(id);
    list[i].setGossipAddress(p.gossipAddress);
    list[i].setRpcAddress(p.rpcAddress);
    ++i;
  }
  cached = bodyOf(message);
  return cached;
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
    malformed(now, id);
    return;
  }
  ++stats_.framesIn;
  stats_.bytesIn += wireBytes;
  bool bad = false;
  auto exception = kj::runCatchingExceptions([&] {
    auto root = parsed.value()->root();
    if (!validToken(root.getFrom())) {
      bad = true;
      return;
    }
    std::string from = str(root.getFrom());
    if (from == options_.nodeId) {  // dialled ourselves (a seed list naming this node)
      auto d = dialers_.find(c.dialAddress);
      if (!c.dialAddress.empty() && d != dialers_.end()) d->second.self = true;
      close(now, id, true);
      return;
    }
    if (c.peerId.empty()) {
      c.peerId = from;
    } else if (c.peerId != from) {
      bad = true;  // a connection speaks for one node only
      return;
    }
    if (blocked(from)) {
      ++stats_.partitionDropped;
      return;
    }
    if (root.which() != wire::Frame::HELLO && !c.helloReceived) {
      bad = true;  // every connection starts with a hello
      return;
    }
    if (auto p = peers_.find(from); p != peers_.end()) p->second.detector.heartbeat(now);
    switch (root.which()) {
      case wire::Frame::HELLO: {
        auto m = root.getHello();
        if (!validToken(m.getGossipAddress()) || str(m.getNodeId()) != from) {
          bad = true;
          return;
        }
        bool first = !c.helloReceived;
        if (first && !c.outbound) {  // no longer a stranger: counts as a peer's connection
          size_t peers = 0;
          for (const auto& [otherId, other] : conns_) {
            peers += !other.outbound && other.helloReceived;
          }
          if (peers >= options_.maxInbound) {
            ++stats_.connectionsRefused;
            close(now, id, true);
            return;
          }
        }
        c.helloReceived = true;
        learn(from, str(m.getGossipAddress()), str(m.getRpcAddress()), true);
        if (c.outbound) {
          if (auto d = dialers_.find(c.dialAddress); d != dialers_.end()) {
            d->second.backoff = kMinBackoffMillis;
            d->second.keep = true;  // it answered
          }
        } else if (first) {
          sendHello(id);
        }
        return;
      }
      case wire::Frame::HEARTBEAT:
        learnMembers(from, root.getHeartbeat());
        send(id, memberFrame(true));
        return;
      case wire::Frame::ACK:
        learnMembers(from, root.getAck());
        return;
      case wire::Frame::DELTAS:
        handleDeltas(now, from, root.getDeltas());
        return;
      case wire::Frame::RECONCILE:
        handleReconcile(now, id, from, root.getReconcile(), wireBytes);
        return;
      default:
        return;
    }
  });
  if (exception != nullptr) bad = true;
  if (bad && conns_.count(id)) malformed(now, id);
}

void ReplicationCore::handleDeltas(uint64_t now, const std::string& from,
                                   capnp::List<capnp::Data>::Reader list) {
  uint64_t received = 0, dropped = 0;
  std::vector<crdt::ReviewDoc> states;
  std::vector<int64_t> sizes;
  int64_t merging = deltaBytesMerging_;
  for (auto data : list) {
    // The store queues without bound: past maxPendingDeltaBytes not yet
    // committed, drop (the sender's write is durable there, and
    // anti-entropy brings it once the store caught up).
    int64_t size = int64_t(data.size());
    if (merging + size > int64_t(options_.maxPendingDeltaBytes)) {
      ++dropped;
      continue;
    }
    auto doc = crdt::ReviewDoc::decode(
        std::string_view(reinterpret_cast<const char*>(data.begin()), data.size()));
    if (!doc.ok()) {
      ++stats_.malformedFrames;
      continue;  // drop this delta; anti-entropy will bring the state
    }
    if (options_.admit) {
      if (auto admitted = options_.admit(*doc); !admitted.ok()) {
        refusedState(now, from, admitted.error().message, 1);
        continue;
      }
    }
    ++received;
    merging += size;
    sizes.push_back(size);
    states.push_back(std::move(doc).value());
  }
  stats_.deltasReceived += received;
  stats_.receivedDeltasDropped += dropped;
  if (states.empty()) return;
  deltaBytesMerging_ = merging;
  uint64_t ticket = newTicket(false, std::move(sizes), states.size());
  actions_.push_back(Merge{ticket, from, false, std::move(states)});
}

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
    // Try elsewhere now, this peer a little later.
    sessionPeer_.clear();
    busyUntil_[from] = now + uniform(50, 250);
    syncDue_ = true;
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

void ReplicationCore::refusedState(uint64_t now, const std::string& from, const std::string& why,
                                   uint64_t count) {
  stats_.statesRefused += count;
  if (warnedRefusedState_ && now - lastRefusedStateWarning_ < kWarnEveryMillis) return;
  warnedRefusedState_ = true;
  lastRefusedStateWarning_ = now;
  actions_.push_back(Warn{"gossip: refused " + std::to_string(count) + " review state(s) from " +
                          from + " that this node's API would not accept (" + why +
                          "); do all nodes run the same version and limits?"});
}

// ---- membership -------------------------------------------------------------

void ReplicationCore::learnMembers(const std::string& from,
                                   capnp::List<wire::Member>::Reader list) {
  size_t n = 0;
  for (auto m : list) {
    if (++n > kMaxMembers) break;
    auto idText = m.getNodeId();
    // The common case, every member of every heartbeat: a known member
    // mentioned second-hand, which learn() would leave as it is (whatever
    // the addresses say, valid or not).
    if (std::string_view idView(idText.cStr(), idText.size());
        idView != from && peerIds_.count(idView) != 0) {
      continue;
    }
    if (!validToken(idText) || !validToken(m.getGossipAddress())) continue;
    std::string id = str(idText);
    if (id == options_.nodeId) continue;
    std::string rpc = m.getRpcAddress().size() <= kMaxTokenBytes ? str(m.getRpcAddress()) : "";
    learn(id, str(m.getGossipAddress()), rpc, id == from);
  }
}

// `authoritative`: the node said this of itself (hello, or its own entry).
void ReplicationCore::learn(const std::string& id, const std::string& gossip,
                            const std::string& rpc, bool authoritative) {
  if (id == options_.nodeId) return;
  bool isNew = false;
  auto it = peers_.find(id);
  if (it == peers_.end()) {
    if (peers_.size() >= kMaxMembers) return;
    it = peers_.emplace(id, Peer(double(options_.heartbeatIntervalMillis))).first;
    peerIds_.insert(it->first);  // map keys stay put; peers are never erased
    it->second.gossipAddress = gossip;
    it->second.rpcAddress = rpc;
    membersDirty_ = true;
    isNew = true;
    heartbeatFrame_.reset();
    ackFrame_.reset();
  } else if (authoritative &&
             (it->second.gossipAddress != gossip || it->second.rpcAddress != rpc)) {
    it->second.gossipAddress = gossip;
    it->second.rpcAddress = rpc;
    membersDirty_ = true;
    heartbeatFrame_.reset();
    ackFrame_.reset();
  }
  // Only a member's own address is dialled (so diallers are bounded like
  // members); a second-hand mention of a known member adds none (its
  // dialler may have been dropped as unanswered: the node reaches this one
  // itself, or after a restart the member file brings it back).
  if (isNew || authoritative) addDialer(it->second.gossipAddress, authoritative);
}

void ReplicationCore::addDialer(const std::string& address, bool keep) {
  auto [d, inserted] = dialers_.try_emplace(address);
  if (inserted) {
    d->second.createdAt = now_;
    if (address == options_.gossipAddress ||
        std::find(options_.selfAddresses.begin(), options_.selfAddresses.end(), address) !=
            options_.selfAddresses.end()) {
      d->second.self = true;
    }
  }
  d->second.keep = d->second.keep || keep;
  stats_.dialers = dialers_.size();
}

void ReplicationCore::pruneDialers(uint64_t now) {
  pruned_ = true;
  lastPrune_ = now;
  std::set<std::string> addresses;
  for (const auto& [id, p] : peers_) addresses.insert(p.gossipAddress);
  for (auto it = dialers_.begin(); it != dialers_.end();) {
    Dialer& d = it->second;
    bool seed = seeds_.count(it->first) != 0;
    // No member's address any more (it gave another one for itself).
    bool orphan = !seed && !addresses.count(it->first);
    bool unanswered =
        !seed && !d.keep && !d.conn && now - d.createdAt >= options_.forgetUnansweredAfterMillis;
    if (orphan && d.conn) close(now, d.conn, true);  // clears d.conn
    if (orphan || unanswered) {
      it = dialers_.erase(it);
    } else {
      ++it;
    }
  }
  stats_.dialers = dialers_.size();
}

void ReplicationCore::updateStates(uint64_t now) {
  for (auto& [id, p] : peers_) {
    p.phi = p.detector.phi(now);
    PeerState next = p.phi < options_.suspectPhi ? PeerState::kAlive
                     : p.phi < options_.deadPhi  ? PeerState::kSuspect
                                                 : PeerState::kDead;
    // A peer back from a partition, a restart or a first contact: repair
    // now rather than at its turn.
    if (next == PeerState::kAlive && p.state != PeerState::kAlive) syncSoon_.insert(id);
    p.state = next;
  }
}

void ReplicationCore::persist(uint64_t now) {
  membersDirty_ = false;
  lastPersist_ = now;
  PersistMembers out;
  for (const auto& [id, p] : peers_) out.members.push_back({id, p.gossipAddress, p.rpcAddress});
  actions_.push_back(std::move(out));
}

std::vector<MemberInfo> ReplicationCore::members() const {
  std::vector<MemberInfo> out;
  for (const auto& [id, p] : peers_) {
    MemberInfo m;
    m.nodeId = id;
    m.gossipAddress = p.gossipAddress;
    m.rpcAddress = p.rpcAddress;
    m.state = p.state;
    m.partitioned = blocked_.count(id) != 0;
    m.lastSyncUnixMillis = p.synced ? p.lastSync : 0;
    m.pendingDeltas = p.pendingDeltas;
    m.phi = std::isinf(p.phi) ? -1 : p.phi;
    out.push_back(std::move(m));
  }
  return out;
}

void ReplicationCore::partition(const std::vector<std::string>& nodeIds) {
  for (const auto& id : nodeIds) {
    if (id != options_.nodeId) blocked_.insert(id);
  }
}

void ReplicationCore::heal() { blocked_.clear(); }

// ---- anti-entropy -------------------------------------------------------------

uint64_t ReplicationCore::sessionTimeoutMillis() const {
  return std::max<uint64_t>(5000, 3 * options_.antiEntropyIntervalMillis);
}

void ReplicationCore::maybeSync(uint64_t now) {
  if (!sessionPeer_.empty() && now - sessionStarted_ < sessionTimeoutMillis()) {
    syncSoon_.clear();  // the session under way repairs as much (see below)
    return;
  }
  // The last session's states are still committing (bounded: a store that
  // stalls must not stop repair for good).
  if (mergesPending_ > 0 && now - sessionStarted_ < 30'000) return;
  sessionPeer_.clear();
  sessionMore_ = false;
  if (!syncAgain_.empty()) {  // the last session was cut short: carry on
    std::string id;
    std::swap(id, syncAgain_);
    if (outboundTo(id) && !blocked(id)) {
      startSync(now, id);
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
    return it != busyUntil_.end() && now < it->second;
  };
  std::vector<std::string> revived;
  for (const auto& id : syncSoon_) {
    if (outboundTo(id) && !blocked(id) && !resting(id)) revived.push_back(id);
  }
  syncSoon_.clear();
  if (!revived.empty()) {
    startSync(now, revived[uniform(0, revived.size() - 1)]);
    return;
  }
  if (!syncDue_ && now - lastAntiEntropy_ < options_.antiEntropyIntervalMillis) return;
  syncDue_ = false;
  lastAntiEntropy_ = now;
  // The alive, reachable peer synced least recently (random among equals).
  std::vector<std::pair<uint64_t, std::string>> candidates;
  for (const auto& [id, p] : peers_) {
    if (p.state == PeerState::kAlive && !blocked(id)) {
      candidates.emplace_back(p.synced ? p.lastSync + 1 : 0, id);
    }
  }
  shuffle(candidates);
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [last, id] : candidates) {
    if (!outboundTo(id)) continue;
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
  ConnId c = outboundTo(peerId);
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
  lastAntiEntropy_ = now;
  syncDue_ = false;
  ++stats_.syncStarted;
  stats_.antiEntropyBytes += size;
}

void ReplicationCore::sessionDone(uint64_t now, const std::string& peerId) {
  if (peerId == respondingTo_) respondingTo_.clear();
  auto it = peers_.find(peerId);
  if (it != peers_.end()) {
    it->second.synced = true;
    it->second.lastSync = now;
  }
  if (peerId == sessionPeer_) {
    sessionPeer_.clear();
    ++stats_.syncCompleted;
    if (sessionMore_) syncAgain_ = peerId;
    sessionMore_ = false;
  }
}

// ---- the fast path ------------------------------------------------------------

void ReplicationCore::publish(uint64_t now, std::vector<std::string> encoded) {
  now_ = now;
  if (!encoded.empty()) flushDeltas(std::move(encoded));
}

void ReplicationCore::flushDeltas(std::vector<std::string> encoded) {
  // Targets: every connected peer, or pushFanout random ones.
  std::vector<ConnId> targets;
  size_t unreachable = 0;
  for (const auto& [id, p] : peers_) {
    ConnId c = blocked(id) ? 0 : outboundTo(id);
    if (c && conns_.at(c).queuedBytes < options_.maxQueuedBytesPerPeer) {
      targets.push_back(c);
    } else {
      ++unreachable;
    }
  }
  if (targets.size() > options_.pushFanout) {  // the others get it by anti-entropy
    shuffle(targets);
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
    auto frame = bodyOf(message);
    for (ConnId c : targets) {
      if (send(c, frame, end - begin)) sent += end - begin;
    }
    begin = end;
  }
  stats_.deltasSent += sent;
  stats_.deltasDropped += unreachable * encoded.size();
}

}  // namespace chorus::gossip
