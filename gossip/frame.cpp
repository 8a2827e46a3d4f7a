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
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  std::string out(kFrameHeaderBytes + bytes.size(), '\0');
  uint32_t size = static_cast<uint32_t>(bytes.size());
  for (size_t i = 0; i < kFrameHeaderBytes; ++i) out[i] = static_cast<char>((size >> (8 * i)) & 0xff);
  std::memcpy(out.data() + kFrameHeaderBytes, bytes.begin(), bytes.size());
  return out;
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
  };
  switch (root.which()) {
    case wire::Frame::HELLO:
      member(root.getHello());
      break;
    case wire::Frame::HEARTBEAT:
      for (auto m : root.getHeartbeat()) member(m);
      break;
    case wire::Frame::ACK:
      for (auto m : root.getAck()) member(m);
      break;
    case wire::Frame::DELTAS:
      for (auto d : root.getDeltas()) (void)d.size();
      break;
    case wire::Frame::RECONCILE:
      (void)root.getReconcile().size();
      break;
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
    validate(root);
    if (root.getVersion() != wire::PROTOCOL_VERSION) {
      failure = malformed("protocol version " + std::to_string(root.getVersion()) +
                          ", this node speaks " + std::to_string(wire::PROTOCOL_VERSION) +
                          " (upgrade the older node)");
    } else if (root.getFrom().size() == 0) {
      failure = malformed("no sender id");
    } else if (unsigned(root.which()) > unsigned(wire::Frame::RECONCILE)) {
      failure = malformed("unknown frame kind " + std::to_string(unsigned(root.which())));
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

Result<std::optional<kj::Array<capnp::word>>> FrameSplitter::next() {
  if (buffered() < kFrameHeaderBytes) return std::optional<kj::Array<capnp::word>>();
  const auto* p = reinterpret_cast<const uint8_t*>(buffer_.data() + offset_);
  uint32_t size = 0;
  for (size_t i = 0; i < kFrameHeaderBytes; ++i) size |= uint32_t{p[i]} << (8 * i);
  if (size == 0 || size % sizeof(capnp::word) != 0) {
    return malformed("length " + std::to_string(size) + " is not a positive multiple of 8");
  }
  if (size > max_) {
    return malformed("length " + std::to_string(size) + " exceeds the limit of " +
                     std::to_string(max_) + " bytes");
  }
  if (buffered() < kFrameHeaderBytes + size) return std::optional<kj::Array<capnp::word>>();
  auto words = kj::heapArray<capnp::word>(size / sizeof(capnp::word));
  std::memcpy(words.begin(), p + kFrameHeaderBytes, size);
  offset_ += kFrameHeaderBytes + size;
  if (offset_ == buffer_.size()) {
    buffer_.clear();
    offset_ = 0;
  } else if (offset_ > (1u << 20) && offset_ * 2 > buffer_.size()) {
    buffer_.erase(0, offset_);  // keep the buffer from growing without bound
    offset_ = 0;
  }
  return std::optional<kj::Array<capnp::word>>(std::move(words));
}

}  // namespace chorus::gossip
