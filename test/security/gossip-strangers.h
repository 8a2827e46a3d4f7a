// Attack helpers for gossip: strangers (no cluster key) that hold
// connections to a node's gossip port without ever saying hello.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "sockets.h"

namespace chorus::test::security {

// `perSource[i]` silent TCP connections from source address `sources[i]`
// (e.g. "127.0.0.2", bound before connect) to `target` ("127.0.0.1:port"),
// each reopened as soon as it closes, from a thread of its own, until
// stop() or `limit` has passed. It reads (and drops) what the node sends
// and never writes a byte.
class SilentFlood {
 public:
  SilentFlood(std::string target, std::vector<std::string> sources, std::vector<size_t> perSource,
              std::chrono::milliseconds limit)
      : target_(std::move(target)) {
    for (size_t i = 0; i < sources.size(); ++i) {
      for (size_t n = 0; n < perSource[i]; ++n) slots_.push_back({sources[i], -1});
    }
    thread_ = std::thread([this, limit] { run(limit); });
  }
  ~SilentFlood() { stop(); }
  SilentFlood(const SilentFlood&) = delete;
  SilentFlood& operator=(const SilentFlood&) = delete;

  void stop() {
    stopping_ = true;
    if (thread_.joinable()) thread_.join();
  }
  size_t slots() const { return slots_.size(); }
  uint64_t opened() const { return opened_.load(); }  // connects started
  uint64_t closed() const { return closed_.load(); }  // closed by the node (EOF or reset)
  uint64_t failed() const { return failed_.load(); }  // socket, bind or connect refused at once
  // Connections open now (connected or connecting).
  size_t open() const { return open_.load(); }

 private:
  struct Slot {
    std::string source;
    int fd;
  };

  void run(std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    std::vector<pollfd> fds(slots_.size());
    char sink[4096];
    while (!stopping_ && std::chrono::steady_clock::now() < deadline) {
      size_t open = 0;
      for (size_t i = 0; i < slots_.size(); ++i) {
        if (slots_[i].fd < 0) {
          slots_[i].fd = connectFrom(target_, slots_[i].source, false);
          ++(slots_[i].fd >= 0 ? opened_ : failed_);
        }
        open += slots_[i].fd >= 0;
        fds[i] = {slots_[i].fd, POLLIN, 0};
      }
      open_ = open;
      if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
      for (size_t i = 0; i < slots_.size(); ++i) {
        if (fds[i].fd < 0 || fds[i].revents == 0) continue;
        ssize_t n = ::read(fds[i].fd, sink, sizeof sink);
        if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))) continue;
        ::close(slots_[i].fd);  // the node closed it: reopen at once
        slots_[i].fd = -1;
        ++closed_;
      }
    }
    for (auto& s : slots_) {
      if (s.fd >= 0) ::close(s.fd);
      s.fd = -1;
    }
    open_ = 0;
  }

  std::string target_;
  std::vector<Slot> slots_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> opened_{0}, closed_{0}, failed_{0};
  std::atomic<size_t> open_{0};
  std::thread thread_;
};

}  // namespace chorus::test::security
