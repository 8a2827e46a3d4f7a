// Migration steps of the storage schema older than the listing index:
// 1 -> 2 and 2 -> 3. Each runs inside the open's write transaction
// (internal/open.cpp chains them, and 3 -> 4, then writes the version once),
// so a crash leaves the old version untouched and the next open starts
// over; a step that fills the map is run again after the map grew.
//
// The layouts they read, as the builds that wrote them defined them:
//   schema 1 (up to 48e4d13^): documents value 0x01 || digest(16) ||
//     canonical state; products held the aggregate (8 x le64) at P || 0x00
//     and listing index entries at P || 0x01 || ... and P || 0x02 || ...;
//     a `by-author` database (A || product); keyHash = the first 8 bytes of
//     BLAKE2b-128(docKey), big-endian.
//   schema 2 (48e4d13): documents value 0x02 || digest || listing header ||
//     canonical state (as now); products only the aggregate, still 8 x le64
//     (count, histogram[5], rating sum, helpful total); no by-author; the
//     keyHash of merkle.h (author hash || key hash), as now.
//   schema 3 (f4ae4ff): aggregates as six varints (as now); no listings.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "storage/internal/store-impl.h"
#include "storage/key-schema.h"
#include "storage/merkle.h"

namespace chorus::storage::internal {

namespace {

constexpr const char* kDbByAuthorV1 = "by-author";
constexpr uint8_t kDocRecordFormatV1 = 1;
constexpr size_t kDocRecordHeaderV1 = 1 + 16;
constexpr size_t kSummaryBytesV2 = 8 * 8;

Error migrationCorruption(uint32_t from, const std::string& what) {
  return corruption("migrating storage schema " + std::to_string(from) + " to " +
                    std::to_string(from + 1) + ": " + what);
}

std::string_view bytesOf(const Hash& h) {
  return std::string_view(reinterpret_cast<const char*>(h.data()), h.size());
}

// Is `k` a key of an aggregate (P || 0x00), the only key of `products`
// from schema 2 on?
bool isAggregateKey(std::string_view k) {
  if (k.size() < 3) return false;
  size_t idLen = (size_t(uint8_t(k[0])) << 8) | uint8_t(k[1]);
  return idLen > 0 && k.size() == 3 + idLen && k[2 + idLen] == schema::kProductAggregate;
}

}  // namespace

// Schema 1 to 2. Documents get the listing header (decoded from each
// state, whose checksum is checked first); the listing indexes in
// `products` and the `by-author` database go (listings read other ranges
// from schema 2 on); and, since the key hash changed, the Merkle leaf
// entries, leaf sums and inner nodes are rebuilt from the documents. The
// Merkle root therefore changes (the documents' digests do not): a schema 1
// node and a newer one cannot reconcile anyway.
Status migrateSchema1To2(Txn& txn, Dbs& dbs) {
  auto byAuthor = txn.openDb(kDbByAuthorV1, 0);
  if (!byAuthor) return byAuthor.error();
  if (*byAuthor) {
    if (auto s = txn.dropDb(**byAuthor); !s) return s;
  }

  // products: the aggregates stay (still 8 x le64), index entries go.
  std::vector<std::pair<std::string, std::string>> aggregates;
  {
    auto products = Cursor::open(txn, dbs.products);
    if (!products) return products.error();
    std::string_view k, v;
    for (auto at = products->seek(MDB_FIRST, &k, &v);; at = products->seek(MDB_NEXT, &k, &v)) {
      if (!at) return at.error();
      if (!*at) break;
      if (isAggregateKey(k)) aggregates.emplace_back(std::string(k), std::string(v));
    }
  }
  if (auto s = txn.clear(dbs.products); !s) return s;
  {
    auto products = Cursor::open(txn, dbs.products);
    if (!products) return products.error();
    for (const auto& [k, v] : aggregates) {
      if (auto s = products->append(k, v); !s) return s;
    }
  }

  // The tree, rebuilt: entries written as the documents are walked, sums
  // added up in memory (~1.1 MB for the 69,905 nodes) and written after.
  if (auto s = txn.clear(dbs.leafEntries); !s) return s;
  if (auto s = txn.clear(dbs.merkle); !s) return s;
  constexpr int kDepth = Store::kDepth;
  std::vector<std::vector<Hash>> nodes(kDepth + 1);
  for (int level = 0; level <= kDepth; ++level) {
    nodes[static_cast<size_t>(level)].assign(uint64_t{1} << (4 * level), Hash{});
  }
  auto docs = Cursor::open(txn, dbs.documents);
  if (!docs) return docs.error();
  std::string_view k, v;
  for (auto at = docs->seek(MDB_FIRST, &k, &v);; at = docs->seek(MDB_NEXT, &k, &v)) {
    if (!at) return at.error();
    if (!*at) break;
    std::string docKey(k);  // the views die with the put below
    auto key = schema::parseDocKey(docKey);
    if (!key || schema::docKey(*key) != docKey) {
      return migrationCorruption(1, "malformed document key " + schema::toHex(docKey));
    }
    if (v.size() < kDocRecordHeaderV1 || uint8_t(v[0]) != kDocRecordFormatV1) {
      return migrationCorruption(
          1, "the review (" + schema::describeKey(*key) + ") is not in schema 1's record format");
    }
    Hash digest;
    std::copy(v.begin() + 1, v.begin() + 17, reinterpret_cast<char*>(digest.data()));
    std::string canonical(v.substr(kDocRecordHeaderV1));
    if (digestOf(canonical) != digest) {
      return migrationCorruption(
          1, "the review (" + schema::describeKey(*key) + ") fails its checksum");
    }
    auto doc = decodeStored(canonical, *key);
    if (!doc) return doc.error();
    std::string record = schema::encodeDocRecord(digest, schema::listingHeaderOf(*doc), canonical);
    if (auto s = docs->putCurrent(docKey, record); !s) return s;

    uint64_t kh = keyHashOfDocKey(docKey);
    if (auto s = txn.put(dbs.leafEntries, schema::leafEntryKey(kh, docKey), bytesOf(digest)); !s) {
      return s;
    }
    Hash e = entryHash(kh, digest);
    uint64_t leaf = leafIndexOf(kh);
    for (int level = 0; level <= kDepth; ++level) {
      Hash& n = nodes[static_cast<size_t>(level)][nodeAbove(leaf, level)];
      n = hashAdd(n, e);
    }
  }
  docs->close();
  for (uint64_t leaf = 0; leaf < nodes[kDepth].size(); ++leaf) {
    const Hash& h = nodes[kDepth][leaf];
    if (isZero(h)) continue;
    if (auto s =
            txn.put(dbs.leafEntries, schema::leafPrefix(static_cast<uint32_t>(leaf)), bytesOf(h));
        !s) {
      return s;
    }
  }
  for (int level = 0; level < kDepth; ++level) {
    const auto& row = nodes[static_cast<size_t>(level)];
    for (uint64_t index = 0; index < row.size(); ++index) {
      if (isZero(row[index])) continue;
      if (auto s = txn.put(dbs.merkle, schema::merkleNodeKey(level, index), bytesOf(row[index]));
          !s) {
        return s;
      }
    }
  }
  return okStatus();
}

// Schema 2 to 3: each aggregate from 8 x le64 (count, histogram[5], rating
// sum, helpful total) to six varints (histogram, helpful total; count and
// rating sum follow from the histogram, and must agree with it here).
Status migrateSchema2To3(Txn& txn, Dbs& dbs) {
  auto products = Cursor::open(txn, dbs.products);
  if (!products) return products.error();
  std::string_view k, v;
  for (auto at = products->seek(MDB_FIRST, &k, &v);; at = products->seek(MDB_NEXT, &k, &v)) {
    if (!at) return at.error();
    if (!*at) break;
    std::string key(k);
    if (!isAggregateKey(key) || v.size() != kSummaryBytesV2) {
      return migrationCorruption(
          2, "products holds a key or value that is no aggregate's: " + schema::toHex(key));
    }
    ProductSummary s;
    s.count = schema::getLe64(v.substr(0));
    uint64_t count = 0, ratingSum = 0;
    for (size_t i = 0; i < 5; ++i) {
      s.histogram[i] = schema::getLe64(v.substr(8 * (1 + i)));
      count += s.histogram[i];
      ratingSum += (i + 1) * s.histogram[i];
    }
    s.ratingSum = schema::getLe64(v.substr(48));
    s.helpfulTotal = schema::getLe64(v.substr(56));
    if (count != s.count || ratingSum != s.ratingSum) {
      return migrationCorruption(2, "the aggregate of product '" + key.substr(2, key.size() - 3) +
                                        "' has a count or rating sum that disagrees with its "
                                        "histogram");
    }
    if (auto put = products->putCurrent(key, schema::encodeSummary(s)); !put) return put;
  }
  return okStatus();
}

}  // namespace chorus::storage::internal
