// Crash loop: one chorusd of a 2-node cluster is SIGKILLed 200
// times while a client writes to it (with fsync, as in production), and
// restarted at once on the same data dir and ports; every tenth restart is
// also killed once while it starts, before it serves. A second client
// writes to the peer meanwhile, so kills also land while the victim merges
// pushed and repaired states. Afterwards every
// acknowledged write is there (an edited review shows its last acknowledged
// version: the node's clock stamps survive restarts), the node rejoins and
// converges with its peer, and its store passes Store::verify().
#include <doctest/doctest.h>

#include <atomic>
#include <mutex>

#include "../cluster/harness.h"
#include "api/client.h"
#include "storage/store.h"

using namespace chorus::test::cluster;

namespace {

constexpr int kKills = 200;
constexpr int kBurst = 5;  // acknowledged writes between kills, at least

struct Written {
  std::string title;
  bool acked = false;
};

// The writer: one thread, one connection at a time to the victim's current
// address, puts of new reviews and edits of earlier ones; every outcome
// recorded (an error means unknown: it may or may not have committed).
struct Writer {
  std::string product;
  useconds_t pauseUs = 0;  // between writes
  std::mutex mu;
  std::string address;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> acked{0}, unknown{0};
  std::map<std::string, std::vector<Written>> byAuthor;  // only the writer thread, until joined

  void loop() {
    uint64_t n = 0;
    chorus::api::Client::Options options;
    options.timeout = 2s;
    while (!stop.load()) {
      std::string addr;
      {
        std::lock_guard lock(mu);
        addr = address;
      }
      auto client = chorus::api::Client::connect(addr, options);
      if (!client.ok()) {
        std::this_thread::sleep_for(2ms);
        continue;
      }
      while (!stop.load()) {
        ++n;
        std::string author = (n % 4 == 0 && !byAuthor.empty())
                                 ? "w" + std::to_string((n * 7919) % byAuthor.size())
                                 : "w" + std::to_string(byAuthor.size());
        auto& versions = byAuthor[author];
        chorus::WriteRequest w;
        w.op = chorus::WriteOp::kPut;
        w.product = product;
        w.author = author;
        w.rating = uint32_t(1 + n % 5);
        w.title = author + "-v" + std::to_string(versions.size());
        w.body = "write " + std::to_string(n);
        auto r = (*client)->write(w);
        versions.push_back({w.title, r.ok()});
        if (!r.ok()) {
          ++unknown;
          break;
        }
        ++acked;
        if (pauseUs > 0) usleep(pauseUs);
      }
    }
  }
};

chorus::Result<std::string> rootOf(const std::string& address) {
  chorus::api::Client::Options options;
  options.timeout = 3s;
  auto c = chorus::api::Client::connect(address, options);
  if (!c.ok()) return c.error();
  auto s = (*c)->status();
  if (!s.ok()) return s.error();
  return std::string(s->merkleRoot.begin(), s->merkleRoot.end());
}

}  // namespace

TEST_CASE("chaos: chorusd SIGKILLed 200 times under write load keeps every acknowledged write") {
  auto began = Clock::now();
  Harness h;
  h.start("n1");
  const std::string dataDir = h.tmp().sub("victim");
  const std::string log = h.tmp().sub("victim.log");
  auto args = [&](const std::string& rpcPort, const std::string& gossipPort) {
    return std::vector<std::string>{"--node-id",
                                    "n2",
                                    "--data-dir",
                                    dataDir,
                                    "--listen",
                                    "127.0.0.1:" + rpcPort,
                                    "--gossip-listen",
                                    "127.0.0.1:" + gossipPort,
                                    "--join",
                                    h.node("n1").gossip(),
                                    "--anti-entropy-interval",
                                    "200",
                                    "--cluster-key-file",
                                    h.clusterKeyFile(),
                                    "--no-auth"};
  };
  // Fsync on: this is the durability a production node has.
  auto victim = std::make_unique<Daemon>(log, args("0", "0"));
  REQUIRE_MESSAGE(victim->waitStarted(true, 20s), victim->ownLog());

  Writer writer, peerWriter;
  writer.product = "crash";
  writer.address = victim->rpc();
  // Writes to the peer too, so the victim is also killed while it merges
  // states pushed and repaired from n1.
  peerWriter.product = "crash-peer";
  peerWriter.pauseUs = 2000;
  peerWriter.address = h.node("n1").rpc();
  std::thread thread([&] { writer.loop(); });
  std::thread peerThread([&] { peerWriter.loop(); });
  struct Join {
    Writer& w;
    std::thread& t;
    ~Join() {
      w.stop = true;
      if (t.joinable()) t.join();
    }
  } joinOnExit{writer, thread}, joinPeerOnExit{peerWriter, peerThread};

  int kills = 0, fallbacks = 0, earlyKills = 0;
  double restartTotal = 0;
  for (; kills < kKills; ++kills) {
    uint64_t target = writer.acked.load() + kBurst;
    auto deadline = Clock::now() + 20s;
    while (writer.acked.load() < target && Clock::now() < deadline) usleep(1000);
    REQUIRE_MESSAGE(writer.acked.load() >= target, "no acknowledged writes in 20 s after restart "
                                                       << kills << "\n"
                                                       << tail(victim->ownLog(), 4000));
    std::string rpcPort = Harness::port(victim->rpc()),
                gossipPort = Harness::port(victim->gossip());
    REQUIRE(victim->stop(SIGKILL, 10s) == 128 + SIGKILL);
    auto t0 = Clock::now();
    if (kills % 10 == 9) {
      // Also killed while starting (opening the store, before it serves).
      Daemon early(log, args(rpcPort, gossipPort));
      usleep(useconds_t(1000 * (kills * 7 % 30)));
      // (It may have failed by itself first, e.g. on a port taken meanwhile.)
      CHECK(early.stop(SIGKILL, 10s) >= 0);
      ++earlyKills;
    }
    victim = std::make_unique<Daemon>(log, args(rpcPort, gossipPort));
    if (!victim->waitStarted(true, 20s)) {
      // A port was taken meanwhile (an ephemeral port of some connection).
      ++fallbacks;
      victim = std::make_unique<Daemon>(log, args("0", "0"));
      REQUIRE_MESSAGE(victim->waitStarted(true, 20s), tail(victim->ownLog(), 4000));
    }
    restartTotal += secondsSince(t0);
    std::lock_guard lock(writer.mu);
    writer.address = victim->rpc();
  }
  uint64_t target = writer.acked.load() + kBurst;
  while (writer.acked.load() < target && secondsSince(began) < 200) usleep(1000);
  writer.stop = true;
  peerWriter.stop = true;
  thread.join();
  peerThread.join();
  MESSAGE(kills << " kills (and " << earlyKills << " while starting) in " << secondsSince(began)
                << " s (restart " << restartTotal / kills << " s on average, " << fallbacks
                << " on new ports); " << writer.acked.load() << " acknowledged writes, "
                << writer.unknown.load() << " unknown; " << peerWriter.acked.load()
                << " acknowledged on n1");
  CHECK(kills >= kKills);

  // Every acknowledged write is on the victim: a review's last acknowledged
  // version, or a later one whose outcome was unknown.
  auto check = [&](const std::string& node, const std::string& address, const Writer& writer) {
    auto client = chorus::api::Client::connect(address);
    REQUIRE_MESSAGE(client.ok(), client.error().toString());
    int missing = 0;
    for (const auto& [author, versions] : writer.byAuthor) {
      int lastAck = -1;
      for (size_t i = 0; i < versions.size(); ++i) {
        if (versions[i].acked) lastAck = int(i);
      }
      auto got = (*client)->get(writer.product, author);
      bool ok;
      if (lastAck < 0) {
        ok = !got.ok() || got->title.rfind(author + "-v", 0) == 0;
      } else {
        ok = got.ok() && got->title == versions[size_t(lastAck)].title;
        for (size_t i = size_t(lastAck) + 1; !ok && got.ok() && i < versions.size(); ++i) {
          ok = got->title == versions[i].title;
        }
      }
      if (!ok && ++missing <= 10) {
        FAIL_CHECK(node << ": " << writer.product << "/" << author << ": "
                        << (got.ok() ? "title " + got->title : got.error().toString())
                        << ", last acknowledged "
                        << (lastAck < 0 ? std::string("none") : versions[size_t(lastAck)].title));
      }
    }
    CHECK_MESSAGE(missing == 0,
                  node << ": " << missing << " reviews lack their acknowledged write");
  };
  check("n2", victim->rpc(), writer);

  // It rejoined: n1 sees it alive and both reach the same root.
  REQUIRE(h.waitUntil("n1 and n2 equal roots and n2 alive on n1", 60s, [&] {
    auto a = rootOf(h.node("n1").rpc()), b = rootOf(victim->rpc());
    if (!a.ok() || !b.ok() || *a != *b) return false;
    auto c = chorus::api::Client::connect(h.node("n1").rpc());
    if (!c.ok()) return false;
    auto view = (*c)->cluster();
    if (!view.ok()) return false;
    for (const auto& m : view->members) {
      if (m.nodeId == "n2") return m.state == chorus::gossip::PeerState::kAlive;
    }
    return false;
  }));
  for (const Writer* w : {&writer, &peerWriter}) {
    check("n1", h.node("n1").rpc(), *w);
    check("n2", victim->rpc(), *w);
  }

  // The store verifies (Merkle tree and aggregates recomputed from the
  // documents): stop it cleanly and open its data dir here.
  REQUIRE(victim->stop(SIGTERM, 15s) == 0);
  chorus::storage::Options so;
  so.dir = dataDir;
  auto store = chorus::storage::Store::open(so);
  REQUIRE_MESSAGE(store.ok(), store.error().toString());
  auto verified = (*store)->verify();
  CHECK_MESSAGE(verified.ok(), (verified.ok() ? "" : verified.error().toString()));
  MESSAGE("crash loop took " << secondsSince(began) << " s");
}
