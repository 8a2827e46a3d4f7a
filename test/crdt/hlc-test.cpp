#include <doctest/doctest.h>

#include "crdt/hlc.h"

using namespace chorus::crdt;

namespace {
struct FakeTime {
  uint64_t millis = 1'000'000;
  PhysicalClock clock() {
    return [this] { return millis; };
  }
};
}  // namespace

TEST_CASE("HLC packs 48-bit millis and a 16-bit counter in order") {
  Hlc a = Hlc::fromParts(5, 65535);
  Hlc b = Hlc::fromParts(6, 0);
  CHECK(a.millis() == 5);
  CHECK(a.logical() == 65535);
  CHECK(a < b);
  CHECK(b.toString() == "6.0");
}

TEST_CASE("now() follows physical time and bumps the counter when it stalls") {
  FakeTime t;
  HybridClock clock(1, t.clock());
  Stamp s1 = clock.now();
  CHECK(s1.hlc == Hlc::fromParts(1'000'000, 0));
  Stamp s2 = clock.now();
  CHECK(s2.hlc == Hlc::fromParts(1'000'000, 1));
  t.millis = 999'000;  // physical clock steps back: HLC does not
  Stamp s3 = clock.now();
  CHECK(s3 > s2);
  t.millis = 1'000'005;
  CHECK(clock.now().hlc == Hlc::fromParts(1'000'005, 0));
}

TEST_CASE("a logical counter overflow carries into the millis and keeps order") {
  FakeTime t;
  HybridClock clock(1, t.clock(), Hlc::fromParts(1'000'000, 65535));
  Stamp s = clock.now();
  CHECK(s.hlc == Hlc::fromParts(1'000'001, 0));
}

TEST_CASE("the clock is monotonic across restarts given its high-water mark") {
  FakeTime t;
  HybridClock before(7, t.clock());
  for (int i = 0; i < 10; ++i) (void)before.now();
  Stamp last = before.now();
  t.millis -= 5'000;  // the machine restarts with its clock set back
  HybridClock after(7, t.clock(), before.highWater());
  CHECK(after.now() > last);
}

TEST_CASE("observe() moves the clock past a remote stamp within the drift bound") {
  FakeTime t;
  HybridClock clock(1, t.clock());
  Hlc remote = Hlc::fromParts(t.millis + 30'000, 4);
  CHECK(clock.observe(remote).ok());
  CHECK(clock.now().hlc > remote);
  CHECK(clock.refusedCount() == 0);
}

TEST_CASE("a remote stamp more than max_drift ahead is refused, counted, not adopted") {
  FakeTime t;
  HybridClock clock(1, t.clock());
  Hlc remote = Hlc::fromParts(t.millis + 60'001, 0);
  chorus::Status s = clock.observe(remote);
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().code == chorus::ErrorCode::kClockDrift);
  CHECK(s.error().message.find("ahead of local time") != std::string::npos);
  CHECK(clock.refusedCount() == 1);
  CHECK(clock.now().hlc < remote);
  // Exactly max_drift ahead is still accepted.
  CHECK(clock.observe(Hlc::fromParts(t.millis + 60'000, 0)).ok());
}

TEST_CASE("the drift bound is configurable") {
  FakeTime t;
  HybridClock clock(1, t.clock(), {}, 1'000);
  CHECK_FALSE(clock.observe(Hlc::fromParts(t.millis + 1'001, 0)).ok());
  CHECK(clock.observe(Hlc::fromParts(t.millis + 1'000, 0)).ok());
}

TEST_CASE("stamps order by HLC, then by replica id") {
  Stamp a{Hlc::fromParts(10, 0), 9};
  Stamp b{Hlc::fromParts(10, 1), 1};
  Stamp c{Hlc::fromParts(10, 1), 2};
  CHECK(a < b);
  CHECK(b < c);
}
