// In-place schema upgrades: a data dir written by the build that shipped
// each older schema (test/storage/fixtures/schema-N, made by
// make-fixtures.sh) opens, migrates in place, passes verify(), and reads
// as the old build read it: the same documents (byte for byte: their
// digests), summaries, listings in every order and author listings, and
// the same Merkle root (schema 1's key hash differed, so its root is
// recomputed from the old build's document digests).
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "storage/helpers.h"
#include "storage/key-schema.h"
#include "storage/merkle.h"
#include "storage/store.h"

using namespace chorus;
using namespace chorus::storage;
using chorus::test::TempDir;

namespace {

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

std::string fixtureDir(int schema) {
  const char* root = std::getenv("CHORUS_STORAGE_FIXTURES");
  REQUIRE_MESSAGE(root != nullptr, "CHORUS_STORAGE_FIXTURES is not set (meson test sets it)");
  return std::string(root) + "/schema-" + std::to_string(schema);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, sep);) out.push_back(part);
  return out;
}

// expected.txt, as the old build wrote it (make-fixture.cpp).
struct Expected {
  uint32_t schema = 0;
  uint64_t keys = 0;
  std::string root;
  struct Summary {
    uint64_t count, ratingSum, helpful;
    std::vector<std::string> histogram;
  };
  std::map<std::string, Summary> summaries;
  std::map<std::pair<std::string, std::string>, std::vector<std::string>> lists;
  std::map<std::string, std::vector<std::string>> authors;
  std::map<crdt::ReviewKey, std::string> digests;
};

Expected readExpected(const std::string& path) {
  std::ifstream in(path);
  CAPTURE(path);
  REQUIRE(in.good());
  Expected e;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("schema-version=", 0) == 0) e.schema = std::stoul(line.substr(15));
    if (line.rfind("keys=", 0) == 0) e.keys = std::stoull(line.substr(5));
    if (line.rfind("merkle-root=", 0) == 0) e.root = line.substr(12);
    auto f = split(line, ' ');
    if (f.empty()) continue;
    if (f[0] == "summary" && f.size() == 6) {
      e.summaries[f[1]] = {std::stoull(f[2]), std::stoull(f[4]), std::stoull(f[5]),
                           split(f[3], ',')};
    } else if (f[0] == "list" && f.size() >= 3) {
      e.lists[{f[1], f[2]}] = f.size() > 3 ? split(f[3], ',') : std::vector<std::string>{};
    } else if (f[0] == "author" && f.size() >= 2) {
      e.authors[f[1]] = f.size() > 2 ? split(f[2], ',') : std::vector<std::string>{};
    } else if (f[0] == "doc" && f.size() == 4) {
      e.digests[{f[1], f[2]}] = f[3];
    }
  }
  REQUIRE(e.schema != 0);
  REQUIRE(e.keys == e.digests.size());
  return e;
}

std::string hex(const Hash& h) {
  return schema::toHex(std::string_view(reinterpret_cast<const char*>(h.data()), h.size()));
}

// The fixture's data.mdb copied into a fresh data dir.
void copyFixture(int schema, const std::string& dir) {
  std::filesystem::create_directories(dir);
  ::chmod(dir.c_str(), 0700);
  std::filesystem::copy_file(fixtureDir(schema) + "/data.mdb", dir + "/data.mdb");
  std::filesystem::permissions(
      dir + "/data.mdb", std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
}

std::vector<std::string> authorsOf(const std::vector<crdt::ReviewDoc>& docs) {
  std::vector<std::string> out;
  for (const auto& d : docs) out.push_back(d.key().author);
  return out;
}

// Every page of a product listing, 7 reviews a page (cursors included).
std::vector<crdt::ReviewDoc> listAll(Store& store, const std::string& product, Order order) {
  std::vector<crdt::ReviewDoc> all;
  std::string cursor;
  for (int i = 0; i < 1000; ++i) {
    auto page = store.listProduct(product, order, cursor, 7);
    REQUIRE(page.ok());
    all.insert(all.end(), page->reviews.begin(), page->reviews.end());
    if (page->nextCursor.empty()) return all;
    cursor = page->nextCursor;
  }
  FAIL("listing did not end");
  return all;
}

uint32_t storedVersion(const std::string& dir) {
  uint32_t version = 0;
  test::withRawDb(dir, "meta", [&](MDB_txn* txn, MDB_dbi dbi) {
    std::string k(schema::kMetaSchemaVersion);
    MDB_val key{k.size(), k.data()}, val;
    REQUIRE(mdb_get(txn, dbi, &key, &val) == 0);
    REQUIRE(val.mv_size == 4);
    const auto* b = static_cast<const uint8_t*>(val.mv_data);
    version = b[0] | (uint32_t(b[1]) << 8) | (uint32_t(b[2]) << 16) | (uint32_t(b[3]) << 24);
    return false;
  });
  return version;
}

}  // namespace

TEST_CASE("a data dir of every older schema migrates in place and reads as before") {
  for (int schemaVersion = 1; schemaVersion < static_cast<int>(kSchemaVersion); ++schemaVersion) {
    CAPTURE(schemaVersion);
    Expected want = readExpected(fixtureDir(schemaVersion) + "/expected.txt");
    REQUIRE(want.schema == static_cast<uint32_t>(schemaVersion));
    TempDir dir;
    copyFixture(schemaVersion, dir.path());
    REQUIRE(storedVersion(dir.path()) == static_cast<uint32_t>(schemaVersion));

    std::vector<std::string> notices;
    Options o = test::optionsFor(dir.path());
    o.notice = [&](const std::string& s) { notices.push_back(s); };
    auto store = test::openStore(o);
    bool told = false;
    for (const auto& n : notices) {
      told = told ||
             contains(n, "migrated from storage schema version " + std::to_string(schemaVersion) +
                             " to " + std::to_string(kSchemaVersion));
    }
    CHECK(told);
    auto verified = store->verify();
    CHECK_MESSAGE(verified.ok(), verified.error().toString());
    CHECK(store->stats().documents == want.keys);

    // Every document's canonical bytes are the old build's.
    Hash rootFromDigests{};
    for (const auto& [key, digest] : want.digests) {
      CAPTURE(key.product);
      CAPTURE(key.author);
      auto bytes = store->getEncoded(key);
      REQUIRE(bytes.ok());
      REQUIRE(bytes->has_value());
      CHECK(hex(digestOf(**bytes)) == digest);
      auto raw = schema::fromHex(digest);
      REQUIRE(raw.has_value());
      Hash d;
      std::copy(raw->begin(), raw->end(), reinterpret_cast<char*>(d.data()));
      rootFromDigests = hashAdd(rootFromDigests, entryHash(keyHash(key), d));
    }
    auto root = store->merkleRoot();
    REQUIRE(root.ok());
    CHECK(*root == rootFromDigests);
    if (schemaVersion >= 2) {
      CHECK(hex(*root) == want.root);  // the same tree the old build kept
    } else {
      CHECK(hex(*root) != want.root);  // schema 1 placed keys by another hash
    }

    for (const auto& [product, s] : want.summaries) {
      CAPTURE(product);
      auto got = store->summary(product);
      REQUIRE(got.ok());
      CHECK(got->count == s.count);
      CHECK(got->ratingSum == s.ratingSum);
      CHECK(got->helpfulTotal == s.helpful);
      REQUIRE(s.histogram.size() == 5);
      for (size_t i = 0; i < 5; ++i) CHECK(got->histogram[i] == std::stoull(s.histogram[i]));
    }
    REQUIRE(want.lists.size() == 3 * want.summaries.size());
    for (const auto& [which, authors] : want.lists) {
      CAPTURE(which.first);
      CAPTURE(which.second);
      Order order = which.second == "newest"   ? Order::kNewest
                    : which.second == "lowest" ? Order::kLowestRating
                                               : Order::kHighestRating;
      CHECK(authorsOf(listAll(*store, which.first, order)) == authors);
    }
    REQUIRE(!want.authors.empty());
    for (const auto& [author, products] : want.authors) {
      CAPTURE(author);
      auto page = store->listAuthor(author, "", 100);
      REQUIRE(page.ok());
      std::vector<std::string> got;
      for (const auto& d : page->reviews) got.push_back(d.key().product);
      CHECK(got == products);
    }

    // It takes writes, and opens again without migrating.
    REQUIRE(store->mutateSync({"sku-0", "after"}, test::writeReview(3, "t", "b")).ok());
    store.reset();
    CHECK(storedVersion(dir.path()) == kSchemaVersion);
    notices.clear();
    store = test::openStore(o);
    for (const auto& n : notices) CHECK_FALSE(contains(n, "migrated"));
    CHECK(store->verify().ok());
  }
}

TEST_CASE("a migration that fails leaves the older schema untouched") {
  // A schema 1 review whose bytes no longer match its checksum: the 1 -> 2
  // step refuses it, and the transaction holding every step is aborted.
  TempDir dir;
  copyFixture(1, dir.path());
  test::withRawDb(dir.path(), "documents", [&](MDB_txn* txn, MDB_dbi dbi) {
    MDB_cursor* c = nullptr;
    REQUIRE(mdb_cursor_open(txn, dbi, &c) == 0);
    MDB_val k, v;
    REQUIRE(mdb_cursor_get(c, &k, &v, MDB_FIRST) == 0);
    std::string changed(static_cast<const char*>(v.mv_data), v.mv_size);
    changed.back() = static_cast<char>(changed.back() ^ 0x01);
    MDB_val nv{changed.size(), changed.data()};
    REQUIRE(mdb_cursor_put(c, &k, &nv, MDB_CURRENT) == 0);
    mdb_cursor_close(c);
    return true;
  });
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto store = Store::open(test::optionsFor(dir.path()));
    REQUIRE_FALSE(store.ok());
    CHECK(store.error().code == ErrorCode::kCorruption);
    CHECK(contains(store.error().message, "migrating storage schema 1 to 2"));
    CHECK(contains(store.error().message, "checksum"));
    CHECK(storedVersion(dir.path()) == 1);
    bool byAuthor = false;
    test::withRawDb(dir.path(), "by-author", [&](MDB_txn*, MDB_dbi) {
      byAuthor = true;
      return false;
    });
    CHECK(byAuthor);
  }
}
