// Shared by the fuzz targets of test/fuzz/: a failed property check, a byte
// reader for structured inputs, and one real store per process.
//
// Every target defines LLVMFuzzerTestOneInput. Built with -Dfuzz=true and
// clang it links libFuzzer (tools/fuzz); in the normal build it links
// replay-main.cpp and runs the committed corpus as a test.
#pragma once

#include <unistd.h>

#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "storage/store.h"

// A property the target checks on every input: a failure is a finding.
#define FUZZ_CHECK(cond, what)                                                          \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "fuzz: check failed at %s:%d: %s (%s)\n", __FILE__, __LINE__, \
                   #cond, std::string(what).c_str());                                   \
      std::abort();                                                                     \
    }                                                                                   \
  } while (false)

namespace chorus::fuzz {

// Reads fields off the front of a fuzz input; past the end every read
// returns zeros or empty strings, so any input is a valid sequence of fields.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  uint8_t byte() { return n_ == 0 ? 0 : (--n_, *p_++); }
  uint16_t u16() { return static_cast<uint16_t>(byte() | (byte() << 8)); }
  uint32_t u32() { return uint32_t{u16()} | (uint32_t{u16()} << 16); }
  // A 2-byte little-endian length, then up to that many bytes.
  std::string field() {
    size_t len = std::min<size_t>(u16(), n_);
    std::string out(reinterpret_cast<const char*>(p_), len);
    p_ += len;
    n_ -= len;
    return out;
  }
  size_t left() const { return n_; }

 private:
  const uint8_t* p_;
  size_t n_;
};

// The writer of Reader's format, for the corpus generator.
inline void putU16(std::string& out, uint16_t v) {
  out.push_back(static_cast<char>(v & 0xff));
  out.push_back(static_cast<char>(v >> 8));
}
inline void putU32(std::string& out, uint32_t v) {
  putU16(out, static_cast<uint16_t>(v & 0xffff));
  putU16(out, static_cast<uint16_t>(v >> 16));
}
inline void putField(std::string& out, std::string_view s) {
  putU16(out, static_cast<uint16_t>(s.size()));
  out.append(s);
}

// The reviews a fuzz store starts with; make-corpus.cpp records anti-entropy
// sessions against a store holding the same, so seed messages reach deep.
inline void seedStore(storage::Store& store) {
  for (int i = 0; i < 64; ++i) {
    crdt::ReviewDoc doc({"sku-" + std::to_string(i % 8), "user-" + std::to_string(i)});
    (void)doc.write(static_cast<uint8_t>(1 + i % 5), "title", "body",
                    crdt::Stamp{crdt::Hlc::fromParts(1000 + i, 0), 7});
    if (i % 3 == 0) (void)doc.tag("tag-" + std::to_string(i % 4), 7);
    if (i % 4 == 0) (void)doc.vote("voter-" + std::to_string(i % 5), 9);
    auto r = store.mergeSync(doc);
    FUZZ_CHECK(r.ok(), r.ok() ? "" : r.error().toString());
  }
}

// One real LMDB store in a temporary directory, opened at first use and
// removed at exit, with a few reviews in it so that anti-entropy messages
// meet a non-empty tree. States received from inputs are merged into it.
class FuzzStore {
 public:
  static FuzzStore& get() {
    static FuzzStore* instance = new FuzzStore();  // outlives exit-time destructors
    return *instance;
  }

  storage::Store& store() { return *store_; }
  storage::Done onMerged() {
    return [this](Result<storage::Applied>) {
      std::lock_guard lock(mu_);
      ++merged_;
      cv_.notify_all();
    };
  }
  // Waits until `count` merges submitted through onMerged() have run, so
  // one input's writes do not spill into the next.
  void waitMerged(uint64_t count) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return merged_ >= count; });
  }

 private:
  FuzzStore() {
    std::string pattern = (std::filesystem::temp_directory_path() / "chorus-fuzz-XXXXXX").string();
    FUZZ_CHECK(::mkdtemp(pattern.data()) != nullptr, "mkdtemp");
    dir_ = pattern;
    storage::Options options;
    options.dir = dir_;
    options.unsafeNoSync = true;  // throwaway data
    options.initialMapBytes = 16ull << 20;
    auto opened = storage::Store::open(options);
    FUZZ_CHECK(opened.ok(), opened.ok() ? "" : opened.error().toString());
    store_ = std::move(opened).value();
    seedStore(*store_);
    std::atexit([] {
      auto& self = get();
      self.store_.reset();
      std::error_code ec;
      std::filesystem::remove_all(self.dir_, ec);
    });
  }

  std::string dir_;
  std::unique_ptr<storage::Store> store_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t merged_ = 0;
};

}  // namespace chorus::fuzz
