#include <doctest/doctest.h>

#include "crdt/or-set.h"

using namespace chorus::crdt;

TEST_CASE("causal context folds contiguous dots into the version vector") {
  CausalContext c;
  c.insert({1, 2});
  CHECK(c.cloud().size() == 1);
  CHECK_FALSE(c.contains({1, 1}));
  c.insert({1, 1});
  CHECK(c.cloud().empty());
  CHECK(c.versionVector().at(1) == 2);
  CHECK(c.contains({1, 1}));
  CHECK(c.nextDot(1).counter == 3);
  CHECK(c.nextDot(2).counter == 1);
}

TEST_CASE("add-wins: a concurrent add survives a remove that did not see it") {
  OrSet a, b;
  OrSet d1 = a.add("fit", 1);
  b.join(d1);
  OrSet remove = a.remove("fit");  // replica 1 removes what it saw
  OrSet readd = b.add("fit", 2);   // concurrently replica 2 adds again
  a.join(readd);
  b.join(remove);
  CHECK(a.contains("fit"));
  CHECK(b.contains("fit"));
  CHECK(a == b);
}

TEST_CASE("a remove of an observed add removes it everywhere, without a tombstone") {
  OrSet a, b;
  b.join(a.add("x", 1));
  b.join(a.remove("x"));
  CHECK_FALSE(b.contains("x"));
  CHECK(b.entries().empty());
  CHECK(b.context().versionVector().at(1) == 1);
}

TEST_CASE("re-adding an element keeps one dot and one element") {
  OrSet s;
  (void)s.add("v", 1);
  (void)s.add("v", 1);
  (void)s.add("v", 1);
  CHECK(s.size() == 1);
  CHECK(s.entries().at("v").size() == 1);
}

TEST_CASE("a late add delta after its remove does not resurrect the element") {
  OrSet origin, other;
  OrSet add = origin.add("x", 1);
  OrSet remove = origin.remove("x");
  other.join(remove);  // delivered out of order
  other.join(add);
  CHECK_FALSE(other.contains("x"));
  CHECK(other == origin);
}

TEST_CASE("fromParts rejects dots outside the context and shared dots") {
  CausalContext ctx;
  REQUIRE(CausalContext::fromParts({{1, 2}}, {}, ctx));
  OrSet out;
  CHECK(OrSet::fromParts({{"a", {{1, 1}}}}, ctx, out));
  CHECK_FALSE(OrSet::fromParts({{"a", {{1, 3}}}}, ctx, out));
  CHECK_FALSE(OrSet::fromParts({{"a", {{1, 1}}}, {"b", {{1, 1}}}}, ctx, out));
  CHECK_FALSE(OrSet::fromParts({{"a", {}}}, ctx, out));
  CausalContext bad;
  CHECK_FALSE(CausalContext::fromParts({{1, 2}}, {{1, 3}}, bad));  // not compacted
  CHECK_FALSE(CausalContext::fromParts({{1, 0}}, {}, bad));
}

// Compaction, by what it must preserve: a dot folds into the version vector
// only when contiguous with it, so a later dot arriving first never hides an
// earlier one.
TEST_CASE("one replica adds x then y: delivered y before x, both survive") {
  OrSet origin;
  OrSet addX = origin.add("x", 1);
  OrSet addY = origin.add("y", 1);
  OrSet addZ = origin.add("z", 1);

  OrSet other;
  other.join(addZ);
  CHECK(other.contains("z"));
  other.join(addY);
  CHECK(other.contains("y"));
  CHECK(other.contains("z"));
  other.join(addX);
  CHECK(other.contains("x"));
  CHECK(other.contains("y"));
  CHECK(other.contains("z"));
  CHECK(other == origin);

  // And the same through a second replica that merges states, not deltas.
  OrSet third, fourth;
  third.join(addY);
  fourth.join(third);
  fourth.join(addX);
  CHECK(fourth.contains("x"));
  CHECK(fourth.contains("y"));
}

TEST_CASE("a remove delivered before a later add of another element keeps that add") {
  OrSet origin;
  OrSet addX = origin.add("x", 1);
  OrSet addY = origin.add("y", 1);
  OrSet removeX = origin.remove("x");
  OrSet addW = origin.add("w", 1);

  OrSet other;
  other.join(addW);     // dot 3 before dots 1 and 2
  other.join(removeX);  // covers dot 1 only
  other.join(addY);     // dot 2
  other.join(addX);     // dot 1: removed, stays out
  CHECK_FALSE(other.contains("x"));
  CHECK(other.contains("y"));
  CHECK(other.contains("w"));
  CHECK(other == origin);
}
