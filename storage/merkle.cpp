#include "storage/merkle.h"

#include <sodium.h>

#include <cstring>

#include "storage/key-schema.h"

namespace chorus::storage {

namespace {

__extension__ using U128 = unsigned __int128;

// Node sums are stored little-endian; two 64-bit halves keep this cheap.
uint64_t le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void putLe64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

U128 toInt(const Hash& h) { return (U128(le64(h.data() + 8)) << 64) | le64(h.data()); }

Hash fromInt(U128 v) {
  Hash h;
  putLe64(h.data(), static_cast<uint64_t>(v));
  putLe64(h.data() + 8, static_cast<uint64_t>(v >> 64));
  return h;
}

Hash blake128(const unsigned char* data, size_t size) {
  // sodium_init picks the fastest BLAKE2b for this CPU; idempotent.
  [[maybe_unused]] static const int kInit = sodium_init();
  Hash out;
  crypto_generichash(out.data(), out.size(), data, size, nullptr, 0);
  return out;
}

}  // namespace

namespace {

uint32_t hash32(std::string_view bytes) {
  Hash h = blake128(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  return (uint32_t(h[0]) << 24) | (uint32_t(h[1]) << 16) | (uint32_t(h[2]) << 8) | h[3];
}

}  // namespace

uint64_t authorKeyHashBits(std::string_view author) {
  return uint64_t{hash32(schema::idPrefix(author))} << 32;
}

uint64_t keyHashOfDocKey(std::string_view docKey) {
  CHORUS_ASSERT(docKey.size() >= 2, "keyHashOfDocKey needs a document key");
  size_t productBytes = 2 + ((size_t(uint8_t(docKey[0])) << 8) | uint8_t(docKey[1]));
  CHORUS_ASSERT(docKey.size() > productBytes, "keyHashOfDocKey needs a document key");
  return authorKeyHashBits(docKey.substr(productBytes)) | hash32(docKey);
}

uint64_t keyHash(const crdt::ReviewKey& key) { return keyHashOfDocKey(schema::docKey(key)); }

Hash digestOf(std::string_view bytes) {
  return blake128(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
}

Hash entryHash(uint64_t keyHash, const Hash& digest) {
  unsigned char buf[8 + 16];
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<unsigned char>(keyHash >> (56 - 8 * i));
  std::memcpy(buf + 8, digest.data(), 16);
  return blake128(buf, sizeof buf);
}

Hash hashAdd(const Hash& a, const Hash& b) { return fromInt(toInt(a) + toInt(b)); }
Hash hashSub(const Hash& a, const Hash& b) { return fromInt(toInt(a) - toInt(b)); }

bool isZero(const Hash& h) {
  for (uint8_t b : h) {
    if (b != 0) return false;
  }
  return true;
}

}  // namespace chorus::storage
