// Add-wins observed-remove set (the optimized, delta-state AWORSet of
// Almeida, Shoker & Baquero, "Delta State Replicated Data Types", 2018).
//
// Every add is tagged with a fresh dot (replica, counter). The set keeps, for
// each live element, the dots of its adds not yet observed by a remove:
// exactly one after a local add, more only while concurrent adds from other
// replicas are in flight. A causal context (a compacted version vector plus a
// cloud of stray dots) records every dot ever seen, so a removed element
// needs no tombstone: a dot in the context but not in the set was removed.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "hlc.h"

namespace chorus::crdt {

struct Dot {
  ReplicaId replica = 0;
  uint64_t counter = 0;  // 1-based
  auto operator<=>(const Dot&) const = default;
};

// The set of dots a replica has seen. Kept compacted: a dot contiguous with
// the version vector is folded into it, so the cloud holds only gaps.
class CausalContext {
 public:
  bool contains(const Dot& dot) const;
  // The next dot for `replica` (one past the highest contiguous counter).
  Dot nextDot(ReplicaId replica) const;
  void insert(const Dot& dot);  // and compact
  void join(const CausalContext& other);

  const std::map<ReplicaId, uint64_t>& versionVector() const { return vv_; }
  const std::set<Dot>& cloud() const { return cloud_; }

  // For decoding: rebuilds from parts, returns false unless they are in
  // compacted form (non-zero counters; no cloud dot at or contiguous with the
  // version vector).
  static bool fromParts(std::map<ReplicaId, uint64_t> vv, std::set<Dot> cloud, CausalContext& out);

  bool operator==(const CausalContext&) const = default;

 private:
  void compact();
  std::map<ReplicaId, uint64_t> vv_;
  std::set<Dot> cloud_;
};

class OrSet {
 public:
  using Element = std::string;
  using Entries = std::map<Element, std::set<Dot>>;

  bool contains(const Element& e) const { return entries_.count(e) != 0; }
  size_t size() const { return entries_.size(); }
  std::vector<Element> elements() const;

  // Delta mutators: change this set and return the delta to ship to peers.
  // add: a fresh dot from `replica` replaces the dots this replica observed
  // for `e` (so a retried add never makes a second element).
  OrSet add(const Element& e, ReplicaId replica);
  // remove: forgets the observed dots of `e`; concurrent, unobserved adds win.
  OrSet remove(const Element& e);

  void join(const OrSet& other);

  const Entries& entries() const { return entries_; }
  const CausalContext& context() const { return context_; }

  // For decoding: returns false unless the parts form a valid state (every
  // element has >= 1 dot, every dot is in the context, no dot shared by two
  // elements).
  static bool fromParts(Entries entries, CausalContext context, OrSet& out);

  bool operator==(const OrSet&) const = default;

 private:
  Entries entries_;
  CausalContext context_;
};

}  // namespace chorus::crdt
