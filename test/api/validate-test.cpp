// Unit tests of api/validate: the rules a client's input must pass.
#include <doctest/doctest.h>

#include <chrono>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "api/validate.h"
#include "support/results.h"

using namespace chorus::api;
using chorus::test::failure;
using chorus::test::present;

TEST_CASE("ids: non-empty, bounded, documented charset") {
  Limits l;
  CHECK_FALSE(checkId("product", "sku-42_a.b:c@d", l));
  CHECK_FALSE(checkId("product", std::string(128, 'x'), l));

  auto empty = checkId("product", "", l);
  REQUIRE(empty);
  CHECK(empty->field == "product");

  auto longer = checkId("author", std::string(129, 'x'), l);
  REQUIRE(longer);
  CHECK(longer->field == "author");
  CHECK(longer->message.find("128") != std::string::npos);

  for (std::string bad : std::initializer_list<std::string>{"a b", "a/b", "ä", "a\nb",
                                                            std::string("a\0b", 3), "a'b"}) {
    CAPTURE(bad);
    auto e = checkId("voter", bad, l);
    REQUIRE(e);
    CHECK(e->field == "voter");
  }
  Limits tight;
  tight.maxIdBytes = 4;
  CHECK(checkId("tag", "abcde", tight));
  CHECK_FALSE(checkId("tag", "abcd", tight));
}

TEST_CASE("rating must be 1-5") {
  for (uint32_t r = 1; r <= 5; ++r) CHECK_FALSE(checkRating(r));
  for (uint32_t r : {0u, 6u, 255u, 1000u}) {
    auto e = checkRating(r);
    REQUIRE(e);
    CHECK(e->field == "rating");
  }
}

TEST_CASE("UTF-8: well-formed accepted, malformed refused") {
  CHECK(isValidUtf8(""));
  CHECK(isValidUtf8("plain ascii"));
  CHECK(isValidUtf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));  // é € 😀
  CHECK_FALSE(isValidUtf8("\xc3"));                                 // truncated
  CHECK_FALSE(isValidUtf8("\xc0\xaf"));                             // overlong '/'
  CHECK_FALSE(isValidUtf8("\xe0\x80\xaf"));                         // overlong
  CHECK_FALSE(isValidUtf8("\xed\xa0\x80"));                         // surrogate U+D800
  CHECK_FALSE(isValidUtf8("\xf4\x90\x80\x80"));                     // above U+10FFFF
  CHECK_FALSE(isValidUtf8("\x80"));                                 // stray continuation
  CHECK_FALSE(isValidUtf8("\xff"));
  CHECK_FALSE(isValidUtf8(std::string("a\0b", 3)));  // NUL
}

TEST_CASE("title and body limits are bytes and configurable") {
  Limits l;
  CHECK_FALSE(checkPut("p", "a", 5, std::string(200, 't'), std::string(20'000, 'b'), l));
  auto title = checkPut("p", "a", 5, std::string(201, 't'), "", l);
  REQUIRE(title);
  CHECK(title->field == "title");
  auto body = checkPut("p", "a", 5, "", std::string(20'001, 'b'), l);
  REQUIRE(body);
  CHECK(body->field == "body");
  // 67 three-byte characters = 201 bytes: over the limit though only 67 chars.
  std::string euros;
  for (int i = 0; i < 67; ++i) euros += "\xe2\x82\xac";
  CHECK(checkPut("p", "a", 5, euros, "", l));

  Limits small;
  small.maxTitleBytes = 3;
  small.maxBodyBytes = 5;
  CHECK(present(checkPut("p", "a", 5, "abcd", "", small)).field == "title");
  CHECK(present(checkPut("p", "a", 5, "abc", "abcdef", small)).field == "body");
  CHECK_FALSE(checkPut("p", "a", 5, "abc", "abcde", small));

  auto badUtf8 = checkPut("p", "a", 5, "ok", "\xc3(", l);
  REQUIRE(badUtf8);
  CHECK(badUtf8->field == "body");
}

TEST_CASE("whole requests report the first bad field in argument order") {
  Limits l;
  CHECK(present(checkPut("", "", 0, "", "", l)).field == "product");
  CHECK(present(checkPut("p", "", 0, "", "", l)).field == "author");
  CHECK(present(checkPut("p", "a", 0, "", "", l)).field == "rating");
  CHECK(present(checkKeyAnd("p", "a", "voter", "", l)).field == "voter");
  CHECK(present(checkKeyAnd("p", "a", "tag", "no spaces", l)).field == "tag");
  CHECK(present(checkModerate("p", "a", std::string(501, 'r'), l)).field == "reason");
  CHECK(present(checkReply("p", "a", "\xff", l)).field == "text");
  CHECK_FALSE(checkReply("p", "a", "", l));

  auto e = checkPut("p", "a", 7, "", "", l)->toError();
  CHECK(e.code == chorus::ErrorCode::kInvalidArgument);
  CHECK(e.message.rfind("rating: ", 0) == 0);
}

TEST_CASE("durations for flags: sign, number, unit") {
  using std::chrono::milliseconds;
  auto ms = [](std::string_view text, milliseconds bare = milliseconds(1)) {
    auto d = parseDuration(text, bare);
    REQUIRE_MESSAGE(d.ok(), d.error().toString());
    return d->count();
  };
  CHECK(ms("1500ms") == 1500);
  CHECK(ms("30s") == 30'000);
  CHECK(ms("-30s") == -30'000);
  CHECK(ms("+2.5s") == 2500);
  CHECK(ms("5m") == 300'000);
  CHECK(ms("1h") == 3'600'000);
  CHECK(ms("0") == 0);
  CHECK(ms("250") == 250);                             // bare: milliseconds here
  CHECK(ms("30", std::chrono::seconds(1)) == 30'000);  // bare: seconds here
  for (std::string_view bad : {"", "s", "-", "5q", "5 s", "1.2.3s", "ms5", "1e3s", "5000h"}) {
    CAPTURE(bad);
    auto d = parseDuration(bad, milliseconds(1));
    REQUIRE_FALSE(d.ok());
    CHECK(d.error().code == chorus::ErrorCode::kInvalidArgument);
    CHECK(d.error().message.find("e.g.") != std::string::npos);
  }
}

TEST_CASE("partition peer ids: bounded, printable, not this node") {
  CHECK_FALSE(checkPeerIds({}, "n1"));
  CHECK_FALSE(checkPeerIds({"n2", "n3", "node 4"}, "n1"));
  for (const auto& bad : std::initializer_list<std::vector<std::string>>{
           {""}, {std::string(129, 'x')}, {"a\nb"}, {"\xc3("}, {"n2", "n1"}}) {
    auto e = checkPeerIds(bad, "n1");
    REQUIRE(e);
    CHECK(e->field == "peers");
  }
  CHECK(present(checkPeerIds({"n2", "n1"}, "n1")).message.find("this node") != std::string::npos);
  std::vector<std::string> many(kMaxPartitionPeers + 1, "n2");
  CHECK(checkPeerIds(many, "n1"));
}

TEST_CASE("states from peers are held to the client rules") {
  using chorus::crdt::Hlc;
  using chorus::crdt::ReviewDoc;
  using chorus::crdt::Stamp;
  Limits limits;
  uint64_t t = 1'700'000'000'000;
  auto stamp = [&] { return Stamp{Hlc::fromParts(++t, 0), 7}; };
  auto fieldOf = [&](const ReviewDoc& d) {
    auto e = checkState(d, limits);
    return e ? e->field : std::string();
  };

  ReviewDoc ok({"kettle", "ann"});
  ok.write(4, "fine", "works", stamp());
  ok.tag("blue", 7);
  ok.vote("bob", 7);
  ok.moderate({chorus::crdt::Visibility::kFlagged, "spam?"}, stamp());
  ok.setReply({"thanks"}, stamp());
  CHECK(fieldOf(ok).empty());

  ReviewDoc longTitle({"kettle", "ann"});
  longTitle.write(4, std::string(limits.maxTitleBytes + 1, 't'), "", stamp());
  CHECK(fieldOf(longTitle) == "title");
  // Erased: the tombstone has no text to check.
  longTitle.erase(stamp());
  CHECK(fieldOf(longTitle).empty());

  ReviewDoc badKey({"kettle", "ann marie"});
  CHECK(fieldOf(badKey) == "author");

  ReviewDoc badTag({"kettle", "ann"});
  badTag.tag(std::string(limits.maxIdBytes + 1, 'x'), 7);
  CHECK(fieldOf(badTag) == "tag");

  ReviewDoc badVoter({"kettle", "ann"});
  badVoter.vote("bob\n", 7);
  CHECK(fieldOf(badVoter) == "voter");

  ReviewDoc badReason({"kettle", "ann"});
  badReason.moderate(
      {chorus::crdt::Visibility::kHidden, std::string(limits.maxReasonBytes + 1, 'r')}, stamp());
  CHECK(fieldOf(badReason) == "reason");

  ReviewDoc badReply({"kettle", "ann"});
  badReply.setReply({std::string(limits.maxBodyBytes + 1, 'r')}, stamp());
  CHECK(fieldOf(badReply) == "text");
}

namespace {

// A review with the largest texts the client rules allow, `tags` tags and
// `voters` voters whose ids are `idBytes` long, each added on replica 7.
chorus::crdt::ReviewDoc grown(const Limits& l, size_t tags, size_t voters, size_t idBytes) {
  using chorus::crdt::Hlc;
  using chorus::crdt::Stamp;
  chorus::crdt::ReviewDoc d({"kettle", "ann"});
  uint64_t t = 1'700'000'000'000;
  d.write(5, std::string(l.maxTitleBytes, 't'), std::string(l.maxBodyBytes, 'b'),
          Stamp{Hlc::fromParts(++t, 0), 7});
  d.moderate({chorus::crdt::Visibility::kFlagged, std::string(l.maxReasonBytes, 'r')},
             Stamp{Hlc::fromParts(++t, 0), 7});
  d.setReply({std::string(l.maxBodyBytes, 'y')}, Stamp{Hlc::fromParts(++t, 0), 7});
  auto id = [&](char kind, size_t i) {
    std::string s = kind + std::to_string(i);
    return s + std::string(idBytes > s.size() ? idBytes - s.size() : 0, '.');
  };
  for (size_t i = 0; i < tags; ++i) d.tag(id('t', i), 7);
  for (size_t i = 0; i < voters; ++i) d.vote(id('v', i), 7);
  return d;
}

}  // namespace

TEST_CASE("growth limits: 32 tags and 256 KiB by default; peers get 4 times as much") {
  Limits l;
  CHECK(l.maxTags == 32);
  CHECK(l.maxStateBytes == 256 * 1024);
  CHECK(l.peerSlack == 4);

  // The client path: a 33rd tag is refused, naming the field and the limit;
  // one already there may be added again.
  auto full = grown(l, 32, 0, 8);
  auto e = checkTagRoom(full, "another", l);
  REQUIRE(e);
  CHECK(e->field == "tag");
  CHECK(e->message.find("at most 32 tags") != std::string::npos);
  CHECK(e->toError().code == chorus::ErrorCode::kInvalidArgument);
  CHECK(e->toError().message.rfind("tag: ", 0) == 0);
  CHECK_FALSE(checkTagRoom(full, full.tags().elements().front(), l));
  CHECK_FALSE(checkTagRoom(grown(l, 31, 0, 8), "another", l));

  // Sizes are of the canonical encoding.
  auto small = grown(l, 1, 1, 8);
  CHECK_FALSE(checkStateSize(small, small.encode().size()));
  auto big = checkStateSize(small, small.encode().size() - 1);
  REQUIRE(big);
  CHECK(big->field == "review");
  CHECK(big->message.find(std::to_string(small.encode().size() - 1)) != std::string::npos);

  // How many voters fit in 256 KiB next to 32 maximal tags and the largest
  // texts (documented in validate.h): 3,900 ids of 10 bytes (56 bytes a
  // voter), 1,200 of 128 (176 bytes), not 100 more.
  for (auto [idBytes, atLeast, below] :
       {std::tuple<size_t, size_t, size_t>{10, 3'900, 4'000}, {128, 1'200, 1'300}}) {
    CAPTURE(idBytes);
    CHECK_FALSE(checkStateSize(grown(l, 32, atLeast, idBytes), l.maxStateBytes));
    CHECK(checkStateSize(grown(l, 32, below, idBytes), l.maxStateBytes));
  }
}

TEST_CASE("states from peers: refused past the peer limits, alone and once merged") {
  Limits l;
  // 33 tags: what two sides of a partition can make from 32 client limits
  // each, so it merges; past 32 * peerSlack it does not.
  CHECK_FALSE(checkState(grown(l, 33, 0, 8), l));
  CHECK_FALSE(checkState(grown(l, 128, 0, 8), l));
  auto many = checkState(grown(l, 129, 0, 8), l);
  REQUIRE(many);
  CHECK(many->field == "tag");
  CHECK(many->message.find("at most 128 tags") != std::string::npos);
  CHECK(checkPeerGrowth(grown(l, 129, 0, 8), l));

  // Held to exactly the client limits with peerSlack 1.
  Limits strict;
  strict.peerSlack = 1;
  CHECK_FALSE(checkState(grown(strict, 32, 0, 8), strict));
  auto tag33 = checkState(grown(strict, 33, 0, 8), strict);
  REQUIRE(tag33);
  CHECK(tag33->field == "tag");

  // Size: a state over maxStateBytes * peerSlack is refused ("review").
  auto huge = grown(l, 0, 6'000, 128);
  REQUIRE(huge.encode().size() > 4 * l.maxStateBytes);
  auto tooBig = checkState(huge, l);
  REQUIRE(tooBig);
  CHECK(tooBig->field == "review");
  CHECK(tooBig->message.find(std::to_string(4 * l.maxStateBytes)) != std::string::npos);
  auto mid = grown(l, 0, 2'000, 128);  // over the client limit, within the peers'
  REQUIRE(mid.encode().size() > l.maxStateBytes);
  CHECK_FALSE(checkState(mid, l));
  CHECK(checkState(mid, strict));
}

TEST_CASE("regions: 1-64 letters, digits, '-', '_', '.'") {
  for (std::string ok : std::initializer_list<std::string>{"default", "us-east", "eu.west_2", "A", std::string(64, 'r')}) {
    CAPTURE(ok);
    CHECK_FALSE(checkRegion(ok));
  }
  for (std::string bad : std::initializer_list<std::string>{
           "", std::string(65, 'r'), "us east", "eu/west", "ü", "a\nb", "x\"y", "a:b",
           std::string("a\0b", 3)}) {
    CAPTURE(bad);
    auto e = checkRegion(bad);
    REQUIRE(e);
    CHECK(e->field == "region");
    CHECK(e->message.find("1-64 characters") != std::string::npos);
  }
  CHECK(checkRegion("").value().message.find("empty") != std::string::npos);
  CHECK(checkRegion(std::string(65, 'r')).value().message.find("65") != std::string::npos);
  CHECK(checkRegion("us east").value().message.find("'us east'") != std::string::npos);
}

TEST_CASE("remove: one bounded, printable node id, not the node asked") {
  CHECK_FALSE(checkRemoveId("n2", "n1"));
  CHECK_FALSE(checkRemoveId(std::string(128, 'x'), "n1"));
  for (std::string bad : std::initializer_list<std::string>{"", std::string(129, 'x'), "a\tb",
                                                            "\xff"}) {
    CAPTURE(bad);
    auto e = checkRemoveId(bad, "n1");
    REQUIRE(e);
    CHECK(e->field == "node");
  }
  auto self = checkRemoveId("n1", "n1");
  REQUIRE(self);
  CHECK(self->field == "node");
  CHECK(self->message.find("leave") != std::string::npos);
  // The RPC error carries the field.
  CHECK(self->toError().code == chorus::ErrorCode::kInvalidArgument);
  CHECK(self->toError().message.rfind("node: ", 0) == 0);
}

TEST_CASE("--split: two comma lists joined by one '/'") {
  auto s = parseSplit("n1,us/eu,n7");
  REQUIRE(s);
  CHECK(s->a == std::vector<std::string>{"n1", "us"});
  CHECK(s->b == std::vector<std::string>{"eu", "n7"});
  CHECK(parseSplit("a/b"));
  for (const char* bad : {"", "n1,n2", "/", "a/", "/b", "a,/b", "a/b,", "a//b", "a/b/c", ",a/b"}) {
    CAPTURE(bad);
    CHECK_FALSE(parseSplit(bad));
  }
}

TEST_CASE("--split: region names stand for their nodes, ids for themselves") {
  // n5 left: the caller gives it no region, so no region name covers it.
  std::map<std::string, std::string> regionOf = {{"n1", "us"}, {"n2", "us"}, {"n3", "eu"},
                                                 {"n4", "ap"}, {"n5", ""},   {"eu", "ap"}};
  auto ids = [&](std::vector<std::string> tokens) {
    auto r = expandSplitSide(tokens, regionOf);
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    return *r;
  };
  CHECK(ids({"us"}) == std::vector<std::string>{"n1", "n2"});
  CHECK(ids({"n3", "ap"}) == std::vector<std::string>{"n3", "eu", "n4"});  // by id
  CHECK(ids({"n2", "us"}) == std::vector<std::string>{"n2", "n1"});        // no duplicates
  CHECK(ids({"n5"}) == std::vector<std::string>{"n5"});  // an id works without a region
  // A node named like a region is the node: ids win.
  CHECK(ids({"eu"}) == std::vector<std::string>{"eu"});

  auto unknown = expandSplitSide({"n1", "mars"}, regionOf);
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().code == chorus::ErrorCode::kInvalidArgument);
  CHECK(unknown.error().message.find("'mars'") != std::string::npos);
  CHECK(unknown.error().message.find("regions: ap, eu, us") != std::string::npos);
  // An empty region (a node that left) is no region name.
  CHECK_FALSE(expandSplitSide({""}, regionOf).ok());
  CHECK(failure(expandSplitSide({"x"}, {})).message.find("none known") != std::string::npos);
}
