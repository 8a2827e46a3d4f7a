// Issue 12, finding 8: files are private by default. Under umask 022 a
// node's data dir is 0700 and its store files 0600; `chorus token create
// --out` writes the token to a new 0600 file; a cluster key file that group
// or others may read is refused, naming the file, its mode and the fix.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>

#include "../cluster/harness.h"
#include "gossip/keyring.h"

using namespace chorus::test::cluster;

namespace {

// The umask for one scope; children started meanwhile inherit it.
struct Umask {
  explicit Umask(mode_t m) : old(::umask(m)) {}
  ~Umask() { ::umask(old); }
  mode_t old;
};

mode_t modeOf(const std::string& path) {
  struct stat st {};
  REQUIRE_MESSAGE(::stat(path.c_str(), &st) == 0, path << ": " << std::strerror(errno));
  return st.st_mode & 07777;
}

std::string octal(mode_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", unsigned(m));
  return buf;
}

}  // namespace

TEST_CASE("files: a node's data dir is 0700 and its store files 0600 under umask 022") {
  Umask scoped(022);
  Harness h;
  h.start("n1");
  h.start("n2", {h.node("n1").gossip()});
  std::string dir = h.dataDir("n1");
  CHECK_MESSAGE(modeOf(dir) == 0700, dir << " is " << octal(modeOf(dir)));
  for (const char* f : {"data.mdb", "lock.mdb", "chorus.lock", "keyring"}) {
    std::string path = dir + "/" + f;
    CHECK_MESSAGE(modeOf(path) == 0600, path << " is " << octal(modeOf(path)));
  }
  // The member list is written once the nodes have met.
  std::string members = dir + "/members";
  REQUIRE(h.waitUntil("n1 wrote its member list", 20s, [&] {
    struct stat st {};
    return ::stat(members.c_str(), &st) == 0;
  }));
  CHECK_MESSAGE(modeOf(members) == 0600, members << " is " << octal(modeOf(members)));
  h.stopAll();

  // A data dir left open to others is tightened at the next start, and said.
  REQUIRE(::chmod(dir.c_str(), 0755) == 0);
  REQUIRE(::chmod((dir + "/data.mdb").c_str(), 0644) == 0);
  h.restart("n1");
  CHECK(modeOf(dir) == 0700);
  CHECK(modeOf(dir + "/data.mdb") == 0600);
  CHECK_MESSAGE(h.node("n1").ownLog().find("changed it to 0700") != std::string::npos,
                h.node("n1").ownLog());
  h.stopAll();
}

TEST_CASE("files: chorus token create --out writes the token to a new 0600 file") {
  Umask scoped(022);
  Harness h;
  std::string tokens = h.tmp().sub("tokens.txt");
  std::string out = h.tmp().sub("ann.token");
  auto r = run(bin("CHORUS_BIN"),
               {"token", "create", "--principal", "ann", "--roles", "writer", "--tokens-file",
                tokens, "--out", out},
               20s);
  REQUIRE_MESSAGE(r.code == 0, r.out << r.err);
  CHECK(modeOf(out) == 0600);
  std::string token = readFile(out);
  REQUIRE(token.size() > 20);
  CHECK(token.back() == '\n');
  token.pop_back();
  CHECK(r.out.find(token) == std::string::npos);  // not printed as well
  CHECK(modeOf(tokens) == 0600);

  // The token works: a node with that tokens file takes a write from it.
  h.tokensFile = tokens;
  h.cliTokenFile = out;
  h.start("n1");
  auto put = h.chorus("n1", {"review", "put", "kettle", "ann", "--rating", "5"});
  CHECK_MESSAGE(put.code == 0, put.out << put.err);

  // An existing file is never overwritten (exit 3), and no grant is added.
  std::string before = readFile(tokens);
  auto again = run(bin("CHORUS_BIN"),
                   {"token", "create", "--principal", "bob", "--roles", "writer", "--tokens-file",
                    tokens, "--out", out},
                   20s);
  CHECK(again.code == 3);
  CHECK_MESSAGE(again.err.find(out) != std::string::npos, again.err);
  CHECK(readFile(out) == token + "\n");
  CHECK(readFile(tokens) == before);
  h.stopAll();
}

TEST_CASE("files: a cluster key file that group or others may read is refused") {
  Umask scoped(022);
  Harness h;
  std::string key = h.tmp().sub("cluster.key");
  { std::ofstream(key) << chorus::gossip::generateClusterKey() << "\n"; }
  REQUIRE(modeOf(key) == 0644);  // what `keys generate > FILE` makes under umask 022
  auto refused = run(bin("CHORUSD_BIN"),
                     {"--node-id", "n1", "--data-dir", h.tmp().sub("n1"), "--listen", "127.0.0.1:0",
                      "--no-auth", "--gossip-listen", "127.0.0.1:0", "--cluster-key-file", key},
                     10s);  // a chorusd that starts is killed at 10 s: code -1
  CHECK(refused.code == 1);
  CHECK_MESSAGE(refused.err.find(key) != std::string::npos, refused.err);
  CHECK_MESSAGE(refused.err.find("0644") != std::string::npos, refused.err);
  CHECK_MESSAGE(refused.err.find("chmod 600 " + key) != std::string::npos, refused.err);

  // The CLI reads key files through the same reader.
  auto cli = run(bin("CHORUS_BIN"),
                 {"--connect", "127.0.0.1:1", "cluster", "keys", "install", "--key-file", key,
                  "--nodes", "127.0.0.1:1"},
                 20s);
  CHECK(cli.code == 3);
  CHECK_MESSAGE(cli.err.find("chmod 600") != std::string::npos, cli.err);

  // chmod 600 is the fix.
  REQUIRE(::chmod(key.c_str(), 0600) == 0);
  h.keyFileFor["n1"] = key;
  h.start("n1");
  h.stopAll();
}
