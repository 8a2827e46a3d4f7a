// Input validation for the client API: pure functions, no I/O, no state, so
// they can be unit-tested and fuzzed in isolation.
//
// Rules (limits configurable through Limits):
//   ids (product, author, voter, tag): 1..maxIdBytes bytes of [A-Za-z0-9._:@-]
//   rating: 1..5
//   title: <= maxTitleBytes, body: <= maxBodyBytes, reply: <= maxBodyBytes,
//   moderation reason: <= maxReasonBytes; all valid UTF-8 without NUL.
//   growth of one review: <= maxTags tags, and its canonical encoding
//   (ReviewDoc::encode) <= maxStateBytes after any write that adds to it;
//   states from peers get peerSlack times as much (see checkState).
#pragma once

#include <chrono>
#include <cstddef>
#include <map>
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
  // Growth of one review. A client's tag that would make more than maxTags
  // is refused, and so is any write (put, tag, vote, moderate, reply) after
  // which the review's canonical encoding would pass maxStateBytes (256
  // KiB: a quarter of the 1 MiB RPC message and far below gossip's 16 MiB
  // anti-entropy messages, while every write rewrites the whole review).
  // Votes are one per principal, so the size bounds the voters: a voter
  // costs 56 bytes with a 10-byte id and 176 with the largest (128 bytes),
  // so about 4,600 or 1,480 voters fit, and still 3,900 or 1,200 beside 32
  // tags and the largest title, body, reason and reply. Untag, unvote and
  // delete only shrink a review and are never refused for size.
  size_t maxTags = 32;
  size_t maxStateBytes = 256 * 1024;
  // States from peers (checkState) may hold up to peerSlack times maxTags
  // and maxStateBytes (by default 128 tags, 1 MiB). A node refuses a tag or
  // vote past the limits only from what it has seen, so writes accepted on
  // both sides of a partition can merge into more; refusing that union on
  // merge would leave the nodes apart for good. The slack lets up to
  // peerSlack full sides merge, and still stops a peer that is broken or
  // set up without limits. It holds for the joined result of every merge,
  // not only for each state or delta received (checkPeerGrowth). 1 holds
  // peers to exactly the client limits.
  size_t peerSlack = 4;
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

// A page size (list, page, byAuthor): 0 = kDefaultPageLimit, at most
// kMaxPageLimit; more is refused (field "limit"), not cut.
inline constexpr uint32_t kDefaultPageLimit = 20;
inline constexpr uint32_t kMaxPageLimit = 100;
Check checkLimit(uint32_t limit);

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

// A client's tag `tag` on `doc` (the review as stored): refused (field "tag")
// when `doc` has limits.maxTags tags and `tag` is not one of them.
Check checkTagRoom(const crdt::ReviewDoc& doc, std::string_view tag, const Limits& limits);

// The size of `doc`'s canonical encoding against `maxBytes`: refused with
// field "review", naming both sizes.
Check checkStateSize(const crdt::ReviewDoc& doc, size_t maxBytes);

// What a merge may make of a review: at most maxTags * peerSlack tags and
// an encoding of at most maxStateBytes * peerSlack bytes (fields "tag",
// "review"). The store applies it to the joined state of every merge
// (storage::Options::admitMerge), since deltas that pass one by one could
// add up past any limit.
Check checkPeerGrowth(const crdt::ReviewDoc& doc, const Limits& limits);

// A review state received from a peer, held to what this node's API would
// accept from a client: key ids, a live content's rating and texts, every
// tag and voter id, the moderation reason and the reply within `limits`,
// and checkPeerGrowth.
// Fields are "product", "author", "rating", "title", "body", "tag", "voter",
// "reason", "text", "review". Peers are trusted (they hold the cluster key); this keeps
// a buggy, older or differently configured peer from storing what no client
// here could have written.
Check checkState(const crdt::ReviewDoc& doc, const Limits& limits);

// Admin.partition's peer ids: at most kMaxPartitionPeers ids, each 1-128
// bytes of UTF-8 without control characters, none equal to `self` (this
// node's id). The field is "peers".
inline constexpr size_t kMaxPartitionPeers = 1024;
Check checkPeerIds(const std::vector<std::string>& peers, std::string_view self);

// A node's region (chorusd --region, gossip::ClusterOptions::region): 1-64
// characters of letters, digits, '-', '_' and '.'. The field is "region".
inline constexpr size_t kMaxRegionBytes = 64;
Check checkRegion(std::string_view region);

// Admin.remove's node id: 1-128 bytes of UTF-8 without control characters,
// not `self` (a node leaves with Admin.leave instead). The field is "node".
Check checkRemoveId(std::string_view node, std::string_view self);

// `chorus cluster partition --split A,B/C,D`: the two sides, each a list
// of tokens as given (node ids or region names). nullopt unless `text` is
// two non-empty comma-separated lists, without empty items, joined by one '/'.
struct SplitSides {
  std::vector<std::string> a, b;
};
std::optional<SplitSides> parseSplit(std::string_view text);

// The node ids one side of a --split stands for. `regionOf` maps each node
// that may take part to its region. A token that is a node id in `regionOf`
// stands for that node (ids win over region names); else one that names a
// region of `regionOf` stands for every node of that region; else it is an
// error (kInvalidArgument) naming the token and the known regions. The ids
// come in token order, each region's by id, without duplicates.
Result<std::vector<std::string>> expandSplitSide(
    const std::vector<std::string>& tokens, const std::map<std::string, std::string>& regionOf);

// Parses a duration for flags: an optional sign, a decimal number and a unit
// of ms, s, m or h ("1500ms", "-30s", "2.5s", "5m"); a bare number counts in
// `bareUnit`. Rounds to whole milliseconds; at most 1000 hours either way.
// Errors: kInvalidArgument saying what is accepted.
Result<std::chrono::milliseconds> parseDuration(std::string_view text,
                                                std::chrono::milliseconds bareUnit);

}  // namespace chorus::api
