// Merkle-tree anti-entropy between two replicas.
//
// The initiator sends its root; while hashes differ, the two sides take turns
// descending one level into the differing subtrees only, then exchange the
// (key hash, digest) entries of differing leaves, then the states each side
// lacks or holds differently. In sync costs one round trip; a difference
// costs four. Every session ends with a message marked `last` (`inSync` when
// there is nothing more to exchange, or the final `states`), so both sides
// know it completed. Bytes grow with the number of differing reviews, not with the
// store's size.
//
// Stateless: each message carries what is needed to answer it, so a session
// holds no memory between messages and a lost message just ends the session
// (the next anti-entropy round starts over).
//
// It reads the store through gossip::ReplicaStore (so the simulator's
// in-memory store works as well as storage::Store) and hands received
// states to a MergeSink: the replication core turns them into Merge actions;
// the storage::Store form merges them at once through the store.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "crdt/result.h"
#include "crdt/review.h"
#include "gossip/replica-store.h"
#include "storage/store.h"

namespace chorus::gossip {

// One encoded reconcile message.
struct Outgoing {
  std::string bytes;
  size_t payloadBytes = 0;  // of which: review states (the rest is overhead)
  bool last = false;        // ends the session: the peer will not answer it
  bool more = false;        // cut to the size cap: another session is needed
  bool busy = false;        // a `busy` refusal, not a sync
};

struct ReconcileCounters {
  uint64_t statesSent = 0;
  uint64_t statesReceived = 0;
  uint64_t malformed = 0;  // messages or states from the peer that failed to decode
  uint64_t refused = 0;    // well-formed states `admit` refused
};

class Reconciler {
 public:
  // Received (and admitted) states go to `merge`, in the order they came.
  // Messages carry at most about `maxMessageBytes` of entries or states;
  // what does not fit is left for another session (Outgoing::more).
  // A received state is merged only if `admit` (when set) accepts it;
  // otherwise it is dropped, counted in `refused`, and its error kept in
  // lastRefusal().
  static constexpr size_t kDefaultMaxMessageBytes = 16u << 20;
  using Admit = std::function<Status(const crdt::ReviewDoc&)>;
  using MergeSink = std::function<void(crdt::ReviewDoc)>;
  Reconciler(ReplicaStore& store, MergeSink merge, size_t maxMessageBytes = kDefaultMaxMessageBytes,
             Admit admit = {});
  // Over a storage::Store: received states are merged through
  // store.merge(state, onMerged); `onMerged` runs on the store thread (see
  // storage/store.h).
  Reconciler(storage::Store& store, storage::Done onMerged,
             size_t maxMessageBytes = kDefaultMaxMessageBytes, Admit admit = {});

  // The initiator's first message.
  Result<Outgoing> start();

  // Answers a message from the peer. nullopt: the session is over. An Error
  // means the message was malformed (counted; drop the connection's session)
  // or the local store failed.
  // `busy`: this node is already repairing; a new session (a `root`) is
  // answered with `busy` instead of being started.
  Result<std::optional<Outgoing>> handle(std::string_view message, bool busy = false);

  const ReconcileCounters& counters() const { return counters_; }
  // Whether the last message handled said the peer left something out.
  bool peerHasMore() const { return peerHasMore_; }
  // Whether the last message handled was the peer's `busy`.
  bool peerBusy() const { return peerBusy_; }
  // Why the last refused state was refused (empty if none was).
  const std::string& lastRefusal() const { return lastRefusal_; }

 private:
  std::unique_ptr<StoreReplica> owned_;  // the storage::Store form's adapter
  ReplicaStore& store_;
  MergeSink merge_;
  size_t maxMessageBytes_;
  Admit admit_;
  std::string lastRefusal_;
  bool peerHasMore_ = false;
  bool peerBusy_ = false;
  ReconcileCounters counters_;
};

}  // namespace chorus::gossip

namespace chorus::gossip {

// Byte and round-trip counts of one session.
struct SessionStats {
  int roundTrips = 0;
  uint64_t bytesToResponder = 0;  // every message byte, initiator -> responder
  uint64_t bytesToInitiator = 0;
  uint64_t payloadToResponder = 0;  // of which review states
  uint64_t payloadToInitiator = 0;
  uint64_t overheadBytes() const {
    return bytesToResponder + bytesToInitiator - payloadToResponder - payloadToInitiator;
  }
};

// Runs one whole session between two reconcilers in this process, passing
// messages directly (an in-memory link). For benchmarks and tests; the
// network path sends the same messages over gossip frames.
Result<SessionStats> reconcileDirect(Reconciler& initiator, Reconciler& responder);

}  // namespace chorus::gossip
