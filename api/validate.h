// Input validation for the client API: pure functions, no I/O, no state, so
// they can be unit-tested and fuzzed in isolation.
//
// Rules (limits configurable through Limits):
//   ids (product, author, voter, tag): 1..maxIdBytes bytes of [A-Za-z0-9._:@-]
//   rating: 1..5
//   title: <= maxTitleBytes, body: <= maxBodyBytes, reply: <= maxBodyBytes,
//   moderation reason: <= maxReasonBytes; all valid UTF-8 without NUL.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "crdt/result.h"

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

}  // namespace chorus::api
