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

// Longest product or author id, in bytes; keeps every key (and listing
// cursor) below LMDB's 511-byte key limit.
inline constexpr size_t kMaxIdBytes = 200;

// kInvalidArgument unless both ids are 1..kMaxIdBytes bytes.
Status validateKey(const crdt::ReviewKey& key);

// be16(len(id)) || id
std::string idPrefix(std::string_view id);

// documents: productPrefix || author. One product's keys form one range.
std::string docKey(const crdt::ReviewKey& key);
std::optional<crdt::ReviewKey> parseDocKey(std::string_view docKey);

// products: one aggregate per product (see below):
//   productPrefix || 0x00 -> aggregate
inline constexpr char kProductAggregate = 0x00;
std::string aggregateKey(std::string_view product);

// listings: one key per live review, its position in the rating order
// (value empty); tombstones have none:
//   productPrefix || 0x02 || rating || be64(hlc) || author  lowest rating,
//     oldest first (read backwards: highest rating, newest first)
// hlc and rating are the listing header's (below). Newest first is the five
// rating ranges of a product, each read backwards, merged by (hlc desc,
// author asc). Cursors carry the position of the next review in their
// order; a newest cursor is a position of this form, not a stored key:
//   productPrefix || 0x01 || be64(~hlc) || author           newest first
inline constexpr char kListNewest = 0x01;
inline constexpr char kListRating = 0x02;
std::string newestSortKey(const crdt::ReviewKey& key, crdt::Hlc hlc);
std::string ratingSortKey(const crdt::ReviewKey& key, uint8_t rating, crdt::Hlc hlc);
struct ListingPosition {
  crdt::ReviewKey key;
  char tag = 0;        // kListNewest or kListRating
  uint8_t rating = 0;  // kListRating only
  crdt::Hlc hlc;
};
// nullopt unless `k` is a well-formed position of either order.
std::optional<ListingPosition> parseListingKey(std::string_view k);
// The prefix of one product's sort keys of `tag`.
std::string productRangePrefix(std::string_view product, char tag);

// The smallest key greater than every key starting with `prefix`, or
// nullopt if there is none (prefix all 0xff).
std::optional<std::string> prefixEnd(std::string_view prefix);

// leaf-entries: the Merkle leaves, each one key range:
//   be16(leaf)                    -> the leaf's node sum (16 bytes)
//   be64(keyHash) || docKey       -> the document's digest (16 bytes)
// The top two bytes of keyHash are the leaf index, so a leaf's sum sorts
// just before its entries and usually shares their page. The top four bytes
// hash the author (merkle.h), so one author's entries also form one range:
// authorLeafPrefix(author), shared only with authors of the same 32-bit
// hash. This range is the by-author listing (documents and tombstones).
std::string leafEntryKey(uint64_t keyHash, std::string_view docKey);
std::string leafPrefix(uint32_t leafIndex);  // also the leaf sum's key
inline constexpr size_t kLeafSumKeyBytes = 2;
std::string authorLeafPrefix(std::string_view author);
inline constexpr size_t kAuthorLeafPrefixBytes = 4;

// merkle: the inner nodes (levels 0 to Store::kDepth - 1):
//   level (1 byte) || be32(index) -> 16-byte node sum; absent = zero.
std::string merkleNodeKey(int level, uint64_t index);

// changes: the change feed, one entry per stored review, at the seq of its
// latest change (store.h):
//   be64(seq) -> flags (1: bit 0 = live) || docKey
// The document's record carries the same seq, so a write finds the entry
// it replaces without a lookup. New seqs are larger than every stored one:
// they are appended at the end of the tree.
std::string changeKey(uint64_t seq);
std::string changeValue(bool live, std::string_view docKey);
struct ChangeEntry {
  uint64_t seq = 0;
  bool live = false;
  std::string_view docKey;
};
// nullopt unless key and value are well formed (the doc key is not parsed).
std::optional<ChangeEntry> parseChange(std::string_view key, std::string_view value);

// meta keys.
inline constexpr std::string_view kMetaSchemaVersion = "schema-version";  // le32
inline constexpr std::string_view kMetaReplicaId = "replica-id";          // le64
inline constexpr std::string_view kMetaHlcHighWater = "hlc-high-water";   // le64
inline constexpr std::string_view kMetaLastSeq = "last-seq";              // le64 (schema 5)

// documents value:
//   format (1 byte) || digest (16) || listing header (10) || be64(seq)
//   || canonical state
// The digest is BLAKE2b-128 of the canonical bytes: it is both the value's
// checksum and the Merkle tree's state digest. The listing header is
//   flags (1: bit 0 = live) || rating (1) || be64(content hlc)
// copied from the state (zeros for a deleted review), so listings order a
// product's reviews without decoding states. The checksum does not cover
// the header; a listing compares the header of each review it returns with
// the decoded state, and verify() compares all of them. `seq` is the
// document's entry in `changes` (format 3, schema 5; format 2, schemas 3
// and 4, had no seq).
inline constexpr uint8_t kDocRecordFormat = 3;
inline constexpr size_t kDocRecordHeader = 1 + 16 + 10 + 8;
struct ListingHeader {
  bool live = false;
  uint8_t rating = 0;  // 1-5 when live
  crdt::Hlc hlc;       // of the content (the last edit) when live
  bool operator==(const ListingHeader&) const = default;
};
ListingHeader listingHeaderOf(const crdt::ReviewDoc& doc);
std::string encodeDocRecord(const Hash& digest, const ListingHeader& header, uint64_t seq,
                            std::string_view canonical);
struct DocRecord {
  Hash digest;
  ListingHeader header;
  uint64_t seq = 0;
  std::string_view canonical;
};
// Checks the format byte and the checksum. kCorruption names `keyForMessage`.
Result<DocRecord> parseDocRecord(std::string_view value, const crdt::ReviewKey& keyForMessage);
// The listing header alone, without checking the checksum (for scans that
// return few of the reviews they look at); nullopt if the value is too
// short, of another format or holds an impossible header.
std::optional<ListingHeader> peekListingHeader(std::string_view value);

// Format 2 (schemas 3 and 4), for the migrations only: the same record
// without the seq.
inline constexpr uint8_t kDocRecordFormatV2 = 2;
inline constexpr size_t kDocRecordHeaderV2 = 1 + 16 + 10;
std::optional<ListingHeader> peekListingHeaderV2(std::string_view value);
// The format 3 record of a format 2 `value` with `seq`; nullopt if `value`
// is not a well-formed format 2 record (the checksum is not checked).
std::optional<std::string> upgradeDocRecordV2(std::string_view value, uint64_t seq);

// aggregates value: 6 LEB128 varints: histogram[0..4], helpfulTotal (count
// and ratingSum follow from the histogram). Usually 6-12 bytes: the
// aggregates of many products share a page, so a batch dirties fewer.
inline constexpr size_t kMaxSummaryBytes = 6 * 10;
std::string encodeSummary(const ProductSummary& s);
// nullopt unless `value` is exactly six well-formed varints.
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
