#include "api/node.h"

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <future>
#include <optional>

#include "api/auth.h"
#include "api/log.h"
#include "api/metrics.h"
#include "api/rpc-server.h"
#include "gossip/member-file.h"

namespace chorus {

namespace internal {

// Node's feed subscribers. Called by the store (store thread) after each
// commit that advanced the feed.
struct FeedSubscribers {
  std::mutex mutex;  // guards the two below; held while calling them
  std::map<uint64_t, Node::FeedSubscriber> subscribers;
  uint64_t next = 1;

  void advanced(uint64_t lastSeq) {
    std::lock_guard lock(mutex);
    for (auto& [id, subscriber] : subscribers) subscriber(lastSeq);
  }
};

}  // namespace internal

namespace {

constexpr size_t kMaxCursorBytes = 1024;
constexpr auto kMaxSessionWait = std::chrono::seconds(60);
// A waiting session read checks the store again, and pulls again, this often.
constexpr auto kSessionRecheck = std::chrono::milliseconds(250);

Error notFound(const crdt::ReviewKey& key) {
  return makeError(ErrorCode::kNotFound, "no review of product '" + key.product + "' by author '" +
                                             key.author + "' (never written, or deleted)");
}

// After api::checkLimit.
uint32_t pageSize(uint32_t limit) { return limit == 0 ? api::kDefaultPageLimit : limit; }

Result<ReviewPage> toPage(Result<storage::Page> page) {
  if (!page.ok()) return page.error();
  ReviewPage out;
  out.reviews.reserve(page->reviews.size());
  for (const auto& doc : page->reviews) out.reviews.push_back(ReviewView::of(doc));
  out.nextCursor = std::move(page->nextCursor);
  return out;
}

// The store-thread half of a write: turns the request into a delta.
Result<crdt::ReviewDoc> apply(const WriteRequest& r, const api::Limits& limits,
                              crdt::ReviewDoc& doc, crdt::HybridClock& clock) {
  if (r.op == WriteOp::kPut) {
    return doc.write(static_cast<uint8_t>(r.rating), r.title, r.body, clock.now());
  }
  if (!doc.exists()) return notFound(doc.key());
  switch (r.op) {
    case WriteOp::kPut:
      break;
    case WriteOp::kDelete:
      return doc.erase(clock.now());
    case WriteOp::kVote:
      if (r.arg == r.author) {
        return makeError(ErrorCode::kForbidden,
                         "voter: an author cannot vote for their own review");
      }
      return doc.vote(r.arg, clock.replica());
    case WriteOp::kUnvote:
      return doc.unvote(r.arg);
    case WriteOp::kTag:
      if (auto full = api::checkTagRoom(doc, r.arg, limits)) return full->toError();
      return doc.tag(r.arg, clock.replica());
    case WriteOp::kUntag:
      return doc.untag(r.arg);
    case WriteOp::kModerate:
      return doc.moderate(crdt::Moderation{r.visibility, r.arg}, clock.now());
    case WriteOp::kReply:
      return doc.setReply(crdt::Reply{r.arg}, clock.now());
  }
  return makeError(ErrorCode::kInternal, "unknown write operation");
}

// Delete, untag and unvote only shrink a review; the others may grow it.
bool mayGrow(WriteOp op) {
  return op != WriteOp::kDelete && op != WriteOp::kUntag && op != WriteOp::kUnvote;
}

storage::Mutation mutationFor(const WriteRequest& r, const api::Limits& limits) {
  return [r, limits](crdt::ReviewDoc& doc, crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
    auto delta = apply(r, limits, doc, clock);
    // A refused write leaves nothing: the store drops `doc` with the error.
    if (delta.ok() && mayGrow(r.op)) {
      if (auto big = api::checkStateSize(doc, limits.maxStateBytes)) return big->toError();
    }
    return delta;
  };
}

}  // namespace

Result<std::unique_ptr<Node>> Node::open(Options options) {
  if (options.dataDir.empty()) {
    return makeError(ErrorCode::kInvalidArgument, "data dir: must be set (--data-dir)");
  }
  if (!options.metricsAddr.empty() && options.listen.empty()) {
    return makeError(ErrorCode::kInvalidArgument,
                     "metrics address: needs an RPC listen address too");
  }
  if (!options.httpListen.empty() && options.listen.empty()) {
    return makeError(ErrorCode::kInvalidArgument,
                     "HTTP address: needs an RPC listen address too (the HTTP API runs on the "
                     "RPC server's thread)");
  }
  if (!options.cluster.listen.empty()) {
    if (auto bad = api::checkRegion(options.cluster.region)) return bad->toError();
  }
  if (options.sessionWait.count() < 0 || options.sessionWait > kMaxSessionWait) {
    return makeError(ErrorCode::kInvalidArgument,
                     "session wait: must be 0 to 60000 ms (--session-wait-ms)");
  }
  std::optional<api::TokenTable> tokens;
  if (!options.listen.empty()) {
    if (options.rpc.noAuth && !options.rpc.tokensFile.empty()) {
      return makeError(ErrorCode::kInvalidArgument,
                       "the RPC server takes either a tokens file (--tokens-file) or --no-auth, "
                       "not both");
    }
    if (!options.rpc.noAuth && options.rpc.tokensFile.empty()) {
      return makeError(ErrorCode::kInvalidArgument,
                       "the RPC server needs a tokens file (--tokens-file); --no-auth serves "
                       "every client as admin, for tests on a trusted host only");
    }
    if (!options.rpc.tokensFile.empty()) {
      auto loaded = api::TokenTable::load(options.rpc.tokensFile);
      if (!loaded.ok()) return loaded.error();
      tokens = std::move(loaded).value();
    }
  }
  if (!options.cluster.listen.empty()) {
    if (auto booted = bootstrap(options); !booted.ok()) return booted.error();
  }
  storage::Options so = options.store;
  so.dir = options.dataDir;
  if (!so.admitMerge) {
    // What merges make of a review stays within the peer limits, delta by
    // delta (refusals count in mergesRefused).
    so.admitMerge = [limits = options.limits](const crdt::ReviewDoc& merged) -> Status {
      if (auto e = api::checkPeerGrowth(merged, limits)) return e->toError();
      return okStatus();
    };
  }
  if (!so.notice) {
    so.notice = [](const std::string& what) {
      api::logf(api::LogLevel::kWarn, "storage: %s", what.c_str());
    };
  }
  // Made before the store, which reports each commit to it.
  auto metrics = std::make_unique<api::Metrics>();
  so.onCommit = [m = metrics.get(), user = std::move(so.onCommit)](std::chrono::nanoseconds took,
                                                                   size_t writes) {
    m->storeCommitted(std::chrono::duration<double>(took).count(), writes);
    if (user) user(took, writes);
  };
  // Likewise made before the store, which wakes the feed's subscribers.
  auto feed = std::make_unique<internal::FeedSubscribers>();
  // The caller's hook first (e.g. to note the commit's time), then the
  // subscribers.
  so.onFeedAdvanced = [f = feed.get(), user = std::move(so.onFeedAdvanced)](uint64_t lastSeq) {
    if (user) user(lastSeq);
    f->advanced(lastSeq);
  };
  auto store = storage::Store::open(std::move(so));
  if (!store.ok()) return store.error();
  std::unique_ptr<Node> node(
      new Node(std::move(options), std::move(feed), std::move(store).value()));
  node->metrics_ = std::move(metrics);
  if (!node->options_.listen.empty()) {
    if (tokens) {
      api::logf(api::LogLevel::kInfo, "rpc: %zu token(s) from %s", tokens->size(),
                node->options_.rpc.tokensFile.c_str());
    } else {
      api::logf(api::LogLevel::kWarn,
                "rpc: --no-auth: every client is served as admin; for tests on a trusted "
                "host only");
    }
    auto rpc = api::RpcServer::start(
        *node, {node->options_.listen, node->options_.metricsAddr, node->options_.httpListen},
        node->options_.rpc, std::move(tokens));
    if (!rpc.ok()) return rpc.error();
    node->rpc_ = std::move(rpc).value();
  }
  if (!node->options_.cluster.listen.empty()) {
    if (auto started = node->startCluster(); !started.ok()) return started.error();
  }
  return node;
}

Status Node::bootstrap(const Options& options) {
  gossip::BootstrapOptions b = options.bootstrap;
  b.dataDir = options.dataDir;
  b.nodeId = options.nodeId;
  b.keys = options.cluster.keys;
  b.maxFrameBytes = options.cluster.maxFrameBytes;
  b.peers = options.cluster.seeds;
  if (auto known = gossip::loadMembers(options.dataDir + "/members"); known.ok()) {
    for (const auto& m : known.value()) {
      if (m.nodeId != options.nodeId && m.state != "left" && !m.gossipAddress.empty()) {
        b.peers.push_back(m.gossipAddress);
      }
    }
  }
  if (!b.notice) {
    b.notice = [](const std::string& what) {
      api::logf(api::LogLevel::kInfo, "%s", what.c_str());
    };
  }
  auto outcome = gossip::bootstrapDataDir(b);
  if (!outcome.ok()) return outcome.error();
  if (outcome->fromSnapshot) {
    api::logf(api::LogLevel::kInfo,
              "bootstrap: from a snapshot of %s: %llu reviews, %llu bytes in %.1f s, restored "
              "in %.1f s, %u resume(s), %u refused, %llu local review(s) merged in; new "
              "replica id %016llx",
              outcome->peer.c_str(), (unsigned long long)outcome->keys,
              (unsigned long long)outcome->bytes, outcome->fetchSeconds, outcome->restoreSeconds,
              outcome->resumes, outcome->refused, (unsigned long long)outcome->localMerged,
              (unsigned long long)outcome->replicaId);
  } else {
    api::logf(api::LogLevel::kInfo, "bootstrap: by anti-entropy (%s)%s",
              outcome->reason.c_str(),
              outcome->refused > 0 ? "; a snapshot was refused" : "");
  }
  return okStatus();
}

Status Node::startCluster() {
  gossip::ClusterOptions co = options_.cluster;
  co.nodeId = options_.nodeId;
  co.dataDir = options_.dataDir;
  co.rpcAddress = rpcAddress();
  if (!co.admit) {
    // States from peers meet the rules a client of this node meets.
    co.admit = [limits = options_.limits](const crdt::ReviewDoc& doc) -> Status {
      if (auto e = api::checkState(doc, limits)) return e->toError();
      return okStatus();
    };
  }
  co.onAntiEntropySession = [m = metrics_.get(), user = std::move(co.onAntiEntropySession)](
                                std::chrono::nanoseconds took, bool crossRegion) {
    m->antiEntropySession(std::chrono::duration<double>(took).count(), crossRegion);
    if (user) user(took, crossRegion);
  };
  co.onDeltaApplied = [m = metrics_.get(),
                       user = std::move(co.onDeltaApplied)](std::chrono::nanoseconds lag) {
    m->deltaApplied(std::chrono::duration<double>(lag).count());
    if (user) user(lag);
  };
  auto cluster = gossip::Cluster::start(std::move(co), *store_,
                                        [this](Result<storage::Applied> r) { merged(r); });
  if (!cluster.ok()) return cluster.error();
  std::unique_lock lock(clusterMutex_);
  cluster_ = std::move(cluster).value();
  clusterLive_ = cluster_.get();
  api::logf(api::LogLevel::kInfo, "gossip: node %s in region %s on %s, %zu seed(s)%s",
            options_.nodeId.c_str(), cluster_->region().c_str(), cluster_->address().c_str(),
            options_.cluster.seeds.size(), options_.cluster.rejoin ? ", rejoining" : "");
  return okStatus();
}

Node::Node(Options options, std::unique_ptr<internal::FeedSubscribers> feed,
           std::unique_ptr<storage::Store> store)
    : options_(std::move(options)),
      started_(std::chrono::steady_clock::now()),
      metrics_(std::make_unique<api::Metrics>()),
      feed_(std::move(feed)),
      store_(std::move(store)) {}

Node::~Node() {
  shutdown();
  store_.reset();  // drains what is still queued (nothing: shutdown waited)
}

Result<size_t> Node::reloadTokens() {
  if (options_.rpc.tokensFile.empty() || options_.listen.empty()) {
    return makeError(ErrorCode::kInvalidArgument,
                     "no tokens file to reload (the node serves RPC with --no-auth or not at all)");
  }
  auto loaded = api::TokenTable::load(options_.rpc.tokensFile);
  if (!loaded.ok()) return loaded.error();
  if (!rpc_ || closing_.load())
    return makeError(ErrorCode::kUnavailable, "the node is shutting down");
  size_t count = loaded->size();
  auto revoked = rpc_->reloadTokens(std::move(loaded).value());
  if (revoked.ok()) {
    api::logf(api::LogLevel::kInfo, "rpc: reloaded %zu token(s) from %s; %zu session(s) revoked",
              count, options_.rpc.tokensFile.c_str(), *revoked);
  }
  return revoked;
}

std::string Node::rpcAddress() const { return rpc_ ? rpc_->address() : std::string(); }
std::string Node::metricsAddress() const { return rpc_ ? rpc_->metricsAddress() : std::string(); }
std::string Node::httpAddress() const { return rpc_ ? rpc_->httpAddress() : std::string(); }

void Node::shutdown() {
  {
    std::unique_lock lock(writesMutex_);
    closing_ = true;
    if (!writesIdle_.wait_for(lock, std::chrono::seconds(60),
                              [&] { return writesInFlight_ == 0; })) {
      api::logf(api::LogLevel::kWarn,
                "shutdown: %llu writes still uncommitted after 60 s; the store will "
                "finish them before closing",
                static_cast<unsigned long long>(writesInFlight_));
    }
  }
  // No write callback runs any more, so nobody reads clusterLive_.
  clusterLive_ = nullptr;
  {
    std::unique_lock lock(clusterMutex_);  // after a synchronous leave() returned
    cluster_.reset();
  }
  // An asynchronous leave's thread: it finds no cluster now, or has
  // finished; its callback may still post to rpc_, so before rpc_ goes.
  std::thread leaver;
  {
    std::lock_guard lock(leaveMutex_);
    leaver = std::move(leaveThread_);
  }
  if (leaver.joinable()) leaver.join();
  // A running backup finishes (it reads the store, which is still open);
  // its callback may post to rpc_ too.
  std::thread backer;
  {
    std::lock_guard lock(backupMutex_);
    backer = std::move(backupThread_);
  }
  if (backer.joinable()) backer.join();
  {
    // Merges the store still commits must not reach RPC watchers once the
    // RPC server is gone.
    std::lock_guard lock(watchMutex_);
    notifyMerges_ = false;
  }
  rpc_.reset();
}

api::Check Node::check(const WriteRequest& r) const {
  const api::Limits& l = options_.limits;
  switch (r.op) {
    case WriteOp::kPut:
      return api::checkPut(r.product, r.author, r.rating, r.title, r.body, l);
    case WriteOp::kDelete:
      return api::checkKey(r.product, r.author, l);
    case WriteOp::kVote:
    case WriteOp::kUnvote:
      return api::checkKeyAnd(r.product, r.author, "voter", r.arg, l);
    case WriteOp::kTag:
    case WriteOp::kUntag:
      return api::checkKeyAnd(r.product, r.author, "tag", r.arg, l);
    case WriteOp::kModerate:
      return api::checkModerate(r.product, r.author, r.arg, l);
    case WriteOp::kReply:
      return api::checkReply(r.product, r.author, r.arg, l);
  }
  return api::FieldError{"op", "unknown write operation"};
}

void Node::write(WriteRequest request, WriteDone done) {
  if (auto bad = check(request)) {
    done(bad->toError());
    return;
  }
  {
    std::lock_guard lock(writesMutex_);
    if (closing_) {
      done(makeError(ErrorCode::kUnavailable,
                     "node is shutting down; retry on another node or after restart"));
      return;
    }
    // Not closing, so the cluster (if any) is still there.
    gossip::Cluster* cluster = clusterLive_.load();
    if (left_.load() || (cluster != nullptr && cluster->removed())) {
      done(outOfClusterError());
      return;
    }
    ++writesInFlight_;
  }
  crdt::ReviewKey key{request.product, request.author};
  const char* op = writeOpName(request.op);
  auto mutation = mutationFor(request, options_.limits);
  store_->mutate(std::move(key), std::move(mutation),
                 [this, op, done = std::move(done)](Result<storage::Applied> applied) {
                   done(committed(op, applied));
                   finishWrite();
                 });
}

Result<ReviewView> Node::committed(const char* op, const Result<storage::Applied>& applied) {
  if (!applied.ok()) return applied.error();
  if (applied->changed) {
    notify(op, applied->state);
    notifySessions(applied->state);
    if (gossip::Cluster* cluster = clusterLive_.load()) cluster->publish(applied->delta);
  }
  ReviewView view = ReviewView::of(applied->state);
  view.session = api::SessionToken::of(applied->delta, options_.nodeId).encode();
  return view;
}

void Node::merged(const Result<storage::Applied>& applied) {
  if (!applied.ok()) {
    mergesRefused_.fetch_add(1, std::memory_order_relaxed);
    // Past the limits (checkPeerGrowth): a warning at most every 10 s per
    // process; clock drift has its own counter and stays at debug.
    static std::atomic<int64_t> lastWarnMillis{INT64_MIN / 2};
    int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count();
    int64_t last = lastWarnMillis.load();
    bool warn = applied.error().code == ErrorCode::kInvalidArgument && now - last >= 10'000 &&
                lastWarnMillis.compare_exchange_strong(last, now);
    api::logf(warn ? api::LogLevel::kWarn : api::LogLevel::kDebug,
              "gossip: refused to merge a peer's state: %s", applied.error().toString().c_str());
    return;
  }
  if (!applied->changed) return;
  mergesApplied_.fetch_add(1, std::memory_order_relaxed);
  notifySessions(applied->state);
  std::lock_guard lock(watchMutex_);
  if (notifyMerges_) notifyLocked("merge", applied->state);
}

void Node::finishWrite() {
  std::lock_guard lock(writesMutex_);
  if (--writesInFlight_ == 0) writesIdle_.notify_all();
}

Result<ReviewView> Node::write(WriteRequest request) {
  std::promise<Result<ReviewView>> promise;
  auto future = promise.get_future();
  write(std::move(request), [&promise](Result<ReviewView> r) { promise.set_value(std::move(r)); });
  return future.get();
}

Result<ReviewView> Node::put(std::string product, std::string author, uint32_t rating,
                             std::string title, std::string body) {
  WriteRequest r;
  r.op = WriteOp::kPut;
  r.product = std::move(product);
  r.author = std::move(author);
  r.rating = rating;
  r.title = std::move(title);
  r.body = std::move(body);
  return write(std::move(r));
}

namespace {
WriteRequest keyed(WriteOp op, std::string product, std::string author, std::string arg) {
  WriteRequest r;
  r.op = op;
  r.product = std::move(product);
  r.author = std::move(author);
  r.arg = std::move(arg);
  return r;
}
}  // namespace

Result<ReviewView> Node::erase(std::string product, std::string author) {
  return write(keyed(WriteOp::kDelete, std::move(product), std::move(author), {}));
}
Result<ReviewView> Node::vote(std::string product, std::string author, std::string voter) {
  return write(keyed(WriteOp::kVote, std::move(product), std::move(author), std::move(voter)));
}
Result<ReviewView> Node::unvote(std::string product, std::string author, std::string voter) {
  return write(keyed(WriteOp::kUnvote, std::move(product), std::move(author), std::move(voter)));
}
Result<ReviewView> Node::tag(std::string product, std::string author, std::string tag) {
  return write(keyed(WriteOp::kTag, std::move(product), std::move(author), std::move(tag)));
}
Result<ReviewView> Node::untag(std::string product, std::string author, std::string tag) {
  return write(keyed(WriteOp::kUntag, std::move(product), std::move(author), std::move(tag)));
}
Result<ReviewView> Node::moderate(std::string product, std::string author,
                                  crdt::Visibility visibility, std::string reason) {
  WriteRequest r =
      keyed(WriteOp::kModerate, std::move(product), std::move(author), std::move(reason));
  r.visibility = visibility;
  return write(std::move(r));
}
Result<ReviewView> Node::reply(std::string product, std::string author, std::string text) {
  return write(keyed(WriteOp::kReply, std::move(product), std::move(author), std::move(text)));
}

Status Node::beforeRead(const ReadOptions& read) {
  if (read.session.empty()) return okStatus();
  return awaitSession(read.session);
}

Status Node::checkGet(const std::string& product, const std::string& author) const {
  if (auto bad = api::checkKey(product, author, options_.limits)) return bad->toError();
  return okStatus();
}

Status Node::checkList(const std::string& product, const std::string& cursor,
                       uint32_t limit) const {
  if (auto bad = api::checkId("product", product, options_.limits)) return bad->toError();
  if (cursor.size() > kMaxCursorBytes) {
    return api::FieldError{"cursor", "is not a cursor this node returned"}.toError();
  }
  if (auto bad = api::checkLimit(limit)) return bad->toError();
  return okStatus();
}

Status Node::checkSummary(const std::string& product) const {
  if (auto bad = api::checkId("product", product, options_.limits)) return bad->toError();
  return okStatus();
}

Status Node::checkByAuthor(const std::string& author, const std::string& cursor,
                           uint32_t limit) const {
  if (auto bad = api::checkId("author", author, options_.limits)) return bad->toError();
  if (cursor.size() > kMaxCursorBytes) {
    return api::FieldError{"cursor", "is not a cursor this node returned"}.toError();
  }
  if (auto bad = api::checkLimit(limit)) return bad->toError();
  return okStatus();
}

Result<ReviewView> Node::get(const std::string& product, const std::string& author,
                             const ReadOptions& read) {
  if (auto bad = checkGet(product, author); !bad.ok()) return bad.error();
  if (auto waited = beforeRead(read); !waited.ok()) return waited.error();
  crdt::ReviewKey key{product, author};
  auto doc = store_->get(key);
  if (!doc.ok()) return doc.error();
  if (!doc->has_value() || !(*doc)->exists()) return notFound(key);
  return ReviewView::of(**doc);
}

Result<ReviewPage> Node::list(const std::string& product, storage::Order order,
                              const std::string& cursor, uint32_t limit, const ReadOptions& read) {
  if (auto bad = checkList(product, cursor, limit); !bad.ok()) return bad.error();
  if (auto waited = beforeRead(read); !waited.ok()) return waited.error();
  return toPage(store_->listProduct(product, order, cursor, pageSize(limit)));
}

Result<ProductPageView> Node::page(const std::string& product, storage::Order order,
                                   const std::string& cursor, uint32_t limit,
                                   const ReadOptions& read) {
  if (auto bad = checkList(product, cursor, limit); !bad.ok()) return bad.error();
  if (auto waited = beforeRead(read); !waited.ok()) return waited.error();
  auto both = store_->productPage(product, order, cursor, pageSize(limit));
  if (!both.ok()) return both.error();
  auto page = toPage(std::move(both->page));
  if (!page.ok()) return page.error();
  return ProductPageView{both->summary, std::move(*page)};
}

Result<storage::ProductSummary> Node::summary(const std::string& product, const ReadOptions& read) {
  if (auto bad = checkSummary(product); !bad.ok()) return bad.error();
  if (auto waited = beforeRead(read); !waited.ok()) return waited.error();
  return store_->summary(product);
}

Result<ReviewPage> Node::byAuthor(const std::string& author, const std::string& cursor,
                                  uint32_t limit, const ReadOptions& read) {
  if (auto bad = checkByAuthor(author, cursor, limit); !bad.ok()) return bad.error();
  if (auto waited = beforeRead(read); !waited.ok()) return waited.error();
  return toPage(store_->listAuthor(author, cursor, pageSize(limit)));
}

Result<NodeStatus> Node::status() {
  NodeStatus s;
  s.nodeId = options_.nodeId;
  s.replicaId = store_->replicaId();
  s.version = CHORUS_VERSION;
  s.apiVersion = api::kApiVersion;
  s.uptimeMillis = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::steady_clock::now() - started_)
                                             .count());
  s.stats = store_->stats();
  s.keyCount = s.stats.documents;
  auto root = store_->merkleRoot();
  if (!root.ok()) return root.error();
  s.merkleRoot = *root;
  std::shared_lock lock(clusterMutex_);
  if (cluster_) {
    s.gossipAddress = cluster_->address();
    s.region = cluster_->region();
  }
  return s;
}

NodeHealth Node::health() {
  NodeHealth h;
  h.nodeId = options_.nodeId;
  h.replicaId = store_->replicaId();
  h.version = CHORUS_VERSION;
  h.apiVersion = api::kApiVersion;
  h.uptimeMillis = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::steady_clock::now() - started_)
                                             .count());
  h.keyCount = store_->stats().documents;
  h.serving = true;
  auto root = store_->merkleRoot();
  if (root.ok()) {
    h.merkleRoot = *root;
  } else {
    h.serving = false;
    h.reason = "the store cannot read its Merkle root: " + root.error().toString();
  }
  bool removed = false;
  {
    std::shared_lock lock(clusterMutex_);
    if (cluster_) {
      h.clustered = true;
      h.region = cluster_->region();
      removed = cluster_->removed();
      uint64_t newest = 0;
      for (const auto& m : cluster_->members()) {
        if (m.state == gossip::PeerState::kLeft) continue;
        if (m.state == gossip::PeerState::kAlive) ++h.peersAlive;
        if (m.state == gossip::PeerState::kSuspect) ++h.peersSuspect;
        if (m.state == gossip::PeerState::kDead) ++h.peersDead;
        newest = std::max(newest, m.lastSyncUnixMillis);
      }
      if (newest != 0) {
        auto now = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::system_clock::now().time_since_epoch())
                                             .count());
        h.lastSyncMillisAgo = now - std::min(now, newest);
      }
    }
  }
  if (closing_.load()) {
    h.serving = false;
    h.reason = "shutting down";
  } else if (removed) {
    h.serving = false;
    h.reason = "removed from the cluster by another node (restart it with --rejoin)";
  } else if (left_.load()) {
    h.serving = false;
    h.reason = "left the cluster (restart it with --rejoin)";
  }
  return h;
}

Error Node::noCluster() const {
  return makeError(ErrorCode::kUnavailable,
                   "node '" + options_.nodeId +
                       "' runs without a cluster: start chorusd with --gossip-listen "
                       "(embedded: set Node::Options::cluster.listen)");
}

Error Node::outOfClusterError() const {
  return makeError(ErrorCode::kUnavailable,
                   "node '" + options_.nodeId +
                       "' is out of the cluster (it left, or was removed), so its writes would "
                       "never reach the other nodes; write to another node (restart it with "
                       "--rejoin to join again)");
}

bool Node::outOfCluster() {
  if (left_.load()) return true;
  std::shared_lock lock(clusterMutex_);
  return cluster_ && cluster_->removed();
}

Result<ClusterView> Node::clusterView() {
  ClusterView v;
  v.nodeId = options_.nodeId;
  v.rpcAddress = rpcAddress();
  {
    std::shared_lock lock(clusterMutex_);
    if (!cluster_) return noCluster();
    v.gossipAddress = cluster_->address();
    v.partitioned = cluster_->partitioned();
    v.members = cluster_->members();
    v.stats = cluster_->stats();
    v.region = cluster_->region();
    v.removed = cluster_->removed();
    v.state = v.removed || left_.load() ? gossip::PeerState::kLeft : gossip::PeerState::kAlive;
  }
  storage::StoreStats stats = store_->stats();
  v.keyCount = stats.documents;
  v.refusedStamps = stats.refusedStamps;
  auto root = store_->merkleRoot();
  if (!root.ok()) return root.error();
  v.merkleRoot = *root;
  v.nowUnixMillis = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                              std::chrono::system_clock::now().time_since_epoch())
                                              .count());
  return v;
}

Status Node::partition(const std::vector<std::string>& peers) {
  std::shared_lock lock(clusterMutex_);
  if (!cluster_) return noCluster();
  if (auto bad = api::checkPeerIds(peers, options_.nodeId)) return bad->toError();
  cluster_->partition(peers);
  api::logf(api::LogLevel::kInfo, "gossip: partitioned from %zu peer(s) on request", peers.size());
  return okStatus();
}

Status Node::heal() {
  std::shared_lock lock(clusterMutex_);
  if (!cluster_) return noCluster();
  cluster_->heal();
  api::logf(api::LogLevel::kInfo, "gossip: healed on request");
  return okStatus();
}

Result<std::vector<gossip::KeyInfo>> Node::keys(api::KeyOp op, const std::string& key) {
  std::shared_lock lock(clusterMutex_);
  if (!cluster_) return noCluster();
  Status done = okStatus();
  switch (op) {
    case api::KeyOp::kList:
      break;
    case api::KeyOp::kInstall:
      done = cluster_->installKey(key);
      break;
    case api::KeyOp::kUse:
      done = cluster_->useKey(key);
      break;
    case api::KeyOp::kRemove:
      done = cluster_->removeKey(key);
      break;
  }
  if (!done.ok()) return done.error();
  std::vector<gossip::KeyInfo> keys = cluster_->keys();
  if (op != api::KeyOp::kList) {
    // Never the key itself: the primary's fingerprint says what changed.
    api::logf(api::LogLevel::kInfo, "gossip: cluster key %s on request; %zu key(s), primary %s",
              api::keyOpName(op), keys.size(),
              keys.empty() ? "none" : keys.front().fingerprint.c_str());
  }
  return keys;
}

namespace {
constexpr std::chrono::milliseconds kMaxLeaveTimeout = std::chrono::minutes(5);
}  // namespace

Status Node::leaveNow(std::chrono::milliseconds timeout) {
  if (timeout < std::chrono::milliseconds(1) || timeout > kMaxLeaveTimeout) {
    return makeError(ErrorCode::kInvalidArgument, "timeout: must be between 1 ms and 5 min");
  }
  std::shared_lock lock(clusterMutex_);
  if (!cluster_ || closing_.load()) return noCluster();
  if (cluster_->removed()) {
    return makeError(ErrorCode::kUnavailable, "node '" + options_.nodeId +
                                                  "' was removed from the cluster by another "
                                                  "node; it gossips no more");
  }
  api::logf(api::LogLevel::kInfo, "gossip: leaving the cluster on request (up to %lld ms)",
            static_cast<long long>(timeout.count()));
  Status s = cluster_->leave(timeout);
  // Whatever the answer, the announcement may be out: writes here would
  // not reach the others.
  left_ = true;
  if (s.ok()) {
    api::logf(api::LogLevel::kInfo,
              "gossip: left the cluster; a peer holds this node's data; writes are refused, "
              "stop the node");
  } else {
    api::logf(api::LogLevel::kWarn,
              "gossip: leaving: %s; writes are refused (peers may have learnt that this node "
              "left); stop it, or restart it with --rejoin to stay",
              s.error().toString().c_str());
  }
  return s;
}

Status Node::leave(std::chrono::milliseconds timeout) {
  {
    std::lock_guard lock(leaveMutex_);
    if (leaving_) {
      return makeError(ErrorCode::kUnavailable,
                       "node '" + options_.nodeId + "' is already leaving the cluster");
    }
    leaving_ = true;
  }
  Status s = leaveNow(timeout);
  std::lock_guard lock(leaveMutex_);
  leaving_ = false;
  return s;
}

void Node::leave(std::chrono::milliseconds timeout, std::function<void(Status)> done) {
  std::thread finished;
  {
    std::unique_lock lock(leaveMutex_);
    std::optional<Error> refused;
    if (closing_.load()) {
      refused = makeError(ErrorCode::kUnavailable,
                          "node '" + options_.nodeId + "' is shutting down (it stays a member)");
    } else if (leaving_) {
      refused = makeError(ErrorCode::kUnavailable,
                          "node '" + options_.nodeId + "' is already leaving the cluster");
    }
    if (refused) {
      lock.unlock();
      done(std::move(*refused));
      return;
    }
    leaving_ = true;
    finished = std::move(leaveThread_);  // a previous one, done leaving
    leaveThread_ = std::thread([this, timeout, done = std::move(done)] {
      Status s = leaveNow(timeout);
      {
        std::lock_guard lock(leaveMutex_);
        leaving_ = false;
      }
      done(std::move(s));
    });
  }
  if (finished.joinable()) finished.join();
}

Result<storage::BackupManifest> Node::backupNow(const std::string& dir) {
  if (dir.empty() || dir.front() != '/') {
    return api::FieldError{"dir", "must be an absolute path on the node's host"}.toError();
  }
  storage::BackupOptions o;
  o.nodeId = options_.nodeId;
  auto started = std::chrono::steady_clock::now();
  auto m = store_->backup(dir, o);
  if (!m.ok() && m.error().code == ErrorCode::kInvalidArgument) {
    // The store refuses only the dir (not a directory, not empty): say so,
    // so clients see field "dir" as documented.
    m = api::FieldError{"dir", m.error().message}.toError();
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  started)
                .count();
  if (m.ok()) {
    api::logf(api::LogLevel::kInfo, "backup: %llu reviews (%llu bytes) written to %s in %lld ms",
              static_cast<unsigned long long>(m->keys),
              static_cast<unsigned long long>(m->fileBytes), dir.c_str(),
              static_cast<long long>(ms));
  } else {
    api::logf(api::LogLevel::kWarn, "backup to %s failed: %s", dir.c_str(),
              m.error().toString().c_str());
  }
  return m;
}

Result<storage::BackupManifest> Node::backup(const std::string& dir) {
  {
    std::lock_guard lock(backupMutex_);
    if (closing_.load()) {
      return makeError(ErrorCode::kUnavailable,
                       "node '" + options_.nodeId + "' is shutting down; no backup taken");
    }
    if (backingUp_) {
      return makeError(ErrorCode::kUnavailable,
                       "node '" + options_.nodeId + "' is already taking a backup; retry later");
    }
    backingUp_ = true;
  }
  auto m = backupNow(dir);
  std::lock_guard lock(backupMutex_);
  backingUp_ = false;
  return m;
}

void Node::backup(const std::string& dir,
                  std::function<void(Result<storage::BackupManifest>)> done) {
  std::thread finished;
  {
    std::unique_lock lock(backupMutex_);
    std::optional<Error> refused;
    if (closing_.load()) {
      refused = makeError(ErrorCode::kUnavailable,
                          "node '" + options_.nodeId + "' is shutting down; no backup taken");
    } else if (backingUp_) {
      refused = makeError(ErrorCode::kUnavailable,
                          "node '" + options_.nodeId + "' is already taking a backup; retry later");
    }
    if (refused) {
      lock.unlock();
      done(std::move(*refused));
      return;
    }
    backingUp_ = true;
    finished = std::move(backupThread_);  // a previous one, done
    backupThread_ = std::thread([this, dir, done = std::move(done)] {
      auto m = backupNow(dir);
      {
        std::lock_guard lock(backupMutex_);
        backingUp_ = false;
      }
      done(std::move(m));
    });
  }
  if (finished.joinable()) finished.join();
}

Status Node::remove(const std::string& nodeId) {
  std::shared_lock lock(clusterMutex_);
  if (!cluster_) return noCluster();
  if (auto bad = api::checkRemoveId(nodeId, options_.nodeId)) return bad->toError();
  Status s = cluster_->remove(nodeId);
  if (!s.ok()) {
    if (s.error().code == ErrorCode::kNotFound) {
      return makeError(ErrorCode::kNotFound, "node '" + options_.nodeId + "' knows no member '" +
                                                 nodeId +
                                                 "' (`chorus cluster status` lists the members)");
    }
    return s;
  }
  api::logf(api::LogLevel::kInfo, "gossip: removed node %s from the cluster on request",
            nodeId.c_str());
  return okStatus();
}

Result<ChangesPage> Node::changes(uint64_t since, uint32_t limit, bool includeDocs) {
  if (limit > kMaxFeedLimit) {
    return api::FieldError{"limit", "at most " + std::to_string(kMaxFeedLimit) +
                                        " changes (0 = " + std::to_string(kDefaultFeedLimit) + ")"}
        .toError();
  }
  auto page = store_->changes(since, limit == 0 ? kDefaultFeedLimit : limit, includeDocs);
  if (!page.ok()) return page.error();
  ChangesPage out;
  out.lastSeq = page->lastSeq;
  out.replicaId = page->replica;
  out.changes.reserve(page->changes.size());
  for (auto& e : page->changes) {
    FeedChange c;
    c.seq = e.seq;
    c.product = std::move(e.key.product);
    c.author = std::move(e.key.author);
    c.deleted = e.deleted;
    if (e.doc) c.review = ReviewView::of(*e.doc);
    out.changes.push_back(std::move(c));
  }
  return out;
}

uint64_t Node::subscribe(FeedSubscriber subscriber) {
  std::lock_guard lock(feed_->mutex);
  uint64_t id = feed_->next++;
  feed_->subscribers.emplace(id, std::move(subscriber));
  return id;
}

void Node::unsubscribe(uint64_t id) {
  std::lock_guard lock(feed_->mutex);
  feed_->subscribers.erase(id);
}

// ---- read your writes ---------------------------------------------------------

Result<api::SessionToken> Node::parseSession(const std::string& text) const {
  auto token = api::SessionToken::decode(text);
  if (!token.ok()) return token.error();
  if (api::checkKey(token->key.product, token->key.author, options_.limits)) {
    return api::FieldError{"session",
                           "names no valid review (pass the `session` a write "
                           "answered, unchanged)"}
        .toError();
  }
  return token;
}

Result<bool> Node::holds(const api::SessionToken& token) {
  auto doc = store_->get(token.key);
  if (!doc.ok()) return doc.error();
  return doc->has_value() ? token.heldBy(**doc) : token.heldBy(crdt::ReviewDoc(token.key));
}

uint64_t Node::waitSession(const api::SessionToken& token, std::function<void()> ready) {
  std::lock_guard lock(sessionMutex_);
  uint64_t id = nextSessionWait_++;
  auto it = sessionWaits_.emplace(token.key, SessionWait{id, token, std::move(ready)});
  sessionWaitsById_.emplace(id, it);
  sessionWaiting_.store(sessionWaits_.size());
  return id;
}

void Node::cancelSessionWait(uint64_t id) {
  std::lock_guard lock(sessionMutex_);
  auto it = sessionWaitsById_.find(id);
  if (it == sessionWaitsById_.end()) return;  // it ran
  sessionWaits_.erase(it->second);
  sessionWaitsById_.erase(it);
  sessionWaiting_.store(sessionWaits_.size());
}

void Node::notifySessions(const crdt::ReviewDoc& state) {
  if (sessionWaiting_.load() == 0) return;
  std::lock_guard lock(sessionMutex_);
  auto [begin, end] = sessionWaits_.equal_range(state.key());
  for (auto it = begin; it != end;) {
    if (!it->second.token.heldBy(state)) {
      ++it;
      continue;
    }
    it->second.ready();
    sessionWaitsById_.erase(it->second.id);
    it = sessionWaits_.erase(it);
  }
  sessionWaiting_.store(sessionWaits_.size());
}

void Node::pullSession(const api::SessionToken& token) {
  std::shared_lock lock(clusterMutex_);
  if (cluster_ && !closing_.load()) cluster_->pull(token.key, token.origin);
}

Error Node::notCaughtUp(const api::SessionToken& token) const {
  std::string from = token.origin.empty() || token.origin == options_.nodeId
                         ? std::string()
                         : " (node '" + token.origin + "')";
  return makeError(ErrorCode::kUnavailable,
                   "node '" + options_.nodeId + "' has not caught up with the session's write " +
                       "to review " + token.key.product + "/" + token.key.author + " within " +
                       std::to_string(options_.sessionWait.count()) +
                       " ms: retry, or read on the node written to" + from);
}

Status Node::awaitSession(const std::string& text) {
  auto token = parseSession(text);
  if (!token.ok()) return token.error();
  struct Flag {
    std::mutex m;
    std::condition_variable cv;
    bool ready = false;
  };
  auto flag = std::make_shared<Flag>();
  uint64_t id = waitSession(*token, [flag] {
    std::lock_guard lock(flag->m);
    flag->ready = true;
    flag->cv.notify_all();
  });
  struct Cancel {
    Node* node;
    uint64_t id;
    ~Cancel() { node->cancelSessionWait(id); }
  } cancel{this, id};
  auto deadline = std::chrono::steady_clock::now() + options_.sessionWait;
  // At most sessionWait / kSessionRecheck + 1 rounds: each ends at a
  // notification, the recheck interval or the deadline.
  while (true) {
    auto held = holds(*token);
    if (!held.ok()) return held.error();
    if (*held) return okStatus();
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return notCaughtUp(*token);
    pullSession(*token);
    std::unique_lock lock(flag->m);
    flag->cv.wait_until(lock, std::min(deadline, now + kSessionRecheck),
                        [&] { return flag->ready; });
  }
}

Result<uint64_t> Node::watch(const std::string& product, Watcher watcher) {
  if (auto bad = api::checkId("product", product, options_.limits)) return bad->toError();
  std::lock_guard lock(watchMutex_);
  uint64_t id = nextWatch_++;
  watchers_.emplace(product, std::make_pair(id, std::move(watcher)));
  return id;
}

void Node::unwatch(uint64_t id) {
  std::lock_guard lock(watchMutex_);
  for (auto it = watchers_.begin(); it != watchers_.end(); ++it) {
    if (it->second.first == id) {
      watchers_.erase(it);
      return;
    }
  }
}

void Node::notify(const char* op, const crdt::ReviewDoc& state) {
  std::lock_guard lock(watchMutex_);
  notifyLocked(op, state);
}

void Node::notifyLocked(const char* op, const crdt::ReviewDoc& state) {
  auto [begin, end] = watchers_.equal_range(state.key().product);
  if (begin == end) return;
  Change change{op, ReviewView::of(state), 0};
  for (auto it = begin; it != end; ++it) it->second.second(change);
}

}  // namespace chorus
