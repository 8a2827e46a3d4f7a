// Cluster keys and the keyring that holds them.
//
// A cluster key is 32 random bytes, written as standard base64 (44
// characters). Every gossip frame is sealed with a key of the keyring
// (gossip/secure-channel.h): the primary one when sending, any installed one
// when receiving, so keys rotate without downtime (install everywhere, make
// it the primary node by node, remove the old one everywhere).
//
// A key is named by its fingerprint: the first 4 bytes of its BLAKE2b-256
// hash as 8 hex digits. The fingerprint is the key id on the wire and in
// listings; key material itself is never logged or printed by Chorus except
// by `chorus cluster keys generate`.
//
// Threads: the types here are plain values; Cluster guards its keyring.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "crdt/result.h"

namespace chorus::gossip {

inline constexpr size_t kClusterKeyBytes = 32;
inline constexpr size_t kMaxClusterKeys = 16;

// One key of the keyring, as Cluster::keys() lists it.
struct KeyInfo {
  std::string fingerprint;  // 8 hex digits
  bool primary = false;
};

class ClusterKey {
 public:
  ClusterKey(const ClusterKey&) = default;
  ClusterKey& operator=(const ClusterKey&) = default;
  ~ClusterKey();  // wipes the key bytes

  const std::array<uint8_t, kClusterKeyBytes>& bytes() const { return bytes_; }
  uint32_t id() const { return id_; }  // the fingerprint as a number
  std::string fingerprint() const;     // "1a2b3c4d"
  std::string base64() const;
  bool operator==(const ClusterKey& other) const { return bytes_ == other.bytes_; }

 private:
  friend Result<ClusterKey> parseClusterKey(std::string_view base64);
  explicit ClusterKey(const uint8_t* bytes);
  std::array<uint8_t, kClusterKeyBytes> bytes_;
  uint32_t id_ = 0;
};

// A new random key (libsodium's CSPRNG), base64.
std::string generateClusterKey();
// Leading and trailing whitespace is ignored (key files end with a newline).
// Errors: kInvalidArgument, saying what a key looks like and how to make one.
Result<ClusterKey> parseClusterKey(std::string_view base64);

// The keys of a cluster key file (chorusd --cluster-key-file, chorus cluster
// keys --key-file): one base64 key per line, the first is the primary;
// blank lines and lines starting with '#' are skipped, surrounding
// whitespace trimmed. Keys are not parsed here. Errors: kIo (unreadable),
// kInvalidArgument (no key in it, larger than 64 KiB, or a regular file that
// group or others may read or write: the message names the file, its mode
// and `chmod 600`).
Result<std::vector<std::string>> readKeyFile(const std::string& path);

// 1..16 keys, exactly one of them the primary. Changes return a new state
// only through the mutators below, each of which keeps those invariants.
class Keyring {
 public:
  // keys[0] becomes the primary. Errors: kInvalidArgument (no key, a
  // malformed key, more than 16, two keys with the same fingerprint).
  static Result<Keyring> fromBase64(const std::vector<std::string>& keys);

  // Reads <path>; nullopt if the file does not exist. Errors: kCorruption
  // (the file is not a valid keyring: the message names the line), kIo.
  static Result<std::optional<Keyring>> load(const std::string& path);
  // Writes <path> with mode 0600, atomically: a temporary file, fsync,
  // rename, fsync of the directory. Errors: kIo.
  Status save(const std::string& path) const;

  // Idempotent. kInvalidArgument when the ring is full or another installed
  // key has the same fingerprint.
  Status install(const ClusterKey& key);
  // `keyOrFingerprint`: base64 key or 8-hex-digit fingerprint. kNotFound if
  // not installed (kInvalidArgument if it is neither form).
  Status use(std::string_view keyOrFingerprint);
  // kInvalidArgument for the primary, kNotFound if not installed.
  Status remove(std::string_view keyOrFingerprint);

  const ClusterKey& primary() const { return keys_[0]; }
  const ClusterKey* find(uint32_t id) const;  // nullptr if not installed
  bool contains(const ClusterKey& key) const;
  std::vector<KeyInfo> list() const;  // primary first, then in install order
  size_t size() const { return keys_.size(); }

 private:
  Keyring() = default;
  // Index of the key named by a base64 key or a fingerprint.
  Result<size_t> locate(std::string_view keyOrFingerprint) const;
  std::vector<ClusterKey> keys_;  // keys_[0] is the primary
};

}  // namespace chorus::gossip
