#include "api/types.h"

namespace chorus {

ReviewView ReviewView::of(const crdt::ReviewDoc& doc) {
  ReviewView v;
  v.product = doc.key().product;
  v.author = doc.key().author;
  v.deleted = !doc.exists();
  if (doc.content().isSet()) {
    const crdt::Content& c = doc.content().value();
    v.rating = c.rating;
    v.title = c.title;
    v.body = c.body;
    v.editedAtMillis = doc.content().stamp().hlc.millis();
  }
  v.tags = doc.tags().elements();
  v.helpful = static_cast<uint32_t>(doc.helpfulCount());
  v.visibility = doc.moderation().value().visibility;
  v.moderationReason = doc.moderation().value().reason;
  v.reply = doc.reply().value().text;
  return v;
}

const char* writeOpName(WriteOp op) {
  switch (op) {
    case WriteOp::kPut:
      return "put";
    case WriteOp::kDelete:
      return "delete";
    case WriteOp::kVote:
      return "vote";
    case WriteOp::kUnvote:
      return "unvote";
    case WriteOp::kTag:
      return "tag";
    case WriteOp::kUntag:
      return "untag";
    case WriteOp::kModerate:
      return "moderate";
    case WriteOp::kReply:
      return "reply";
  }
  return "?";
}

const char* api::keyOpName(api::KeyOp op) {
  switch (op) {
    case api::KeyOp::kList:
      return "list";
    case api::KeyOp::kInstall:
      return "install";
    case api::KeyOp::kUse:
      return "use";
    case api::KeyOp::kRemove:
      return "remove";
  }
  return "unknown";
}

const char* visibilityName(crdt::Visibility v) {
  switch (v) {
    case crdt::Visibility::kVisible:
      return "visible";
    case crdt::Visibility::kHidden:
      return "hidden";
    case crdt::Visibility::kFlagged:
      return "flagged";
  }
  return "?";
}

}  // namespace chorus
