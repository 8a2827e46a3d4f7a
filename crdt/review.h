// The review document: one CRDT per (product, author).
//
// Merge rules (join):
//   content     LWW register {rating, title, body}; an edit replaces it whole.
//               Delete writes a tombstone that carries no text, so after the
//               merge the text is gone everywhere; a later write revives.
//   tags        add-wins OR-Set of tag strings
//   helpful     add-wins OR-Set of voter ids; the helpful count is its size
//   moderation  LWW register {visibility, reason}
//   reply       LWW register {text}: the merchant's public answer
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include "hlc.h"
#include "lww-register.h"
#include "or-set.h"
#include "result.h"

namespace chorus::crdt {

// Version of the canonical encoding (state.capnp, Review.version).
inline constexpr uint16_t kStateVersion = 1;

struct ReviewKey {
  std::string product;
  std::string author;
  auto operator<=>(const ReviewKey&) const = default;
};

struct Content {
  bool deleted = false;
  uint8_t rating = 0;  // 1-5 when live, 0 for a tombstone
  std::string title;
  std::string body;
  auto operator<=>(const Content&) const = default;
};

enum class Visibility : uint8_t { kVisible = 0, kHidden = 1, kFlagged = 2 };

struct Moderation {
  Visibility visibility = Visibility::kVisible;
  std::string reason;
  auto operator<=>(const Moderation&) const = default;
};

struct Reply {
  std::string text;
  auto operator<=>(const Reply&) const = default;
};

class ReviewDoc {
 public:
  ReviewDoc() = default;
  explicit ReviewDoc(ReviewKey key) : key_(std::move(key)) {}

  const ReviewKey& key() const { return key_; }
  const LwwRegister<Content>& content() const { return content_; }
  const OrSet& tags() const { return tags_; }
  const OrSet& helpful() const { return helpful_; }
  const LwwRegister<Moderation>& moderation() const { return moderation_; }
  const LwwRegister<Reply>& reply() const { return reply_; }

  // A review exists when its content was written and not deleted since.
  bool exists() const { return content_.isSet() && !content_.value().deleted; }
  size_t helpfulCount() const { return helpful_.size(); }
  // The greatest HLC anywhere in this document (zero if none): what a
  // receiver passes to HybridClock::observe.
  Hlc maxHlc() const;

  // Delta mutators: each changes this document and returns the delta, a
  // partial document with the same key to join into any replica.
  // Preconditions (checked by the API layer, asserted here): rating 1-5.
  ReviewDoc write(uint8_t rating, std::string title, std::string body, Stamp stamp);
  ReviewDoc erase(Stamp stamp);
  ReviewDoc tag(const std::string& tag, ReplicaId replica);
  ReviewDoc untag(const std::string& tag);
  ReviewDoc vote(const std::string& voter, ReplicaId replica);
  ReviewDoc unvote(const std::string& voter);
  ReviewDoc moderate(Moderation moderation, Stamp stamp);
  ReviewDoc setReply(Reply reply, Stamp stamp);

  // Merges `other` in. Precondition: same key (asserted).
  void join(const ReviewDoc& other);

  // Canonical bytes: equal documents encode to equal bytes.
  std::string encode() const;
  // Accepts exactly the canonical encoding of a valid document; anything
  // else (truncated, corrupted, unknown version, broken invariants) is a
  // kCorruption error, never a crash.
  static Result<ReviewDoc> decode(std::string_view bytes);

  bool operator==(const ReviewDoc&) const = default;

 private:
  ReviewDoc emptyDelta() const { return ReviewDoc(key_); }

  ReviewKey key_;
  LwwRegister<Content> content_;
  OrSet tags_;
  OrSet helpful_;
  LwwRegister<Moderation> moderation_;
  LwwRegister<Reply> reply_;
};

}  // namespace chorus::crdt
