// The HTTP/JSON API (api/http/): its JSON mapping and routing as pure
// functions, then a node serving it in-process (Node::Options::httpListen)
// over real connections on 127.0.0.1: auth and roles, the limits it shares
// with RPC (body size, rate, connection tiers, watches), reads on the read
// pool, watch streams, metrics. test/api/http-openapi-test.py checks every
// route against the OpenAPI document.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "api/auth.h"
#include "api/chorus.capnp.h"
#include "api/http/json.h"
#include "api/http/routes.h"
#include "api/metrics.h"
#include "api/node.h"
#include "api/wire.h"
#include "cluster/json.h"
#include "http-client.h"
#include "storage/backup.h"
#include "temp-dir.h"

using chorus::Node;
using chorus::api::Metrics;
using chorus::test::HttpAnswer;
using chorus::test::HttpConnection;
using chorus::test::Json;
using chorus::test::TempDir;
using namespace std::chrono_literals;
namespace http = chorus::api::http;

namespace {

Json parse(const HttpAnswer& a) {
  auto j = Json::parse(a.body);
  REQUIRE_MESSAGE(j.has_value(), "not JSON: " << a.body);
  return *j;
}

// A node serving HTTP (and RPC, which it needs). `principals`: id -> roles;
// none = --no-auth.
struct HttpNode {
  TempDir tmp;
  std::map<std::string, std::string> tokens;
  std::unique_ptr<Node> node;
  std::string tokensPath;

  explicit HttpNode(const std::map<std::string, std::string>& principals = {},
                    chorus::RpcLimits limits = {}) {
    Node::Options o;
    o.nodeId = "http-node";
    o.dataDir = tmp.sub("data");
    o.listen = "127.0.0.1:0";
    o.httpListen = "127.0.0.1:0";
    o.rpc = limits;
    o.store.unsafeNoSync = true;
    if (principals.empty()) {
      o.rpc.noAuth = true;
    } else {
      std::string text;
      for (const auto& [id, roles] : principals) {
        tokens[id] = chorus::api::newToken();
        text += *chorus::api::tokenLine(id, roles, tokens[id]) + "\n";
      }
      tokensPath = tmp.sub("tokens");
      writeTokens(text);
      o.rpc.tokensFile = tokensPath;
    }
    auto opened = Node::open(std::move(o));
    REQUIRE_MESSAGE(opened.ok(), opened.error().toString());
    node = std::move(opened).value();
    REQUIRE(!node->httpAddress().empty());
  }
  void writeTokens(const std::string& text) {
    FILE* f = std::fopen(tokensPath.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fputs(text.c_str(), f);
    std::fclose(f);
    REQUIRE(::chmod(tokensPath.c_str(), 0600) == 0);
  }
  std::string bearer(const std::string& who) {
    return "Authorization: Bearer " + tokens.at(who) + "\r\n";
  }
  std::unique_ptr<HttpConnection> connect() {
    auto c = std::make_unique<HttpConnection>(node->httpAddress());
    REQUIRE(c->connected());
    return c;
  }
};

}  // namespace

// ---- pure parts ----------------------------------------------------------------

TEST_CASE("http json: answers follow the schema; strings are escaped, bad UTF-8 replaced") {
  std::string s;
  http::appendJsonString(s, std::string("a\"b\\c\n\x01\xC3\xA9\xFF", 10));
  CHECK(s == "\"a\\\"b\\\\c\\n\\u0001\xC3\xA9\xEF\xBF\xBD\"");

  capnp::MallocMessageBuilder message;
  auto status = message.initRoot<chorus::api::wire::NodeStatus>();
  status.setNodeId("n1");
  status.setReplicaId(18446744073709551615ull);
  uint8_t root[16] = {0xab, 0x01};
  status.setMerkleRoot(kj::arrayPtr(root, 16));
  std::string out;
  http::appendJsonStruct(out, capnp::toDynamic(status.asReader()));
  CHECK(out.find("\"nodeId\":\"n1\"") != std::string::npos);
  CHECK(out.find("\"replicaId\":18446744073709551615") != std::string::npos);
  CHECK(out.find("\"merkleRoot\":\"ab010000000000000000000000000000\"") != std::string::npos);
  CHECK(out.find("\"stats\"") == std::string::npos);        // an unset struct is left out
  CHECK(out.find("\"region\":\"\"") != std::string::npos);  // unset text: ""

  auto review = message.initRoot<chorus::api::wire::Review>();
  review.setVisibility(chorus::api::wire::Visibility::FLAGGED);
  out.clear();
  http::appendJsonStruct(out, capnp::toDynamic(review.asReader()));
  CHECK(out.find("\"visibility\":\"flagged\"") != std::string::npos);
  CHECK(out.find("\"tags\":[]") != std::string::npos);
}

TEST_CASE("http json: the fast encoders say exactly what the schema's mapping says") {
  chorus::ReviewView r;
  r.product = "p\"1";
  r.author = "ann";
  r.rating = 4;
  r.title = "caf\xC3\xA9";
  r.body = "line\nbreak \xF0\x9F\x98\x80";
  r.editedAtMillis = 1796588400342;
  r.tags = {"fast", "quiet"};
  r.helpful = 7;
  r.visibility = chorus::crdt::Visibility::kHidden;
  r.moderationReason = "spam";
  r.reply = "thanks";
  r.deleted = true;
  chorus::ReviewView plain;
  plain.product = "p";
  plain.author = "bob";
  chorus::ReviewPage page{{r, plain}, "cursor/1"};
  chorus::storage::ProductSummary summary;
  summary.count = 3;
  summary.histogram = {1, 0, 0, 1, 1};
  summary.ratingSum = 10;
  summary.helpfulTotal = 9;
  chorus::ProductPageView productPage{summary, page};
  namespace wire = chorus::api::wire;
  using chorus::api::toWire;
  auto schemaJson = [](auto results) { return http::resultsJson(capnp::toDynamic(results)); };
  capnp::MallocMessageBuilder m1, m2, m3, m4, m5, m6;
  auto get = m1.initRoot<wire::ReviewStore::GetResults>();
  toWire(r, get.initReview());
  CHECK(http::reviewResultsJson(r) == schemaJson(get.asReader()));
  auto put = m2.initRoot<wire::ReviewStore::PutResults>();  // every write's shape
  toWire(plain, put.initReview());
  plain.session = "s-1_\"x";
  put.setSession(plain.session);
  CHECK(http::writeResultsJson(plain) == schemaJson(put.asReader()));
  capnp::MallocMessageBuilder m7, m8;
  auto erase = m7.initRoot<wire::ReviewStore::EraseResults>();
  erase.setSession("tok");
  CHECK(http::eraseResultsJson("tok") == schemaJson(erase.asReader()));
  chorus::ChangesPage feed;
  feed.changes.push_back(chorus::FeedChange{7, "p\"1", "ann", false, r});
  feed.changes.push_back(chorus::FeedChange{9, "p", "bob", true, std::nullopt});
  feed.lastSeq = 12;
  feed.replicaId = 18446744073709551615ull;
  auto changes = m8.initRoot<wire::ReviewStore::ChangesResults>();
  auto entries = changes.initChanges(2);
  for (unsigned i = 0; i < 2; ++i) toWire(feed.changes[i], entries[i]);
  changes.setLastSeq(feed.lastSeq);
  changes.setReplicaId(feed.replicaId);
  CHECK(http::changesResultsJson(feed) == schemaJson(changes.asReader()));
  auto list = m3.initRoot<wire::ReviewStore::ListResults>();
  toWire(page, list.initPage());
  CHECK(http::pageResultsJson(page) == schemaJson(list.asReader()));
  auto byAuthor = m4.initRoot<wire::ReviewStore::ByAuthorResults>();
  toWire(chorus::ReviewPage{}, byAuthor.initPage());
  CHECK(http::pageResultsJson(chorus::ReviewPage{}) == schemaJson(byAuthor.asReader()));
  auto sum = m5.initRoot<wire::ReviewStore::SummaryResults>();
  toWire("p\"1", summary, sum.initSummary());
  CHECK(http::summaryResultsJson("p\"1", summary) == schemaJson(sum.asReader()));
  auto both = m6.initRoot<wire::ReviewStore::PageResults>();
  toWire("p", summary, both.initSummary());
  toWire(page, both.initPage());
  CHECK(http::productPageResultsJson("p", productPage) == schemaJson(both.asReader()));
}

TEST_CASE("http json: request bodies decode into the params, or name what is wrong") {
  capnp::MallocMessageBuilder message;
  auto put = [&](const std::string& body) {
    auto p = message.initRoot<chorus::api::wire::ReviewStore::PutParams>();
    auto bad =
        http::decodeJsonBody(body, capnp::toDynamic(p), {"rating", "title", "body"}, {"rating"});
    return std::make_pair(bad, p.asReader());
  };
  auto [ok, p] = put(R"({"rating": 4, "title": "caf\u00e9 \ud83d\ude00", "body":"x\/y"})");
  REQUIRE_FALSE(ok.has_value());
  // The error of decoding `body`, which must fail.
  auto err = [&](const std::string& body) {
    auto bad = put(body).first;
    REQUIRE_MESSAGE(bad.has_value(), body);
    return *bad;
  };
  CHECK(p.getRating() == 4);
  CHECK(std::string(p.getTitle().cStr()) == "caf\xC3\xA9 \xF0\x9F\x98\x80");
  CHECK(std::string(p.getBody().cStr()) == "x/y");
  CHECK(err("").field == "rating");  // empty = {}: rating is required
  CHECK(err(R"({"rating":4,"stars":1})").field == "stars");
  CHECK(err(R"({"rating":4,"rating":5})").message == "given twice");
  CHECK(err(R"({"rating":"4"})").field == "rating");
  CHECK(err(R"({"rating":256})").field == "rating");
  CHECK(err(R"({"rating":4.5})").field == "rating");
  CHECK(err(R"({"rating":4,"title":null})").field == "title");
  CHECK(err(R"([1])").message.find("JSON object") != std::string::npos);
  CHECK(err(R"({"rating":4} x)").message.find("not valid JSON") != std::string::npos);
  CHECK(err(R"({"rating":4,"title":"\ud800"})").message.find("surrogate") != std::string::npos);
  CHECK(err(R"({"rating":4,"title":")" + std::string(1, '\x01') + R"("})").field.empty());
  std::string deep(17, '[');
  CHECK(err(deep + std::string(17, ']')).message.find("nested deeper") != std::string::npos);

  auto moderate = message.initRoot<chorus::api::wire::ReviewStore::ModerateParams>();
  CHECK_FALSE(http::decodeJsonBody(R"({"visibility":"hidden"})", capnp::toDynamic(moderate),
                                   {"visibility", "reason"})
                  .has_value());
  CHECK(moderate.getVisibility() == chorus::api::wire::Visibility::HIDDEN);
  auto wrong = http::decodeJsonBody(R"({"visibility":"gone"})", capnp::toDynamic(moderate),
                                    {"visibility", "reason"});
  REQUIRE(wrong.has_value());
  CHECK(wrong->message.find("visible, hidden, flagged") != std::string::npos);
}

TEST_CASE("http routes: percent-decoded parameters, 404 and 405 with Allow, query strings") {
  auto m = http::findRoute(kj::HttpMethod::PUT, "/v1/products/p%3A1/reviews/ann/tags/a%2Fb");
  REQUIRE(m.route != nullptr);
  CHECK(m.route->op == http::Op::kTag);
  CHECK(m.param("product") == "p:1");
  CHECK(m.param("tag") == "a/b");
  CHECK_FALSE(m.invalid.has_value());

  auto q =
      http::findRoute(kj::HttpMethod::GET, "/v1/products/p/reviews?order=newest&cursor=a+b%2B");
  REQUIRE(q.route != nullptr);
  REQUIRE(q.query.size() == 2);
  CHECK(q.query[1].second == "a b+");

  auto bad = http::findRoute(kj::HttpMethod::GET, "/v1/products/p%zz/summary");
  REQUIRE(bad.invalid.has_value());
  CHECK(bad.invalid->field == "product");

  auto none = http::findRoute(kj::HttpMethod::GET, "/v1/nothing");
  CHECK(none.route == nullptr);
  CHECK(none.allow.empty());
  auto method = http::findRoute(kj::HttpMethod::POST, "/v1/products/p/reviews/a");
  CHECK(method.route == nullptr);
  CHECK(method.allow == "PUT, GET, DELETE");
  CHECK(http::percentDecode("%4", false) == std::nullopt);
}

// ---- a node -----------------------------------------------------------------------

TEST_CASE("http: --no-auth serves every route as admin; answers mirror the RPC results") {
  HttpNode n;
  auto c = n.connect();
  auto put = c->request("PUT", "/v1/products/p1/reviews/ann",
                        R"({"rating":5,"title":"Great","body":"Loved it"})");
  REQUIRE_MESSAGE(put.status == 200, put.body);
  CHECK(put.header("content-type") == "application/json");
  CHECK(parse(put)["review"]["title"].str() == "Great");
  // The same review through the embedded API: one store behind both.
  auto direct = n.node->get("p1", "ann");
  REQUIRE(direct.ok());
  CHECK(direct->rating == 5);
  // Keep-alive: several requests on one connection.
  for (int i = 0; i < 5; ++i) {
    auto page = c->request("GET", "/v1/products/p1/page?limit=20");
    REQUIRE(page.status == 200);
    auto j = parse(page);
    CHECK(j["summary"]["count"].u64() == 1);
    CHECK(j["page"]["reviews"].items().size() == 1);
  }
  CHECK(c->request("GET", "/v1/node/status").status == 200);  // admin, without a token
  CHECK(n.node->metrics().httpRequests(Metrics::kPut) == 1);
  CHECK(n.node->metrics().httpRequests(Metrics::kPage) == 5);
  CHECK(n.node->metrics().calls(Metrics::kPut) == 0);  // RPC's counters stay apart
  auto missing = c->request("GET", "/v1/products/p1/reviews/zed");
  CHECK(missing.status == 404);
  CHECK(missing.header("content-type") == "application/problem+json");
  CHECK(parse(missing)["code"].str() == "notFound");
  CHECK(n.node->metrics().httpErrors(Metrics::kGet) == 1);
  auto noRoute = c->request("GET", "/v1/nothing");
  CHECK(noRoute.status == 404);
  CHECK(parse(noRoute)["type"].str() == "urn:chorus:problem:noRoute");
  auto method = c->request("POST", "/v1/node/status");
  CHECK(method.status == 405);
  CHECK(method.header("allow") == "GET");
  auto malformed = n.connect();  // kj refuses it; the answer is still a problem document
  REQUIRE(malformed->sendRaw("GET /v1/node/status HTTP/1.1\r\nBad Header\r\n\r\n"));
  auto refused = malformed->read();
  CHECK(refused.status == 400);
  CHECK(refused.header("content-type") == "application/problem+json");
}

TEST_CASE("http: tokens, roles, revocation at a reload") {
  HttpNode n({{"ann", "writer"}, {"rita", "reader"}, {"root", "admin"}});
  auto c = n.connect();
  auto none = c->request("GET", "/v1/products/p1/summary");
  CHECK(none.status == 401);
  CHECK(none.header("www-authenticate") == "Bearer realm=\"chorus\"");
  CHECK(parse(none)["code"].str() == "unauthenticated");
  CHECK(c->request("GET", "/v1/products/p1/summary", "", "Authorization: Basic eDp5\r\n").status ==
        401);
  CHECK(c->request("GET", "/v1/products/p1/summary", "",
                   "Authorization: Bearer chorus_nottherightone\r\n")
            .status == 401);
  CHECK(n.node->metrics().authFailures() == 1);
  CHECK(c->request("GET", "/v1/openapi.json").status == 200);  // the document needs none

  auto mine = c->request("PUT", "/v1/products/p1/reviews/ann", R"({"rating":4})", n.bearer("ann"));
  CHECK(mine.status == 200);
  auto theirs =
      c->request("PUT", "/v1/products/p1/reviews/bob", R"({"rating":4})", n.bearer("ann"));
  CHECK(theirs.status == 403);
  CHECK(parse(theirs)["field"].str() == "author");
  CHECK(c->request("PUT", "/v1/products/p1/reviews/rita", R"({"rating":4})", n.bearer("rita"))
            .status == 403);
  CHECK(c->request("GET", "/v1/products/p1/reviews/ann", "", n.bearer("rita")).status == 200);
  CHECK(c->request("GET", "/v1/cluster", "", n.bearer("ann")).status == 403);
  CHECK(c->request("GET", "/v1/node/status", "", n.bearer("root")).status == 200);
  CHECK(n.node->get("p1", "bob").ok() == false);  // the refused write stored nothing

  // rita's token leaves the file: refused from the next request on.
  n.writeTokens(*chorus::api::tokenLine("ann", "writer", n.tokens["ann"]) + "\n");
  REQUIRE(n.node->reloadTokens().ok());
  CHECK(c->request("GET", "/v1/products/p1/reviews/ann", "", n.bearer("rita")).status == 401);
  CHECK(n.node->metrics().unauthenticatedConnections() == 1);  // `c` is a stranger again
  CHECK(c->request("GET", "/v1/products/p1/reviews/ann", "", n.bearer("ann")).status == 200);
  CHECK(n.node->metrics().unauthenticatedConnections() == 0);
}

TEST_CASE("http: POST /v1/node/backup answers the manifest; bad dirs are 400, non-admins 403") {
  HttpNode n({{"ann", "writer"}, {"root", "admin"}});
  auto c = n.connect();
  for (const char* author : {"ann", "bob", "cy"}) {
    REQUIRE(n.node->put("p1", author, 4, "t", "b").ok());
  }
  std::string dir = n.tmp.sub("backup");
  auto taken = c->request("POST", "/v1/node/backup", R"({"dir":")" + dir + "\"}", n.bearer("root"));
  REQUIRE_MESSAGE(taken.status == 200, taken.body);
  auto m = parse(taken)["manifest"];
  auto status = n.node->status();
  REQUIRE(status.ok());
  CHECK(m["nodeId"].str() == "http-node");
  CHECK(m["keys"].u64() == 3);
  CHECK(m["merkleRoot"].str() ==
        chorus::storage::hexOf(status->merkleRoot.data(), status->merkleRoot.size()));
  CHECK(m["fileBytes"].u64() > 0);
  CHECK(m["schemaVersion"].u64() > 0);
  auto onDisk = chorus::storage::verifyBackup(dir);  // the backup is there, and is whole
  REQUIRE_MESSAGE(onDisk.ok(), onDisk.error().toString());
  CHECK(m["checksum"].str() == chorus::storage::hexOf(onDisk->checksum.data(), 32));
  CHECK(n.node->metrics().httpRequests(Metrics::kBackup) == 1);

  auto again = c->request("POST", "/v1/node/backup", R"({"dir":")" + dir + "\"}", n.bearer("root"));
  CHECK(again.status == 400);  // not empty now
  CHECK(parse(again)["field"].str() == "dir");
  auto relative = c->request("POST", "/v1/node/backup", R"({"dir":"rel/dir"})", n.bearer("root"));
  CHECK(relative.status == 400);
  CHECK(parse(relative)["field"].str() == "dir");
  CHECK(c->request("POST", "/v1/node/backup", "{}", n.bearer("root")).status == 400);
  auto writer = c->request("POST", "/v1/node/backup", R"({"dir":")" + n.tmp.sub("other") + "\"}",
                           n.bearer("ann"));
  CHECK(writer.status == 403);
  CHECK(parse(writer)["code"].str() == "forbidden");
  CHECK(c->request("GET", "/v1/node/backup", "", n.bearer("root")).status == 405);
}

TEST_CASE("http: bodies over the limit are refused with 413, declared or chunked") {
  chorus::RpcLimits limits;
  limits.maxMessageBytes = 4096;
  HttpNode n({}, limits);
  auto c = n.connect();
  std::string big = R"({"rating":4,"body":")" + std::string(5000, 'x') + "\"}";
  auto declared = c->request("PUT", "/v1/products/p1/reviews/ann", big);
  CHECK(declared.status == 413);
  CHECK(parse(declared)["type"].str() == "urn:chorus:problem:contentTooLarge");
  auto c2 = n.connect();
  std::string chunked =
      "PUT /v1/products/p1/reviews/ann HTTP/1.1\r\nHost: t\r\n"
      "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 5; ++i) chunked += "400\r\n" + std::string(1024, ' ') + "\r\n";
  chunked += "0\r\n\r\n";
  REQUIRE(c2->sendRaw(chunked));
  CHECK(c2->read().status == 413);
  CHECK_FALSE(n.node->get("p1", "ann").ok());
  auto c3 = n.connect();
  CHECK(c3->request("PUT", "/v1/products/p1/reviews/ann", R"({"rating":4})").status == 200);
}

TEST_CASE("http: the per-connection rate limit answers 429 with Retry-After") {
  chorus::RpcLimits limits;
  limits.maxCallsPerSecond = 5;
  limits.callBurst = 5;
  HttpNode n({}, limits);
  auto c = n.connect();
  int ok = 0, limited = 0;
  HttpAnswer last;
  for (int i = 0; i < 8; ++i) {
    auto a = c->request("GET", "/v1/products/p1/summary");
    if (a.status == 200) ++ok;
    if (a.status == 429) {
      ++limited;
      last = a;
    }
  }
  CHECK(ok >= 5);
  CHECK(limited >= 1);
  CHECK(last.header("retry-after") == "1");
  CHECK(parse(last)["code"].str() == "overloaded");
  CHECK(n.node->metrics().rateLimitedCalls() >= 1);
  auto other = n.connect();  // per connection: another one is not limited
  CHECK(other->request("GET", "/v1/products/p1/summary").status == 200);
}

TEST_CASE("http: connections without a valid token are bounded and time out; token holders stay") {
  chorus::RpcLimits limits;
  limits.authTimeout = 500ms;
  limits.maxUnauthenticatedPerAddress = 2;
  limits.maxConnections = 1;
  HttpNode n({{"ann", "writer"}, {"bob", "writer"}}, limits);
  auto holder = n.connect();
  REQUIRE(holder->request("GET", "/v1/products/p/summary", "", n.bearer("ann")).status == 200);
  // A second token holder would pass maxConnections: refused, and it stays unauthenticated.
  auto second = n.connect();
  auto over = second->request("GET", "/v1/products/p/summary", "", n.bearer("bob"));
  CHECK(over.status == 429);
  CHECK(parse(over)["message"].str().find("--max-connections") != std::string::npos);
  // Strangers: a third from the same address evicts the oldest (`second`).
  auto s1 = n.connect();
  CHECK(s1->request("GET", "/v1/products/p/summary").status == 401);
  auto s2 = n.connect();
  CHECK(s2->request("GET", "/v1/products/p/summary").status == 401);
  CHECK(second->closedWithin(2s));
  CHECK(n.node->metrics().closedBy(Metrics::kEvicted) >= 1);
  // ... and one with no valid token is closed after authTimeout.
  CHECK(s1->closedWithin(3s));
  CHECK(n.node->metrics().closedBy(Metrics::kAuthTimeout) >= 1);
  // The token holder's connection outlived both.
  CHECK(holder->request("GET", "/v1/products/p/summary", "", n.bearer("ann")).status == 200);
}

TEST_CASE("http: --no-auth closes connections over maxConnections at accept") {
  chorus::RpcLimits limits;
  limits.maxConnections = 1;
  HttpNode n({}, limits);
  auto first = n.connect();
  REQUIRE(first->request("GET", "/v1/products/p/summary").status == 200);
  auto second = n.connect();
  CHECK(second->closedWithin(2s));
  CHECK(n.node->metrics().connectionsRefused() >= 1);
  CHECK(first->request("GET", "/v1/products/p/summary").status == 200);
}

TEST_CASE("http: reads run on the read pool, never on the loop thread") {
  std::mutex m;
  std::condition_variable cv;
  bool release = false, held = false;
  chorus::RpcLimits limits;
  limits.beforeRead = [&](const char* method, const std::string& key) {
    if (std::string(method) != "list" || key != "slow") return;
    std::unique_lock lock(m);
    held = true;
    cv.notify_all();
    cv.wait_for(lock, 10s, [&] { return release; });
  };
  HttpNode n({}, limits);
  auto slow = n.connect();
  REQUIRE(slow->sendRaw("GET /v1/products/slow/reviews HTTP/1.1\r\nHost: t\r\n\r\n"));
  {
    std::unique_lock lock(m);
    REQUIRE(cv.wait_for(lock, 10s, [&] { return held; }));
  }
  // The list is held on a read thread; the loop still answers others.
  auto other = n.connect();
  CHECK(other->request("GET", "/v1/node/health", "", "", 5s).status == 200);
  CHECK(other->request("PUT", "/v1/products/p/reviews/a", R"({"rating":3})", "", 5s).status == 200);
  {
    std::lock_guard lock(m);
    release = true;
  }
  cv.notify_all();
  CHECK(slow->read().status == 200);
}

TEST_CASE("http: watch streams a product's changes; a revoked token ends it; watches are counted") {
  chorus::RpcLimits limits;
  limits.maxWatches = 1;
  HttpNode n({{"rita", "reader"}, {"ann", "writer"}}, limits);
  auto w = n.connect();
  auto head = w->startStream("/v1/products/p1/watch?heartbeat=100", n.bearer("rita"));
  REQUIRE(head.status == 200);
  CHECK(head.body.find("Content-Type: text/event-stream") != std::string::npos);
  REQUIRE(w->readUntil("watching p1", 5s).has_value());
  // The node's one watch slot is taken.
  auto second = n.connect();
  CHECK(second->request("GET", "/v1/products/p2/watch", "", n.bearer("rita")).status == 429);
  CHECK(w->readUntil(": heartbeat", 5s).has_value());
  auto c = n.connect();
  REQUIRE(c->request("PUT", "/v1/products/p1/reviews/ann", R"({"rating":2,"title":"meh"})",
                     n.bearer("ann"))
              .status == 200);
  auto event = w->readUntil("\n\n", 5s);
  while (event && event->find("event: change") == std::string::npos) {
    event = w->readUntil("\n\n", 5s);  // heartbeats before it
  }
  REQUIRE(event.has_value());
  auto data = event->substr(event->find("data: ") + 6);
  auto change = Json::parse(data.substr(0, data.find('\n')));
  REQUIRE(change.has_value());
  CHECK((*change)["op"].str() == "put");
  CHECK((*change)["review"]["title"].str() == "meh");
  // rita's token goes: the stream ends with an `end` event, and the slot is free again.
  n.writeTokens(*chorus::api::tokenLine("ann", "writer", n.tokens["ann"]) + "\n");
  REQUIRE(n.node->reloadTokens().ok());
  auto end = w->readUntil("event: end", 5s);
  REQUIRE(end.has_value());
  CHECK(w->readUntil("unauthenticated", 5s).has_value());
  bool freed = false;
  for (int i = 0; i < 100 && !freed; ++i) {
    auto again = n.connect();
    auto a = again->startStream("/v1/products/p2/watch", n.bearer("ann"));
    freed = a.status == 200;
    if (!freed) std::this_thread::sleep_for(20ms);
  }
  CHECK(freed);
}

// ---- the change feed: GET /v1/changes ---------------------------------------------

namespace {
// The next event of a text/event-stream that is not a comment, as
// {event, id, data}; empty `event` at the deadline.
struct Event {
  std::string event, id, data;
};
Event nextEvent(HttpConnection& c, std::chrono::milliseconds timeout = 5s) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto block = c.readUntil("\n\n", std::chrono::duration_cast<std::chrono::milliseconds>(
                                         deadline - std::chrono::steady_clock::now()));
    if (!block) break;
    Event e;
    size_t at = 0;
    while (at < block->size()) {
      size_t nl = block->find('\n', at);
      std::string line = block->substr(at, nl - at);
      at = nl + 1;
      if (line.rfind("event: ", 0) == 0) e.event = line.substr(7);
      if (line.rfind("id: ", 0) == 0) e.id = line.substr(4);
      if (line.rfind("data: ", 0) == 0) e.data = line.substr(6);
    }
    if (!e.event.empty()) return e;  // else a heartbeat (or chunk framing)
  }
  return {};
}
}  // namespace

TEST_CASE("http changes: pages resume from lastSeq; since=now; docs; bad parameters are 400") {
  HttpNode n;
  auto c = n.connect();
  for (const char* author : {"a1", "a2", "a3", "a4", "a5"}) {
    REQUIRE(c->request("PUT", std::string("/v1/products/p1/reviews/") + author, R"({"rating":4})")
                .status == 200);
  }
  REQUIRE(c->request("DELETE", "/v1/products/p1/reviews/a1").status == 200);  // a1 moves last
  std::vector<std::string> seen;
  uint64_t since = 0, lastSeq = n.node->lastSeq();
  for (int page = 0; page < 10; ++page) {
    auto a = c->request("GET", "/v1/changes?since=" + std::to_string(since) + "&limit=2");
    REQUIRE_MESSAGE(a.status == 200, a.body);
    auto j = parse(a);
    CHECK(j["replicaId"].u64() != 0);
    if (j["changes"].items().empty()) {
      CHECK(j["lastSeq"].u64() == since);
      break;
    }
    CHECK(j["changes"].items().size() <= 2);
    for (const auto& ch : j["changes"].items()) {
      CHECK(ch["seq"].u64() > since);
      CHECK_FALSE(ch.has("review"));  // without include_docs
      seen.push_back(ch["author"].str() + (ch["deleted"].boolean() ? "-" : ""));
    }
    since = j["lastSeq"].u64();
  }
  CHECK(since == lastSeq);
  CHECK(seen == std::vector<std::string>{"a2", "a3", "a4", "a5", "a1-"});  // compacted
  auto docs = parse(c->request("GET", "/v1/changes?since=0&limit=1&include_docs=true"));
  CHECK(docs["changes"][0]["review"]["rating"].u64() == 4);
  auto now = parse(c->request("GET", "/v1/changes?since=now"));
  CHECK(now["changes"].items().empty());
  CHECK(now["lastSeq"].u64() == lastSeq);
  for (const std::string& bad : std::vector<std::string>{
           "since=abc", "since=-1", "limit=1001", "limit=x", "feed=continuous", "include_docs=yes",
           "heartbeat=1000", "timeout=10", "feed=eventsource&timeout=10",
           "feed=longpoll&timeout=300001", "since=" + std::to_string(lastSeq + 5), "colour=red"}) {
    auto a = c->request("GET", "/v1/changes?" + bad);
    CHECK_MESSAGE(a.status == 400, bad);
    std::string field = bad.substr(0, bad.find('='));
    if (bad.rfind("feed=", 0) == 0 && bad.find('&') != std::string::npos) field = "timeout";
    CHECK_MESSAGE(parse(a)["field"].str() == field, bad << ": " << a.body);
  }
  // Another node's cursor, through eventsource: refused before the stream starts.
  auto es = c->request("GET", "/v1/changes?feed=eventsource&since=" + std::to_string(lastSeq + 1));
  CHECK(es.status == 400);
  CHECK(parse(es)["field"].str() == "since");
  CHECK(n.node->metrics().httpRequests(Metrics::kChanges) >= 5);
}

TEST_CASE("http changes: longpoll wakes on a write, and times out empty") {
  HttpNode n;
  auto c = n.connect();
  auto empty = c->request("GET", "/v1/changes?feed=longpoll&since=now&timeout=100");
  REQUIRE(empty.status == 200);
  CHECK(parse(empty)["changes"].items().empty());
  // Waiting from the current seq; a write on another connection wakes it
  // (its timeout is far: an answer only at the timeout would be empty).
  uint64_t since = n.node->lastSeq();
  auto poll = n.connect();
  REQUIRE(poll->sendRaw("GET /v1/changes?feed=longpoll&timeout=20000&since=" +
                        std::to_string(since) + " HTTP/1.1\r\nHost: t\r\n\r\n"));
  std::this_thread::sleep_for(50ms);  // usually waiting by now; either way the answer has it
  REQUIRE(c->request("PUT", "/v1/products/p1/reviews/ann", R"({"rating":3})").status == 200);
  auto woke = poll->read(15s);
  REQUIRE(woke.status == 200);
  auto j = parse(woke);
  REQUIRE(j["changes"].items().size() == 1);
  CHECK(j["changes"][0]["author"].str() == "ann");
  CHECK(j["lastSeq"].u64() == n.node->lastSeq());
  // A longpoll with a change already after `since` answers at once.
  auto at = c->request("GET", "/v1/changes?feed=longpoll&since=0&timeout=20000", "", "", 5s);
  CHECK(parse(at)["changes"].items().size() == 1);
}

TEST_CASE("http changes: a longpoll whose client goes away gives its watch slot back at once") {
  chorus::RpcLimits limits;
  limits.maxWatches = 1;
  HttpNode n({}, limits);
  auto poll = n.connect();
  REQUIRE(poll->sendRaw(
      "GET /v1/changes?feed=longpoll&since=now&timeout=60000 HTTP/1.1\r\nHost: t\r\n\r\n"));
  auto c = n.connect();
  // Once it waits, it holds the one slot: another longpoll is refused.
  int refused = 0;
  for (int i = 0; i < 200 && refused == 0; ++i) {
    auto a = c->request("GET", "/v1/changes?feed=longpoll&since=now&timeout=10");
    if (a.status == 429) ++refused;
    if (refused == 0) std::this_thread::sleep_for(10ms);
  }
  REQUIRE(refused == 1);
  poll.reset();  // the client closes its connection (kj sees no request end)
  // The slot comes back long before the 60 s timeout: a longpoll is served.
  int status = 0;
  for (int i = 0; i < 300 && status != 200; ++i) {
    status = c->request("GET", "/v1/changes?feed=longpoll&since=now&timeout=10").status;
    if (status != 200) std::this_thread::sleep_for(10ms);
  }
  CHECK(status == 200);
  // A longpoll on a keep-alive connection still works after a look-ahead:
  // the next request's bytes reach kj whole.
  auto again = n.connect();
  REQUIRE(again->sendRaw(
      "GET /v1/changes?feed=longpoll&since=now&timeout=200 HTTP/1.1\r\nHost: t\r\n\r\n"));
  std::this_thread::sleep_for(50ms);
  REQUIRE(again->sendRaw("GET /v1/info HTTP/1.1\r\nHost: t\r\n\r\n"));  // pipelined
  CHECK(again->read(5s).status == 200);
  CHECK(again->read(5s).status == 200);
  CHECK(again->request("GET", "/v1/info").status == 200);
}

TEST_CASE("http changes: eventsource sends the backlog, live changes, heartbeats; resumes") {
  chorus::RpcLimits limits;
  limits.maxWatches = 1;
  HttpNode n({}, limits);
  auto c = n.connect();
  for (const char* author : {"a1", "a2", "a3"}) {
    REQUIRE(c->request("PUT", std::string("/v1/products/p1/reviews/") + author, R"({"rating":5})")
                .status == 200);
  }
  auto s = n.connect();
  auto head = s->startStream("/v1/changes?feed=eventsource&since=0&limit=2&heartbeat=100");
  REQUIRE(head.status == 200);
  CHECK(head.body.find("Content-Type: text/event-stream") != std::string::npos);
  auto start = nextEvent(*s);
  CHECK(start.event == "start");
  CHECK(start.id == "0");
  std::vector<Event> changes;
  for (int i = 0; i < 3; ++i) changes.push_back(nextEvent(*s));  // the backlog, in two pages
  REQUIRE(changes[2].event == "change");
  CHECK(parse(HttpAnswer{200, {}, changes[0].data})["author"].str() == "a1");
  CHECK(parse(HttpAnswer{200, {}, changes[2].data})["author"].str() == "a3");
  CHECK(changes[2].id == std::to_string(n.node->lastSeq()));
  // The one watch slot is the stream's.
  CHECK(c->request("GET", "/v1/changes?feed=longpoll&since=now").status == 429);
  CHECK(s->readUntil(": heartbeat", 5s).has_value());
  REQUIRE(c->request("PUT", "/v1/products/p2/reviews/bob", R"({"rating":1})").status == 200);
  auto live = nextEvent(*s);
  REQUIRE(live.event == "change");
  CHECK(parse(HttpAnswer{200, {}, live.data})["product"].str() == "p2");
  CHECK(live.id == std::to_string(n.node->lastSeq()));
  s.reset();  // the client goes away: the slot comes back (at the next heartbeat's write)

  // Resume after the first change: Last-Event-ID wins over since.
  std::unique_ptr<HttpConnection> r;
  HttpAnswer again;
  for (int i = 0; i < 100 && again.status != 200; ++i) {
    r = n.connect();
    again = r->startStream("/v1/changes?feed=eventsource&since=now&heartbeat=100",
                           "Last-Event-ID: " + changes[0].id + "\r\n");
    if (again.status != 200) std::this_thread::sleep_for(50ms);
  }
  REQUIRE(again.status == 200);
  CHECK(nextEvent(*r).id == changes[0].id);  // start: where it resumes
  auto next = nextEvent(*r);
  CHECK(next.event == "change");
  CHECK(next.id == changes[1].id);
}

TEST_CASE("http: Node::open refuses httpListen without an RPC listen address") {
  TempDir tmp;
  Node::Options o;
  o.nodeId = "x";
  o.dataDir = tmp.sub("d");
  o.httpListen = "127.0.0.1:0";
  auto n = Node::open(std::move(o));
  REQUIRE_FALSE(n.ok());
  CHECK(n.error().code == chorus::ErrorCode::kInvalidArgument);
  Node::Options bad;
  bad.nodeId = "x";
  bad.dataDir = tmp.sub("d2");
  bad.listen = "127.0.0.1:0";
  bad.httpListen = "nonsense";
  bad.rpc.noAuth = true;
  auto b = Node::open(std::move(bad));
  REQUIRE_FALSE(b.ok());
  CHECK(b.error().code == chorus::ErrorCode::kInvalidArgument);
}
