// Fuzz target: the sealed gossip stream (gossip/secure-channel.h), the first
// code that reads bytes from a stranger on the gossip port.
//
// Two things per input:
//  1. The input as raw bytes from a peer, appended to a fresh receiver in
//     pieces: it must never yield a frame (that would need a valid tag), and
//     nothing large may be buffered before a frame authenticated.
//  2. The input as a script of a sender talking to a receiver that holds two
//     of three keys: frames sealed with an installed key and delivered whole
//     or in pieces must open, in order, with the very bytes sealed; a frame
//     with a flipped bit, sealed with the key the receiver lacks, replayed,
//     or followed by junk must never open.
// Challenges and nonces are random, so the bytes differ run to run; every
// checked outcome does not (short of forging a Poly1305 tag).
#include <optional>
#include <string>

#include "fuzz-support.h"
#include "gossip/secure-channel.h"

using namespace chorus;
using namespace chorus::gossip;
using Kind = SecureChannel::Received::Kind;

namespace {

constexpr size_t kMaxFrameBytes = 1 << 16;

// Fixed keys: the receiver has the first two.
const ClusterKey& key(int i) {
  static const ClusterKey keys[3] = {
      parseClusterKey("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").value(),
      parseClusterKey("ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=").value(),
      parseClusterKey("QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=").value()};
  return keys[i];
}

const Keyring& receiverRing() {
  static const Keyring ring = Keyring::fromBase64({key(0).base64(), key(1).base64()}).value();
  return ring;
}

// Reads the script: each call takes the next byte (0 past the end).
struct Script {
  const uint8_t* data;
  size_t size;
  size_t at = 0;
  bool done() const { return at >= size; }
  uint8_t byte() { return at < size ? data[at++] : 0; }
};

std::string text(const kj::Array<capnp::word>& words) {
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

// Appends `bytes` to `to` in pieces of `piece` and drains every frame; the
// outcome after the last byte. A frame opening is checked against `expect`
// (nullopt: no frame may open).
Kind deliver(SecureChannel& to, const std::string& bytes, size_t piece,
             const std::optional<std::string>& expect) {
  Kind last = Kind::kNeedMore;
  bool opened = false;
  for (size_t at = 0; at < bytes.size(); at += piece) {
    to.append(bytes.data() + at, std::min(piece, bytes.size() - at));
    auto r = to.next(receiverRing());
    last = r.kind;
    if (r.kind == Kind::kFrame) {
      FUZZ_CHECK(expect.has_value(), "a frame opened that was never sealed for this receiver");
      FUZZ_CHECK(!opened, "one sealed frame opened twice");
      FUZZ_CHECK(text(r.body) == *expect, "a frame opened with other bytes than were sealed");
      opened = true;
    } else if (r.kind != Kind::kNeedMore) {
      FUZZ_CHECK(!r.why.empty(), "a refusal without a reason");
      return r.kind;  // the stream is unusable now
    }
  }
  return last;
}

void rawStream(const uint8_t* data, size_t size) {
  SecureChannel receiver(kMaxFrameBytes);
  std::string bytes(reinterpret_cast<const char*>(data), size);
  size_t piece = size > 0 ? data[0] % 17 + 1 : 1;
  Kind k = deliver(receiver, bytes, piece, std::nullopt);
  FUZZ_CHECK(k != Kind::kFrame, "raw bytes opened as a frame");
  FUZZ_CHECK(receiver.buffered() <=
                 kPreambleBytes + 4 + kSealHeaderBytes + kMaxUnauthenticatedBytes + kSealTagBytes,
             "buffered a large frame before any authenticated");
}

void scripted(const uint8_t* data, size_t size) {
  SecureChannel sender(kMaxFrameBytes), receiver(kMaxFrameBytes);
  std::string toReceiver = sender.preamble(), toSender = receiver.preamble();
  sender.append(toSender.data(), toSender.size());
  FUZZ_CHECK(sender.next(receiverRing()).kind == Kind::kNeedMore, "a preamble alone is no frame");
  FUZZ_CHECK(deliver(receiver, toReceiver, 1, std::nullopt) == Kind::kNeedMore,
             "the preamble was refused");
  std::string previous;  // the last sealed frame, for a replay
  Script s{data, size};
  for (int step = 0; step < 64 && !s.done(); ++step) {
    uint8_t op = s.byte();
    size_t words = s.byte() % 16 + 1;
    std::string body(words * 8, '\0');
    for (auto& c : body) c = char(s.byte());
    const ClusterKey& k = key(op & 0x10 ? 1 : 0);
    switch (op % 6) {
      case 0:
      case 1: {  // a frame, whole or in pieces: it opens
        std::string sealed = sender.seal(k, body);
        size_t piece = op % 6 == 0 ? sealed.size() : s.byte() % 13 + 1;
        FUZZ_CHECK(deliver(receiver, sealed, piece, body) == Kind::kFrame,
                   "a sealed frame did not open");
        previous = sealed;
        break;
      }
      case 2: {  // a flipped bit: it does not open
        std::string sealed = sender.seal(k, body);
        size_t bit = (size_t(s.byte()) << 8 | s.byte()) % (sealed.size() * 8);
        sealed[bit / 8] = char(sealed[bit / 8] ^ (1 << (bit % 8)));
        FUZZ_CHECK(deliver(receiver, sealed, sealed.size(), std::nullopt) != Kind::kFrame,
                   "a frame with a flipped bit opened");
        return;
      }
      case 3: {  // a key the receiver lacks
        std::string sealed = sender.seal(key(2), body);
        FUZZ_CHECK(deliver(receiver, sealed, sealed.size(), std::nullopt) == Kind::kAuthFailed,
                   "a frame sealed with an unknown key was not an authentication failure");
        return;
      }
      case 4: {  // the previous frame again
        if (previous.empty()) break;
        FUZZ_CHECK(deliver(receiver, previous, previous.size(), std::nullopt) == Kind::kReplayed,
                   "a repeated frame was not refused as a replay");
        return;
      }
      default: {  // the rest of the input as junk after the good frames
        std::string junk(reinterpret_cast<const char*>(data + s.at), size - s.at);
        deliver(receiver, junk, junk.size() % 7 + 1, std::nullopt);
        return;
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  rawStream(data, size);
  scripted(data, size);
  return 0;
}
