// Read-your-writes session tokens (api/session.h): the text form, and what
// "a document holds the write" means for each kind of write, on documents
// built by the CRDT's own mutators and joins.
#include <doctest/doctest.h>

#include <string>

#include "api/session.h"
#include "crdt/hlc.h"
#include "crdt/review.h"
#include "support/results.h"

using chorus::ErrorCode;
using chorus::api::SessionToken;
using chorus::crdt::HybridClock;
using chorus::crdt::ReviewDoc;
using chorus::crdt::ReviewKey;
using chorus::test::failure;

namespace {

// Two replicas of one review, each with its own clock.
struct Replicas {
  uint64_t millis = 1'700'000'000'000;
  HybridClock a{0xa1, [this] { return millis; }};
  HybridClock b{0xb2, [this] { return millis; }};
  ReviewDoc onA{ReviewKey{"p1", "ann"}};
  ReviewDoc onB{ReviewKey{"p1", "ann"}};
};

}  // namespace

TEST_CASE("session: a token's text round-trips, is URL-safe and small") {
  Replicas r;
  auto delta = r.onA.write(5, "Great", "a body that is not in the token", r.a.now());
  SessionToken t = SessionToken::of(delta, "node-a");
  CHECK(t.key == ReviewKey{"p1", "ann"});
  CHECK(t.origin == "node-a");
  REQUIRE(t.content.has_value());
  CHECK_FALSE(t.moderation.has_value());
  std::string text = t.encode();
  CHECK(text.rfind("s1", 0) == 0);
  CHECK(text.size() < 80);
  CHECK(
      text.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") ==
      std::string::npos);
  CHECK(text.find("body") == std::string::npos);
  auto back = SessionToken::decode(text);
  REQUIRE_MESSAGE(back.ok(), back.error().toString());
  CHECK(*back == t);

  // Votes carry dots: they round-trip too.
  auto vote = r.onA.vote("bob", r.a.replica());
  SessionToken v = SessionToken::of(vote, "node-a");
  CHECK(v.helpful.added.size() == 1);
  CHECK(v.helpful.removed.empty());
  CHECK(*SessionToken::decode(v.encode()) == v);
}

TEST_CASE("session: malformed tokens are invalidArgument naming the field") {
  Replicas r;
  std::string good = SessionToken::of(r.onA.write(4, "t", "", r.a.now()), "a").encode();
  for (std::string bad :
       {std::string(""), std::string("x"), std::string("s1"), std::string("s2") + good.substr(2),
        std::string("s1!!!!"), good.substr(0, good.size() - 3), good + "AAAA",
        std::string(SessionToken::kMaxTextBytes + 1, 'A')}) {
    CAPTURE(bad);
    auto e = failure(SessionToken::decode(bad));
    CHECK(e.code == ErrorCode::kInvalidArgument);
    CHECK(e.message.rfind("session: ", 0) == 0);
  }
}

TEST_CASE("session: LWW writes are held once the stamp or a later one is there") {
  Replicas r;
  auto put = r.onA.write(5, "v1", "", r.a.now());
  SessionToken t = SessionToken::of(put, "a");
  CHECK(t.heldBy(r.onA));
  CHECK_FALSE(t.heldBy(r.onB));             // B has nothing
  CHECK_FALSE(t.heldBy(ReviewDoc(t.key)));  // nor an empty review
  r.onB.join(put);
  CHECK(t.heldBy(r.onB));
  // A later write elsewhere (greater stamp) holds it too: the reader sees
  // what the write merged into.
  r.millis += 10;
  ReviewDoc onC(ReviewKey{"p1", "ann"});
  HybridClock c{0xc3, [&] { return r.millis; }};
  onC.write(1, "later", "", c.now());
  CHECK(t.heldBy(onC));
  // An earlier write elsewhere does not.
  ReviewDoc onD(ReviewKey{"p1", "ann"});
  HybridClock d{0xd4, [&] { return r.millis - 1000; }};
  onD.write(2, "earlier", "", d.now());
  CHECK_FALSE(t.heldBy(onD));
  // Erase, moderate and reply: their own registers.
  r.millis += 10;
  auto erase = r.onA.erase(r.a.now());
  SessionToken e = SessionToken::of(erase, "a");
  CHECK_FALSE(e.heldBy(r.onB));
  r.onB.join(erase);
  CHECK(e.heldBy(r.onB));
  auto moderate = r.onA.moderate({chorus::crdt::Visibility::kHidden, "spam"}, r.a.now());
  auto reply = r.onA.setReply({"thanks"}, r.a.now());
  SessionToken m = SessionToken::of(moderate, "a"), y = SessionToken::of(reply, "a");
  CHECK(m.moderation.has_value());
  CHECK_FALSE(m.content.has_value());
  CHECK_FALSE(m.heldBy(r.onB));
  CHECK_FALSE(y.heldBy(r.onB));
  r.onB.join(reply);
  CHECK(y.heldBy(r.onB));
  CHECK_FALSE(m.heldBy(r.onB));  // the reply did not bring the moderation
  r.onB.join(moderate);
  CHECK(m.heldBy(r.onB));
}

TEST_CASE("session: OR-set adds and removes are held by the dots in the document") {
  Replicas r;
  r.onA.write(4, "t", "", r.a.now());
  r.onB.join(r.onA);
  // A vote adds a dot: held once the dot is in B's context.
  auto vote = r.onA.vote("bob", r.a.replica());
  SessionToken v = SessionToken::of(vote, "a");
  CHECK(v.heldBy(r.onA));
  CHECK_FALSE(v.heldBy(r.onB));
  r.onB.join(vote);
  CHECK(v.heldBy(r.onB));
  CHECK(r.onB.helpfulCount() == 1);

  // An unvote removes that dot: B, which has the vote live, does not hold
  // it; once the remove arrived it does.
  auto unvote = r.onA.unvote("bob");
  SessionToken u = SessionToken::of(unvote, "a");
  CHECK(u.helpful.added.empty());
  CHECK(u.helpful.removed.size() == 1);
  CHECK(u.heldBy(r.onA));
  CHECK_FALSE(u.heldBy(r.onB));
  // A replica that never saw the vote does not hold its removal either.
  ReviewDoc fresh(ReviewKey{"p1", "ann"});
  CHECK_FALSE(u.heldBy(fresh));
  r.onB.join(unvote);
  CHECK(r.onB.helpfulCount() == 0);
  CHECK(u.heldBy(r.onB));
  // The vote stays held after it was removed (holding is monotone).
  CHECK(v.heldBy(r.onB));

  // A tag, re-added on A: the new add replaces A's old dot (a removed dot
  // in the token), so B holds it only with the new dot and the old one gone.
  auto tag1 = r.onA.tag("sturdy", r.a.replica());
  r.onB.join(tag1);
  auto tag2 = r.onA.tag("sturdy", r.a.replica());
  SessionToken t2 = SessionToken::of(tag2, "a");
  CHECK(t2.tags.added.size() == 1);
  CHECK(t2.tags.removed.size() == 1);
  CHECK_FALSE(t2.heldBy(r.onB));
  r.onB.join(tag2);
  CHECK(t2.heldBy(r.onB));
  // A concurrent tag from B survives A's untag (add wins), and A's untag
  // is still held once merged: what it removed is gone.
  auto tagB = r.onB.tag("sturdy", r.b.replica());
  auto untag = r.onA.untag("sturdy");
  SessionToken un = SessionToken::of(untag, "a");
  r.onB.join(untag);
  CHECK(un.heldBy(r.onB));
  CHECK(r.onB.tags().contains("sturdy"));
  (void)tagB;
}
