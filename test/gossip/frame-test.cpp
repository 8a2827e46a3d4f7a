// Gossip frames (and their framing on the wire, the sealed stream), the
// failure detector and the member file.
#include <capnp/any.h>
#include <capnp/schema.h>
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "gossip/frame.h"
#include "gossip/member-file.h"
#include "gossip/secure-channel.h"
#include "gossip/snapshot-server.h"
#include "support/seed.h"

using namespace chorus;
using namespace chorus::gossip;

namespace {

std::string helloFrame(const std::string& from, uint16_t version = wire::PROTOCOL_VERSION) {
  capnp::MallocMessageBuilder message;
  auto frame = newFrame(message, from);
  frame.setVersion(version);
  auto m = frame.initHello().initMember();
  m.setNodeId(from);
  m.setGossipAddress("127.0.0.1:7410");
  m.setRegion("eu");
  return encodeFrame(message);
}

// A frame of each kind of protocol 2, with one piggybacked member update.
std::vector<std::pair<wire::Frame::Which, std::string>> everyKind() {
  std::vector<std::pair<wire::Frame::Which, std::string>> out;
  auto make = [&](wire::Frame::Which which, auto fill) {
    capnp::MallocMessageBuilder message;
    auto f = newFrame(message, "n1");
    auto m = f.initMembers(1)[0];
    m.setNodeId("n2");
    m.setGossipAddress("127.0.0.1:7411");
    m.setRegion("us");
    m.setIncarnation(7);
    m.setState(wire::MemberState::SUSPECT);
    fill(f);
    out.emplace_back(which, encodeFrame(message));
  };
  auto probe = [](wire::Probe::Builder p) {
    p.setSeq(42);
    p.setTarget("n3");
    p.setTargetAddress("127.0.0.1:7412");
  };
  auto members = [](capnp::List<wire::Member>::Builder list) {
    list[0].setNodeId("n1");
    list[0].setGossipAddress("127.0.0.1:7410");
    list[1].setNodeId("n4");
    list[1].setGossipAddress("127.0.0.1:7413");
    list[1].setState(wire::MemberState::LEFT);
  };
  make(wire::Frame::HELLO, [](wire::Frame::Builder f) {
    auto h = f.initHello();
    h.initMember().setNodeId("n1");
    h.getMember().setGossipAddress("127.0.0.1:7410");
    h.setActive(true);
  });
  make(wire::Frame::PING, [&](wire::Frame::Builder f) { probe(f.initPing()); });
  make(wire::Frame::ACK, [&](wire::Frame::Builder f) { probe(f.initAck()); });
  make(wire::Frame::NACK, [&](wire::Frame::Builder f) { probe(f.initNack()); });
  make(wire::Frame::PING_REQ, [&](wire::Frame::Builder f) { probe(f.initPingReq()); });
  make(wire::Frame::GOSSIP, [](wire::Frame::Builder f) { f.setGossip(); });
  make(wire::Frame::PUSH_PULL, [&](wire::Frame::Builder f) { members(f.initPushPull(2)); });
  make(wire::Frame::PUSH_PULL_REPLY,
       [&](wire::Frame::Builder f) { members(f.initPushPullReply(2)); });
  make(wire::Frame::BROADCAST, [](wire::Frame::Builder f) {
    auto b = f.initBroadcast(1)[0];
    b.setId(99);
    b.setRound(3);
    b.setScope("eu");
    b.setOrigin("n1");
    const uint8_t data[] = {1, 2, 3};
    b.setData(capnp::Data::Reader(data, sizeof data));
  });
  make(wire::Frame::IHAVE, [](wire::Frame::Builder f) {
    auto ids = f.initIhave(2);
    ids.set(0, 5);
    ids.set(1, 6);
  });
  make(wire::Frame::GRAFT, [](wire::Frame::Builder f) { f.initGraft(1).set(0, 5); });
  make(wire::Frame::PRUNE, [](wire::Frame::Builder f) { f.initPrune(1).set(0, "n1"); });
  make(wire::Frame::RECONCILE, [](wire::Frame::Builder f) {
    const uint8_t data[] = {9, 9};
    f.setReconcile(capnp::Data::Reader(data, sizeof data));
  });
  make(wire::Frame::PULL, [](wire::Frame::Builder f) {
    auto k = f.initPull(1)[0];
    k.setProduct("p1");
    k.setAuthor("ann");
  });
  make(wire::Frame::PULLED, [](wire::Frame::Builder f) {
    const uint8_t data[] = {7, 7, 7};
    f.initPulled(1).set(0, capnp::Data::Reader(data, sizeof data));
  });
  return out;
}

// A frame body as the sealed channel hands it over.
kj::Array<capnp::word> wordsOf(const std::string& body) {
  REQUIRE(body.size() % sizeof(capnp::word) == 0);
  auto words = kj::heapArray<capnp::word>(body.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), body.data(), body.size());
  return words;
}

Result<std::unique_ptr<ParsedFrame>> parseWhole(const std::string& body) {
  return ParsedFrame::parse(wordsOf(body));
}

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

TEST_CASE("a frame body is the message's words alone; sealed, it survives any cutting") {
  // No length prefix in the body: the seal carries the length.
  capnp::MallocMessageBuilder message;
  newFrame(message, "n1").setGossip();
  std::string body = encodeFrame(message);
  auto words = capnp::messageToFlatArray(message);
  CHECK(body.size() == words.asBytes().size());
  CHECK(body.compare(0, 4, std::string(4, '\0')) == 0);  // segment table: one segment
  // The stream on the wire: three sealed frames, delivered in pieces.
  Keyring ring = Keyring::fromBase64({generateClusterKey()}).value();
  for (size_t piece : {size_t{1}, size_t{3}, size_t{7}, size_t{64}, size_t{4096}}) {
    SecureChannel sender(1 << 20), receiver(1 << 20);
    std::string preamble = receiver.preamble();
    sender.append(preamble.data(), preamble.size());
    REQUIRE(sender.next(ring).kind == SecureChannel::Received::Kind::kNeedMore);
    std::string stream = sender.preamble();
    for (auto id : {"n1", "n2", "n3"}) stream += sender.seal(ring.primary(), helloFrame(id));
    std::vector<std::string> senders;
    for (size_t at = 0; at < stream.size(); at += piece) {
      receiver.append(stream.data() + at, std::min(piece, stream.size() - at));
      for (;;) {
        auto received = receiver.next(ring);
        if (received.kind == SecureChannel::Received::Kind::kNeedMore) break;
        REQUIRE(received.kind == SecureChannel::Received::Kind::kFrame);
        auto frame = ParsedFrame::parse(std::move(received.body));
        REQUIRE(frame.ok());
        senders.push_back(frame.value()->root().getFrom().cStr());
      }
    }
    CHECK(senders == std::vector<std::string>{"n1", "n2", "n3"});
    CHECK(receiver.buffered() == 0);
  }
}

TEST_CASE("every kind of protocol 2 parses, with its piggybacked member update") {
  auto frames = everyKind();
  CHECK(frames.size() == 15);  // hello .. reconcile: every member of the union
  for (const auto& [which, body] : frames) {
    CAPTURE(unsigned(which));
    auto parsed = parseWhole(body);
    REQUIRE_MESSAGE(parsed.ok(), parsed.error().toString());
    auto root = parsed.value()->root();
    CHECK(root.which() == which);
    CHECK(root.getVersion() == 2);
    REQUIRE(root.getMembers().size() == 1);
    CHECK(root.getMembers()[0].getState() == wire::MemberState::SUSPECT);
    CHECK(root.getMembers()[0].getIncarnation() == 7);
    CHECK(std::string(root.getMembers()[0].getRegion().cStr()) == "us");
  }
}

TEST_CASE(
    "frames of another version, without a sender, of an unknown kind or not Cap'n Proto are "
    "refused") {
  CHECK(wire::PROTOCOL_VERSION == 2);
  CHECK(parseWhole(helloFrame("n1")).ok());
  // Protocol 1 (full member lists on heartbeats): refused by its version
  // alone, with both versions named for the operator.
  auto v1 = parseWhole(helloFrame("n1", 1));
  REQUIRE(!v1.ok());
  CHECK(v1.error().code == ErrorCode::kCorruption);
  CHECK(v1.error().message.find("protocol version 1") != std::string::npos);
  CHECK(v1.error().message.find("speaks 2") != std::string::npos);
  auto newer = parseWhole(helloFrame("n1", wire::PROTOCOL_VERSION + 1));
  REQUIRE(!newer.ok());
  CHECK(newer.error().message.find("protocol version 3") != std::string::npos);
  // Every kind of another version, not only hellos.
  for (auto [which, body] : everyKind()) {
    CAPTURE(unsigned(which));
    auto words = wordsOf(body);
    capnp::FlatArrayMessageReader reader(words);
    capnp::MallocMessageBuilder copy;
    copy.setRoot(reader.getRoot<wire::Frame>());
    copy.getRoot<wire::Frame>().setVersion(1);
    auto refused = parseWhole(encodeFrame(copy));
    REQUIRE(!refused.ok());
    CHECK(refused.error().message.find("protocol version 1") != std::string::npos);
  }
  auto anonymous = parseWhole(helloFrame(""));
  REQUIRE(!anonymous.ok());
  CHECK(anonymous.error().message.find("no sender") != std::string::npos);
  CHECK(!parseWhole(std::string(64, '\xff')).ok());
  // A union discriminant past the last kind this node knows (a frame of a
  // later schema that kept the version): refused, not read as another kind.
  {
    capnp::MallocMessageBuilder message;
    newFrame(message, "n1").setGossip();
    auto data = capnp::toAny(message.getRoot<wire::Frame>()).getDataSection();
    size_t at = capnp::Schema::from<wire::Frame>().getProto().getStruct().getDiscriminantOffset();
    REQUIRE((at + 1) * 2 <= data.size());
    uint16_t unknown = uint16_t(wire::Frame::SNAPSHOT) + 1;
    data[at * 2] = uint8_t(unknown & 0xff);  // little-endian on the wire
    data[at * 2 + 1] = uint8_t(unknown >> 8);
    auto refused = parseWhole(encodeFrame(message));
    REQUIRE(!refused.ok());
    CHECK(refused.error().message.find("unknown frame kind") != std::string::npos);
  }
  // A member list whose text is not NUL-terminated: fails validation.
  {
    capnp::MallocMessageBuilder message;
    auto m = newFrame(message, "n1").initPushPull(1)[0];
    m.setNodeId("n2");
    m.setGossipAddress("127.0.0.1:7411");
    std::string body = encodeFrame(message);
    auto at = body.find("127.0.0.1:7411");
    REQUIRE(at != std::string::npos);
    body[at + 14] = 'x';  // the terminating NUL
    auto refused = parseWhole(body);
    REQUIRE(!refused.ok());
    CHECK(refused.error().code == ErrorCode::kCorruption);
  }
}

TEST_CASE("bit-flipped frames are refused or parse into a valid frame, never crash") {
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  std::string good = helloFrame("node-with-a-long-name");
  int refused = 0;
  for (int i = 0; i < 5000; ++i) {
    std::string bad = good;
    for (int flips = 1 + int(rng() % 3); flips > 0; --flips) {
      size_t at = rng() % bad.size();
      bad[at] = char(bad[at] ^ (1 << (rng() % 8)));
    }
    auto frame = parseWhole(bad);
    if (!frame.ok()) {
      ++refused;
      continue;
    }
    // Reading a parsed frame must be safe.
    auto root = frame.value()->root();
    (void)root.getFrom().size();
    if (root.which() == wire::Frame::HELLO) (void)root.getHello().getMember().getNodeId().size();
  }
  CHECK(refused > 0);
}

TEST_CASE("the member list round-trips, reads v1 lines, and skips lines it cannot read") {
  auto dir = std::filesystem::temp_directory_path() /
             ("chorus-member-file-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string path = (dir / "members").string();
  auto missing = loadMembers(path);
  REQUIRE(missing.ok());
  CHECK(missing.value().empty());
  KnownMember n1{"n1", "127.0.0.1:7410", "127.0.0.1:7400", "eu", 1700000000, "left"};
  KnownMember n2{"n2", "127.0.0.1:7411", "", "", 3, "dead"};  // no region: written "default"
  REQUIRE(saveMembers(path, {n1, n2}).ok());
  {
    std::ofstream out(path, std::ios::app);
    out << "only-one-field\n\n# a comment\n";
    out << "n3 127.0.0.1:7412 -\n";              // v1: alive, region unknown
    out << "n4 127.0.0.1:7413 - us 5 zombie\n";  // no such state
    out << "n5 127.0.0.1:7414 - us 5 suspect\n";
  }
  CHECK(readFile(path).rfind("# chorus members v2", 0) == 0);
  auto loaded = loadMembers(path);
  REQUIRE(loaded.ok());
  REQUIRE(loaded.value().size() == 4);
  const auto& l = loaded.value();
  CHECK(l[0].nodeId == "n1");
  CHECK(l[0].rpcAddress == "127.0.0.1:7400");
  CHECK(l[0].region == "eu");
  CHECK(l[0].incarnation == 1700000000);
  CHECK(l[0].state == "left");
  CHECK(l[1].rpcAddress.empty());
  CHECK(l[1].region == "default");
  CHECK(l[1].incarnation == 3);
  CHECK(l[1].state == "dead");
  CHECK(l[2].nodeId == "n3");
  CHECK(l[2].region.empty());
  CHECK(l[2].incarnation == 0);
  CHECK(l[2].state == "alive");
  CHECK(l[3].nodeId == "n5");
  CHECK(l[3].state == "suspect");
  std::filesystem::remove_all(dir);
}

TEST_CASE("a snapshot chunk's checksum is CRC-32C and changes with any flipped bit") {
  const std::string check = "123456789";  // the standard check value
  CHECK(snapshotChunkChecksum(reinterpret_cast<const uint8_t*>(check.data()), check.size()) ==
        0xE3069283u);
  std::string chunk(1 << 20, '\0');
  for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = char((i * 131) ^ (i >> 9));
  auto sum = [&] {
    return snapshotChunkChecksum(reinterpret_cast<const uint8_t*>(chunk.data()), chunk.size());
  };
  uint64_t whole = sum();
  for (size_t at : {size_t{0}, size_t{4096}, chunk.size() - 1}) {
    chunk[at] = char(chunk[at] ^ 0x10);
    CHECK(sum() != whole);
    chunk[at] = char(chunk[at] ^ 0x10);
  }
  CHECK(sum() == whole);
}
