#include "tools/sim/checker.h"

#include <algorithm>

namespace chorus::sim {

namespace {

std::string keyText(const crdt::ReviewKey& key) {
  std::string s = key.product;
  s.push_back('\0');
  s += key.author;
  return s;
}

}  // namespace

Checker::Checker(int maxNodes) : maxNodes_(maxNodes), member_(size_t(maxNodes), 0) {}

void Checker::setMember(int node, bool member, Micros now) {
  if ((member_[size_t(node)] != 0) == member) return;
  member_[size_t(node)] = member;
  members_ += member ? 1 : -1;
  for (size_t i = 0; i < writes_.size(); ++i) {
    WriteRecord& w = writes_[i];
    Tracking& t = tracking_[i];
    if (t.holders[size_t(node)]) t.memberHolders += member ? 1 : -1;
    if (w.allAt == 0 && t.memberHolders == members_) {
      w.allAt = now;
      --incomplete_;
    }
  }
}

uint32_t Checker::acked(int node, const crdt::ReviewKey& key, crdt::Stamp stamp, Micros now) {
  uint32_t id = uint32_t(writes_.size());
  writes_.push_back(WriteRecord{id, node, key, stamp, now, 0});
  tracking_.push_back(Tracking{std::vector<bool>(size_t(maxNodes_), false), 0});
  ++incomplete_;
  auto& same = byKey_[keyText(key)];
  hold(writes_.back(), node, now);
  // A node that already holds a write of this key with a stamp at least as
  // high (a concurrent write elsewhere that won) holds this one too: it will
  // not store anything for it. Every stored stamp comes from some tracked
  // write, so this finds all of them.
  for (uint32_t other : same) {
    if (writes_[other].stamp < stamp) continue;
    for (int n = 0; n < maxNodes_; ++n) {
      if (tracking_[other].holders[size_t(n)]) hold(writes_[id], n, now);
    }
  }
  same.push_back(id);
  return id;
}

void Checker::hold(WriteRecord& w, int node, Micros now) {
  Tracking& t = tracking_[w.id];
  if (t.holders[size_t(node)]) return;
  t.holders[size_t(node)] = true;
  if (!member_[size_t(node)]) return;
  ++t.memberHolders;
  if (w.allAt == 0 && t.memberHolders == members_) {
    w.allAt = now;
    --incomplete_;
  }
}

void Checker::stored(int node, const crdt::ReviewDoc& doc, Micros now) {
  auto it = byKey_.find(keyText(doc.key()));
  if (it == byKey_.end()) return;
  const crdt::Stamp& have = doc.content().stamp();
  for (uint32_t id : it->second) {
    WriteRecord& w = writes_[id];
    if (have >= w.stamp) hold(w, node, now);
  }
}

std::vector<double> Checker::latenciesMillis(Micros from, Micros to) const {
  std::vector<double> out;
  for (const auto& w : writes_) {
    if (w.acked >= from && w.acked < to && w.allAt != 0) {
      out.push_back(double(w.allAt - w.acked) / 1e3);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> Checker::describeIncomplete(size_t examples) const {
  std::vector<std::string> out;
  for (const auto& w : writes_) {
    if (w.allAt != 0) continue;
    if (out.size() >= examples) break;
    std::string line = "write " + std::to_string(w.id) + " (" + w.key.product + "/" + w.key.author +
                       ", acknowledged by node " + std::to_string(w.node) +
                       ") not yet held by members";
    for (int n = 0; n < maxNodes_; ++n) {
      if (member_[size_t(n)] && !tracking_[w.id].holders[size_t(n)]) {
        line += " " + std::to_string(n);
      }
    }
    out.push_back(line);
  }
  return out;
}

std::optional<Micros> Checker::allDelivered(Micros before) const {
  Micros last = 0;
  for (const auto& w : writes_) {
    if (w.acked >= before) continue;
    if (w.allAt == 0) return std::nullopt;
    last = std::max(last, w.allAt);
  }
  return last;
}

size_t Checker::verify(const std::vector<int>& live, const StampAt& stampAt,
                       std::vector<std::string>& missing, size_t examples,
                       std::vector<uint32_t>* lostIds) const {
  size_t lost = 0;
  for (const auto& w : writes_) {
    bool everywhere = true;
    for (int node : live) {
      auto have = stampAt(node, w.key);
      if (!have || *have < w.stamp) {
        everywhere = false;
        if (missing.size() < examples) {
          missing.push_back("write " + std::to_string(w.id) + " (" + w.key.product + "/" +
                            w.key.author + ", acknowledged by node " + std::to_string(w.node) +
                            " at " + std::to_string(double(w.acked) / 1e6) + "s) not on node " +
                            std::to_string(node));
        }
        break;
      }
    }
    if (!everywhere) {
      ++lost;
      if (lostIds) lostIds->push_back(w.id);
    }
  }
  return lost;
}

}  // namespace chorus::sim
