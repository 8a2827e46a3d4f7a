// Raw IPv4 sockets for the attack tests: connections from a chosen loopback
// source address (so a flood can come from 127.0.0.2 while valid clients
// use 127.0.0.1) and ports bound on 127.0.0.1.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace chorus::test::security {

// "a.b.c.d:port" as a sockaddr_in; false if it is not one.
inline bool ipv4Address(const std::string& hostPort, sockaddr_in& out) {
  auto colon = hostPort.rfind(':');
  if (colon == std::string::npos) return false;
  out = sockaddr_in{};
  out.sin_family = AF_INET;
  out.sin_port = htons(static_cast<uint16_t>(std::stoi(hostPort.substr(colon + 1))));
  return inet_pton(AF_INET, hostPort.substr(0, colon).c_str(), &out.sin_addr) == 1;
}

// A non-blocking TCP socket bound to `source` (an IPv4 address, any port)
// and connected to `target` ("host:port"); -1 if that failed. With
// `waitForConnect` the connect completes before the socket turns
// non-blocking; without, it may still be in progress.
inline int connectFrom(const std::string& target, const std::string& source, bool waitForConnect) {
  sockaddr_in to{}, from{};
  if (!ipv4Address(target, to) || !ipv4Address(source + ":0", from)) return -1;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (waitForConnect ? 0 : SOCK_NONBLOCK), 0);
  if (fd < 0) return -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) != 0 ||
      (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0 &&
       (waitForConnect || errno != EINPROGRESS))) {
    ::close(fd);
    return -1;
  }
  if (waitForConnect) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

// Binds `fd` to a free port on 127.0.0.1; returns "127.0.0.1:port", or ""
// if that failed.
inline std::string bindLoopback(int fd) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    return "";
  }
  return "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
}

}  // namespace chorus::test::security
