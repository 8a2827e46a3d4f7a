// Partitions on a real network: three chorusd nodes, each in its own network
// namespace, joined by veth pairs to a bridge in a hub namespace (so nothing
// touches the host's namespace, its addresses or its firewall). Faults are
// real: a node's link taken down, then `tc netem` loss 100% (partition) and
// delay 100ms loss 20% (a degraded link). Writes go to both sides and every
// outcome is recorded; after each heal the nodes must converge (equal Merkle
// roots) and a set checker reads every node back: every acknowledged write
// present with its value, nothing that no client wrote.
//
// Needs root and `ip netns`. Without them the program prints
// "skipped: needs root and ip netns: <reason>" and exits 77, which meson
// (and tools/lib/test-summary.py) count as skipped. Without sch_netem only
// the netem round is skipped, with a message. Everything created (processes
// by PID, namespaces, and with them the links and the bridge) is removed by
// destructors, also when a check fails; namespaces left by a killed earlier
// run are removed at start.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../cluster/harness.h"
#include "api/client.h"
#include "gossip/keyring.h"

using namespace chorus::test::cluster;

namespace {

constexpr int kNodes = 3;
const std::string kSubnet = "10.213.77.";  // /24 inside the hub namespace only
const std::string kPrefix = "chorus-netns-";
const std::string kProduct = "netns-kettle";

std::string findTool(const char* name) {
  for (const char* dir : {"/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"}) {
    std::string p = std::string(dir) + name;
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

std::string ipBin() {
  static const std::string p = findTool("ip");
  return p;
}

std::string tcBin() {
  static const std::string p = findTool("tc");
  return p;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// `ip args...`; the result (never throws).
RunResult ip(const std::vector<std::string>& args) { return runQuiet(ipBin(), args, 15s); }

std::string cmdline(const std::vector<std::string>& args) {
  std::string out;
  for (const auto& a : args) out += " " + a;
  return out;
}

// `ip args...`, REQUIREd to succeed.
void mustIp(const std::vector<std::string>& args) {
  auto r = ip(args);
  REQUIRE_MESSAGE(r.code == 0, "ip" << cmdline(args) << " exited " << r.code << ": " << r.err);
}

// Removes namespaces left by runs of this test whose process is gone (a
// timeout's SIGKILL leaves them): their processes first, then the namespace.
void removeStale() {
  auto list = ip({"netns", "list"});
  std::istringstream in(list.out);
  std::string line;
  while (std::getline(in, line)) {
    std::string name = line.substr(0, line.find(' '));
    if (name.rfind(kPrefix, 0) != 0) continue;
    std::string rest = name.substr(kPrefix.size());
    pid_t owner = pid_t(std::atol(rest.substr(0, rest.find('-')).c_str()));
    if (owner <= 0 || owner == getpid() || kill(owner, 0) == 0) continue;
    auto pids = ip({"netns", "pids", name});
    std::istringstream ps(pids.out);
    for (pid_t p; ps >> p;) kill(p, SIGKILL);
    usleep(100000);
    ip({"netns", "del", name});
  }
}

// "" when root and `ip netns` (with veth and bridge links) work, else why not.
std::string probe() {
  if (geteuid() != 0) return "not running as root (euid " + std::to_string(geteuid()) + ")";
  if (ipBin().empty()) return "no `ip` program (iproute2) found";
  removeStale();
  std::string ns = kPrefix + std::to_string(getpid()) + "-probe";
  auto add = ip({"netns", "add", ns});
  if (add.code != 0) return "`ip netns add` failed: " + trim(add.err);
  std::string why;
  auto br = ip({"-n", ns, "link", "add", "br0", "type", "bridge"});
  if (br.code != 0) why = "cannot create a bridge in a namespace: " + trim(br.err);
  auto veth = ip({"-n", ns, "link", "add", "va", "type", "veth", "peer", "name", "vb"});
  if (why.empty() && veth.code != 0) why = "cannot create a veth pair: " + trim(veth.err);
  ip({"netns", "del", ns});
  return why;
}

// Runs `fn` on a new thread that has entered network namespace `ns` (a
// Client's sockets are then that namespace's); "" or why it could not.
std::string inNamespace(const std::string& ns, const std::function<void()>& fn) {
  std::string err;
  std::thread t([&] {
    int fd = open(("/var/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      err = "open /var/run/netns/" + ns + ": errno " + std::to_string(errno);
      return;
    }
    if (setns(fd, CLONE_NEWNET) != 0) {
      err = "setns " + ns + ": errno " + std::to_string(errno);
    } else {
      fn();
    }
    close(fd);
  });
  t.join();
  return err;
}

// Cleanup when the process is killed (meson's timeout sends SIGTERM, ^C
// SIGINT) or crashes, where no destructor runs: the handler SIGKILLs the
// nodes by PID and deletes the namespaces (which removes the links and the
// bridge), using only async-signal-safe calls on fixed arrays.
namespace emergency {
constexpr int kMax = 8;
volatile pid_t pids[kMax];
char names[kMax][64];
volatile int nameCount = 0;
char ipPath[128];

void add(pid_t pid) {
  for (auto& p : pids) {
    if (p <= 0) {
      p = pid;
      return;
    }
  }
}
void remove(pid_t pid) {
  for (auto& p : pids) {
    if (p == pid) p = 0;
  }
}
void addName(const std::string& ns) {
  if (nameCount >= kMax || ns.size() >= sizeof names[0]) return;
  std::snprintf(names[nameCount], sizeof names[0], "%s", ns.c_str());
  nameCount = nameCount + 1;
}

void handler(int sig) {
  for (auto& p : pids) {
    if (p > 0) kill(p, SIGKILL);
  }
  for (auto& p : pids) {
    if (p > 0) waitpid(p, nullptr, 0);
  }
  for (int i = nameCount - 1; i >= 0 && ipPath[0] != 0; --i) {
    pid_t child = fork();
    if (child == 0) {
      char netns[] = "netns", del[] = "del";
      char* argv[] = {ipPath, netns, del, names[i], nullptr};
      execv(ipPath, argv);
      _exit(127);
    }
    if (child > 0) waitpid(child, nullptr, 0);
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

void install() {
  std::snprintf(ipPath, sizeof ipPath, "%s", ipBin().c_str());
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGSEGV, SIGABRT}) signal(sig, handler);
}
}  // namespace emergency

// One chorusd started as `ip netns exec <ns> chorusd ...`: ip execs chorusd
// in place, so the PID is chorusd's. Stopped by PID (SIGTERM, then SIGKILL).
class NsDaemon {
 public:
  NsDaemon(const std::string& logPath, const std::vector<std::string>& args) : logPath_(logPath) {
    int fd = open(logPath.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    pid_ = spawn(ipBin(), args, fd, fd);
    close(fd);
    REQUIRE(pid_ > 0);
    emergency::add(pid_);
  }
  ~NsDaemon() { stop(); }
  NsDaemon(const NsDaemon&) = delete;
  NsDaemon& operator=(const NsDaemon&) = delete;

  bool waitStarted(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      std::string out = readFile(logPath_);
      if (complete(out, "chorusd: listening on ") && complete(out, "chorusd: gossip on ")) {
        return true;
      }
      if (!running()) return false;
      usleep(10000);
    }
    return false;
  }
  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      emergency::remove(pid_);
      pid_ = -1;
    }
    return pid_ > 0;
  }
  // Stops it; its exit status (-1 if it had to be SIGKILLed or never ran).
  int stop() {
    if (!running()) return code_;
    kill(pid_, SIGTERM);
    int code = waitExit(pid_, 10s);
    if (code < 0) {
      kill(pid_, SIGKILL);
      waitExit(pid_, 5s);
    }
    emergency::remove(pid_);
    pid_ = -1;
    code_ = code;
    return code;
  }
  std::string log() const { return readFile(logPath_); }

 private:
  static bool complete(const std::string& out, const std::string& prefix) {
    size_t at = out.find(prefix);
    return at != std::string::npos && out.find('\n', at) != std::string::npos;
  }
  std::string logPath_;
  pid_t pid_ = -1;
  int code_ = -1;
};

// The namespaces, links and nodes; the destructor removes all of it.
class Net {
 public:
  Net() : tag_(kPrefix + std::to_string(getpid()) + "-"), hub_(tag_ + "hub") {}
  ~Net() { cleanup(); }
  Net(const Net&) = delete;
  Net& operator=(const Net&) = delete;

  void cleanup() {
    for (auto& d : daemons_) d.reset();  // by PID, before their namespaces go
    for (const auto& ns : made_) {
      auto r = ip({"netns", "del", ns});
      if (r.code != 0) MESSAGE("cleanup: ip netns del " << ns << ": " << r.err);
    }
    made_.clear();
    emergency::nameCount = 0;
  }

  // hub: lo, br0 10.213.77.1/24; node i: eth0 10.213.77.(10+i)/24, its
  // peer v<i> in the hub on br0.
  void build() {
    addNs(hub_);
    mustIp({"-n", hub_, "link", "set", "lo", "up"});
    mustIp({"-n", hub_, "link", "add", "br0", "type", "bridge"});
    mustIp({"-n", hub_, "addr", "add", kSubnet + "1/24", "dev", "br0"});
    mustIp({"-n", hub_, "link", "set", "br0", "up"});
    for (int i = 1; i <= kNodes; ++i) {
      std::string ns = nodeNs(i), v = veth(i);
      addNs(ns);
      mustIp({"-n", ns, "link", "set", "lo", "up"});
      mustIp({"-n", hub_, "link", "add", v, "type", "veth", "peer", "name", "eth0", "netns", ns});
      mustIp({"-n", hub_, "link", "set", v, "master", "br0"});
      mustIp({"-n", hub_, "link", "set", v, "up"});
      mustIp({"-n", ns, "addr", "add", addr(i) + "/24", "dev", "eth0"});
      mustIp({"-n", ns, "link", "set", "eth0", "up"});
    }
    daemons_.resize(kNodes + 1);
  }

  void start(int i) {
    std::vector<std::string> args = {"netns",       "exec", nodeNs(i),         bin("CHORUSD_BIN"),
                                     "--node-id",   id(i),  "--data-dir",      tmp_.sub(id(i)),
                                     "--listen",    rpc(i), "--gossip-listen", addr(i) + ":7410",
                                     "--log-level", "info"};
    if (chorusdHas("--anti-entropy-interval")) {
      args.insert(args.end(), {"--anti-entropy-interval", "300"});
    }
    if (chorusdHas("--unsafe-no-sync")) args.push_back("--unsafe-no-sync");
    if (keyFile_.empty()) {
      keyFile_ = tmp_.sub("cluster.key");
      std::ofstream key(keyFile_, std::ios::trunc);
      key << chorus::gossip::generateClusterKey() << "\n";
      key.close();
      ::chmod(keyFile_.c_str(), 0600);  // chorusd refuses a key file others may read
    }
    args.insert(args.end(), {"--cluster-key-file", keyFile_, "--no-auth"});
    if (i != 1) args.insert(args.end(), {"--join", addr(1) + ":7410"});
    daemons_[size_t(i)] = std::make_unique<NsDaemon>(tmp_.sub(id(i) + ".log"), args);
    REQUIRE_MESSAGE(daemons_[size_t(i)]->waitStarted(20s),
                    id(i) << " did not start:\n"
                          << tail(daemons_[size_t(i)]->log(), 4000));
  }

  std::string logs() const {
    std::string out;
    for (int i = 1; i <= kNodes; ++i) {
      if (daemons_.size() > size_t(i) && daemons_[size_t(i)]) {
        out += "----- " + id(i) + " -----\n" + tail(daemons_[size_t(i)]->log(), 5000) + "\n";
      }
    }
    return out;
  }
  bool allRunning() {
    for (int i = 1; i <= kNodes; ++i) {
      if (!daemons_[size_t(i)] || !daemons_[size_t(i)]->running()) return false;
    }
    return true;
  }

  // Node i through the bridge (from the hub), or from its own namespace
  // while its link is cut.
  std::string via(int i) const { return cut_.count(i) ? nodeNs(i) : hub_; }
  void setCut(int i, bool cut) {
    if (cut) {
      cut_.insert(i);
    } else {
      cut_.erase(i);
    }
  }

  const std::string& hub() const { return hub_; }
  std::string nodeNs(int i) const { return tag_ + "n" + std::to_string(i); }
  static std::string veth(int i) { return "v" + std::to_string(i); }
  static std::string id(int i) { return "n" + std::to_string(i); }
  static std::string addr(int i) { return kSubnet + std::to_string(10 + i); }
  static std::string rpc(int i) { return addr(i) + ":7400"; }

 private:
  void addNs(const std::string& ns) {
    emergency::addName(ns);  // first: `ip netns add` may be killed half-way
    mustIp({"netns", "add", ns});
    made_.insert(made_.begin(), ns);  // deleted in reverse order
  }

  std::string tag_, hub_;
  std::vector<std::string> made_;
  chorus::test::TempDir tmp_;
  std::string keyFile_;  // the nodes' shared cluster key
  std::vector<std::unique_ptr<NsDaemon>> daemons_;
  std::set<int> cut_;
};

// Every write and its outcome: acknowledged (the title it must have),
// unknown (timed out or connection lost: may or may not be applied).
struct Ledger {
  std::map<std::string, std::string> acked;  // author -> title
  std::set<std::string> unknown;
  int attempts = 0, failed = 0;
};

// `count` puts of new reviews on node i, authors "<label>-<k>"; records
// every outcome. Returns how many were acknowledged.
int writeSome(Net& net, Ledger& ledger, int i, const std::string& label, int count,
              std::chrono::milliseconds timeout = 3000ms) {
  int acked = 0;
  std::string err = inNamespace(net.via(i), [&] {
    chorus::api::Client::Options opts;
    opts.timeout = timeout;
    auto client = chorus::api::Client::connect(Net::rpc(i), opts);
    for (int k = 0; k < count; ++k) {
      std::string author = label + "-" + std::to_string(k);
      ++ledger.attempts;
      if (!client.ok()) {
        ++ledger.failed;  // never sent
        continue;
      }
      chorus::WriteRequest r;
      r.op = chorus::WriteOp::kPut;
      r.product = kProduct;
      r.author = author;
      r.rating = uint32_t(1 + k % 5);
      r.title = "title of " + author;
      auto res = (*client)->write(r);
      if (res.ok()) {
        ledger.acked[author] = r.title;
        ++acked;
      } else if (res.error().code == chorus::ErrorCode::kUnavailable) {
        ledger.unknown.insert(author);
        client = chorus::api::Client::connect(Net::rpc(i), opts);  // the connection may be gone
      } else {
        ++ledger.failed;
      }
    }
  });
  CHECK_MESSAGE(err.empty(), err);
  return acked;
}

// Node i's reviews of kProduct (author -> title), or nullopt if unreachable.
std::optional<std::map<std::string, std::string>> readAll(Net& net, int i) {
  std::optional<std::map<std::string, std::string>> out;
  inNamespace(net.via(i), [&] {
    chorus::api::Client::Options opts;
    opts.timeout = 3000ms;
    auto client = chorus::api::Client::connect(Net::rpc(i), opts);
    if (!client.ok()) return;
    std::map<std::string, std::string> got;
    std::string cursor;
    for (int pages = 0; pages < 1000; ++pages) {
      auto page = (*client)->list(kProduct, chorus::storage::Order::kNewest, cursor, 100);
      if (!page.ok()) return;
      for (const auto& r : page->reviews) {
        if (!r.deleted) got[r.author] = r.title;
      }
      cursor = page->nextCursor;
      if (cursor.empty()) break;
    }
    out = std::move(got);
  });
  return out;
}

std::optional<chorus::storage::Hash> rootOf(Net& net, int i) {
  std::optional<chorus::storage::Hash> out;
  inNamespace(net.via(i), [&] {
    chorus::api::Client::Options opts;
    opts.timeout = 2000ms;
    auto client = chorus::api::Client::connect(Net::rpc(i), opts);
    if (!client.ok()) return;
    auto s = (*client)->status();
    if (s.ok()) out = s->merkleRoot;
  });
  return out;
}

// Does every node see every other alive (Admin.cluster)?
bool allAlive(Net& net) {
  for (int i = 1; i <= kNodes; ++i) {
    bool ok = false;
    inNamespace(net.via(i), [&] {
      chorus::api::Client::Options opts;
      opts.timeout = 2000ms;
      auto client = chorus::api::Client::connect(Net::rpc(i), opts);
      if (!client.ok()) return;
      auto view = (*client)->cluster();
      if (!view.ok()) return;
      int alive = 0;
      for (const auto& m : view->members) alive += m.state == chorus::gossip::PeerState::kAlive;
      ok = alive == kNodes - 1;
    });
    if (!ok) return false;
  }
  return true;
}

bool converged(Net& net) {
  std::set<chorus::storage::Hash> roots;
  for (int i = 1; i <= kNodes; ++i) {
    auto r = rootOf(net, i);
    if (!r) return false;
    roots.insert(*r);
  }
  return roots.size() == 1;
}

// Polls `done` every 200 ms until it holds or `timeout` passes.
bool waitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (true) {
    if (done()) return true;
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(200ms);
  }
}

// The set checker: on every node, every acknowledged write present with its
// title (lost otherwise), nothing present that is neither acknowledged nor
// of unknown outcome (unexpected). Returns lost + unexpected.
size_t check(Net& net, const Ledger& ledger, const std::string& when) {
  size_t bad = 0;
  for (int i = 1; i <= kNodes; ++i) {
    auto got = readAll(net, i);
    REQUIRE_MESSAGE(got.has_value(), when << ": cannot read " << Net::id(i) << "\n" << net.logs());
    std::vector<std::string> lost, unexpected;
    for (const auto& [author, title] : ledger.acked) {
      auto it = got->find(author);
      if (it == got->end() || it->second != title) lost.push_back(author);
    }
    for (const auto& [author, title] : *got) {
      if (!ledger.acked.count(author) && !ledger.unknown.count(author)) {
        unexpected.push_back(author);
      }
    }
    std::string l, u;
    for (const auto& a : lost) l += " " + a;
    for (const auto& a : unexpected) u += " " + a;
    CHECK_MESSAGE(lost.empty(), when << ": " << Net::id(i) << " lost " << lost.size() << ":" << l);
    CHECK_MESSAGE(unexpected.empty(),
                  when << ": " << Net::id(i) << " unexpected " << unexpected.size() << ":" << u);
    bad += lost.size() + unexpected.size();
  }
  return bad;
}

// Does node i have any of `authors`?
bool hasAny(Net& net, int i, const std::vector<std::string>& authors) {
  auto got = readAll(net, i);
  REQUIRE_MESSAGE(got.has_value(), "cannot read " << Net::id(i) << "\n" << net.logs());
  for (const auto& a : authors) {
    if (got->count(a)) return true;
  }
  return false;
}

std::vector<std::string> authors(const std::string& label, int count) {
  std::vector<std::string> out;
  for (int k = 0; k < count; ++k) out.push_back(label + "-" + std::to_string(k));
  return out;
}

// `tc args...` in namespace `ns`.
RunResult tcIn(const std::string& ns, const std::vector<std::string>& args) {
  std::vector<std::string> full = {"netns", "exec", ns, tcBin()};
  full.insert(full.end(), args.begin(), args.end());
  return ip(full);
}

// netem on both ends of node i's link (hub side v<i>, node side eth0):
// `verb` is "add" or "change".
std::string netem(Net& net, int i, const std::string& verb, const std::vector<std::string>& opts) {
  for (auto [ns, dev] :
       {std::pair{net.hub(), Net::veth(i)}, std::pair{net.nodeNs(i), std::string("eth0")}}) {
    std::vector<std::string> args = {"qdisc", verb, "dev", dev, "root", "netem"};
    args.insert(args.end(), opts.begin(), opts.end());
    auto r = tcIn(ns, args);
    if (r.code != 0) return "tc" + cmdline(args) + " in " + ns + ": " + trim(r.err + r.out);
  }
  return "";
}

void netemDel(Net& net, int i) {
  tcIn(net.hub(), {"qdisc", "del", "dev", Net::veth(i), "root"});
  tcIn(net.nodeNs(i), {"qdisc", "del", "dev", "eth0", "root"});
}

// Writes on both sides while node `cut` is cut off: n1 and n2 get `count`
// each, the cut node `count`; checks the sides stay apart.
void writeBothSides(Net& net, Ledger& ledger, const std::string& round, int count) {
  CHECK(writeSome(net, ledger, 1, round + "-n1", count) == count);
  CHECK(writeSome(net, ledger, 2, round + "-n2", count) == count);
  CHECK(writeSome(net, ledger, 3, round + "-n3", count) == count);
  // The majority side replicates among itself...
  auto reached = [&] {
    auto got = readAll(net, 2);
    if (!got) return false;
    for (const auto& a : authors(round + "-n1", count)) {
      if (!got->count(a)) return false;
    }
    return true;
  };
  CHECK_MESSAGE(waitFor(reached, 10s), round << ": n1's writes did not reach n2\n" << net.logs());
  // ... and across several anti-entropy rounds nothing crosses the cut.
  std::this_thread::sleep_for(1500ms);
  CHECK_MESSAGE(!hasAny(net, 3, authors(round + "-n1", count)), round << ": n3 saw n1's writes");
  CHECK_MESSAGE(!hasAny(net, 3, authors(round + "-n2", count)), round << ": n3 saw n2's writes");
  CHECK_MESSAGE(!hasAny(net, 1, authors(round + "-n3", count)), round << ": n1 saw n3's writes");
  CHECK_MESSAGE(!hasAny(net, 2, authors(round + "-n3", count)), round << ": n2 saw n3's writes");
}

// Waits (bounded) for equal roots and checks every node; logs the time.
void healAndCheck(Net& net, const Ledger& ledger, const std::string& round,
                  std::chrono::milliseconds timeout) {
  auto healed = Clock::now();
  bool ok = waitFor([&] { return converged(net); }, timeout);
  CHECK_MESSAGE(ok, round << ": no convergence within " << timeout.count() << " ms\n"
                          << net.logs());
  MESSAGE(round << ": converged in " << secondsSince(healed) << " s; acknowledged "
                << ledger.acked.size() << ", unknown " << ledger.unknown.size() << ", failed "
                << ledger.failed << " of " << ledger.attempts);
  CHECK(check(net, ledger, round) == 0);
}

}  // namespace

TEST_CASE("netns: 3 nodes on a bridge; link down, netem loss and delay; converge, nothing lost") {
  auto began = Clock::now();
  Net net;
  net.build();
  for (int i = 1; i <= kNodes; ++i) net.start(i);
  REQUIRE_MESSAGE(waitFor([&] { return allAlive(net); }, 20s),
                  "the nodes did not all see each other alive over the bridge\n"
                      << net.logs());
  MESSAGE("3 nodes up and alive over the bridge after " << secondsSince(began) << " s");

  Ledger ledger;
  writeSome(net, ledger, 1, "pre", 5);
  REQUIRE(waitFor([&] { return converged(net); }, 15s));
  CHECK(check(net, ledger, "before any fault") == 0);

  // Round 1: n3's link down (the hub's end; n3's eth0 loses its carrier).
  mustIp({"-n", net.hub(), "link", "set", Net::veth(3), "down"});
  net.setCut(3, true);
  writeBothSides(net, ledger, "linkdown", 10);
  mustIp({"-n", net.hub(), "link", "set", Net::veth(3), "up"});
  net.setCut(3, false);
  healAndCheck(net, ledger, "link down/up", 20s);

  // Round 2: netem on both ends of n3's link, if this kernel has sch_netem.
  std::string why =
      tcBin().empty() ? "no `tc` program found" : netem(net, 3, "add", {"loss", "100%"});
  if (!why.empty()) {
    netemDel(net, 3);
    MESSAGE("netem round skipped (no tc netem here): " << why);
  } else {
    struct Undo {
      Net& net;
      ~Undo() { netemDel(net, 3); }
    } undo{net};
    net.setCut(3, true);
    writeBothSides(net, ledger, "loss100", 10);
    // Degraded but connected: the partition heals through a slow, lossy link.
    std::string change = netem(net, 3, "change", {"delay", "100ms", "loss", "20%"});
    REQUIRE_MESSAGE(change.empty(), change);
    net.setCut(3, false);
    for (int i = 1; i <= kNodes; ++i) {
      writeSome(net, ledger, i, "lossy-n" + std::to_string(i), 5, 5000ms);
    }
    healAndCheck(net, ledger, "netem delay 100ms loss 20%", 30s);
    netemDel(net, 3);
    writeSome(net, ledger, 3, "after-netem", 3);
    healAndCheck(net, ledger, "netem removed", 15s);
  }

  CHECK_MESSAGE(net.allRunning(), "a node exited by itself\n" << net.logs());
  MESSAGE("netns test took " << secondsSince(began) << " s");
}

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);  // first: the helpers' assertions need it
  std::string why = probe();
  if (!why.empty()) {
    std::printf("netns-e2e skipped: needs root and ip netns: %s\n", why.c_str());
    std::fflush(stdout);
    return 77;
  }
  emergency::install();
  return context.run();
}
