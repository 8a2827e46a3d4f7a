// Writes the seed corpora of the fuzz targets: real encoded states, real
// anti-entropy messages recorded from a session between two stores, real
// gossip frames and well-formed (and a few refused) API requests.
//
//   ninja -C build test/fuzz/make-corpus && build/test/fuzz/make-corpus test/fuzz/corpus
//
// Deterministic: every stamp is fixed, so rerunning gives the same files.
// Existing files of the same name are overwritten; others are left alone.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <vector>

#include "../crdt/out-of-range.h"
#include "crdt/review.h"
#include "fuzz-support.h"
#include "gossip/frame.h"
#include "gossip/reconcile.capnp.h"
#include "gossip/reconciler.h"

using namespace chorus;
using crdt::Hlc;
using crdt::ReviewDoc;
using crdt::Stamp;
namespace fs = std::filesystem;

namespace {

fs::path root;
size_t files = 0, totalBytes = 0;

void put(const std::string& target, const std::string& name, const std::string& bytes) {
  fs::create_directories(root / target);
  std::ofstream out(root / target / name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  FUZZ_CHECK(out.good(), "writing " + (root / target / name).string());
  ++files;
  totalBytes += bytes.size();
}

Stamp at(uint64_t millis, crdt::ReplicaId replica) {
  return Stamp{Hlc::fromParts(millis, 0), replica};
}

// Documents that cover each part of the encoding.
std::vector<std::pair<std::string, ReviewDoc>> documents() {
  std::vector<std::pair<std::string, ReviewDoc>> out;
  ReviewDoc plain({"kettle-1", "ann"});
  (void)plain.write(5, "Boils fast", "Quiet too", at(1000, 1));
  out.emplace_back("written", plain);

  ReviewDoc rich = plain;
  (void)rich.tag("quiet", 1);
  (void)rich.tag("fast", 2);
  (void)rich.vote("bob", 2);
  (void)rich.vote("cy", 3);
  (void)rich.moderate({crdt::Visibility::kFlagged, "check the claims"}, at(1100, 2));
  (void)rich.setReply({"Thanks, Ann!"}, at(1200, 3));
  out.emplace_back("tags-votes-moderation-reply", rich);

  ReviewDoc removed = rich;  // removes leave dots in the causal context only
  (void)removed.untag("quiet");
  (void)removed.unvote("bob");
  out.emplace_back("untagged-unvoted", removed);

  ReviewDoc erased = rich;
  (void)erased.erase(at(1300, 1));
  out.emplace_back("tombstone", erased);

  // Dots from two replicas not yet contiguous: a causal context with a cloud.
  ReviewDoc a({"kettle-1", "dan"}), b({"kettle-1", "dan"});
  (void)a.tag("x", 4);
  (void)a.tag("y", 4);
  (void)b.tag("z", 5);
  ReviewDoc delta = a.tag("w", 4);
  b.join(delta);
  out.emplace_back("causal-cloud", b);

  ReviewDoc utf8({"pan-2", "émile"});
  (void)utf8.write(3, "Très bien — 👍", std::string(300, 'x') + " ünïcödé", at(2000, 6));
  out.emplace_back("utf8-long-body", utf8);

  ReviewDoc tagsOnly({"pan-2", "fay"});
  (void)tagsOnly.tag("only-tags", 7);
  out.emplace_back("delta-tag-only", tagsOnly);

  ReviewDoc hidden({"pan-2", "gus"});
  (void)hidden.moderate({crdt::Visibility::kHidden, ""}, at(3000, 8));
  out.emplace_back("delta-moderation-only", hidden);
  return out;
}

struct TempStore {
  std::string dir;
  std::unique_ptr<storage::Store> store;
  uint64_t merged = 0;
  std::mutex mu;
  std::condition_variable cv;
  TempStore() {
    std::string pattern = (fs::temp_directory_path() / "chorus-make-corpus-XXXXXX").string();
    FUZZ_CHECK(::mkdtemp(pattern.data()) != nullptr, "mkdtemp");
    dir = pattern;
    storage::Options options;
    options.dir = dir;
    options.unsafeNoSync = true;
    auto opened = storage::Store::open(options);
    FUZZ_CHECK(opened.ok(), opened.ok() ? "" : opened.error().toString());
    store = std::move(opened).value();
  }
  ~TempStore() {
    store.reset();
    fs::remove_all(dir);
  }
  storage::Done onMerged() {
    return [this](Result<storage::Applied>) {
      std::lock_guard lock(mu);
      ++merged;
      cv.notify_all();
    };
  }
  void waitMerged(uint64_t n) {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return merged >= n; });
  }
};

// A whole anti-entropy session between a store like the fuzz store and one
// that differs from it both ways; returns every message, in order.
std::vector<std::string> recordSession() {
  TempStore like, other;
  fuzz::seedStore(*like.store);
  fuzz::seedStore(*other.store);
  // `other`: a few new reviews, and a few of the common ones edited later.
  for (int i = 0; i < 3; ++i) {
    ReviewDoc doc({"sku-new", "user-" + std::to_string(i)});
    (void)doc.write(2, "new", "only on the other side", at(9000 + i, 3));
    FUZZ_CHECK(other.store->mergeSync(doc).ok(), "merge");
  }
  for (int i : {5, 17}) {
    ReviewDoc doc({"sku-" + std::to_string(i % 8), "user-" + std::to_string(i)});
    (void)doc.write(1, "edited", "edited on the other side", at(9100 + i, 3));
    FUZZ_CHECK(other.store->mergeSync(doc).ok(), "merge");
  }
  ReviewDoc mine({"sku-mine", "user-0"});  // and one only the fuzz-like store has
  (void)mine.write(4, "mine", "only here", at(9200, 7));
  FUZZ_CHECK(like.store->mergeSync(mine).ok(), "merge");

  gossip::Reconciler initiator(*other.store, other.onMerged());
  gossip::Reconciler responder(*like.store, like.onMerged());
  std::vector<std::string> messages;
  auto first = initiator.start();
  FUZZ_CHECK(first.ok(), "start");
  std::optional<gossip::Outgoing> message = first.value();
  for (bool toResponder = true; message; toResponder = !toResponder) {
    messages.push_back(message->bytes);
    auto reply = (toResponder ? responder : initiator).handle(message->bytes);
    FUZZ_CHECK(reply.ok(), reply.ok() ? "" : reply.error().toString());
    message = reply.value();
  }
  other.waitMerged(initiator.counters().statesReceived);
  like.waitMerged(responder.counters().statesReceived);
  return messages;
}

std::string reconcileMessage(const std::function<void(gossip::wire::Reconcile::Builder)>& fill) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<gossip::wire::Reconcile>();
  root.setVersion(gossip::wire::RECONCILE_VERSION);
  fill(root);
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

std::string frameWith(const std::function<void(gossip::wire::Frame::Builder)>& fill,
                      const std::string& from = "n2") {
  capnp::MallocMessageBuilder message;
  fill(gossip::newFrame(message, from));
  // The frame target's input: each frame body after its 4-byte length.
  std::string body = gossip::encodeFrame(message);
  std::string out;
  fuzz::putU32(out, uint32_t(body.size()));
  return out + body;
}

void setMember(gossip::wire::Member::Builder m, const std::string& id, int port) {
  m.setNodeId(id);
  m.setGossipAddress("127.0.0.1:" + std::to_string(port));
  m.setRpcAddress("127.0.0.1:" + std::to_string(port - 10));
  m.setRegion("eu");
  m.setIncarnation(1764000000);
}

capnp::Data::Reader asData(const std::string& s) {
  return capnp::Data::Reader(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

std::string request(uint8_t which, bool smallLimits, std::vector<std::string> fields,
                    std::optional<uint32_t> ratingAfterKey = std::nullopt) {
  std::string out;
  out.push_back(static_cast<char>(which));
  out.push_back(smallLimits ? 1 : 0);
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i == 2 && ratingAfterKey) fuzz::putU32(out, *ratingAfterKey);
    fuzz::putField(out, fields[i]);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR   (e.g. test/fuzz/corpus)\n", argv[0]);
    return 1;
  }
  root = argv[1];

  // review: canonical states and deltas.
  auto docs = documents();
  for (const auto& [name, doc] : docs) put("review", name, doc.encode());
  // Canonical states with one field outside its range (a live rating 0 or
  // 6, a tombstone with a rating, visibility 3, ...), which decode refuses.
  auto outOfRange = test::outOfRangeStates({"kettle-1", "mallory"}, 1'700'000'000'000);
  for (const auto& bad : outOfRange) put("review", "out-of-range-" + bad.name, bad.bytes);

  // reconcile: each message of a real session, plus the short ones.
  auto session = recordSession();
  const char* kinds[] = {"1-root",       "2-children-0", "3-children-1",       "4-children-2",
                         "5-children-3", "6-leaves",     "7-states-and-wants", "8-states"};
  for (size_t i = 0; i < session.size(); ++i)
    put("reconcile", i < 8 ? kinds[i] : "message-" + std::to_string(i + 1), session[i]);
  put("reconcile", "in-sync", reconcileMessage([](auto r) { r.setInSync(); }));
  put("reconcile", "root-zero", reconcileMessage([](auto r) { r.setRoot(0); }));
  // The same from a peer, each beside a valid state, for a product the fuzz
  // store holds (its listing must survive the merge).
  ReviewDoc valid({"sku-1", "newcomer"});
  (void)valid.write(4, "valid", "beside a bad one", at(9300, 3));
  for (const auto& bad : test::outOfRangeStates({"sku-1", "mallory"}, 9400)) {
    put("reconcile", "states-out-of-range-" + bad.name, reconcileMessage([&](auto r) {
          auto states = r.initStates(2);
          states.set(0, asData(bad.bytes));
          states.set(1, asData(valid.encode()));
        }));
  }
  put("reconcile", "wants-only", reconcileMessage([](auto r) {
        auto group = r.initStatesAndWants();
        group.initStates(0);
        auto wants = group.initWants(2);
        wants.set(0, 0x0123456789abcdefull);
        wants.set(1, 0xfedcba9876543210ull);
      }));

  // frame: scripts of real frame bodies (sealed and opened by the target).
  std::string hello = frameWith([](auto f) {
    auto h = f.initHello();
    setMember(h.initMember(), "n2", 7411);
    h.setActive(true);
  });
  put("frame", "hello", hello);
  // Gossip: piggybacked membership updates only (one suspect, one left).
  std::string gossip = frameWith([](auto f) {
    auto list = f.initMembers(3);
    setMember(list[0], "n2", 7411);
    setMember(list[1], "n1", 7410);
    list[1].setState(gossip::wire::MemberState::SUSPECT);
    setMember(list[2], "n3", 7412);
    list[2].setState(gossip::wire::MemberState::LEFT);
    f.setGossip();
  });
  put("frame", "gossip", gossip);
  put("frame", "ping", frameWith([](auto f) { f.initPing().setSeq(7); }));
  put("frame", "ack", frameWith([](auto f) { f.initAck().setSeq(7); }, "n1"));
  put("frame", "ping-req", frameWith([](auto f) {
        auto p = f.initPingReq();
        p.setSeq(8);
        p.setTarget("n3");
        p.setTargetAddress("127.0.0.1:7412");
      }));
  put("frame", "push-pull", frameWith([](auto f) {
        auto list = f.initPushPull(2);
        setMember(list[0], "n2", 7411);
        setMember(list[1], "n1", 7410);
      }));
  std::string deltas = frameWith([&](auto f) {
    auto list = f.initBroadcast(3);
    for (unsigned i = 0; i < 3; ++i) {
      list[i].setId(0x1000 + i);
      list[i].setOrigin("n2");
      list[i].setData(asData(docs[i * 2].second.encode()));
    }
  });
  put("frame", "broadcast", deltas);
  put("frame", "ihave", frameWith([](auto f) {
        auto list = f.initIhave(2);
        list.set(0, 0x1000);
        list.set(1, 0x2000);
      }));
  put("frame", "prune", frameWith([](auto f) { f.initPrune(1).set(0, "n2"); }));
  std::string heartbeat = gossip;
  for (size_t i : {size_t{0}, size_t{1}, size_t{5}, size_t{6}}) {
    if (i >= session.size()) continue;
    put("frame", std::string("reconcile-") + (i < 8 ? kinds[i] : "x"),
        frameWith([&](auto f) { f.setReconcile(asData(session[i])); }));
  }
  put("frame", "stream-hello-gossip-broadcast", hello + heartbeat + deltas);
  put("frame", "stream-truncated", (hello + heartbeat).substr(0, hello.size() + 20));

  // validate: [which, limits, fields...], see fuzz-validate.cpp.
  put("validate", "put", request(0, false, {"kettle-1", "ann", "Boils fast", "Quiet too"}, 5));
  put("validate", "put-utf8", request(0, false, {"kettle-1", "ann", "Très bien", "👍 ünï"}, 4));
  put("validate", "put-bad-rating", request(0, false, {"kettle-1", "ann", "t", "b"}, 6));
  put("validate", "put-small-limits",
      request(0, true, {"kettle-1", "ann", "too long a title", "b"}, 3));
  put("validate", "put-bad-utf8", request(0, false, {"kettle-1", "ann", "ok", "\xed\xa0\x80"}, 1));
  put("validate", "vote", request(1, false, {"kettle-1", "ann", "bob"}));
  put("validate", "tag-bad-id", request(2, false, {"kettle-1", "ann", "has space"}));
  put("validate", "moderate", request(3, false, {"kettle-1", "ann", "spam link"}));
  put("validate", "reply", request(4, false, {"kettle-1", "ann", "Thanks!"}));
  put("validate", "partition", request(5, false, {"n1", "", "n2", "n3"}));
  put("validate", "duration", request(6, false, {"", "", "-2.5s"}));
  put("validate", "duration-min", request(6, false, {"", "", "5min"}));
  put("validate", "utf8", request(7, false, {"", "", "\xf0\x9f\x91\x8d \xc3\xa9"}));

  std::printf("wrote %zu files (%zu bytes) under %s\n", files, totalBytes, root.c_str());
  return 0;
}
