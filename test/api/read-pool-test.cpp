// The RPC server's read pool (api/internal/read-pool.h): reads run off the
// RPC thread, so a slow one holds up no other connection; results land on
// their own calls and show committed states; a cancelled call, a dropped
// connection or a shutdown while a read runs is safe; a full queue answers
// `overloaded`; call durations are a Prometheus histogram on /metrics, as
// are store commits, anti-entropy sessions and delta push lag.
//
// A read is held in the pool deterministically with RpcLimits::beforeRead,
// which blocks reads of product "slow" until the test releases them.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kj/async.h>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <span>
#include <sstream>
#include <thread>
#include <vector>

#include "api/client.h"
#include "api/metrics.h"
#include "api/node.h"
#include "gossip/keyring.h"
#include "temp-dir.h"

using chorus::ErrorCode;
using chorus::Node;
using chorus::api::Client;
using chorus::api::Histogram;
using chorus::api::Metrics;
using chorus::api::wire::ErrorCode::OVERLOADED;
using chorus::test::TempDir;
using namespace std::chrono_literals;

namespace {

// Holds reads of product "slow" inside the pool until release().
class Gate {
 public:
  // For RpcLimits::beforeRead (a read thread).
  void operator()(const char*, const std::string& key) {
    if (key != "slow") return;
    std::unique_lock lock(mutex_);
    ++entered_;
    changed_.notify_all();
    // Bounded, so a broken build fails instead of hanging.
    changed_.wait_for(lock, 30s, [this] { return released_; });
  }
  // Waits until `n` reads of "slow" entered the gate; false after 10 s.
  bool waitEntered(int n) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, 10s, [&] { return entered_ >= n; });
  }
  void release() {
    std::lock_guard lock(mutex_);
    released_ = true;
    changed_.notify_all();
  }
  int entered() {
    std::lock_guard lock(mutex_);
    return entered_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int entered_ = 0;
  bool released_ = false;
};

std::unique_ptr<Node> openNode(const TempDir& tmp, chorus::RpcLimits limits,
                               const std::shared_ptr<Gate>& gate = nullptr, bool metrics = false) {
  Node::Options o;
  o.nodeId = "reads";
  o.dataDir = tmp.sub("data");
  o.listen = "127.0.0.1:0";
  if (metrics) o.metricsAddr = "127.0.0.1:0";
  o.rpc = limits;
  o.rpc.noAuth = true;
  if (gate) {
    o.rpc.beforeRead = [gate](const char* method, const std::string& key) { (*gate)(method, key); };
  }
  o.store.unsafeNoSync = true;
  auto node = Node::open(std::move(o));
  REQUIRE_MESSAGE(node.ok(), node.error().toString());
  return std::move(node).value();
}

std::unique_ptr<Client> connect(Node& node, std::chrono::milliseconds timeout = 10s) {
  Client::Options o;
  o.timeout = timeout;
  auto c = Client::connect(node.rpcAddress(), o);
  REQUIRE_MESSAGE(c.ok(), c.error().toString());
  return std::move(c).value();
}

// Polls `done` every 5 ms for up to 10 s.
template <typename Pred>
bool eventually(Pred done) {
  for (int i = 0; i < 2000; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return done();
}

// Like eventually(), turning the client's event loop meanwhile so the
// calls it sent go out and their answers come in.
template <typename Pred>
bool eventually(Client& c, Pred done) {
  return eventually([&] {
    c.waitScope().poll();
    return done();
  });
}

// GET http://<address>/metrics; the body ("" on failure).
std::string fetchMetrics(const std::string& address) {
  auto colon = address.rfind(':');
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(uint16_t(std::stoi(address.substr(colon + 1))));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr);
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
    std::string req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if (::send(fd, req.data(), req.size(), 0) == ssize_t(req.size())) {
      char buf[8192];
      ssize_t n;
      while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) {
        response.append(buf, size_t(n));
        // Done at Content-Length: the server keeps the connection open (for
        // its pipeline timeout, 5 s) whatever `Connection: close` says.
        auto end = response.find("\r\n\r\n");
        auto length = response.find("Content-Length: ");
        if (end != std::string::npos && length != std::string::npos && length < end &&
            response.size() - (end + 4) >= std::stoul(response.substr(length + 16))) {
          break;
        }
      }
    }
  }
  ::close(fd);
  auto body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

// The samples of histogram `name` in a /metrics body whose labels contain
// `labels` (empty: any): (le, or "sum" / "count", value), in order.
std::vector<std::pair<std::string, double>> histogram(const std::string& body,
                                                      const std::string& name,
                                                      const std::string& labels = "") {
  std::vector<std::pair<std::string, double>> out;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) != 0 || line.find(labels) == std::string::npos) continue;
    std::string rest = line.substr(name.size());
    double v = std::stod(line.substr(line.rfind(' ') + 1));
    if (rest.rfind("_bucket{", 0) == 0) {
      auto le = line.find("le=\"") + 4;
      out.emplace_back(line.substr(le, line.find('"', le) - le), v);
    } else if (rest.rfind("_sum ", 0) == 0 || rest.rfind("_sum{", 0) == 0) {
      out.emplace_back("sum", v);
    } else if (rest.rfind("_count ", 0) == 0 || rest.rfind("_count{", 0) == 0) {
      out.emplace_back("count", v);
    }
  }
  return out;
}

// Checks a histogram's samples against its bounds (every bound in order,
// counts never decreasing, +Inf = _count) and returns its _count (-1 if
// the shape is wrong).
double histogramCount(const std::vector<std::pair<std::string, double>>& h,
                      std::span<const double> bounds) {
  REQUIRE(h.size() == bounds.size() + 3);
  double previous = 0;
  for (size_t i = 0; i < bounds.size(); ++i) {
    CHECK(std::stod(h[i].first) == doctest::Approx(bounds[i]));
    CHECK(h[i].second >= previous);
    previous = h[i].second;
  }
  CHECK(h[bounds.size()].first == "+Inf");
  CHECK(h[bounds.size()].second >= previous);
  CHECK(h[bounds.size() + 1].first == "sum");
  CHECK(h[bounds.size() + 2].first == "count");
  CHECK(h[bounds.size() + 2].second == h[bounds.size()].second);
  return h[bounds.size() + 2].second;
}

// A plain sample `name value` (-1 if absent).
double scalar(const std::string& body, const std::string& name) {
  auto at = body.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(body.substr(at + name.size() + 2));
}

}  // namespace

TEST_CASE("reads: a read held in the pool delays no other connection's calls") {
  TempDir tmp;
  auto gate = std::make_shared<Gate>();
  chorus::RpcLimits limits;
  limits.readThreads = 2;
  auto node = openNode(tmp, limits, gate);
  REQUIRE(node->put("slow", "ann", 5, "held", "").ok());
  REQUIRE(node->put("fast", "bob", 4, "quick", "").ok());

  std::atomic<bool> slowDone{false};
  std::optional<chorus::Result<chorus::ReviewView>> slow;
  std::thread first([&] {
    auto c = connect(*node, 40s);
    slow = c->get("slow", "ann");
    slowDone = true;
  });
  if (!gate->waitEntered(1)) {
    gate->release();
    first.join();
    FAIL("the read of \"slow\" never reached the pool");
  }
  CHECK(node->metrics().readThreadsBusy() == 1);

  // Another connection: reads, a listing, a write and an admin call all
  // answer while the first read is still held (with reads on the RPC
  // thread, each would wait for it: the 5 s client timeout fails them).
  // Checked after the release, so a failure cannot leave `first` running.
  std::string failed;  // the first call that did not answer as expected
  [&] {
    auto c = connect(*node, 5s);
    auto got = c->get("fast", "bob");
    if (!got.ok() || got->title != "quick") return void(failed = "get");
    auto page = c->list("fast", chorus::storage::Order::kNewest, "", 10);
    if (!page.ok() || page->reviews.size() != 1) return void(failed = "list");
    auto sum = c->summary("fast");
    if (!sum.ok() || sum->count != 1) return void(failed = "summary");
    auto mine = c->byAuthor("bob", "", 10);
    if (!mine.ok() || mine->reviews.size() != 1) return void(failed = "byAuthor");
    chorus::WriteRequest put;
    put.op = chorus::WriteOp::kPut;
    put.product = "fast";
    put.author = "cid";
    put.rating = 3;
    if (!c->write(put).ok()) return void(failed = "put");
    if (!c->status().ok()) return void(failed = "status");
  }();
  bool heldMeanwhile = !slowDone.load() && gate->entered() == 1;
  gate->release();
  first.join();
  CHECK(failed == "");
  CHECK(heldMeanwhile);
  REQUIRE(slow.has_value());
  REQUIRE(slow->ok());
  CHECK((*slow)->title == "held");
  CHECK(eventually([&] { return node->metrics().readThreadsBusy() == 0; }));
}

TEST_CASE("reads: concurrent readers on several connections while writes commit") {
  TempDir tmp;
  chorus::RpcLimits limits;
  limits.readThreads = 3;
  auto node = openNode(tmp, limits);
  constexpr int kWrites = 300, kReaders = 4, kRounds = 25, kDepth = 12;
  // Review i of product "p" is by author a<i>, title "v<i>", body "b<i>";
  // "hot" is rewritten with title "t<k>" and body "u<k>" in the same write.
  auto author = [](int i) { return "a" + std::to_string(i); };
  std::atomic<int> acknowledged{0};  // a0..a(acknowledged-1) committed
  std::atomic<int> begun{0};         // at most a0..a(begun-1) committed
  std::thread writer([&] {
    for (int i = 0; i < kWrites; ++i) {
      begun = i + 1;
      auto r = node->put("p", author(i), uint32_t(1 + i % 5), "v" + std::to_string(i),
                         "b" + std::to_string(i));
      REQUIRE(r.ok());
      acknowledged = i + 1;
      auto h = node->put("hot", "x", 3, "t" + std::to_string(i), "u" + std::to_string(i));
      REQUIRE(h.ok());
    }
  });

  std::atomic<int> failures{0}, checked{0};
  std::mutex logMutex;
  auto fail = [&](const std::string& what) {
    ++failures;
    std::lock_guard lock(logMutex);
    MESSAGE(what);
  };
  std::vector<std::thread> readers;
  for (int t = 0; t < kReaders; ++t) {
    readers.emplace_back([&, t] {
      auto client = Client::connect(node->rpcAddress());
      if (!client.ok()) {
        fail(client.error().toString());
        return;
      }
      auto& c = **client;
      std::mt19937 rng(uint32_t(1000 + t));
      for (int round = 0; round < kRounds; ++round) {
        int lo = acknowledged.load();
        auto calls = kj::heapArrayBuilder<kj::Promise<void>>(kDepth + 3);
        // Pipelined gets of distinct committed (or not yet) keys: each
        // answer must be its own key's.
        for (int k = 0; k < kDepth; ++k) {
          int i = int(rng() % uint32_t(std::max(1, lo + 5)));
          auto req = c.reviews().getRequest();
          req.setProduct("p");
          req.setAuthor(author(i));
          calls.add(req.send().then([&, i, lo](auto resp) {
            ++checked;
            if (resp.hasError()) {
              if (i < lo || resp.getError().getCode() != chorus::api::wire::ErrorCode::NOT_FOUND) {
                fail("get a" + std::to_string(i) + ": " + resp.getError().getMessage().cStr());
              }
              return;
            }
            auto r = resp.getReview();
            if (r.getAuthor() != author(i) || r.getProduct() != "p" ||
                r.getTitle() != "v" + std::to_string(i) || r.getBody() != "b" + std::to_string(i)) {
              fail("get a" + std::to_string(i) + " answered " + r.getAuthor().cStr() + " " +
                   r.getTitle().cStr());
            }
          }));
        }
        auto sum = c.reviews().summaryRequest();
        sum.setProduct("p");
        calls.add(sum.send().then([&, lo](auto resp) {
          ++checked;
          uint64_t n = resp.getSummary().getCount();
          int hi = begun.load();
          if (resp.hasError() || n < uint64_t(lo) || n > uint64_t(hi)) {
            fail("summary count " + std::to_string(n) + " not in [" + std::to_string(lo) + ", " +
                 std::to_string(hi) + "]");
          }
        }));
        auto list = c.reviews().listRequest();
        list.setProduct("p");
        list.setLimit(50);
        calls.add(list.send().then([&, lo](auto resp) {
          ++checked;
          if (resp.hasError()) {
            fail(std::string("list: ") + resp.getError().getMessage().cStr());
            return;
          }
          auto reviews = resp.getPage().getReviews();
          if (reviews.size() < std::min<unsigned>(50, unsigned(lo))) fail("list: short page");
          for (auto r : reviews) {
            std::string a = r.getAuthor();
            if (r.getProduct() != "p" || r.getTitle() != "v" + a.substr(1) ||
                r.getBody() != "b" + a.substr(1)) {
              fail("list: " + a + " with " + r.getTitle().cStr());
            }
          }
        }));
        auto hot = c.reviews().getRequest();
        hot.setProduct("hot");
        hot.setAuthor("x");
        calls.add(hot.send().then([&](auto resp) {
          ++checked;
          if (resp.hasError()) return;  // not written yet
          std::string title = resp.getReview().getTitle(), body = resp.getReview().getBody();
          if (title.substr(1) != body.substr(1)) fail("hot: " + title + " with " + body);
        }));
        kj::joinPromises(calls.finish()).wait(c.waitScope());
      }
    });
  }
  for (auto& r : readers) r.join();
  writer.join();
  CHECK(failures == 0);
  CHECK(checked == kReaders * kRounds * (kDepth + 3));
  CHECK(node->metrics().calls(Metrics::kGet) == uint64_t(kReaders * kRounds * (kDepth + 1)));
}

TEST_CASE("reads: a call cancelled, or its connection dropped, while its read runs") {
  TempDir tmp;
  auto gate = std::make_shared<Gate>();
  chorus::RpcLimits limits;
  limits.readThreads = 1;
  auto node = openNode(tmp, limits, gate);
  REQUIRE(node->put("slow", "ann", 5, "held", "").ok());
  REQUIRE(node->put("fast", "bob", 4, "quick", "").ok());

  {
    auto c = connect(*node);
    // Cancelled: the client drops the call's promise (a Finish reaches the
    // server) while the read is held; a second read waits in the queue.
    {
      auto req = c->reviews().getRequest();
      req.setProduct("slow");
      req.setAuthor("ann");
      auto held = req.send();
      auto lreq = c->reviews().listRequest();
      lreq.setProduct("slow");
      auto queued = lreq.send();
      REQUIRE(eventually(*c, [&] { return gate->entered() == 1; }));
      REQUIRE(eventually(*c, [&] { return node->metrics().readsQueued() == 1; }));
    }
    // The connection goes too, with more reads of it queued.
    std::vector<kj::Promise<void>> pending;  // dropped before the client
    for (int i = 0; i < 3; ++i) {
      auto req = c->reviews().summaryRequest();
      req.setProduct("slow");
      pending.push_back(req.send().ignoreResult());
    }
    REQUIRE(eventually(*c, [&] { return node->metrics().readsQueued() == 4; }));
  }
  // The held read finishes after its call and connection are gone; the
  // queued ones run and their results are dropped likewise.
  gate->release();
  CHECK(eventually([&] {
    return node->metrics().readsQueued() == 0 && node->metrics().readThreadsBusy() == 0;
  }));
  CHECK(gate->entered() == 5);
  auto c = connect(*node);
  auto got = c->get("fast", "bob");
  REQUIRE(got.ok());
  CHECK(got->title == "quick");
}

TEST_CASE("reads: shutdown while a read is held drops the queued ones, then closes the store") {
  TempDir tmp;
  auto gate = std::make_shared<Gate>();
  chorus::RpcLimits limits;
  limits.readThreads = 1;
  auto node = openNode(tmp, limits, gate);
  REQUIRE(node->put("slow", "ann", 5, "held", "").ok());
  Metrics& metrics = node->metrics();

  std::atomic<int> answered{0};
  std::thread client([&] {
    auto c = connect(*node, 30s);
    auto a = c->reviews().getRequest();
    a.setProduct("slow");
    a.setAuthor("ann");
    auto b = c->reviews().summaryRequest();
    b.setProduct("slow");
    auto pa = a.send().then([&](auto) { ++answered; }, [](kj::Exception&&) {});
    auto pb = b.send().then([&](auto) { ++answered; }, [](kj::Exception&&) {});
    pa.exclusiveJoin(kj::mv(pb)).wait(c->waitScope());  // the first to end: disconnected
  });
  if (!gate->waitEntered(1) || !eventually([&] { return metrics.readsQueued() == 1; })) {
    gate->release();
    node.reset();
    client.join();
    FAIL("the reads did not reach the pool");
  }
  // Release the held read only once the RPC thread closed every connection,
  // so its result finds the server gone.
  std::thread releaser([&] {
    eventually([&] {
      return metrics.render({}, 0).find("\nchorus_rpc_connections 0\n") != std::string::npos;
    });
    gate->release();
  });
  node.reset();  // waits for the held read; the queued one never runs
  releaser.join();
  client.join();
  CHECK(gate->entered() == 1);
  CHECK(answered == 0);
}

TEST_CASE("reads: a full read queue answers overloaded; the queued reads still succeed") {
  TempDir tmp;
  auto gate = std::make_shared<Gate>();
  chorus::RpcLimits limits;
  limits.readThreads = 1;
  limits.maxQueuedReads = 2;
  auto node = openNode(tmp, limits, gate);
  REQUIRE(node->put("slow", "ann", 5, "held", "").ok());
  auto c = connect(*node);
  auto send = [&] {
    auto req = c->reviews().getRequest();
    req.setProduct("slow");
    req.setAuthor("ann");
    return req.send();
  };
  auto running = send();
  REQUIRE(eventually(*c, [&] { return gate->entered() == 1; }));
  auto q1 = send();
  auto q2 = send();
  REQUIRE(eventually(*c, [&] { return node->metrics().readsQueued() == 2; }));
  // Answered at once, while the three others wait.
  auto refused = send().wait(c->waitScope());
  REQUIRE(refused.hasError());
  CHECK(refused.getError().getCode() == OVERLOADED);
  CHECK(std::string(refused.getError().getMessage().cStr()) ==
        "the node's read queue is full (2 reads waiting for 1 read threads, --max-queued-reads); "
        "retry with backoff");
  CHECK(node->metrics().readsRefusedQueueFull() == 1);
  CHECK(node->metrics().render({}, 0).find("\nchorus_rpc_read_queue_full_total 1\n") !=
        std::string::npos);
  CHECK(node->metrics().render({}, 0).find("\nchorus_rpc_read_queue_depth 2\n") !=
        std::string::npos);
  gate->release();
  for (auto* p : {&running, &q1, &q2}) {
    auto r = p->wait(c->waitScope());
    CHECK_FALSE(r.hasError());
    CHECK(r.getReview().getTitle() == "held");
  }
  CHECK(gate->entered() == 3);
}

TEST_CASE("metrics: Histogram buckets are inclusive upper bounds, cumulative when rendered") {
  const double bounds[] = {0.5, 1.0, 2.0};
  chorus::api::Histogram h(bounds);
  for (double v : {0.1, 0.5, 0.75, 1.0, 3.0}) h.observe(v);
  std::string out;
  chorus::api::Histogram::renderHeader(out, "x_seconds", "X.");
  h.render(out, "x_seconds", "k=\"v\"");
  CHECK(out ==
        "# HELP x_seconds X.\n# TYPE x_seconds histogram\n"
        "x_seconds_bucket{k=\"v\",le=\"0.5\"} 2\n"
        "x_seconds_bucket{k=\"v\",le=\"1\"} 4\n"
        "x_seconds_bucket{k=\"v\",le=\"2\"} 4\n"
        "x_seconds_bucket{k=\"v\",le=\"+Inf\"} 5\n"
        "x_seconds_sum{k=\"v\"} 5.35\n"
        "x_seconds_count{k=\"v\"} 5\n");
  std::string bare;
  chorus::api::Histogram(bounds).render(bare, "y", "");
  CHECK(bare.find("y_bucket{le=\"+Inf\"} 0\ny_sum 0\ny_count 0\n") != std::string::npos);
}

TEST_CASE("metrics: RPC call durations by method on /metrics, with the read pool's gauges") {
  TempDir tmp;
  chorus::RpcLimits limits;
  limits.readThreads = 2;
  auto node = openNode(tmp, limits, nullptr, true);
  auto c = connect(*node);
  chorus::WriteRequest put;
  put.op = chorus::WriteOp::kPut;
  put.product = "p";
  put.author = "ann";
  put.rating = 5;
  REQUIRE(c->write(put).ok());
  for (int i = 0; i < 7; ++i) REQUIRE(c->get("p", "ann").ok());
  auto missing = c->get("p", "nobody");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == ErrorCode::kNotFound);

  // A read thread posts its result before it counts itself idle: the gauges
  // settle a moment after the last answer (bounded wait, then checked).
  std::string body;
  for (int i = 0; i < 200; ++i) {
    body = fetchMetrics(node->metricsAddress());
    if (body.find("chorus_rpc_read_threads_busy 0\n") != std::string::npos) break;
    std::this_thread::sleep_for(10ms);
  }
  REQUIRE(!body.empty());
  CHECK(body.find("# TYPE chorus_rpc_call_duration_seconds histogram\n") != std::string::npos);
  CHECK(body.find("chorus_rpc_read_threads 2\n") != std::string::npos);
  CHECK(body.find("chorus_rpc_read_queue_depth 0\n") != std::string::npos);
  CHECK(body.find("chorus_rpc_read_threads_busy 0\n") != std::string::npos);
  CHECK(body.find("chorus_rpc_read_queue_full_total 0\n") != std::string::npos);

  // For get: every bound in order, counts never decreasing, +Inf = _count
  // = the 8 calls (errors included), and a positive _sum.
  auto samples = [&](const std::string& method) {
    std::vector<std::pair<std::string, double>> out;  // (le or "sum"/"count", value)
    std::istringstream in(body);
    std::string line;
    std::string label = "method=\"" + method + "\"";
    while (std::getline(in, line)) {
      if (line.rfind("chorus_rpc_call_duration_seconds", 0) != 0) continue;
      if (line.find(label) == std::string::npos) continue;
      double v = std::stod(line.substr(line.rfind(' ') + 1));
      if (line.find("_bucket{") != std::string::npos) {
        auto le = line.find("le=\"") + 4;
        out.emplace_back(line.substr(le, line.find('"', le) - le), v);
      } else if (line.find("_sum{") != std::string::npos) {
        out.emplace_back("sum", v);
      } else if (line.find("_count{") != std::string::npos) {
        out.emplace_back("count", v);
      }
    }
    return out;
  };
  auto get = samples("get");
  const auto& bounds = chorus::api::Histogram::kDurationBounds;
  REQUIRE(get.size() == bounds.size() + 3);
  double previous = 0;
  for (size_t i = 0; i < bounds.size(); ++i) {
    CHECK(std::stod(get[i].first) == doctest::Approx(bounds[i]));
    CHECK(get[i].second >= previous);
    previous = get[i].second;
  }
  CHECK(get[bounds.size()].first == "+Inf");
  CHECK(get[bounds.size()].second == 8);
  CHECK(get[bounds.size() + 1].first == "sum");
  CHECK(get[bounds.size() + 1].second > 0);
  CHECK(get[bounds.size() + 2].first == "count");
  CHECK(get[bounds.size() + 2].second == 8);
  auto puts = samples("put");
  REQUIRE(puts.size() == bounds.size() + 3);
  CHECK(puts.back().second == 1);
  CHECK(samples("list").empty());  // no call, no series
}

TEST_CASE("reads: page answers the summary and a page from one snapshot, as list and summary do") {
  TempDir tmp;
  auto node = openNode(tmp, chorus::RpcLimits{});
  for (int i = 0; i < 30; ++i) {
    REQUIRE(node->put("p", "a" + std::to_string(i), uint32_t(1 + i % 5), "t", "b").ok());
  }
  auto c = connect(*node);

  // The same answers as list and summary, in each order, cursor included.
  for (auto order : {chorus::storage::Order::kNewest, chorus::storage::Order::kHighestRating,
                     chorus::storage::Order::kLowestRating}) {
    auto page = c->page("p", order, "", 7);
    REQUIRE_MESSAGE(page.ok(), page.error().toString());
    auto list = c->list("p", order, "", 7);
    REQUIRE(list.ok());
    auto sum = c->summary("p");
    REQUIRE(sum.ok());
    CHECK(page->summary.count == 30);
    CHECK(page->summary.histogram == sum->histogram);
    REQUIRE(page->page.reviews.size() == list->reviews.size());
    for (size_t i = 0; i < list->reviews.size(); ++i) {
      CHECK(page->page.reviews[i].author == list->reviews[i].author);
    }
    CHECK(page->page.nextCursor == list->nextCursor);
    auto next = c->page("p", order, page->page.nextCursor, 7);
    REQUIRE(next.ok());
    auto nextList = c->list("p", order, list->nextCursor, 7);
    REQUIRE(nextList.ok());
    REQUIRE(next->page.reviews.size() == nextList->reviews.size());
    CHECK(next->page.reviews.front().author == nextList->reviews.front().author);
  }
  // list's errors: a bad cursor, a bad product, a limit over the maximum.
  auto bad = c->page("p", chorus::storage::Order::kNewest, "zz", 7);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == chorus::ErrorCode::kInvalidArgument);
  auto empty = c->page("", chorus::storage::Order::kNewest, "", 7);
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.error().code == chorus::ErrorCode::kInvalidArgument);

  // One snapshot: while a writer adds reviews to "grow" one commit at a
  // time, every page of 100 lists min(summary.count, 100) reviews (a
  // summary and a list read apart would disagree whenever a write lands
  // between them).
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (int i = 0; i < 250; ++i) {
      REQUIRE(node->put("grow", "w" + std::to_string(i), 4, "t", "b").ok());
    }
    done = true;
  });
  int pages = 0, mismatched = 0;
  for (int round = 0; round < 2000 && (!done || pages == 0); ++round) {
    auto page = c->page("grow", chorus::storage::Order::kNewest, "", 100);
    REQUIRE_MESSAGE(page.ok(), page.error().toString());
    ++pages;
    if (std::min<uint64_t>(page->summary.count, 100) != page->page.reviews.size()) ++mismatched;
  }
  writer.join();
  CHECK(pages > 0);
  CHECK(mismatched == 0);
}

TEST_CASE("metrics: store commit duration and batch size histograms on /metrics") {
  TempDir tmp;
  auto node = openNode(tmp, {}, nullptr, true);
  // From several threads, so that some commits may hold more than one write.
  constexpr int kThreads = 4, kEach = 10;
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        std::string author = "a" + std::to_string(t) + "-" + std::to_string(i);
        if (node->put("p", author, 4, "t", "").ok()) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  REQUIRE(ok == kThreads * kEach);

  std::string body = fetchMetrics(node->metricsAddress());
  REQUIRE(!body.empty());
  CHECK(body.find("# TYPE chorus_store_commit_duration_seconds histogram\n") != std::string::npos);
  CHECK(body.find("# TYPE chorus_store_commit_batch_size histogram\n") != std::string::npos);
  double commits = scalar(body, "chorus_store_commits_total");
  CHECK(scalar(body, "chorus_store_writes_total") == kThreads * kEach);
  CHECK(commits >= 1);
  CHECK(commits <= kThreads * kEach);
  // One observation per commit, both histograms; the batch sizes add up to
  // the writes committed.
  auto duration = histogram(body, "chorus_store_commit_duration_seconds");
  CHECK(histogramCount(duration, Histogram::kDurationBounds) == commits);
  CHECK(duration[Histogram::kDurationBounds.size() + 1].second > 0);
  auto batch = histogram(body, "chorus_store_commit_batch_size");
  CHECK(histogramCount(batch, Metrics::kBatchBounds) == commits);
  CHECK(batch[Metrics::kBatchBounds.size() + 1].second == kThreads * kEach);
  CHECK(node->metrics().commitBatchSize().sum() == kThreads * kEach);
}

TEST_CASE("metrics: anti-entropy session duration by scope and delta push lag on /metrics") {
  TempDir tmp;
  static const std::string key = chorus::gossip::generateClusterKey();
  auto open = [&](const std::string& id, const std::string& region,
                  std::vector<std::string> seeds) {
    Node::Options o;
    o.nodeId = id;
    o.dataDir = tmp.sub(id);
    o.listen = "127.0.0.1:0";
    o.metricsAddr = "127.0.0.1:0";
    o.rpc.noAuth = true;
    o.store.unsafeNoSync = true;
    o.cluster.listen = "127.0.0.1:0";
    o.cluster.keys = {key};
    o.cluster.seeds = std::move(seeds);
    o.cluster.region = region;
    o.cluster.antiEntropyInterval = 100ms;
    o.cluster.crossRegionAntiEntropyInterval = 200ms;
    o.cluster.probeInterval = 200ms;
    o.cluster.gossipInterval = 50ms;
    auto node = Node::open(std::move(o));
    REQUIRE_MESSAGE(node.ok(), node.error().toString());
    return std::move(node).value();
  };
  // a and b share region x; c is in y.
  auto a = open("a", "x", {});
  auto b = open("b", "x", {a->cluster()->address()});
  auto c = open("c", "y", {a->cluster()->address()});
  std::vector<Node*> nodes = {a.get(), b.get(), c.get()};
  REQUIRE(eventually([&] {
    for (Node* n : nodes) {
      auto view = n->clusterView();
      if (!view.ok() || view->members.size() != 2 || view->stats.activePeers == 0) return false;
    }
    return true;
  }));
  // Writes with a stamp (a review's content), pushed from a to b and c.
  for (int i = 0; i < 5; ++i) {
    REQUIRE(a->put("p", "ann" + std::to_string(i), 5, "t", "").ok());
  }
  const std::string session = "chorus_gossip_anti_entropy_session_duration_seconds";
  const std::string lag = "chorus_gossip_delta_push_lag_seconds";
  // Totals over the three nodes, from their /metrics.
  double inRegion = 0, crossRegion = 0, lags = 0, lagSum = 0;
  auto gather = [&] {
    inRegion = crossRegion = lags = lagSum = 0;
    for (Node* n : nodes) {
      std::string body = fetchMetrics(n->metricsAddress());
      REQUIRE(!body.empty());
      CHECK(body.find("# TYPE " + session + " histogram\n") != std::string::npos);
      CHECK(body.find("# TYPE " + lag + " histogram\n") != std::string::npos);
      inRegion += histogramCount(histogram(body, session, "scope=\"in_region\""),
                                 Histogram::kDurationBounds);
      crossRegion += histogramCount(histogram(body, session, "scope=\"cross_region\""),
                                    Histogram::kDurationBounds);
      auto l = histogram(body, lag);
      lags += histogramCount(l, Metrics::kLagBounds);
      lagSum += l[Metrics::kLagBounds.size() + 1].second;
    }
    return inRegion >= 1 && crossRegion >= 1 && lags >= 1;
  };
  CHECK(eventually(gather));
  CHECK(inRegion >= 1);
  CHECK(crossRegion >= 1);
  CHECK(lags >= 1);
  CHECK(lags <= 10);  // each of the 5 writes applied once on b and once on c at most
  CHECK(lagSum >= 0);
  // In-region sessions are a's and b's (c has no peer in y).
  CHECK(c->metrics().antiEntropySessions(false).count() == 0);
  CHECK(a->metrics().antiEntropySessions(false).count() +
            b->metrics().antiEntropySessions(false).count() >=
        1);
}
