// Writes the seed corpus of the `rpc` fuzz target (fuzz-rpc.cpp): Cap'n Proto
// RPC streams a stranger without a token could send to a node's RPC port.
//
//   ninja -C build test/fuzz/make-rpc-corpus && build/test/fuzz/make-rpc-corpus test/fuzz/corpus
//
// Each file is one byte choosing how fuzz-rpc cuts the stream into writes,
// then the stream: whole rpc::Message frames (bootstrap, calls pipelined on
// the unauthenticated capabilities, a wrong token, finishes, an abort) and a
// few broken frame headers. Deterministic: rerunning gives the same files.
#include <capnp/message.h>
#include <capnp/rpc.capnp.h>
#include <capnp/serialize.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "api/chorus.capnp.h"

namespace fs = std::filesystem;
using namespace chorus::api;

namespace {

// How fuzz-rpc writes the stream: index into {1, 7, 64, 4096, all} bytes.
constexpr char kWhole = 4;
constexpr char kBytewise = 0;
constexpr char kSmallPieces = 1;

std::string frame(const std::function<void(capnp::rpc::Message::Builder)>& fill) {
  capnp::MallocMessageBuilder message;
  fill(message.initRoot<capnp::rpc::Message>());
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

std::string bootstrap(uint32_t question) {
  return frame([&](auto m) { m.initBootstrap().setQuestionId(question); });
}

std::string finish(uint32_t question) {
  return frame([&](auto m) { m.initFinish().setQuestionId(question); });
}

// A call on the result of question `on`: its bootstrap capability (no
// pointer field) or the capability in pointer field `field` of its results.
template <typename Interface, typename Params>
std::string call(uint32_t question, uint32_t on, int field, uint16_t method,
                 const std::function<void(typename Params::Builder)>& params) {
  return frame([&](capnp::rpc::Message::Builder m) {
    auto c = m.initCall();
    c.setQuestionId(question);
    auto promised = c.initTarget().initPromisedAnswer();
    promised.setQuestionId(on);
    if (field >= 0) promised.initTransform(1)[0].setGetPointerField(static_cast<uint16_t>(field));
    c.setInterfaceId(capnp::typeId<Interface>());
    c.setMethodId(method);
    params(c.initParams().getContent().template initAs<Params>());
  });
}

std::string reviewsOf(uint32_t question, uint32_t bootstrapQuestion) {
  return call<wire::Chorus, wire::Chorus::ReviewsParams>(question, bootstrapQuestion, -1, 0,
                                                         [](auto) {});
}

std::string getReview(uint32_t question, uint32_t on, int field) {
  return call<wire::ReviewStore, wire::ReviewStore::GetParams>(question, on, field, 8, [](auto p) {
    p.setProduct("kettle-1");
    p.setAuthor("ann");
  });
}

void put(const fs::path& dir, const std::string& name, char mode, const std::string& stream) {
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.put(mode);
  out.write(stream.data(), static_cast<std::streamsize>(stream.size()));
  if (!out.good()) {
    std::fprintf(stderr, "make-rpc-corpus: cannot write %s\n", (dir / name).c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_ROOT (writes CORPUS_ROOT/rpc/)\n", argv[0]);
    return 1;
  }
  fs::path dir = fs::path(argv[1]) / "rpc";
  fs::create_directories(dir);

  put(dir, "bootstrap", kWhole, bootstrap(0) + finish(0));

  // reviews() then a pipelined get: must be refused (no token).
  std::string get = bootstrap(0) + reviewsOf(1, 0) + getReview(2, 1, 0);
  put(dir, "reviews-get", kWhole, get + finish(2) + finish(1) + finish(0));
  put(dir, "reviews-get-bytewise", kBytewise, get);
  put(dir, "reviews-get-unfinished", kSmallPieces, get);

  put(dir, "admin-status", kWhole,
      bootstrap(0) +
          call<wire::Chorus, wire::Chorus::AdminParams>(1, 0, -1, 1, [](auto) {}) +
          call<wire::Admin, wire::Admin::StatusParams>(2, 1, 0, 0, [](auto) {}));

  put(dir, "admin-partition", kWhole,
      bootstrap(0) +
          call<wire::Chorus, wire::Chorus::AdminParams>(1, 0, -1, 1, [](auto) {}) +
          call<wire::Admin, wire::Admin::PartitionParams>(
              2, 1, 0, 1, [](auto p) { p.initPeers(1).set(0, "n2"); }));

  // A wrong token, then a get on the reviews capability it would return.
  put(dir, "authenticate-wrong", kWhole,
      bootstrap(0) +
          call<wire::Chorus, wire::Chorus::AuthenticateParams>(
              1, 0, -1, 2, [](auto p) { p.setToken("not-a-token-of-this-node"); }) +
          getReview(2, 1, 1));

  put(dir, "put", kWhole,
      bootstrap(0) + reviewsOf(1, 0) +
          call<wire::ReviewStore, wire::ReviewStore::PutParams>(2, 1, 0, 0, [](auto p) {
            p.setProduct("kettle-1");
            p.setAuthor("ann");
            p.setRating(1);
            p.setTitle("overwritten");
            p.setBody("by a stranger");
          }));

  put(dir, "watch-null-observer", kWhole,
      bootstrap(0) + reviewsOf(1, 0) +
          call<wire::ReviewStore, wire::ReviewStore::WatchParams>(
              2, 1, 0, 12, [](auto p) { p.setProduct("kettle-1"); }));

  // Many calls, none finished: the server must bound what it keeps.
  std::string many = bootstrap(0);
  for (uint32_t q = 1; q <= 400; ++q) many += reviewsOf(q, 0);
  put(dir, "many-unfinished", kWhole, many);

  put(dir, "abort", kWhole, bootstrap(0) + frame([](auto m) {
                              auto e = m.initAbort();
                              e.setReason("bye");
                            }));

  // Broken frame headers: a huge segment count; one segment claimed far
  // larger than any limit; a truncated frame.
  std::string huge("\xff\xff\xff\xff\x01\x00\x00\x00", 8);
  put(dir, "segment-count-huge", kWhole, huge + std::string(64, '\0'));
  std::string big("\x00\x00\x00\x00\x00\x00\x00\x10", 8);  // 1 segment of 2^28 words
  put(dir, "segment-size-huge", kWhole, big + std::string(256, 'A'));
  std::string whole = bootstrap(0);
  put(dir, "truncated", kSmallPieces, whole.substr(0, whole.size() / 2));

  std::printf("make-rpc-corpus: wrote %s\n", dir.c_str());
  return 0;
}
