// Reads of the LMDB store: documents, product and author listings,
// summaries, the Merkle tree, stats. Each call runs in its own read
// transaction on the calling thread (any thread).
#include <algorithm>
#include <cstdio>
#include <functional>

#include "storage/internal/store-impl.h"
#include "storage/key-schema.h"
#include "storage/merkle.h"

namespace chorus::storage::internal {

Result<std::optional<crdt::ReviewDoc>> StoreImpl::get(const crdt::ReviewKey& key) {
  if (auto s = schema::validateKey(key); !s) return s.error();
  ReadTxn rt(gate_);
  if (auto s = rt.begin(env_); !s) return s.error();
  return readDoc(rt.txn(), key);
}

Result<std::optional<std::string>> StoreImpl::getEncoded(const crdt::ReviewKey& key) {
  if (auto s = schema::validateKey(key); !s) return s.error();
  ReadTxn rt(gate_);
  if (auto s = rt.begin(env_); !s) return s.error();
  std::string_view value;
  auto found = rt.txn().get(dbs_.documents, schema::docKey(key), &value);
  if (!found) return found.error();
  if (!*found) return std::optional<std::string>();
  auto rec = schema::parseDocRecord(value, key);
  if (!rec) return rec.error();
  return std::optional<std::string>(std::string(rec->canonical));
}

// The product's range of `listings` in the order's key order (backwards for
// the highest rating): `limit` positions and the next one (the cursor), and
// each position's document looked up and decoded. O(limit + log n) for a
// product of n reviews, on every page.
Result<Page> StoreImpl::listProduct(const std::string& product, Order order,
                                    const std::string& cursor, size_t limit) {
  ReadTxn rt(gate_);
  if (auto s = rt.begin(env_); !s) return s.error();
  return readProductPage(rt.txn(), product, order, cursor, limit);
}

Result<ProductPage> StoreImpl::productPage(const std::string& product, Order order,
                                           const std::string& cursor, size_t limit) {
  if (auto s = schema::validateKey({product, "-"}); !s) return s.error();
  ReadTxn rt(gate_);
  if (auto s = rt.begin(env_); !s) return s.error();
  auto summary = readSummary(rt.txn(), schema::aggregateKey(product));
  if (!summary) return summary.error();
  auto page = readProductPage(rt.txn(), product, order, cursor, limit);
  if (!page) return page.error();
  return ProductPage{*summary, std::move(page).value()};
}

Result<ProductSummary> StoreImpl::summary(const std::string& product) {
  if (auto s = schema::validateKey({product, "-"}); !s) return s.error();
  ReadTxn rt(gate_);
  if (auto s = rt.begin(env_); !s) return s.error();
  return readSummary(rt.txn(), schema::aggregateKey(product));
}

// The author's range of Merkle leaf entries (merkle.h: the key hash
// starts with a hash of the author), which names every review of the
// author and of authors sharing that 32-bit hash: filtered, ordered by
// product in memory, then each looked up in `documents` until a page of
// live ones is found. O(n log n) for an author of n reviews, on every page.
Result<Page> StoreImpl::listAuthor(const std::string& author, const std::string& cursor,
                                   size_t limit) {
  if (auto s = schema::validateKey({"-", author}); !s) return s.error();
  if (limit == 0) return makeError(ErrorCode::kInvalidArgument, "listing limit must be >= 1");
  std::string cursorPrefix = schema::idPrefix(author);
  auto start = cursorStart(cursor, 'a', cursorPrefix);
  if (!start) return start.error();
  std::string_view startProduct;
  if (!start->empty()) startProduct = std::string_view(*start).substr(cursorPrefix.size());

  ReadTxn rt(gate_);
  if (auto s = rt.begin(env_); !s) return s.error();
  auto cur = Cursor::open(rt.txn(), dbs_.leafEntries);
  if (!cur) return cur.error();
  std::vector<std::pair<std::string, std::string_view>> products;  // product, docKey
  std::string prefix = schema::authorLeafPrefix(author);
  std::string_view k;
  for (auto at = cur->seekAtLeast(prefix, &k, nullptr);; at = cur->seek(MDB_NEXT, &k, nullptr)) {
    if (!at) return at.error();
    if (!*at || !k.starts_with(prefix)) break;
    auto key = k.size() > 8 ? schema::parseDocKey(k.substr(8)) : std::nullopt;
    if (!key) return corruption("malformed Merkle leaf entry");
    if (key->author != author || key->product < startProduct) continue;
    products.emplace_back(std::move(key->product), k.substr(8));
  }
  std::sort(products.begin(), products.end());
  Page page;
  for (const auto& [product, docKey] : products) {
    std::string_view value;
    auto found = rt.txn().get(dbs_.documents, docKey, &value);
    if (!found) return found.error();
    crdt::ReviewKey key{product, author};
    auto header = *found ? schema::peekListingHeader(value) : std::nullopt;
    if (!header) {
      return corruption("a Merkle leaf entry names (" + schema::describeKey(key) +
                        ") but no such review is stored, or its listing header is malformed");
    }
    if (!header->live) continue;
    if (page.reviews.size() == limit) {
      page.nextCursor = schema::toHex("a" + cursorPrefix + product);
      break;
    }
    auto doc = decodeListed(key, value);
    if (!doc) return doc.error();
    page.reviews.push_back(std::move(doc).value());
  }
  return page;
}

Result<Hash> StoreImpl::merkleRoot() {
  ReadTxn rt(gate_);
  if (auto s = rt.begin(env_); !s) return s.error();
  return readNode(rt.txn(), 0, 0);
}

Result<std::vector<Hash>> StoreImpl::merkleChildren(int level, uint64_t index) {
  if (level < 0 || level >= kDepth || index >= (uint64_t{1} << (4 * level))) {
    return makeError(ErrorCode::kInvalidArgument,
                     "no inner Merkle node (level " + std::to_string(level) + ", index " +
                         std::to_string(index) + "); levels are 0-" + std::to_string(kDepth - 1) +
                         " with 16^level nodes each");
  }
  ReadTxn rt(gate_);
  if (auto s = rt.begin(env_); !s) return s.error();
  std::vector<Hash> children(kFanout, Hash{});
  if (level + 1 == kDepth) {  // leaf sums, each at the head of its leaf's range
    for (int i = 0; i < kFanout; ++i) {
      auto h = readNode(rt.txn(), kDepth, index * kFanout + static_cast<uint64_t>(i));
      if (!h) return h.error();
      children[static_cast<size_t>(i)] = *h;
    }
    return children;
  }
  auto cursor = Cursor::open(rt.txn(), dbs_.merkle);
  if (!cursor) return cursor.error();
  std::string first = schema::merkleNodeKey(level + 1, index * kFanout);
  std::string_view k, v;
  auto at = cursor->seekAtLeast(first, &k, &v);
  while (true) {
    if (!at) return at.error();
    if (!*at || k.size() != first.size() || k[0] != first[0]) break;
    uint64_t child = schema::getBe64(std::string(4, '\0') + std::string(k.substr(1)));
    if (child >= (index + 1) * kFanout) break;
    if (v.size() != 16) return corruption("Merkle node value of wrong size");
    std::copy(v.begin(), v.end(),
              reinterpret_cast<char*>(children[child - index * kFanout].data()));
    at = cursor->seek(MDB_NEXT, &k, &v);
  }
  return children;
}

Result<std::vector<LeafEntry>> StoreImpl::leafEntries(uint64_t leafIndex) {
  if (leafIndex >= kMerkleLeaves) {
    return makeError(ErrorCode::kInvalidArgument, "leaf index " + std::to_string(leafIndex) +
                                                      " out of range (0-" +
                                                      std::to_string(kMerkleLeaves - 1) + ")");
  }
  ReadTxn rt(gate_);
  if (auto s = rt.begin(env_); !s) return s.error();
  auto cursor = Cursor::open(rt.txn(), dbs_.leafEntries);
  if (!cursor) return cursor.error();
  std::string prefix = schema::leafPrefix(static_cast<uint32_t>(leafIndex));
  std::vector<LeafEntry> out;
  std::string_view k, v;
  auto at = cursor->seekAtLeast(prefix, &k, &v);
  while (true) {
    if (!at) return at.error();
    if (!*at || !k.starts_with(prefix)) break;
    if (k.size() == schema::kLeafSumKeyBytes) {  // the leaf's sum
      at = cursor->seek(MDB_NEXT, &k, &v);
      continue;
    }
    auto key = k.size() > 8 ? schema::parseDocKey(k.substr(8)) : std::nullopt;
    if (!key || v.size() != 16) return corruption("malformed Merkle leaf entry");
    LeafEntry e{schema::getBe64(k), Hash{}, std::move(*key)};
    std::copy(v.begin(), v.end(), reinterpret_cast<char*>(e.digest.data()));
    out.push_back(std::move(e));
    at = cursor->seek(MDB_NEXT, &k, &v);
  }
  return out;
}

StoreStats StoreImpl::stats() {
  StoreStats s;
  s.commits = commits_.load();
  s.writes = writes_.load();
  s.mapGrowths = mapGrowths_.load();
  s.refusedStamps = refused_.load();
  ReadTxn rt(gate_);
  if (rt.begin(env_)) {
    if (auto n = rt.txn().entries(dbs_.documents)) s.documents = *n;
    if (auto n = env_.mapSize()) s.mapBytes = *n;
    if (auto n = env_.usedBytes()) s.usedBytes = *n;
  }
  return s;
}

Result<std::optional<crdt::ReviewDoc>> StoreImpl::readDoc(Txn& txn, const crdt::ReviewKey& key) {
  std::string_view value;
  auto found = txn.get(dbs_.documents, schema::docKey(key), &value);
  if (!found) return found.error();
  if (!*found) return std::optional<crdt::ReviewDoc>();
  auto rec = schema::parseDocRecord(value, key);
  if (!rec) return rec.error();
  auto doc = decodeStored(rec->canonical, key);
  if (!doc) return doc.error();
  return std::optional<crdt::ReviewDoc>(std::move(doc).value());
}

Result<ProductSummary> StoreImpl::readSummary(Txn& txn, const std::string& aggregateKey) {
  std::string_view value;
  auto found = txn.get(dbs_.products, aggregateKey, &value);
  if (!found) return found.error();
  if (!*found) return ProductSummary{};
  auto s = schema::decodeSummary(value);
  if (!s) return corruption("product aggregate record has the wrong size");
  return *s;
}

// A node sum: inner nodes in `merkle`, leaf sums in `leaf-entries`.
Result<Hash> StoreImpl::readNode(Txn& txn, int level, uint64_t index) {
  std::string_view value;
  auto found = level == kDepth ? txn.get(dbs_.leafEntries,
                                         schema::leafPrefix(static_cast<uint32_t>(index)), &value)
                               : txn.get(dbs_.merkle, schema::merkleNodeKey(level, index), &value);
  if (!found) return found.error();
  Hash h{};
  if (!*found) return h;
  if (value.size() != h.size()) return corruption("Merkle node value of wrong size");
  std::copy(value.begin(), value.end(), reinterpret_cast<char*>(h.data()));
  return h;
}

// Where a listing resumes: the position in `cursor` ("" = from the
// start). A cursor is hex of tag || position, and every position of a
// listing starts with `prefix`, so a cursor of another listing is refused.
Result<std::string> StoreImpl::cursorStart(const std::string& cursor, char tag,
                                           const std::string& prefix) {
  if (cursor.empty()) return std::string();
  auto raw = schema::fromHex(cursor);
  if (!raw || raw->size() <= 1 + prefix.size() || (*raw)[0] != tag ||
      raw->compare(1, prefix.size(), prefix) != 0) {
    return makeError(ErrorCode::kInvalidArgument,
                     "listing cursor was not returned by this listing (another product, "
                     "author or order, or altered); start again with an empty cursor");
  }
  return raw->substr(1);
}

// Decodes a review a listing returns, checking its listing header against
// the state (the checksum does not cover the header).
Result<crdt::ReviewDoc> StoreImpl::decodeListed(const crdt::ReviewKey& key,
                                                std::string_view value) {
  auto rec = schema::parseDocRecord(value, key);
  if (!rec) return rec.error();
  auto doc = decodeStored(rec->canonical, key);
  if (!doc) return doc.error();
  if (schema::listingHeaderOf(*doc) != rec->header) {
    return corruption("the listing header of stored review (" + schema::describeKey(key) +
                      ") does not match its state");
  }
  return doc;
}

namespace {

// One rating's range of `listings` (P || 0x02 || rating), read backwards:
// newest first, and within one HLC by author ascending (the run of equal
// HLCs, normally one review, is read whole and reordered).
class NewestStream {
 public:
  // Positions at the last entry with hlc <= start->hlc (or the range's
  // end); a run at exactly start->hlc keeps authors >= start->author.
  static Result<NewestStream> open(Txn& txn, MDB_dbi dbi, std::string range,
                                   const std::optional<schema::ListingPosition>& start) {
    NewestStream s;
    s.range_ = std::move(range);
    auto cur = Cursor::open(txn, dbi);
    if (!cur) return cur.error();
    s.cur_ = std::move(cur).value();
    std::string seekTo = s.range_;
    if (start) schema::putBe64(seekTo, start->hlc.bits);
    std::optional<std::string> end = schema::prefixEnd(seekTo);
    CHORUS_ASSERT(end.has_value(), "a product prefix never ends in all 0xff bytes");
    Result<bool> at = s.cur_.seekAtLeast(*end, &s.k_, nullptr);
    if (at && *at) {
      at = s.cur_.seek(MDB_PREV, &s.k_, nullptr);
    } else if (at) {
      at = s.cur_.seek(MDB_LAST, &s.k_, nullptr);
    }
    if (!at) return at.error();
    s.valid_ = *at && s.k_.starts_with(s.range_);
    if (start) {
      s.startHlc_ = start->hlc;
      s.startAuthor_ = start->key.author;
      s.filterStart_ = true;
    }
    if (auto f = s.fill(); !f) return f.error();
    return s;
  }

  bool empty() const { return run_.empty(); }
  crdt::Hlc hlc() const { return runHlc_; }
  const std::string& author() const { return run_.back(); }
  Status pop() {
    run_.pop_back();
    return fill();
  }

 private:
  // Reads the next run of equal HLCs when the current one is used up.
  Status fill() {
    size_t at = range_.size();
    while (run_.empty() && valid_) {
      if (k_.size() < at + 8 + 1)
        return corruption("malformed listing position " + schema::toHex(k_));
      runHlc_ = crdt::Hlc{schema::getBe64(k_.substr(at))};
      while (valid_ && k_.size() > at + 8 && schema::getBe64(k_.substr(at)) == runHlc_.bits) {
        std::string author(k_.substr(at + 8));
        if (!filterStart_ || runHlc_ != startHlc_ || author >= startAuthor_) {
          run_.push_back(std::move(author));
        }
        auto next = cur_.seek(MDB_PREV, &k_, nullptr);
        if (!next) return next.error();
        valid_ = *next && k_.starts_with(range_);
      }
      filterStart_ = false;
      std::sort(run_.begin(), run_.end(), std::greater<>());  // smallest author last
    }
    return okStatus();
  }

  std::string range_;
  Cursor cur_;
  std::string_view k_;
  bool valid_ = false;
  std::vector<std::string> run_;  // authors of the current run, descending
  crdt::Hlc runHlc_;
  bool filterStart_ = false;
  crdt::Hlc startHlc_;
  std::string startAuthor_;
};

}  // namespace

Result<Page> StoreImpl::readProductPage(Txn& txn, const std::string& product, Order order,
                                        const std::string& cursor, size_t limit) {
  if (auto s = schema::validateKey({product, "-"}); !s) return s.error();
  if (limit == 0) return makeError(ErrorCode::kInvalidArgument, "listing limit must be >= 1");
  bool byRating = order != Order::kNewest;
  bool descending = order == Order::kHighestRating;
  char tag = !byRating ? 'n' : descending ? 'h' : 'l';
  std::string cursorPrefix =
      schema::productRangePrefix(product, byRating ? schema::kListRating : schema::kListNewest);
  auto start = cursorStart(cursor, tag, cursorPrefix);
  if (!start) return start.error();
  std::string ratingPrefix = schema::productRangePrefix(product, schema::kListRating);

  Page page;
  // Looks up and checks the review at a position; false once the page is
  // full (then `position` becomes the cursor).
  auto take = [&](const crdt::ReviewKey& key, uint8_t rating, crdt::Hlc hlc,
                  const std::string& position) -> Result<bool> {
    if (page.reviews.size() == limit) {
      page.nextCursor = schema::toHex(std::string(1, tag) + position);
      return false;
    }
    std::string_view value;
    auto found = txn.get(dbs_.documents, schema::docKey(key), &value);
    if (!found) return found.error();
    if (!*found) {
      return corruption("a listing position names (" + schema::describeKey(key) +
                        "), but no such review is stored");
    }
    auto doc = decodeListed(key, value);
    if (!doc) return doc.error();
    schema::ListingHeader header = schema::listingHeaderOf(*doc);
    if (!header.live || header.hlc != hlc || header.rating != rating) {
      return corruption("the listing position of (" + schema::describeKey(key) +
                        ") does not match the stored review");
    }
    page.reviews.push_back(std::move(doc).value());
    return true;
  };

  if (!byRating) {
    // Newest first: the five rating ranges merged by (hlc desc, author
    // asc); the cursor is a newest-order position, not a stored key.
    std::optional<schema::ListingPosition> from;
    if (!start->empty()) {
      from = schema::parseListingKey(*start);
      if (!from || from->key.product != product) {
        return makeError(ErrorCode::kInvalidArgument,
                         "listing cursor was not returned by this listing (altered); start "
                         "again with an empty cursor");
      }
    }
    std::vector<NewestStream> streams;
    for (uint8_t rating = 1; rating <= 5; ++rating) {
      auto stream =
          NewestStream::open(txn, dbs_.listings, ratingPrefix + static_cast<char>(rating), from);
      if (!stream) return stream.error();
      streams.push_back(std::move(stream).value());
    }
    for (;;) {
      NewestStream* best = nullptr;
      uint8_t bestRating = 0;
      for (uint8_t r = 0; r < 5; ++r) {
        NewestStream& s = streams[r];
        if (s.empty()) continue;
        if (best == nullptr || s.hlc() > best->hlc() ||
            (s.hlc() == best->hlc() && s.author() < best->author())) {
          best = &s;
          bestRating = static_cast<uint8_t>(r + 1);
        }
      }
      if (best == nullptr) break;
      crdt::ReviewKey key{product, best->author()};
      auto more = take(key, bestRating, best->hlc(), schema::newestSortKey(key, best->hlc()));
      if (!more) return more.error();
      if (!*more) break;
      if (auto s = best->pop(); !s) return s.error();
    }
    return page;
  }

  // By rating: one range, forwards (lowest) or backwards (highest). The
  // first position: the cursor's (or, backwards, the last one at or before
  // it), else the start (end) of the product's range.
  auto cur = Cursor::open(txn, dbs_.listings);
  if (!cur) return cur.error();
  std::string_view k, v;
  Result<bool> at = false;
  if (!descending) {
    at = cur->seekAtLeast(start->empty() ? ratingPrefix : *start, &k, &v);
  } else {
    std::optional<std::string> end = start->empty() ? schema::prefixEnd(ratingPrefix) : *start;
    CHORUS_ASSERT(end.has_value(), "a product prefix ends in a tag byte below 0xff");
    at = cur->seekAtLeast(*end, &k, &v);
    if (at && *at && (start->empty() || k != *start)) {
      at = cur->seek(MDB_PREV, &k, &v);
    } else if (at && !*at) {
      at = cur->seek(MDB_LAST, &k, &v);
    }
  }
  for (;; at = cur->seek(descending ? MDB_PREV : MDB_NEXT, &k, &v)) {
    if (!at) return at.error();
    if (!*at || !k.starts_with(ratingPrefix)) break;
    auto position = schema::parseListingKey(k);
    if (!position || position->key.product != product || position->tag != schema::kListRating ||
        !v.empty()) {
      return corruption("malformed listing position " + schema::toHex(k));
    }
    auto more = take(position->key, position->rating, position->hlc, std::string(k));
    if (!more) return more.error();
    if (!*more) break;
  }
  return page;
}

}  // namespace chorus::storage::internal

namespace chorus::storage::internal {

namespace {
std::string replicaHex(crdt::ReplicaId r) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(r));
  return buf;
}
}  // namespace

// One range read of `changes` from since + 1: limit + 1 entries (the extra
// one says whether more follow), each document looked up only with
// includeDocs. The snapshot's `last-seq` bounds `since` and is the cursor
// when nothing follows.
Result<ChangesPage> StoreImpl::changes(uint64_t since, size_t limit, bool includeDocs) {
  CHORUS_ASSERT(limit >= 1, "changes() needs a limit of at least 1");
  ReadTxn rt(gate_);
  if (auto s = rt.begin(env_); !s) return s.error();
  Txn& txn = rt.txn();
  std::string_view v;
  auto found = txn.get(dbs_.meta, schema::kMetaLastSeq, &v);
  if (!found) return found.error();
  if (!*found || v.size() != 8) return corruption("the change feed's last seq is missing");
  ChangesPage page;
  page.replica = replica_;
  page.lastSeq = schema::getLe64(v);
  if (since == kSinceNow) return page;
  if (since > page.lastSeq) {
    return makeError(ErrorCode::kInvalidArgument,
                     "since: " + std::to_string(since) + " is beyond this node's last seq " +
                         std::to_string(page.lastSeq) + " (replica " + replicaHex(replica_) +
                         "): a cursor of another node, or of a data dir since replaced; "
                         "read again from 0");
  }
  auto cursor = Cursor::open(txn, dbs_.changes);
  if (!cursor) return cursor.error();
  std::string_view k;
  auto at = cursor->seekAtLeast(schema::changeKey(since + 1), &k, &v);
  for (;; at = cursor->seek(MDB_NEXT, &k, &v)) {
    if (!at) return at.error();
    if (!*at) break;
    auto entry = schema::parseChange(k, v);
    auto key = entry ? schema::parseDocKey(entry->docKey) : std::nullopt;
    if (!key)
      return corruption("a change feed entry is malformed (seq key " + schema::toHex(k) + ")");
    if (entry->seq > page.lastSeq) {
      return corruption("a change feed entry has seq " + std::to_string(entry->seq) +
                        ", beyond the last seq " + std::to_string(page.lastSeq));
    }
    if (page.changes.size() == limit) {
      page.lastSeq = page.changes.back().seq;  // more follow
      break;
    }
    FeedEntry e;
    e.seq = entry->seq;
    e.deleted = !entry->live;
    if (includeDocs) {
      auto doc = readDoc(txn, *key);
      if (!doc) return doc.error();
      if (!*doc) {
        return corruption("the change feed names (" + schema::describeKey(*key) +
                          "), which is not stored");
      }
      e.doc = std::move(**doc);
    }
    e.key = std::move(*key);
    page.changes.push_back(std::move(e));
  }
  return page;
}

}  // namespace chorus::storage::internal
