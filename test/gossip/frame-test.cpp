// Gossip frames (and their framing on the wire, the sealed stream), the
// failure detector and the member file.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "gossip/failure-detector.h"
#include "gossip/frame.h"
#include "gossip/member-file.h"
#include "gossip/secure-channel.h"
#include "support/seed.h"

using namespace chorus;
using namespace chorus::gossip;

namespace {

std::string helloFrame(const std::string& from, uint16_t version = wire::PROTOCOL_VERSION) {
  capnp::MallocMessageBuilder message;
  auto frame = newFrame(message, from);
  frame.setVersion(version);
  auto m = frame.initHello();
  m.setNodeId(from);
  m.setGossipAddress("127.0.0.1:7410");
  return encodeFrame(message);
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

}  // namespace

TEST_CASE("a frame body is the message's words alone; sealed, it survives any cutting") {
  // No length prefix in the body: the seal carries the length.
  capnp::MallocMessageBuilder message;
  newFrame(message, "n1").initHeartbeat(0);
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

TEST_CASE("frames of another version, without a sender, or not Cap'n Proto are refused") {
  CHECK(parseWhole(helloFrame("n1")).ok());
  auto old = parseWhole(helloFrame("n1", wire::PROTOCOL_VERSION + 1));
  REQUIRE(!old.ok());
  CHECK(old.error().message.find("protocol version") != std::string::npos);
  CHECK(!parseWhole(helloFrame("")).ok());
  CHECK(!parseWhole(std::string(64, '\xff')).ok());
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
    if (root.which() == wire::Frame::HELLO) (void)root.getHello().getNodeId().size();
  }
  CHECK(refused > 0);
}

TEST_CASE("phi grows with silence and falls back with a heartbeat") {
  PhiAccrualDetector d(200);
  CHECK(std::isinf(d.phi(0)));
  for (uint64_t t = 0; t <= 2000; t += 200) d.heartbeat(t);
  CHECK(d.phi(2000) < 0.01);
  double soon = d.phi(2400), later = d.phi(4000), much = d.phi(8000);
  CHECK(soon < later);
  CHECK(later < much);
  CHECK(soon < 5);   // alive after a missed beat or two
  CHECK(much > 10);  // dead after 6 s of silence
  d.heartbeat(8000);
  CHECK(d.phi(8000) < 0.01);
}

TEST_CASE("the member list round-trips and skips lines it cannot read") {
  auto dir = std::filesystem::temp_directory_path() /
             ("chorus-member-file-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string path = (dir / "members").string();
  auto missing = loadMembers(path);
  REQUIRE(missing.ok());
  CHECK(missing.value().empty());
  REQUIRE(
      saveMembers(path, {{"n1", "127.0.0.1:7410", "127.0.0.1:7400"}, {"n2", "127.0.0.1:7411", ""}})
          .ok());
  {
    std::ofstream out(path, std::ios::app);
    out << "only-one-field\n\n# a comment\n";
  }
  auto loaded = loadMembers(path);
  REQUIRE(loaded.ok());
  REQUIRE(loaded.value().size() == 2);
  CHECK(loaded.value()[0].nodeId == "n1");
  CHECK(loaded.value()[0].rpcAddress == "127.0.0.1:7400");
  CHECK(loaded.value()[1].rpcAddress.empty());
  std::filesystem::remove_all(dir);
}
