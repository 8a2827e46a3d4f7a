// The member lifecycle and protocol compatibility with real processes:
// `chorus cluster leave` (the others show the node left and hold what it
// acknowledged), `chorus cluster remove` of a killed node (left everywhere;
// back without --rejoin it stays out, with --rejoin it is a member again),
// and a holder of the cluster key speaking gossip protocol 1 refused with
// both versions named.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <capnp/message.h>

#include "checks.h"
#include "gossip/frame.h"
#include "gossip/keyring.h"
#include "gossip/secure-channel.h"

using namespace chorus::test::cluster;
using chorus::test::Json;

namespace {

std::vector<std::string> authors(const std::string& prefix, int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(prefix + std::to_string(i));
  return out;
}

// Starts n1 and the others joining it; waits until all see each other alive.
void startCluster(Harness& h, int n) {
  h.start("n1");
  for (int i = 2; i <= n; ++i) h.start("n" + std::to_string(i), {h.node("n1").gossip()});
  auto ids = h.ids();
  REQUIRE(h.waitUntil(
      "every node sees the others alive", 30s, [&] { return allAlive(h, ids); },
      [&] { return aliveDetail(h, ids); }));
}

// `peer`'s state as `id` sees it, asking `id` alone (others may be down).
std::string stateSeenBy(Harness& h, const std::string& id, const std::string& peer) {
  auto r = h.chorus(id, {"--json", "cluster", "status", "--nodes", h.node(id).rpc()});
  if (r.code != 0) return "<status exited " + std::to_string(r.code) + ">";
  auto j = Json::parse(r.out);
  return j ? peerState(*j, peer) : "<not JSON>";
}

// A blocking TCP connection to "127.0.0.1:port"; reads time out after 3 s.
struct Conn {
  int fd = -1;
  explicit Conn(const std::string& address) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(uint16_t(std::stoi(address.substr(address.rfind(':') + 1))));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    timeval timeout{3, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  }
  ~Conn() { ::close(fd); }
  void send(const std::string& bytes) {
    REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == ssize_t(bytes.size()));
  }
  std::string read(size_t n) {
    std::string out;
    char buf[4096];
    while (out.size() < n) {
      ssize_t got = ::read(fd, buf, std::min(sizeof buf, n - out.size()));
      if (got <= 0) break;
      out.append(buf, size_t(got));
    }
    return out;
  }
  // Everything until the node closes; nullopt if it did not within 3 s.
  std::optional<std::string> rest() {
    std::string out;
    char buf[4096];
    for (;;) {
      ssize_t got = ::read(fd, buf, sizeof buf);
      if (got == 0) return out;
      if (got < 0) return errno == ECONNRESET ? std::optional<std::string>(out) : std::nullopt;
      out.append(buf, size_t(got));
    }
  }
};

}  // namespace

TEST_CASE("cluster: chorus cluster leave: the others show it left and hold its last writes") {
  auto began = Clock::now();
  Harness h;
  startCluster(h, 4);
  // Written on n3 just before it leaves.
  auto last = authors("last", 20);
  clientPuts(h, "n3", "exit", last, "before leaving ");
  auto lv = h.chorus("n3", {"--json", "cluster", "leave", "--timeout", "10s"}, 30s);
  REQUIRE_MESSAGE(lv.code == 0, "leave exited " << lv.code << ": " << lv.out << lv.err << "\n"
                                                << h.logs());
  MESSAGE("chorus cluster leave said: " << lv.out);
  auto lj = Json::parse(lv.out);
  REQUIRE(lj.has_value());
  CHECK((*lj)["node_id"].str() == "n3");
  CHECK((*lj)["left"].boolean());
  // Left, it refuses writes.
  auto refused = h.chorus("n3", {"review", "put", "exit", "late", "-r", "1", "-t", "too late"});
  CHECK_MESSAGE(refused.code != 0, "a node that left took a write: " << refused.out);
  REQUIRE(h.waitUntil(
      "n1, n2 and n4 show n3 left", 10s,
      [&] {
        for (const auto& id : {"n1", "n2", "n4"}) {
          if (stateSeenBy(h, id, "n3") != "left") return false;
        }
        return true;
      },
      [&] {
        return "n1: " + stateSeenBy(h, "n1", "n3") + ", n2: " + stateSeenBy(h, "n2", "n3") +
               ", n4: " + stateSeenBy(h, "n4", "n3");
      }));
  CHECK(h.node("n3").stop(SIGTERM, 15s) == 0);
  const std::vector<std::string> rest = {"n1", "n2", "n4"};
  REQUIRE(h.waitUntil("n3's last writes on every remaining node", 30s, [&] {
    for (const auto& id : rest) {
      if (!missing(h, id, "exit", titled(last, "before leaving ")).empty()) return false;
    }
    return true;
  }));
  // converge asks the nodes that did not leave; n3 needs no asking.
  auto conv = h.chorus("n1", {"--json", "cluster", "converge", "--timeout", "30s"}, 45s);
  CHECK_MESSAGE(conv.code == 0, conv.out << conv.err);
  auto r = roots(h, rest);
  CHECK_MESSAGE(allEqual(r), show(r));
  std::this_thread::sleep_for(2s);  // two probe periods: nothing brings it back
  for (const auto& id : rest) CHECK(stateSeenBy(h, id, "n3") == "left");
  h.stopAll();
  MESSAGE("leave test took " << secondsSince(began) << " s");
}

TEST_CASE("cluster: chorus cluster remove: a killed node is left everywhere until it rejoins") {
  auto began = Clock::now();
  Harness h;
  startCluster(h, 3);
  // n3 must have persisted its peers before it dies: back without --join,
  // it finds them there.
  std::string memberFile = h.dataDir("n3") + "/members";
  REQUIRE(h.waitUntil(
      "n3's member file lists n1 and n2", 30s,
      [&] {
        std::string m = readFile(memberFile);
        return m.find("n1 ") != std::string::npos && m.find("n2 ") != std::string::npos;
      },
      [&] { return "members: " + readFile(memberFile); }));
  CHECK(h.node("n3").stop(SIGKILL, 10s) == 128 + SIGKILL);
  // The operator's mistakes first.
  auto unknown = h.chorus("n1", {"cluster", "remove", "n9"});
  CHECK_MESSAGE(unknown.code == 2, unknown.code << ": " << unknown.out << unknown.err);
  auto self = h.chorus("n1", {"cluster", "remove", "n1"});
  CHECK_MESSAGE(self.code == 3, self.code << ": " << self.out << self.err);

  auto rm = h.chorus("n1", {"cluster", "remove", "n3"});
  REQUIRE_MESSAGE(rm.code == 0, rm.code << ": " << rm.out << rm.err);
  REQUIRE(h.waitUntil(
      "n1 and n2 show n3 left", 10s,
      [&] { return stateSeenBy(h, "n1", "n3") == "left" && stateSeenBy(h, "n2", "n3") == "left"; },
      [&] { return "n1: " + stateSeenBy(h, "n1", "n3") + ", n2: " + stateSeenBy(h, "n2", "n3"); }));
  clientPuts(h, "n1", "gone", {"a", "b"}, "after the removal ");

  // n3 comes back as it was: it finds n1 and n2 in its member file, learns
  // it was removed and stays out.
  h.restart("n3");
  REQUIRE(h.waitUntil("n3 learns it was removed", 20s, [&] {
    return h.node("n3").ownLog().find("removed from the cluster") != std::string::npos;
  }));
  std::this_thread::sleep_for(2s);
  CHECK(stateSeenBy(h, "n1", "n3") == "left");
  CHECK(stateSeenBy(h, "n2", "n3") == "left");
  CHECK(missing(h, "n3", "gone", titled({"a", "b"}, "after the removal ")).size() == 2);

  // With --rejoin it is a member again and catches up.
  h.node("n3").stop(SIGTERM, 15s);
  h.restart("n3", {"--rejoin"});
  const std::vector<std::string> all = {"n1", "n2", "n3"};
  REQUIRE(h.waitUntil(
      "n3, restarted with --rejoin, alive for everyone", 30s, [&] { return allAlive(h, all); },
      [&] { return aliveDetail(h, all); }));
  converge(h, "n3");
  CHECK(missing(h, "n3", "gone", titled({"a", "b"}, "after the removal ")).empty());
  h.stopAll();
  MESSAGE("remove test took " << secondsSince(began) << " s");
}

TEST_CASE("cluster: a key holder speaking gossip protocol 1 is refused, naming both versions") {
  Harness h;
  startCluster(h, 2);
  auto keys = chorus::gossip::readKeyFile(h.clusterKeyFile());
  REQUIRE_MESSAGE(keys.ok(), keys.error().toString());
  auto ring = chorus::gossip::Keyring::fromBase64(keys.value());
  REQUIRE_MESSAGE(ring.ok(), ring.error().toString());
  auto before = clusterStatus(h, "n1")["gossip"]["version_refused"].u64();

  // An older node: sealed with the cluster key, its hello says version 1.
  Conn c(h.node("n1").gossip());
  chorus::gossip::SecureChannel channel(1 << 20);
  c.send(channel.preamble());
  std::string preamble = c.read(chorus::gossip::kPreambleBytes);
  REQUIRE(preamble.size() == chorus::gossip::kPreambleBytes);
  channel.append(preamble.data(), preamble.size());
  REQUIRE(channel.next(ring.value()).kind ==
          chorus::gossip::SecureChannel::Received::Kind::kNeedMore);
  REQUIRE(channel.ready());
  capnp::MallocMessageBuilder message;
  auto f = chorus::gossip::newFrame(message, "old-node");
  f.setVersion(1);
  auto m = f.initHello().initMember();
  m.setNodeId("old-node");
  m.setGossipAddress("127.0.0.1:1");
  c.send(channel.seal(ring.value().primary(), chorus::gossip::encodeFrame(message)));
  auto answer = c.rest();
  REQUIRE(answer.has_value());  // closed, without a hello back
  CHECK(answer->empty());

  REQUIRE(h.waitUntil("n1 counts the refusal", 10s, [&] {
    return clusterStatus(h, "n1")["gossip"]["version_refused"].u64() > before;
  }));
  REQUIRE(h.waitUntil("n1 warns naming both versions", 10s, [&] {
    std::string log = h.node("n1").ownLog();
    return log.find("protocol version 1") != std::string::npos &&
           log.find("speaks 2") != std::string::npos;
  }));
  Json s = clusterStatus(h, "n1");
  CHECK(entryOf(s, "old-node").isNull());
  CHECK(peerState(s, "n2") == "alive");
  CHECK(s["gossip"]["auth_failures"].u64() == 0);
  h.stopAll();
}
