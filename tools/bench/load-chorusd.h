// chorus-bench load: one chorusd started for a run without --connect, on
// 127.0.0.1 with a free port, a fresh data dir, --no-auth and no per-
// connection rate limit; stopped by its PID (SIGTERM, then SIGKILL after
// 30 s) when the object goes away. Its output goes to <dir>/chorusd.log.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

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
  ~LocalChorusd();

  const std::string& address() const { return address_; }
  // The HTTP API's HOST:PORT; empty unless started with `http`.
  const std::string& httpAddress() const { return httpAddress_; }
  pid_t pid() const { return pid_; }

  // The chorusd next to this executable in a build tree
  // (../chorusd/chorusd) or an install (./chorusd), else "chorusd" (PATH).
  static std::string defaultBinary();

 private:
  LocalChorusd(pid_t pid, std::string address, std::string http)
      : pid_(pid), address_(std::move(address)), httpAddress_(std::move(http)) {}
  pid_t pid_;
  std::string address_;
  std::string httpAddress_;
};

}  // namespace chorus::bench
