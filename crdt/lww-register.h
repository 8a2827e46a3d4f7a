// Last-writer-wins register ordered by Stamp.
#pragma once

#include <compare>
#include <utility>

#include "hlc.h"

namespace chorus::crdt {

// V must be copyable and totally ordered (operator<=>). An unwritten register
// has a zero stamp and a default value.
//
// join keeps the value with the greater stamp. Two different values under the
// same stamp can only come from a misbehaving replica; join still resolves
// them deterministically (greater value wins) so merges always commute.
template <class V>
class LwwRegister {
 public:
  LwwRegister() = default;
  LwwRegister(Stamp stamp, V value) : stamp_(stamp), value_(std::move(value)) {}

  const Stamp& stamp() const { return stamp_; }
  const V& value() const { return value_; }
  bool isSet() const { return !stamp_.isZero(); }

  // Delta mutator: sets the value at `stamp` and returns the delta (which is
  // the new register itself). `stamp` should come from HybridClock::now().
  LwwRegister assign(V value, Stamp stamp) {
    LwwRegister delta(stamp, std::move(value));
    join(delta);
    return delta;
  }

  void join(const LwwRegister& other) {
    if (other.stamp_ > stamp_ || (other.stamp_ == stamp_ && other.value_ > value_)) {
      stamp_ = other.stamp_;
      value_ = other.value_;
    }
  }

  bool operator==(const LwwRegister&) const = default;

 private:
  Stamp stamp_;
  V value_{};
};

}  // namespace chorus::crdt
