// The listing index (`listings`): pages of a large product in every order,
// the index kept exact as reviews change, verify() catching a damaged index,
// the migration of a schema 3 data dir, and reads running alongside writes.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "storage/helpers.h"
#include "storage/key-schema.h"
#include "storage/store.h"
#include "support/seed.h"

using namespace chorus;
using namespace chorus::storage;
using chorus::test::Collector;
using chorus::test::TempDir;
using chorus::test::WriterBlock;

namespace {

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// What a listing orders by, for one live review.
struct Row {
  std::string author;
  uint8_t rating = 0;
  crdt::Hlc hlc;
};

// The expected order of `rows` (authors) in a listing: newest = hlc
// descending; lowest = (rating, hlc) ascending; highest = its reverse; ties
// by author.
std::vector<std::string> expectedOrder(std::vector<Row> rows, Order order) {
  auto lowest = [](const Row& a, const Row& b) {
    return std::tie(a.rating, a.hlc, a.author) < std::tie(b.rating, b.hlc, b.author);
  };
  if (order == Order::kNewest) {
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
      return std::tie(b.hlc, a.author) < std::tie(a.hlc, b.author);
    });
  } else if (order == Order::kLowestRating) {
    std::sort(rows.begin(), rows.end(), lowest);
  } else {
    std::sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) { return lowest(b, a); });
  }
  std::vector<std::string> out;
  for (const auto& r : rows) out.push_back(r.author);
  return out;
}

std::vector<Row> rowsOf(const std::map<std::string, Row>& live) {
  std::vector<Row> out;
  for (const auto& [author, row] : live) out.push_back(row);
  return out;
}

Row rowOf(const crdt::ReviewDoc& doc) {
  return Row{doc.key().author, doc.content().value().rating, doc.content().stamp().hlc};
}

std::vector<std::string> authorsOf(const std::vector<crdt::ReviewDoc>& docs) {
  std::vector<std::string> out;
  for (const auto& d : docs) out.push_back(d.key().author);
  return out;
}

const Order kOrders[] = {Order::kNewest, Order::kLowestRating, Order::kHighestRating};

const char* nameOf(Order o) {
  return o == Order::kNewest ? "newest" : o == Order::kLowestRating ? "lowest" : "highest";
}

// Writes `mutations` as one batch: the store thread is held while they are
// queued, so they commit in one transaction.
void writeAsOneBatch(Store& store, std::vector<std::pair<crdt::ReviewKey, Mutation>> mutations) {
  WriterBlock block(store);
  Collector results(mutations.size());
  for (size_t i = 0; i < mutations.size(); ++i) {
    store.mutate(mutations[i].first, std::move(mutations[i].second), results.done(i));
  }
  block.release();
  results.wait();
  for (size_t i = 0; i < results.size(); ++i) REQUIRE(results[i].ok());
}

Mutation rate(uint8_t rating) { return test::writeReview(rating, "t", "b"); }

// Makes a data dir look like one a schema 3 build wrote: no `listings`
// database, version 3 in meta.
void downgradeToV3(const std::string& dir) {
  test::withRawDb(dir, "listings", [&](MDB_txn* txn, MDB_dbi dbi) {
    REQUIRE(mdb_drop(txn, dbi, 1) == 0);
    return true;
  });
  test::withRawDb(dir, "meta", [&](MDB_txn* txn, MDB_dbi dbi) {
    std::string k(schema::kMetaSchemaVersion);
    std::string v("\x03\x00\x00\x00", 4);
    MDB_val key{k.size(), k.data()}, val{v.size(), v.data()};
    REQUIRE(mdb_put(txn, dbi, &key, &val, 0) == 0);
    return true;
  });
}

}  // namespace

TEST_CASE(
    "a product of 100k reviews pages through in every order, and its first page follows changes") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  TempDir dir;
  uint64_t now = 1'700'000'000'000;
  std::atomic<uint64_t> clockMs{now};
  Options o = test::optionsFor(dir.path());
  o.unsafeNoSync = true;
  o.clock = [&clockMs] { return clockMs.load(); };
  auto store = test::openStore(o);

  // 100k reviews in batches; many share a millisecond, and ratings repeat,
  // so the orders' ties are exercised. CHORUS_BIG_PRODUCT (a multiple of
  // 100) makes it smaller: tools/check's sanitizer run uses 10,000.
  const size_t kReviews = [] {
    const char* env = std::getenv("CHORUS_BIG_PRODUCT");
    size_t n = env != nullptr ? std::strtoull(env, nullptr, 10) : 0;
    return n >= 1'000 && n % 100 == 0 ? n : size_t{100'000};
  }();
  std::map<std::string, Row> live;
  {
    Collector results(kReviews);
    for (size_t i = 0; i < kReviews; ++i) {
      char author[16];
      std::snprintf(author, sizeof author, "u%06zu", i % 1000000);
      if (i % 64 == 0) clockMs.fetch_add(1);
      store->mutate({"big", author}, rate(static_cast<uint8_t>(1 + rng() % 5)), results.done(i));
    }
    results.wait();
    for (size_t i = 0; i < kReviews; ++i) {
      REQUIRE(results[i].ok());
      const crdt::ReviewDoc& doc = results[i]->state;
      live[doc.key().author] = rowOf(doc);
    }
  }
  // A neighbour whose reviews must never show up in "big"'s pages.
  for (int i = 0; i < 5; ++i) {
    REQUIRE(store->mutateSync({"big2", "u" + std::to_string(i)}, rate(3)).ok());
    REQUIRE(store->mutateSync({"bif", "u" + std::to_string(i)}, rate(3)).ok());
  }

  for (Order order : kOrders) {
    CAPTURE(nameOf(order));
    std::vector<std::string> got;
    std::string cursor;
    size_t pages = 0;
    for (; pages < kReviews / 100 + 2; ++pages) {
      auto page = store->listProduct("big", order, cursor, 100);
      REQUIRE(page.ok());
      REQUIRE(page->reviews.size() <= 100);
      for (const auto& d : page->reviews) got.push_back(d.key().author);
      cursor = page->nextCursor;
      if (cursor.empty()) break;
    }
    CHECK(pages + 1 == kReviews / 100);
    REQUIRE(got.size() == kReviews);
    CHECK(std::set<std::string>(got.begin(), got.end()).size() == kReviews);
    CHECK(got == expectedOrder(rowsOf(live), order));
  }

  // The first page of each order stays exact while reviews are re-rated,
  // deleted and revived (some of them on the first pages).
  for (int round = 0; round < 5; ++round) {
    CAPTURE(round);
    std::vector<std::pair<crdt::ReviewKey, Mutation>> changes;
    std::set<std::string> touched;
    for (Order order : kOrders) {
      auto first = store->listProduct("big", order, "", 100);
      REQUIRE(first.ok());
      for (int j = 0; j < 5; ++j) {
        touched.insert(first->reviews[rng() % first->reviews.size()].key().author);
      }
    }
    for (int j = 0; j < 20; ++j) {
      char author[16];
      std::snprintf(author, sizeof author, "u%06zu", static_cast<size_t>(rng() % kReviews) % 1000000);
      touched.insert(author);
    }
    clockMs.fetch_add(1 + rng() % 2);
    for (const std::string& author : touched) {
      if (rng() % 3 == 0) {
        changes.emplace_back(crdt::ReviewKey{"big", author}, test::eraseReview());
      } else {
        changes.emplace_back(crdt::ReviewKey{"big", author},
                             rate(static_cast<uint8_t>(1 + rng() % 5)));
      }
    }
    writeAsOneBatch(*store, std::move(changes));
    for (const std::string& author : touched) {
      auto got = store->get({"big", author});
      REQUIRE(got.ok());
      REQUIRE(got->has_value());
      if ((*got)->exists()) {
        live[author] = rowOf(**got);
      } else {
        live.erase(author);
      }
    }
    for (Order order : kOrders) {
      CAPTURE(nameOf(order));
      auto first = store->listProduct("big", order, "", 100);
      REQUIRE(first.ok());
      std::vector<std::string> want = expectedOrder(rowsOf(live), order);
      CHECK(authorsOf(first->reviews) ==
            std::vector<std::string>(want.begin(), want.begin() + 100));
      // The page after it starts where the expected order continues.
      auto second = store->listProduct("big", order, first->nextCursor, 3);
      REQUIRE(second.ok());
      CHECK(authorsOf(second->reviews) ==
            std::vector<std::string>(want.begin() + 100, want.begin() + 103));
    }
  }
  auto summary = store->summary("big");
  REQUIRE(summary.ok());
  CHECK(summary->count == live.size());
  CHECK(store->verify().ok());
}

TEST_CASE("a cursor whose review changed resumes at the next position after it") {
  TempDir dir;
  uint64_t now = 1'700'000'000'000;
  Options o = test::optionsFor(dir.path());
  o.clock = [&now] { return now; };
  auto store = test::openStore(o);
  for (int i = 0; i < 6; ++i) {
    ++now;
    REQUIRE(store->mutateSync({"p", "u" + std::to_string(i)}, rate(static_cast<uint8_t>(1 + i % 5)))
                .ok());
  }
  for (Order order : kOrders) {
    CAPTURE(nameOf(order));
    auto first = store->listProduct("p", order, "", 2);
    REQUIRE(first.ok());
    auto peek = store->listProduct("p", order, first->nextCursor, 10);
    REQUIRE(peek.ok());
    REQUIRE(peek->reviews.size() == 4);
    // The cursor's review moves (re-rated and newer), then the listing
    // resumes: the other three, in order, from where the cursor pointed.
    crdt::ReviewKey moved = peek->reviews[0].key();
    uint8_t old = peek->reviews[0].content().value().rating;
    ++now;
    REQUIRE(store->mutateSync(moved, rate(static_cast<uint8_t>(old % 5 + 1))).ok());
    auto rest = store->listProduct("p", order, first->nextCursor, 10);
    REQUIRE(rest.ok());
    std::vector<crdt::ReviewKey> got, want;
    for (const auto& d : rest->reviews) got.push_back(d.key());
    for (size_t i = 1; i < 4; ++i) want.push_back(peek->reviews[i].key());
    // The moved review reappears only where its new position falls after
    // the cursor.
    got.erase(std::remove(got.begin(), got.end(), moved), got.end());
    CHECK(got == want);
    // Put it back for the next order.
    ++now;
    REQUIRE(store->mutateSync(moved, rate(old)).ok());
  }
  CHECK(store->verify().ok());
}

TEST_CASE("reviews with one HLC list by author in every order, across pages") {
  // Replicas can stamp different reviews with the same HLC; every order
  // breaks such ties by author, and cursors land inside a tie.
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  TempDir dir;
  uint64_t now = 1'700'000'000'000;
  Options o = test::optionsFor(dir.path());
  o.clock = [&now] { return now; };
  o.unsafeNoSync = true;
  auto store = test::openStore(o);
  std::map<std::string, Row> live;
  for (int i = 0; i < 120; ++i) {
    std::string author = "w" + std::to_string(rng() % 60);
    crdt::Hlc hlc = crdt::Hlc::fromParts(now - 1000 + rng() % 4, static_cast<uint16_t>(rng() % 2));
    crdt::ReviewDoc doc({"tie", author});
    auto rating = static_cast<uint8_t>(1 + rng() % 3);
    crdt::ReviewDoc delta = doc.write(rating, "t", "b", crdt::Stamp{hlc, 100 + rng() % 3});
    auto r = store->mergeSync(delta);
    REQUIRE(r.ok());
    live[author] = rowOf(r->state);
  }
  for (Order order : kOrders) {
    CAPTURE(nameOf(order));
    for (size_t limit : {size_t{1}, size_t{2}, size_t{5}, size_t{100}}) {
      CAPTURE(limit);
      std::vector<std::string> got;
      std::string cursor;
      for (int pages = 0; pages < 200; ++pages) {
        auto page = store->listProduct("tie", order, cursor, limit);
        REQUIRE(page.ok());
        for (const auto& d : page->reviews) got.push_back(d.key().author);
        cursor = page->nextCursor;
        if (cursor.empty()) break;
      }
      CHECK(got == expectedOrder(rowsOf(live), order));
    }
  }
  CHECK(store->verify().ok());
}

TEST_CASE("verify names a listing position that is missing, stale or extra") {
  TempDir dir;
  uint64_t now = 1'700'000'000'000;
  Options o = test::optionsFor(dir.path());
  o.clock = [&now] { return now; };
  crdt::Hlc hlcOf7;
  {
    auto store = test::openStore(o);
    for (int i = 0; i < 20; ++i) {
      ++now;
      auto r = store->mutateSync({"sku-1", "u" + std::to_string(i)}, rate(4));
      REQUIRE(r.ok());
      if (i == 7) hlcOf7 = r->state.content().stamp().hlc;
    }
    REQUIRE(store->mutateSync({"sku-1", "u3"}, test::eraseReview()).ok());
    REQUIRE(store->verify().ok());
  }
  auto put = [&](const std::string& k, const std::string& v) {
    test::withRawDb(dir.path(), "listings", [&](MDB_txn* txn, MDB_dbi dbi) {
      MDB_val key{k.size(), const_cast<char*>(k.data())},
          val{v.size(), const_cast<char*>(v.data())};
      REQUIRE(mdb_put(txn, dbi, &key, &val, 0) == 0);
      return true;
    });
  };
  auto del = [&](const std::string& k) {
    test::withRawDb(dir.path(), "listings", [&](MDB_txn* txn, MDB_dbi dbi) {
      MDB_val key{k.size(), const_cast<char*>(k.data())};
      REQUIRE(mdb_del(txn, dbi, &key, nullptr) == 0);
      return true;
    });
  };
  auto expectBroken = [&](const std::string& what, const std::string& author) {
    auto store = test::openStore(o);
    auto v = store->verify();
    REQUIRE_FALSE(v.ok());
    CHECK(v.error().code == ErrorCode::kCorruption);
    CHECK(contains(v.error().message, what));
    CHECK(contains(v.error().message, "author '" + author + "'"));
  };
  SUBCASE("missing") {
    del(schema::ratingSortKey({"sku-1", "u7"}, 4, hlcOf7));
    expectBroken("lacks the position", "u7");
  }
  SUBCASE("extra, for a deleted review") {
    put(schema::ratingSortKey({"sku-1", "u3"}, 4, crdt::Hlc{hlcOf7.bits - 1}), "");
    expectBroken("stale or extra", "u3");
    // A listing reaching it refuses to return the tombstone.
    auto store = test::openStore(o);
    auto page = store->listProduct("sku-1", Order::kNewest, "", 100);
    REQUIRE_FALSE(page.ok());
    CHECK(page.error().code == ErrorCode::kCorruption);
  }
  SUBCASE("extra, for a product with no reviews") {
    put(schema::ratingSortKey({"sku-9", "zed"}, 1, crdt::Hlc{5}), "");
    expectBroken("stale or extra", "zed");
  }
  SUBCASE("extra, in a key format the index does not use") {
    put(schema::newestSortKey({"sku-1", "u7"}, hlcOf7), "");
    expectBroken("stale or extra", "u7");
  }
  SUBCASE("stale: the old rating's position") {
    del(schema::ratingSortKey({"sku-1", "u7"}, 4, hlcOf7));
    put(schema::ratingSortKey({"sku-1", "u7"}, 2, hlcOf7), "");
    expectBroken("stale or extra", "u7");
    auto store = test::openStore(o);
    auto page = store->listProduct("sku-1", Order::kLowestRating, "", 1);
    REQUIRE_FALSE(page.ok());
    CHECK(page.error().code == ErrorCode::kCorruption);
  }
  SUBCASE("a position with a value") {
    put(schema::ratingSortKey({"sku-1", "u7"}, 4, hlcOf7), "x");
    expectBroken("has a value", "u7");
  }
}

TEST_CASE("a schema 3 data dir is migrated at open and verifies") {
  TempDir dir;
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  std::map<std::string, std::vector<std::string>> before;  // product -> highest order
  Hash root{};
  Options o = test::optionsFor(dir.path());
  o.unsafeNoSync = true;
  {
    auto store = test::openStore(o);
    for (int i = 0; i < 300; ++i) {
      crdt::ReviewKey key{"sku-" + std::to_string(rng() % 7), "u" + std::to_string(rng() % 50)};
      if (rng() % 5 == 0) {
        (void)store->mutateSync(key, test::eraseReview());
      } else {
        REQUIRE(store->mutateSync(key, rate(static_cast<uint8_t>(1 + rng() % 5))).ok());
      }
    }
    for (int p = 0; p < 7; ++p) {
      auto page = store->listProduct("sku-" + std::to_string(p), Order::kHighestRating, "", 1000);
      REQUIRE(page.ok());
      before["sku-" + std::to_string(p)] = authorsOf(page->reviews);
    }
    root = *store->merkleRoot();
  }
  downgradeToV3(dir.path());
  SUBCASE("a plain version 3 dir") {}
  SUBCASE("with a leftover listings database") {
    // Version 3 builds never write one; whatever is there is rebuilt.
    test::withRawDb(dir.path(), "meta", [&](MDB_txn* txn, MDB_dbi) {
      MDB_dbi listings;
      REQUIRE(mdb_dbi_open(txn, "listings", MDB_CREATE, &listings) == 0);
      std::string k = schema::newestSortKey({"sku-0", "ghost"}, crdt::Hlc{1});
      MDB_val key{k.size(), k.data()}, val{0, nullptr};
      REQUIRE(mdb_put(txn, listings, &key, &val, 0) == 0);
      return true;
    });
  }
  {
    std::vector<std::string> notices;
    o.notice = [&](const std::string& n) { notices.push_back(n); };
    auto store = test::openStore(o);
    REQUIRE(notices.size() == 1);
    CHECK(contains(notices[0], "migrated from storage schema version 3 to 4"));
    CHECK(store->verify().ok());
    CHECK(*store->merkleRoot() == root);
    for (const auto& [product, authors] : before) {
      auto page = store->listProduct(product, Order::kHighestRating, "", 1000);
      REQUIRE(page.ok());
      CHECK(authorsOf(page->reviews) == authors);
    }
    REQUIRE(store->mutateSync({"sku-0", "new"}, rate(5)).ok());
    CHECK(store->verify().ok());
  }
  {
    // Once migrated, it opens as version 4 without migrating again.
    std::vector<std::string> notices;
    o.notice = [&](const std::string& n) { notices.push_back(n); };
    auto store = test::openStore(o);
    CHECK(notices.empty());
    CHECK(store->verify().ok());
  }
}

TEST_CASE("a migration that fills the map grows it and completes") {
  TempDir dir;
  Options o = test::optionsFor(dir.path());
  o.initialMapBytes = 1 << 20;
  o.unsafeNoSync = true;
  uint64_t usedBefore = 0;
  {
    auto store = test::openStore(o);
    Collector results(4000);
    for (size_t i = 0; i < results.size(); ++i) {
      store->mutate(
          {"sku-" + std::to_string(i % 3), "author-with-a-long-name-" + std::to_string(i)},
          rate(static_cast<uint8_t>(1 + i % 5)), results.done(i));
    }
    results.wait();
    usedBefore = store->stats().usedBytes;
  }
  downgradeToV3(dir.path());
  // A compacted copy has no free pages (dropping the index freed some), so
  // opened with a map no larger than its data, the index does not fit.
  {
    MDB_env* env = nullptr;
    REQUIRE(mdb_env_create(&env) == 0);
    mdb_env_set_maxdbs(env, 16);
    REQUIRE(mdb_env_open(env, dir.path().c_str(), 0, 0600) == 0);
    REQUIRE(::mkdir(dir.sub("compact").c_str(), 0700) == 0);
    REQUIRE(mdb_env_copy2(env, dir.sub("compact").c_str(), MDB_CP_COMPACT) == 0);
    mdb_env_close(env);
  }
  o.dir = dir.sub("compact");
  auto store = test::openStore(o);
  CHECK(store->stats().mapBytes > usedBefore);
  CHECK(store->verify().ok());
  auto page = store->listProduct("sku-1", Order::kNewest, "", 2000);
  REQUIRE(page.ok());
  CHECK(page->reviews.size() == 1333);
}

TEST_CASE("newer schema versions are refused, and the data dir is left as it was") {
  // Older versions migrate (test/storage/migration-test.cpp).
  for (uint32_t version : {kSchemaVersion + 1, kSchemaVersion + 200}) {
    CAPTURE(version);
    TempDir dir;
    { test::openStore(test::optionsFor(dir.path())); }
    test::withRawDb(dir.path(), "meta", [&](MDB_txn* txn, MDB_dbi dbi) {
      std::string k(schema::kMetaSchemaVersion);
      std::string v(4, '\0');
      v[0] = static_cast<char>(version);
      MDB_val key{k.size(), k.data()}, val{v.size(), v.data()};
      REQUIRE(mdb_put(txn, dbi, &key, &val, 0) == 0);
      return true;
    });
    for (int attempt = 0; attempt < 2; ++attempt) {
      auto store = Store::open(test::optionsFor(dir.path()));
      REQUIRE_FALSE(store.ok());
      CHECK(store.error().code == ErrorCode::kInvalidArgument);
      CHECK(contains(store.error().message, "version " + std::to_string(version)));
      CHECK(contains(store.error().message, "newer than this build knows"));
    }
  }
}

// Readers list and summarise while a writer commits batches that each keep
// two properties of product "c" true: 40 live reviews whose ratings sum to
// 120 (a batch raises one rating and lowers another, or deletes a review
// and adds one of the same rating). A read that saw half a batch, or a
// listing and a summary from different commits, breaks one of: the count,
// the rating sum, the histogram or helpful total agreeing with the listed
// reviews, or the listing order.
TEST_CASE("listings and summaries read alongside a writer see only committed states") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  TempDir dir;
  Options o = test::optionsFor(dir.path());
  o.unsafeNoSync = true;
  auto store = test::openStore(o);
  constexpr int kReviews = 40;
  std::vector<std::pair<crdt::ReviewKey, Mutation>> initial;
  std::map<std::string, uint8_t> ratings;
  for (int i = 0; i < kReviews; ++i) {
    std::string author = "a" + std::to_string(i);
    initial.emplace_back(crdt::ReviewKey{"c", author}, rate(3));
    ratings[author] = 3;
  }
  writeAsOneBatch(*store, std::move(initial));

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> failures{0};
  std::mutex failMu;
  std::string firstFailure;
  auto fail = [&](const std::string& why) {
    if (failures.fetch_add(1) == 0) {
      std::lock_guard lock(failMu);
      firstFailure = why;
    }
  };
  auto check = [&](const ProductSummary& sum, const std::vector<crdt::ReviewDoc>& docs, Order order,
                   bool sameSnapshot) {
    std::array<uint64_t, 5> histogram{};
    uint64_t ratingSum = 0, helpful = 0;
    std::vector<Row> rows;
    for (const auto& d : docs) {
      uint8_t r = d.content().value().rating;
      ++histogram[r - 1u];
      ratingSum += r;
      helpful += d.helpfulCount();
      rows.push_back(rowOf(d));
    }
    if (docs.size() != kReviews || ratingSum != 3 * kReviews) {
      fail("a listing of " + std::to_string(docs.size()) + " reviews with rating sum " +
           std::to_string(ratingSum));
    }
    if (sum.count != kReviews || sum.ratingSum != 3 * kReviews) {
      fail("a summary of " + std::to_string(sum.count) + " reviews with rating sum " +
           std::to_string(sum.ratingSum));
    }
    if (sameSnapshot && (sum.histogram != histogram || sum.helpfulTotal != helpful)) {
      fail("a page whose summary disagrees with its reviews");
    }
    if (authorsOf(docs) != expectedOrder(rows, order)) fail("a listing out of order");
  };

  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      for (uint64_t i = 0; !stop.load() && std::chrono::steady_clock::now() < deadline; ++i) {
        Order order = kOrders[(i + static_cast<uint64_t>(t)) % 3];
        if (i % 2 == 0) {
          auto page = store->productPage("c", order, "", 1000);
          if (!page) {
            fail(page.error().toString());
            continue;
          }
          check(page->summary, page->page.reviews, order, true);
        } else {
          // Two calls, two snapshots: each must be a committed state.
          auto page = store->listProduct("c", order, "", 1000);
          auto sum = store->summary("c");
          if (!page || !sum) {
            fail("a read failed");
            continue;
          }
          check(*sum, page->reviews, order, false);
        }
        reads.fetch_add(1);
      }
    });
  }

  std::mt19937_64 rng(seed);
  int next = kReviews;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  int batches = 0;
  for (; batches < 2000 && std::chrono::steady_clock::now() < deadline; ++batches) {
    std::vector<std::pair<crdt::ReviewKey, Mutation>> batch;
    std::vector<std::string> authors;
    for (const auto& [a, r] : ratings) authors.push_back(a);
    std::string a = authors[rng() % authors.size()], b = authors[rng() % authors.size()];
    if (a != b && ratings[a] < 5 && ratings[b] > 1) {
      batch.emplace_back(crdt::ReviewKey{"c", a}, rate(++ratings[a]));
      batch.emplace_back(crdt::ReviewKey{"c", b}, rate(--ratings[b]));
    } else {
      std::string fresh = "a" + std::to_string(next++);
      batch.emplace_back(crdt::ReviewKey{"c", a}, test::eraseReview());
      batch.emplace_back(crdt::ReviewKey{"c", fresh}, rate(ratings[a]));
      ratings[fresh] = ratings[a];
      ratings.erase(a);
    }
    // A helpful vote rides along: the helpful total moves with it.
    batch.emplace_back(crdt::ReviewKey{"c", authors[rng() % authors.size()]},
                       test::voteHelpful("v" + std::to_string(batches)));
    // A write to another product in the same batch.
    batch.emplace_back(crdt::ReviewKey{"other", "x" + std::to_string(rng() % 10)},
                       rate(static_cast<uint8_t>(1 + rng() % 5)));
    writeAsOneBatch(*store, std::move(batch));
  }
  stop = true;
  for (auto& t : readers) t.join();
  CAPTURE(firstFailure);
  CHECK(failures.load() == 0);
  CHECK(batches > 20);
  CHECK(reads.load() > 20);
  CHECK(store->verify().ok());
}
