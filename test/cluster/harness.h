// Multi-process cluster tests: chorusd nodes as child processes on loopback
// (output to a log file per node, so a chatty node never blocks on a pipe),
// the `chorus` CLI run with bounded waits, and polling with deadlines that
// fail with every node's log. Needs CHORUSD_BIN and CHORUS_BIN (set by
// test/meson.build).
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../api/temp-dir.h"
#include "json.h"

namespace chorus::test::cluster {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

inline std::string bin(const char* var) {
  const char* v = std::getenv(var);
  REQUIRE_MESSAGE(v != nullptr, var << " must name the built binary");
  return v;
}

inline double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

inline std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::string tail(const std::string& s, size_t n) {
  return s.size() <= n ? s : "..." + s.substr(s.size() - n);
}

// fork + execv with stdout and stderr redirected to fds; -1 on failure.
// Nothing is allocated between fork and exec (tests fork while other
// threads run).
inline pid_t spawn(const std::string& path, const std::vector<std::string>& args, int outFd,
                   int errFd) {
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(path.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid != 0) return pid;
  dup2(outFd, 1);
  dup2(errFd, 2);
  int nullIn = open("/dev/null", O_RDONLY);
  if (nullIn >= 0) dup2(nullIn, 0);
  for (int fd = 3; fd < 1024; ++fd) close(fd);
  execv(path.c_str(), argv.data());
  const char msg[] = "exec failed: errno ";
  char num[16];
  int n = 0;
  for (int e = errno; n == 0 || e > 0; e /= 10) num[n++] = char('0' + e % 10);
  if (write(2, msg, sizeof msg - 1) < 0 || write(2, path.c_str(), 0) < 0) _exit(127);
  while (n > 0 && write(2, &num[--n], 1) == 1) {
  }
  _exit(127);
}

// Waits (bounded) for `pid`; the exit status, 128+signal, or -1 on timeout.
inline int waitExit(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (true) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0) return -1;
    if (Clock::now() > deadline) return -1;
    usleep(2000);
  }
}

struct RunResult {
  bool started = false;  // the pipes and the process were made
  int code = -1;         // -1: not started, or did not finish in time (it was killed)
  std::string out;
  std::string err;
  double seconds = 0;
};

// Runs a short-lived program, collecting stdout and stderr apart; killed
// (SIGKILL) if it has not finished within `timeout`. No assertions, so it
// also serves before doctest runs and in destructors (test/netns).
inline RunResult runQuiet(const std::string& path, const std::vector<std::string>& args,
                          std::chrono::milliseconds timeout) {
  RunResult res;
  auto start = Clock::now();
  int out[2], err[2];
  if (pipe(out) != 0) return res;
  if (pipe(err) != 0) {
    close(out[0]);
    close(out[1]);
    return res;
  }
  pid_t pid = spawn(path, args, out[1], err[1]);
  close(out[1]);
  close(err[1]);
  res.started = pid > 0;
  bool outOpen = res.started, errOpen = res.started;
  auto deadline = start + timeout;
  while (outOpen || errOpen) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) break;
    pollfd fds[2] = {{outOpen ? out[0] : -1, POLLIN, 0}, {errOpen ? err[0] : -1, POLLIN, 0}};
    if (poll(fds, 2, static_cast<int>(left.count())) <= 0) continue;
    char buf[8192];
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        (i == 0 ? outOpen : errOpen) = false;
      } else {
        (i == 0 ? res.out : res.err).append(buf, size_t(n));
      }
    }
  }
  close(out[0]);
  close(err[0]);
  if (!res.started) return res;
  int code = -1;
  if (!outOpen && !errOpen) code = waitExit(pid, 5s);  // both pipes at EOF: exiting
  if (code < 0) {
    kill(pid, SIGKILL);
    waitExit(pid, 5s);
    code = -1;
  }
  res.code = code;
  res.seconds = secondsSince(start);
  return res;
}

// runQuiet, failing the test case if the program could not be started.
inline RunResult run(const std::string& path, const std::vector<std::string>& args,
                     std::chrono::milliseconds timeout) {
  RunResult res = runQuiet(path, args, timeout);
  REQUIRE_MESSAGE(res.started, "could not start " << path << " (pipe or fork failed)");
  return res;
}

// Does `chorusd --help` mention `flag`? (Optional speed-ups such as
// --unsafe-no-sync are used only when the daemon has them.)
inline bool chorusdHas(const std::string& flag) {
  static std::map<std::string, bool> cache;
  auto it = cache.find(flag);
  if (it != cache.end()) return it->second;
  auto help = run(bin("CHORUSD_BIN"), {"--help"}, 10s);
  bool has = help.out.find(flag) != std::string::npos;
  cache[flag] = has;
  return has;
}

// One chorusd process. Its stdout and stderr are appended to `logPath`;
// the destructor stops it (SIGTERM, then SIGKILL) by its PID.
class Daemon {
 public:
  Daemon(const std::string& logPath, const std::vector<std::string>& args) : logPath_(logPath) {
    struct stat st {};
    logOffset_ = stat(logPath.c_str(), &st) == 0 ? size_t(st.st_size) : 0;
    int fd = open(logPath.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    pid_ = spawn(bin("CHORUSD_BIN"), args, fd, fd);
    close(fd);
    REQUIRE(pid_ > 0);
  }
  ~Daemon() {
    if (pid_ > 0 && !exited_) {
      if (stop(SIGTERM, 10s) < 0) stop(SIGKILL, 10s);
    }
  }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Waits for "chorusd: listening on" (and "chorusd: gossip on" if
  // `gossip`); false at the deadline or if the process exited.
  bool waitStarted(bool gossip, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      std::string out = ownLog();
      rpc_ = after(out, "chorusd: listening on ");
      gossip_ = after(out, "chorusd: gossip on ");
      http_ = after(out, "chorusd: http on ");  // "http://HOST:PORT/v1/"; empty without one
      if (!rpc_.empty() && (!gossip || !gossip_.empty())) return true;
      if (!running()) return false;
      usleep(5000);
    }
    return false;
  }

  bool running() {
    if (exited_) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exited_ = true;
      code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    return !exited_;
  }

  // Sends `sig`, waits (bounded); the exit status, 128+signal, -1 on timeout.
  int stop(int sig, std::chrono::milliseconds timeout) {
    if (!running()) return code_;
    kill(pid_, sig);
    int code = waitExit(pid_, timeout);
    if (code >= 0) {
      exited_ = true;
      code_ = code;
    }
    return code;
  }

  pid_t pid() const { return pid_; }
  const std::string& rpc() const { return rpc_; }
  const std::string& gossip() const { return gossip_; }
  // The HTTP API's base URL ("http://127.0.0.1:PORT/v1/") with --http-listen.
  const std::string& http() const { return http_; }
  // What this process wrote (not earlier incarnations sharing the file).
  std::string ownLog() const {
    std::string all = readFile(logPath_);
    return all.size() > logOffset_ ? all.substr(logOffset_) : std::string();
  }

 private:
  static std::string after(const std::string& out, const std::string& prefix) {
    size_t at = out.find(prefix);
    if (at == std::string::npos) return "";
    size_t begin = at + prefix.size();
    size_t end = out.find('\n', begin);
    if (end == std::string::npos) return "";  // line not complete yet
    return out.substr(begin, end - begin);
  }

  std::string logPath_;
  size_t logOffset_ = 0;
  pid_t pid_ = -1;
  bool exited_ = false;
  int code_ = -1;
  std::string rpc_, gossip_, http_;
};

// Writes a new cluster key (from `chorus cluster keys generate`) to `path`,
// mode 0600; REQUIREs success.
inline void writeClusterKeyFile(const std::string& path) {
  auto r = run(bin("CHORUS_BIN"), {"cluster", "keys", "generate"}, 20s);
  REQUIRE_MESSAGE(r.code == 0, "chorus cluster keys generate: " << r.err);
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, r.out.data(), r.out.size()) == ssize_t(r.out.size()));
  close(fd);
}

// A set of nodes named n1, n2, ... under one temporary directory. They
// share one cluster key (generated per harness) and serve RPC without
// tokens (--no-auth) unless `tokensFile` is set.
class Harness {
 public:
  static inline std::string antiEntropyMs = "200";

  // Client auth of nodes started from now on: empty = --no-auth; else
  // --tokens-file tokensFile, and chorus() passes --token-file cliTokenFile
  // (when set).
  std::string tokensFile, cliTokenFile;
  // Per node id: a cluster key file to start it with instead of the shared one.
  std::map<std::string, std::string> keyFileFor;

  // The cluster key file every node of this harness starts with.
  const std::string& clusterKeyFile() {
    if (keyFile_.empty()) {
      keyFile_ = tmp_.sub("cluster.key");
      writeClusterKeyFile(keyFile_);
    }
    return keyFile_;
  }

  // Starts chorusd `id` on loopback (ports 0 unless given), joining
  // through the gossip addresses in `join`.
  Daemon& start(const std::string& id, const std::vector<std::string>& join = {},
                const std::vector<std::string>& extra = {}, const std::string& rpcPort = "0",
                const std::string& gossipPort = "0") {
    Daemon* d = tryStart(id, join, extra, rpcPort, gossipPort);
    REQUIRE_MESSAGE(d != nullptr, "chorusd " << id << " did not start:\n" << node(id).ownLog());
    return *d;
  }

  // Restarts a stopped or killed node on its previous ports, without --join.
  // Should a port have been taken meanwhile (an outgoing connection of this
  // test may get it as its ephemeral port), it starts on new ports instead:
  // the node finds its peers from its member list either way.
  Daemon& restart(const std::string& id, const std::vector<std::string>& extra = {}) {
    Daemon& old = node(id);
    std::string rpcPort = port(old.rpc()), gossipPort = port(old.gossip());
    if (Daemon* d = tryStart(id, {}, extra, rpcPort, gossipPort)) return *d;
    MESSAGE("restarting " << id << " on its old ports failed, using new ones:\n"
                          << node(id).ownLog());
    return start(id, {}, extra);
  }

  // Starts chorusd `id`; nullptr if it did not get to serving within 20 s.
  Daemon* tryStart(const std::string& id, const std::vector<std::string>& join,
                   const std::vector<std::string>& extra, const std::string& rpcPort,
                   const std::string& gossipPort) {
    std::vector<std::string> args = {"--node-id",       id,
                                     "--data-dir",      dataDir(id),
                                     "--listen",        "127.0.0.1:" + rpcPort,
                                     "--gossip-listen", "127.0.0.1:" + gossipPort,
                                     "--log-level",     "info"};
    if (chorusdHas("--anti-entropy-interval")) {
      args.insert(args.end(), {"--anti-entropy-interval", antiEntropyMs});
    }
    if (chorusdHas("--unsafe-no-sync")) args.push_back("--unsafe-no-sync");
    auto ownKey = keyFileFor.find(id);
    args.insert(args.end(), {"--cluster-key-file",
                             ownKey != keyFileFor.end() ? ownKey->second : clusterKeyFile()});
    if (tokensFile.empty()) {
      args.push_back("--no-auth");
    } else {
      args.insert(args.end(), {"--tokens-file", tokensFile});
    }
    for (const auto& j : join) args.insert(args.end(), {"--join", j});
    args.insert(args.end(), extra.begin(), extra.end());
    auto& slot = nodes_[id];
    slot.reset();  // a previous incarnation is stopped first
    slot = std::make_unique<Daemon>(tmp_.sub(id + ".log"), args);
    return slot->waitStarted(true, 20s) ? slot.get() : nullptr;
  }

  // Stops every running node with SIGTERM (all at once) and CHECKs that
  // each exits 0 within 15 s having printed "chorusd: stopped".
  void stopAll() {
    std::vector<std::string> running;
    for (auto& [id, d] : nodes_) {
      if (d->running()) {
        kill(d->pid(), SIGTERM);
        running.push_back(id);
      }
    }
    for (const auto& id : running) {
      Daemon& d = *nodes_[id];
      int code = d.stop(SIGTERM, 15s);
      CHECK_MESSAGE(code == 0, "chorusd " << id << " exited " << code << " on SIGTERM\n"
                                          << tail(d.ownLog(), 4000));
      if (code == 0) CHECK(d.ownLog().find("chorusd: stopped") != std::string::npos);
    }
  }

  Daemon& node(const std::string& id) {
    auto it = nodes_.find(id);
    REQUIRE_MESSAGE(it != nodes_.end(), "no node " << id);
    return *it->second;
  }
  std::vector<std::string> ids() const {
    std::vector<std::string> out;
    for (const auto& [id, d] : nodes_) out.push_back(id);
    return out;
  }
  std::string dataDir(const std::string& id) const { return tmp_.sub(id); }
  // Every node's RPC address (its latest incarnation's, running or not),
  // comma-separated: the operator's node list for `chorus cluster`.
  std::string rpcAddresses() const {
    std::string out;
    for (const auto& [id, d] : nodes_) {
      if (!d->rpc().empty()) out += (out.empty() ? "" : ",") + d->rpc();
    }
    return out;
  }
  const TempDir& tmp() const { return tmp_; }

  // The end of every node's log, for failure messages.
  std::string logs(size_t perNode = 6000) const {
    std::string out;
    for (const auto& [id, d] : nodes_) {
      out += "----- " + id + " (pid " + std::to_string(d->pid()) + ", " + tmp_.sub(id + ".log") +
             ") -----\n" + tail(readFile(tmp_.sub(id + ".log")), perNode) + "\n";
    }
    return out;
  }

  // `chorus --connect <id's address> args...`. A `cluster` command that
  // talks to nodes also gets `--nodes` with every node's RPC address (the
  // CLI asks only the nodes it is given), unless `args` has its own.
  RunResult chorus(const std::string& id, std::vector<std::string> args,
                   std::chrono::milliseconds timeout = 20s) {
    auto has = [&](const char* a) { return std::find(args.begin(), args.end(), a) != args.end(); };
    if (has("cluster") && !has("generate") && !has("--nodes") && !has("--nodes-file")) {
      args.insert(args.end(), {"--nodes", rpcAddresses()});
    }
    args.insert(args.begin(), {"--connect", node(id).rpc()});
    if (!cliTokenFile.empty()) args.insert(args.begin(), {"--token-file", cliTokenFile});
    return run(bin("CHORUS_BIN"), args, timeout);
  }

  // `chorus --json args...` on `id`; CHECKs exit 0 and valid JSON; a null
  // Json on failure.
  Json chorusJson(const std::string& id, std::vector<std::string> args) {
    args.insert(args.begin(), "--json");
    auto r = chorus(id, args);
    std::string cmd;
    for (const auto& a : args) cmd += " " + a;
    if (r.code != 0) {
      FAIL_CHECK("chorus" << cmd << " on " << id << " exited " << r.code << "\nstdout: " << r.out
                          << "\nstderr: " << r.err);
      return Json();
    }
    auto j = Json::parse(r.out);
    if (!j) {
      FAIL_CHECK("chorus" << cmd << " on " << id << ": not JSON: " << r.out);
      return Json();
    }
    return *j;
  }

  // Polls `done` every 50 ms until it holds or `timeout` passes; on timeout
  // fails the test case with `what`, `detail()` and every node's log.
  bool waitUntil(const std::string& what, std::chrono::milliseconds timeout,
                 const std::function<bool()>& done,
                 const std::function<std::string()>& detail = {}) {
    auto deadline = Clock::now() + timeout;
    while (true) {
      if (done()) return true;
      if (Clock::now() > deadline) break;
      std::this_thread::sleep_for(50ms);
    }
    FAIL_CHECK("timed out after " << timeout.count() << " ms waiting for: " << what << "\n"
                                  << (detail ? detail() : std::string()) << "\n"
                                  << logs());
    return false;
  }

  static std::string port(const std::string& address) {
    return address.substr(address.rfind(':') + 1);
  }

 private:
  TempDir tmp_;
  std::string keyFile_;
  std::map<std::string, std::unique_ptr<Daemon>> nodes_;
};

}  // namespace chorus::test::cluster
