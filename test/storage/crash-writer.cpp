// Helper of crash-test.cpp: writes reviews and votes into a store until it
// is killed, printing one line per acknowledged write, after its callback
// ran (i.e. after the commit that holds it):
//   W <product> <author> <title>   a new review
//   V <product> <author> <voter>   a helpful vote on an acknowledged review
//   E <message>                    a write failed (the parent fails the test)
// Usage: storage-crash-writer <data dir> <seed>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <semaphore>
#include <string>
#include <vector>

#include "storage/store.h"

using namespace chorus;

namespace {

// One write(2) per line: a line is either wholly in the pipe or not at all.
void emit(const std::string& line) {
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(1, p, left);
    if (n <= 0) std::_Exit(3);
    p += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <data dir> <seed>\n", argv[0]);
    return 2;
  }
  std::string seed = argv[2];
  std::mt19937_64 rng(std::strtoull(argv[2], nullptr, 10));
  storage::Options options;
  options.dir = argv[1];
  options.maxBatch = 16;  // many commits: many moments to be killed in
  auto store = storage::Store::open(options);
  if (!store) {
    emit("E " + store.error().toString() + "\n");
    return 1;
  }
  emit("ready\n");

  std::counting_semaphore<> window(48);
  std::mutex mu;
  std::vector<crdt::ReviewKey> acked;  // guarded by mu
  for (uint64_t i = 0; i < 200'000; ++i) {
    window.acquire();
    crdt::ReviewKey target;
    {
      std::lock_guard lock(mu);
      if (!acked.empty() && rng() % 4 == 0) target = acked[rng() % acked.size()];
    }
    std::string id = seed + "-" + std::to_string(i);
    if (target.product.empty()) {
      crdt::ReviewKey key{"sku-" + std::to_string(rng() % 50), "w-" + id};
      std::string title = "t-" + id;
      (*store)->mutate(
          key,
          [title](crdt::ReviewDoc& doc, crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
            return doc.write(static_cast<uint8_t>(1 + title.size() % 5), title,
                             std::string(200, 'b'), clock.now());
          },
          [&, key, title](Result<storage::Applied> r) {
            if (!r) {
              emit("E " + r.error().toString() + "\n");
            } else {
              emit("W " + key.product + " " + key.author + " " + title + "\n");
              std::lock_guard lock(mu);
              acked.push_back(key);
            }
            window.release();
          });
    } else {
      std::string voter = "v-" + id;
      (*store)->mutate(
          target,
          [voter](crdt::ReviewDoc& doc, crdt::HybridClock& clock) -> Result<crdt::ReviewDoc> {
            return doc.vote(voter, clock.replica());
          },
          [&, target, voter](Result<storage::Applied> r) {
            if (!r) {
              emit("E " + r.error().toString() + "\n");
            } else {
              emit("V " + target.product + " " + target.author + " " + voter + "\n");
            }
            window.release();
          });
    }
  }
  return 0;
}
