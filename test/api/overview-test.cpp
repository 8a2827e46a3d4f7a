// api/http/overview.h in-process: three clustered nodes with RPC servers,
// the overview of one of them, partition and heal across them.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <thread>

#include "../cluster/json.h"
#include "api/http/embedded.h"
#include "api/http/overview.h"
#include "api/node.h"
#include "gossip/keyring.h"
#include "temp-dir.h"

using chorus::ErrorCode;
using chorus::Node;
using chorus::api::http::Overview;
using chorus::test::Json;
using chorus::test::TempDir;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<Node> openNode(const std::string& dir, const std::string& id,
                               std::vector<std::string> seeds, const std::string& region) {
  Node::Options o;
  o.nodeId = id;
  o.dataDir = dir;
  o.listen = "127.0.0.1:0";
  o.rpc.noAuth = true;
  o.store.unsafeNoSync = true;
  o.cluster.listen = "127.0.0.1:0";
  static const std::string key = chorus::gossip::generateClusterKey();
  o.cluster.keys = {key};
  o.cluster.seeds = std::move(seeds);
  o.cluster.region = region;
  o.cluster.antiEntropyInterval = 100ms;
  o.cluster.probeInterval = 200ms;
  o.cluster.gossipInterval = 50ms;
  auto node = Node::open(std::move(o));
  REQUIRE_MESSAGE(node.ok(), node.error().toString());
  return std::move(node).value();
}

struct Three {
  TempDir tmp;
  std::unique_ptr<Node> a, b, c;
  Three() {
    a = openNode(tmp.sub("a"), "a", {}, "us");
    b = openNode(tmp.sub("b"), "b", {a->cluster()->address()}, "us");
    c = openNode(tmp.sub("c"), "c", {a->cluster()->address()}, "eu");
    // a knows both, with their RPC addresses.
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      auto v = a->clusterView();
      REQUIRE(v.ok());
      size_t known = 0;
      for (const auto& m : v->members) known += m.rpcAddress.empty() ? 0 : 1;
      if (known == 2) return;
      std::this_thread::sleep_for(20ms);
    }
    FAIL("a did not learn b and c within 10 s");
  }
};

Json parsed(const chorus::Result<std::string>& r) {
  REQUIRE_MESSAGE(r.ok(), r.error().toString());
  auto j = Json::parse(*r);
  REQUIRE_MESSAGE(j.has_value(), "not JSON: " << *r);
  return *j;
}

const Json& nodeOf(const Json& overview, const std::string& id) {
  for (const auto& n : overview["nodes"].items()) {
    if (n["nodeId"].str() == id) return n;
  }
  FAIL("no node " << id << " in the overview");
  static Json none;
  return none;
}

// Polls `o` (bounded) until `done` holds for its JSON; that JSON.
Json waitOverview(Overview& o, const std::function<bool(const Json&)>& done, const char* what) {
  auto deadline = std::chrono::steady_clock::now() + 15s;
  Json last;
  while (std::chrono::steady_clock::now() < deadline) {
    last = parsed(o.json(""));
    if (done(last)) return last;
    std::this_thread::sleep_for(50ms);
  }
  FAIL("the overview did not show " << what << " within 15 s");
  return last;
}

std::vector<std::string> strings(const Json& array) {
  std::vector<std::string> out;
  for (const auto& s : array.items()) out.push_back(s.str());
  return out;
}

// A loopback port nothing listens on (bound, then closed).
std::string closedPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  socklen_t len = sizeof sa;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0);
  ::close(fd);
  return "127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
}

}  // namespace

TEST_CASE("overview: only listed addresses are asked; the others are shown, not asked") {
  Three t;
  // Only b is listed: c is a member a knows, but the token never goes to
  // the address c advertises over gossip.
  Overview o(*t.a, {.nodes = {t.b->rpcAddress()}, .timeout = 2s});
  Json j = parsed(o.json(""));
  CHECK(j["servedBy"].str() == "a");
  REQUIRE(j["nodes"].size() == 3);
  const Json& a = nodeOf(j, "a");
  CHECK(a["self"].boolean());
  CHECK(a["reachable"].boolean());
  CHECK(a["region"].str() == "us");
  CHECK(a["merkleRoot"].str().size() == 2 * sizeof(chorus::storage::Hash));
  const Json& b = nodeOf(j, "b");
  CHECK(b["asked"].boolean());
  CHECK(b["reachable"].boolean());
  CHECK(b["rpcAddress"].str() == t.b->rpcAddress());
  CHECK(b.has("writes"));
  const Json& c = nodeOf(j, "c");
  CHECK_FALSE(c["asked"].boolean());
  CHECK_FALSE(c["reachable"].boolean());
  CHECK(c["region"].str() == "eu");
  CHECK(c["advertisedRpcAddress"].str() == t.c->rpcAddress());
  CHECK(c["error"]["message"].str().find("--overview-nodes") != std::string::npos);
  CHECK(c["seenBy"].has("state"));
  CHECK(strings(j["notAsked"]) == std::vector<std::string>{"c"});
  CHECK_FALSE(j["agree"].boolean());  // c's data is unknown

  // A partition that needs c changes nothing.
  auto refused = o.partition({{"c"}, {"a", "b"}}, "");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == ErrorCode::kInvalidArgument);
  CHECK(refused.error().message.rfind("a: c not asked", 0) == 0);
  CHECK(t.a->clusterView()->partitioned.empty());
  CHECK(t.b->clusterView()->partitioned.empty());

  // A listed address where nothing answers is reported, not fatal.
  std::string dead = closedPort();
  Overview withDead(*t.a, {.nodes = {t.b->rpcAddress(), t.c->rpcAddress(), dead}, .timeout = 1s});
  Json d = parsed(withDead.json(""));
  REQUIRE(d["nodes"].size() == 4);
  const Json& gone = nodeOf(d, dead);
  CHECK(gone["asked"].boolean());
  CHECK_FALSE(gone["reachable"].boolean());
  CHECK(gone["error"]["code"].str() == "unavailable");
  CHECK(strings(d["unreachable"]) == std::vector<std::string>{dead});
}

TEST_CASE("overview: partition into two groups, roots diverge, heal, they agree") {
  Three t;
  Overview o(*t.a, {.nodes = {t.b->rpcAddress(), t.c->rpcAddress()}, .timeout = 2s});
  Json j = waitOverview(
      o, [](const Json& x) { return x["agree"].boolean(); }, "agreement at start");
  REQUIRE(j["groups"].size() == 1);
  CHECK(strings(j["groups"][0]["nodes"]) == std::vector<std::string>{"a", "b", "c"});

  // Input errors name the field and change nothing.
  for (const auto& bad : std::vector<std::vector<std::vector<std::string>>>{
           {{"a"}}, {{"a"}, {}}, {{"a"}, {"zz"}}, {{"a", "b"}, {"b"}}, {{"a"}, {"b"}, {"c"}}}) {
    auto r = o.partition(bad, "");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == ErrorCode::kInvalidArgument);
    CHECK((r.error().message.rfind("a: ", 0) == 0 || r.error().message.rfind("b: ", 0) == 0));
  }
  CHECK(t.a->clusterView()->partitioned.empty());

  // Region names stand for their members: "eu" is c.
  Json p = parsed(o.partition({{"eu"}, {"a", "b"}}, ""));
  CHECK(strings(p["partitioned"]["c"]) == std::vector<std::string>{"a", "b"});
  CHECK(strings(p["partitioned"]["a"]) == std::vector<std::string>{"c"});
  CHECK(t.c->clusterView()->partitioned == std::vector<std::string>{"a", "b"});
  CHECK(t.b->clusterView()->partitioned == std::vector<std::string>{"c"});
  REQUIRE(t.a->put("p1", "ann", 5, "on a", "").ok());
  REQUIRE(t.c->put("p2", "bob", 1, "on c", "").ok());
  j = waitOverview(
      o,
      [](const Json& x) {
        return x["groups"].size() == 2 && nodeOf(x, "a")["keys"].u64() == 1 &&
               nodeOf(x, "b")["keys"].u64() == 1;
      },
      "two groups");
  CHECK_FALSE(j["agree"].boolean());
  CHECK(strings(j["groups"][0]["nodes"]) == std::vector<std::string>{"a", "b"});
  CHECK(strings(j["groups"][1]["nodes"]) == std::vector<std::string>{"c"});
  CHECK(strings(nodeOf(j, "a")["partitioned"]) == std::vector<std::string>{"c"});

  // A new partition replaces the old one: b alone now; c is healed.
  Json q = parsed(o.partition({{"b"}, {"a", "c"}}, ""));
  CHECK(q["partitioned"].size() == 3);
  CHECK(t.c->clusterView()->partitioned == std::vector<std::string>{"b"});

  Json h = parsed(o.heal(""));
  CHECK(strings(h["healed"]) == std::vector<std::string>{"a", "b", "c"});
  CHECK(h["notAsked"].size() == 0);
  for (auto* n : {t.a.get(), t.b.get(), t.c.get()}) CHECK(n->clusterView()->partitioned.empty());
  j = waitOverview(
      o, [](const Json& x) { return x["agree"].boolean(); }, "agreement after heal");
  CHECK(j["groups"][0]["keys"].u64() == 2);
}

TEST_CASE("overview: a listed node that never answers is reported; too many at once are refused") {
  TempDir tmp;
  auto a = openNode(tmp.sub("a"), "a", {}, "us");
  // A socket that listens but never accepts: connecting succeeds, nothing
  // ever answers.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  REQUIRE(::listen(fd, 64) == 0);
  socklen_t len = sizeof sa;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0);
  std::string hung = "127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
  Overview o(*a, {.nodes = {hung}, .timeout = 700ms});

  constexpr int kCallers = Overview::kMaxConcurrent + 4;
  std::vector<std::optional<chorus::Result<std::string>>> answers(kCallers);
  std::vector<std::thread> callers;
  for (int i = 0; i < kCallers; ++i)
    callers.emplace_back([&, i] { answers[i].emplace(o.json("")); });
  for (auto& t : callers) t.join();
  ::close(fd);
  int overloaded = 0, answered = 0;
  for (auto& r : answers) {
    if (!r->ok()) {
      CHECK(r->error().code == ErrorCode::kOverloaded);
      ++overloaded;
      continue;
    }
    ++answered;
    Json j = parsed(*r);
    const Json& h = nodeOf(j, hung);
    CHECK_FALSE(h["reachable"].boolean());
    CHECK(h["error"]["code"].str() == "unavailable");
    CHECK(strings(j["unreachable"]) == std::vector<std::string>{hung});
  }
  CHECK(answered >= 1);
  CHECK(answered <= Overview::kMaxConcurrent);
  CHECK(overloaded >= kCallers - Overview::kMaxConcurrent);
}

TEST_CASE("overview: the dashboard's files are compiled in") {
  using chorus::api::http::dashboardFile;
  const auto* index = dashboardFile("/dashboard/index.html");
  REQUIRE(index != nullptr);
  CHECK(index->contentType == "text/html; charset=utf-8");
  CHECK(index->bytes.find("/dashboard/app.js") != std::string_view::npos);
  REQUIRE(dashboardFile("/dashboard/app.js") != nullptr);
  CHECK(dashboardFile("/dashboard/app.js")->contentType.rfind("text/javascript", 0) == 0);
  REQUIRE(dashboardFile("/dashboard/style.css") != nullptr);
  CHECK(dashboardFile("/dashboard/nope.js") == nullptr);
  CHECK(dashboardFile("/dashboard/") == nullptr);
}

TEST_CASE("overview: --overview-nodes items") {
  std::vector<std::string> out;
  CHECK(chorus::api::http::addOverviewNodes("127.0.0.1:7400, 127.0.0.1:7401 127.0.0.1:7400", out)
            .ok());
  CHECK(out == std::vector<std::string>{"127.0.0.1:7400", "127.0.0.1:7401"});
  for (const char* bad : {"host", ":7400", "h:", "h:0", "h:70000", "h:12a"}) {
    auto s = chorus::api::http::addOverviewNodes(bad, out);
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().code == ErrorCode::kInvalidArgument);
  }
}
