#include "tools/sim/stores.h"

#include <algorithm>
#include <future>

#include "storage/merkle.h"
#include "tools/sim/memory-store.h"

namespace chorus::sim {

namespace {

class MemoryReplica final : public gossip::ReplicaStore {
 public:
  explicit MemoryReplica(MemoryStore& store) : store_(store) {}
  Result<storage::Hash> root() override { return store_.merkleRoot(); }
  Result<std::vector<storage::Hash>> children(int level, uint64_t index) override {
    return store_.merkleChildren(level, index);
  }
  Result<std::vector<storage::LeafEntry>> leafEntries(uint64_t leafIndex) override {
    return store_.leafEntries(leafIndex);
  }
  Result<std::optional<std::string>> encodedState(const crdt::ReviewKey& key) override {
    return store_.getEncoded(key);
  }
  void merge(crdt::ReviewDoc state, gossip::MergeDone done) override { done(store_.merge(state)); }

 private:
  MemoryStore& store_;
};

class MemorySimStore final : public SimStore {
 public:
  MemorySimStore(crdt::ReplicaId replica, crdt::PhysicalClock clock)
      : store_(replica, std::move(clock)), replica_(store_) {}
  crdt::ReplicaId replicaId() override { return store_.replicaId(); }
  gossip::ReplicaStore& replica() override { return replica_; }
  Result<storage::Applied> write(const crdt::ReviewKey& key,
                                 const storage::Mutation& mutation) override {
    return store_.mutate(key, mutation);
  }
  Result<storage::Applied> mergeNow(crdt::ReviewDoc state) override { return store_.merge(state); }
  Result<storage::Hash> root() override { return store_.merkleRoot(); }
  Result<std::optional<crdt::Stamp>> contentStamp(const crdt::ReviewKey& key) override {
    auto doc = store_.get(key);
    if (!doc) return std::optional<crdt::Stamp>();
    return std::optional<crdt::Stamp>(doc->content().stamp());
  }
  uint64_t documents() override { return store_.documents(); }

 private:
  MemoryStore store_;
  MemoryReplica replica_;
};

class LmdbSimStore final : public SimStore {
 public:
  explicit LmdbSimStore(std::unique_ptr<storage::Store> store)
      : store_(std::move(store)), replica_(*store_) {}
  crdt::ReplicaId replicaId() override { return store_->replicaId(); }
  gossip::ReplicaStore& replica() override { return replica_; }
  Result<storage::Applied> write(const crdt::ReviewKey& key,
                                 const storage::Mutation& mutation) override {
    return store_->mutateSync(key, mutation);
  }
  Result<storage::Applied> mergeNow(crdt::ReviewDoc state) override {
    // Through the core's adapter; its callback runs on the store thread.
    std::promise<Result<storage::Applied>> promise;
    auto future = promise.get_future();
    replica_.merge(std::move(state),
                   [&promise](Result<storage::Applied> r) { promise.set_value(std::move(r)); });
    return future.get();
  }
  Result<storage::Hash> root() override { return store_->merkleRoot(); }
  Result<std::optional<crdt::Stamp>> contentStamp(const crdt::ReviewKey& key) override {
    auto doc = store_->get(key);
    if (!doc.ok()) return doc.error();
    if (!doc.value()) return std::optional<crdt::Stamp>();
    return std::optional<crdt::Stamp>(doc.value()->content().stamp());
  }
  uint64_t documents() override { return store_->stats().documents; }

 private:
  std::unique_ptr<storage::Store> store_;
  gossip::StoreReplica replica_;
};

Status walk(gossip::ReplicaStore& store, int level, uint64_t index, std::vector<std::string>& out) {
  auto kids = store.children(level, index);
  if (!kids.ok()) return kids.error();
  for (uint64_t i = 0; i < uint64_t(gossip::ReplicaStore::kFanout); ++i) {
    if (storage::isZero(kids.value()[i])) continue;
    uint64_t child = index * gossip::ReplicaStore::kFanout + i;
    if (level + 1 < gossip::ReplicaStore::kDepth) {
      if (auto s = walk(store, level + 1, child, out); !s.ok()) return s;
      continue;
    }
    auto entries = store.leafEntries(child);
    if (!entries.ok()) return entries.error();
    for (const auto& e : entries.value()) {
      auto state = store.encodedState(e.key);
      if (!state.ok()) return state.error();
      if (state.value()) out.push_back(std::move(*state.value()));
    }
  }
  return okStatus();
}

}  // namespace

std::unique_ptr<SimStore> makeMemoryStore(crdt::ReplicaId replica, crdt::PhysicalClock clock) {
  return std::make_unique<MemorySimStore>(replica, std::move(clock));
}

Result<std::unique_ptr<SimStore>> openLmdbStore(const std::string& dir, crdt::PhysicalClock clock) {
  storage::Options options;
  options.dir = dir;
  options.unsafeNoSync = true;
  options.initialMapBytes = 8u << 20;
  options.clock = std::move(clock);
  auto store = storage::Store::open(std::move(options));
  if (!store.ok()) return store.error();
  return std::unique_ptr<SimStore>(new LmdbSimStore(std::move(store).value()));
}

Result<std::vector<std::string>> storeContents(gossip::ReplicaStore& store) {
  std::vector<std::string> out;
  auto root = store.root();
  if (!root.ok()) return root.error();
  if (!storage::isZero(root.value())) {
    if (auto s = walk(store, 0, 0, out); !s.ok()) return s.error();
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace chorus::sim
