#include "review.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "crdt/state.capnp.h"

namespace chorus::crdt {

namespace {

// ---- encoding --------------------------------------------------------------

// Writes the Cap'n Proto canonical form of state.capnp's Review directly:
// one segment, objects in pre-order (a struct, then the targets of its
// pointers in pointer order, depth first; list elements in order), every
// struct's data section cut after its last non-zero word and its pointer
// section after its last non-null pointer, a zero-sized struct as a pointer
// with offset -1, struct lists as inline composites sized to their largest
// (cut) element. This is exactly what capnp::canonicalize() returns for the
// message the generated builders would make (every Text and List set, even
// when empty; every struct initialized); review-test.cpp checks the two
// agree byte for byte (internal/reference-encoding.h).
class CanonicalWriter {
 public:
  explicit CanonicalWriter(size_t expectedBytes) { out_.reserve(expectedBytes); }

  // Appends `words` zero words; returns the index of the first.
  size_t alloc(size_t words) {
    size_t at = out_.size() / 8;
    out_.resize(out_.size() + words * 8, '\0');
    return at;
  }

  void putWord(size_t word, uint64_t v) { putBytes(word * 8, v, 8); }
  void putBytes(size_t byteOffset, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) {
      out_[byteOffset + static_cast<size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
    }
  }

  // A struct pointer at word `at` to a struct whose body starts at `target`.
  void structPointer(size_t at, size_t target, uint32_t dataWords, uint32_t pointers) {
    if (dataWords == 0 && pointers == 0) {
      putWord(at, 0xfffffffcu);  // zero-sized struct: offset -1, no allocation
      return;
    }
    putWord(at, offsetBits(at, target) | (uint64_t{dataWords} << 32) | (uint64_t{pointers} << 48));
  }
  void listPointer(size_t at, size_t target, uint64_t elementSize, uint64_t count) {
    putWord(at, offsetBits(at, target) | 1u | (elementSize << 32) | (count << 35));
  }

  void text(size_t at, const std::string& s) {
    size_t words = (s.size() + 1 + 7) / 8;  // NUL-terminated, zero-padded
    size_t target = alloc(words);
    if (!s.empty()) std::memcpy(out_.data() + target * 8, s.data(), s.size());
    listPointer(at, target, 2 /* BYTE */, s.size() + 1);
  }

  void stamp(size_t at, const Stamp& s) {
    uint32_t dataWords = s.replica != 0 ? 2 : (s.hlc.bits != 0 ? 1 : 0);
    if (dataWords == 0) return structPointer(at, 0, 0, 0);
    size_t body = alloc(dataWords);
    putWord(body, s.hlc.bits);
    if (dataWords == 2) putWord(body + 1, s.replica);
    structPointer(at, body, dataWords, 0);
  }

  // A List(Dot) from any range of items that `dotOf` maps to dots.
  template <class Range, class F>
  void dots(size_t at, const Range& range, size_t count, F dotOf) {
    uint32_t dataWords = 0;  // the largest cut element
    for (const auto& item : range) {
      Dot d = dotOf(item);
      dataWords = std::max<uint32_t>(dataWords, d.counter != 0 ? 2 : (d.replica != 0 ? 1 : 0));
    }
    size_t tag = alloc(1 + count * dataWords);
    putWord(tag, (uint64_t{count} << 2) | (uint64_t{dataWords} << 32));
    size_t w = tag + 1;
    for (const auto& item : range) {
      Dot d = dotOf(item);
      if (dataWords >= 1) putWord(w, d.replica);
      if (dataWords >= 2) putWord(w + 1, d.counter);
      w += dataWords;
    }
    listPointer(at, tag, 7 /* INLINE_COMPOSITE */, count * dataWords);
  }

  void orSet(size_t at, const OrSet& set) {
    size_t body = alloc(2);  // elements, context
    structPointer(at, body, 0, 2);

    const auto& entries = set.entries();
    size_t n = entries.size();
    uint32_t pointers = n == 0 ? 0 : 2;  // value, dots: never null
    size_t tag = alloc(1 + n * pointers);
    putWord(tag, (uint64_t{n} << 2) | (uint64_t{pointers} << 48));
    listPointer(body, tag, 7, n * pointers);
    size_t element = tag + 1;
    for (const auto& [value, dotSet] : entries) {
      text(element, value);
      dots(element + 1, dotSet, dotSet.size(), [](const Dot& d) { return d; });
      element += 2;
    }

    size_t context = alloc(2);  // versionVector, cloud
    structPointer(body + 1, context, 0, 2);
    const auto& vv = set.context().versionVector();
    dots(context, vv, vv.size(), [](const auto& kv) { return Dot{kv.first, kv.second}; });
    const auto& cloud = set.context().cloud();
    dots(context + 1, cloud, cloud.size(), [](const Dot& d) { return d; });
  }

  std::string take() { return std::move(out_); }

 private:
  static uint64_t offsetBits(size_t at, size_t target) {
    auto offset = static_cast<int64_t>(target) - static_cast<int64_t>(at) - 1;
    return static_cast<uint32_t>(offset * 4);  // low 32 bits: offset << 2 | kind
  }

  std::string out_;
};

// ---- decoding --------------------------------------------------------------

// Thrown only inside decode() and caught there; never escapes this file.
struct Invalid {
  std::string why;
};

[[noreturn]] void invalid(std::string why) { throw Invalid{std::move(why)}; }

std::string toString(capnp::Text::Reader t) { return std::string(t.begin(), t.size()); }

Stamp readStamp(wire::Stamp::Reader r) { return Stamp{Hlc{r.getHlc()}, r.getReplica()}; }

std::set<Dot> readDots(capnp::List<wire::Dot>::Reader list, const char* what) {
  std::set<Dot> out;
  std::optional<Dot> prev;
  for (auto d : list) {
    Dot dot{d.getReplica(), d.getCounter()};
    if (dot.replica == 0 || dot.counter == 0) invalid(std::string(what) + ": zero dot");
    if (prev && !(*prev < dot)) invalid(std::string(what) + ": dots not sorted");
    prev = dot;
    out.insert(dot);
  }
  return out;
}

OrSet readOrSet(wire::OrSet::Reader r, const char* what) {
  std::map<ReplicaId, uint64_t> vv;
  for (const Dot& d : readDots(r.getContext().getVersionVector(), what)) {
    if (vv.count(d.replica)) invalid(std::string(what) + ": duplicate replica in version vector");
    vv[d.replica] = d.counter;
  }
  CausalContext context;
  if (!CausalContext::fromParts(std::move(vv), readDots(r.getContext().getCloud(), what),
                                context)) {
    invalid(std::string(what) + ": causal context not compacted");
  }
  OrSet::Entries entries;
  std::optional<std::string> prev;
  for (auto e : r.getElements()) {
    std::string value = toString(e.getValue());
    if (prev && !(*prev < value)) invalid(std::string(what) + ": elements not sorted");
    prev = value;
    entries.emplace(std::move(value), readDots(e.getDots(), what));
  }
  OrSet set;
  if (!OrSet::fromParts(std::move(entries), std::move(context), set)) {
    invalid(std::string(what) + ": element dots inconsistent with causal context");
  }
  return set;
}

template <class V>
LwwRegister<V> checkedRegister(Stamp stamp, V value, const char* what) {
  if (stamp.isZero()) {
    if (value != V{}) invalid(std::string(what) + ": value without a stamp");
    return {};
  }
  if (stamp.replica == 0) invalid(std::string(what) + ": stamp without replica");
  return LwwRegister<V>(stamp, std::move(value));
}

}  // namespace

Hlc ReviewDoc::maxHlc() const {
  return std::max({content_.stamp().hlc, moderation_.stamp().hlc, reply_.stamp().hlc});
}

ReviewDoc ReviewDoc::write(uint8_t rating, std::string title, std::string body, Stamp stamp) {
  CHORUS_ASSERT(rating >= 1 && rating <= 5, "rating must be 1-5");
  ReviewDoc delta = emptyDelta();
  delta.content_ =
      content_.assign(Content{false, rating, std::move(title), std::move(body)}, stamp);
  return delta;
}

ReviewDoc ReviewDoc::erase(Stamp stamp) {
  ReviewDoc delta = emptyDelta();
  delta.content_ = content_.assign(Content{true, 0, {}, {}}, stamp);
  return delta;
}

ReviewDoc ReviewDoc::tag(const std::string& tag, ReplicaId replica) {
  ReviewDoc delta = emptyDelta();
  delta.tags_ = tags_.add(tag, replica);
  return delta;
}

ReviewDoc ReviewDoc::untag(const std::string& tag) {
  ReviewDoc delta = emptyDelta();
  delta.tags_ = tags_.remove(tag);
  return delta;
}

ReviewDoc ReviewDoc::vote(const std::string& voter, ReplicaId replica) {
  ReviewDoc delta = emptyDelta();
  delta.helpful_ = helpful_.add(voter, replica);
  return delta;
}

ReviewDoc ReviewDoc::unvote(const std::string& voter) {
  ReviewDoc delta = emptyDelta();
  delta.helpful_ = helpful_.remove(voter);
  return delta;
}

ReviewDoc ReviewDoc::moderate(Moderation moderation, Stamp stamp) {
  ReviewDoc delta = emptyDelta();
  delta.moderation_ = moderation_.assign(std::move(moderation), stamp);
  return delta;
}

ReviewDoc ReviewDoc::setReply(Reply reply, Stamp stamp) {
  ReviewDoc delta = emptyDelta();
  delta.reply_ = reply_.assign(std::move(reply), stamp);
  return delta;
}

void ReviewDoc::join(const ReviewDoc& other) {
  CHORUS_ASSERT(key_ == other.key_, "join of documents with different keys");
  content_.join(other.content_);
  tags_.join(other.tags_);
  helpful_.join(other.helpful_);
  moderation_.join(other.moderation_);
  reply_.join(other.reply_);
}

std::string ReviewDoc::encode() const {
  const Content& c = content_.value();
  CanonicalWriter w(256 + key_.product.size() + key_.author.size() + c.title.size() +
                    c.body.size() + moderation_.value().reason.size() + reply_.value().text.size());
  size_t root = 1;
  w.alloc(1 + 1 + 7);  // root pointer; Review: version, 7 pointers
  w.structPointer(0, root, 1, 7);
  w.putBytes(root * 8, kStateVersion, 2);
  size_t ptr = root + 1;
  w.text(ptr, key_.product);
  w.text(ptr + 1, key_.author);

  uint32_t contentData = c.deleted || c.rating != 0 ? 1 : 0;
  size_t content = w.alloc(contentData + 3);  // deleted, rating; stamp, title, body
  w.structPointer(ptr + 2, content, contentData, 3);
  if (contentData != 0)
    w.putBytes(content * 8, (c.deleted ? 1u : 0u) | (uint64_t{c.rating} << 8), 2);
  w.stamp(content + contentData, content_.stamp());
  w.text(content + contentData + 1, c.title);
  w.text(content + contentData + 2, c.body);

  w.orSet(ptr + 3, tags_);
  w.orSet(ptr + 4, helpful_);

  auto visibility = static_cast<uint16_t>(moderation_.value().visibility);
  uint32_t moderationData = visibility != 0 ? 1 : 0;
  size_t moderation = w.alloc(moderationData + 2);  // visibility; stamp, reason
  w.structPointer(ptr + 5, moderation, moderationData, 2);
  if (moderationData != 0) w.putBytes(moderation * 8, visibility, 2);
  w.stamp(moderation + moderationData, moderation_.stamp());
  w.text(moderation + moderationData + 1, moderation_.value().reason);

  size_t reply = w.alloc(2);  // stamp, text
  w.structPointer(ptr + 6, reply, 0, 2);
  w.stamp(reply, reply_.stamp());
  w.text(reply + 1, reply_.value().text);
  return w.take();
}

Result<ReviewDoc> ReviewDoc::decode(std::string_view bytes) {
  auto corrupt = [](const std::string& why) {
    return makeError(ErrorCode::kCorruption, "review state: " + why);
  };
  if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0) {
    return corrupt("length " + std::to_string(bytes.size()) + " is not a positive multiple of 8");
  }
  // Copy into word-aligned memory; the input may sit anywhere (e.g. in LMDB).
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());

  ReviewDoc doc;
  std::optional<std::string> failure;
  auto exception = kj::runCatchingExceptions([&] {
    try {
      capnp::ReaderOptions options;
      options.traversalLimitInWords = words.size() + 64;  // no amplification
      options.nestingLimit = 8;
      kj::ArrayPtr<const capnp::word> segments[1] = {words.asPtr()};
      capnp::SegmentArrayMessageReader reader(kj::arrayPtr(segments, 1), options);
      auto root = reader.getRoot<wire::Review>();
      if (root.getVersion() != kStateVersion) {
        invalid("unknown state version " + std::to_string(root.getVersion()) +
                " (this build reads version " + std::to_string(kStateVersion) + ")");
      }
      doc.key_.product = toString(root.getProduct());
      doc.key_.author = toString(root.getAuthor());
      if (doc.key_.product.empty() || doc.key_.author.empty()) invalid("empty key");

      auto c = root.getContent();
      Content content{c.getDeleted(), c.getRating(), toString(c.getTitle()), toString(c.getBody())};
      Stamp contentStamp = readStamp(c.getStamp());
      if (!contentStamp.isZero()) {
        if (content.deleted && content.rating != 0) {
          invalid("tombstone with rating " + std::to_string(content.rating) +
                  " (a tombstone's rating is 0)");
        }
        if (content.deleted && (!content.title.empty() || !content.body.empty())) {
          invalid("tombstone carries a title or body");
        }
        if (!content.deleted && (content.rating < 1 || content.rating > 5)) {
          invalid("rating " + std::to_string(content.rating) + " outside 1-5");
        }
      }
      doc.content_ = checkedRegister(contentStamp, std::move(content), "content");
      doc.tags_ = readOrSet(root.getTags(), "tags");
      doc.helpful_ = readOrSet(root.getHelpful(), "helpful");

      auto m = root.getModeration();
      auto visibility = static_cast<uint16_t>(m.getVisibility());
      if (visibility > static_cast<uint16_t>(Visibility::kFlagged)) {
        invalid("visibility " + std::to_string(visibility) + " outside 0-2");
      }
      doc.moderation_ = checkedRegister(
          readStamp(m.getStamp()),
          Moderation{static_cast<Visibility>(visibility), toString(m.getReason())}, "moderation");
      auto r = root.getReply();
      doc.reply_ = checkedRegister(readStamp(r.getStamp()), Reply{toString(r.getText())}, "reply");
    } catch (Invalid& e) {
      failure = std::move(e.why);
    }
  });
  KJ_IF_MAYBE (e, exception) {
    return corrupt(std::string("malformed message: ") + e->getDescription().cStr());
  }
  if (failure) return corrupt(*failure);
  // Only the canonical bytes of a state are accepted, so a digest of stored
  // bytes identifies the state.
  if (doc.encode() != bytes) return corrupt("not in canonical form");
  return doc;
}

}  // namespace chorus::crdt
