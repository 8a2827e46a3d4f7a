// Canonical review states that differ from a valid one in a single field
// pushed outside its range: what a faulty or hostile peer could send.
// ReviewDoc::decode must refuse each, with a message naming the range.
//
// Each is built by decoding a valid state's canonical bytes with the
// generated Cap'n Proto reader, copying it into a builder, changing that one
// field and canonicalizing again, so the bytes are canonical and only the
// out-of-range value is wrong. (A live rating 0 also drops the content's
// data word, which canonical form cuts when zero; every other case changes
// exactly one byte of the valid encoding.)
//
// Used by test/crdt/review-test.cpp, test/gossip/peer-input-test.cpp and
// test/fuzz/make-corpus.cpp (the `review` and `reconcile` seed corpora).
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "crdt/review.h"
#include "crdt/state.capnp.h"

namespace chorus::test {

struct OutOfRange {
  std::string name;   // e.g. "rating-0"
  std::string bytes;  // canonical encoding, one field out of range
  std::string why;    // what decode's refusal must say, e.g. "rating 0 outside 1-5"
};

// `valid`'s canonical bytes with `edit` applied to the message, canonicalized.
inline std::string editCanonical(const std::string& valid,
                                 const std::function<void(crdt::wire::Review::Builder)>& edit) {
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(valid.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), valid.data(), valid.size());
  kj::ArrayPtr<const capnp::word> segments[1] = {words.asPtr()};  // canonical: no segment table
  capnp::SegmentArrayMessageReader reader(kj::arrayPtr(segments, 1));
  capnp::MallocMessageBuilder builder;
  builder.setRoot(reader.getRoot<crdt::wire::Review>());
  auto root = builder.getRoot<crdt::wire::Review>();
  edit(root);
  kj::Array<capnp::word> canonical = capnp::canonicalize(root.asReader());
  auto bytes = canonical.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

// A live review (rating 3), tagged, voted, moderated (flagged) and replied
// to, written by replica 7 at `millis`.
inline crdt::ReviewDoc validReview(const crdt::ReviewKey& key,
                                   uint64_t millis = 1'700'000'000'000) {
  crdt::ReviewDoc doc(key);
  crdt::Stamp stamp{crdt::Hlc::fromParts(millis, 0), 7};
  (void)doc.write(3, "Boils fast", "Quiet too", stamp);
  (void)doc.tag("quiet", 7);
  (void)doc.vote("bob", 7);
  (void)doc.moderate({crdt::Visibility::kFlagged, "check"}, stamp);
  (void)doc.setReply({"Thanks"}, stamp);
  return doc;
}

// Every range decode enforces, each pushed out on a state of `key`.
inline std::vector<OutOfRange> outOfRangeStates(const crdt::ReviewKey& key,
                                                uint64_t millis = 1'700'000'000'000) {
  crdt::ReviewDoc live = validReview(key, millis);
  crdt::ReviewDoc tombstone = live;
  (void)tombstone.erase(crdt::Stamp{crdt::Hlc::fromParts(millis + 1, 0), 7});
  const std::string liveBytes = live.encode(), tombstoneBytes = tombstone.encode();
  std::vector<OutOfRange> out;
  for (unsigned rating : {0u, 6u, 7u, 255u}) {
    out.push_back(
        {"rating-" + std::to_string(rating),
         editCanonical(liveBytes,
                       [&](auto r) { r.getContent().setRating(static_cast<uint8_t>(rating)); }),
         "rating " + std::to_string(rating) + " outside 1-5"});
  }
  for (unsigned rating : {1u, 5u}) {
    out.push_back(
        {"tombstone-rating-" + std::to_string(rating),
         editCanonical(tombstoneBytes,
                       [&](auto r) { r.getContent().setRating(static_cast<uint8_t>(rating)); }),
         "tombstone with rating " + std::to_string(rating)});
  }
  out.push_back({"tombstone-title",
                 editCanonical(tombstoneBytes, [](auto r) { r.getContent().setTitle("t"); }),
                 "tombstone carries a title or body"});
  for (unsigned visibility : {3u, 65535u}) {
    out.push_back({"visibility-" + std::to_string(visibility),
                   editCanonical(liveBytes,
                                 [&](auto r) {
                                   r.getModeration().setVisibility(
                                       static_cast<crdt::wire::Visibility>(visibility));
                                 }),
                   "visibility " + std::to_string(visibility) + " outside 0-2"});
  }
  return out;
}

}  // namespace chorus::test
