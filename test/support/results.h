// What a test expects of a Result or an optional, checked before it is read.
//
// Result::error() of a success and value() of an error abort the whole test
// program (crdt/result.h), and so does `->` on an empty optional, so one
// regression would skip every later test case. These REQUIRE first: the
// regression is one failed test case with a message instead.
//
//   CHECK(failure(store->get({"p", ""})).code == ErrorCode::kInvalidArgument);
//   CHECK(present(checkPut(...)).field == "title");
#pragma once

#include <doctest/doctest.h>

#include <optional>

#include "crdt/result.h"

namespace chorus::test {

// The error of a call that must have failed.
template <class T>
Error failure(const Result<T>& r) {
  REQUIRE_MESSAGE(!r.ok(), "expected an error, got a value");
  return r.error();
}

// The value of an optional that must hold one (e.g. a validation's refusal).
template <class T>
const T& present(const std::optional<T>& o) {
  REQUIRE_MESSAGE(o.has_value(), "expected a value, got none");
  return *o;
}

}  // namespace chorus::test
