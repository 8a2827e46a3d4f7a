// The `chorus` CLI's habits (issue 19): global flags anywhere, --timeout
// with units, suggestions for mistyped commands, `review list`, JSON errors
// with the documented exit codes, --body-file, ranges refused, and `chorus
// token create|list|revoke` with expiry; `chorus node health`. Also
// chorus-chaos's usage exit code. Needs CHORUSD_BIN, CHORUS_BIN and CHORUS_CHAOS_BIN.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <cstdlib>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <thread>

#include "api/auth.h"
#include "api/types.h"
#include "cluster/json.h"
#include "process.h"
#include "temp-dir.h"

using chorus::test::Process;
using chorus::test::TempDir;
using namespace std::chrono_literals;

namespace {

std::string bin(const char* var) {
  const char* v = std::getenv(var);
  REQUIRE_MESSAGE(v != nullptr, var << " must name the built binary");
  return v;
}

struct Run {
  int code;
  std::string out;  // stdout and stderr
};

Run run(const std::string& path, const std::vector<std::string>& args) {
  Process p(path, args);
  std::string out = p.readAll(20s);
  return {p.wait(10s), out};
}

Run cli(const std::vector<std::string>& args) { return run(bin("CHORUS_BIN"), args); }

bool has(const Run& r, const std::string& part) { return r.out.find(part) != std::string::npos; }

std::string shown(const Run& r) { return "exit " + std::to_string(r.code) + ": " + r.out; }

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// chorusd with `tokens` as its tokens file, on a free port.
struct Daemon {
  std::unique_ptr<Process> process;
  std::string address;
  Daemon(const TempDir& tmp, const std::string& tokens, const std::string& id = "habits",
         std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {
        "--node-id",   id,     "--data-dir",    tmp.sub(id), "--listen",        "127.0.0.1:0",
        "--log-level", "warn", "--tokens-file", tokens,      "--unsafe-no-sync"};
    args.insert(args.end(), extra.begin(), extra.end());
    process = std::make_unique<Process>(bin("CHORUSD_BIN"), args);
    auto line = process->waitForLine("chorusd: listening on ", 10s);
    REQUIRE_MESSAGE(line.has_value(), process->output());
    address = line->substr(line->find(" on ") + 4);
  }
};

}  // namespace

TEST_CASE("cli: global flags anywhere, --timeout units, suggestions, JSON errors, ranges") {
  TempDir tmp;
  std::string tokens = tmp.sub("tokens"), ann = tmp.sub("ann.token"), ops = tmp.sub("ops.token");
  REQUIRE(cli({"token", "create", "--principal", "ann", "--roles", "writer", "--tokens-file",
               tokens, "--out", ann})
              .code == 0);
  REQUIRE(cli({"token", "create", "--principal", "ops", "--roles", "admin,reader", "--tokens-file",
               tokens, "--out", ops})
              .code == 0);
  Daemon d(tmp, tokens);
  const std::string& a = d.address;

  // Global flags after the subcommand and its arguments, as kubectl takes them.
  auto put = cli({"review", "put", "kettle-1", "ann", "-r", "5", "-t", "Hot", "--connect", a,
                  "--token-file", ann, "--json", "--timeout", "5s"});
  CHECK_MESSAGE(put.code == 0, shown(put));
  CHECK(has(put, "\"rating\":5"));
  // `review list` is `reviews list`; --timeout in ms and with a bare number.
  auto list = cli({"review", "list", "kettle-1", "--json", "--connect", a, "--token-file", ann,
                   "--timeout", "1500ms"});
  CHECK_MESSAGE(list.code == 0, shown(list));
  CHECK(has(list, "{\"reviews\":[{\"product\":\"kettle-1\""));
  CHECK(
      cli({"--connect", a, "--token-file", ann, "--timeout", "2000", "reviews", "list", "kettle-1"})
          .code == 0);
  for (const char* bad : {"soon", "0", "-5s", "2h"}) {
    auto r = cli({"--connect", a, "--timeout", bad, "reviews", "list", "kettle-1"});
    CAPTURE(bad);
    CHECK_MESSAGE(r.code == 1, shown(r));
    CHECK(has(r, "--timeout"));
  }

  // A mistyped command names the word and the nearest; exit 1.
  auto typo = cli({"reviw", "list", "kettle-1"});
  CHECK(typo.code == 1);
  CHECK_MESSAGE(has(typo, "unknown command 'reviw'"), shown(typo));
  CHECK_MESSAGE(has(typo, "did you mean 'review'?"), shown(typo));
  auto deep = cli({"--connect", a, "cluster", "convreg"});
  CHECK(deep.code == 1);
  CHECK_MESSAGE(has(deep, "'convreg' for 'chorus cluster' (did you mean 'converge'?)"),
                shown(deep));

  // Out of range: refused with the range, not clamped.
  for (const char* limit : {"0", "500"}) {
    auto r =
        cli({"--connect", a, "--token-file", ann, "reviews", "list", "kettle-1", "--limit", limit});
    CAPTURE(limit);
    CHECK(r.code == 1);
    CHECK_MESSAGE(has(r, "not in range 1 to 100"), shown(r));
  }

  // --json errors: one object on stderr, the same exit codes as the text.
  auto notFound =
      cli({"--connect", a, "--token-file", ann, "review", "get", "kettle-1", "bob", "--json"});
  CHECK(notFound.code == 2);
  CHECK_MESSAGE(has(notFound, "{\"error\":{\"code\":\"not-found\",\"field\":"), shown(notFound));
  auto invalid = cli({"--json", "--connect", a, "--token-file", ann, "review", "put", "kettle-1",
                      "ann", "-r", "7"});
  CHECK(invalid.code == 3);
  CHECK_MESSAGE(has(invalid, "{\"error\":{\"code\":\"invalid-argument\",\"field\":\"rating\","),
                shown(invalid));
  auto usage = cli({"--json", "reviw"});
  CHECK(usage.code == 1);
  CHECK_MESSAGE(has(usage, "{\"error\":{\"code\":\"usage\",\"field\":null,\"message\":"),
                shown(usage));
  auto anonymous = cli({"--json", "--connect", a, "review", "get", "kettle-1", "ann"});
  CHECK(anonymous.code == 7);
  CHECK_MESSAGE(has(anonymous, "{\"error\":{\"code\":\"unauthenticated\""), shown(anonymous));
  CHECK_MESSAGE(has(anonymous, "$CHORUS_TOKEN_FILE"), shown(anonymous));  // every way to pass one
  auto unknown =
      cli({"--connect", a, "--token", chorus::api::newToken(), "review", "get", "kettle-1", "ann"});
  CHECK(unknown.code == 7);
  CHECK_MESSAGE(has(unknown, "unknown token"), shown(unknown));
  CHECK_MESSAGE(has(unknown, "SIGHUP"), shown(unknown));
  auto missingFile = cli({"--connect", a, "--token-file", tmp.sub("nope"), "node", "status"});
  CHECK(missingFile.code == 1);
  CHECK_MESSAGE(has(missingFile, "No such file or directory"), shown(missingFile));

  // --body-file FILE, and - for stdin.
  std::string body = tmp.sub("body.txt");
  std::ofstream(body) << "Line one.\nLine \"two\".\n";
  auto fromFile = cli({"--connect", a, "--token-file", ann, "--json", "review", "put", "kettle-2",
                       "ann", "-r", "4", "--body-file", body});
  CHECK_MESSAGE(fromFile.code == 0, shown(fromFile));
  CHECK(has(fromFile, "\"body\":\"Line one.\\nLine \\\"two\\\".\\n\""));
  auto fromStdin =
      run("/bin/sh", {"-c",
                      "printf 'from a pipe' | \"$0\" --connect " + a + " --token-file " + ann +
                          " --json review put kettle-3 ann -r 3 --body-file -",
                      bin("CHORUS_BIN")});
  CHECK_MESSAGE(fromStdin.code == 0, shown(fromStdin));
  CHECK(has(fromStdin, "\"body\":\"from a pipe\""));
  auto both =
      cli({"review", "put", "kettle-2", "ann", "-r", "4", "--body", "x", "--body-file", body});
  CHECK(both.code == 1);
  auto noFile = cli({"--connect", a, "--token-file", ann, "review", "put", "kettle-2", "ann", "-r",
                     "4", "--body-file", tmp.sub("missing")});
  CHECK(noFile.code == 1);
  CHECK_MESSAGE(has(noFile, "--body-file: cannot read"), shown(noFile));

  CHECK(d.process->stop(SIGTERM, 10s) == 0);
}

TEST_CASE("cli: --connect at a gossip port says so, in plain words") {
  TempDir tmp;
  std::string tokens = tmp.sub("tokens"), key = tmp.sub("cluster.key");
  REQUIRE(cli({"token", "create", "--principal", "ops", "--roles", "admin", "--tokens-file", tokens,
               "--out", tmp.sub("ops.token")})
              .code == 0);
  REQUIRE(cli({"cluster", "keys", "generate", "--out", key}).code == 0);
  Daemon d(tmp, tokens, "n1", {"--gossip-listen", "127.0.0.1:0", "--cluster-key-file", key});
  auto line = d.process->waitForLine("chorusd: gossip on ", 10s);
  REQUIRE(line.has_value());
  std::string gossip = line->substr(line->find(" on ") + 4);
  auto r = cli({"--connect", gossip, "--token-file", tmp.sub("ops.token"), "node", "status"});
  CHECK(r.code == 4);
  CHECK_MESSAGE(has(r, "this looks like a gossip port, not the client API"), shown(r));
  CHECK_MESSAGE(!has(r, "segmentCount"), shown(r));
  CHECK(d.process->stop(SIGTERM, 10s) == 0);
}

TEST_CASE("cli: token create --expires, token list, token revoke; old tokens files still load") {
  TempDir tmp;
  std::string tokens = tmp.sub("tokens");
  // A line in the format before ids, creation times and expiry.
  std::string oldToken = chorus::api::newToken();
  std::ofstream(tokens) << "# made by an older chorus\n"
                        << *chorus::api::tokenLine("old", "reader", oldToken) << "\n";
  REQUIRE(::chmod(tokens.c_str(), 0600) == 0);
  auto created = cli({"token", "create", "--principal", "ann", "--roles", "writer", "--tokens-file",
                      tokens, "--out", tmp.sub("ann.token"), "--expires", "30d"});
  REQUIRE_MESSAGE(created.code == 0, shown(created));
  struct stat st {};
  REQUIRE(::stat(tmp.sub("ann.token").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  REQUIRE(cli({"token", "create", "--principal", "bob", "--roles", "writer", "--tokens-file",
               tokens, "--out", tmp.sub("bob.token")})
              .code == 0);
  auto asJson = cli({"token", "create", "--principal", "dee", "--roles", "reader", "--tokens-file",
                     tokens, "--json"});
  CHECK_MESSAGE(asJson.code == 0, shown(asJson));
  CHECK_MESSAGE(has(asJson, "\"principal\":\"dee\",\"token\":\"chorus_"), shown(asJson));
  REQUIRE(cli({"token", "revoke", "--principal", "dee", "--tokens-file", tokens}).code == 0);
  auto badExpiry = cli({"token", "create", "--principal", "cy", "--roles", "writer",
                        "--tokens-file", tokens, "--expires", "soon"});
  CHECK(badExpiry.code == 1);
  CHECK(has(badExpiry, "--expires"));

  std::string annToken = readFile(tmp.sub("ann.token"));
  auto list = cli({"token", "list", "--tokens-file", tokens});
  CHECK_MESSAGE(list.code == 0, shown(list));
  CHECK(has(list, "ID"));
  CHECK(has(list, "old"));
  CHECK(has(list, "never"));
  CHECK_FALSE(has(list, annToken.substr(0, 20)));  // never a token
  CHECK_FALSE(has(list, "chorus_"));
  std::string oldId = chorus::api::shortId(chorus::api::tokenHash(oldToken));
  CHECK(has(list, oldId));
  auto json = cli({"--json", "token", "list", "--tokens-file", tokens});
  CHECK_MESSAGE(json.code == 0, shown(json));
  CHECK(has(json, "{\"id\":\"" + oldId +
                      "\",\"principal\":\"old\",\"roles\":[\"reader\"],\"created\":null,"
                      "\"expires\":null,\"expired\":false,\"line\":2}"));
  CHECK(has(json, "\"principal\":\"ann\",\"roles\":[\"writer\"],\"created\":\"20"));
  // The expiry is 30 days after the creation time.
  std::string text = readFile(tokens);
  size_t c = text.find("created=", text.find("\nann "));
  size_t e = text.find("expires=", text.find("\nann "));
  REQUIRE(c != std::string::npos);
  REQUIRE(e != std::string::npos);
  auto t0 = chorus::api::parseUtcTime(text.substr(c + 8, 20));
  auto t1 = chorus::api::parseUtcTime(text.substr(e + 8, 20));
  REQUIRE(t0.has_value());
  REQUIRE(t1.has_value());
  CHECK(*t1 - *t0 == 30 * 86400);

  // Revoke by id (a prefix of 4+ digits is enough) and by principal.
  auto byId = cli({"token", "revoke", "--id", oldId.substr(0, 6), "--tokens-file", tokens});
  CHECK_MESSAGE(byId.code == 0, shown(byId));
  CHECK(has(byId, "revoked 1 token(s): " + oldId + " (old)"));
  CHECK(has(byId, "SIGHUP"));
  auto byPrincipal = cli({"token", "revoke", "--principal", "bob", "--tokens-file", tokens});
  CHECK_MESSAGE(byPrincipal.code == 0, shown(byPrincipal));
  text = readFile(tokens);
  CHECK(text.find("# made by an older chorus") == 0);  // comments kept
  CHECK(text.find("\nold ") == std::string::npos);
  CHECK(text.find("\nbob ") == std::string::npos);
  CHECK(text.find("\nann ") != std::string::npos);
  REQUIRE(::stat(tokens.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto again = cli({"token", "revoke", "--principal", "bob", "--tokens-file", tokens});
  CHECK(again.code == 2);  // not found
  CHECK(cli({"token", "revoke", "--tokens-file", tokens}).code == 1);
  CHECK(cli({"token", "revoke", "--id", "ab", "--tokens-file", tokens}).code == 2);

  // An expired line: the node refuses the token as unauthenticated.
  std::string expired = chorus::api::newToken();
  int64_t now = static_cast<int64_t>(std::time(nullptr));
  std::ofstream(tokens, std::ios::app)
      << *chorus::api::tokenLine("eve", "reader", expired, now - 7200, now - 3600) << "\n";
  auto listed = cli({"token", "list", "--tokens-file", tokens});
  CHECK(has(listed, "(expired)"));
  Daemon d(tmp, tokens);
  auto refused = cli({"--connect", d.address, "--token", expired, "reviews", "list", "p"});
  CHECK(refused.code == 7);
  CHECK_MESSAGE(has(refused, "unauthenticated: token expired at"), shown(refused));
  CHECK(cli({"--connect", d.address, "--token", annToken.substr(0, annToken.size() - 1), "reviews",
             "list", "p"})
            .code == 0);
  CHECK(d.process->stop(SIGTERM, 10s) == 0);
}

TEST_CASE("cli: cluster keys generate --out writes a 0600 file; chorus-chaos usage exits 2") {
  TempDir tmp;
  std::string key = tmp.sub("k");
  auto gen = run("/bin/sh", {"-c", "umask 022; exec \"$0\" cluster keys generate --out \"$1\"",
                             bin("CHORUS_BIN"), key});
  CHECK_MESSAGE(gen.code == 0, shown(gen));
  struct stat st {};
  REQUIRE(::stat(key.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(readFile(key).size() == 45);  // 44 base64 characters and a newline
  auto twice = cli({"cluster", "keys", "generate", "--out", key});
  CHECK(twice.code == 3);
  CHECK(has(twice, "never overwritten"));

  // Its --help says: 2 on usage errors (CLI11's own codes would be 105+).
  auto help = run(bin("CHORUS_CHAOS_BIN"), {"--help"});
  CHECK(help.code == 0);
  CHECK(has(help, "2 on usage errors"));
  for (std::vector<std::string> args :
       {std::vector<std::string>{"--nodes", "0"}, {"--bogus"}, {"--duration"}, {"extra"}}) {
    auto r = run(bin("CHORUS_CHAOS_BIN"), args);
    CAPTURE(args[0]);
    CHECK_MESSAGE(r.code == 2, shown(r));
  }
}

// Partitions replace each other: after --isolate n3, a --split n1/n2,n3
// leaves n3 talking to n2 again (they used to add up, so n2 kept dropping
// n3 too), and a node in neither side of a split is healed.
TEST_CASE("cli: a new partition replaces the previous one") {
  TempDir tmp;
  std::string tokens = tmp.sub("tokens"), ops = tmp.sub("ops.token");
  REQUIRE(cli({"token", "create", "--principal", "ops", "--roles", "admin", "--tokens-file", tokens,
               "--out", ops})
              .code == 0);
  std::string key = tmp.sub("cluster.key");
  REQUIRE(cli({"cluster", "keys", "generate", "--out", key}).code == 0);
  std::vector<std::string> gossip = {"--gossip-listen", "127.0.0.1:0", "--cluster-key-file", key};
  Daemon n1(tmp, tokens, "n1", gossip), n2(tmp, tokens, "n2", gossip),
      n3(tmp, tokens, "n3", gossip), n4(tmp, tokens, "n4", gossip);
  // No --join: partitions name peers by id, known or not yet.
  auto run = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"--connect", n1.address, "--token-file", ops});
    args.insert(args.end(), {"--nodes", n2.address + "," + n3.address + "," + n4.address});
    return cli(args);
  };
  auto dropped = [&]() {
    auto s = run({"--json", "cluster", "status"});
    REQUIRE_MESSAGE(s.code == 0, shown(s));
    auto j = chorus::test::Json::parse(s.out.substr(0, s.out.find('\n')));
    REQUIRE_MESSAGE(j.has_value(), shown(s));
    std::map<std::string, std::string> out;
    for (const auto& n : (*j)["nodes"].items()) {
      std::string ids;
      for (const auto& id : n["partitioned_from"].items())
        ids += (ids.empty() ? "" : ",") + id.str();
      out[n["node_id"].str()] = ids;
    }
    return out;
  };
  auto iso = run({"cluster", "partition", "--isolate", "n3"});
  REQUIRE_MESSAGE(iso.code == 0, shown(iso));
  auto d = dropped();
  CHECK(d["n1"] == "n3");
  CHECK(d["n2"] == "n3");
  CHECK(d["n3"] == "n1,n2,n4");
  CHECK(d["n4"] == "n3");
  auto split = run({"cluster", "partition", "--split", "n1/n2,n3"});
  REQUIRE_MESSAGE(split.code == 0, shown(split));
  CHECK_MESSAGE(has(split, "n4: in neither side, talks to both"), shown(split));
  d = dropped();
  CHECK(d["n1"] == "n2,n3");
  CHECK(d["n2"] == "n1");
  CHECK(d["n3"] == "n1");
  CHECK(d["n4"] == "");
  auto heal = run({"cluster", "heal"});
  CHECK_MESSAGE(heal.code == 0, shown(heal));
  d = dropped();
  for (const char* id : {"n1", "n2", "n3", "n4"}) CHECK(d[id] == "");
  for (auto* n : {&n1, &n2, &n3, &n4}) CHECK(n->process->stop(SIGTERM, 10s) == 0);
}

// `chorus node health`: any role may call it (node status needs admin);
// exit 0 while the node serves, 4 once it does not (it left the cluster),
// and with --strict also while a peer it knows is suspect or dead.
TEST_CASE("cli: node health for every role; unhealthy after leave; --strict") {
  TempDir tmp;
  std::string tokens = tmp.sub("tokens"), key = tmp.sub("cluster.key");
  for (const char* role : {"reader", "writer", "admin"}) {
    REQUIRE(cli({"token", "create", "--principal", std::string("p-") + role, "--roles", role,
                 "--tokens-file", tokens, "--out", tmp.sub(std::string(role) + ".token")})
                .code == 0);
  }
  REQUIRE(cli({"cluster", "keys", "generate", "--out", key}).code == 0);
  Daemon n1(tmp, tokens, "n1", {"--gossip-listen", "127.0.0.1:0", "--cluster-key-file", key});
  auto g1 = n1.process->waitForLine("chorusd: gossip on ", 10s);
  REQUIRE(g1.has_value());
  Daemon n2(tmp, tokens, "n2",
            {"--gossip-listen", "127.0.0.1:0", "--cluster-key-file", key, "--join",
             g1->substr(g1->find(" on ") + 4)});
  Daemon alone(tmp, tokens, "alone");
  auto health = [&](const Daemon& d, const char* role, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--connect",    d.address,
                                     "--token-file", tmp.sub(std::string(role) + ".token"),
                                     "node",         "health"};
    args.insert(args.end(), extra.begin(), extra.end());
    return cli(args);
  };
  auto parse = [](const Run& r) {
    auto j = chorus::test::Json::parse(r.out.substr(0, r.out.find('\n')));
    REQUIRE_MESSAGE(j.has_value(), shown(r));
    return *j;
  };

  for (const char* role : {"reader", "writer", "admin"}) {
    CAPTURE(role);
    auto r = health(n1, role, {"--json"});
    CHECK_MESSAGE(r.code == 0, shown(r));
    auto j = parse(r);
    CHECK(j["healthy"].boolean());
    CHECK(j["serving"].boolean());
    CHECK(j["node_id"].str() == "n1");
    CHECK(j["replica_id"].str().size() == 16);
    CHECK(j["merkle_root"].str().size() == 32);
    CHECK(j["api_version"].u64() == chorus::api::kApiVersion);
    CHECK(j["cluster"].isObject());
  }
  auto text = health(n1, "reader");
  CHECK_MESSAGE(text.code == 0, shown(text));
  CHECK_MESSAGE(has(text, "health:      ok"), shown(text));
  auto noToken = cli({"--connect", n1.address, "node", "health"});
  CHECK_MESSAGE(noToken.code == 7, shown(noToken));
  auto single = health(alone, "writer", {"--json"});
  CHECK_MESSAGE(single.code == 0, shown(single));
  CHECK(parse(single)["cluster"].isNull());

  // n1 learns n2; then n2 stops: --strict turns unhealthy once n1 suspects
  // it, plain health stays ok (n1 still serves).
  bool joined = false;
  for (int i = 0; i < 150 && !joined; ++i) {
    auto j = parse(health(n1, "reader", {"--json"}));
    joined = j["cluster"]["peers_alive"].u64() == 1;
    if (!joined) std::this_thread::sleep_for(100ms);
  }
  REQUIRE(joined);
  CHECK(health(n1, "reader", {"--strict"}).code == 0);
  CHECK(n2.process->stop(SIGTERM, 10s) == 0);
  Run strict{0, ""};
  for (int i = 0; i < 200 && strict.code == 0; ++i) {
    strict = health(n1, "reader", {"--strict", "--json"});
    if (strict.code == 0) std::this_thread::sleep_for(100ms);
  }
  CHECK_MESSAGE(strict.code == 4, shown(strict));
  CHECK_FALSE(parse(strict)["healthy"].boolean());
  CHECK(parse(strict)["serving"].boolean());
  CHECK_FALSE(parse(strict)["cluster"]["all_peers_alive"].boolean());
  CHECK(health(n1, "reader").code == 0);

  // Out of the cluster (no peer to hand its data to: leave answers 4, but
  // the node is out): it no longer serves writes, so it is not healthy.
  auto leave = cli({"--connect", n1.address, "--token-file", tmp.sub("admin.token"), "cluster",
                    "leave", "--timeout", "200ms"});
  CHECK_MESSAGE(leave.code == 4, shown(leave));
  auto out = health(n1, "writer", {"--json"});
  CHECK_MESSAGE(out.code == 4, shown(out));
  auto j = parse(out);
  CHECK_FALSE(j["healthy"].boolean());
  CHECK_FALSE(j["serving"].boolean());
  CHECK_MESSAGE(j["reason"].str().find("left the cluster") != std::string::npos, shown(out));
  auto outText = health(n1, "reader");
  CHECK(outText.code == 4);
  CHECK_MESSAGE(has(outText, "NOT healthy: left the cluster"), shown(outText));
  for (auto* d : {&n1, &alone}) CHECK(d->process->stop(SIGTERM, 10s) == 0);
}

// A port in use, in plain words: the address and what to do, without KJ's
// failed call or its "toString() = ..." tail; exit 2 (cannot start).
TEST_CASE("chorusd: an address in use is named plainly, for each listener") {
  TempDir tmp;
  std::string tokens = tmp.sub("tokens"), key = tmp.sub("cluster.key");
  REQUIRE(cli({"token", "create", "--principal", "ops", "--roles", "admin", "--tokens-file", tokens,
               "--out", tmp.sub("ops.token")})
              .code == 0);
  REQUIRE(cli({"cluster", "keys", "generate", "--out", key}).code == 0);
  Daemon first(tmp, tokens, "first",
               {"--gossip-listen", "127.0.0.1:0", "--cluster-key-file", key, "--metrics-addr",
                "127.0.0.1:0"});
  auto after = [&](const char* prefix) {
    auto line = first.process->waitForLine(prefix, 10s);
    REQUIRE(line.has_value());
    return line->substr(std::string(prefix).size());
  };
  std::string gossip = after("chorusd: gossip on ");
  std::string metrics = after("chorusd: metrics on http://");
  metrics = metrics.substr(0, metrics.find('/'));
  const std::string hint = ": address already in use (another process holds it; pick another port)";
  struct Case {
    std::vector<std::string> flags;
    std::string expected;
  };
  for (const Case& c : {
           Case{{"--listen", first.address}, "chorusd: cannot listen on " + first.address + hint},
           Case{{"--listen", "127.0.0.1:0", "--metrics-addr", metrics},
                "chorusd: cannot listen on " + metrics + hint},
           Case{{"--listen", "127.0.0.1:0", "--gossip-listen", gossip, "--cluster-key-file", key},
                "chorusd: cannot listen for gossip on " + gossip + hint},
       }) {
    std::vector<std::string> args = {"--node-id",       "second",      "--data-dir",
                                     tmp.sub("second"), "--log-level", "error",
                                     "--tokens-file",   tokens,        "--unsafe-no-sync"};
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    auto r = run(bin("CHORUSD_BIN"), args);
    CAPTURE(c.flags[1]);
    CHECK_MESSAGE(r.code == 2, shown(r));
    CHECK_MESSAGE(has(r, c.expected + "\n"), shown(r));
    CHECK_MESSAGE(!has(r, "toString()"), shown(r));
    CHECK_MESSAGE(!has(r, "bind("), shown(r));
  }
  CHECK(first.process->stop(SIGTERM, 10s) == 0);
}
