// Attack helpers for the RPC server tests (test/security/rpc-limits-test.cpp):
// a real chorusd with a tokens file, raw sockets from a chosen loopback
// source address, hand-built Cap'n Proto RPC messages (Bootstrap, Call,
// Finish) written without ever reading a reply, and the node's RssAnon.
// Every wait is bounded.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <capnp/message.h>
#include <capnp/rpc.capnp.h>
#include <capnp/serialize.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "../api/process.h"
#include "../api/temp-dir.h"
#include "api/auth.h"
#include "api/chorus.capnp.h"
#include "sockets.h"

namespace chorus::test::security {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

inline const char* binary(const char* env) {
  const char* p = std::getenv(env);
  return p != nullptr ? p : "";
}

// RssAnon of `pid` in KiB (/proc/PID/status); -1 if unreadable.
inline long rssAnonKiB(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("RssAnon:", 0) == 0) return std::stol(line.substr(8));
  }
  return -1;
}

using Principals = std::map<std::string, std::string>;  // id -> comma-separated roles

// A chorusd on 127.0.0.1 with a tokens file; tokens[principal] is its token.
struct RpcNode {
  TempDir tmp;
  std::map<std::string, std::string> tokens;
  std::map<std::string, std::string> roles;
  std::unique_ptr<Process> process;
  std::string address;

  // `principals`: id -> comma-separated roles. `extra`: more chorusd flags.
  explicit RpcNode(const Principals& principals, const std::vector<std::string>& extra = {}) {
    for (const auto& [id, r] : principals) {
      tokens[id] = api::newToken();
      roles[id] = r;
    }
    writeTokens(principals);
    std::vector<std::string> args = {"--node-id",     "rpc-target", "--data-dir",
                                     tmp.sub("data"), "--listen",   "127.0.0.1:0",
                                     "--tokens-file", tokensPath(), "--unsafe-no-sync",
                                     "--log-level",   "info"};
    args.insert(args.end(), extra.begin(), extra.end());
    // For a human watching a run: RPC_TEST_METRICS=127.0.0.1:PORT serves
    // the node's /metrics there (unset in the suite).
    if (const char* m = std::getenv("RPC_TEST_METRICS")) {
      args.push_back("--metrics-addr");
      args.push_back(m);
    }
    process = std::make_unique<Process>(binary("CHORUSD_BIN"), args);
    auto line = process->waitForLine("chorusd: listening on ", 20s);
    if (line) address = line->substr(line->rfind(' ') + 1);
  }
  ~RpcNode() {
    if (process) process->stop(SIGTERM, 10s);
  }

  std::string tokensPath() const { return tmp.sub("tokens"); }
  pid_t pid() const { return process->pid(); }

  // Rewrites the tokens file with only `keep` (ids already made).
  void writeTokens(const Principals& keep) {
    std::string text = "# security test tokens\n";
    for (const auto& [id, r] : keep) text += *api::tokenLine(id, r, tokens.at(id)) + "\n";
    std::string tmpPath = tokensPath() + ".new";
    FILE* f = std::fopen(tmpPath.c_str(), "w");
    if (f == nullptr) return;
    std::fputs(text.c_str(), f);
    std::fclose(f);
    ::chmod(tmpPath.c_str(), 0600);
    std::rename(tmpPath.c_str(), tokensPath().c_str());
  }
};

// A TCP connection to `address` ("127.0.0.1:port") from `source` (e.g.
// "127.0.0.2"), non-blocking. fd() < 0 if it could not connect.
class RawConnection {
 public:
  RawConnection(const std::string& address, const std::string& source)
      : fd_(connectFrom(address, source, true)) {}
  ~RawConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  int fd() const { return fd_; }
  bool ok() const { return fd_ >= 0 && !failed_; }

  // Writes all of `bytes` by `deadline`; false if the peer closed or reset
  // the connection, or the deadline passed.
  bool send(const std::string& bytes, Clock::time_point deadline) {
    size_t off = 0;
    while (ok() && off < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n > 0) {
        off += size_t(n);
        continue;
      }
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        failed_ = true;
        break;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd_, POLLOUT, 0};
      ::poll(&p, 1, static_cast<int>(std::min<long>(left.count(), 100)));
    }
    return ok() && off == bytes.size();
  }

  // Reads and discards until the peer closes (true) or `timeout` (false).
  bool waitClosed(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    char buf[65536];
    while (fd_ >= 0) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n == 0) return true;
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;
      if (n > 0) continue;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(std::min<long>(left.count(), 100)));
    }
    return true;
  }

 private:
  int fd_ = -1;
  bool failed_ = false;
};

// Hand-built RPC messages (capnp/rpc.capnp), as a client would send them.
namespace rpcmsg {

inline std::string frame(capnp::MessageBuilder& m) {
  auto words = capnp::messageToFlatArray(m);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

inline std::string bootstrap(uint32_t question) {
  capnp::MallocMessageBuilder m(64);
  m.initRoot<capnp::rpc::Message>().initBootstrap().setQuestionId(question);
  return frame(m);
}

inline std::string finish(uint32_t question) {
  capnp::MallocMessageBuilder m(64);
  auto f = m.initRoot<capnp::rpc::Message>().initFinish();
  f.setQuestionId(question);
  f.setReleaseResultCaps(true);
  return frame(m);
}

// Chorus.reviews() on the bootstrap capability (the answer to `bootstrapQ`).
inline std::string callReviews(uint32_t question, uint32_t bootstrapQ) {
  capnp::MallocMessageBuilder m(128);
  auto call = m.initRoot<capnp::rpc::Message>().initCall();
  call.setQuestionId(question);
  call.initTarget().initPromisedAnswer().setQuestionId(bootstrapQ);
  call.setInterfaceId(capnp::typeId<api::wire::Chorus>());
  call.setMethodId(0);  // reviews
  call.initParams().getContent().initAs<api::wire::Chorus::ReviewsParams>();
  return frame(m);
}

// ReviewStore.get(product, author) on the `reviews` field of the answer to
// `reviewsQ` (a reviews() call).
inline std::string callGet(uint32_t question, uint32_t reviewsQ) {
  capnp::MallocMessageBuilder m(256);
  auto call = m.initRoot<capnp::rpc::Message>().initCall();
  call.setQuestionId(question);
  auto promised = call.initTarget().initPromisedAnswer();
  promised.setQuestionId(reviewsQ);
  promised.initTransform(1)[0].setGetPointerField(0);
  call.setInterfaceId(capnp::typeId<api::wire::ReviewStore>());
  call.setMethodId(8);  // get
  auto params = call.initParams().getContent().initAs<api::wire::ReviewStore::GetParams>();
  params.setProduct("sku-flood");
  params.setAuthor("ann");
  return frame(m);
}

}  // namespace rpcmsg

}  // namespace chorus::test::security
