#include "tools/bench/load-chorusd.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

namespace chorus::bench {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string tail(const std::string& text, size_t bytes) {
  return text.size() <= bytes ? text : "..." + text.substr(text.size() - bytes);
}

// Waits up to `limit` for `pid` to exit; true if it did.
bool waitExit(pid_t pid, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (true) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid || r < 0) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
}

}  // namespace

std::string LocalChorusd::defaultBinary() {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (fs::path candidate : {self.parent_path().parent_path() / "chorusd" / "chorusd",
                               self.parent_path() / "chorusd"}) {
      if (fs::exists(candidate, ec)) return candidate.string();
    }
  }
  return "chorusd";
}

Result<std::unique_ptr<LocalChorusd>> LocalChorusd::start(const std::string& binary,
                                                          const std::string& dir, bool unsafeNoSync,
                                                          bool http) {
  std::string log = dir + "/chorusd.log";
  std::vector<std::string> args = {binary,
                                   "--node-id",
                                   "load-bench",
                                   "--data-dir",
                                   dir + "/node",
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--no-auth",
                                   "--rate-limit",
                                   "0",
                                   "--max-in-flight",
                                   "100000",
                                   "--max-unfinished-calls",
                                   "100000",
                                   "--log-level",
                                   "warn"};
  if (unsafeNoSync) args.push_back("--unsafe-no-sync");
  if (http) args.insert(args.end(), {"--http-listen", "127.0.0.1:0"});
  int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return makeError(ErrorCode::kIo, "cannot create " + log);
  pid_t pid = fork();
  if (pid < 0) {
    ::close(fd);
    return makeError(ErrorCode::kIo, "fork failed");
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // a killed bench does not leave it running
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  ::close(fd);
  const std::string needle = "chorusd: listening on ";
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < deadline) {
    std::string text = readFile(log);
    // The rest of the line after `prefix`, once the line is complete.
    auto after = [&](const std::string& prefix) -> std::string {
      size_t at = text.find(prefix);
      if (at == std::string::npos) return "";
      size_t end = text.find('\n', at);
      if (end == std::string::npos) return "";
      return text.substr(at + prefix.size(), end - at - prefix.size());
    };
    std::string rpc = after(needle);
    std::string httpUrl = http ? after("chorusd: http on http://") : "";  // HOST:PORT/v1/
    if (!rpc.empty() && (!http || !httpUrl.empty())) {
      return std::unique_ptr<LocalChorusd>(
          new LocalChorusd(pid, rpc, httpUrl.substr(0, httpUrl.find('/'))));
    }
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return makeError(ErrorCode::kUnavailable,
                       binary + " exited before listening: " + tail(text, 600));
    }
    std::this_thread::sleep_for(10ms);
  }
  kill(pid, SIGKILL);
  waitExit(pid, 10s);
  return makeError(ErrorCode::kUnavailable,
                   binary + " did not listen within 30 s: " + tail(readFile(log), 600));
}

LocalChorusd::~LocalChorusd() {
  kill(pid_, SIGTERM);
  if (!waitExit(pid_, 30s)) {
    kill(pid_, SIGKILL);
    waitExit(pid_, 10s);
  }
}

}  // namespace chorus::bench
