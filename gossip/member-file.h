// The persisted member list: <dataDir>/members, so a restarted node finds
// its peers without its seed list. One line per peer:
//   <node id> <gossip address> <rpc address or ->
// after a "# chorus members v1" header. Written to a temporary file and
// renamed, so a crash leaves the old list or the new one.
#pragma once

#include <string>
#include <vector>

#include "crdt/result.h"

namespace chorus::gossip {

struct KnownMember {
  std::string nodeId;
  std::string gossipAddress;
  std::string rpcAddress;
};

// A missing file is an empty list. Lines that do not parse are skipped.
Result<std::vector<KnownMember>> loadMembers(const std::string& path);
Status saveMembers(const std::string& path, const std::vector<KnownMember>& members);

}  // namespace chorus::gossip
