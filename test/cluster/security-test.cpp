// Security with real processes: nodes without the cluster key stay out,
// client tokens and per-author rules through the CLI, and a full key
// rotation (install, use, remove) under write load that loses nothing.
#include <doctest/doctest.h>

#include <atomic>

#include "checks.h"

using namespace chorus::test::cluster;
using chorus::test::Json;

namespace {

// A gossip counter of `status` (`chorus cluster status --json`); nullopt if
// the CLI does not report it.
std::optional<uint64_t> gossipCounter(const Json& status, const std::string& name) {
  const Json& v = status["gossip"][name];
  if (v.isNull()) return std::nullopt;
  return v.u64();
}

// `chorus token create` into h's tokens file; returns the token file path.
std::string grant(Harness& h, const std::string& principal, const std::string& roles) {
  auto r = run(bin("CHORUS_BIN"),
               {"token", "create", "--principal", principal, "--roles", roles, "--tokens-file",
                h.tmp().sub("tokens.txt")},
               20s);
  REQUIRE_MESSAGE(r.code == 0, "chorus token create: " << r.err);
  std::string path = h.tmp().sub(principal + ".token");
  std::ofstream(path) << r.out;
  return path;
}

std::string firstLine(const std::string& text) { return text.substr(0, text.find('\n')); }

// Each node's key fingerprints as `chorus cluster keys list --json` shows
// them: node -> "fp*,fp" (primary starred, in the listed order).
std::map<std::string, std::string> keyrings(Harness& h, const std::string& via) {
  std::map<std::string, std::string> out;
  Json j = h.chorusJson(via, {"cluster", "keys", "list"});
  for (const auto& id : h.ids()) {
    std::string ring;
    for (const auto& k : j["keys"][id].items()) {
      ring +=
          (ring.empty() ? "" : ",") + k["fingerprint"].str() + (k["primary"].boolean() ? "*" : "");
    }
    out[id] = ring;
  }
  return out;
}

}  // namespace

TEST_CASE("security: a node with another cluster key, or none, cannot join") {
  Harness h;
  h.start("n1");
  h.start("n2", {h.node("n1").gossip()});
  REQUIRE(h.waitUntil("n1 and n2 see each other", 30s, [&] { return allAlive(h, {"n1", "n2"}); }));

  // n3 has a key of its own and tries to join through n1.
  std::string otherKey = h.tmp().sub("other.key");
  writeClusterKeyFile(otherKey);
  h.keyFileFor["n3"] = otherKey;
  h.start("n3", {h.node("n1").gossip(), h.node("n2").gossip()});
  cliWrite(h, "n3", {"put", "leak", "mallory", "-r", "1", "-t", "should stay on n3"});

  // Two seconds: two probe periods, ten gossip and ten anti-entropy rounds.
  std::this_thread::sleep_for(2s);
  for (const auto& id : {"n1", "n2"}) {
    CAPTURE(id);
    // Asking n1 and n2 only: n3 would show (not asked) if it were a member.
    Json s = h.chorusJson(
        id, {"cluster", "status", "--nodes", h.node("n1").rpc() + "," + h.node("n2").rpc()});
    CHECK(entryOf(s, "n3").isNull());  // never became a member
    CHECK_FALSE(getReview(h, id, "leak", "mallory").has_value());
    CHECK(readFile(h.dataDir(id) + "/members").find("n3") == std::string::npos);
  }
  Json s1 = clusterStatus(h, "n1");
  auto refused = gossipCounter(s1, "auth_failures");
  REQUIRE(refused.has_value());
  CHECK(*refused > 0);
  MESSAGE("frames from the wrong-key node refused by n1: " << *refused);
  CHECK(peerState(clusterStatus(h, "n3"), "n1") != "alive");
  // Members still talk to each other.
  CHECK(allAlive(h, {"n1", "n2"}));

  // chorusd refuses to gossip without any key, and names the fix.
  auto noKey = run(bin("CHORUSD_BIN"),
                   {"--node-id", "n4", "--data-dir", h.tmp().sub("n4"), "--listen", "127.0.0.1:0",
                    "--no-auth", "--gossip-listen", "127.0.0.1:0"},
                   20s);
  CHECK(noKey.code == 1);
  CHECK_MESSAGE(noKey.err.find("cluster key") != std::string::npos, noKey.err);
  // A key file that holds no key is a configuration error too.
  std::string badKey = h.tmp().sub("bad.key");
  std::ofstream(badKey) << "not-a-key\n";
  REQUIRE(::chmod(badKey.c_str(), 0600) == 0);  // bad for what it holds, not its mode
  auto bad = run(bin("CHORUSD_BIN"),
                 {"--node-id", "n5", "--data-dir", h.tmp().sub("n5"), "--listen", "127.0.0.1:0",
                  "--no-auth", "--gossip-listen", "127.0.0.1:0", "--cluster-key-file", badKey},
                 20s);
  CHECK(bad.code == 1);
  CHECK_MESSAGE(bad.err.find("key") != std::string::npos, bad.err);
  h.stopAll();
}

TEST_CASE("security: tokens and authors through the CLI, then key rotation under write load") {
  auto began = Clock::now();
  Harness h;
  h.tokensFile = h.tmp().sub("tokens.txt");
  h.cliTokenFile = grant(h, "ops", "admin,reader");
  std::vector<std::string> writers = {"w1", "w2", "w3"};
  std::map<std::string, std::string> tokenOf;
  for (const auto& w : writers) tokenOf[w] = firstLine(readFile(grant(h, w, "writer")));
  h.start("n1");
  h.start("n2", {h.node("n1").gossip()});
  h.start("n3", {h.node("n1").gossip()});
  const std::vector<std::string> all = {"n1", "n2", "n3"};
  REQUIRE(h.waitUntil(
      "every node sees the others alive", 30s, [&] { return allAlive(h, all); },
      [&] { return aliveDetail(h, all); }));

  // Clients: no token, a wrong token, and the wrong principal are refused
  // (exit 7) with a message that says why.
  auto as = [&](const std::string& tokenFile, std::vector<std::string> args) {
    args.insert(args.begin(), {"--connect", h.node("n1").rpc()});
    if (!tokenFile.empty()) args.insert(args.begin(), {"--token-file", tokenFile});
    return run(bin("CHORUS_BIN"), args, 20s);
  };
  std::string wrong = h.tmp().sub("wrong.token");
  std::ofstream(wrong) << "chorus_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n";
  auto noToken = as("", {"review", "get", "p", "w1"});
  CHECK(noToken.code == 7);
  CHECK_MESSAGE(noToken.err.find("token") != std::string::npos, noToken.err);
  auto wrongToken = as(wrong, {"review", "get", "p", "w1"});
  CHECK(wrongToken.code == 7);
  CHECK_MESSAGE(wrongToken.err.find("token") != std::string::npos, wrongToken.err);
  auto forged =
      as(h.tmp().sub("w2.token"), {"review", "put", "p", "w1", "-r", "1", "-t", "forged"});
  CHECK(forged.code == 7);
  CHECK_MESSAGE(forged.err.find("w1") != std::string::npos, forged.err);
  auto own = as(h.tmp().sub("w1.token"), {"review", "put", "p", "w1", "-r", "5", "-t", "mine"});
  CHECK_MESSAGE(own.code == 0, own.err);
  auto opsWrite = as(h.cliTokenFile, {"review", "put", "p", "ops", "-r", "5"});
  CHECK(opsWrite.code == 7);  // admin, reader: not a writer
  auto writerAdmin = as(h.tmp().sub("w1.token"), {"cluster", "heal"});
  CHECK(writerAdmin.code != 0);  // admin operations need admin
  CHECK(getReview(h, "n1", "p", "w1").has_value());

  // Writers on every node, each as its own principal, for the whole rotation.
  std::atomic<bool> stop{false};
  std::vector<std::map<std::string, std::string>> acked(all.size());  // product -> title
  std::vector<std::string> errors(all.size());
  std::vector<std::thread> threads;
  for (size_t w = 0; w < all.size(); ++w) {
    threads.emplace_back([&, w] {
      chorus::api::Client::Options options;
      options.token = tokenOf[writers[w]];
      auto client = chorus::api::Client::connect(h.node(all[w]).rpc(), options);
      if (!client.ok()) {
        errors[w] = client.error().toString();
        return;
      }
      for (int i = 0; !stop.load() && i < 20'000; ++i) {
        chorus::WriteRequest r;
        r.op = chorus::WriteOp::kPut;
        r.product = "rot" + std::to_string(i % 400);
        r.author = writers[w];
        r.rating = 1 + uint32_t(i % 5);
        r.title = writers[w] + " write " + std::to_string(i);
        auto res = (*client)->write(r);
        if (!res.ok()) {
          errors[w] = res.error().toString();
          return;
        }
        acked[w][r.product] = r.title;
        std::this_thread::sleep_for(2ms);
      }
    });
  }

  auto before = keyrings(h, "n1");
  std::string oldFp = before["n1"];
  REQUIRE(oldFp.size() > 1);
  oldFp.pop_back();  // the primary star
  for (const auto& id : all) CHECK(before[id] == oldFp + "*");

  std::string newKey = h.tmp().sub("new.key");
  writeClusterKeyFile(newKey);
  std::this_thread::sleep_for(300ms);
  auto step = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"cluster", "keys"});
    auto r = h.chorus("n2", args);
    CHECK_MESSAGE(r.code == 0, r.out << r.err);
    MESSAGE(r.out);
  };
  // Removing the primary, or using a key that no node has, is refused and
  // changes nothing.
  CHECK(h.chorus("n2", {"cluster", "keys", "use", "--key-file", newKey}).code == 3);
  CHECK(h.chorus("n2", {"cluster", "keys", "remove", oldFp}).code == 3);
  step({"install", "--key-file", newKey});
  std::this_thread::sleep_for(500ms);
  auto installed = keyrings(h, "n1");
  // The primary is listed first: "old*,new".
  std::string newFp = installed["n1"].substr(installed["n1"].find(',') + 1);
  for (const auto& id : all) CHECK(installed[id] == oldFp + "*," + newFp);
  step({"use", "--key-file", newKey});
  std::this_thread::sleep_for(500ms);
  step({"remove", "--key-file", h.clusterKeyFile()});
  std::this_thread::sleep_for(500ms);
  stop = true;
  for (auto& t : threads) t.join();
  for (size_t w = 0; w < all.size(); ++w) {
    CHECK_MESSAGE(errors[w].empty(), writers[w] << "'s writer: " << errors[w]);
  }

  auto after = keyrings(h, "n1");
  for (const auto& id : all) CHECK_MESSAGE(after[id] == newFp + "*", id << ": " << after[id]);
  converge(h, "n1");
  for (const auto& id : all) {
    CAPTURE(id);
    Json s = clusterStatus(h, id);
    auto failures = gossipCounter(s, "auth_failures");
    REQUIRE(failures.has_value());
    CHECK_MESSAGE(*failures == 0, id << " refused " << *failures << " frames during rotation");
  }
  size_t total = 0;
  chorus::api::Client::Options reader;
  reader.token = firstLine(readFile(h.cliTokenFile));
  for (const auto& id : all) {
    auto client = chorus::api::Client::connect(h.node(id).rpc(), reader);
    REQUIRE_MESSAGE(client.ok(), client.error().toString());
    for (size_t w = 0; w < all.size(); ++w) {
      size_t lost = 0;
      for (const auto& [product, title] : acked[w]) {
        auto r = (*client)->get(product, writers[w]);
        if (!r.ok() || r->title != title) ++lost;
      }
      CHECK_MESSAGE(lost == 0, lost << " of " << writers[w] << "'s " << acked[w].size()
                                    << " last acknowledged writes differ on " << id);
    }
  }
  for (const auto& a : acked) total += a.size();

  // A restarted node keeps the rotated keyring from its data dir, though it
  // is started with the old key file again.
  h.node("n2").stop(SIGTERM, 15s);
  h.restart("n2");
  REQUIRE(h.waitUntil(
      "n2 is back among its peers", 30s, [&] { return allAlive(h, all); },
      [&] { return aliveDetail(h, all); }));
  CHECK(keyrings(h, "n1")["n2"] == newFp + "*");
  chorus::api::Client::Options w1;
  w1.token = tokenOf["w1"];
  {
    auto client = chorus::api::Client::connect(h.node("n1").rpc(), w1);
    REQUIRE(client.ok());
    chorus::WriteRequest r;
    r.op = chorus::WriteOp::kPut;
    r.product = "after-restart";
    r.author = "w1";
    r.rating = 4;
    r.title = "after";
    REQUIRE((*client)->write(r).ok());
  }
  REQUIRE(h.waitUntil("a write after the restart reaches n2", 30s,
                      [&] { return getReview(h, "n2", "after-restart", "w1").has_value(); }));
  h.stopAll();
  MESSAGE("rotation test: " << total << " keys with acknowledged writes; took "
                            << secondsSince(began) << " s");
}
