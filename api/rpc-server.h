// The Cap'n Proto RPC server (and the optional metrics endpoint and HTTP/JSON
// API, which run on its thread) of a Node. Internal to api/: Node starts and stops it.
//
// Threads (see api/README.md): the server runs its own thread with a KJ event
// loop, the "RPC thread". It owns the listeners, every connection, every
// capability it exports and every watch. Other threads reach it only through
// post(), a mutex-guarded queue whose wake-up is a kj cross-thread fulfiller.
// It also owns the read pool (api/internal/read-pool.h): the threads that
// run reads' store work, whose results come back through post().
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <kj/async.h>

#include "api/auth.h"
#include "api/node.h"
#include "crdt/result.h"

namespace chorus::api::internal {
class ReadPool;
}

namespace chorus::api {

class RpcServer {
 public:
  // What to listen on, "host:port" each (port 0 = any free port): the
  // Cap'n Proto API, and unless empty the Prometheus endpoint and the
  // HTTP/JSON API (api/http/server.h).
  struct Addresses {
    std::string listen;
    std::string metrics;
    std::string http;
  };

  // Starts the RPC thread and binds `addresses` before returning. Errors:
  // kInvalidArgument (unparseable address), kIo (cannot bind).
  // `tokens` set: clients must authenticate (api/auth.h) and every call is
  // authorized for their principal; nullopt: every client is trusted
  // (RpcLimits::noAuth).
  static Result<std::unique_ptr<RpcServer>> start(Node& node, const Addresses& addresses,
                                                  const RpcLimits& limits,
                                                  std::optional<TokenTable> tokens);

  // Drops the reads not started, stops listening, closes every connection
  // (pending calls are cancelled, watches end), joins the RPC thread, then
  // waits for the running reads (their results are dropped). Any thread
  // but the RPC thread; the node's store must stay open until it returns.
  ~RpcServer();

  std::string address() const { return address_; }
  std::string metricsAddress() const { return metricsAddress_; }
  std::string httpAddress() const { return httpAddress_; }

  // Any thread: runs `fn` on the RPC thread, in order. After the server
  // stopped, `fn` is destroyed unrun on the calling thread, so it must own
  // nothing that belongs to the RPC thread.
  void post(std::function<void()> fn);

  // Any thread but the RPC thread: serve with `tokens` from now on (a
  // reloaded tokens file). Sessions already authenticated follow at their
  // next call: their principal's new roles, or `unauthenticated` "token
  // revoked" if their token is gone. Returns how many were revoked. A
  // --no-auth server ignores it. Errors: kUnavailable (stopping).
  Result<size_t> reloadTokens(TokenTable tokens);

  class Loop;  // the RPC thread's state; defined in rpc-server.cpp

 private:
  RpcServer() = default;

  std::string address_;
  std::string metricsAddress_;
  std::string httpAddress_;
  Loop* loop_ = nullptr;  // set and read on the RPC thread only
  std::thread thread_;

  // The inbox: guarded by mutex_.
  std::mutex mutex_;
  std::deque<std::function<void()>> inbox_;
  // Owned by the Loop (RPC thread), which clears these under mutex_ before
  // destroying them. wake_ is set while the loop waits for the inbox.
  const kj::CrossThreadPromiseFulfiller<void>* wake_ = nullptr;
  const kj::CrossThreadPromiseFulfiller<void>* stop_ = nullptr;
  bool closed_ = false;

  // Reads' store work; started before the RPC thread, stopped after it.
  // Its jobs use only the node, post() and beforeRead_, never the Loop's
  // state.
  std::unique_ptr<internal::ReadPool> reads_;
  std::function<void(const char*, const std::string&)> beforeRead_;  // RpcLimits::beforeRead

  friend class Loop;
};

}  // namespace chorus::api
