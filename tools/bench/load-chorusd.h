// A chorusd the bench starts and stops by its PID (SIGTERM, then SIGKILL
// after 30 s) when the object goes away; its output goes to a log file.
// chorus-bench load starts one for a run without --connect (start(): on
// 127.0.0.1 with a free port, a fresh data dir, --no-auth and no per-
// connection rate limit, output in <dir>/chorusd.log); chorus-bench
// bootstrap starts two with arguments of its own (spawn()).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "crdt/result.h"

namespace chorus::bench {

class LocalChorusd {
 public:
  // Starts `binary` with its data in `dir`/node and waits (up to 30 s) for
  // "chorusd: listening on ..." (and with `http`, --http-listen on a free
  // port, for "chorusd: http on ..."). `unsafeNoSync` passes
  // --unsafe-no-sync.
  // Errors: kUnavailable with the end of its log when it exits or stays
  // silent, kIo when it cannot be started.
  static Result<std::unique_ptr<LocalChorusd>> start(const std::string& binary,
                                                     const std::string& dir, bool unsafeNoSync,
                                                     bool http = false);
  // Starts `binary args...` with stdout and stderr appended to `log`, and
  // does not wait. Errors: kIo when it cannot be started.
  static Result<std::unique_ptr<LocalChorusd>> spawn(const std::string& binary,
                                                     const std::vector<std::string>& args,
                                                     const std::string& log);
  ~LocalChorusd();

  // Waits up to `limit` for the line "chorusd: <what> on ADDRESS" in the
  // log ("listening", "gossip") and returns ADDRESS (also kept as address()
  // for "listening"). Errors: kUnavailable with the end of its log when it
  // exits first or the time runs out.
  Result<std::string> waitFor(const std::string& what, std::chrono::milliseconds limit);
  // Whether the process is still running (reaps it if it exited).
  bool running();
  // Sends `sig` and waits up to `limit` for it to exit; false if it did not.
  bool stop(int sig, std::chrono::milliseconds limit);

  const std::string& address() const { return address_; }
  // The HTTP API's HOST:PORT; empty unless started with `http`.
  const std::string& httpAddress() const { return httpAddress_; }
  pid_t pid() const { return pid_; }

  // The chorusd next to this executable in a build tree
  // (../chorusd/chorusd) or an install (./chorusd), else "chorusd" (PATH).
  static std::string defaultBinary();

 private:
  LocalChorusd(pid_t pid, std::string log) : pid_(pid), log_(std::move(log)) {}
  pid_t pid_;
  bool exited_ = false;
  std::string log_;
  std::string address_;
  std::string httpAddress_;
};

}  // namespace chorus::bench
