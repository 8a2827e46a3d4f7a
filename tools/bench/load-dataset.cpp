#include "tools/bench/load-dataset.h"

#include <algorithm>
#include <cstdlib>
#include <numeric>

namespace chorus::bench {

Dataset::Dataset(uint64_t seed, uint64_t reviews) : seed_(seed), total_(reviews) {
  uint64_t top = std::max<uint64_t>(1, reviews / 10);
  uint64_t sum = 0;
  for (uint64_t k = 1; sum < reviews; ++k) {
    uint64_t size = std::min(std::max<uint64_t>(1, top / k), reviews - sum);
    starts_.push_back(sum);
    sizes_.push_back(uint32_t(size));
    sum += size;
  }
  if (total_ > 0) {
    Rng rng(seed ^ 0x6c6f6164ull);  // "load"
    a_ = rng.next() % total_ | 1;
    while (std::gcd(a_, total_) != 1) ++a_;
    b_ = rng.below(total_);
  }
}

std::string Dataset::productName(size_t product) const {
  return "s" + std::to_string(seed_) + "-p" + std::to_string(product + 1);
}

std::string Dataset::authorName(uint32_t slot) { return "u" + std::to_string(slot); }

DatasetKey Dataset::keyAt(uint64_t index) const {
  auto it = std::upper_bound(starts_.begin(), starts_.end(), index);
  size_t p = size_t(it - starts_.begin()) - 1;
  return {uint32_t(p), uint32_t(index - starts_[p])};
}

std::vector<uint32_t> Dataset::productsNearSize(uint32_t size) const {
  std::vector<uint32_t> out;
  if (sizes_.empty()) return out;
  uint32_t best = sizes_[0];
  for (uint32_t s : sizes_) {
    if (std::llabs(int64_t(s) - int64_t(size)) < std::llabs(int64_t(best) - int64_t(size)))
      best = s;
  }
  for (size_t p = 0; p < sizes_.size(); ++p) {
    if (sizes_[p] == best) out.push_back(uint32_t(p));
  }
  return out;
}

WriteRequest Dataset::put(const DatasetKey& key, uint64_t version, size_t bodyBytes) const {
  return put(productName(key.product), authorName(key.slot), version, bodyBytes);
}

WriteRequest Dataset::put(std::string product, std::string author, uint64_t version,
                          size_t bodyBytes) {
  static const std::string kFiller =
      "Fits well, good value, arrived on time and works as described; would buy again. ";
  WriteRequest r;
  r.op = WriteOp::kPut;
  uint64_t h = std::hash<std::string>{}(author) ^ (version * 0x9E3779B97F4A7C15ull);
  r.rating = uint32_t(1 + h % 5);
  r.title = "Review by " + author + " v" + std::to_string(version);
  r.body.reserve(bodyBytes);
  r.body = r.title + ": ";
  while (r.body.size() < bodyBytes) r.body += kFiller;
  r.body.resize(bodyBytes);
  r.product = std::move(product);
  r.author = std::move(author);
  return r;
}

}  // namespace chorus::bench
