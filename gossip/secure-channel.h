// The sealed gossip stream of one connection.
//
// Each side starts by sending a plaintext preamble: "CHOR", a version byte,
// three zero bytes and a 16-byte random challenge of its own. After that,
// every frame is sealed with XChaCha20-Poly1305 (libsodium's
// crypto_aead_xchacha20poly1305_ietf):
//
//   length u32 LE | key id u32 BE | seq u64 LE | receiver's challenge (16) |
//   nonce (24) | ciphertext of one Cap'n Proto frame body, + 16-byte tag
//
// `length` counts what follows it. The additional data is a context string
// and every clear field before the nonce, plus the sender's own challenge,
// so a frame only opens on the connection and in the direction and position
// it was sealed for. A receiver picks the key by its id (no trial
// decryption), opens the frame, then checks that the challenge is its own
// and that seq is the next one it expects: an authentic frame that fails
// those checks is a replay (recorded on another connection, or repeated,
// dropped or reordered on this one).
//
// Memory: until a frame opened, a frame may be at most kMaxUnauthenticatedBytes
// long, so a stranger cannot make this node buffer large frames; after that,
// at most maxFrameBytes plus the seal. Oversized lengths are refused before
// anything is allocated.
//
// Threads: one per channel (the loop thread of the Cluster that owns it).
#pragma once

#include <capnp/common.h>
#include <kj/array.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "gossip/keyring.h"

namespace chorus::gossip {

inline constexpr size_t kChallengeBytes = 16;
inline constexpr size_t kPreambleBytes = 8 + kChallengeBytes;
inline constexpr uint8_t kSecureVersion = 1;
// Clear header after the length: key id, seq, receiver's challenge, nonce.
inline constexpr size_t kSealHeaderBytes = 4 + 8 + kChallengeBytes + 24;
inline constexpr size_t kSealTagBytes = 16;
// Bytes a sealed frame adds to a frame body (length prefix included).
inline constexpr size_t kSealOverheadBytes = 4 + kSealHeaderBytes + kSealTagBytes;
inline constexpr size_t kMaxUnauthenticatedBytes = 64 * 1024;

class SecureChannel {
 public:
  // `maxFrameBytes` bounds a frame body (the Cap'n Proto message).
  explicit SecureChannel(size_t maxFrameBytes);
  SecureChannel(const SecureChannel&) = delete;
  SecureChannel& operator=(const SecureChannel&) = delete;

  // The bytes to send first, before any sealed frame.
  std::string preamble() const;
  // Whether the peer's preamble arrived: sealing needs its challenge.
  bool ready() const { return peerReady_; }

  // Seals one frame body (a whole number of 8-byte words). Precondition:
  // ready().
  std::string seal(const ClusterKey& key, std::string_view body);

  // Received bytes, in order.
  void append(const char* data, size_t size);
  size_t buffered() const { return buffer_.size() - offset_; }

  struct Received {
    enum class Kind {
      kNeedMore,    // wait for more bytes
      kFrame,       // `body` is an authentic frame body, in order
      kMalformed,   // bad length or version (the stream is not framed as gossip)
      kNotSealed,   // no preamble: plaintext (an older node) or not gossip at all
      kAuthFailed,  // an unknown key, or a tag that does not verify
      kReplayed,    // authentic, but for another connection or out of sequence
    };
    Kind kind = Kind::kNeedMore;
    kj::Array<capnp::word> body;
    std::string why;  // for the failures; never key material
  };
  // The next frame. After any failure the stream is unusable: close it.
  Received next(const Keyring& keys);

 private:
  std::string additionalData(const uint8_t* clear, const uint8_t* senderChallenge) const;

  size_t maxFrameBytes_;
  std::array<uint8_t, kChallengeBytes> challenge_;  // ours
  std::array<uint8_t, kChallengeBytes> peerChallenge_{};
  bool peerReady_ = false;
  bool authenticated_ = false;  // a frame opened: full frame size allowed
  uint64_t sendSeq_ = 0;
  uint64_t receiveSeq_ = 0;
  std::string buffer_;
  size_t offset_ = 0;
};

}  // namespace chorus::gossip
