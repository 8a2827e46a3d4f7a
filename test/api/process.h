// Child processes for end-to-end tests: started with a pipe on stdout and
// stderr, read with deadlines, stopped by PID. Every wait is bounded.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace chorus::test {

using Clock = std::chrono::steady_clock;

class Process {
 public:
  // Starts `path args...`; stdout and stderr both go to the pipe read by
  // readLine/readAll.
  Process(const std::string& path, const std::vector<std::string>& args) {
    int fds[2];
    if (pipe(fds) != 0) std::abort();
    pid_ = fork();
    if (pid_ < 0) std::abort();
    if (pid_ == 0) {
      dup2(fds[1], 1);
      dup2(fds[1], 2);
      close(fds[0]);
      close(fds[1]);
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(path.c_str()));
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(path.c_str(), argv.data());
      _exit(127);
    }
    close(fds[1]);
    fd_ = fds[0];
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      wait(std::chrono::seconds(10));
    }
    if (fd_ >= 0) close(fd_);
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& output() const { return out_; }

  // The next line containing `needle`, or nullopt at the deadline or EOF.
  std::optional<std::string> waitForLine(const std::string& needle,
                                         std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (true) {
      size_t nl;
      while ((nl = pending_.find('\n')) != std::string::npos) {
        std::string line = pending_.substr(0, nl);
        pending_.erase(0, nl + 1);
        if (line.find(needle) != std::string::npos) return line;
      }
      if (!readSome(deadline)) return std::nullopt;
    }
  }

  // Reads until EOF or the deadline; returns everything read so far.
  std::string readAll(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (readSome(deadline)) {
    }
    return out_;
  }

  // Sends `sig` and waits (bounded) for the exit; returns the exit status
  // (0-255), 128+signal if killed, or -1 if it did not exit in time.
  int stop(int sig, std::chrono::milliseconds timeout) {
    if (!exited_) kill(pid_, sig);
    return wait(timeout);
  }

  int wait(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (!exited_) {
      int status = 0;
      pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        break;
      }
      if (Clock::now() > deadline) return -1;
      usleep(5000);
    }
    return code_;
  }

 private:
  bool readSome(Clock::time_point deadline) {
    if (eof_) return false;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char buf[4096];
    ssize_t n = read(fd_, buf, sizeof buf);
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    out_.append(buf, size_t(n));
    pending_.append(buf, size_t(n));
    return true;
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  bool eof_ = false;
  bool exited_ = false;
  int code_ = -1;
  std::string out_;
  std::string pending_;
};

}  // namespace chorus::test
