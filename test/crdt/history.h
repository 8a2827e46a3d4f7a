// Random but valid CRDT histories for property tests.
//
// Laws only hold among states of one execution (a dot or a stamp names one
// event), so instead of inventing states independently, a History runs a
// random sequence of operations and merges on a few replicas of one review,
// and records every state and delta it passes through.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "crdt/hlc.h"
#include "crdt/review.h"

namespace chorus::test {

class History {
 public:
  // What one operation did: the state before, the delta, the state after.
  struct Step {
    crdt::ReviewDoc before;
    crdt::ReviewDoc delta;
    crdt::ReviewDoc after;
  };

  History(uint64_t seed, int replicas) : rng_(seed), physicalMillis_(1'700'000'000'000) {
    for (int i = 0; i < replicas; ++i) {
      docs_.emplace_back(crdt::ReviewKey{"p-1", "alice"});
      // Each replica's physical clock reads the shared time plus a skew of
      // up to +-50 ms, so HLC order and real order disagree at times.
      int64_t skew = static_cast<int64_t>(rng_() % 101) - 50;
      clocks_.emplace_back(static_cast<crdt::ReplicaId>(i + 1),
                           [this, skew] { return physicalMillis_ + skew; });
    }
  }
  History(const History&) = delete;
  History& operator=(const History&) = delete;

  int replicas() const { return static_cast<int>(docs_.size()); }
  const crdt::ReviewDoc& state(int replica) const { return docs_[replica]; }
  std::mt19937_64& rng() { return rng_; }

  // One random local operation on a random replica.
  Step operate() { return operate(static_cast<int>(rng_() % docs_.size())); }

  Step operate(int r) {
    physicalMillis_ += rng_() % 3;  // often the same millisecond
    crdt::ReviewDoc& doc = docs_[r];
    crdt::HybridClock& clock = clocks_[r];
    Step step{doc, crdt::ReviewDoc(doc.key()), {}};
    static const char* kTags[] = {"fit", "size", "colour", "value"};
    static const char* kVoters[] = {"v1", "v2", "v3", "v4", "v5"};
    switch (rng_() % 9) {
      case 0:
      case 1:
        step.delta = doc.write(static_cast<uint8_t>(1 + rng_() % 5), "title " + word(),
                               "body " + word(), clock.now());
        break;
      case 2:
        step.delta = doc.erase(clock.now());
        break;
      case 3:
        step.delta = doc.tag(kTags[rng_() % 4], clock.replica());
        break;
      case 4:
        step.delta = doc.untag(kTags[rng_() % 4]);
        break;
      case 5:
        step.delta = doc.vote(kVoters[rng_() % 5], clock.replica());
        break;
      case 6:
        step.delta = doc.unvote(kVoters[rng_() % 5]);
        break;
      case 7:
        step.delta = doc.moderate(
            crdt::Moderation{static_cast<crdt::Visibility>(rng_() % 3), word()}, clock.now());
        break;
      default:
        step.delta = doc.setReply(crdt::Reply{"thanks " + word()}, clock.now());
        break;
    }
    step.after = doc;
    return step;
  }

  // Replica `to` merges a state or delta that replica `from` produced.
  void deliver(int to, const crdt::ReviewDoc& what) {
    (void)clocks_[to].observe(what.maxHlc());
    docs_[to].join(what);
  }

  // A random state reachable in this execution: some replica, possibly
  // after a few more steps and merges.
  crdt::ReviewDoc randomState(int steps) {
    for (int i = 0; i < steps; ++i) {
      if (rng_() % 4 == 0) {
        int from = static_cast<int>(rng_() % docs_.size());
        deliver(static_cast<int>(rng_() % docs_.size()), docs_[from]);
      } else {
        operate();
      }
    }
    return docs_[rng_() % docs_.size()];
  }

 private:
  std::string word() { return std::to_string(rng_() % 1000); }

  std::mt19937_64 rng_;
  uint64_t physicalMillis_;
  std::vector<crdt::ReviewDoc> docs_;
  std::vector<crdt::HybridClock> clocks_;
};

inline crdt::ReviewDoc joined(crdt::ReviewDoc a, const crdt::ReviewDoc& b) {
  a.join(b);
  return a;
}

}  // namespace chorus::test
