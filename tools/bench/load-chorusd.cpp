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

Result<std::unique_ptr<LocalChorusd>> LocalChorusd::spawn(const std::string& binary,
                                                          const std::vector<std::string>& args,
                                                          const std::string& log) {
  int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return makeError(ErrorCode::kIo, "cannot create " + log);
  std::vector<std::string> argvStrings = {binary};
  argvStrings.insert(argvStrings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argvStrings) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    ::close(fd);
    return makeError(ErrorCode::kIo, "fork failed");
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // a killed bench does not leave it running
    dup2(fd, 1);
    dup2(fd, 2);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  ::close(fd);
  return std::unique_ptr<LocalChorusd>(new LocalChorusd(pid, log));
}

Result<std::string> LocalChorusd::waitFor(const std::string& what,
                                          std::chrono::milliseconds limit) {
  const std::string needle = "chorusd: " + what + " on ";
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (true) {
    std::string text = readFile(log_);
    size_t at = text.find(needle);
    if (at != std::string::npos) {
      size_t end = text.find('\n', at);
      if (end != std::string::npos) {
        std::string address = text.substr(at + needle.size(), end - at - needle.size());
        if (what == "listening") address_ = address;
        return address;
      }
    }
    if (!running()) {
      return makeError(ErrorCode::kUnavailable,
                       "chorusd exited before '" + needle + "...': " + tail(text, 600));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return makeError(ErrorCode::kUnavailable, "chorusd did not say '" + needle + "...' within " +
                                                    std::to_string(limit.count() / 1000) +
                                                    " s: " + tail(text, 600));
    }
    std::this_thread::sleep_for(10ms);
  }
}

bool LocalChorusd::running() {
  if (exited_) return false;
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_ || r < 0) exited_ = true;
  return !exited_;
}

bool LocalChorusd::stop(int sig, std::chrono::milliseconds limit) {
  if (!running()) return true;
  kill(pid_, sig);
  if (waitExit(pid_, limit)) exited_ = true;
  return exited_;
}

Result<std::unique_ptr<LocalChorusd>> LocalChorusd::start(const std::string& binary,
                                                          const std::string& dir,
                                                          bool unsafeNoSync, bool http) {
  std::string log = dir + "/chorusd.log";
  std::vector<std::string> args = {"--node-id",       "load-bench",   "--data-dir",
                                   dir + "/node",     "--listen",     "127.0.0.1:0",
                                   "--no-auth",       "--rate-limit", "0",
                                   "--max-in-flight", "100000",       "--max-unfinished-calls",
                                   "100000",          "--log-level",  "warn"};
  if (unsafeNoSync) args.push_back("--unsafe-no-sync");
  if (http) args.insert(args.end(), {"--http-listen", "127.0.0.1:0"});
  ::unlink(log.c_str());  // a fresh log
  auto child = spawn(binary, args, log);
  if (!child.ok()) return child.error();
  auto address = (*child)->waitFor("listening", 30s);
  if (!address.ok()) {
    (*child)->stop(SIGKILL, 10s);
    return address.error();
  }
  if (http) {
    auto url = (*child)->waitFor("http", 30s);  // "http://HOST:PORT/v1/"
    if (!url.ok()) {
      (*child)->stop(SIGKILL, 10s);
      return url.error();
    }
    std::string hostPort = url->substr(url->find("//") + 2);
    (*child)->httpAddress_ = hostPort.substr(0, hostPort.find('/'));
  }
  return std::move(child).value();
}

LocalChorusd::~LocalChorusd() {
  if (!stop(SIGTERM, 30s)) stop(SIGKILL, 10s);
}

}  // namespace chorus::bench
