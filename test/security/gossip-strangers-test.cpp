// Issue 12, finding 6: strangers (no cluster key) holding a node's gossip
// connections must not keep a node with the key from joining. Real chorusd
// processes on loopback; the strangers connect from 127.0.0.2-6.
#include <dirent.h>
#include <doctest/doctest.h>

#include "../cluster/checks.h"
#include "gossip-strangers.h"

using namespace chorus::test::cluster;
using chorus::test::security::SilentFlood;

namespace {

// Open file descriptors of process `pid` (-1 if /proc does not say).
long openFds(pid_t pid) {
  DIR* dir = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (!dir) return -1;
  long n = 0;
  while (readdir(dir)) ++n;
  closedir(dir);
  return n - 2;  // . and ..
}

}  // namespace

TEST_CASE("security: 300 silent strangers reconnecting do not keep a node with the key out") {
  Harness h;
  h.start("n1");
  long fdsBefore = openFds(h.node("n1").pid());

  // 300 from 127.0.0.2 and 16 from each of four more addresses: more than
  // the 256 slots gossip had for every inbound connection, reopened as they
  // close, for at most 60 s.
  SilentFlood flood(h.node("n1").gossip(),
                    {"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"},
                    {300, 16, 16, 16, 16}, 60s);
  // Let the strangers take what they can (bounded: 3 s).
  auto settle = Clock::now();
  while (flood.opened() < flood.slots() && secondsSince(settle) < 3) {
    std::this_thread::sleep_for(50ms);
  }
  std::this_thread::sleep_for(1s);
  REQUIRE_MESSAGE(flood.opened() >= flood.slots(),
                  "the flood opened " << flood.opened() << " of " << flood.slots());
  long fdsFlooded = openFds(h.node("n1").pid());

  // A node with the key joins through n1 while the flood goes on.
  h.start("n2", {h.node("n1").gossip()});
  auto began = Clock::now();
  double joined = -1;
  while (secondsSince(began) < 40) {  // bounded; the assertion below is 5 s
    if (allAlive(h, {"n1", "n2"})) {
      joined = secondsSince(began);
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  REQUIRE(flood.open() > 0);  // still flooding when n2 joined (or gave up)
  long fdsDuring = openFds(h.node("n1").pid());
  flood.stop();
  MESSAGE("n2 joined n1 under the flood in "
          << joined << " s (-1: not within 40 s); flood: " << flood.opened() << " connects, "
          << flood.closed() << " closed by n1, " << flood.failed()
          << " failed at once; n1 open fds before/with the flood/at the join: " << fdsBefore << "/"
          << fdsFlooded << "/" << fdsDuring);
  CHECK_MESSAGE(joined >= 0, "n2 never joined n1\n" << aliveDetail(h, {"n1", "n2"}) << h.logs());
  CHECK(joined <= 5.0);
  // Strangers hold at most 64 of n1's descriptors (8 per address).
  if (fdsBefore >= 0 && fdsFlooded >= 0) CHECK(fdsFlooded - fdsBefore <= 64);

  // Once the flood is over the cluster works as before.
  cliWrite(h, "n2", {"put", "sku-strangers", "ann", "-r", "4", "-t", "after the flood"});
  CHECK(h.waitUntil("n1 has n2's write", 20s,
                    [&] { return getReview(h, "n1", "sku-strangers", "ann").has_value(); }));
  h.stopAll();
}
