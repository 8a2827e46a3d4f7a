// The change feed (`changes`): compaction, merges numbered like local
// writes, resuming from a stored cursor (also across a restart and while a
// writer commits), the 4->5 migration of a data dir main wrote, and
// verify() catching a damaged feed index.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "storage/helpers.h"
#include "storage/key-schema.h"
#include "storage/store.h"
#include "support/seed.h"

using namespace chorus;
using namespace chorus::storage;
using chorus::test::TempDir;

namespace {

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

Options quick(const std::string& dir) {
  Options o = test::optionsFor(dir);
  o.unsafeNoSync = true;
  return o;
}

ChangesPage read(Store& store, uint64_t since, size_t limit, bool docs = false) {
  auto page = store.changes(since, limit, docs);
  if (!page) FAIL(page.error().toString());
  return std::move(page).value();
}

// Every change after `since`, page by page; returns the final cursor.
uint64_t drain(Store& store, uint64_t since, size_t limit, std::vector<FeedEntry>& out) {
  for (int pages = 0; pages < 100'000; ++pages) {
    ChangesPage page = read(store, since, limit);
    REQUIRE(page.lastSeq >= since);
    for (auto& e : page.changes) {
      REQUIRE(e.seq > since);
      REQUIRE(e.seq <= page.lastSeq);
      out.push_back(std::move(e));
    }
    if (page.lastSeq == since) return since;
    since = page.lastSeq;
  }
  FAIL("the feed did not end");
  return since;
}

std::string keyName(const crdt::ReviewKey& k) { return k.product + "/" + k.author; }

// Removes a tag the review does not have: changes nothing.
Mutation untagAbsent() {
  return [](crdt::ReviewDoc& doc, crdt::HybridClock&) -> Result<crdt::ReviewDoc> {
    return doc.untag("never-tagged");
  };
}

}  // namespace

TEST_CASE("the feed is compacted: a review appears once, at its latest change") {
  TempDir dir;
  auto store = test::openStore(quick(dir.path()));
  CHECK(store->lastSeq() == 0);
  CHECK(read(*store, 0, 10).changes.empty());

  REQUIRE(store->mutateSync({"p1", "ann"}, test::writeReview(3, "a", "first")).ok());   // 1
  REQUIRE(store->mutateSync({"p1", "bob"}, test::writeReview(4, "b", "only")).ok());    // 2
  REQUIRE(store->mutateSync({"p1", "ann"}, test::writeReview(4, "a", "second")).ok());  // 3
  REQUIRE(store->mutateSync({"p2", "cat"}, test::writeReview(5, "c", "gone")).ok());    // 4
  REQUIRE(store->mutateSync({"p1", "ann"}, test::writeReview(5, "a", "third")).ok());   // 5
  REQUIRE(store->mutateSync({"p2", "cat"}, test::eraseReview()).ok());                  // 6
  CHECK(store->lastSeq() == 6);

  ChangesPage page = read(*store, 0, 100, true);
  CHECK(page.replica == store->replicaId());
  CHECK(page.lastSeq == 6);
  REQUIRE(page.changes.size() == 3);
  CHECK(keyName(page.changes[0].key) == "p1/bob");
  CHECK(page.changes[0].seq == 2);
  CHECK(keyName(page.changes[1].key) == "p1/ann");
  CHECK(page.changes[1].seq == 5);
  REQUIRE(page.changes[1].doc.has_value());
  CHECK(page.changes[1].doc->content().value().body == "third");
  CHECK_FALSE(page.changes[1].deleted);
  CHECK(keyName(page.changes[2].key) == "p2/cat");
  CHECK(page.changes[2].seq == 6);
  CHECK(page.changes[2].deleted);
  REQUIRE(page.changes[2].doc.has_value());  // the tombstone
  CHECK_FALSE(page.changes[2].doc->exists());
  CHECK_FALSE(read(*store, 0, 100).changes[0].doc.has_value());  // no docs unless asked

  SUBCASE("a write that changes nothing takes no seq") {
    REQUIRE(store->mutateSync({"p1", "bob"}, test::voteHelpful("zed")).ok());  // 7
    auto again = store->mutateSync({"p1", "bob"}, untagAbsent());
    REQUIRE(again.ok());
    CHECK_FALSE(again->changed);
    CHECK(store->lastSeq() == 7);
    CHECK(read(*store, 6, 10).changes.size() == 1);
  }
  SUBCASE("pages: the cursor is the last seq returned while more follow") {
    ChangesPage first = read(*store, 0, 2);
    REQUIRE(first.changes.size() == 2);
    CHECK(first.lastSeq == 5);
    ChangesPage second = read(*store, first.lastSeq, 2);
    REQUIRE(second.changes.size() == 1);
    CHECK(second.changes[0].seq == 6);
    CHECK(second.lastSeq == 6);
    // A full page with nothing after it ends at the last seq too.
    CHECK(read(*store, 5, 1).lastSeq == 6);
    CHECK(read(*store, 4, 1).lastSeq == 5);
    CHECK(read(*store, 6, 5).changes.empty());
    CHECK(read(*store, 6, 5).lastSeq == 6);
  }
  SUBCASE("since=now and a cursor from the future") {
    ChangesPage now = read(*store, kSinceNow, 10);
    CHECK(now.changes.empty());
    CHECK(now.lastSeq == 6);
    auto future = store->changes(7, 10, false);
    REQUIRE_FALSE(future.ok());
    CHECK(future.error().code == ErrorCode::kInvalidArgument);
    CHECK(contains(future.error().message, "since: 7 is beyond this node's last seq 6"));
  }
  CHECK(store->verify().ok());
}

TEST_CASE("merges from a peer are numbered like local writes; a known state takes no seq") {
  TempDir a, b;
  auto origin = test::openStore(quick(a.path()));
  auto replica = test::openStore(quick(b.path()));
  REQUIRE(replica->mutateSync({"p", "own"}, test::writeReview(2, "x", "local")).ok());  // 1
  auto written = origin->mutateSync({"p", "far"}, test::writeReview(4, "y", "remote"));
  REQUIRE(written.ok());

  auto merged = replica->mergeSync(written->state);  // 2
  REQUIRE(merged.ok());
  CHECK(merged->changed);
  CHECK(replica->lastSeq() == 2);
  auto again = replica->mergeSync(written->state);
  REQUIRE(again.ok());
  CHECK_FALSE(again->changed);
  CHECK(replica->lastSeq() == 2);

  auto voted = origin->mutateSync({"p", "far"}, test::voteHelpful("v1"));
  REQUIRE(voted.ok());
  REQUIRE(replica->mergeSync(voted->delta).ok());  // 3: a delta too
  ChangesPage page = read(*replica, 0, 10, true);
  REQUIRE(page.changes.size() == 2);
  CHECK(keyName(page.changes[0].key) == "p/own");
  CHECK(page.changes[0].seq == 1);
  CHECK(keyName(page.changes[1].key) == "p/far");
  CHECK(page.changes[1].seq == 3);
  CHECK(page.changes[1].doc->helpfulCount() == 1);
  // Seqs are the replica's own: the origin numbered its two changes 1, 2.
  CHECK(origin->lastSeq() == 2);
  CHECK(page.replica == replica->replicaId());
  CHECK(replica->verify().ok());
}

TEST_CASE("onFeedAdvanced reports each commit that stored changes, after it is readable") {
  TempDir dir;
  Options o = quick(dir.path());
  std::mutex mu;
  std::vector<uint64_t> reported;
  std::vector<size_t> visible;  // changes readable from 0 when reported
  Store* self = nullptr;
  o.onFeedAdvanced = [&](uint64_t last) {
    std::lock_guard lock(mu);
    reported.push_back(last);
    visible.push_back(self->changes(0, 100, false)->changes.size());
  };
  auto store = test::openStore(o);
  self = store.get();
  REQUIRE(store->mutateSync({"p", "a"}, test::writeReview(1, "", "")).ok());
  REQUIRE(store->mutateSync({"p", "a"}, test::voteHelpful("x")).ok());
  REQUIRE(store->mutateSync({"p", "a"}, untagAbsent()).ok());  // no change: not told
  REQUIRE(store->mutateSync({"p", "b"}, test::writeReview(1, "", "")).ok());
  std::lock_guard lock(mu);
  CHECK(reported == std::vector<uint64_t>{1, 2, 3});
  CHECK(visible == std::vector<size_t>{1, 1, 2});
}

TEST_CASE("a consumer resuming from its last cursor misses nothing, across a restart too") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  TempDir dir;
  std::map<std::string, uint64_t> seen;  // key -> the latest seq the consumer saw
  uint64_t cursor = 0;
  auto consume = [&](Store& store, size_t limit) {
    std::vector<FeedEntry> got;
    cursor = drain(store, cursor, limit, got);
    for (const auto& e : got) {
      uint64_t& s = seen[keyName(e.key)];
      REQUIRE(e.seq > s);  // a key never goes back
      s = e.seq;
    }
  };
  // The consumer saw every change iff, for each stored review, it saw the
  // seq of its latest change.
  auto checkComplete = [&](Store& store) {
    std::vector<FeedEntry> all;
    drain(store, 0, 1000, all);
    REQUIRE(all.size() == seen.size());
    for (const auto& e : all) CHECK(seen[keyName(e.key)] == e.seq);
  };
  auto writeSome = [&](Store& store, int n) {
    test::Collector results(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      crdt::ReviewKey key{"p" + std::to_string(rng() % 5), "u" + std::to_string(rng() % 60)};
      if (rng() % 6 == 0) {
        store.mutate(key, test::eraseReview(), results.done(static_cast<size_t>(i)));
      } else {
        store.mutate(key, test::writeReview(static_cast<uint8_t>(1 + rng() % 5), "t", "b"),
                     results.done(static_cast<size_t>(i)));
      }
    }
    results.wait();
  };
  {
    auto store = test::openStore(quick(dir.path()));
    writeSome(*store, 200);
    consume(*store, 7);
    writeSome(*store, 100);
    consume(*store, 1 + rng() % 50);
    writeSome(*store, 100);  // after the last checkpoint, before the restart
  }
  auto store = test::openStore(quick(dir.path()));
  uint64_t before = store->lastSeq();
  CHECK(before > cursor);
  consume(*store, 13);
  CHECK(cursor == before);
  writeSome(*store, 50);
  CHECK(store->lastSeq() > before);  // seqs go on from where they were
  consume(*store, 1000);
  checkComplete(*store);

  SUBCASE("while a writer commits, every page is a consistent snapshot") {
    std::atomic<bool> done{false};
    std::thread writer([&] {
      std::mt19937_64 wrng(seed + 1);
      for (int batch = 0; batch < 40; ++batch) {
        test::Collector results(25);
        for (size_t i = 0; i < 25; ++i) {
          crdt::ReviewKey key{"p" + std::to_string(wrng() % 5), "w" + std::to_string(wrng() % 80)};
          store->mutate(key, test::writeReview(static_cast<uint8_t>(1 + wrng() % 5), "t", "b"),
                        results.done(i));
        }
        results.wait();
      }
      done = true;
    });
    for (int rounds = 0; rounds < 100'000 && !done.load(); ++rounds)
      consume(*store, 1 + rng() % 20);
    writer.join();
    consume(*store, 100);
    checkComplete(*store);
  }
  CHECK(store->verify().ok());
}

TEST_CASE("a schema 4 data dir written by main is migrated to 5: every review numbered once") {
  const char* fixtures = std::getenv("CHORUS_STORAGE_FIXTURES");
  REQUIRE_MESSAGE(fixtures != nullptr, "CHORUS_STORAGE_FIXTURES is not set (test/meson.build)");
  // test/storage/fixtures/schema-4: written by main at 93155d6, with what
  // that build read from it (expected.txt: key count, Merkle root, summaries).
  std::string fixture = std::string(fixtures) + "/schema-4";
  uint64_t keys = 0;
  std::string root, summary0;
  {
    std::ifstream in(fixture + "/expected.txt");
    REQUIRE(in.good());
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("keys=", 0) == 0) keys = std::stoull(line.substr(5));
      if (line.rfind("merkle-root=", 0) == 0) root = line.substr(12);
      if (line.rfind("summary sku-0 ", 0) == 0) summary0 = line;
    }
  }
  REQUIRE(keys > 100);
  REQUIRE_FALSE(summary0.empty());
  uint64_t count0 = std::stoull(summary0.substr(std::string("summary sku-0 ").size()));
  TempDir dir;
  std::string data = dir.sub("node");
  std::filesystem::create_directories(data);
  std::filesystem::copy_file(fixture + "/data.mdb", data + "/data.mdb");
  std::filesystem::permissions(data + "/data.mdb", std::filesystem::perms(0600));
  std::vector<std::string> notices;
  Options o = quick(data);
  o.notice = [&](const std::string& n) {
    if (contains(n, "migrated")) notices.push_back(n);  // not "mode tightened"
  };
  {
    auto store = test::openStore(o);
    REQUIRE(notices.size() == 1);
    CHECK(contains(notices[0], "migrated from storage schema version 4 to 5"));
    CHECK(contains(notices[0], "change feed numbered"));
    CHECK(store->verify().ok());
    // The documents' bytes are unchanged, so is the root.
    CHECK(schema::toHex(std::string_view(reinterpret_cast<const char*>(store->merkleRoot()->data()),
                                         16)) == root);
    CHECK(store->lastSeq() == keys);
    ChangesPage page = read(*store, 0, 1000, true);
    REQUIRE(page.changes.size() == keys);
    std::set<std::string> names;
    size_t deleted = 0;
    for (size_t i = 0; i < page.changes.size(); ++i) {
      CHECK(page.changes[i].seq == i + 1);
      names.insert(keyName(page.changes[i].key));
      if (page.changes[i].deleted) ++deleted;
      CHECK(page.changes[i].deleted == !page.changes[i].doc->exists());
    }
    CHECK(names.size() == keys);
    CHECK(deleted > 0);
    CHECK(store->summary("sku-0")->count == count0);

    auto w = store->mutateSync({"sku-0", "u0"}, test::writeReview(2, "t", "after"));
    REQUIRE(w.ok());
    CHECK(store->lastSeq() == keys + 1);
    ChangesPage after = read(*store, keys, 10);
    REQUIRE(after.changes.size() == 1);
    CHECK(keyName(after.changes[0].key) == "sku-0/u0");
    CHECK(read(*store, 0, 1000).changes.size() == keys);  // still one entry per review
    CHECK(store->verify().ok());
  }
  notices.clear();
  auto store = test::openStore(o);
  CHECK(notices.empty());  // migrated once
  CHECK(store->lastSeq() == keys + 1);
}

TEST_CASE("verify() catches a damaged feed index") {
  TempDir dir;
  {
    auto store = test::openStore(quick(dir.path()));
    REQUIRE(store->mutateSync({"p", "a"}, test::writeReview(3, "", "")).ok());  // 1
    REQUIRE(store->mutateSync({"p", "b"}, test::writeReview(3, "", "")).ok());  // 2
    REQUIRE(store->mutateSync({"p", "c"}, test::writeReview(3, "", "")).ok());  // 3
    REQUIRE(store->mutateSync({"p", "c"}, test::eraseReview()).ok());           // 4
    REQUIRE(store->verify().ok());
  }
  auto change = [&](const std::function<void(MDB_txn*, MDB_dbi)>& edit) {
    test::withRawDb(dir.path(), "changes", [&](MDB_txn* txn, MDB_dbi dbi) {
      edit(txn, dbi);
      return true;
    });
  };
  auto put = [](MDB_txn* txn, MDB_dbi dbi, uint64_t seq, bool live, const crdt::ReviewKey& k) {
    std::string key = schema::changeKey(seq), value = schema::changeValue(live, schema::docKey(k));
    MDB_val mk{key.size(), key.data()}, mv{value.size(), value.data()};
    REQUIRE(mdb_put(txn, dbi, &mk, &mv, 0) == 0);
  };
  auto del = [](MDB_txn* txn, MDB_dbi dbi, uint64_t seq) {
    std::string key = schema::changeKey(seq);
    MDB_val mk{key.size(), key.data()};
    REQUIRE(mdb_del(txn, dbi, &mk, nullptr) == 0);
  };
  std::string expected;
  SUBCASE("an entry missing") {
    change([&](MDB_txn* txn, MDB_dbi dbi) { del(txn, dbi, 2); });
    expected = "the change feed entry of (product 'p', author 'b') at seq 2 is missing";
  }
  SUBCASE("a stale extra entry") {
    change([&](MDB_txn* txn, MDB_dbi dbi) { put(txn, dbi, 3, true, {"p", "c"}); });
    expected = "the change feed holds 4 entries for 3 documents";
  }
  SUBCASE("an entry naming another review") {
    change([&](MDB_txn* txn, MDB_dbi dbi) { put(txn, dbi, 1, true, {"p", "b"}); });
    expected = "(product 'p', author 'a') at seq 1 is missing or names another review";
  }
  SUBCASE("an entry with the wrong liveness") {
    change([&](MDB_txn* txn, MDB_dbi dbi) { put(txn, dbi, 4, true, {"p", "c"}); });
    expected = "author 'c') at seq 4";
  }
  SUBCASE("the last seq below a stored one") {
    test::withRawDb(dir.path(), "meta", [&](MDB_txn* txn, MDB_dbi dbi) {
      std::string k(schema::kMetaLastSeq), v;
      schema::putLe64(v, 3);
      MDB_val mk{k.size(), k.data()}, mv{v.size(), v.data()};
      REQUIRE(mdb_put(txn, dbi, &mk, &mv, 0) == 0);
      return true;
    });
    expected = "the persisted last seq of the change feed is missing or below a stored seq";
  }
  auto store = test::openStore(quick(dir.path()));
  Status verified = store->verify();
  REQUIRE_FALSE(verified.ok());
  CHECK(verified.error().code == ErrorCode::kCorruption);
  CAPTURE(verified.error().message);
  CHECK(contains(verified.error().message, expected));
}
