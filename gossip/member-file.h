// The persisted member list: <dataDir>/members, so a restarted node finds
// its peers without its seed list, and starts above its own last
// incarnation. One line per member (this node included):
//   <node id> <gossip address> <rpc address or -> <region> <incarnation> <state>
// after a "# chorus members v2" header; state is alive, suspect, dead or
// left. Lines of v1 (the first three fields) still load, as alive members
// of an unknown region at incarnation 0. Written to a temporary file and
// renamed, so a crash leaves the old list or the new one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "crdt/result.h"

namespace chorus::gossip {

struct KnownMember {
  std::string nodeId;
  std::string gossipAddress;
  std::string rpcAddress;
  std::string region;  // empty: unknown (a v1 line)
  uint64_t incarnation = 0;
  std::string state = "alive";  // alive, suspect, dead, left
};

// A missing file is an empty list. Lines that do not parse are skipped.
Result<std::vector<KnownMember>> loadMembers(const std::string& path);
Status saveMembers(const std::string& path, const std::vector<KnownMember>& members);

}  // namespace chorus::gossip
