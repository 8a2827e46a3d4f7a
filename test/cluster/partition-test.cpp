// Partitions on loopback: 3 and 5 chorusd processes, writes on both sides of
// an injected partition (and continuous writers while partitions come and
// go), heal, converge, and every acknowledged write read back from every
// node.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>

#include "checks.h"

using namespace chorus::test::cluster;
using chorus::test::Json;

namespace {

// Starts n1 and then the others joining n1, and waits until every node sees
// every other alive.
void startCluster(Harness& h, int n) {
  h.start("n1");
  std::string seed = h.node("n1").gossip();
  for (int i = 2; i <= n; ++i) h.start("n" + std::to_string(i), {seed});
  auto ids = h.ids();
  REQUIRE(h.waitUntil("every node sees the others alive", 30s, [&] { return allAlive(h, ids); },
                      [&] { return aliveDetail(h, ids); }));
}

}  // namespace

TEST_CASE("cluster: 3 nodes, n3 isolated, writes on both sides, heal, converge") {
  auto began = Clock::now();
  Harness h;
  startCluster(h, 3);
  const std::vector<std::string> all = {"n1", "n2", "n3"};

  // Before the partition: a review everyone has, with votes and tags.
  cliWrite(h, "n1", {"put", "kettle", "sam", "-r", "4", "-t", "Shared"});
  cliWrite(h, "n1", {"vote", "kettle", "sam", "v0"});
  cliWrite(h, "n1", {"tag", "kettle", "sam", "keep"});
  cliWrite(h, "n1", {"tag", "kettle", "sam", "contested"});
  cliWrite(h, "n1", {"tag", "kettle", "sam", "dropped"});
  cliWrite(h, "n2", {"put", "kettle", "dee", "-r", "3", "-t", "to be deleted"});
  cliWrite(h, "n2", {"put", "kettle", "rob", "-r", "3", "-t", "to be revived"});
  REQUIRE(h.waitUntil("the first reviews reach every node", 30s, [&] {
    for (const auto& id : {"n1", "n2", "n3"}) {
      auto r = getReview(h, id, "kettle", "sam");
      if (!r || tagsOf(*r).size() != 3 || (*r)["helpful"].u64() != 1) return false;
      if (!getReview(h, id, "kettle", "dee") || !getReview(h, id, "kettle", "rob")) return false;
    }
    return true;
  }));

  // The CLI refuses bad partitions before touching any node.
  CHECK(h.chorus("n1", {"cluster", "partition", "--isolate", "n9"}).code == 3);  // unknown id
  CHECK(h.chorus("n1", {"cluster", "partition", "--split", "n1,n2"}).code == 1);  // no '/'
  CHECK(h.chorus("n1", {"cluster", "partition", "--split", "n1/n1,n2"}).code == 3);
  CHECK(h.chorus("n1", {"cluster", "partition"}).code == 1);
  CHECK(allEqual(roots(h, all)));  // nothing was partitioned: still in step

  // Isolate n3: n1 and n2 on one side, n3 alone on the other.
  auto part = h.chorus("n1", {"cluster", "partition", "--isolate", "n3"});
  REQUIRE_MESSAGE(part.code == 0, part.out << part.err);
  {
    // Both ends know: n1 drops n3, n3 drops n1 and n2.
    auto s1 = clusterStatus(h, "n1");
    CHECK(entryOf(s1, "n3")["partitioned"].boolean());
    CHECK(peerState(s1, "n3").find("partitioned") != std::string::npos);
    CHECK_FALSE(entryOf(s1, "n2")["partitioned"].boolean());
    auto s3 = clusterStatus(h, "n3");
    CHECK(entryOf(s3, "n1")["partitioned"].boolean());
    CHECK(entryOf(s3, "n2")["partitioned"].boolean());
  }

  // Side A (n1, n2).
  const std::string bigBody(20000, 'b');  // the largest body allowed
  cliWrite(h, "n1", {"put", "kettle", "ann", "-r", "5", "-t", "A side", "-b", bigBody});
  cliWrite(h, "n2", {"put", "kettle", "ben", "-r", "3", "-t", "A side too"});
  cliWrite(h, "n1", {"put", "kettle", "eve", "-r", "2", "-t", "Edit from n1", "-b", "first"});
  cliWrite(h, "n1", {"put", "kettle", "sam", "-r", "1", "-t", "Shared, edited by n1"});
  cliWrite(h, "n1", {"vote", "kettle", "sam", "va"});      // a voter only side A has
  cliWrite(h, "n2", {"vote", "kettle", "sam", "both"});    // the same voter on both sides
  cliWrite(h, "n1", {"vote", "kettle", "sam", "v0"});      // re-vote, concurrent with an unvote
  cliWrite(h, "n1", {"tag", "kettle", "sam", "contested"});  // re-add, concurrent with a remove
  cliWrite(h, "n2", {"tag", "kettle", "sam", "a-only"});
  cliWrite(h, "n1", {"moderate", "kettle", "sam", "--visibility", "hidden", "--reason", "spam"});
  cliWrite(h, "n2", {"put", "kettle", "dee", "-r", "1", "-t", "edited before the delete"});
  cliWrite(h, "n1", {"delete", "kettle", "rob"});
  std::this_thread::sleep_for(20ms);  // side B's edits get later clocks

  // Side B (n3).
  const std::string unicode = "B side \xe2\x80\x94 Gr\xc3\xb6\xc3\x9f" "e \xe2\x9c\x93";
  cliWrite(h, "n3", {"put", "kettle", "cat", "-r", "4", "-t", unicode});
  cliWrite(h, "n3", {"put", "kettle", "eve", "-r", "4", "-t", "Edit from n3", "-b", "second"});
  cliWrite(h, "n3", {"put", "kettle", "sam", "-r", "2", "-t", "Shared, edited by n3"});
  cliWrite(h, "n3", {"vote", "kettle", "sam", "vb"});
  cliWrite(h, "n3", {"vote", "kettle", "sam", "both"});
  cliWrite(h, "n3", {"unvote", "kettle", "sam", "v0"});
  cliWrite(h, "n3", {"untag", "kettle", "sam", "contested"});
  cliWrite(h, "n3", {"untag", "kettle", "sam", "dropped"});
  cliWrite(h, "n3", {"tag", "kettle", "sam", "b-only"});
  cliWrite(h, "n3", {"reply", "kettle", "sam", "Thanks for the feedback"});
  cliWrite(h, "n3", {"delete", "kettle", "dee"});                          // later than the edit
  cliWrite(h, "n3", {"put", "kettle", "rob", "-r", "5", "-t", "revived"});  // later than the delete

  // The sides stay apart: n2 gets n1's writes (fast path), n3 gets none
  // of them and n1 none of n3's, across several anti-entropy rounds.
  REQUIRE(h.waitUntil("n1's writes reach n2", 30s, [&] {
    auto r = getReview(h, "n2", "kettle", "ann");
    auto s = getReview(h, "n2", "kettle", "sam");
    return r && s && (*s)["title"].str() == "Shared, edited by n1";
  }));
  std::this_thread::sleep_for(1s);  // 5 anti-entropy intervals
  CHECK_FALSE(getReview(h, "n3", "kettle", "ann").has_value());
  CHECK_FALSE(getReview(h, "n3", "kettle", "ben").has_value());
  CHECK_FALSE(getReview(h, "n1", "kettle", "cat").has_value());
  CHECK_FALSE(getReview(h, "n2", "kettle", "cat").has_value());
  CHECK((*getReview(h, "n3", "kettle", "eve"))["title"].str() == "Edit from n3");
  CHECK((*getReview(h, "n1", "kettle", "eve"))["title"].str() == "Edit from n1");
  CHECK((*getReview(h, "n3", "kettle", "sam"))["helpful"].u64() == 2);  // vb, both
  CHECK(roots(h, {"n1", "n3"})["n1"] != roots(h, {"n1", "n3"})["n3"]);

  auto heal = h.chorus("n1", {"cluster", "heal"});
  REQUIRE_MESSAGE(heal.code == 0, heal.out << heal.err);
  auto healed = Clock::now();
  auto conv = converge(h, "n1");
  MESSAGE("3 nodes: converged " << secondsSince(healed) << " s after heal; converge said: "
                                << conv.out);

  auto r = roots(h, all);
  CHECK_MESSAGE(allEqual(r), show(r));
  for (const auto& id : all) {
    CAPTURE(id);
    for (const auto& [author, title] : std::map<std::string, std::string>{
             {"ann", "A side"}, {"ben", "A side too"}, {"cat", unicode}, {"rob", "revived"}}) {
      auto got = getReview(h, id, "kettle", author);
      REQUIRE_MESSAGE(got.has_value(), author << " missing on " << id);
      CHECK((*got)["title"].str() == title);
    }
    CHECK((*getReview(h, id, "kettle", "ann"))["body"].str() == bigBody);
    // A delete later than a concurrent edit wins; an edit later than a
    // concurrent delete revives the review.
    CHECK_FALSE(getReview(h, id, "kettle", "dee").has_value());
    CHECK((*getReview(h, id, "kettle", "rob"))["rating"].u64() == 5);
    // Edited on both sides: one value everywhere, the later edit (n3's).
    auto eve = getReview(h, id, "kettle", "eve");
    REQUIRE(eve.has_value());
    CHECK((*eve)["title"].str() == "Edit from n3");
    CHECK((*eve)["body"].str() == "second");
    CHECK((*eve)["rating"].u64() == 4);
    auto sam = getReview(h, id, "kettle", "sam");
    REQUIRE(sam.has_value());
    CHECK((*sam)["title"].str() == "Shared, edited by n3");
    // Voters v0 (re-vote beats the concurrent unvote), va, vb, both (once).
    CHECK((*sam)["helpful"].u64() == 4);
    // Add-wins: "contested" re-added on A while removed on B stays;
    // "dropped" removed on B only goes; one-sided adds stay.
    auto tags = tagsOf(*sam);
    CHECK(tags == std::vector<std::string>{"a-only", "b-only", "contested", "keep"});
    // Moderation on one side and a reply on the other: both kept.
    CHECK((*sam)["visibility"].str() == "hidden");
    CHECK((*sam)["moderation_reason"].str() == "spam");
    CHECK((*sam)["reply"].str() == "Thanks for the feedback");
  }
  // Every node reports the same review for eve and sam, field for field.
  auto e1 = getReview(h, "n1", "kettle", "eve");
  for (const auto& id : {"n2", "n3"}) {
    auto e = getReview(h, id, "kettle", "eve");
    CHECK((*e)["edited_at_ms"].u64() == (*e1)["edited_at_ms"].u64());
  }
  h.stopAll();
  MESSAGE("3-node partition test took " << secondsSince(began) << " s");
}

TEST_CASE("cluster: 5 nodes split n1,n2 / n3,n4,n5, 50 writes per side, heal, converge") {
  auto began = Clock::now();
  Harness h;
  startCluster(h, 5);
  const std::vector<std::string> all = h.ids();

  auto part = h.chorus("n3", {"cluster", "partition", "--split", "n1,n2/n3,n4,n5"});
  REQUIRE_MESSAGE(part.code == 0, part.out << part.err);

  std::map<std::string, std::string> titles;  // author -> title, every acknowledged write
  std::vector<std::string> left, right;
  for (int i = 0; i < 50; ++i) {
    left.push_back("l" + std::to_string(i));
    right.push_back("r" + std::to_string(i));
  }
  // Spread each side's writes over its nodes.
  for (size_t k = 0; k < 2; ++k) {
    std::vector<std::string> chunk(left.begin() + long(k * 25), left.begin() + long(k * 25 + 25));
    clientPuts(h, k == 0 ? "n1" : "n2", "lamp", chunk, "left ");
  }
  for (size_t k = 0; k < 3; ++k) {
    size_t from = k * 17, to = std::min<size_t>(50, from + 17);
    std::vector<std::string> chunk(right.begin() + long(from), right.begin() + long(to));
    clientPuts(h, "n" + std::to_string(3 + k), "lamp", chunk, "right ");
  }
  // The same 10 reviews written on both sides: one title wins everywhere.
  std::vector<std::string> both;
  for (int i = 0; i < 10; ++i) both.push_back("both" + std::to_string(i));
  clientPuts(h, "n2", "lamp", both, "left ");
  clientPuts(h, "n4", "lamp", both, "right ");
  for (const auto& a : left) titles[a] = "left " + a;
  for (const auto& a : right) titles[a] = "right " + a;

  // Inside each side the writes spread; across, nothing.
  REQUIRE(h.waitUntil("each side has its own writes", 30s, [&] {
    std::map<std::string, std::string> l, r;
    for (const auto& a : left) l[a] = "left " + a;
    for (const auto& a : right) r[a] = "right " + a;
    return missing(h, "n1", "lamp", l).empty() && missing(h, "n2", "lamp", l).empty() &&
           missing(h, "n3", "lamp", r).empty() && missing(h, "n4", "lamp", r).empty() &&
           missing(h, "n5", "lamp", r).empty();
  }));
  CHECK(missing(h, "n1", "lamp", {{"r0", "right r0"}}).size() == 1);
  CHECK(missing(h, "n5", "lamp", {{"l0", "left l0"}}).size() == 1);

  auto heal = h.chorus("n5", {"cluster", "heal"});
  REQUIRE_MESSAGE(heal.code == 0, heal.out << heal.err);
  auto healed = Clock::now();
  auto conv = converge(h, "n1");
  MESSAGE("5 nodes: converged " << secondsSince(healed) << " s after heal; converge said: "
                                << conv.out);

  auto r = roots(h, all);
  CHECK_MESSAGE(allEqual(r), show(r));
  std::map<std::string, std::string> bothTitles;
  for (const auto& id : all) {
    CAPTURE(id);
    auto lost = missing(h, id, "lamp", titles);
    CHECK_MESSAGE(lost.empty(), lost.size() << " writes missing on " << id << ", first "
                                            << (lost.empty() ? "" : lost[0]));
    auto client = chorus::api::Client::connect(h.node(id).rpc());
    REQUIRE(client.ok());
    for (const auto& a : both) {
      auto got = (*client)->get("lamp", a);
      REQUIRE(got.ok());
      CHECK((got->title == "left " + a || got->title == "right " + a));
      auto [it, fresh] = bothTitles.emplace(a, got->title);
      CHECK(it->second == got->title);  // the same winner on every node
    }
    auto summary = (*client)->summary("lamp");
    REQUIRE(summary.ok());
    CHECK(summary->count == 110);
  }
  h.stopAll();
  MESSAGE("5-node split test took " << secondsSince(began) << " s");
}

// Writers on every node keep writing while partitions come and go; every
// write acknowledged to a client is on every node in the end, and keys
// written concurrently from several nodes settle on one value everywhere.
TEST_CASE("cluster: continuous writes on every node through partitions and heals") {
  auto began = Clock::now();
  Harness h;
  startCluster(h, 3);
  const std::vector<std::string> all = h.ids();

  std::atomic<bool> stop{false};
  std::vector<std::map<std::string, std::string>> acked(all.size());  // per writer
  std::vector<std::string> errors(all.size());
  std::vector<std::thread> writers;
  for (size_t w = 0; w < all.size(); ++w) {
    writers.emplace_back([&, w] {
      auto client = chorus::api::Client::connect(h.node(all[w]).rpc());
      if (!client.ok()) {
        errors[w] = client.error().toString();
        return;
      }
      for (int i = 0; !stop.load(); ++i) {
        chorus::WriteRequest r;
        r.op = chorus::WriteOp::kPut;
        r.product = "stream";
        // Every 4th write goes to one of 8 hot keys every writer shares.
        r.author = i % 4 == 0 ? "hot" + std::to_string((i / 4) % 8) : all[w] + "-" + std::to_string(i);
        r.rating = 1 + uint32_t(i % 5);
        r.title = all[w] + " write " + std::to_string(i);
        auto res = (*client)->write(r);
        if (!res.ok()) {
          errors[w] = res.error().toString();
          return;
        }
        if (i % 4 != 0) acked[w][r.author] = r.title;
        std::this_thread::sleep_for(2ms);
      }
    });
  }
  auto cut = [&](const std::string& via, std::vector<std::string> args) {
    args.insert(args.begin(), {"cluster"});
    auto r = h.chorus(via, args);
    CHECK_MESSAGE(r.code == 0, r.out << r.err);
  };
  std::this_thread::sleep_for(300ms);
  cut("n1", {"partition", "--isolate", "n3"});
  std::this_thread::sleep_for(600ms);
  cut("n2", {"heal"});
  std::this_thread::sleep_for(300ms);
  cut("n3", {"partition", "--split", "n1/n2,n3"});
  std::this_thread::sleep_for(600ms);
  cut("n3", {"heal"});
  std::this_thread::sleep_for(300ms);
  stop = true;
  for (auto& t : writers) t.join();
  for (size_t w = 0; w < all.size(); ++w) {
    CHECK_MESSAGE(errors[w].empty(), all[w] << "'s writer: " << errors[w]);
  }

  converge(h, "n2");
  auto r = roots(h, all);
  CHECK_MESSAGE(allEqual(r), show(r));
  size_t total = 0;
  for (const auto& id : all) {
    CAPTURE(id);
    for (size_t w = 0; w < all.size(); ++w) {
      auto lost = missing(h, id, "stream", acked[w]);
      CHECK_MESSAGE(lost.empty(), lost.size() << " of " << all[w] << "'s " << acked[w].size()
                                              << " acknowledged writes missing on " << id);
    }
  }
  for (const auto& a : acked) total += a.size();
  // The hot keys: the same title on every node.
  for (int k = 0; k < 8; ++k) {
    std::set<std::string> titles;
    for (const auto& id : all) {
      auto got = getReview(h, id, "stream", "hot" + std::to_string(k));
      REQUIRE(got.has_value());
      titles.insert((*got)["title"].str());
    }
    CHECK_MESSAGE(titles.size() == 1, "hot" << k << " differs across nodes");
  }
  h.stopAll();
  MESSAGE("continuous-writes test: " << total << " acknowledged writes; took "
                                      << secondsSince(began) << " s");
}
