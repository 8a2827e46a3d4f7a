// Hot backup and restore (storage/backup.h): a backup taken while a writer
// commits is one consistent snapshot, a damaged backup is refused by
// verifyBackup and by restoreBackup, and a restore mints a new replica id
// unless told it replaces the original node.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include "storage/backup.h"
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

// A few hundred reviews over a few products, with deletes, votes and tags.
void fill(Store& store, std::mt19937_64& rng, int n) {
  for (int i = 0; i < n; ++i) {
    crdt::ReviewKey key{"sku-" + std::to_string(rng() % 5), "u" + std::to_string(rng() % 80)};
    switch (rng() % 6) {
      case 0:
        (void)store.mutateSync(key, test::eraseReview());  // may be not found
        break;
      case 1:
        (void)store.mutateSync(key, test::voteHelpful("v" + std::to_string(rng() % 9)));
        break;
      case 2:
        (void)store.mutateSync(key, test::tagReview("t" + std::to_string(rng() % 4)));
        break;
      default:
        REQUIRE(store
                    .mutateSync(key, test::writeReview(static_cast<uint8_t>(1 + rng() % 5), "t",
                                                       "body " + std::to_string(i)))
                    .ok());
    }
  }
}

// No fsync per commit: these tests write hundreds of reviews one by one.
Options fast(const std::string& dir) {
  Options o = test::optionsFor(dir);
  o.unsafeNoSync = true;
  return o;
}

void flipByte(const std::string& path, off_t at) {
  int fd = ::open(path.c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  char c = 0;
  REQUIRE(::pread(fd, &c, 1, at) == 1);
  c = static_cast<char>(c ^ 0x01);
  REQUIRE(::pwrite(fd, &c, 1, at) == 1);
  ::close(fd);
}

off_t fileSize(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_size;
}

}  // namespace

TEST_CASE("a backup taken while a writer commits restores to a consistent store") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  TempDir dir;
  Options o = test::optionsFor(dir.sub("node"));
  o.unsafeNoSync = true;
  auto store = test::openStore(o);
  fill(*store, rng, 300);

  // A writer commits small batches throughout the backup, so the copy's
  // snapshot sits between commits of a changing store.
  std::atomic<bool> stop{false};
  std::atomic<int> written{0};
  std::thread writer([&] {
    for (int i = 0; i < 100'000 && !stop.load(); ++i) {
      crdt::ReviewKey key{"hot-" + std::to_string(i % 7), "w" + std::to_string(i)};
      REQUIRE(store->mutateSync(key, test::writeReview(4, "w", "during the backup")).ok());
      written.fetch_add(1);
    }
  });
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (written.load() < 20 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  BackupOptions bo;
  bo.nodeId = "n1";
  auto m = store->backup(dir.sub("backup"), bo);
  int atBackupEnd = written.load();
  stop = true;
  writer.join();
  REQUIRE_MESSAGE(m.ok(), m.error().toString());
  CHECK(written.load() > 20);
  CHECK(atBackupEnd >= 20);

  CHECK(m->nodeId == "n1");
  CHECK(m->replicaId == store->replicaId());
  CHECK(m->schemaVersion == kSchemaVersion);
  CHECK(m->keys >= 300 / 2);
  CHECK(m->fileBytes == static_cast<uint64_t>(fileSize(dir.sub("backup/data.mdb"))));
  auto read = readBackupManifest(dir.sub("backup"));
  REQUIRE(read.ok());
  CHECK(read->merkleRoot == m->merkleRoot);
  CHECK(read->checksum == m->checksum);
  // Only the two files; no lock file was left in the backup.
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.sub("backup"))) {
    CAPTURE(e.path().string());
    CHECK((e.path().filename() == "data.mdb" || e.path().filename() == "backup.manifest"));
    ++files;
  }
  CHECK(files == 2);

  auto verified = verifyBackup(dir.sub("backup"));
  REQUIRE_MESSAGE(verified.ok(), verified.error().toString());

  // The writer went on: the live store moved past the snapshot.
  auto liveRoot = store->merkleRoot();
  REQUIRE(liveRoot.ok());
  CHECK(*liveRoot != m->merkleRoot);
  CHECK(store->stats().documents > m->keys);
  CHECK(store->verify().ok());

  std::vector<std::string> notices;
  RestoreOptions ro;
  ro.notice = [&](const std::string& s) { notices.push_back(s); };
  auto restored = restoreBackup(dir.sub("backup"), dir.sub("restored"), ro);
  REQUIRE_MESSAGE(restored.ok(), restored.error().toString());
  CHECK(restored->replicaId != m->replicaId);
  CHECK(!std::filesystem::exists(dir.sub("restored/restore-staging")));
  REQUIRE(!notices.empty());
  CHECK(contains(notices[0], "new replica id"));

  auto copy = test::openStore(test::optionsFor(dir.sub("restored")));
  CHECK(copy->replicaId() == restored->replicaId);
  CHECK(copy->verify().ok());
  auto root = copy->merkleRoot();
  REQUIRE(root.ok());
  CHECK(*root == m->merkleRoot);
  CHECK(copy->stats().documents == m->keys);
  // A review written before the backup reads the same in the copy.
  auto page = copy->listProduct("sku-0", Order::kNewest, "", 100);
  auto original = store->listProduct("sku-0", Order::kNewest, "", 100);
  REQUIRE(page.ok());
  REQUIRE(original.ok());
  REQUIRE(page->reviews.size() == original->reviews.size());
  for (size_t i = 0; i < page->reviews.size(); ++i) {
    CHECK(page->reviews[i].encode() == original->reviews[i].encode());
  }
  // The HLC high-water mark came along: the copy stamps above every stamp
  // it holds, even with a clock far behind.
  copy.reset();
  Options slow = test::optionsFor(dir.sub("restored"));
  slow.clock = [] { return uint64_t{1}; };
  auto behind = test::openStore(slow);
  auto w = behind->mutateSync({"sku-0", "late"}, test::writeReview(2, "late", "after restore"));
  REQUIRE(w.ok());
  CHECK(w->state.content().stamp().hlc.bits > m->hlcHighWater);
}

TEST_CASE("a restore that replaces the original node keeps its replica id") {
  std::mt19937_64 rng(7);
  TempDir dir;
  crdt::ReplicaId original = 0;
  {
    auto store = test::openStore(fast(dir.sub("node")));
    original = store->replicaId();
    fill(*store, rng, 50);
    REQUIRE(store->backup(dir.sub("backup"), {}).ok());
  }
  RestoreOptions ro;
  ro.keepReplicaId = true;
  auto restored = restoreBackup(dir.sub("backup"), dir.sub("replacement"), ro);
  REQUIRE_MESSAGE(restored.ok(), restored.error().toString());
  CHECK(restored->replicaId == original);
  auto store = test::openStore(test::optionsFor(dir.sub("replacement")));
  CHECK(store->replicaId() == original);
}

TEST_CASE("a damaged backup is refused by verify and by restore") {
  std::mt19937_64 rng(11);
  TempDir dir;
  {
    auto store = test::openStore(fast(dir.sub("node")));
    fill(*store, rng, 200);
    REQUIRE(store->backup(dir.sub("backup"), {}).ok());
  }
  REQUIRE(verifyBackup(dir.sub("backup")).ok());

  SUBCASE("a flipped byte in data.mdb") {
    std::string data = dir.sub("backup/data.mdb");
    flipByte(data, fileSize(data) / 2);
    auto v = verifyBackup(dir.sub("backup"));
    REQUIRE_FALSE(v.ok());
    CHECK(v.error().code == ErrorCode::kCorruption);
    CHECK(contains(v.error().message, "checksum"));
  }
  SUBCASE("a manifest whose root is not the copy's") {
    // The checksum still matches: the copy is opened and its own root
    // compared with the manifest's.
    auto m = readBackupManifest(dir.sub("backup"));
    REQUIRE(m.ok());
    m->merkleRoot[0] ^= 1;
    std::filesystem::remove(dir.sub("backup/backup.manifest"));
    int fd = ::open(dir.sub("backup/backup.manifest").c_str(), O_WRONLY | O_CREAT, 0600);
    REQUIRE(fd >= 0);
    std::string text = m->encode();
    REQUIRE(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
    ::close(fd);
    auto v = verifyBackup(dir.sub("backup"));
    REQUIRE_FALSE(v.ok());
    CHECK(v.error().code == ErrorCode::kCorruption);
    CHECK(contains(v.error().message, "Merkle root"));
  }
  SUBCASE("no manifest: an unfinished backup") {
    std::filesystem::remove(dir.sub("backup/backup.manifest"));
    auto v = verifyBackup(dir.sub("backup"));
    REQUIRE_FALSE(v.ok());
    CHECK(v.error().code == ErrorCode::kNotFound);
  }

  auto r = restoreBackup(dir.sub("backup"), dir.sub("restored"));
  REQUIRE_FALSE(r.ok());
  CHECK(!std::filesystem::exists(dir.sub("restored/data.mdb")));
  CHECK(!std::filesystem::exists(dir.sub("restored/restore-staging")));
}

TEST_CASE("a store whose derived data is wrong fails a backup's verification") {
  // The checksum covers the bytes, not their sense: verifyBackup also runs
  // the verify() recount on the copy, so a store that was already
  // inconsistent never becomes a "good" backup.
  std::mt19937_64 rng(13);
  TempDir dir;
  { fill(*test::openStore(fast(dir.sub("node"))), rng, 100); }
  test::withRawDb(dir.sub("node"), "products", [&](MDB_txn* txn, MDB_dbi dbi) {
    MDB_cursor* c = nullptr;
    REQUIRE(mdb_cursor_open(txn, dbi, &c) == 0);
    MDB_val k, v;
    REQUIRE(mdb_cursor_get(c, &k, &v, MDB_FIRST) == 0);
    std::string bumped(static_cast<const char*>(v.mv_data), v.mv_size);
    bumped[0] = static_cast<char>(bumped[0] + 1);  // one more 1-star review
    MDB_val nv{bumped.size(), bumped.data()};
    REQUIRE(mdb_cursor_put(c, &k, &nv, MDB_CURRENT) == 0);
    mdb_cursor_close(c);
    return true;
  });
  {
    auto store = test::openStore(fast(dir.sub("node")));
    REQUIRE(store->backup(dir.sub("backup"), {}).ok());
  }
  auto v = verifyBackup(dir.sub("backup"));
  REQUIRE_FALSE(v.ok());
  CHECK(v.error().code == ErrorCode::kCorruption);
  CHECK(contains(v.error().message, "aggregate"));
  CHECK_FALSE(restoreBackup(dir.sub("backup"), dir.sub("restored")).ok());
}

TEST_CASE(
    "a backup goes only into a new or empty directory; a restore only into one without a "
    "store") {
  TempDir dir;
  auto store = test::openStore(fast(dir.sub("node")));
  REQUIRE(store->mutateSync({"p", "a"}, test::writeReview(5, "t", "b")).ok());
  std::filesystem::create_directories(dir.sub("full"));
  {
    std::FILE* f = std::fopen(dir.sub("full/x").c_str(), "w");
    std::fclose(f);
  }
  auto b = store->backup(dir.sub("full"), {});
  REQUIRE_FALSE(b.ok());
  CHECK(b.error().code == ErrorCode::kInvalidArgument);
  CHECK(contains(b.error().message, "not empty"));

  std::filesystem::create_directories(dir.sub("empty"));
  REQUIRE(store->backup(dir.sub("empty"), {}).ok());
  // The node's own data dir already holds a store: refused, and left as it was.
  auto r = restoreBackup(dir.sub("empty"), dir.sub("node"));
  REQUIRE_FALSE(r.ok());
  CHECK(contains(r.error().message, "already holds a store"));
  CHECK(store->verify().ok());
}

TEST_CASE("a manifest round-trips and a malformed one is refused") {
  BackupManifest m;
  m.nodeId = "n7";
  m.replicaId = 0x0123456789abcdefULL;
  m.schemaVersion = kSchemaVersion;
  m.merkleRoot[3] = 9;
  m.keys = 12345;
  m.hlcHighWater = 99;
  m.fileBytes = 4096;
  m.checksum[31] = 1;
  m.createdUnixMillis = 1700000000000;
  auto back = BackupManifest::decode(m.encode());
  REQUIRE(back.ok());
  CHECK(back->encode() == m.encode());
  CHECK(contains(m.encode(), "replica-id=0123456789abcdef\n"));
  std::string text = m.encode();
  CHECK_FALSE(BackupManifest::decode(text.substr(0, text.find("keys="))).ok());
  CHECK_FALSE(BackupManifest::decode("chorus-backup 2\n").ok());
  std::string badKeys = text;
  badKeys.replace(badKeys.find("keys=12345"), 10, "keys=12x45");
  CHECK_FALSE(BackupManifest::decode(badKeys).ok());
}
