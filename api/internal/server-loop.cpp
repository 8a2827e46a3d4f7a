#include "api/internal/server-loop.h"

#include <netdb.h>
#include <sys/socket.h>

namespace chorus::api::internal {

std::string peerName(kj::AsyncIoStream& stream) {
  struct sockaddr_storage addr {};
  kj::uint length = sizeof addr;
  try {
    stream.getpeername(reinterpret_cast<struct sockaddr*>(&addr), &length);
  } catch (kj::Exception&) {
    return "unknown";
  }
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<struct sockaddr*>(&addr), length, host, sizeof host, port,
                  sizeof port, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "unknown";
  }
  return addr.ss_family == AF_INET6 ? "[" + std::string(host) + "]:" + port
                                    : std::string(host) + ":" + port;
}

std::string hostOf(const std::string& peer) {
  auto colon = peer.rfind(':');
  return colon == std::string::npos ? peer : peer.substr(0, colon);
}

}  // namespace chorus::api::internal
