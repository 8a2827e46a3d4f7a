// The on-disk layout of storage/: how keys and values of each named database
// are encoded. storage/README.md describes the same layout in prose; change
// both together, and bump kSchemaVersion (store.h) on any change that an old
// build would misread.
//
// Every id is length-prefixed (big-endian uint16) wherever something follows
// it, so one id can never be a prefix of another's encoding: the keys of
// product "ab" can never fall inside the range of product "a".
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "crdt/hlc.h"
#include "crdt/result.h"
#include "crdt/review.h"
#include "storage/store.h"

namespace chorus::storage::schema {

// Longest product or author id, in bytes; keeps every index key below
// LMDB's 511-byte key limit.
inline constexpr size_t kMaxIdBytes = 200;

// kInvalidArgument unless both ids are 1..kMaxIdBytes bytes.
Status validateKey(const crdt::ReviewKey& key);

// be16(len(id)) || id
std::string idPrefix(std::string_view id);

// documents: productPrefix || author. One product's keys form one range.
std::string docKey(const crdt::ReviewKey& key);
std::optional<crdt::ReviewKey> parseDocKey(std::string_view docKey);

// by-author: authorPrefix || product  (value empty; live reviews only)
std::string authorIndexKey(const crdt::ReviewKey& key);

// products: everything kept per product, adjacent under its prefix so one
// write dirties one region of one tree:
//   productPrefix || 0x00                          -> aggregate (see below)
//   productPrefix || 0x01 || be64(~hlc) || author  -> ""  newest first going forward
//   productPrefix || 0x02 || rating || be64(hlc) || author -> ""
//     (forward: lowest rating, oldest first; backward: highest, newest first)
// Index entries exist for live reviews only.
inline constexpr char kProductAggregate = 0x00;
inline constexpr char kProductNewest = 0x01;
inline constexpr char kProductRating = 0x02;
std::string aggregateKey(std::string_view product);
std::string newestIndexKey(const crdt::ReviewKey& key, crdt::Hlc hlc);
std::string ratingIndexKey(const crdt::ReviewKey& key, uint8_t rating, crdt::Hlc hlc);
// The range holding one product's entries of `tag`.
std::string productRangePrefix(std::string_view product, char tag);
// The author at the end of an index key of `prefixLen` range-prefix bytes
// and `fixedLen` fixed bytes after it; nullopt if the key is too short.
std::optional<std::string_view> indexAuthor(std::string_view indexKey, size_t prefixLen,
                                            size_t fixedLen);
inline constexpr size_t kNewestFixedBytes = 8;
inline constexpr size_t kRatingFixedBytes = 9;

// The smallest key greater than every key starting with `prefix`, or
// nullopt if there is none (prefix all 0xff).
std::optional<std::string> prefixEnd(std::string_view prefix);

// leaf-entries: the Merkle leaves, each one key range:
//   be16(leaf)                    -> the leaf's node sum (16 bytes)
//   be64(keyHash) || docKey       -> the document's digest (16 bytes)
// The top two bytes of keyHash are the leaf index, so a leaf's sum sorts
// just before its entries and usually shares their page.
std::string leafEntryKey(uint64_t keyHash, std::string_view docKey);
std::string leafPrefix(uint32_t leafIndex);  // also the leaf sum's key
inline constexpr size_t kLeafSumKeyBytes = 2;

// merkle: the inner nodes (levels 0 to Store::kDepth - 1):
//   level (1 byte) || be32(index) -> 16-byte node sum; absent = zero.
std::string merkleNodeKey(int level, uint64_t index);

// meta keys.
inline constexpr std::string_view kMetaSchemaVersion = "schema-version";  // le32
inline constexpr std::string_view kMetaReplicaId = "replica-id";          // le64
inline constexpr std::string_view kMetaHlcHighWater = "hlc-high-water";   // le64

// documents value: format (1 byte) || digest (16) || canonical state bytes.
// The digest is BLAKE2b-128 of the canonical bytes: it is both the value's
// checksum and the Merkle tree's state digest.
inline constexpr uint8_t kDocRecordFormat = 1;
inline constexpr size_t kDocRecordHeader = 1 + 16;
std::string encodeDocRecord(const Hash& digest, std::string_view canonical);
struct DocRecord {
  Hash digest;
  std::string_view canonical;
};
// Checks the format byte and the checksum. kCorruption names `keyForMessage`.
Result<DocRecord> parseDocRecord(std::string_view value, const crdt::ReviewKey& keyForMessage);

// aggregates value: 8 x le64: count, histogram[0..4], ratingSum, helpfulTotal.
inline constexpr size_t kSummaryBytes = 8 * 8;
std::string encodeSummary(const ProductSummary& s);
std::optional<ProductSummary> decodeSummary(std::string_view value);

// Little-/big-endian fixed-width helpers.
void putBe64(std::string& out, uint64_t v);
uint64_t getBe64(std::string_view in);  // precondition: in.size() >= 8
void putLe64(std::string& out, uint64_t v);
uint64_t getLe64(std::string_view in);  // precondition: in.size() >= 8

// "product 'sku-1', author 'bob'" for messages (non-printable bytes escaped).
std::string describeKey(const crdt::ReviewKey& key);

// Lowercase hex, for opaque listing cursors.
std::string toHex(std::string_view bytes);
std::optional<std::string> fromHex(std::string_view hex);

}  // namespace chorus::storage::schema
