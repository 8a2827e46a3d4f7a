// Convergence under a hostile network: random operation histories on 3-5
// replicas; deltas and whole states are delivered late, out of order, more
// than once, or dropped and re-sent later. Once everything has been delivered
// at least once, all replicas hold byte-identical canonical encodings.
#include <doctest/doctest.h>

#include <deque>

#include "crdt/history.h"
#include "support/seed.h"

using chorus::crdt::ReviewDoc;
using chorus::test::History;

namespace {

struct Message {
  int to;
  ReviewDoc payload;
};

}  // namespace

TEST_CASE("replicas converge despite duplicates, drops, resends and reordering") {
  uint64_t seed = chorus::test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 seeds(seed);
  int runs = chorus::test::testCases(10'000) / 20;  // 500 histories by default
  for (int run = 0; run < runs; ++run) {
    int replicas = 3 + static_cast<int>(seeds() % 3);
    History h(seeds(), replicas);
    auto& rng = h.rng();
    std::vector<Message> inFlight;
    std::vector<Message> dropped;            // to be re-sent later
    ReviewDoc everything(h.state(0).key());  // join of every delta: the answer

    int operations = 20 + static_cast<int>(rng() % 60);
    for (int i = 0; i < operations; ++i) {
      History::Step step = h.operate();
      everything.join(step.delta);
      for (int to = 0; to < replicas; ++to) inFlight.push_back({to, step.delta});
      // Now and then a replica ships its whole state (anti-entropy).
      if (rng() % 8 == 0) {
        int from = static_cast<int>(rng() % replicas);
        inFlight.push_back({static_cast<int>(rng() % replicas), h.state(from)});
      }
      // Deliver a random number of random in-flight messages.
      int deliveries = static_cast<int>(rng() % 4);
      for (int d = 0; d < deliveries && !inFlight.empty(); ++d) {
        size_t pick = rng() % inFlight.size();
        Message m = inFlight[pick];
        switch (rng() % 5) {
          case 0:  // dropped; re-sent after the partition heals
            dropped.push_back(m);
            break;
          case 1:  // duplicated: delivered now and again later
            h.deliver(m.to, m.payload);
            inFlight.push_back(m);
            break;
          default:
            h.deliver(m.to, m.payload);
        }
        inFlight.erase(inFlight.begin() + static_cast<long>(pick));
      }
    }
    // Heal: re-send what was dropped, then drain in random order.
    inFlight.insert(inFlight.end(), dropped.begin(), dropped.end());
    while (!inFlight.empty()) {
      size_t pick = rng() % inFlight.size();
      h.deliver(inFlight[pick].to, inFlight[pick].payload);
      inFlight.erase(inFlight.begin() + static_cast<long>(pick));
    }
    std::string expected = everything.encode();
    for (int r = 0; r < replicas; ++r) {
      CAPTURE(r);
      REQUIRE(h.state(r).encode() == expected);
    }
  }
}
