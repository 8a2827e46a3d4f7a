// Store on LMDB: construction, the helpers every part of the implementation
// shares, and Store's non-virtual members. The parts, by job, and the
// threads: storage/internal/store-impl.h.
#include "storage/store.h"

#include "storage/internal/store-impl.h"
#include "storage/key-schema.h"

namespace chorus::storage {

namespace internal {

Error corruption(const std::string& what) {
  return makeError(ErrorCode::kCorruption,
                   what +
                       ". Restore the data dir from a backup, or move it aside and let the "
                       "node resync from its peers");
}

Status adoptMapSize(Env& env, ResizeGate& gate) {
  gate.beginExclusive();
  Status s = env.setMapSize(0);
  gate.endExclusive();
  return s;
}

Status ReadTxn::begin(Env& env) {
  for (int attempt = 0;; ++attempt) {
    gate_.enterShared();
    entered_ = true;
    Status s = txn_.begin(env, MDB_RDONLY);
    if (s) return s;
    gate_.exitShared();
    entered_ = false;
    if (!txn_.mapResized() || attempt >= 3) return s;
    if (auto adopted = adoptMapSize(env, gate_); !adopted) return adopted;
  }
}

Facts factsOf(const crdt::ReviewDoc& doc) {
  Facts f;
  f.live = doc.exists();
  if (f.live) {
    f.rating = doc.content().value().rating;
    f.hlc = doc.content().stamp().hlc;
    f.helpful = doc.helpfulCount();
  }
  return f;
}

void addFacts(SummaryDelta& d, const Facts& f, int64_t sign) {
  if (!f.live) return;
  d[0] += sign;
  d[static_cast<size_t>(f.rating)] += sign;  // histogram[rating-1] sits at 1 + rating - 1
  d[6] += sign * f.rating;
  d[7] += sign * static_cast<int64_t>(f.helpful);
}

void addFacts(ProductSummary& s, const Facts& f) {
  if (!f.live) return;
  ++s.count;
  ++s.histogram[f.rating - 1u];
  s.ratingSum += f.rating;
  s.helpfulTotal += f.helpful;
}

bool sameSummary(const ProductSummary& a, const ProductSummary& b) {
  return a.count == b.count && a.histogram == b.histogram && a.ratingSum == b.ratingSum &&
         a.helpfulTotal == b.helpfulTotal;
}

void addListingKeys(std::vector<std::string>& out, const crdt::ReviewKey& key, const Facts& f) {
  if (!f.live) return;
  out.push_back(schema::ratingSortKey(key, f.rating, f.hlc));
}

Result<crdt::ReviewDoc> decodeStored(std::string_view canonical, const crdt::ReviewKey& key) {
  auto doc = crdt::ReviewDoc::decode(canonical);
  if (!doc) {
    return corruption("stored review (" + schema::describeKey(key) +
                      ") passes its checksum but does not decode: " + doc.error().message);
  }
  if (doc->key() != key) {
    return corruption("stored review under (" + schema::describeKey(key) +
                      ") holds the review of (" + schema::describeKey(doc->key()) + ")");
  }
  return doc;
}

StoreImpl::StoreImpl(Options options, LockFile lock, Env env, Dbs dbs, crdt::ReplicaId replica,
                     crdt::Hlc highWater, uint64_t lastSeq)
    : options_(std::move(options)),
      lock_(std::move(lock)),
      env_(std::move(env)),
      dbs_(dbs),
      replica_(replica),
      clock_(replica, options_.clock, highWater, options_.maxDriftMillis),
      seq_(lastSeq),
      committedSeq_(lastSeq) {
  writer_ = std::thread([this] { run(); });
}

StoreImpl::~StoreImpl() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  writer_.join();
}

}  // namespace internal

Result<Applied> Store::mutateSync(crdt::ReviewKey key, Mutation mutation) {
  std::promise<Result<Applied>> promise;
  auto future = promise.get_future();
  mutate(std::move(key), std::move(mutation),
         [&promise](Result<Applied> r) { promise.set_value(std::move(r)); });
  return future.get();
}

Result<Applied> Store::mergeSync(crdt::ReviewDoc remote) {
  std::promise<Result<Applied>> promise;
  auto future = promise.get_future();
  merge(std::move(remote), [&promise](Result<Applied> r) { promise.set_value(std::move(r)); });
  return future.get();
}

Result<ProductPage> Store::productPage(const std::string& product, Order order,
                                       const std::string& cursor, size_t limit) {
  auto s = summary(product);
  if (!s) return s.error();
  auto page = listProduct(product, order, cursor, limit);
  if (!page) return page.error();
  return ProductPage{*s, std::move(page).value()};
}

}  // namespace chorus::storage
