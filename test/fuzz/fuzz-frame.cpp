// Fuzz target: gossip frames as they travel on the wire, and the replication
// core that reads them (gossip/frame.h, gossip/secure-channel.h,
// gossip/replication-core.h).
//
// The input is a script of frame bodies, each a 4-byte little-endian length
// and that many bytes (the last may be cut short). On two connections (pairs
// of SecureChannels), a sender seals each body (cut to whole words; bodies
// too large for a first frame are skipped) and the receiver opens the
// stream, appended whole on one and in small pieces on the other: both must
// give back the very bodies sealed, in order, and a stream cut inside a
// frame must just wait for more. Then each body
//   - is parsed; a frame that parses is read the way the core reads it
//     (which must not throw: a parsed frame is safe to read): its deltas are
//     decoded and merged into a real store, its reconcile message goes to a
//     real gossip::Reconciler, whose own replies must in turn be well formed;
//   - goes, in order, to a real ReplicationCore over that store, on a
//     connection of its own per input, whose Merge actions are executed.
//
// This target (then over a plaintext length-prefixed stream) found that
// parse did not check that `deltas` and `reconcile` are byte lists, and that
// reading a parsed frame again could exceed the traversal limit parse had
// used up; both are fixed and their inputs are in the corpus
// (corpus/frame/finding-*). A throw while reading a parsed frame is a
// finding; CHORUS_FUZZ_STRICT_FRAMES=0 tolerates it.
#include <kj/exception.h>

#include <cstring>
#include <optional>
#include <vector>

#include "crdt/review.h"
#include "fuzz-support.h"
#include "gossip/frame.h"
#include "gossip/reconciler.h"
#include "gossip/replica-store.h"
#include "gossip/replication-core.h"
#include "gossip/secure-channel.h"

using namespace chorus;
using Kind = gossip::SecureChannel::Received::Kind;

namespace {

constexpr size_t kMaxFrameBytes = 1 << 20;  // the real limit is 32 MiB; inputs are small

const gossip::Keyring& ring() {
  static const gossip::Keyring r =
      gossip::Keyring::fromBase64({"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}).value();
  return r;
}

// The script's bodies; `cut`: the last one was cut short.
struct Script {
  std::vector<std::string> bodies;
  bool cut = false;
};

Script parseScript(const uint8_t* data, size_t size) {
  Script out;
  size_t at = 0;
  while (at + 4 <= size) {
    uint32_t length = uint32_t(data[at]) | uint32_t(data[at + 1]) << 8 |
                      uint32_t(data[at + 2]) << 16 | uint32_t(data[at + 3]) << 24;
    at += 4;
    size_t take = std::min<size_t>(length, size - at);
    std::string body(reinterpret_cast<const char*>(data + at), take);
    at += take;
    if (take < length) out.cut = true;
    body.resize(body.size() / 8 * 8);  // the channel seals whole words
    if (body.empty()) continue;
    // The first frame of a connection may be at most kMaxUnauthenticatedBytes.
    if (body.size() + gossip::kSealOverheadBytes > gossip::kMaxUnauthenticatedBytes) continue;
    out.bodies.push_back(std::move(body));
    if (out.cut) break;
  }
  return out;
}

// Seals the script's bodies on one connection and opens them, the stream
// delivered in pieces of `piece` bytes; the bodies that opened.
std::vector<std::string> sealAndOpen(const Script& script, size_t cutBytes, size_t piece) {
  gossip::SecureChannel sender(kMaxFrameBytes), receiver(kMaxFrameBytes);
  std::string toSender = receiver.preamble();
  sender.append(toSender.data(), toSender.size());
  FUZZ_CHECK(sender.next(ring()).kind == Kind::kNeedMore && sender.ready(), "sender not ready");
  std::string stream = sender.preamble();
  for (const auto& body : script.bodies) stream += sender.seal(ring().primary(), body);
  stream.resize(stream.size() - cutBytes);
  std::vector<std::string> out;
  for (size_t at = 0; at < stream.size(); at += piece) {
    receiver.append(stream.data() + at, std::min(piece, stream.size() - at));
    for (;;) {
      auto received = receiver.next(ring());
      if (received.kind == Kind::kNeedMore) break;
      FUZZ_CHECK(received.kind == Kind::kFrame, "a sealed frame did not open: " + received.why);
      auto bytes = received.body.asBytes();
      out.emplace_back(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
    }
  }
  return out;
}

gossip::Reconciler& reconciler() {
  static gossip::Reconciler* r =
      new gossip::Reconciler(fuzz::FuzzStore::get().store(), fuzz::FuzzStore::get().onMerged());
  return *r;
}
uint64_t deltasMerged = 0;

gossip::StoreReplica& replica() {
  static gossip::StoreReplica* r = new gossip::StoreReplica(fuzz::FuzzStore::get().store());
  return *r;
}
gossip::ReplicationCore& core() {
  static gossip::ReplicationCore* c = [] {
    gossip::CoreOptions o;
    o.nodeId = "fuzzed";
    o.gossipAddress = "127.0.0.1:7400";
    o.maxFrameBytes = kMaxFrameBytes;
    auto* core = new gossip::ReplicationCore(o, replica());
    core->start(1, {});
    return core;
  }();
  return *c;
}
uint64_t coreMerges = 0;
uint64_t coreNow = 1;

bool strict() {
  static const bool strict = [] {
    const char* env = std::getenv("CHORUS_FUZZ_STRICT_FRAMES");
    return env == nullptr || std::string(env) != "0";
  }();
  return strict;
}

// Reads a Data (or List(Data)) field of a parsed frame; see "known gaps".
template <class Read>
bool readData(Read read) {
  if (strict()) {
    read();
    return true;
  }
  return kj::runCatchingExceptions(read) == nullptr;
}

void handleReconcile(std::string_view message) {
  auto reply = reconciler().handle(message);
  if (!reply.ok() || !reply.value()) return;
  // Our own answer must be a message we accept ourselves.
  auto again = reconciler().handle(reply.value()->bytes);
  FUZZ_CHECK(again.ok() || again.error().code != ErrorCode::kCorruption,
             "the reconciler refused its own reply: " + again.error().toString());
}

void readFrame(gossip::ParsedFrame& frame, size_t bodyBytes) {
  FUZZ_CHECK(frame.bytes() == bodyBytes, "frame size");
  auto root = frame.root();
  FUZZ_CHECK(root.getVersion() == gossip::wire::PROTOCOL_VERSION, "version");
  FUZZ_CHECK(root.getFrom().size() > 0, "sender");
  auto member = [](gossip::wire::Member::Reader m) {
    return std::string(m.getNodeId().cStr()) + m.getGossipAddress().cStr() +
           m.getRpcAddress().cStr() + m.getRegion().cStr();
  };
  auto probe = [](gossip::wire::Probe::Reader p) {
    return std::string(p.getTarget().cStr()) + p.getTargetAddress().cStr();
  };
  for (auto m : root.getMembers()) (void)member(m);
  auto& store = fuzz::FuzzStore::get();
  switch (root.which()) {
    case gossip::wire::Frame::HELLO:
      (void)member(root.getHello().getMember());
      break;
    case gossip::wire::Frame::PING:
      (void)probe(root.getPing());
      break;
    case gossip::wire::Frame::ACK:
      (void)probe(root.getAck());
      break;
    case gossip::wire::Frame::NACK:
      (void)probe(root.getNack());
      break;
    case gossip::wire::Frame::PING_REQ:
      (void)probe(root.getPingReq());
      break;
    case gossip::wire::Frame::GOSSIP:
      break;
    case gossip::wire::Frame::PUSH_PULL:
      for (auto m : root.getPushPull()) (void)member(m);
      break;
    case gossip::wire::Frame::PUSH_PULL_REPLY:
      for (auto m : root.getPushPullReply()) (void)member(m);
      break;
    case gossip::wire::Frame::IHAVE:
      for (auto id : root.getIhave()) (void)id;
      break;
    case gossip::wire::Frame::GRAFT:
      for (auto id : root.getGraft()) (void)id;
      break;
    case gossip::wire::Frame::PRUNE:
      for (auto o : root.getPrune()) (void)o.size();
      break;
    case gossip::wire::Frame::BROADCAST: {
      capnp::List<gossip::wire::Broadcast>::Reader list;
      if (!readData([&] { list = root.getBroadcast(); })) break;
      for (unsigned i = 0; i < list.size(); ++i) {
        capnp::Data::Reader data;
        if (!readData([&] { data = list[i].getData(); })) continue;
        (void)list[i].getOrigin();
        (void)list[i].getScope();
        auto doc = crdt::ReviewDoc::decode(
            std::string_view(reinterpret_cast<const char*>(data.begin()), data.size()));
        if (!doc.ok()) continue;
        ++deltasMerged;
        store.store().merge(std::move(doc).value(), store.onMerged());
      }
      break;
    }
    case gossip::wire::Frame::RECONCILE: {
      capnp::Data::Reader data;
      if (!readData([&] { data = root.getReconcile(); })) break;
      handleReconcile(std::string_view(reinterpret_cast<const char*>(data.begin()), data.size()));
      break;
    }
    case gossip::wire::Frame::PULL:
      for (auto k : root.getPull())
        (void)(std::string(k.getProduct().cStr()) + k.getAuthor().cStr());
      break;
    case gossip::wire::Frame::PULLED: {
      capnp::List<capnp::Data>::Reader list;
      if (!readData([&] { list = root.getPulled(); })) break;
      for (unsigned i = 0; i < list.size(); ++i) {
        capnp::Data::Reader data;
        if (!readData([&] { data = list[i]; })) continue;
        auto doc = crdt::ReviewDoc::decode(
            std::string_view(reinterpret_cast<const char*>(data.begin()), data.size()));
        if (!doc.ok()) continue;
        ++deltasMerged;
        store.store().merge(std::move(doc).value(), store.onMerged());
      }
      break;
    }
    default:
      FUZZ_CHECK(false, "parse accepted an unknown frame kind");
  }
}

// The core's actions: merges run through the store (counted, so the input's
// writes are done before the next input); the rest needs no network here.
void runCore() {
  auto& store = fuzz::FuzzStore::get();
  for (auto& action : core().takeActions()) {
    if (auto* merge = std::get_if<gossip::Merge>(&action)) {
      for (auto& state : merge->states) {
        ++coreMerges;
        replica().merge(std::move(state), store.onMerged());
        core().merged(merge->ticket);  // (as if committed: only the count matters here)
      }
    } else if (auto* send = std::get_if<gossip::SendFrame>(&action)) {
      FUZZ_CHECK(send->body->size() % 8 == 0 && !send->body->empty(), "the core sent no frame");
      core().drained(send->conn, send->body->size() + gossip::kSealOverheadBytes, send->deltas);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Script script = parseScript(data, size);

  bool cut = script.cut && !script.bodies.empty();
  // The last frame cut short: it must not open, and nothing is refused.
  size_t cutBytes = cut ? 1 + size % 16 : 0;
  std::vector<std::string> openedWhole = sealAndOpen(script, cutBytes, size + 1024);
  std::vector<std::string> openedPieces = sealAndOpen(script, cutBytes, 1 + size % 7);
  FUZZ_CHECK(openedWhole == openedPieces, "cutting the stream changed its frames");
  size_t expected = script.bodies.size() - (cut ? 1 : 0);
  FUZZ_CHECK(openedWhole.size() == expected, "frames lost or invented by the channel");
  for (size_t i = 0; i < openedWhole.size(); ++i) {
    FUZZ_CHECK(openedWhole[i] == script.bodies[i], "a frame opened with other bytes");
  }

  gossip::ConnId conn = core().accepted(++coreNow, "127.0.0.2:1");
  core().opened(coreNow, conn);
  runCore();
  for (const auto& body : openedWhole) {
    auto words = kj::heapArray<capnp::word>(body.size() / sizeof(capnp::word));
    std::memcpy(words.begin(), body.data(), body.size());
    auto frame = gossip::ParsedFrame::parse(std::move(words));
    if (!frame.ok()) {
      FUZZ_CHECK(frame.error().code == ErrorCode::kCorruption, frame.error().toString());
    } else {
      auto thrown = kj::runCatchingExceptions([&] { readFrame(*frame.value(), body.size()); });
      KJ_IF_MAYBE (e, thrown) {  // see "known gaps"
        FUZZ_CHECK(!strict(),
                   std::string("reading a parsed frame threw: ") + e->getDescription().cStr());
      }
    }
    core().received(coreNow, conn, body);  // closes the connection on what it refuses
    runCore();
  }
  core().closed(coreNow, conn);
  runCore();
  fuzz::FuzzStore::get().waitMerged(reconciler().counters().statesReceived + deltasMerged +
                                    coreMerges);
  return 0;
}
