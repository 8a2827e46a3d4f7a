// Fuzz target: one anti-entropy message from a peer (gossip/reconciler.h),
// the payload of a `reconcile` gossip frame, handled by a real
// gossip::Reconciler over a real store. Malformed messages must be refused
// as kCorruption, never crash; states in them are merged into the store;
// every reply the reconciler makes must be a message it accepts itself.
#include "fuzz-support.h"
#include "gossip/reconciler.h"

using namespace chorus;

namespace {

gossip::Reconciler& reconciler() {
  static gossip::Reconciler* r =
      new gossip::Reconciler(fuzz::FuzzStore::get().store(), fuzz::FuzzStore::get().onMerged());
  return *r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto& r = reconciler();
  uint64_t malformedBefore = r.counters().malformed;
  auto reply = r.handle(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!reply.ok()) {
    FUZZ_CHECK(reply.error().code == ErrorCode::kCorruption, reply.error().toString());
    FUZZ_CHECK(r.counters().malformed > malformedBefore, "a refusal was not counted");
  } else if (reply.value()) {
    const auto& out = *reply.value();
    FUZZ_CHECK(!out.bytes.empty() && out.bytes.size() % 8 == 0, "reply length");
    FUZZ_CHECK(out.payloadBytes <= out.bytes.size(), "payload larger than the reply");
    auto again = r.handle(out.bytes);
    FUZZ_CHECK(again.ok() || again.error().code != ErrorCode::kCorruption,
               "the reconciler refused its own reply: " + again.error().toString());
  }
  fuzz::FuzzStore::get().waitMerged(r.counters().statesReceived);
  return 0;
}
