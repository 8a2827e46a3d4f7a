// The replication core driven directly: a fake clock, in-memory stores and
// frames handed from core to core in this process. No sockets, no threads,
// no sleeps.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>

#include "gossip/frame.h"
#include "gossip/reconcile.capnp.h"
#include "gossip/replication-core.h"
#include "storage/merkle.h"
#include "support/results.h"
#include "support/seed.h"

using namespace chorus;
using namespace chorus::gossip;
using chorus::test::failure;

namespace {

// A replica in memory, hashed exactly as storage::Store hashes (see
// storage/merkle.h). Merges complete at once, or when the test says.
class MemStore final : public ReplicaStore {
 public:
  Result<storage::Hash> root() override {
    storage::Hash sum{};
    for (const auto& [key, e] : entries_) sum = storage::hashAdd(sum, e.second);
    return sum;
  }
  Result<std::vector<storage::Hash>> children(int level, uint64_t index) override {
    std::vector<storage::Hash> out(kFanout, storage::Hash{});
    for (const auto& [key, e] : entries_) {
      uint64_t leaf = storage::leafIndexOf(e.first);
      if (storage::nodeAbove(leaf, level) != index) continue;
      uint64_t child = storage::nodeAbove(leaf, level + 1) - index * kFanout;
      out[child] = storage::hashAdd(out[child], e.second);
    }
    return out;
  }
  Result<std::vector<storage::LeafEntry>> leafEntries(uint64_t leafIndex) override {
    std::vector<storage::LeafEntry> out;
    for (const auto& [key, doc] : docs_) {
      uint64_t kh = storage::keyHash(key);
      if (storage::leafIndexOf(kh) == leafIndex) {
        out.push_back({kh, storage::digestOf(doc.encode()), key});
      }
    }
    std::sort(out.begin(), out.end(),
              [](const auto& a, const auto& b) { return a.keyHash < b.keyHash; });
    return out;
  }
  Result<std::optional<std::string>> encodedState(const crdt::ReviewKey& key) override {
    auto it = docs_.find(key);
    if (it == docs_.end()) return std::optional<std::string>();
    return std::optional<std::string>(it->second.encode());
  }
  void merge(crdt::ReviewDoc state, MergeDone done) override {
    if (deferMerges) {
      deferred_.push_back({std::move(state), std::move(done)});
      return;
    }
    apply(std::move(state), done);
  }
  // Completes the merges held back by deferMerges.
  void completeDeferred() {
    auto held = std::move(deferred_);
    deferred_.clear();
    for (auto& [state, done] : held) apply(std::move(state), done);
  }
  size_t deferred() const { return deferred_.size(); }

  // A local write; its delta.
  crdt::ReviewDoc write(const std::string& product, const std::string& author,
                        const std::string& body, uint64_t millis, crdt::ReplicaId replica) {
    crdt::ReviewKey key{product, author};
    auto [it, fresh] = docs_.try_emplace(key, key);
    auto delta =
        it->second.write(4, "title", body, crdt::Stamp{crdt::Hlc::fromParts(millis, 0), replica});
    rehash(key);
    return delta;
  }
  bool has(const std::string& product, const std::string& author) const {
    return docs_.count({product, author}) != 0;
  }
  size_t size() const { return docs_.size(); }
  storage::Hash rootHash() { return root().value(); }

  bool deferMerges = false;

 private:
  void apply(crdt::ReviewDoc state, const MergeDone& done) {
    crdt::ReviewKey key = state.key();
    auto [it, fresh] = docs_.try_emplace(key, key);
    crdt::ReviewDoc before = it->second;
    it->second.join(state);
    rehash(key);
    storage::Applied applied;
    applied.delta = state;
    applied.state = it->second;
    applied.changed = !(before == it->second);
    if (done) done(std::move(applied));
  }
  void rehash(const crdt::ReviewKey& key) {
    uint64_t kh = storage::keyHash(key);
    entries_[key] = {kh, storage::entryHash(kh, storage::digestOf(docs_.at(key).encode()))};
  }

  std::map<crdt::ReviewKey, crdt::ReviewDoc> docs_;
  std::map<crdt::ReviewKey, std::pair<uint64_t, storage::Hash>> entries_;
  std::vector<std::pair<crdt::ReviewDoc, MergeDone>> deferred_;
};

// One node: a store and its core.
struct Node {
  std::string id;
  std::string address;
  crdt::ReplicaId replica;
  MemStore store;
  std::unique_ptr<ReplicationCore> core;
  bool up = true;
  std::vector<std::vector<KnownMember>> persisted;  // every PersistMembers
  std::vector<std::string> dials;                   // every Dial, by address
  std::vector<uint64_t> dialTimes;
  std::vector<std::string> warnings;
};

// Reconcile message kinds seen on the wire, for the busy test.
struct WireLog {
  uint64_t busy = 0, roots = 0, deltaFrames = 0, deltaFrameMaxBytes = 0;
  uint64_t ihaves = 0, grafts = 0, prunes = 0, pings = 0, pingReqs = 0, pushPulls = 0;
  uint64_t maxMembersPerFrame = 0;  // piggybacked, on any frame
};

// Nodes and the links between their connections. Frames are delivered in
// order, with no latency, by run().
class Net {
 public:
  explicit Net(uint64_t seed) : seed_(seed) {}

  Node& add(const std::string& id, std::vector<std::string> seeds,
            const std::function<void(CoreOptions&)>& tweak = nullptr) {
    auto n = std::make_unique<Node>();
    n->id = id;
    n->address = id + ":7400";
    n->replica = nodes_.size() + 1;
    CoreOptions o;
    o.nodeId = id;
    o.gossipAddress = n->address;
    o.rpcAddress = id + ":7300";
    o.seeds = std::move(seeds);
    o.seed = seed_ + nodes_.size();
    o.incarnation = now;
    if (tweak) tweak(o);
    n->core = std::make_unique<ReplicationCore>(o, n->store);
    n->core->start(now, {});
    nodes_.push_back(std::move(n));
    return *nodes_.back();
  }
  Node& operator[](const std::string& id) {
    for (auto& n : nodes_) {
      if (n->id == id) return *n;
    }
    FAIL("no node " << id);
    return *nodes_[0];
  }

  // Advances the clock to `until` in ticks of ReplicationCore::kTickMillis.
  void runUntil(uint64_t until) {
    while (now + ReplicationCore::kTickMillis <= until) {
      now += ReplicationCore::kTickMillis;
      for (auto& n : nodes_) {
        if (!n->up) continue;
        n->core->tick(now);
        settle();
      }
    }
  }
  void runFor(uint64_t millis) { runUntil(now + millis); }
  // Executes every pending action and delivery.
  void settle() {
    for (int rounds = 0; rounds < 100000; ++rounds) {
      bool any = false;
      for (auto& n : nodes_) {
        auto actions = n->core->takeActions();
        if (!actions.empty()) any = true;
        for (auto& a : actions) execute(*n, std::move(a));
      }
      while (!queue_.empty()) {
        any = true;
        auto [from, to, conn, body] = std::move(queue_.front());
        queue_.pop_front();
        if (!to->up) continue;
        lastHeard[{from->id, to->id}] = now;
        to->core->received(now, conn, *body);
      }
      if (!any) return;
    }
    FAIL("the cores never went quiet");
  }

  // A node stops: its connections close on the other side, it hears and
  // says nothing.
  void crash(Node& n) {
    n.up = false;
    for (auto it = links_.begin(); it != links_.end();) {
      if (it->first.first == &n) {
        auto [peer, peerConn] = it->second;
        links_.erase({peer, peerConn});
        it = links_.erase(it);
        if (peer->up) peer->core->closed(now, peerConn);
      } else {
        ++it;
      }
    }
    settle();
  }
  // A crashed node starts again: a new core (a later incarnation), the
  // member list it persisted last, its store as it was.
  void restart(Node& n, std::vector<std::string> seeds,
               const std::function<void(CoreOptions&)>& tweak = nullptr) {
    CoreOptions o;
    o.nodeId = n.id;
    o.gossipAddress = n.address;
    o.rpcAddress = n.id + ":7300";
    o.seeds = std::move(seeds);
    o.seed = seed_ + 1000 + now;
    o.incarnation = now;
    if (tweak) tweak(o);
    n.core = std::make_unique<ReplicationCore>(o, n.store);
    n.up = true;
    n.core->start(now, n.persisted.empty() ? std::vector<KnownMember>{} : n.persisted.back());
    settle();
  }
  std::vector<Node*> all() {
    std::vector<Node*> out;
    for (auto& n : nodes_) out.push_back(n.get());
    return out;
  }
  // Frames from `n` are lost (it stays connected): a silent peer.
  std::set<const Node*> muted;
  // Whether SendFrame bytes are drained at once (else they stay queued).
  bool autoDrain = true;
  WireLog wire;
  std::map<std::pair<std::string, std::string>, uint64_t> lastHeard;  // (from, to) -> time
  uint64_t now = 1'000'000;                                           // any start will do

 private:
  using End = std::pair<Node*, ConnId>;

  void execute(Node& n, Action a) {
    if (auto* s = std::get_if<SendFrame>(&a)) {
      observe(*s->body);
      auto link = links_.find({&n, s->conn});
      if (autoDrain) n.core->drained(s->conn, s->body->size() + 72, s->deltas);
      if (link == links_.end() || muted.count(&n)) return;
      queue_.push_back({&n, link->second.first, link->second.second, s->body});
    } else if (auto* d = std::get_if<Dial>(&a)) {
      n.dials.push_back(d->address);
      n.dialTimes.push_back(now);
      Node* target = nullptr;
      for (auto& other : nodes_) {
        if (other->address == d->address && other->up) target = other.get();
      }
      if (!target) {
        n.core->closed(now, d->conn);  // connection refused
        return;
      }
      ConnId theirs = target->core->accepted(now, n.address);
      links_[{&n, d->conn}] = {target, theirs};
      links_[{target, theirs}] = {&n, d->conn};
      target->core->opened(now, theirs);
      n.core->opened(now, d->conn);
    } else if (auto* c = std::get_if<Close>(&a)) {
      auto link = links_.find({&n, c->conn});
      if (link == links_.end()) return;
      End peer = link->second;
      links_.erase(link);
      links_.erase(peer);
      if (peer.first->up) peer.first->core->closed(now, peer.second);
    } else if (auto* m = std::get_if<Merge>(&a)) {
      for (auto& state : m->states) {
        uint64_t ticket = m->ticket;
        ReplicationCore* core = n.core.get();
        n.store.merge(std::move(state),
                      [core, ticket](Result<storage::Applied>) { core->merged(ticket); });
      }
    } else if (auto* p = std::get_if<PersistMembers>(&a)) {
      n.persisted.push_back(p->members);
    } else if (auto* w = std::get_if<Warn>(&a)) {
      n.warnings.push_back(w->message);
    }
  }
  void observe(const std::string& body) {
    auto frame = ParsedFrame::parse([&] {
      auto words = kj::heapArray<capnp::word>(body.size() / 8);
      std::memcpy(words.begin(), body.data(), body.size());
      return words;
    }());
    REQUIRE(frame.ok());
    auto root = frame.value()->root();
    wire.maxMembersPerFrame = std::max<uint64_t>(wire.maxMembersPerFrame, root.getMembers().size());
    switch (root.which()) {
      case wire::Frame::BROADCAST:
        ++wire.deltaFrames;
        wire.deltaFrameMaxBytes = std::max<uint64_t>(wire.deltaFrameMaxBytes, body.size());
        break;
      case wire::Frame::IHAVE:
        ++wire.ihaves;
        break;
      case wire::Frame::GRAFT:
        ++wire.grafts;
        break;
      case wire::Frame::PRUNE:
        ++wire.prunes;
        break;
      case wire::Frame::PING:
        ++wire.pings;
        break;
      case wire::Frame::PING_REQ:
        ++wire.pingReqs;
        break;
      case wire::Frame::PUSH_PULL:
        ++wire.pushPulls;
        break;
      default:
        break;
    }
    if (root.which() != wire::Frame::RECONCILE) return;
    auto data = root.getReconcile();
    auto words = kj::heapArray<capnp::word>(data.size() / 8);
    std::memcpy(words.begin(), data.begin(), data.size());
    capnp::FlatArrayMessageReader reader(words);
    auto message = reader.getRoot<wire::Reconcile>();
    if (message.which() == wire::Reconcile::BUSY) ++wire.busy;
    if (message.which() == wire::Reconcile::ROOT) ++wire.roots;
  }

  uint64_t seed_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::map<End, End> links_;
  std::deque<std::tuple<Node*, Node*, ConnId, std::shared_ptr<const std::string>>> queue_;
};

std::optional<MemberInfo> memberOf(Node& n, const std::string& id) {
  for (auto& m : n.core->members()) {
    if (m.nodeId == id) return m;
  }
  return std::nullopt;
}

size_t alive(Node& n) {
  size_t count = 0;
  for (auto& m : n.core->members()) count += m.state == PeerState::kAlive;
  return count;
}

void publish(Net& net, Node& n, const crdt::ReviewDoc& delta) {
  n.core->publish(net.now, {delta.encode()});
  net.settle();
}

// `count` nodes n1..n<count>, seeded with n1, in `regions` regions
// (round robin: r0, r1, ...); run until every node knows every other alive.
void cluster(Net& net, int count, int regions = 1,
             const std::function<void(CoreOptions&)>& tweak = nullptr) {
  for (int i = 1; i <= count; ++i) {
    std::string region = "r" + std::to_string((i - 1) % regions);
    net.add("n" + std::to_string(i), i == 1 ? std::vector<std::string>{} : std::vector<std::string>{"n1:7400"},
            [&](CoreOptions& o) {
              o.region = region;
              if (tweak) tweak(o);
            });
  }
  for (int rounds = 0; rounds < 100; ++rounds) {
    net.runFor(500);
    bool all = true;
    for (Node* n : net.all()) all = all && alive(*n) == size_t(count - 1);
    if (all) {
      net.runFor(1500);  // and the partial views
      return;
    }
  }
  FAIL("the cluster never formed");
}

}  // namespace

TEST_CASE("core: nodes join through a seed, learn every member by gossip and persist the list") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {}, [](CoreOptions& o) { o.region = "eu"; });
  auto& n2 = net.add("n2", {"n1:7400"});
  auto& n3 = net.add("n3", {"n1:7400"});
  net.runFor(1000);
  CHECK(alive(n1) == 2);
  CHECK(alive(n2) == 2);
  CHECK(alive(n3) == 2);  // n2 learned through n1, not from a seed
  auto m = memberOf(n3, "n1");
  REQUIRE(m);
  CHECK(m->gossipAddress == "n1:7400");
  CHECK(m->rpcAddress == "n1:7300");
  CHECK(m->region == "eu");
  CHECK(memberOf(n3, "n2")->region == "default");
  // The list is persisted (with this node's own entry: its incarnation),
  // at most every 5 s, once it changed.
  net.runFor(5500);
  REQUIRE_FALSE(n3.persisted.empty());
  auto& list = n3.persisted.back();
  REQUIRE(list.size() == 3);
  CHECK(list[0].nodeId == "n3");
  CHECK(list[0].incarnation == n3.core->incarnation());
  CHECK(list[1].nodeId == "n1");
  CHECK(list[1].region == "eu");
  CHECK(list[2].gossipAddress == "n2:7400");
  size_t saves = n3.persisted.size();
  net.runFor(12'000);
  CHECK(n3.persisted.size() == saves);  // unchanged: not saved again
  // A seed naming the node itself is not dialled.
  auto& n4 = net.add("n4", {"n4:7400", "n1:7400"});
  net.runFor(1000);
  CHECK(std::count(n4.dials.begin(), n4.dials.end(), "n4:7400") == 0);
  CHECK(alive(n4) == 3);
  // No frame but the push-pull carries more than the piggyback bound.
  CHECK(net.wire.maxMembersPerFrame <= ReplicationCore::kMaxPiggyback + 1);
}

TEST_CASE("core: a crashed member is suspected by a probe, then declared dead everywhere") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  cluster(net, 8);
  auto& n8 = net["n8"];
  uint64_t crashedAt = net.now;
  net.crash(n8);
  std::map<std::string, uint64_t> deadAt;
  while (net.now < crashedAt + 20'000 && deadAt.size() < 7) {
    net.runFor(ReplicationCore::kTickMillis);
    for (Node* n : net.all()) {
      if (n == &n8 || deadAt.count(n->id)) continue;
      if (memberOf(*n, "n8")->state == PeerState::kDead) deadAt[n->id] = net.now - crashedAt;
    }
  }
  REQUIRE(deadAt.size() == 7);
  uint64_t last = 0;
  for (auto& [id, at] : deadAt) last = std::max(last, at);
  // Suspicion lasts at least 1 s here (log10(10) x probe interval) and at
  // most 3 s, after a probe period at most (its partial-view peers probe
  // at once: the connection reset).
  CHECK(last >= 1000);
  CHECK(last <= 1000 + 3000 + 1000);
  CHECK(net["n1"].core->stats().probesFailed + net["n2"].core->stats().probesFailed > 0);
}

TEST_CASE("core: a suspected member that is alive refutes with a higher incarnation") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  cluster(net, 6, 1, [](CoreOptions& o) { o.suspicionMult = 4; });  // 4 to 12 s
  auto& n6 = net["n6"];
  uint64_t before = n6.core->incarnation();
  // n6 goes silent long enough to be suspected, not declared dead.
  net.muted.insert(&n6);
  bool suspected = false;
  for (int i = 0; i < 80 && !suspected; ++i) {
    net.runFor(ReplicationCore::kTickMillis);
    for (Node* n : net.all()) {
      if (n != &n6) suspected = suspected || memberOf(*n, "n6")->state == PeerState::kSuspect;
    }
  }
  REQUIRE(suspected);
  net.muted.clear();
  // Everyone ends with n6 alive at its latest incarnation (it may have
  // refuted more than once: probes begun while it was silent end later).
  bool agreed = false;
  for (int i = 0; i < 100 && !agreed; ++i) {
    net.runFor(100);
    agreed = true;
    for (Node* n : net.all()) {
      if (n == &n6) continue;
      auto m = memberOf(*n, "n6");
      agreed = agreed && m->state == PeerState::kAlive && m->incarnation == n6.core->incarnation();
    }
  }
  CHECK(agreed);
  CHECK(n6.core->incarnation() > before);
  CHECK(n6.core->stats().refutations >= 1);
  for (Node* n : net.all()) {
    if (n != &n6) CHECK(memberOf(*n, "n6")->state != PeerState::kDead);
  }
}

TEST_CASE("core: a member others cannot reach directly is confirmed alive by indirect probes") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  cluster(net, 6);
  // n1 cannot talk to n2 (both ways); everybody else can talk to both.
  net["n1"].core->partition({"n2"});
  net["n2"].core->partition({"n1"});
  net.runFor(20'000);
  // Indirect probes (pingReq) go out; nobody else ever suspects n1 or n2
  // for good, and nobody declares them dead.
  CHECK(net.wire.pingReqs > 0);
  for (Node* n : net.all()) {
    for (auto id : {"n1", "n2"}) {
      if (n->id == id) continue;
      auto m = memberOf(*n, id);
      if (!((n->id == "n1" && std::string(id) == "n2") || (n->id == "n2" && std::string(id) == "n1"))) {
        CHECK(m->state != PeerState::kDead);
      }
    }
  }
}

TEST_CASE("core: a write reaches every node by epidemic broadcast; the tree prunes duplicates") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  cluster(net, 30);
  auto& n1 = net["n1"];
  auto received = [&] {
    uint64_t sum = 0;
    for (Node* n : net.all()) sum += n->core->stats().deltasReceived + n->core->stats().broadcastDuplicates;
    return sum;
  };
  for (int i = 0; i < 40; ++i) {
    auto& from = net["n" + std::to_string(1 + i % 30)];
    publish(net, from, from.store.write("sku", "u" + std::to_string(i), "hello", 10 + i, from.replica));
    net.runFor(100);
  }
  for (Node* n : net.all()) CHECK(n->store.size() == 40);
  CHECK(net.wire.prunes > 0);
  // Once the tree formed, a write costs about one copy per node.
  uint64_t before = received();
  for (int i = 0; i < 10; ++i) {
    publish(net, n1, n1.store.write("sku", "late-" + std::to_string(i), "x", 100 + i, n1.replica));
    net.runFor(100);
  }
  for (Node* n : net.all()) CHECK(n->store.has("sku", "late-9"));
  double perWrite = double(received() - before) / 10;
  CAPTURE(perWrite);
  CHECK(perWrite <= 29 * 1.5);
  // Connections stay bounded: partial view plus probes.
  for (Node* n : net.all()) {
    CHECK(n->core->stats().connections <= 32);
    CHECK(n->core->stats().activePeers <= 16);
  }
}

TEST_CASE("core: announced but not pushed, a delta is grafted from the announcer") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  cluster(net, 10, 1, [](CoreOptions& o) { o.eagerPush = false; });
  auto& n3 = net["n3"];
  publish(net, n3, n3.store.write("sku", "ann", "lazy", 10, n3.replica));
  net.runFor(1000);
  for (Node* n : net.all()) CHECK(n->store.has("sku", "ann"));
  CHECK(net.wire.ihaves > 0);
  CHECK(net.wire.grafts > 0);
}

TEST_CASE("core: regions link through a few bridges, and a write crosses each boundary once") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  cluster(net, 24, 3);
  net.runFor(3000);  // partial views settle
  // Links between regions: only on the regions' bridges (2 per region
  // towards each other region), so at most 2 x 3 pairs x 2 ends.
  std::set<std::string> bridges;
  for (Node* n : net.all()) {
    for (auto& m : n->core->members()) {
      if (m.active && m.region != n->core->region()) bridges.insert(n->id);
    }
  }
  CHECK(bridges.size() <= 12);
  CHECK(bridges.size() >= 3);
  for (int i = 0; i < 30; ++i) {
    auto& from = net["n" + std::to_string(1 + i % 24)];
    publish(net, from, from.store.write("sku", "u" + std::to_string(i), "w", 10 + i, from.replica));
    net.runFor(200);
  }
  for (Node* n : net.all()) CHECK(n->store.size() == 30);
}

TEST_CASE("core: broadcast deltas are cut into frames of about 1 MiB; a peer that does not read gets none") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {}, [](CoreOptions& o) { o.maxQueuedBytesPerPeer = 3u << 20; });
  auto& n2 = net.add("n2", {"n1:7400"});
  net.runFor(2000);
  REQUIRE(alive(n1) == 1);
  REQUIRE(memberOf(n1, "n2")->active);
  // Five deltas of ~400 KB: frames of at most two (the third would pass 1 MiB).
  std::vector<std::string> deltas;
  for (int i = 0; i < 5; ++i) {
    deltas.push_back(
        n1.store.write("sku", "u" + std::to_string(i), std::string(400'000, 'x'), 5, n1.replica)
            .encode());
  }
  net.wire = {};
  n1.core->publish(net.now, deltas);
  net.settle();
  CHECK(net.wire.deltaFrames == 3);
  CHECK(net.wire.deltaFrameMaxBytes < ReplicationCore::kMaxDeltaFrameBytes + 1024);
  CHECK(n2.store.size() == 5);
  CHECK(n1.core->stats().deltasSent == 5);
  // n2 stops reading: past maxQueuedBytesPerPeer deltas to it are only
  // announced (and counted dropped), not queued.
  net.autoDrain = false;
  for (int round = 0; round < 5; ++round) {
    n1.core->publish(net.now, {n1.store
                                   .write("sku", "big-" + std::to_string(round),
                                          std::string(900'000, 'y'), 6, n1.replica)
                                   .encode()});
    net.settle();
  }
  CHECK(n1.core->stats().deltasDropped == 1);
  CHECK(memberOf(n1, "n2")->pendingDeltas == 4);
}

TEST_CASE("core: two cores with different stores converge through anti-entropy alone") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {});
  auto& n2 = net.add("n2", {"n1:7400"});
  // Divergent histories, never pushed: 300 reviews only on n1, 200 only on
  // n2, and 20 written on both.
  for (int i = 0; i < 300; ++i) n1.store.write("sku-a", "u" + std::to_string(i), "a", 10, 1);
  for (int i = 0; i < 200; ++i) n2.store.write("sku-b", "v" + std::to_string(i), "b", 10, 2);
  for (int i = 0; i < 20; ++i) {
    n1.store.write("sku-c", "w" + std::to_string(i), "on n1", 20 + i, 1);
    n2.store.write("sku-c", "w" + std::to_string(i), "on n2", 30 - i, 2);
  }
  REQUIRE(n1.store.rootHash() != n2.store.rootHash());
  net.runFor(3000);
  CHECK(n1.store.rootHash() == n2.store.rootHash());
  CHECK(n1.store.size() == 520);
  CHECK(n1.core->stats().syncCompleted + n2.core->stats().syncCompleted > 0);
  CHECK(n1.core->stats().statesRepaired + n2.core->stats().statesRepaired >= 500);
  CHECK(n1.core->mergesPending() == 0);
  // In sync: each later session is one round trip and repairs nothing.
  uint64_t repaired = n1.core->stats().statesRepaired + n2.core->stats().statesRepaired;
  net.runFor(3000);
  CHECK(n1.core->stats().statesRepaired + n2.core->stats().statesRepaired == repaired);
  CHECK(n1.core->stats().syncCompleted > 1);
}

TEST_CASE("core: the session hooks report each started and completed session, by scope") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  // Per node: sessions started, completed in region, completed across.
  std::map<std::string, std::array<uint64_t, 3>> seen;
  // n1 and n3 in r0, n2 alone in r1.
  cluster(net, 3, 2, [&](CoreOptions& o) {
    auto* counts = &seen[o.nodeId];
    o.onSessionStarted = [counts] { ++(*counts)[0]; };
    o.onSessionCompleted = [counts](bool crossRegion) { ++(*counts)[crossRegion ? 2 : 1]; };
  });
  net.runFor(25'000);  // past two cross-region intervals
  for (Node* n : net.all()) {
    CAPTURE(n->id);
    const auto& c = seen[n->id];
    CHECK(c[0] == n->core->stats().syncStarted);
    CHECK(c[1] + c[2] == n->core->stats().syncCompleted);
    CHECK(c[1] + c[2] <= c[0]);
  }
  CHECK(seen["n2"][1] == 0);  // no peer in its region
  CHECK(seen["n2"][2] > 0);
  CHECK(seen["n1"][1] + seen["n3"][1] > 0);
}

TEST_CASE("core: a size cap splits a large repair into sessions that run back to back") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  // Reconcile messages are cut at half the frame limit: 4 KiB here.
  auto small = [](CoreOptions& o) { o.maxFrameBytes = 8192; };
  auto& n1 = net.add("n1", {}, small);
  auto& n2 = net.add("n2", {"n1:7400"}, small);
  net.runFor(1500);
  for (int i = 0; i < 400; ++i) n1.store.write("sku", "u" + std::to_string(i), "xxxx", 10, 1);
  // Far more sessions than one a second each: `more` started the next at
  // the next tick (50 ms), so the whole store crossed in 3 s.
  net.runFor(3000);
  CHECK(n1.store.rootHash() == n2.store.rootHash());
  CHECK(n1.core->stats().syncStarted + n2.core->stats().syncStarted >= 5);
}

TEST_CASE("core: a node still merging a repair answers busy; the initiator rests it and retries") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {});
  auto& n2 = net.add("n2", {"n1:7400"});
  auto& n3 = net.add("n3", {"n1:7400"});
  net.runFor(2000);
  REQUIRE(alive(n3) == 2);
  // n1's and n2's stores stall: the states of a repair stay uncommitted.
  n1.store.deferMerges = true;
  n2.store.deferMerges = true;
  for (int i = 0; i < 50; ++i) n1.store.write("sku-a", "u" + std::to_string(i), "a", 10, 1);
  for (int i = 0; i < 50; ++i) n2.store.write("sku-b", "v" + std::to_string(i), "b", 10, 2);
  for (int i = 0; i < 50; ++i) n3.store.write("sku-c", "w" + std::to_string(i), "c", 10, 3);
  net.wire = {};
  net.runFor(3000);
  CHECK(n1.store.deferred() > 0);
  CHECK(n2.store.deferred() > 0);
  CHECK(n1.core->mergesPending() > 0);
  CHECK(net.wire.busy > 3);
  CHECK(net.wire.busy < net.wire.roots);
  CHECK(n3.store.rootHash() != n1.store.rootHash());
  // The stores catch up: sessions go through again and all converge.
  n1.store.deferMerges = false;
  n2.store.deferMerges = false;
  n1.store.completeDeferred();
  n2.store.completeDeferred();
  net.runFor(4000);
  CHECK(n1.store.rootHash() == n2.store.rootHash());
  CHECK(n1.store.rootHash() == n3.store.rootHash());
  CHECK(n1.store.size() == 150);
  CHECK(n1.core->mergesPending() == 0);
  CHECK(n2.core->mergesPending() == 0);
  net.wire = {};
  net.runFor(3000);
  CHECK(net.wire.busy == 0);
  CHECK(net.wire.roots > 0);
}

TEST_CASE("core: a seed that cannot be reached is redialled with jittered, doubling backoff") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {"n9:7400"});  // nobody there yet
  net.runFor(20'000);
  REQUIRE(n1.dialTimes.size() >= 8);
  std::vector<uint64_t> gaps;
  for (size_t i = 1; i < n1.dialTimes.size(); ++i) {
    gaps.push_back(n1.dialTimes[i] - n1.dialTimes[i - 1]);
  }
  // Backoff b is 100 ms doubling to 2 s; each wait is in [b/2, b], seen at
  // the next tick.
  uint64_t backoff = ReplicationCore::kMinBackoffMillis;
  for (uint64_t gap : gaps) {
    CHECK(gap >= backoff / 2);
    CHECK(gap <= backoff + ReplicationCore::kTickMillis);
    backoff = std::min(backoff * 2, ReplicationCore::kMaxBackoffMillis);
  }
  // It comes up: the next attempt joins.
  auto& n9 = net.add("n9", {});
  net.runFor(2500);
  CHECK(alive(n1) == 1);
  CHECK(alive(n9) == 1);
}

namespace {

// A frame body from `from`, filled by `fill`.
template <typename Fill>
std::string frameFrom(const std::string& from, Fill fill, uint16_t version = wire::PROTOCOL_VERSION) {
  capnp::MallocMessageBuilder message;
  auto f = newFrame(message, from);
  f.setVersion(version);
  fill(f);
  return encodeFrame(message);
}

std::string helloFrom(const std::string& id) {
  return frameFrom(id, [&](wire::Frame::Builder f) {
    auto m = f.initHello().initMember();
    m.setNodeId(id);
    m.setGossipAddress(id + ":7400");
    m.setRegion("default");
    m.setIncarnation(1);
  });
}

}  // namespace

TEST_CASE("core: malformed frames, other protocol versions and silent connections are closed") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {});
  // Not a frame at all.
  ConnId a = n1.core->accepted(net.now, "10.0.0.1:5000");
  n1.core->opened(net.now, a);
  n1.core->received(net.now, a, std::string(16, '\xff'));
  auto actions = n1.core->takeActions();
  REQUIRE(actions.size() == 1);
  CHECK(std::get<Close>(actions[0]).conn == a);
  CHECK(n1.core->stats().malformedFrames == 1);
  CHECK(n1.core->stats().framesIn == 0);
  // A well-formed frame that is not a hello, first.
  ConnId b = n1.core->accepted(net.now, "10.0.0.1:5001");
  n1.core->opened(net.now, b);
  n1.core->received(net.now, b, frameFrom("mallory", [](wire::Frame::Builder f) {
                      f.initPing().setSeq(1);
                    }));
  actions = n1.core->takeActions();
  REQUIRE(actions.size() == 1);
  CHECK(std::get<Close>(actions[0]).conn == b);
  CHECK(n1.core->stats().malformedFrames == 2);
  CHECK(n1.core->members().empty());
  // An older node (protocol 1): refused, counted, and the operator told.
  ConnId v = n1.core->accepted(net.now, "10.0.0.1:5003");
  n1.core->opened(net.now, v);
  n1.core->received(net.now, v, frameFrom("old", [](wire::Frame::Builder f) { f.setGossip(); }, 1));
  bool closedOld = false, warned = false;
  for (auto& action : n1.core->takeActions()) {
    if (auto* close = std::get_if<Close>(&action)) closedOld = close->conn == v;
    if (auto* w = std::get_if<Warn>(&action)) {
      warned = w->message.find("protocol version 1") != std::string::npos &&
               w->message.find("speaks 2") != std::string::npos;
    }
  }
  CHECK(closedOld);
  CHECK(warned);
  CHECK(n1.core->stats().versionRefused == 1);
  CHECK(n1.core->members().empty());
  // Silence: a stranger is closed after 5 s, and counted.
  ConnId c = n1.core->accepted(net.now, "10.0.0.1:5002");
  n1.core->opened(net.now, c);
  net.runFor(ReplicationCore::kStrangerTimeoutMillis - 100);
  CHECK(n1.core->takeActions().empty());
  bool closed = false;
  for (int i = 0; i < 4 && !closed; ++i) {
    n1.core->tick(net.now += ReplicationCore::kTickMillis);
    for (auto& action : n1.core->takeActions()) {
      if (auto* close = std::get_if<Close>(&action)) closed = close->conn == c;
    }
  }
  CHECK(closed);
  CHECK(n1.core->stats().connectionsRefused == 1);
}

TEST_CASE("core: partition injection drops traffic both ways until heal; then the sides converge") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  cluster(net, 3);
  auto& n1 = net["n1"];
  auto& n2 = net["n2"];
  auto& n3 = net["n3"];
  n3.core->partition({"n1", "n2"});
  n1.core->partition({"n3"});
  n2.core->partition({"n3"});
  for (int i = 0; i < 20; ++i) {
    publish(net, n1, n1.store.write("sku-2", "u" + std::to_string(i), "majority", 100, 1));
    publish(net, n3, n3.store.write("sku-3", "u" + std::to_string(i), "minority", 100, 3));
  }
  net.runFor(8000);
  CHECK(n1.store.rootHash() == n2.store.rootHash());
  CHECK(n1.store.rootHash() != n3.store.rootHash());
  CHECK(memberOf(n1, "n3")->state == PeerState::kDead);
  CHECK(memberOf(n1, "n3")->partitioned);
  CHECK(n3.core->stats().partitionDropped > 0);
  for (auto* n : {&n1, &n2, &n3}) n->core->heal();
  // Dead members are still probed now and then; told it is dead, n3
  // refutes, and the sides repair.
  net.runFor(6000);
  CHECK(memberOf(n1, "n3")->state == PeerState::kAlive);
  CHECK(n1.store.rootHash() == n3.store.rootHash());
  CHECK(n2.store.rootHash() == n3.store.rootHash());
  CHECK(n2.store.has("sku-3", "u7"));
}

TEST_CASE("core: a leaving node hands its writes to a peer, and is marked left everywhere") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  cluster(net, 5);
  auto& n5 = net["n5"];
  // Written on n5 and never pushed: only a repair can carry it.
  for (int i = 0; i < 20; ++i) n5.store.write("sku", "only-" + std::to_string(i), "x", 10, n5.replica);
  n5.core->leave(net.now);
  net.settle();
  for (int i = 0; i < 100 && !n5.core->leaveDone(); ++i) net.runFor(ReplicationCore::kTickMillis);
  REQUIRE(n5.core->leaveDone());
  net.crash(n5);  // it stops
  int holders = 0;
  for (Node* n : net.all()) holders += n != &n5 && n->store.has("sku", "only-19");
  CHECK(holders >= 1);
  net.runFor(5000);
  for (Node* n : net.all()) {
    if (n == &n5) continue;
    CHECK(memberOf(*n, "n5")->state == PeerState::kLeft);
    CHECK(n->store.has("sku", "only-19"));
  }
  // Restarted as it was, it learns it left and stays out; with rejoin it
  // comes back.
  net.restart(n5, {"n1:7400"});
  net.runFor(3000);
  CHECK(n5.core->removed());
  CHECK(memberOf(net["n1"], "n5")->state == PeerState::kLeft);
  net.restart(n5, {"n1:7400"}, [](CoreOptions& o) { o.rejoin = true; });
  net.runFor(3000);
  CHECK_FALSE(n5.core->removed());
  for (Node* n : net.all()) {
    if (n != &n5) CHECK(memberOf(*n, "n5")->state == PeerState::kAlive);
  }
}

TEST_CASE("core: an administrator removes a dead node for good; dead members are forgotten") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  cluster(net, 5, 1, [](CoreOptions& o) { o.forgetDeadAfterMillis = 30'000; });
  auto& n1 = net["n1"];
  CHECK(failure(n1.core->remove(net.now, "n1")).code == ErrorCode::kInvalidArgument);
  CHECK(failure(n1.core->remove(net.now, "nobody")).code == ErrorCode::kNotFound);
  auto& n5 = net["n5"];
  net.crash(n5);
  REQUIRE(n1.core->remove(net.now, "n5").ok());
  net.runFor(3000);
  for (Node* n : net.all()) {
    if (n != &n5) CHECK(memberOf(*n, "n5")->state == PeerState::kLeft);
  }
  // Back without rejoin: refused, and told so.
  net.restart(n5, {"n1:7400"});
  net.runFor(3000);
  CHECK(n5.core->removed());
  CHECK(memberOf(n1, "n5")->state == PeerState::kLeft);
  // n4 dies and is never removed: forgotten 30 s after it was declared dead.
  net.crash(net["n4"]);
  net.runFor(15'000);
  CHECK(memberOf(n1, "n4")->state == PeerState::kDead);
  net.runFor(35'000);
  CHECK_FALSE(memberOf(n1, "n4"));
  CHECK_FALSE(memberOf(n1, "n5"));  // the tombstone too
}

TEST_CASE("core: the same seed and inputs give the same actions") {
  auto trace = [](uint64_t seed) {
    Net net(seed);
    std::vector<std::string> out;
    cluster(net, 6, 2);
    auto& n1 = net["n1"];
    for (int i = 0; i < 30; ++i) {
      publish(net, n1, n1.store.write("sku", "u" + std::to_string(i), "x", 10, 1));
    }
    net.runFor(4000);
    for (Node* n : net.all()) {
      auto s = n->core->stats();
      out.push_back(std::to_string(s.framesOut) + "/" + std::to_string(s.bytesOut) + "/" +
                    std::to_string(s.syncStarted) + "/" + std::to_string(n->dialTimes.size()));
    }
    return out;
  };
  CHECK(trace(7) == trace(7));
  CHECK(trace(7) != trace(8));
}

TEST_CASE("core: connections others opened are capped once they say hello") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  auto& n1 = net.add("n1", {}, [](CoreOptions& o) { o.maxConnections = 2; });
  std::vector<ConnId> conns;
  for (int i = 0; i < 4; ++i) {
    conns.push_back(n1.core->accepted(net.now, "10.0.0.9:" + std::to_string(5000 + i)));
    n1.core->opened(net.now, conns.back());
  }
  // Strangers do not count: all four are open. Past the cap, the probe
  // connection unused the longest makes room for a newcomer.
  for (int i = 0; i < 3; ++i) {
    n1.core->received(net.now + uint64_t(i), conns[size_t(i)], helloFrom("p" + std::to_string(i)));
  }
  bool firstClosed = false;
  for (auto& action : n1.core->takeActions()) {
    if (auto* close = std::get_if<Close>(&action)) firstClosed = firstClosed || close->conn == conns[0];
  }
  CHECK(firstClosed);
  CHECK_FALSE(n1.core->helloReceived(conns[0]));
  CHECK(n1.core->helloReceived(conns[1]));
  CHECK(n1.core->helloReceived(conns[2]));
  // Partial-view links are never evicted: with both slots taken by them, a
  // newcomer is refused.
  auto& n2 = net.add("n2", {}, [](CoreOptions& o) { o.maxConnections = 2; });
  std::vector<ConnId> links;
  for (int i = 0; i < 3; ++i) {
    links.push_back(n2.core->accepted(net.now, "10.0.0.8:" + std::to_string(5000 + i)));
    n2.core->opened(net.now, links.back());
    n2.core->received(net.now, links.back(), frameFrom("q" + std::to_string(i), [&](wire::Frame::Builder f) {
                        auto h = f.initHello();
                        auto m = h.initMember();
                        m.setNodeId("q" + std::to_string(i));
                        m.setGossipAddress("q" + std::to_string(i) + ":7400");
                        m.setIncarnation(1);
                        h.setActive(true);
                      }));
  }
  bool thirdClosed = false;
  for (auto& action : n2.core->takeActions()) {
    if (auto* close = std::get_if<Close>(&action)) thirdClosed = close->conn == links[2];
  }
  CHECK(thirdClosed);
  CHECK(n2.core->stats().connectionsRefused == 1);
  CHECK(n2.core->helloReceived(links[0]));
  CHECK(n2.core->helloReceived(links[1]));
}

TEST_CASE("core: a write made while a node has no partial view is pushed to members directly") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  // No partial-view links at all (as just after a join, before the view
  // forms): only the fallback can push.
  auto none = [](CoreOptions& o) { o.activeInRegion = 0; };
  auto& n1 = net.add("n1", {}, none);
  auto& n2 = net.add("n2", {"n1:7400"}, none);
  auto& n3 = net.add("n3", {"n1:7400"}, none);
  net.runFor(2000);
  REQUIRE(alive(n3) == 2);
  for (auto& m : n3.core->members()) REQUIRE_FALSE(m.active);
  publish(net, n3, n3.store.write("sku", "early", "x", 10, n3.replica));
  CHECK(n1.store.has("sku", "early"));  // at once, not at an anti-entropy session
  CHECK(n2.store.has("sku", "early"));
}

TEST_CASE(
    "core: pull asks live peers for one review, the write's origin first, and merges answers") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  // Anti-entropy and pushes out of the way: only pulls move states.
  cluster(net, 4, 1, [](CoreOptions& o) { o.antiEntropyIntervalMillis = 3'600'000; });
  auto& n1 = net["n1"];
  auto& n3 = net["n3"];
  net.runFor(1000);
  n1.store.write("p1", "ann", "only on n1", net.now, n1.replica);  // not published
  REQUIRE_FALSE(n3.store.has("p1", "ann"));

  n3.core->pull(net.now, crdt::ReviewKey{"p1", "ann"}, "n1");
  net.settle();
  CHECK(n3.store.has("p1", "ann"));
  const auto& s3 = n3.core->stats();
  CHECK(s3.pullsSent == 3);  // every live peer (fewer than kPullFanout)
  CHECK(s3.statesPulled == 1);
  CHECK(n1.core->stats().pullsServed == 1);
  CHECK(net["n2"].core->stats().pullsServed == 0);  // holds nothing: no answer
  CHECK(n3.core->mergesPending() == 0);

  // Asked again at once: nothing sent (kPullRepeatMillis); later: again.
  n3.core->pull(net.now, crdt::ReviewKey{"p1", "ann"}, "n1");
  net.settle();
  CHECK(n3.core->stats().pullsSent == 3);
  net.runFor(ReplicationCore::kPullRepeatMillis + 50);
  n3.core->pull(net.now, crdt::ReviewKey{"p1", "ann"}, "n1");
  net.settle();
  CHECK(n3.core->stats().pullsSent == 6);

  // A key nobody holds: asked, nothing comes back.
  n3.core->pull(net.now, crdt::ReviewKey{"p9", "nobody"}, "");
  net.settle();
  CHECK(n3.core->stats().pullsSent == 9);
  CHECK(n3.core->stats().statesPulled == 2);  // the repeat above brought p1/ann again
  CHECK_FALSE(n3.store.has("p9", "nobody"));

  // Partitioned peers are not asked; this node itself never is.
  n3.core->partition({"n1", "n2"});
  net.runFor(ReplicationCore::kPullRepeatMillis + 50);
  n3.core->pull(net.now, crdt::ReviewKey{"p2", "bob"}, "n3");
  net.settle();
  CHECK(n3.core->stats().pullsSent == 10);  // n4 only
}

TEST_CASE("core: pulled states pass admit; a peer's refusal is counted") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  Net net(seed);
  cluster(net, 2, 1, [](CoreOptions& o) {
    o.antiEntropyIntervalMillis = 3'600'000;
    o.admit = [](const crdt::ReviewDoc& doc) -> Status {
      if (doc.key().author == "banned") return makeError(ErrorCode::kInvalidArgument, "banned");
      return okStatus();
    };
  });
  auto& n1 = net["n1"];
  auto& n2 = net["n2"];
  n1.store.write("p1", "banned", "x", net.now, n1.replica);
  n2.core->pull(net.now, crdt::ReviewKey{"p1", "banned"}, "n1");
  net.settle();
  CHECK(n1.core->stats().pullsServed == 1);
  CHECK_FALSE(n2.store.has("p1", "banned"));
  CHECK(n2.core->stats().statesRefused == 1);
  CHECK(n2.core->stats().statesPulled == 0);
}
