// The HTTP/JSON API of a node (chorusd --http-listen, Node::Options::
// httpListen): a second front end over chorus::Node beside the Cap'n Proto
// RPC server, with the same operations, tokens, roles, limits, validation
// and error codes. Its routes are api/http/routes.h, documented in
// api/http/openapi.json (served at /v1/openapi.json); api/README.md has the
// tables.
//
// Threads: it runs on the RPC server's thread (internal::ServerLoop), which
// owns every HTTP connection and watch. Reads run on the RPC server's read
// pool, writes go to the store's group commit through Node::write, and
// both come back through the loop's post(): the RPC thread never does
// store work. Internal to api/: RpcServer makes it when Node::Options::
// httpListen is set.
#pragma once

#include <kj/async-io.h>

namespace chorus::api::internal {
class ServerLoop;
}

namespace chorus::api::http {

class Server {
 public:
  // RPC thread. Serves on `listener` (bound already) once start() runs.
  Server(internal::ServerLoop& loop, kj::Own<kj::ConnectionReceiver> listener);
  // RPC thread: stops accepting and closes every connection (requests in
  // progress are cancelled: a write already queued still commits; watches
  // end).
  ~Server() noexcept(false);

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // RPC thread: starts accepting connections.
  void start();

  class Impl;  // defined in server.cpp

 private:
  kj::Own<Impl> impl_;
};

}  // namespace chorus::api::http
