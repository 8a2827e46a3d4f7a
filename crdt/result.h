// Result<T>: the value of a fallible call, or an Error a user can act on.
//
// Chorus has two error channels (see STYLE.md): expected failures travel as
// values of this type; broken invariants are bugs and use CHORUS_ASSERT.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <variant>

namespace chorus {

enum class ErrorCode {
  kInvalidArgument,  // the caller's input is wrong; retrying will not help
  kNotFound,
  kCorruption,  // stored or received bytes fail validation
  kClockDrift,  // a remote stamp is too far in the future
  kIo,          // the operating system refused (disk, socket)
  kBusy,        // a resource is held by someone else (e.g. data dir lock)
  kOverloaded,  // try again later
  kForbidden,
  kUnavailable,
  kInternal,
};

const char* errorCodeName(ErrorCode code);

struct Error {
  ErrorCode code;
  std::string message;

  // "invalid-argument: rating must be 1-5"
  std::string toString() const;
};

// Holds a T or an Error. Accessing value() of an error is a bug (aborts).
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & {
    check();
    return std::get<0>(v_);
  }
  const T& value() const& {
    check();
    return std::get<0>(v_);
  }
  T&& value() && {
    check();
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const {
    if (ok()) fail("Result::error() called on a value");
    return std::get<1>(v_);
  }

 private:
  void check() const {
    if (!ok()) fail(std::get<1>(v_).toString().c_str());
  }
  [[noreturn]] static void fail(const char* what) {
    std::fprintf(stderr, "chorus: Result::value() on error: %s\n", what);
    std::abort();
  }
  std::variant<T, Error> v_;
};

// Result<void>: success or an Error.
struct Ok {};
using Status = Result<Ok>;
inline Status okStatus() { return Ok{}; }

inline Error makeError(ErrorCode code, std::string message) {
  return Error{code, std::move(message)};
}

}  // namespace chorus

// A broken invariant of our own: a bug. Prints where and aborts.
#define CHORUS_ASSERT(cond, msg)                                                               \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "chorus: assertion failed at %s:%d: %s (%s)\n", __FILE__, __LINE__, \
                   #cond, msg);                                                                \
      std::abort();                                                                            \
    }                                                                                          \
  } while (false)
