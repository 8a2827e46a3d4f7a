// Gossip frames: one unpacked Cap'n Proto message (a wire::Frame,
// gossip/gossip.capnp). On the wire each is sealed by gossip/secure-channel.h,
// which carries the body encodeFrame() makes (without its 4-byte length) and
// hands received bodies to ParsedFrame::parse. FrameSplitter cuts a
// plaintext stream of length-prefixed frames (frame tests, the frame fuzzer).
// Decoding is strict and bounded: a frame larger than the limit, of a length
// that is not a whole number of words, of another protocol version, or that
// fails Cap'n Proto validation is an error (kCorruption), never a crash.
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

inline constexpr size_t kFrameHeaderBytes = 4;

// Starts a frame: sets version and sender.
wire::Frame::Builder newFrame(capnp::MessageBuilder& message, std::string_view from);
// The bytes to write: header + message.
std::string encodeFrame(capnp::MessageBuilder& message);

// One received frame, validated; root() is safe to read while it lives.
class ParsedFrame {
 public:
  wire::Frame::Reader root() { return root_; }
  size_t bytes() const { return words_.size() * sizeof(capnp::word) + kFrameHeaderBytes; }

  // Validates `body` (a frame without its header).
  static Result<std::unique_ptr<ParsedFrame>> parse(kj::Array<capnp::word> body);

 private:
  explicit ParsedFrame(kj::Array<capnp::word> words);
  kj::Array<capnp::word> words_;
  capnp::FlatArrayMessageReader reader_;
  wire::Frame::Reader root_;
};

// Cuts a TCP byte stream into frame bodies.
class FrameSplitter {
 public:
  explicit FrameSplitter(size_t maxFrameBytes) : max_(maxFrameBytes) {}
  void append(const char* data, size_t size) { buffer_.append(data, size); }
  // The next complete frame body; nullopt if more bytes are needed; an Error
  // (kCorruption) if the stream is malformed, after which it must be closed.
  Result<std::optional<kj::Array<capnp::word>>> next();
  size_t buffered() const { return buffer_.size() - offset_; }

 private:
  size_t max_;
  std::string buffer_;
  size_t offset_ = 0;
};

}  // namespace chorus::gossip
