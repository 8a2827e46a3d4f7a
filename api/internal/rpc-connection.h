// What one RPC client connection makes the server hold, measured from the
// messages it sends. Internal to api/rpc-server.cpp.
//
// Cap'n Proto keeps an answer for every Bootstrap and Call a client sends,
// replied or not, until the client sends Finish for it; a client that never
// finishes makes the server keep every reply. MeteredMessageStream sits
// between the socket and capnp::TwoPartyVatNetwork (a capnp::MessageStream)
// and counts, exactly, the questions a client opened and has not finished,
// and the bytes of its messages the server still holds. The server decides
// what is too much (afterRead) and may lower the frame limit per read
// (maxMessageBytes), e.g. before the client authenticated.
#pragma once

#include <capnp/serialize-async.h>
#include <kj/async-io.h>
#include <kj/function.h>

#include <cstddef>
#include <cstdint>
#include <unordered_set>

namespace chorus::api::internal {

// One connection's counters. Refcounted: a held message outlives the stream.
struct ConnectionUsage : kj::Refcounted {
  // Bootstrap and Call question ids the client sent and has not finished.
  std::unordered_set<uint32_t> questions;
  // Bytes of the client's messages still referenced by the server (a call's
  // parameters until it completes, ...).
  size_t heldRequestBytes = 0;
  uint64_t messagesRead = 0;

  size_t unfinishedCalls() const { return questions.size(); }
};

// A connection's socket with its reads buffered: Cap'n Proto reads each
// message in two small reads (its segment table, then its segments), two
// system calls per message; this serves them from one read of up to
// kBufferBytes of whatever the client has sent (pipelined calls, Finish
// messages). Reads larger than the buffer go straight to the caller's
// memory. Writes and socket calls pass through.
class BufferedIoStream final : public kj::AsyncIoStream {
 public:
  static constexpr size_t kBufferBytes = 8 << 10;
  explicit BufferedIoStream(kj::AsyncIoStream& inner) : inner_(inner) {}

  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override;
  kj::Promise<void> write(const void* buffer, size_t size) override {
    return inner_.write(buffer, size);
  }
  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override {
    return inner_.write(pieces);
  }
  kj::Promise<void> whenWriteDisconnected() override { return inner_.whenWriteDisconnected(); }
  void shutdownWrite() override { inner_.shutdownWrite(); }
  void abortRead() override { inner_.abortRead(); }
  void getsockopt(int level, int option, void* value, kj::uint* length) override {
    inner_.getsockopt(level, option, value, length);
  }
  void setsockopt(int level, int option, const void* value, kj::uint length) override {
    inner_.setsockopt(level, option, value, length);
  }
  void getsockname(struct sockaddr* addr, kj::uint* length) override {
    inner_.getsockname(addr, length);
  }
  void getpeername(struct sockaddr* addr, kj::uint* length) override {
    inner_.getpeername(addr, length);
  }
  kj::Maybe<int> getFd() const override { return inner_.getFd(); }

 private:
  // `out[0, have)` is filled; reads until at least `minBytes` (or the end).
  kj::Promise<size_t> readMore(kj::byte* out, size_t have, size_t minBytes, size_t maxBytes);

  kj::AsyncIoStream& inner_;
  kj::Array<kj::byte> buffer_ = kj::heapArray<kj::byte>(kBufferBytes);
  size_t begin_ = 0, end_ = 0;  // buffer_[begin_, end_) is read and not yet taken
};

class MeteredMessageStream final : public capnp::MessageStream {
 public:
  // `maxMessageBytes` is asked before each read: a larger frame is refused
  // before it is read ("Message is too large", the connection ends).
  // `afterRead` runs once each message is counted, before the RPC system
  // sees it; it may throw a kj::Exception to end the connection.
  MeteredMessageStream(kj::AsyncIoStream& stream, kj::Own<ConnectionUsage> usage,
                       kj::Function<size_t()> maxMessageBytes, kj::Function<void()> afterRead);

  kj::Promise<kj::Maybe<capnp::MessageReaderAndFds>> tryReadMessage(
      kj::ArrayPtr<kj::AutoCloseFd> fdSpace, capnp::ReaderOptions options,
      kj::ArrayPtr<capnp::word> scratchSpace) override;
  kj::Promise<void> writeMessage(
      kj::ArrayPtr<const int> fds,
      kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) override;
  kj::Promise<void> writeMessages(
      kj::ArrayPtr<kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>> messages) override;
  kj::Maybe<int> getSendBufferSize() override;
  kj::Promise<void> end() override;

 private:
  // Updates the question set from one rpc::Message; a message that does not
  // parse is left to the RPC system (which ends the connection).
  void count(capnp::MessageReader& message);

  BufferedIoStream buffered_;
  capnp::AsyncIoMessageStream inner_;  // over buffered_
  kj::Own<ConnectionUsage> usage_;
  kj::Function<size_t()> maxMessageBytes_;
  kj::Function<void()> afterRead_;
};

}  // namespace chorus::api::internal
