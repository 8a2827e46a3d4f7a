// gossip::ReplicationCore: the replication protocol of one node as a
// single-threaded state machine with no I/O: SWIM membership with Lifeguard's
// refinements, the partial view (bounded connections, region bridges),
// epidemic broadcast of deltas (Plumtree), anti-entropy scheduling and the
// reconciler exchange, and the member lifecycle (leave, remove, forget).
// gossip/README.md describes the protocol.
//
// It touches no socket, thread, clock or global. Time comes in with every
// input (`now`, milliseconds of a monotonic clock of the driver's choosing),
// randomness from a PRNG seeded by CoreOptions::seed, and the store is
// reached through gossip::ReplicaStore (reads only: states to merge leave as
// Merge actions). The same inputs in the same order give the same actions.
//
// Drivers: gossip::Cluster (libuv TCP, sealing, the store thread) and the
// simulator (tools/sim). A driver
//   - calls start() once, then tick() about every kTickMillis;
//   - executes the Dial actions (a connection to an address, identified by
//     the ConnId the core chose), reports accepted connections (accepted()
//     gives their ConnId), opened() once a connection can carry frames both
//     ways (for Cluster: the peer's preamble arrived), and closed() when one
//     ends for any reason other than a Close action;
//   - hands over every frame body that arrived (received()), in order per
//     connection, and reports written bytes (drained());
//   - executes Merge actions through ReplicaStore::merge and calls merged()
//     once per state, on the core's thread, when its merge completed;
//   - passes committed local writes to publish().
// After each input, takeActions() returns what to do, in order.
//
// A Close action or closed() forgets the connection at once: later inputs
// naming it are ignored, and the driver must not report it again.
#pragma once

#include <capnp/common.h>
#include <kj/array.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <variant>
#include <vector>

#include "crdt/result.h"
#include "crdt/review.h"
#include "gossip/cluster.h"
#include "gossip/gossip.capnp.h"
#include "gossip/member-file.h"
#include "gossip/reconciler.h"
#include "gossip/replica-store.h"

namespace chorus::gossip {

using ConnId = uint64_t;  // never 0

struct CoreOptions {
  std::string nodeId;                      // unique in the cluster; required
  std::string gossipAddress;               // the address peers dial to reach this node
  std::vector<std::string> selfAddresses;  // other spellings of it (e.g. the bound address)
  std::string rpcAddress;                  // shared with peers
  std::string region = "default";
  std::vector<std::string> seeds;  // addresses to join through
  // This run's first incarnation: above any earlier run's (Cluster: from the
  // member file and the wall clock), so that stale suspicions of an earlier
  // run cannot touch this one.
  uint64_t incarnation = 1;
  bool rejoin = false;  // as ClusterOptions::rejoin

  // SWIM and Lifeguard
  uint64_t probeIntervalMillis = 1000;
  uint64_t probeTimeoutMillis = 500;  // direct ack before indirect probes
  size_t indirectProbes = 3;          // k members asked to probe on our behalf
  // Suspicion timeout: min = suspicionMult x log10(max(N, 10)) x probe
  // interval, falling from maxSuspicionMult x min towards min as independent
  // confirmations arrive (Lifeguard; kSuspicionConfirmations of them).
  double suspicionMult = 1.0;
  double maxSuspicionMult = 3.0;
  uint64_t gossipIntervalMillis = 200;  // membership updates to gossipFanout partial-view peers
  size_t gossipFanout = 3;
  size_t retransmitMult = 4;  // each update is sent retransmitMult x ceil(log10(N + 1)) times
  // Full member lists with one random member this often, scaled up with N
  // as memberlist does (x ceil(log2(N) - 5) + 1 beyond 32 members).
  uint64_t pushPullIntervalMillis = 60'000;

  // Partial view
  size_t activeInRegion = 4;     // partial-view links this node dials in its region
  size_t maxActive = 16;         // partial-view links in all (dialled and accepted)
  size_t bridgesPerRegion = 2;   // nodes of each region that link to each other region
  size_t maxConnections = 32;    // with peers (hello done): partial view, probes, repairs
  uint64_t idleTransientMillis = 2000;  // a probe or repair connection unused this long closes

  // Broadcast (Plumtree)
  bool eagerPush = true;            // false: announce only (tests of the repair path)
  uint64_t graftTimeoutMillis = 250;  // an announced delta not received by then is asked for

  // Anti-entropy
  uint64_t antiEntropyIntervalMillis = 1000;              // with an in-region partial-view peer
  uint64_t crossRegionAntiEntropyIntervalMillis = 10'000;  // bridges, with their bridge peers

  // Lifecycle
  uint64_t forgetDeadAfterMillis = 24ull * 3600 * 1000;

  size_t maxFrameBytes = 32u << 20;
  // Anti-entropy messages are cut to this many bytes of leaf entries or
  // states (and to half of maxFrameBytes): with one session at a time and
  // no new one until its states committed, it bounds the states a sync
  // holds in memory on either side (gossip/README.md, Bounds).
  size_t maxSyncMessageBytes = 4u << 20;
  size_t maxQueuedBytesPerPeer = 64u << 20;
  size_t maxPendingDeltaBytes = 64u << 20;  // received deltas merging, not yet committed
  // Bytes the transport adds to each frame body on the wire (the seal);
  // counted in bytesIn/bytesOut and queued bytes.
  size_t frameOverheadBytes = 72;
  std::function<Status(const crdt::ReviewDoc&)> admit;  // as ClusterOptions::admit
  uint64_t seed = 0;                                    // of the core's PRNG
  // For metrics: called when this node starts an anti-entropy session, and
  // when the one it started completes (`crossRegion`: with a peer of another
  // region), within the input that caused it, so the driver may time them
  // with a finer clock than `now`. Must not call the core. Unset: nothing.
  std::function<void()> onSessionStarted;
  std::function<void(bool crossRegion)> onSessionCompleted;
};

// The core's view of ClusterOptions (Cluster's driver uses it).
CoreOptions coreOptionsFrom(const ClusterOptions& options, const std::string& boundAddress,
                            uint64_t seed, uint64_t incarnation);

// ---- actions --------------------------------------------------------------

// Seal `body` (one gossip frame body, gossip/frame.h) and send it on `conn`.
// `deltas`: how many pushed deltas it carries (for pendingDeltas).
struct SendFrame {
  ConnId conn;
  std::shared_ptr<const std::string> body;  // shared by the sends of one frame to many peers
  uint64_t deltas = 0;
};
// Open a connection to `address`; it is `conn` from now on (opened() or
// closed() follow).
struct Dial {
  ConnId conn;
  std::string address;
};
// Close `conn` (malformed or unexpected traffic, a timeout, ourselves).
struct Close {
  ConnId conn;
};
// Merge these states from peer `from` through ReplicaStore::merge, then call
// merged(ticket) once per state.
struct Merge {
  uint64_t ticket;
  std::string from;
  bool repair = false;  // anti-entropy or a pull's answer (else pushed deltas)
  std::vector<crdt::ReviewDoc> states;
};
// Persist the member list (<dataDir>/members for Cluster).
struct PersistMembers {
  std::vector<KnownMember> members;
};
// A line for the operator's log (rate-limited by the core).
struct Warn {
  std::string message;
};
using Action = std::variant<SendFrame, Dial, Close, Merge, PersistMembers, Warn>;

class ReplicationCore {
 public:
  static constexpr uint64_t kTickMillis = 50;  // how often drivers should call tick()
  static constexpr uint64_t kMinBackoffMillis = 100;
  static constexpr uint64_t kMaxBackoffMillis = 2000;
  static constexpr size_t kMaxDeltaFrameBytes = 1u << 20;  // a broadcast frame carries ~this at most
  static constexpr size_t kMaxMembers = 4096;
  static constexpr size_t kMaxTokenBytes = 256;
  static constexpr size_t kMaxPiggyback = 32;          // member updates per frame
  static constexpr size_t kSuspicionConfirmations = 3;  // Lifeguard's K
  static constexpr int kMaxHealth = 8;                  // Lifeguard's local health multiplier cap
  static constexpr uint64_t kSeenMillis = 60'000;       // broadcast ids remembered this long
  static constexpr uint64_t kCacheMillis = 10'000;      // broadcast payloads kept for grafts
  static constexpr size_t kMaxCacheBytes = 16u << 20;
  static constexpr size_t kMaxMissing = 65'536;         // announced ids not yet received
  static constexpr uint64_t kBacklogStates = 256;  // a cross-region session moving more: go again soon
  static constexpr uint64_t kReferenceDeltas = 2;      // a tree this used is formed
  static constexpr uint64_t kStrangerTimeoutMillis = 5'000;  // a connection to us must say hello
  static constexpr uint64_t kHelloTimeoutMillis = 10'000;    // a connection we dialled must answer
  static constexpr uint64_t kWarnEveryMillis = 10'000;
  static constexpr size_t kPullFanout = 8;            // peers asked per pull
  static constexpr uint64_t kPullRepeatMillis = 200;  // a key is asked for at most this often
  static constexpr size_t kMaxPullKeys = 64;          // keys read from one pull frame
  static constexpr size_t kMaxPulledKeys = 4096;      // keys remembered for kPullRepeatMillis

  ReplicationCore(CoreOptions options, ReplicaStore& store);
  ~ReplicationCore();
  ReplicationCore(const ReplicationCore&) = delete;
  ReplicationCore& operator=(const ReplicationCore&) = delete;

  // ---- inputs -------------------------------------------------------------
  // The persisted member list (this node's own entry, if there, is
  // skipped), then the seeds: who to contact.
  void start(uint64_t now, const std::vector<KnownMember>& known);
  // Periodic work: probes, gossip, the partial view, failure detection,
  // persisting members, anti-entropy, announcements and grafts.
  void tick(uint64_t now);
  // A connection someone opened to this node; its id.
  ConnId accepted(uint64_t now, std::string remote);
  // `conn` can carry frames both ways.
  void opened(uint64_t now, ConnId conn);
  // `conn` ended (not after a Close action).
  void closed(uint64_t now, ConnId conn);
  // One frame body that arrived on `conn` (opened, authentic, in order).
  void received(uint64_t now, ConnId conn, kj::Array<capnp::word> body);
  void received(uint64_t now, ConnId conn, std::string_view body);  // copies
  // `bytes` (as queued: body + frameOverheadBytes) of frames on `conn`
  // carrying `deltas` deltas left the node.
  void drained(ConnId conn, uint64_t bytes, uint64_t deltas);
  // Committed local writes' deltas (crdt::ReviewDoc::encode), to broadcast now.
  void publish(uint64_t now, std::vector<std::string> encodedDeltas);
  // Asks live peers for their state of `key` (a read waits for a write this
  // node lacks: api sessions): `prefer` first when it is a live member (the
  // node that accepted the write), then partial-view peers, then others,
  // kPullFanout in all. Their answers merge like repairs. A key pulled
  // within kPullRepeatMillis is not asked for again.
  void pull(uint64_t now, const crdt::ReviewKey& key, const std::string& prefer);
  // One state of the Merge action `ticket` completed (committed or refused).
  void merged(uint64_t ticket);
  // Partition injection: drop every frame to and from these peers / stop.
  void partition(const std::vector<std::string>& nodeIds);
  void heal();
  // Leaving for good: announces it, and runs one last anti-entropy session
  // with a peer. leaveDone() once both happened; then the driver stops.
  void leave(uint64_t now);
  // Declares `nodeId` left for good. kNotFound if unknown (or already
  // forgotten), kInvalidArgument for this node itself.
  Status remove(uint64_t now, const std::string& nodeId);
  // Shutting down: persists the member list if it changed.
  void stop(uint64_t now);

  // ---- outputs ------------------------------------------------------------
  std::vector<Action> takeActions();

  // ---- views --------------------------------------------------------------
  const std::string& nodeId() const { return options_.nodeId; }
  const std::string& region() const { return options_.region; }
  uint64_t incarnation() const { return incarnation_; }
  // Members but this node (left ones until forgotten), by id.
  // lastSyncUnixMillis is in the core's clock (the `now` of the session's
  // end); Cluster converts it to wall-clock time.
  std::vector<MemberInfo> members() const;
  // fn(id, state) for every member, by id: members() without the copies.
  template <typename F>
  void forEachState(F&& fn) const {
    for (const auto& [id, m] : members_) fn(id, m.state);
  }
  size_t peerCount() const { return members_.size(); }
  std::vector<std::string> partitioned() const { return {blocked_.begin(), blocked_.end()}; }
  // Counters kept by the core (Cluster adds its transport's own). bytesOut
  // and framesOut count frames as queued.
  const ClusterStats& stats() const { return stats_; }
  ClusterStats& stats() { return stats_; }
  // Whether `conn` is known and its peer said hello; its peer's id.
  bool helloReceived(ConnId conn) const;
  std::string peerOf(ConnId conn) const;
  // Anti-entropy merges handed out and not yet completed.
  int64_t mergesPending() const { return mergesPending_; }
  bool leaving() const { return leaving_; }
  // After leave(): an anti-entropy session begun after leave() completed
  // without sending the peer anything (so the peer's committed store holds
  // everything this node acknowledged), and what was queued for peers was
  // written. Until then it keeps trying with the peers it can reach.
  bool leaveDone() const;
  // Another node removed this one: it gossips no more (see ClusterOptions::rejoin).
  bool removed() const { return removed_; }

 private:
  struct Member {
    std::string gossipAddress;
    std::string rpcAddress;
    std::string region;
    uint64_t incarnation = 0;
    PeerState state = PeerState::kAlive;
    bool rejoin = false;
    uint64_t stateSince = 0;  // core clock
    // Suspicion (Lifeguard): when it turns dead unless refuted, and who
    // else said so (independent confirmations shorten it).
    uint64_t suspectedAt = 0;
    uint64_t suspectDeadline = 0;
    std::set<std::string> confirmations;
    bool synced = false;
    uint64_t lastSync = 0;  // core clock
  };
  struct Conn {
    std::string dialAddress;  // set for connections this node dialled
    std::string remote;       // for logs
    std::string peerId;       // from the first frame
    uint32_t peerIx = 0;      // peerId interned
    bool outbound = false;
    bool ready = false;
    bool helloReceived = false;
    bool wantActive = false;  // dialled for the partial view
    bool active = false;      // in the partial view (both sides agreed)
    bool seed = false;        // dialled to join through a seed address
    uint64_t queuedBytes = 0;
    uint64_t queuedDeltas = 0;
    uint64_t openedAt = 0;
    uint64_t lastUsed = 0;
    std::vector<std::shared_ptr<const std::string>> pending;  // until hello
    std::vector<uint64_t> lazy;  // broadcast ids to announce at the next tick
  };
  struct Probe {  // one this node runs, directly or for another (pingReq)
    std::string target;
    uint64_t started = 0;  // created
    uint64_t sent = 0;     // the ping left (0: its connection is being set up)
    uint64_t indirectAt = 0;
    bool indirectSent = false;
    bool unreachable = false;  // its connection failed before a hello
    size_t nacksExpected = 0, nacks = 0;
    bool acked = false;
    // For a pingReq: answer this peer with its seq.
    std::string forPeer;
    uint64_t forSeq = 0;
  };
  struct Queued {  // a membership update being disseminated
    uint64_t transmits = 0;
    uint64_t order = 0;  // ties: older first
  };
  struct Ticket {
    bool repair = false;
    uint64_t remaining = 0;
    std::vector<int64_t> bytes;  // deltas: each state's size, released as they complete
  };
  struct Cached {
    std::shared_ptr<const std::string> data;  // the encoded delta
    std::string scope;
    std::string origin;
    uint16_t round = 0;
    uint64_t at = 0;
  };
  struct Missing {
    uint64_t deadline = 0;
    std::vector<std::string> announcers;  // in order of announcement
  };

  // frames
  void handle(uint64_t now, ConnId id, Conn& c, kj::Array<capnp::word> body);
  void handleHello(uint64_t now, ConnId id, Conn& c, wire::Hello::Reader hello);
  void handleBroadcast(uint64_t now, ConnId id, const std::string& from,
                       capnp::List<wire::Broadcast>::Reader list);
  void handleIhave(uint64_t now, const std::string& from, capnp::List<uint64_t>::Reader ids);
  void handleGraft(uint64_t now, ConnId id, capnp::List<uint64_t>::Reader ids);
  // Marks the link to `peer` lazy (else eager) in `origin`'s tree; whether it changed.
  bool setLazy(const std::string& origin, const std::string& peer, bool lazy);
  std::vector<uint32_t>& tree(const std::string& origin);
  uint32_t intern(const std::string& id);
  void handleReconcile(uint64_t now, ConnId id, const std::string& from, capnp::Data::Reader data,
                       size_t bytes);
  void handlePing(uint64_t now, ConnId id, const std::string& from, wire::Probe::Reader p);
  void handlePingReq(uint64_t now, const std::string& from, wire::Probe::Reader p);
  void handleAck(uint64_t now, uint64_t seq, bool nack);
  void handlePull(ConnId id, capnp::List<wire::ReviewKey>::Reader keys);
  void handlePulled(uint64_t now, const std::string& from, capnp::List<capnp::Data>::Reader states);
  // A frame body with piggybacked member updates (`about`'s record first).
  std::shared_ptr<const std::string> frame(
      const std::function<void(wire::Frame::Builder&)>& fill, const std::string& about = {});
  // connections
  void close(uint64_t now, ConnId id, bool emit);
  bool send(ConnId id, std::shared_ptr<const std::string> body, uint64_t deltas = 0);
  // Sends to `peerId` over any connection with it, dialling a transient one
  // (frames wait for its hello) if there is none and the cap allows.
  bool sendTo(const std::string& peerId, std::shared_ptr<const std::string> body);
  ConnId dial(const std::string& address, bool wantActive, bool seed);
  ConnId connTo(const std::string& peerId) const;  // hello done, prefers the partial view
  void malformed(uint64_t now, ConnId id, const std::string& why = {});
  void sendHello(ConnId id);
  size_t peerConnections() const;  // hello done
  size_t openConnections() const;  // hello done, or dialled
  bool evictTransient(ConnId keep);
  // membership
  void learn(wire::Member::Reader m, const std::string& from);
  void apply(const std::string& id, const std::string& gossip, const std::string& rpc,
             const std::string& region, uint64_t incarnation, PeerState state, bool rejoin,
             const std::string& from);
  void aboutSelf(PeerState state, uint64_t incarnation, bool rejoin);
  void setState(const std::string& id, Member& m, PeerState state);
  void enqueue(const std::string& id);
  void dequeue(const std::string& id);
  void writeMember(wire::Member::Builder b, const std::string& id) const;
  void fillPiggyback(wire::Frame::Builder& f, const std::string& about);
  uint64_t transmitLimit() const;
  void startSuspicion(Member& m, const std::string& by);
  void suspect(uint64_t now, const std::string& id, const std::string& by);
  uint64_t suspicionTimeout(const Member& m) const;
  void probe(uint64_t now);
  void probeMember(uint64_t now, const std::string& id);
  void checkProbes(uint64_t now);
  void gossip(uint64_t now);
  void pushPull(uint64_t now, const std::string& peerId);
  void sendPushPull(ConnId id, bool reply);
  void forget(uint64_t now);
  bool alive(const std::string& id) const;
  // partial view
  void maintainView(uint64_t now);
  std::vector<std::string> bridgesOf(const std::string& region, const std::string& toward) const;
  bool isActive(const std::string& peerId) const;
  // broadcast
  void broadcast(uint64_t now, std::vector<Cached> items, const std::string& except);
  void flushLazy(uint64_t now);
  void graftMissing(uint64_t now);
  void expireSeen(uint64_t now);
  void mergeStates(const std::string& from, std::vector<crdt::ReviewDoc> states,
                   std::vector<int64_t> sizes);
  // anti-entropy
  void startSync(uint64_t now, const std::string& peerId);
  void maybeSync(uint64_t now);
  void sessionDone(uint64_t now, const std::string& peerId);
  void refusedState(uint64_t now, const std::string& from, const std::string& why, uint64_t count);
  void warn(uint64_t now, uint64_t& last, const std::string& message);
  void persist(uint64_t now);
  bool blocked(const std::string& peerId) const { return blocked_.count(peerId) != 0; }
  uint64_t sessionTimeoutMillis() const;
  uint64_t uniform(uint64_t lo, uint64_t hi);  // inclusive
  template <typename T>
  void shuffle(std::vector<T>& v);
  uint64_t newTicket(bool repair, std::vector<int64_t> bytes, uint64_t count);

  const CoreOptions options_;
  ReplicaStore& store_;
  std::mt19937_64 rng_;
  std::vector<crdt::ReviewDoc> received_;  // states the reconciler handed over
  Reconciler reconciler_;
  std::vector<Action> actions_;
  ClusterStats stats_;
  uint64_t now_ = 0;  // of the input being handled
  bool started_ = false;

  // membership
  uint64_t incarnation_;
  bool leaving_ = false, removed_ = false;
  uint64_t leaveStarted_ = 0;
  bool leaveSynced_ = false;
  bool leaveSession_ = false;      // the session under way began after leave()
  uint64_t leaveStatesSent_ = 0;   // the reconciler's statesSent when it began
  uint64_t sessionMoved_ = 0;      // states sent and repaired when the session began
  bool sessionRevived_ = false;    // begun for a peer that just joined the partial view
  std::map<std::string, Member, std::less<>> members_;  // by node id, never this node
  std::map<std::string, Queued, std::less<>> queue_;    // updates to disseminate, by member
  std::set<std::tuple<uint64_t, uint64_t, std::string>> order_;  // (transmits, order, id)
  uint64_t queueOrder_ = UINT64_MAX;  // counts down: newer sorts first
  uint64_t nextDeadline_ = 0;         // earliest suspicion deadline (UINT64_MAX: none)
  std::vector<std::string> probeOrder_;  // round robin, reshuffled each pass
  size_t probeNext_ = 0;
  std::map<uint64_t, Probe> probes_;  // by seq
  uint64_t nextSeq_ = 1;
  uint64_t lastProbe_ = 0, lastGossip_ = 0, lastPushPull_ = 0, lastForget_ = 0, lastLazy_ = 0;
  bool joined_ = false;  // a push-pull with a seed completed
  bool bulk_ = false;    // learning a push-pull's full list
  int health_ = 0;       // Lifeguard's local health multiplier (0 = healthy)
  std::map<std::string, double, std::less<>> rtt_;  // probe round trips by region, smoothed
  uint64_t probeWait(const std::string& target) const;  // for an ack, after the ping left
  std::set<std::string> blocked_;

  // connections
  std::map<ConnId, Conn> conns_;
  ConnId nextConn_ = 1;
  std::set<std::string> seeds_;  // options_.seeds but this node's own address
  uint64_t nextSeedDial_ = 0;
  uint64_t seedBackoff_ = kMinBackoffMillis;
  uint64_t lastView_ = 0;
  bool viewDirty_ = true;

  // broadcast
  // Plumtree, per origin: the peers its deltas are announced to, not pushed to.
  // Origins and peers by interned index (thousands of origins, a few
  // peers each: no string sets).
  std::unordered_map<uint32_t, std::vector<uint32_t>> lazy_;
  std::unordered_map<std::string, uint32_t> interned_;
  std::vector<std::string> names_;                   // by interned index
  std::unordered_map<uint32_t, uint64_t> delivered_;  // deltas received, by origin
  std::set<std::string> primaryPartners_;  // cross-region links eager for new origins of this region
  std::unordered_map<uint64_t, uint64_t> seen_;  // id -> when
  std::deque<std::pair<uint64_t, uint64_t>> seenOrder_;
  std::unordered_map<uint64_t, Cached> cache_;
  std::deque<uint64_t> cacheOrder_;
  size_t cacheBytes_ = 0;
  std::map<uint64_t, Missing> missing_;
  std::map<crdt::ReviewKey, uint64_t> pulled_;  // keys pulled lately, and when

  // merges
  std::map<uint64_t, Ticket> tickets_;
  uint64_t nextTicket_ = 1;
  int64_t mergesPending_ = 0;      // anti-entropy states merging
  int64_t deltaBytesMerging_ = 0;  // received deltas merging

  // anti-entropy
  std::string sessionPeer_;   // the session this node started
  bool sessionMore_ = false;  // a message in it was cut to the size cap
  std::string syncAgain_;     // continue with this peer at once
  std::map<std::string, uint64_t> busyUntil_;
  std::string respondingTo_;  // the peer whose session this node answers
  uint64_t respondingSince_ = 0;
  uint64_t sessionStarted_ = 0;
  bool syncDue_ = false;  // start a session at the next tick, interval or not
  uint64_t lastAntiEntropy_ = 0, lastCrossAntiEntropy_ = 0;
  std::set<std::string> syncSoon_;  // peers that joined the partial view

  // warnings and persistence
  uint64_t lastRefusedStateWarning_ = 0, lastVersionWarning_ = 0, lastRemovedWarning_ = 0;
  bool membersDirty_ = false;
  uint64_t lastPersist_ = 0;
};

}  // namespace chorus::gossip
