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

void setStamp(wire::Stamp::Builder b, const Stamp& s) {
  b.setHlc(s.hlc.bits);
  b.setReplica(s.replica);
}

template <class Range, class F>
void fillDots(capnp::List<wire::Dot>::Builder list, const Range& range, F dotOf) {
  unsigned i = 0;
  for (const auto& item : range) {
    Dot d = dotOf(item);
    list[i].setReplica(d.replica);
    list[i].setCounter(d.counter);
    ++i;
  }
}

void setOrSet(wire::OrSet::Builder b, const OrSet& set) {
  auto elements = b.initElements(static_cast<unsigned>(set.entries().size()));
  unsigned i = 0;
  for (const auto& [value, dots] : set.entries()) {
    elements[i].setValue(kj::StringPtr(value.data(), value.size()));
    fillDots(elements[i].initDots(static_cast<unsigned>(dots.size())), dots,
             [](const Dot& d) { return d; });
    ++i;
  }
  auto ctx = b.initContext();
  const auto& vv = set.context().versionVector();
  fillDots(ctx.initVersionVector(static_cast<unsigned>(vv.size())), vv, [](const auto& kv) {
    return Dot{kv.first, kv.second};
  });
  const auto& cloud = set.context().cloud();
  fillDots(ctx.initCloud(static_cast<unsigned>(cloud.size())), cloud,
           [](const Dot& d) { return d; });
}

capnp::Text::Reader text(const std::string& s) { return capnp::Text::Reader(s.data(), s.size()); }

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
  capnp::MallocMessageBuilder message(256);
  auto root = message.initRoot<wire::Review>();
  root.setVersion(kStateVersion);
  root.setProduct(text(key_.product));
  root.setAuthor(text(key_.author));

  auto content = root.initContent();
  setStamp(content.initStamp(), content_.stamp());
  content.setDeleted(content_.value().deleted);
  content.setRating(content_.value().rating);
  content.setTitle(text(content_.value().title));
  content.setBody(text(content_.value().body));

  setOrSet(root.initTags(), tags_);
  setOrSet(root.initHelpful(), helpful_);

  auto moderation = root.initModeration();
  setStamp(moderation.initStamp(), moderation_.stamp());
  moderation.setVisibility(static_cast<wire::Visibility>(moderation_.value().visibility));
  moderation.setReason(text(moderation_.value().reason));

  auto reply = root.initReply();
  setStamp(reply.initStamp(), reply_.stamp());
  reply.setText(text(reply_.value().text));

  kj::Array<capnp::word> words = capnp::canonicalize(root.asReader());
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
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
        if (content.deleted &&
            (content.rating != 0 || !content.title.empty() || !content.body.empty())) {
          invalid("tombstone carries content");
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
      if (visibility > static_cast<uint16_t>(Visibility::kFlagged)) invalid("unknown visibility");
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
