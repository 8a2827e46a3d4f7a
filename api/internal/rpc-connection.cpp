#include "api/internal/rpc-connection.h"

#include <capnp/rpc.capnp.h>

#include <algorithm>
#include <cstring>

namespace chorus::api::internal {

kj::Promise<size_t> BufferedIoStream::tryRead(void* buffer, size_t minBytes, size_t maxBytes) {
  auto* out = static_cast<kj::byte*>(buffer);
  size_t n = std::min(maxBytes, end_ - begin_);
  if (n > 0) std::memcpy(out, buffer_.begin() + begin_, n);  // never memcpy(nullptr, ..., 0): UB
  begin_ += n;
  if (n >= minBytes) return n;
  return readMore(out, n, minBytes, maxBytes);
}

kj::Promise<size_t> BufferedIoStream::readMore(kj::byte* out, size_t have, size_t minBytes,
                                               size_t maxBytes) {
  // The buffer is empty here.
  if (maxBytes - have >= kBufferBytes) {  // a large read: no copy
    return inner_.tryRead(out + have, minBytes - have, maxBytes - have).then([have](size_t got) {
      return have + got;
    });
  }
  return inner_.tryRead(buffer_.begin(), minBytes - have, kBufferBytes)
      .then([this, out, have, maxBytes](size_t got) -> size_t {
        begin_ = 0;
        end_ = got;
        size_t n = std::min(maxBytes - have, got);
        if (n > 0) std::memcpy(out + have, buffer_.begin(), n);
        begin_ = n;
        return have + n;  // less than minBytes only at the end of the stream
      });
}

MeteredMessageStream::MeteredMessageStream(kj::AsyncIoStream& stream,
                                           kj::Own<ConnectionUsage> usage,
                                           kj::Function<size_t()> maxMessageBytes,
                                           kj::Function<void()> afterRead)
    : buffered_(stream),
      inner_(buffered_),
      usage_(kj::mv(usage)),
      maxMessageBytes_(kj::mv(maxMessageBytes)),
      afterRead_(kj::mv(afterRead)) {}

kj::Promise<kj::Maybe<capnp::MessageReaderAndFds>> MeteredMessageStream::tryReadMessage(
    kj::ArrayPtr<kj::AutoCloseFd> fdSpace, capnp::ReaderOptions options,
    kj::ArrayPtr<capnp::word> scratchSpace) {
  // Cap'n Proto refuses a frame whose segment table adds up to more than the
  // traversal limit before it allocates the segments.
  size_t words = maxMessageBytes_() / sizeof(capnp::word);
  if (words < options.traversalLimitInWords) options.traversalLimitInWords = words;
  return inner_.tryReadMessage(fdSpace, options, scratchSpace)
      .then([this](kj::Maybe<capnp::MessageReaderAndFds>&& read)
                -> kj::Maybe<capnp::MessageReaderAndFds> {
        KJ_IF_MAYBE (m, read) {
          count(*m->reader);  // first: getRoot sets up the reader's arena, which sizeInWords reads
          size_t bytes = m->reader->sizeInWords() * sizeof(capnp::word);
          usage_->heldRequestBytes += bytes;
          ++usage_->messagesRead;
          m->reader =
              kj::mv(m->reader).attach(kj::defer([usage = kj::addRef(*usage_), bytes]() mutable {
                usage->heldRequestBytes -= bytes;
              }));
          afterRead_();
        }
        return kj::mv(read);
      });
}

void MeteredMessageStream::count(capnp::MessageReader& message) {
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 auto m = message.getRoot<capnp::rpc::Message>();
                 switch (m.which()) {
                   case capnp::rpc::Message::BOOTSTRAP:
                     usage_->questions.insert(m.getBootstrap().getQuestionId());
                     break;
                   case capnp::rpc::Message::CALL:
                     usage_->questions.insert(m.getCall().getQuestionId());
                     break;
                   case capnp::rpc::Message::FINISH:
                     usage_->questions.erase(m.getFinish().getQuestionId());
                     break;
                   default:
                     break;
                 }
               })) {
    (void)e;  // malformed: the RPC system refuses it and ends the connection
  }
}

kj::Promise<void> MeteredMessageStream::writeMessage(
    kj::ArrayPtr<const int> fds, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) {
  return inner_.writeMessage(fds, segments);
}

kj::Promise<void> MeteredMessageStream::writeMessages(
    kj::ArrayPtr<kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>> messages) {
  return inner_.writeMessages(messages);
}

kj::Maybe<int> MeteredMessageStream::getSendBufferSize() { return inner_.getSendBufferSize(); }

kj::Promise<void> MeteredMessageStream::end() { return inner_.end(); }

}  // namespace chorus::api::internal
