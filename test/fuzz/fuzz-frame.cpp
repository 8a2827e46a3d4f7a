// Fuzz target: a gossip TCP stream from a peer (gossip/frame.h).
//
// The input is the byte stream. It is cut into frames twice, appended whole
// and appended in small pieces: both must give the same frames and the same
// error. Each frame that parses is read the way gossip::Cluster reads it
// (which must not throw: a parsed frame is safe to read); its deltas are
// decoded and merged into a real store and its reconcile message goes to a
// real gossip::Reconciler, whose own replies must in turn be well formed.
//
// This target found that parse did not check that `deltas` and `reconcile`
// are byte lists, and that reading a parsed frame again could exceed the
// traversal limit parse had used up; both are fixed and their inputs are in
// the corpus (corpus/frame/finding-*). A throw while reading a parsed frame
// is a finding; CHORUS_FUZZ_STRICT_FRAMES=0 tolerates it.
#include <kj/exception.h>

#include <optional>
#include <vector>

#include "crdt/review.h"
#include "fuzz-support.h"
#include "gossip/frame.h"
#include "gossip/reconciler.h"

using namespace chorus;

namespace {

constexpr size_t kMaxFrameBytes = 1 << 20;  // the real limit is 32 MiB; inputs are small

// What splitting a stream gave: the frame bodies, then the error if any.
struct Split {
  std::vector<std::string> bodies;
  std::optional<std::string> error;
};

Split split(const uint8_t* data, size_t size, size_t piece) {
  Split out;
  gossip::FrameSplitter splitter(kMaxFrameBytes);
  for (size_t at = 0; at < size && !out.error; at += piece) {
    splitter.append(reinterpret_cast<const char*>(data + at), std::min(piece, size - at));
    for (;;) {
      auto body = splitter.next();
      if (!body.ok()) {
        FUZZ_CHECK(body.error().code == ErrorCode::kCorruption, body.error().toString());
        out.error = body.error().message;
        break;
      }
      if (!body.value()) break;
      auto bytes = body.value()->asBytes();
      out.bodies.emplace_back(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
    }
  }
  if (!out.error) FUZZ_CHECK(splitter.buffered() < size + 1, "buffered more than was appended");
  return out;
}

gossip::Reconciler& reconciler() {
  static gossip::Reconciler* r =
      new gossip::Reconciler(fuzz::FuzzStore::get().store(), fuzz::FuzzStore::get().onMerged());
  return *r;
}
uint64_t deltasMerged = 0;

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
  FUZZ_CHECK(frame.bytes() == bodyBytes + gossip::kFrameHeaderBytes, "frame size");
  auto root = frame.root();
  FUZZ_CHECK(root.getVersion() == gossip::wire::PROTOCOL_VERSION, "version");
  FUZZ_CHECK(root.getFrom().size() > 0, "sender");
  auto member = [](gossip::wire::Member::Reader m) {
    return std::string(m.getNodeId().cStr()) + m.getGossipAddress().cStr() +
           m.getRpcAddress().cStr();
  };
  auto& store = fuzz::FuzzStore::get();
  switch (root.which()) {
    case gossip::wire::Frame::HELLO:
      (void)member(root.getHello());
      break;
    case gossip::wire::Frame::HEARTBEAT:
      for (auto m : root.getHeartbeat()) (void)member(m);
      break;
    case gossip::wire::Frame::ACK:
      for (auto m : root.getAck()) (void)member(m);
      break;
    case gossip::wire::Frame::DELTAS: {
      capnp::List<capnp::Data>::Reader list;
      if (!readData([&] { list = root.getDeltas(); })) break;
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
    case gossip::wire::Frame::RECONCILE: {
      capnp::Data::Reader data;
      if (!readData([&] { data = root.getReconcile(); })) break;
      handleReconcile(std::string_view(reinterpret_cast<const char*>(data.begin()), data.size()));
      break;
    }
    default:
      FUZZ_CHECK(false, "parse accepted an unknown frame kind");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Split whole = split(data, size, size == 0 ? 1 : size);
  Split pieces = split(data, size, 1 + size % 7);
  FUZZ_CHECK(whole.bodies == pieces.bodies, "cutting the stream changed its frames");
  FUZZ_CHECK(whole.error == pieces.error, "cutting the stream changed its error");

  for (const auto& body : whole.bodies) {
    FUZZ_CHECK(!body.empty() && body.size() % 8 == 0 && body.size() <= kMaxFrameBytes,
               "body of " + std::to_string(body.size()) + " bytes");
    auto words = kj::heapArray<capnp::word>(body.size() / sizeof(capnp::word));
    std::memcpy(words.begin(), body.data(), body.size());
    auto frame = gossip::ParsedFrame::parse(std::move(words));
    if (!frame.ok()) {
      FUZZ_CHECK(frame.error().code == ErrorCode::kCorruption, frame.error().toString());
      continue;  // the connection would be closed here
    }
    auto thrown = kj::runCatchingExceptions([&] { readFrame(*frame.value(), body.size()); });
    KJ_IF_MAYBE (e, thrown) {  // see "known gaps"
      FUZZ_CHECK(!strict(),
                 std::string("reading a parsed frame threw: ") + e->getDescription().cStr());
    }
  }
  fuzz::FuzzStore::get().waitMerged(reconciler().counters().statesReceived + deltasMerged);
  return 0;
}
