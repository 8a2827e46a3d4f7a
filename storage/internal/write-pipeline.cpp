// The write pipeline of the LMDB store: the queue, preparing a batch
// (mutations, merges, encoding, hashing and every derived change computed
// outside the transaction), applying it in one write transaction, growing
// the map, committing and acknowledging. Threads: store-impl.h.
#include <algorithm>
#include <chrono>

#include "storage/internal/store-impl.h"
#include "storage/key-schema.h"
#include "storage/merkle.h"

namespace chorus::storage::internal {

void StoreImpl::mutate(crdt::ReviewKey key, Mutation mutation, Done done) {
  CHORUS_ASSERT(static_cast<bool>(mutation), "mutate() needs a mutation");
  enqueue(Pending{std::move(key), std::move(mutation), std::nullopt, std::move(done)});
}

void StoreImpl::merge(crdt::ReviewDoc remote, Done done) {
  crdt::ReviewKey key = remote.key();
  enqueue(Pending{std::move(key), {}, std::move(remote), std::move(done)});
}

void StoreImpl::enqueue(Pending p) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(p));
  }
  cv_.notify_one();
}

// Up to maxBatch queued writes; with `wait`, blocks until there is one or
// the store is stopping (then returns none).
std::vector<Pending> StoreImpl::takeBatch(bool wait) {
  std::unique_lock lock(mu_);
  if (wait) cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
  size_t n = std::min(queue_.size(), options_.maxBatch);
  std::vector<Pending> batch(std::make_move_iterator(queue_.begin()),
                             std::make_move_iterator(queue_.begin() + static_cast<ptrdiff_t>(n)));
  queue_.erase(queue_.begin(), queue_.begin() + static_cast<ptrdiff_t>(n));
  return batch;
}

// Queued writes that make it worth preparing the next batch during a
// commit instead of after it.
size_t StoreImpl::pipelineThreshold() const { return std::max<size_t>(1, options_.maxBatch / 4); }

// The store thread. Each round applies a prepared batch in one write
// transaction and, just before committing it, hands the next queued writes
// (when enough are queued) to the preparer thread, so that their CPU work runs while this thread
// waits for the commit's fsync. The next batch is prepared on top of the
// documents this batch writes; if this batch fails to commit, it is
// prepared again from the store (its mutations run again, as Mutation
// allows). Drains the queue before exiting.
void StoreImpl::run() {
  std::unique_ptr<Prepared> current;
  for (;;) {
    if (!current) {
      std::vector<Pending> batch = takeBatch(true);
      if (batch.empty()) return;  // stopping, and nothing left
      current = prepare(std::move(batch), nullptr);
    }
    std::future<std::unique_ptr<Prepared>> next;
    auto startNext = [&] {
      if (next.valid()) return;  // a retried transaction starts it once
      {
        // Under light load, writes arriving during the commit are better
        // off joining the next batch than waiting one more commit.
        std::lock_guard lock(mu_);
        if (queue_.size() < pipelineThreshold()) return;
      }
      std::vector<Pending> batch = takeBatch(false);
      if (batch.empty()) return;
      next = preparer_.post([this, b = std::move(batch), base = current.get()]() mutable {
        return prepare(std::move(b), base);
      });
    };
    auto begun = std::chrono::steady_clock::now();
    Status committed =
        current->failure ? Status(*current->failure) : commitPrepared(*current, startNext);
    acknowledge(*current, committed, std::chrono::steady_clock::now() - begun);
    std::unique_ptr<Prepared> following;
    if (next.valid()) {
      following = next.get();
      if (!committed) following = prepare(std::move(following->batch), nullptr);
    }
    current = std::move(following);
  }
}

// Reads the state before the batch (from `base`, the batch committing
// meanwhile, else from the store), runs the writes on it and derives
// everything apply() will write. Runs on the preparer thread while the
// store thread commits `base`, or on the store thread when nothing else
// runs: it is the only user of clock_ while it runs.
std::unique_ptr<Prepared> StoreImpl::prepare(std::vector<Pending> batch, const Prepared* base) {
  auto p = std::make_unique<Prepared>();
  p->batch = std::move(batch);
  p->results.assign(p->batch.size(), std::nullopt);
  p->refused.assign(p->batch.size(), 0);
  ReadTxn rt(gate_);
  bool reading = false;
  for (size_t i = 0; i < p->batch.size(); ++i) {
    const Pending& w = p->batch[i];
    if (auto s = schema::validateKey(w.key); !s) {
      p->results[i] = s.error();
      continue;
    }
    if (w.remote) {
      if (auto s = clock_.observe(w.remote->maxHlc()); !s) {
        p->refused[i] = 1;
        p->results[i] = s.error();
        continue;
      }
    }
    std::string dk = schema::docKey(w.key);
    auto it = p->work.find(dk);
    if (it == p->work.end()) {
      std::optional<Working> fromBase = base ? stateAfter(*base, dk) : std::nullopt;
      if (fromBase) {
        it = p->work.emplace(std::move(dk), std::move(*fromBase)).first;
      } else {
        if (!reading) {
          if (auto s = rt.begin(env_); !s) {
            p->failure = s.error();
            return p;
          }
          reading = true;
        }
        auto loaded = load(rt.txn(), w.key, dk);
        if (!loaded) {
          // A damaged document fails the writes to it, not the batch.
          if (loaded.error().code != ErrorCode::kCorruption) {
            p->failure = loaded.error();
            return p;
          }
          p->results[i] = loaded.error();
          continue;
        }
        it = p->work.emplace(std::move(dk), std::move(loaded).value()).first;
      }
    }
    Working& doc = it->second;
    crdt::ReviewDoc next = doc.doc;
    crdt::ReviewDoc delta;
    if (w.mutation) {
      Result<crdt::ReviewDoc> r = w.mutation(next, clock_);
      if (!r) {
        p->results[i] = r.error();
        continue;
      }
      CHORUS_ASSERT(next.key() == w.key, "a Mutation changed the document's key");
      delta = std::move(r).value();
    } else {
      next.join(*w.remote);
      delta = *w.remote;
    }
    bool changed = !(next == doc.doc);
    if (changed && !w.mutation && options_.admitMerge) {
      if (Status admitted = options_.admitMerge(next); !admitted.ok()) {
        p->results[i] = admitted.error();
        continue;
      }
    }
    if (changed) {
      doc.doc = next;
      doc.dirty = true;
    }
    p->results[i] = Applied{std::move(delta), std::move(next), changed};
  }
  p->highWater = clock_.highWater().bits;
  derive(*p);
  return p;
}

// The stored state of `dk` once `base` commits, if `base` read or wrote it.
std::optional<Working> StoreImpl::stateAfter(const Prepared& base, const std::string& dk) {
  auto it = base.work.find(dk);
  if (it == base.work.end()) return std::nullopt;
  const Working& b = it->second;
  Working w;
  w.key = b.key;
  w.keyHash = b.keyHash;
  w.doc = b.doc;
  if (b.written) {
    w.existed = true;
    w.oldDigest = b.newDigest;
    w.oldSeq = b.newSeq;
    w.oldFacts = factsOf(b.doc);
  } else {  // unchanged, or changed back to identical bytes
    w.existed = b.existed;
    w.oldDigest = b.oldDigest;
    w.oldSeq = b.oldSeq;
    w.oldFacts = b.oldFacts;
  }
  return w;
}

Result<Working> StoreImpl::load(Txn& txn, const crdt::ReviewKey& key, const std::string& dk) {
  Working w;
  w.key = key;
  w.keyHash = keyHashOfDocKey(dk);
  std::string_view value;
  auto found = txn.get(dbs_.documents, dk, &value);
  if (!found) return found.error();
  if (!*found) {
    w.doc = crdt::ReviewDoc(key);
    return w;
  }
  auto rec = schema::parseDocRecord(value, key);
  if (!rec) return rec.error();
  auto doc = decodeStored(rec->canonical, key);
  if (!doc) return doc.error();
  w.existed = true;
  w.oldDigest = rec->digest;
  w.oldSeq = rec->seq;
  w.oldFacts = factsOf(*doc);
  w.doc = std::move(doc).value();
  return w;
}

// Encodes the changed documents and computes what changes in every
// derived database: Merkle leaf entries and node sums, aggregates, listing
// positions, and the feed: each document written takes the next seq (in
// key order within the batch) and gives up its previous one. Runs where
// prepare() runs: the only user of seq_.
void StoreImpl::derive(Prepared& p) {
  for (auto& [dk, w] : p.work) {
    if (!w.dirty) continue;
    std::string canonical = w.doc.encode();
    Hash digest = digestOf(canonical);
    if (w.existed && digest == w.oldDigest) continue;
    w.written = true;
    w.newDigest = digest;
    w.newSeq = ++seq_;
    schema::ListingHeader header = schema::listingHeaderOf(w.doc);
    p.docPuts.emplace_back(dk, schema::encodeDocRecord(digest, header, w.newSeq, canonical));
    if (w.existed) p.changeDels.push_back(schema::changeKey(w.oldSeq));
    p.changePuts.emplace_back(schema::changeKey(w.newSeq), schema::changeValue(header.live, dk));
    p.leafPuts.emplace_back(schema::leafEntryKey(w.keyHash, dk), digest);
    Hash d = entryHash(w.keyHash, digest);
    if (w.existed) d = hashSub(d, entryHash(w.keyHash, w.oldDigest));
    uint64_t leaf = leafIndexOf(w.keyHash);
    for (int level = 0; level <= Store::kDepth; ++level) {
      Hash& acc = p.nodeDeltas[packNode(level, nodeAbove(leaf, level))];
      acc = hashAdd(acc, d);
    }

    Facts nf = factsOf(w.doc);
    const Facts& of = w.oldFacts;
    // Listing positions move only when liveness, rating or content stamp
    // change (not for votes or tags).
    if (of.live != nf.live || of.rating != nf.rating || of.hlc != nf.hlc) {
      addListingKeys(p.listingDels, w.key, of);
      addListingKeys(p.listingPuts, w.key, nf);
    }
    if (of.live || nf.live) {
      SummaryDelta& sd = p.summaryDeltas[schema::aggregateKey(w.key.product)];
      addFacts(sd, of, -1);
      addFacts(sd, nf, +1);
    }
  }
  std::sort(p.leafPuts.begin(), p.leafPuts.end());
  std::sort(p.listingDels.begin(), p.listingDels.end());
  std::sort(p.listingPuts.begin(), p.listingPuts.end());
  std::sort(p.changeDels.begin(), p.changeDels.end());
  p.lastSeq = seq_;
}

// Applies and commits a prepared batch, growing the map and starting over
// on MDB_MAP_FULL, so it is either fully committed or not at all. Calls
// beforeCommit() after each successful apply, just before committing.
Status StoreImpl::commitPrepared(const Prepared& p, const std::function<void()>& beforeCommit) {
  for (;;) {
    gate_.enterShared();
    Txn txn;
    Status st = txn.begin(env_, 0);
    if (st) st = apply(txn, p);
    if (st) {
      beforeCommit();
      st = txn.commit();
    }
    txn.abort();
    gate_.exitShared();
    if (st) return st;
    if (txn.mapResized()) {
      if (auto s = adoptMapSize(env_, gate_); !s) return s;
      continue;
    }
    if (!txn.mapFull()) return st;
    if (auto s = growMap(); !s) return s;
  }
}

// Gives every write of the batch its result and runs the callbacks.
void StoreImpl::acknowledge(Prepared& p, const Status& committed, std::chrono::nanoseconds took) {
  uint64_t acknowledged = 0;
  for (size_t i = 0; i < p.batch.size(); ++i) {
    std::optional<Result<Applied>>& r = p.results[i];
    if (!committed && (!r || r->ok())) r = committed.error();  // nothing was written
    CHORUS_ASSERT(r.has_value(), "a write of the batch got no result");
    if (r->ok()) ++acknowledged;
    if (p.refused[i]) refused_.fetch_add(1);
  }
  if (committed) {
    uint64_t commits = commits_.fetch_add(1) + 1;
    if (commits % kReaderCheckEveryCommits == 0) {
      (void)env_.readerCheck();  // best effort; open() checked too
    }
  }
  writes_.fetch_add(acknowledged);
  if (committed && options_.onCommit) options_.onCommit(took, acknowledged);
  if (committed) {
    committedSeq_.store(p.lastSeq);
    if (!p.changePuts.empty() && options_.onFeedAdvanced) options_.onFeedAdvanced(p.lastSeq);
  }
  for (size_t i = 0; i < p.batch.size(); ++i) {
    if (p.batch[i].done) p.batch[i].done(std::move(*p.results[i]));
  }
}

Status StoreImpl::growMap() {
  auto size = env_.mapSize();
  if (!size) return size.error();
  if (*size >= kMaxMapBytes) {
    return makeError(ErrorCode::kIo, "the LMDB map reached its " + std::to_string(*size >> 30) +
                                         " GiB limit; the store cannot grow further");
  }
  gate_.beginExclusive();
  Status s = env_.setMapSize(std::min(*size * 2, kMaxMapBytes));
  gate_.endExclusive();
  if (!s) return s;
  mapGrowths_.fetch_add(1);
  return okStatus();
}

// Writes a prepared batch: documents, Merkle leaf entries and listing
// positions in key order through cursors, then the read-modify-writes of aggregates and Merkle
// node sums, and the HLC high-water mark. Touches no clock and no
// document state, so it may run again after the map grows.
Status StoreImpl::apply(Txn& txn, const Prepared& p) {
  auto putAll = [&](MDB_dbi dbi, const auto& puts, auto valueOf) -> Status {
    if (puts.empty()) return okStatus();
    auto cursor = Cursor::open(txn, dbi);
    if (!cursor) return cursor.error();
    for (const auto& put : puts) {
      auto [key, value] = valueOf(put);
      if (auto s = cursor->put(key, value); !s) return s;
    }
    return okStatus();
  };
  auto pair = [](const std::pair<std::string, std::string>& kv) {
    return std::pair<std::string_view, std::string_view>(kv.first, kv.second);
  };
  auto hash = [](const std::pair<std::string, Hash>& kv) {
    return std::pair<std::string_view, std::string_view>(
        kv.first, std::string_view(reinterpret_cast<const char*>(kv.second.data()), 16));
  };
  if (auto s = putAll(dbs_.documents, p.docPuts, pair); !s) return s;
  if (auto s = putAll(dbs_.leafEntries, p.leafPuts, hash); !s) return s;
  // Listing positions: the old ones out, then the new ones in (each in key
  // order; a review's old and new positions differ, or neither is here).
  for (const std::string& key : p.listingDels) {
    if (auto s = txn.del(dbs_.listings, key); !s) return s;
  }
  auto empty = [](const std::string& key) {
    return std::pair<std::string_view, std::string_view>(key, std::string_view());
  };
  if (auto s = putAll(dbs_.listings, p.listingPuts, empty); !s) return s;

  // Read-modify-writes in key order, each through one cursor: a point
  // read positions the cursor, so the write needs no second descent.
  auto update = [&](Cursor& cursor, const std::string& key, auto modify) -> Status {
    std::string_view value;
    auto found = cursor.seekExact(key, &value);
    if (!found) return found.error();
    std::optional<std::string_view> current;
    if (*found) current = value;
    Result<std::optional<std::string>> next = modify(current);
    if (!next) return next.error();
    if (!*next) return *found ? cursor.delCurrent() : okStatus();
    return *found ? cursor.putCurrent(key, **next) : cursor.put(key, **next);
  };

  if (!p.summaryDeltas.empty()) {
    auto cursor = Cursor::open(txn, dbs_.products);
    if (!cursor) return cursor.error();
    for (const auto& [productKey, sd] : p.summaryDeltas) {
      if (std::all_of(sd.begin(), sd.end(), [](int64_t x) { return x == 0; })) continue;
      Status s =
          update(*cursor, productKey,
                 [&](std::optional<std::string_view> stored) -> Result<std::optional<std::string>> {
                   ProductSummary current;
                   if (stored) {
                     auto decoded = schema::decodeSummary(*stored);
                     if (!decoded) return corruption("product aggregate record has the wrong size");
                     current = *decoded;
                   }
                   std::array<uint64_t*, 8> fields = {&current.count,        &current.histogram[0],
                                                      &current.histogram[1], &current.histogram[2],
                                                      &current.histogram[3], &current.histogram[4],
                                                      &current.ratingSum,    &current.helpfulTotal};
                   for (size_t f = 0; f < fields.size(); ++f) {
                     if (sd[f] < 0 && *fields[f] < static_cast<uint64_t>(-sd[f])) {
                       return corruption(
                           "product aggregate would go negative: the stored aggregates no "
                           "longer match the documents");
                     }
                     *fields[f] += static_cast<uint64_t>(sd[f]);
                   }
                   if (current.count == 0 && current.helpfulTotal == 0 && current.ratingSum == 0) {
                     return std::optional<std::string>();
                   }
                   return std::optional<std::string>(schema::encodeSummary(current));
                 });
      if (!s) return s;
    }
  }

  // Node sums: inner nodes in `merkle`, leaf sums in `leaf-entries`; the
  // deltas are ordered by (level, index), which is also key order.
  std::optional<Cursor> inner, leaves;
  for (const auto& [packed, delta] : p.nodeDeltas) {
    if (isZero(delta)) continue;
    int level = static_cast<int>(packed >> 32);
    uint64_t index = packed & 0xffffffffu;
    std::optional<Cursor>& cursor = level == Store::kDepth ? leaves : inner;
    if (!cursor) {
      auto opened = Cursor::open(txn, level == Store::kDepth ? dbs_.leafEntries : dbs_.merkle);
      if (!opened) return opened.error();
      cursor = std::move(opened).value();
    }
    std::string key = level == Store::kDepth ? schema::leafPrefix(static_cast<uint32_t>(index))
                                             : schema::merkleNodeKey(level, index);
    Status s = update(
        *cursor, key,
        [&](std::optional<std::string_view> stored) -> Result<std::optional<std::string>> {
          Hash current{};
          if (stored) {
            if (stored->size() != current.size())
              return corruption("Merkle node value of wrong size");
            std::copy(stored->begin(), stored->end(), reinterpret_cast<char*>(current.data()));
          }
          Hash next = hashAdd(current, delta);
          if (isZero(next)) return std::optional<std::string>();
          return std::optional<std::string>(
              std::string(reinterpret_cast<const char*>(next.data()), next.size()));
        });
    if (!s) return s;
  }

  // The feed: the entries replaced out, the new ones appended (every new
  // seq is above every stored one).
  for (const std::string& key : p.changeDels) {
    if (auto s = txn.del(dbs_.changes, key); !s) return s;
  }
  if (!p.changePuts.empty()) {
    auto cursor = Cursor::open(txn, dbs_.changes);
    if (!cursor) return cursor.error();
    for (const auto& [key, value] : p.changePuts) {
      if (auto s = cursor->append(key, value); !s) return s;
    }
  }

  std::string hw, seq;
  schema::putLe64(hw, p.highWater);
  schema::putLe64(seq, p.lastSeq);
  if (auto s = txn.put(dbs_.meta, schema::kMetaLastSeq, seq); !s) return s;
  return txn.put(dbs_.meta, schema::kMetaHlcHighWater, hw);
}

}  // namespace chorus::storage::internal
