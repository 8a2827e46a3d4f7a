// Issue 12, finding 7 (first half): `chorus cluster` commands must send the
// admin token only to RPC addresses the operator gave (--connect, --nodes,
// $CHORUS_NODES, a nodes file), never to one a peer advertises over gossip:
// any holder of the cluster key can advertise any address. A real chorusd
// whose member list holds a member advertising an RPC address on a listener
// this test owns; the cluster commands must never connect to it.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <mutex>

#include "../cluster/checks.h"
#include "sockets.h"

using namespace chorus::test::cluster;
using chorus::test::Json;

namespace {

// A TCP listener on 127.0.0.1 that records every connection and every byte
// sent to it, and never answers. Accepts for at most `lifetime`.
class Collector {
 public:
  explicit Collector(std::chrono::milliseconds lifetime) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    address_ = chorus::test::security::bindLoopback(fd_);
    REQUIRE(!address_.empty());
    REQUIRE(::listen(fd_, 64) == 0);
    thread_ = std::thread([this, deadline = Clock::now() + lifetime] { loop(deadline); });
  }
  ~Collector() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  Collector(const Collector&) = delete;
  Collector& operator=(const Collector&) = delete;

  const std::string& address() const { return address_; }
  int connections() const { return connections_; }
  std::string received() {
    std::lock_guard lock(mu_);
    return bytes_;
  }

 private:
  void loop(Clock::time_point deadline) {
    std::vector<int> open;
    while (!stop_ && Clock::now() < deadline) {
      std::vector<pollfd> fds = {{fd_, POLLIN, 0}};
      for (int c : open) fds.push_back({c, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), 50) <= 0) continue;
      if (fds[0].revents & POLLIN) {
        int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c >= 0) {
          ++connections_;
          if (open.size() < 256) {
            open.push_back(c);
          } else {
            ::close(c);
          }
        }
      }
      for (size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        char buf[4096];
        ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
        if (n > 0) {
          std::lock_guard lock(mu_);
          if (bytes_.size() < (1u << 20)) bytes_.append(buf, size_t(n));
        } else {
          ::close(fds[i].fd);
          open.erase(std::find(open.begin(), open.end(), fds[i].fd));
        }
      }
    }
    for (int c : open) ::close(c);
  }

  int fd_ = -1;
  std::string address_;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::mutex mu_;
  std::string bytes_;
  std::thread thread_;
};

// A loopback port that is bound but not listening (connections to it are
// refused) for as long as this lives: a gossip address for the planted
// member that nothing answers at.
class DeadPort {
 public:
  DeadPort() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    address_ = chorus::test::security::bindLoopback(fd_);
    REQUIRE(!address_.empty());
  }
  ~DeadPort() { ::close(fd_); }
  const std::string& address() const { return address_; }

 private:
  int fd_ = -1;
  std::string address_;
};

// A token with `roles` in the harness's tokens file; returns its file.
std::string grantToken(Harness& h, const std::string& principal, const std::string& roles) {
  auto r = run(bin("CHORUS_BIN"),
               {"token", "create", "--principal", principal, "--roles", roles, "--tokens-file",
                h.tokensFile},
               20s);
  REQUIRE_MESSAGE(r.code == 0, "chorus token create: " << r.err);
  std::string path = h.tmp().sub(principal + ".token");
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, r.out.data(), r.out.size()) == ssize_t(r.out.size()));
  ::close(fd);
  return path;
}

// Plants `<data-dir of id>/members` before the node's first start: one
// member "mallory" whose RPC address is `rpc` (what a key holder would
// advertise over gossip; a restarted node reads the same list).
void plantMember(Harness& h, const std::string& id, const std::string& gossip,
                 const std::string& rpc) {
  std::string dir = h.dataDir(id);
  REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
  std::ofstream(dir + "/members") << "# chorus members v1\nmallory " << gossip << " " << rpc
                                  << "\n";
}

// `chorus --token-file <token> --connect <id> args...`, with nothing added.
RunResult cli(Harness& h, const std::string& id, std::vector<std::string> args) {
  args.insert(args.begin(), {"--token-file", h.cliTokenFile, "--connect", h.node(id).rpc()});
  return run(bin("CHORUS_BIN"), args, 30s);
}

std::string shown(const RunResult& r) {
  return "exit " + std::to_string(r.code) + "\nstdout: " + r.out + "\nstderr: " + r.err;
}

}  // namespace

TEST_CASE("security: cluster commands never send the admin token to an address from gossip") {
  Collector collector(120s);
  DeadPort deadGossip;
  Harness h;
  h.tokensFile = h.tmp().sub("tokens.txt");
  h.cliTokenFile = grantToken(h, "ops", "admin,reader");
  std::string token = readFile(h.cliTokenFile);
  token = token.substr(0, token.find('\n'));
  REQUIRE(token.size() >= 16);
  plantMember(h, "n1", deadGossip.address(), collector.address());
  h.start("n1");

  // n1 knows mallory, with the collector as its RPC address (asked through
  // the C++ client, which talks to n1 only).
  chorus::api::Client::Options admin;
  admin.token = token;
  REQUIRE(h.waitUntil("n1 lists mallory with the collector's address", 20s, [&] {
    auto client = chorus::api::Client::connect(h.node("n1").rpc(), admin);
    if (!client.ok()) return false;
    auto view = (*client)->cluster();
    if (!view.ok()) return false;
    for (const auto& m : view->members) {
      if (m.nodeId == "mallory" && m.rpcAddress == collector.address()) return true;
    }
    return false;
  }));

  // What an operator types, with no node list and with one: status,
  // converge, heal, keys list, keys install.
  std::string key = h.tmp().sub("new.key");
  writeClusterKeyFile(key);
  std::vector<std::vector<std::string>> commands = {
      {"cluster", "status"},
      {"--json", "cluster", "status"},
      {"cluster", "converge", "--timeout", "3s"},
      {"cluster", "heal"},
      {"cluster", "keys", "list"},
      {"cluster", "keys", "install", "--key-file", key},
      {"cluster", "status", "--nodes", h.node("n1").rpc()},
      {"cluster", "converge", "--timeout", "3s", "--nodes", h.node("n1").rpc()},
  };
  std::map<std::string, RunResult> results;
  for (const auto& args : commands) {
    std::string cmd;
    for (const auto& a : args) cmd += " " + a;
    results[cmd] = cli(h, "n1", args);
  }
  std::this_thread::sleep_for(300ms);  // a connection in flight reaches the collector

  std::string got = collector.received();
  for (const auto& [cmd, r] : results) MESSAGE("chorus" << cmd << ": " << shown(r));
  CHECK_MESSAGE(collector.connections() == 0,
                collector.connections() << " connection(s) to the address mallory advertises");
  CHECK_MESSAGE(got.find(token) == std::string::npos,
                "the admin token reached the address mallory advertises (" << got.size()
                                                                           << " bytes received)");

  // mallory is shown, as not asked, with the state n1 has for it.
  const auto& status = results[" cluster status"];
  CHECK(status.code == 0);
  CHECK_MESSAGE(status.out.find("mallory not asked: not in --nodes") != std::string::npos,
                shown(status));
  auto j = Json::parse(results[" --json cluster status"].out);
  REQUIRE(j.has_value());
  CHECK(entryOf(*j, "mallory")["asked"].boolean() == false);
  CHECK(entryOf(*j, "mallory")["state"].str() != "");
  CHECK(entryOf(*j, "mallory")["rpc_address"].str() == "");
  CHECK(entryOf(*j, "n1")["asked"].boolean() == true);

  // Commands that need every node refuse, naming mallory and what to pass.
  for (const char* cmd : {" cluster converge --timeout 3s", " cluster keys install --key-file "}) {
    std::string full = cmd;
    if (full.back() == ' ') full += key;
    const auto& r = results[full];
    CAPTURE(full);
    CHECK_MESSAGE(r.code == 3, shown(r));
    CHECK_MESSAGE(r.err.find("mallory") != std::string::npos, shown(r));
    CHECK_MESSAGE(r.err.find("--nodes") != std::string::npos, shown(r));
  }
  h.stopAll();
}

TEST_CASE("security: the node list: --nodes, $CHORUS_NODES, a nodes file; what is refused") {
  DeadPort deadGossip, deadRpc;
  Harness h;
  h.tokensFile = h.tmp().sub("tokens.txt");
  h.cliTokenFile = grantToken(h, "ops", "admin,reader");
  plantMember(h, "n1", deadGossip.address(), deadRpc.address());
  h.start("n1");
  h.start("n2", {h.node("n1").gossip()});
  REQUIRE(h.waitUntil("n1 sees n2 alive and knows mallory", 30s, [&] {
    auto r = cli(h, "n1", {"--json", "cluster", "status", "--nodes", h.rpcAddresses()});
    auto j = Json::parse(r.out);
    return j && peerState(*j, "n2") == "alive" && !entryOf(*j, "mallory").isNull();
  }));
  std::string n1 = h.node("n1").rpc(), n2 = h.node("n2").rpc();

  // --nodes: n1 (connected) and n2 are asked; mallory is not.
  auto s = cli(h, "n1", {"--json", "cluster", "status", "--nodes", n2});
  auto j = Json::parse(s.out);
  REQUIRE_MESSAGE(j.has_value(), shown(s));
  CHECK(entryOf(*j, "n2")["asked"].boolean());
  CHECK(entryOf(*j, "n2")["reachable"].boolean());
  CHECK(entryOf(*j, "n2")["rpc_address"].str() == n2);
  CHECK_FALSE(entryOf(*j, "mallory")["asked"].boolean());
  CHECK((*j)["not_asked"].size() == 1);

  // Without n2 in the list, n2 is not asked either.
  s = cli(h, "n2", {"--json", "cluster", "status"});
  j = Json::parse(s.out);
  REQUIRE_MESSAGE(j.has_value(), shown(s));
  CHECK_FALSE(entryOf(*j, "n1")["asked"].boolean());
  CHECK(entryOf(*j, "n2")["asked"].boolean());

  // Key rotation refuses while any node is not asked, and changes nothing.
  std::string key = h.tmp().sub("new.key");
  writeClusterKeyFile(key);
  for (const char* op : {"install", "use", "remove"}) {
    CAPTURE(op);
    auto r = cli(h, "n1", {"cluster", "keys", op, "--key-file", key, "--nodes", n2});
    CHECK_MESSAGE(r.code == 3, shown(r));
    CHECK_MESSAGE(r.err.find("mallory") != std::string::npos, shown(r));
    CHECK_MESSAGE(r.err.find("nothing done") != std::string::npos, shown(r));
  }
  auto list = cli(h, "n1", {"--json", "cluster", "keys", "list", "--nodes", n2});
  CHECK_MESSAGE(list.code == 0, shown(list));
  auto lj = Json::parse(list.out);
  REQUIRE(lj.has_value());
  CHECK((*lj)["keys"]["n1"].size() == 1);  // the new key was not installed
  CHECK((*lj)["keys"]["n2"].size() == 1);

  // Partition: refused when a node it changes is not asked (isolating n2
  // changes every node, mallory too); a split of the listed nodes works.
  auto iso = cli(h, "n1", {"cluster", "partition", "--isolate", "n2", "--nodes", n2});
  CHECK_MESSAGE(iso.code == 3, shown(iso));
  CHECK(iso.err.find("mallory") != std::string::npos);
  auto split = cli(h, "n1", {"cluster", "partition", "--split", "n1/n2", "--nodes", n2});
  CHECK_MESSAGE(split.code == 0, shown(split));
  // A partition replaces the one before on the nodes asked; mallory is not
  // asked, so whatever it dropped before stays, and that is said.
  CHECK_MESSAGE(split.err.find("mallory not asked") != std::string::npos, shown(split));
  // Heal heals every listed node and exits 3 naming the rest.
  auto heal = cli(h, "n1", {"--json", "cluster", "heal", "--nodes", n2});
  CHECK_MESSAGE(heal.code == 3, shown(heal));
  CHECK(heal.out.find("\"n1\":true") != std::string::npos);
  CHECK(heal.out.find("\"n2\":true") != std::string::npos);
  CHECK(heal.err.find("mallory") != std::string::npos);

  // Listing mallory's address (the operator's choice) asks it: unreachable,
  // so not converged (exit 6 naming it) unless --reachable asks for
  // agreement among the nodes that answer.
  auto notAll = cli(
      h, "n1", {"cluster", "converge", "--timeout", "1s", "--nodes", n2 + "," + deadRpc.address()});
  CHECK_MESSAGE(notAll.code == 6, shown(notAll));
  CHECK_MESSAGE(notAll.out.find("not every node answered") != std::string::npos, shown(notAll));
  CHECK_MESSAGE(notAll.out.find("unreachable") != std::string::npos, shown(notAll));
  auto conv = cli(h, "n1",
                  {"cluster", "converge", "--reachable", "--timeout", "20s", "--nodes",
                   n2 + "," + deadRpc.address()});
  CHECK_MESSAGE(conv.code == 0, shown(conv));
  CHECK_MESSAGE(conv.out.find("unreachable: mallory") != std::string::npos, shown(conv));

  // $CHORUS_NODES, and a nodes file (comments, blank lines).
  auto env = run("/usr/bin/env",
                 {"CHORUS_NODES=" + n2 + " " + deadRpc.address(), bin("CHORUS_BIN"), "--token-file",
                  h.cliTokenFile, "--connect", n1, "--json", "cluster", "status"},
                 30s);
  j = Json::parse(env.out);
  REQUIRE_MESSAGE(j.has_value(), shown(env));
  CHECK((*j)["not_asked"].size() == 0);
  CHECK(entryOf(*j, "n2")["reachable"].boolean());
  std::string file = h.tmp().sub("nodes");
  std::ofstream(file) << "# the cluster\n" << n2 << "   # n2\n\n" << deadRpc.address() << "\n";
  REQUIRE(::chmod(file.c_str(), 0600) == 0);
  s = cli(h, "n1", {"--json", "cluster", "status", "--nodes-file", file});
  j = Json::parse(s.out);
  REQUIRE_MESSAGE(j.has_value(), shown(s));
  CHECK((*j)["not_asked"].size() == 0);
  CHECK(entryOf(*j, "n2")["reachable"].boolean());
  // A nodes file others may write could send the token anywhere: refused.
  REQUIRE(::chmod(file.c_str(), 0622) == 0);
  auto loose = cli(h, "n1", {"cluster", "status", "--nodes-file", file});
  CHECK_MESSAGE(loose.code == 1, shown(loose));
  CHECK(loose.err.find("writable by group or others") != std::string::npos);
  // Malformed entries are usage errors, found before anything is asked.
  CHECK(cli(h, "n1", {"cluster", "status", "--nodes", "n2"}).code == 1);
  CHECK(cli(h, "n1", {"cluster", "status", "--nodes", "127.0.0.1:99999"}).code == 1);
  CHECK(cli(h, "n1", {"cluster", "status", "--nodes-file", h.tmp().sub("absent")}).code == 1);
  h.stopAll();
}
