// chorus-bench feed: the change feed of one node.
//
// 1. Preload: --keys distinct reviews written through chorus::Node (async
//    writes, --window in flight).
// 2. Catch-up from since=0, every figure in changes/s over the whole feed
//    (one entry per review): Node::changes pages of --page without and with
//    documents, ReviewStore.changes pages over RPC, and ReviewStore.follow
//    from 0 over RPC (the node streams the backlog in batches of --page).
// 3. Follower latency: a writer puts new reviews at --rate for --seconds
//    while two followers run: an RPC follow (its own client thread) and an
//    embedded follower (Node::subscribe waking a thread that reads
//    Node::changes). Each change's latency runs from the commit of the
//    transaction holding it (the store's onFeedAdvanced, called on the store
//    thread just after the commit) to the follower's callback seeing it;
//    `write_to_rpc_follower` runs from Node::write to the RPC follower.
//    With --http the node serves HTTP too and two more followers read
//    GET /v1/changes over real loopback connections: an eventsource stream
//    and a longpoll loop (latency from the commit to the bytes received).
// Every change is checked to arrive: each follower must see every write.
#include <arpa/inet.h>
#include <kj/async.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "api/client.h"
#include "api/node.h"

namespace chorus::bench {

namespace {

using Clock = std::chrono::steady_clock;

struct FeedBenchOptions {
  uint64_t keys = 1'000'000;
  uint32_t page = 1000;  // changes per page or follow batch
  uint32_t window = 4000;
  double rate = 1000;   // writes/s in the latency phase
  double seconds = 10;  // length of the latency phase
  bool unsafeNoSync = false;
  bool http = false;  // also follow over HTTP (eventsource, longpoll)
  bool json = false;
  std::string dir;
};

std::string makeTempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "chorus-bench-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) return {};
  return pattern;
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
double millis(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = size_t(p * double(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

// Commit times by the last seq of each commit that advanced the feed, from
// the store's onFeedAdvanced (store thread).
class CommitLog {
 public:
  void committed(uint64_t lastSeq) {
    auto now = Clock::now();
    std::lock_guard lock(mu_);
    if (recording_) at_.emplace(lastSeq, now);
  }
  void record(bool on) {
    std::lock_guard lock(mu_);
    recording_ = on;
  }
  // When the change numbered `seq` committed: the first commit whose last
  // seq is at least `seq`.
  std::optional<Clock::time_point> of(uint64_t seq) {
    std::lock_guard lock(mu_);
    auto it = at_.lower_bound(seq);
    if (it == at_.end()) return std::nullopt;
    return it->second;
  }

 private:
  std::mutex mu_;
  bool recording_ = false;
  std::map<uint64_t, Clock::time_point> at_;
};

// A blocking HTTP/1.1 client connection on loopback, for the HTTP followers:
// just enough to read a response head, a Content-Length or chunked body,
// and an open-ended chunked stream.
class HttpConn {
 public:
  explicit HttpConn(const std::string& address) {
    size_t colon = address.rfind(':');
    if (colon == std::string::npos) return;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(std::stoi(address.substr(colon + 1))));
    if (::inet_pton(AF_INET, address.substr(0, colon).c_str(), &a.sin_addr) != 1) return;
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) return;
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~HttpConn() {
    if (fd_ >= 0) ::close(fd_);
  }
  HttpConn(const HttpConn&) = delete;
  HttpConn& operator=(const HttpConn&) = delete;
  bool ok() const { return fd_ >= 0; }

  bool send(const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += size_t(n);
    }
    return true;
  }

  // The response head: its status, and whether the body is chunked (else
  // contentLength bytes). False on EOF, error or `deadline`.
  bool readHead(Clock::time_point deadline, int& status, bool& chunked, size_t& contentLength) {
    size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill(deadline)) return false;
    }
    std::string head = buf_.substr(0, end);
    buf_.erase(0, end + 4);
    for (char& c : head) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (head.size() < 12) return false;
    status = std::atoi(head.c_str() + 9);
    chunked = head.find("\r\ntransfer-encoding: chunked") != std::string::npos;
    contentLength = 0;
    if (size_t at = head.find("\r\ncontent-length:"); at != std::string::npos) {
      contentLength = size_t(std::strtoull(head.c_str() + at + 17, nullptr, 10));
    }
    return true;
  }

  // The next chunk of a chunked body into `out` (appended); false at the
  // last chunk, EOF, error or `deadline`.
  bool readChunk(Clock::time_point deadline, std::string& out) {
    size_t nl;
    while ((nl = buf_.find("\r\n")) == std::string::npos) {
      if (!fill(deadline)) return false;
    }
    size_t size = size_t(std::strtoull(buf_.c_str(), nullptr, 16));
    while (buf_.size() < nl + 2 + size + 2) {
      if (!fill(deadline)) return false;
    }
    out.append(buf_, nl + 2, size);
    buf_.erase(0, nl + 2 + size + 2);
    return size > 0;
  }

  // A whole body: chunked, or contentLength bytes.
  bool readBody(Clock::time_point deadline, bool chunked, size_t contentLength, std::string& out) {
    if (chunked) {
      while (readChunk(deadline, out)) {
      }
      return Clock::now() < deadline;
    }
    while (buf_.size() < contentLength) {
      if (!fill(deadline)) return false;
    }
    out.assign(buf_, 0, contentLength);
    buf_.erase(0, contentLength);
    return true;
  }

 private:
  bool fill(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, int(std::min<int64_t>(left.count(), 1000))) <= 0) {
      return Clock::now() < deadline && fill(deadline);
    }
    char tmp[16384];
    ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buf_.append(tmp, size_t(n));
    return true;
  }

  int fd_ = -1;
  std::string buf_;
};

// The unsigned number after each `key` (e.g. "\"seq\":") in `text`.
std::vector<uint64_t> numbersAfter(const std::string& text, const std::string& key) {
  std::vector<uint64_t> out;
  for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + 1)) {
    out.push_back(std::strtoull(text.c_str() + at + key.size(), nullptr, 10));
  }
  return out;
}

// One HTTP follower's figures: latency per change, how many it saw, and
// why it stopped early ("" = it saw them all).
struct HttpFollower {
  std::vector<double> latency;
  uint64_t seen = 0;
  std::string error;
};

// Follows GET /v1/changes?feed=eventsource from `since` until it saw
// `writes` changes or `deadline`; `started` once the stream's start event
// arrived (or it failed).
void followEventSource(const std::string& address, uint64_t since, uint32_t page, uint64_t writes,
                       Clock::time_point deadline, CommitLog& commits, std::atomic<bool>& started,
                       HttpFollower& out) {
  auto fail = [&](std::string why) {
    out.error = "eventsource follower: " + std::move(why);
    started = true;
  };
  HttpConn c(address);
  if (!c.ok()) return fail("cannot connect to " + address);
  if (!c.send("GET /v1/changes?feed=eventsource&heartbeat=60000&limit=" + std::to_string(page) +
              "&since=" + std::to_string(since) + " HTTP/1.1\r\nHost: bench\r\n\r\n")) {
    return fail("cannot send");
  }
  int status = 0;
  bool chunked = false;
  size_t length = 0;
  if (!c.readHead(deadline, status, chunked, length)) return fail("no answer");
  if (status != 200 || !chunked) return fail("answered " + std::to_string(status));
  std::string text;
  while (out.seen < writes) {
    if (!c.readChunk(deadline, text)) return fail("the stream ended or timed out");
    auto now = Clock::now();
    size_t end;
    while ((end = text.find("\n\n")) != std::string::npos) {
      std::string event = text.substr(0, end);
      text.erase(0, end + 2);
      if (event.rfind("event: start", 0) == 0 ||
          event.find("\nevent: start") != std::string::npos) {
        started = true;
      }
      if (event.find("\nevent: change") == std::string::npos || event.rfind("id: ", 0) != 0) {
        continue;
      }
      uint64_t seq = std::strtoull(event.c_str() + 4, nullptr, 10);
      if (auto at = commits.of(seq)) out.latency.push_back(millis(now - *at));
      ++out.seen;
    }
  }
}

// Follows with GET /v1/changes?feed=longpoll from `since`, one request
// after another on one connection, until it saw `writes` changes or
// `deadline`.
void followLongpoll(const std::string& address, uint64_t since, uint32_t page, uint64_t writes,
                    Clock::time_point deadline, CommitLog& commits, std::atomic<bool>& started,
                    HttpFollower& out) {
  auto fail = [&](std::string why) {
    out.error = "longpoll follower: " + std::move(why);
    started = true;
  };
  HttpConn c(address);
  if (!c.ok()) return fail("cannot connect to " + address);
  while (out.seen < writes) {
    if (!c.send("GET /v1/changes?feed=longpoll&timeout=5000&limit=" + std::to_string(page) +
                "&since=" + std::to_string(since) + " HTTP/1.1\r\nHost: bench\r\n\r\n")) {
      return fail("cannot send");
    }
    started = true;
    int status = 0;
    bool chunked = false;
    size_t length = 0;
    std::string body;
    if (!c.readHead(deadline, status, chunked, length) ||
        !c.readBody(deadline, chunked, length, body)) {
      return fail("no answer in time");
    }
    auto now = Clock::now();
    if (status != 200) return fail("answered " + std::to_string(status) + ": " + body);
    for (uint64_t seq : numbersAfter(body, "\"seq\":")) {
      if (auto at = commits.of(seq)) out.latency.push_back(millis(now - *at));
      ++out.seen;
    }
    auto last = numbersAfter(body, "\"lastSeq\":");
    if (last.empty()) return fail("no lastSeq in " + body.substr(0, 200));
    since = last.back();
  }
}

WriteRequest put(const std::string& product, const std::string& author, uint32_t rating) {
  WriteRequest r;
  r.op = WriteOp::kPut;
  r.product = product;
  r.author = author;
  r.rating = rating;
  r.title = "feed benchmark";
  r.body = "a short body of a review written by the feed benchmark";
  return r;
}

// `count` new reviews, `window` writes in flight.
Status preload(Node& node, uint64_t count, uint32_t window) {
  std::mutex m;
  std::condition_variable cv;
  uint64_t outstanding = 0, failed = 0;
  std::string firstError;
  for (uint64_t i = 0; i < count; ++i) {
    {
      std::unique_lock lock(m);
      cv.wait(lock, [&] { return outstanding < window; });
      ++outstanding;
    }
    node.write(
        put("sku-" + std::to_string(i % 10'007), "u" + std::to_string(i), uint32_t(1 + i % 5)),
        [&](Result<ReviewView> r) {
          std::lock_guard lock(m);
          --outstanding;
          if (!r.ok() && failed++ == 0) firstError = r.error().toString();
          cv.notify_all();
        });
  }
  std::unique_lock lock(m);
  cv.wait(lock, [&] { return outstanding == 0; });
  if (failed > 0) {
    return makeError(ErrorCode::kInternal,
                     std::to_string(failed) + " preload writes failed, first: " + firstError);
  }
  return okStatus();
}

struct CatchUp {
  double embedded = 0;      // Node::changes, no docs
  double embeddedDocs = 0;  // Node::changes, docs
  double rpc = 0;           // ReviewStore.changes pages
  double rpcFollow = 0;     // ReviewStore.follow from 0
};

// Pages through the whole feed with `read(since)`; changes/s. Fails unless
// it saw exactly `expected` changes.
template <typename Read>
Result<double> catchUp(uint64_t expected, Read read) {
  uint64_t since = 0, seen = 0;
  auto start = Clock::now();
  for (;;) {
    Result<ChangesPage> page = read(since);
    if (!page.ok()) return page.error();
    seen += page->changes.size();
    if (page->changes.empty()) break;
    since = page->lastSeq;
  }
  double took = seconds(Clock::now() - start);
  if (seen != expected) {
    return makeError(ErrorCode::kInternal, "catch-up saw " + std::to_string(seen) +
                                               " changes, expected " + std::to_string(expected));
  }
  return double(seen) / took;
}

Result<CatchUp> runCatchUp(Node& node, uint64_t keys, uint32_t page) {
  CatchUp c;
  auto e = catchUp(keys, [&](uint64_t since) { return node.changes(since, page, false); });
  if (!e.ok()) return e.error();
  c.embedded = *e;
  auto d = catchUp(keys, [&](uint64_t since) { return node.changes(since, page, true); });
  if (!d.ok()) return d.error();
  c.embeddedDocs = *d;
  // The client's KJ loop belongs to one thread: this one, for both.
  auto client = api::Client::connect(node.rpcAddress());
  if (!client.ok()) return client.error();
  auto r = catchUp(keys, [&](uint64_t since) { return (*client)->changes(since, page, false); });
  if (!r.ok()) return r.error();
  c.rpc = *r;
  uint64_t seen = 0, last = node.lastSeq();
  Clock::time_point start;
  auto followed = (*client)->follow(
      0, false, page,
      [&](const ChangesPage& batch) {
        seen += batch.changes.size();
        return batch.lastSeq < last;
      },
      std::chrono::minutes(30), [&](const ChangesPage&) { start = Clock::now(); });
  if (!followed.ok()) return followed.error();
  if (seen != keys) {
    return makeError(ErrorCode::kInternal, "follow from 0 saw " + std::to_string(seen) +
                                               " changes, expected " + std::to_string(keys));
  }
  c.rpcFollow = double(seen) / seconds(Clock::now() - start);
  return c;
}

struct Latency {
  std::vector<double> commitToRpc, commitToEmbedded, writeToRpc;
  HttpFollower eventSource, longpoll;  // with --http
  uint64_t writes = 0;
  double offered = 0;  // writes/s actually issued
};

Result<Latency> runLatency(Node& node, CommitLog& commits, const FeedBenchOptions& o) {
  Latency out;
  const uint64_t writes = std::max<uint64_t>(1, uint64_t(o.rate * o.seconds));
  const uint64_t startSeq = node.lastSeq();
  // Authors "late-<i>": when each write was issued, by author.
  std::mutex issuedMu;
  std::unordered_map<std::string, Clock::time_point> issued;
  commits.record(true);

  // The embedded follower: woken by subscribe, reads on its own thread.
  std::mutex wakeMu;
  std::condition_variable wake;
  uint64_t wokenTo = startSeq;
  bool stop = false;
  uint64_t subscription = node.subscribe([&](uint64_t last) {
    std::lock_guard lock(wakeMu);
    wokenTo = last;
    wake.notify_one();
  });
  std::vector<double> embeddedLat;
  uint64_t embeddedSeen = 0;
  std::string embeddedError;
  std::thread embedded([&] {
    uint64_t since = startSeq;
    for (;;) {
      {
        std::unique_lock lock(wakeMu);
        wake.wait(lock, [&] { return stop || wokenTo > since; });
        if (stop && wokenTo <= since) return;
      }
      for (;;) {
        auto page = node.changes(since, o.page, false);
        if (!page.ok()) {
          embeddedError = page.error().toString();
          return;
        }
        auto now = Clock::now();
        for (const auto& c : page->changes) {
          if (auto at = commits.of(c.seq)) embeddedLat.push_back(millis(now - *at));
          ++embeddedSeen;
        }
        since = page->lastSeq;
        if (page->changes.size() < o.page) break;
      }
    }
  });

  // The RPC follower, on its own thread with its own client.
  std::atomic<bool> following{false};
  std::vector<double> rpcLat, writeLat;
  uint64_t rpcSeen = 0;
  Status rpcStatus = okStatus();
  std::thread rpc([&] {
    auto client = api::Client::connect(node.rpcAddress());
    if (!client.ok()) {
      rpcStatus = client.error();
      following = true;
      return;
    }
    rpcStatus = (*client)->follow(
        startSeq, false, o.page,
        [&](const ChangesPage& batch) {
          auto now = Clock::now();
          for (const auto& c : batch.changes) {
            if (auto at = commits.of(c.seq)) rpcLat.push_back(millis(now - *at));
            std::lock_guard lock(issuedMu);
            auto it = issued.find(c.author);
            if (it != issued.end()) writeLat.push_back(millis(now - it->second));
            ++rpcSeen;
          }
          return rpcSeen < writes;  // each write is a new review: one change each
        },
        std::chrono::milliseconds(int64_t(o.seconds * 1000) + 60'000),
        [&](const ChangesPage&) { following = true; });
    following = true;
  });
  while (!following.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));

  // The HTTP followers (--http), each on its own thread and connection.
  std::atomic<bool> esStarted{!o.http}, lpStarted{!o.http};
  std::thread eventSource, longpoll;
  if (o.http) {
    auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(o.seconds * 1000) + 60'000);
    std::string address = node.httpAddress();
    eventSource = std::thread([&, address, deadline] {
      followEventSource(address, startSeq, o.page, writes, deadline, commits, esStarted,
                        out.eventSource);
    });
    longpoll = std::thread([&, address, deadline] {
      followLongpoll(address, startSeq, o.page, writes, deadline, commits, lpStarted, out.longpoll);
    });
  }
  while (!esStarted.load() || !lpStarted.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }

  // The writer: one new review every 1/rate s, on schedule.
  std::mutex m;
  std::condition_variable cv;
  uint64_t acked = 0, failed = 0;
  auto interval =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / o.rate));
  auto start = Clock::now();
  for (uint64_t i = 0; i < writes; ++i) {
    std::this_thread::sleep_until(start + interval * int64_t(i));
    std::string author = "late-" + std::to_string(i);
    {
      std::lock_guard lock(issuedMu);
      issued[author] = Clock::now();
    }
    node.write(put("feed-late", author, 3), [&](Result<ReviewView> r) {
      std::lock_guard lock(m);
      ++acked;
      if (!r.ok()) ++failed;
      cv.notify_all();
    });
  }
  {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return acked == writes; });
  }
  out.offered = double(writes) / seconds(Clock::now() - start);
  rpc.join();
  if (eventSource.joinable()) eventSource.join();
  if (longpoll.joinable()) longpoll.join();
  node.unsubscribe(subscription);
  {
    std::lock_guard lock(wakeMu);
    stop = true;
    wake.notify_one();
  }
  embedded.join();
  commits.record(false);
  if (failed > 0) return makeError(ErrorCode::kInternal, std::to_string(failed) + " writes failed");
  if (!rpcStatus.ok()) return rpcStatus.error();
  if (!embeddedError.empty()) return makeError(ErrorCode::kInternal, embeddedError);
  if (rpcSeen != writes || embeddedSeen != writes) {
    return makeError(ErrorCode::kInternal, "followers saw " + std::to_string(rpcSeen) +
                                               " (rpc) and " + std::to_string(embeddedSeen) +
                                               " (embedded) of " + std::to_string(writes) +
                                               " changes");
  }
  for (const HttpFollower* f : {&out.eventSource, &out.longpoll}) {
    if (!f->error.empty()) return makeError(ErrorCode::kInternal, f->error);
  }
  if (o.http && (out.eventSource.seen != writes || out.longpoll.seen != writes)) {
    return makeError(ErrorCode::kInternal,
                     "HTTP followers saw " + std::to_string(out.eventSource.seen) +
                         " (eventsource) and " + std::to_string(out.longpoll.seen) +
                         " (longpoll) of " + std::to_string(writes) + " changes");
  }
  out.writes = writes;
  out.commitToRpc = std::move(rpcLat);
  out.commitToEmbedded = std::move(embeddedLat);
  out.writeToRpc = std::move(writeLat);
  return out;
}

std::string figures(const char* name, const std::vector<double>& v) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "\"%s\":{\"count\":%zu,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f}", name,
                v.size(), percentile(v, 0.5), percentile(v, 0.99), percentile(v, 1.0));
  return buf;
}

int runFeedBench(const FeedBenchOptions& o) {
  std::string root = o.dir.empty() ? makeTempDir() : o.dir;
  if (root.empty()) {
    std::fprintf(stderr, "chorus-bench feed: cannot create a temporary directory\n");
    return 1;
  }
  int code = 0;
  {
    auto commits = std::make_shared<CommitLog>();
    Node::Options no;
    no.nodeId = "feed-bench";
    no.dataDir = root + "/node";
    no.listen = "127.0.0.1:0";
    if (o.http) no.httpListen = "127.0.0.1:0";
    no.rpc.noAuth = true;
    no.rpc.maxCallsPerSecond = 0;
    no.store.unsafeNoSync = o.unsafeNoSync;
    no.store.onFeedAdvanced = [commits](uint64_t last) { commits->committed(last); };
    auto node = Node::open(std::move(no));
    Result<CatchUp> catchup = makeError(ErrorCode::kInternal, "not run");
    Result<Latency> latency = makeError(ErrorCode::kInternal, "not run");
    double preloadSeconds = 0;
    if (!node.ok()) {
      std::fprintf(stderr, "chorus-bench feed: %s\n", node.error().toString().c_str());
      code = 1;
    } else {
      std::fprintf(stderr, "chorus-bench feed: preloading %llu reviews\n",
                   static_cast<unsigned long long>(o.keys));
      auto t0 = Clock::now();
      Status loaded = preload(**node, o.keys, o.window);
      preloadSeconds = seconds(Clock::now() - t0);
      if (!loaded.ok()) {
        catchup = loaded.error();
      } else {
        std::fprintf(stderr, "chorus-bench feed: catch-up from since=0\n");
        catchup = runCatchUp(**node, o.keys, o.page);
        if (catchup.ok()) {
          std::fprintf(stderr, "chorus-bench feed: %.0f writes/s for %.1f s with %d followers\n",
                       o.rate, o.seconds, o.http ? 4 : 2);
          latency = runLatency(**node, *commits, o);
        }
      }
      if (!catchup.ok() || !latency.ok()) {
        std::fprintf(stderr, "chorus-bench feed: %s\n",
                     (!catchup.ok() ? catchup.error() : latency.error()).toString().c_str());
        code = 1;
      }
    }
    if (code == 0) {
      const CatchUp& c = *catchup;
      const Latency& l = *latency;
      double p50 = percentile(l.commitToRpc, 0.5), p99 = percentile(l.commitToRpc, 0.99);
      if (o.json) {
        std::printf(
            "{\"bench\":\"feed\",\"keys\":%llu,\"page\":%u,\"rate\":%.1f,\"latency_phase_s\":%.2f,"
            "\"durable\":%s,\"ops_per_s\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
            "\"preload_s\":%.2f,\"catchup\":{\"embedded_changes_per_s\":%.1f,"
            "\"embedded_docs_changes_per_s\":%.1f,\"rpc_changes_per_s\":%.1f,"
            "\"rpc_follow_changes_per_s\":%.1f},\"latency\":{\"writes\":%llu,"
            "\"offered_writes_per_s\":%.1f,%s,%s,%s%s}}\n",
            static_cast<unsigned long long>(o.keys), o.page, o.rate, o.seconds,
            o.unsafeNoSync ? "false" : "true", c.rpcFollow, p50, p99, preloadSeconds, c.embedded,
            c.embeddedDocs, c.rpc, c.rpcFollow, static_cast<unsigned long long>(l.writes),
            l.offered, figures("commit_to_rpc_follower", l.commitToRpc).c_str(),
            figures("commit_to_embedded_follower", l.commitToEmbedded).c_str(),
            figures("write_to_rpc_follower", l.writeToRpc).c_str(),
            o.http ? ("," + figures("commit_to_http_eventsource", l.eventSource.latency) + "," +
                      figures("commit_to_http_longpoll", l.longpoll.latency))
                         .c_str()
                   : "");
      } else {
        std::printf("feed bench: %llu keys (preloaded in %.1f s), pages of %u, %s\n",
                    static_cast<unsigned long long>(o.keys), preloadSeconds, o.page,
                    o.unsafeNoSync ? "--unsafe-no-sync" : "durable");
        std::printf("catch-up from since=0 (changes/s; target >= 100,000):\n");
        std::printf("  Node::changes               %12.0f\n", c.embedded);
        std::printf("  Node::changes, with docs    %12.0f\n", c.embeddedDocs);
        std::printf("  RPC changes pages           %12.0f\n", c.rpc);
        std::printf("  RPC follow                  %12.0f\n", c.rpcFollow);
        std::printf("follower latency, %llu writes at %.0f/s (target p99 <= 10 ms):\n",
                    static_cast<unsigned long long>(l.writes), l.offered);
        auto row = [](const char* name, const std::vector<double>& v) {
          std::printf("  %-28s p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms\n", name,
                      percentile(v, 0.5), percentile(v, 0.99), percentile(v, 1.0));
        };
        row("commit -> RPC follower", l.commitToRpc);
        row("commit -> embedded follower", l.commitToEmbedded);
        row("write -> RPC follower", l.writeToRpc);
        if (o.http) {
          row("commit -> HTTP eventsource", l.eventSource.latency);
          row("commit -> HTTP longpoll", l.longpoll.latency);
        }
      }
    }
  }
  if (o.dir.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(root, ignored);
  }
  return code;
}

}  // namespace

// Registers `feed` on chorus-bench's command line.
void addFeedBench(CLI::App& app, int& exitCode) {
  auto options = std::make_shared<FeedBenchOptions>();
  auto* sub = app.add_subcommand(
      "feed",
      "The change feed: catch-up from since=0 (changes/s) and follower latency (commit to "
      "callback) at a write rate");
  sub->add_option("--keys,-n", options->keys, "Reviews preloaded (the feed's size)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{100'000'000}));
  sub->add_option("--page", options->page, "Changes per page and per follow batch, 1-1000")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1000u));
  sub->add_option("--window", options->window, "Preload writes in flight")
      ->capture_default_str()
      ->check(CLI::Range(1u, 100'000u));
  sub->add_option("--rate", options->rate, "Writes/s in the latency phase")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 100'000.0));
  sub->add_option("--seconds", options->seconds, "Length of the latency phase")
      ->capture_default_str()
      ->check(CLI::Range(0.01, 3600.0));
  sub->add_flag("--unsafe-no-sync", options->unsafeNoSync,
                "Skip fsync at commit (MDB_NOSYNC): for quick runs only");
  sub->add_flag("--http", options->http,
                "Also follow over the node's HTTP API on 127.0.0.1: GET /v1/changes as an "
                "eventsource stream and as a longpoll loop, each on its own connection");
  sub->add_option("--dir", options->dir, "Data directory (default: a fresh temporary one)");
  sub->add_flag("--json", options->json, "One JSON object on stdout");
  sub->callback([options, &exitCode] { exitCode = runFeedBench(*options); });
}

}  // namespace chorus::bench
