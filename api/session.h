// Read-your-writes session tokens (api/README.md, "Read your writes").
//
// Every write answers a token naming what the write added to its review;
// a read that presents it is served only by a node whose stored review
// already holds that write. "Holds" means joining the write's delta into
// the stored document would change nothing, decided from the document
// alone:
//   - LWW registers (content: put and erase; moderation; reply): the
//     stored register's stamp is at least the write's. A later write by HLC
//     order also holds it: the reader sees what the write merged into.
//   - Add-wins OR-sets (tags, helpful votes): every dot the write added is
//     in the set's causal context (live, or removed later), and every dot
//     the write removed (an untag or unvote, or the dots an add replaced)
//     is in the context and no longer live.
// Holding is monotone: once a node holds a write it always does.
//
// Text form: "s1" + URL-safe base64 (no padding) of a small binary record:
// version, product, author, the node that accepted the write, the register
// stamps and the dots. Opaque to clients; typically 40-80 characters.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "crdt/or-set.h"
#include "crdt/result.h"
#include "crdt/review.h"

namespace chorus::api {

struct SessionToken {
  // The dots an OR-set delta added (entries) and removed (context only).
  struct SetDots {
    std::vector<crdt::Dot> added;
    std::vector<crdt::Dot> removed;
    bool operator==(const SetDots&) const = default;
  };

  crdt::ReviewKey key;
  std::string origin;  // the node id that accepted the write (a pull asks it first)
  std::optional<crdt::Stamp> content, moderation, reply;
  SetDots tags, helpful;

  // Longest text decode() accepts (a token is typically under 100 bytes).
  static constexpr size_t kMaxTextBytes = 4096;

  // The token of a committed write whose delta is `delta`, accepted by `origin`.
  static SessionToken of(const crdt::ReviewDoc& delta, std::string origin);

  // Whether `doc` (the stored review; an empty ReviewDoc if none) holds the
  // write. Pure; O(size of doc) at worst.
  bool heldBy(const crdt::ReviewDoc& doc) const;

  std::string encode() const;
  // kInvalidArgument "session: ..." for anything encode() did not make
  // (wrong prefix or version, bad base64, truncated, trailing bytes, zero
  // replica or counter, longer than kMaxTextBytes). The key is not
  // validated here (see api::checkKey).
  static Result<SessionToken> decode(std::string_view text);

  bool operator==(const SessionToken&) const = default;
};

}  // namespace chorus::api
