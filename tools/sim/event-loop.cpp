#include "tools/sim/event-loop.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace chorus::sim {

namespace {

uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

Rng::Rng(uint64_t seed) {
  for (auto& s : s_) s = splitmix(seed);
}

uint64_t Rng::next() {
  uint64_t result = rotl(s_[1] * 5, 7) * 9;
  uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

uint64_t Rng::below(uint64_t n) {
  // Lemire's multiply-shift; the bias for n far below 2^64 is negligible here.
  __extension__ using U128 = unsigned __int128;
  return uint64_t((U128(next()) * U128(n)) >> 64);
}

double Rng::unit() { return double(next() >> 11) * 0x1.0p-53; }

double Rng::exponential(double mean) { return -mean * std::log1p(-unit()); }

Rng Rng::fork(uint64_t salt) { return Rng(next() ^ (salt * 0x9e3779b97f4a7c15ull)); }

TraceHash::TraceHash() {
  if (sodium_init() < 0) std::abort();
  crypto_generichash_init(&state_, nullptr, 0, 32);
}

void TraceHash::add(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  uint64_t words[4] = {a, b, c, d};
  unsigned char bytes[32];
  for (int w = 0; w < 4; ++w) {
    for (int i = 0; i < 8; ++i) bytes[8 * w + i] = static_cast<unsigned char>(words[w] >> (8 * i));
  }
  crypto_generichash_update(&state_, bytes, sizeof bytes);
  ++events_;
}

void TraceHash::addBytes(std::string_view bytes) {
  crypto_generichash_update(&state_, reinterpret_cast<const unsigned char*>(bytes.data()),
                            bytes.size());
}

std::string TraceHash::hex() const {
  crypto_generichash_state copy = state_;
  unsigned char out[32];
  crypto_generichash_final(&copy, out, sizeof out);
  static const char* digits = "0123456789abcdef";
  std::string text;
  for (int i = 0; i < 16; ++i) {
    text += digits[out[i] >> 4];
    text += digits[out[i] & 15];
  }
  return text;
}

void EventLoop::at(Micros time, Task task) {
  uint32_t slot;
  if (!free_.empty()) {
    slot = free_.back();
    free_.pop_back();
    tasks_[slot] = std::move(task);
  } else {
    slot = uint32_t(tasks_.size());
    tasks_.push_back(std::move(task));
  }
  heap_.push_back(Entry{std::max(time, now_), seq_++, slot});
  std::push_heap(heap_.begin(), heap_.end(), later);
}

void EventLoop::runUntil(Micros until) {
  stopped_ = false;
  while (!heap_.empty() && !stopped_) {
    Entry top = heap_.front();
    if (top.time >= until) break;
    std::pop_heap(heap_.begin(), heap_.end(), later);
    heap_.pop_back();
    now_ = top.time;
    Task task = std::move(tasks_[top.slot]);
    tasks_[top.slot] = nullptr;
    free_.push_back(top.slot);
    ++eventsRun_;
    task();
  }
  if (!stopped_ && now_ < until) now_ = until;
}

}  // namespace chorus::sim
