#include "api/session.h"

#include <sodium.h>

#include <set>

#include "api/validate.h"

namespace chorus::api {

namespace {

constexpr uint8_t kVersion = 1;
constexpr std::string_view kPrefix = "s1";
constexpr int kVariant = sodium_base64_VARIANT_URLSAFE_NO_PADDING;
constexpr size_t kMaxDots = 1024;  // per list, when decoding
constexpr uint8_t kHasContent = 1, kHasModeration = 2, kHasReply = 4;

// Every dot of a (delta's, so small) causal context: its version vector
// stands for the dots 1..n of each replica.
std::vector<crdt::Dot> dotsOf(const crdt::CausalContext& context) {
  std::vector<crdt::Dot> out;
  for (const auto& [replica, counter] : context.versionVector()) {
    for (uint64_t c = 1; c <= counter; ++c) out.push_back(crdt::Dot{replica, c});
  }
  out.insert(out.end(), context.cloud().begin(), context.cloud().end());
  return out;
}

SessionToken::SetDots setDotsOf(const crdt::OrSet& delta) {
  SessionToken::SetDots d;
  std::set<crdt::Dot> live;
  for (const auto& [element, dots] : delta.entries()) live.insert(dots.begin(), dots.end());
  for (const crdt::Dot& dot : dotsOf(delta.context())) {
    (live.count(dot) != 0 ? d.added : d.removed).push_back(dot);
  }
  return d;
}

bool holds(const crdt::OrSet& set, const SessionToken::SetDots& d) {
  for (const crdt::Dot& dot : d.added) {
    if (!set.context().contains(dot)) return false;
  }
  if (d.removed.empty()) return true;
  std::set<crdt::Dot> removed;
  for (const crdt::Dot& dot : d.removed) {
    if (!set.context().contains(dot)) return false;  // the add it removed is not even here
    removed.insert(dot);
  }
  for (const auto& [element, dots] : set.entries()) {
    for (const crdt::Dot& dot : dots) {
      if (removed.count(dot) != 0) return false;  // still live: the remove has not arrived
    }
  }
  return true;
}

bool holds(const crdt::Stamp& stored, const std::optional<crdt::Stamp>& wanted) {
  return !wanted || (!stored.isZero() && stored >= *wanted);
}

void putVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void putText(std::string& out, const std::string& s) {
  putVarint(out, s.size());
  out += s;
}

void putStamp(std::string& out, const crdt::Stamp& s) {
  putVarint(out, s.hlc.bits);
  putVarint(out, s.replica);
}

void putDots(std::string& out, const std::vector<crdt::Dot>& dots) {
  putVarint(out, dots.size());
  for (const crdt::Dot& d : dots) {
    putVarint(out, d.replica);
    putVarint(out, d.counter);
  }
}

// Reads the binary record; every getter fails (false) past the end.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= bytes_.size()) return false;
      uint8_t b = static_cast<uint8_t>(bytes_[pos_++]);
      if (shift == 63 && b > 1) return false;  // more than 64 bits
      v |= uint64_t(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  bool byte(uint8_t& b) {
    if (pos_ >= bytes_.size()) return false;
    b = static_cast<uint8_t>(bytes_[pos_++]);
    return true;
  }
  bool text(std::string& s) {
    uint64_t n;
    if (!varint(n) || n > bytes_.size() - pos_) return false;
    s.assign(bytes_.substr(pos_, n));
    pos_ += n;
    return true;
  }
  bool stamp(std::optional<crdt::Stamp>& s) {
    uint64_t hlc, replica;
    if (!varint(hlc) || !varint(replica) || replica == 0 || hlc == 0) return false;
    s = crdt::Stamp{crdt::Hlc{hlc}, replica};
    return true;
  }
  bool dots(std::vector<crdt::Dot>& out) {
    uint64_t n;
    if (!varint(n) || n > kMaxDots) return false;
    for (uint64_t i = 0; i < n; ++i) {
      crdt::Dot d;
      if (!varint(d.replica) || !varint(d.counter) || d.replica == 0 || d.counter == 0) {
        return false;
      }
      out.push_back(d);
    }
    return true;
  }
  bool done() const { return pos_ == bytes_.size(); }

 private:
  std::string_view bytes_;
  size_t pos_ = 0;
};

Error invalid(const std::string& why) {
  return FieldError{"session", why + " (pass the `session` a write answered, unchanged)"}.toError();
}

}  // namespace

SessionToken SessionToken::of(const crdt::ReviewDoc& delta, std::string origin) {
  SessionToken t;
  t.key = delta.key();
  t.origin = std::move(origin);
  if (delta.content().isSet()) t.content = delta.content().stamp();
  if (delta.moderation().isSet()) t.moderation = delta.moderation().stamp();
  if (delta.reply().isSet()) t.reply = delta.reply().stamp();
  t.tags = setDotsOf(delta.tags());
  t.helpful = setDotsOf(delta.helpful());
  return t;
}

bool SessionToken::heldBy(const crdt::ReviewDoc& doc) const {
  return holds(doc.content().stamp(), content) && holds(doc.moderation().stamp(), moderation) &&
         holds(doc.reply().stamp(), reply) && holds(doc.tags(), tags) &&
         holds(doc.helpful(), helpful);
}

std::string SessionToken::encode() const {
  std::string bin;
  bin.push_back(static_cast<char>(kVersion));
  putText(bin, key.product);
  putText(bin, key.author);
  putText(bin, origin);
  uint8_t flags =
      (content ? kHasContent : 0) | (moderation ? kHasModeration : 0) | (reply ? kHasReply : 0);
  bin.push_back(static_cast<char>(flags));
  if (content) putStamp(bin, *content);
  if (moderation) putStamp(bin, *moderation);
  if (reply) putStamp(bin, *reply);
  putDots(bin, tags.added);
  putDots(bin, tags.removed);
  putDots(bin, helpful.added);
  putDots(bin, helpful.removed);
  std::string text(sodium_base64_ENCODED_LEN(bin.size(), kVariant), '\0');
  sodium_bin2base64(text.data(), text.size(), reinterpret_cast<const unsigned char*>(bin.data()),
                    bin.size(), kVariant);
  text.resize(text.size() - 1);  // the terminating NUL
  return std::string(kPrefix) + text;
}

Result<SessionToken> SessionToken::decode(std::string_view text) {
  if (text.size() > kMaxTextBytes) {
    return invalid("is longer than " + std::to_string(kMaxTextBytes) + " bytes");
  }
  if (text.substr(0, kPrefix.size()) != kPrefix) {
    return invalid("is not a session token (they begin with \"" + std::string(kPrefix) + "\")");
  }
  text.remove_prefix(kPrefix.size());
  std::string bin(text.size(), '\0');
  size_t length = 0;
  if (sodium_base642bin(reinterpret_cast<unsigned char*>(bin.data()), bin.size(), text.data(),
                        text.size(), nullptr, &length, nullptr, kVariant) != 0) {
    return invalid("is not a session token (not URL-safe base64)");
  }
  bin.resize(length);
  Reader r(bin);
  SessionToken t;
  uint8_t version = 0, flags = 0;
  if (!r.byte(version) || version != kVersion) {
    return invalid("is not a session token of this version");
  }
  bool ok = r.text(t.key.product) && r.text(t.key.author) && r.text(t.origin) && r.byte(flags) &&
            (flags & ~(kHasContent | kHasModeration | kHasReply)) == 0 &&
            (!(flags & kHasContent) || r.stamp(t.content)) &&
            (!(flags & kHasModeration) || r.stamp(t.moderation)) &&
            (!(flags & kHasReply) || r.stamp(t.reply)) && r.dots(t.tags.added) &&
            r.dots(t.tags.removed) && r.dots(t.helpful.added) && r.dots(t.helpful.removed) &&
            r.done();
  if (!ok) return invalid("is not a session token (truncated or damaged)");
  return t;
}

}  // namespace chorus::api
