// gossip::SnapshotServer driven directly (no sockets): a store's copy
// streamed in checksummed chunks within the newcomer's window, reassembled
// into the file its manifest describes; a resume from an offset; unknown
// snapshots and transfers beyond the cap refused with a reason before the
// connection closes.
#include <doctest/doctest.h>
#include <sodium.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <latch>
#include <thread>

#include "gossip/frame.h"
#include "gossip/snapshot-server.h"
#include "storage/backup.h"

using namespace chorus;
using namespace chorus::gossip;

namespace {

// What the server sent one connection: frames (parsed) and whether it
// asked for the connection to be closed.
struct Sent {
  std::vector<std::unique_ptr<ParsedFrame>> frames;
  bool closed = false;
};

std::map<uint64_t, Sent> collect(SnapshotServer& server) {
  std::map<uint64_t, Sent> out;
  for (auto& s : server.takeSends()) {
    if (s.close) {
      out[s.conn].closed = true;
      continue;
    }
    REQUIRE(s.body.size() % sizeof(capnp::word) == 0);
    auto words = kj::heapArray<capnp::word>(s.body.size() / sizeof(capnp::word));
    std::memcpy(words.begin(), s.body.data(), s.body.size());
    auto parsed = ParsedFrame::parse(std::move(words));
    REQUIRE(parsed.ok());
    REQUIRE(parsed.value()->root().which() == wire::Frame::SNAPSHOT);
    out[s.conn].frames.push_back(std::move(parsed).value());
  }
  return out;
}

// Hands `server` one snapshot message, built by `fill`.
void tell(SnapshotServer& server, uint64_t now, uint64_t conn,
          const std::function<void(wire::Snapshot::Builder)>& fill) {
  capnp::MallocMessageBuilder message;
  fill(newFrame(message, "newcomer").initSnapshot());
  auto body = encodeFrame(message);
  auto words = kj::heapArray<capnp::word>(body.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), body.data(), body.size());
  auto parsed = ParsedFrame::parse(std::move(words));
  REQUIRE(parsed.ok());
  server.received(now, conn, parsed.value()->root().getSnapshot());
}

void request(SnapshotServer& server, uint64_t now, uint64_t conn, const std::string& id,
             uint64_t offset, uint32_t window) {
  tell(server, now, conn, [&](auto s) {
    auto r = s.initRequest();
    r.setId(id);
    r.setOffset(offset);
    r.setWindow(window);
  });
}

std::string errorOf(const Sent& sent) {
  for (const auto& f : sent.frames) {
    auto s = f->root().getSnapshot();
    if (s.which() == wire::Snapshot::ERROR) return s.getError();
  }
  return "";
}

}  // namespace

TEST_CASE("snapshot server: chunks within the window, a resume, refusals with a reason") {
  auto dir = std::filesystem::temp_directory_path() /
             ("chorus-snapshot-test-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  storage::Options so;
  so.dir = (dir / "store").string();
  so.unsafeNoSync = true;
  auto opened = storage::Store::open(so);
  REQUIRE(opened.ok());
  auto& store = **opened;
  {
    std::latch done(3000);
    for (int i = 0; i < 3000; ++i) {
      store.mutate(
          {"p" + std::to_string(i % 7), "a" + std::to_string(i)},
          [i](crdt::ReviewDoc& doc, crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
            return doc.write(uint8_t(1 + i % 5), "t", std::string(500, char('a' + i % 26)),
                             clock.now());
          },
          [&](Result<storage::Applied> r) {
            CHECK(r.ok());
            done.count_down();
          });
    }
    done.wait();
  }

  std::atomic<int> woken{0};
  SnapshotServerOptions o;
  o.dir = (dir / "snapshots").string();
  o.nodeId = "peer";
  o.chunkBytes = 64 << 10;
  o.maxWindow = 4;
  o.maxTransfers = 1;
  SnapshotServer server(o, store, [&] { ++woken; });
  uint64_t now = 1000;

  // A query is answered with what the store holds.
  tell(server, now, 7, [](auto s) { s.setQuery(); });
  {
    auto sent = collect(server);
    REQUIRE(sent[7].frames.size() == 1);
    auto info = sent[7].frames[0]->root().getSnapshot().getInfo();
    CHECK(info.getKeys() == 3000);
    CHECK(info.getServes());
  }

  // A new snapshot: `start` at once, chunks as the copy is written.
  request(server, now, 1, "", 0, 2);
  std::string id;
  std::string file;
  std::optional<storage::BackupManifest> manifest;
  uint64_t unacked = 0;
  size_t maxUnacked = 0;
  auto take = [&](Sent& sent) {
    for (const auto& f : sent.frames) {
      auto s = f->root().getSnapshot();
      if (s.which() == wire::Snapshot::START) {
        id = s.getStart().getId();
        CHECK(s.getStart().getOffset() == 0);
        CHECK(s.getStart().getChunkBytes() == o.chunkBytes);
      } else if (s.which() == wire::Snapshot::CHUNK) {
        auto c = s.getChunk();
        CHECK(c.getOffset() == file.size());
        CHECK(snapshotChunkChecksum(c.getData().begin(), c.getData().size()) == c.getChecksum());
        file.append(reinterpret_cast<const char*>(c.getData().begin()), c.getData().size());
        ++unacked;
      } else if (s.which() == wire::Snapshot::END) {
        auto m = storage::BackupManifest::decode(s.getEnd().cStr());
        REQUIRE(m.ok());
        manifest = *m;
      } else {
        FAIL("unexpected message " << int(s.which()));
      }
    }
  };
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!manifest && std::chrono::steady_clock::now() < deadline) {
    now += 50;
    server.poll(now);
    auto sent = collect(server);
    take(sent[1]);
    CHECK_FALSE(sent[1].closed);
    maxUnacked = std::max<size_t>(maxUnacked, unacked);
    if (unacked > 0) {  // ack one chunk at a time: the window allows one more
      tell(server, now, 1, [&](auto s) { s.setAck(file.size()); });
      unacked = 0;
      auto more = collect(server);
      take(more[1]);
      maxUnacked = std::max<size_t>(maxUnacked, unacked);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  REQUIRE(manifest.has_value());
  CHECK(!id.empty());
  CHECK(maxUnacked <= 2);  // never beyond the window asked for
  CHECK(woken.load() >= 1);
  CHECK(manifest->keys == 3000);
  CHECK(manifest->fileBytes == file.size());
  std::array<uint8_t, 32> sum{};
  crypto_generichash(sum.data(), sum.size(), reinterpret_cast<const uint8_t*>(file.data()),
                     file.size(), nullptr, 0);
  CHECK(sum == manifest->checksum);
  CHECK(manifest->merkleRoot == store.merkleRoot().value());
  CHECK(server.snapshotsMade() == 1);

  // One transfer at a time here: a second is refused, with the reason.
  request(server, now, 2, "", 0, 4);
  {
    auto sent = collect(server);
    CHECK(errorOf(sent[2]).rfind("busy", 0) == 0);
    CHECK(sent[2].closed);
  }
  server.closed(now, 1);
  server.closed(now, 2);

  // A resume reads from the offset asked for, in the same snapshot.
  uint64_t from = 3 * o.chunkBytes;
  request(server, now, 3, id, from, 4);
  {
    auto sent = collect(server);
    REQUIRE(sent[3].frames.size() >= 2);
    auto start = sent[3].frames[0]->root().getSnapshot().getStart();
    CHECK(std::string(start.getId().cStr()) == id);
    CHECK(start.getOffset() == from);
    auto chunk = sent[3].frames[1]->root().getSnapshot().getChunk();
    CHECK(chunk.getOffset() == from);
    CHECK(std::string(reinterpret_cast<const char*>(chunk.getData().begin()),
                      chunk.getData().size()) == file.substr(from, o.chunkBytes));
    CHECK(server.snapshotsMade() == 1);
  }
  server.closed(now, 3);

  // A snapshot this node does not have: refused, so the newcomer starts over.
  request(server, now, 4, "0123456789abcdef", 0, 4);
  {
    auto sent = collect(server);
    CHECK(errorOf(sent[4]).rfind("unknown snapshot", 0) == 0);
    CHECK(sent[4].closed);
  }
  server.closed(now, 4);

  // Kept for resumes, then deleted once unused for keepForMillis; the
  // connection that only asked what the node holds is closed by then.
  CHECK(std::filesystem::exists(o.dir + "/" + id));
  server.poll(now + o.keepForMillis + 1);
  CHECK_FALSE(std::filesystem::exists(o.dir + "/" + id));
  {
    auto sent = collect(server);
    CHECK(errorOf(sent[7]).rfind("no request", 0) == 0);
    CHECK(sent[7].closed);
  }
  opened.value().reset();
  std::filesystem::remove_all(dir);
}
