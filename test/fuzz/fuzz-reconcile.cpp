// Fuzz target: one anti-entropy message from a peer (gossip/reconciler.h),
// the payload of a `reconcile` gossip frame, handled by a real
// gossip::Reconciler over a real store. Malformed messages must be refused
// as kCorruption, never crash; states in them are merged into the store;
// every reply the reconciler makes must be a message it accepts itself;
// the listings and summaries of the products merged still read.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <set>

#include "fuzz-support.h"
#include "gossip/reconcile.capnp.h"
#include "gossip/reconciler.h"

using namespace chorus;

namespace {

gossip::Reconciler& reconciler() {
  static gossip::Reconciler* r =
      new gossip::Reconciler(fuzz::FuzzStore::get().store(), fuzz::FuzzStore::get().onMerged());
  return *r;
}

// The products of the states in `message` that decode: after they were
// merged, their listings and summaries must still read (a state outside the
// document's ranges that got past decode made them kCorruption).
std::set<std::string> productsMerged(std::string_view message) {
  std::set<std::string> products;
  if (message.empty() || message.size() % sizeof(capnp::word) != 0) return products;
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(message.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), message.data(), message.size());
  (void)kj::runCatchingExceptions([&] {
    capnp::FlatArrayMessageReader reader(words.asPtr());
    auto root = reader.getRoot<gossip::wire::Reconcile>();
    capnp::List<capnp::Data>::Reader states;
    if (root.which() == gossip::wire::Reconcile::STATES) {
      states = root.getStates();
    } else if (root.which() == gossip::wire::Reconcile::STATES_AND_WANTS) {
      states = root.getStatesAndWants().getStates();
    } else {
      return;
    }
    for (auto data : states) {
      auto doc = crdt::ReviewDoc::decode(
          std::string_view(reinterpret_cast<const char*>(data.begin()), data.size()));
      if (doc.ok()) products.insert(doc->key().product);
    }
  });
  return products;
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
  if (reply.ok()) {
    auto& store = fuzz::FuzzStore::get().store();
    for (const auto& product :
         productsMerged(std::string_view(reinterpret_cast<const char*>(data), size))) {
      for (auto order : {storage::Order::kNewest, storage::Order::kHighestRating}) {
        auto page = store.listProduct(product, order, "", 1000);
        FUZZ_CHECK(page.ok() || page.error().code != ErrorCode::kCorruption,
                   "a merged state broke its product's listing: " + page.error().toString());
      }
      auto summary = store.summary(product);
      FUZZ_CHECK(summary.ok() || summary.error().code != ErrorCode::kCorruption,
                 "a merged state broke its product's summary: " + summary.error().toString());
    }
  }
  return 0;
}
