// Store operations as a caller sees them: writes, merges, reads, listings,
// summaries, group commit.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "storage/helpers.h"
#include "storage/store.h"
#include "support/results.h"
#include "support/seed.h"

using namespace chorus;
using namespace chorus::storage;
using chorus::test::Collector;
using chorus::test::failure;
using chorus::test::TempDir;
using chorus::test::WriterBlock;

namespace {

crdt::ReviewDoc mustGet(Store& store, const crdt::ReviewKey& key) {
  auto got = store.get(key);
  REQUIRE(got.ok());
  REQUIRE(got->has_value());
  return **got;
}

Applied mustApply(Result<Applied> r) {
  if (!r) FAIL(r.error().toString());
  return std::move(r).value();
}

std::vector<crdt::ReviewKey> keysOf(const std::vector<crdt::ReviewDoc>& docs) {
  std::vector<crdt::ReviewKey> out;
  for (const auto& d : docs) out.push_back(d.key());
  return out;
}

// Every page of a listing, following cursors.
std::vector<crdt::ReviewDoc> listAll(const std::function<Result<Page>(const std::string&)>& page,
                                     size_t* pages = nullptr) {
  std::vector<crdt::ReviewDoc> all;
  std::string cursor;
  for (int i = 0; i < 10'000; ++i) {
    auto p = page(cursor);
    REQUIRE(p.ok());
    all.insert(all.end(), p->reviews.begin(), p->reviews.end());
    if (pages != nullptr) ++*pages;
    if (p->nextCursor.empty()) return all;
    cursor = p->nextCursor;
  }
  FAIL("listing did not end");
  return all;
}

}  // namespace

TEST_CASE("a new store has a stable replica id and an empty tree") {
  TempDir dir;
  crdt::ReplicaId id = 0;
  {
    auto store = test::openStore(test::optionsFor(dir.path()));
    id = store->replicaId();
    CHECK(id != 0);
    auto root = store->merkleRoot();
    REQUIRE(root.ok());
    CHECK(*root == Hash{});
    auto got = store->get({"sku-1", "alice"});
    REQUIRE(got.ok());
    CHECK_FALSE(got->has_value());
    CHECK(store->verify().ok());
  }
  auto store = test::openStore(test::optionsFor(dir.path()));
  CHECK(store->replicaId() == id);
}

TEST_CASE("mutate writes a review that get returns, and survives reopening") {
  TempDir dir;
  crdt::ReviewKey key{"sku-000123", "user-5f3a"};
  {
    auto store = test::openStore(test::optionsFor(dir.path()));
    Applied a = mustApply(store->mutateSync(key, test::writeReview(4, "good", "fits well")));
    CHECK(a.changed);
    CHECK(a.state.exists());
    CHECK(a.state.content().value().title == "good");
    CHECK(a.delta.content().value().body == "fits well");
    CHECK(a.state.content().stamp().replica == store->replicaId());
    CHECK(mustGet(*store, key) == a.state);
    StoreStats s = store->stats();
    CHECK(s.documents == 1);
    CHECK(s.writes == 1);
    CHECK(s.commits == 1);
    CHECK(s.mapBytes >= s.usedBytes);
  }
  auto store = test::openStore(test::optionsFor(dir.path()));
  CHECK(mustGet(*store, key).content().value().title == "good");
}

TEST_CASE("getEncoded returns the canonical bytes get would decode") {
  TempDir dir;
  auto store = test::openStore(test::optionsFor(dir.path()));
  crdt::ReviewKey key{"sku-000124", "user-77"};
  auto none = store->getEncoded(key);
  REQUIRE(none.ok());
  CHECK_FALSE(none.value().has_value());
  mustApply(store->mutateSync(key, test::writeReview(3, "ok", "fine")));
  auto bytes = store->getEncoded(key);
  REQUIRE(bytes.ok());
  REQUIRE(bytes.value().has_value());
  CHECK(*bytes.value() == mustGet(*store, key).encode());
  CHECK_FALSE(store->getEncoded({"", "x"}).ok());  // invalid key
}

TEST_CASE("a write that changes nothing reports changed = false") {
  TempDir dir;
  auto store = test::openStore(test::optionsFor(dir.path()));
  crdt::ReviewKey key{"sku-1", "bob"};
  mustApply(store->mutateSync(key, test::writeReview(3, "t", "b")));
  Applied v1 = mustApply(store->mutateSync(key, test::voteHelpful("carol")));
  CHECK(v1.changed);
  Hash root = *store->merkleRoot();
  Applied untag = mustApply(store->mutateSync(
      key, [](crdt::ReviewDoc& doc, crdt::HybridClock&) -> Result<crdt::ReviewDoc> {
        return doc.untag("never-added");
      }));
  CHECK_FALSE(untag.changed);
  CHECK(*store->merkleRoot() == root);
}

TEST_CASE("a failing mutation fails only its own write in the batch") {
  TempDir dir;
  auto store = test::openStore(test::optionsFor(dir.path()));
  Collector c(3);
  uint64_t commitsBefore = 0;
  {
    WriterBlock block(*store);
    commitsBefore = store->stats().commits;
    store->mutate({"sku-1", "a"}, test::writeReview(5, "a", ""), c.done(0));
    store->mutate(
        {"sku-1", "b"},
        [](crdt::ReviewDoc&, crdt::HybridClock&) -> Result<crdt::ReviewDoc> {
          return makeError(ErrorCode::kNotFound, "no such review to vote on");
        },
        c.done(1));
    store->mutate({"sku-1", "c"}, test::writeReview(2, "c", ""), c.done(2));
    block.release();
  }
  c.wait();
  CHECK(c[0].ok());
  REQUIRE_FALSE(c[1].ok());
  CHECK(c[1].error().code == ErrorCode::kNotFound);
  CHECK(c[2].ok());
  CHECK(store->stats().commits == commitsBefore + 2);  // the blocking write, then all three
  CHECK_FALSE(store->get({"sku-1", "b"})->has_value());
  CHECK(store->get({"sku-1", "c"})->has_value());
  CHECK(store->verify().ok());
}

TEST_CASE("writes to one key in one batch see each other") {
  TempDir dir;
  auto store = test::openStore(test::optionsFor(dir.path()));
  crdt::ReviewKey key{"sku-9", "dana"};
  const size_t n = 20;
  Collector c(n + 1);
  uint64_t commitsBefore = 0;
  {
    WriterBlock block(*store);
    commitsBefore = store->stats().commits;
    store->mutate(key, test::writeReview(4, "t", "b"), c.done(0));
    for (size_t i = 1; i <= n; ++i) {
      store->mutate(key, test::voteHelpful("voter-" + std::to_string(i)), c.done(i));
    }
    block.release();
  }
  c.wait();
  for (size_t i = 1; i <= n; ++i) {
    REQUIRE(c[i].ok());
    CHECK(c[i]->state.helpfulCount() == i);
    CHECK(c[i]->state.exists());
  }
  CHECK(store->stats().commits == commitsBefore + 2);
  CHECK(mustGet(*store, key).helpfulCount() == n);
  auto sum = store->summary("sku-9");
  REQUIRE(sum.ok());
  CHECK(sum->helpfulTotal == n);
  CHECK(store->verify().ok());
}

TEST_CASE("merge applies remote states once and refuses stamps from the far future") {
  TempDir dir;
  uint64_t now = 1'700'000'000'000;
  Options o = test::optionsFor(dir.path());
  o.clock = [&now] { return now; };
  o.maxDriftMillis = 60'000;
  auto store = test::openStore(o);

  crdt::HybridClock remoteClock(42, [&now] { return now; });
  crdt::ReviewDoc remote({"sku-7", "erin"});
  crdt::ReviewDoc delta = remote.write(5, "great", "really", remoteClock.now());
  Applied first = mustApply(store->mergeSync(delta));
  CHECK(first.changed);
  CHECK(first.state == remote);
  Applied again = mustApply(store->mergeSync(remote));
  CHECK_FALSE(again.changed);
  CHECK(mustGet(*store, {"sku-7", "erin"}) == remote);

  // A local edit after the merge orders after the remote stamp.
  Applied local = mustApply(store->mutateSync({"sku-7", "erin"}, test::writeReview(1, "meh", "")));
  CHECK(local.state.content().stamp() > remote.content().stamp());

  crdt::HybridClock futureClock(43, [&now] { return now + 120'000; });
  crdt::ReviewDoc future({"sku-7", "frank"});
  future.write(3, "from the future", "", futureClock.now());
  Hash root = *store->merkleRoot();
  auto refused = store->mergeSync(future);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == ErrorCode::kClockDrift);
  CHECK(store->stats().refusedStamps == 1);
  CHECK_FALSE(store->get({"sku-7", "frank"})->has_value());
  CHECK(*store->merkleRoot() == root);
  CHECK(store->verify().ok());
}

TEST_CASE("stamps stay monotonic across restarts when the clock goes back") {
  TempDir dir;
  uint64_t now = 2'000'000'000'000;
  Options o = test::optionsFor(dir.path());
  o.clock = [&now] { return now; };
  crdt::Stamp before;
  {
    auto store = test::openStore(o);
    before = mustApply(store->mutateSync({"p", "a"}, test::writeReview(3, "", "")))
                 .state.content()
                 .stamp();
  }
  now = 1'000;  // the wall clock jumped back
  auto store = test::openStore(o);
  crdt::Stamp after = mustApply(store->mutateSync({"p", "b"}, test::writeReview(3, "", "")))
                          .state.content()
                          .stamp();
  CHECK(after.hlc > before.hlc);
  CHECK(store->verify().ok());
}

TEST_CASE("invalid keys are refused with kInvalidArgument") {
  TempDir dir;
  auto store = test::openStore(test::optionsFor(dir.path()));
  auto empty = store->mutateSync({"", "a"}, test::writeReview(3, "", ""));
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.error().code == ErrorCode::kInvalidArgument);
  auto tooLong = store->mutateSync({std::string(201, 'p'), "a"}, test::writeReview(3, "", ""));
  REQUIRE_FALSE(tooLong.ok());
  CHECK(tooLong.error().code == ErrorCode::kInvalidArgument);
  CHECK(failure(store->get({"p", ""})).code == ErrorCode::kInvalidArgument);
  CHECK(failure(store->listProduct("", Order::kNewest, "", 10)).code ==
        ErrorCode::kInvalidArgument);
  CHECK(failure(store->listProduct("p", Order::kNewest, "", 0)).code ==
        ErrorCode::kInvalidArgument);
  // Longest allowed ids work.
  crdt::ReviewKey longest{std::string(200, 'p'), std::string(200, 'a')};
  CHECK(store->mutateSync(longest, test::writeReview(3, "", "")).ok());
  CHECK(store->listProduct(longest.product, Order::kHighestRating, "", 10)->reviews.size() == 1);
  CHECK(store->verify().ok());
}

TEST_CASE("deleted reviews stay visible to get but leave listings and summary") {
  TempDir dir;
  auto store = test::openStore(test::optionsFor(dir.path()));
  mustApply(store->mutateSync({"sku-1", "a"}, test::writeReview(5, "a", "x")));
  mustApply(store->mutateSync({"sku-1", "b"}, test::writeReview(1, "b", "y")));
  mustApply(store->mutateSync({"sku-1", "b"}, test::voteHelpful("v")));
  mustApply(store->mutateSync({"sku-1", "b"}, test::eraseReview()));

  crdt::ReviewDoc tomb = mustGet(*store, {"sku-1", "b"});
  CHECK_FALSE(tomb.exists());
  CHECK(tomb.content().value().body.empty());
  auto sum = store->summary("sku-1");
  REQUIRE(sum.ok());
  CHECK(sum->count == 1);
  CHECK(sum->histogram == std::array<uint64_t, 5>{0, 0, 0, 0, 1});
  CHECK(sum->helpfulTotal == 0);
  CHECK(sum->average() == doctest::Approx(5.0));
  for (Order order : {Order::kNewest, Order::kHighestRating, Order::kLowestRating}) {
    auto page = store->listProduct("sku-1", order, "", 10);
    REQUIRE(page.ok());
    CHECK(keysOf(page->reviews) == std::vector<crdt::ReviewKey>{{"sku-1", "a"}});
  }
  CHECK(store->listAuthor("b", "", 10)->reviews.empty());

  // A later write revives it, with the helpful vote that survived deletion.
  mustApply(store->mutateSync({"sku-1", "b"}, test::writeReview(2, "back", "z")));
  sum = store->summary("sku-1");
  CHECK(sum->count == 2);
  CHECK(sum->ratingSum == 7);
  CHECK(sum->helpfulTotal == 1);
  CHECK(store->listAuthor("b", "", 10)->reviews.size() == 1);
  CHECK(store->verify().ok());
}

TEST_CASE("listings page through every live review in order, both directions") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  TempDir dir;
  uint64_t now = 1'700'000'000'000;
  Options o = test::optionsFor(dir.path());
  o.clock = [&now] { return now; };
  auto store = test::openStore(o);

  // Neighbouring product ids whose raw bytes are prefixes of each other.
  const std::vector<std::string> products = {"sku-1", "sku-10", "sku-", "sku-1x"};
  std::set<crdt::ReviewKey> keys;
  for (int i = 0; i < 150; ++i) {
    crdt::ReviewKey key{products[rng() % products.size()], "user-" + std::to_string(rng() % 40)};
    now += rng() % 3;  // equal milliseconds are common
    if (rng() % 6 == 0 && keys.count(key)) {
      mustApply(store->mutateSync(key, test::eraseReview()));
    } else {
      mustApply(
          store->mutateSync(key, test::writeReview(static_cast<uint8_t>(1 + rng() % 5), "t", "b")));
    }
    keys.insert(key);
  }

  for (const std::string& product : products) {
    CAPTURE(product);
    std::vector<crdt::ReviewDoc> live;
    for (const auto& k : keys) {
      if (k.product != product) continue;
      crdt::ReviewDoc d = mustGet(*store, k);
      if (d.exists()) live.push_back(d);
    }
    auto stamp = [](const crdt::ReviewDoc& d) { return d.content().stamp().hlc; };
    auto rating = [](const crdt::ReviewDoc& d) { return d.content().value().rating; };
    std::vector<crdt::ReviewDoc> newest = live, highest = live, lowest = live;
    std::sort(newest.begin(), newest.end(), [&](auto& a, auto& b) {
      return std::pair(stamp(b), a.key().author) < std::pair(stamp(a), b.key().author);
    });
    std::sort(lowest.begin(), lowest.end(), [&](auto& a, auto& b) {
      return std::tuple(rating(a), stamp(a), a.key().author) <
             std::tuple(rating(b), stamp(b), b.key().author);
    });
    highest.assign(lowest.rbegin(), lowest.rend());

    for (size_t limit : {size_t{1}, size_t{7}, size_t{1000}}) {
      CAPTURE(limit);
      size_t pages = 0;
      auto got = listAll(
          [&](const std::string& c) {
            return store->listProduct(product, Order::kNewest, c, limit);
          },
          &pages);
      CHECK(keysOf(got) == keysOf(newest));
      CHECK(pages == std::max<size_t>(1, (live.size() + limit - 1) / limit));
      got = listAll([&](const std::string& c) {
        return store->listProduct(product, Order::kHighestRating, c, limit);
      });
      CHECK(keysOf(got) == keysOf(highest));
      got = listAll([&](const std::string& c) {
        return store->listProduct(product, Order::kLowestRating, c, limit);
      });
      CHECK(keysOf(got) == keysOf(lowest));
    }
    auto sum = store->summary(product);
    REQUIRE(sum.ok());
    CHECK(sum->count == live.size());
  }

  // Cursors belong to one listing.
  auto first = store->listProduct("sku-1", Order::kNewest, "", 1);
  REQUIRE(first.ok());
  if (!first->nextCursor.empty()) {
    auto other = store->listProduct("sku-1", Order::kHighestRating, first->nextCursor, 1);
    REQUIRE_FALSE(other.ok());
    CHECK(other.error().code == ErrorCode::kInvalidArgument);
    auto otherProduct = store->listProduct("sku-10", Order::kNewest, first->nextCursor, 1);
    REQUIRE_FALSE(otherProduct.ok());
    CHECK(otherProduct.error().code == ErrorCode::kInvalidArgument);
  }
  CHECK(failure(store->listProduct("sku-1", Order::kNewest, "zz", 1)).code ==
        ErrorCode::kInvalidArgument);
  CHECK(failure(store->listProduct("sku-1", Order::kNewest, "6e", 1)).code ==
        ErrorCode::kInvalidArgument);
  CHECK(store->verify().ok());
}

TEST_CASE("a cursor survives writes between pages") {
  TempDir dir;
  auto store = test::openStore(test::optionsFor(dir.path()));
  for (int i = 0; i < 10; ++i) {
    mustApply(store->mutateSync({"p", "u" + std::to_string(i)}, test::writeReview(3, "", "")));
  }
  auto page1 = store->listProduct("p", Order::kHighestRating, "", 4);
  REQUIRE(page1.ok());
  REQUIRE_FALSE(page1->nextCursor.empty());
  // The review the cursor points at is deleted before the next page.
  auto page2peek = store->listProduct("p", Order::kHighestRating, page1->nextCursor, 1);
  REQUIRE(page2peek.ok());
  mustApply(store->mutateSync(page2peek->reviews[0].key(), test::eraseReview()));
  auto rest = listAll([&](const std::string& c) {
    return store->listProduct("p", Order::kHighestRating, c.empty() ? page1->nextCursor : c, 4);
  });
  CHECK(rest.size() == 5);
  std::set<crdt::ReviewKey> seen;
  for (const auto& d : page1->reviews) seen.insert(d.key());
  for (const auto& d : rest) CHECK(seen.insert(d.key()).second);
}

TEST_CASE("listAuthor pages through one author's live reviews") {
  TempDir dir;
  auto store = test::openStore(test::optionsFor(dir.path()));
  std::set<std::string> expected;
  for (int i = 0; i < 23; ++i) {
    std::string product = "sku-" + std::to_string(1000 + i);
    mustApply(store->mutateSync({product, "gina"}, test::writeReview(4, "", "")));
    mustApply(store->mutateSync({product, "gin"}, test::writeReview(4, "", "")));  // prefix of gina
    expected.insert(product);
  }
  mustApply(store->mutateSync({"sku-1005", "gina"}, test::eraseReview()));
  expected.erase("sku-1005");
  size_t pages = 0;
  auto all = listAll([&](const std::string& c) { return store->listAuthor("gina", c, 5); }, &pages);
  std::vector<std::string> got;
  for (const auto& d : all) {
    CHECK(d.key().author == "gina");
    got.push_back(d.key().product);
  }
  CHECK(got == std::vector<std::string>(expected.begin(), expected.end()));  // by product
  CHECK(pages == 5);
  CHECK(failure(store->listAuthor("gina", "", 0)).code == ErrorCode::kInvalidArgument);
  auto first = store->listAuthor("gina", "", 1);
  REQUIRE(first.ok());
  CHECK(failure(store->listAuthor("gin", first->nextCursor, 1)).code ==
        ErrorCode::kInvalidArgument);
  CHECK(store->listAuthor("nobody", "", 10)->reviews.empty());
}

TEST_CASE("product aggregates match a recount after random operations") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  TempDir dir;
  auto store = test::openStore(test::optionsFor(dir.path()));
  std::set<crdt::ReviewKey> keys;
  const size_t n = static_cast<size_t>(test::testCases(600));
  Collector c(n);
  for (size_t i = 0; i < n; ++i) {
    crdt::ReviewKey key{"sku-" + std::to_string(rng() % 5), "u-" + std::to_string(rng() % 12)};
    keys.insert(key);
    Mutation m;
    switch (rng() % 6) {
      case 0:
        m = test::eraseReview();
        break;
      case 1:
        m = test::voteHelpful("v" + std::to_string(rng() % 4));
        break;
      case 2: {
        std::string voter = "v" + std::to_string(rng() % 4);
        m = [voter](crdt::ReviewDoc& d, crdt::HybridClock&) -> Result<crdt::ReviewDoc> {
          return d.unvote(voter);
        };
        break;
      }
      case 3:
        m = test::tagReview("fit");
        break;
      default:
        m = test::writeReview(static_cast<uint8_t>(1 + rng() % 5), "t", "b");
        break;
    }
    store->mutate(key, m, c.done(i));  // asynchronous: batches form
  }
  c.wait();
  for (size_t i = 0; i < n; ++i) REQUIRE(c[i].ok());

  std::map<std::string, ProductSummary> recount;
  for (const auto& key : keys) {
    // A key that only ever got unvotes stored nothing (seed 4335902763307992461).
    auto got = store->get(key);
    REQUIRE(got.ok());
    ProductSummary& s = recount[key.product];
    if (!got->has_value()) continue;
    const crdt::ReviewDoc& d = **got;
    if (!d.exists()) continue;
    ++s.count;
    ++s.histogram[d.content().value().rating - 1u];
    s.ratingSum += d.content().value().rating;
    s.helpfulTotal += d.helpfulCount();
  }
  for (const auto& [product, expected] : recount) {
    CAPTURE(product);
    auto s = store->summary(product);
    REQUIRE(s.ok());
    CHECK(s->count == expected.count);
    CHECK(s->histogram == expected.histogram);
    CHECK(s->ratingSum == expected.ratingSum);
    CHECK(s->helpfulTotal == expected.helpfulTotal);
  }
  CHECK(store->stats().commits < n);  // group commit happened
  CHECK(store->verify().ok());
}

TEST_CASE("closing the store acknowledges every queued write first") {
  TempDir dir;
  const size_t n = 500;
  Collector c(n);
  {
    auto store = test::openStore(test::optionsFor(dir.path()));
    for (size_t i = 0; i < n; ++i) {
      store->mutate({"sku-" + std::to_string(i % 7), "u" + std::to_string(i)},
                    test::writeReview(3, "t", "b"), c.done(i));
    }
  }  // destructor drains
  c.wait();
  for (size_t i = 0; i < n; ++i) CHECK(c[i].ok());
  auto store = test::openStore(test::optionsFor(dir.path()));
  CHECK(store->stats().documents == n);
  CHECK(store->verify().ok());
}

TEST_CASE("reads from many threads run alongside writes") {
  TempDir dir;
  auto store = test::openStore(test::optionsFor(dir.path()));
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> failures{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      while (!stop.load()) {
        bool ok = store->get({"sku-" + std::to_string(t), "u1"}).ok() &&
                  store->listProduct("sku-" + std::to_string(t), Order::kNewest, "", 5).ok() &&
                  store->summary("sku-1").ok() && store->merkleRoot().ok();
        if (!ok) failures.fetch_add(1);
        reads.fetch_add(1);
      }
    });
  }
  const size_t n = 2000;
  Collector c(n);
  for (size_t i = 0; i < n; ++i) {
    store->mutate({"sku-" + std::to_string(i % 3), "u" + std::to_string(i % 50)},
                  test::writeReview(static_cast<uint8_t>(1 + i % 5), "t", "b"), c.done(i));
  }
  c.wait();
  stop = true;
  for (auto& t : readers) t.join();
  CHECK(failures.load() == 0);
  CHECK(reads.load() > 0);
  CHECK(store->verify().ok());
}

TEST_CASE("a batch prepared while the previous one commits builds on its writes") {
  // Small batches and a deep queue: every batch is prepared on the preparer
  // thread while the one before it commits, and consecutive batches touch
  // the same documents. Large documents make each commit slow, so the
  // preparer reads before the commit it builds on is durable; a vote lost to
  // such a stale read would show in the count.
  TempDir dir;
  Options o = test::optionsFor(dir.path());
  o.maxBatch = 4;
  auto store = test::openStore(o);
  const std::vector<crdt::ReviewKey> keys = {{"sku-a", "u1"}, {"sku-a", "u2"}, {"sku-b", "u1"}};
  const std::string body(64 << 10, 'b');
  for (const auto& key : keys)
    REQUIRE(store->mutateSync(key, test::writeReview(3, "t", body)).ok());
  const size_t n = 600;
  std::map<crdt::ReviewKey, size_t> votes;
  Collector c(n);
  for (size_t i = 0; i < n; ++i) {
    const crdt::ReviewKey& key = keys[i % keys.size()];
    if (i % 97 == 0) {
      store->mutate(key, test::writeReview(static_cast<uint8_t>(1 + i % 5), "t", body), c.done(i));
    } else {
      ++votes[key];
      store->mutate(key, test::voteHelpful("v" + std::to_string(i)), c.done(i));
    }
  }
  c.wait();
  for (size_t i = 0; i < n; ++i) {
    REQUIRE(c[i].ok());
    CHECK(c[i]->changed);
  }
  uint64_t helpful = 0;
  for (const auto& key : keys) {
    auto d = mustGet(*store, key);
    CHECK(d.helpfulCount() == votes[key]);
    helpful += d.helpfulCount();
  }
  CHECK(store->summary("sku-a")->helpfulTotal + store->summary("sku-b")->helpfulTotal == helpful);
  CHECK(store->stats().commits > n / 4);
  auto v = store->verify();
  if (!v) FAIL(v.error().toString());
}

namespace {

mode_t modeOf(const std::string& path) {
  struct stat st {};
  REQUIRE_MESSAGE(::stat(path.c_str(), &st) == 0, path);
  return st.st_mode & 07777;
}

// Sets the umask for one scope.
struct Umask {
  explicit Umask(mode_t m) : old(::umask(m)) {}
  ~Umask() { ::umask(old); }
  mode_t old;
};

}  // namespace

TEST_CASE("the data dir is 0700 and the store's files 0600 under umask 022") {
  Umask scoped(022);
  TempDir dir;
  std::string data = dir.sub("parent/data");
  std::vector<std::string> notices;
  auto o = test::optionsFor(data);
  o.notice = [&](const std::string& s) { notices.push_back(s); };
  {
    auto store = test::openStore(o);
    CHECK(modeOf(data) == 0700);
    for (const char* f : {"data.mdb", "lock.mdb", "chorus.lock"}) {
      CAPTURE(f);
      CHECK(modeOf(data + "/" + f) == 0600);
    }
  }
  CHECK(notices.empty());  // nothing was loose

  // A store left open to others (an older version, a careless chmod) is
  // tightened at open, and the operator told.
  REQUIRE(::chmod(data.c_str(), 0755) == 0);
  REQUIRE(::chmod((data + "/data.mdb").c_str(), 0644) == 0);
  REQUIRE(::chmod((data + "/lock.mdb").c_str(), 0664) == 0);
  {
    auto store = test::openStore(o);
    CHECK(modeOf(data) == 0700);
    CHECK(modeOf(data + "/data.mdb") == 0600);
    CHECK(modeOf(data + "/lock.mdb") == 0600);
  }
  REQUIRE(notices.size() == 3);
  CHECK(notices[0].find(data) != std::string::npos);
  CHECK(notices[0].find("0755") != std::string::npos);
  CHECK(notices[0].find("0700") != std::string::npos);
  CHECK(notices[1].find("data.mdb") != std::string::npos);
  CHECK(notices[1].find("0644") != std::string::npos);

  // A shared sticky directory (like /tmp) is not taken over.
  std::string shared = dir.sub("shared");
  REQUIRE(::mkdir(shared.c_str(), 0700) == 0);
  REQUIRE(::chmod(shared.c_str(), 01777) == 0);
  auto refused = Store::open(test::optionsFor(shared));
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == ErrorCode::kInvalidArgument);
  CHECK(refused.error().message.find("sticky") != std::string::npos);
  CHECK(modeOf(shared) == 01777);
}

TEST_CASE("admitMerge sees the joined state and refuses just that merge") {
  TempDir dir;
  auto o = test::optionsFor(dir.path());
  size_t calls = 0;
  o.admitMerge = [&](const crdt::ReviewDoc& merged) -> Status {
    ++calls;
    if (merged.tags().size() > 2) return makeError(ErrorCode::kInvalidArgument, "tag: too many");
    return okStatus();
  };
  auto store = test::openStore(o);
  crdt::ReviewDoc source({"sku-1", "alice"});
  // Each delta holds one tag; only the joined state shows three.
  std::vector<crdt::ReviewDoc> deltas;
  for (const char* t : {"a", "b", "c"}) deltas.push_back(source.tag(t, 99));
  CHECK(store->mergeSync(deltas[0]).ok());
  CHECK(store->mergeSync(deltas[1]).ok());
  auto third = store->mergeSync(deltas[2]);
  REQUIRE_FALSE(third.ok());
  CHECK(third.error().message == "tag: too many");
  CHECK(mustGet(*store, {"sku-1", "alice"}).tags().size() == 2);
  CHECK(store->mergeSync(deltas[1]).ok());  // no change: not asked
  CHECK(calls == 3);
  // Local writes are the API's to check, not admitMerge's.
  auto local = store->mutateSync({"sku-1", "alice"}, [](crdt::ReviewDoc& d, crdt::HybridClock& c) {
    return Result<crdt::ReviewDoc>(d.tag("d", c.replica()));
  });
  CHECK(local.ok());
  CHECK(store->verify().ok());
}
