// chorus-sim's engine (tools/sim/): the pieces on their own, then whole
// simulated clusters running the real replication core: a short run with
// partitions and crashes that must lose nothing and converge, determinism
// (same seed, same trace hash; another seed, another trace), the same
// scenario on the in-memory and the LMDB stores, and scaled-down versions
// of issue 14's targets (bounded connections, dissemination cost, failure
// detection, joins, false positives under loss, a healed region split).
// Every bound on time is in simulated time, which is deterministic.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "api/temp-dir.h"
#include "gossip/replication-core.h"
#include "storage/merkle.h"
#include "storage/store.h"
#include "tools/sim/checker.h"
#include "tools/sim/event-loop.h"
#include "tools/sim/faults.h"
#include "tools/sim/memory-store.h"
#include "tools/sim/network.h"
#include "tools/sim/simulation.h"

using namespace chorus;
using namespace chorus::sim;

namespace {

using test::TempDir;

// What a failing run says, with the command that replays it.
std::string explain(const SimOptions& o, const SimResult& r) {
  std::string s = "seed " + std::to_string(o.seed) + ":";
  for (const auto& p : r.problems) s += "\n  " + p;
  return s;
}

crdt::ReviewDoc review(const std::string& product, const std::string& author, uint8_t rating,
                       uint64_t millis, crdt::ReplicaId replica) {
  crdt::ReviewDoc doc(crdt::ReviewKey{product, author});
  doc.write(rating, "t", "body of " + author,
            crdt::Stamp{crdt::Hlc::fromParts(millis, 0), replica});
  return doc;
}

}  // namespace

TEST_CASE("event loop: events run in (time, scheduling order), never before now") {
  EventLoop loop;
  std::string order;
  loop.at(20, [&] { order += "c"; });
  loop.at(10, [&] { order += "a"; });
  loop.at(10, [&] {
    order += "b";
    loop.at(0, [&] { order += "n"; });  // in the past: runs now, after those already due
  });
  loop.at(10, [&] { order += "B"; });
  loop.runUntil(15);
  CHECK(order == "abBn");
  CHECK(loop.now() == 15);
  loop.runUntil(100);
  CHECK(order == "abBnc");
}

TEST_CASE("rng: a seed gives one sequence; forks are independent") {
  Rng a(7), b(7), c(8);
  for (int i = 0; i < 100; ++i) CHECK(a.next() == b.next());
  CHECK(Rng(7).next() != c.next());
  Rng d(9);
  for (int i = 0; i < 1000; ++i) {
    uint64_t v = d.below(10);
    CHECK(v < 10);
    double u = d.unit();
    CHECK((u >= 0 && u < 1));
  }
}

TEST_CASE("network: regions, FIFO links, bandwidth and partitions") {
  NetworkOptions o;
  o.regions = {Region{"us", 500}, Region{"eu", 1000}};
  o.wanLatency = 80 * kMillis;
  o.jitter = 0.5;
  o.bandwidthBitsPerSecond = 8'000'000;  // 1 byte per microsecond
  Network net(o, {0, 1, 0, 1}, Rng(1));
  CHECK(net.latency(0, 2) == 500);
  CHECK(net.latency(1, 3) == 1000);
  CHECK(net.latency(0, 1) == 80 * kMillis);
  // FIFO: a small frame behind a large one never overtakes it.
  auto big = net.send(0, 0, 2, 10'000);
  auto small = net.send(0, 0, 2, 10);
  REQUIRE(big);
  REQUIRE(small);
  CHECK(big->departs == 10'000);
  CHECK(small->departs == 10'010);
  CHECK(small->arrives >= big->arrives);
  CHECK(big->arrives >= big->departs + 500);
  CHECK(big->arrives <= big->departs + 750);
  // A region split blocks across regions only, both ways.
  uint64_t split = net.add(Block{Block::Kind::kRegion, 0, -1});
  CHECK(net.blocked(0, 1));
  CHECK(net.blocked(1, 0));
  CHECK_FALSE(net.blocked(0, 2));
  CHECK_FALSE(net.send(100, 0, 1, 10));
  net.remove(split);
  CHECK_FALSE(net.blocked(0, 1));
  // One way: node 3's frames are lost, it still hears.
  net.add(Block{Block::Kind::kOneWay, -1, 3});
  CHECK(net.blocked(3, 1));
  CHECK_FALSE(net.blocked(1, 3));
  net.clear();
  CHECK_FALSE(net.anyBlocks());
}

TEST_CASE("flags: regions, durations and bandwidths parse; nonsense is refused") {
  auto regions = parseRegions("us:0.5ms,eu:2ms,ap");
  REQUIRE(regions.ok());
  REQUIRE(regions->size() == 3);
  CHECK(regions.value()[0].name == "us");
  CHECK(regions.value()[0].latency == 500);
  CHECK(regions.value()[1].latency == 2000);
  CHECK_FALSE(parseRegions("us:1ms,us:2ms").ok());
  CHECK_FALSE(parseRegions("us:fast").ok());
  CHECK(parseDuration("80ms").value() == 80'000);
  CHECK(parseDuration("2s").value() == 2'000'000);
  CHECK(parseDuration("1min").value() == 60'000'000);
  CHECK_FALSE(parseDuration("5 parsecs").ok());
  CHECK(parseBandwidth("100mbit").value() == 100'000'000);
  CHECK_FALSE(parseBandwidth("fast").ok());
}

TEST_CASE("faults: the schedule follows the seed and keeps nodes' faults apart") {
  FaultOptions o;
  o.begin = 10 * kSeconds;
  o.end = 40 * kSeconds;
  o.crashes = 5;
  o.pauses = 3;
  o.leaves = 1;
  o.splits = 2;
  o.joins = 2;
  o.finalSplit = 5 * kSeconds;
  Rng a(3), b(3);
  auto s1 = makeSchedule(o, 10, 3, a);
  auto s2 = makeSchedule(o, 10, 3, b);
  REQUIRE(s1.size() == s2.size());
  for (size_t i = 0; i < s1.size(); ++i) CHECK(describe(s1[i]) == describe(s2[i]));
  int joins = 0, finalSplits = 0;
  for (size_t i = 0; i < s1.size(); ++i) {
    const Fault& f = s1[i];
    CHECK(f.at >= o.begin);
    CHECK(f.at + f.duration <= o.end);
    if (i > 0) CHECK(s1[i - 1].at <= f.at);
    if (f.kind == Fault::Kind::kJoin) {
      ++joins;
      CHECK(f.target >= 10);
    }
    if (f.kind == Fault::Kind::kSplitRegion && f.at + f.duration == o.end &&
        f.duration == 5 * kSeconds) {
      ++finalSplits;
    }
  }
  CHECK(joins == 2);
  CHECK(finalSplits >= 1);
}

TEST_CASE("checker: follows writes to every member and finds what is missing") {
  Checker checker(3);
  for (int i = 0; i < 3; ++i) checker.setMember(i, true, 0);
  crdt::ReviewDoc doc = review("p", "a", 4, 1000, 7);
  uint32_t id = checker.acked(0, doc.key(), doc.content().stamp(), 100);
  CHECK(checker.incomplete() == 1);
  checker.stored(1, doc, 150);
  CHECK(checker.incomplete() == 1);
  // A node leaving counts no more.
  checker.setMember(2, false, 170);
  CHECK(checker.incomplete() == 0);
  CHECK(checker.writes()[id].allAt == 170);
  auto lat = checker.latenciesMillis(0, 1000);
  REQUIRE(lat.size() == 1);
  CHECK(lat[0] == doctest::Approx(0.07));

  // verify() asks the stores: node 2 does not have it.
  std::vector<std::string> missing;
  size_t lost = checker.verify(
      {0, 1, 2},
      [&](int node, const crdt::ReviewKey&) -> std::optional<crdt::Stamp> {
        if (node == 2) return std::nullopt;
        return doc.content().stamp();
      },
      missing);
  CHECK(lost == 1);
  REQUIRE(missing.size() == 1);
  CHECK(missing[0].find("not on node 2") != std::string::npos);
}

TEST_CASE("memory store: the same Merkle tree and states as the LMDB store") {
  TempDir dir;
  uint64_t millis = 1'800'000'000'000;
  storage::Options options;
  options.dir = dir.path() + "/lmdb";
  options.unsafeNoSync = true;
  options.clock = [&] { return millis; };
  auto lmdb = storage::Store::open(options);
  REQUIRE(lmdb.ok());
  MemoryStore memory(9, [&] { return millis; });
  // The same merges, in different orders, with overwrites and a tombstone.
  std::vector<crdt::ReviewDoc> docs;
  for (int i = 0; i < 200; ++i) {
    // Appended, not "p" + to_string(): g++ 12 at -O3 warns (-Wrestrict,
    // falsely) on operator+(const char*, string&&) here.
    std::string product = "p", author = "a";
    product += std::to_string(i % 7);
    author += std::to_string(i % 50);
    docs.push_back(review(product, author, uint8_t(1 + i % 5), millis - 1000 + uint64_t(i),
                          uint64_t(1 + i % 3)));
  }
  crdt::ReviewDoc gone = docs[3];
  gone.erase(crdt::Stamp{crdt::Hlc::fromParts(millis, 5), 2});
  docs.push_back(gone);
  for (const auto& d : docs) REQUIRE(lmdb.value()->mergeSync(d).ok());
  for (auto it = docs.rbegin(); it != docs.rend(); ++it) REQUIRE(memory.merge(*it).ok());
  CHECK(memory.documents() == lmdb.value()->stats().documents);
  auto root = lmdb.value()->merkleRoot();
  REQUIRE(root.ok());
  CHECK(memory.merkleRoot() == root.value());
  CHECK_FALSE(storage::isZero(memory.merkleRoot()));
  for (int level = 0; level < 4; ++level) {
    uint64_t index =
        storage::nodeAbove(storage::leafIndexOf(storage::keyHash(docs[0].key())), level);
    auto children = lmdb.value()->merkleChildren(level, index);
    REQUIRE(children.ok());
    CHECK(memory.merkleChildren(level, index) == children.value());
  }
  uint64_t leaf = storage::leafIndexOf(storage::keyHash(docs[0].key()));
  auto entries = lmdb.value()->leafEntries(leaf);
  REQUIRE(entries.ok());
  auto mine = memory.leafEntries(leaf);
  REQUIRE(mine.size() == entries->size());
  for (size_t i = 0; i < mine.size(); ++i) {
    CHECK(mine[i].keyHash == entries.value()[i].keyHash);
    CHECK(mine[i].digest == entries.value()[i].digest);
    CHECK(mine[i].key == entries.value()[i].key);
  }
  for (const auto& d : docs) {
    auto theirs = lmdb.value()->getEncoded(d.key());
    REQUIRE(theirs.ok());
    CHECK(memory.getEncoded(d.key()) == theirs.value());
  }
  // Clock drift: a stamp more than a minute ahead is refused by both.
  crdt::ReviewDoc future = review("p", "future", 5, millis + 120'000, 4);
  auto refused = memory.merge(future);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == ErrorCode::kClockDrift);
  auto refusedToo = lmdb.value()->mergeSync(future);
  REQUIRE_FALSE(refusedToo.ok());
  CHECK(refusedToo.error().code == ErrorCode::kClockDrift);
}

TEST_CASE(
    "simulation: 30 nodes in 3 regions, 60 s with partitions, crashes, pauses, skew, "
    "a join and a leave lose nothing and converge") {
  SimOptions o;
  o.nodes = 30;
  o.seed = 11;
  o.network.regions = {Region{"us", 500}, Region{"eu", 500}, Region{"ap", 500}};
  o.network.wanLatency = 80 * kMillis;
  o.warmup = 5 * kSeconds;
  o.duration = 45 * kSeconds;
  o.writeRate = 20;
  o.faults.splits = 2;
  o.faults.isolations = 2;
  o.faults.oneWay = 1;
  o.faults.crashes = 4;
  o.faults.pauses = 2;
  o.faults.skews = 3;
  o.faults.joins = 1;
  o.faults.leaves = 1;
  o.faults.finalSplit = 8 * kSeconds;
  auto r = runSimulation(o);
  REQUIRE(r.ok());
  INFO(explain(o, r.value()));
  CHECK(r->ok());
  CHECK(r->lost == 0);
  CHECK(r->rootsEqual);
  CHECK(r->healConvergeS >= 0);
  CHECK(r->writes > 700);
  CHECK(r->totalNodes == 31);
  CHECK(r->suspicions > 0);  // the faults were felt
  CHECK(r->crashesDetected + r->crashesUndetected >= 4);
  CHECK(r->simulatedS >= 50);
  // The leaver announced its leave and handed its writes on before it stopped.
  CHECK(r->lostWithLeaver == 0);
  CHECK(r->leaveKnownS >= 0);
}

TEST_CASE("simulation: the checker fails a run whose protocol cannot deliver") {
  // Deltas only announced, never asked for, and anti-entropy once an hour:
  // writes stay where they were made.
  SimOptions o;
  o.nodes = 4;
  o.seed = 5;
  o.warmup = 2 * kSeconds;
  o.duration = 5 * kSeconds;
  o.settle = 5 * kSeconds;
  o.eagerPush = false;
  o.antiEntropyMillis = 3'600'000;
  o.crossRegionAntiEntropyMillis = 3'600'000;
  o.tuneCore = [](gossip::CoreOptions& co) { co.graftTimeoutMillis = 3'600'000; };
  auto r = runSimulation(o);
  REQUIRE(r.ok());
  CHECK_FALSE(r->ok());
  CHECK(r->writes > 10);
  CHECK(r->lost > 0);
  CHECK(r->healConvergeS < 0);
  CHECK_FALSE(r->problems.empty());
}

TEST_CASE("simulation: the same seed replays the same trace; another seed does not") {
  SimOptions o;
  o.nodes = 10;
  o.seed = 42;
  o.network.regions = {Region{"a", 500}, Region{"b", 2000}};
  o.network.loss = 0.01;
  o.warmup = 3 * kSeconds;
  o.duration = 15 * kSeconds;
  o.writeRate = 30;
  o.faults.crashes = 2;
  o.faults.pauses = 1;
  o.faults.splits = 1;
  o.faults.skews = 1;
  auto a = runSimulation(o);
  auto b = runSimulation(o);
  o.seed = 43;
  auto c = runSimulation(o);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  REQUIRE(c.ok());
  CHECK(a->ok());
  CHECK(a->traceHash.size() == 32);
  CHECK(a->traceHash == b->traceHash);
  CHECK(a->events == b->events);
  CHECK(a->frames == b->frames);
  CHECK(a->writes == b->writes);
  CHECK(a->writeToAllP99Ms == b->writeToAllP99Ms);
  CHECK(a->suspicions == b->suspicions);
  CHECK(a->replicaIds == b->replicaIds);
  CHECK(c->traceHash != a->traceHash);
}

TEST_CASE("simulation: the same scenario on the LMDB store and the memory store ends the same") {
  TempDir dir;
  SimOptions o;
  o.nodes = 5;
  o.seed = 7;
  o.network.regions = {Region{"a", 500}, Region{"b", 500}};
  o.warmup = 3 * kSeconds;
  o.duration = 12 * kSeconds;
  o.writeRate = 20;
  o.faults.crashes = 1;
  o.faults.finalSplit = 4 * kSeconds;
  o.store = StoreKind::kLmdb;
  o.lmdbDir = dir.path();
  auto lmdb = runSimulation(o, true);
  REQUIRE(lmdb.ok());
  INFO(explain(o, lmdb.value()));
  CHECK(lmdb->ok());
  // The memory stores take the replica ids the LMDB stores chose, so the
  // stamps, the states and every frame can be equal.
  o.store = StoreKind::kMemory;
  o.replicaIds = lmdb->replicaIds;
  auto memory = runSimulation(o, true);
  REQUIRE(memory.ok());
  CHECK(memory->ok());
  CHECK(memory->writes == lmdb->writes);
  CHECK(memory->writes > 100);
  REQUIRE(memory->contents.size() == lmdb->contents.size());
  for (size_t i = 0; i < memory->contents.size(); ++i) {
    CHECK(memory->contents[i].size() == lmdb->contents[i].size());
    CHECK(memory->contents[i] == lmdb->contents[i]);
  }
  CHECK(memory->contents[0].size() > 50);
  // Equal roots, equal messages: the very same run.
  CHECK(memory->traceHash == lmdb->traceHash);
}

TEST_CASE(
    "simulation: the flood baseline delivers everything without faults, and loses writes "
    "across a split it has no repair for") {
  SimOptions o;
  o.nodes = 20;
  o.seed = 3;
  o.protocol = ProtocolKind::kFlood;
  o.network.regions = {Region{"a", 500}, Region{"b", 500}};
  o.warmup = 2 * kSeconds;
  o.duration = 5 * kSeconds;
  o.settle = 5 * kSeconds;
  o.writeRate = 50;
  auto clean = runSimulation(o);
  REQUIRE(clean.ok());
  CHECK(clean->ok());
  CHECK(clean->writes > 100);
  CHECK(clean->suspicions == 0);  // it has no membership view
  o.faults.finalSplit = 3 * kSeconds;
  auto split = runSimulation(o);
  REQUIRE(split.ok());
  CHECK_FALSE(split->ok());
  CHECK(split->lost > 0);
}

TEST_CASE(
    "simulation: ten seeds of a small cluster under every kind of fault but leaves converge "
    "without loss") {
  // Found by a seed sweep: half-open connections (the FIN lost in a
  // partition, the peer crashed) must end with a reset at the next frame,
  // or a node's anti-entropy keeps choosing a peer it cannot reach.
  SimOptions o;
  o.nodes = 10;
  o.network.regions = {Region{"a", 500}, Region{"b", 1000}, Region{"c", 2000}};
  o.network.loss = 0.01;
  o.warmup = 3 * kSeconds;
  o.duration = 25 * kSeconds;
  o.writeRate = 30;
  o.faults.splits = 2;
  o.faults.isolations = 1;
  o.faults.oneWay = 1;
  o.faults.crashes = 3;
  o.faults.pauses = 2;
  o.faults.skews = 2;
  o.faults.joins = 1;
  o.faults.finalSplit = 5 * kSeconds;
  for (uint64_t seed = 1; seed <= 10; ++seed) {
    o.seed = seed;
    auto r = runSimulation(o);
    REQUIRE(r.ok());
    INFO(explain(o, r.value()));
    CHECK(r->ok());
    CHECK(r->lost == 0);
  }
}

// ---- issue 14's targets, scaled down ---------------------------------------------
//
// The full-size runs (N = 1,000) are benchmarks: tools/sim/README.md. Here
// each scenario runs at N <= 100 in a few seconds of wall time. Safety (no
// write lost, equal roots) and the targets are CHECKed, on
// simulated time (deterministic: no wall-clock bound).

namespace {

SimOptions threeRegions(int nodes, uint64_t seed) {
  SimOptions o;
  o.nodes = nodes;
  o.seed = seed;
  o.network.regions = {Region{"us", 500}, Region{"eu", 500}, Region{"ap", 500}};
  o.network.wanLatency = 80 * kMillis;
  o.readRate = 0;
  return o;
}

// 100 nodes in 3 regions, 1% loss, 50 writes/s for 6 s, no faults: shared
// by the cases on connections and dissemination.
const SimResult& steadyRun() {
  static const SimResult result = [] {
    SimOptions o = threeRegions(100, 21);
    o.network.loss = 0.01;
    o.warmup = 8 * kSeconds;
    o.duration = 6 * kSeconds;
    o.settle = 30 * kSeconds;
    o.writeRate = 50;
    auto r = runSimulation(o);
    REQUIRE(r.ok());
    return std::move(r).value();
  }();
  return result;
}

const size_t kConnectionBound = gossip::CoreOptions{}.maxConnections;  // 32

}  // namespace

TEST_CASE("scale: connections per node stay within the core's documented bound") {
  const SimResult& r = steadyRun();
  INFO("max " << r.maxConnectionsPerNode << " (the cores' count " << r.maxCoreConnectionsPerNode
              << "), mean " << r.meanConnectionsPerNode);
  CHECK(r.ok());
  CHECK(r.maxConnectionsPerNode > 0);
  // Bounded independently of N (protocol 1 kept N - 1 = 99 here)...
  CHECK(r.maxConnectionsPerNode < 2 * kConnectionBound);
  // ... and by the documented bound: the target.
  CHECK(r.maxConnectionsPerNode <= kConnectionBound);
  CHECK(r.meanConnectionsPerNode >= 2);  // a partial view, not a star
  CHECK(r.meanConnectionsPerNode <= double(kConnectionBound));
}

TEST_CASE("scale: with eager push a write reaches every node, at a bounded cost per node") {
  const SimResult& r = steadyRun();
  INFO("p99 " << r.writeToAllP99Ms << " ms, receive ratio " << r.receiveRatio
              << ", region pair ratio " << r.regionPairRatioMax << ", delta "
              << r.deltaBytesMean << " bytes");
  CHECK(r.ok());
  CHECK(r.lost == 0);
  CHECK(r.writes > 200);
  CHECK(r.deltaBytesMean > 200);  // a review of 200 bytes of text and its stamps
  CHECK(r.receiveRatio > 0.9);    // every node got each delta at least once
  // Flooding to all would be ~N = 100 x the delta per node per write.
  CHECK(r.receiveRatio < 10);
  CHECK(r.regionPairRatioMax > 0);
  CHECK(r.regionPairRatioMax < 10);
  // The targets: p99 <= 1 s, a node receives <= 3 x the delta, each
  // region pair carries <= 1.5 x the delta per write.
  CHECK(r.writeToAllP99Ms > 0);
  CHECK(r.writeToAllP99Ms <= 1000);
  CHECK(r.receiveRatio <= 3.0);
  CHECK(r.regionPairRatioMax <= 1.5);
}

TEST_CASE("scale: a crashed node is known dead by every live node within 5 s") {
  // Seed 25's schedule: crashes at 13.7 s (for 14.3 s) and 18.0 s (10.0 s):
  // both down long enough to be detected.
  SimOptions o = threeRegions(60, 25);
  o.warmup = 8 * kSeconds;
  o.duration = 20 * kSeconds;
  o.writeRate = 10;
  o.faults.crashes = 2;
  o.faults.meanDuration = 60 * kSeconds;  // down until the final heal
  auto r = runSimulation(o);
  REQUIRE(r.ok());
  INFO(explain(o, r.value()));
  INFO("detected after " << r->detectDeadS << " s (mean), " << r->detectDeadMaxS << " s (max)");
  CHECK(r->ok());
  CHECK(r->crashesDetected == 2);
  CHECK(r->crashesUndetected == 0);
  CHECK(r->detectDeadMaxS > 0);
  CHECK(r->detectDeadMaxS <= 5.0);
}

TEST_CASE("scale: a burst of 30 joins is known to every node") {
  SimOptions o = threeRegions(60, 23);
  o.warmup = 5 * kSeconds;
  o.duration = 15 * kSeconds;
  o.writeRate = 10;
  o.faults.joinBurst = 30;
  o.faults.joinBurstAt = 7 * kSeconds;
  auto r = runSimulation(o);
  REQUIRE(r.ok());
  INFO(explain(o, r.value()));
  INFO("known after " << r->joinKnownS << " s; " << r->joinsUnknown << " not known");
  CHECK(r->ok());  // the joiners got every write
  CHECK(r->totalNodes == 90);
  CHECK(r->joinsKnown + r->joinsUnknown == 30);
  CHECK(r->joinsUnknown == 0);
  CHECK(r->joinKnownS > 0);
  CHECK(r->joinKnownS <= 5.0);
}

TEST_CASE("scale: 40 s at 5% loss declares no live node dead") {
  SimOptions o = threeRegions(60, 24);
  o.network.loss = 0.05;
  o.warmup = 5 * kSeconds;
  o.duration = 40 * kSeconds;
  o.writeRate = 5;
  auto r = runSimulation(o);
  REQUIRE(r.ok());
  INFO(explain(o, r.value()));
  INFO(r->suspicions << " suspicions, " << r->refutations << " refutations, "
                     << r->wronglyDeclaredDead << " wrongly dead");
  CHECK(r->ok());
  CHECK(r->wronglyDeclaredDead == 0);
}

TEST_CASE("scale: a region cut off for 20 s with writes on both sides converges after the heal") {
  SimOptions o = threeRegions(60, 25);
  o.warmup = 5 * kSeconds;
  o.duration = 25 * kSeconds;
  o.writeRate = 20;
  o.faults.finalSplit = 20 * kSeconds;
  auto r = runSimulation(o);
  REQUIRE(r.ok());
  INFO(explain(o, r.value()));
  INFO("converged " << r->healConvergeS << " s after the heal");
  CHECK(r->ok());
  CHECK(r->rootsEqual);
  CHECK(r->lost == 0);
  CHECK(r->writes > 350);
  CHECK(r->healConvergeS >= 0);
  CHECK(r->healConvergeS <= 5.0);
}
