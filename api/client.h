// A blocking C++ client of a Chorus node's RPC API, for tools and tests.
//
// Threads: a Client owns a KJ event loop, so it must be created, used and
// destroyed on one thread, and that thread may hold only one Client (or
// other KJ event loop) at a time. Every call is bounded by Options::timeout.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "api/chorus.capnp.h"
#include "api/types.h"
#include "crdt/result.h"
#include "gossip/keyring.h"
#include "storage/backup.h"
#include "storage/store.h"

namespace kj {
class WaitScope;
class Timer;
}  // namespace kj

namespace chorus::api {

class Client {
 public:
  struct Options {
    std::chrono::milliseconds timeout{10'000};  // per call, and for connecting
    // When set, connect() calls Chorus.authenticate with it and every call
    // then acts for the token's principal. Without it, a node that has a
    // tokens file refuses every call: kForbidden "unauthenticated: ...".
    std::string token;
  };

  // Connects to "host:port" (and authenticates, if Options::token is set).
  // Errors: kUnavailable (refused, unreachable, timed out),
  // kInvalidArgument (unparseable address), kForbidden
  // "unauthenticated: unknown token" (the node does not know the token).
  static Result<std::unique_ptr<Client>> connect(const std::string& address, Options options);
  static Result<std::unique_ptr<Client>> connect(const std::string& address) {
    return connect(address, Options{});
  }
  ~Client();

  // Errors are the server's (see api/chorus.capnp): kInvalidArgument and
  // kForbidden messages start with "<field>: "; transport problems are
  // kUnavailable.
  Result<ReviewView> write(const WriteRequest& request);
  Result<ReviewView> get(const std::string& product, const std::string& author);
  Result<ReviewPage> list(const std::string& product, storage::Order order,
                          const std::string& cursor, uint32_t limit);
  Result<storage::ProductSummary> summary(const std::string& product);
  // ReviewStore.page: summary and list from one snapshot.
  Result<ProductPageView> page(const std::string& product, storage::Order order,
                               const std::string& cursor, uint32_t limit);
  Result<ReviewPage> byAuthor(const std::string& author, const std::string& cursor, uint32_t limit);
  Result<NodeStatus> status();
  // Admin.health: any role may call it (status needs admin).
  Result<NodeHealth> health();

  // Admin's cluster methods (see api/chorus.capnp). A node without a cluster
  // answers kUnavailable.
  Result<ClusterView> cluster();
  Status partition(const std::vector<std::string>& peers);
  Status heal();
  // Admin.keys: the cluster's gossip keys after `op` (see api/chorus.capnp);
  // `key` is a base64 key (kInstall, kUse, kRemove) or a fingerprint (kUse,
  // kRemove), ignored by kList.
  Result<std::vector<gossip::KeyInfo>> keys(KeyOp op, const std::string& key = {});
  // Admin.leave: the node leaves the cluster, waiting up to `timeout` (1 ms
  // to 5 min) for a peer to hold its data. This call waits that long plus
  // 5 s, whatever Options::timeout says.
  Status leave(std::chrono::milliseconds timeout);
  // Admin.remove: the node declares member `node` gone for good.
  Status remove(const std::string& node);
  // Admin.backup: the node writes a hot backup of its store into `dir` on
  // its own host (absolute, new or empty). Waits up to `wait` for it,
  // whatever Options::timeout says; a backup the client stopped waiting for
  // still completes on the node.
  Result<storage::BackupManifest> backup(const std::string& dir,
                                         std::chrono::milliseconds wait = std::chrono::minutes(30));

  // Whom the node serves this client as, from authenticate: the principal
  // and its role names; empty without a token, and the principal is empty
  // on a --no-auth node.
  const std::string& principal() const;
  const std::vector<std::string>& roles() const;

  // Watches `product`: calls `onStarted` once the server accepted the watch,
  // then `onChange` for each change (on this thread) until it returns false
  // or `duration` has passed; then drops the watch. Errors: the server's,
  // kUnavailable if the connection drops.
  Status watch(const std::string& product, const std::function<bool(const Change&)>& onChange,
               std::chrono::milliseconds duration, const std::function<void()>& onStarted = {});

  // For pipelining and raw access (benchmarks, tests).
  wire::ReviewStore::Client reviews();
  wire::Admin::Client admin();
  kj::WaitScope& waitScope();
  kj::Timer& timer();

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::api
