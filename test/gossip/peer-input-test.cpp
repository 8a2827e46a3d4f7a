// A faulty peer's review states, delivered the way a peer delivers them
// (an anti-entropy `states` message handled by gossip::Reconciler, which
// decodes each state and merges it into a real storage::Store), leave the
// receiving store's listings, summaries and Merkle tree intact.
//
// Two guards stand between a peer and the store: ReviewDoc::decode, which
// refuses any state outside the ranges of the document itself (a live
// rating outside 1-5, an unknown visibility, a tombstone with content), and
// the `admit` check chorus::Node installs (api::checkState: this node's
// client limits on texts, ids and tags). Both are tested here, each alone.
#include <doctest/doctest.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <set>

#include "api/validate.h"
#include "crdt/out-of-range.h"
#include "gossip/reconcile.capnp.h"
#include "gossip/reconciler.h"

using namespace chorus;
using chorus::gossip::Reconciler;
using crdt::ReviewDoc;

namespace {

const std::string kProduct = "kettle-1";

struct ReceivingStore {
  std::filesystem::path dir;
  std::unique_ptr<storage::Store> store;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t merged = 0;

  ReceivingStore() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "chorus-peer-input-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    dir = pattern;
    storage::Options options;
    options.dir = dir.string();
    options.unsafeNoSync = true;  // throwaway data
    auto opened = storage::Store::open(options);
    REQUIRE_MESSAGE(opened.ok(), (opened.ok() ? "" : opened.error().toString()));
    store = std::move(opened).value();
  }
  ~ReceivingStore() {
    store.reset();
    std::filesystem::remove_all(dir);
  }
  storage::Done onMerged() {
    return [this](Result<storage::Applied> r) {
      CHECK_MESSAGE(r.ok(), (r.ok() ? "" : r.error().toString()));
      std::lock_guard lock(mu);
      ++merged;
      cv.notify_all();
    };
  }
  bool waitMerged(uint64_t count) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(30), [&] { return merged >= count; });
  }
};

uint64_t nowMillis() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

ReviewDoc review(const std::string& author, uint8_t rating, uint64_t millis) {
  ReviewDoc doc({kProduct, author});
  (void)doc.write(rating, "title", "body", crdt::Stamp{crdt::Hlc::fromParts(millis, 0), 9});
  return doc;
}

// An anti-entropy `states` message carrying `states` (gossip/reconcile.capnp).
std::string statesMessage(const std::vector<std::string>& states) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<gossip::wire::Reconcile>();
  root.setVersion(gossip::wire::RECONCILE_VERSION);
  auto list = root.initStates(static_cast<unsigned>(states.size()));
  for (unsigned i = 0; i < states.size(); ++i) {
    list.set(i, capnp::Data::Reader(reinterpret_cast<const uint8_t*>(states[i].data()),
                                    states[i].size()));
  }
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

// What a reader of the product sees: every listing order, the summary.
struct Visible {
  std::vector<std::set<std::string>> authorsByOrder;
  storage::ProductSummary summary;
};

Visible visible(storage::Store& store) {
  Visible v;
  for (auto order :
       {storage::Order::kNewest, storage::Order::kHighestRating, storage::Order::kLowestRating}) {
    auto page = store.listProduct(kProduct, order, "", 100);
    REQUIRE_MESSAGE(page.ok(), page.error().toString());
    std::set<std::string> authors;
    for (const auto& doc : page->reviews) {
      CHECK(doc.exists());
      CHECK(doc.content().value().rating >= 1);
      CHECK(doc.content().value().rating <= 5);
      authors.insert(doc.key().author);
    }
    v.authorsByOrder.push_back(authors);
  }
  auto summary = store.summary(kProduct);
  REQUIRE_MESSAGE(summary.ok(), summary.error().toString());
  v.summary = *summary;
  return v;
}

// Delivers `states` in one message; returns the reconciler's counters.
gossip::ReconcileCounters deliver(ReceivingStore& s, const std::vector<std::string>& states,
                                  Reconciler::Admit admit, std::string* lastRefusal = nullptr) {
  Reconciler reconciler(*s.store, s.onMerged(), Reconciler::kDefaultMaxMessageBytes,
                        std::move(admit));
  uint64_t before = s.merged;
  auto reply = reconciler.handle(statesMessage(states));
  REQUIRE_MESSAGE(reply.ok(), reply.error().toString());
  CHECK_FALSE(reply->has_value());  // `states` ends the session
  REQUIRE(s.waitMerged(before + reconciler.counters().statesReceived));
  if (lastRefusal) *lastRefusal = reconciler.lastRefusal();
  return reconciler.counters();
}

// Holds the store's view to `expected`: three reviews plus the valid ones
// delivered, the summary counting exactly those.
void expectIntact(storage::Store& store, const std::map<std::string, uint8_t>& expected) {
  Visible v = visible(store);
  std::set<std::string> authors;
  storage::ProductSummary summary;
  for (const auto& [author, rating] : expected) {
    authors.insert(author);
    ++summary.count;
    ++summary.histogram[rating - 1];
    summary.ratingSum += rating;
  }
  for (const auto& listed : v.authorsByOrder) CHECK(listed == authors);
  CHECK(v.summary.count == summary.count);
  CHECK(v.summary.histogram == summary.histogram);
  CHECK(v.summary.ratingSum == summary.ratingSum);
  auto verified = store.verify();
  CHECK_MESSAGE(verified.ok(), (verified.ok() ? "" : verified.error().toString()));
}

}  // namespace

TEST_CASE("a peer's state with a field out of range is refused by decode; the store stays intact") {
  ReceivingStore s;
  uint64_t now = nowMillis();
  std::map<std::string, uint8_t> expected{{"ann", 5}, {"bob", 3}, {"cy", 1}};
  for (const auto& [author, rating] : expected) {
    REQUIRE(s.store->mergeSync(review(author, rating, now - 1000)).ok());
  }
  expectIntact(*s.store, expected);

  // Without an admit check (a bare Reconciler, as chorus-sim runs it) and
  // with the one chorus::Node installs: decode alone must refuse these.
  auto bad = test::outOfRangeStates({kProduct, "mallory"}, now - 500);
  for (bool withAdmit : {false, true}) {
    CAPTURE(withAdmit);
    Reconciler::Admit admit;
    if (withAdmit) {
      admit = [](const ReviewDoc& doc) -> Status {
        if (auto e = api::checkState(doc, api::Limits{})) return e->toError();
        return okStatus();
      };
    }
    auto rootBefore = s.store->merkleRoot();
    REQUIRE(rootBefore.ok());
    std::vector<std::string> states;
    for (const auto& b : bad) states.push_back(b.bytes);
    auto counters = deliver(s, states, admit);
    CHECK(counters.malformed == bad.size());
    CHECK(counters.refused == 0);
    CHECK(counters.statesReceived == 0);
    auto mallory = s.store->get({kProduct, "mallory"});
    REQUIRE_MESSAGE(mallory.ok(), mallory.error().toString());
    CHECK_FALSE(mallory->has_value());
    expectIntact(*s.store, expected);
    auto root = s.store->merkleRoot();
    REQUIRE(root.ok());
    CHECK(*root == *rootBefore);

    // One at a time, each beside a valid state in the same message: the
    // valid one is merged, the bad one is not.
    for (const auto& b : bad) {
      CAPTURE(b.name);
      std::string author = "ok-" + b.name + (withAdmit ? "-admit" : "");
      auto rating = static_cast<uint8_t>(1 + expected.size() % 5);
      auto c = deliver(s, {b.bytes, review(author, rating, now - 400).encode()}, admit);
      CHECK(c.malformed == 1);
      CHECK(c.statesReceived == 1);
      expected[author] = rating;
      expectIntact(*s.store, expected);
    }
  }
}

TEST_CASE("a peer's state past this node's client limits is refused by the admit check") {
  ReceivingStore s;
  uint64_t now = nowMillis();
  std::map<std::string, uint8_t> expected{{"ann", 4}};
  REQUIRE(s.store->mergeSync(review("ann", 4, now - 1000)).ok());
  api::Limits limits;
  Reconciler::Admit admit = [limits](const ReviewDoc& doc) -> Status {
    if (auto e = api::checkState(doc, limits)) return e->toError();
    return okStatus();
  };

  // Each decodes (the limits are this node's, not the document's) and
  // breaks exactly one of the ranges checkState holds peers to.
  crdt::Stamp stamp{crdt::Hlc::fromParts(now - 500, 0), 7};
  struct Case {
    std::string name, field;
    std::function<void(ReviewDoc&)> make;
  };
  std::vector<Case> cases = {
      {"title", "title",
       [&](ReviewDoc& d) {
         (void)d.write(3, std::string(limits.maxTitleBytes + 1, 't'), "", stamp);
       }},
      {"body", "body",
       [&](ReviewDoc& d) {
         (void)d.write(3, "", std::string(limits.maxBodyBytes + 1, 'b'), stamp);
       }},
      {"title-utf8", "title", [&](ReviewDoc& d) { (void)d.write(3, "\xc3(", "", stamp); }},
      {"tag-id", "tag", [&](ReviewDoc& d) { (void)d.tag("has space", 7); }},
      {"tag-long", "tag",
       [&](ReviewDoc& d) { (void)d.tag(std::string(limits.maxIdBytes + 1, 'x'), 7); }},
      {"tags-count", "tag",
       [&](ReviewDoc& d) {
         for (size_t i = 0; i <= limits.maxTags * limits.peerSlack; ++i) {
           (void)d.tag("t" + std::to_string(i), 7);
         }
       }},
      {"voter-id", "voter", [&](ReviewDoc& d) { (void)d.vote("", 7); }},
      {"reason", "reason",
       [&](ReviewDoc& d) {
         (void)d.moderate({crdt::Visibility::kHidden, std::string(limits.maxReasonBytes + 1, 'r')},
                          stamp);
       }},
      {"reply", "text",
       [&](ReviewDoc& d) { (void)d.setReply({std::string(limits.maxBodyBytes + 1, 'r')}, stamp); }},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    ReviewDoc doc({kProduct, "mallory-" + c.name});
    c.make(doc);
    std::string bytes = doc.encode();
    REQUIRE(ReviewDoc::decode(bytes).ok());
    std::string why;
    auto counters = deliver(s, {bytes}, admit, &why);
    CHECK(counters.refused == 1);
    CHECK(counters.statesReceived == 0);
    CHECK_MESSAGE(why.rfind(c.field + ": ", 0) == 0, why);
    auto got = s.store->get(doc.key());
    REQUIRE_MESSAGE(got.ok(), got.error().toString());
    CHECK_FALSE(got->has_value());
    expectIntact(*s.store, expected);
  }
}
