// Plain C++ types of the client API, shared by Node (in-process), the RPC
// server and the C++ client. No Cap'n Proto here.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "crdt/review.h"
#include "gossip/cluster.h"
#include "storage/store.h"

namespace chorus {

namespace api {
// Version of the client API (api/chorus.capnp's `apiVersion`).
inline constexpr uint32_t kApiVersion = 6;

// Admin.keys: what to do with the cluster's gossip keys (gossip/keyring.h).
enum class KeyOp { kList, kInstall, kUse, kRemove };
const char* keyOpName(KeyOp op);  // "list", "install", "use", "remove"
}  // namespace api

// A review as readers see it (flattened from crdt::ReviewDoc).
struct ReviewView {
  std::string product;
  std::string author;
  uint8_t rating = 0;
  std::string title;
  std::string body;
  uint64_t editedAtMillis = 0;
  std::vector<std::string> tags;  // sorted
  uint32_t helpful = 0;
  crdt::Visibility visibility = crdt::Visibility::kVisible;
  std::string moderationReason;
  std::string reply;
  bool deleted = false;

  static ReviewView of(const crdt::ReviewDoc& doc);
};

struct ReviewPage {
  std::vector<ReviewView> reviews;
  std::string nextCursor;  // empty when there is no more
};

// A product's summary and a page of its reviews, read from one snapshot.
struct ProductPageView {
  storage::ProductSummary summary;
  ReviewPage page;
};

// The operations that change a review.
enum class WriteOp { kPut, kDelete, kVote, kUnvote, kTag, kUntag, kModerate, kReply };
const char* writeOpName(WriteOp op);  // "put", "delete", ...

struct WriteRequest {
  WriteOp op = WriteOp::kPut;
  std::string product;
  std::string author;
  // kPut only:
  uint32_t rating = 0;
  std::string title;
  std::string body;
  // kVote/kUnvote: the voter id; kTag/kUntag: the tag; kModerate: the
  // reason; kReply: the reply text (empty removes the reply).
  std::string arg;
  crdt::Visibility visibility = crdt::Visibility::kVisible;  // kModerate only
};

// A committed change of one review, as delivered to watchers.
struct Change {
  std::string op;  // writeOpName(), or "merge" for a state from a peer
  ReviewView review;
  uint32_t missed = 0;  // changes dropped before this one (slow observer)
};

struct NodeStatus {
  std::string nodeId;
  crdt::ReplicaId replicaId = 0;
  std::string version;
  uint32_t apiVersion = 0;
  uint64_t uptimeMillis = 0;
  uint64_t keyCount = 0;
  storage::Hash merkleRoot{};
  storage::StoreStats stats;
  std::string gossipAddress;  // empty when the node runs without a cluster
  std::string region;         // gossip::ClusterOptions::region; empty without a cluster
};

// Whether a node serves, and its view of its cluster (Admin.health, `chorus
// node health`): what the node knows on its own, without asking a peer.
struct NodeHealth {
  std::string nodeId;
  crdt::ReplicaId replicaId = 0;
  std::string version;
  uint32_t apiVersion = 0;
  uint64_t uptimeMillis = 0;
  bool serving = false;  // takes reads and writes
  std::string reason;    // why not, when !serving
  uint64_t keyCount = 0;
  std::optional<storage::Hash> merkleRoot;  // nullopt if the store could not say
  bool clustered = false;
  std::string region;
  // Peers it knows that have not left, by state in its view.
  uint32_t peersAlive = 0;
  uint32_t peersSuspect = 0;
  uint32_t peersDead = 0;
  // Since the most recent completed anti-entropy session with any peer;
  // nullopt = none yet.
  std::optional<uint64_t> lastSyncMillisAgo;
};

// One node's view of its cluster (Admin.cluster, `chorus cluster status`).
struct ClusterView {
  std::string nodeId;
  std::string gossipAddress;
  std::string rpcAddress;
  uint64_t keyCount = 0;
  storage::Hash merkleRoot{};
  uint64_t refusedStamps = 0;               // remote stamps refused for clock drift
  std::vector<std::string> partitioned;     // ids this node drops traffic of
  std::vector<gossip::MemberInfo> members;  // its peers, without itself; by id
  gossip::ClusterStats stats;
  uint64_t nowUnixMillis = 0;  // the node's wall clock when it answered
  std::string region;          // this node's region
  // This node's own membership: kAlive, or kLeft once it left (Node::leave)
  // or another node removed it (then `removed` is set too).
  gossip::PeerState state = gossip::PeerState::kAlive;
  bool removed = false;
};

const char* visibilityName(crdt::Visibility v);  // "visible", "hidden", "flagged"

}  // namespace chorus
