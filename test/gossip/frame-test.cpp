// Gossip framing, the failure detector and the member file.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "gossip/failure-detector.h"
#include "gossip/frame.h"
#include "gossip/member-file.h"
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

Result<std::unique_ptr<ParsedFrame>> parseWhole(const std::string& bytes, size_t max = 1 << 20) {
  FrameSplitter splitter(max);
  splitter.append(bytes.data(), bytes.size());
  auto body = splitter.next();
  if (!body.ok()) return body.error();
  REQUIRE(body.value().has_value());
  return ParsedFrame::parse(std::move(*body.value()));
}

}  // namespace

TEST_CASE("a frame survives being cut into pieces of any size") {
  std::string stream = helloFrame("n1") + helloFrame("n2") + helloFrame("n3");
  for (size_t piece : {size_t{1}, size_t{3}, size_t{7}, size_t{64}, stream.size()}) {
    FrameSplitter splitter(1 << 20);
    std::vector<std::string> senders;
    for (size_t at = 0; at < stream.size(); at += piece) {
      splitter.append(stream.data() + at, std::min(piece, stream.size() - at));
      for (;;) {
        auto body = splitter.next();
        REQUIRE(body.ok());
        if (!body.value()) break;
        auto frame = ParsedFrame::parse(std::move(*body.value()));
        REQUIRE(frame.ok());
        senders.push_back(frame.value()->root().getFrom().cStr());
      }
    }
    CHECK(senders == std::vector<std::string>{"n1", "n2", "n3"});
    CHECK(splitter.buffered() == 0);
  }
}

TEST_CASE("bad lengths are refused before anything is buffered") {
  auto refused = [](const std::string& header) {
    FrameSplitter splitter(1024);
    splitter.append(header.data(), header.size());
    auto body = splitter.next();
    return !body.ok() && body.error().code == ErrorCode::kCorruption;
  };
  CHECK(refused(std::string("\x00\x00\x00\x00", 4)));  // empty
  CHECK(refused(std::string("\x07\x00\x00\x00", 4)));  // not whole words
  CHECK(refused(std::string("\x08\x04\x00\x00", 4)));  // 1032 > 1024
  CHECK(refused(std::string("\xf8\xff\xff\xff", 4)));  // 4 GiB
}

TEST_CASE("frames of another version, without a sender, or not Cap'n Proto are refused") {
  CHECK(parseWhole(helloFrame("n1")).ok());
  auto old = parseWhole(helloFrame("n1", wire::PROTOCOL_VERSION + 1));
  REQUIRE(!old.ok());
  CHECK(old.error().message.find("protocol version") != std::string::npos);
  CHECK(!parseWhole(helloFrame("")).ok());
  std::string junk(4 + 64, '\xff');
  junk[0] = 64;
  junk[1] = junk[2] = junk[3] = 0;
  CHECK(!parseWhole(junk).ok());
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
      size_t at = 4 + rng() % (bad.size() - 4);  // keep the length: test the body
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
  REQUIRE(saveMembers(path, {{"n1", "127.0.0.1:7410", "127.0.0.1:7400"},
                             {"n2", "127.0.0.1:7411", ""}})
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
