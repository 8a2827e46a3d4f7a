// Lattice laws for every CRDT type: join is commutative, associative and
// idempotent, and joining an operation's delta into the state before it gives
// the state after it. Seeded: a failure prints "seed := N"; replay with
// CHORUS_SEED=N. CHORUS_CASES overrides the number of cases per law.
#include <doctest/doctest.h>

#include "crdt/history.h"
#include "crdt/internal/reference-encoding.h"
#include "support/seed.h"

using chorus::crdt::ReviewDoc;
using chorus::test::History;
using chorus::test::joined;

namespace {

constexpr int kDefaultCases = 10'000;

// The parts of a document, each a CRDT of its own, with a generic join.
template <class T>
T join2(T a, const T& b) {
  a.join(b);
  return a;
}

struct Triple {
  ReviewDoc a, b, c;
};

// Three states of one random execution with 2-4 replicas.
Triple randomTriple(History& h) {
  int steps = 1 + static_cast<int>(h.rng()() % 8);
  ReviewDoc a = h.randomState(steps);
  ReviewDoc b = h.randomState(steps);
  ReviewDoc c = h.randomState(steps);
  return {a, b, c};
}

// Runs `law` on `cases` triples, a fresh history every 16 cases.
template <class Law>
void forTriples(Law law) {
  uint64_t seed = chorus::test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 seeds(seed);
  int cases = chorus::test::testCases(kDefaultCases);
  for (int i = 0; i < cases;) {
    History h(seeds(), 2 + static_cast<int>(seeds() % 3));
    for (int j = 0; j < 16 && i < cases; ++j, ++i) {
      Triple t = randomTriple(h);
      law(t);
    }
  }
}

// Each law is checked on the whole document and on each component type.
template <class Check>
void eachType(const Triple& t, Check check) {
  check(t.a, t.b, t.c);
  check(t.a.content(), t.b.content(), t.c.content());
  check(t.a.moderation(), t.b.moderation(), t.c.moderation());
  check(t.a.reply(), t.b.reply(), t.c.reply());
  check(t.a.tags(), t.b.tags(), t.c.tags());
  check(t.a.helpful(), t.b.helpful(), t.c.helpful());
}

}  // namespace

TEST_CASE("join is commutative for every type") {
  forTriples([](const Triple& t) {
    eachType(
        t, [](const auto& a, const auto& b, const auto&) { REQUIRE(join2(a, b) == join2(b, a)); });
    REQUIRE(joined(t.a, t.b).encode() == joined(t.b, t.a).encode());
  });
}

TEST_CASE("join is associative for every type") {
  forTriples([](const Triple& t) {
    eachType(t, [](const auto& a, const auto& b, const auto& c) {
      REQUIRE(join2(join2(a, b), c) == join2(a, join2(b, c)));
    });
  });
}

TEST_CASE("join is idempotent for every type") {
  forTriples([](const Triple& t) {
    eachType(t, [](const auto& a, const auto& b, const auto&) {
      REQUIRE(join2(a, a) == a);
      auto ab = join2(a, b);
      REQUIRE(join2(ab, b) == ab);  // re-delivery changes nothing
    });
  });
}

TEST_CASE("a delta joined into the state before equals the state after") {
  uint64_t seed = chorus::test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 seeds(seed);
  int cases = chorus::test::testCases(kDefaultCases);
  for (int i = 0; i < cases;) {
    History h(seeds(), 2 + static_cast<int>(seeds() % 3));
    for (int j = 0; j < 32 && i < cases; ++j, ++i) {
      History::Step step = h.operate();
      REQUIRE(joined(step.before, step.delta) == step.after);
      REQUIRE(joined(step.before, step.delta).encode() == step.after.encode());
      // A delta is idempotent on the state after, too.
      REQUIRE(joined(step.after, step.delta) == step.after);
      if (h.rng()() % 4 == 0) {  // spread states so later steps see merges
        h.deliver(static_cast<int>(h.rng()() % h.replicas()), step.after);
      }
    }
  }
}

TEST_CASE("encode/decode round-trips every reachable state") {
  uint64_t seed = chorus::test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 seeds(seed);
  int cases = chorus::test::testCases(kDefaultCases);
  for (int i = 0; i < cases; i += 16) {
    History h(seeds(), 3);
    for (int j = 0; j < 16; ++j) {
      ReviewDoc s = h.randomState(2);
      std::string bytes = s.encode();
      auto decoded = ReviewDoc::decode(bytes);
      REQUIRE_MESSAGE(decoded.ok(), (decoded.ok() ? "" : decoded.error().toString()));
      REQUIRE(decoded.value() == s);
      REQUIRE(decoded.value().encode() == bytes);
    }
  }
}

TEST_CASE("encode writes exactly what capnp::canonicalize makes, for states and deltas") {
  using chorus::crdt::internal::encodeWithCapnpCanonicalize;
  uint64_t seed = chorus::test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 seeds(seed);
  int cases = chorus::test::testCases(kDefaultCases);
  // Corner cases first: nothing written, empty ids, a bare delta.
  for (const ReviewDoc& d : {ReviewDoc(), ReviewDoc({"p", "a"}), ReviewDoc({"", ""}),
                             ReviewDoc({std::string(7, 'x'), std::string(8, '\0')})}) {
    REQUIRE(d.encode() == encodeWithCapnpCanonicalize(d));
  }
  for (int i = 0; i < cases; i += 16) {
    History h(seeds(), 1 + static_cast<int>(seeds() % 3));
    for (int j = 0; j < 16; ++j) {
      History::Step step = h.operate();
      for (const ReviewDoc* d : {&step.before, &step.delta, &step.after}) {
        REQUIRE(d->encode() == encodeWithCapnpCanonicalize(*d));
      }
      ReviewDoc s = h.randomState(2);
      REQUIRE(s.encode() == encodeWithCapnpCanonicalize(s));
    }
  }
}
