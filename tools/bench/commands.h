// The subcommands of chorus-bench. One file per subcommand defines its
// add*Bench(); main.cpp calls each. A subcommand's callback sets exitCode
// (0 = ran and met its checks).
#pragma once

#include <CLI/CLI.hpp>

namespace chorus::bench {

void addStorageBench(CLI::App& app, int& exitCode);    // storage-bench.cpp
void addRpcBench(CLI::App& app, int& exitCode);        // rpc-bench.cpp
void addReconcileBench(CLI::App& app, int& exitCode);  // reconcile-bench.cpp
void addClusterBench(CLI::App& app, int& exitCode);    // cluster-bench.cpp
void addLoadBench(CLI::App& app, int& exitCode);       // load-bench.cpp
void addFeedBench(CLI::App& app, int& exitCode);       // feed-bench.cpp
void addBackupBench(CLI::App& app, int& exitCode);     // backup-bench.cpp
void addBootstrapBench(CLI::App& app, int& exitCode);  // bootstrap-bench.cpp

}  // namespace chorus::bench
