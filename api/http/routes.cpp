#include "api/http/routes.h"

#include <kj/debug.h>

namespace chorus::api::http {

namespace {

using M = kj::HttpMethod;

constexpr std::string_view kReview = "/v1/products/{product}/reviews/{author}";

// Splits a path at '/' after its leading one.
std::vector<std::string_view> segments(std::string_view path) {
  std::vector<std::string_view> out;
  if (path.empty() || path[0] != '/') return out;
  size_t start = 1;
  while (true) {
    size_t slash = path.find('/', start);
    out.push_back(path.substr(start, slash == std::string_view::npos ? slash : slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return out;
}

int hexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

const std::vector<Route>& routes() {
  static const std::vector<Route> table = {
      {M::PUT, kReview, Op::kPut, "put", ""},
      {M::GET, kReview, Op::kGet, "get", "session"},
      {M::DELETE, kReview, Op::kErase, "erase", ""},
      {M::PUT, "/v1/products/{product}/reviews/{author}/votes/{voter}", Op::kVote, "vote", ""},
      {M::DELETE, "/v1/products/{product}/reviews/{author}/votes/{voter}", Op::kUnvote, "unvote",
       ""},
      {M::PUT, "/v1/products/{product}/reviews/{author}/tags/{tag}", Op::kTag, "tag", ""},
      {M::DELETE, "/v1/products/{product}/reviews/{author}/tags/{tag}", Op::kUntag, "untag", ""},
      {M::PUT, "/v1/products/{product}/reviews/{author}/moderation", Op::kModerate, "moderate", ""},
      {M::PUT, "/v1/products/{product}/reviews/{author}/reply", Op::kReply, "reply", ""},
      {M::GET, "/v1/products/{product}/reviews", Op::kList, "list", "order,limit,cursor,session"},
      {M::GET, "/v1/products/{product}/summary", Op::kSummary, "summary", "session"},
      {M::GET, "/v1/products/{product}/page", Op::kPage, "page", "order,limit,cursor,session"},
      {M::GET, "/v1/products/{product}/watch", Op::kWatch, "watch", "heartbeat"},
      {M::GET, "/v1/authors/{author}/reviews", Op::kByAuthor, "byAuthor", "limit,cursor,session"},
      {M::GET, "/v1/changes", Op::kChanges, "changes",
       "since,limit,include_docs,feed,heartbeat,timeout"},
      {M::GET, "/v1/node/status", Op::kStatus, "status", ""},
      {M::GET, "/v1/node/health", Op::kHealth, "health", ""},
      {M::POST, "/v1/node/backup", Op::kBackup, "backup", ""},
      {M::GET, "/v1/cluster", Op::kCluster, "cluster", ""},
      {M::POST, "/v1/cluster/partition", Op::kPartition, "partition", ""},
      {M::POST, "/v1/cluster/heal", Op::kHeal, "heal", ""},
      {M::GET, "/v1/cluster/keys", Op::kKeysList, "keysList", ""},
      {M::POST, "/v1/cluster/keys", Op::kKeys, "keys", ""},
      {M::POST, "/v1/cluster/leave", Op::kLeave, "leave", ""},
      {M::POST, "/v1/cluster/remove", Op::kRemove, "remove", ""},
      {M::GET, "/v1/openapi.json", Op::kOpenApi, "openapi", ""},
      {M::GET, "/v1/info", Op::kInfo, "info", ""},
      {M::GET, "/v1/cluster/overview", Op::kOverview, "overview", ""},
      {M::POST, "/v1/cluster/overview/partition", Op::kOverviewPartition, "overviewPartition", ""},
      {M::POST, "/v1/cluster/overview/heal", Op::kOverviewHeal, "overviewHeal", ""},
      {M::GET, "/", Op::kDashboard, "dashboard", ""},
      {M::GET, "/dashboard/{file}", Op::kDashboard, "dashboardFile", ""},
  };
  return table;
}

const std::string& Match::param(std::string_view name) const {
  for (const auto& [n, v] : params) {
    if (n == name) return v;
  }
  KJ_FAIL_ASSERT("the route has no such path parameter", std::string(name).c_str());
}

std::optional<std::string> percentDecode(std::string_view s, bool plusIsSpace) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      int hi = hexDigit(s[i + 1]), lo = hexDigit(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plusIsSpace) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

Match findRoute(kj::HttpMethod method, std::string_view url) {
  Match m;
  if (size_t hash = url.find('#'); hash != std::string_view::npos) url = url.substr(0, hash);
  std::string_view path = url, query;
  if (size_t q = url.find('?'); q != std::string_view::npos) {
    path = url.substr(0, q);
    query = url.substr(q + 1);
  }
  auto have = segments(path);
  const Route* found = nullptr;
  std::vector<std::pair<std::string, std::string_view>> raw;
  for (const Route& r : routes()) {
    auto want = segments(r.path);
    if (want.size() != have.size()) continue;
    std::vector<std::pair<std::string, std::string_view>> captured;
    bool same = true;
    for (size_t i = 0; i < want.size() && same; ++i) {
      if (!want[i].empty() && want[i].front() == '{') {
        captured.emplace_back(std::string(want[i].substr(1, want[i].size() - 2)), have[i]);
      } else {
        same = want[i] == have[i];
      }
    }
    if (!same) continue;
    if (r.method == method) {
      found = &r;
      raw = std::move(captured);
      break;
    }
    std::string name = kj::str(r.method).cStr();
    if (m.allow.find(name) == std::string::npos) m.allow += (m.allow.empty() ? "" : ", ") + name;
  }
  if (found == nullptr) return m;
  m.route = found;
  m.allow.clear();
  for (auto& [name, value] : raw) {
    auto decoded = percentDecode(value, false);
    if (!decoded) {
      m.invalid = FieldError{name,
                             "bad percent-encoding in the path (a '%' must be followed by "
                             "two hex digits)"};
      return m;
    }
    m.params.emplace_back(name, std::move(*decoded));
  }
  size_t start = 0;
  while (start < query.size()) {
    size_t amp = query.find('&', start);
    std::string_view item = query.substr(start, amp == std::string_view::npos ? amp : amp - start);
    start = amp == std::string_view::npos ? query.size() : amp + 1;
    if (item.empty()) continue;
    size_t eq = item.find('=');
    auto name = percentDecode(item.substr(0, eq), true);
    auto value = percentDecode(eq == std::string_view::npos ? "" : item.substr(eq + 1), true);
    if (!name || !value) {
      m.invalid = FieldError{"",
                             "bad percent-encoding in the query string (a '%' must be "
                             "followed by two hex digits)"};
      return m;
    }
    m.query.emplace_back(std::move(*name), std::move(*value));
  }
  return m;
}

}  // namespace chorus::api::http
