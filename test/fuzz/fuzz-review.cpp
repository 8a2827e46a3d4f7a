// Fuzz target: a review state or delta as it arrives from a peer or from
// disk, crdt::ReviewDoc::decode (crdt/review.h).
//
// Anything decode refuses must be kCorruption. For anything it accepts:
// its fields are within their ranges (a live rating 1-5, a tombstone
// without content, a known visibility, a non-empty key); the bytes are the
// canonical encoding (encode gives them back, decode of
// that gives the same document); join with itself changes nothing; each
// delta mutator obeys the delta law (state before joined with the delta ==
// state after) and leaves a state that still round-trips; and join with a
// second document of the same key commutes, is idempotent and round-trips.
#include "crdt/review.h"
#include "fuzz-support.h"

using namespace chorus;
using crdt::ReviewDoc;

namespace {

void roundTrips(const ReviewDoc& doc, const char* what) {
  std::string bytes = doc.encode();
  auto back = ReviewDoc::decode(bytes);
  FUZZ_CHECK(back.ok(), std::string(what) + ": its encoding does not decode: " +
                            (back.ok() ? "" : back.error().toString()));
  FUZZ_CHECK(back.value() == doc, std::string(what) + ": decode(encode(doc)) != doc");
  FUZZ_CHECK(back.value().encode() == bytes, std::string(what) + ": encoding not stable");
}

ReviewDoc joined(ReviewDoc a, const ReviewDoc& b) {
  a.join(b);
  return a;
}

// Applies `mutate` to a copy of `before`; checks the delta law.
template <class Mutate>
void deltaLaw(const ReviewDoc& before, const char* what, Mutate mutate) {
  ReviewDoc after = before;
  ReviewDoc delta = mutate(after);
  FUZZ_CHECK(joined(before, delta) == after, std::string(what) + ": before + delta != after");
  FUZZ_CHECK(joined(after, delta) == after, std::string(what) + ": delta not idempotent");
  roundTrips(after, what);
  roundTrips(delta, what);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto decoded = ReviewDoc::decode(bytes);
  if (!decoded.ok()) {
    FUZZ_CHECK(decoded.error().code == ErrorCode::kCorruption, decoded.error().toString());
    return 0;
  }
  const ReviewDoc& doc = decoded.value();
  FUZZ_CHECK(doc.encode() == bytes, "accepted bytes that are not the canonical encoding");
  // Only states within the document's ranges: what the store's listings and
  // summaries rely on (a live rating 0 once broke every listing of its product).
  if (doc.content().isSet()) {
    const crdt::Content& c = doc.content().value();
    if (c.deleted) {
      FUZZ_CHECK(c.rating == 0 && c.title.empty() && c.body.empty(), "a tombstone with content");
    } else {
      FUZZ_CHECK(c.rating >= 1 && c.rating <= 5, "accepted rating " + std::to_string(c.rating));
    }
  }
  FUZZ_CHECK(static_cast<unsigned>(doc.moderation().value().visibility) <= 2,
             "accepted an unknown visibility");
  FUZZ_CHECK(!doc.key().product.empty() && !doc.key().author.empty(), "accepted an empty key");
  roundTrips(doc, "decoded");
  FUZZ_CHECK(joined(doc, doc) == doc, "join with itself changed the document");
  FUZZ_CHECK(joined(doc, ReviewDoc(doc.key())) == doc, "join with the empty document changed it");

  // Local operations on a received state, as a node does after a merge. The
  // replica is one the state already knows, when it knows one.
  crdt::ReplicaId replica = 5;
  if (!doc.tags().context().versionVector().empty()) {
    replica = doc.tags().context().versionVector().begin()->first;
  }
  crdt::Hlc top = doc.maxHlc();
  if (top.millis() < crdt::Hlc::kMaxMillis) {
    crdt::Stamp later{crdt::Hlc::fromParts(top.millis() + 1, 0), replica};
    deltaLaw(doc, "write", [&](ReviewDoc& d) { return d.write(4, "fuzz title", "body", later); });
    deltaLaw(doc, "erase", [&](ReviewDoc& d) { return d.erase(later); });
    deltaLaw(doc, "moderate", [&](ReviewDoc& d) {
      return d.moderate(crdt::Moderation{crdt::Visibility::kHidden, "spam"}, later);
    });
    deltaLaw(doc, "reply", [&](ReviewDoc& d) { return d.setReply(crdt::Reply{"thanks"}, later); });
  }
  deltaLaw(doc, "tag", [&](ReviewDoc& d) { return d.tag("fuzz-tag", replica); });
  deltaLaw(doc, "vote", [&](ReviewDoc& d) { return d.vote("fuzz-voter", replica); });
  for (const auto& entry : doc.tags().entries()) {
    const std::string& tag = entry.first;
    deltaLaw(doc, "untag", [&](ReviewDoc& d) { return d.untag(tag); });
    deltaLaw(doc, "retag", [&](ReviewDoc& d) { return d.tag(tag, replica); });
    break;
  }
  for (const auto& entry : doc.helpful().entries()) {
    const std::string& voter = entry.first;
    deltaLaw(doc, "unvote", [&](ReviewDoc& d) { return d.unvote(voter); });
    break;
  }

  // A second document of the same key, written on two other replicas.
  ReviewDoc other(doc.key());
  (void)other.write(2, "other", "other body", crdt::Stamp{crdt::Hlc::fromParts(5000, 1), 11});
  (void)other.tag("fuzz-tag", 11);
  (void)other.vote("fuzz-voter", 12);
  (void)other.moderate(crdt::Moderation{crdt::Visibility::kFlagged, "check"},
                       crdt::Stamp{crdt::Hlc::fromParts(5000, 2), 12});
  ReviewDoc ab = joined(doc, other), ba = joined(other, doc);
  FUZZ_CHECK(ab == ba, "join does not commute");
  FUZZ_CHECK(joined(ab, other) == ab && joined(ab, doc) == ab, "join not idempotent");
  roundTrips(ab, "joined");
  return 0;
}
