// The HTTP API's routes (api/http/openapi.json documents each), and how a
// request's method and URL find one. Pure functions; no I/O.
//
// Path templates name their parameters in braces
// ("/v1/products/{product}/reviews/{author}"); a parameter is one path
// segment, percent-decoded ("%2F" is a '/' inside the value). Query
// parameters are percent-decoded with '+' as a space. A path no route has
// is 404; a path some route has, with a method it does not take, is 405
// (with the methods it takes, for the Allow header).
#pragma once

#include <kj/compat/http.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "api/validate.h"

namespace chorus::api::http {

// One per route; Cap'n Proto's method of the same name unless said.
enum class Op {
  kPut,
  kGet,
  kErase,
  kVote,
  kUnvote,
  kTag,
  kUntag,
  kModerate,
  kReply,
  kList,
  kSummary,
  kPage,
  kByAuthor,
  kWatch,    // ReviewStore.watch as a text/event-stream
  kChanges,  // ReviewStore.changes, and follow as longpoll or text/event-stream
  kStatus,
  kHealth,
  kBackup,  // Admin.backup
  kCluster,
  kPartition,
  kHeal,
  kKeysList,  // Admin.keys(list)
  kKeys,      // Admin.keys(op, key)
  kLeave,
  kRemove,
  kOpenApi,  // this API's OpenAPI document
  kInfo,     // Chorus.info: served to anyone
  // The cluster dashboard (api/http/overview.h), not Cap'n Proto methods:
  kDashboard,          // its page and files, served to anyone (no data in them)
  kOverview,           // every listed node's view, asked by this node
  kOverviewPartition,  // a partition applied across the nodes
  kOverviewHeal,       // heal applied across the nodes
};

struct Route {
  kj::HttpMethod method;
  std::string_view path;  // template, e.g. "/v1/products/{product}/summary"
  Op op;
  std::string_view name;   // "put", "keysList": the OpenAPI operationId
  std::string_view query;  // the query parameters it takes, comma-separated
};

// Every route, in the OpenAPI document's order.
const std::vector<Route>& routes();

struct Match {
  const Route* route = nullptr;  // nullptr: no route (see allow)
  // The path parameters, percent-decoded, in template order, by name.
  std::vector<std::pair<std::string, std::string>> params;
  // The query parameters, percent-decoded, in order.
  std::vector<std::pair<std::string, std::string>> query;
  // With no route: the methods the path takes ("GET, PUT"); empty = no
  // route has the path (404).
  std::string allow;
  // A malformed path parameter or query string (bad percent-encoding):
  // the route is found but the request is invalid (400).
  std::optional<FieldError> invalid;

  // The path parameter `name` (the route's template has it).
  const std::string& param(std::string_view name) const;
};

// The route of `method` and `url` (a path, optionally "?query"; a
// "#fragment" is ignored).
Match findRoute(kj::HttpMethod method, std::string_view url);

// %XX escapes decoded (and '+' as a space if `plusIsSpace`); nullopt for a
// '%' not followed by two hex digits.
std::optional<std::string> percentDecode(std::string_view s, bool plusIsSpace);

}  // namespace chorus::api::http
