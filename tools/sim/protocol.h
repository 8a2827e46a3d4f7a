// What the simulator drives on each node: the inputs and outputs of
// gossip::ReplicationCore (see gossip/replication-core.h for the contract).
// Two implementations:
//   - makeCoreProtocol: the real replication core, what chorusd runs;
//   - makeFloodProtocol: a deliberately trivial protocol, to measure the
//     simulator's own cost: each node keeps connections to a fixed handful
//     of peers (O(1) of them), sends each a 16-byte heartbeat every 200 ms,
//     and floods every new delta to them once. No membership, no failure
//     detection, no anti-entropy, no leave message (a leave is a stop):
//     partitions lose writes under it. Its cost
//     per node is O(1) in N, so a run of it shows what the event loop, the
//     network model, the stores and the checker cost on their own.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gossip/replication-core.h"

namespace chorus::sim {

class Protocol {
 public:
  virtual ~Protocol() = default;
  virtual void start(uint64_t now, const std::vector<gossip::KnownMember>& known) = 0;
  virtual void tick(uint64_t now) = 0;
  virtual gossip::ConnId accepted(uint64_t now, std::string remote) = 0;
  virtual void opened(uint64_t now, gossip::ConnId conn) = 0;
  virtual void closed(uint64_t now, gossip::ConnId conn) = 0;
  virtual void received(uint64_t now, gossip::ConnId conn, std::string_view body) = 0;
  virtual void drained(gossip::ConnId conn, uint64_t bytes, uint64_t deltas) = 0;
  virtual void publish(uint64_t now, std::vector<std::string> encodedDeltas) = 0;
  virtual void merged(uint64_t ticket) = 0;
  // Leaving for good (ReplicationCore::leave); leaveDone() once the driver
  // may stop it; stop() before the process goes.
  virtual void leave(uint64_t now) = 0;
  virtual bool leaveDone() const = 0;
  virtual void stop(uint64_t now) = 0;
  virtual std::vector<gossip::Action> takeActions() = 0;
  // The node's view of its peers (empty for a protocol without membership).
  virtual std::vector<gossip::MemberInfo> members() const = 0;
  // The protocol's counters (zero where it keeps none).
  virtual gossip::ClusterStats stats() const = 0;
};

std::unique_ptr<Protocol> makeCoreProtocol(gossip::CoreOptions options,
                                           gossip::ReplicaStore& store);
// Node `self` of `nodes`, whose addresses are `addresses`.
std::unique_ptr<Protocol> makeFloodProtocol(int self, std::vector<std::string> addresses);

}  // namespace chorus::sim
