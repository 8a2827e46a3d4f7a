// End to end: chorusd as a child process on an ephemeral loopback port,
// driven by the C++ client and by the `chorus` CLI.
// Needs CHORUSD_BIN and CHORUS_BIN (set by test/meson.build).
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <set>
#include <thread>

#include "api/auth.h"
#include "api/client.h"
#include "gossip/keyring.h"
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

struct Daemon {
  std::unique_ptr<Process> process;
  std::string address;
};

// A cluster key file (0600) for --cluster-key-file: one base64 key.
std::string writeClusterKeyFile(const TempDir& tmp) {
  std::string path = tmp.sub("cluster.key");
  FILE* f = std::fopen(path.c_str(), "w");
  REQUIRE(f != nullptr);
  std::fprintf(f, "%s\n", chorus::gossip::generateClusterKey().c_str());
  std::fclose(f);
  REQUIRE(::chmod(path.c_str(), 0600) == 0);
  return path;
}

// chorusd without tokens (--no-auth): these tests are about the CLI and
// the daemon; tokens are tested in rpc-auth-test.cpp and test/cluster.
Daemon startDaemon(const std::string& dataDir, std::vector<std::string> extra = {},
                   const std::string& nodeId = "e2e") {
  std::vector<std::string> args = {"--node-id",   nodeId,     "--data-dir",
                                   dataDir,       "--listen", "127.0.0.1:0",
                                   "--log-level", "warn",     "--no-auth"};
  args.insert(args.end(), extra.begin(), extra.end());
  Daemon d;
  d.process = std::make_unique<Process>(bin("CHORUSD_BIN"), args);
  auto line = d.process->waitForLine("chorusd: listening on ", 10s);
  REQUIRE_MESSAGE(line.has_value(), "chorusd did not start: " << d.process->output());
  d.address = line->substr(line->find(" on ") + 4);
  return d;
}

struct CliResult {
  int code;
  std::string out;
};

CliResult cli(const std::string& address, std::vector<std::string> args) {
  args.insert(args.begin(), {"--connect", address});
  Process p(bin("CHORUS_BIN"), args);
  std::string out = p.readAll(20s);
  int code = p.wait(10s);
  return {code, out};
}

}  // namespace

TEST_CASE("e2e: the CLI drives every operation with documented exit codes") {
  TempDir tmp;
  auto d = startDaemon(tmp.sub("data"));
  const auto& a = d.address;

  auto put = cli(a, {"review", "put", "kettle-1", "ann", "--rating", "5", "--title", "Boils fast",
                     "--body", "Quiet too"});
  CHECK(put.code == 0);
  CHECK(put.out.find("Boils fast") != std::string::npos);
  CHECK(cli(a, {"review", "put", "kettle-1", "bob", "-r", "2", "-t", "Leaks"}).code == 0);
  CHECK(cli(a, {"review", "vote", "kettle-1", "ann", "bob"}).code == 0);
  CHECK(cli(a, {"review", "vote", "kettle-1", "ann", "cy"}).code == 0);
  CHECK(cli(a, {"review", "unvote", "kettle-1", "ann", "cy"}).code == 0);
  CHECK(cli(a, {"review", "tag", "kettle-1", "ann", "gift"}).code == 0);
  CHECK(cli(a, {"review", "tag", "kettle-1", "ann", "steel"}).code == 0);
  CHECK(cli(a, {"review", "untag", "kettle-1", "ann", "steel"}).code == 0);
  CHECK(cli(a, {"review", "moderate", "kettle-1", "bob", "--visibility", "hidden", "--reason",
                "abusive"})
            .code == 0);
  CHECK(cli(a, {"review", "reply", "kettle-1", "ann", "Thank you!"}).code == 0);

  auto got = cli(a, {"--json", "review", "get", "kettle-1", "ann"});
  CHECK(got.code == 0);
  CHECK(got.out.find("\"helpful\":1") != std::string::npos);
  CHECK(got.out.find("\"tags\":[\"gift\"]") != std::string::npos);
  CHECK(got.out.find("\"reply\":\"Thank you!\"") != std::string::npos);
  auto bob = cli(a, {"--json", "review", "get", "kettle-1", "bob"});
  CHECK(bob.out.find("\"visibility\":\"hidden\"") != std::string::npos);

  auto list = cli(a, {"--json", "reviews", "list", "kettle-1", "--order", "highest"});
  CHECK(list.code == 0);
  CHECK(list.out.find("\"author\":\"ann\"") < list.out.find("\"author\":\"bob\""));
  auto table = cli(a, {"reviews", "list", "kettle-1", "--limit", "1"});
  CHECK(table.code == 0);
  CHECK(table.out.find("AUTHOR") != std::string::npos);
  CHECK(table.out.find("more: --cursor") != std::string::npos);

  auto summary = cli(a, {"--json", "product", "summary", "kettle-1"});
  CHECK(summary.code == 0);
  CHECK(summary.out.find("\"count\":2") != std::string::npos);
  CHECK(summary.out.find("\"histogram\":[0,1,0,0,1]") != std::string::npos);
  auto mine = cli(a, {"--json", "author", "reviews", "ann"});
  CHECK(mine.out.find("\"product\":\"kettle-1\"") != std::string::npos);
  auto status = cli(a, {"--json", "node", "status"});
  CHECK(status.code == 0);
  CHECK(status.out.find("\"node_id\":\"e2e\"") != std::string::npos);
  CHECK(status.out.find("\"keys\":2") != std::string::npos);

  CHECK(cli(a, {"review", "delete", "kettle-1", "bob"}).code == 0);
  CHECK(cli(a, {"review", "get", "kettle-1", "bob"}).code == 2);  // not found
  CHECK(cli(a, {"review", "delete", "kettle-1", "bob"}).code == 2);
  auto invalid = cli(a, {"review", "put", "kettle-1", "cy", "--rating", "7"});
  CHECK(invalid.code == 3);  // invalid argument
  CHECK(invalid.out.find("rating") != std::string::npos);
  CHECK(cli(a, {"review", "put", "kettle 1", "cy", "-r", "3"}).code == 3);
  CHECK(cli(a, {"review", "vote", "kettle-1", "ann", "ann"}).code == 7);  // forbidden
  CHECK(cli(a, {"review", "frobnicate"}).code == 1);                      // usage
  CHECK(cli(a, {"review", "put", "kettle-1", "cy"}).code == 1);           // --rating missing
  CHECK(cli(a, {"--help"}).code == 0);
  CHECK(cli(a, {"review", "get", "kettle-1", "cy"}).code == 2);  // nothing was stored

  CHECK(d.process->stop(SIGTERM, 10s) == 0);
  CHECK(d.process->readAll(5s).find("chorusd: stopped") != std::string::npos);
  // Nobody listens there any more: unavailable.
  CHECK(cli(a, {"--timeout-ms", "2000", "node", "status"}).code == 4);
}

TEST_CASE("e2e: C++ client, restart keeps data, SIGINT stops cleanly") {
  TempDir tmp;
  {
    auto d = startDaemon(tmp.sub("data"));
    auto client = chorus::api::Client::connect(d.address);
    REQUIRE_MESSAGE(client.ok(), client.error().toString());
    for (int i = 0; i < 20; ++i) {
      chorus::WriteRequest r;
      r.op = chorus::WriteOp::kPut;
      r.product = "lamp";
      r.author = "u" + std::to_string(i);
      r.rating = 1 + i % 5;
      r.title = "t" + std::to_string(i);
      REQUIRE((*client)->write(r).ok());
    }
    auto bad = (*client)->get("lamp", std::string(129, 'x'));
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().code == chorus::ErrorCode::kInvalidArgument);
    CHECK(bad.error().message.rfind("author: ", 0) == 0);
    client.value().reset();
    CHECK(d.process->stop(SIGINT, 10s) == 0);
  }
  auto d = startDaemon(tmp.sub("data"));
  auto client = chorus::api::Client::connect(d.address);
  REQUIRE(client.ok());
  auto summary = (*client)->summary("lamp");
  REQUIRE(summary.ok());
  CHECK(summary->count == 20);
  // Paging with the cursor visits every review exactly once.
  std::set<std::string> authors;
  std::string cursor;
  int pages = 0;
  do {
    auto page = (*client)->list("lamp", chorus::storage::Order::kNewest, cursor, 6);
    REQUIRE(page.ok());
    for (const auto& r : page->reviews) CHECK(authors.insert(r.author).second);
    cursor = page->nextCursor;
  } while (!cursor.empty() && ++pages < 10);
  CHECK(authors.size() == 20);
  CHECK((*client)->get("lamp", "u7")->title == "t7");
}

TEST_CASE("e2e: `chorus watch` receives changes; concurrent CLI clients") {
  TempDir tmp;
  auto d = startDaemon(tmp.sub("data"));
  Process watcher(bin("CHORUS_BIN"), {"--connect", d.address, "--json", "watch", "mug", "--count",
                                      "3", "--for", "20"});
  REQUIRE(watcher.waitForLine("chorus: watching mug", 10s).has_value());

  std::vector<std::unique_ptr<Process>> writers;
  for (int i = 0; i < 3; ++i) {
    writers.push_back(std::make_unique<Process>(
        bin("CHORUS_BIN"), std::vector<std::string>{"--connect", d.address, "review", "put", "mug",
                                                    "w" + std::to_string(i), "-r", "4"}));
  }
  for (auto& w : writers) {
    w->readAll(20s);
    CHECK(w->wait(10s) == 0);
  }
  std::string out = watcher.readAll(20s);
  CHECK(watcher.wait(10s) == 0);
  for (int i = 0; i < 3; ++i) {
    CHECK(out.find("\"author\":\"w" + std::to_string(i) + "\"") != std::string::npos);
  }
  CHECK(out.find("\"op\":\"put\"") != std::string::npos);
  auto summary = cli(d.address, {"--json", "product", "summary", "mug"});
  CHECK(summary.out.find("\"count\":3") != std::string::npos);
}

TEST_CASE("e2e: chorusd with a tokens file: the CLI needs a token, and writes as its principal") {
  TempDir tmp;
  std::string alice = chorus::api::newToken(), ops = chorus::api::newToken();
  std::string tokens = tmp.sub("tokens");
  FILE* f = std::fopen(tokens.c_str(), "w");
  REQUIRE(f != nullptr);
  std::fprintf(f, "%s\n%s\n", chorus::api::tokenLine("alice", "writer", alice)->c_str(),
               chorus::api::tokenLine("ops", "admin", ops)->c_str());
  std::fclose(f);
  REQUIRE(::chmod(tokens.c_str(), 0600) == 0);
  Process p(bin("CHORUSD_BIN"), {"--node-id", "e2e", "--data-dir", tmp.sub("data"), "--listen",
                                 "127.0.0.1:0", "--log-level", "warn", "--tokens-file", tokens});
  auto line = p.waitForLine("chorusd: listening on ", 10s);
  REQUIRE_MESSAGE(line.has_value(), p.output());
  std::string a = line->substr(line->find(" on ") + 4);

  auto anonymous = cli(a, {"review", "put", "kettle-1", "alice", "-r", "5"});
  CHECK(anonymous.code == 7);
  CHECK(anonymous.out.find("requires a token") != std::string::npos);
  auto wrong = cli(a, {"--token", chorus::api::newToken(), "review", "get", "kettle-1", "alice"});
  CHECK(wrong.code == 7);
  CHECK(wrong.out.find("unknown token") != std::string::npos);

  CHECK(cli(a, {"--token", alice, "review", "put", "kettle-1", "alice", "-r", "5"}).code == 0);
  auto forged = cli(a, {"--token", alice, "review", "put", "kettle-1", "bob", "-r", "1"});
  CHECK(forged.code == 7);
  CHECK(forged.out.find("needs principal bob; you are alice") != std::string::npos);
  CHECK(cli(a, {"--token", alice, "node", "status"}).code == 7);  // admin only
  CHECK(cli(a, {"--token", ops, "node", "status"}).code == 0);
  CHECK(cli(a, {"--token", ops, "review", "get", "kettle-1", "bob"}).code == 2);  // not stored
  CHECK(p.stop(SIGTERM, 10s) == 0);
}

TEST_CASE("e2e: chorusd refuses bad flags and a locked data dir") {
  TempDir tmp;
  {
    Process p(bin("CHORUSD_BIN"), {"--data-dir", tmp.sub("x")});  // --node-id missing
    p.readAll(10s);
    CHECK(p.wait(10s) == 1);
  }
  {
    Process p(bin("CHORUSD_BIN"),
              {"--node-id", "n", "--data-dir", tmp.sub("x"), "--listen", "nonsense"});
    p.readAll(10s);
    CHECK(p.wait(10s) == 1);
  }
  {
    // An RPC server needs tokens or an explicit --no-auth.
    Process p(bin("CHORUSD_BIN"),
              {"--node-id", "n", "--data-dir", tmp.sub("y"), "--listen", "127.0.0.1:0"});
    std::string out = p.readAll(10s);
    CHECK(p.wait(10s) != 0);
    CHECK(out.find("needs a tokens file (--tokens-file)") != std::string::npos);
  }
  auto d = startDaemon(tmp.sub("data"));
  Process second(bin("CHORUSD_BIN"), {"--node-id", "n2", "--data-dir", tmp.sub("data"), "--listen",
                                      "127.0.0.1:0", "--no-auth"});
  std::string out = second.readAll(10s);
  CHECK(second.wait(10s) == 2);
  CHECK(out.find("cannot start") != std::string::npos);
  // A config file works like flags.
  std::string config = tmp.sub("chorusd.toml");
  FILE* f = std::fopen(config.c_str(), "w");
  REQUIRE(f != nullptr);
  std::fprintf(f,
               "node-id = \"from-config\"\ndata-dir = \"%s\"\nlisten = \"127.0.0.1:0\"\n"
               "no-auth = true\n",
               tmp.sub("cfg").c_str());
  std::fclose(f);
  Process fromConfig(bin("CHORUSD_BIN"), {"--config", config});
  auto line = fromConfig.waitForLine("chorusd: listening on ", 10s);
  REQUIRE(line.has_value());
  auto status = cli(line->substr(line->find(" on ") + 4), {"--json", "node", "status"});
  CHECK(status.out.find("\"node_id\":\"from-config\"") != std::string::npos);
  CHECK(fromConfig.stop(SIGTERM, 10s) == 0);
}

TEST_CASE("e2e: cluster commands against a node without a cluster say how to get one") {
  TempDir tmp;
  auto d = startDaemon(tmp.sub("data"));
  for (std::vector<std::string> args : {std::vector<std::string>{"cluster", "status"},
                                        {"cluster", "heal"},
                                        {"cluster", "partition", "--isolate", "n2"},
                                        {"cluster", "converge", "--timeout", "1s"},
                                        {"cluster", "leave"},
                                        {"cluster", "remove", "n2"}}) {
    CAPTURE(args[1]);
    auto r = cli(d.address, args);
    CHECK(r.code == 4);
    CHECK(r.out.find("--gossip-listen") != std::string::npos);
  }
  auto status = cli(d.address, {"--json", "node", "status"});
  CHECK(status.out.find("\"gossip_address\":\"\"") != std::string::npos);
  // Usage errors are found before connecting.
  CHECK(cli(d.address, {"cluster", "partition"}).code == 1);
  CHECK(cli(d.address, {"cluster", "partition", "--split", "n1,n2"}).code == 1);
  CHECK(cli(d.address, {"cluster", "partition", "--split", "n1,/n2"}).code == 1);
  CHECK(cli(d.address, {"cluster", "partition", "--isolate", "n1", "--split", "n1/n2"}).code == 1);
  CHECK(cli(d.address, {"cluster", "converge", "--timeout", "soon"}).code == 1);
  CHECK(cli(d.address, {"cluster", "partition", "--split", "a/b/c"}).code == 1);
  CHECK(cli(d.address, {"cluster", "leave", "--timeout", "soon"}).code == 1);
  CHECK(cli(d.address, {"cluster", "leave", "--timeout", "6m"}).code == 1);
  CHECK(cli(d.address, {"cluster", "remove"}).code == 1);  // which node?
}

TEST_CASE("e2e: a one-node cluster: gossip flags, cluster commands and their exit codes") {
  TempDir tmp;
  auto d =
      startDaemon(tmp.sub("data"), {"--gossip-listen", "127.0.0.1:0", "--anti-entropy-interval",
                                    "200ms", "--cluster-key-file", writeClusterKeyFile(tmp)});
  auto gossipLine = d.process->waitForLine("chorusd: gossip on ", 10s);
  REQUIRE_MESSAGE(gossipLine.has_value(), d.process->output());
  std::string gossip = gossipLine->substr(gossipLine->find(" on ") + 4);
  CHECK(gossip.rfind("127.0.0.1:", 0) == 0);
  CHECK(gossip != "127.0.0.1:0");
  const auto& a = d.address;
  REQUIRE(cli(a, {"review", "put", "kettle-1", "ann", "-r", "5"}).code == 0);

  auto status = cli(a, {"cluster", "status"});
  CHECK(status.code == 0);
  CHECK(status.out.find("self") != std::string::npos);
  auto json = cli(a, {"--json", "cluster", "status"});
  CHECK(json.code == 0);
  CHECK(json.out.find("\"node_id\":\"e2e\"") != std::string::npos);
  CHECK(json.out.find("\"keys\":1") != std::string::npos);
  CHECK(json.out.find("\"gossip_address\":\"" + gossip + "\"") != std::string::npos);
  CHECK(cli(a, {"--json", "node", "status"}).out.find("\"gossip_address\":\"" + gossip + "\"") !=
        std::string::npos);

  // Unknown ids: exit 3, naming the ids that are known.
  auto unknown = cli(a, {"cluster", "partition", "--isolate", "n9"});
  CHECK(unknown.code == 3);
  CHECK(unknown.out.find("unknown node id 'n9'") != std::string::npos);
  CHECK(unknown.out.find("known ids: e2e") != std::string::npos);
  CHECK(cli(a, {"cluster", "partition", "--split", "e2e/n9"}).code == 3);
  CHECK(cli(a, {"cluster", "partition", "--split", "e2e/e2e"}).code == 3);
  auto alone = cli(a, {"cluster", "partition", "--isolate", "e2e"});
  CHECK(alone.code == 3);
  CHECK(alone.out.find("only node") != std::string::npos);

  auto converge = cli(a, {"cluster", "converge", "--timeout", "5s"});
  CHECK(converge.code == 0);
  CHECK(converge.out.find("converged in ") != std::string::npos);
  CHECK(converge.out.find("(1 nodes") != std::string::npos);
  auto heal = cli(a, {"--json", "cluster", "heal"});
  CHECK(heal.code == 0);
  CHECK(heal.out.find("{\"healed\":{\"e2e\":true},\"failed\":{}}") != std::string::npos);
  CHECK(d.process->stop(SIGTERM, 10s) == 0);
}

TEST_CASE("e2e: chorusd refuses bad cluster flags; --clock-offset skews its stamps") {
  TempDir tmp;
  for (std::vector<std::string> bad : {std::vector<std::string>{"--clock-offset", "5q"},
                                       {"--clock-offset", "soon"},
                                       {"--anti-entropy-interval", "0"},
                                       {"--anti-entropy-interval", "-1s"},
                                       {"--join", "127.0.0.1:1"},  // needs --gossip-listen
                                       {"--gossip-listen", "127.0.0.1:0", "--join", "nohostport"},
                                       {"--gossip-listen", "nonsense"},
                                       {"--region", "eu"},  // needs --gossip-listen
                                       {"--rejoin"},
                                       {"--forget-dead-after", "1h"},
                                       {"--gossip-listen", "127.0.0.1:0", "--region", "us east"},
                                       {"--gossip-listen", "127.0.0.1:0", "--region", ""},
                                       {"--gossip-listen", "127.0.0.1:0", "--region",
                                        std::string(65, 'r')},
                                       {"--gossip-listen", "127.0.0.1:0", "--forget-dead-after",
                                        "soon"},
                                       {"--gossip-listen", "127.0.0.1:0", "--forget-dead-after",
                                        "500ms"}}) {
    CAPTURE(bad[0]);
    std::vector<std::string> args = {"--node-id", "n",           "--data-dir", tmp.sub("x"),
                                     "--listen",  "127.0.0.1:0", "--no-auth"};
    args.insert(args.end(), bad.begin(), bad.end());
    Process p(bin("CHORUSD_BIN"), args);
    std::string out = p.readAll(10s);
    CHECK(p.wait(10s) == 1);
    CHECK(out.find("chorusd: ") != std::string::npos);
    if (bad.size() > 2 && (bad[2] == "--region" || bad[2] == "--forget-dead-after")) {
      CHECK(out.find(bad[2] + ": ") != std::string::npos);  // names the flag
    }
  }
  {
    Process p(bin("CHORUSD_BIN"), {"--node-id", "n", "--data-dir", tmp.sub("x"), "--listen",
                                   "127.0.0.1:0", "--no-auth", "--gossip-listen", "127.0.0.1:0",
                                   "--region", "us east"});
    std::string out = p.readAll(10s);
    CHECK(p.wait(10s) == 1);
    CHECK(out.find("--region: 'us east' has a character that is not allowed") !=
          std::string::npos);
  }

  // A node 5 minutes fast stamps its edits 5 minutes ahead.
  auto d = startDaemon(tmp.sub("fast"), {"--clock-offset", "5m"});
  auto put = cli(d.address, {"--json", "review", "put", "kettle-1", "ann", "-r", "3"});
  REQUIRE(put.code == 0);
  auto at = put.out.find("\"edited_at_ms\":");
  REQUIRE(at != std::string::npos);
  int64_t edited = std::stoll(put.out.substr(at + 15));
  int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  CHECK(edited - now > 240'000);
  CHECK(edited - now < 360'000);
  CHECK(d.process->stop(SIGTERM, 10s) == 0);

  // The gossip flags work from a config file too.
  std::string config = tmp.sub("chorusd.toml");
  FILE* f = std::fopen(config.c_str(), "w");
  REQUIRE(f != nullptr);
  std::fprintf(f,
               "node-id = \"cfg\"\ndata-dir = \"%s\"\nlisten = \"127.0.0.1:0\"\n"
               "gossip-listen = \"127.0.0.1:0\"\nclock-offset = \"-30s\"\n"
               "anti-entropy-interval = \"500ms\"\nno-auth = true\ncluster-key-file = \"%s\"\n",
               tmp.sub("cfg").c_str(), writeClusterKeyFile(tmp).c_str());
  std::fclose(f);
  Process fromConfig(bin("CHORUSD_BIN"), {"--config", config});
  REQUIRE(fromConfig.waitForLine("chorusd: listening on ", 10s).has_value());
  CHECK(fromConfig.waitForLine("chorusd: gossip on ", 10s).has_value());
  CHECK(fromConfig.stop(SIGTERM, 10s) == 0);
}

namespace {
// Polls `chorus ... args` until its output has `needle` (10 s).
bool cliEventually(const std::string& address, const std::vector<std::string>& args,
                   const std::string& needle) {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cli(address, args).out.find(needle) != std::string::npos) return true;
    std::this_thread::sleep_for(100ms);
  }
  return false;
}
}  // namespace

TEST_CASE("e2e: two regions: --split by region name, leave and remove, and their JSON") {
  TempDir tmp;
  std::string key = writeClusterKeyFile(tmp);
  auto d1 = startDaemon(tmp.sub("n1"),
                        {"--gossip-listen", "127.0.0.1:0", "--anti-entropy-interval", "100ms",
                         "--cluster-key-file", key, "--region", "us"},
                        "n1");
  auto g1 = d1.process->waitForLine("chorusd: gossip on ", 10s);
  REQUIRE(g1.has_value());
  auto d2 = startDaemon(tmp.sub("n2"),
                        {"--gossip-listen", "127.0.0.1:0", "--anti-entropy-interval", "100ms",
                         "--cluster-key-file", key, "--region", "eu", "--forget-dead-after", "2h",
                         "--join", g1->substr(g1->find(" on ") + 4)},
                        "n2");
  const auto& a = d1.address;
  std::vector<std::string> nodes = {"--nodes", d2.address};
  auto with = [&](std::vector<std::string> args) {
    args.insert(args.end(), nodes.begin(), nodes.end());
    return args;
  };
  REQUIRE(cliEventually(a, with({"cluster", "status"}), "alive"));

  auto status = cli(a, with({"--json", "cluster", "status"}));
  CHECK(status.code == 0);
  CHECK(status.out.find("{\"node_id\":\"n1\",\"region\":\"us\",\"nodes\":[") == 0);
  CHECK(status.out.find("\"node_id\":\"n2\",\"rpc_address\":\"" + d2.address + "\"") !=
        std::string::npos);
  CHECK(status.out.find("\"region\":\"eu\",\"state\":\"alive\",\"left\":false") !=
        std::string::npos);
  CHECK(status.out.find("\"incarnation\":") != std::string::npos);
  CHECK(status.out.find("\"active\":") != std::string::npos);
  CHECK(status.out.find("\"probes\":") != std::string::npos);
  CHECK(status.out.find("phi") == std::string::npos);
  auto table = cli(a, with({"cluster", "status"}));
  CHECK(table.out.find("REGION") != std::string::npos);
  CHECK(table.out.find(" eu ") != std::string::npos);
  CHECK(cli(d2.address, {"--json", "node", "status"}).out.find("\"region\":\"eu\"") !=
        std::string::npos);

  // Region names stand for their nodes; ids still work; unknown names fail.
  auto split = cli(a, with({"--json", "cluster", "partition", "--split", "us/eu"}));
  CHECK(split.code == 0);
  CHECK(split.out.find("{\"partitioned\":{\"n1\":[\"n2\"],\"n2\":[\"n1\"]},\"failed\":{}}") !=
        std::string::npos);
  CHECK(cli(a, with({"cluster", "heal"})).code == 0);
  CHECK(cli(a, with({"cluster", "partition", "--split", "n1/eu"})).code == 0);
  CHECK(cli(a, with({"cluster", "heal"})).code == 0);
  auto mars = cli(a, with({"cluster", "partition", "--split", "us/mars"}));
  CHECK(mars.code == 3);
  CHECK(mars.out.find("'mars' is neither a node id nor a region (regions: eu, us)") !=
        std::string::npos);
  CHECK(cli(a, with({"cluster", "partition", "--split", "us/n1"})).code == 3);  // both sides

  // remove: unknown -> 2, the node asked -> 3.
  auto nobody = cli(a, {"cluster", "remove", "nobody"});
  CHECK(nobody.code == 2);
  CHECK(nobody.out.find("'nobody'") != std::string::npos);
  auto self = cli(a, {"cluster", "remove", "n1"});
  CHECK(self.code == 3);
  CHECK(self.out.find("leave") != std::string::npos);

  // n2 leaves (asked at its listed address); n1 then sees it left.
  REQUIRE(cli(d2.address, {"review", "put", "kettle-1", "ann", "-r", "4"}).code == 0);
  auto leave = cli(a, with({"--json", "cluster", "leave", "n2", "--timeout", "5s"}));
  CHECK(leave.code == 0);
  CHECK(leave.out.find("{\"node_id\":\"n2\",\"left\":true,\"seconds\":") == 0);
  CHECK(cli(a, {"review", "get", "kettle-1", "ann"}).code == 0);  // handed on
  auto refused = cli(d2.address, {"review", "put", "kettle-1", "bob", "-r", "4"});
  CHECK(refused.code == 4);
  CHECK(refused.out.find("--rejoin") != std::string::npos);
  CHECK(cliEventually(a, with({"--json", "cluster", "status"}), "\"state\":\"left\",\"left\":true"));
  // It takes no part any more: converge and partitions leave it out.
  CHECK(cli(a, {"cluster", "converge", "--timeout", "5s"}).code == 0);
  auto removeJson = cli(a, {"--json", "cluster", "remove", "n2"});
  CHECK(removeJson.code == 0);
  CHECK(removeJson.out.find("{\"node_id\":\"n2\",\"removed\":true,\"asked\":\"n1\",\"was\":\"left\"}") !=
        std::string::npos);
  CHECK(d1.process->stop(SIGTERM, 10s) == 0);
  CHECK(d2.process->stop(SIGTERM, 10s) == 0);
}

TEST_CASE("e2e: node backup over RPC, verify-backup, restore, and chorusd --restore-from") {
  TempDir tmp;
  auto d = startDaemon(tmp.sub("data"));
  const auto& a = d.address;
  for (const char* author : {"ann", "bob", "cy"}) {
    REQUIRE(cli(a, {"review", "put", "kettle-1", author, "-r", "4", "-t", "Fine"}).code == 0);
  }
  auto status = cli(a, {"--json", "node", "status"});
  REQUIRE(status.code == 0);
  auto field = [](const std::string& out, const std::string& name) {
    auto at = out.find("\"" + name + "\":");
    REQUIRE_MESSAGE(at != std::string::npos, name << " not in " << out);
    at += name.size() + 3;
    auto end = out.find_first_of(",}", at);
    std::string v = out.substr(at, end - at);
    if (!v.empty() && v.front() == '"') v = v.substr(1, v.size() - 2);
    return v;
  };
  std::string replica = field(status.out, "replica_id");
  std::string root = field(status.out, "merkle_root");

  auto backup = cli(a, {"--json", "node", "backup", "--out", tmp.sub("bk")});
  REQUIRE_MESSAGE(backup.code == 0, backup.out);
  CHECK(field(backup.out, "keys") == "3");
  CHECK(field(backup.out, "replica_id") == replica);
  CHECK(field(backup.out, "merkle_root") == root);
  CHECK(field(backup.out, "node_id") == "e2e");
  CHECK(field(backup.out, "checksum").rfind("blake2b-256:", 0) == 0);
  // Not over an existing backup; not to a relative path on the node.
  auto again = cli(a, {"node", "backup", "--out", tmp.sub("bk")});
  CHECK(again.code == 3);
  CHECK(again.out.find("not empty") != std::string::npos);
  // The node went on serving, and writes after the backup are not in it.
  REQUIRE(cli(a, {"review", "put", "kettle-1", "dee", "-r", "1", "-t", "Late"}).code == 0);

  auto verified = cli(a, {"node", "verify-backup", tmp.sub("bk")});
  CHECK(verified.code == 0);
  CHECK(verified.out.find("verified:    ok") != std::string::npos);

  // A damaged copy: verify-backup and restore refuse it, and write nothing.
  std::filesystem::copy(tmp.sub("bk"), tmp.sub("bad"));
  {
    FILE* f = std::fopen(tmp.sub("bad/data.mdb").c_str(), "r+b");
    REQUIRE(f != nullptr);
    std::fseek(f, 5000, SEEK_SET);
    int c = std::fgetc(f);
    std::fseek(f, 5000, SEEK_SET);
    std::fputc(c ^ 0x40, f);
    std::fclose(f);
  }
  auto bad = cli(a, {"node", "verify-backup", tmp.sub("bad")});
  CHECK(bad.code == 5);
  CHECK(bad.out.find("checksum") != std::string::npos);
  auto badRestore =
      cli(a, {"node", "restore", "--from", tmp.sub("bad"), "--data-dir", tmp.sub("r-bad")});
  CHECK(badRestore.code == 5);
  CHECK_FALSE(std::filesystem::exists(tmp.sub("r-bad/data.mdb")));
  Process badDaemon(bin("CHORUSD_BIN"),
                    {"--node-id", "r", "--data-dir", tmp.sub("r-bad2"), "--restore-from",
                     tmp.sub("bad"), "--listen", "127.0.0.1:0", "--no-auth"});
  std::string badOut = badDaemon.readAll(20s);
  CHECK(badDaemon.wait(10s) == 2);
  CHECK(badOut.find("--restore-from") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(tmp.sub("r-bad2/data.mdb")));

  // restore: a new replica id, unless --replace.
  auto restored =
      cli(a, {"--json", "node", "restore", "--from", tmp.sub("bk"), "--data-dir", tmp.sub("r1")});
  REQUIRE_MESSAGE(restored.code == 0, restored.out);
  CHECK(field(restored.out, "replica_id") == replica);
  CHECK(field(restored.out, "restored_replica_id") != replica);
  CHECK(field(restored.out, "replaced") == "false");
  auto replaced = cli(a, {"--json", "node", "restore", "--from", tmp.sub("bk"), "--data-dir",
                          tmp.sub("r2"), "--replace"});
  REQUIRE_MESSAGE(replaced.code == 0, replaced.out);
  CHECK(field(replaced.out, "restored_replica_id") == replica);
  auto twice = cli(a, {"node", "restore", "--from", tmp.sub("bk"), "--data-dir", tmp.sub("r1")});
  CHECK(twice.code == 3);
  CHECK(twice.out.find("already holds a store") != std::string::npos);

  // chorusd --restore-from: serves the backup's reviews under a new id.
  {
    auto r = startDaemon(tmp.sub("r3"), {"--restore-from", tmp.sub("bk")}, "r3");
    auto s = cli(r.address, {"--json", "node", "status"});
    REQUIRE(s.code == 0);
    CHECK(field(s.out, "keys") == "3");
    CHECK(field(s.out, "merkle_root") == root);
    CHECK(field(s.out, "replica_id") != replica);
    CHECK(cli(r.address, {"review", "get", "kettle-1", "ann"}).code == 0);
    CHECK(cli(r.address, {"review", "get", "kettle-1", "dee"}).code == 2);  // after the backup
    CHECK(r.process->stop(SIGTERM, 10s) == 0);
  }
  // Started again with the flag left in: refused, the restored store kept.
  Process restart(bin("CHORUSD_BIN"),
                  {"--node-id", "r3", "--data-dir", tmp.sub("r3"), "--restore-from", tmp.sub("bk"),
                   "--listen", "127.0.0.1:0", "--no-auth"});
  std::string restartOut = restart.readAll(20s);
  CHECK(restart.wait(10s) == 2);
  CHECK(restartOut.find("already holds a store") != std::string::npos);
  CHECK(d.process->stop(SIGTERM, 10s) == 0);
}
