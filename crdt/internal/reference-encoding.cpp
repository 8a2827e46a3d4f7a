#include "crdt/internal/reference-encoding.h"

#include <capnp/message.h>

#include "crdt/state.capnp.h"

namespace chorus::crdt::internal {

namespace {

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

}  // namespace

std::string encodeWithCapnpCanonicalize(const ReviewDoc& doc) {
  capnp::MallocMessageBuilder message(256);
  auto root = message.initRoot<wire::Review>();
  root.setVersion(kStateVersion);
  root.setProduct(text(doc.key().product));
  root.setAuthor(text(doc.key().author));

  auto content = root.initContent();
  setStamp(content.initStamp(), doc.content().stamp());
  content.setDeleted(doc.content().value().deleted);
  content.setRating(doc.content().value().rating);
  content.setTitle(text(doc.content().value().title));
  content.setBody(text(doc.content().value().body));

  setOrSet(root.initTags(), doc.tags());
  setOrSet(root.initHelpful(), doc.helpful());

  auto moderation = root.initModeration();
  setStamp(moderation.initStamp(), doc.moderation().stamp());
  moderation.setVisibility(static_cast<wire::Visibility>(doc.moderation().value().visibility));
  moderation.setReason(text(doc.moderation().value().reason));

  auto reply = root.initReply();
  setStamp(reply.initStamp(), doc.reply().stamp());
  reply.setText(text(doc.reply().value().text));

  kj::Array<capnp::word> words = capnp::canonicalize(root.asReader());
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

}  // namespace chorus::crdt::internal
