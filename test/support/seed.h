// Seeds for randomized tests.
//
// Every randomized test takes its seed from testSeed() and CAPTUREs it, so a
// failure prints "seed := N"; `CHORUS_SEED=N <test program>` replays it.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>

namespace chorus::test {

inline uint64_t testSeed() {
  if (const char* env = std::getenv("CHORUS_SEED"); env != nullptr && *env != '\0') {
    return std::strtoull(env, nullptr, 10);
  }
  return std::random_device{}() ^ (uint64_t{std::random_device{}()} << 32);
}

// How many cases a property runs: CHORUS_CASES overrides the default.
inline int testCases(int defaultCases) {
  if (const char* env = std::getenv("CHORUS_CASES"); env != nullptr && *env != '\0') {
    return std::atoi(env);
  }
  return defaultCases;
}

}  // namespace chorus::test
