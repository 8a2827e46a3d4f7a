#include "tools/chaos/chaos.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "api/client.h"
#include "gossip/keyring.h"
#include "storage/store.h"

namespace chorus::chaos {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::atomic<bool> g_interrupted{false};
extern "C" void onSignal(int) { g_interrupted.store(true); }

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A small deterministic generator (the schedule must replay from the seed
// alone, on any standard library).
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed ^ 0x9e3779b97f4a7c15ull) {}
  uint64_t next() {  // splitmix64
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform(double a, double b) { return a + (b - a) * double(next() >> 11) * 0x1.0p-53; }
  size_t below(size_t n) { return n == 0 ? 0 : size_t(next() % n); }
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }

 private:
  uint64_t s_;
};

std::string nodeId(int i) { return "n" + std::to_string(i + 1); }

// Per node, the nodes it drops: nodes on different sides drop each other;
// side -1 (a bridge) drops nobody and is dropped by nobody.
std::vector<std::vector<int>> bySides(const std::vector<int>& side) {
  size_t n = side.size();
  std::vector<std::vector<int>> blocked(n);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      if (i != j && side[i] >= 0 && side[j] >= 0 && side[i] != side[j])
        blocked[i].push_back(int(j));
    }
  }
  return blocked;
}

Fault partition(Rng& rng, int n, double at) {
  Fault f;
  f.at = at;
  f.kind = Fault::kPartition;
  std::vector<std::string> shapes = {"halves", "isolated"};
  if (n >= 3) shapes.push_back("bridge");
  if (n >= 4) shapes.push_back("ring");
  f.shape = shapes[rng.below(shapes.size())];
  std::vector<int> perm(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) perm[size_t(i)] = i;
  rng.shuffle(perm);
  std::vector<int> side(size_t(n), 1);
  if (f.shape == "halves") {
    for (int k = 0; k < n / 2; ++k) side[size_t(perm[size_t(k)])] = 0;
  } else if (f.shape == "isolated") {
    side[size_t(perm[0])] = 0;
  } else if (f.shape == "bridge") {
    // perm[0] sees both sides; the sides (at least one node each) do not
    // see each other.
    side[size_t(perm[0])] = -1;
    int left = 1 + int(rng.below(size_t(n - 2)));
    for (int k = 1; k <= left; ++k) side[size_t(perm[size_t(k)])] = 0;
  }
  if (f.shape == "ring") {
    // Each node sees only its two neighbours on a random cycle.
    f.blocked.assign(size_t(n), {});
    for (int k = 0; k < n; ++k) {
      int self = perm[size_t(k)];
      int prev = perm[size_t((k + n - 1) % n)], next = perm[size_t((k + 1) % n)];
      for (int j = 0; j < n; ++j) {
        if (j != self && j != prev && j != next) f.blocked[size_t(self)].push_back(j);
      }
    }
  } else {
    f.blocked = bySides(side);
  }
  return f;
}

}  // namespace

std::vector<Fault> schedule(const Config& c) {
  std::vector<Fault> out;
  Rng rng(c.seed);
  const double end = c.durationS;
  // The network track: partition, hold, heal, a healed gap, again.
  if (c.nodes >= 2) {
    double t = 0.5;
    while (true) {
      t += rng.uniform(0.3, 1.2);
      if (t >= end - 0.5) break;
      out.push_back(partition(rng, c.nodes, t));
      t += rng.uniform(1.0, 3.5);
      Fault heal;
      heal.kind = Fault::kHeal;
      heal.at = std::min(t, end);
      out.push_back(heal);
    }
  }
  // Two process tracks over disjoint nodes (even and odd indexes), so at
  // most two nodes are down or paused at once; only track 0 skews clocks,
  // so at most one clock is off.
  for (int track = 0; track < std::min(2, c.nodes); ++track) {
    std::vector<int> mine;
    for (int i = track; i < c.nodes; i += 2) mine.push_back(i);
    double t = rng.uniform(0.5, 2.0) + 0.7 * track;
    while (t < end - 1.0) {
      int node = mine[rng.below(mine.size())];
      double r = rng.uniform(0, 1);
      bool canSkew = track == 0 && c.maxSkewS >= 1;
      Fault a, b;
      a.node = b.node = node;
      a.at = t;
      if (r < 0.55 || (!canSkew && r < 0.7)) {
        a.kind = Fault::kKill;
        b.kind = Fault::kRestart;
        t += rng.uniform(0.3, 4.0);
      } else if (r < 0.8 || !canSkew) {
        // Up to 6 s: past the ~4.6 s after which peers think it dead.
        a.kind = Fault::kPause;
        b.kind = Fault::kResume;
        t += rng.uniform(0.5, 6.0);
      } else {
        a.kind = Fault::kSkew;
        b.kind = Fault::kUnskew;
        double s = rng.uniform(1.0, c.maxSkewS);
        a.offsetMs = int64_t(s * 1000) * (rng.below(2) == 0 ? 1 : -1);
        t += rng.uniform(3.0, 8.0);
      }
      b.at = std::min(t, end);
      out.push_back(a);
      out.push_back(b);
      t += rng.uniform(0.5, 2.0);
    }
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const Fault& x, const Fault& y) { return x.at < y.at; });
  return out;
}

std::string describe(const Fault& f) {
  char at[32];
  std::snprintf(at, sizeof at, "%7.2f s ", f.at);
  std::string out = at;
  switch (f.kind) {
    case Fault::kPartition: {
      out += "partition " + f.shape + ":";
      for (size_t i = 0; i < f.blocked.size(); ++i) {
        out += " " + nodeId(int(i)) + "-/-{";
        for (size_t k = 0; k < f.blocked[i].size(); ++k) {
          out += (k ? "," : "") + nodeId(f.blocked[i][k]);
        }
        out += "}";
      }
      return out;
    }
    case Fault::kHeal:
      return out + "heal";
    case Fault::kKill:
      return out + "kill -9 " + nodeId(f.node);
    case Fault::kRestart:
      return out + "restart " + nodeId(f.node);
    case Fault::kPause:
      return out + "kill -STOP " + nodeId(f.node);
    case Fault::kResume:
      return out + "kill -CONT " + nodeId(f.node);
    case Fault::kSkew:
      return out + "restart " + nodeId(f.node) + " with --clock-offset " +
             std::to_string(f.offsetMs) + "ms";
    case Fault::kUnskew:
      return out + "restart " + nodeId(f.node) + " with its clock right";
  }
  return out;
}

namespace {

// ---- processes -------------------------------------------------------------

// The local chorusd processes. Only the thread that created this object
// forks (PR_SET_PDEATHSIG follows the forking thread), and every process is
// stopped by its PID in the destructor.
class Nodes {
 public:
  // The nodes share a cluster key written to <dir>/cluster.key and serve RPC
  // without tokens (--no-auth): this checker is about replication, and its
  // clients write as many authors.
  Nodes(const Config& c, std::string dir) : c_(c), dir_(std::move(dir)), p_(size_t(c.nodes)) {
    for (int i = 0; i < c.nodes; ++i) {
      auto& p = p_[size_t(i)];
      p.id = nodeId(i);
      p.data = dir_ + "/" + p.id;
      p.log = dir_ + "/" + p.id + ".log";
    }
    keyFile_ = dir_ + "/cluster.key";
    std::ofstream key(keyFile_, std::ios::trunc);
    key << gossip::generateClusterKey() << "\n";
    std::filesystem::permissions(
        keyFile_, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  }
  ~Nodes() { stopAll(); }

  int size() const { return int(p_.size()); }
  std::string rpc(int i) {
    std::lock_guard lock(mu_);
    return p_[size_t(i)].rpc;
  }
  bool down(int i) const { return p_[size_t(i)].pid < 0; }
  bool paused(int i) const { return p_[size_t(i)].paused; }
  int64_t offsetMs(int i) const { return p_[size_t(i)].offsetMs; }
  const std::string& log(int i) const { return p_[size_t(i)].log; }

  // Starts node i (on its previous ports if it had some, else on any) with
  // the given clock offset; false (and a message) if it did not serve in 30 s.
  bool start(int i, int64_t offsetMs, std::string& why) {
    auto& p = p_[size_t(i)];
    std::string rpcPort = port(p.rpc), gossipPort = port(p.gossip);
    if (spawnAndWait(i, offsetMs, rpcPort, gossipPort, why)) return true;
    if (rpcPort == "0" && gossipPort == "0") return false;
    // A port of ours may have been taken meanwhile (as some connection's
    // ephemeral port): any free ones do, the node tells its peers.
    return spawnAndWait(i, offsetMs, "0", "0", why);
  }

  void kill9(int i) {
    auto& p = p_[size_t(i)];
    if (p.pid < 0) return;
    ::kill(p.pid, SIGKILL);
    reap(p, 10s);
    p.paused = false;
  }

  // SIGTERM, then SIGKILL if it has not exited in 10 s.
  void stop(int i) {
    auto& p = p_[size_t(i)];
    if (p.pid < 0) return;
    if (p.paused) ::kill(p.pid, SIGCONT);
    p.paused = false;
    ::kill(p.pid, SIGTERM);
    if (!reap(p, 10s)) kill9(i);
  }

  void pause(int i) {
    auto& p = p_[size_t(i)];
    if (p.pid < 0 || p.paused) return;
    ::kill(p.pid, SIGSTOP);
    p.paused = true;
  }
  void resume(int i) {
    auto& p = p_[size_t(i)];
    if (p.pid < 0 || !p.paused) return;
    ::kill(p.pid, SIGCONT);
    p.paused = false;
  }

  void stopAll() {
    for (auto& p : p_) {
      if (p.pid < 0) continue;
      ::kill(p.pid, SIGCONT);
      ::kill(p.pid, SIGTERM);
    }
    for (auto& p : p_) {
      if (p.pid < 0) continue;
      if (!reap(p, 10s)) {
        ::kill(p.pid, SIGKILL);
        reap(p, 10s);
      }
    }
  }

  // Has a running node exited on its own (a crash)? Appends what happened.
  void noticeExits(std::vector<std::string>& crashes) {
    for (auto& p : p_) {
      if (p.pid < 0) continue;
      int status = 0;
      if (waitpid(p.pid, &status, WNOHANG) == p.pid) {
        crashes.push_back(p.id + " (pid " + std::to_string(p.pid) + ") exited by itself: " +
                          (WIFEXITED(status) ? "status " + std::to_string(WEXITSTATUS(status))
                                             : "signal " + std::to_string(WTERMSIG(status))) +
                          "; see " + p.log);
        std::lock_guard lock(mu_);
        p.pid = -1;
      }
    }
  }

 private:
  struct Proc {
    std::string id, data, log;
    std::string rpc, gossip;  // last known addresses ("" before the first start)
    pid_t pid = -1;
    bool paused = false;
    int64_t offsetMs = 0;
  };

  static std::string port(const std::string& address) {
    return address.empty() ? "0" : address.substr(address.rfind(':') + 1);
  }

  bool reap(Proc& p, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (true) {
      int status = 0;
      pid_t r = waitpid(p.pid, &status, WNOHANG);
      if (r == p.pid || (r < 0 && errno == ECHILD)) {
        std::lock_guard lock(mu_);
        p.pid = -1;
        return true;
      }
      if (Clock::now() > deadline) return false;
      usleep(2000);
    }
  }

  static std::string lineAfter(const std::string& text, const std::string& prefix) {
    size_t at = text.find(prefix);
    if (at == std::string::npos) return "";
    size_t begin = at + prefix.size(), end = text.find('\n', begin);
    return end == std::string::npos ? "" : text.substr(begin, end - begin);
  }

  bool spawnAndWait(int i, int64_t offsetMs, const std::string& rpcPort,
                    const std::string& gossipPort, std::string& why) {
    auto& p = p_[size_t(i)];
    std::vector<std::string> args = {c_.chorusd,
                                     "--node-id",
                                     p.id,
                                     "--data-dir",
                                     p.data,
                                     "--listen",
                                     "127.0.0.1:" + rpcPort,
                                     "--gossip-listen",
                                     "127.0.0.1:" + gossipPort,
                                     "--anti-entropy-interval",
                                     std::to_string(c_.antiEntropyMs),
                                     "--log-level",
                                     "info",
                                     "--cluster-key-file",
                                     keyFile_,
                                     "--no-auth"};
    if (offsetMs != 0) args.push_back("--clock-offset=" + std::to_string(offsetMs) + "ms");
    if (c_.unsafeNoSync) args.push_back("--unsafe-no-sync");
    std::string join;
    for (size_t j = 0; j < p_.size(); ++j) {
      if (int(j) != i && !p_[j].gossip.empty()) join += (join.empty() ? "" : ",") + p_[j].gossip;
    }
    if (!join.empty()) args.insert(args.end(), {"--join", join});

    struct stat st {};
    size_t offset = stat(p.log.c_str(), &st) == 0 ? size_t(st.st_size) : 0;
    int fd = open(p.log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
      why = "cannot open " + p.log + ": " + std::strerror(errno);
      return false;
    }
    {
      std::string line = "----- chaos: start";
      for (const auto& a : args) line += " " + a;
      line += "\n";
      if (write(fd, line.data(), line.size()) < 0) {
      }
      offset += line.size();
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      signal(SIGPIPE, SIG_DFL);  // ours is ignored; exec keeps that
      dup2(fd, 1);
      dup2(fd, 2);
      int nullIn = open("/dev/null", O_RDONLY);
      if (nullIn >= 0) dup2(nullIn, 0);
      execv(argv[0], argv.data());
      const char msg[] = "chaos: exec of chorusd failed\n";
      if (write(2, msg, sizeof msg - 1) < 0) _exit(127);
      _exit(127);
    }
    close(fd);
    if (pid < 0) {
      why = std::string("fork: ") + std::strerror(errno);
      return false;
    }
    {
      std::lock_guard lock(mu_);
      p.pid = pid;
      p.paused = false;
      p.offsetMs = offsetMs;
    }
    auto deadline = Clock::now() + 30s;
    while (Clock::now() < deadline) {
      std::ifstream in(p.log, std::ios::binary);
      in.seekg(std::streamoff(offset));
      std::stringstream ss;
      ss << in.rdbuf();
      std::string out = ss.str();
      std::string rpc = lineAfter(out, "chorusd: listening on ");
      std::string gossip = lineAfter(out, "chorusd: gossip on ");
      if (!rpc.empty() && !gossip.empty()) {
        std::lock_guard lock(mu_);
        p.rpc = rpc;
        p.gossip = gossip;
        return true;
      }
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        std::lock_guard lock(mu_);
        p.pid = -1;
        why = p.id + " exited at start (ports " + rpcPort + "/" + gossipPort + "); see " + p.log;
        return false;
      }
      usleep(5000);
    }
    why = p.id + " did not serve within 30 s; see " + p.log;
    ::kill(pid, SIGKILL);
    reap(p, 10s);
    return false;
  }

  const Config& c_;
  std::string dir_;
  std::string keyFile_;  // the cluster key every node starts with
  std::vector<Proc> p_;
  std::mutex mu_;  // p.rpc, p.gossip and p.pid for other threads
};

// ---- the workload and its history ---------------------------------------------

enum class Outcome { kAck, kFail, kUnknown };

// Definite failures: the node answered that the call had no effect. Any
// other error may or may not have been applied (timeouts, lost connections,
// overload and internal errors): unknown.
Outcome classify(const Error& e) {
  switch (e.code) {
    case ErrorCode::kNotFound:
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kForbidden:
      return Outcome::kFail;
    default:
      return Outcome::kUnknown;
  }
}

struct Version {
  std::string title, body;
  uint32_t rating = 0;
  Outcome outcome = Outcome::kUnknown;
  uint64_t ackMillis = 0;  // editedAtMillis in the acknowledgement
  int node = -1;
};

struct ElemOp {
  bool add = false;
  Outcome outcome = Outcome::kUnknown;
  int node = -1;
};

// One review, written only by the client that owns it, one call at a time.
struct Model {
  std::string product, author;
  std::vector<Version> puts;
  std::map<std::string, std::vector<ElemOp>> votes, tags;
  bool mayExist() const {
    for (const auto& v : puts) {
      if (v.outcome != Outcome::kFail) return true;
    }
    return false;
  }
};

struct History {
  std::vector<Model> reviews;
  uint64_t ops = 0, ack = 0, fail = 0, unknown = 0;
};

constexpr int kProducts = 8;
constexpr size_t kMaxReviewsPerClient = 60;
const char* const kVoters[] = {"v0", "v1", "v2", "v3", "v4", "v5"};
const char* const kTags[] = {"t0", "t1", "t2", "t3"};

void clientLoop(int k, const Config& c, Nodes& nodes, std::atomic<bool>& stop, History& h) {
  Rng rng(c.seed * 7919 + uint64_t(k) + 1);
  std::unique_ptr<api::Client> client;
  int node = -1;
  api::Client::Options options;
  options.timeout = std::chrono::milliseconds(c.callTimeoutMs);
  while (!stop.load()) {
    if (!client) {
      node = int(rng.below(size_t(nodes.size())));
      std::string address = nodes.rpc(node);
      auto r = api::Client::connect(address, options);
      if (!r.ok()) {
        std::this_thread::sleep_for(20ms);
        continue;
      }
      client = std::move(*r);
    }
    WriteRequest w;
    Model* m = nullptr;
    bool create =
        h.reviews.empty() || (h.reviews.size() < kMaxReviewsPerClient && rng.below(100) < 12);
    if (create) {
      Model fresh;
      fresh.product = "p" + std::to_string(rng.below(kProducts));
      fresh.author = "c" + std::to_string(k) + "a" + std::to_string(h.reviews.size());
      h.reviews.push_back(std::move(fresh));
      m = &h.reviews.back();
    } else {
      m = &h.reviews[rng.below(h.reviews.size())];
    }
    w.product = m->product;
    w.author = m->author;
    uint64_t r = rng.below(100);
    std::string* elem = nullptr;
    std::map<std::string, std::vector<ElemOp>>* set = nullptr;
    std::string arg;
    if (create || !m->mayExist() || r < 30) {
      w.op = WriteOp::kPut;
      w.rating = uint32_t(1 + rng.below(5));
      size_t v = m->puts.size();
      w.title = m->author + "-v" + std::to_string(v);
      w.body = "review " + m->product + "/" + m->author + " version " + std::to_string(v) +
               " (chaos seed " + std::to_string(c.seed) + ")";
    } else if (r < 65) {
      arg = kVoters[rng.below(std::size(kVoters))];
      w.op = rng.below(2) == 0 ? WriteOp::kVote : WriteOp::kUnvote;
      set = &m->votes;
    } else {
      arg = kTags[rng.below(std::size(kTags))];
      w.op = rng.below(2) == 0 ? WriteOp::kTag : WriteOp::kUntag;
      set = &m->tags;
    }
    (void)elem;
    w.arg = arg;
    auto res = client->write(w);
    Outcome out = res.ok() ? Outcome::kAck : classify(res.error());
    ++h.ops;
    (out == Outcome::kAck ? h.ack : out == Outcome::kFail ? h.fail : h.unknown)++;
    if (w.op == WriteOp::kPut) {
      Version v;
      v.title = w.title;
      v.body = w.body;
      v.rating = w.rating;
      v.outcome = out;
      v.node = node;
      if (res.ok()) v.ackMillis = res->editedAtMillis;
      m->puts.push_back(std::move(v));
    } else {
      (*set)[arg].push_back(ElemOp{w.op == WriteOp::kVote || w.op == WriteOp::kTag, out, node});
    }
    if (out == Outcome::kUnknown || rng.below(50) == 0) client.reset();  // try another node
  }
}

// What an add-wins set element must be after everything merged. An unknown
// op may have been applied at any time, even after later ones (a paused
// node answers once resumed). A remove takes away only the adds its node
// had seen: certainly those acknowledged by the same node before it.
struct Expect {
  bool mustPresent = false, mustAbsent = false;
};
Expect expectElem(const std::vector<ElemOp>& ops) {
  int lastAck = -1;
  bool unknownAdd = false, unknownRemove = false;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (ops[i].outcome == Outcome::kAck) lastAck = int(i);
    if (ops[i].outcome == Outcome::kUnknown) (ops[i].add ? unknownAdd : unknownRemove) = true;
  }
  Expect e;
  if (lastAck < 0) {
    e.mustAbsent = !unknownAdd;
    return e;
  }
  const ElemOp& last = ops[size_t(lastAck)];
  if (last.add) {
    e.mustPresent = !unknownRemove;
    return e;
  }
  if (unknownAdd) return e;
  bool allAddsSeen = true;
  for (int i = 0; i < lastAck; ++i) {
    if (ops[size_t(i)].add && ops[size_t(i)].outcome == Outcome::kAck &&
        ops[size_t(i)].node != last.node) {
      allAddsSeen = false;
    }
  }
  e.mustAbsent = allAddsSeen;
  return e;
}

// ---- the checker ---------------------------------------------------------------

struct Findings {
  std::set<std::string> lost, unexpected, reordered;
  std::vector<std::string> details;
  void add(std::set<std::string>& kind, const std::string& key, const std::string& detail) {
    kind.insert(key);
    if (details.size() < 30) details.push_back(detail);
  }
};

void checkReview(const std::string& node, const Model& m, const ReviewView& got, Findings& f) {
  std::string key = m.product + "/" + m.author;
  // Content: one of the versions written (acknowledged or unknown), and not
  // older (by HLC) than the last acknowledged one.
  int match = -1, lastAck = -1;
  for (size_t i = 0; i < m.puts.size(); ++i) {
    if (m.puts[i].outcome == Outcome::kAck) lastAck = int(i);
    if (m.puts[i].title == got.title) match = int(i);
  }
  if (match < 0 || m.puts[size_t(match)].outcome == Outcome::kFail) {
    f.add(f.unexpected, key,
          node + ": " + key + " has title '" + got.title +
              "', which no client wrote (or was refused)");
    return;
  }
  const Version& v = m.puts[size_t(match)];
  if (v.rating != got.rating || v.body != got.body) {
    f.add(f.unexpected, key,
          node + ": " + key + " version " + std::to_string(match) + " has rating/body " +
              std::to_string(got.rating) + "/'" + got.body + "', written " +
              std::to_string(v.rating) + "/'" + v.body + "'");
  }
  if (lastAck >= 0 && match != lastAck) {
    const Version& a = m.puts[size_t(lastAck)];
    if (got.editedAtMillis < a.ackMillis) {
      f.add(f.lost, key,
            node + ": " + key + " shows version " + std::to_string(match) + " (stamp " +
                std::to_string(got.editedAtMillis) + " ms), but version " +
                std::to_string(lastAck) + " was acknowledged later with stamp " +
                std::to_string(a.ackMillis) + " ms");
    } else if (match < lastAck) {
      f.reordered.insert(key);
    }
  }
  // Helpful votes: only the count is visible; it must lie in the range the
  // outcomes allow.
  uint32_t lo = 0, hi = 0;
  for (const auto& [voter, ops] : m.votes) {
    Expect e = expectElem(ops);
    if (e.mustPresent) ++lo;
    if (!e.mustAbsent) ++hi;
  }
  if (got.helpful < lo) {
    f.add(f.lost, key + " votes",
          node + ": " + key + " has " + std::to_string(got.helpful) +
              " helpful votes, acknowledged votes say at least " + std::to_string(lo));
  } else if (got.helpful > hi) {
    f.add(f.unexpected, key + " votes",
          node + ": " + key + " has " + std::to_string(got.helpful) + " helpful votes, at most " +
              std::to_string(hi) + " are possible");
  }
  // Tags: each one.
  std::set<std::string> tags(got.tags.begin(), got.tags.end());
  for (const auto& [tag, ops] : m.tags) {
    Expect e = expectElem(ops);
    bool has = tags.erase(tag) != 0;
    if (e.mustPresent && !has) {
      f.add(f.lost, key + " tag " + tag,
            node + ": " + key + " lacks tag " + tag + ", acknowledged last as added");
    }
    if (e.mustAbsent && has) {
      f.add(f.lost, key + " tag " + tag,
            node + ": " + key + " has tag " + tag + ", acknowledged last as removed");
    }
  }
  for (const auto& t : tags) {
    f.add(f.unexpected, key + " tag " + t, node + ": " + key + " has tag " + t + ", never written");
  }
}

void checkNode(const std::string& node, const std::string& address,
               const std::map<std::pair<std::string, std::string>, const Model*>& models,
               Findings& f) {
  api::Client::Options options;
  options.timeout = 20s;
  auto client = api::Client::connect(address, options);
  if (!client.ok()) {
    f.add(f.lost, "unreadable " + node, node + ": cannot connect: " + client.error().toString());
    return;
  }
  std::set<std::pair<std::string, std::string>> seen;
  for (int p = 0; p < kProducts; ++p) {
    std::string product = "p" + std::to_string(p), cursor;
    do {
      auto page = (*client)->list(product, storage::Order::kNewest, cursor, 100);
      if (!page.ok()) {
        f.add(f.lost, "unreadable " + node,
              node + ": list " + product + ": " + page.error().toString());
        return;
      }
      for (const auto& r : page->reviews) {
        auto it = models.find({r.product, r.author});
        if (it == models.end()) {
          f.add(f.unexpected, r.product + "/" + r.author,
                node + ": " + r.product + "/" + r.author + " was never written");
          continue;
        }
        seen.insert({r.product, r.author});
        checkReview(node, *it->second, r, f);
      }
      cursor = page->nextCursor;
    } while (!cursor.empty());
  }
  for (const auto& [key, m] : models) {
    if (seen.count(key)) continue;
    bool acked = false;
    for (const auto& v : m->puts) acked = acked || v.outcome == Outcome::kAck;
    if (!acked) continue;
    // Not listed: ask for it directly too, so the finding says which.
    auto got = (*client)->get(key.first, key.second);
    f.add(f.lost, key.first + "/" + key.second,
          node + ": " + key.first + "/" + key.second +
              " was acknowledged but is not listed (get: " +
              (got.ok() ? "found '" + got->title + "'" : got.error().toString()) + ")");
  }
}

// Merkle roots of every node (hex), or nullopt if one does not answer.
std::optional<std::vector<std::string>> roots(Nodes& nodes) {
  std::vector<std::string> out;
  api::Client::Options options;
  options.timeout = 2s;
  for (int i = 0; i < nodes.size(); ++i) {
    auto client = api::Client::connect(nodes.rpc(i), options);
    if (!client.ok()) return std::nullopt;
    auto st = (*client)->status();
    if (!st.ok()) return std::nullopt;
    std::string hex;
    char b[3];
    for (auto byte : st->merkleRoot) {
      std::snprintf(b, sizeof b, "%02x", unsigned(byte));
      hex += b;
    }
    out.push_back(hex);
  }
  return out;
}

std::string logLine(const std::string& s) {
  std::fprintf(stderr, "chaos: %s\n", s.c_str());
  return s;
}

}  // namespace

Report run(const Config& c) {
  Report rep;
  auto began = Clock::now();
  struct sigaction sa {};
  sa.sa_handler = onSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::string dir = c.dir;
  if (dir.empty()) {
    std::string pattern = (std::filesystem::temp_directory_path() / "chorus-chaos-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      rep.problems.push_back(std::string("mkdtemp: ") + std::strerror(errno));
      return rep;
    }
    dir = pattern;
  } else {
    std::filesystem::create_directories(dir);
  }
  rep.dir = dir;
  std::ofstream nemesisLog(dir + "/nemesis.log");
  auto note = [&](const std::string& s) {
    nemesisLog << s << "\n";
    nemesisLog.flush();
    if (c.verbose) logLine(s);
  };

  auto faults = schedule(c);
  note("seed " + std::to_string(c.seed) + ", schedule of " + std::to_string(faults.size()) +
       " faults:");
  for (const auto& f : faults) note("  " + describe(f));

  Nodes nodes(c, dir);
  for (int i = 0; i < c.nodes; ++i) {
    std::string why;
    if (!nodes.start(i, 0, why)) {
      rep.problems.push_back("start: " + why);
      return rep;
    }
  }
  logLine(std::to_string(c.nodes) + " nodes up under " + dir + "; " + std::to_string(c.clients) +
          " clients for " + std::to_string(int(c.durationS)) + " s, seed " +
          std::to_string(c.seed));

  // The partition in force: per node, who it drops. Applied to each node
  // that is up and not paused; a node restarted or resumed gets it again.
  std::vector<std::vector<int>> plan(static_cast<size_t>(c.nodes));
  auto apply = [&](int i) {
    if (nodes.down(i) || nodes.paused(i)) return;
    api::Client::Options options;
    options.timeout = 3s;
    std::vector<std::string> ids;
    for (int j : plan[size_t(i)]) ids.push_back(nodeId(j));
    for (int attempt = 0; attempt < 3; ++attempt) {
      auto client = api::Client::connect(nodes.rpc(i), options);
      if (client.ok() && (*client)->heal().ok() &&
          (ids.empty() || (*client)->partition(ids).ok())) {
        return;
      }
      std::this_thread::sleep_for(100ms);
    }
    note("could not set " + nodeId(i) + "'s partition (it will get the final heal)");
  };
  std::vector<std::string> crashes;

  std::atomic<bool> stopClients{false};
  std::vector<History> histories(static_cast<size_t>(c.clients));
  std::vector<std::thread> threads;
  auto workloadStart = Clock::now();
  for (int k = 0; k < c.clients; ++k) {
    threads.emplace_back(clientLoop, k, std::cref(c), std::ref(nodes), std::ref(stopClients),
                         std::ref(histories[size_t(k)]));
  }

  auto sleepUntil = [&](double at) {
    while (!g_interrupted.load() && since(workloadStart) < at) {
      std::this_thread::sleep_for(10ms);
    }
  };
  for (const auto& f : faults) {
    sleepUntil(f.at);
    if (g_interrupted.load()) break;
    nodes.noticeExits(crashes);
    std::string why;
    char late[48];
    std::snprintf(late, sizeof late, " (at %.2f s)", since(workloadStart));
    note(describe(f) + late);
    switch (f.kind) {
      case Fault::kPartition:
        plan = f.blocked;
        for (int i = 0; i < c.nodes; ++i) apply(i);
        ++rep.partitions;
        ++rep.shapes[f.shape];
        break;
      case Fault::kHeal:
        plan.assign(size_t(c.nodes), {});
        for (int i = 0; i < c.nodes; ++i) apply(i);
        ++rep.heals;
        break;
      case Fault::kKill:
        if (nodes.down(f.node)) break;
        nodes.kill9(f.node);
        ++rep.kills;
        break;
      case Fault::kRestart:
        if (!nodes.down(f.node)) break;
        if (!nodes.start(f.node, nodes.offsetMs(f.node), why)) note("restart failed: " + why);
        apply(f.node);
        break;
      case Fault::kPause:
        if (nodes.down(f.node)) break;
        nodes.pause(f.node);
        ++rep.pauses;
        break;
      case Fault::kResume:
        nodes.resume(f.node);
        apply(f.node);
        break;
      case Fault::kSkew:
      case Fault::kUnskew: {
        int64_t offset = f.kind == Fault::kSkew ? f.offsetMs : 0;
        if (nodes.down(f.node) || nodes.offsetMs(f.node) == offset) break;
        nodes.stop(f.node);
        if (!nodes.start(f.node, offset, why)) note("restart failed: " + why);
        apply(f.node);
        if (f.kind == Fault::kSkew) {
          ++rep.skews;
          rep.maxSkewMs = std::max(rep.maxSkewMs, std::abs(offset));
        }
        break;
      }
    }
  }
  sleepUntil(c.durationS);
  stopClients.store(true);
  for (auto& t : threads) t.join();
  rep.workloadS = since(workloadStart);
  nodes.noticeExits(crashes);

  // The end: every node running with its clock right, then heal all.
  for (int i = 0; i < c.nodes && !g_interrupted.load(); ++i) {
    std::string why;
    nodes.resume(i);
    if (!nodes.down(i) && nodes.offsetMs(i) != 0) nodes.stop(i);
    if (nodes.down(i) && !nodes.start(i, 0, why)) {
      rep.problems.push_back("final restart: " + why);
    }
  }
  plan.assign(size_t(c.nodes), {});
  for (int i = 0; i < c.nodes; ++i) apply(i);
  auto healed = Clock::now();
  note("final heal at " + std::to_string(since(workloadStart)) + " s");
  double timeout = c.convergeTimeoutS + std::max(0.0, c.maxSkewS - 60);
  std::vector<std::string> last;
  while (!g_interrupted.load() && since(healed) < timeout) {
    auto r = roots(nodes);
    if (r) {
      last = *r;
      if (std::all_of(r->begin(), r->end(),
                      [&](const std::string& x) { return x == r->front(); })) {
        rep.converged = true;
        rep.convergeS = since(healed);
        break;
      }
    }
    std::this_thread::sleep_for(100ms);
  }
  if (!rep.converged && !g_interrupted.load()) {
    std::string detail = "no convergence within " + std::to_string(int(timeout)) + " s; roots:";
    for (size_t i = 0; i < last.size(); ++i) detail += " " + nodeId(int(i)) + "=" + last[i];
    rep.problems.push_back(detail);
  }
  note("converged: " + std::string(rep.converged ? "yes" : "no"));

  // The checker, on every node.
  std::map<std::pair<std::string, std::string>, const Model*> models;
  for (const auto& h : histories) {
    rep.operations += h.ops;
    rep.acknowledged += h.ack;
    rep.failed += h.fail;
    rep.unknown += h.unknown;
    for (const auto& m : h.reviews) models[{m.product, m.author}] = &m;
  }
  rep.reviews = models.size();
  if (c.selfTest && !g_interrupted.load()) {
    auto client = api::Client::connect(nodes.rpc(0));
    if (client.ok()) {
      WriteRequest w;
      w.product = "p0";
      w.author = "intruder";
      w.rating = 3;
      w.title = "never written by a client";
      note("self-test: put p0/intruder: " +
           std::string((*client)->write(w).ok() ? "ok" : "failed"));
      bool done = false;
      for (const auto& [key, m] : models) {
        for (const auto& [tag, ops] : m->tags) {
          if (done || !expectElem(ops).mustPresent) continue;
          w.op = WriteOp::kUntag;
          w.product = key.first;
          w.author = key.second;
          w.arg = tag;
          done = (*client)->write(w).ok();
          note("self-test: untag " + key.first + "/" + key.second + " " + tag);
        }
      }
    }
  }
  Findings f;
  if (!g_interrupted.load()) {
    for (int i = 0; i < c.nodes; ++i) checkNode(nodeId(i), nodes.rpc(i), models, f);
  }
  nodes.noticeExits(crashes);
  rep.lost = f.lost.size();
  rep.unexpected = f.unexpected.size();
  rep.reordered = f.reordered.size();
  for (auto& d : f.details) rep.problems.push_back(d);
  for (auto& d : crashes) rep.problems.push_back("crash: " + d);
  rep.crashes = crashes.size();
  rep.interrupted = g_interrupted.load();
  nodes.stopAll();
  // Each store, reopened here, must verify: its Merkle tree and aggregates
  // recomputed from its documents match the stored ones.
  for (int i = 0; i < c.nodes && !rep.interrupted; ++i) {
    storage::Options so;
    so.dir = dir + "/" + nodeId(i);
    auto store = storage::Store::open(so);
    Status v = store.ok() ? (*store)->verify() : Status(store.error());
    if (!v.ok()) {
      ++rep.unverified;
      rep.problems.push_back(nodeId(i) + ": store does not verify: " + v.error().toString());
    }
  }
  rep.totalS = since(began);

  bool keep = c.keep || !rep.ok() || !c.dir.empty();  // never delete a directory we were given
  if (!rep.ok()) {
    // The whole history, for whoever reads the failure.
    std::ofstream out(dir + "/history.log");
    for (const auto& [key, m] : models) {
      out << key.first << "/" << key.second << "\n";
      for (size_t i = 0; i < m->puts.size(); ++i) {
        const auto& v = m->puts[i];
        out << "  put v" << i << " on " << nodeId(v.node) << ": "
            << (v.outcome == Outcome::kAck    ? "ack"
                : v.outcome == Outcome::kFail ? "fail"
                                              : "unknown")
            << " stamp " << v.ackMillis << " rating " << v.rating << "\n";
      }
      for (const auto* set : {&m->votes, &m->tags}) {
        for (const auto& [e, ops] : *set) {
          out << "  " << e << ":";
          for (const auto& o : ops) {
            out << " " << (o.add ? "+" : "-") << nodeId(o.node) << "/"
                << (o.outcome == Outcome::kAck    ? "ack"
                    : o.outcome == Outcome::kFail ? "fail"
                                                  : "unk");
          }
          out << "\n";
        }
      }
    }
  }
  if (keep) {
    rep.dir = dir;
  } else {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
    rep.dir.clear();
  }
  return rep;
}

std::string toJson(const Report& r, const Config& c) {
  std::ostringstream o;
  auto str = [](const std::string& s) {
    std::string out = "\"";
    for (char ch : s) {
      if (ch == '"' || ch == '\\') {
        out += '\\';
        out += ch;
      } else if (static_cast<unsigned char>(ch) < 0x20) {
        char b[8];
        std::snprintf(b, sizeof b, "\\u%04x", unsigned(ch));
        out += b;
      } else {
        out += ch;
      }
    }
    return out + "\"";
  };
  char conv[32];
  std::snprintf(conv, sizeof conv, "%.3f", r.convergeS);
  o << "{\"ok\":" << (r.ok() ? "true" : "false") << ",\"seed\":" << c.seed
    << ",\"nodes\":" << c.nodes << ",\"clients\":" << c.clients << ",\"duration_s\":" << c.durationS
    << ",\"operations\":" << r.operations << ",\"acknowledged\":" << r.acknowledged
    << ",\"failed\":" << r.failed << ",\"unknown\":" << r.unknown << ",\"lost\":" << r.lost
    << ",\"unexpected\":" << r.unexpected << ",\"reordered\":" << r.reordered
    << ",\"reviews\":" << r.reviews << ",\"partitions\":" << r.partitions
    << ",\"partition_shapes\":{";
  bool first = true;
  for (const auto& [shape, n] : r.shapes) {
    o << (first ? "" : ",") << str(shape) << ":" << n;
    first = false;
  }
  o << "},\"heals\":" << r.heals << ",\"kills\":" << r.kills << ",\"pauses\":" << r.pauses
    << ",\"skews\":" << r.skews << ",\"max_skew_ms\":" << r.maxSkewMs
    << ",\"converged\":" << (r.converged ? "true" : "false") << ",\"converge_s\":" << conv
    << ",\"crashes\":" << r.crashes << ",\"unverified\":" << r.unverified
    << ",\"interrupted\":" << (r.interrupted ? "true" : "false") << ",\"dir\":" << str(r.dir)
    << ",\"problems\":[";
  for (size_t i = 0; i < r.problems.size(); ++i) o << (i ? "," : "") << str(r.problems[i]);
  o << "]}";
  return o.str();
}

std::string toText(const Report& r, const Config& c) {
  std::ostringstream o;
  char line[256];
  std::snprintf(line, sizeof line,
                "chorus-chaos: seed %llu, %d nodes, %d clients, %.1f s of faults\n",
                static_cast<unsigned long long>(c.seed), c.nodes, c.clients, r.workloadS);
  o << line;
  o << "operations " << r.operations << ": acknowledged " << r.acknowledged << ", failed "
    << r.failed << ", unknown " << r.unknown << " (" << r.reviews << " reviews)\n";
  o << "faults: " << r.partitions << " partitions (";
  bool first = true;
  for (const auto& [shape, n] : r.shapes) {
    o << (first ? "" : ", ") << shape << " " << n;
    first = false;
  }
  o << "), " << r.heals << " heals, " << r.kills << " kills, " << r.pauses << " pauses, " << r.skews
    << " clock skews (max " << r.maxSkewMs / 1000.0 << " s)\n";
  if (r.interrupted) {
    o << "interrupted: not converged, not checked\n";
  } else if (r.converged) {
    std::snprintf(line, sizeof line, "converged %.2f s after the final heal\n", r.convergeS);
    o << line;
  } else {
    o << "NOT converged after the final heal\n";
  }
  if (!r.interrupted) {
    o << "checked every node: lost " << r.lost << ", unexpected " << r.unexpected
      << ", reordered by clock " << r.reordered << "; stores failing verify " << r.unverified
      << "\n";
  }
  for (const auto& p : r.problems) o << "  " << p << "\n";
  if (!r.dir.empty()) {
    o << "data and logs (n*.log, nemesis.log" << (r.ok() ? "" : ", history.log") << "): " << r.dir
      << "\n";
  }
  o << (r.ok() ? "OK" : "FAILED") << "\n";
  return o.str();
}

}  // namespace chorus::chaos
