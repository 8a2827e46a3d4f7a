// chorus-chaos: see chaos.h and README.md "Failure semantics".
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "tools/chaos/chaos.h"

namespace {
// ../chorusd/chorusd next to this executable (the build tree's layout).
std::string siblingChorusd() {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "chorusd";
  return (self.parent_path().parent_path() / "chorusd" / "chorusd").string();
}
}  // namespace

int main(int argc, char** argv) {
  chorus::chaos::Config c;
  c.chorusd = siblingChorusd();
  c.seed = uint64_t(std::chrono::system_clock::now().time_since_epoch().count()) % 1000000;
  bool json = false, printSchedule = false;
  CLI::App app{
      "chorus-chaos: starts local chorusd nodes, writes through concurrent clients while "
      "partitioning, killing, pausing and skewing the clocks of nodes, then heals everything "
      "and checks that every node converged and holds every acknowledged write.\n"
      "Exit 0 when nothing was lost, nothing unexpected appeared and the nodes converged; "
      "1 otherwise; 2 on usage errors; 130 when interrupted."};
  app.add_option("--duration", c.durationS, "Seconds of faulted workload")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 86400.0));
  app.add_option("--seed", c.seed,
                 "Draws the fault schedule; the same seed replays the same schedule")
      ->capture_default_str();
  app.add_option("--nodes", c.nodes, "Number of chorusd nodes")
      ->capture_default_str()
      ->check(CLI::Range(1, 32));
  app.add_option("--clients", c.clients, "Concurrent client threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--chorusd", c.chorusd, "The chorusd binary")->capture_default_str();
  app.add_option("--dir", c.dir,
                 "Directory for data and logs, kept afterwards (default: a new one under $TMPDIR, "
                 "removed on success)");
  app.add_flag("--keep", c.keep,
               "Keep data and logs after a successful run (always kept on failure)");
  app.add_option("--max-skew", c.maxSkewS,
                 "Clock skews are drawn from +-[1, this] seconds; 0 turns them off. Over 60 s a "
                 "node's writes are refused by its peers until real time catches up (see README)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--anti-entropy-interval", c.antiEntropyMs, "Milliseconds, passed to every node")
      ->capture_default_str()
      ->check(CLI::Range(10, 60000));
  app.add_option("--converge-timeout", c.convergeTimeoutS,
                 "Seconds to wait for equal Merkle roots after the final heal (plus max-skew - 60 "
                 "when that is positive)")
      ->capture_default_str();
  app.add_option("--call-timeout", c.callTimeoutMs,
                 "Milliseconds per client call; a call without an answer by then is 'unknown'")
      ->capture_default_str();
  app.add_flag(
      "--unsafe-no-sync", c.unsafeNoSync,
      "Pass --unsafe-no-sync to the nodes (faster; SIGKILL does not lose page-cache writes)");
  app.add_flag("--self-test", c.selfTest,
               "After convergence, write a review no client wrote and remove an acknowledged tag "
               "on n1; the checker must then fail (exit 1) naming both");
  app.add_flag("--json", json, "Print one JSON object instead of the text summary");
  app.add_flag("--verbose", c.verbose,
               "Print each fault as it is injected (always in <dir>/nemesis.log)");
  app.add_flag("--print-schedule", printSchedule,
               "Print the fault schedule of --seed/--duration/--nodes and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help exits 0; every usage error exits 2, as the help says (CLI11's
    // own codes, 105 and up, would read as faults found).
    return app.exit(e) == 0 ? 0 : 2;
  }

  if (printSchedule) {
    for (const auto& f : chorus::chaos::schedule(c))
      std::printf("%s\n", chorus::chaos::describe(f).c_str());
    return 0;
  }
  if (access(c.chorusd.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "chorus-chaos: no chorusd at %s (use --chorusd)\n", c.chorusd.c_str());
    return 2;
  }
  auto report = chorus::chaos::run(c);
  if (json) {
    std::printf("%s\n", chorus::chaos::toJson(report, c).c_str());
  } else {
    std::printf("%s", chorus::chaos::toText(report, c).c_str());
  }
  if (!report.ok() && !report.dir.empty()) {
    std::fprintf(stderr, "chorus-chaos: FAILED; node logs, nemesis.log and history.log are in %s\n",
                 report.dir.c_str());
  }
  if (report.interrupted) return 130;
  return report.ok() ? 0 : 1;
}
