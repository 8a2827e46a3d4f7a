// chorus-bench load, run as a user would: short runs with tiny datasets,
// --json parsed and checked. Needs CHORUS_BENCH_BIN and CHORUSD_BIN (set by
// test/meson.build). No timing is asserted, only that operations happened,
// were counted and failed when they should.
#include <doctest/doctest.h>

#include <cctype>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "api/process.h"
#include "api/temp-dir.h"

namespace {

using chorus::test::Process;
using chorus::test::TempDir;
using namespace std::chrono_literals;

std::string bin(const char* var) {
  const char* v = std::getenv(var);
  INFO(var << " must be set (run through meson test)");
  REQUIRE(v != nullptr);
  return v;
}

// A small JSON reader: enough to walk the bench's one object.
struct Json {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = kNull;
  double number = 0;
  bool boolean = false;
  std::string string;
  std::vector<Json> array;
  std::map<std::string, Json> object;

  bool has(const std::string& k) const { return kind == kObject && object.count(k) > 0; }
  const Json& operator[](const std::string& k) const {
    static const Json kMissing;
    auto it = object.find(k);
    return it == object.end() ? kMissing : it->second;
  }
};

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : s_(text) {}
  bool parse(Json& out) {
    bool ok = value(out);
    space();
    return ok && i_ == s_.size();
  }

 private:
  void space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool literal(const char* word) {
    std::string w(word);
    if (s_.compare(i_, w.size(), w) != 0) return false;
    i_ += w.size();
    return true;
  }
  bool str(std::string& out) {
    if (s_[i_] != '"') return false;
    for (++i_; i_ < s_.size(); ++i_) {
      if (s_[i_] == '"') {
        ++i_;
        return true;
      }
      if (s_[i_] == '\\' && ++i_ >= s_.size()) return false;
      out += s_[i_];
    }
    return false;
  }
  bool value(Json& out) {
    space();
    if (i_ >= s_.size()) return false;
    char c = s_[i_];
    if (c == '{') {
      out.kind = Json::kObject;
      ++i_;
      space();
      if (i_ < s_.size() && s_[i_] == '}') return ++i_, true;
      while (true) {
        space();
        std::string key;
        if (i_ >= s_.size() || !str(key)) return false;
        space();
        if (i_ >= s_.size() || s_[i_++] != ':') return false;
        if (!value(out.object[key])) return false;
        space();
        if (i_ >= s_.size()) return false;
        if (s_[i_] == ',') {
          ++i_;
          continue;
        }
        return s_[i_++] == '}';
      }
    }
    if (c == '[') {
      out.kind = Json::kArray;
      ++i_;
      space();
      if (i_ < s_.size() && s_[i_] == ']') return ++i_, true;
      while (true) {
        out.array.emplace_back();
        if (!value(out.array.back())) return false;
        space();
        if (i_ >= s_.size()) return false;
        if (s_[i_] == ',') {
          ++i_;
          continue;
        }
        return s_[i_++] == ']';
      }
    }
    if (c == '"') {
      out.kind = Json::kString;
      return str(out.string);
    }
    if (literal("true") || literal("false")) {
      out.kind = Json::kBool;
      out.boolean = s_[i_ - 1] == 'e' && s_[i_ - 2] == 'u';
      return true;
    }
    if (literal("null")) return true;
    size_t used = 0;
    try {
      out.number = std::stod(s_.substr(i_), &used);
    } catch (...) {
      return false;
    }
    out.kind = Json::kNumber;
    i_ += used;
    return used > 0;
  }

  const std::string& s_;
  size_t i_ = 0;
};

struct BenchRun {
  int exitCode = -1;
  std::string output;
  Json json;
  bool parsed = false;
};

// Runs `chorus-bench load args...` (with --json and this build's chorusd)
// and parses the line holding its JSON object.
BenchRun runLoad(std::vector<std::string> args) {
  args.insert(args.begin(), "load");
  args.insert(args.end(), {"--json", "--chorusd", bin("CHORUSD_BIN")});
  Process p(bin("CHORUS_BENCH_BIN"), args);
  BenchRun r;
  r.output = p.readAll(120s);
  r.exitCode = p.wait(30s);
  std::istringstream lines(r.output);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("{\"bench\"", 0) == 0) r.parsed = JsonParser(line).parse(r.json);
  }
  return r;
}

// Checks one op object of a run: answered, counted, no errors.
void checkOp(const Json& op, const std::string& name) {
  INFO("op " << name);
  REQUIRE(op.kind == Json::kObject);
  CHECK(op["count"].number > 0);
  CHECK(op["ops_per_s"].number > 0);
  // A part of a page (page.summary) can take under a microsecond in-process.
  if (name.find('.') == std::string::npos) CHECK(op["p50_ms"].number > 0);
  CHECK(op["p99_ms"].number >= op["p50_ms"].number);
  CHECK(op["p999_ms"].number >= op["p99_ms"].number);
  REQUIRE(op["errors"].kind == Json::kObject);
  CHECK(op["errors"].object.empty());
}

}  // namespace

TEST_CASE("load: mixed against a started chorusd and the embedded baseline, every op counted") {
  // --page-call split: a page as summary and list, each also counted apart.
  auto r = runLoad({"--preload", "300", "--ops", "400", "--workload", "mixed", "--clients", "2",
                    "--depth", "4", "--baseline", "embedded", "--unsafe-no-sync", "--page-call",
                    "split"});
  INFO(r.output);
  REQUIRE(r.exitCode == 0);
  REQUIRE(r.parsed);
  const Json& j = r.json;
  CHECK(j["bench"].string == "load");
  CHECK(j["workload"].string == "mixed");
  CHECK(j["clients"].number == 2);
  CHECK(j["depth"].number == 4);
  CHECK(j["preload"].number == 300);
  CHECK(j["started_node"].boolean);
  CHECK(j["preload_per_s"].number > 0);
  CHECK(j["embedded_preload_per_s"].number > 0);
  REQUIRE(j["nodes"].array.size() == 1);
  for (const char* target : {"rpc", "embedded"}) {
    INFO("target " << target);
    const Json& ops = j[target]["ops"];
    REQUIRE(ops.kind == Json::kObject);
    for (const char* name : {"page", "page.summary", "page.list", "vote"}) checkOp(ops[name], name);
    // --ops is the total: every operation the run made is in the counts.
    double total =
        ops["page"]["count"].number + ops["vote"]["count"].number + ops["write"]["count"].number;
    CHECK(total == 400);
    CHECK(ops["page.list"]["count"].number == ops["page"]["count"].number);
  }
  CHECK(j["ratio"]["page"].number > 0);
  CHECK(j["ratio"]["vote"].number > 0);
}

TEST_CASE("load: write and the size comparison report their own figures") {
  auto w = runLoad({"--ops", "200", "--workload", "write", "--unsafe-no-sync"});
  INFO(w.output);
  REQUIRE(w.exitCode == 0);
  REQUIRE(w.parsed);
  checkOp(w.json["rpc"]["ops"]["write"], "write");
  CHECK(w.json["rpc"]["ops"]["write"]["count"].number == 200);

  auto c = runLoad({"--preload", "1000", "--ops", "200", "--workload", "page", "--compare-sizes",
                    "--small-size", "10", "--unsafe-no-sync"});
  INFO(c.output);
  REQUIRE(c.exitCode == 0);
  REQUIRE(c.parsed);
  CHECK(c.json["page_call"].string == "page");  // the default: one ReviewStore.page call
  checkOp(c.json["rpc"]["ops"]["page-hot"], "page-hot");
  CHECK(c.json["rpc"]["ops"]["page-hot.list"].kind != Json::kObject);  // no parts to show
  checkOp(c.json["rpc"]["ops"]["page-small"], "page-small");
  const Json& cmp = c.json["compare_sizes"];
  CHECK(cmp["hot_reviews"].number == 100);  // N / 10
  CHECK(cmp["small_reviews"].number == 10);
  CHECK(cmp["p50_ratio"].number > 0);
}

TEST_CASE("load: a dataset preloaded once is read again by --preload-size; a missing one fails") {
  TempDir tmp;
  Process node(bin("CHORUSD_BIN"),
               {"--node-id", "load-test", "--data-dir", tmp.sub("data"), "--listen", "127.0.0.1:0",
                "--no-auth", "--unsafe-no-sync", "--rate-limit", "0", "--log-level", "warn"});
  auto line = node.waitForLine("listening on ", 30s);
  REQUIRE(line.has_value());
  std::string address = line->substr(line->find("listening on ") + 13);

  auto first = runLoad({"--connect", address, "--preload", "500", "--seed", "7", "--ops", "100",
                        "--workload", "vote"});
  INFO(first.output);
  REQUIRE(first.exitCode == 0);
  REQUIRE(first.parsed);
  CHECK(first.json["started_node"].boolean == false);
  checkOp(first.json["rpc"]["ops"]["vote"], "vote");

  // Same seed and size: every key regenerated exists.
  auto again = runLoad({"--connect", address, "--preload-size", "500", "--seed", "7", "--ops",
                        "300", "--workload", "get"});
  INFO(again.output);
  REQUIRE(again.exitCode == 0);
  REQUIRE(again.parsed);
  checkOp(again.json["rpc"]["ops"]["get"], "get");
  CHECK(again.json["rpc"]["ops"]["get"]["count"].number == 300);

  // Another seed names other products: nothing there, exit 2, errors counted by code.
  auto missing = runLoad({"--connect", address, "--preload-size", "500", "--seed", "8", "--ops",
                          "50", "--workload", "get"});
  INFO(missing.output);
  CHECK(missing.exitCode == 2);
  REQUIRE(missing.parsed);
  CHECK(missing.json["rpc"]["ops"]["get"]["errors"]["not-found"].number == 50);

  CHECK(node.stop(SIGTERM, 30s) == 0);
}

TEST_CASE("load: usage errors exit 1") {
  for (std::vector<std::string> args :
       {std::vector<std::string>{"--workload", "get"},  // no dataset
        std::vector<std::string>{"--workload", "nonsense"},
        std::vector<std::string>{"--workload", "get", "--preload", "10", "--compare-sizes"}}) {
    auto r = runLoad(args);
    INFO(r.output);
    CHECK(r.exitCode == 1);
  }
}
