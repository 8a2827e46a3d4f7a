#include "gossip/member-file.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

namespace chorus::gossip {

namespace {

constexpr const char* kHeader = "# chorus members v2";

bool isToken(const std::string& s) {
  if (s.empty() || s.size() > 256) return false;
  for (unsigned char c : s) {
    if (c <= ' ' || c == 0x7f) return false;
  }
  return true;
}

}  // namespace

Result<std::vector<KnownMember>> loadMembers(const std::string& path) {
  std::ifstream in(path);
  std::vector<KnownMember> out;
  if (!in) {
    if (errno == ENOENT) return out;
    return makeError(ErrorCode::kIo, "cannot read member list " + path + ": " + std::strerror(errno));
  }
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    KnownMember m;
    if (!(fields >> m.nodeId >> m.gossipAddress >> m.rpcAddress)) continue;
    if (!isToken(m.nodeId) || !isToken(m.gossipAddress)) continue;
    if (m.rpcAddress == "-") m.rpcAddress.clear();
    std::string region, state;
    uint64_t incarnation = 0;
    if (fields >> region >> incarnation >> state) {  // v2
      if (!isToken(region) ||
          (state != "alive" && state != "suspect" && state != "dead" && state != "left")) {
        continue;
      }
      m.region = region;
      m.incarnation = incarnation;
      m.state = state;
    }
    out.push_back(std::move(m));
  }
  return out;
}

Status saveMembers(const std::string& path, const std::vector<KnownMember>& members) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << kHeader << "\n";
    for (const auto& m : members) {
      if (!isToken(m.nodeId) || !isToken(m.gossipAddress)) continue;
      out << m.nodeId << ' ' << m.gossipAddress << ' '
          << (isToken(m.rpcAddress) ? m.rpcAddress : "-") << ' '
          << (isToken(m.region) ? m.region : "default") << ' ' << m.incarnation << ' '
          << m.state << "\n";
    }
    out.flush();
    if (!out) {
      return makeError(ErrorCode::kIo, "cannot write member list " + tmp + ": " + std::strerror(errno));
    }
  }
  (void)::chmod(tmp.c_str(), 0600);  // like every file in the data dir; best effort
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return makeError(ErrorCode::kIo, "cannot replace member list " + path + ": " + std::strerror(errno));
  }
  return okStatus();
}

}  // namespace chorus::gossip
