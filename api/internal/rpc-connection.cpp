#include "api/internal/rpc-connection.h"

#include <capnp/rpc.capnp.h>

namespace chorus::api::internal {

MeteredMessageStream::MeteredMessageStream(kj::AsyncIoStream& stream,
                                           kj::Own<ConnectionUsage> usage,
                                           kj::Function<size_t()> maxMessageBytes,
                                           kj::Function<void()> afterRead)
    : inner_(stream),
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
