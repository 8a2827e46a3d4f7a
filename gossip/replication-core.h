// gossip::ReplicationCore: the replication protocol of one node as a
// single-threaded state machine with no I/O: membership, phi-accrual failure
// detection, delta push, anti-entropy scheduling and the reconciler exchange.
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
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <unordered_set>
#include <variant>
#include <vector>

#include "crdt/result.h"
#include "crdt/review.h"
#include "gossip/cluster.h"
#include "gossip/failure-detector.h"
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
  std::vector<std::string> seeds;          // addresses to join through
  uint64_t antiEntropyIntervalMillis = 1000;
  uint64_t heartbeatIntervalMillis = 200;
  double suspectPhi = 5;
  double deadPhi = 10;
  size_t pushFanout = 8;
  size_t maxFrameBytes = 32u << 20;  // reconcile messages are cut to half of it (at most 16 MiB)
  size_t maxQueuedBytesPerPeer = 64u << 20;
  size_t maxPendingDeltaBytes = 64u << 20;  // received deltas merging, not yet committed
  // Connections others opened that completed hello; a hello beyond is
  // refused (closed, counted in connectionsRefused).
  size_t maxInbound = 256;
  // As ClusterOptions::forgetUnansweredAfter: a second-hand address that
  // never answered a dial with a hello is dropped after this long.
  uint64_t forgetUnansweredAfterMillis = 60'000;
  // Bytes the transport adds to each frame body on the wire (the seal);
  // counted in bytesIn/bytesOut and queued bytes.
  size_t frameOverheadBytes = 72;
  std::function<Status(const crdt::ReviewDoc&)> admit;  // as ClusterOptions::admit
  uint64_t seed = 0;                                    // of the core's PRNG
};

// The core's view of ClusterOptions (Cluster's driver uses it).
CoreOptions coreOptionsFrom(const ClusterOptions& options, const std::string& boundAddress,
                            uint64_t seed);

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
  bool repair = false;  // anti-entropy (else pushed deltas)
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
  static constexpr size_t kMaxDeltaFrameBytes = 1u << 20;  // a deltas frame carries ~this at most
  static constexpr size_t kMaxMembers = 1024;
  static constexpr size_t kMaxTokenBytes = 256;
  static constexpr uint64_t kStrangerTimeoutMillis = 5'000;  // a connection to us must say hello
  static constexpr uint64_t kHelloTimeoutMillis = 10'000;    // a connection we dialled must answer
  static constexpr uint64_t kWarnEveryMillis = 10'000;

  ReplicationCore(CoreOptions options, ReplicaStore& store);
  ~ReplicationCore();
  ReplicationCore(const ReplicationCore&) = delete;
  ReplicationCore& operator=(const ReplicationCore&) = delete;

  // ---- inputs -------------------------------------------------------------
  // The persisted member list, then the seeds: who to dial.
  void start(uint64_t now, const std::vector<KnownMember>& known);
  // Periodic work: dials, heartbeats, failure detection, persisting members,
  // anti-entropy.
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
  // Committed local writes' deltas (crdt::ReviewDoc::encode), to push now.
  void publish(uint64_t now, std::vector<std::string> encodedDeltas);
  // One state of the Merge action `ticket` completed (committed or refused).
  void merged(uint64_t ticket);
  // Partition injection: drop every frame to and from these peers / stop.
  void partition(const std::vector<std::string>& nodeIds);
  void heal();
  // Shutting down: persists the member list if it changed.
  void stop(uint64_t now);

  // ---- outputs ------------------------------------------------------------
  std::vector<Action> takeActions();

  // ---- views --------------------------------------------------------------
  const std::string& nodeId() const { return options_.nodeId; }
  // Peers, by id. lastSyncUnixMillis is in the core's clock (the `now` of
  // the session's end); Cluster converts it to wall-clock time.
  std::vector<MemberInfo> members() const;
  size_t peerCount() const { return peers_.size(); }
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

 private:
  struct Peer {
    std::string gossipAddress;
    std::string rpcAddress;
    PeerState state = PeerState::kDead;
    bool synced = false;
    uint64_t lastSync = 0;  // core clock
    uint64_t pendingDeltas = 0;
    double phi = INFINITY;
    PhiAccrualDetector detector;
    explicit Peer(double minMean) : detector(minMean) {}
  };
  struct Conn {
    std::string dialAddress;  // set for connections this node dialled
    std::string remote;       // for logs
    std::string peerId;       // from the first frame
    bool outbound = false;
    bool ready = false;
    bool helloReceived = false;
    uint64_t queuedBytes = 0;
    uint64_t queuedDeltas = 0;
    uint64_t openedAt = 0;
  };
  struct Dialer {
    ConnId conn = 0;
    uint64_t nextAttempt = 0;
    uint64_t backoff = kMinBackoffMillis;
    bool self = false;
    // Dialled for good: a seed, an address a node gave for itself, or one
    // that answered with a hello. Any other (learned second-hand, or from
    // the member file) is dropped if unanswered after
    // forgetUnansweredAfterMillis.
    bool keep = false;
    uint64_t createdAt = 0;
  };
  struct Ticket {
    bool repair = false;
    uint64_t remaining = 0;
    std::vector<int64_t> bytes;  // deltas: each state's size, released as they complete
  };

  void handle(uint64_t now, ConnId id, Conn& c, kj::Array<capnp::word> body);
  void handleDeltas(uint64_t now, const std::string& from, capnp::List<capnp::Data>::Reader list);
  void handleReconcile(uint64_t now, ConnId id, const std::string& from, capnp::Data::Reader data,
                       size_t bytes);
  void close(uint64_t now, ConnId id, bool emit);
  bool send(ConnId id, std::shared_ptr<const std::string> body, uint64_t deltas = 0);
  void malformed(uint64_t now, ConnId id);
  void sendHello(ConnId id);
  std::shared_ptr<const std::string> memberFrame(bool ack);
  void learnMembers(const std::string& from, capnp::List<wire::Member>::Reader list);
  void learn(const std::string& id, const std::string& gossip, const std::string& rpc,
             bool authoritative);
  // A dialler for `address` unless there is one; `keep` marks it for good.
  void addDialer(const std::string& address, bool keep);
  // Drops diallers that are no seed and no member's address, and
  // second-hand ones never answered within forgetUnansweredAfterMillis.
  void pruneDialers(uint64_t now);
  void updateStates(uint64_t now);
  void flushDeltas(std::vector<std::string> encoded);
  void startSync(uint64_t now, const std::string& peerId);
  void maybeSync(uint64_t now);
  void sessionDone(uint64_t now, const std::string& peerId);
  void persist(uint64_t now);
  void refusedState(uint64_t now, const std::string& from, const std::string& why, uint64_t count);
  ConnId outboundTo(const std::string& peerId) const;
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

  std::map<std::string, Peer, std::less<>> peers_;  // by node id, never this node
  std::unordered_set<std::string_view> peerIds_;    // peers_'s keys, for a quick lookup
  std::set<std::string> blocked_;
  std::map<ConnId, Conn> conns_;
  ConnId nextConn_ = 1;
  std::map<std::string, Dialer, std::less<>> dialers_;  // by address
  std::set<std::string> seeds_;  // options_.seeds but this node's own address
  bool pruned_ = false;
  uint64_t lastPrune_ = 0;

  std::map<uint64_t, Ticket> tickets_;
  uint64_t nextTicket_ = 1;
  int64_t mergesPending_ = 0;      // anti-entropy states merging
  int64_t deltaBytesMerging_ = 0;  // received deltas merging

  std::string sessionPeer_;   // the session this node started
  bool sessionMore_ = false;  // a message in it was cut to the size cap
  std::string syncAgain_;     // continue with this peer at once
  std::map<std::string, uint64_t> busyUntil_;
  std::string respondingTo_;  // the peer whose session this node answers
  uint64_t respondingSince_ = 0;
  uint64_t sessionStarted_ = 0;
  bool heartbeatSent_ = false;
  bool syncDue_ = false;  // start a session at the next tick, interval or not
  uint64_t lastHeartbeat_ = 0;
  uint64_t lastAntiEntropy_ = 0;
  std::set<std::string> syncSoon_;  // peers that came back alive
  uint64_t lastRefusedStateWarning_ = 0;
  bool warnedRefusedState_ = false;
  bool membersDirty_ = false;
  uint64_t lastPersist_ = 0;
  // memberFrame()'s bodies, kept until a member is added or changes address
  // (learn() drops them): the same bytes it would encode again.
  std::shared_ptr<const std::string> heartbeatFrame_;
  std::shared_ptr<const std::string> ackFrame_;
};

}  // namespace chorus::gossip
