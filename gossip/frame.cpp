#include "gossip/frame.h"

#include <kj/exception.h>

#include <cstring>

namespace chorus::gossip {

namespace {

Error malformed(const std::string& why) {
  return makeError(ErrorCode::kCorruption, "gossip frame from peer: " + why);
}

}  // namespace

wire::Frame::Builder newFrame(capnp::MessageBuilder& message, std::string_view from) {
  auto frame = message.initRoot<wire::Frame>();
  frame.setVersion(wire::PROTOCOL_VERSION);
  frame.setFrom(capnp::Text::Reader(from.data(), from.size()));
  return frame;
}

std::string encodeFrame(capnp::MessageBuilder& message) {
  // Written once, straight into the string that carries it.
  std::string bytes(capnp::computeSerializedSizeInWords(message) * sizeof(capnp::word), '\0');
  kj::ArrayOutputStream out(kj::arrayPtr(reinterpret_cast<kj::byte*>(bytes.data()), bytes.size()));
  capnp::writeMessage(out, message);
  return bytes;
}

namespace {

capnp::ReaderOptions limitsFor(size_t words) {
  capnp::ReaderOptions options;
  // validation walks the message once, handling reads it again: allow a
  // small multiple of its size and no more.
  options.traversalLimitInWords = words * 4 + 64;
  options.nestingLimit = 8;
  return options;
}

}  // namespace

ParsedFrame::ParsedFrame(kj::Array<capnp::word> words)
    : words_(std::move(words)), reader_(words_, limitsFor(words_.size())) {}

namespace {

// Reads everything a receiver may read of `root`, once; throws on anything
// malformed. Text getters check NUL termination and Data/List getters the
// element type only when called, so each is called here.
void validate(wire::Frame::Reader root) {
  root.totalSize();  // walks every pointer
  (void)root.getFrom();
  auto member = [](wire::Member::Reader m) {
    (void)m.getNodeId();
    (void)m.getGossipAddress();
    (void)m.getRpcAddress();
    (void)m.getRegion();
  };
  auto probe = [](wire::Probe::Reader p) {
    (void)p.getTarget();
    (void)p.getTargetAddress();
  };
  for (auto m : root.getMembers()) member(m);
  switch (root.which()) {
    case wire::Frame::HELLO:
      member(root.getHello().getMember());
      break;
    case wire::Frame::PING:
      probe(root.getPing());
      break;
    case wire::Frame::ACK:
      probe(root.getAck());
      break;
    case wire::Frame::NACK:
      probe(root.getNack());
      break;
    case wire::Frame::PING_REQ:
      probe(root.getPingReq());
      break;
    case wire::Frame::PUSH_PULL:
      for (auto m : root.getPushPull()) member(m);
      break;
    case wire::Frame::PUSH_PULL_REPLY:
      for (auto m : root.getPushPullReply()) member(m);
      break;
    case wire::Frame::BROADCAST:
      for (auto b : root.getBroadcast()) {
        (void)b.getScope();
        (void)b.getOrigin();
        (void)b.getData().size();
      }
      break;
    case wire::Frame::IHAVE:
      (void)root.getIhave().size();
      break;
    case wire::Frame::GRAFT:
      (void)root.getGraft().size();
      break;
    case wire::Frame::PRUNE:
      for (auto o : root.getPrune()) (void)o;
      break;
    case wire::Frame::RECONCILE:
      (void)root.getReconcile().size();
      break;
    case wire::Frame::PULL:
      for (auto k : root.getPull()) {
        (void)k.getProduct();
        (void)k.getAuthor();
      }
      break;
    case wire::Frame::PULLED:
      for (auto d : root.getPulled()) (void)d.size();
      break;
    case wire::Frame::SNAPSHOT: {
      auto s = root.getSnapshot();
      switch (s.which()) {
        case wire::Snapshot::INFO:
          (void)s.getInfo();
          break;
        case wire::Snapshot::REQUEST:
          (void)s.getRequest().getId();
          break;
        case wire::Snapshot::START:
          (void)s.getStart().getId();
          break;
        case wire::Snapshot::CHUNK:
          (void)s.getChunk().getData().size();
          break;
        case wire::Snapshot::END:
          (void)s.getEnd();
          break;
        case wire::Snapshot::ERROR:
          (void)s.getError();
          break;
        default:
          break;
      }
      break;
    }
    default:
      break;
  }
}

}  // namespace

Result<std::unique_ptr<ParsedFrame>> ParsedFrame::parse(kj::Array<capnp::word> body) {
  std::optional<Error> failure;
  // Validate with a reader of its own, so the frame handed out has its whole
  // traversal budget left for the receiver: reading it once more costs no
  // more than this walk did.
  auto exception = kj::runCatchingExceptions([&] {
    capnp::FlatArrayMessageReader check(body, limitsFor(body.size()));
    auto root = check.getRoot<wire::Frame>();
    // The version first: another version's frame need not validate as ours.
    if (root.getVersion() != wire::PROTOCOL_VERSION) {
      failure = malformed("gossip protocol version " + std::to_string(root.getVersion()) +
                          ", this node speaks " + std::to_string(wire::PROTOCOL_VERSION) +
                          " (nodes of both versions cannot mix: upgrade every node)");
      return;
    }
    validate(root);
    if (root.getFrom().size() == 0) {
      failure = malformed("no sender id");
    } else if (unsigned(root.which()) > unsigned(wire::Frame::SNAPSHOT)) {
      failure = malformed("unknown frame kind " + std::to_string(unsigned(root.which())));
    } else if (root.which() == wire::Frame::SNAPSHOT &&
               unsigned(root.getSnapshot().which()) > unsigned(wire::Snapshot::ERROR)) {
      failure = malformed("unknown snapshot message " +
                          std::to_string(unsigned(root.getSnapshot().which())));
    }
  });
  KJ_IF_MAYBE (e, exception) {
    return malformed(e->getDescription().cStr());
  }
  if (failure) return *failure;
  std::unique_ptr<ParsedFrame> frame(new ParsedFrame(std::move(body)));
  frame->root_ = frame->reader_.getRoot<wire::Frame>();
  return frame;
}

}  // namespace chorus::gossip
