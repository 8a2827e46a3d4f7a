#include "or-set.h"

#include <algorithm>
#include <iterator>

namespace chorus::crdt {

bool CausalContext::contains(const Dot& dot) const {
  auto it = vv_.find(dot.replica);
  if (it != vv_.end() && dot.counter <= it->second) return true;
  return cloud_.count(dot) != 0;
}

Dot CausalContext::nextDot(ReplicaId replica) const {
  // Dots from `replica` are only ever made by `replica` itself, which keeps
  // its own dots contiguous, so the version vector entry is its maximum.
  uint64_t max = 0;
  if (auto it = vv_.find(replica); it != vv_.end()) max = it->second;
  // A stray cloud dot of our own can exist only after data loss; step past
  // it rather than reuse a dot.
  auto it = cloud_.lower_bound(Dot{replica + 1, 0});
  if (it != cloud_.begin()) {
    --it;
    if (it->replica == replica) max = std::max(max, it->counter);
  }
  return Dot{replica, max + 1};
}

void CausalContext::insert(const Dot& dot) {
  if (contains(dot)) return;
  cloud_.insert(dot);
  compact();
}

void CausalContext::join(const CausalContext& other) {
  for (const auto& [replica, counter] : other.vv_) {
    uint64_t& mine = vv_[replica];
    mine = std::max(mine, counter);
  }
  cloud_.insert(other.cloud_.begin(), other.cloud_.end());
  compact();
}

void CausalContext::compact() {
  for (auto it = cloud_.begin(); it != cloud_.end();) {
    auto vvIt = vv_.find(it->replica);
    uint64_t have = vvIt == vv_.end() ? 0 : vvIt->second;
    if (it->counter <= have) {
      it = cloud_.erase(it);  // already covered
    } else if (it->counter == have + 1) {
      vv_[it->replica] = it->counter;  // contiguous: fold in
      it = cloud_.erase(it);
    } else {
      ++it;
    }
  }
}

bool CausalContext::fromParts(std::map<ReplicaId, uint64_t> vv, std::set<Dot> cloud,
                              CausalContext& out) {
  for (const auto& [replica, counter] : vv) {
    if (replica == 0 || counter == 0) return false;
  }
  for (const Dot& d : cloud) {
    if (d.replica == 0 || d.counter == 0) return false;
    auto it = vv.find(d.replica);
    uint64_t have = it == vv.end() ? 0 : it->second;
    if (d.counter <= have + 1) return false;  // not compacted
  }
  out.vv_ = std::move(vv);
  out.cloud_ = std::move(cloud);
  return true;
}

std::vector<OrSet::Element> OrSet::elements() const {
  std::vector<Element> out;
  out.reserve(entries_.size());
  for (const auto& [e, dots] : entries_) out.push_back(e);
  return out;
}

OrSet OrSet::add(const Element& e, ReplicaId replica) {
  OrSet delta;
  Dot dot = context_.nextDot(replica);
  if (auto it = entries_.find(e); it != entries_.end()) {
    for (const Dot& old : it->second) delta.context_.insert(old);
  }
  delta.entries_[e] = {dot};
  delta.context_.insert(dot);
  // join(delta), done in place: the delta's context holds only e's old dots
  // and the fresh one, so only e changes (a join would rebuild every entry,
  // making each vote on a review with n voters cost n copies).
  entries_[e] = {dot};
  context_.insert(dot);
  return delta;
}

OrSet OrSet::remove(const Element& e) {
  OrSet delta;
  if (auto it = entries_.find(e); it != entries_.end()) {
    for (const Dot& old : it->second) delta.context_.insert(old);
  }
  entries_.erase(e);  // join(delta) in place: the context already covers these dots
  return delta;
}

void OrSet::join(const OrSet& other) {
  // Keep a dot if both sides have it, or if one side has it and the other
  // has never seen it. A dot one side has seen but dropped was removed.
  auto survivors = [](const std::set<Dot>& mine, const std::set<Dot>& theirs,
                      const CausalContext& theirContext) {
    std::set<Dot> keep;
    for (const Dot& d : mine) {
      if (theirs.count(d) != 0 || !theirContext.contains(d)) keep.insert(d);
    }
    return keep;
  };
  static const std::set<Dot> kNone;

  Entries merged;
  auto a = entries_.begin();
  auto b = other.entries_.begin();
  while (a != entries_.end() || b != other.entries_.end()) {
    const Element* key;
    const std::set<Dot>* mine = &kNone;
    const std::set<Dot>* theirs = &kNone;
    if (b == other.entries_.end() || (a != entries_.end() && a->first < b->first)) {
      key = &a->first;
      mine = &a->second;
      ++a;
    } else if (a == entries_.end() || b->first < a->first) {
      key = &b->first;
      theirs = &b->second;
      ++b;
    } else {
      key = &a->first;
      mine = &a->second;
      theirs = &b->second;
      ++a;
      ++b;
    }
    std::set<Dot> keep = survivors(*mine, *theirs, other.context_);
    std::set<Dot> fromOther = survivors(*theirs, *mine, context_);
    keep.insert(fromOther.begin(), fromOther.end());
    if (!keep.empty()) merged.emplace(*key, std::move(keep));
  }
  entries_ = std::move(merged);
  context_.join(other.context_);
}

bool OrSet::fromParts(Entries entries, CausalContext context, OrSet& out) {
  std::set<Dot> seen;
  for (const auto& [e, dots] : entries) {
    if (dots.empty()) return false;
    for (const Dot& d : dots) {
      if (!context.contains(d)) return false;
      if (!seen.insert(d).second) return false;
    }
  }
  out.entries_ = std::move(entries);
  out.context_ = std::move(context);
  return true;
}

}  // namespace chorus::crdt
