// Fuzz target: the first bytes a stranger sends to a node's RPC port, before
// any token (the Cap'n Proto stream that api/rpc-server.cpp reads first).
//
// One real chorus::Node per process, with a tokens file, an RPC listener on
// 127.0.0.1 and a review whose title and body are secrets. Each input is one
// stranger's connection: the first byte picks how the rest is cut into
// writes (1, 7, 64 or 4096 bytes at a time, or all at once); then the
// stranger half-closes and reads what the node says until it closes.
// Properties, on every input:
//  - the node's replies never contain the secret review's text: without a
//    token nothing is readable, whatever the bytes;
//  - the node closes the stranger's connection once it has half-closed
//    (within 10 s) and sends it at most 4 MiB;
// and before the first input and after every 16th: a client with a valid
// token still connects, authenticates and reads the secret review within
// 10 s, so no input wedged or crashed the server.
//
// Seeds: test/fuzz/corpus/rpc/, from make-rpc-corpus.cpp (well-formed RPC
// streams a stranger could send: bootstrap, pipelined calls on the
// unauthenticated capabilities, wrong tokens, oversized segment tables).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>

#include "api/auth.h"
#include "api/client.h"
#include "api/node.h"
#include "fuzz-support.h"

using namespace chorus;

namespace {

constexpr const char* kSecretTitle = "fuzz-secret-title-5c1f0e";
constexpr const char* kSecretBody = "fuzz-secret-body-9b27d4";
constexpr size_t kMaxReplyBytes = 4u << 20;
constexpr int kCloseWithinMillis = 10'000;

// The node under test: opened at first use, stopped and removed at exit.
class FuzzNode {
 public:
  static FuzzNode& get() {
    static FuzzNode* instance = new FuzzNode();  // outlives exit-time destructors
    return *instance;
  }
  const std::string& address() const { return address_; }
  const std::string& token() const { return token_; }

 private:
  FuzzNode() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "chorus-fuzz-rpc-XXXXXX").string();
    FUZZ_CHECK(::mkdtemp(pattern.data()) != nullptr, "mkdtemp");
    dir_ = pattern;
    token_ = api::newToken();
    auto line = api::tokenLine("fuzzer", "reader,writer,admin", token_);
    FUZZ_CHECK(line.ok(), line.ok() ? "" : line.error().toString());
    std::string tokens = dir_ + "/tokens";
    {
      std::ofstream out(tokens);
      out << *line << "\n";
    }
    std::filesystem::permissions(
        tokens, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    Node::Options options;
    options.nodeId = "fuzz";
    options.dataDir = dir_ + "/data";
    options.listen = "127.0.0.1:0";
    options.rpc.tokensFile = tokens;
    options.store.unsafeNoSync = true;  // throwaway data
    auto node = Node::open(options);
    FUZZ_CHECK(node.ok(), node.ok() ? "" : node.error().toString());
    node_ = std::move(node).value();
    address_ = node_->rpcAddress();
    auto put = node_->put("kettle-1", "ann", 5, kSecretTitle, kSecretBody);
    FUZZ_CHECK(put.ok(), put.ok() ? "" : put.error().toString());
    std::atexit([] {
      auto& self = get();
      self.node_.reset();
      std::error_code ec;
      std::filesystem::remove_all(self.dir_, ec);
    });
  }

  std::string dir_;
  std::string token_;
  std::string address_;
  std::unique_ptr<Node> node_;
};

int connectTo(const std::string& address) {
  auto colon = address.rfind(':');
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  FUZZ_CHECK(inet_pton(AF_INET, address.substr(0, colon).c_str(), &to.sin_addr) == 1, address);
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  FUZZ_CHECK(fd >= 0, "socket");
  FUZZ_CHECK(::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0,
             "connect to " + address + ": " + std::strerror(errno));
  // Closed with a reset, not a FIN: thousands of connections a second would
  // otherwise leave every local port in TIME_WAIT (connect: EADDRNOTAVAIL).
  linger reset{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
  return fd;
}

// Sends `bytes` in pieces of `piece`; stops early if the node closed (it may
// drop a connection that sent something malformed or oversized).
void sendAll(int fd, std::string_view bytes, size_t piece) {
  timeval timeout{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  while (!bytes.empty()) {
    ssize_t n = ::send(fd, bytes.data(), std::min(piece, bytes.size()), MSG_NOSIGNAL);
    if (n <= 0) return;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

// Reads until the node closes; false if it did not within the deadline.
bool readUntilClosed(int fd, std::string& out) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kCloseWithinMillis);
  char buffer[16384];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    int ready = ::poll(&p, 1, static_cast<int>(left));
    if (ready == 0) return false;
    if (ready < 0) continue;  // EINTR
    ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) return true;  // closed (or reset)
    out.append(buffer, static_cast<size_t>(n));
    FUZZ_CHECK(out.size() <= kMaxReplyBytes,
               "the node sent a stranger more than " + std::to_string(kMaxReplyBytes) + " bytes");
  }
}

// A token holder can still use the node.
void checkServing(const FuzzNode& node) {
  api::Client::Options options;
  options.token = node.token();
  options.timeout = std::chrono::milliseconds(10'000);
  auto client = api::Client::connect(node.address(), options);
  FUZZ_CHECK(client.ok(), client.ok() ? "" : client.error().toString());
  auto review = (*client)->get("kettle-1", "ann");
  FUZZ_CHECK(review.ok(), review.ok() ? "" : review.error().toString());
  FUZZ_CHECK(review->title == kSecretTitle, review->title);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static uint64_t inputs = 0;
  FuzzNode& node = FuzzNode::get();
  if (inputs++ % 16 == 0) checkServing(node);
  if (size == 0) return 0;

  static constexpr size_t kPieces[] = {1, 7, 64, 4096, SIZE_MAX};
  size_t piece = kPieces[data[0] % std::size(kPieces)];
  std::string_view stream(reinterpret_cast<const char*>(data + 1), size - 1);

  int fd = connectTo(node.address());
  sendAll(fd, stream, piece);
  ::shutdown(fd, SHUT_WR);
  std::string reply;
  bool closed = readUntilClosed(fd, reply);
  ::close(fd);
  FUZZ_CHECK(closed, "the node kept a half-closed stranger's connection open for " +
                         std::to_string(kCloseWithinMillis) + " ms");
  FUZZ_CHECK(reply.find(kSecretTitle) == std::string::npos, "a stranger read a review's title");
  FUZZ_CHECK(reply.find(kSecretBody) == std::string::npos, "a stranger read a review's body");
  return 0;
}
