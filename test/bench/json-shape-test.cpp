// One JSON shape across chorus-bench's subcommands (issue 19): each, at its
// smallest size with --json, prints one object whose `bench` names the
// subcommand, with its parameters, and where it measures latency or
// throughput the common `p50_ms`, `p99_ms` and `ops_per_s` beside the keys
// it documented before (kept as aliases). Needs CHORUS_BENCH_BIN and
// CHORUSD_BIN.
#include <doctest/doctest.h>

#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "api/process.h"
#include "api/temp-dir.h"
#include "cluster/json.h"

using chorus::test::Json;
using chorus::test::Process;
using chorus::test::TempDir;
using namespace std::chrono_literals;

namespace {

std::string binary(const char* var) {
  const char* v = std::getenv(var);
  REQUIRE_MESSAGE(v != nullptr, var << " must name the built binary");
  return v;
}

// Runs `chorus-bench args... --json`; the one line that is a JSON object.
Json bench(std::vector<std::string> args) {
  args.push_back("--json");
  Process p(binary("CHORUS_BENCH_BIN"), args);
  std::string out = p.readAll(120s);
  int code = p.wait(30s);
  INFO(args[0] << ": exit " << code << ": " << out);
  REQUIRE(code == 0);
  std::istringstream lines(out);
  std::string line;
  std::optional<Json> found;
  int objects = 0;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] != '{') continue;
    ++objects;
    found = Json::parse(line);
  }
  REQUIRE(objects == 1);
  REQUIRE(found.has_value());
  REQUIRE(found->isObject());
  CHECK((*found)["bench"].str() == args[0]);
  return *found;
}

// The common figures of a latency/throughput measurement.
void checkFigures(const Json& j) {
  CHECK(j["ops_per_s"].number() > 0);
  CHECK(j["p50_ms"].number() > 0);
  CHECK(j["p99_ms"].number() >= j["p50_ms"].number());
}

}  // namespace

TEST_CASE("chorus-bench: every subcommand's --json is one object with bench and common figures") {
  TempDir tmp;
  {
    auto j = bench({"storage", "-n", "200", "--unsafe-no-sync", "--dir", tmp.sub("storage")});
    checkFigures(j);
    CHECK(j["count"].u64() == 200);
    CHECK(j["ops_per_s"].number() == j["store_writes_per_s"].number());  // the old names stay
    CHECK(j["p99_ms"].number() == j["ack_p99_ms"].number());
  }
  {
    auto j = bench({"rpc", "-n", "50", "--clients", "1", "--depth", "1", "--dir", tmp.sub("rpc")});
    checkFigures(j);
    CHECK(j["writes"].u64() == 50);
    CHECK(j["ops_per_s"].number() == j["rpc_writes_per_s"].number());
    CHECK(j["embedded_writes_per_s"].number() > 0);
  }
  {
    auto j = bench({"reconcile", "--keys", "200", "--diff", "0", "--diff", "5", "--dir",
                    tmp.sub("reconcile")});
    CHECK(j["keys"].u64() == 200);
    CHECK(j["identical"].boolean());
    REQUIRE(j["rows"].items().size() == 2);  // the per-diff rows, inside the object
    CHECK(j["rows"].items()[1]["diff"].u64() == 5);
    CHECK(j["rows"].items()[1]["round_trips"].u64() > 0);
    CHECK(j["rows"].items()[1]["overhead_bytes"].u64() > 0);
  }
  {
    auto j =
        bench({"cluster", "--nodes", "2", "--rate", "100", "--seconds", "0.5", "--split-writes",
               "20", "--anti-entropy-ms", "50", "--unsafe-no-sync", "--dir", tmp.sub("cluster")});
    checkFigures(j);
    CHECK(j["nodes"].u64() == 2);
    CHECK(j["p99_ms"].number() == j["latency_p99_ms"].number());
    CHECK(j["converge_s"].number() > 0);
  }
  {
    auto j = bench({"feed", "--keys", "2000", "--rate", "200", "--seconds", "0.3",
                    "--unsafe-no-sync", "--http", "--dir", tmp.sub("feed")});
    checkFigures(j);
    CHECK(j["keys"].u64() == 2000);
    CHECK(j["ops_per_s"].number() == j["catchup"]["rpc_follow_changes_per_s"].number());
    CHECK(j["catchup"]["embedded_changes_per_s"].number() > 0);
    CHECK(j["catchup"]["embedded_docs_changes_per_s"].number() > 0);
    CHECK(j["catchup"]["rpc_changes_per_s"].number() > 0);
    CHECK(j["latency"]["writes"].u64() == 60);
    CHECK(j["latency"]["commit_to_rpc_follower"]["count"].u64() > 0);
    CHECK(j["p99_ms"].number() == j["latency"]["commit_to_rpc_follower"]["p99_ms"].number());
    CHECK(j["latency"]["commit_to_embedded_follower"]["p99_ms"].number() > 0);
    // --http: the eventsource and longpoll followers saw every write.
    CHECK(j["latency"]["commit_to_http_eventsource"]["count"].u64() == 60);
    CHECK(j["latency"]["commit_to_http_eventsource"]["p99_ms"].number() > 0);
    CHECK(j["latency"]["commit_to_http_longpoll"]["count"].u64() == 60);
    CHECK(j["latency"]["commit_to_http_longpoll"]["p99_ms"].number() > 0);
  }
  {
    // load keeps its figures per operation, under the same names.
    auto j = bench({"load", "--workload", "get", "--preload", "20", "--ops", "20", "--clients", "1",
                    "--depth", "1", "--unsafe-no-sync", "--chorusd", binary("CHORUSD_BIN")});
    CHECK(j["workload"].str() == "get");
    checkFigures(j["rpc"]["ops"]["get"]);
  }
  {
    // A backup of 2,000 reviews under 1,000 writes/s: a few writes at most
    // fall inside it, so only the shape is checked, not that there were any.
    auto j = bench({"backup", "--keys", "2000", "--rate", "1000", "--baseline-s", "0.5", "--tail-s",
                    "0.1", "--unsafe-no-sync", "--dir", tmp.sub("backup")});
    CHECK(j["keys"].u64() == 2000);
    CHECK(j["backup_keys"].u64() >= 2000);
    CHECK(j["backup_s"].number() > 0);
    CHECK(j["file_copy_s"].number() > 0);
    CHECK(j["verified"].boolean());
    CHECK(j["p99_ms"].number() >= j["p50_ms"].number());
    CHECK(j["ops_per_s"].number() >= 0);
    CHECK(j["baseline_p99_ms"].number() > 0);
  }
  {
    // --http: the same pages over the HTTP API, and the HTTP/RPC ratio (issue 16).
    auto j =
        bench({"load", "--workload", "page", "--preload", "20", "--ops", "20", "--clients", "1",
               "--depth", "1", "--http", "--unsafe-no-sync", "--chorusd", binary("CHORUSD_BIN")});
    checkFigures(j["rpc"]["ops"]["page"]);
    checkFigures(j["http"]["ops"]["page"]);
    CHECK(j["http"]["ops"]["page"]["count"].u64() == 20);
    CHECK(j["http_ratio"]["page"].number() > 0);
  }
  {
    // An empty node catching up with one of 1,000 reviews from a snapshot,
    // two chorusd on loopback.
    auto j = bench({"bootstrap", "--keys", "1000", "--bootstrap", "snapshot", "--unsafe-no-sync",
                    "--chorusd", binary("CHORUSD_BIN"), "--dir", tmp.sub("bootstrap")});
    CHECK(j["keys"].u64() == 1000);
    CHECK(j["mode"].str() == "snapshot");
    CHECK(j["bootstrap_s"].number() > 0);
    CHECK(j["bytes_sent"].u64() > 0);
    CHECK(j["file_copy_s"].number() > 0);
    CHECK(j["sender_rss_anon_peak_mb"].number() >= 0);
    CHECK(j["receiver_rss_anon_peak_mb"].number() >= 0);
    CHECK(j["from_snapshot"].boolean());
  }
}
