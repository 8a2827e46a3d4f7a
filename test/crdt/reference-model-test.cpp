// The optimized delta-state CRDTs against independent reference models.
//
// The property tests check the join against itself (commutative,
// associative, idempotent); these check it against what it should compute.
// The models share no code with crdt/ beyond its public value types: an
// add-wins OR-Set is a plain grow-only set of (element, dot) adds and a set
// of removed dots, with no causal context and no compaction; a
// last-writer-wins register is the set of every write it has seen, whose
// value is the write with the greatest (HLC, replica id). Random histories
// over several replicas deliver deltas and whole states late, out of order
// and more than once; after every operation and every delivery, the replica
// that changed must show the same observable value in both.
//
// Seeded: a failure prints "seed := N"; replay with CHORUS_SEED=N.
// CHORUS_CASES scales the number of histories (the default 10,000 gives 500).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "crdt/or-set.h"
#include "crdt/review.h"
#include "support/seed.h"

using namespace chorus::crdt;

namespace model {

struct ModelDot {
  uint64_t replica = 0;
  uint64_t counter = 0;
  bool operator<(const ModelDot& o) const {
    return std::tie(replica, counter) < std::tie(o.replica, o.counter);
  }
};

// Add-wins OR-Set: every add ever seen, tagged with a unique dot, and every
// dot a remove (or a re-add, which replaces what its replica saw) observed.
// An element is present while one of its adds is not removed.
struct AwSet {
  std::set<std::pair<std::string, ModelDot>> adds;
  std::set<ModelDot> removed;

  std::set<ModelDot> liveDots(const std::string& e) const {
    std::set<ModelDot> out;
    for (const auto& [element, dot] : adds) {
      if (element == e && removed.count(dot) == 0) out.insert(dot);
    }
    return out;
  }
  std::set<std::string> value() const {
    std::set<std::string> out;
    for (const auto& [element, dot] : adds) {
      if (removed.count(dot) == 0) out.insert(element);
    }
    return out;
  }
  void join(const AwSet& o) {
    adds.insert(o.adds.begin(), o.adds.end());
    removed.insert(o.removed.begin(), o.removed.end());
  }
  // Operations at a replica return the delta: what they added to the sets.
  AwSet add(const std::string& e, ModelDot dot) {
    AwSet delta;
    delta.removed = liveDots(e);
    delta.adds.insert({e, dot});
    join(delta);
    return delta;
  }
  AwSet remove(const std::string& e) {
    AwSet delta;
    delta.removed = liveDots(e);
    join(delta);
    return delta;
  }
};

// Last-writer-wins register: every write seen; the value is the write with
// the greatest (hlc, replica). Histories never give one stamp two values.
template <class V>
struct Lww {
  std::map<std::pair<uint64_t, uint64_t>, V> writes;  // (hlc bits, replica) -> value

  std::optional<std::pair<std::pair<uint64_t, uint64_t>, V>> top() const {
    if (writes.empty()) return std::nullopt;
    return *writes.rbegin();
  }
  void join(const Lww& o) {
    for (const auto& [stamp, value] : o.writes) {
      auto [it, inserted] = writes.emplace(stamp, value);
      REQUIRE_MESSAGE((inserted || it->second == value), "a history gave one stamp two values");
    }
  }
  Lww assign(uint64_t hlc, uint64_t replica, V value) {
    Lww delta;
    delta.writes.emplace(std::make_pair(hlc, replica), std::move(value));
    join(delta);
    return delta;
  }
};

struct Review {
  Lww<Content> content;
  AwSet tags, helpful;
  Lww<Moderation> moderation;
  Lww<Reply> reply;
  void join(const Review& o) {
    content.join(o.content);
    tags.join(o.tags);
    helpful.join(o.helpful);
    moderation.join(o.moderation);
    reply.join(o.reply);
  }
};

}  // namespace model

namespace {

std::set<std::string> valueOf(const OrSet& s) {
  auto elements = s.elements();
  return {elements.begin(), elements.end()};
}

// An optimized register must show the model's top write, stamp and value.
template <class V>
void sameRegister(const LwwRegister<V>& opt, const model::Lww<V>& ref) {
  auto top = ref.top();
  if (!top) {
    REQUIRE_FALSE(opt.isSet());
    return;
  }
  REQUIRE(opt.isSet());
  REQUIRE(opt.stamp().hlc.bits == top->first.first);
  REQUIRE(opt.stamp().replica == top->first.second);
  REQUIRE(opt.value() == top->second);
}

void sameReview(const ReviewDoc& opt, const model::Review& ref) {
  sameRegister(opt.content(), ref.content);
  auto content = ref.content.top();
  REQUIRE(opt.exists() == (content && !content->second.deleted));
  REQUIRE(valueOf(opt.tags()) == ref.tags.value());
  REQUIRE(valueOf(opt.helpful()) == ref.helpful.value());
  REQUIRE(opt.helpfulCount() == ref.helpful.value().size());
  sameRegister(opt.moderation(), ref.moderation);
  sameRegister(opt.reply(), ref.reply);
}

// Replica ids in a random order, so index order and id order disagree.
std::vector<ReplicaId> replicaIds(std::mt19937_64& rng, int n) {
  std::vector<ReplicaId> ids{3, 11, 7, 42, 5};
  std::shuffle(ids.begin(), ids.end(), rng);
  ids.resize(static_cast<size_t>(n));
  return ids;
}

// A network of replicas, each holding an optimized state `Opt` and a model
// state `Ref`; messages carry both forms of the same delta or state.
template <class Opt, class Ref>
struct Network {
  struct Message {
    int to;
    Opt opt;
    Ref ref;
  };
  std::vector<Opt> opt;
  std::vector<Ref> ref;
  std::vector<Message> inFlight;

  explicit Network(int replicas, const Opt& empty) : opt(replicas, empty), ref(replicas) {}
  int size() const { return static_cast<int>(opt.size()); }

  // Sends a delta made at `from` to every other replica.
  void broadcast(int from, const Opt& o, const Ref& r) {
    for (int to = 0; to < size(); ++to) {
      if (to != from) inFlight.push_back({to, o, r});
    }
  }
  // Delivers (or duplicates, or shuffles in a whole state) at random;
  // `deliver` joins a message into its replica and checks it.
  template <class Deliver>
  void step(std::mt19937_64& rng, Deliver deliver) {
    if (rng() % 6 == 0) {  // anti-entropy: a whole state
      int from = static_cast<int>(rng() % size());
      inFlight.push_back({static_cast<int>(rng() % size()), opt[from], ref[from]});
    }
    int deliveries = static_cast<int>(rng() % 4);
    for (int d = 0; d < deliveries && !inFlight.empty(); ++d) {
      size_t pick = rng() % inFlight.size();
      Message m = inFlight[pick];
      deliver(m);
      if (rng() % 5 != 0) inFlight.erase(inFlight.begin() + static_cast<long>(pick));
      // else: left in flight, delivered again later (a duplicate)
    }
  }
  template <class Deliver>
  void drain(std::mt19937_64& rng, Deliver deliver) {
    while (!inFlight.empty()) {
      size_t pick = rng() % inFlight.size();
      Message m = inFlight[pick];
      inFlight.erase(inFlight.begin() + static_cast<long>(pick));
      deliver(m);
    }
  }
};

int histories() { return std::max(1, chorus::test::testCases(10'000) / 20); }

}  // namespace

TEST_CASE("the add-wins OR-Set matches a plain reference model on random histories") {
  uint64_t seed = chorus::test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  static const char* kElements[] = {"a", "b", "c", "d"};
  for (int run = 0, runs = histories(); run < runs; ++run) {
    CAPTURE(run);
    int replicas = 2 + static_cast<int>(rng() % 3);
    std::vector<ReplicaId> ids = replicaIds(rng, replicas);
    std::vector<uint64_t> counters(static_cast<size_t>(replicas), 0);
    Network<OrSet, model::AwSet> net(replicas, OrSet());
    auto deliver = [&](const auto& m) {
      net.opt[m.to].join(m.opt);
      net.ref[m.to].join(m.ref);
      REQUIRE(valueOf(net.opt[m.to]) == net.ref[m.to].value());
    };
    int operations = 10 + static_cast<int>(rng() % 40);
    for (int i = 0; i < operations; ++i) {
      int r = static_cast<int>(rng() % replicas);
      std::string e = kElements[rng() % 4];
      if (rng() % 3 != 0) {
        OrSet delta = net.opt[r].add(e, ids[r]);
        model::AwSet refDelta = net.ref[r].add(e, {ids[r], ++counters[r]});
        net.broadcast(r, delta, refDelta);
      } else {
        OrSet delta = net.opt[r].remove(e);
        model::AwSet refDelta = net.ref[r].remove(e);
        net.broadcast(r, delta, refDelta);
      }
      REQUIRE(valueOf(net.opt[r]) == net.ref[r].value());
      net.step(rng, deliver);
    }
    net.drain(rng, deliver);
    for (int r = 0; r < replicas; ++r) {
      CAPTURE(r);
      REQUIRE(valueOf(net.opt[r]) == net.ref[r].value());
      REQUIRE(net.opt[r] == net.opt[0]);
    }
  }
}

TEST_CASE("the review document's merge matches a reference model of all its parts") {
  uint64_t seed = chorus::test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  const ReviewKey key{"p-1", "alice"};
  static const char* kTags[] = {"fit", "size", "value"};
  static const char* kVoters[] = {"v1", "v2", "v3", "v4"};
  for (int run = 0, runs = histories(); run < runs; ++run) {
    CAPTURE(run);
    int replicas = 2 + static_cast<int>(rng() % 3);
    std::vector<ReplicaId> ids = replicaIds(rng, replicas);
    std::vector<uint64_t> tagCounters(static_cast<size_t>(replicas), 0);
    std::vector<uint64_t> voteCounters(static_cast<size_t>(replicas), 0);
    // Stamps: a shared time that often stands still, so replicas write at
    // equal HLCs; each replica's own stamps strictly increase.
    uint64_t time = 1'700'000'000'000;
    std::vector<uint64_t> last(static_cast<size_t>(replicas), 0);
    auto stampAt = [&](int r) {
      time += rng() % 2;
      uint64_t millis = std::max(time, last[r] + 1);
      last[r] = millis;
      return Stamp{Hlc::fromParts(millis, 0), ids[r]};
    };
    Network<ReviewDoc, model::Review> net(replicas, ReviewDoc(key));
    auto deliver = [&](const auto& m) {
      if (rng() % 3 == 0) {  // as a peer sends it: canonical bytes
        auto decoded = ReviewDoc::decode(m.opt.encode());
        REQUIRE_MESSAGE(decoded.ok(), decoded.error().toString());
        net.opt[m.to].join(*decoded);
      } else {
        net.opt[m.to].join(m.opt);
      }
      net.ref[m.to].join(m.ref);
      sameReview(net.opt[m.to], net.ref[m.to]);
    };
    int operations = 10 + static_cast<int>(rng() % 40);
    for (int i = 0; i < operations; ++i) {
      int r = static_cast<int>(rng() % replicas);
      ReviewDoc& doc = net.opt[r];
      model::Review& ref = net.ref[r];
      ReviewDoc delta(key);
      model::Review refDelta;
      std::string word = std::to_string(rng() % 3);  // few values: equal ones too
      switch (rng() % 9) {
        case 0:
        case 1: {
          Stamp s = stampAt(r);
          auto rating = static_cast<uint8_t>(1 + rng() % 5);
          delta = doc.write(rating, "t" + word, "b" + word, s);
          refDelta.content = ref.content.assign(s.hlc.bits, s.replica,
                                                Content{false, rating, "t" + word, "b" + word});
          break;
        }
        case 2: {
          Stamp s = stampAt(r);
          delta = doc.erase(s);
          refDelta.content = ref.content.assign(s.hlc.bits, s.replica, Content{true, 0, "", ""});
          break;
        }
        case 3: {
          std::string tag = kTags[rng() % 3];
          delta = doc.tag(tag, ids[r]);
          refDelta.tags = ref.tags.add(tag, {ids[r], ++tagCounters[r]});
          break;
        }
        case 4: {
          std::string tag = kTags[rng() % 3];
          delta = doc.untag(tag);
          refDelta.tags = ref.tags.remove(tag);
          break;
        }
        case 5: {
          std::string voter = kVoters[rng() % 4];
          delta = doc.vote(voter, ids[r]);
          refDelta.helpful = ref.helpful.add(voter, {ids[r], ++voteCounters[r]});
          break;
        }
        case 6: {
          std::string voter = kVoters[rng() % 4];
          delta = doc.unvote(voter);
          refDelta.helpful = ref.helpful.remove(voter);
          break;
        }
        case 7: {
          Stamp s = stampAt(r);
          Moderation m{static_cast<Visibility>(rng() % 3), "r" + word};
          delta = doc.moderate(m, s);
          refDelta.moderation = ref.moderation.assign(s.hlc.bits, s.replica, m);
          break;
        }
        default: {
          Stamp s = stampAt(r);
          delta = doc.setReply(Reply{"thanks " + word}, s);
          refDelta.reply = ref.reply.assign(s.hlc.bits, s.replica, Reply{"thanks " + word});
          break;
        }
      }
      sameReview(net.opt[r], net.ref[r]);
      net.broadcast(r, delta, refDelta);
      net.step(rng, deliver);
    }
    net.drain(rng, deliver);
    for (int r = 0; r < replicas; ++r) {
      CAPTURE(r);
      sameReview(net.opt[r], net.ref[r]);
      REQUIRE(net.opt[r].encode() == net.opt[0].encode());
    }
  }
}
