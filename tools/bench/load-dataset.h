// chorus-bench load: the preloaded dataset, a pure function of (seed,
// number of reviews). Keys are regenerated, never fetched, so a later run
// with the same --seed and --preload-size finds the same reviews.
//
// Product sizes follow Zipf (exponent 1): the product of rank k (1-based)
// has max(1, floor(top / k)) reviews with top = max(1, N / 10), products
// added until the sizes sum to N (the last one cut short). At N = 1M: one
// product of 100,000 reviews, one of 50,000, ..., ten of exactly 100
// (ranks 991-1000), 13,220 products in all, half with 15 or fewer.
// Product of rank k is "s<seed>-p<k>"; its reviews are by authors "u0",
// "u1", ... A preload writes them in a seeded pseudo-random order (an
// affine bijection over 0..N-1), so products interleave as in real traffic.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "api/types.h"

namespace chorus::bench {

struct DatasetKey {
  uint32_t product = 0;  // rank - 1
  uint32_t slot = 0;     // author "u<slot>"
};

class Dataset {
 public:
  Dataset(uint64_t seed, uint64_t reviews);

  uint64_t reviews() const { return total_; }
  size_t products() const { return sizes_.size(); }
  uint32_t productSize(size_t product) const { return sizes_[product]; }
  std::string productName(size_t product) const;
  static std::string authorName(uint32_t slot);

  // The review at `index` (0 <= index < reviews()) in product-major order.
  DatasetKey keyAt(uint64_t index) const;
  // The i-th review a preload writes: a bijection of 0..reviews()-1.
  DatasetKey preloadKey(uint64_t i) const { return keyAt((a_ * i + b_) % total_); }
  // The products whose size is the one nearest `size` (at least one when
  // the dataset is not empty).
  std::vector<uint32_t> productsNearSize(uint32_t size) const;

  // A put of review `key` (content version `version`, body of `bodyBytes`).
  WriteRequest put(const DatasetKey& key, uint64_t version, size_t bodyBytes) const;
  // A put of a review by `author` of `product`, not part of the dataset.
  static WriteRequest put(std::string product, std::string author, uint64_t version,
                          size_t bodyBytes);

 private:
  uint64_t seed_;
  uint64_t total_ = 0;
  std::vector<uint32_t> sizes_;
  std::vector<uint64_t> starts_;  // starts_[p] = reviews of products before p
  uint64_t a_ = 1, b_ = 0;        // preload order
};

// splitmix64: a small seeded generator, one per thread.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return n == 0 ? 0 : next() % n; }  // [0, n)
  double unit() { return double(next() >> 11) * 0x1.0p-53; }      // [0, 1)

 private:
  uint64_t state_;
};

}  // namespace chorus::bench
