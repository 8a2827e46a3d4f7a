// The Merkle tree and verify(): consistent after random workloads, equal for
// equal contents whatever the write order, and usable to find one
// difference by descending. Also the key schema's prefix guarantees.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "crdt/review.h"
#include "storage/helpers.h"
#include "storage/key-schema.h"
#include "storage/merkle.h"
#include "storage/store.h"
#include "support/results.h"
#include "support/seed.h"

using namespace chorus;
using namespace chorus::storage;
using chorus::test::failure;
using chorus::test::TempDir;

namespace {

// Random documents as several replicas would make them: each replica edits
// its own copy of a few keys and the store merges their states and deltas.
class Workload {
 public:
  explicit Workload(uint64_t seed) : rng_(seed) {
    for (int r = 0; r < 3; ++r) {
      clocks_.emplace_back(static_cast<crdt::ReplicaId>(100 + r), [this] { return millis_; });
    }
  }

  crdt::ReviewKey randomKey() {
    return {"sku-" + std::to_string(rng_() % 8), "user-" + std::to_string(rng_() % 30)};
  }

  // A delta or a whole state from a random replica for a random key.
  crdt::ReviewDoc next() {
    millis_ += rng_() % 3;
    crdt::ReviewKey key = randomKey();
    int r = static_cast<int>(rng_() % clocks_.size());
    auto [it, inserted] = docs_.try_emplace({r, key}, key);
    crdt::ReviewDoc& doc = it->second;
    crdt::HybridClock& clock = clocks_[static_cast<size_t>(r)];
    crdt::ReviewDoc delta(key);
    switch (rng_() % 8) {
      case 0: delta = doc.erase(clock.now()); break;
      case 1: delta = doc.vote("v" + std::to_string(rng_() % 5), clock.replica()); break;
      case 2: delta = doc.unvote("v" + std::to_string(rng_() % 5)); break;
      case 3: delta = doc.tag("t" + std::to_string(rng_() % 3), clock.replica()); break;
      case 4: delta = doc.setReply({"thanks"}, clock.now()); break;
      default:
        delta = doc.write(static_cast<uint8_t>(1 + rng_() % 5), "title", "body " + std::to_string(rng_()),
                          clock.now());
        break;
    }
    return rng_() % 3 == 0 ? doc : delta;
  }

  std::mt19937_64& rng() { return rng_; }

 private:
  std::mt19937_64 rng_;
  uint64_t millis_ = 1'700'000'000'000;
  std::vector<crdt::HybridClock> clocks_;
  std::map<std::pair<int, crdt::ReviewKey>, crdt::ReviewDoc> docs_;
};

void mergeAll(Store& store, const std::vector<crdt::ReviewDoc>& docs) {
  test::Collector c(docs.size());
  for (size_t i = 0; i < docs.size(); ++i) store.merge(docs[i], c.done(i));
  c.wait();
  for (size_t i = 0; i < docs.size(); ++i) REQUIRE(c[i].ok());
}

// Root computed by the test from the documents alone.
Hash recomputedRoot(Store& store, const std::set<crdt::ReviewKey>& keys) {
  Hash root{};
  for (const auto& key : keys) {
    auto doc = store.get(key);
    REQUIRE(doc.ok());
    if (!doc->has_value()) continue;
    root = hashAdd(root, entryHash(keyHash(key), digestOf((*doc)->encode())));
  }
  return root;
}

}  // namespace

TEST_CASE("document keys are length-prefixed so product ranges never overlap") {
  crdt::ReviewKey a{"ab", "c"}, b{"a", "bc"};
  CHECK(schema::docKey(a) != schema::docKey(b));
  CHECK_FALSE(schema::docKey(b).starts_with(schema::idPrefix("ab")));
  CHECK_FALSE(schema::docKey(a).starts_with(schema::idPrefix("a")));
  CHECK(schema::docKey(a).starts_with(schema::idPrefix("ab")));
  for (const auto& k : {a, b, crdt::ReviewKey{"sku-000123", "user-5f3a"}}) {
    auto parsed = schema::parseDocKey(schema::docKey(k));
    REQUIRE(parsed.has_value());
    CHECK(*parsed == k);
  }
  CHECK_FALSE(schema::parseDocKey("").has_value());
  CHECK_FALSE(schema::parseDocKey(std::string("\x00\x05" "ab", 4)).has_value());
  CHECK(schema::prefixEnd(std::string("a\xff", 2)) == "b");
  CHECK_FALSE(schema::prefixEnd(std::string("\xff\xff", 2)).has_value());
  CHECK(schema::fromHex(schema::toHex(std::string("\x00\x7f\xff", 3))) == std::string("\x00\x7f\xff", 3));
}

TEST_CASE("the key hash starts with a hash of the author, so an author's reviews share a leaf") {
  uint64_t ann = keyHash({"sku-1", "ann"});
  uint64_t annBits = authorKeyHashBits("ann");
  uint64_t annElsewhere = keyHash({"sku-2", "ann"});
  uint64_t bob = keyHash({"sku-1", "bob"});
  CHECK((ann >> 32) == (annElsewhere >> 32));
  CHECK((ann >> 32) == (annBits >> 32));
  CHECK((annBits & 0xffffffffu) == 0);
  CHECK(leafIndexOf(ann) == leafIndexOf(keyHash({"a-product-with-a-long-id", "ann"})));
  CHECK(ann != annElsewhere);
  CHECK((ann >> 32) != (bob >> 32));
  CHECK(ann == keyHashOfDocKey(schema::docKey({"sku-1", "ann"})));
  CHECK(schema::leafEntryKey(ann, schema::docKey({"sku-1", "ann"}))
            .starts_with(schema::authorLeafPrefix("ann")));
}

TEST_CASE("aggregates encode as varints and refuse malformed values") {
  ProductSummary s;
  s.histogram = {1, 0, 300, 0, uint64_t{1} << 40};
  s.helpfulTotal = ~uint64_t{0};
  s.count = 301 + (uint64_t{1} << 40);
  s.ratingSum = 1 + 900 + 5 * (uint64_t{1} << 40);
  std::string v = schema::encodeSummary(s);
  auto back = schema::decodeSummary(v);
  REQUIRE(back.has_value());
  CHECK(back->histogram == s.histogram);
  CHECK(back->count == s.count);
  CHECK(back->ratingSum == s.ratingSum);
  CHECK(back->helpfulTotal == s.helpfulTotal);
  CHECK(schema::encodeSummary(ProductSummary{}).size() == 6);
  CHECK_FALSE(schema::decodeSummary(v + "x").has_value());
  CHECK_FALSE(schema::decodeSummary(v.substr(0, v.size() - 1)).has_value());
  CHECK_FALSE(schema::decodeSummary(std::string(11, '\x80')).has_value());
  CHECK_FALSE(schema::decodeSummary("").has_value());
}

TEST_CASE("node sums are modular 128-bit arithmetic") {
  Hash max;
  max.fill(0xff);
  Hash one{};
  one[0] = 1;
  CHECK(isZero(hashAdd(max, one)));  // carry through all 16 bytes
  CHECK(hashSub(Hash{}, one) == max);
  Hash x = entryHash(12345, digestOf("abc"));
  CHECK(hashSub(hashAdd(x, max), max) == x);
  CHECK(leafIndexOf(0xabcd'0000'0000'0001ull) == 0xabcd);
  CHECK(nodeAbove(0xabcd, 0) == 0);
  CHECK(nodeAbove(0xabcd, 1) == 0xa);
  CHECK(nodeAbove(0xabcd, 3) == 0xabc);
  CHECK(nodeAbove(0xabcd, 4) == 0xabcd);
}

TEST_CASE("the Merkle tree and aggregates verify after random workloads") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Workload w(seed);
  TempDir dir;
  auto store = test::openStore(test::optionsFor(dir.path()));
  std::set<crdt::ReviewKey> keys;
  for (int round = 0; round < 4; ++round) {
    std::vector<crdt::ReviewDoc> docs;
    for (int i = 0; i < test::testCases(300); ++i) {
      docs.push_back(w.next());
      keys.insert(docs.back().key());
    }
    mergeAll(*store, docs);
    // Local operations on the same keys too.
    for (int i = 0; i < 50; ++i) {
      crdt::ReviewKey key = w.randomKey();
      keys.insert(key);
      REQUIRE(store->mutateSync(key, test::writeReview(static_cast<uint8_t>(1 + w.rng()() % 5), "x", "y")).ok());
      if (w.rng()() % 3 == 0) REQUIRE(store->mutateSync(key, test::eraseReview()).ok());
    }
    auto v = store->verify();
    if (!v) FAIL(v.error().toString());
    auto root = store->merkleRoot();
    REQUIRE(root.ok());
    CHECK(*root == recomputedRoot(*store, keys));
  }

  // Every level sums to its parent; every document sits in its leaf.
  std::map<uint64_t, std::vector<crdt::ReviewKey>> byLeaf;
  for (const auto& key : keys) {
    if (store->get(key)->has_value()) byLeaf[leafIndexOf(keyHash(key))].push_back(key);
  }
  for (const auto& [leaf, leafKeys] : byLeaf) {
    auto entries = store->leafEntries(leaf);
    REQUIRE(entries.ok());
    CHECK(entries->size() == leafKeys.size());
    Hash sum{};
    for (const auto& e : *entries) {
      CHECK(leafIndexOf(e.keyHash) == leaf);
      CHECK(e.keyHash == keyHash(e.key));
      CHECK(e.digest == digestOf((*store->get(e.key))->encode()));
      sum = hashAdd(sum, entryHash(e.keyHash, e.digest));
    }
    auto parent = store->merkleChildren(Store::kDepth - 1, leaf / 16);
    REQUIRE(parent.ok());
    CHECK((*parent)[leaf % 16] == sum);
    // Walk up: each node equals the sum of its children.
    for (int level = Store::kDepth - 1; level >= 1; --level) {
      uint64_t index = nodeAbove(leaf, level);
      auto children = store->merkleChildren(level, index);
      auto siblings = store->merkleChildren(level - 1, index / 16);
      REQUIRE(children.ok());
      REQUIRE(siblings.ok());
      Hash total{};
      for (const Hash& h : *children) total = hashAdd(total, h);
      CHECK((*siblings)[index % 16] == total);
    }
  }
  Hash total{};
  auto top = store->merkleChildren(0, 0);
  REQUIRE(top.ok());
  for (const Hash& h : *top) total = hashAdd(total, h);
  CHECK(total == *store->merkleRoot());
}

TEST_CASE("equal contents give equal trees; one difference is found by descending") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Workload w(seed);
  std::vector<crdt::ReviewDoc> docs;
  for (int i = 0; i < 400; ++i) docs.push_back(w.next());
  TempDir dirA, dirB;
  auto a = test::openStore(test::optionsFor(dirA.path()));
  auto b = test::openStore(test::optionsFor(dirB.path()));
  mergeAll(*a, docs);
  std::vector<crdt::ReviewDoc> reversed(docs.rbegin(), docs.rend());
  std::shuffle(reversed.begin(), reversed.end(), w.rng());
  mergeAll(*b, reversed);
  REQUIRE(*a->merkleRoot() == *b->merkleRoot());
  CHECK_FALSE(isZero(*a->merkleRoot()));

  // One stored review changes on b only. (A key whose deltas all changed
  // nothing is stored nowhere; a vote would create it on b only.)
  crdt::ReviewKey changed = docs[w.rng()() % docs.size()].key();
  while (!a->get(changed)->has_value()) changed = docs[w.rng()() % docs.size()].key();
  REQUIRE(b->mutateSync(changed, test::voteHelpful("only-on-b")).ok());
  CHECK(*a->merkleRoot() != *b->merkleRoot());

  uint64_t index = 0;
  for (int level = 0; level < Store::kDepth; ++level) {
    auto ca = a->merkleChildren(level, index);
    auto cb = b->merkleChildren(level, index);
    REQUIRE(ca.ok());
    REQUIRE(cb.ok());
    std::vector<int> differing;
    for (int i = 0; i < Store::kFanout; ++i) {
      if ((*ca)[static_cast<size_t>(i)] != (*cb)[static_cast<size_t>(i)]) differing.push_back(i);
    }
    REQUIRE(differing.size() == 1);
    index = index * Store::kFanout + static_cast<uint64_t>(differing[0]);
  }
  CHECK(index == leafIndexOf(keyHash(changed)));
  auto ea = a->leafEntries(index);
  auto eb = b->leafEntries(index);
  REQUIRE(ea.ok());
  REQUIRE(eb.ok());
  REQUIRE(ea->size() == eb->size());
  int differences = 0;
  for (size_t i = 0; i < ea->size(); ++i) {
    CHECK((*ea)[i].key == (*eb)[i].key);
    if ((*ea)[i].digest != (*eb)[i].digest) {
      ++differences;
      CHECK((*ea)[i].key == changed);
    }
  }
  CHECK(differences == 1);

  // Shipping b's state to a converges the trees.
  REQUIRE(a->mergeSync(**b->get(changed)).ok());
  CHECK(*a->merkleRoot() == *b->merkleRoot());
  CHECK(a->verify().ok());
  CHECK(b->verify().ok());
}

TEST_CASE("Merkle reads refuse nodes that do not exist") {
  TempDir dir;
  auto store = test::openStore(test::optionsFor(dir.path()));
  CHECK(failure(store->merkleChildren(Store::kDepth, 0)).code == ErrorCode::kInvalidArgument);
  CHECK(failure(store->merkleChildren(1, 16)).code == ErrorCode::kInvalidArgument);
  CHECK(failure(store->merkleChildren(-1, 0)).code == ErrorCode::kInvalidArgument);
  CHECK(failure(store->leafEntries(kMerkleLeaves)).code == ErrorCode::kInvalidArgument);
  auto children = store->merkleChildren(3, 4095);
  REQUIRE(children.ok());
  CHECK(children->size() == 16);
  CHECK(store->leafEntries(kMerkleLeaves - 1)->empty());
}

TEST_CASE("verify names derived data that drifted from the documents") {
  TempDir dir;
  {
    auto store = test::openStore(test::optionsFor(dir.path()));
    for (int i = 0; i < 20; ++i) {
      REQUIRE(store->mutateSync({"sku-1", "u" + std::to_string(i)}, test::writeReview(4, "t", "b")).ok());
    }
    REQUIRE(store->verify().ok());
  }
  auto expectBroken = [&](const char* what) {
    auto store = test::openStore(test::optionsFor(dir.path()));
    auto v = store->verify();
    REQUIRE_FALSE(v.ok());
    CHECK(v.error().code == ErrorCode::kCorruption);
    CHECK(v.error().message.find(what) != std::string::npos);
  };
  std::string savedSummary;
  SUBCASE("aggregate") {
    test::withRawDb(dir.path(), "products", [&](MDB_txn* txn, MDB_dbi dbi) {
      ProductSummary s;
      s.count = 19;
      std::string k = schema::aggregateKey("sku-1");
      std::string v = schema::encodeSummary(s);
      MDB_val key{k.size(), k.data()}, val{v.size(), v.data()};
      REQUIRE(mdb_put(txn, dbi, &key, &val, 0) == 0);
      return true;
    });
    expectBroken("aggregate");
  }
  SUBCASE("Merkle node") {
    test::withRawDb(dir.path(), "merkle", [&](MDB_txn* txn, MDB_dbi dbi) {
      std::string k = schema::merkleNodeKey(0, 0);
      std::string v(16, '\x01');
      MDB_val key{k.size(), k.data()}, val{v.size(), v.data()};
      REQUIRE(mdb_put(txn, dbi, &key, &val, 0) == 0);
      return true;
    });
    expectBroken("Merkle node");
  }
  SUBCASE("Merkle leaf sum") {
    test::withRawDb(dir.path(), "leaf-entries", [&](MDB_txn* txn, MDB_dbi dbi) {
      std::string k = schema::leafPrefix(static_cast<uint32_t>(leafIndexOf(keyHash({"sku-1", "u4"}))));
      MDB_val key{k.size(), k.data()};
      REQUIRE(mdb_del(txn, dbi, &key, nullptr) == 0);
      return true;
    });
    expectBroken("Merkle");
  }
  SUBCASE("listing header") {
    test::withRawDb(dir.path(), "documents", [&](MDB_txn* txn, MDB_dbi dbi) {
      std::string k = schema::docKey({"sku-1", "u9"});
      MDB_val key{k.size(), k.data()}, val;
      REQUIRE(mdb_get(txn, dbi, &key, &val) == 0);
      std::string v(static_cast<const char*>(val.mv_data), val.mv_size);
      v[18] = 2;  // the rating byte: the state says 4
      val = MDB_val{v.size(), v.data()};
      REQUIRE(mdb_put(txn, dbi, &key, &val, 0) == 0);
      return true;
    });
    expectBroken("listing header");
    auto store = test::openStore(test::optionsFor(dir.path()));
    auto listed = store->listProduct("sku-1", Order::kLowestRating, "", 20);
    REQUIRE_FALSE(listed.ok());
    CHECK(listed.error().code == ErrorCode::kCorruption);
  }
  SUBCASE("stray products key") {
    test::withRawDb(dir.path(), "products", [&](MDB_txn* txn, MDB_dbi dbi) {
      std::string k = schema::newestSortKey({"sku-1", "u3"}, crdt::Hlc{1});
      MDB_val key{k.size(), k.data()}, val{0, nullptr};
      REQUIRE(mdb_put(txn, dbi, &key, &val, 0) == 0);
      return true;
    });
    expectBroken("no aggregate");
  }
  SUBCASE("leaf entry") {
    test::withRawDb(dir.path(), "leaf-entries", [&](MDB_txn* txn, MDB_dbi dbi) {
      std::string k = schema::leafEntryKey(keyHash({"sku-1", "u7"}), schema::docKey({"sku-1", "u7"}));
      std::string v(16, '\x02');
      MDB_val key{k.size(), k.data()}, val{v.size(), v.data()};
      REQUIRE(mdb_put(txn, dbi, &key, &val, 0) == 0);
      return true;
    });
    expectBroken("leaf entry");
  }
}
