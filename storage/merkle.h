// The hashes of the storage Merkle tree, shared by the store and by
// anti-entropy (which must place keys in the tree exactly as the store does).
//
//   keyHash(key)   be32(first 4 bytes of BLAKE2b-128(idPrefix(author)))
//                  || be32(first 4 bytes of BLAKE2b-128(docKey(key))),
//                  read as a big-endian 64-bit number
//   leafIndex      top 16 bits of keyHash (Store::kFanout^Store::kDepth leaves)
//
// The top half hashes the author alone, so an author's reviews sit in one
// leaf and form one range of leaf entries: that range is the by-author
// listing, and no separate author index is written. The price: a prolific
// author's reviews share one leaf, so anti-entropy of that leaf exchanges
// all their entries (24 bytes each) when one of them differs.
//   digest(state)  BLAKE2b-128 of the document's canonical bytes
//   entry          BLAKE2b-128(be64(keyHash) || digest)
//   node hash      sum of the entries of every document below the node,
//                  each read as a little-endian 128-bit integer, mod 2^128,
//                  stored little-endian. Empty subtree = all zeros.
//
// A sum, unlike a hash of the children, lets a write update the path from
// its leaf to the root in O(depth) without reading siblings. It is not
// collision-resistant against an adversary who chooses documents; it is a
// change detector between cooperating replicas.
#pragma once

#include <cstdint>
#include <string_view>

#include "crdt/review.h"
#include "storage/store.h"

namespace chorus::storage {

inline constexpr uint64_t kMerkleLeaves = uint64_t{1} << (4 * Store::kDepth);
static_assert(Store::kFanout == 16, "node index arithmetic assumes 4 bits per level");

// Precondition of keyHashOfDocKey: docKey is a valid docKey() encoding.
uint64_t keyHashOfDocKey(std::string_view docKey);
uint64_t keyHash(const crdt::ReviewKey& key);
// The top 32 bits of the keyHash of every review by `author` (low bits zero).
uint64_t authorKeyHashBits(std::string_view author);
inline uint64_t leafIndexOf(uint64_t keyHash) { return keyHash >> (64 - 4 * Store::kDepth); }
// Index at `level` (0 = root) of the node above leaf `leaf`.
inline uint64_t nodeAbove(uint64_t leaf, int level) {
  return leaf >> (4 * (Store::kDepth - level));
}

Hash digestOf(std::string_view canonicalBytes);
Hash entryHash(uint64_t keyHash, const Hash& digest);

// Arithmetic on node sums (mod 2^128).
Hash hashAdd(const Hash& a, const Hash& b);
Hash hashSub(const Hash& a, const Hash& b);
bool isZero(const Hash& h);

}  // namespace chorus::storage
