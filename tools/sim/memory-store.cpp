#include "tools/sim/memory-store.h"

#include <algorithm>

#include "storage/key-schema.h"
#include "storage/merkle.h"

namespace chorus::sim {

using storage::Hash;

MemoryStore::MemoryStore(crdt::ReplicaId replica, crdt::PhysicalClock clock,
                         uint64_t maxDriftMillis)
    : clock_(replica, std::move(clock), crdt::Hlc{}, maxDriftMillis) {}

Result<crdt::ReviewDoc> MemoryStore::load(const crdt::ReviewKey& key,
                                          const std::string& docKey) const {
  auto it = docs_.find(docKey);
  if (it == docs_.end()) return crdt::ReviewDoc(key);
  return crdt::ReviewDoc::decode(it->second.encoded);
}

Result<storage::Applied> MemoryStore::mutate(const crdt::ReviewKey& key,
                                             const storage::Mutation& mutation) {
  if (auto s = storage::schema::validateKey(key); !s.ok()) return s.error();
  std::string dk = storage::schema::docKey(key);
  auto before = load(key, dk);
  if (!before.ok()) return before.error();
  crdt::ReviewDoc next = before.value();
  auto delta = mutation(next, clock_);
  if (!delta.ok()) return delta.error();
  CHORUS_ASSERT(next.key() == key, "a Mutation changed the document's key");
  return store(dk, before.value(), next, std::move(delta).value());
}

Result<storage::Applied> MemoryStore::merge(const crdt::ReviewDoc& remote) {
  if (auto s = storage::schema::validateKey(remote.key()); !s.ok()) return s.error();
  if (auto s = clock_.observe(remote.maxHlc()); !s.ok()) return s.error();
  std::string dk = storage::schema::docKey(remote.key());
  auto before = load(remote.key(), dk);
  if (!before.ok()) return before.error();
  crdt::ReviewDoc next = before.value();
  next.join(remote);
  return store(dk, before.value(), next, remote);
}

Result<storage::Applied> MemoryStore::store(const std::string& docKey,
                                            const crdt::ReviewDoc& before,
                                            const crdt::ReviewDoc& after, crdt::ReviewDoc delta) {
  bool changed = !(after == before);
  if (changed) {
    std::string encoded = after.encode();
    Hash digest = storage::digestOf(encoded);
    auto it = docs_.find(docKey);
    if (it == docs_.end()) {
      uint64_t kh = storage::keyHashOfDocKey(docKey);
      it = docs_.emplace(docKey, Doc{std::string(), Hash{}, kh}).first;
    } else {
      addToTree(it->second.keyHash, storage::entryHash(it->second.keyHash, it->second.digest),
                false);
    }
    Doc& d = it->second;
    d.encoded = std::move(encoded);
    d.digest = digest;
    addToTree(d.keyHash, storage::entryHash(d.keyHash, digest), true);
    leaves_[uint32_t(storage::leafIndexOf(d.keyHash))][{d.keyHash, docKey}] = digest;
  }
  return storage::Applied{std::move(delta), after, changed};
}

void MemoryStore::addToTree(uint64_t keyHash, const Hash& entry, bool add) {
  auto apply = [&](Hash& h) { h = add ? storage::hashAdd(h, entry) : storage::hashSub(h, entry); };
  uint64_t leaf = storage::leafIndexOf(keyHash);
  apply(level0_);
  apply(level1_[storage::nodeAbove(leaf, 1)]);
  apply(level2_[storage::nodeAbove(leaf, 2)]);
  apply(level3_[storage::nodeAbove(leaf, 3)]);
  apply(level4_[uint32_t(leaf)]);
}

std::optional<crdt::ReviewDoc> MemoryStore::get(const crdt::ReviewKey& key) const {
  auto it = docs_.find(storage::schema::docKey(key));
  if (it == docs_.end()) return std::nullopt;
  auto doc = crdt::ReviewDoc::decode(it->second.encoded);
  CHORUS_ASSERT(doc.ok(), "a stored encoding does not decode");
  return std::move(doc).value();
}

std::optional<std::string> MemoryStore::getEncoded(const crdt::ReviewKey& key) const {
  auto it = docs_.find(storage::schema::docKey(key));
  if (it == docs_.end()) return std::nullopt;
  return it->second.encoded;
}

std::vector<Hash> MemoryStore::merkleChildren(int level, uint64_t index) const {
  CHORUS_ASSERT(level >= 0 && level < storage::Store::kDepth, "merkleChildren: bad level");
  std::vector<Hash> out(16);
  for (uint64_t i = 0; i < 16; ++i) {
    uint64_t child = index * 16 + i;
    switch (level) {
      case 0:
        out[i] = level1_[child];
        break;
      case 1:
        out[i] = level2_[child];
        break;
      case 2:
        out[i] = level3_[child];
        break;
      default: {
        auto it = level4_.find(uint32_t(child));
        if (it != level4_.end()) out[i] = it->second;
      }
    }
  }
  return out;
}

std::vector<storage::LeafEntry> MemoryStore::leafEntries(uint64_t leafIndex) const {
  std::vector<storage::LeafEntry> out;
  auto it = leaves_.find(uint32_t(leafIndex));
  if (it == leaves_.end()) return out;
  out.reserve(it->second.size());
  for (const auto& [hk, digest] : it->second) {
    auto key = storage::schema::parseDocKey(hk.second);
    CHORUS_ASSERT(key.has_value(), "a stored document key does not parse");
    out.push_back(storage::LeafEntry{hk.first, digest, std::move(*key)});
  }
  return out;
}

std::vector<std::string> MemoryStore::allEncoded() const {
  std::vector<std::pair<std::string, std::string>> sorted;
  sorted.reserve(docs_.size());
  for (const auto& [dk, d] : docs_) sorted.emplace_back(dk, d.encoded);
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::string> out;
  out.reserve(sorted.size());
  for (auto& [dk, e] : sorted) out.push_back(std::move(e));
  return out;
}

}  // namespace chorus::sim
