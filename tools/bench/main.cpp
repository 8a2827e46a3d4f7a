// chorus-bench: benchmarks of Chorus, one subcommand each (see commands.h).
#include <CLI/CLI.hpp>

#include "tools/bench/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"chorus-bench: measures Chorus on this machine and prints what it found"};
  app.require_subcommand(1);
  int exitCode = 0;
  chorus::bench::addStorageBench(app, exitCode);
  chorus::bench::addRpcBench(app, exitCode);
  chorus::bench::addReconcileBench(app, exitCode);
  chorus::bench::addClusterBench(app, exitCode);
  chorus::bench::addLoadBench(app, exitCode);
  chorus::bench::addFeedBench(app, exitCode);
  chorus::bench::addBackupBench(app, exitCode);
  chorus::bench::addBootstrapBench(app, exitCode);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every usage error exits 1.
    return app.exit(e) == 0 ? 0 : 1;
  }
  return exitCode;
}
