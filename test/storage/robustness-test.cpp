// Faults the store must survive or report clearly: a full map, a second
// opener, a damaged value, an unknown schema version, a foreign directory.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "storage/helpers.h"
#include "storage/key-schema.h"
#include "storage/store.h"
#include "support/results.h"

using namespace chorus;
using namespace chorus::storage;
using chorus::test::failure;
using chorus::test::TempDir;

namespace {

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace

TEST_CASE("a full map grows and no write is lost, with readers running") {
  TempDir dir;
  Options o = test::optionsFor(dir.path());
  o.initialMapBytes = 1 << 20;  // 1 MiB
  o.maxBatch = 200;
  auto store = test::openStore(o);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> readFailures{0};
  std::atomic<uint64_t> reads{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        auto g = store->get({"sku-3", "user-30"});
        auto l = store->listProduct("sku-3", Order::kNewest, "", 20);
        auto r = store->merkleChildren(1, 3);
        if (!g.ok() || !l.ok() || !r.ok()) readFailures.fetch_add(1);
        reads.fetch_add(1);
      }
    });
  }

  const size_t n = 4000;  // ~1.5 KiB each: about 6 MB of documents
  std::string body(1400, 'x');
  test::Collector c(n);
  for (size_t i = 0; i < n; ++i) {
    body[i % body.size()] = static_cast<char>('a' + i % 26);
    store->mutate({"sku-" + std::to_string(i % 10), "user-" + std::to_string(i)},
                  test::writeReview(static_cast<uint8_t>(1 + i % 5), "title", body), c.done(i));
  }
  c.wait();
  stop = true;
  for (auto& t : readers) t.join();

  for (size_t i = 0; i < n; ++i) {
    if (!c[i].ok()) FAIL(c[i].error().toString());
  }
  StoreStats s = store->stats();
  CHECK(s.mapGrowths >= 3);
  CHECK(s.mapBytes >= 8u << 20);
  CHECK(s.documents == n);
  CHECK(readFailures.load() == 0);
  CHECK(reads.load() > 0);
  CHECK(store->verify().ok());
  store.reset();

  // Reopening with the tiny setting keeps the grown map and all data.
  store = test::openStore(o);
  CHECK(store->stats().documents == n);
  CHECK(store->get({"sku-7", "user-3997"})->has_value());
  CHECK(store->verify().ok());
}

TEST_CASE("a second opener of a data dir is refused with kBusy") {
  TempDir dir;
  auto first = test::openStore(test::optionsFor(dir.path()));
  auto second = Store::open(test::optionsFor(dir.path()));
  REQUIRE_FALSE(second.ok());
  CHECK(second.error().code == ErrorCode::kBusy);
  CHECK(contains(second.error().message, dir.path()));
  CHECK(contains(second.error().message, "pid " + std::to_string(::getpid())));
  first.reset();
  auto third = Store::open(test::optionsFor(dir.path()));
  CHECK(third.ok());
}

TEST_CASE("a damaged stored value is reported as corruption naming its key") {
  TempDir dir;
  {
    auto store = test::openStore(test::optionsFor(dir.path()));
    REQUIRE(store->mutateSync({"sku-42", "mallory"}, test::writeReview(2, "title", "a body to damage")).ok());
    REQUIRE(store->mutateSync({"sku-42", "nina"}, test::writeReview(5, "fine", "untouched")).ok());
  }
  std::string docKey = schema::docKey({"sku-42", "mallory"});
  size_t flipAt = 0;
  SUBCASE("in the state bytes") { flipAt = schema::kDocRecordHeader + 40; }
  SUBCASE("in the checksum") { flipAt = 5; }
  test::withRawDb(dir.path(), "documents", [&](MDB_txn* txn, MDB_dbi dbi) {
    MDB_val key{docKey.size(), docKey.data()}, val;
    REQUIRE(mdb_get(txn, dbi, &key, &val) == 0);
    std::string damaged(static_cast<const char*>(val.mv_data), val.mv_size);
    REQUIRE(flipAt < damaged.size());
    damaged[flipAt] = static_cast<char>(damaged[flipAt] ^ 0x10);
    MDB_val put{damaged.size(), damaged.data()};
    REQUIRE(mdb_put(txn, dbi, &key, &put, 0) == 0);
    return true;
  });

  auto store = test::openStore(test::optionsFor(dir.path()));
  auto got = store->get({"sku-42", "mallory"});
  REQUIRE_FALSE(got.ok());
  CHECK(got.error().code == ErrorCode::kCorruption);
  CHECK(contains(got.error().message, "sku-42"));
  CHECK(contains(got.error().message, "mallory"));
  CHECK(contains(got.error().message, "checksum"));

  // Other reviews still read; writes to the damaged one fail, others commit.
  CHECK(store->get({"sku-42", "nina"})->has_value());
  test::Collector c(2);
  store->mutate({"sku-42", "mallory"}, test::voteHelpful("v"), c.done(0));
  store->mutate({"sku-42", "nina"}, test::voteHelpful("v"), c.done(1));
  c.wait();
  REQUIRE_FALSE(c[0].ok());
  CHECK(c[0].error().code == ErrorCode::kCorruption);
  CHECK(c[1].ok());
  CHECK(failure(store->listProduct("sku-42", Order::kNewest, "", 10)).code ==
        ErrorCode::kCorruption);
  auto v = store->verify();
  REQUIRE_FALSE(v.ok());
  CHECK(v.error().code == ErrorCode::kCorruption);
  CHECK(contains(v.error().message, "mallory"));
}

TEST_CASE("an unknown schema version is refused with what to do") {
  TempDir dir;
  { test::openStore(test::optionsFor(dir.path())); }
  test::withRawDb(dir.path(), "meta", [&](MDB_txn* txn, MDB_dbi dbi) {
    std::string k(schema::kMetaSchemaVersion);
    std::string v("\x63\x00\x00\x00", 4);  // 99
    MDB_val key{k.size(), k.data()}, val{v.size(), v.data()};
    REQUIRE(mdb_put(txn, dbi, &key, &val, 0) == 0);
    return true;
  });
  auto store = Store::open(test::optionsFor(dir.path()));
  REQUIRE_FALSE(store.ok());
  CHECK(store.error().code == ErrorCode::kInvalidArgument);
  CHECK(contains(store.error().message, "version 99"));
  CHECK(contains(store.error().message, "newer than this build knows"));
  CHECK(contains(store.error().message,
                 "reads versions 1 to " + std::to_string(kSchemaVersion)));
  CHECK(contains(store.error().message, "move the directory aside"));
}

TEST_CASE("schema version 0 (never written) is refused, not migrated") {
  TempDir dir;
  { test::openStore(test::optionsFor(dir.path())); }
  test::withRawDb(dir.path(), "meta", [&](MDB_txn* txn, MDB_dbi dbi) {
    std::string k(schema::kMetaSchemaVersion);
    std::string v("\x00\x00\x00\x00", 4);
    MDB_val key{k.size(), k.data()}, val{v.size(), v.data()};
    REQUIRE(mdb_put(txn, dbi, &key, &val, 0) == 0);
    return true;
  });
  auto store = Store::open(test::optionsFor(dir.path()));
  REQUIRE_FALSE(store.ok());
  CHECK(store.error().code == ErrorCode::kInvalidArgument);
  CHECK(contains(store.error().message, "version 0, which never existed"));
  CHECK(contains(store.error().message, "resync from its peers"));
}

TEST_CASE("a directory holding some other LMDB database is refused") {
  TempDir dir;
  {
    MDB_env* env = nullptr;
    REQUIRE(mdb_env_create(&env) == 0);
    REQUIRE(mdb_env_open(env, dir.path().c_str(), 0, 0644) == 0);
    MDB_txn* txn = nullptr;
    REQUIRE(mdb_txn_begin(env, nullptr, 0, &txn) == 0);
    MDB_dbi dbi;
    REQUIRE(mdb_dbi_open(txn, nullptr, 0, &dbi) == 0);
    std::string k = "someone-else", v = "data";
    MDB_val key{k.size(), k.data()}, val{v.size(), v.data()};
    REQUIRE(mdb_put(txn, dbi, &key, &val, 0) == 0);
    REQUIRE(mdb_txn_commit(txn) == 0);
    mdb_env_close(env);
  }
  auto store = Store::open(test::optionsFor(dir.path()));
  REQUIRE_FALSE(store.ok());
  CHECK(store.error().code == ErrorCode::kInvalidArgument);
  CHECK(contains(store.error().message, "not a Chorus store"));
}

TEST_CASE("a data dir that cannot be created is an I/O error") {
  TempDir dir;
  std::string file = dir.sub("file");
  FILE* f = std::fopen(file.c_str(), "w");
  REQUIRE(f != nullptr);
  std::fclose(f);
  auto store = Store::open(test::optionsFor(file + "/store"));
  REQUIRE_FALSE(store.ok());
  CHECK(store.error().code == ErrorCode::kIo);
  CHECK(contains(store.error().message, file));
}
