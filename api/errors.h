// The errors clients see, mapped once for every front end: the Cap'n Proto
// RPC server (api/wire.cpp's toWire(Error)) and the HTTP server
// (api/http/, application/problem+json) both start from apiError().
//
// A chorus::Error (crdt/result.h) carries a C++ ErrorCode and a message;
// clients get one of seven codes, named as chorus.capnp's ErrorCode, with
// the field the error is about split off the message. Store-level codes
// (corruption, io, clock drift) become `internal` with the cause kept in the
// message; `busy` becomes `unavailable`.
#pragma once

#include <string>

#include "crdt/result.h"

namespace chorus::api {

// chorus.capnp's ErrorCode, in its order (the numbers are its ordinals).
enum class ApiCode {
  kInvalidArgument = 0,
  kNotFound = 1,
  kForbidden = 2,
  kOverloaded = 3,
  kUnavailable = 4,
  kInternal = 5,
  kUnauthenticated = 6,
};
inline constexpr int kApiCodeCount = 7;

// What a client is told: code, field ("" when not about one) and message.
struct ApiError {
  ApiCode code = ApiCode::kInternal;
  std::string field;
  std::string message;
};

// `error` as clients see it. kInvalidArgument and kForbidden messages of
// the form "<field>: <text>", where <field> is one bare word, are split into
// field and message.
ApiError apiError(const Error& error);
// An `unauthenticated` answer (no C++ ErrorCode has that meaning).
ApiError unauthenticatedError(std::string message);

// "invalidArgument", "notFound", ...: chorus.capnp's enumerant names, also
// the `code` of an HTTP problem document and the metrics' error labels.
const char* apiCodeName(ApiCode code);
// The HTTP status of each code: invalidArgument 400, unauthenticated 401,
// forbidden 403, notFound 404, overloaded 429, internal 500,
// unavailable 503.
int httpStatus(ApiCode code);

}  // namespace chorus::api
