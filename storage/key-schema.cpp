#include "storage/key-schema.h"

#include "storage/merkle.h"

namespace chorus::storage::schema {

namespace {

void putBe16(std::string& out, uint16_t v) {
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v & 0xff));
}

uint16_t getBe16(std::string_view in) {
  return static_cast<uint16_t>((uint16_t(uint8_t(in[0])) << 8) | uint8_t(in[1]));
}

std::string escaped(std::string_view s) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '\'' && c != '\\') {
      out.push_back(c);
    } else {
      out += "\\x";
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 0xf]);
    }
  }
  return out;
}

}  // namespace

void putBe64(std::string& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
}

uint64_t getBe64(std::string_view in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | uint8_t(in[i]);
  return v;
}

void putLe64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t getLe64(std::string_view in) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | uint8_t(in[i]);
  return v;
}

Status validateKey(const crdt::ReviewKey& key) {
  auto check = [](const std::string& id, const char* what) -> Status {
    if (id.empty()) return makeError(ErrorCode::kInvalidArgument, std::string(what) + " id is empty");
    if (id.size() > kMaxIdBytes) {
      return makeError(ErrorCode::kInvalidArgument,
                       std::string(what) + " id is " + std::to_string(id.size()) +
                           " bytes; at most " + std::to_string(kMaxIdBytes) + " are allowed");
    }
    return okStatus();
  };
  if (auto s = check(key.product, "product"); !s) return s;
  return check(key.author, "author");
}

std::string idPrefix(std::string_view id) {
  CHORUS_ASSERT(id.size() <= 0xffff, "id longer than 64 KiB");
  std::string out;
  out.reserve(2 + id.size());
  putBe16(out, static_cast<uint16_t>(id.size()));
  out.append(id);
  return out;
}

std::string docKey(const crdt::ReviewKey& key) {
  std::string out = idPrefix(key.product);
  out.append(key.author);
  return out;
}

std::optional<crdt::ReviewKey> parseDocKey(std::string_view k) {
  if (k.size() < 2) return std::nullopt;
  size_t len = getBe16(k);
  if (len == 0 || k.size() < 2 + len + 1) return std::nullopt;
  return crdt::ReviewKey{std::string(k.substr(2, len)), std::string(k.substr(2 + len))};
}

std::string aggregateKey(std::string_view product) {
  std::string out = idPrefix(product);
  out.push_back(kProductAggregate);
  return out;
}

std::string productRangePrefix(std::string_view product, char tag) {
  std::string out = idPrefix(product);
  out.push_back(tag);
  return out;
}

std::string newestSortKey(const crdt::ReviewKey& key, crdt::Hlc hlc) {
  std::string out = productRangePrefix(key.product, kListNewest);
  putBe64(out, ~hlc.bits);
  out.append(key.author);
  return out;
}

std::string ratingSortKey(const crdt::ReviewKey& key, uint8_t rating, crdt::Hlc hlc) {
  std::string out = productRangePrefix(key.product, kListRating);
  out.push_back(static_cast<char>(rating));
  putBe64(out, hlc.bits);
  out.append(key.author);
  return out;
}

std::optional<ListingPosition> parseListingKey(std::string_view k) {
  if (k.size() < 2) return std::nullopt;
  size_t len = getBe16(k);
  if (len == 0 || k.size() < 2 + len + 1) return std::nullopt;
  ListingPosition p;
  p.key.product = std::string(k.substr(2, len));
  std::string_view rest = k.substr(2 + len);
  p.tag = rest[0];
  rest.remove_prefix(1);
  if (p.tag == kListRating) {
    if (rest.empty()) return std::nullopt;
    p.rating = uint8_t(rest[0]);
    rest.remove_prefix(1);
    if (p.rating < 1 || p.rating > 5) return std::nullopt;
  } else if (p.tag != kListNewest) {
    return std::nullopt;
  }
  if (rest.size() < 8 + 1) return std::nullopt;
  uint64_t bits = getBe64(rest);
  p.hlc = crdt::Hlc{p.tag == kListNewest ? ~bits : bits};
  p.key.author = std::string(rest.substr(8));
  return p;
}

std::optional<std::string> prefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    auto last = static_cast<unsigned char>(end.back());
    if (last != 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return std::nullopt;
}

std::string leafEntryKey(uint64_t keyHash, std::string_view docKey) {
  std::string out;
  out.reserve(8 + docKey.size());
  putBe64(out, keyHash);
  out.append(docKey);
  return out;
}

std::string leafPrefix(uint32_t leafIndex) {
  std::string out;
  putBe16(out, static_cast<uint16_t>(leafIndex));
  return out;
}

std::string authorLeafPrefix(std::string_view author) {
  std::string out;
  putBe64(out, authorKeyHashBits(author));
  out.resize(kAuthorLeafPrefixBytes);
  return out;
}

std::string merkleNodeKey(int level, uint64_t index) {
  std::string out;
  out.push_back(static_cast<char>(level));
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((index >> shift) & 0xff));
  return out;
}

ListingHeader listingHeaderOf(const crdt::ReviewDoc& doc) {
  ListingHeader h;
  h.live = doc.exists();
  if (h.live) {
    h.rating = doc.content().value().rating;
    h.hlc = doc.content().stamp().hlc;
  }
  return h;
}

std::string encodeDocRecord(const Hash& digest, const ListingHeader& header, uint64_t seq,
                            std::string_view canonical) {
  std::string out;
  out.reserve(kDocRecordHeader + canonical.size());
  out.push_back(static_cast<char>(kDocRecordFormat));
  out.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  out.push_back(header.live ? '\x01' : '\x00');
  out.push_back(static_cast<char>(header.rating));
  putBe64(out, header.hlc.bits);
  putBe64(out, seq);
  out.append(canonical);
  return out;
}

namespace {

// The listing header at byte 17 of a record of either format.
std::optional<ListingHeader> headerAt17(std::string_view value) {
  ListingHeader h;
  auto flags = uint8_t(value[17]);
  h.live = (flags & 1) != 0;
  h.rating = uint8_t(value[18]);
  h.hlc = crdt::Hlc{getBe64(value.substr(19))};
  bool sane =
      flags <= 1 && (h.live ? h.rating >= 1 && h.rating <= 5 : h.rating == 0 && h.hlc.bits == 0);
  if (!sane) return std::nullopt;
  return h;
}

}  // namespace

std::optional<ListingHeader> peekListingHeader(std::string_view value) {
  if (value.size() < kDocRecordHeader || uint8_t(value[0]) != kDocRecordFormat) return std::nullopt;
  return headerAt17(value);
}

std::optional<ListingHeader> peekListingHeaderV2(std::string_view value) {
  if (value.size() < kDocRecordHeaderV2 || uint8_t(value[0]) != kDocRecordFormatV2) {
    return std::nullopt;
  }
  return headerAt17(value);
}

std::optional<std::string> upgradeDocRecordV2(std::string_view value, uint64_t seq) {
  if (!peekListingHeaderV2(value)) return std::nullopt;
  std::string out;
  out.reserve(value.size() + 8);
  out.push_back(static_cast<char>(kDocRecordFormat));
  out.append(value.substr(1, kDocRecordHeaderV2 - 1));
  putBe64(out, seq);
  out.append(value.substr(kDocRecordHeaderV2));
  return out;
}

std::string changeKey(uint64_t seq) {
  std::string out;
  putBe64(out, seq);
  return out;
}

std::string changeValue(bool live, std::string_view docKey) {
  std::string out;
  out.reserve(1 + docKey.size());
  out.push_back(live ? '\x01' : '\x00');
  out.append(docKey);
  return out;
}

std::optional<ChangeEntry> parseChange(std::string_view key, std::string_view value) {
  if (key.size() != 8 || value.size() < 2 || uint8_t(value[0]) > 1) return std::nullopt;
  ChangeEntry e;
  e.seq = getBe64(key);
  e.live = value[0] == '\x01';
  e.docKey = value.substr(1);
  if (e.seq == 0) return std::nullopt;
  return e;
}

Result<DocRecord> parseDocRecord(std::string_view value, const crdt::ReviewKey& key) {
  auto corrupt = [&](const std::string& why) {
    return makeError(ErrorCode::kCorruption,
                     "stored review (" + describeKey(key) + ") is damaged: " + why +
                         ". The value was not used. Run verify on this store; restore the data "
                         "dir from a backup or move it aside and resync the node from its peers");
  };
  if (value.size() < kDocRecordHeader) {
    return corrupt("value is " + std::to_string(value.size()) + " bytes, shorter than its header");
  }
  if (uint8_t(value[0]) != kDocRecordFormat) {
    return corrupt("unknown record format " + std::to_string(uint8_t(value[0])));
  }
  DocRecord rec;
  std::copy(value.begin() + 1, value.begin() + 17, reinterpret_cast<char*>(rec.digest.data()));
  rec.seq = getBe64(value.substr(1 + 16 + 10));
  rec.canonical = value.substr(kDocRecordHeader);
  if (digestOf(rec.canonical) != rec.digest) return corrupt("checksum mismatch");
  if (rec.seq == 0) return corrupt("no change feed seq");
  auto header = peekListingHeader(value);
  if (!header) return corrupt("malformed listing header");
  rec.header = *header;
  return rec;
}

std::string encodeSummary(const ProductSummary& s) {
  std::string out;
  out.reserve(kMaxSummaryBytes);
  auto put = [&out](uint64_t v) {
    while (v >= 0x80) {
      out.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    out.push_back(static_cast<char>(v));
  };
  for (uint64_t h : s.histogram) put(h);
  put(s.helpfulTotal);
  return out;
}

std::optional<ProductSummary> decodeSummary(std::string_view v) {
  size_t at = 0;
  auto get = [&]() -> std::optional<uint64_t> {
    uint64_t value = 0;
    for (int shift = 0; shift < 64 && at < v.size(); shift += 7) {
      auto byte = uint8_t(v[at++]);
      value |= uint64_t(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return value;
    }
    return std::nullopt;
  };
  ProductSummary s;
  for (size_t i = 0; i < 6; ++i) {
    auto field = get();
    if (!field) return std::nullopt;
    if (i < 5) {
      s.histogram[i] = *field;
      s.count += *field;
      s.ratingSum += (i + 1) * *field;
    } else {
      s.helpfulTotal = *field;
    }
  }
  if (at != v.size()) return std::nullopt;
  return s;
}

std::string describeKey(const crdt::ReviewKey& key) {
  return "product '" + escaped(key.product) + "', author '" + escaped(key.author) + "'";
}

std::string toHex(std::string_view bytes) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) {
    auto u = static_cast<unsigned char>(c);
    out.push_back(kHex[u >> 4]);
    out.push_back(kHex[u & 0xf]);
  }
  return out;
}

std::optional<std::string> fromHex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  out.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = nibble(hex[i]);
    int lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi << 4 | lo));
  }
  return out;
}

}  // namespace chorus::storage::schema
