// Semantics of the review document that users rely on.
#include <doctest/doctest.h>

#include <random>

#include "crdt/out-of-range.h"
#include "crdt/review.h"
#include "support/seed.h"

using namespace chorus::crdt;

namespace {

const ReviewKey kKey{"sku-123", "alice"};

struct Replica {
  ReviewDoc doc{kKey};
  HybridClock clock;
  Replica(ReplicaId id, const uint64_t* millis) : clock(id, [millis] { return *millis; }) {}
};

}  // namespace

TEST_CASE("concurrent content edits resolve by HLC") {
  uint64_t now = 1'000;
  Replica a(1, &now), b(2, &now);
  ReviewDoc fromA = a.doc.write(3, "ok", "fine", a.clock.now());
  now = 1'001;
  ReviewDoc fromB = b.doc.write(5, "great", "love it", b.clock.now());
  a.doc.join(fromB);
  b.doc.join(fromA);
  CHECK(a.doc == b.doc);
  CHECK(a.doc.content().value().title == "great");
}

TEST_CASE("concurrent content edits with equal HLC resolve by replica id") {
  uint64_t now = 1'000;
  Replica a(1, &now), b(2, &now);
  ReviewDoc fromA = a.doc.write(3, "from a", "", a.clock.now());
  ReviewDoc fromB = b.doc.write(4, "from b", "", b.clock.now());
  REQUIRE(fromA.content().stamp().hlc == fromB.content().stamp().hlc);
  a.doc.join(fromB);
  b.doc.join(fromA);
  CHECK(a.doc == b.doc);
  CHECK(a.doc.content().value().title == "from b");  // replica 2 > replica 1
}

// Equal HLCs, and the lower replica's value is the greater one, so a join
// that compared only the HLC (and then the values) would pick the wrong one.
// Every register, in both delivery orders.
TEST_CASE("on equal HLC the higher replica id wins, for content, moderation and reply") {
  uint64_t now = 1'000;
  Replica low(1, &now), high(2, &now);
  ReviewDoc lowDeltas(kKey), highDeltas(kKey);
  lowDeltas.join(low.doc.write(5, "zzz", "zzz", low.clock.now()));
  lowDeltas.join(low.doc.moderate({Visibility::kFlagged, "zzz"}, low.clock.now()));
  lowDeltas.join(low.doc.setReply({"zzz"}, low.clock.now()));
  highDeltas.join(high.doc.write(1, "aaa", "aaa", high.clock.now()));
  highDeltas.join(high.doc.moderate({Visibility::kVisible, "aaa"}, high.clock.now()));
  highDeltas.join(high.doc.setReply({"aaa"}, high.clock.now()));
  REQUIRE(lowDeltas.content().stamp().hlc == highDeltas.content().stamp().hlc);
  REQUIRE(lowDeltas.moderation().stamp().hlc == highDeltas.moderation().stamp().hlc);
  REQUIRE(lowDeltas.reply().stamp().hlc == highDeltas.reply().stamp().hlc);
  REQUIRE(lowDeltas.content().value() > highDeltas.content().value());
  REQUIRE(lowDeltas.moderation().value() > highDeltas.moderation().value());
  REQUIRE(lowDeltas.reply().value() > highDeltas.reply().value());

  ReviewDoc lowThenHigh(kKey), highThenLow(kKey);
  lowThenHigh.join(lowDeltas);
  lowThenHigh.join(highDeltas);
  highThenLow.join(highDeltas);
  highThenLow.join(lowDeltas);
  low.doc.join(highDeltas);
  high.doc.join(lowDeltas);
  for (const ReviewDoc* d : {&lowThenHigh, &highThenLow, &low.doc, &high.doc}) {
    CHECK(d->content().value() == Content{false, 1, "aaa", "aaa"});
    CHECK(d->content().stamp().replica == 2);
    CHECK(d->moderation().value() == Moderation{Visibility::kVisible, "aaa"});
    CHECK(d->moderation().stamp().replica == 2);
    CHECK(d->reply().value().text == "aaa");
    CHECK(d->reply().stamp().replica == 2);
  }
}

TEST_CASE("an edit replaces the content as a unit") {
  uint64_t now = 1'000;
  Replica a(1, &now), b(2, &now);
  b.doc.join(a.doc.write(2, "t1", "b1", a.clock.now()));
  now = 1'010;
  ReviewDoc edit = a.doc.write(4, "t2", "b2", a.clock.now());
  b.doc.join(edit);
  CHECK(b.doc.content().value() == Content{false, 4, "t2", "b2"});
}

TEST_CASE("delete erases the text everywhere and a later edit revives") {
  uint64_t now = 1'000;
  Replica a(1, &now), b(2, &now);
  b.doc.join(a.doc.write(5, "secret title", "secret body", a.clock.now()));
  now = 1'005;
  ReviewDoc tombstone = b.doc.erase(b.clock.now());
  a.doc.join(tombstone);
  for (const ReviewDoc* d : {&a.doc, &b.doc}) {
    CHECK_FALSE(d->exists());
    std::string bytes = d->encode();
    CHECK(bytes.find("secret") == std::string::npos);
  }
  CHECK(tombstone.encode().find("secret") == std::string::npos);
  now = 1'010;
  b.doc.join(a.doc.write(4, "back", "again", a.clock.now()));
  CHECK(b.doc.exists());
  CHECK(b.doc.content().value().title == "back");
}

TEST_CASE("an older edit arriving after a delete does not revive the review") {
  uint64_t now = 1'000;
  Replica a(1, &now), b(2, &now);
  ReviewDoc old = a.doc.write(5, "old", "old", a.clock.now());
  now = 1'005;
  b.doc.join(b.doc.erase(b.clock.now()));
  b.doc.join(old);
  CHECK_FALSE(b.doc.exists());
}

TEST_CASE("a retried vote counts once and a voter can retract") {
  uint64_t now = 1'000;
  Replica a(1, &now), b(2, &now);
  ReviewDoc v1 = a.doc.vote("bob", 1);
  ReviewDoc v2 = a.doc.vote("bob", 1);  // client retried
  b.doc.join(v1);
  b.doc.join(v2);
  b.doc.join(v1);  // and the network duplicated
  CHECK(a.doc.helpfulCount() == 1);
  CHECK(b.doc.helpfulCount() == 1);
  b.doc.join(b.doc.unvote("bob"));
  CHECK(b.doc.helpfulCount() == 0);
}

TEST_CASE("the same voter voting on two replicas concurrently counts once") {
  uint64_t now = 1'000;
  Replica a(1, &now), b(2, &now);
  ReviewDoc va = a.doc.vote("bob", 1);
  ReviewDoc vb = b.doc.vote("bob", 2);
  a.doc.join(vb);
  b.doc.join(va);
  CHECK(a.doc.helpfulCount() == 1);
  CHECK(a.doc == b.doc);
}

TEST_CASE("add-wins on concurrent tag and untag") {
  uint64_t now = 1'000;
  Replica a(1, &now), b(2, &now);
  b.doc.join(a.doc.tag("runs-small", 1));
  ReviewDoc untag = a.doc.untag("runs-small");
  ReviewDoc retag = b.doc.tag("runs-small", 2);
  a.doc.join(retag);
  b.doc.join(untag);
  CHECK(a.doc.tags().contains("runs-small"));
  CHECK(a.doc == b.doc);
}

TEST_CASE("moderation and reply are last-writer-wins registers") {
  uint64_t now = 1'000;
  Replica a(1, &now), b(2, &now);
  ReviewDoc hide = a.doc.moderate({Visibility::kHidden, "spam"}, a.clock.now());
  now = 1'002;
  ReviewDoc show = b.doc.moderate({Visibility::kVisible, "appeal ok"}, b.clock.now());
  ReviewDoc reply = b.doc.setReply({"Thanks for the feedback"}, b.clock.now());
  a.doc.join(show);
  a.doc.join(reply);
  b.doc.join(hide);
  CHECK(a.doc == b.doc);
  CHECK(a.doc.moderation().value().visibility == Visibility::kVisible);
  CHECK(a.doc.reply().value().text == "Thanks for the feedback");
}

TEST_CASE("maxHlc reports the newest stamp in the document") {
  uint64_t now = 1'000;
  Replica a(1, &now);
  (void)a.doc.write(1, "", "", a.clock.now());
  now = 2'000;
  (void)a.doc.setReply({"r"}, a.clock.now());
  CHECK(a.doc.maxHlc() == Hlc::fromParts(2'000, 0));
}

namespace {

ReviewDoc sampleDoc() {
  uint64_t now = 1'700'000'000'000;
  Replica a(1, &now), b(2, &now);
  (void)a.doc.write(4, "Comfortable", "Wore them for a week.", a.clock.now());
  (void)a.doc.tag("fit", 1);
  (void)a.doc.tag("value", 1);
  (void)a.doc.vote("v1", 1);
  b.doc.join(a.doc);
  (void)b.doc.vote("v2", 2);
  (void)b.doc.untag("fit");
  (void)b.doc.moderate({Visibility::kFlagged, "check"}, b.clock.now());
  (void)b.doc.setReply({"Glad you like them"}, b.clock.now());
  return b.doc;
}

}  // namespace

TEST_CASE("decode rejects every truncation of a valid encoding") {
  std::string bytes = sampleDoc().encode();
  REQUIRE(ReviewDoc::decode(bytes).ok());
  for (size_t len = 0; len < bytes.size(); ++len) {
    CAPTURE(len);
    auto r = ReviewDoc::decode(std::string_view(bytes).substr(0, len));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == chorus::ErrorCode::kCorruption);
  }
}

TEST_CASE("decode of bit-flipped encodings fails cleanly or yields a valid state") {
  ReviewDoc doc = sampleDoc();
  std::string bytes = doc.encode();
  uint64_t seed = chorus::test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  int rejected = 0;
  for (int i = 0; i < 20'000; ++i) {
    std::string flipped = bytes;
    int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) {
      size_t bit = rng() % (flipped.size() * 8);
      flipped[bit / 8] = static_cast<char>(flipped[bit / 8] ^ (1 << (bit % 8)));
    }
    auto r = ReviewDoc::decode(flipped);
    if (!r.ok()) {
      ++rejected;
      CHECK(r.error().code == chorus::ErrorCode::kCorruption);
    } else {
      // Accepted only if it is itself a valid canonical state.
      CHECK(r.value().encode() == flipped);
    }
  }
  CHECK(rejected > 10'000);  // most flips break structure or invariants
}

TEST_CASE("decode rejects garbage, wrong versions and broken invariants with a reason") {
  CHECK_FALSE(ReviewDoc::decode("").ok());
  CHECK_FALSE(ReviewDoc::decode(std::string(64, '\xff')).ok());
  CHECK_FALSE(ReviewDoc::decode(std::string(7, '\0')).ok());
  auto r = ReviewDoc::decode(std::string(16, '\0'));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().toString().rfind("corruption: review state:", 0) == 0);
}

TEST_CASE("decode refuses a canonical state with a field outside its range, naming the range") {
  const ReviewKey key{"kettle-1", "ann"};
  const std::string valid = chorus::test::validReview(key).encode();
  REQUIRE(ReviewDoc::decode(valid).ok());
  // The edit path itself: no change gives the valid bytes back, and every
  // in-range rating and visibility decodes.
  REQUIRE(chorus::test::editCanonical(valid, [](auto) {}) == valid);
  for (uint8_t rating = 1; rating <= 5; ++rating) {
    auto r = ReviewDoc::decode(chorus::test::editCanonical(
        valid, [&](auto root) { root.getContent().setRating(rating); }));
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    CHECK(r->content().value().rating == rating);
  }
  for (uint16_t v = 0; v <= 2; ++v) {
    auto r = ReviewDoc::decode(chorus::test::editCanonical(valid, [&](auto root) {
      root.getModeration().setVisibility(static_cast<chorus::crdt::wire::Visibility>(v));
    }));
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    CHECK(static_cast<uint16_t>(r->moderation().value().visibility) == v);
  }

  auto states = chorus::test::outOfRangeStates(key);
  REQUIRE(states.size() >= 9);
  for (const auto& bad : states) {
    CAPTURE(bad.name);
    auto r = ReviewDoc::decode(bad.bytes);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == chorus::ErrorCode::kCorruption);
    CHECK_MESSAGE(r.error().message.find(bad.why) != std::string::npos, r.error().message);
  }
  // Rating 6 is the valid encoding with one byte changed: the rating's.
  const std::string& six = states[1].bytes;
  REQUIRE(states[1].name == "rating-6");
  REQUIRE(six.size() == valid.size());
  size_t differing = 0;
  for (size_t i = 0; i < six.size(); ++i) {
    if (six[i] != valid[i]) {
      ++differing;
      CHECK(static_cast<uint8_t>(valid[i]) == 3);
      CHECK(static_cast<uint8_t>(six[i]) == 6);
    }
  }
  CHECK(differing == 1);
}
