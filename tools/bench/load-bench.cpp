// chorus-bench load: a load generator against running nodes over the public
// RPC API (in the spirit of redis-benchmark, cassandra-stress and YCSB),
// optionally side by side with their HTTP API (--http) and an in-process
// chorus::Node on the same data.
//
// RPC: `clients` threads, each with its own connection and KJ event loop,
// keep `depth` operations in flight (a page is two pipelined calls counted
// as one operation). Embedded (--baseline embedded): clients x depth worker
// threads, one operation each at a time; writes go through the async
// Node::write and are waited for, reads are synchronous calls. Both sides
// draw the same operation streams from --seed.
#include <kj/async.h>
#include <kj/exception.h>
#include <kj/timer.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <latch>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <kj/async-io.h>
#include <kj/compat/http.h>

#include "api/client.h"
#include "api/node.h"
#include "api/validate.h"
#include "tools/bench/commands.h"
#include "tools/bench/load-chorusd.h"
#include "tools/bench/load-dataset.h"
#include "tools/bench/load-report.h"

namespace chorus::bench {

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// Exit codes, as --help says.
constexpr int kExitOk = 0;
constexpr int kExitUsage = 1;
constexpr int kExitOpErrors = 2;
constexpr int kExitSetup = 3;

struct LoadOptions {
  std::vector<std::string> connect;
  std::string tokenFile;
  int clients = 4;
  int depth = 16;
  std::string duration = "10s";
  int64_t ops = 0;
  uint64_t seed = 1;
  std::string workload = "page";
  std::string products = "zipf";
  bool compareSizes = false;
  std::string pageCall = "page";  // "page" (one call, api 5) or "split"
  uint32_t smallSize = 100;
  uint64_t preload = 0;
  int64_t preloadSize = -1;  // -1: = preload
  int preloadDepth = 128;
  size_t bodyBytes = 400;
  std::string baseline;                  // "" or "embedded"
  bool http = false;                     // also over the nodes' HTTP API
  std::vector<std::string> httpConnect;  // their HTTP addresses (with --connect)
  std::string embeddedDir;               // "" = a temporary one
  bool unsafeNoSync = false;
  std::string chorusd;
  bool json = false;
  bool progress = true;
};

// ---- the operations ---------------------------------------------------------

enum class OpKind { kPage, kGet, kVote, kWrite };

struct PlannedOp {
  OpKind kind = OpKind::kPage;
  const char* name = "page";
  std::string product, author, voter;
  WriteRequest write;
};

// Draws one client's operations. Deterministic for (seed, stream).
class OpPlanner {
 public:
  OpPlanner(const LoadOptions& o, const Dataset& data, const std::vector<uint32_t>& small,
            uint64_t stream, std::string newAuthorPrefix)
      : o_(o),
        data_(data),
        small_(small),
        rng_(o.seed * 0x100000001B3ull + stream),
        prefix_(std::move(newAuthorPrefix)) {}

  PlannedOp next() {
    OpKind kind = OpKind::kPage;
    if (o_.workload == "get") kind = OpKind::kGet;
    if (o_.workload == "vote") kind = OpKind::kVote;
    if (o_.workload == "write") kind = OpKind::kWrite;
    if (o_.workload == "mixed") {
      uint64_t r = rng_.below(100);
      kind = r < 95 ? OpKind::kPage : r < 99 ? OpKind::kVote : OpKind::kWrite;
    }
    PlannedOp op;
    op.kind = kind;
    switch (kind) {
      case OpKind::kPage: {
        DatasetKey k = pick();
        op.name = "page";
        op.product = data_.productName(k.product);
        break;
      }
      case OpKind::kGet: {
        DatasetKey k = pick();
        op.name = "get";
        op.product = data_.productName(k.product);
        op.author = Dataset::authorName(k.slot);
        break;
      }
      case OpKind::kVote: {
        DatasetKey k = pick();
        op.name = "vote";
        op.write.op = WriteOp::kVote;
        op.write.product = data_.productName(k.product);
        op.write.author = Dataset::authorName(k.slot);
        // 1,000 voters: a review never passes the size limit on votes.
        op.write.arg = "v" + std::to_string(rng_.below(1000));
        break;
      }
      case OpKind::kWrite: {
        op.name = "write";
        uint64_t version = ++seq_;
        if (data_.reviews() > 0 && rng_.below(2) == 0) {
          op.write = data_.put(pick(), version, o_.bodyBytes);  // an edit
        } else {
          std::string product = data_.reviews() > 0 ? data_.productName(pick().product)
                                                    : "s" + std::to_string(o_.seed) + "-w" +
                                                          std::to_string(rng_.below(64));
          op.write =
              Dataset::put(product, prefix_ + std::to_string(version), version, o_.bodyBytes);
        }
        break;
      }
    }
    return op;
  }

 private:
  // A review of the dataset, by --products.
  DatasetKey pick() {
    if (o_.products == "uniform") {
      uint32_t p = uint32_t(rng_.below(data_.products()));
      return {p, uint32_t(rng_.below(data_.productSize(p)))};
    }
    if (o_.products == "hot" || o_.products == "small") {
      uint32_t p = o_.products == "hot" ? 0 : small_[rng_.below(small_.size())];
      return {p, uint32_t(rng_.below(data_.productSize(p)))};
    }
    return data_.keyAt(rng_.below(data_.reviews()));  // zipf: products weighted by size
  }

  const LoadOptions& o_;
  const Dataset& data_;
  const std::vector<uint32_t>& small_;
  Rng rng_;
  std::string prefix_;
  uint64_t seq_ = 0;
};

// How much a run may still do, and what it did so far (for the progress
// line). Shared by every thread of a run.
struct Budget {
  bool byOps = false;
  std::atomic<int64_t> left{0};
  Clock::time_point deadline;
  std::atomic<uint64_t> done{0}, failed{0};
  bool take() { return byOps ? left.fetch_sub(1) > 0 : Clock::now() < deadline; }
};

const char* wireCodeName(api::wire::ErrorCode code) {
  switch (code) {
    case api::wire::ErrorCode::INVALID_ARGUMENT:
      return errorCodeName(ErrorCode::kInvalidArgument);
    case api::wire::ErrorCode::NOT_FOUND:
      return errorCodeName(ErrorCode::kNotFound);
    case api::wire::ErrorCode::FORBIDDEN:
      return errorCodeName(ErrorCode::kForbidden);
    case api::wire::ErrorCode::OVERLOADED:
      return errorCodeName(ErrorCode::kOverloaded);
    case api::wire::ErrorCode::UNAVAILABLE:
      return errorCodeName(ErrorCode::kUnavailable);
    case api::wire::ErrorCode::INTERNAL:
      return errorCodeName(ErrorCode::kInternal);
    case api::wire::ErrorCode::UNAUTHENTICATED:
      return "unauthenticated";
  }
  return "unknown";
}

std::string exceptionCode(const kj::Exception& e) {
  switch (e.getType()) {
    case kj::Exception::Type::DISCONNECTED:
      return "rpc-disconnected";
    case kj::Exception::Type::OVERLOADED:
      return "rpc-overloaded";
    default:
      return "rpc-failed";
  }
}

void record(Recorder& rec, Budget& budget, const char* name, Clock::time_point t0,
            const std::string& code, bool whole = true) {
  OpStats& s = rec.ops[name];
  s.latencyMs.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  if (code.empty()) {
    ++s.ok;
  } else {
    ++s.errors[code];
  }
  if (whole) {
    budget.done.fetch_add(1, std::memory_order_relaxed);
    if (!code.empty()) budget.failed.fetch_add(1, std::memory_order_relaxed);
  }
}

// ---- RPC ---------------------------------------------------------------------

class RpcLoadClient {
 public:
  RpcLoadClient(api::wire::ReviewStore::Client reviews, OpPlanner planner, Budget& budget,
                bool splitPages)
      : reviews_(std::move(reviews)),
        planner_(std::move(planner)),
        budget_(budget),
        splitPages_(splitPages) {}

  kj::Promise<void> loop() {
    if (dead_ || !budget_.take()) return kj::READY_NOW;
    return issue(planner_.next()).then([this] { return loop(); });
  }
  Recorder& recorder() { return rec_; }

 private:
  template <typename Response>
  static std::string codeOf(Response& r) {
    return r.hasError() ? wireCodeName(r.getError().getCode()) : "";
  }

  // Records `name` with the answer's code; a lost connection stops this client.
  std::string done(const char* name, Clock::time_point t0, std::string code, bool whole = true) {
    if (code == "rpc-disconnected") dead_ = true;
    record(rec_, budget_, name, t0, code, whole);
    return code;
  }

  capnp::RemotePromise<api::wire::ReviewStore::PutResults> put(const WriteRequest& w) {
    auto q = reviews_.putRequest();
    q.setProduct(w.product);
    q.setAuthor(w.author);
    q.setRating(uint8_t(w.rating));
    q.setTitle(w.title);
    q.setBody(w.body);
    return q.send();
  }

  kj::Promise<void> issue(PlannedOp op) {
    auto t0 = Clock::now();
    auto fail = [this, t0, name = op.name](kj::Exception&& e) { done(name, t0, exceptionCode(e)); };
    switch (op.kind) {
      case OpKind::kPage: {
        if (!splitPages_) {  // one ReviewStore.page call: summary and list from one snapshot
          auto q = reviews_.pageRequest();
          q.setProduct(op.product);
          q.setOrder(api::wire::Order::NEWEST);
          q.setLimit(20);
          return q.send().then(
              [this, t0, name = op.name](auto r) {
                std::string code = codeOf(r);
                if (code.empty() && r.getPage().getReviews().size() == 0) code = "empty";
                done(name, t0, code);
              },
              fail);
        }
        auto s = reviews_.summaryRequest();
        s.setProduct(op.product);
        auto l = reviews_.listRequest();
        l.setProduct(op.product);
        l.setOrder(api::wire::Order::NEWEST);
        l.setLimit(20);
        kj::Vector<kj::Promise<std::string>> parts;
        parts.add(s.send().then(
            [this, t0](auto r) {
              std::string code = codeOf(r);
              if (code.empty() && r.getSummary().getCount() == 0) code = "empty";
              return done("page.summary", t0, code, false);
            },
            [this, t0](kj::Exception&& e) {
              return done("page.summary", t0, exceptionCode(e), false);
            }));
        parts.add(l.send().then(
            [this, t0](auto r) {
              std::string code = codeOf(r);
              if (code.empty() && r.getPage().getReviews().size() == 0) code = "empty";
              return done("page.list", t0, code, false);
            },
            [this, t0](kj::Exception&& e) {
              return done("page.list", t0, exceptionCode(e), false);
            }));
        return kj::joinPromises(parts.releaseAsArray())
            .then([this, t0, name = op.name](kj::Array<std::string> codes) {
              std::string code;
              for (auto& c : codes) {
                if (code.empty()) code = c;
              }
              done(name, t0, code);
            });
      }
      case OpKind::kGet: {
        auto q = reviews_.getRequest();
        q.setProduct(op.product);
        q.setAuthor(op.author);
        return q.send().then([this, t0](auto r) { done("get", t0, codeOf(r)); }, fail);
      }
      case OpKind::kVote: {
        auto q = reviews_.voteRequest();
        q.setProduct(op.write.product);
        q.setAuthor(op.write.author);
        q.setVoter(op.write.arg);
        return q.send().then([this, t0](auto r) { done("vote", t0, codeOf(r)); }, fail);
      }
      case OpKind::kWrite:
        return put(op.write).then([this, t0](auto r) { done("write", t0, codeOf(r)); }, fail);
    }
    KJ_UNREACHABLE;
  }

  api::wire::ReviewStore::Client reviews_;
  OpPlanner planner_;
  Budget& budget_;
  bool splitPages_;
  Recorder rec_;
  bool dead_ = false;
};

// ---- HTTP --------------------------------------------------------------------

// The load bench's names for the HTTP API's problem codes (those RPC answers
// get, so the two runs' errors compare).
std::string httpCodeName(const std::string& body, unsigned status) {
  static const std::map<std::string, ErrorCode> codes = {
      {"invalidArgument", ErrorCode::kInvalidArgument},
      {"notFound", ErrorCode::kNotFound},
      {"forbidden", ErrorCode::kForbidden},
      {"overloaded", ErrorCode::kOverloaded},
      {"unavailable", ErrorCode::kUnavailable},
      {"internal", ErrorCode::kInternal}};
  size_t at = body.find("\"code\":\"");
  if (at != std::string::npos) {
    std::string code = body.substr(at + 8, body.find('"', at + 8) - (at + 8));
    auto it = codes.find(code);
    if (it != codes.end()) return errorCodeName(it->second);
    if (code == "unauthenticated") return code;
  }
  return "http-" + std::to_string(status);
}

// Percent-encodes a path segment (ids are mostly unreserved already).
std::string pathSegment(const std::string& s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += char(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// One client thread of the HTTP run: `depth` keep-alive connections (kj's
// HTTP/1.1 client), one request in flight on each, drawing from one
// operation stream. Runs on its thread's KJ event loop.
class HttpLoadClient {
 public:
  HttpLoadClient(std::vector<kj::Own<kj::HttpClient>> connections, const kj::HttpHeaderTable& table,
                 std::string token, OpPlanner planner, Budget& budget)
      : connections_(std::move(connections)),
        table_(table),
        authorization_(token.empty() ? "" : "Bearer " + token),
        planner_(std::move(planner)),
        budget_(budget) {}

  // The chain of connection `i`: one operation after another until the
  // budget is spent or the connection is lost.
  kj::Promise<void> loop(size_t i) {
    if (dead_[i] || !budget_.take()) return kj::READY_NOW;
    return issue(i, planner_.next()).then([this, i] { return loop(i); });
  }
  Recorder& recorder() { return rec_; }
  size_t connections() const { return connections_.size(); }

 private:
  kj::Promise<void> issue(size_t i, PlannedOp op) {
    auto t0 = Clock::now();
    std::string url, body;
    kj::HttpMethod method = kj::HttpMethod::GET;
    const WriteRequest& w = op.write;
    std::string review;
    switch (op.kind) {
      case OpKind::kPage:
        url = "/v1/products/" + pathSegment(op.product) + "/page?limit=20";
        break;
      case OpKind::kGet:
        url = "/v1/products/" + pathSegment(op.product) + "/reviews/" + pathSegment(op.author);
        break;
      case OpKind::kVote:
        method = kj::HttpMethod::PUT;
        url = "/v1/products/" + pathSegment(w.product) + "/reviews/" + pathSegment(w.author) +
              "/votes/" + pathSegment(w.arg);
        break;
      case OpKind::kWrite:
        method = kj::HttpMethod::PUT;
        url = "/v1/products/" + pathSegment(w.product) + "/reviews/" + pathSegment(w.author);
        body = "{\"rating\":" + std::to_string(w.rating) + ",\"title\":\"" + jsonEscape(w.title) +
               "\",\"body\":\"" + jsonEscape(w.body) + "\"}";
        break;
    }
    kj::HttpHeaders headers(table_);
    if (!authorization_.empty()) headers.add("Authorization", authorization_);
    if (!body.empty()) headers.set(kj::HttpHeaderId::CONTENT_TYPE, "application/json");
    auto request = connections_[i]->request(method, url, headers, uint64_t(body.size()));
    kj::Promise<void> sent = kj::READY_NOW;
    if (!body.empty()) {
      auto text = kj::heap<std::string>(std::move(body));
      sent = request.body->write(text->data(), text->size()).attach(kj::mv(text));
    }
    return sent.attach(kj::mv(request.body))
        .then([response = kj::mv(request.response)]() mutable { return kj::mv(response); })
        .then([](kj::HttpClient::Response r) {
          unsigned status = r.statusCode;
          return r.body->readAllText().attach(kj::mv(r.body)).then([status](kj::String text) {
            return std::make_pair(status, std::string(text.cStr(), text.size()));
          });
        })
        .then(
            [this, t0, name = op.name, kind = op.kind](std::pair<unsigned, std::string> answer) {
              std::string code;
              if (answer.first != 200) {
                code = httpCodeName(answer.second, answer.first);
              } else if (kind == OpKind::kPage &&
                         answer.second.find("\"reviews\":[]") != std::string::npos) {
                code = "empty";
              }
              record(rec_, budget_, name, t0, code);
            },
            [this, i, t0, name = op.name](kj::Exception&& e) {
              dead_[i] = true;
              record(rec_, budget_, name, t0,
                     e.getType() == kj::Exception::Type::DISCONNECTED ? "http-disconnected"
                                                                      : "http-failed");
            });
  }

  std::vector<kj::Own<kj::HttpClient>> connections_;
  const kj::HttpHeaderTable& table_;
  std::string authorization_;
  OpPlanner planner_;
  Budget& budget_;
  Recorder rec_;
  std::vector<bool> dead_ = std::vector<bool>(connections_.size(), false);
};

// ---- the run -------------------------------------------------------------------

class LoadBench {
 public:
  explicit LoadBench(LoadOptions o)
      : o_(std::move(o)),
        data_(o_.seed, o_.preloadSize < 0 ? o_.preload : uint64_t(o_.preloadSize)),
        small_(data_.productsNearSize(o_.smallSize)) {}

  int run();

 private:
  int fail(int code, const std::string& what) {
    std::fprintf(stderr, "chorus-bench load: %s\n", what.c_str());
    return code;
  }
  // A progress line on stderr: on a terminal, once a phase ran 2 s.
  bool showProgress() const { return o_.progress && !o_.json && isatty(2); }
  std::string address(size_t client) const { return nodes_[client % nodes_.size()]; }

  Status preloadRpc();
  Status preloadEmbedded(Node& node);
  Result<RunResult> runRpc();
  Result<RunResult> runHttp();
  Result<RunResult> runEmbedded(Node& node);
  // Runs `threads` workers, each `work(i)`; shows progress on stderr.
  void runThreads(const char* label, int threads, Budget& budget,
                  const std::function<void(int)>& work);
  void startBudget(Budget& b);

  void print(const std::vector<RunResult>& runs);
  // `run` once; with --compare-sizes twice, on the largest product then on
  // the small ones, its ops named page-hot[.part] and page-small[.part].
  Result<RunResult> phases(const std::function<Result<RunResult>()>& run);

  LoadOptions o_;
  Dataset data_;
  std::vector<uint32_t> small_;
  std::vector<std::string> nodes_;
  std::vector<std::string> httpNodes_;  // with --http: the nodes' HTTP API addresses
  std::string token_;
  std::string runTag_;
  int64_t durationMs_ = 0;
  bool startedNode_ = false;
  double preloadSeconds_ = 0, embeddedPreloadSeconds_ = 0;
};

void LoadBench::startBudget(Budget& b) {
  b.byOps = o_.ops > 0;
  b.left = o_.ops;
  b.deadline = Clock::now() + std::chrono::milliseconds(durationMs_);
}

void LoadBench::runThreads(const char* label, int threads, Budget& budget,
                           const std::function<void(int)>& work) {
  std::vector<std::thread> pool;
  std::atomic<int> running{threads};
  for (int i = 0; i < threads; ++i) {
    pool.emplace_back([&, i] {
      work(i);
      --running;
    });
  }
  auto start = Clock::now();
  bool progress = false;
  uint64_t lastDone = 0;
  auto last = start;
  while (running > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto now = Clock::now();
    if (!showProgress() || now - start < std::chrono::seconds(2) ||
        now - last < std::chrono::seconds(1)) {
      continue;
    }
    uint64_t done = budget.done.load();
    double rate = double(done - lastDone) / std::chrono::duration<double>(now - last).count();
    std::fprintf(stderr, "\r[%s] %6.1f s  %10llu done  %9.0f/s  %llu errors   ", label,
                 std::chrono::duration<double>(now - start).count(), (unsigned long long)done, rate,
                 (unsigned long long)budget.failed.load());
    std::fflush(stderr);
    progress = true;
    lastDone = done;
    last = now;
  }
  for (auto& t : pool) t.join();
  if (progress) std::fprintf(stderr, "\n");
}

// Writes the dataset through RPC: `clients` connections, `preloadDepth`
// puts in flight on each; an `overloaded` answer is retried after 5 ms.
Status LoadBench::preloadRpc() {
  Budget budget;
  std::atomic<uint64_t> next{0};
  std::vector<Status> results(size_t(o_.clients), okStatus());
  auto start = Clock::now();
  runThreads("preload", o_.clients, budget, [&](int i) {
    auto c = api::Client::connect(address(size_t(i)),
                                  {.timeout = std::chrono::seconds(30), .token = token_});
    if (!c.ok()) {
      results[size_t(i)] = c.error();
      return;
    }
    auto reviews = (*c)->reviews();
    kj::Timer& timer = (*c)->timer();
    std::string firstError;
    uint64_t errors = 0;
    std::function<kj::Promise<void>(uint64_t, int)> write = [&](uint64_t item,
                                                                int tries) -> kj::Promise<void> {
      WriteRequest w = data_.put(data_.preloadKey(item), 1, o_.bodyBytes);
      auto q = reviews.putRequest();
      q.setProduct(w.product);
      q.setAuthor(w.author);
      q.setRating(uint8_t(w.rating));
      q.setTitle(w.title);
      q.setBody(w.body);
      return q.send().then([&, item, tries](auto r) -> kj::Promise<void> {
        if (!r.hasError()) {
          budget.done.fetch_add(1, std::memory_order_relaxed);
          return kj::READY_NOW;
        }
        if (r.getError().getCode() == api::wire::ErrorCode::OVERLOADED && tries < 1000) {
          return timer.afterDelay(5 * kj::MILLISECONDS).then([&, item, tries] {
            return write(item, tries + 1);
          });
        }
        if (errors++ == 0) firstError = r.getError().getMessage().cStr();
        budget.failed.fetch_add(1);
        return kj::READY_NOW;
      });
    };
    std::function<kj::Promise<void>()> chain = [&]() -> kj::Promise<void> {
      uint64_t item = next.fetch_add(1);
      if (item >= data_.reviews() || errors > 0) return kj::READY_NOW;
      return write(item, 0).then([&] { return chain(); });
    };
    kj::Vector<kj::Promise<void>> chains;
    for (int d = 0; d < o_.preloadDepth; ++d) chains.add(chain());
    try {
      kj::joinPromises(chains.releaseAsArray()).wait((*c)->waitScope());
    } catch (kj::Exception& e) {
      results[size_t(i)] =
          makeError(ErrorCode::kUnavailable, std::string("preload: ") + e.getDescription().cStr());
      return;
    }
    if (errors > 0) {
      results[size_t(i)] =
          makeError(ErrorCode::kInternal,
                    std::to_string(errors) + " preload writes failed, first: " + firstError);
    }
  });
  preloadSeconds_ = std::chrono::duration<double>(Clock::now() - start).count();
  for (auto& r : results) {
    if (!r.ok()) return r;
  }
  return okStatus();
}

// Writes the dataset into the embedded node: clients x preloadDepth async
// writes outstanding from one thread.
Status LoadBench::preloadEmbedded(Node& node) {
  std::mutex m;
  std::condition_variable cv;
  uint64_t outstanding = 0, failed = 0;
  std::string firstError;
  const uint64_t window = uint64_t(o_.clients) * uint64_t(o_.preloadDepth);
  Budget budget;
  auto start = Clock::now();
  runThreads("preload embedded", 1, budget, [&](int) {
    for (uint64_t i = 0; i < data_.reviews(); ++i) {
      {
        std::unique_lock lock(m);
        cv.wait(lock, [&] { return outstanding < window; });
        ++outstanding;
      }
      node.write(data_.put(data_.preloadKey(i), 1, o_.bodyBytes), [&](Result<ReviewView> r) {
        std::lock_guard lock(m);
        --outstanding;
        budget.done.fetch_add(1, std::memory_order_relaxed);
        if (!r.ok() && failed++ == 0) firstError = r.error().toString();
        cv.notify_all();
      });
    }
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return outstanding == 0; });
  });
  embeddedPreloadSeconds_ = std::chrono::duration<double>(Clock::now() - start).count();
  if (failed > 0) {
    return makeError(
        ErrorCode::kInternal,
        std::to_string(failed) + " embedded preload writes failed, first: " + firstError);
  }
  return okStatus();
}

Result<RunResult> LoadBench::runRpc() {
  Budget budget;
  std::vector<Recorder> recorders(size_t(o_.clients));
  std::vector<Status> results(size_t(o_.clients), okStatus());
  std::latch connected(o_.clients);
  std::latch go(1);
  std::atomic<bool> abort{false};
  Clock::time_point start;
  std::vector<Clock::time_point> ends(size_t(o_.clients));
  // Bounded: a run that does not finish this long after its end is an error.
  const int64_t limitMs = (o_.ops > 0 ? 0 : durationMs_) + 600'000;
  std::thread starter([&] {
    connected.wait();
    startBudget(budget);
    start = Clock::now();
    go.count_down();
  });
  runThreads("rpc", o_.clients, budget, [&](int i) {
    auto c = api::Client::connect(address(size_t(i)),
                                  {.timeout = std::chrono::seconds(30), .token = token_});
    if (!c.ok()) {
      results[size_t(i)] = c.error();
      abort = true;
    }
    connected.count_down();
    go.wait();
    if (!c.ok() || abort) return;
    RpcLoadClient client(
        (*c)->reviews(),
        OpPlanner(o_, data_, small_, uint64_t(i), runTag_ + "c" + std::to_string(i) + "-"), budget,
        o_.pageCall == "split");
    kj::Vector<kj::Promise<void>> chains;
    for (int d = 0; d < o_.depth; ++d) chains.add(client.loop());
    bool timedOut = false;
    try {
      kj::joinPromises(chains.releaseAsArray())
          .exclusiveJoin(
              (*c)->timer().afterDelay(limitMs * kj::MILLISECONDS).then([&] { timedOut = true; }))
          .wait((*c)->waitScope());
    } catch (kj::Exception& e) {
      results[size_t(i)] = makeError(ErrorCode::kUnavailable, e.getDescription().cStr());
    }
    if (timedOut) results[size_t(i)] = makeError(ErrorCode::kUnavailable, "the run timed out");
    ends[size_t(i)] = Clock::now();
    recorders[size_t(i)] = std::move(client.recorder());
  });
  starter.join();
  for (auto& r : results) {
    if (!r.ok()) return r.error();
  }
  Recorder all;
  for (auto& r : recorders) all.merge(r);
  double seconds =
      std::chrono::duration<double>(*std::max_element(ends.begin(), ends.end()) - start).count();
  return summarize("rpc", all, seconds);
}

// The same workload over the nodes' HTTP API: `clients` threads, each with
// its own KJ event loop and `depth` keep-alive connections (HTTP/1.1 answers
// one request at a time per connection), so as many operations are in
// flight as in the RPC run. Streams of their own (2000 + i).
Result<RunResult> LoadBench::runHttp() {
  Budget budget;
  std::vector<Recorder> recorders(size_t(o_.clients));
  std::vector<Status> results(size_t(o_.clients), okStatus());
  std::latch connected(o_.clients);
  std::latch go(1);
  std::atomic<bool> abort{false};
  Clock::time_point start;
  std::vector<Clock::time_point> ends(size_t(o_.clients));
  const int64_t limitMs = (o_.ops > 0 ? 0 : durationMs_) + 600'000;
  std::thread starter([&] {
    connected.wait();
    startBudget(budget);
    start = Clock::now();
    go.count_down();
  });
  runThreads("http", o_.clients, budget, [&](int i) {
    std::optional<kj::AsyncIoContext> io;
    kj::HttpHeaderTable table;
    std::vector<kj::Own<kj::AsyncIoStream>> streams;
    std::vector<kj::Own<kj::HttpClient>> clients;
    try {
      io.emplace(kj::setupAsyncIo());
      const std::string& address = httpNodes_[size_t(i) % httpNodes_.size()];
      auto addr = io->provider->getNetwork().parseAddress(address).wait(io->waitScope);
      for (int d = 0; d < o_.depth; ++d) {
        streams.push_back(addr->connect().wait(io->waitScope));
        clients.push_back(kj::newHttpClient(table, *streams.back()));
      }
    } catch (kj::Exception& e) {
      results[size_t(i)] = makeError(ErrorCode::kUnavailable,
                                     std::string("HTTP connect: ") + e.getDescription().cStr());
      abort = true;
    }
    connected.count_down();
    go.wait();
    if (!results[size_t(i)].ok() || abort) return;
    HttpLoadClient client(
        std::move(clients), table, token_,
        OpPlanner(o_, data_, small_, uint64_t(2000 + i), runTag_ + "h" + std::to_string(i) + "-"),
        budget);
    kj::Vector<kj::Promise<void>> chains;
    for (size_t d = 0; d < client.connections(); ++d) chains.add(client.loop(d));
    bool timedOut = false;
    try {
      kj::joinPromises(chains.releaseAsArray())
          .exclusiveJoin(io->provider->getTimer().afterDelay(limitMs * kj::MILLISECONDS).then([&] {
            timedOut = true;
          }))
          .wait(io->waitScope);
    } catch (kj::Exception& e) {
      results[size_t(i)] = makeError(ErrorCode::kUnavailable, e.getDescription().cStr());
    }
    if (timedOut) results[size_t(i)] = makeError(ErrorCode::kUnavailable, "the run timed out");
    ends[size_t(i)] = Clock::now();
    recorders[size_t(i)] = std::move(client.recorder());
  });
  starter.join();
  for (auto& r : results) {
    if (!r.ok()) return r.error();
  }
  Recorder all;
  for (auto& r : recorders) all.merge(r);
  double seconds =
      std::chrono::duration<double>(*std::max_element(ends.begin(), ends.end()) - start).count();
  return summarize("http", all, seconds);
}

Result<RunResult> LoadBench::runEmbedded(Node& node) {
  Budget budget;
  const int threads = o_.clients * o_.depth;
  std::vector<Recorder> recorders(static_cast<size_t>(threads));
  std::latch ready(threads);
  std::latch go(1);
  Clock::time_point start;
  std::vector<Clock::time_point> ends(static_cast<size_t>(threads));
  std::thread starter([&] {
    ready.wait();
    startBudget(budget);
    start = Clock::now();
    go.count_down();
  });
  runThreads("embedded", threads, budget, [&](int i) {
    // Streams of their own (1000 + i), from the same --seed and mix.
    OpPlanner planner(o_, data_, small_, uint64_t(1000 + i),
                      runTag_ + "e" + std::to_string(i) + "-");
    Recorder& rec = recorders[size_t(i)];
    std::mutex m;
    std::condition_variable cv;
    ready.count_down();
    go.wait();
    auto write = [&](WriteRequest w) -> std::string {
      bool finished = false;
      std::string code;
      node.write(std::move(w), [&](Result<ReviewView> r) {
        std::lock_guard lock(m);
        if (!r.ok()) code = errorCodeName(r.error().code);
        finished = true;
        cv.notify_all();
      });
      std::unique_lock lock(m);
      cv.wait(lock, [&] { return finished; });
      return code;
    };
    while (budget.take()) {
      PlannedOp op = planner.next();
      auto t0 = Clock::now();
      std::string code;
      switch (op.kind) {
        case OpKind::kPage: {
          if (o_.pageCall == "page") {
            auto p = node.page(op.product, storage::Order::kNewest, "", 20);
            code = !p.ok() ? errorCodeName(p.error().code) : p->page.reviews.empty() ? "empty" : "";
            break;
          }
          auto s = node.summary(op.product);
          std::string sc = !s.ok() ? errorCodeName(s.error().code) : s->count == 0 ? "empty" : "";
          record(rec, budget, "page.summary", t0, sc, false);
          auto t1 = Clock::now();
          auto l = node.list(op.product, storage::Order::kNewest, "", 20);
          std::string lc = !l.ok()              ? errorCodeName(l.error().code)
                           : l->reviews.empty() ? "empty"
                                                : "";
          record(rec, budget, "page.list", t1, lc, false);
          code = !sc.empty() ? sc : lc;
          break;
        }
        case OpKind::kGet: {
          auto r = node.get(op.product, op.author);
          if (!r.ok()) code = errorCodeName(r.error().code);
          break;
        }
        case OpKind::kVote:
        case OpKind::kWrite:
          code = write(std::move(op.write));
          break;
      }
      record(rec, budget, op.name, t0, code);
    }
    ends[size_t(i)] = Clock::now();
  });
  starter.join();
  Recorder all;
  for (auto& r : recorders) all.merge(r);
  double seconds =
      std::chrono::duration<double>(*std::max_element(ends.begin(), ends.end()) - start).count();
  return summarize("embedded", all, seconds);
}

Result<RunResult> LoadBench::phases(const std::function<Result<RunResult>()>& run) {
  if (!o_.compareSizes) return run();
  RunResult all;
  for (const char* which : {"hot", "small"}) {
    o_.products = which;
    auto r = run();
    if (!r.ok()) return r;
    all.target = r->target;
    all.seconds += r->seconds;
    for (auto& [name, op] : r->ops) {
      std::string renamed = "page-";
      renamed += which;
      renamed.append(name, 4);  // after "page": "" or ".summary", ".list"
      all.ops[renamed] = op;
    }
  }
  o_.products = "hot+small";
  return all;
}

void LoadBench::print(const std::vector<RunResult>& runs) {
  auto find = [&](const char* target) -> const RunResult* {
    for (const auto& r : runs) {
      if (r.target == target) return &r;
    }
    return nullptr;
  };
  const RunResult* rpc = find("rpc");
  const RunResult* http = find("http");
  const RunResult* embedded = find("embedded");
  // `of`'s ops/s over rpc's, per operation rpc has.
  auto ratios = [&](const RunResult& of) {
    std::vector<std::pair<std::string, double>> out;
    for (const auto& name : opOrder(rpc->ops)) {
      auto e = of.ops.find(name);
      if (e == of.ops.end() || e->second.opsPerSecond == 0) continue;
      out.emplace_back(
          name, of.target == "embedded"
                    ? rpc->ops.at(name).opsPerSecond / e->second.opsPerSecond
                    : e->second.opsPerSecond / std::max(rpc->ops.at(name).opsPerSecond, 1e-9));
    }
    return out;
  };
  auto hotSmall = [&](const RunResult& r) -> double {
    auto h = r.ops.find("page-hot"), s = r.ops.find("page-small");
    if (h == r.ops.end() || s == r.ops.end() || s->second.p50 == 0) return 0;
    return h->second.p50 / s->second.p50;
  };
  uint32_t smallSize = small_.empty() ? 0 : data_.productSize(small_[0]);
  uint32_t hotSize = data_.products() == 0 ? 0 : data_.productSize(0);
  if (o_.json) {
    std::string nodes;
    for (auto& n : nodes_)
      nodes += std::string(nodes.empty() ? "" : ",") + "\"" + jsonEscape(n) + "\"";
    std::printf(
        "{\"bench\":\"load\",\"workload\":\"%s\",\"page_call\":\"%s\",\"products\":\"%s\","
        "\"clients\":%d,\"depth\":%d,"
        "\"duration_ms\":%lld,\"ops\":%lld,\"seed\":%llu,\"preload\":%llu,\"preload_size\":%llu,"
        "\"dataset_products\":%zu,\"largest_product_reviews\":%u,\"body_bytes\":%zu,"
        "\"durable\":%s,\"started_node\":%s,\"nodes\":[%s]",
        o_.workload.c_str(), o_.pageCall.c_str(), o_.products.c_str(), o_.clients, o_.depth,
        (long long)(o_.ops > 0 ? 0 : durationMs_), (long long)o_.ops, (unsigned long long)o_.seed,
        (unsigned long long)o_.preload, (unsigned long long)data_.reviews(), data_.products(),
        hotSize, o_.bodyBytes, o_.unsafeNoSync ? "false" : "true", startedNode_ ? "true" : "false",
        nodes.c_str());
    if (o_.preload > 0) {
      std::printf(",\"preload_s\":%.3f,\"preload_per_s\":%.1f", preloadSeconds_,
                  double(o_.preload) / std::max(preloadSeconds_, 1e-9));
      if (embedded) {
        std::printf(",\"embedded_preload_s\":%.3f,\"embedded_preload_per_s\":%.1f",
                    embeddedPreloadSeconds_,
                    double(o_.preload) / std::max(embeddedPreloadSeconds_, 1e-9));
      }
    }
    for (const RunResult* r : {rpc, http, embedded}) {
      if (!r) continue;
      std::printf(",\"%s\":{\"seconds\":%.3f,\"ops\":{", r->target.c_str(), r->seconds);
      bool first = true;
      for (const auto& name : opOrder(r->ops)) {
        const OpSummary& s = r->ops.at(name);
        std::string errors;
        for (const auto& [code, n] : s.errorsByCode) {
          errors += std::string(errors.empty() ? "" : ",") + "\"" + jsonEscape(code) +
                    "\":" + std::to_string(n);
        }
        std::printf(
            "%s\"%s\":{\"count\":%llu,\"ops_per_s\":%.1f,\"p50_ms\":%.4f,\"p99_ms\":%.4f,"
            "\"p999_ms\":%.4f,\"errors\":{%s}}",
            first ? "" : ",", name.c_str(), (unsigned long long)s.ok, s.opsPerSecond, s.p50, s.p99,
            s.p999, errors.c_str());
        first = false;
      }
      std::printf("}");
      if (o_.compareSizes) std::printf(",\"hot_small_p50_ratio\":%.3f", hotSmall(*r));
      std::printf("}");
    }
    if (embedded) {
      std::printf(",\"ratio\":{");
      bool first = true;
      for (const auto& name : opOrder(rpc->ops)) {
        auto e = embedded->ops.find(name);
        if (e == embedded->ops.end() || e->second.opsPerSecond == 0) continue;
        std::printf("%s\"%s\":%.3f", first ? "" : ",", name.c_str(),
                    rpc->ops.at(name).opsPerSecond / e->second.opsPerSecond);
        first = false;
      }
      std::printf("}");
    }
    if (http) {
      std::printf(",\"http_ratio\":{");
      bool first = true;
      for (const auto& [name, ratio] : ratios(*http)) {
        std::printf("%s\"%s\":%.3f", first ? "" : ",", name.c_str(), ratio);
        first = false;
      }
      std::printf("}");
    }
    if (o_.compareSizes) {
      std::printf(
          ",\"compare_sizes\":{\"hot_product\":\"%s\",\"hot_reviews\":%u,"
          "\"small_products\":%zu,\"small_reviews\":%u,\"p50_ratio\":%.3f}",
          data_.productName(0).c_str(), hotSize, small_.size(), smallSize, hotSmall(*rpc));
    }
    std::printf("}\n");
    return;
  }
  char length[64];
  if (o_.ops > 0) {
    std::snprintf(length, sizeof length, "%lld ops", (long long)o_.ops);
  } else {
    std::snprintf(length, sizeof length, "%.1f s", double(durationMs_) / 1000);
  }
  std::printf("load: workload %s (products %s, pages by %s), %d clients x %d in flight, %s%s\n",
              o_.workload.c_str(), o_.products.c_str(), o_.pageCall.c_str(), o_.clients, o_.depth,
              length,
              !startedNode_ && o_.baseline.empty() ? ""
              : o_.unsafeNoSync                    ? ", unsynced writes (--unsafe-no-sync)"
                                                   : ", durable writes");
  std::string nodes;
  for (auto& n : nodes_) nodes += (nodes.empty() ? "" : ",") + n;
  std::printf("nodes: %s%s\n", nodes.c_str(),
              startedNode_ ? " (a chorusd started for this run)" : "");
  if (data_.reviews() > 0) {
    std::printf(
        "dataset: seed %llu, %llu reviews over %zu products (largest %u), %zu-byte bodies\n",
        (unsigned long long)o_.seed, (unsigned long long)data_.reviews(), data_.products(), hotSize,
        o_.bodyBytes);
  }
  if (o_.preload > 0) {
    std::printf("preload: %llu reviews in %.1f s (%.0f/s)", (unsigned long long)o_.preload,
                preloadSeconds_, double(o_.preload) / std::max(preloadSeconds_, 1e-9));
    if (embedded) {
      std::printf("; embedded %.1f s (%.0f/s)", embeddedPreloadSeconds_,
                  double(o_.preload) / std::max(embeddedPreloadSeconds_, 1e-9));
    }
    std::printf("\n");
  }
  std::printf("%-9s %-20s %10s %10s %9s %9s %9s  %s\n", "target", "op", "count", "ops/s", "p50 ms",
              "p99 ms", "p999 ms", "errors");
  for (const RunResult* r : {rpc, http, embedded}) {
    if (!r) continue;
    for (const auto& name : opOrder(r->ops)) {
      const OpSummary& s = r->ops.at(name);
      std::string errors;
      for (const auto& [code, n] : s.errorsByCode) {
        errors += (errors.empty() ? "" : " ") + code + "=" + std::to_string(n);
      }
      std::string shown = name.find('.') != std::string::npos ? "  " + name : name;
      std::printf("%-9s %-20s %10llu %10.0f %9.3f %9.3f %9.3f  %s\n", r->target.c_str(),
                  shown.c_str(), (unsigned long long)s.ok, s.opsPerSecond, s.p50, s.p99, s.p999,
                  errors.empty() ? "0" : errors.c_str());
    }
  }
  if (embedded) {
    std::printf("rpc/embedded ops/s:");
    for (const auto& name : opOrder(rpc->ops)) {
      auto e = embedded->ops.find(name);
      if (e == embedded->ops.end() || e->second.opsPerSecond == 0) continue;
      std::printf("  %s %.2f", name.c_str(),
                  rpc->ops.at(name).opsPerSecond / e->second.opsPerSecond);
    }
    std::printf("\n");
  }
  if (http) {
    std::printf("http/rpc ops/s:");
    for (const auto& [name, ratio] : ratios(*http)) std::printf("  %s %.2f", name.c_str(), ratio);
    std::printf("   (target >= 0.5)\n");
  }
  if (o_.compareSizes) {
    std::printf("page p50, %s (%u reviews) / %zu product(s) of %u reviews: rpc %.2f",
                data_.productName(0).c_str(), hotSize, small_.size(), smallSize, hotSmall(*rpc));
    if (embedded) std::printf(", embedded %.2f", hotSmall(*embedded));
    std::printf("   (target <= 2)\n");
  }
}

std::string makeTempDir() {
  std::string pattern = (fs::temp_directory_path() / "chorus-load-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) return {};
  return pattern;
}

int LoadBench::run() {
  // ---- checks ----
  if (o_.ops == 0) {
    auto d = api::parseDuration(o_.duration, std::chrono::milliseconds(1000));
    if (!d.ok() || d->count() <= 0) {
      return fail(kExitUsage,
                  "--duration: " + (d.ok() ? std::string("must be positive") : d.error().message));
    }
    durationMs_ = d->count();
  }
  if (o_.workload != "write" && data_.reviews() == 0) {
    return fail(kExitUsage, "--workload " + o_.workload +
                                " reads or votes on a dataset: give --preload N, or "
                                "--preload-size N (and the same --seed) for one loaded before");
  }
  if (o_.compareSizes && o_.workload != "page") {
    return fail(kExitUsage, "--compare-sizes measures pages: use it with --workload page");
  }
  if (o_.preloadSize >= 0 && o_.preload > 0 && uint64_t(o_.preloadSize) != o_.preload) {
    return fail(kExitUsage, "--preload and --preload-size differ: give one");
  }
  if (o_.http && !o_.connect.empty() && o_.httpConnect.empty()) {
    return fail(kExitUsage,
                "--http with --connect needs --http-connect: the nodes' HTTP API addresses");
  }
  if (!o_.httpConnect.empty() && !o_.http) {
    return fail(kExitUsage, "--http-connect is for --http");
  }
  if (o_.http && o_.pageCall == "split") {
    return fail(kExitUsage, "--http reads a page with one GET .../page: use --page-call page");
  }
  if (!o_.tokenFile.empty()) {
    std::ifstream in(o_.tokenFile);
    if (!in) return fail(kExitUsage, "--token-file: cannot read " + o_.tokenFile);
    std::getline(in, token_);
    while (!token_.empty() && (token_.back() == '\r' || token_.back() == ' ')) token_.pop_back();
  }
  runTag_ = "n" +
            std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count() %
                           100'000'000) +
            "-";

  std::string tmp;
  if (o_.connect.empty() || (o_.baseline == "embedded" && o_.embeddedDir.empty())) {
    tmp = makeTempDir();
    if (tmp.empty()) return fail(kExitSetup, "cannot create a temporary directory");
  }
  int code = kExitOk;
  {
    std::unique_ptr<LocalChorusd> local;
    std::unique_ptr<Node> embedded;
    do {
      if (o_.connect.empty()) {
        auto started =
            LocalChorusd::start(o_.chorusd.empty() ? LocalChorusd::defaultBinary() : o_.chorusd,
                                tmp, o_.unsafeNoSync, o_.http);
        if (!started.ok()) {
          code = fail(kExitSetup, "starting chorusd: " + started.error().toString());
          break;
        }
        local = std::move(started).value();
        nodes_ = {local->address()};
        if (o_.http) httpNodes_ = {local->httpAddress()};
        startedNode_ = true;
      } else {
        nodes_ = o_.connect;
        httpNodes_ = o_.httpConnect;
      }
      if (o_.baseline == "embedded") {
        Node::Options no;
        no.nodeId = "load-embedded";
        no.dataDir = o_.embeddedDir.empty() ? tmp + "/embedded" : o_.embeddedDir;
        no.store.unsafeNoSync = o_.unsafeNoSync;
        auto n = Node::open(std::move(no));
        if (!n.ok()) {
          code = fail(kExitSetup, "opening the embedded node: " + n.error().toString());
          break;
        }
        embedded = std::move(n).value();
      }
      if (o_.preload > 0) {
        auto p = preloadRpc();
        if (!p.ok()) {
          code = fail(kExitSetup, "preload: " + p.error().toString());
          break;
        }
        if (embedded) {
          auto e = preloadEmbedded(*embedded);
          if (!e.ok()) {
            code = fail(kExitSetup, "embedded preload: " + e.error().toString());
            break;
          }
        }
      }
      std::vector<RunResult> runs;
      auto rpc = phases([&] { return runRpc(); });
      if (!rpc.ok()) {
        code = fail(kExitSetup, "rpc run: " + rpc.error().toString());
        break;
      }
      runs.push_back(std::move(rpc).value());
      if (o_.http) {
        auto h = phases([&] { return runHttp(); });
        if (!h.ok()) {
          code = fail(kExitSetup, "http run: " + h.error().toString());
          break;
        }
        runs.push_back(std::move(h).value());
      }
      if (embedded) {
        auto e = phases([&] { return runEmbedded(*embedded); });
        if (!e.ok()) {
          code = fail(kExitSetup, "embedded run: " + e.error().toString());
          break;
        }
        runs.push_back(std::move(e).value());
      }
      print(runs);
      uint64_t ops = 0, errors = 0;
      for (auto& r : runs) {
        errors += r.errors();
        for (auto& [name, s] : r.ops) ops += name.find('.') == std::string::npos ? s.ok : 0;
      }
      if (errors > 0)
        code = fail(kExitOpErrors, std::to_string(errors) + " operations failed");
      else if (ops == 0)
        code = fail(kExitOpErrors, "no operation completed");
    } while (false);
    embedded.reset();
    local.reset();  // stops chorusd by its PID
  }
  if (!tmp.empty()) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
  }
  return code;
}

}  // namespace

void addLoadBench(CLI::App& app, int& exitCode) {
  auto o = std::make_shared<LoadOptions>();
  auto* sub = app.add_subcommand(
      "load",
      "Load generator over the public RPC API: ops/s and p50/p99/p999 latency per operation "
      "type, optionally against an embedded Node on the same data in the same run");
  sub->footer(
      "Workloads:\n"
      "  write   new reviews (half) and edits of preloaded ones (half): one `put` each\n"
      "  vote    a helpful vote on a preloaded review (voters v0..v999)\n"
      "  get     one preloaded review by key\n"
      "  page    a product page: the summary and the newest 20 reviews, one page load. By\n"
      "          default one `page` call (summary and list from one snapshot; api 5); with\n"
      "          --page-call split, `summary` and `list` sent together (pipelined), its\n"
      "          latency until both answered, also shown apart as page.summary and page.list\n"
      "  mixed   95% page, 4% vote, 1% write\n"
      "Reviews and products are picked by --products: zipf (a review uniformly at random,\n"
      "so a product in proportion to its size), uniform (a product uniformly), hot (the\n"
      "largest product), small (the products of about --small-size reviews).\n"
      "The dataset is a pure function of --seed and --preload-size (or --preload): a run\n"
      "with --preload-size N and the same seed reads what an earlier --preload N wrote.\n"
      "Product sizes follow Zipf: rank k has N/10/k reviews (at N = 1M: 100k, 50k, ...).\n"
      "Without --connect, a chorusd is started on 127.0.0.1 (free port, temporary data\n"
      "dir, --no-auth, no rate limit, durable unless --unsafe-no-sync) and stopped at the end.\n"
      "With a token (--token-file) a node lets a principal put only its own reviews and\n"
      "vote only as itself: write, vote, mixed and --preload need a --no-auth node;\n"
      "get and page work with any token.\n"
      "Exit codes: 0 every operation succeeded; 1 usage; 2 operations failed during the run\n"
      "(the results are still printed); 3 setup failed (chorusd did not start, a node was\n"
      "unreachable, the preload failed, a run timed out).");
  sub->add_option("--connect", o->connect,
                  "Nodes HOST:PORT[,...]; clients are spread over them round-robin (default: "
                  "start a local chorusd)")
      ->delimiter(',');
  sub->add_option("--token-file", o->tokenFile, "File whose first line is the token to present");
  sub->add_option("--clients,-c", o->clients, "Client threads, each with its own connection")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  sub->add_option("--depth,-d", o->depth, "Operations in flight per client")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  auto* duration =
      sub->add_option("--duration", o->duration, "How long to run (e.g. 10s, 500ms, 2m)")
          ->capture_default_str();
  sub->add_option("--ops,-n", o->ops, "Run this many operations in all instead of a duration")
      ->check(CLI::Range(int64_t{1}, int64_t{1'000'000'000}))
      ->excludes(duration);
  sub->add_option("--seed", o->seed, "Seed of the dataset and of the operation streams")
      ->capture_default_str();
  sub->add_option("--workload,-w", o->workload, "write, vote, get, page or mixed (see below)")
      ->capture_default_str()
      ->check(CLI::IsMember({"write", "vote", "get", "page", "mixed"}));
  sub->add_option("--products", o->products,
                  "Which products operations pick: zipf, uniform, hot or small")
      ->capture_default_str()
      ->check(CLI::IsMember({"zipf", "uniform", "hot", "small"}));
  sub->add_option("--page-call", o->pageCall,
                  "How a page is read: page (one ReviewStore.page call) or split (summary and "
                  "list pipelined; for nodes older than api 5)")
      ->capture_default_str()
      ->check(CLI::IsMember({"page", "split"}));
  sub->add_flag("--compare-sizes", o->compareSizes,
                "Pages of the largest product, then pages of --small-size products (each for "
                "--duration or --ops), in the same run; prints their p50 ratio");
  sub->add_option("--small-size", o->smallSize, "Reviews of a `small` product")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1'000'000'000u));
  sub->add_option("--preload", o->preload, "Write a dataset of N reviews first (Zipf products)")
      ->check(CLI::Range(uint64_t{0}, uint64_t{100'000'000}));
  sub->add_option("--preload-size", o->preloadSize,
                  "Use the dataset of N reviews preloaded by an earlier run (same --seed) "
                  "without writing it")
      ->check(CLI::Range(int64_t{0}, int64_t{100'000'000}));
  sub->add_option("--preload-depth", o->preloadDepth, "Preload writes in flight per client")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  sub->add_option("--body-bytes", o->bodyBytes, "Review body size")
      ->capture_default_str()
      ->check(CLI::Range(size_t{0}, size_t{20'000}));
  sub->add_option("--baseline", o->baseline,
                  "embedded: also run the workload against an in-process chorus::Node (own "
                  "temporary dir, same dataset, same durability, clients x depth threads) and "
                  "print the RPC/embedded ratio per operation")
      ->check(CLI::IsMember({"embedded"}));
  sub->add_option("--embedded-dir", o->embeddedDir,
                  "The embedded node's data dir, kept after the run (default: a temporary one): "
                  "preload it once, then give --preload-size to reuse it");
  sub->add_flag("--http", o->http,
                "Also run the workload over the nodes' HTTP API (after RPC, same dataset and "
                "mix; clients x depth keep-alive connections, one request in flight on each) "
                "and print HTTP/RPC ops/s per operation (issue 16's target: page >= 0.5). "
                "A started chorusd gets --http-listen");
  sub->add_option("--http-connect", o->httpConnect,
                  "With --connect and --http: the nodes' HTTP API addresses HOST:PORT[,...]")
      ->delimiter(',');
  sub->add_flag("--unsafe-no-sync", o->unsafeNoSync,
                "The started chorusd and the embedded node commit without fsync");
  sub->add_option("--chorusd", o->chorusd,
                  "chorusd to start without --connect (default: the one next to chorus-bench, "
                  "else PATH)");
  sub->add_flag("--json", o->json, "One JSON object on stdout");
  sub->add_flag("!--no-progress", o->progress, "No progress line on stderr");
  sub->callback([o, &exitCode] { exitCode = LoadBench(*o).run(); });
}

}  // namespace chorus::bench
