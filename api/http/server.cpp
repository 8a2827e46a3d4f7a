#include "api/http/server.h"

#include <capnp/message.h>
#include <kj/compat/http.h>
#include <kj/debug.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <deque>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "api/chorus.capnp.h"
#include "api/errors.h"
#include "api/http/embedded.h"
#include "api/http/event-stream.h"
#include "api/http/json.h"
#include "api/http/openapi.capnp.h"
#include "api/http/overview.h"
#include "api/http/routes.h"
#include "api/internal/server-loop.h"
#include "api/log.h"
#include "api/metrics.h"
#include "api/wire.h"

namespace chorus::api::http {

namespace {

using internal::ReadOutcome;
using internal::ServerLoop;

constexpr size_t kMaxKeyArgBytes = 256;           // Admin.keys' `key`, as over RPC
constexpr uint32_t kDefaultLeaveMillis = 10'000;  // Admin.leave's timeoutMillis 0
constexpr uint32_t kMaxLeaveMillis = 300'000;
constexpr uint64_t kDefaultHeartbeatMillis = 15'000;  // watch's heartbeat
constexpr uint64_t kMinHeartbeatMillis = 100;
constexpr uint64_t kMaxHeartbeatMillis = 300'000;
constexpr uint64_t kDefaultFeedTimeoutMillis = 60'000;  // a longpoll's wait
constexpr uint64_t kMaxFeedTimeoutMillis = 300'000;

double secondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

const char* statusText(uint status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 413:
      return "Content Too Large";
    case 415:
      return "Unsupported Media Type";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
  }
  return "Unknown";
}

const char* problemTitle(ApiCode code) {
  switch (code) {
    case ApiCode::kInvalidArgument:
      return "Invalid argument";
    case ApiCode::kNotFound:
      return "Not found";
    case ApiCode::kForbidden:
      return "Forbidden";
    case ApiCode::kOverloaded:
      return "Overloaded";
    case ApiCode::kUnavailable:
      return "Unavailable";
    case ApiCode::kInternal:
      return "Internal error";
    case ApiCode::kUnauthenticated:
      return "Unauthenticated";
  }
  return "Error";
}

Metrics::Method metricOf(Op op) {
  switch (op) {
    case Op::kPut:
      return Metrics::kPut;
    case Op::kGet:
      return Metrics::kGet;
    case Op::kErase:
      return Metrics::kErase;
    case Op::kVote:
      return Metrics::kVote;
    case Op::kUnvote:
      return Metrics::kUnvote;
    case Op::kTag:
      return Metrics::kTag;
    case Op::kUntag:
      return Metrics::kUntag;
    case Op::kModerate:
      return Metrics::kModerate;
    case Op::kReply:
      return Metrics::kReply;
    case Op::kList:
      return Metrics::kList;
    case Op::kSummary:
      return Metrics::kSummary;
    case Op::kPage:
      return Metrics::kPage;
    case Op::kByAuthor:
      return Metrics::kByAuthor;
    case Op::kWatch:
      return Metrics::kWatch;
    case Op::kChanges:
      return Metrics::kChanges;  // eventsource: kFollow (handle())
    case Op::kInfo:
      return Metrics::kInfo;
    case Op::kStatus:
      return Metrics::kStatus;
    case Op::kHealth:
      return Metrics::kHealth;
    case Op::kCluster:
      return Metrics::kCluster;
    case Op::kPartition:
      return Metrics::kPartition;
    case Op::kHeal:
      return Metrics::kHeal;
    case Op::kKeysList:
    case Op::kKeys:
      return Metrics::kKeys;
    case Op::kLeave:
      return Metrics::kLeave;
    case Op::kBackup:
      return Metrics::kBackup;
    case Op::kRemove:
      return Metrics::kRemove;
    case Op::kOpenApi:
    case Op::kDashboard:
    case Op::kOverview:
    case Op::kOverviewPartition:
    case Op::kOverviewHeal:
      return Metrics::kMethodCount;  // not counted
  }
  return Metrics::kMethodCount;
}

// What one request answers.
struct Reply {
  uint status = 200;
  std::string contentType = "application/json";
  std::string body;
  const char* code = nullptr;  // the error code's name, for metrics; nullptr = success
  // Extra headers: WWW-Authenticate, Allow, Retry-After.
  std::vector<std::pair<kj::HttpHeaderId, std::string>> headers;
};

// An RFC 9457 problem document, with Chorus's code, field and message.
// `status` is the code's unless given (405, 413, 415 for HTTP misuse);
// `kind` names the problem type when it is narrower than the code.
Reply problem(const ApiError& e, uint status = 0, const char* kind = nullptr) {
  Reply r;
  r.status = status != 0 ? status : uint(httpStatus(e.code));
  r.contentType = "application/problem+json";
  r.code = apiCodeName(e.code);
  std::string& b = r.body;
  b += "{\"type\":\"urn:chorus:problem:";
  b += kind != nullptr ? kind : apiCodeName(e.code);
  b += "\",\"title\":";
  appendJsonString(b, problemTitle(e.code));
  b += ",\"status\":" + std::to_string(r.status) + ",\"detail\":";
  appendJsonString(b, e.field.empty() ? e.message : e.field + ": " + e.message);
  b += ",\"code\":\"";
  b += apiCodeName(e.code);
  b += "\",\"field\":";
  appendJsonString(b, e.field);
  b += ",\"message\":";
  appendJsonString(b, e.message);
  b += "}";
  return r;
}
Reply problem(const Error& e) { return problem(apiError(e)); }
Reply invalid(const FieldError& f, uint status = 0, const char* kind = nullptr) {
  return problem(ApiError{ApiCode::kInvalidArgument, f.field, f.message}, status, kind);
}

Reply json(std::string body) {
  Reply r;
  r.body = std::move(body);
  return r;
}
// The JSON of a method's results (without `error`).
template <typename Builder>
Reply results(Builder b) {
  return json(resultsJson(capnp::toDynamic(b.asReader())));
}

// Who a request acts for: anyone (a --no-auth node) or a principal.
struct Caller {
  bool trusted = false;
  Principal principal;
  TokenTable::Digest digest{};  // the token's, to follow a reload (watches)
  // The bearer token as presented ("" if none): the overview routes ask the
  // other nodes with it. Lives only as long as the request.
  std::string token;
  // The request's read-your-writes token (Chorus-Session header or
  // ?session=; "" if none): reads wait for its write.
  std::string session;
};

std::optional<Error> mayRead(const Caller& c) {
  return c.trusted ? std::nullopt : authorizeRead(c.principal);
}
std::optional<Error> mayAdmin(const Caller& c, std::string_view what) {
  return c.trusted ? std::nullopt : authorizeAdmin(c.principal, what);
}
std::optional<Error> mayWrite(const Caller& c, const WriteRequest& r) {
  return c.trusted ? std::nullopt : authorizeWrite(c.principal, r);
}

// A connection's stream as kj::HttpServer sees it, which can also tell,
// while a request waits (a longpoll), that the client closed its end:
// kj::HttpServer reads nothing while it serves a request, so a disconnect
// would go unseen until the request's answer. closed() reads one byte
// ahead; a byte that arrives instead of EOF (a pipelined request) is kept
// and handed to kj's next read.
class WatchedStream final : public kj::AsyncIoStream {
 public:
  explicit WatchedStream(kj::Own<kj::AsyncIoStream> inner) : inner_(kj::mv(inner)) {}

  // Resolves once the client closed its end (EOF or a read error); never
  // if it sends bytes instead, or while kj reads. Call only while kj::
  // HttpServer serves a request whose body it read (it is not reading).
  kj::Promise<void> closed() {
    if (gone()) return kj::READY_NOW;
    if (held_ || innerBusy_) return kj::NEVER_DONE;
    auto paf = kj::newPromiseAndFulfiller<void>();
    closeWaiters_.push_back(kj::mv(paf.fulfiller));
    if (!peeking_) {
      peeking_ = true;
      peek_ = inner_->tryRead(&byte_, 1, 1)
                  .then([this](size_t n) { (n == 0 ? eof_ : held_) = true; },
                        [this](kj::Exception&& e) { failure_ = kj::mv(e); })
                  .then([this] {
                    peeking_ = false;
                    for (auto& f : readWaiters_) f->fulfill();
                    readWaiters_.clear();
                    if (gone()) {
                      for (auto& f : closeWaiters_) f->fulfill();
                      closeWaiters_.clear();
                    }  // else they stay pending: the client did not go
                  })
                  .eagerlyEvaluate(nullptr);
    }
    return kj::mv(paf.promise);
  }

  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override {
    if (peeking_) {  // kj reads after the look-ahead ends
      auto paf = kj::newPromiseAndFulfiller<void>();
      readWaiters_.push_back(kj::mv(paf.fulfiller));
      return paf.promise.then(
          [this, buffer, minBytes, maxBytes] { return tryRead(buffer, minBytes, maxBytes); });
    }
    peek_ = nullptr;
    auto* out = static_cast<kj::byte*>(buffer);
    size_t n = 0;
    if (held_ && maxBytes > 0) {
      out[0] = byte_;
      held_ = false;
      n = 1;
    }
    KJ_IF_MAYBE (e, failure_) {
      if (n == 0) return kj::Promise<size_t>(kj::cp(*e));
      return n;
    }
    if (eof_ || n >= minBytes) return n;
    innerBusy_ = true;
    return inner_->tryRead(out + n, minBytes - n, maxBytes - n).then([this, n](size_t m) {
      innerBusy_ = false;
      return n + m;
    });
  }
  kj::Maybe<uint64_t> tryGetLength() override { return nullptr; }
  kj::Promise<void> write(const void* buffer, size_t size) override {
    return inner_->write(buffer, size);
  }
  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override {
    return inner_->write(pieces);
  }
  kj::Promise<void> whenWriteDisconnected() override { return inner_->whenWriteDisconnected(); }
  void shutdownWrite() override { inner_->shutdownWrite(); }
  void abortRead() override { inner_->abortRead(); }
  void getsockopt(int level, int option, void* value, uint* length) override {
    inner_->getsockopt(level, option, value, length);
  }
  void setsockopt(int level, int option, const void* value, uint length) override {
    inner_->setsockopt(level, option, value, length);
  }
  void getsockname(struct sockaddr* addr, uint* length) override {
    inner_->getsockname(addr, length);
  }
  void getpeername(struct sockaddr* addr, uint* length) override {
    inner_->getpeername(addr, length);
  }

 private:
  bool gone() const { return eof_ || failure_ != nullptr; }

  kj::Own<kj::AsyncIoStream> inner_;
  kj::byte byte_ = 0;
  bool held_ = false;       // byte_ was read ahead, not yet handed to kj
  bool eof_ = false;        // the client closed its end
  bool peeking_ = false;    // the one-byte look-ahead is in flight
  bool innerBusy_ = false;  // a read of kj's is in flight
  kj::Maybe<kj::Exception> failure_;
  std::vector<kj::Own<kj::PromiseFulfiller<void>>> readWaiters_, closeWaiters_;
  kj::Promise<void> peek_ = nullptr;  // destroyed first: it refers to the above
};

// The per-connection state: its rate limit and whether it has shown a
// valid token (before that it is on the server's unauthenticated list).
struct Conn : kj::Refcounted {
  uint64_t id = 0;
  std::string peer;
  std::string host;
  internal::CallBucket calls;
  bool authenticated = false;
  bool unauthListed = false;
  std::list<Conn*>::iterator unauthPos;
  kj::TimePoint authDeadline = kj::origin<kj::TimePoint>();
  kj::Own<kj::PromiseFulfiller<void>> kill;  // fulfilled to close it
  bool closing = false;
  WatchedStream* stream = nullptr;  // while the connection is open
};

// Media type of a Content-Type value, lowercase, without parameters.
std::string mediaType(kj::StringPtr value) {
  std::string v(value.cStr(), value.size());
  v = v.substr(0, v.find(';'));
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.pop_back();
  size_t start = v.find_first_not_of(" \t");
  v = start == std::string::npos ? "" : v.substr(start);
  for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return v;
}

bool isJsonMediaType(const std::string& type) {
  return type == "application/json" || (type.rfind("application/", 0) == 0 && type.size() > 5 &&
                                        type.compare(type.size() - 5, 5, "+json") == 0);
}

std::string stdString(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

std::optional<uint64_t> parseUnsigned(const std::string& s, uint64_t max) {
  if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  uint64_t v = 0;
  for (char c : s) {
    uint64_t digit = uint64_t(c - '0');
    if (v > (max - digit) / 10) return std::nullopt;
    v = v * 10 + digit;
  }
  return v;
}

}  // namespace

// ---- the server -----------------------------------------------------------

class Server::Impl final : public kj::TaskSet::ErrorHandler, public kj::HttpServerErrorHandler {
 public:
  Impl(ServerLoop& loop, kj::Own<kj::ConnectionReceiver> listener)
      : loop_(loop),
        limits_(loop.limits()),
        timer_(loop.timer()),
        metrics_(loop.metrics()),
        listener_(kj::mv(listener)),
        connections_(kj::heap<kj::TaskSet>(*this)),
        overview_(kj::heap<OverviewRunner>(
            loop, Overview::Options{.nodes = loop.node().options().overviewNodes})) {
    kj::HttpHeaderTable::Builder builder;
    authorization_ = builder.add("Authorization");
    allow_ = builder.add("Allow");
    wwwAuthenticate_ = builder.add("WWW-Authenticate");
    retryAfter_ = builder.add("Retry-After");
    cacheControl_ = builder.add("Cache-Control");
    contentSecurityPolicy_ = builder.add("Content-Security-Policy");
    contentTypeOptions_ = builder.add("X-Content-Type-Options");
    referrerPolicy_ = builder.add("Referrer-Policy");
    chorusSession_ = builder.add("Chorus-Session");
    lastEventId_ = builder.add("Last-Event-ID");
    table_ = builder.build();
    settings_.headerTimeout = 15 * kj::SECONDS;
    settings_.pipelineTimeout = kj::MILLISECONDS * limits_.idleTimeout.count();
    settings_.errorHandler = *this;
  }

  ~Impl() noexcept(false) {
    // After it returns the store thread no longer calls feedCommitted.
    if (feedSubscription_ != 0) loop_.node().unsubscribe(feedSubscription_);
    acceptTask_ = nullptr;
    connections_ = nullptr;  // closes every connection; their watches end
    overview_ = nullptr;     // waits for the overview threads still running
  }

  void start() {
    // Store thread: wakes the feed's waiting requests, one post at a time,
    // only when there are some.
    ServerLoop* loop = &loop_;
    Impl* self = this;
    feedSubscription_ = loop_.node().subscribe([loop, self](uint64_t) {
      if (self->feedWaiting_.load() == 0) return;
      if (self->feedWake_.exchange(true)) return;  // a wake-up is already queued
      loop->post([self] { self->feedAdvanced(); });
    });
    acceptTask_ = acceptLoop().eagerlyEvaluate([](kj::Exception&& e) {
      logf(LogLevel::kError, "http: accept failed: %s", e.getDescription().cStr());
    });
  }

  void taskFailed(kj::Exception&& e) override {
    logf(LogLevel::kDebug, "http: %s", e.getDescription().cStr());
  }

  // kj::HttpServerErrorHandler: a request kj could not parse, or a bug.
  kj::Promise<void> handleClientProtocolError(kj::HttpHeaders::ProtocolError error,
                                              kj::HttpService::Response& response) override {
    uint status = error.statusCode >= 400 && error.statusCode < 600 ? error.statusCode : 400;
    return send(response, problem(ApiError{ApiCode::kInvalidArgument, "",
                                           std::string("malformed HTTP request: ") +
                                               error.description.cStr()},
                                  status, "malformedRequest"));
  }
  kj::Promise<void> handleApplicationError(
      kj::Exception exception, kj::Maybe<kj::HttpService::Response&> response) override {
    if (exception.getType() == kj::Exception::Type::DISCONNECTED) return kj::READY_NOW;
    logf(LogLevel::kWarn, "http: request failed: %s", exception.getDescription().cStr());
    KJ_IF_MAYBE (r, response) {
      return send(*r, problem(ApiError{ApiCode::kInternal, "",
                                       std::string("the request failed: ") +
                                           exception.getDescription().cStr()}));
    }
    return kj::READY_NOW;
  }
  kj::Promise<void> handleNoResponse(kj::HttpService::Response& response) override {
    return send(response,
                problem(ApiError{ApiCode::kInternal, "", "the request ended without an answer"}));
  }

  kj::Promise<void> handle(Conn& conn, kj::HttpMethod method, kj::StringPtr url,
                           const kj::HttpHeaders& headers, kj::AsyncInputStream& body,
                           kj::HttpService::Response& response);

 private:
  class Service;
  struct Watch;

  kj::Promise<void> acceptLoop() {
    return listener_->accept()
        .then(
            [this](kj::Own<kj::AsyncIoStream> stream) -> kj::Promise<void> {
              if (!loop_.tokens() && authenticated_ >= limits_.maxConnections) {
                metrics_.connectionRefused();
                connectionLog_.warn(timer_.now(),
                                    "http: %u connections open (the limit); closed a new one "
                                    "from %s",
                                    limits_.maxConnections, internal::peerName(*stream).c_str());
                return kj::READY_NOW;  // `stream` closes here
              }
              connections_->add(serve(kj::mv(stream)));
              return kj::READY_NOW;
            },
            [this](kj::Exception&& e) -> kj::Promise<void> {
              logf(LogLevel::kError, "http: accept failed, retrying in 100 ms: %s",
                   e.getDescription().cStr());
              return timer_.afterDelay(100 * kj::MILLISECONDS);
            })
        .then([this] { return acceptLoop(); });
  }

  kj::Promise<void> serve(kj::Own<kj::AsyncIoStream> stream);

  // Until `conn` should close: no valid token by its deadline.
  kj::Promise<void> watchdog(Conn& conn) {
    auto interval = kj::MILLISECONDS * limits_.authTimeout.count() / 4;
    if (interval < 10 * kj::MILLISECONDS) interval = 10 * kj::MILLISECONDS;
    if (interval > 250 * kj::MILLISECONDS) interval = 250 * kj::MILLISECONDS;
    return timer_.afterDelay(interval).then([this, &conn]() -> kj::Promise<void> {
      if (conn.closing) return kj::NEVER_DONE;  // `kill` ends it
      if (!conn.authenticated && timer_.now() >= conn.authDeadline) {
        close(conn, Metrics::kAuthTimeout,
              "no valid token within " + std::to_string(limits_.authTimeout.count()) + " ms");
        return kj::NEVER_DONE;
      }
      return watchdog(conn);
    });
  }

  void close(Conn& conn, Metrics::CloseReason reason, const std::string& why) {
    if (conn.closing) return;
    conn.closing = true;
    leaveUnauthenticated(conn);
    metrics_.closedByLimit(reason);
    limitLog_.warn(timer_.now(), "http: closed connection %llu from %s: %s",
                   static_cast<unsigned long long>(conn.id), conn.peer.c_str(), why.c_str());
    if (conn.kill) conn.kill->fulfill();
  }

  // As the RPC server's: a newcomer over the per-address or the total cap
  // of connections without a valid token evicts the oldest such one.
  void enterUnauthenticated(Conn& conn) {
    conn.authDeadline = timer_.now() + kj::MILLISECONDS * limits_.authTimeout.count();
    if (unauthByHost_[conn.host] >= limits_.maxUnauthenticatedPerAddress) {
      for (Conn* other : unauth_) {
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

  void leaveUnauthenticated(Conn& conn) {
    if (!conn.unauthListed) return;
    unauth_.erase(conn.unauthPos);
    conn.unauthListed = false;
    auto it = unauthByHost_.find(conn.host);
    if (it != unauthByHost_.end() && --it->second == 0) unauthByHost_.erase(it);
    metrics_.unauthenticatedClosed();
  }

  // Who the request is from, by its Authorization header; the refusal if
  // it may not call at all. A valid token moves the connection out of the
  // unauthenticated tier (if maxConnections allow); a request without one
  // moves it back.
  std::variant<Caller, Reply> authenticate(Conn& conn, const kj::HttpHeaders& headers) {
    const TokenTable* tokens = loop_.tokens();
    if (tokens == nullptr) {
      Caller trusted{true, {}, {}, {}, {}};
      KJ_IF_MAYBE (value, headers.get(authorization_)) {  // forwarded by the overview routes
        std::string v(value->cStr(), value->size());
        if (v.size() > 7 && (v.compare(0, 7, "Bearer ") == 0 || v.compare(0, 7, "bearer ") == 0)) {
          trusted.token = v.substr(7);
        }
      }
      return trusted;
    }
    auto refuse = [&](std::string message) {
      // A connection is authenticated while its requests show a valid token:
      // one that stops (revoked, expired, none) is a stranger again, with
      // authTimeout from now, as an RPC connection left without a session.
      if (conn.authenticated && !conn.closing) {
        conn.authenticated = false;
        --authenticated_;
        enterUnauthenticated(conn);
      }
      Reply r = problem(unauthenticatedError(std::move(message)));
      r.headers.emplace_back(wwwAuthenticate_, "Bearer realm=\"chorus\"");
      return r;
    };
    std::string token;
    KJ_IF_MAYBE (value, headers.get(authorization_)) {
      std::string v(value->cStr(), value->size());
      if (v.size() < 7 || (v.compare(0, 7, "Bearer ") != 0 && v.compare(0, 7, "bearer ") != 0)) {
        return refuse("the Authorization header must be `Bearer <token>`");
      }
      token = v.substr(7);
      while (!token.empty() && token.front() == ' ') token.erase(0, 1);
      while (!token.empty() && token.back() == ' ') token.pop_back();
    } else {
      return refuse("this node requires a token: send the header `Authorization: Bearer <token>`");
    }
    Caller caller;
    caller.digest = TokenTable::digest(token);
    auto principal = tokens->findDigest(caller.digest);
    if (!principal) {
      metrics_.authFailed();
      authLog_.warn(timer_.now(), "http: unknown token from %s (connection %llu)",
                    conn.peer.c_str(), static_cast<unsigned long long>(conn.id));
      return refuse(
          "unknown token (not in the node's tokens file; after editing that file, send the node "
          "SIGHUP)");
    }
    if (auto e = expiredError(*principal, static_cast<int64_t>(std::time(nullptr)))) {
      metrics_.authFailed();
      return refuse(e->message);
    }
    if (!conn.authenticated) {
      if (authenticated_ >= limits_.maxConnections) {
        metrics_.connectionRefused();
        connectionLog_.warn(timer_.now(),
                            "http: %u authenticated connections open (the limit); refused a "
                            "token from %s",
                            limits_.maxConnections, conn.peer.c_str());
        return problem(ApiError{ApiCode::kOverloaded, "",
                                std::to_string(limits_.maxConnections) +
                                    " authenticated connections are open (the node's limit, "
                                    "--max-connections); retry later"});
      }
      leaveUnauthenticated(conn);
      conn.authenticated = true;
      ++authenticated_;
    }
    caller.principal = std::move(*principal);
    caller.token = std::move(token);
    return caller;
  }

  // A caller's token may have gone (a reload) or expired since it was
  // checked: for a watch that outlives its request.
  std::optional<std::string> stillValid(const Caller& caller) {
    if (caller.trusted) return std::nullopt;
    const TokenTable* tokens = loop_.tokens();
    if (tokens == nullptr || !tokens->findDigest(caller.digest)) {
      return std::string("token revoked (no longer in the node's tokens file)");
    }
    if (auto e = expiredError(caller.principal, static_cast<int64_t>(std::time(nullptr)))) {
      return e->message;
    }
    return std::nullopt;
  }

  kj::Promise<void> send(kj::HttpService::Response& response, Reply reply) {
    auto r = kj::heap<Reply>(kj::mv(reply));  // the body stays put while it is written
    kj::HttpHeaders headers(*table_);
    headers.set(kj::HttpHeaderId::CONTENT_TYPE, r->contentType);
    for (const auto& [id, value] : r->headers) headers.set(id, value);
    auto out = response.send(r->status, statusText(r->status), headers, r->body.size());
    auto written = out->write(r->body.data(), r->body.size());
    return written.attach(kj::mv(out), kj::mv(r));
  }

  // The request's body, up to maxMessageBytes; nullopt if it is larger.
  struct BodyBuffer {
    std::string text;
    char chunk[16 << 10];
  };
  kj::Promise<std::optional<std::string>> readBody(kj::AsyncInputStream& in) {
    auto buffer = kj::heap<BodyBuffer>();
    auto& ref = *buffer;
    return readMore(in, ref).attach(kj::mv(buffer));
  }
  kj::Promise<std::optional<std::string>> readMore(kj::AsyncInputStream& in, BodyBuffer& b) {
    return in.tryRead(b.chunk, 1, sizeof b.chunk)
        .then([this, &in, &b](size_t n) -> kj::Promise<std::optional<std::string>> {
          if (n == 0) return std::optional<std::string>(std::move(b.text));
          b.text.append(b.chunk, n);
          if (b.text.size() > limits_.maxMessageBytes) return std::optional<std::string>();
          return readMore(in, b);
        });
  }

  // The operations. Each returns its reply; errors are problem documents.
  kj::Promise<Reply> dispatch(const Match& m, const Caller& caller, const std::string& body);
  kj::Promise<Reply> write(const Caller& caller, WriteRequest request, bool withReview);
  // A read on the read pool; in the caller's session (Caller::session) it
  // waits for its write (ServerLoop::readInSession), after `check`
  // (Node::checkGet...) passed.
  template <typename T, typename Work, typename Check, typename Fill>
  kj::Promise<Reply> read(const Caller& caller, const char* method, std::string key, Work work,
                          Check check, Fill fill);
  kj::Promise<void> watch(const Match& m, const Caller& caller, kj::HttpService::Response& response,
                          Reply& refusal);

  // ---- the change feed (GET /v1/changes) ----
  struct FeedQuery {
    enum class Mode { kNormal, kLongpoll, kEventSource } mode = Mode::kNormal;
    uint64_t since = 0;  // storage::kSinceNow for "now"
    uint32_t limit = Node::kDefaultFeedLimit;
    bool docs = false;
    uint64_t heartbeat = kDefaultHeartbeatMillis;
    uint64_t timeout = kDefaultFeedTimeoutMillis;
  };
  struct FeedStream;
  std::variant<FeedQuery, FieldError> feedQuery(const Match& m, const kj::HttpHeaders& headers);
  // One page of the feed, read on the read pool.
  kj::Promise<kj::Own<Result<ChangesPage>>> readFeed(uint64_t since, uint32_t limit, bool docs);
  kj::Promise<Reply> changes(Conn& conn, const Caller& caller, FeedQuery q);
  kj::Promise<Reply> longpoll(Conn& conn, FeedQuery q, kj::TimePoint deadline);
  kj::Promise<void> eventSource(const Caller& caller, FeedQuery q,
                                kj::HttpService::Response& response, Reply& refusal);
  kj::Promise<void> pumpFeed(FeedStream& f);
  // Resolves once the node's last seq is past `since` (at once if it is).
  kj::Promise<void> feedPast(uint64_t since);
  // RPC thread: the store committed changes: wakes every feedPast.
  void feedAdvanced() {
    feedWake_.store(false);  // before the waiters read lastSeq: a later commit posts again
    auto waiters = std::move(feedWaiters_);
    feedWaiters_.clear();
    feedWaiting_.store(0);
    for (auto& [id, fulfiller] : waiters) fulfiller->fulfill();
  }

  ServerLoop& loop_;
  const RpcLimits& limits_;
  kj::Timer& timer_;
  Metrics& metrics_;
  kj::Own<kj::ConnectionReceiver> listener_;
  kj::Own<kj::HttpHeaderTable> table_;
  kj::HttpHeaderId authorization_ = kj::HttpHeaderId::HOST;  // set in the constructor
  kj::HttpHeaderId allow_ = kj::HttpHeaderId::HOST;
  kj::HttpHeaderId wwwAuthenticate_ = kj::HttpHeaderId::HOST;
  kj::HttpHeaderId retryAfter_ = kj::HttpHeaderId::HOST;
  kj::HttpHeaderId cacheControl_ = kj::HttpHeaderId::HOST;
  kj::HttpHeaderId contentSecurityPolicy_ = kj::HttpHeaderId::HOST;
  kj::HttpHeaderId contentTypeOptions_ = kj::HttpHeaderId::HOST;
  kj::HttpHeaderId referrerPolicy_ = kj::HttpHeaderId::HOST;
  kj::HttpHeaderId chorusSession_ = kj::HttpHeaderId::HOST;
  kj::HttpHeaderId lastEventId_ = kj::HttpHeaderId::HOST;
  kj::HttpServerSettings settings_;

  uint64_t nextConn_ = 1;
  uint32_t authenticated_ = 0;  // connections that showed a valid token (all, with --no-auth)
  std::list<Conn*> unauth_;     // the others, oldest first
  std::unordered_map<std::string, uint32_t> unauthByHost_;
  internal::RateLimitedLog authLog_{10 * kj::SECONDS};
  internal::RateLimitedLog connectionLog_{10 * kj::SECONDS};
  internal::RateLimitedLog limitLog_{10 * kj::SECONDS};

  // Watches, by id: a change posted from the store thread finds its
  // stream here, if it is still open.
  std::unordered_map<uint64_t, Watch*> watches_;
  uint64_t nextWatch_ = 1;

  // The feed's waiting requests (feedPast), by id; feedWaiting_ mirrors
  // their count for the store thread, which posts one wake-up at a time
  // (feedWake_) while there are some.
  std::unordered_map<uint64_t, kj::Own<kj::PromiseFulfiller<void>>> feedWaiters_;
  uint64_t nextFeedWaiter_ = 1;
  std::atomic<size_t> feedWaiting_{0};
  std::atomic<bool> feedWake_{false};
  uint64_t feedSubscription_ = 0;

  kj::Promise<void> acceptTask_ = nullptr;
  kj::Own<kj::TaskSet> connections_;
  kj::Own<OverviewRunner> overview_;  // the overview routes' threads
};

// One connection's kj::HttpService: hands each request to the server with
// the connection's state.
class Server::Impl::Service final : public kj::HttpService {
 public:
  Service(Impl& server, kj::Own<Conn> conn) : server_(server), conn_(kj::mv(conn)) {}
  kj::Promise<void> request(kj::HttpMethod method, kj::StringPtr url,
                            const kj::HttpHeaders& headers, kj::AsyncInputStream& body,
                            Response& response) override {
    return server_.handle(*conn_, method, url, headers, body, response);
  }

 private:
  Impl& server_;
  kj::Own<Conn> conn_;
};

kj::Promise<void> Server::Impl::serve(kj::Own<kj::AsyncIoStream> stream) {
  auto conn = kj::refcounted<Conn>();
  conn->id = nextConn_++;
  conn->peer = internal::peerName(*stream);
  conn->host = internal::hostOf(conn->peer);
  conn->calls = internal::CallBucket(limits_.maxCallsPerSecond, limits_.callBurst, timer_.now());
  if (loop_.tokens() != nullptr) {
    enterUnauthenticated(*conn);  // may evict older strangers
  } else {
    conn->authenticated = true;  // --no-auth: trusted
    ++authenticated_;
  }
  auto kill = kj::newPromiseAndFulfiller<void>();
  conn->kill = kj::mv(kill.fulfiller);
  auto service = kj::heap<Service>(*this, kj::addRef(*conn));
  auto server = kj::heap<kj::HttpServer>(timer_, *table_, *service, settings_);
  logf(LogLevel::kDebug, "http: connection %llu opened from %s",
       static_cast<unsigned long long>(conn->id), conn->peer.c_str());
  auto closed = kj::defer([this, conn = kj::addRef(*conn)]() mutable {
    leaveUnauthenticated(*conn);
    if (conn->authenticated) --authenticated_;
    conn->closing = true;
    conn->kill = nullptr;
    conn->stream = nullptr;
    logf(LogLevel::kDebug, "http: connection %llu closed",
         static_cast<unsigned long long>(conn->id));
  });
  auto watched = kj::heap<WatchedStream>(kj::mv(stream));
  conn->stream = watched.get();
  auto done = server->listenHttp(kj::mv(watched))
                  .exclusiveJoin(watchdog(*conn))
                  .exclusiveJoin(kj::mv(kill.promise));
  // The connection's HttpServer goes before its service, `closed` after both.
  return done.attach(kj::mv(server)).attach(kj::mv(service), kj::mv(conn)).attach(kj::mv(closed));
}

kj::Promise<void> Server::Impl::handle(Conn& conn, kj::HttpMethod method, kj::StringPtr url,
                                       const kj::HttpHeaders& headers, kj::AsyncInputStream& body,
                                       kj::HttpService::Response& response) {
  auto start = std::chrono::steady_clock::now();
  auto match = kj::heap<Match>(findRoute(method, std::string_view(url.cStr(), url.size())));
  Metrics::Method metric = match->route ? metricOf(match->route->op) : Metrics::kMethodCount;
  // Sends `reply` and counts the request.
  auto finish = [this, &response, metric, start](Reply reply) {
    if (metric != Metrics::kMethodCount) {
      metrics_.recordHttp(metric, secondsSince(start), reply.code);
    }
    return send(response, kj::mv(reply));
  };

  if (!conn.calls.take(timer_.now())) {
    metrics_.rateLimited();
    Reply r = problem(ApiError{ApiCode::kOverloaded, "",
                               "rate limit: " + std::to_string(limits_.maxCallsPerSecond) +
                                   " requests/s per connection (bursts of " +
                                   std::to_string(limits_.callBurst) + "); retry with backoff"});
    r.headers.emplace_back(retryAfter_, "1");
    return finish(kj::mv(r));
  }
  if (match->route == nullptr) {
    std::string what = std::string(kj::str(method).cStr()) + " " + url.cStr();
    if (match->allow.empty()) {
      return finish(problem(ApiError{ApiCode::kNotFound, "",
                                     "no such route: " + what +
                                         " (the routes are in "
                                         "/v1/openapi.json)"},
                            404, "noRoute"));
    }
    Reply r = problem(ApiError{ApiCode::kInvalidArgument, "",
                               what + ": method not allowed; this path takes " + match->allow},
                      405, "methodNotAllowed");
    r.headers.emplace_back(allow_, match->allow);
    return finish(kj::mv(r));
  }
  const Route& route = *match->route;
  if (route.op == Op::kOpenApi) {
    auto doc = generated::OPENAPI_JSON.get();
    return finish(json(std::string(doc.cStr(), doc.size())));
  }
  if (route.op == Op::kInfo) {
    // Chorus.info: anyone may ask (the API version before anything else).
    capnp::MallocMessageBuilder message(128);
    auto res = message.initRoot<wire::Chorus::InfoResults>();
    res.setApiVersion(wire::API_VERSION);
    res.setVersion(CHORUS_VERSION);
    res.setNodeId(loop_.node().options().nodeId);
    return finish(results(res));
  }
  if (route.op == Op::kDashboard) {
    // The page holds no data (it asks /v1/cluster/overview with the token
    // the user enters): anyone may load it. It runs only its own files.
    const EmbeddedFile* file = match->params.empty()
                                   ? dashboardFile("/dashboard/index.html")
                                   : dashboardFile("/dashboard/" + match->param("file"));
    if (file == nullptr) {
      return finish(problem(ApiError{ApiCode::kNotFound, "", "no such file of the dashboard"}));
    }
    Reply r;
    r.contentType = std::string(file->contentType);
    r.body = std::string(file->bytes);
    r.headers.emplace_back(cacheControl_, "no-cache");
    r.headers.emplace_back(contentTypeOptions_, "nosniff");
    r.headers.emplace_back(referrerPolicy_, "no-referrer");
    r.headers.emplace_back(contentSecurityPolicy_,
                           "default-src 'none'; script-src 'self'; style-src 'self'; "
                           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'");
    return finish(kj::mv(r));
  }
  // Who asks, before anything about the request is judged (as over RPC).
  auto who = authenticate(conn, headers);
  if (auto* refused = std::get_if<Reply>(&who)) return finish(kj::mv(*refused));
  auto caller = kj::heap<Caller>(std::get<Caller>(kj::mv(who)));

  if (match->invalid) return finish(invalid(*match->invalid));
  for (const auto& [name, value] : match->query) {
    bool known = false;
    size_t start = 0;
    while (start <= route.query.size() && !known) {
      size_t comma = route.query.find(',', start);
      known = route.query.substr(start, comma == std::string_view::npos ? comma : comma - start) ==
              name;
      if (comma == std::string_view::npos) break;
      start = comma + 1;
    }
    if (!known) {
      return finish(invalid(FieldError{
          name, route.query.empty()
                    ? "unknown query parameter: this route takes none"
                    : "unknown query parameter: this route takes " + std::string(route.query)}));
    }
  }

  // A read's session: the Chorus-Session header or ?session= (one token).
  KJ_IF_MAYBE (value, headers.get(chorusSession_)) {
    caller->session = std::string(value->cStr(), value->size());
  }
  for (const auto& [name, value] : match->query) {
    if (name != "session") continue;
    if (!caller->session.empty() && caller->session != value) {
      return finish(invalid(FieldError{
          "session", "given twice, differently (the Chorus-Session header and ?session=)"}));
    }
    caller->session = value;
  }

  if (route.op == Op::kChanges) {
    auto q = feedQuery(*match, headers);
    if (auto* bad = std::get_if<FieldError>(&q)) return finish(invalid(*bad));
    FeedQuery& fq = std::get<FeedQuery>(q);
    if (fq.mode == FeedQuery::Mode::kEventSource) {
      // Set (before any answer was sent) when it is refused.
      auto refusal = kj::heap<Reply>();
      auto streaming = eventSource(*caller, fq, response, *refusal);
      return streaming
          .then([this, &refusal = *refusal, start, &response]() -> kj::Promise<void> {
            if (refusal.code == nullptr) return kj::READY_NOW;
            metrics_.recordHttp(Metrics::kFollow, secondsSince(start), refusal.code);
            return send(response, kj::mv(refusal));
          })
          .attach(kj::mv(refusal), kj::mv(match), kj::mv(caller));
    }
    return changes(conn, *caller, fq)
        .then([finish](Reply r) mutable { return finish(kj::mv(r)); })
        .attach(kj::mv(match), kj::mv(caller));
  }

  if (route.op == Op::kWatch) {
    Reply refusal;
    auto streaming = watch(*match, *caller, response, refusal);
    if (refusal.code != nullptr) return finish(kj::mv(refusal));
    metrics_.recordHttp(metric, secondsSince(start), nullptr);
    return streaming.attach(kj::mv(match), kj::mv(caller));
  }

  // Writes and admin calls may carry a JSON body; reads ignore theirs.
  if (method == kj::HttpMethod::GET) {
    return dispatch(*match, *caller, std::string())
        .then([finish](Reply r) mutable { return finish(kj::mv(r)); })
        .attach(kj::mv(match), kj::mv(caller));
  }
  KJ_IF_MAYBE (length, body.tryGetLength()) {
    if (*length > limits_.maxMessageBytes) {
      return finish(
          invalid(FieldError{"", "the request body is " + std::to_string(*length) +
                                     " bytes; at most " + std::to_string(limits_.maxMessageBytes)},
                  413, "contentTooLarge"));
    }
  }
  std::string type;
  KJ_IF_MAYBE (value, headers.get(kj::HttpHeaderId::CONTENT_TYPE)) {
    type = mediaType(*value);
  }
  // `url` and `headers` are not valid after the body is read.
  return readBody(body)
      .then([this, finish, type = std::move(type), &m = *match,
             &c = *caller](std::optional<std::string> text) mutable -> kj::Promise<void> {
        if (!text) {
          return finish(
              invalid(FieldError{"", "the request body is larger than " +
                                         std::to_string(limits_.maxMessageBytes) + " bytes"},
                      413, "contentTooLarge"));
        }
        if (!text->empty() && !isJsonMediaType(type)) {
          return finish(invalid(FieldError{"",
                                           "the request body must be JSON (Content-Type: "
                                           "application/json), not '" +
                                               type + "'"},
                                415, "unsupportedMediaType"));
        }
        return dispatch(m, c, *text).then([finish](Reply r) mutable { return finish(kj::mv(r)); });
      })
      .attach(kj::mv(match), kj::mv(caller));
}

kj::Promise<Reply> Server::Impl::write(const Caller& caller, WriteRequest request,
                                       bool withReview) {
  if (auto no = mayWrite(caller, request)) return problem(*no);
  return loop_.write(std::move(request))
      .then([this, withReview](kj::Own<Result<ReviewView>> r) -> Reply {
        if (!r->ok()) return problem(r->error());
        // Every write but erase answers {review, session}, as put does;
        // the token is in the Chorus-Session header too.
        Reply reply = json(withReview ? writeResultsJson(**r) : eraseResultsJson((*r)->session));
        if (!(*r)->session.empty()) reply.headers.emplace_back(chorusSession_, (*r)->session);
        return reply;
      });
}

template <typename T, typename Work, typename Check, typename Fill>
kj::Promise<Reply> Server::Impl::read(const Caller& caller, const char* method, std::string key,
                                      Work work, Check check, Fill fill) {
  if (auto no = mayRead(caller)) return problem(*no);
  kj::Promise<kj::Own<ReadOutcome>> outcome = nullptr;
  if (caller.session.empty()) {
    outcome = loop_.read(method, std::move(key), internal::readWork<T>(std::move(work)),
                         &internal::refusedRead<T>);
  } else {
    // Read your writes: the arguments first (a bad one is answered at
    // once), then the token, then the read once the node holds its write.
    Node& node = loop_.node();
    if (Status bad = check(node); !bad.ok()) return problem(bad.error());
    auto token = node.parseSession(caller.session);
    if (!token.ok()) return problem(token.error());
    outcome = loop_.readInSession(method, std::move(key), internal::readWork<T>(std::move(work)),
                                  std::move(token).value(), &internal::refusedRead<T>);
  }
  return kj::mv(outcome).then([fill = std::move(fill)](kj::Own<ReadOutcome> outcome) -> Reply {
    const Result<T>& r = std::get<Result<T>>(*outcome);
    if (!r.ok()) return problem(r.error());
    return fill(*r);
  });
}

kj::Promise<Reply> Server::Impl::dispatch(const Match& m, const Caller& caller,
                                          const std::string& body) {
  Node& node = loop_.node();
  const Op op = m.route->op;
  capnp::MallocMessageBuilder params(128);
  // Decodes the body into Cap'n Proto params of type P.
  auto decode = [&](auto builder, std::initializer_list<const char*> allowed,
                    std::initializer_list<const char*> required = {}) {
    return decodeJsonBody(body, capnp::toDynamic(builder), allowed, required);
  };
  auto query = [&](std::string_view name) -> const std::string* {
    for (const auto& [n, v] : m.query) {
      if (n == name) return &v;
    }
    return nullptr;
  };
  // A write of the review in the path, with `arg`.
  auto keyed = [&](WriteOp wop, std::string arg) {
    WriteRequest r;
    r.op = wop;
    r.product = m.param("product");
    r.author = m.param("author");
    r.arg = std::move(arg);
    return r;
  };
  // order, limit and cursor of a listing; nullopt after an error reply.
  struct Listing {
    storage::Order order = storage::Order::kNewest;
    uint32_t limit = 0;
    std::string cursor;
  };
  auto listing = [&](Listing& l) -> std::optional<Reply> {
    if (const std::string* order = query("order")) {
      if (*order == "newest") {
        l.order = storage::Order::kNewest;
      } else if (*order == "highestRating") {
        l.order = storage::Order::kHighestRating;
      } else if (*order == "lowestRating") {
        l.order = storage::Order::kLowestRating;
      } else {
        return invalid(FieldError{"order", "must be newest, highestRating or lowestRating"});
      }
    }
    if (const std::string* limit = query("limit")) {
      auto v = parseUnsigned(*limit, 0xFFFFFFFF);
      if (!v) return invalid(FieldError{"limit", "must be a whole number (0 = 20, at most 100)"});
      l.limit = uint32_t(*v);
    }
    if (const std::string* cursor = query("cursor")) l.cursor = *cursor;
    return std::nullopt;
  };

  switch (op) {
    case Op::kPut: {
      auto p = params.initRoot<wire::ReviewStore::PutParams>();
      if (auto bad = decode(p, {"rating", "title", "body"}, {"rating"})) return invalid(*bad);
      WriteRequest r;
      r.op = WriteOp::kPut;
      r.product = m.param("product");
      r.author = m.param("author");
      r.rating = p.getRating();
      r.title = stdString(p.getTitle());
      r.body = stdString(p.getBody());
      return write(caller, std::move(r), true);
    }
    case Op::kErase:
      if (auto bad = decode(params.initRoot<wire::ReviewStore::EraseParams>(), {})) {
        return invalid(*bad);
      }
      return write(caller, keyed(WriteOp::kDelete, ""), false);
    case Op::kVote:
    case Op::kUnvote:
      if (auto bad = decode(params.initRoot<wire::ReviewStore::VoteParams>(), {})) {
        return invalid(*bad);
      }
      return write(caller,
                   keyed(op == Op::kVote ? WriteOp::kVote : WriteOp::kUnvote, m.param("voter")),
                   true);
    case Op::kTag:
    case Op::kUntag:
      if (auto bad = decode(params.initRoot<wire::ReviewStore::TagParams>(), {})) {
        return invalid(*bad);
      }
      return write(caller, keyed(op == Op::kTag ? WriteOp::kTag : WriteOp::kUntag, m.param("tag")),
                   true);
    case Op::kModerate: {
      auto p = params.initRoot<wire::ReviewStore::ModerateParams>();
      if (auto bad = decode(p, {"visibility", "reason"}, {"visibility"})) return invalid(*bad);
      WriteRequest r = keyed(WriteOp::kModerate, stdString(p.getReason()));
      r.visibility = fromWire(p.getVisibility());
      return write(caller, std::move(r), true);
    }
    case Op::kReply: {
      auto p = params.initRoot<wire::ReviewStore::ReplyParams>();
      if (auto bad = decode(p, {"text"}, {"text"})) return invalid(*bad);
      return write(caller, keyed(WriteOp::kReply, stdString(p.getText())), true);
    }

    case Op::kGet: {
      std::string product = m.param("product"), author = m.param("author");
      return read<ReviewView>(
          caller, "get", product, [product, author](Node& n) { return n.get(product, author); },
          [product, author](const Node& n) { return n.checkGet(product, author); },
          [](const ReviewView& v) { return json(reviewResultsJson(v)); });
    }
    case Op::kList:
    case Op::kPage: {
      Listing l;
      if (auto bad = listing(l)) return kj::mv(*bad);
      std::string product = m.param("product");
      if (op == Op::kList) {
        return read<ReviewPage>(
            caller, "list", product,
            [product, l](Node& n) { return n.list(product, l.order, l.cursor, l.limit); },
            [product, l](const Node& n) { return n.checkList(product, l.cursor, l.limit); },
            [](const ReviewPage& page) { return json(pageResultsJson(page)); });
      }
      return read<ProductPageView>(
          caller, "page", product,
          [product, l](Node& n) { return n.page(product, l.order, l.cursor, l.limit); },
          [product, l](const Node& n) { return n.checkList(product, l.cursor, l.limit); },
          [product](const ProductPageView& v) { return json(productPageResultsJson(product, v)); });
    }
    case Op::kSummary: {
      std::string product = m.param("product");
      return read<storage::ProductSummary>(
          caller, "summary", product, [product](Node& n) { return n.summary(product); },
          [product](const Node& n) { return n.checkSummary(product); },
          [product](const storage::ProductSummary& s) {
            return json(summaryResultsJson(product, s));
          });
    }
    case Op::kByAuthor: {
      Listing l;
      if (auto bad = listing(l)) return kj::mv(*bad);
      std::string author = m.param("author");
      return read<ReviewPage>(
          caller, "byAuthor", author,
          [author, l](Node& n) { return n.byAuthor(author, l.cursor, l.limit); },
          [author, l](const Node& n) { return n.checkByAuthor(author, l.cursor, l.limit); },
          [](const ReviewPage& page) { return json(pageResultsJson(page)); });
    }

    case Op::kStatus: {
      if (auto no = mayAdmin(caller, "status")) return problem(*no);
      auto s = node.status();
      if (!s.ok()) return problem(s.error());
      capnp::MallocMessageBuilder message(512);
      auto res = message.initRoot<wire::Admin::StatusResults>();
      toWire(*s, res.initStatus());
      return results(res);
    }
    case Op::kHealth: {
      if (auto no = mayRead(caller)) return problem(*no);
      NodeHealth h = node.health();
      capnp::MallocMessageBuilder message(256);
      auto res = message.initRoot<wire::Admin::HealthResults>();
      toWire(h, res.initHealth());
      Reply r = results(res);
      if (!h.serving) r.status = 503;  // for load balancers; the body says why
      return r;
    }
    case Op::kCluster: {
      if (auto no = mayAdmin(caller, "cluster")) return problem(*no);
      auto view = node.clusterView();
      if (!view.ok()) return problem(view.error());
      capnp::MallocMessageBuilder message(2048);
      auto res = message.initRoot<wire::Admin::ClusterResults>();
      toWire(*view, res.initView());
      return results(res);
    }
    case Op::kPartition: {
      if (auto no = mayAdmin(caller, "partition")) return problem(*no);
      auto p = params.initRoot<wire::Admin::PartitionParams>();
      if (auto bad = decode(p, {"peers"}, {"peers"})) return invalid(*bad);
      auto peers = p.getPeers();
      if (peers.size() > kMaxPartitionPeers) {
        return invalid(
            FieldError{"peers", "at most " + std::to_string(kMaxPartitionPeers) + " node ids"});
      }
      std::vector<std::string> ids;
      for (auto id : peers) ids.emplace_back(id.cStr(), id.size());
      auto s = node.partition(ids);
      if (!s.ok()) return problem(s.error());
      capnp::MallocMessageBuilder message(64);
      return results(message.initRoot<wire::Admin::PartitionResults>());
    }
    case Op::kHeal: {
      if (auto no = mayAdmin(caller, "heal")) return problem(*no);
      if (auto bad = decode(params.initRoot<wire::Admin::HealParams>(), {})) return invalid(*bad);
      auto s = node.heal();
      if (!s.ok()) return problem(s.error());
      capnp::MallocMessageBuilder message(64);
      return results(message.initRoot<wire::Admin::HealResults>());
    }
    case Op::kKeysList:
    case Op::kKeys: {
      if (auto no = mayAdmin(caller, "keys")) return problem(*no);
      KeyOp keyOp = KeyOp::kList;
      std::string key;
      if (op == Op::kKeys) {
        auto p = params.initRoot<wire::Admin::KeysParams>();
        if (auto bad = decode(p, {"op", "key"}, {"op"})) return invalid(*bad);
        auto known = fromWire(p.getOp());
        if (!known) return invalid(FieldError{"op", "must be list, install, use or remove"});
        keyOp = *known;
        if (p.getKey().size() > kMaxKeyArgBytes) {
          return invalid(FieldError{"key", "at most " + std::to_string(kMaxKeyArgBytes) +
                                               " bytes (a key is 44 characters of base64)"});
        }
        key = stdString(p.getKey());
      }
      auto r = node.keys(keyOp, key);
      if (!r.ok()) return problem(r.error());
      capnp::MallocMessageBuilder message(256);
      auto res = message.initRoot<wire::Admin::KeysResults>();
      auto list = res.initKeys(static_cast<unsigned>(r->size()));
      for (unsigned i = 0; i < r->size(); ++i) {
        list[i].setFingerprint((*r)[i].fingerprint);
        list[i].setPrimary((*r)[i].primary);
      }
      return results(res);
    }
    case Op::kLeave: {
      if (auto no = mayAdmin(caller, "leave")) return problem(*no);
      auto p = params.initRoot<wire::Admin::LeaveParams>();
      if (auto bad = decode(p, {"timeoutMillis"})) return invalid(*bad);
      uint32_t millis = p.getTimeoutMillis();
      if (millis == 0) millis = kDefaultLeaveMillis;
      if (millis > kMaxLeaveMillis) {
        return invalid(
            FieldError{"timeoutMillis", "at most " + std::to_string(kMaxLeaveMillis) + " (5 min)"});
      }
      return loop_.leave(std::chrono::milliseconds(millis)).then([](kj::Own<Status> s) -> Reply {
        if (!s->ok()) return problem(s->error());
        capnp::MallocMessageBuilder message(64);
        return results(message.initRoot<wire::Admin::LeaveResults>());
      });
    }
    case Op::kBackup: {
      if (auto no = mayAdmin(caller, "backup")) return problem(*no);
      auto p = params.initRoot<wire::Admin::BackupParams>();
      if (auto bad = decode(p, {"dir"}, {"dir"})) return invalid(*bad);
      if (p.getDir().size() > 4096) return invalid(FieldError{"dir", "is longer than 4096 bytes"});
      return loop_.backup(stdString(p.getDir()))
          .then([](kj::Own<Result<storage::BackupManifest>> m) -> Reply {
            if (!m->ok()) return problem(m->error());
            capnp::MallocMessageBuilder message(256);
            auto res = message.initRoot<wire::Admin::BackupResults>();
            toWire(**m, res.initManifest());
            return results(res);
          });
    }
    case Op::kRemove: {
      if (auto no = mayAdmin(caller, "remove")) return problem(*no);
      auto p = params.initRoot<wire::Admin::RemoveParams>();
      if (auto bad = decode(p, {"node"}, {"node"})) return invalid(*bad);
      if (p.getNode().size() > 128) {
        return invalid(FieldError{"node", "is longer than 128 bytes"});
      }
      auto s = node.remove(stdString(p.getNode()));
      if (!s.ok()) return problem(s.error());
      capnp::MallocMessageBuilder message(64);
      return results(message.initRoot<wire::Admin::RemoveResults>());
    }
    case Op::kOverview:
    case Op::kOverviewPartition:
    case Op::kOverviewHeal: {
      if (auto no = mayAdmin(caller, "overview")) return problem(*no);
      auto answered = [](OverviewRunner::Answer a) -> Reply {
        if (!a->ok()) return problem(a->error());
        return json(std::move(**a));
      };
      if (op == Op::kOverview) return overview_->overview(caller.token).then(answered);
      if (op == Op::kOverviewHeal) {
        if (auto bad = parseHealBody(body)) return invalid(*bad);
        return overview_->heal(caller.token).then(answered);
      }
      auto groups = parsePartitionBody(body);
      if (auto* bad = std::get_if<FieldError>(&groups)) return invalid(*bad);
      return overview_->partition(std::get<0>(std::move(groups)), caller.token).then(answered);
    }
    case Op::kWatch:
    case Op::kChanges:
    case Op::kOpenApi:
    case Op::kInfo:
    case Op::kDashboard:
      break;  // handled before dispatch
  }
  KJ_FAIL_ASSERT("an HTTP route without a handler", std::string(m.route->name).c_str());
}

// ---- watch: a product's changes as a text/event-stream -----------------------

// One open watch: its event stream and the changes it dropped since the
// last one it queued (at most maxPendingChangesPerWatch wait; more are
// dropped and counted in the next one's `missed`).
struct Server::Impl::Watch {
  uint64_t id = 0;
  uint64_t nodeWatch = 0;
  kj::Own<EventStream> stream;
  uint32_t missed = 0;
};

kj::Promise<void> Server::Impl::watch(const Match& m, const Caller& caller,
                                      kj::HttpService::Response& response, Reply& refusal) {
  if (auto no = mayRead(caller)) {
    refusal = problem(*no);
    return kj::READY_NOW;
  }
  uint64_t heartbeat = kDefaultHeartbeatMillis;
  for (const auto& [name, value] : m.query) {
    if (name != "heartbeat") continue;
    auto v = parseUnsigned(value, kMaxHeartbeatMillis);
    if (!v || *v < kMinHeartbeatMillis) {
      refusal = invalid(FieldError{"heartbeat", "must be milliseconds from " +
                                                    std::to_string(kMinHeartbeatMillis) + " to " +
                                                    std::to_string(kMaxHeartbeatMillis)});
      return kj::READY_NOW;
    }
    heartbeat = *v;
  }
  const std::string& product = m.param("product");
  if (auto bad = checkId("product", product, loop_.node().limits())) {
    refusal = invalid(*bad);
    return kj::READY_NOW;
  }
  if (!loop_.takeWatch()) {
    refusal = problem(ApiError{ApiCode::kOverloaded, "",
                               "this node serves at most " + std::to_string(limits_.maxWatches) +
                                   " watches; retry later"});
    return kj::READY_NOW;
  }
  auto w = kj::heap<Watch>();
  w->id = nextWatch_++;
  ServerLoop* loop = &loop_;
  Impl* self = this;
  uint64_t id = w->id;
  auto nodeWatch = loop_.node().watch(product, [loop, self, id](const Change& change) {
    // Store thread.
    loop->post([self, id, change] {
      auto it = self->watches_.find(id);
      if (it == self->watches_.end()) return;
      Watch& w = *it->second;
      if (!w.stream || w.stream->queued() >= self->limits_.maxPendingChangesPerWatch) {
        ++w.missed;
        self->metrics_.changesDropped(1);
        return;
      }
      Change c = change;
      c.missed = w.missed;
      w.missed = 0;
      capnp::MallocMessageBuilder message(512);
      auto wc = message.initRoot<wire::Change>();
      toWire(c, wc);
      std::string event = "event: change\ndata: ";
      appendJsonStruct(event, capnp::toDynamic(wc.asReader()));
      event += "\n\n";
      w.stream->push(std::move(event));
    });
  });
  if (!nodeWatch.ok()) {
    loop_.releaseWatch();
    refusal = problem(nodeWatch.error());
    return kj::READY_NOW;
  }
  w->nodeWatch = *nodeWatch;
  watches_.emplace(w->id, w.get());
  auto gone = kj::defer([this, id = w->id, nodeWatch = w->nodeWatch] {
    loop_.node().unwatch(nodeWatch);  // after it returns, no more changes are posted
    watches_.erase(id);
    loop_.releaseWatch();
  });

  kj::HttpHeaders headers(*table_);
  headers.set(kj::HttpHeaderId::CONTENT_TYPE, "text/event-stream");
  headers.set(cacheControl_, "no-cache");
  // Ends when the caller's token is revoked or expires, or the client goes
  // away (a write fails).
  w->stream =
      kj::heap<EventStream>(timer_, response.send(200, "OK", headers), heartbeat * kj::MILLISECONDS,
                            [this, caller]() -> std::optional<std::string> {
                              auto why = stillValid(caller);
                              if (!why) return std::nullopt;
                              return problem(unauthenticatedError(*why)).body;
                            });
  w->stream->push(": watching " + product + " (a change is `event: change`, its data JSON)\n\n");
  auto running = w->stream->run();
  return running.attach(kj::mv(gone), kj::mv(w));
}

// ---- the change feed: GET /v1/changes ------------------------------------------

std::variant<Server::Impl::FeedQuery, FieldError> Server::Impl::feedQuery(
    const Match& m, const kj::HttpHeaders& headers) {
  FeedQuery q;
  const std::string *since = nullptr, *heartbeat = nullptr, *timeout = nullptr;
  for (const auto& [name, value] : m.query) {
    if (name == "since") {
      since = &value;
    } else if (name == "limit") {
      auto v = parseUnsigned(value, Node::kMaxFeedLimit);
      if (!v) {
        return FieldError{"limit", "must be a whole number of changes per page, at most " +
                                       std::to_string(Node::kMaxFeedLimit) +
                                       " (0 = " + std::to_string(Node::kDefaultFeedLimit) + ")"};
      }
      q.limit = *v == 0 ? Node::kDefaultFeedLimit : uint32_t(*v);
    } else if (name == "include_docs") {
      if (value != "true" && value != "false") {
        return FieldError{"include_docs", "must be true or false"};
      }
      q.docs = value == "true";
    } else if (name == "feed") {
      if (value == "normal") {
        q.mode = FeedQuery::Mode::kNormal;
      } else if (value == "longpoll") {
        q.mode = FeedQuery::Mode::kLongpoll;
      } else if (value == "eventsource") {
        q.mode = FeedQuery::Mode::kEventSource;
      } else {
        return FieldError{"feed", "must be normal, longpoll or eventsource"};
      }
    } else if (name == "heartbeat") {
      heartbeat = &value;
    } else if (name == "timeout") {
      timeout = &value;
    }
  }
  auto seqOf = [](const std::string& v) -> std::optional<uint64_t> {
    if (v == "now") return storage::kSinceNow;
    return parseUnsigned(v, UINT64_MAX);
  };
  if (since) {
    auto v = seqOf(*since);
    if (!v) return FieldError{"since", "must be a seq (a whole number: a lastSeq) or now"};
    q.since = *v;
  }
  if (q.mode == FeedQuery::Mode::kEventSource) {
    // A reconnecting EventSource resumes after the last event it got.
    KJ_IF_MAYBE (value, headers.get(lastEventId_)) {
      auto v = seqOf(std::string(value->cStr(), value->size()));
      if (!v) return FieldError{"Last-Event-ID", "must be a seq (an event's id)"};
      q.since = *v;
    }
  }
  if (heartbeat) {
    if (q.mode != FeedQuery::Mode::kEventSource) {
      return FieldError{"heartbeat", "only with feed=eventsource"};
    }
    auto v = parseUnsigned(*heartbeat, kMaxHeartbeatMillis);
    if (!v || *v < kMinHeartbeatMillis) {
      return FieldError{"heartbeat", "must be milliseconds from " +
                                         std::to_string(kMinHeartbeatMillis) + " to " +
                                         std::to_string(kMaxHeartbeatMillis)};
    }
    q.heartbeat = *v;
  }
  if (timeout) {
    if (q.mode != FeedQuery::Mode::kLongpoll) {
      return FieldError{"timeout", "only with feed=longpoll"};
    }
    auto v = parseUnsigned(*timeout, kMaxFeedTimeoutMillis);
    if (!v) {
      return FieldError{"timeout",
                        "must be milliseconds from 0 to " + std::to_string(kMaxFeedTimeoutMillis)};
    }
    q.timeout = *v;
  }
  return q;
}

kj::Promise<kj::Own<Result<ChangesPage>>> Server::Impl::readFeed(uint64_t since, uint32_t limit,
                                                                 bool docs) {
  return loop_
      .read("changes", "", internal::readWork<ChangesPage>([since, limit, docs](Node& n) {
              return n.changes(since, limit, docs);
            }),
            &internal::refusedRead<ChangesPage>)
      .then([](kj::Own<ReadOutcome> outcome) {
        return kj::heap<Result<ChangesPage>>(std::get<Result<ChangesPage>>(kj::mv(*outcome)));
      });
}

kj::Promise<void> Server::Impl::feedPast(uint64_t since) {
  if (loop_.node().lastSeq() > since) return kj::READY_NOW;
  uint64_t id = nextFeedWaiter_++;
  auto paf = kj::newPromiseAndFulfiller<void>();
  feedWaiters_.emplace(id, kj::mv(paf.fulfiller));
  feedWaiting_.store(feedWaiters_.size());
  auto gone = kj::defer([this, id] {
    feedWaiters_.erase(id);
    feedWaiting_.store(feedWaiters_.size());
  });
  // A commit between the first look and feedWaiting_ going up posted no
  // wake-up: look again now that one would be posted.
  if (loop_.node().lastSeq() > since) return kj::READY_NOW;  // `gone` unregisters
  return paf.promise.attach(kj::mv(gone));
}

kj::Promise<Reply> Server::Impl::changes(Conn& conn, const Caller& caller, FeedQuery q) {
  if (auto no = mayRead(caller)) return problem(*no);
  if (q.mode == FeedQuery::Mode::kNormal) {
    return readFeed(q.since, q.limit, q.docs).then([](kj::Own<Result<ChangesPage>> page) {
      if (!page->ok()) return problem(page->error());
      return json(changesResultsJson(**page));
    });
  }
  // Longpoll: holds a watch slot while it waits.
  if (!loop_.takeWatch()) {
    return problem(ApiError{ApiCode::kOverloaded, "",
                            "this node serves at most " + std::to_string(limits_.maxWatches) +
                                " watches, follows and waiting feeds; retry later"});
  }
  auto slot = kj::defer([this] { loop_.releaseWatch(); });
  return longpoll(conn, q, timer_.now() + q.timeout * kj::MILLISECONDS).attach(kj::mv(slot));
}

// Reads a page; answers it if it has changes or the deadline passed, else
// waits for the feed to pass its cursor (or the deadline) and reads again.
// A client that closes its connection meanwhile gets the empty page at
// once (it goes nowhere), so its watch slot is not held until the timeout.
kj::Promise<Reply> Server::Impl::longpoll(Conn& conn, FeedQuery q, kj::TimePoint deadline) {
  return readFeed(q.since, q.limit, q.docs)
      .then([this, &conn, q,
             deadline](kj::Own<Result<ChangesPage>> page) mutable -> kj::Promise<Reply> {
        if (!page->ok()) return problem(page->error());
        if (!(*page)->changes.empty() || timer_.now() >= deadline) {
          return json(changesResultsJson(**page));
        }
        q.since = (*page)->lastSeq;  // "now" resolved; nothing after it yet
        auto gone = kj::heap<bool>(false);
        kj::Promise<void> clientGone = kj::NEVER_DONE;
        if (conn.stream != nullptr) {
          clientGone = conn.stream->closed().then([&gone = *gone] { gone = true; });
        }
        return feedPast(q.since)
            .exclusiveJoin(timer_.atTime(deadline))
            .exclusiveJoin(kj::mv(clientGone))
            .then([this, &conn, q, deadline, &gone = *gone,
                   page = kj::mv(page)]() mutable -> kj::Promise<Reply> {
              if (gone) return json(changesResultsJson(**page));
              return longpoll(conn, q, deadline);
            })
            .attach(kj::mv(gone));
      });
}

// One open eventsource feed: its stream and its cursor (the last seq whose
// events are queued).
struct Server::Impl::FeedStream {
  FeedQuery query;
  uint64_t cursor = 0;
  kj::Own<EventStream> stream;
};

namespace {
// The events of a page: each change is `event: change` with `id: <seq>`.
void pushChanges(EventStream& stream, const ChangesPage& page) {
  for (const auto& c : page.changes) {
    std::string event = "id: " + std::to_string(c.seq) + "\nevent: change\ndata: ";
    appendFeedChangeJson(event, c);
    event += "\n\n";
    stream.push(std::move(event));
  }
}
}  // namespace

kj::Promise<void> Server::Impl::eventSource(const Caller& caller, FeedQuery q,
                                            kj::HttpService::Response& response, Reply& refusal) {
  if (auto no = mayRead(caller)) {
    refusal = problem(*no);
    return kj::READY_NOW;
  }
  if (!loop_.takeWatch()) {
    refusal = problem(ApiError{ApiCode::kOverloaded, "",
                               "this node serves at most " + std::to_string(limits_.maxWatches) +
                                   " watches, follows and waiting feeds; retry later"});
    return kj::READY_NOW;
  }
  auto slot = kj::defer([this] { loop_.releaseWatch(); });
  auto start = std::chrono::steady_clock::now();
  // The first page before the answer's head: a bad `since` (another
  // node's cursor) is still a 400, and "now" resolves to a seq.
  return readFeed(q.since, q.limit, q.docs)
      .then([this, q, caller, &response, &refusal,
             start](kj::Own<Result<ChangesPage>> page) mutable -> kj::Promise<void> {
        if (!page->ok()) {
          refusal = problem(page->error());
          return kj::READY_NOW;
        }
        metrics_.recordHttp(Metrics::kFollow, secondsSince(start), nullptr);
        auto f = kj::heap<FeedStream>();
        f->query = q;
        f->cursor = q.since == storage::kSinceNow ? (*page)->lastSeq : q.since;
        kj::HttpHeaders headers(*table_);
        headers.set(kj::HttpHeaderId::CONTENT_TYPE, "text/event-stream");
        headers.set(cacheControl_, "no-cache");
        // Ends when the caller's token is revoked or expires, the client
        // goes away (a write fails), or a read fails.
        f->stream = kj::heap<EventStream>(timer_, response.send(200, "OK", headers),
                                          q.heartbeat * kj::MILLISECONDS,
                                          [this, caller]() -> std::optional<std::string> {
                                            auto why = stillValid(caller);
                                            if (!why) return std::nullopt;
                                            return problem(unauthenticatedError(*why)).body;
                                          });
        // Where it starts (its id: a client that reconnects before any
        // change resumes here), then the backlog's first page.
        std::string begin = "id: " + std::to_string(f->cursor) +
                            "\nevent: start\ndata: {\"lastSeq\":" + std::to_string(f->cursor) +
                            ",\"replicaId\":" + std::to_string((*page)->replicaId) + "}\n\n";
        f->stream->push(std::move(begin));
        if (q.since != storage::kSinceNow) {
          pushChanges(*f->stream, **page);
          f->cursor = (*page)->lastSeq;
        }
        auto running = f->stream->run().exclusiveJoin(pumpFeed(*f));
        return running.attach(kj::mv(f));
      })
      .attach(kj::mv(slot));
}

// Once the stream wrote every queued event, and the node's feed is past
// the cursor, reads the next page and queues it: at most one page waits.
kj::Promise<void> Server::Impl::pumpFeed(FeedStream& f) {
  return f.stream->drained()
      .then([this, &f] { return feedPast(f.cursor); })
      .then([this, &f] { return readFeed(f.cursor, f.query.limit, f.query.docs); })
      .then([this, &f](kj::Own<Result<ChangesPage>> page) -> kj::Promise<void> {
        if (!page->ok()) {
          if (page->error().code == ErrorCode::kOverloaded) {  // the read queue is full
            return timer_.afterDelay(10 * kj::MILLISECONDS).then([this, &f] {
              return pumpFeed(f);
            });
          }
          f.stream->finish(problem(page->error()).body);
          return kj::NEVER_DONE;  // run() ends the stream
        }
        pushChanges(*f.stream, **page);
        f.cursor = (*page)->lastSeq;
        return pumpFeed(f);
      });
}

Server::Server(internal::ServerLoop& loop, kj::Own<kj::ConnectionReceiver> listener)
    : impl_(kj::heap<Impl>(loop, kj::mv(listener))) {}

Server::~Server() noexcept(false) {}

void Server::start() { impl_->start(); }

}  // namespace chorus::api::http
