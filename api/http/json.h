// JSON for the HTTP API, mapped from the Cap'n Proto schema (api/chorus.capnp)
// so both front ends speak one vocabulary: a request body is the JSON form
// of the method's params (those not in the path or query), a response body
// the JSON form of its results without `error`. The mapping, by schema type:
//
//   Bool -> true/false; integers and floats -> numbers (UInt64 too: values
//   above 2^53, such as a replicaId, lose precision in JavaScript's Number);
//   a non-finite float -> null; Text -> string; Data -> lowercase hex
//   string; enum -> its enumerant name ("highestRating"), or its number if
//   this build does not know it; List -> array; struct -> object with every
//   field by its schema name (camelCase), an unset struct field omitted;
//   interface (capability) fields are omitted.
//
// Pure functions; no I/O.
#pragma once

#include <capnp/dynamic.h>

#include <initializer_list>
#include <string>
#include <string_view>

#include "api/types.h"
#include "api/validate.h"

namespace chorus::api::http {

// Appends `s` as a JSON string (quoted; ", \ and control characters
// escaped). Bytes that are not valid UTF-8 become U+FFFD.
void appendJsonString(std::string& out, std::string_view s);

// Appends the JSON object of `s`, without the fields named in `skip`.
void appendJsonStruct(std::string& out, capnp::DynamicStruct::Reader s,
                      std::initializer_list<std::string_view> skip = {});

// The JSON object of `s` (e.g. a method's results) without its `error`.
std::string resultsJson(capnp::DynamicStruct::Reader s);

// Fast paths for the hottest answers, straight from the C++ values: byte for
// byte what resultsJson gives for the same values put through api/wire.h's
// toWire into the method's results (test/api/http-test.cpp checks each, so
// a field added to the schema fails that test until added here). Reading
// the schema at run time cost a fifth of a page request's CPU.
void appendReviewJson(std::string& out, const ReviewView& r);
void appendPageJson(std::string& out, const ReviewPage& p);
void appendSummaryJson(std::string& out, const std::string& product,
                       const storage::ProductSummary& s);
// The results of the reads and writes, without `error`: {"review":...},
// {"page":...}, {"summary":...}, {"summary":...,"page":...}.
std::string reviewResultsJson(const ReviewView& r);
std::string pageResultsJson(const ReviewPage& p);
std::string summaryResultsJson(const std::string& product, const storage::ProductSummary& s);
std::string productPageResultsJson(const std::string& product, const ProductPageView& v);
// A write's results: {"review":...,"session":...} (put, vote, tag, ...), and
// erase's {"session":...}; the token is r.session.
std::string writeResultsJson(const ReviewView& r);
std::string eraseResultsJson(const std::string& session);
// One change of the feed (FeedChange: `review` only when it has one), and
// ReviewStore.changes' results {"changes":[...],"lastSeq":...,"replicaId":...}.
void appendFeedChangeJson(std::string& out, const FeedChange& c);
std::string changesResultsJson(const ChangesPage& p);

// Fills fields of `params` from the JSON object `body`. Each member must
// name one of `allowed` (a field of params' schema) and have its type
// (a string for Text, an integral number in range for integers, an
// enumerant name for an enum, an array of strings for List(Text)); every
// field in `required` must be present. An empty body counts as {}.
// Errors (the field named, "" for the body as a whole): not JSON (RFC
// 8259, nested at most 16 deep), not an object, an unknown or repeated member, a wrong type, a
// missing required field.
Check decodeJsonBody(std::string_view body, capnp::DynamicStruct::Builder params,
                     std::initializer_list<const char*> allowed,
                     std::initializer_list<const char*> required = {});

}  // namespace chorus::api::http
