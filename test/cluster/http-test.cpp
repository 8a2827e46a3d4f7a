// The HTTP API end to end, driven by curl as an operator's script would:
// three chorusd with --http-listen, a review written and read over HTTP, a
// partition injected and healed through /v1/cluster, writes on both sides,
// and convergence checked the way an HTTP client does it (every node's
// /v1/cluster answers the same merkleRoot).
#include <doctest/doctest.h>
#include <unistd.h>

#include "checks.h"

using namespace chorus::test::cluster;
using chorus::test::Json;

namespace {

std::string curlBinary() {
  for (const char* p : {"/usr/bin/curl", "/usr/local/bin/curl", "/bin/curl"}) {
    if (access(p, X_OK) == 0) return p;
  }
  FAIL("curl is not installed (tools/packages lists it; tools/check installs it)");
  return "";
}

struct CurlAnswer {
  int status = 0;
  std::optional<Json> json;
  std::string body;
};

// curl -X METHOD [-d BODY] URL: the status and the JSON body.
CurlAnswer curl(const std::string& method, const std::string& url, const std::string& body = "") {
  std::vector<std::string> args = {"-sS", "--max-time", "10", "-X", method, "-w", "\n%{http_code}"};
  if (!body.empty()) args.insert(args.end(), {"-H", "Content-Type: application/json", "-d", body});
  args.push_back(url);
  auto r = run(curlBinary(), args, 20s);
  CurlAnswer a;
  REQUIRE_MESSAGE(r.code == 0,
                  "curl " << method << " " << url << " exited " << r.code << ": " << r.err);
  size_t nl = r.out.rfind('\n');
  REQUIRE(nl != std::string::npos);
  a.status = std::stoi(r.out.substr(nl + 1));
  a.body = r.out.substr(0, nl);
  a.json = Json::parse(a.body);
  return a;
}

std::string root(Harness& h, const std::string& id) {
  auto a = curl("GET", h.node(id).http() + "cluster");
  return a.status == 200 && a.json ? (*a.json)["view"]["merkleRoot"].str() : "";
}

}  // namespace

TEST_CASE("http: curl drives 3 nodes through a partition and a heal") {
  Harness h;
  const std::vector<std::string> http = {"--http-listen", "127.0.0.1:0"};
  h.start("n1", {}, http);
  for (const char* id : {"n2", "n3"}) h.start(id, {h.node("n1").gossip()}, http);
  const std::vector<std::string> all = {"n1", "n2", "n3"};
  auto url = [&](const std::string& id, const std::string& path) {
    return h.node(id).http() + path;
  };
  REQUIRE(h.waitUntil("every node sees two peers alive over HTTP", 30s, [&] {
    for (const auto& id : all) {
      auto a = curl("GET", url(id, "cluster"));
      if (a.status != 200 || !a.json) return false;
      int alive = 0;
      for (const auto& m : (*a.json)["view"]["members"].items())
        alive += m["state"].str() == "alive";
      if (alive != 2) return false;
    }
    return true;
  }));

  auto put = curl("PUT", url("n1", "products/kettle/reviews/sam"),
                  R"({"rating":4,"title":"Shared","body":"before the split"})");
  REQUIRE_MESSAGE(put.status == 200, put.body);
  REQUIRE(h.waitUntil("the review reaches n3", 30s, [&] {
    return curl("GET", url("n3", "products/kettle/reviews/sam")).status == 200;
  }));

  // n3 alone on one side.
  CHECK(curl("POST", url("n1", "cluster/partition"), R"({"peers":["n3"]})").status == 200);
  CHECK(curl("POST", url("n2", "cluster/partition"), R"({"peers":["n3"]})").status == 200);
  CHECK(curl("POST", url("n3", "cluster/partition"), R"({"peers":["n1","n2"]})").status == 200);
  auto view = curl("GET", url("n1", "cluster"));
  REQUIRE(view.json);
  REQUIRE((*view.json)["view"]["partitioned"].items().size() == 1);
  CHECK((*view.json)["view"]["partitioned"][0].str() == "n3");
  auto bad = curl("POST", url("n1", "cluster/partition"), R"({"peers":["n1"]})");
  CHECK(bad.status == 400);
  REQUIRE(bad.json);
  CHECK((*bad.json)["field"].str() == "peers");

  // Writes on both sides: each side has only its own.
  REQUIRE(curl("PUT", url("n1", "products/kettle/reviews/left"), R"({"rating":5})").status == 200);
  REQUIRE(curl("PUT", url("n3", "products/kettle/reviews/right"), R"({"rating":1})").status == 200);
  REQUIRE(h.waitUntil("n2 has the write of its side", 30s, [&] {
    return curl("GET", url("n2", "products/kettle/reviews/left")).status == 200;
  }));
  CHECK(curl("GET", url("n3", "products/kettle/reviews/left")).status == 404);
  CHECK(curl("GET", url("n1", "products/kettle/reviews/right")).status == 404);
  CHECK(root(h, "n1") != root(h, "n3"));

  for (const auto& id : all) CHECK(curl("POST", url(id, "cluster/heal")).status == 200);
  // An HTTP client's `cluster converge`: every node answers the same root.
  REQUIRE(h.waitUntil("the roots agree after the heal", 60s, [&] {
    std::string first = root(h, "n1");
    return !first.empty() && root(h, "n2") == first && root(h, "n3") == first;
  }));
  for (const auto& id : all) {
    auto page = curl("GET", url(id, "products/kettle/page?order=highestRating"));
    REQUIRE(page.status == 200);
    REQUIRE(page.json);
    CHECK((*page.json)["summary"]["count"].u64() == 3);
    const auto& reviews = (*page.json)["page"]["reviews"].items();
    REQUIRE(reviews.size() == 3);
    CHECK(reviews[0]["author"].str() == "left");   // rated 5
    CHECK(reviews[2]["author"].str() == "right");  // rated 1
    CHECK((*curl("GET", url(id, "cluster")).json)["view"]["partitioned"].items().empty());
  }
  h.stopAll();
}
