// Cluster keys and the keyring: parsing, changes, and the keyring file.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "gossip/keyring.h"
#include "support/results.h"

using namespace chorus;
using namespace chorus::gossip;
using chorus::test::failure;

namespace {

std::filesystem::path tempDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("chorus-keyring-test-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

Keyring ringOf(const std::vector<std::string>& keys) {
  auto ring = Keyring::fromBase64(keys);
  REQUIRE_MESSAGE(ring.ok(), (ring.ok() ? "" : ring.error().toString()));
  return std::move(ring).value();
}

}  // namespace

TEST_CASE("generated keys are 44 base64 characters, distinct, and parse back") {
  std::set<std::string> seen;
  for (int i = 0; i < 32; ++i) {
    std::string key = generateClusterKey();
    CHECK(key.size() == 44);
    CHECK(key.back() == '=');
    CHECK(seen.insert(key).second);
    auto parsed = parseClusterKey(key + "\n");  // as read from a key file
    REQUIRE(parsed.ok());
    CHECK(parsed->base64() == key);
    CHECK(parsed->fingerprint().size() == 8);
    CHECK(parsed->fingerprint().find_first_not_of("0123456789abcdef") == std::string::npos);
    CHECK(parsed->fingerprint().find(key.substr(0, 8)) == std::string::npos);
  }
}

TEST_CASE("malformed keys are refused with a message saying how to make one") {
  std::string good = generateClusterKey();
  for (std::string bad :
       {std::string(), std::string("   "), good.substr(0, 43), good + "A", std::string(44, '!'),
        std::string("c2hvcnQ="),                               // "short"
        good.substr(0, 40) + "====", std::string(44, 'A')}) {  // 33 bytes
    auto parsed = parseClusterKey(bad);
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.error().code == ErrorCode::kInvalidArgument);
    CHECK(parsed.error().message.find("chorus cluster keys generate") != std::string::npos);
    CHECK(parsed.error().message.find("44 characters") != std::string::npos);
  }
}

TEST_CASE("a keyring needs a key, and keys[0] is the primary") {
  auto none = Keyring::fromBase64({});
  REQUIRE_FALSE(none.ok());
  CHECK(none.error().code == ErrorCode::kInvalidArgument);
  CHECK(none.error().message.find("chorus cluster keys generate") != std::string::npos);
  auto bad = Keyring::fromBase64({generateClusterKey(), "nope"});
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("key 2 of 2") != std::string::npos);

  std::string k1 = generateClusterKey(), k2 = generateClusterKey();
  auto ring = ringOf({k1, k2, k1});  // a repeated key counts once
  auto list = ring.list();
  REQUIRE(list.size() == 2);
  CHECK(list[0].primary);
  CHECK(list[0].fingerprint == parseClusterKey(k1)->fingerprint());
  CHECK_FALSE(list[1].primary);
  CHECK(ring.primary().base64() == k1);
}

TEST_CASE("install, use and remove keep exactly one primary and refuse what would break it") {
  std::string k1 = generateClusterKey(), k2 = generateClusterKey(), k3 = generateClusterKey();
  auto ring = ringOf({k1});
  REQUIRE(ring.install(parseClusterKey(k2).value()).ok());
  REQUIRE(ring.install(parseClusterKey(k2).value()).ok());  // idempotent
  CHECK(ring.size() == 2);
  CHECK(ring.primary().base64() == k1);

  // use: by base64 or fingerprint (any case); unknown ones are not found.
  std::string fp2 = parseClusterKey(k2)->fingerprint();
  REQUIRE(ring.use(fp2).ok());
  CHECK(ring.primary().base64() == k2);
  std::string upper = parseClusterKey(k1)->fingerprint();
  for (auto& c : upper) c = char(std::toupper(static_cast<unsigned char>(c)));
  REQUIRE(ring.use(upper).ok());
  CHECK(ring.primary().base64() == k1);
  REQUIRE(ring.use(k2).ok());
  CHECK(failure(ring.use(k3)).code == ErrorCode::kNotFound);
  CHECK(failure(ring.use(parseClusterKey(k3)->fingerprint())).code == ErrorCode::kNotFound);
  CHECK(failure(ring.use("not a key")).code == ErrorCode::kInvalidArgument);

  // remove: never the primary; unknown ones are not found.
  auto primary = ring.remove(k2);
  REQUIRE_FALSE(primary.ok());
  CHECK(primary.error().code == ErrorCode::kInvalidArgument);
  CHECK(primary.error().message.find("primary") != std::string::npos);
  CHECK(failure(ring.remove(k3)).code == ErrorCode::kNotFound);
  REQUIRE(ring.remove(parseClusterKey(k1)->fingerprint()).ok());
  CHECK(ring.size() == 1);
  CHECK(ring.find(parseClusterKey(k1)->id()) == nullptr);
  CHECK(ring.find(parseClusterKey(k2)->id()) != nullptr);

  // At most 16.
  for (int i = 1; i < 16; ++i)
    REQUIRE(ring.install(parseClusterKey(generateClusterKey()).value()).ok());
  auto full = ring.install(parseClusterKey(generateClusterKey()).value());
  REQUIRE_FALSE(full.ok());
  CHECK(full.error().code == ErrorCode::kInvalidArgument);
  CHECK(full.error().message.find("full") != std::string::npos);
  CHECK(ring.size() == 16);
}

TEST_CASE("the keyring file: mode 0600, read back exactly, damage reported") {
  auto dir = tempDir("file");
  std::string path = (dir / "keyring").string();
  auto missing = Keyring::load(path);
  REQUIRE(missing.ok());
  CHECK_FALSE(missing.value().has_value());

  std::string k1 = generateClusterKey(), k2 = generateClusterKey(), k3 = generateClusterKey();
  auto ring = ringOf({k1, k2, k3});
  REQUIRE(ring.use(k3).ok());
  REQUIRE(ring.save(path).ok());
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));

  auto loaded = Keyring::load(path);
  REQUIRE(loaded.ok());
  REQUIRE(loaded.value().has_value());
  auto a = ring.list(), b = loaded.value()->list();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].fingerprint == b[i].fingerprint);
    CHECK(a[i].primary == b[i].primary);
  }
  CHECK(loaded.value()->primary().base64() == k3);

  auto write = [&](const std::string& text) { std::ofstream(path, std::ios::trunc) << text; };
  for (std::string bad : {std::string(""), std::string("hello\n"),
                          "# chorus keyring v1\nkey " + k1 + "\n",  // no primary
                          "# chorus keyring v1\nprimary " + k1 + "\nprimary " + k2 + "\n",
                          "# chorus keyring v1\nprimary " + k1 + "\nkey " + k1 + "\n",  // twice
                          "# chorus keyring v1\nprimary " + k1.substr(1) + "\n",
                          "# chorus keyring v1\nprimary " + k1 + " extra\n"}) {
    write(bad);
    auto damaged = Keyring::load(path);
    REQUIRE_FALSE(damaged.ok());
    CHECK(damaged.error().code == ErrorCode::kCorruption);
    CHECK(damaged.error().message.find(path) != std::string::npos);
    CHECK(damaged.error().message.find(k1) == std::string::npos);  // never key material
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("a cluster key file that group or others may read is refused, naming the fix") {
  auto dir = tempDir("keyfile");
  std::string path = (dir / "cluster.key").string();
  std::string key = generateClusterKey();
  {
    mode_t old = ::umask(022);
    std::ofstream(path, std::ios::trunc) << "# the cluster key\n" << key << "\n";
    ::umask(old);
  }
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  REQUIRE((st.st_mode & 0777) == 0644);  // what `keys generate > FILE` makes under umask 022
  for (mode_t mode : {0644, 0640, 0604, 0620}) {
    CAPTURE(mode);
    REQUIRE(::chmod(path.c_str(), mode) == 0);
    auto read = readKeyFile(path);
    REQUIRE_FALSE(read.ok());
    CHECK(read.error().code == ErrorCode::kInvalidArgument);
    const std::string& m = read.error().message;
    char octal[8];
    std::snprintf(octal, sizeof octal, "%04o", unsigned(mode));
    CHECK_MESSAGE(m.find(path) != std::string::npos, m);
    CHECK_MESSAGE(m.find(octal) != std::string::npos, m);
    CHECK_MESSAGE(m.find("chmod 600 " + path) != std::string::npos, m);
    CHECK(m.find(key) == std::string::npos);  // never key material
  }
  for (mode_t mode : {0600, 0400}) {
    REQUIRE(::chmod(path.c_str(), mode) == 0);
    auto read = readKeyFile(path);
    REQUIRE(read.ok());
    REQUIRE(read->size() == 1);
    CHECK(read->front() == key);
  }
  auto missing = readKeyFile((dir / "none").string());
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == ErrorCode::kIo);
  std::filesystem::remove_all(dir);
}
