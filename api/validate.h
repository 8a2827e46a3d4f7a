// Input validation for the client API: pure functions, no I/O, no state, so
// they can be unit-tested and fuzzed in isolation.
//
// Rules (limits configurable through Limits):
//   ids (product, author, voter, tag): 1..maxIdBytes bytes of [A-Za-z0-9._:@-]
//   rating: 1..5
//   title: <= maxTitleBytes, body: <= maxBodyBytes, reply: <= maxBodyBytes,
//   moderation reason: <= maxReasonBytes; all valid UTF-8 without NUL.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "crdt/result.h"
#include "crdt/review.h"

namespace chorus::api {

struct Limits {
  size_t maxIdBytes = 128;
  size_t maxTitleBytes = 200;
  size_t maxBodyBytes = 20'000;
  size_t maxReasonBytes = 500;
};

// A rejected input: which field, and why (a sentence for a human).
struct FieldError {
  std::string field;
  std::string message;

  // invalid-argument Error whose message is "<field>: <message>".
  Error toError() const;
};

using Check = std::optional<FieldError>;  // nullopt = valid

// True if `s` is well-formed UTF-8 (no overlongs, surrogates or values above
// U+10FFFF) and contains no NUL byte.
bool isValidUtf8(std::string_view s);

Check checkId(std::string_view field, std::string_view value, const Limits& limits);
Check checkRating(uint32_t rating);
Check checkText(std::string_view field, std::string_view value, size_t maxBytes);

// Whole requests. Each returns the first problem found, in argument order.
Check checkKey(std::string_view product, std::string_view author, const Limits& limits);
Check checkPut(std::string_view product, std::string_view author, uint32_t rating,
               std::string_view title, std::string_view body, const Limits& limits);
// `field` is "voter" or "tag".
Check checkKeyAnd(std::string_view product, std::string_view author, std::string_view field,
                  std::string_view value, const Limits& limits);
Check checkModerate(std::string_view product, std::string_view author, std::string_view reason,
                    const Limits& limits);
Check checkReply(std::string_view product, std::string_view author, std::string_view text,
                 const Limits& limits);

// A review state received from a peer, held to what this node's API would
// accept from a client: key ids, a live content's rating and texts, every
// tag and voter id, the moderation reason and the reply within `limits`.
// Fields are "product", "author", "rating", "title", "body", "tag", "voter",
// "reason", "text". Peers are trusted (they hold the cluster key); this keeps
// a buggy, older or differently configured peer from storing what no client
// here could have written.
Check checkState(const crdt::ReviewDoc& doc, const Limits& limits);

// Admin.partition's peer ids: at most kMaxPartitionPeers ids, each 1-128
// bytes of UTF-8 without control characters, none equal to `self` (this
// node's id). The field is "peers".
inline constexpr size_t kMaxPartitionPeers = 1024;
Check checkPeerIds(const std::vector<std::string>& peers, std::string_view self);

// Parses a duration for flags: an optional sign, a decimal number and a unit
// of ms, s, m or h ("1500ms", "-30s", "2.5s", "5m"); a bare number counts in
// `bareUnit`. Rounds to whole milliseconds; at most 1000 hours either way.
// Errors: kInvalidArgument saying what is accepted.
Result<std::chrono::milliseconds> parseDuration(std::string_view text,
                                                std::chrono::milliseconds bareUnit);

}  // namespace chorus::api
