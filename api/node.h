// chorus::Node: one Chorus node inside a host process. It owns the Store and,
// when asked, an RPC server (plus a metrics endpoint); a service can embed it
// and call the same operations the RPC API offers, without RPC.
//
//   auto node = chorus::Node::open({.nodeId = "svc-1", .dataDir = "/var/lib/x"});
//   if (!node) { log(node.error().toString()); return 1; }
//   auto r = (*node)->put({.product = "p1", .author = "ann", .rating = 5});
//
// Threads: every public method may be called from any thread, except where
// noted. Asynchronous callbacks run on the store's thread and must be short
// and non-blocking; the synchronous forms must not be called from a callback
// (they wait for the store thread). See api/README.md.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "api/session.h"
#include "api/types.h"
#include "api/validate.h"
#include "crdt/result.h"
#include "gossip/bootstrap.h"
#include "gossip/cluster.h"
#include "gossip/keyring.h"
#include "storage/backup.h"
#include "storage/store.h"

namespace chorus {

namespace api {
class RpcServer;
class Metrics;
}  // namespace api

namespace internal {
struct FeedSubscribers;
}  // namespace internal

// Bounds of the RPC server.
struct RpcLimits {
  size_t maxMessageBytes = 1 << 20;  // incoming messages larger are refused
  int nestingLimit = 16;
  uint32_t maxInFlightPerConnection = 256;  // more calls get `overloaded`
  // No call for this long, none in flight and no watch: closed.
  std::chrono::milliseconds idleTimeout{60'000};
  uint32_t maxPendingChangesPerWatch = 256;  // then changes are dropped+counted
  // Per-connection token bucket: `maxCallsPerSecond` refill, `callBurst`
  // capacity. A call over it answers `overloaded` before it is queued. 0 = off.
  uint32_t maxCallsPerSecond = 20'000;
  uint32_t callBurst = 2'000;
  // Authenticated RPC connections (every connection with noAuth); beyond it
  // authenticate answers `overloaded` (noAuth: the connection is accepted and
  // closed at once). Counted in chorus_rpc_connections_refused_total.
  uint32_t maxConnections = 1'024;

  // Reads (get, list, summary, byAuthor) run their store work on a pool of
  // readThreads threads, off the RPC thread (api/README.md, "Threads");
  // 0 = one per core; at most 1,024. At most maxQueuedReads wait for a
  // thread; a read beyond that answers `overloaded`
  // (chorus_rpc_read_queue_full_total).
  uint32_t readThreads = 0;
  uint32_t maxQueuedReads = 4'096;
  // For tests only: called on the read thread before each pooled read's
  // store work, with the method name ("get", "list", ...) and its product
  // (byAuthor: its author). May block to hold that read in the pool.
  std::function<void(const char* method, const std::string& key)> beforeRead;

  // Per connection, whatever it sent: over any of these the connection is
  // closed, and everything it held is freed (api/README.md, "Limits").
  // Calls sent and not finished, answered or not: Cap'n Proto keeps each
  // answer until the client's Finish.
  uint32_t maxUnfinishedCalls = 1'024;
  // Bytes of replies (and watch changes) queued for the client, not yet
  // taken by its socket: a client that stops reading.
  size_t maxQueuedReplyBytes = 16 << 20;
  // The connection's memory figure: bytes of its messages still held + queued
  // reply bytes + 10 KiB per unfinished call + 1 KiB per watch.
  size_t maxConnectionBytes = 64 << 20;
  // Watches per connection and per node; more get `overloaded`.
  uint32_t maxWatchesPerConnection = 64;
  uint32_t maxWatches = 4'096;

  // Before a connection authenticates (with a tokens file): it must present
  // a valid token within authTimeout or it is closed; at most
  // maxUnauthenticated such connections (a newcomer evicts the oldest) and
  // maxUnauthenticatedPerAddress from one source address (likewise); they
  // do not count toward maxConnections. Their tighter bounds:
  std::chrono::milliseconds authTimeout{5'000};
  uint32_t maxUnauthenticated = 64;
  uint32_t maxUnauthenticatedPerAddress = 8;
  size_t unauthenticatedMaxMessageBytes = 64 << 10;
  uint32_t unauthenticatedMaxUnfinishedCalls = 16;
  size_t unauthenticatedMaxQueuedReplyBytes = 256 << 10;
  size_t unauthenticatedMaxConnectionBytes = 512 << 10;

  // Who may call (api/auth.h, api/README.md). With Node::Options::listen set
  // exactly one of these is required (Node::open: kInvalidArgument):
  //  - tokensFile: clients authenticate with a token listed there and each
  //    call is checked against the principal's roles;
  //  - noAuth: every client is served as admin (the behaviour before
  //    tokens), for tests on a trusted host only; logged as a warning.
  // The in-process API of Node is trusted either way.
  std::string tokensFile;
  bool noAuth = false;
};

class Node {
 public:
  struct Options {
    std::string nodeId;   // a name for humans; reported by status
    std::string dataDir;  // created if missing
    // RPC listen address "host:port" (port 0 = any free port); empty = none.
    std::string listen;
    // Prometheus endpoint "host:port"; empty = none. Needs `listen`.
    std::string metricsAddr;
    // The HTTP/JSON API "host:port" (api/http/server.h; port 0 = any free
    // port); empty = none. Needs `listen`: it runs on the RPC server's
    // thread, with the same tokens and limits (rpc).
    std::string httpListen;
    // RPC addresses ("host:port") of the cluster's other nodes that the
    // HTTP API's cluster overview (the dashboard, api/http/overview.h) may
    // ask with the caller's token; members not listed are shown, not asked.
    std::vector<std::string> overviewNodes;
    api::Limits limits;
    RpcLimits rpc;
    // Store tuning; dir is taken from dataDir.
    storage::Options store;
    // Replication: the node joins a cluster when `cluster.listen` is set.
    // nodeId, dataDir (the member list is kept there) and rpcAddress (the
    // bound `listen` address, shared with peers) are filled in by the node;
    // cluster.region must pass api::checkRegion.
    gossip::ClusterOptions cluster;
    // Read your writes: how long a read given a session token waits for
    // this node to hold that write (pulling it from peers meanwhile) before
    // it answers kUnavailable. At most 60 s (Node::open: kInvalidArgument).
    // chorusd --session-wait-ms.
    std::chrono::milliseconds sessionWait{2'000};
    // With a cluster: before the store opens, a node whose data dir is
    // empty or far behind starts from a snapshot of a peer's store
    // (gossip/bootstrap.h; mode kAuto by default). dataDir, nodeId, peers
    // (cluster.seeds, then the member list's addresses), keys and
    // maxFrameBytes are filled in by the node; errors fail open().
    gossip::BootstrapOptions bootstrap;
  };

  // Opens the store, starts the RPC server if `listen` is set, then the
  // cluster if `cluster.listen` is set. Errors: those of
  // storage::Store::open, gossip::Cluster::start and api::TokenTable::load,
  // kInvalidArgument for a bad address or for `listen` without tokensFile
  // or noAuth (or with both), kIo when an address cannot be bound.
  static Result<std::unique_ptr<Node>> open(Options options);

  // shutdown(), then closes the store.
  ~Node();

  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Actual addresses ("127.0.0.1:40123"); empty when not serving.
  std::string rpcAddress() const;
  std::string metricsAddress() const;
  std::string httpAddress() const;

  // Refuses new writes (kUnavailable), waits until every accepted write has
  // committed and its callback ran (and a running leave() has returned),
  // then stops the cluster and the RPC server. Idempotent. Not from a
  // store-thread callback. (Stopping is not leaving: a stopped node is
  // still a member, dead until it comes back.)
  void shutdown();

  // ---- writes ---------------------------------------------------------------
  // Every successful write answers the review after it, with
  // ReviewView::session set: its read-your-writes token (api/session.h).
  using WriteDone = std::function<void(Result<ReviewView>)>;
  // Validates `request` (kInvalidArgument naming the field, nothing stored),
  // then queues it. `done` runs exactly once: on the store thread after the
  // write committed, or on the calling thread if it was refused up front.
  // Errors: kInvalidArgument, kNotFound (the review does not exist, for
  // every op but kPut), kForbidden (an author voting for their own review),
  // kUnavailable (shutting down, or the node left the cluster or was
  // removed from it: its writes would never reach the others), and the
  // store's errors.
  void write(WriteRequest request, WriteDone done);
  // Blocking form of write().
  Result<ReviewView> write(WriteRequest request);

  // One-liners over write().
  Result<ReviewView> put(std::string product, std::string author, uint32_t rating,
                         std::string title, std::string body);
  Result<ReviewView> erase(std::string product, std::string author);
  Result<ReviewView> vote(std::string product, std::string author, std::string voter);
  Result<ReviewView> unvote(std::string product, std::string author, std::string voter);
  Result<ReviewView> tag(std::string product, std::string author, std::string tag);
  Result<ReviewView> untag(std::string product, std::string author, std::string tag);
  Result<ReviewView> moderate(std::string product, std::string author, crdt::Visibility visibility,
                              std::string reason);
  Result<ReviewView> reply(std::string product, std::string author, std::string text);

  // ---- reads (calling thread) ----------------------------------------------
  // With `read.session` set, each read first waits as awaitSession() does
  // (blocking the calling thread up to Options::sessionWait): kUnavailable
  // if this node does not hold that write by then, kInvalidArgument (field
  // "session") for a malformed token. Not from a store-thread callback.
  //
  // kNotFound if absent or deleted.
  Result<ReviewView> get(const std::string& product, const std::string& author,
                         const ReadOptions& read = {});
  // limit 0 = 20; at most 100 (more: kInvalidArgument, field "limit").
  Result<ReviewPage> list(const std::string& product, storage::Order order,
                          const std::string& cursor, uint32_t limit, const ReadOptions& read = {});
  Result<storage::ProductSummary> summary(const std::string& product, const ReadOptions& read = {});
  // list() and summary() of one product from one snapshot of the store (a
  // product page: the two agree). Same arguments and errors as list().
  Result<ProductPageView> page(const std::string& product, storage::Order order,
                               const std::string& cursor, uint32_t limit,
                               const ReadOptions& read = {});
  Result<ReviewPage> byAuthor(const std::string& author, const std::string& cursor, uint32_t limit,
                              const ReadOptions& read = {});
  // The argument checks of the reads above, alone (kInvalidArgument naming
  // the field, as the read would answer): cheap, any thread. Front ends
  // run them before waiting for a session. checkList serves page() too.
  Status checkGet(const std::string& product, const std::string& author) const;
  Status checkList(const std::string& product, const std::string& cursor, uint32_t limit) const;
  Status checkSummary(const std::string& product) const;
  Status checkByAuthor(const std::string& author, const std::string& cursor, uint32_t limit) const;
  Result<NodeStatus> status();
  // Cheap: whether the node serves (not shutting down, not out of the
  // cluster, its store answers) and its own view of the cluster, asking no
  // peer. Never an error: a fault is `serving` false with the reason.
  NodeHealth health();

  // Reads RpcLimits::tokensFile again and serves with it: new tokens work at
  // once, and connections authenticated with a token no longer listed are
  // refused from their next call. On an error (the file unreadable or
  // invalid) the old tokens stay. Returns how many sessions were revoked.
  // Errors: those of api::TokenTable::load; kInvalidArgument without a
  // tokens file (--no-auth, or no RPC server); kUnavailable after shutdown().
  // Not concurrently with shutdown().
  Result<size_t> reloadTokens();

  // ---- cluster --------------------------------------------------------------
  // Each returns kUnavailable when the node runs without a cluster (no
  // `cluster.listen`, i.e. chorusd without --gossip-listen) or after
  // shutdown().
  Result<ClusterView> clusterView();
  // Fault injection: drop gossip traffic to and from `peers` (see
  // gossip::Cluster::partition) / stop dropping. kInvalidArgument (field
  // "peers") for ids api::checkPeerIds refuses.
  Status partition(const std::vector<std::string>& peers);
  Status heal();
  // The cluster's gossip keys (gossip::Cluster::keys/installKey/useKey/
  // removeKey): performs `op` with `key` (base64 key, or for kUse/kRemove a
  // fingerprint; ignored for kList), then lists the keys. Errors: those of
  // the cluster (kInvalidArgument for a malformed or unknown key, removing
  // the primary), kUnavailable without a cluster.
  Result<std::vector<gossip::KeyInfo>> keys(api::KeyOp op, const std::string& key);
  // Takes this node out of the cluster for good (gossip::Cluster::leave):
  // waits up to `timeout` until a peer holds all its data. Once it ran
  // (even if it answered kUnavailable: the announcement may still spread)
  // the node refuses writes; stop it, and start it with ClusterOptions::
  // rejoin to join again. Errors: kInvalidArgument for a timeout outside
  // 1 ms..5 min; kUnavailable without a cluster, when no peer was reached in
  // time, or while another leave runs.
  Status leave(std::chrono::milliseconds timeout);
  // leave() on a thread of its own; `done` runs there (or on the calling
  // thread if refused up front). For the RPC server, whose thread must not
  // block. Not from a store-thread callback.
  void leave(std::chrono::milliseconds timeout, std::function<void(Status)> done);
  // Declares the member `nodeId` gone for good (gossip::Cluster::remove).
  // Errors: kInvalidArgument (field "node": empty, malformed, or this node
  // itself), kNotFound (not a member this node knows), kUnavailable
  // without a cluster.
  Status remove(const std::string& nodeId);
  // Whether this node left (leave() ran) or another node removed it.
  bool outOfCluster();
  // States from peers that the store refused (e.g. kClockDrift), and those
  // that changed a review, since open.
  uint64_t mergesRefused() const { return mergesRefused_.load(); }
  uint64_t mergesApplied() const { return mergesApplied_.load(); }

  // ---- the change feed -----------------------------------------------------
  // Every change this node commits, local writes and merges from peers
  // alike, numbered by its per-node seq and compacted (a review appears
  // once, at its latest change); see storage/store.h and README.md,
  // "Change feed".
  static constexpr uint32_t kDefaultFeedLimit = 100;
  static constexpr uint32_t kMaxFeedLimit = 1000;
  // The changes after `since` (storage::kSinceNow: none, just the cursor),
  // at most `limit` (0 = kDefaultFeedLimit), from one snapshot; with
  // `includeDocs` each change carries its review (deleted ones too).
  // Calling thread. Errors: kInvalidArgument "limit: ..." above
  // kMaxFeedLimit, "since: ..." beyond this node's last seq (another node's
  // cursor); the store's.
  Result<ChangesPage> changes(uint64_t since, uint32_t limit, bool includeDocs);
  // The last seq committed. Any thread.
  uint64_t lastSeq() const { return store_->lastSeq(); }
  // Push consumers: `subscriber` is called on the store thread, with the
  // node's last seq, after each commit that advanced the feed, until
  // unsubscribe(id). It must only note the seq and wake its own thread,
  // which then reads changes(since, ...): nothing is queued per subscriber,
  // so a slow one costs no memory. (RPC follow is built on it.)
  using FeedSubscriber = std::function<void(uint64_t lastSeq)>;
  uint64_t subscribe(FeedSubscriber subscriber);
  // After unsubscribe returns, the subscriber is never called again. Not
  // from inside a subscriber.
  void unsubscribe(uint64_t id);
  // ---- backup ---------------------------------------------------------------
  // Writes a hot backup of the store into `dir` on this node's host
  // (storage::Store::backup: a compacted copy of one snapshot and its
  // manifest, recording nodeId); writes and reads go on meanwhile. `dir`
  // must be absolute and must not exist or be empty. One at a time.
  // Errors: kInvalidArgument (field "dir"), kUnavailable (shutting down,
  // or another backup runs), and those of Store::backup.
  Result<storage::BackupManifest> backup(const std::string& dir);
  // backup() on a thread of its own; `done` runs there (or on the calling
  // thread if refused up front). For the RPC server, whose thread must not
  // block. shutdown() waits for a running backup.
  void backup(const std::string& dir, std::function<void(Result<storage::BackupManifest>)> done);
  // ---- read your writes (api/session.h; api/README.md) -----------------------
  // Blocks the calling thread until this node's store holds the write of
  // `token` (ok), pulling its review from the cluster's live peers
  // meanwhile, at most Options::sessionWait: then kUnavailable
  // (notCaughtUp). kInvalidArgument (field "session") for a malformed token.
  // Not from a store-thread callback.
  Status awaitSession(const std::string& token);
  // The pieces of awaitSession, for front ends that must not block a thread
  // while they wait (the RPC server):
  // Parses a token and checks its review key; kInvalidArgument, field
  // "session". No store access: any thread, cheap.
  Result<api::SessionToken> parseSession(const std::string& token) const;
  // Whether the store holds the token's write (a store read on the calling
  // thread).
  Result<bool> holds(const api::SessionToken& token);
  // Calls `ready` once, on the store thread, when a change to the token's
  // review commits (a local write or a merge) after which the store holds
  // the write. `ready` must be quick and must not block or call the Node.
  // Register first, then check holds(): a commit between the two is seen
  // by one or the other. Returns an id for cancelSessionWait.
  uint64_t waitSession(const api::SessionToken& token, std::function<void()> ready);
  // Once it returns, that wait's `ready` is not running and never will.
  void cancelSessionWait(uint64_t id);
  // Asks the cluster's live peers for the token's review (the node that
  // accepted the write first); their answers merge like repairs. No-op
  // without a cluster. Never blocks.
  void pullSession(const api::SessionToken& token);
  // The kUnavailable a read answers when the wait for `token` ran out.
  Error notCaughtUp(const api::SessionToken& token) const;

  // ---- watching -------------------------------------------------------------
  using Watcher = std::function<void(const Change&)>;
  // Calls `watcher` on the store thread for every committed change of a
  // review of `product`, until unwatch(id). Errors: kInvalidArgument.
  Result<uint64_t> watch(const std::string& product, Watcher watcher);
  // After unwatch returns, the watcher is never called again. Not from inside
  // a watcher.
  void unwatch(uint64_t id);

  // ---- for the modules built on Node ---------------------------------------
  const api::Limits& limits() const { return options_.limits; }
  const Options& options() const { return options_; }
  storage::Store& store() { return *store_; }
  // nullptr when not clustered, and after shutdown(). Only valid until
  // shutdown(); callers racing shutdown should use the methods above.
  gossip::Cluster* cluster() { return clusterLive_.load(); }
  api::Metrics& metrics() { return *metrics_; }
  // Returns kInvalidArgument naming the field, or nullopt.
  api::Check check(const WriteRequest& request) const;

 private:
  Node(Options options, std::unique_ptr<internal::FeedSubscribers> feed,
       std::unique_ptr<storage::Store> store);
  void notify(const char* op, const crdt::ReviewDoc& state);
  void notifyLocked(const char* op, const crdt::ReviewDoc& state);  // watchMutex_ held
  // Store thread: `state` of a review committed; session waits it satisfies run.
  void notifySessions(const crdt::ReviewDoc& state);
  // Checks the key, then waits for `read.session` if set.
  Status beforeRead(const ReadOptions& read);
  // Store thread: a state from a peer committed (or was refused).
  void merged(const Result<storage::Applied>& applied);
  // Before the store opens: gossip::bootstrapDataDir with what `options`
  // know (Options::bootstrap), its outcome logged.
  static Status bootstrap(const Options& options);
  Status startCluster();
  Error noCluster() const;
  Error outOfClusterError() const;
  Status leaveNow(std::chrono::milliseconds timeout);  // leave(), without the one-at-a-time guard
  // Store thread: after a write committed.
  Result<ReviewView> committed(const char* op, const Result<storage::Applied>& applied);
  void finishWrite();

  Options options_;
  std::chrono::steady_clock::time_point started_;
  std::unique_ptr<api::Metrics> metrics_;

  std::mutex watchMutex_;  // guards watchers_ and nextWatch_
  std::multimap<std::string, std::pair<uint64_t, Watcher>> watchers_;  // by product
  uint64_t nextWatch_ = 1;
  bool notifyMerges_ = true;  // false once the cluster and RPC server stop

  std::mutex writesMutex_;  // guards the two below
  std::condition_variable writesIdle_;
  uint64_t writesInFlight_ = 0;
  std::atomic<bool> closing_{false};

  // Session waits (waitSession), by review key; sessionWaitsById_ finds
  // one's entry by id. Guarded by sessionMutex_; sessionWaiting_ mirrors
  // the count so commits skip the lock when nobody waits.
  struct SessionWait {
    uint64_t id = 0;
    api::SessionToken token;
    std::function<void()> ready;
  };
  std::mutex sessionMutex_;
  std::multimap<crdt::ReviewKey, SessionWait> sessionWaits_;
  std::map<uint64_t, std::multimap<crdt::ReviewKey, SessionWait>::iterator> sessionWaitsById_;
  uint64_t nextSessionWait_ = 1;
  std::atomic<size_t> sessionWaiting_{0};

  std::atomic<uint64_t> mergesRefused_{0};
  std::atomic<uint64_t> mergesApplied_{0};

  // Feed subscribers: made before the store, which calls them, and
  // destroyed after it.
  std::unique_ptr<internal::FeedSubscribers> feed_;
  std::unique_ptr<storage::Store> store_;
  std::unique_ptr<api::RpcServer> rpc_;  // stopped before store_ closes
  // The cluster, stopped before rpc_ and store_. Admin calls hold
  // clusterMutex_ shared; shutdown() holds it exclusively to stop the
  // cluster. The store thread publishes through clusterLive_ without the
  // lock (shutdown clears it only after every write has finished).
  std::shared_mutex clusterMutex_;
  std::unique_ptr<gossip::Cluster> cluster_;
  std::atomic<gossip::Cluster*> clusterLive_{nullptr};
  std::atomic<bool> left_{false};  // leave() ran

  // The thread of an asynchronous leave(); joined by shutdown() (or by the
  // next asynchronous leave once it finished).
  std::mutex leaveMutex_;  // guards the two below
  std::thread leaveThread_;
  bool leaving_ = false;  // a leave() runs, either form

  // Likewise for backup(): its thread, joined by shutdown() or the next one.
  std::mutex backupMutex_;  // guards the two below
  std::thread backupThread_;
  bool backingUp_ = false;  // a backup() runs, either form
  Result<storage::BackupManifest> backupNow(const std::string& dir);
};

}  // namespace chorus
