// Regions with real processes: 6 chorusd nodes in 3 regions (us, eu, ap;
// two each). Writes accepted in each region reach every node; a region cut
// off with `chorus cluster partition --split` (by node ids) keeps taking
// writes on both sides and converges after the heal; --split also takes
// region names.
#include <doctest/doctest.h>

#include "checks.h"

using namespace chorus::test::cluster;
using chorus::test::Json;

namespace {

const std::map<std::string, std::string> kRegionOf = {{"n1", "us"}, {"n2", "us"}, {"n3", "eu"},
                                                      {"n4", "eu"}, {"n5", "ap"}, {"n6", "ap"}};

std::vector<std::string> authors(const std::string& prefix, int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(prefix + std::to_string(i));
  return out;
}

// Which of `ids` lack any of `titles` (author -> title) of `product`.
std::string lacking(Harness& h, const std::vector<std::string>& ids, const std::string& product,
                    const std::map<std::string, std::string>& titles) {
  std::string out;
  for (const auto& id : ids) {
    auto lost = missing(h, id, product, titles);
    if (!lost.empty()) out += id + " lacks " + std::to_string(lost.size()) + " (" + lost[0] + ") ";
  }
  return out;
}

}  // namespace

TEST_CASE(
    "cluster: 3 regions x 2 nodes: writes from every region reach all 6; a region cut off "
    "and healed converges") {
  auto began = Clock::now();
  Harness h;
  h.start("n1", {}, {"--region", kRegionOf.at("n1")});
  const std::string seed = h.node("n1").gossip();
  for (int i = 2; i <= 6; ++i) {
    std::string id = "n" + std::to_string(i);
    h.start(id, {seed}, {"--region", kRegionOf.at(id)});
  }
  const std::vector<std::string> all = h.ids();
  REQUIRE(all.size() == 6);
  REQUIRE(h.waitUntil(
      "every node sees the other five alive", 30s, [&] { return allAlive(h, all); },
      [&] { return aliveDetail(h, all); }));
  MESSAGE("6 nodes in 3 regions alive for everyone after " << secondsSince(began) << " s");
  // Alive is not yet linked: the partial views and the region bridges form
  // at the next view maintenance (every second). A write accepted before a
  // node has any partial-view link is not broadcast at all and crosses
  // regions only with cross-region anti-entropy (10 s); this case measures
  // the fast path, so it lets the views form first.
  std::this_thread::sleep_for(2s);

  // Every node shows every member's region.
  for (const auto& id : {"n1", "n4", "n6"}) {
    CAPTURE(id);
    Json s = clusterStatus(h, id);
    for (const auto& [node, region] : kRegionOf) {
      CAPTURE(node);
      CHECK(entryOf(s, node)["region"].str() == region);
    }
  }

  // One writer in each region; every write on all six nodes.
  std::map<std::string, std::string> titles;
  auto written = Clock::now();
  for (const auto& [id, prefix] :
       std::vector<std::pair<std::string, std::string>>{{"n1", "us"}, {"n3", "eu"}, {"n5", "ap"}}) {
    auto as = authors(prefix + "-", 10);
    clientPuts(h, id, "globe", as, "from " + prefix + " ");
    for (const auto& [a, t] : titled(as, "from " + prefix + " ")) titles[a] = t;
  }
  REQUIRE(h.waitUntil(
      "the writes of every region reach all 6 nodes", 5s,  // under cross-region repair's 10 s
      [&] { return lacking(h, all, "globe", titles).empty(); },
      [&] { return lacking(h, all, "globe", titles); }));
  MESSAGE("30 writes from 3 regions on all 6 nodes " << secondsSince(written)
                                                     << " s after the first was written");

  // Cut ap (n5, n6) off, by node ids; both sides keep taking writes.
  auto part = h.chorus("n1", {"cluster", "partition", "--split", "n1,n2,n3,n4/n5,n6"});
  REQUIRE_MESSAGE(part.code == 0, part.out << part.err);
  {
    Json s1 = clusterStatus(h, "n1");
    CHECK(entryOf(s1, "n5")["partitioned"].boolean());
    CHECK_FALSE(entryOf(s1, "n3")["partitioned"].boolean());
    Json s6 = clusterStatus(h, "n6");
    for (const auto& id : {"n1", "n2", "n3", "n4"}) CHECK(entryOf(s6, id)["partitioned"].boolean());
    CHECK_FALSE(entryOf(s6, "n5")["partitioned"].boolean());
  }
  std::map<std::string, std::string> sideA, sideB;
  for (const auto& [id, prefix] :
       std::vector<std::pair<std::string, std::string>>{{"n2", "us-cut"}, {"n4", "eu-cut"}}) {
    auto as = authors(prefix + "-", 15);
    clientPuts(h, id, "globe", as, "side A ");
    for (const auto& [a, t] : titled(as, "side A ")) sideA[a] = t;
  }
  {
    auto as = authors("ap-cut-", 15);
    clientPuts(h, "n6", "globe", as, "side B ");
    sideB = titled(as, "side B ");
  }
  // The same reviews edited on both sides: one title wins everywhere.
  auto both = authors("both-", 5);
  clientPuts(h, "n1", "globe", both, "A edit ");
  clientPuts(h, "n5", "globe", both, "B edit ");
  REQUIRE(h.waitUntil(
      "each side has its own writes", 30s,
      [&] {
        return lacking(h, {"n1", "n2", "n3", "n4"}, "globe", sideA).empty() &&
               lacking(h, {"n5", "n6"}, "globe", sideB).empty();
      },
      [&] {
        return lacking(h, {"n1", "n2", "n3", "n4"}, "globe", sideA) +
               lacking(h, {"n5", "n6"}, "globe", sideB);
      }));
  // Long enough for each side to declare the other dead (SWIM: a failed
  // probe, then the suspicion timeout), so the heal must find it again.
  auto cut = Clock::now();
  REQUIRE(h.waitUntil(
      "each side declares the other dead", 30s,
      [&] {
        return peerState(clusterStatus(h, "n1"), "n5").rfind("dead", 0) == 0 &&
               peerState(clusterStatus(h, "n6"), "n3").rfind("dead", 0) == 0;
      },
      [&] {
        return "n1 sees n5 " + peerState(clusterStatus(h, "n1"), "n5") + ", n6 sees n3 " +
               peerState(clusterStatus(h, "n6"), "n3");
      }));
  MESSAGE("each side saw the other dead " << secondsSince(cut) << " s after the writes");
  CHECK(missing(h, "n5", "globe", sideA).size() == sideA.size());
  CHECK(missing(h, "n3", "globe", sideB).size() == sideB.size());
  {
    auto r = roots(h, all);
    CHECK(r["n1"] == r["n4"]);
    CHECK(r["n5"] == r["n6"]);
    CHECK(r["n1"] != r["n5"]);
  }

  auto heal = h.chorus("n5", {"cluster", "heal"});
  REQUIRE_MESSAGE(heal.code == 0, heal.out << heal.err);
  auto healed = Clock::now();
  auto conv = converge(h, "n1", "60s");
  MESSAGE("3 regions: converged " << secondsSince(healed)
                                  << " s after the heal; converge said: " << conv.out);
  auto r = roots(h, all);
  CHECK_MESSAGE(allEqual(r), show(r));
  for (const auto& [a, t] : sideA) titles[a] = t;
  for (const auto& [a, t] : sideB) titles[a] = t;
  CHECK_MESSAGE(lacking(h, all, "globe", titles).empty(), lacking(h, all, "globe", titles));
  for (const auto& a : both) {
    std::set<std::string> seen;
    for (const auto& id : all) {
      auto got = getReview(h, id, "globe", a);
      REQUIRE(got.has_value());
      seen.insert((*got)["title"].str());
    }
    CHECK_MESSAGE(seen.size() == 1, a << " differs across nodes");
  }

  // --split by region names: us against eu and ap, then healed again.
  part = h.chorus("n3", {"cluster", "partition", "--split", "us/eu,ap"});
  REQUIRE_MESSAGE(part.code == 0, part.out << part.err);
  {
    Json s2 = clusterStatus(h, "n2");
    for (const auto& id : {"n3", "n4", "n5", "n6"}) CHECK(entryOf(s2, id)["partitioned"].boolean());
    CHECK_FALSE(entryOf(s2, "n1")["partitioned"].boolean());
    Json s4 = clusterStatus(h, "n4");
    CHECK(entryOf(s4, "n1")["partitioned"].boolean());
    CHECK_FALSE(entryOf(s4, "n5")["partitioned"].boolean());
  }
  CHECK(h.chorus("n3", {"cluster", "partition", "--split", "us/mars"}).code != 0);
  heal = h.chorus("n3", {"cluster", "heal"});
  REQUIRE_MESSAGE(heal.code == 0, heal.out << heal.err);
  CHECK_FALSE(entryOf(clusterStatus(h, "n2"), "n4")["partitioned"].boolean());
  cliWrite(h, "n4", {"put", "globe", "last", "-r", "5", "-t", "after both heals"});
  converge(h, "n6");
  CHECK(getReview(h, "n2", "globe", "last").has_value());
  h.stopAll();
  MESSAGE("3-region test took " << secondsSince(began) << " s");
}
