// Gossip frames: one unpacked Cap'n Proto message (a wire::Frame,
// gossip/gossip.capnp). encodeFrame() makes the frame body; on the wire each
// body is sealed by gossip/secure-channel.h, which carries its length, and
// the bodies it opens go to ParsedFrame::parse (the replication core does
// that). Decoding is strict and bounded: a frame of another protocol
// version, without a sender, of an unknown kind, or that fails Cap'n Proto
// validation is an error (kCorruption), never a crash; the channel refuses
// lengths that are not whole words or exceed the limit before they reach it.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "crdt/result.h"
#include "gossip/gossip.capnp.h"

namespace chorus::gossip {

// Starts a frame: sets version and sender.
wire::Frame::Builder newFrame(capnp::MessageBuilder& message, std::string_view from);
// The frame body: the message's words (unpacked), to be sealed.
std::string encodeFrame(capnp::MessageBuilder& message);

// One received frame, validated; root() is safe to read while it lives.
class ParsedFrame {
 public:
  wire::Frame::Reader root() { return root_; }
  size_t bytes() const { return words_.size() * sizeof(capnp::word); }  // of the body

  // Validates `body`.
  static Result<std::unique_ptr<ParsedFrame>> parse(kj::Array<capnp::word> body);

 private:
  explicit ParsedFrame(kj::Array<capnp::word> words);
  kj::Array<capnp::word> words_;
  capnp::FlatArrayMessageReader reader_;
  wire::Frame::Reader root_;
};

}  // namespace chorus::gossip
