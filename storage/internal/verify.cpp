// verify(): recomputes every derived structure of the LMDB store (Merkle
// tree, aggregates, listing positions, listing headers, the HLC high-water
// mark) from the documents in one read transaction and compares.
#include <algorithm>

#include "storage/internal/store-impl.h"
#include "storage/key-schema.h"
#include "storage/merkle.h"

namespace chorus::storage::internal {

Status StoreImpl::verify() {
  ReadTxn rt(gate_);
  if (auto s = rt.begin(env_); !s) return s;
  return verifyDbs(rt.txn(), dbs_);
}

Status verifyDbs(Txn& txn, const Dbs& dbs) {
  constexpr int kDepth = Store::kDepth;
  auto mismatch = [](const std::string& what) {
    return corruption("verify: " + what + "; derived data no longer matches the documents");
  };
  auto nodeBytes = [](const Hash& h) {
    return std::string_view(reinterpret_cast<const char*>(h.data()), h.size());
  };

  // Listing positions are compared as two sorted streams: the positions the
  // documents imply, one product at a time (a product's documents are one
  // range of `documents`, and its positions one range of `listings`, in the
  // same product order), against the walk of `listings`.
  auto listings = Cursor::open(txn, dbs.listings);
  if (!listings) return listings.error();
  std::string_view lk, lv;
  auto lat = listings->seek(MDB_FIRST, &lk, &lv);
  auto describePosition = [](std::string_view key) {
    auto p = schema::parseListingKey(key);
    if (!p) return "malformed position " + schema::toHex(key);
    return "(" + schema::describeKey(p->key) + ") at " +
           (p->tag == schema::kListNewest
                ? "newest, hlc " + std::to_string(p->hlc.bits)
                : "rating " + std::to_string(p->rating) + ", hlc " + std::to_string(p->hlc.bits));
  };
  std::vector<std::string> expected;  // the positions of the current product
  auto checkPositions = [&]() -> Status {
    std::sort(expected.begin(), expected.end());
    for (const std::string& e : expected) {
      if (!lat) return lat.error();
      if (!*lat || lk > e) return mismatch("listings lacks the position of " + describePosition(e));
      if (lk < e)
        return mismatch("listings holds a stale or extra position: " + describePosition(lk));
      if (!lv.empty())
        return mismatch("listing position of " + describePosition(lk) + " has a value");
      lat = listings->seek(MDB_NEXT, &lk, &lv);
    }
    expected.clear();
    return okStatus();
  };
  std::string product;

  // 1. Recompute from the documents; check that each one's entries exist.
  std::vector<std::vector<Hash>> nodes(kDepth + 1);
  for (int level = 0; level <= kDepth; ++level) {
    nodes[static_cast<size_t>(level)].assign(uint64_t{1} << (4 * level), Hash{});
  }
  std::map<std::string, ProductSummary> sums;  // by aggregate key
  uint64_t docCount = 0;
  crdt::Hlc maxHlc;

  auto docs = Cursor::open(txn, dbs.documents);
  if (!docs) return docs.error();
  std::string_view k, v;
  for (auto at = docs->seek(MDB_FIRST, &k, &v);; at = docs->seek(MDB_NEXT, &k, &v)) {
    if (!at) return at.error();
    if (!*at) break;
    auto key = schema::parseDocKey(k);
    if (!key || schema::docKey(*key) != k) {
      return mismatch("malformed document key " + schema::toHex(k));
    }
    auto rec = schema::parseDocRecord(v, *key);
    if (!rec) return rec.error();
    auto doc = decodeStored(rec->canonical, *key);
    if (!doc) return doc.error();
    if (schema::listingHeaderOf(*doc) != rec->header) {
      return mismatch("the listing header of (" + schema::describeKey(*key) +
                      ") differs from its state");
    }
    ++docCount;
    maxHlc = std::max(maxHlc, doc->maxHlc());
    if (key->product != product) {
      if (auto s = checkPositions(); !s) return s;
      product = key->product;
    }
    Facts f = factsOf(*doc);
    addListingKeys(expected, *key, f);

    uint64_t kh = keyHashOfDocKey(k);
    std::string_view leafDigest;
    auto found = txn.get(dbs.leafEntries, schema::leafEntryKey(kh, k), &leafDigest);
    if (!found) return found.error();
    if (!*found || leafDigest != nodeBytes(rec->digest)) {
      return mismatch("Merkle leaf entry of (" + schema::describeKey(*key) +
                      ") is missing or stale");
    }
    Hash e = entryHash(kh, rec->digest);
    uint64_t leaf = leafIndexOf(kh);
    for (int level = 0; level <= kDepth; ++level) {
      Hash& n = nodes[static_cast<size_t>(level)][nodeAbove(leaf, level)];
      n = hashAdd(n, e);
    }

    if (f.live) addFacts(sums[schema::aggregateKey(key->product)], f);
  }
  docs->close();
  if (auto s = checkPositions(); !s) return s;
  if (!lat) return lat.error();
  if (*lat) return mismatch("listings holds a stale or extra position: " + describePosition(lk));
  listings->close();

  // 2. Walk the derived databases: sums and aggregates must equal the
  // recomputed ones, and entry counts must match (every expected entry was
  // found above, so equal counts mean there are no extras).
  uint64_t leafEntryCount = 0;
  uint64_t storedNodes = 0;
  auto leaves = Cursor::open(txn, dbs.leafEntries);
  if (!leaves) return leaves.error();
  for (auto at = leaves->seek(MDB_FIRST, &k, &v);; at = leaves->seek(MDB_NEXT, &k, &v)) {
    if (!at) return at.error();
    if (!*at) break;
    if (k.size() != schema::kLeafSumKeyBytes) {
      ++leafEntryCount;
      continue;
    }
    uint64_t leaf = (uint64_t(uint8_t(k[0])) << 8) | uint8_t(k[1]);
    if (v != nodeBytes(nodes[kDepth][leaf])) {
      return mismatch("Merkle leaf " + std::to_string(leaf) +
                      " sum differs from its recomputed value");
    }
    ++storedNodes;
  }
  if (leafEntryCount != docCount) {
    return mismatch("leaf-entries holds " + std::to_string(leafEntryCount) +
                    " Merkle leaf entries for " + std::to_string(docCount) + " documents");
  }

  auto merkle = Cursor::open(txn, dbs.merkle);
  if (!merkle) return merkle.error();
  for (auto at = merkle->seek(MDB_FIRST, &k, &v);; at = merkle->seek(MDB_NEXT, &k, &v)) {
    if (!at) return at.error();
    if (!*at) break;
    if (k.size() != 5 || v.size() != 16) return mismatch("malformed Merkle node record");
    int level = static_cast<uint8_t>(k[0]);
    uint64_t index = schema::getBe64(std::string(4, '\0') + std::string(k.substr(1)));
    if (level >= kDepth || index >= nodes[static_cast<size_t>(level)].size()) {
      return mismatch("Merkle node out of range");
    }
    if (v != nodeBytes(nodes[static_cast<size_t>(level)][index])) {
      return mismatch("Merkle node (level " + std::to_string(level) + ", index " +
                      std::to_string(index) + ") differs from the recomputed sum");
    }
    ++storedNodes;
  }
  uint64_t expectedNodes = 0;
  for (const auto& level : nodes) {
    expectedNodes += static_cast<uint64_t>(
        std::count_if(level.begin(), level.end(), [](const Hash& h) { return !isZero(h); }));
  }
  if (storedNodes != expectedNodes) {
    return mismatch("Merkle tree stores " + std::to_string(storedNodes) +
                    " non-empty nodes, expected " + std::to_string(expectedNodes));
  }

  uint64_t storedSums = 0;
  auto products = Cursor::open(txn, dbs.products);
  if (!products) return products.error();
  for (auto at = products->seek(MDB_FIRST, &k, &v);; at = products->seek(MDB_NEXT, &k, &v)) {
    if (!at) return at.error();
    if (!*at) break;
    size_t idLen = k.size() >= 2 ? ((size_t(uint8_t(k[0])) << 8) | uint8_t(k[1])) : 0;
    if (idLen == 0 || k.size() != 3 + idLen || k[2 + idLen] != schema::kProductAggregate) {
      return mismatch("products holds a key that is no aggregate's: " + schema::toHex(k));
    }
    auto stored = schema::decodeSummary(v);
    auto it = sums.find(std::string(k));
    if (!stored || it == sums.end() || !sameSummary(*stored, it->second)) {
      return mismatch("aggregate of product '" + std::string(k.substr(2, idLen)) +
                      "' differs from a recount of its reviews");
    }
    ++storedSums;
  }
  if (storedSums != sums.size()) {
    return mismatch("aggregates exist for " + std::to_string(storedSums) + " products, expected " +
                    std::to_string(sums.size()));
  }

  std::string_view hw;
  auto found = txn.get(dbs.meta, schema::kMetaHlcHighWater, &hw);
  if (!found) return found.error();
  if (!*found || hw.size() != 8 || schema::getLe64(hw) < maxHlc.bits) {
    return mismatch("the persisted HLC high-water mark is missing or below a stored stamp");
  }
  return okStatus();
}

}  // namespace chorus::storage::internal
