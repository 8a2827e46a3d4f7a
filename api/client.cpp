#include "api/client.h"

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>

#include "api/wire.h"

namespace chorus::api {

struct Client::Impl {
  std::string address;
  Options options;
  kj::AsyncIoContext io = kj::setupAsyncIo();
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyVatNetwork> network;
  kj::Own<capnp::RpcSystem<capnp::rpc::twoparty::VatId>> rpc;
  wire::ReviewStore::Client reviews = nullptr;
  wire::Admin::Client admin = nullptr;
  wire::Chorus::Client bootstrap = nullptr;
  std::string principal;
  std::vector<std::string> roles;
  uint32_t apiVersion = 0;

  // A watch or follow running: waits until `stopped` (the observer asked
  // to stop: ok), `duration` passes (ok), the connection drops, or the node
  // drops the observer (`stopped` broken: it ended the stream, for
  // `endedWhy`).
  Status holdStream(kj::Promise<void> stopped, std::chrono::milliseconds duration,
                    const std::string& endedWhy) {
    try {
      auto disconnected = network->onDisconnect().then([]() { return 2; });
      auto elapsed =
          io.provider->getTimer().afterDelay(kj::MILLISECONDS * duration.count()).then([]() {
            return 1;
          });
      int why = stopped.then([]() { return 0; }, [](kj::Exception&&) { return 3; })
                    .exclusiveJoin(kj::mv(elapsed))
                    .exclusiveJoin(kj::mv(disconnected))
                    .wait(io.waitScope);
      if (why == 2) return makeError(ErrorCode::kUnavailable, "lost the connection to " + address);
      if (why == 3) return makeError(ErrorCode::kUnavailable, address + " " + endedWhy);
    } catch (kj::Exception& e) {
      return transportError(e);
    }
    return okStatus();
  }

  Error transportError(const kj::Exception& e) const {
    std::string what = e.getDescription().cStr();
    switch (e.getType()) {
      case kj::Exception::Type::OVERLOADED:
        return makeError(ErrorCode::kOverloaded, "node at " + address + " is overloaded: " + what);
      case kj::Exception::Type::DISCONNECTED:
        // Bytes that are not Cap'n Proto messages: something else listens
        // there, most likely a node's gossip port.
        if (what.find("segment") != std::string::npos) {
          return makeError(ErrorCode::kUnavailable,
                           address +
                               " does not answer as a Chorus RPC port; this looks like a "
                               "gossip port, not the client API (--connect takes the "
                               "address chorusd prints as 'listening on', default port "
                               "7400)");
        }
        return makeError(ErrorCode::kUnavailable,
                         "lost the connection to " + address + ": " + what);
      default:
        return makeError(ErrorCode::kInternal, "call to " + address + " failed: " + what);
    }
  }

  // Waits for `promise`, bounded by options.timeout (or `limit`).
  template <typename T>
  Result<T> wait(kj::Promise<T>&& promise) {
    return wait(kj::mv(promise), options.timeout);
  }
  template <typename T>
  Result<T> wait(kj::Promise<T>&& promise, std::chrono::milliseconds limit) {
    try {
      auto bounded =
          io.provider->getTimer().timeoutAfter(kj::MILLISECONDS * limit.count(), kj::mv(promise));
      return bounded.wait(io.waitScope);
    } catch (kj::Exception& e) {
      if (e.getType() == kj::Exception::Type::OVERLOADED &&
          std::string(e.getDescription().cStr()).find("timed out") != std::string::npos) {
        return makeError(ErrorCode::kUnavailable, "no answer from " + address + " within " +
                                                      std::to_string(limit.count()) + " ms");
      }
      return transportError(e);
    }
  }
};

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

Result<std::unique_ptr<Client>> Client::connect(const std::string& address, Options options) {
  auto impl = std::make_unique<Impl>();
  impl->address = address;
  impl->options = options;
  if (address.find(':') == std::string::npos) {
    return makeError(ErrorCode::kInvalidArgument,
                     "connect address: '" + address + "' is not host:port (e.g. 127.0.0.1:7400)");
  }
  try {
    auto& network = impl->io.provider->getNetwork();
    auto stream =
        impl->io.provider->getTimer()
            .timeoutAfter(kj::MILLISECONDS * options.timeout.count(),
                          network.parseAddress(address).then([](kj::Own<kj::NetworkAddress> a) {
                            return a->connect().attach(kj::mv(a));
                          }))
            .wait(impl->io.waitScope);
    impl->stream = kj::mv(stream);
  } catch (kj::Exception& e) {
    return makeError(ErrorCode::kUnavailable,
                     "cannot connect to " + address + ": " + e.getDescription().cStr() +
                         " (is chorusd running there? see --connect / CHORUS_ADDR)");
  }
  capnp::ReaderOptions reader;
  reader.traversalLimitInWords = 64ull << 20;  // a page of 100 maximal reviews fits
  impl->network = kj::heap<capnp::TwoPartyVatNetwork>(*impl->stream,
                                                      capnp::rpc::twoparty::Side::CLIENT, reader);
  impl->rpc = kj::heap(capnp::makeRpcClient(*impl->network));
  capnp::word scratch[4];
  memset(scratch, 0, sizeof(scratch));
  capnp::MallocMessageBuilder vatMessage(scratch);
  auto vatId = vatMessage.getRoot<capnp::rpc::twoparty::VatId>();
  vatId.setSide(capnp::rpc::twoparty::Side::SERVER);
  auto bootstrap = impl->rpc->bootstrap(vatId).castAs<wire::Chorus>();
  impl->bootstrap = bootstrap;
  if (options.token.empty()) {
    impl->reviews = bootstrap.reviewsRequest().send().getReviews();
    impl->admin = bootstrap.adminRequest().send().getAdmin();
    return std::unique_ptr<Client>(new Client(std::move(impl)));
  }
  auto q = bootstrap.authenticateRequest();
  q.setToken(options.token);
  auto response = impl->wait(q.send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  impl->reviews = response->getReviews();
  impl->admin = response->getAdmin();
  auto principal = response->getPrincipal();
  impl->principal.assign(principal.cStr(), principal.size());
  for (auto role : response->getRoles()) impl->roles.emplace_back(role.cStr(), role.size());
  impl->apiVersion = response->getApiVersion();
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

wire::ReviewStore::Client Client::reviews() { return impl_->reviews; }
const std::string& Client::principal() const { return impl_->principal; }
const std::vector<std::string>& Client::roles() const { return impl_->roles; }
uint32_t Client::apiVersion() const { return impl_->apiVersion; }
wire::Admin::Client Client::admin() { return impl_->admin; }
wire::Chorus::Client Client::bootstrap() { return impl_->bootstrap; }
kj::WaitScope& Client::waitScope() { return impl_->io.waitScope; }
kj::Timer& Client::timer() { return impl_->io.provider->getTimer(); }

namespace {

template <typename Request>
void setKey(Request& r, const std::string& product, const std::string& author) {
  r.setProduct(product);
  r.setAuthor(author);
}

}  // namespace

Result<ReviewView> Client::write(const WriteRequest& r) {
  auto& rs = impl_->reviews;
  auto run = [&](auto request) -> Result<ReviewView> {
    auto response = impl_->wait(request.send());
    if (!response.ok()) return response.error();
    if (response->hasError()) return fromWire(response->getError());
    ReviewView view;
    if constexpr (requires { response->getReview(); }) {
      view = fromWire(response->getReview());
    } else {
      view.product = r.product;
      view.author = r.author;
      view.deleted = true;
    }
    auto session = response->getSession();
    view.session.assign(session.cStr(), session.size());
    return view;
  };
  switch (r.op) {
    case WriteOp::kPut: {
      auto q = rs.putRequest();
      setKey(q, r.product, r.author);
      q.setRating(static_cast<uint8_t>(r.rating > 255 ? 255 : r.rating));
      q.setTitle(r.title);
      q.setBody(r.body);
      return run(kj::mv(q));
    }
    case WriteOp::kDelete: {
      auto q = rs.eraseRequest();
      setKey(q, r.product, r.author);
      return run(kj::mv(q));
    }
    case WriteOp::kVote: {
      auto q = rs.voteRequest();
      setKey(q, r.product, r.author);
      q.setVoter(r.arg);
      return run(kj::mv(q));
    }
    case WriteOp::kUnvote: {
      auto q = rs.unvoteRequest();
      setKey(q, r.product, r.author);
      q.setVoter(r.arg);
      return run(kj::mv(q));
    }
    case WriteOp::kTag: {
      auto q = rs.tagRequest();
      setKey(q, r.product, r.author);
      q.setTag(r.arg);
      return run(kj::mv(q));
    }
    case WriteOp::kUntag: {
      auto q = rs.untagRequest();
      setKey(q, r.product, r.author);
      q.setTag(r.arg);
      return run(kj::mv(q));
    }
    case WriteOp::kModerate: {
      auto q = rs.moderateRequest();
      setKey(q, r.product, r.author);
      q.setVisibility(toWire(r.visibility));
      q.setReason(r.arg);
      return run(kj::mv(q));
    }
    case WriteOp::kReply: {
      auto q = rs.replyRequest();
      setKey(q, r.product, r.author);
      q.setText(r.arg);
      return run(kj::mv(q));
    }
  }
  return makeError(ErrorCode::kInvalidArgument, "op: unknown write operation");
}

Result<ServerInfo> Client::info() {
  auto response = impl_->wait(impl_->bootstrap.infoRequest().send());
  if (!response.ok()) return response.error();
  ServerInfo info;
  info.apiVersion = response->getApiVersion();
  info.version = response->getVersion().cStr();
  info.nodeId = response->getNodeId().cStr();
  return info;
}

Result<ReviewView> Client::get(const std::string& product, const std::string& author,
                               const ReadOptions& read) {
  auto q = impl_->reviews.getRequest();
  setKey(q, product, author);
  q.setSession(read.session);
  auto response = impl_->wait(q.send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  return fromWire(response->getReview());
}

Result<ReviewPage> Client::list(const std::string& product, storage::Order order,
                                const std::string& cursor, uint32_t limit,
                                const ReadOptions& read) {
  auto q = impl_->reviews.listRequest();
  q.setProduct(product);
  q.setOrder(toWire(order));
  q.setCursor(cursor);
  q.setLimit(limit);
  q.setSession(read.session);
  auto response = impl_->wait(q.send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  return fromWire(response->getPage());
}

Result<storage::ProductSummary> Client::summary(const std::string& product,
                                                const ReadOptions& read) {
  auto q = impl_->reviews.summaryRequest();
  q.setProduct(product);
  q.setSession(read.session);
  auto response = impl_->wait(q.send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  return fromWire(response->getSummary());
}

Result<ProductPageView> Client::page(const std::string& product, storage::Order order,
                                     const std::string& cursor, uint32_t limit,
                                     const ReadOptions& read) {
  auto q = impl_->reviews.pageRequest();
  q.setProduct(product);
  q.setOrder(toWire(order));
  q.setCursor(cursor);
  q.setLimit(limit);
  q.setSession(read.session);
  auto response = impl_->wait(q.send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  return ProductPageView{fromWire(response->getSummary()), fromWire(response->getPage())};
}

Result<ReviewPage> Client::byAuthor(const std::string& author, const std::string& cursor,
                                    uint32_t limit, const ReadOptions& read) {
  auto q = impl_->reviews.byAuthorRequest();
  q.setAuthor(author);
  q.setCursor(cursor);
  q.setLimit(limit);
  q.setSession(read.session);
  auto response = impl_->wait(q.send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  return fromWire(response->getPage());
}

Result<NodeStatus> Client::status() {
  auto response = impl_->wait(impl_->admin.statusRequest().send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  return fromWire(response->getStatus());
}

Result<NodeHealth> Client::health() {
  auto response = impl_->wait(impl_->admin.healthRequest().send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  return fromWire(response->getHealth());
}

Result<ClusterView> Client::cluster() {
  auto response = impl_->wait(impl_->admin.clusterRequest().send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  return fromWire(response->getView());
}

Status Client::partition(const std::vector<std::string>& peers) {
  auto q = impl_->admin.partitionRequest();
  auto list = q.initPeers(static_cast<unsigned>(peers.size()));
  for (unsigned i = 0; i < peers.size(); ++i) list.set(i, peers[i]);
  auto response = impl_->wait(q.send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  return okStatus();
}

Status Client::heal() {
  auto response = impl_->wait(impl_->admin.healRequest().send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  return okStatus();
}

Result<std::vector<gossip::KeyInfo>> Client::keys(KeyOp op, const std::string& key) {
  auto q = impl_->admin.keysRequest();
  q.setOp(toWire(op));
  q.setKey(key);
  auto response = impl_->wait(q.send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  std::vector<gossip::KeyInfo> keys;
  for (auto k : response->getKeys()) {
    gossip::KeyInfo info;
    info.fingerprint.assign(k.getFingerprint().cStr(), k.getFingerprint().size());
    info.primary = k.getPrimary();
    keys.push_back(std::move(info));
  }
  return keys;
}

Status Client::leave(std::chrono::milliseconds timeout) {
  if (timeout.count() < 1 || timeout > std::chrono::minutes(5)) {
    return makeError(ErrorCode::kInvalidArgument, "timeout: must be between 1 ms and 5 min");
  }
  auto q = impl_->admin.leaveRequest();
  q.setTimeoutMillis(static_cast<uint32_t>(timeout.count()));
  auto response = impl_->wait(q.send(), timeout + std::chrono::seconds(5));
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  return okStatus();
}

Result<storage::BackupManifest> Client::backup(const std::string& dir,
                                               std::chrono::milliseconds wait) {
  auto q = impl_->admin.backupRequest();
  q.setDir(dir);
  auto response = impl_->wait(q.send(), wait);
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  return fromWire(response->getManifest());
}

Status Client::remove(const std::string& node) {
  auto q = impl_->admin.removeRequest();
  q.setNode(node);
  auto response = impl_->wait(q.send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  return okStatus();
}

Result<ChangesPage> Client::changes(uint64_t since, uint32_t limit, bool includeDocs) {
  auto q = impl_->reviews.changesRequest();
  q.setSince(since);
  q.setLimit(limit);
  q.setIncludeDocs(includeDocs);
  auto response = impl_->wait(q.send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  ChangesPage page;
  page.lastSeq = response->getLastSeq();
  page.replicaId = response->getReplicaId();
  for (auto c : response->getChanges()) page.changes.push_back(fromWire(c));
  return page;
}

namespace {

class FeedObserver final : public wire::FeedObserver::Server {
 public:
  FeedObserver(const std::function<bool(const ChangesPage&)>& onBatch,
               const crdt::ReplicaId& replica, kj::Own<kj::PromiseFulfiller<void>> stop)
      : onBatch_(onBatch), replica_(replica), stop_(kj::mv(stop)) {}

  kj::Promise<void> onChanges(OnChangesContext ctx) override {
    if (!stop_->isWaiting()) return kj::READY_NOW;
    auto p = ctx.getParams();
    ChangesPage page;
    page.lastSeq = p.getLastSeq();
    page.replicaId = replica_;
    for (auto c : p.getChanges()) page.changes.push_back(fromWire(c));
    if (!onBatch_(page)) stop_->fulfill();
    return kj::READY_NOW;
  }

 private:
  const std::function<bool(const ChangesPage&)>& onBatch_;
  const crdt::ReplicaId& replica_;
  kj::Own<kj::PromiseFulfiller<void>> stop_;
};

}  // namespace

Status Client::follow(uint64_t since, bool includeDocs, uint32_t limit,
                      const std::function<bool(const ChangesPage&)>& onBatch,
                      std::chrono::milliseconds duration,
                      const std::function<void(const ChangesPage&)>& onStarted) {
  auto stop = kj::newPromiseAndFulfiller<void>();
  crdt::ReplicaId replica = 0;
  auto q = impl_->reviews.followRequest();
  q.setSince(since);
  q.setIncludeDocs(includeDocs);
  q.setLimit(limit);
  q.setObserver(kj::heap<FeedObserver>(onBatch, replica, kj::mv(stop.fulfiller)));
  auto response = impl_->wait(q.send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  auto handle = response->getHandle();  // the follow lasts while we hold this
  replica = response->getReplicaId();
  if (onStarted) {
    ChangesPage start;
    start.lastSeq = response->getLastSeq();
    start.replicaId = replica;
    onStarted(start);
  }
  // The observer's fulfiller is destroyed unfulfilled when the node drops
  // the observer: it ended the follow (a revoked token, a failed read).
  return impl_->holdStream(kj::mv(stop.promise), duration,
                           "ended the follow (token revoked, or a failed read)");
}

namespace {

class Observer final : public wire::WatchObserver::Server {
 public:
  Observer(const std::function<bool(const Change&)>& onChange,
           kj::Own<kj::PromiseFulfiller<void>> stop)
      : onChange_(onChange), stop_(kj::mv(stop)) {}

  kj::Promise<void> onChange(OnChangeContext ctx) override {
    if (stop_->isWaiting() && !onChange_(fromWire(ctx.getParams().getChange()))) {
      stop_->fulfill();
    }
    return kj::READY_NOW;
  }

 private:
  const std::function<bool(const Change&)>& onChange_;
  kj::Own<kj::PromiseFulfiller<void>> stop_;
};

}  // namespace

Status Client::watch(const std::string& product, const std::function<bool(const Change&)>& onChange,
                     std::chrono::milliseconds duration, const std::function<void()>& onStarted) {
  auto stop = kj::newPromiseAndFulfiller<void>();
  auto q = impl_->reviews.watchRequest();
  q.setProduct(product);
  q.setObserver(kj::heap<Observer>(onChange, kj::mv(stop.fulfiller)));
  auto response = impl_->wait(q.send());
  if (!response.ok()) return response.error();
  if (response->hasError()) return fromWire(response->getError());
  auto handle = response->getHandle();  // the watch lasts while we hold this
  if (onStarted) onStarted();
  // The observer's fulfiller is destroyed unfulfilled when the node drops
  // the observer: it ended the watch (a revoked token) or the connection.
  return impl_->holdStream(kj::mv(stop.promise), duration,
                           "ended the watch (token revoked, or connection closed)");
}

}  // namespace chorus::api
