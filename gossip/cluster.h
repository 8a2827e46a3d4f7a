// chorus::gossip::Cluster: replication between Chorus nodes over libuv TCP:
// the transport (connections, sealing, inbound caps, the loop thread) under
// the replication core (gossip/replication-core.h), which holds the
// protocol described here and in gossip/README.md.
//
//   - Transport: TCP connections to a bounded set of peers (the partial
//     view: a few in the node's region, plus bridges to other regions), and
//     short-lived ones for probes and repairs; frames are Cap'n Proto
//     messages (gossip/frame.h) with a protocol version and a size cap,
//     each sealed with a cluster key (gossip/secure-channel.h,
//     gossip/keyring.h). A malformed, oversized, unauthentic or replayed
//     frame is counted and closes its connection; only holders of a
//     cluster key can join.
//   - Membership (SWIM with Lifeguard's refinements): one probe per period
//     to a member, indirect probes before suspicion, suspicion refuted by
//     the member's higher incarnation, updates piggybacked on protocol
//     frames, a slow full-state push-pull. Persisted in <dataDir>/members.
//   - Fast path: each local write's delta spreads by epidemic broadcast
//     (Plumtree) over the partial views, crossing each region boundary
//     about once.
//   - Repair path: Merkle-tree anti-entropy (gossip/reconciler.h) with
//     in-region peers every `antiEntropyInterval`, across regions through
//     the bridges every `crossRegionAntiEntropyInterval`.
//   - Lifecycle: leave() announces this node's departure; remove() declares
//     another node gone for good; dead members are forgotten after
//     `forgetDeadAfter`.
//   - Partition injection: partition(ids) drops every frame to and from the
//     named peers inside this node's transport, until heal().
//
// Threads: the Cluster owns one libuv loop thread, on which the core runs.
// Every public method may be called from any thread. `onMerged` runs on the store thread (see
// storage/store.h) after a state received from a peer committed.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "crdt/result.h"
#include "crdt/review.h"
#include "gossip/keyring.h"
#include "storage/store.h"

namespace chorus::gossip {

struct ClusterOptions {
  std::string nodeId;              // unique in the cluster; required
  std::string listen;              // gossip "host:port" (port 0 = any free port)
  std::string advertise;           // address peers dial; empty = the bound address
  std::vector<std::string> seeds;  // gossip addresses of nodes to join through
  std::string rpcAddress;          // this node's client API address, shared with peers
  std::string dataDir;  // where the member list and keyring are persisted; empty = nowhere
  // base64 cluster keys; keys[0] is the primary; used when <dataDir>/keyring
  // does not exist yet (once it does, it wins: it reflects rotations).
  std::vector<std::string> keys;
  // This node's region ("us-east", "eu"; letters, digits, '-', '_', '.'):
  // dissemination and repair prefer peers of the same region.
  std::string region = "default";
  // A node that left or was removed only joins again when started with this
  // set (else it learns it was removed and stays out, with a warning).
  bool rejoin = false;
  std::chrono::milliseconds antiEntropyInterval{1000};               // with in-region peers
  std::chrono::milliseconds crossRegionAntiEntropyInterval{10'000};  // bridges, across regions
  std::chrono::milliseconds probeInterval{1000};  // SWIM: one member probed per interval
  std::chrono::milliseconds gossipInterval{200};  // membership updates sent this often
  // A dead member is forgotten this long after it was declared dead (one
  // that left or was removed: after as long, as a tombstone).
  std::chrono::milliseconds forgetDeadAfter{std::chrono::hours(24)};
  size_t maxFrameBytes = 32u << 20;  // larger frames are refused
  // States from peers (pushed deltas and anti-entropy alike) are merged only
  // if this accepts them; a refused one is dropped, counted in
  // statesRefused and logged (at most every 10 s). Empty = every state that
  // decodes. chorus::Node sets it to its API's rules (api::checkState), so a
  // peer cannot store what no client of this node could have written; nodes
  // of one cluster should share those limits, or the states one refuses
  // stay different. Called on the loop thread.
  std::function<Status(const crdt::ReviewDoc&)> admit;
  size_t maxQueuedBytesPerPeer = 64u << 20;  // beyond: deltas dropped (repair catches up)
  // false: local writes are not broadcast at all (publish() drops them), so
  // they reach peers only by anti-entropy and pulls. For tests of those
  // paths (chorusd --no-delta-push).
  bool pushDeltas = true;
  // Received deltas handed to the store and not yet committed, and local
  // deltas published and not yet sent; beyond either, further ones are
  // dropped and counted (anti-entropy repairs; local writes are already durable).
  size_t maxPendingDeltaBytes = 64u << 20;
  // Observers for metrics (chorus::Node feeds /metrics with them); each
  // must be quick and must not block. Unset: not called.
  // An anti-entropy session this node started completed, `took` from its
  // first frame sent to the peer's last reply handled (sessions abandoned
  // on a timeout or a busy peer are not reported); `crossRegion`: the peer
  // is of another region. Called on the loop thread.
  std::function<void(std::chrono::nanoseconds took, bool crossRegion)> onAntiEntropySession;
  // A delta pushed by a peer (not anti-entropy) changed this node's store:
  // `lag` from the write's HLC stamp (the origin's clock when it made the
  // write, just before its commit) to this node's wall clock once the merge
  // committed; so it includes the skew between the two clocks, and a
  // receiver whose clock is behind sees less (never below 0). Deltas that
  // carry no stamp (votes, tags) are not reported. Called on the store thread.
  std::function<void(std::chrono::nanoseconds lag)> onDeltaApplied;
};

// A member's state as this node sees it: alive; suspect (a probe failed,
// it has until the suspicion timeout to refute); dead; left (it left, or an
// administrator removed it: for good).
enum class PeerState { kAlive, kSuspect, kDead, kLeft };
// "alive", "suspect", "dead", "left". Inline: clients name states without
// linking the cluster (the `chorus` CLI links no libuv).
inline const char* peerStateName(PeerState state) {
  switch (state) {
    case PeerState::kAlive:
      return "alive";
    case PeerState::kSuspect:
      return "suspect";
    case PeerState::kDead:
      return "dead";
    case PeerState::kLeft:
      return "left";
  }
  return "?";
}

// A peer as this node sees it.
struct MemberInfo {
  std::string nodeId;
  std::string gossipAddress;
  std::string rpcAddress;
  std::string region;
  uint64_t incarnation = 0;
  PeerState state = PeerState::kDead;
  bool active = false;       // in this node's partial view (connected for broadcast)
  bool partitioned = false;  // traffic dropped by partition()
  // Wall-clock time (system clock, not the HLC) of the last completed
  // anti-entropy session. Completed is not equal: states the store refused
  // (e.g. for clock drift) leave the trees different. 0 = never.
  uint64_t lastSyncUnixMillis = 0;
  uint64_t pendingDeltas = 0;  // queued, not yet written to the socket
};

struct ClusterStats {
  uint64_t framesIn = 0, framesOut = 0;
  uint64_t bytesIn = 0, bytesOut = 0;
  // Refused frames, each closing its connection: not gossip (no preamble:
  // plaintext from an older node, or garbage), bad lengths, invalid messages.
  uint64_t malformedFrames = 0;
  // Refused by authentication, each closing its connection: an unknown key
  // id, or a tag that does not verify (wrong key, tampered).
  uint64_t authFailures = 0;
  // Authentic frames refused as replays: sealed for another connection, or
  // out of sequence on this one. Each closed its connection.
  uint64_t replaysRefused = 0;
  // Well-formed states from peers that ClusterOptions::admit refused.
  uint64_t statesRefused = 0;
  uint64_t partitionDropped = 0;  // frames dropped by partition()
  // Inbound connections closed by a cap: beyond maxConnections that completed hello;
  // strangers (no hello yet) evicted by a newer one past 64, or 8 from one
  // address; or strangers at the 5 s hello deadline.
  uint64_t connectionsRefused = 0;
  uint64_t deltasSent = 0, deltasReceived = 0;
  uint64_t deltasDropped = 0;  // not sent (per peer): unreachable, queue full, or outbox full
  uint64_t receivedDeltasDropped =
      0;  // received but not merged: store behind by maxPendingDeltaBytes
  uint64_t syncStarted = 0, syncCompleted = 0;
  uint64_t antiEntropyBytes = 0;  // reconcile frames, both directions
  uint64_t statesRepaired = 0;    // states received through anti-entropy
  uint64_t dialers = 0;           // addresses dialled now: seeds + members at most
  // Membership and broadcast (the replication core's protocol).
  uint64_t connections = 0;        // with peers (hello done), now
  uint64_t activePeers = 0;        // in the partial view, now
  uint64_t probes = 0;             // direct probes sent
  uint64_t probesFailed = 0;       // no ack, direct or indirect: the member became suspect
  uint64_t refutations = 0;        // this node refuted a suspicion of itself
  uint64_t broadcastDuplicates = 0;  // deltas received again (each prunes a tree link)
  uint64_t grafts = 0;               // deltas fetched after an announcement alone
  uint64_t pushPulls = 0;            // full member-list exchanges started
  uint64_t versionRefused = 0;       // frames of another gossip protocol version
  // Pulls (read-your-writes sessions): frames asking peers for a review's
  // state, pulls this node answered, and states received in answers.
  uint64_t pullsSent = 0;
  uint64_t pullsServed = 0;
  uint64_t statesPulled = 0;
};

class Cluster {
 public:
  using Merged = std::function<void(Result<storage::Applied>)>;

  // Loads the keyring (<dataDir>/keyring, else options.keys, saved there),
  // binds `listen`, loads the persisted member list, and starts the loop
  // thread. Errors: kInvalidArgument (bad option, address or key, no key at
  // all), kCorruption (an unreadable keyring file), kIo (bind, keyring write).
  static Result<std::unique_ptr<Cluster>> start(ClusterOptions options, storage::Store& store,
                                                Merged onMerged);
  // Stops the loop thread and closes every connection.
  ~Cluster();

  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  const std::string& nodeId() const;
  std::string address() const;  // the bound gossip address, "127.0.0.1:7401"

  // Pushes a committed local write's delta to peers (nothing when
  // ClusterOptions::pushDeltas is false).
  void publish(const crdt::ReviewDoc& delta);
  // Asks live peers for their state of `key` (ReplicationCore::pull),
  // `preferNode` (a node id; may be empty or unknown) first; what they hold
  // merges into the store and reaches onMerged. Never waits for the loop.
  void pull(const crdt::ReviewKey& key, const std::string& preferNode);

  // Drops all traffic to and from the named peers (added to any already
  // partitioned). Unknown ids are kept and apply once such a peer appears.
  void partition(const std::vector<std::string>& nodeIds);
  void heal();  // stop dropping
  std::vector<std::string> partitioned() const;

  std::vector<MemberInfo> members() const;  // peers, without this node; by id
  const std::string& region() const;

  // Leaves the cluster for good: tells peers (each marks this node left and
  // stops dialling it) and waits up to `timeout` until at least one peer
  // holds everything this node acknowledged (an anti-entropy session ends
  // in sync) and the announcement was written to the peers. Afterwards the
  // node gossips no more; stop it. kUnavailable if no peer could be reached
  // in time (the announcement may still spread).
  Status leave(std::chrono::milliseconds timeout);
  // Declares `nodeId` gone for good (an administrator's decision: the
  // node is dead and will not return as it is): every node marks it left
  // and stops dialling it; if it comes back it is refused until restarted
  // with ClusterOptions::rejoin. kNotFound if unknown, kInvalidArgument for
  // this node itself (use leave()).
  Status remove(const std::string& nodeId);
  // Whether another node removed this one (it then stops gossiping).
  bool removed() const;
  ClusterStats stats() const;

  // ---- the keyring: any thread; each change is persisted before it returns.
  // Rotation without downtime: installKey(new) on every node, then
  // useKey(new) on each node in turn (receivers accept any installed key),
  // then removeKey(old) on every node.
  //
  // Adds a key (base64). Idempotent. kInvalidArgument for a malformed key or
  // a full ring (16); kIo if it cannot be persisted (nothing changed).
  Status installKey(const std::string& key);
  // Makes an installed key (given as base64 or fingerprint) the primary:
  // frames are sent with it from now on. kNotFound if not installed.
  Status useKey(const std::string& keyOrFingerprint);
  // Removes an installed key. kInvalidArgument if it is the primary;
  // kNotFound if not installed. Connections whose frames use it fail
  // authentication and reconnect.
  Status removeKey(const std::string& keyOrFingerprint);
  std::vector<KeyInfo> keys() const;  // primary first

  class Impl;

 private:
  explicit Cluster(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::gossip
