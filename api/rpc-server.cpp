#include "api/rpc-server.h"

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/compat/http.h>
#include <kj/debug.h>

#include <malloc.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <future>
#include <list>
#include <map>
#include <memory>
#include <unordered_map>
#include <variant>

#include "api/chorus.capnp.h"
#include "api/internal/read-pool.h"
#include "api/internal/rpc-connection.h"
#include "api/log.h"
#include "api/metrics.h"
#include "api/wire.h"

namespace chorus::api {

static_assert(wire::API_VERSION == kApiVersion, "api/chorus.capnp and api/types.h disagree");

namespace {

std::string str(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

double secondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// "host:port" with a numeric port; host may be a name or an IPv4 address, or
// an IPv6 address in brackets.
Status checkHostPort(const std::string& what, const std::string& address) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return makeError(ErrorCode::kInvalidArgument,
                     what + ": '" + address + "' is not host:port (e.g. 127.0.0.1:7400)");
  }
  std::string port = address.substr(colon + 1);
  if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoul(port) > 65535) {
    return makeError(ErrorCode::kInvalidArgument,
                     what + ": port '" + port + "' must be a number 0-65535");
  }
  return okStatus();
}

// "1.2.3.4:5678" of the other end, for logs; "unknown" if the stream
// cannot tell.
std::string peerName(kj::AsyncIoStream& stream) {
  struct sockaddr_storage addr {};
  kj::uint length = sizeof addr;
  try {
    stream.getpeername(reinterpret_cast<struct sockaddr*>(&addr), &length);
  } catch (kj::Exception&) {
    return "unknown";
  }
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<struct sockaddr*>(&addr), length, host, sizeof host, port,
                  sizeof port, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "unknown";
  }
  return addr.ss_family == AF_INET6 ? "[" + std::string(host) + "]:" + port
                                    : std::string(host) + ":" + port;
}

// "1.2.3.4" of "1.2.3.4:5678", "[::1]" of "[::1]:5678": the source address
// the per-address cap counts.
std::string hostOf(const std::string& peer) {
  auto colon = peer.rfind(':');
  return colon == std::string::npos ? peer : peer.substr(0, colon);
}

struct Session;

// Per-connection accounting, shared by the connection's capabilities.
struct ConnState : kj::Refcounted {
  uint64_t id = 0;
  std::string peer;  // address of the client, for logs
  std::string host;  // its source address, for the per-address cap
  uint32_t inFlight = 0;
  uint32_t watches = 0;
  kj::TimePoint lastActivity = kj::origin<kj::TimePoint>();
  // Rate limit: a token bucket refilled at RpcLimits::maxCallsPerSecond.
  double callTokens = 0;
  kj::TimePoint refilled = kj::origin<kj::TimePoint>();

  // Holds a session with a valid token (always, on a --no-auth node). If
  // not, it is on the Loop's unauthenticated list until authDeadline.
  bool authenticated = false;
  bool unauthListed = false;
  std::list<ConnState*>::iterator unauthPos;
  kj::TimePoint authDeadline = kj::origin<kj::TimePoint>();
  // The sessions authenticate made on this connection, to follow a reload.
  std::vector<std::shared_ptr<Session>> sessions;

  // What the client's messages make the server hold (see
  // api/internal/rpc-connection.h), and the reply queue of its network:
  // set while the connection is open.
  kj::Own<internal::ConnectionUsage> usage = kj::refcounted<internal::ConnectionUsage>();
  capnp::TwoPartyVatNetwork* network = nullptr;
  // Fulfilled to close the connection (its streams, answers and exports go).
  kj::Own<kj::PromiseFulfiller<void>> kill;
  bool closing = false;

  size_t queuedReplyBytes() const {
    return network != nullptr ? network->getCurrentQueueSize() : 0;
  }
};

// The memory figure of a connection (RpcLimits::maxConnectionBytes).
constexpr size_t kAnswerBytes = 10 << 10;  // an answer: 8 KiB result segment + bookkeeping
constexpr size_t kWatchBytes = 1 << 10;
size_t connectionBytes(const ConnState& c) {
  return c.usage->heldRequestBytes + c.queuedReplyBytes() +
         c.usage->unfinishedCalls() * kAnswerBytes + size_t(c.watches) * kWatchBytes;
}

// A refused call: `unauthenticated` (no or an unknown token) or `error`.
struct Refusal {
  bool unauthenticated = false;
  Error error;
};

const char* refusalToWire(const Refusal& r, wire::Error::Builder b) {
  return r.unauthenticated ? toWireUnauthenticated(r.error.message, b) : toWire(r.error, b);
}

// Whom the calls on a capability act for. Shared by the capabilities a
// connection got from one `reviews`, `admin` or `authenticate` call.
struct Session {
  enum class Kind {
    kTrusted,    // --no-auth: every call allowed
    kAnonymous,  // a tokens file, and no authenticate: every call refused
    kPrincipal,  // authenticated: calls checked against the roles
    kRevoked,    // authenticated, but the token left the tokens file at a reload
  };
  Kind kind = Kind::kAnonymous;
  Principal principal;
  TokenTable::Digest digest{};  // kPrincipal, kRevoked: the token's, to look up at a reload

  std::optional<Refusal> anonymous() const {
    if (kind == Kind::kRevoked) {
      return Refusal{true, makeError(ErrorCode::kForbidden,
                                     "token revoked (no longer in the node's tokens file)")};
    }
    if (kind == Kind::kPrincipal) {  // a token that expired since authenticate
      auto e = expiredError(principal, static_cast<int64_t>(std::time(nullptr)));
      return e ? std::optional<Refusal>(Refusal{true, std::move(*e)}) : std::nullopt;
    }
    if (kind != Kind::kAnonymous) return std::nullopt;
    return Refusal{true, makeError(ErrorCode::kForbidden,
                                   "this node requires a token: pass --token-file FILE or "
                                   "--token T, or set $CHORUS_TOKEN_FILE or $CHORUS_TOKEN")};
  }
  std::optional<Refusal> mayWrite(const WriteRequest& r) const {
    if (auto r = anonymous(); r || kind != Kind::kPrincipal) return r;
    if (auto e = authorizeWrite(principal, r)) return Refusal{false, std::move(*e)};
    return std::nullopt;
  }
  std::optional<Refusal> mayRead() const {
    if (auto r = anonymous(); r || kind != Kind::kPrincipal) return r;
    if (auto e = authorizeRead(principal)) return Refusal{false, std::move(*e)};
    return std::nullopt;
  }
  std::optional<Refusal> mayAdmin(std::string_view what) const {
    if (auto r = anonymous(); r || kind != Kind::kPrincipal) return r;
    if (auto e = authorizeAdmin(principal, what)) return Refusal{false, std::move(*e)};
    return std::nullopt;
  }
};

// Logs at most one line per `interval`, saying how many were suppressed.
class RateLimitedLog {
 public:
  explicit RateLimitedLog(kj::Duration interval) : interval_(interval) {}
  template <typename... Args>
  void warn(kj::TimePoint now, const char* format, Args... args) {
    if (logged_ && now - last_ < interval_) {
      ++suppressed_;
      return;
    }
    std::string line = format;
    if (suppressed_ > 0) line += " (" + std::to_string(suppressed_) + " more not logged)";
    logf(LogLevel::kWarn, line.c_str(), args...);
    logged_ = true;
    last_ = now;
    suppressed_ = 0;
  }

 private:
  kj::Duration interval_;
  bool logged_ = false;
  kj::TimePoint last_ = kj::origin<kj::TimePoint>();
  uint64_t suppressed_ = 0;
};

struct WatchEntry {
  uint64_t nodeWatchId = 0;
  wire::WatchObserver::Client observer;
  kj::Own<ConnState> conn;
  const Session* session = nullptr;  // whom it reads for; removed if revoked
  uint32_t inFlight = 0;             // onChange calls not yet answered
  uint32_t missed = 0;               // dropped since the last delivered change
};

// Every RPC watch. Refcounted so a WatchHandle destroyed late still finds it.
struct Watches : kj::Refcounted {
  Watches(Node& node, Metrics& metrics) : node(node), metrics(metrics) {}
  Node& node;
  Metrics& metrics;
  std::unordered_map<uint64_t, WatchEntry> map;
  uint64_t next = 1;

  // Idempotent: a revoked watch goes at the reload, its handle later.
  void remove(uint64_t id) {
    auto it = map.find(id);
    if (it == map.end()) return;
    node.unwatch(it->second.nodeWatchId);
    --it->second.conn->watches;
    map.erase(it);
    metrics.watchClosed();
  }
  // The watches reading for `session`; returns how many.
  size_t removeFor(const Session* session) {
    std::vector<uint64_t> ids;
    for (const auto& [id, w] : map) {
      if (w.session == session) ids.push_back(id);
    }
    for (uint64_t id : ids) remove(id);
    return ids.size();
  }
};

class WatchHandleImpl final : public wire::WatchHandle::Server {
 public:
  WatchHandleImpl(kj::Own<Watches> watches, uint64_t id) : watches_(kj::mv(watches)), id_(id) {}
  ~WatchHandleImpl() noexcept(false) { watches_->remove(id_); }

 private:
  kj::Own<Watches> watches_;
  uint64_t id_;
};

// Size hints for results, so a reply's first segment fits it instead of
// Cap'n Proto's default 8 KiB (allocated and zeroed for every reply). An
// estimate: a low one costs another segment, a high one a little memory.
uint64_t textWords(const std::string& s) { return s.size() / sizeof(capnp::word) + 1; }
uint64_t reviewWords(const ReviewView& r) {
  uint64_t words = 12 + textWords(r.product) + textWords(r.author) + textWords(r.title) +
                   textWords(r.body) + textWords(r.moderationReason) + textWords(r.reply);
  for (const auto& tag : r.tags) words += 1 + textWords(tag);
  return words;
}
capnp::MessageSize resultSize(uint64_t words) { return {words + 8, 0}; }
capnp::MessageSize resultSize(const Error& e) {
  return resultSize(8 + 2 * textWords(e.message));  // the field is a part of it
}
capnp::MessageSize resultSize(const Result<ReviewView>& r) {
  return r.ok() ? resultSize(reviewWords(*r)) : resultSize(r.error());
}
capnp::MessageSize resultSize(const Result<ReviewPage>& r) {
  if (!r.ok()) return resultSize(r.error());
  uint64_t words = 4 + textWords(r->nextCursor);
  for (const auto& review : r->reviews) words += reviewWords(review);
  return resultSize(words);
}
capnp::MessageSize resultSize(const Result<storage::ProductSummary>& r) {
  return r.ok() ? resultSize(16 + 5 + 17) : resultSize(r.error());  // + a product of 128 bytes
}
capnp::MessageSize resultSize(const Result<ProductPageView>& r) {
  if (!r.ok()) return resultSize(r.error());
  uint64_t words = 16 + 5 + 17 + 4 + textWords(r->page.nextCursor);  // summary, then the page
  for (const auto& review : r->page.reviews) words += reviewWords(review);
  return resultSize(words);
}

// What a pooled read answers (boxed in a kj::Own: g++ 12 reports false
// maybe-uninitialized warnings for a std::variant inside kj::Maybe).
using ReadOutcome = std::variant<Result<ReviewView>, Result<ReviewPage>,
                                 Result<storage::ProductSummary>, Result<ProductPageView>>;

// The type-erased store work of a read of a `Result<T>`, for a read thread.
// A bug's exception becomes `internal` (on the RPC thread it failed the
// call; on a read thread it must not end the process).
template <typename T, typename Work>
std::function<ReadOutcome(Node&)> readWork(Work work) {
  return [work = std::move(work)](Node& node) -> ReadOutcome {
    try {
      return ReadOutcome(std::in_place_type<Result<T>>, work(node));
    } catch (const kj::Exception& e) {
      return ReadOutcome(std::in_place_type<Result<T>>,
                         makeError(ErrorCode::kInternal,
                                   std::string("read failed: ") + e.getDescription().cStr()));
    } catch (const std::exception& e) {
      return ReadOutcome(std::in_place_type<Result<T>>,
                         makeError(ErrorCode::kInternal, std::string("read failed: ") + e.what()));
    }
  };
}

}  // namespace

class RpcServer::Loop final : public kj::TaskSet::ErrorHandler {
 public:
  Loop(RpcServer& server, Node& node, const RpcLimits& limits, std::optional<TokenTable> tokens,
       kj::AsyncIoContext& io)
      : server_(server),
        node_(node),
        limits_(limits),
        tokens_(std::move(tokens)),
        io_(io),
        timer_(io.provider->getTimer()),
        metrics_(node.metrics()),
        watches_(kj::refcounted<Watches>(node, node.metrics())),
        tasks_(*this),
        connections_(kj::heap<kj::TaskSet>(*this)) {
    readerOptions_.traversalLimitInWords = limits.maxMessageBytes / sizeof(capnp::word);
    readerOptions_.nestingLimit = limits.nestingLimit;
    trusted_->kind = Session::Kind::kTrusted;
    anonymous_->kind = Session::Kind::kAnonymous;
  }

  // The RPC thread's body. Signals `ready` once bound (or failed).
  static void run(RpcServer& server, Node& node, RpcLimits limits, std::optional<TokenTable> tokens,
                  std::string listen, std::string metrics, std::promise<Status>& ready);

  Node& node() { return node_; }
  kj::Timer& timer() { return timer_; }
  Metrics& metrics() { return metrics_; }

  // The session of `reviews` and `admin` without authenticate.
  std::shared_ptr<const Session> defaultSession() const { return tokens_ ? anonymous_ : trusted_; }

  // authenticate(token) on `conn`: the session for it (the same one for
  // the same token on one connection), or the refusal: an unknown token
  // (counted and logged with the peer's address, never the token), or
  // maxConnections authenticated connections already open.
  std::variant<std::shared_ptr<const Session>, Refusal> authenticate(std::string_view token,
                                                                     ConnState& conn) {
    if (!tokens_) return trusted_;
    auto digest = TokenTable::digest(token);
    auto principal = tokens_->findDigest(digest);
    if (!principal) {
      metrics_.authFailed();
      authLog_.warn(timer_.now(), "rpc: unknown token from %s (connection %llu)", conn.peer.c_str(),
                    static_cast<unsigned long long>(conn.id));
      return Refusal{true, makeError(ErrorCode::kForbidden,
                                     "unknown token (not in the node's tokens file; after "
                                     "editing that file, send the node SIGHUP: kill -HUP PID)")};
    }
    if (auto e = expiredError(*principal, static_cast<int64_t>(std::time(nullptr)))) {
      metrics_.authFailed();
      return Refusal{true, std::move(*e)};
    }
    if (!conn.authenticated) {
      if (authenticatedConnections_ >= limits_.maxConnections) {
        metrics_.connectionRefused();
        connectionLog_.warn(timer_.now(),
                            "rpc: %u authenticated connections open (the limit); refused "
                            "authenticate from %s",
                            limits_.maxConnections, conn.peer.c_str());
        return Refusal{false, makeError(ErrorCode::kOverloaded,
                                        std::to_string(limits_.maxConnections) +
                                            " authenticated connections are open (the node's "
                                            "limit, --max-connections); retry later")};
      }
      leaveUnauthenticated(conn);
      conn.authenticated = true;
      ++authenticatedConnections_;
    }
    for (const auto& s : conn.sessions) {
      if (s->kind == Session::Kind::kPrincipal && s->digest == digest) {
        s->principal = std::move(*principal);
        return std::shared_ptr<const Session>(s);
      }
    }
    auto session = std::make_shared<Session>();
    session->kind = Session::Kind::kPrincipal;
    session->principal = std::move(*principal);
    session->digest = digest;
    conn.sessions.push_back(session);
    logf(LogLevel::kDebug, "rpc: connection %llu from %s authenticated as %s",
         static_cast<unsigned long long>(conn.id), conn.peer.c_str(),
         session->principal.id.c_str());
    return std::shared_ptr<const Session>(session);
  }

  // RPC thread: a reloaded tokens file. Sessions follow it at once: new
  // roles, or revoked if their token is gone; a revoked session's watches
  // end now, and a connection left without a valid session is
  // unauthenticated again (authTimeout from now). Returns how many sessions
  // were revoked.
  size_t replaceTokens(TokenTable tokens) {
    if (!tokens_) return 0;  // --no-auth stays --no-auth
    tokens_ = std::move(tokens);
    size_t revoked = 0;
    for (auto& [id, conn] : connections_by_id_) {
      bool valid = false;
      for (const auto& session : conn->sessions) {
        if (session->kind != Session::Kind::kPrincipal) continue;
        if (auto principal = tokens_->findDigest(session->digest)) {
          session->principal = std::move(*principal);
          valid = true;
        } else {
          session->kind = Session::Kind::kRevoked;
          ++revoked;
          size_t ended = watches_->removeFor(session.get());
          logf(LogLevel::kDebug, "rpc: connection %llu: token of %s revoked, %zu watch(es) ended",
               static_cast<unsigned long long>(id), session->principal.id.c_str(), ended);
        }
      }
      if (!valid && conn->authenticated && !conn->closing) {
        conn->authenticated = false;
        --authenticatedConnections_;
        enterUnauthenticated(*conn);
      }
    }
    return revoked;
  }

  // Takes one call from the connection's token bucket; false when empty.
  bool takeCallToken(ConnState& conn) {
    if (limits_.maxCallsPerSecond == 0) return true;
    const double burst = std::max<uint32_t>(limits_.callBurst, 1);
    kj::TimePoint now = timer_.now();
    double seconds = double((now - conn.refilled) / kj::NANOSECONDS) / 1e9;
    conn.refilled = now;
    conn.callTokens = std::min(burst, conn.callTokens + seconds * limits_.maxCallsPerSecond);
    if (conn.callTokens < 1.0) return false;
    conn.callTokens -= 1.0;
    return true;
  }

  // Runs `body` (returning a wire error code name, or nullptr for success,
  // directly or as a promise) as one call of `conn`, with the rate limit,
  // the in-flight cap, idle bookkeeping and metrics. `initError` makes the
  // results' error. A call refused by a limit never runs `body`.
  // The rate limit and the in-flight cap, for one call of `conn`; refreshes
  // its idle clock. The refusal (`overloaded`) if the call must not run.
  std::optional<Error> admit(ConnState& conn) {
    conn.lastActivity = timer_.now();
    if (!takeCallToken(conn)) {
      metrics_.rateLimited();
      return makeError(ErrorCode::kOverloaded,
                       "rate limit: " + std::to_string(limits_.maxCallsPerSecond) +
                           " calls/s per connection (bursts of " +
                           std::to_string(limits_.callBurst) + "); retry with backoff");
    }
    if (conn.inFlight >= limits_.maxInFlightPerConnection) {
      return makeError(ErrorCode::kOverloaded,
                       "more than " + std::to_string(limits_.maxInFlightPerConnection) +
                           " calls in flight on this connection; wait for replies, then retry");
    }
    return std::nullopt;
  }

  template <typename Body, typename InitError>
  kj::Promise<void> call(ConnState& conn, Metrics::Method method, Body&& body,
                         InitError&& initError) {
    if (auto refused = admit(conn)) {
      metrics_.record(method, 0.0, toWire(*refused, initError()));
      return kj::READY_NOW;
    }
    ++conn.inFlight;
    auto start = std::chrono::steady_clock::now();
    auto done = kj::defer([this, c = kj::addRef(conn)]() mutable {
      --c->inFlight;
      c->lastActivity = timer_.now();
    });
    kj::Promise<const char*> result = kj::evalNow(kj::fwd<Body>(body));
    return result
        .then([this, method,
               start](const char* code) { metrics_.record(method, secondsSince(start), code); },
              [this, method, start](kj::Exception&& e) {
                metrics_.record(method, secondsSince(start), "internal");
                kj::throwFatalException(kj::mv(e));
              })
        .attach(kj::mv(done));
  }

  // Queues a write on the node; resolves on this thread once it committed.
  // (Boxed in an Own: g++ 12 reports false maybe-uninitialized warnings for
  // a std::variant inside kj::Maybe.)
  kj::Promise<kj::Own<Result<ReviewView>>> submit(WriteRequest request) {
    auto paf = kj::newPromiseAndFulfiller<kj::Own<Result<ReviewView>>>();
    uint64_t id = nextCall_++;
    pending_.emplace(id, kj::mv(paf.fulfiller));
    RpcServer* server = &server_;
    Loop* self = this;
    node_.write(std::move(request), [server, self, id](Result<ReviewView> r) {
      // Store thread (or this one, if refused up front).
      server->post([self, id, r = std::move(r)]() mutable { self->complete(id, std::move(r)); });
    });
    return kj::mv(paf.promise);
  }

  // Runs `work` (a read's store work) on the read pool; resolves on this
  // thread with its result. `work` runs on a read thread: it must hold only
  // values (never a capnp reader or builder, a kj object or this Loop) and
  // use only `node`. `method` and `key` are for RpcLimits::beforeRead. If
  // the call is cancelled or its connection closes meanwhile, the result is
  // dropped when it arrives. A full queue resolves at once to `overloaded`,
  // a stopping server to `unavailable`, and `work` never runs.
  template <typename T>
  kj::Promise<kj::Own<ReadOutcome>> read(const char* method, std::string key,
                                         std::function<ReadOutcome(Node&)> work) {
    uint64_t id = nextCall_++;
    RpcServer* server = &server_;
    Loop* self = this;
    Node* node = &node_;
    auto submitted = server_.reads_->submit(
        [server, self, node, id, method, key = std::move(key), work = std::move(work)] {
          // A read thread.
          if (server->beforeRead_) server->beforeRead_(method, key);
          ReadOutcome outcome = work(*node);
          server->post([self, id, outcome = std::move(outcome)]() mutable {
            self->completeRead(id, std::move(outcome));
          });
        });
    if (submitted == internal::ReadPool::Submitted::kClosed) {
      return kj::heap<ReadOutcome>(
          std::in_place_type<Result<T>>,
          makeError(ErrorCode::kUnavailable, "the node is shutting down; retry on another node"));
    }
    if (submitted == internal::ReadPool::Submitted::kFull) {
      metrics_.readQueueFull();
      return kj::heap<ReadOutcome>(
          std::in_place_type<Result<T>>,
          makeError(ErrorCode::kOverloaded,
                    "the node's read queue is full (" +
                        std::to_string(server_.reads_->maxQueued()) + " reads waiting for " +
                        std::to_string(server_.reads_->threads()) +
                        " read threads, --max-queued-reads); retry with backoff"));
    }
    auto paf = kj::newPromiseAndFulfiller<kj::Own<ReadOutcome>>();
    pendingReads_.emplace(id, kj::mv(paf.fulfiller));  // before completeRead can run
    return kj::mv(paf.promise);
  }

  void completeRead(uint64_t id, ReadOutcome outcome) {
    auto it = pendingReads_.find(id);
    if (it == pendingReads_.end()) return;
    it->second->fulfill(kj::heap<ReadOutcome>(std::move(outcome)));  // no-op if cancelled
    pendingReads_.erase(it);
  }

  // Node::leave on its own thread (it waits for peers: this thread must
  // not); resolves on this thread with its answer.
  kj::Promise<kj::Own<Status>> leave(std::chrono::milliseconds timeout) {
    auto paf = kj::newPromiseAndFulfiller<kj::Own<Status>>();
    uint64_t id = nextCall_++;
    pendingStatus_.emplace(id, kj::mv(paf.fulfiller));
    RpcServer* server = &server_;
    Loop* self = this;
    node_.leave(timeout, [server, self, id](Status s) {
      // The leave thread (or this one, if refused up front).
      server->post([self, id, s = std::move(s)]() mutable {
        auto it = self->pendingStatus_.find(id);
        if (it == self->pendingStatus_.end()) return;
        it->second->fulfill(kj::heap<Status>(std::move(s)));  // no-op if cancelled
        self->pendingStatus_.erase(it);
      });
    });
    return kj::mv(paf.promise);
  }

  // Node::backup on its own thread (it copies the whole store: this thread
  // must not wait); resolves on this thread with its answer.
  kj::Promise<kj::Own<Result<storage::BackupManifest>>> backup(std::string dir) {
    auto paf = kj::newPromiseAndFulfiller<kj::Own<Result<storage::BackupManifest>>>();
    uint64_t id = nextCall_++;
    pendingBackups_.emplace(id, kj::mv(paf.fulfiller));
    RpcServer* server = &server_;
    Loop* self = this;
    node_.backup(dir, [server, self, id](Result<storage::BackupManifest> m) {
      // The backup thread (or this one, if refused up front).
      server->post([self, id, m = std::move(m)]() mutable {
        auto it = self->pendingBackups_.find(id);
        if (it == self->pendingBackups_.end()) return;
        it->second->fulfill(kj::heap<Result<storage::BackupManifest>>(std::move(m)));
        self->pendingBackups_.erase(it);
      });
    });
    return kj::mv(paf.promise);
  }

  Result<wire::WatchHandle::Client> addWatch(const std::string& product,
                                             wire::WatchObserver::Client observer, ConnState& conn,
                                             const Session& session) {
    if (conn.watches >= limits_.maxWatchesPerConnection) {
      metrics_.watchRefused();
      return makeError(ErrorCode::kOverloaded, "at most " +
                                                   std::to_string(limits_.maxWatchesPerConnection) +
                                                   " watches per connection; drop one first");
    }
    if (watches_->map.size() >= limits_.maxWatches) {
      metrics_.watchRefused();
      return makeError(ErrorCode::kOverloaded, "this node serves at most " +
                                                   std::to_string(limits_.maxWatches) +
                                                   " watches; retry later");
    }
    uint64_t localId = watches_->next++;
    RpcServer* server = &server_;
    Loop* self = this;
    auto nodeId = node_.watch(product, [server, self, localId](const Change& change) {
      // Store thread.
      server->post([self, localId, change] { self->deliver(localId, change); });
    });
    if (!nodeId.ok()) return nodeId.error();
    watches_->map.emplace(localId,
                          WatchEntry{*nodeId, kj::mv(observer), kj::addRef(conn), &session, 0, 0});
    ++conn.watches;
    metrics_.watchOpened();
    return wire::WatchHandle::Client(kj::heap<WatchHandleImpl>(kj::addRef(*watches_), localId));
  }

  void taskFailed(kj::Exception&& e) override {
    logf(LogLevel::kDebug, "rpc: %s", e.getDescription().cStr());
  }

  void complete(uint64_t id, Result<ReviewView> result) {
    auto it = pending_.find(id);
    if (it == pending_.end()) return;
    it->second->fulfill(kj::heap<Result<ReviewView>>(std::move(result)));  // no-op if cancelled
    pending_.erase(it);
  }

  void deliver(uint64_t localId, const Change& change) {
    auto it = watches_->map.find(localId);
    if (it == watches_->map.end()) return;
    WatchEntry& w = it->second;
    if (w.conn->closing) return;
    if (checkUsage(*w.conn)) return;  // closed: the client does not read its changes
    if (w.inFlight >= limits_.maxPendingChangesPerWatch) {
      ++w.missed;
      metrics_.changesDropped(1);
      return;
    }
    auto request = w.observer.onChangeRequest();
    Change c = change;
    c.missed = w.missed;
    w.missed = 0;
    toWire(c, request.initChange());
    ++w.inFlight;
    auto finished = [this, localId]() {
      auto it = watches_->map.find(localId);
      if (it != watches_->map.end()) --it->second.inFlight;
    };
    // (kj::cp: then() keeps a reference to an lvalue functor.)
    tasks_.add(request.send().ignoreResult().then(kj::cp(finished), [finished](kj::Exception&& e) {
      finished();
      logf(LogLevel::kDebug, "watch: observer failed: %s", e.getDescription().cStr());
    }));
  }

  kj::Promise<void> inboxLoop() {
    auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
    std::deque<std::function<void()>> batch;
    {
      std::lock_guard lock(server_.mutex_);
      batch.swap(server_.inbox_);
      if (batch.empty()) {
        server_.wake_ = paf.fulfiller.get();
        wake_ = kj::mv(paf.fulfiller);  // the previous one, already fulfilled, goes
      }
    }
    if (!batch.empty()) {
      for (auto& fn : batch) fn();
      return kj::evalLater([this] { return inboxLoop(); });
    }
    return paf.promise.then([this] { return inboxLoop(); });
  }

  // Accepts until the server stops. A failed accept (e.g. EMFILE: out of
  // file descriptors) is logged and retried after a pause; it must not end
  // the loop, or the node would never serve a client again.
  kj::Promise<void> acceptLoop(kj::ConnectionReceiver& listener) {
    return listener.accept()
        .then(
            [this](kj::Own<kj::AsyncIoStream> stream) {
              // --no-auth: every connection is trusted and counts toward
              // maxConnections at once. With tokens, a newcomer is
              // unauthenticated: it has its own cap (serve() evicts).
              if (!tokens_ && authenticatedConnections_ >= limits_.maxConnections) {
                metrics_.connectionRefused();
                connectionLog_.warn(timer_.now(),
                                    "rpc: %u connections open (the limit); closed a new one "
                                    "from %s",
                                    limits_.maxConnections, peerName(*stream).c_str());
                return kj::Promise<void>(kj::READY_NOW);  // `stream` closes here
              }
              connections_->add(serve(kj::mv(stream)));
              return kj::Promise<void>(kj::READY_NOW);
            },
            [this](kj::Exception&& e) -> kj::Promise<void> {
              logf(LogLevel::kError, "rpc: accept failed, retrying in 100 ms: %s",
                   e.getDescription().cStr());
              return timer_.afterDelay(100 * kj::MILLISECONDS);
            })
        .then([this, &listener] { return acceptLoop(listener); });
  }

  kj::Promise<void> serve(kj::Own<kj::AsyncIoStream> stream);

  // Until the connection should close: no valid token by its deadline, over
  // a usage limit (e.g. a client that stopped reading), or idle: no call for
  // idleTimeout, none in flight, and no watch (a watch keeps only an
  // authenticated connection open).
  kj::Promise<void> watchdog(ConnState& conn) {
    auto idle = kj::MILLISECONDS * limits_.idleTimeout.count();
    auto interval = std::min(idle, kj::MILLISECONDS * limits_.authTimeout.count()) / 4;
    if (interval < 10 * kj::MILLISECONDS) interval = 10 * kj::MILLISECONDS;
    if (interval > 250 * kj::MILLISECONDS) interval = 250 * kj::MILLISECONDS;
    return timer_.afterDelay(interval).then([this, &conn, idle]() -> kj::Promise<void> {
      if (conn.closing) return kj::NEVER_DONE;  // `kill` ends it
      kj::TimePoint now = timer_.now();
      if (!conn.authenticated && now >= conn.authDeadline) {
        close(conn, Metrics::kAuthTimeout,
              "no valid token within " + std::to_string(limits_.authTimeout.count()) + " ms");
        return kj::NEVER_DONE;
      }
      if (checkUsage(conn)) return kj::NEVER_DONE;
      if (conn.inFlight == 0 && (conn.watches == 0 || !conn.authenticated) &&
          now - conn.lastActivity >= idle) {
        logf(LogLevel::kDebug, "rpc: closing idle connection %llu",
             static_cast<unsigned long long>(conn.id));
        return kj::READY_NOW;
      }
      return watchdog(conn);
    });
  }

  // The bounds of `conn`'s tier: before or after authentication.
  size_t maxMessageBytes(const ConnState& c) const {
    return c.authenticated
               ? limits_.maxMessageBytes
               : std::min(limits_.maxMessageBytes, limits_.unauthenticatedMaxMessageBytes);
  }
  size_t maxUnfinishedCalls(const ConnState& c) const {
    return c.authenticated ? limits_.maxUnfinishedCalls : limits_.unauthenticatedMaxUnfinishedCalls;
  }
  size_t maxQueuedReplyBytes(const ConnState& c) const {
    return c.authenticated ? limits_.maxQueuedReplyBytes
                           : limits_.unauthenticatedMaxQueuedReplyBytes;
  }
  size_t maxConnectionBytes(const ConnState& c) const {
    return c.authenticated ? limits_.maxConnectionBytes : limits_.unauthenticatedMaxConnectionBytes;
  }

  // Closes `conn` if it is over a usage limit; true if it did.
  bool checkUsage(ConnState& conn) {
    if (conn.closing) return true;
    const char* tier = conn.authenticated ? "" : "unauthenticated ";
    if (conn.usage->unfinishedCalls() > maxUnfinishedCalls(conn)) {
      close(conn, Metrics::kUnfinishedCalls,
            "more than " + std::to_string(maxUnfinishedCalls(conn)) +
                " calls not finished on this " + tier + "connection");
      return true;
    }
    if (conn.queuedReplyBytes() > maxQueuedReplyBytes(conn)) {
      close(conn, Metrics::kReplyQueue,
            "more than " + std::to_string(maxQueuedReplyBytes(conn)) +
                " bytes of replies queued and not read on this " + tier + "connection");
      return true;
    }
    if (connectionBytes(conn) > maxConnectionBytes(conn)) {
      close(conn, Metrics::kMemory,
            "this " + std::string(tier) + "connection holds more than " +
                std::to_string(maxConnectionBytes(conn)) + " bytes");
      return true;
    }
    return false;
  }

  // After each message `conn` sent (MeteredMessageStream): over a limit, the
  // connection ends (the RPC system sees the exception, kill frees the rest).
  void afterRead(ConnState& conn) {
    if (checkUsage(conn)) {
      kj::throwFatalException(kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                                            kj::str("closed by the server: over a limit")));
    }
  }

  // Marks `conn` closing and ends it (on a later turn); everything it held
  // goes with its RPC system.
  void close(ConnState& conn, Metrics::CloseReason reason, const std::string& why) {
    if (conn.closing) return;
    conn.closing = true;
    leaveUnauthenticated(conn);
    metrics_.closedByLimit(reason);
    limitLog_.warn(timer_.now(), "rpc: closed connection %llu from %s: %s",
                   static_cast<unsigned long long>(conn.id), conn.peer.c_str(), why.c_str());
    if (conn.kill) conn.kill->fulfill();
  }

  // Puts `conn` on the unauthenticated list (deadline authTimeout from now),
  // first evicting the oldest unauthenticated connection of its address, and
  // then the oldest of all, when their caps are reached.
  void enterUnauthenticated(ConnState& conn) {
    conn.authDeadline = timer_.now() + kj::MILLISECONDS * limits_.authTimeout.count();
    uint32_t& fromHost = unauthByHost_[conn.host];
    if (fromHost >= limits_.maxUnauthenticatedPerAddress) {
      for (ConnState* other : unauth_) {
        if (other->host == conn.host) {
          close(*other, Metrics::kEvicted,
                "evicted: " + std::to_string(limits_.maxUnauthenticatedPerAddress) +
                    " unauthenticated connections from " + conn.host);
          break;
        }
      }
    }
    if (unauth_.size() >= limits_.maxUnauthenticated && !unauth_.empty()) {
      close(*unauth_.front(), Metrics::kEvicted,
            "evicted: " + std::to_string(limits_.maxUnauthenticated) +
                " unauthenticated connections open");
    }
    conn.unauthPos = unauth_.insert(unauth_.end(), &conn);
    conn.unauthListed = true;
    ++unauthByHost_[conn.host];
    metrics_.unauthenticatedOpened();
  }

  void leaveUnauthenticated(ConnState& conn) {
    if (!conn.unauthListed) return;
    unauth_.erase(conn.unauthPos);
    conn.unauthListed = false;
    auto it = unauthByHost_.find(conn.host);
    if (it != unauthByHost_.end() && --it->second == 0) unauthByHost_.erase(it);
    metrics_.unauthenticatedClosed();
  }

  // After connections closed: give freed memory back to the system, at most
  // once a second (glibc keeps freed heap otherwise).
  void trimSoon() {
    if (trimScheduled_) return;
    trimScheduled_ = true;
    tasks_.add(timer_.afterDelay(kj::SECONDS).then([this] {
      trimScheduled_ = false;
      malloc_trim(0);
    }));
  }

 private:
  // Binds the listeners; fills server_.address_/metricsAddress_.
  void bind(const std::string& listen, const std::string& metrics);
  void startServing() {
    inboxTask_ = inboxLoop().eagerlyEvaluate([](kj::Exception&& e) {
      logf(LogLevel::kError, "rpc: inbox loop failed: %s", e.getDescription().cStr());
    });
    acceptTask_ = acceptLoop(*listener_).eagerlyEvaluate([](kj::Exception&& e) {
      logf(LogLevel::kError, "rpc: accept failed: %s", e.getDescription().cStr());
    });
    KJ_IF_MAYBE (http, httpServer_) {
      KJ_IF_MAYBE (l, metricsListener_) {
        httpTask_ = (*http)->listenHttp(**l).eagerlyEvaluate([](kj::Exception&& e) {
          logf(LogLevel::kError, "metrics: accept failed: %s", e.getDescription().cStr());
        });
      }
    }
  }

 public:
  // RPC thread, before the loop goes away: no more posts, no more work.
  void teardown() {
    {
      std::lock_guard lock(server_.mutex_);
      server_.closed_ = true;
      server_.wake_ = nullptr;
      server_.inbox_.clear();
    }
    acceptTask_ = nullptr;
    httpTask_ = nullptr;
    inboxTask_ = nullptr;
    connections_ = nullptr;  // closes every connection
    pending_.clear();
    pendingStatus_.clear();
    pendingBackups_.clear();
    pendingReads_.clear();
  }

 private:
  class MetricsService;

  RpcServer& server_;
  Node& node_;
  RpcLimits limits_;
  std::optional<TokenTable> tokens_;  // nullopt: --no-auth
  // Every open connection (for a reload), the unauthenticated ones oldest
  // first, how many of those per source address, and how many are
  // authenticated (RpcLimits::maxConnections).
  std::unordered_map<uint64_t, ConnState*> connections_by_id_;
  std::list<ConnState*> unauth_;
  std::unordered_map<std::string, uint32_t> unauthByHost_;
  uint32_t authenticatedConnections_ = 0;
  RateLimitedLog limitLog_{10 * kj::SECONDS};
  bool trimScheduled_ = false;
  std::shared_ptr<Session> trusted_ = std::make_shared<Session>();
  std::shared_ptr<Session> anonymous_ = std::make_shared<Session>();
  RateLimitedLog authLog_{10 * kj::SECONDS};
  RateLimitedLog connectionLog_{10 * kj::SECONDS};
  kj::AsyncIoContext& io_;
  kj::Timer& timer_;
  Metrics& metrics_;
  capnp::ReaderOptions readerOptions_;
  kj::Own<Watches> watches_;
  kj::TaskSet tasks_;  // onChange sends
  std::unordered_map<uint64_t, kj::Own<kj::PromiseFulfiller<kj::Own<Result<ReviewView>>>>> pending_;
  std::unordered_map<uint64_t, kj::Own<kj::PromiseFulfiller<kj::Own<Status>>>> pendingStatus_;
  std::unordered_map<uint64_t,
                     kj::Own<kj::PromiseFulfiller<kj::Own<Result<storage::BackupManifest>>>>>
      pendingBackups_;
  std::unordered_map<uint64_t, kj::Own<kj::PromiseFulfiller<kj::Own<ReadOutcome>>>> pendingReads_;
  uint64_t nextCall_ = 1;
  uint64_t nextConn_ = 1;
  kj::Own<const kj::CrossThreadPromiseFulfiller<void>> wake_;
  kj::Own<kj::ConnectionReceiver> listener_;
  kj::Maybe<kj::Own<kj::ConnectionReceiver>> metricsListener_;
  kj::Own<kj::HttpHeaderTable> headerTable_;
  kj::Own<kj::HttpService> metricsService_;
  kj::Maybe<kj::Own<kj::HttpServer>> httpServer_;
  kj::Promise<void> inboxTask_ = nullptr;
  kj::Promise<void> acceptTask_ = nullptr;
  kj::Promise<void> httpTask_ = nullptr;
  kj::Own<kj::TaskSet> connections_;
};

namespace {

using Loop = RpcServer::Loop;

constexpr size_t kMaxKeyArgBytes = 256;           // Admin.keys' `key`
constexpr uint32_t kDefaultLeaveMillis = 10'000;  // Admin.leave's timeoutMillis 0
constexpr uint32_t kMaxLeaveMillis = 300'000;

template <typename Ctx>
auto errorInit(Ctx ctx) {
  return [ctx]() mutable { return ctx.getResults().initError(); };
}

class ReviewStoreImpl final : public wire::ReviewStore::Server {
 public:
  ReviewStoreImpl(Loop& loop, kj::Own<ConnState> conn, std::shared_ptr<const Session> session)
      : loop_(loop), conn_(kj::mv(conn)), session_(std::move(session)) {}

  kj::Promise<void> put(PutContext ctx) override {
    auto p = ctx.getParams();
    WriteRequest r;
    r.op = WriteOp::kPut;
    r.product = str(p.getProduct());
    r.author = str(p.getAuthor());
    r.rating = p.getRating();
    r.title = str(p.getTitle());
    r.body = str(p.getBody());
    return write(Metrics::kPut, ctx, std::move(r));
  }
  kj::Promise<void> erase(EraseContext ctx) override {
    auto p = ctx.getParams();
    return write(Metrics::kErase, ctx, keyed(WriteOp::kDelete, p, ""));
  }
  kj::Promise<void> vote(VoteContext ctx) override {
    auto p = ctx.getParams();
    return write(Metrics::kVote, ctx, keyed(WriteOp::kVote, p, str(p.getVoter())));
  }
  kj::Promise<void> unvote(UnvoteContext ctx) override {
    auto p = ctx.getParams();
    return write(Metrics::kUnvote, ctx, keyed(WriteOp::kUnvote, p, str(p.getVoter())));
  }
  kj::Promise<void> tag(TagContext ctx) override {
    auto p = ctx.getParams();
    return write(Metrics::kTag, ctx, keyed(WriteOp::kTag, p, str(p.getTag())));
  }
  kj::Promise<void> untag(UntagContext ctx) override {
    auto p = ctx.getParams();
    return write(Metrics::kUntag, ctx, keyed(WriteOp::kUntag, p, str(p.getTag())));
  }
  kj::Promise<void> moderate(ModerateContext ctx) override {
    auto p = ctx.getParams();
    WriteRequest r = keyed(WriteOp::kModerate, p, str(p.getReason()));
    r.visibility = fromWire(p.getVisibility());
    return write(Metrics::kModerate, ctx, std::move(r));
  }
  kj::Promise<void> reply(ReplyContext ctx) override {
    auto p = ctx.getParams();
    return write(Metrics::kReply, ctx, keyed(WriteOp::kReply, p, str(p.getText())));
  }

  // Reads: authorized here, their store work on the read pool, their
  // results filled here when it returns (Loop::read).
  kj::Promise<void> get(GetContext ctx) override {
    return read<ReviewView>(
        Metrics::kGet, ctx,
        [](auto p) {
          auto product = str(p.getProduct()), author = str(p.getAuthor());
          return job<ReviewView>(
              product, [product, author](Node& node) { return node.get(product, author); });
        },
        [](const std::string&, const ReviewView& r, auto results) {
          toWire(r, results.initReview());
        });
  }
  kj::Promise<void> list(ListContext ctx) override {
    return read<ReviewPage>(
        Metrics::kList, ctx,
        [](auto p) {
          auto product = str(p.getProduct()), cursor = str(p.getCursor());
          auto order = fromWire(p.getOrder());
          uint32_t limit = p.getLimit();
          return job<ReviewPage>(product, [product, order, cursor, limit](Node& node) {
            return node.list(product, order, cursor, limit);
          });
        },
        [](const std::string&, const ReviewPage& r, auto results) {
          toWire(r, results.initPage());
        });
  }
  kj::Promise<void> summary(SummaryContext ctx) override {
    return read<storage::ProductSummary>(
        Metrics::kSummary, ctx,
        [](auto p) {
          auto product = str(p.getProduct());
          return job<storage::ProductSummary>(
              product, [product](Node& node) { return node.summary(product); });
        },
        [](const std::string& product, const storage::ProductSummary& r, auto results) {
          toWire(product, r, results.initSummary());
        });
  }
  kj::Promise<void> page(PageContext ctx) override {
    return read<ProductPageView>(
        Metrics::kPage, ctx,
        [](auto p) {
          auto product = str(p.getProduct()), cursor = str(p.getCursor());
          auto order = fromWire(p.getOrder());
          uint32_t limit = p.getLimit();
          return job<ProductPageView>(product, [product, order, cursor, limit](Node& node) {
            return node.page(product, order, cursor, limit);
          });
        },
        [](const std::string& product, const ProductPageView& r, auto results) {
          toWire(product, r.summary, results.initSummary());
          toWire(r.page, results.initPage());
        });
  }
  kj::Promise<void> byAuthor(ByAuthorContext ctx) override {
    return read<ReviewPage>(
        Metrics::kByAuthor, ctx,
        [](auto p) {
          auto author = str(p.getAuthor()), cursor = str(p.getCursor());
          uint32_t limit = p.getLimit();
          return job<ReviewPage>(author, [author, cursor, limit](Node& node) {
            return node.byAuthor(author, cursor, limit);
          });
        },
        [](const std::string&, const ReviewPage& r, auto results) {
          toWire(r, results.initPage());
        });
  }
  kj::Promise<void> watch(WatchContext ctx) override {
    return loop_.call(
        *conn_, Metrics::kWatch,
        [this, ctx]() mutable -> const char* {
          if (auto no = session_->mayRead())
            return refusalToWire(*no, ctx.getResults().initError());
          auto p = ctx.getParams();
          auto results = ctx.getResults();
          auto handle = loop_.addWatch(str(p.getProduct()), p.getObserver(), *conn_, *session_);
          if (!handle.ok()) return toWire(handle.error(), results.initError());
          results.setHandle(kj::mv(*handle));
          return nullptr;
        },
        errorInit(ctx));
  }

 private:
  template <typename Params>
  static WriteRequest keyed(WriteOp op, Params p, std::string arg) {
    WriteRequest r;
    r.op = op;
    r.product = str(p.getProduct());
    r.author = str(p.getAuthor());
    r.arg = std::move(arg);
    return r;
  }

  // A read's store work (values only: it runs on a read thread) and its
  // key: the product (byAuthor: the author), for RpcLimits::beforeRead and
  // for filling the results.
  struct Job {
    std::string key;
    std::function<ReadOutcome(Node&)> work;
  };
  template <typename T, typename Work>
  static Job job(std::string key, Work work) {
    return Job{std::move(key), readWork<T>(std::move(work))};
  }

  // One read call: `prepare` (RPC thread) copies the params into a Job; the
  // Job runs on the read pool; `fill` (RPC thread) writes a successful
  // result into the results.
  template <typename T, typename Ctx, typename Prepare, typename Fill>
  kj::Promise<void> read(Metrics::Method method, Ctx ctx, Prepare&& prepare, Fill&& fill) {
    return loop_.call(
        *conn_, method,
        [this, method, ctx, prepare = kj::fwd<Prepare>(prepare),
         fill = kj::fwd<Fill>(fill)]() mutable -> kj::Promise<const char*> {
          if (auto no = session_->mayRead()) {
            return refusalToWire(*no, ctx.getResults().initError());
          }
          Job j = prepare(ctx.getParams());
          ctx.releaseParams();  // copied into `j`; not held while it runs
          std::string key = j.key;
          return loop_.read<T>(Metrics::methodName(method), std::move(j.key), std::move(j.work))
              .then([ctx, fill,
                     key = std::move(key)](kj::Own<ReadOutcome> outcome) mutable -> const char* {
                const Result<T>& r = std::get<Result<T>>(*outcome);
                auto results = ctx.getResults(resultSize(r));
                if (!r.ok()) return toWire(r.error(), results.initError());
                fill(key, *r, results);
                return nullptr;
              });
        },
        errorInit(ctx));
  }

  template <typename Ctx>
  kj::Promise<void> write(Metrics::Method method, Ctx ctx, WriteRequest request) {
    ctx.releaseParams();  // copied into `request`; not held while the write commits
    return loop_.call(
        *conn_, method,
        [this, ctx, request = std::move(request)]() mutable -> kj::Promise<const char*> {
          // Refused here, before the write is queued.
          if (auto no = session_->mayWrite(request)) {
            return refusalToWire(*no, ctx.getResults().initError());
          }
          return loop_.submit(std::move(request))
              .then([ctx](kj::Own<Result<ReviewView>> boxed) mutable -> const char* {
                const Result<ReviewView>& r = *boxed;
                auto results = ctx.getResults(resultSize(r));
                if (!r.ok()) return toWire(r.error(), results.initError());
                if constexpr (requires { results.initReview(); }) toWire(*r, results.initReview());
                return nullptr;
              });
        },
        errorInit(ctx));
  }

  Loop& loop_;
  kj::Own<ConnState> conn_;
  std::shared_ptr<const Session> session_;
};

class AdminImpl final : public wire::Admin::Server {
 public:
  AdminImpl(Loop& loop, kj::Own<ConnState> conn, std::shared_ptr<const Session> session)
      : loop_(loop), conn_(kj::mv(conn)), session_(std::move(session)) {}

  kj::Promise<void> status(StatusContext ctx) override {
    return loop_.call(
        *conn_, Metrics::kStatus,
        [this, ctx]() mutable -> const char* {
          if (auto no = session_->mayAdmin("status")) {
            return refusalToWire(*no, ctx.getResults().initError());
          }
          auto r = loop_.node().status();
          auto results = ctx.getResults();
          if (!r.ok()) return toWire(r.error(), results.initError());
          toWire(*r, results.initStatus());
          return nullptr;
        },
        errorInit(ctx));
  }

  kj::Promise<void> partition(PartitionContext ctx) override {
    return loop_.call(
        *conn_, Metrics::kPartition,
        [this, ctx]() mutable -> const char* {
          if (auto no = session_->mayAdmin("partition")) {
            return refusalToWire(*no, ctx.getResults().initError());
          }
          auto peers = ctx.getParams().getPeers();
          auto results = ctx.getResults();
          if (peers.size() > kMaxPartitionPeers) {  // before copying them
            return toWire(
                FieldError{"peers", "at most " + std::to_string(kMaxPartitionPeers) + " node ids"}
                    .toError(),
                results.initError());
          }
          std::vector<std::string> ids;
          ids.reserve(peers.size());
          for (auto id : peers) ids.push_back(str(id));
          auto r = loop_.node().partition(ids);
          if (!r.ok()) return toWire(r.error(), results.initError());
          return nullptr;
        },
        errorInit(ctx));
  }

  kj::Promise<void> heal(HealContext ctx) override {
    return loop_.call(
        *conn_, Metrics::kHeal,
        [this, ctx]() mutable -> const char* {
          if (auto no = session_->mayAdmin("heal")) {
            return refusalToWire(*no, ctx.getResults().initError());
          }
          auto r = loop_.node().heal();
          if (!r.ok()) return toWire(r.error(), ctx.getResults().initError());
          return nullptr;
        },
        errorInit(ctx));
  }

  kj::Promise<void> cluster(ClusterContext ctx) override {
    return loop_.call(
        *conn_, Metrics::kCluster,
        [this, ctx]() mutable -> const char* {
          if (auto no = session_->mayAdmin("cluster")) {
            return refusalToWire(*no, ctx.getResults().initError());
          }
          auto r = loop_.node().clusterView();
          auto results = ctx.getResults();
          if (!r.ok()) return toWire(r.error(), results.initError());
          toWire(*r, results.initView());
          return nullptr;
        },
        errorInit(ctx));
  }

  kj::Promise<void> keys(KeysContext ctx) override {
    return loop_.call(
        *conn_, Metrics::kKeys,
        [this, ctx]() mutable -> const char* {
          if (auto no = session_->mayAdmin("keys")) {
            return refusalToWire(*no, ctx.getResults().initError());
          }
          auto p = ctx.getParams();
          auto results = ctx.getResults();
          auto op = fromWire(p.getOp());
          if (!op) {
            return toWire(
                FieldError{"op", "unknown key operation (list, install, use, remove)"}.toError(),
                results.initError());
          }
          if (p.getKey().size() > kMaxKeyArgBytes) {  // a key is 44 bytes of base64
            return toWire(FieldError{"key", "at most " + std::to_string(kMaxKeyArgBytes) +
                                                " bytes (a key is 44 characters of base64)"}
                              .toError(),
                          results.initError());
          }
          auto r = loop_.node().keys(*op, str(p.getKey()));
          if (!r.ok()) return toWire(r.error(), results.initError());
          auto list = results.initKeys(static_cast<unsigned>(r->size()));
          for (unsigned i = 0; i < r->size(); ++i) {
            list[i].setFingerprint((*r)[i].fingerprint);
            list[i].setPrimary((*r)[i].primary);
          }
          return nullptr;
        },
        errorInit(ctx));
  }

  kj::Promise<void> leave(LeaveContext ctx) override {
    return loop_.call(
        *conn_, Metrics::kLeave,
        [this, ctx]() mutable -> kj::Promise<const char*> {
          if (auto no = session_->mayAdmin("leave")) {
            return refusalToWire(*no, ctx.getResults().initError());
          }
          uint32_t millis = ctx.getParams().getTimeoutMillis();
          if (millis == 0) millis = kDefaultLeaveMillis;
          if (millis > kMaxLeaveMillis) {
            return toWire(FieldError{"timeoutMillis",
                                     "at most " + std::to_string(kMaxLeaveMillis) + " (5 min)"}
                              .toError(),
                          ctx.getResults().initError());
          }
          return loop_.leave(std::chrono::milliseconds(millis))
              .then([ctx](kj::Own<Status> s) mutable -> const char* {
                if (!s->ok()) return toWire(s->error(), ctx.getResults().initError());
                return nullptr;
              });
        },
        errorInit(ctx));
  }

  kj::Promise<void> remove(RemoveContext ctx) override {
    return loop_.call(
        *conn_, Metrics::kRemove,
        [this, ctx]() mutable -> const char* {
          if (auto no = session_->mayAdmin("remove")) {
            return refusalToWire(*no, ctx.getResults().initError());
          }
          auto node = ctx.getParams().getNode();
          auto results = ctx.getResults();
          if (node.size() > 128) {  // before copying it
            return toWire(FieldError{"node", "is longer than 128 bytes"}.toError(),
                          results.initError());
          }
          auto r = loop_.node().remove(str(node));
          if (!r.ok()) return toWire(r.error(), results.initError());
          return nullptr;
        },
        errorInit(ctx));
  }

  kj::Promise<void> backup(BackupContext ctx) override {
    return loop_.call(
        *conn_, Metrics::kBackup,
        [this, ctx]() mutable -> kj::Promise<const char*> {
          if (auto no = session_->mayAdmin("backup")) {
            return refusalToWire(*no, ctx.getResults().initError());
          }
          auto dir = ctx.getParams().getDir();
          if (dir.size() > 4096) {  // before copying it
            return toWire(FieldError{"dir", "is longer than 4096 bytes"}.toError(),
                          ctx.getResults().initError());
          }
          return loop_.backup(str(dir)).then(
              [ctx](kj::Own<Result<storage::BackupManifest>> m) mutable -> const char* {
                if (!m->ok()) return toWire(m->error(), ctx.getResults().initError());
                toWire(**m, ctx.getResults().initManifest());
                return nullptr;
              });
        },
        errorInit(ctx));
  }

  // Any role (mayRead), unlike the rest of Admin: for load balancers.
  kj::Promise<void> health(HealthContext ctx) override {
    return loop_.call(
        *conn_, Metrics::kHealth,
        [this, ctx]() mutable -> const char* {
          if (auto no = session_->mayRead()) {
            return refusalToWire(*no, ctx.getResults().initError());
          }
          toWire(loop_.node().health(), ctx.getResults().initHealth());
          return nullptr;
        },
        errorInit(ctx));
  }

 private:
  Loop& loop_;
  kj::Own<ConnState> conn_;
  std::shared_ptr<const Session> session_;
};

// The bootstrap capability of one connection. It hands out one ReviewStore
// and one Admin per session, made once: a flood of reviews() or
// authenticate calls cannot grow the connection's export table.
class ChorusImpl final : public wire::Chorus::Server {
 public:
  ChorusImpl(Loop& loop, kj::Own<ConnState> conn) : loop_(loop), conn_(kj::mv(conn)) {}

  kj::Promise<void> reviews(ReviewsContext ctx) override {
    return bootstrapCall(Metrics::kReviews, [&] {
      ctx.getResults().setReviews(capsFor(loop_.defaultSession()).reviews);
    });
  }
  kj::Promise<void> admin(AdminContext ctx) override {
    return bootstrapCall(Metrics::kAdmin,
                         [&] { ctx.getResults().setAdmin(capsFor(loop_.defaultSession()).admin); });
  }
  // Capabilities acting for the token's principal; on a --no-auth node any
  // token gets trusted ones (principal empty, every role).
  kj::Promise<void> authenticate(AuthenticateContext ctx) override {
    return loop_.call(
        *conn_, Metrics::kAuthenticate,
        [this, ctx]() mutable -> const char* {
          auto token = ctx.getParams().getToken();
          auto results = ctx.getResults();
          auto outcome = loop_.authenticate(std::string_view(token.cStr(), token.size()), *conn_);
          if (auto* refusal = std::get_if<Refusal>(&outcome)) {
            return refusalToWire(*refusal, results.initError());
          }
          auto session = std::get<std::shared_ptr<const Session>>(kj::mv(outcome));
          std::vector<Role> roles = session->principal.roles;
          if (session->kind == Session::Kind::kTrusted) {
            roles = {Role::kReader, Role::kWriter, Role::kModerator, Role::kMerchant, Role::kAdmin};
          }
          results.setPrincipal(session->principal.id);
          auto list = results.initRoles(static_cast<unsigned>(roles.size()));
          for (unsigned i = 0; i < roles.size(); ++i) list.set(i, roleName(roles[i]));
          Caps& caps = capsFor(session);
          results.setReviews(caps.reviews);
          results.setAdmin(caps.admin);
          return nullptr;
        },
        errorInit(ctx));
  }

 private:
  struct Caps {
    wire::ReviewStore::Client reviews;
    wire::Admin::Client admin;
  };

  Caps& capsFor(const std::shared_ptr<const Session>& session) {
    auto it = caps_.find(session.get());
    if (it == caps_.end()) {
      it = caps_
               .emplace(session.get(),
                        Caps{kj::heap<ReviewStoreImpl>(loop_, kj::addRef(*conn_), session),
                             kj::heap<AdminImpl>(loop_, kj::addRef(*conn_), session)})
               .first;
    }
    return it->second;
  }

  // reviews() and admin(): no error in their results, so a refusal by the
  // rate limit or the in-flight cap is an `overloaded` exception.
  template <typename Fill>
  kj::Promise<void> bootstrapCall(Metrics::Method method, Fill&& fill) {
    auto start = std::chrono::steady_clock::now();
    if (auto refused = loop_.admit(*conn_)) {
      loop_.metrics().record(method, 0.0, "overloaded");
      return kj::Exception(kj::Exception::Type::OVERLOADED, __FILE__, __LINE__,
                           kj::str(refused->message.c_str()));
    }
    fill();
    loop_.metrics().record(method, secondsSince(start), nullptr);
    return kj::READY_NOW;
  }

  Loop& loop_;
  kj::Own<ConnState> conn_;
  // By session (the connection's own, or the node's shared trusted and
  // anonymous ones, which outlive every connection).
  std::map<const Session*, Caps> caps_;
};

// One client connection: the stream, its metering, its two-party network
// and RPC system. Destroying it closes the socket and frees every answer,
// export and queued reply of the connection.
struct Connection {
  Connection(Loop& loop, kj::Own<kj::AsyncIoStream> s, capnp::ReaderOptions options,
             kj::Own<ConnState> st)
      : stream(kj::mv(s)),
        state(kj::mv(st)),
        messages(
            *stream, kj::addRef(*state->usage),
            [&loop, c = state.get()]() { return loop.maxMessageBytes(*c); },
            [&loop, c = state.get()]() { loop.afterRead(*c); }),
        network(messages, capnp::rpc::twoparty::Side::SERVER, options),
        rpc(capnp::makeRpcServer(
            network, wire::Chorus::Client(kj::heap<ChorusImpl>(loop, kj::addRef(*state))))) {
    state->network = &network;
  }
  ~Connection() noexcept(false) { state->network = nullptr; }
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<ConnState> state;
  internal::MeteredMessageStream messages;
  capnp::TwoPartyVatNetwork network;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;
};

}  // namespace

class RpcServer::Loop::MetricsService final : public kj::HttpService {
 public:
  MetricsService(Node& node, kj::HttpHeaderTable& table) : node_(node), table_(table) {}

  kj::Promise<void> request(kj::HttpMethod method, kj::StringPtr url, const kj::HttpHeaders&,
                            kj::AsyncInputStream&, Response& response) override {
    kj::HttpHeaders headers(table_);
    headers.set(kj::HttpHeaderId::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
    std::string body;
    uint32_t status = 200;
    kj::StringPtr text = "OK";
    if (method != kj::HttpMethod::GET) {
      status = 405;
      text = "Method Not Allowed";
      body = "only GET /metrics\n";
    } else if (url != "/metrics" && !url.startsWith("/metrics?")) {
      status = 404;
      text = "Not Found";
      body = "metrics are at /metrics\n";
    } else {
      auto s = node_.status();
      if (s.ok()) {
        body = node_.metrics().render(s->stats, s->uptimeMillis);
        if (auto view = node_.clusterView(); view.ok()) {
          body += Metrics::renderCluster(view->stats, view->members, node_.mergesRefused(),
                                         view->region);
          body += node_.metrics().renderGossip();
        }
      } else {
        status = 500;
        text = "Internal Server Error";
        body = s.error().toString() + "\n";
      }
    }
    auto out = response.send(status, text, headers, body.size());
    auto promise = out->write(body.data(), body.size());
    return promise.attach(kj::mv(out), kj::mv(body));
  }

 private:
  Node& node_;
  kj::HttpHeaderTable& table_;
};

kj::Promise<void> RpcServer::Loop::serve(kj::Own<kj::AsyncIoStream> stream) {
  auto state = kj::refcounted<ConnState>();
  state->id = nextConn_++;
  state->peer = peerName(*stream);
  state->host = hostOf(state->peer);
  state->lastActivity = timer_.now();
  state->refilled = timer_.now();
  state->callTokens = std::max<uint32_t>(limits_.callBurst, 1);
  if (tokens_) {
    enterUnauthenticated(*state);  // may evict older strangers
  } else {
    state->authenticated = true;  // --no-auth: trusted
    ++authenticatedConnections_;
  }
  auto kill = kj::newPromiseAndFulfiller<void>();
  state->kill = kj::mv(kill.fulfiller);
  connections_by_id_.emplace(state->id, state.get());
  auto conn = kj::heap<Connection>(*this, kj::mv(stream), readerOptions_, kj::addRef(*state));
  metrics_.connectionOpened();
  logf(LogLevel::kDebug, "rpc: connection %llu opened from %s",
       static_cast<unsigned long long>(state->id), state->peer.c_str());
  auto closed = kj::defer([this, state = kj::mv(state)]() mutable {
    connections_by_id_.erase(state->id);
    leaveUnauthenticated(*state);
    if (state->authenticated) --authenticatedConnections_;
    state->closing = true;
    state->kill = nullptr;
    metrics_.connectionClosed();
    logf(LogLevel::kDebug, "rpc: connection %llu closed",
         static_cast<unsigned long long>(state->id));
    trimSoon();
  });
  auto done = conn->network.onDisconnect()
                  .exclusiveJoin(watchdog(*conn->state))
                  .exclusiveJoin(kj::mv(kill.promise));
  // `closed` runs after `conn` is gone.
  return done.attach(kj::mv(conn)).attach(kj::mv(closed));
}

void RpcServer::Loop::bind(const std::string& listen, const std::string& metrics) {
  auto& network = io_.provider->getNetwork();
  auto host = listen.substr(0, listen.rfind(':'));
  auto addr = network.parseAddress(listen).wait(io_.waitScope);
  listener_ = addr->listen();
  server_.address_ = host + ":" + std::to_string(listener_->getPort());
  if (!metrics.empty()) {
    auto mhost = metrics.substr(0, metrics.rfind(':'));
    auto maddr = network.parseAddress(metrics).wait(io_.waitScope);
    auto ml = maddr->listen();
    server_.metricsAddress_ = mhost + ":" + std::to_string(ml->getPort());
    metricsListener_ = kj::mv(ml);
    headerTable_ = kj::heap<kj::HttpHeaderTable>();
    metricsService_ = kj::heap<MetricsService>(node_, *headerTable_);
    kj::HttpServerSettings settings;
    settings.headerTimeout = 15 * kj::SECONDS;
    httpServer_ = kj::heap<kj::HttpServer>(timer_, *headerTable_, *metricsService_, settings);
  }
}

// KJ's bind failure ("::bind(sockfd, ...): Address already in use;
// toString() = 127.0.0.1:7400") in plain words, naming the address that
// failed (of `listen` and `metrics`): "cannot listen on 127.0.0.1:7400:
// address already in use (another process holds it; pick another port)".
static std::string bindError(const std::string& what, const std::string& listen,
                             const std::string& metrics) {
  std::string address = metrics.empty() ? listen : listen + " / " + metrics;
  std::string reason = what;
  if (size_t tail = reason.find("; toString() = "); tail != std::string::npos) {
    address = reason.substr(tail + 15);
    reason.erase(tail);
  }
  if (size_t call = reason.find("): "); reason.rfind("::", 0) == 0 && call != std::string::npos) {
    reason.erase(0, call + 3);  // the failed call: "::bind(sockfd, &addr.generic, addrlen)"
  }
  if (reason == "Address already in use") {
    reason = "address already in use (another process holds it; pick another port)";
  } else if (!reason.empty()) {
    reason[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(reason[0])));
  }
  return "cannot listen on " + address + ": " + reason;
}

void RpcServer::Loop::run(RpcServer& server, Node& node, RpcLimits limits,
                          std::optional<TokenTable> tokens, std::string listen, std::string metrics,
                          std::promise<Status>& ready) {
  bool signalled = false;
  try {
    auto io = kj::setupAsyncIo();
    // Check for I/O (other sockets, the inbox) every 64 events even while
    // busy: by default KJ polls only when nothing is queued, so one client
    // that always has a message waiting would starve every other one.
    io.waitScope.setBusyPollInterval(64);
    Loop loop(server, node, limits, std::move(tokens), io);
    server.loop_ = &loop;  // read only by closures run on this thread
    KJ_DEFER(server.loop_ = nullptr);
    loop.bind(listen, metrics);
    auto stop = kj::newPromiseAndCrossThreadFulfiller<void>();
    {
      std::lock_guard lock(server.mutex_);
      server.stop_ = stop.fulfiller.get();
    }
    KJ_DEFER({
      std::lock_guard lock(server.mutex_);
      server.stop_ = nullptr;
    });
    loop.startServing();
    signalled = true;
    ready.set_value(okStatus());
    stop.promise.wait(io.waitScope);
    loop.teardown();
  } catch (kj::Exception& e) {
    std::string what = e.getDescription().cStr();
    {
      std::lock_guard lock(server.mutex_);
      server.closed_ = true;
      server.wake_ = nullptr;
      server.inbox_.clear();
    }
    if (!signalled) {
      ready.set_value(makeError(ErrorCode::kIo, bindError(what, listen, metrics)));
    } else {
      logf(LogLevel::kError, "rpc: server thread failed: %s", what.c_str());
    }
  }
}

Result<std::unique_ptr<RpcServer>> RpcServer::start(Node& node, const std::string& listen,
                                                    const std::string& metrics,
                                                    const RpcLimits& limits,
                                                    std::optional<TokenTable> tokens) {
  if (auto s = checkHostPort("listen address", listen); !s.ok()) return s.error();
  if (!metrics.empty()) {
    if (auto s = checkHostPort("metrics address", metrics); !s.ok()) return s.error();
  }
  std::unique_ptr<RpcServer> server(new RpcServer());
  // Owned here rather than by Node: only RPC calls need reads off their
  // thread (an embedding service reads on its own threads), and its life
  // is bracketed by the server's, which Node stops before the store closes.
  server->reads_ = std::make_unique<internal::ReadPool>(limits.readThreads, limits.maxQueuedReads,
                                                        node.metrics());
  server->beforeRead_ = limits.beforeRead;
  std::promise<Status> ready;
  auto readyFuture = ready.get_future();
  RpcServer* raw = server.get();
  server->thread_ = std::thread(
      [raw, &node, limits, tokens = std::move(tokens), listen, metrics, &ready]() mutable {
        Loop::run(*raw, node, limits, std::move(tokens), listen, metrics, ready);
      });
  Status status = readyFuture.get();
  if (!status.ok()) {
    server->thread_.join();
    return status.error();
  }
  return server;
}

RpcServer::~RpcServer() {
  // Reads not started are dropped before the connections close (their
  // calls are cancelled with them), and new ones answer `unavailable`.
  if (reads_) reads_->close();
  {
    std::lock_guard lock(mutex_);
    if (stop_ != nullptr) stop_->fulfill();
    stop_ = nullptr;
  }
  if (thread_.joinable()) thread_.join();
  // Then wait for the running reads (their results find the inbox closed).
  // The store is open until this returns (Node::shutdown).
  if (reads_) reads_->stop();
}

Result<size_t> RpcServer::reloadTokens(TokenTable tokens) {
  auto revoked = std::make_shared<std::promise<size_t>>();
  auto answer = revoked->get_future();
  post([this, revoked, t = std::make_shared<TokenTable>(std::move(tokens))] {
    revoked->set_value(loop_ != nullptr ? loop_->replaceTokens(std::move(*t)) : 0);
  });
  // A stopped server destroys the closure unrun: the promise breaks.
  if (answer.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    return makeError(ErrorCode::kUnavailable, "the RPC thread did not take the new tokens in 10 s");
  }
  try {
    return answer.get();
  } catch (const std::future_error&) {
    return makeError(ErrorCode::kUnavailable, "the RPC server is stopping");
  }
}

void RpcServer::post(std::function<void()> fn) {
  std::unique_lock lock(mutex_);
  if (closed_) {
    lock.unlock();
    return;  // fn is destroyed here, unrun
  }
  inbox_.push_back(std::move(fn));
  if (wake_ != nullptr) {
    wake_->fulfill();
    wake_ = nullptr;
  }
}

}  // namespace chorus::api
