// Clusters of real stores in one process, gossiping over loopback TCP.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "gossip/cluster.h"
#include "gossip/frame.h"

using namespace chorus;
using namespace std::chrono_literals;

namespace {

// One node: a store in a temporary directory and its Cluster.
struct TestNode {
  std::string id;
  std::filesystem::path dir;
  std::unique_ptr<storage::Store> store;
  std::unique_ptr<gossip::Cluster> cluster;

  TestNode(const std::string& nodeId, std::vector<std::string> seeds) : id(nodeId) {
    dir = std::filesystem::temp_directory_path() /
          ("chorus-cluster-test-" + nodeId + "-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    open(std::move(seeds));
  }
  void open(std::vector<std::string> seeds, const std::string& listen = "127.0.0.1:0") {
    storage::Options options;
    options.dir = (dir / "store").string();
    options.unsafeNoSync = true;  // throwaway data
    auto opened = storage::Store::open(options);
    REQUIRE_MESSAGE(opened.ok(), (opened.ok() ? "" : opened.error().toString()));
    store = std::move(opened).value();
    gossip::ClusterOptions c;
    c.nodeId = id;
    c.listen = listen;
    c.seeds = std::move(seeds);
    c.dataDir = dir.string();
    c.antiEntropyInterval = 200ms;
    c.heartbeatInterval = 50ms;
    auto started = gossip::Cluster::start(c, *store, nullptr);
    REQUIRE_MESSAGE(started.ok(), (started.ok() ? "" : started.error().toString()));
    cluster = std::move(started).value();
  }
  void close() {
    cluster.reset();
    store.reset();
  }
  ~TestNode() {
    close();
    std::filesystem::remove_all(dir);
  }
  void write(const std::string& product, const std::string& author, const std::string& body) {
    auto r = store->mutateSync(
        {product, author}, [&](crdt::ReviewDoc& doc, crdt::HybridClock& c) -> Result<crdt::ReviewDoc> {
          return doc.write(4, "title", body, c.now());
        });
    REQUIRE(r.ok());
    cluster->publish(r->delta);
  }
  storage::Hash root() {
    auto r = store->merkleRoot();
    REQUIRE(r.ok());
    return r.value();
  }
  size_t alive() {
    size_t n = 0;
    for (const auto& m : cluster->members()) n += m.state == gossip::PeerState::kAlive;
    return n;
  }
};

// Waits (bounded) until `ready` holds.
template <typename F>
bool eventually(F ready, std::chrono::milliseconds limit = 20s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (ready()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return ready();
}

bool sameRoots(std::vector<TestNode*> nodes) {
  for (auto* n : nodes) {
    if (n->root() != nodes[0]->root()) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("three nodes join through a seed, replicate, survive a partition and converge") {
  TestNode n1("n1", {});
  TestNode n2("n2", {n1.cluster->address()});
  TestNode n3("n3", {n1.cluster->address()});
  std::vector<TestNode*> all{&n1, &n2, &n3};
  // Membership spreads from the seed: everyone learns everyone.
  REQUIRE(eventually([&] { return n1.alive() == 2 && n2.alive() == 2 && n3.alive() == 2; }));

  // The fast path: a write on n2 reaches the others.
  n2.write("sku-1", "ann", "hello");
  REQUIRE(eventually([&] { return sameRoots(all); }));
  CHECK(n3.store->get({"sku-1", "ann"}).value().has_value());

  // Isolate n3 (each side drops the other's traffic), write on both sides.
  n3.cluster->partition({"n1", "n2"});
  n1.cluster->partition({"n3"});
  n2.cluster->partition({"n3"});
  for (int i = 0; i < 20; ++i) n1.write("sku-2", "user-" + std::to_string(i), "majority");
  for (int i = 0; i < 20; ++i) n3.write("sku-3", "user-" + std::to_string(i), "minority");
  n1.write("sku-1", "ann", "edited on n1");
  n3.write("sku-1", "ann", "edited on n3");
  REQUIRE(eventually([&] { return n1.root() == n2.root(); }));
  CHECK(n1.root() != n3.root());
  REQUIRE(eventually([&] {
    for (const auto& m : n1.cluster->members()) {
      if (m.nodeId == "n3") return m.state != gossip::PeerState::kAlive && m.partitioned;
    }
    return false;
  }));
  CHECK(n3.cluster->stats().partitionDropped > 0);

  // Heal: nobody intervenes, yet all converge through anti-entropy.
  for (auto* n : all) n->cluster->heal();
  REQUIRE(eventually([&] { return sameRoots(all); }));
  for (auto* n : all) {
    CHECK(n->store->verify().ok());
    auto doc = n->store->get({"sku-3", "user-7"});
    REQUIRE(doc.ok());
    CHECK(doc.value().has_value());
  }
  uint64_t completed = 0;
  for (auto* n : all) completed += n->cluster->stats().syncCompleted;
  CHECK(completed > 0);
}

TEST_CASE("a restarted node finds its peers from the persisted member list and catches up") {
  TestNode n1("r1", {});
  TestNode n2("r2", {n1.cluster->address()});
  REQUIRE(eventually([&] { return n1.alive() == 1 && n2.alive() == 1; }));
  std::string n2Address = n2.cluster->address();
  n2.close();
  for (int i = 0; i < 30; ++i) n1.write("sku-r", "user-" + std::to_string(i), "while r2 was down");
  // Restart r2 on the same address with no seeds: it must remember r1.
  n2.open({}, n2Address);
  std::vector<TestNode*> both{&n1, &n2};
  REQUIRE(eventually([&] { return sameRoots(both); }));
  CHECK(n2.store->get({"sku-r", "user-29"}).value().has_value());
}

TEST_CASE("garbage and oversized frames from a fake peer are counted and survived") {
  TestNode n1("g1", {});
  TestNode n2("g2", {n1.cluster->address()});
  REQUIRE(eventually([&] { return n1.alive() == 1; }));
  auto colon = n1.cluster->address().rfind(':');
  int port = std::stoi(n1.cluster->address().substr(colon + 1));
  auto attack = [&](const std::string& bytes) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(uint16_t(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    (void)::write(fd, bytes.data(), bytes.size());
    char c;
    (void)::read(fd, &c, 1);  // returns when the node closes the connection
    ::close(fd);
  };
  attack(std::string("\x10\x00\x00\x00", 4) + std::string(16, '\xff'));  // not a message
  attack(std::string("\x08\x00\x00\x7f", 4));                             // oversized
  attack(std::string("\x07\x00\x00\x00", 4) + "1234567");                 // not whole words
  CHECK(n1.cluster->stats().malformedFrames >= 3);
  // Still replicating.
  n2.write("sku-g", "ann", "after the attack");
  std::vector<TestNode*> both{&n1, &n2};
  CHECK(eventually([&] { return sameRoots(both); }));
}
