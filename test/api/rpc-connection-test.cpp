// api/internal/rpc-connection.h: BufferedIoStream serves Cap'n Proto's
// small per-message reads from one read of the socket, byte for byte.
#include <doctest/doctest.h>

#include <capnp/message.h>
#include <capnp/serialize-async.h>
#include <capnp/serialize.h>
#include <kj/async-io.h>

#include <string>
#include <vector>

#include "api/chorus.capnp.h"
#include "api/internal/rpc-connection.h"

using chorus::api::internal::BufferedIoStream;

namespace {

// Counts the reads that reach the stream below.
class CountingStream final : public kj::AsyncIoStream {
 public:
  explicit CountingStream(kj::AsyncIoStream& inner) : inner_(inner) {}
  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override {
    ++reads;
    return inner_.tryRead(buffer, minBytes, maxBytes);
  }
  kj::Promise<void> write(const void* buffer, size_t size) override {
    return inner_.write(buffer, size);
  }
  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override {
    return inner_.write(pieces);
  }
  kj::Promise<void> whenWriteDisconnected() override { return inner_.whenWriteDisconnected(); }
  void shutdownWrite() override { inner_.shutdownWrite(); }
  int reads = 0;

 private:
  kj::AsyncIoStream& inner_;
};

kj::Array<capnp::word> frame(const std::string& title) {
  capnp::MallocMessageBuilder message;
  auto review = message.initRoot<chorus::api::wire::Review>();
  review.setProduct("p");
  review.setTitle(title);
  return capnp::messageToFlatArray(message);
}

}  // namespace

TEST_CASE("rpc connection: buffered reads return every message intact, in fewer reads") {
  kj::EventLoop loop;
  kj::WaitScope ws(loop);
  auto pipe = kj::newTwoWayPipe();
  CountingStream counted(*pipe.ends[1]);
  BufferedIoStream buffered(counted);
  capnp::AsyncIoMessageStream messages(buffered);

  // 60 small messages and two larger than the buffer, sent as one write.
  std::vector<std::string> titles;
  for (int i = 0; i < 60; ++i) titles.push_back("t" + std::to_string(i));
  titles.insert(titles.begin() + 20, std::string(20'000, 'x'));
  titles.push_back(std::string(BufferedIoStream::kBufferBytes - 40, 'y'));
  kj::Vector<capnp::word> all;
  for (const auto& t : titles) all.addAll(frame(t));
  auto bytes = all.asPtr().asBytes();
  auto written = pipe.ends[0]
                     ->write(bytes.begin(), bytes.size())
                     .then([&] { pipe.ends[0]->shutdownWrite(); })
                     .eagerlyEvaluate(nullptr);

  for (const auto& t : titles) {
    auto read = messages.tryReadMessage(nullptr, capnp::ReaderOptions(), nullptr).wait(ws);
    KJ_IF_MAYBE (m, read) {
      auto review = m->reader->getRoot<chorus::api::wire::Review>();
      CHECK(review.getProduct() == "p");
      CHECK(std::string(review.getTitle().cStr()) == t);
    } else {
      FAIL("the stream ended early");
    }
  }
  // The end of the stream is still seen.
  CHECK(messages.tryReadMessage(nullptr, capnp::ReaderOptions(), nullptr).wait(ws) == nullptr);
  written.wait(ws);
  // Unbuffered, each message is two reads (its segment table, its
  // segments): 127 here.
  MESSAGE("reads below the buffer: " << counted.reads);
  CHECK(counted.reads < 40);
}
