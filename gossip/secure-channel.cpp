#include "gossip/secure-channel.h"

#include <sodium.h>

#include <cstring>

namespace chorus::gossip {

namespace {

constexpr char kMagic[4] = {'C', 'H', 'O', 'R'};
constexpr char kContext[] = "chorus-gossip-v1";  // 16 bytes, in the additional data
constexpr size_t kNonceBytes = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;
static_assert(kNonceBytes == 24);
static_assert(crypto_aead_xchacha20poly1305_ietf_ABYTES == kSealTagBytes);
static_assert(crypto_aead_xchacha20poly1305_ietf_KEYBYTES == kClusterKeyBytes);
// The clear fields the additional data covers: length, key id, seq, challenge.
constexpr size_t kBoundClearBytes = 4 + 4 + 8 + kChallengeBytes;

std::string hex(uint64_t v) {
  char out[17];
  std::snprintf(out, sizeof out, "%08llx", static_cast<unsigned long long>(v));
  return out;
}

}  // namespace

SecureChannel::SecureChannel(size_t maxFrameBytes) : maxFrameBytes_(maxFrameBytes) {
  if (sodium_init() < 0) std::abort();  // idempotent after the first call
  randombytes_buf(challenge_.data(), challenge_.size());
}

std::string SecureChannel::preamble() const {
  std::string out(kPreambleBytes, '\0');
  std::memcpy(out.data(), kMagic, sizeof kMagic);
  out[4] = char(kSecureVersion);
  std::memcpy(out.data() + 8, challenge_.data(), challenge_.size());
  return out;
}

std::string SecureChannel::additionalData(const uint8_t* clear,
                                          const uint8_t* senderChallenge) const {
  std::string ad(kContext, sizeof kContext - 1);
  ad.append(reinterpret_cast<const char*>(clear), kBoundClearBytes);
  ad.append(reinterpret_cast<const char*>(senderChallenge), kChallengeBytes);
  return ad;
}

std::string SecureChannel::seal(const ClusterKey& key, std::string_view body) {
  size_t length = kSealHeaderBytes + body.size() + kSealTagBytes;
  std::string out(4 + length, '\0');
  auto* p = reinterpret_cast<uint8_t*>(out.data());
  for (size_t i = 0; i < 4; ++i) p[i] = uint8_t(length >> (8 * i));
  for (size_t i = 0; i < 4; ++i) p[4 + i] = uint8_t(key.id() >> (8 * (3 - i)));
  for (size_t i = 0; i < 8; ++i) p[8 + i] = uint8_t(sendSeq_ >> (8 * i));
  std::memcpy(p + 16, peerChallenge_.data(), kChallengeBytes);
  uint8_t* nonce = p + kBoundClearBytes;  // right after the challenge
  randombytes_buf(nonce, kNonceBytes);
  std::string ad = additionalData(p, challenge_.data());
  unsigned long long sealed = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(
      nonce + kNonceBytes, &sealed, reinterpret_cast<const uint8_t*>(body.data()), body.size(),
      reinterpret_cast<const uint8_t*>(ad.data()), ad.size(), nullptr, nonce, key.bytes().data());
  ++sendSeq_;
  return out;
}

void SecureChannel::append(const char* data, size_t size) { buffer_.append(data, size); }

SecureChannel::Received SecureChannel::next(const Keyring& keys) {
  using Kind = Received::Kind;
  auto fail = [](Kind kind, std::string why) {
    Received r;
    r.kind = kind;
    r.why = std::move(why);
    return r;
  };
  const auto* p = reinterpret_cast<const uint8_t*>(buffer_.data() + offset_);
  if (!peerReady_) {
    size_t have = std::min(buffered(), sizeof kMagic);
    if (std::memcmp(p, kMagic, have) != 0) {
      return fail(Kind::kNotSealed,
                  "the peer sent no encryption preamble (an older Chorus node without cluster "
                  "keys, or not a gossip peer)");
    }
    if (buffered() < kPreambleBytes) return {};
    if (p[4] != kSecureVersion) {
      return fail(Kind::kMalformed, "gossip security version " + std::to_string(p[4]) +
                                        ", this node speaks " + std::to_string(kSecureVersion) +
                                        " (upgrade the older node)");
    }
    std::memcpy(peerChallenge_.data(), p + 8, kChallengeBytes);
    if (peerChallenge_ == challenge_) {
      return fail(Kind::kReplayed, "the peer echoed this node's own challenge");
    }
    peerReady_ = true;
    offset_ += kPreambleBytes;
    p += kPreambleBytes;
  }
  if (buffered() < 4) return {};
  size_t length = size_t(p[0]) | size_t(p[1]) << 8 | size_t(p[2]) << 16 | size_t(p[3]) << 24;
  size_t limit =
      authenticated_ ? maxFrameBytes_ : std::min(maxFrameBytes_, kMaxUnauthenticatedBytes);
  size_t minimum = kSealHeaderBytes + sizeof(capnp::word) + kSealTagBytes;
  if (length < minimum || length - kSealHeaderBytes - kSealTagBytes > limit) {
    return fail(Kind::kMalformed, "sealed frame length " + std::to_string(length) + " outside " +
                                      std::to_string(minimum) + ".." +
                                      std::to_string(limit + kSealHeaderBytes + kSealTagBytes) +
                                      (authenticated_ ? "" : " (before authentication)"));
  }
  size_t bodyBytes = length - kSealHeaderBytes - kSealTagBytes;
  if (bodyBytes % sizeof(capnp::word) != 0) {
    return fail(Kind::kMalformed,
                "sealed frame body of " + std::to_string(bodyBytes) + " bytes is not whole words");
  }
  if (buffered() < 4 + length) {
    // Room for the whole frame at once rather than by doubling.
    if (buffer_.capacity() < offset_ + 4 + length) buffer_.reserve(offset_ + 4 + length);
    return {};
  }

  uint32_t id = uint32_t{p[4]} << 24 | uint32_t{p[5]} << 16 | uint32_t{p[6]} << 8 | p[7];
  const ClusterKey* key = keys.find(id);
  if (!key) return fail(Kind::kAuthFailed, "sealed with unknown key " + hex(id));
  uint64_t seq = 0;
  for (size_t i = 0; i < 8; ++i) seq |= uint64_t{p[8 + i]} << (8 * i);
  const uint8_t* claimedChallenge = p + 16;
  const uint8_t* nonce = p + kBoundClearBytes;
  std::string ad = additionalData(p, peerChallenge_.data());
  auto words = kj::heapArray<capnp::word>(bodyBytes / sizeof(capnp::word));
  unsigned long long opened = 0;
  if (crypto_aead_xchacha20poly1305_ietf_decrypt(
          reinterpret_cast<uint8_t*>(words.begin()), &opened, nullptr, nonce + kNonceBytes,
          bodyBytes + kSealTagBytes, reinterpret_cast<const uint8_t*>(ad.data()), ad.size(), nonce,
          key->bytes().data()) != 0) {
    return fail(Kind::kAuthFailed, "tag does not verify under key " + key->fingerprint());
  }
  if (std::memcmp(claimedChallenge, challenge_.data(), kChallengeBytes) != 0) {
    return fail(Kind::kReplayed, "frame sealed for another connection (a replay)");
  }
  if (seq != receiveSeq_) {
    return fail(Kind::kReplayed, "frame sequence " + std::to_string(seq) + ", expected " +
                                     std::to_string(receiveSeq_) + " (replayed or reordered)");
  }
  ++receiveSeq_;
  authenticated_ = true;
  offset_ += 4 + length;
  if (offset_ == buffer_.size()) {
    buffer_.clear();
    if (buffer_.capacity() > (1u << 20)) buffer_.shrink_to_fit();  // a large frame's room, back
    offset_ = 0;
  } else if (offset_ > (1u << 20) && offset_ * 2 > buffer_.size()) {
    buffer_.erase(0, offset_);  // keep the buffer from growing without bound
    offset_ = 0;
  }
  Received r;
  r.kind = Kind::kFrame;
  r.body = std::move(words);
  return r;
}

}  // namespace chorus::gossip
