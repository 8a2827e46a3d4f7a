// chorus-sim: N Chorus replication cores in one process on a simulated
// network, in simulated time, with seeded faults; measures the protocol and
// checks that nothing acknowledged is lost. See tools/sim/README.md.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "tools/sim/simulation.h"

namespace {

using namespace chorus;
using namespace chorus::sim;

std::string quote(const std::string& arg) {
  if (!arg.empty() && arg.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                            "0123456789-_.,:/=+%@") == std::string::npos) {
    return arg;
  }
  std::string q = "'";
  for (char c : arg) {
    if (c == '\'') {
      q += "'\\''";
    } else {
      q += c;
    }
  }
  return q + "'";
}

// The command line that replays this run: the same arguments, `--seed`
// set to `seed`, `--runs` dropped.
std::string replayCommand(int argc, char** argv, uint64_t seed) {
  std::string cmd = quote(argv[0]);
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--seed" || a == "--runs") {
      ++i;
      continue;
    }
    if (a.rfind("--seed=", 0) == 0 || a.rfind("--runs=", 0) == 0) continue;
    cmd += " " + quote(a);
  }
  return cmd + " --seed " + std::to_string(seed);
}

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string json(const SimResult& r, uint64_t seed, const std::string& store,
                 const std::string& protocol) {
  std::string s = "{";
  auto field = [&](const std::string& k, const std::string& v) {
    if (s.size() > 1) s += ", ";
    s += "\"" + k + "\": " + v;
  };
  field("seed", std::to_string(seed));
  field("store", "\"" + store + "\"");
  field("protocol", "\"" + protocol + "\"");
  field("nodes", std::to_string(r.nodes));
  field("total_nodes", std::to_string(r.totalNodes));
  field("regions", std::to_string(r.regions));
  field("simulated_s", num(r.simulatedS));
  field("wall_s", num(r.wallS));
  field("cpu_s", num(r.cpuS));
  field("core_wall_s", num(r.coreWallS));
  field("sim_overhead_wall_s", num(r.wallS - r.coreWallS));
  field("view_poll_wall_s", num(r.viewWallS));
  field("node_seconds_per_wall_s", num(r.simulatedS * r.totalNodes / r.wallS));
  field("node_seconds_per_cpu_s", num(r.simulatedS * r.totalNodes / r.cpuS));
  field("events", std::to_string(r.events));
  field("frames", std::to_string(r.frames));
  field("writes", std::to_string(r.writes));
  field("reads", std::to_string(r.reads));
  field("stale_reads", std::to_string(r.staleReads));
  field("write_to_all_p50_ms", num(r.writeToAllP50Ms));
  field("write_to_all_p99_ms", num(r.writeToAllP99Ms));
  field("write_to_all_max_ms", num(r.writeToAllMaxMs));
  field("heal_converge_s", num(r.healConvergeS));
  field("bytes_per_node_per_s", num(r.bytesPerNodePerS));
  field("membership_bytes_per_node_per_s", num(r.membershipBytesPerNodePerS));
  field("dissemination_bytes_per_node_per_s", num(r.disseminationBytesPerNodePerS));
  field("bytes_per_write", num(r.bytesPerWrite));
  field("cross_region_bytes_per_write", num(r.crossRegionBytesPerWrite));
  field("delta_bytes_mean", num(r.deltaBytesMean));
  field("received_dissemination_bytes_per_write_per_node",
        num(r.receivedDisseminationBytesPerWritePerNode));
  field("receive_ratio", num(r.receiveRatio));
  field("cross_region_dissemination_bytes_per_write", num(r.crossRegionDisseminationBytesPerWrite));
  field("region_pair_ratio_max", num(r.regionPairRatioMax));
  field("max_connections_per_node", std::to_string(r.maxConnectionsPerNode));
  field("mean_connections_per_node", num(r.meanConnectionsPerNode));
  field("max_core_connections_per_node", std::to_string(r.maxCoreConnectionsPerNode));
  field("detect_dead_s", num(r.detectDeadS));
  field("detect_dead_max_s", num(r.detectDeadMaxS));
  field("crashes_detected", std::to_string(r.crashesDetected));
  field("crashes_undetected", std::to_string(r.crashesUndetected));
  field("join_known_s", num(r.joinKnownS));
  field("joins_known", std::to_string(r.joinsKnown));
  field("joins_unknown", std::to_string(r.joinsUnknown));
  field("leave_known_s", num(r.leaveKnownS));
  field("suspicions", std::to_string(r.suspicions));
  field("wrongly_declared_dead", std::to_string(r.wronglyDeclaredDead));
  field("probes_failed", std::to_string(r.probesFailed));
  field("refutations", std::to_string(r.refutations));
  field("broadcast_duplicates", std::to_string(r.broadcastDuplicates));
  field("grafts", std::to_string(r.grafts));
  field("refused_stamps", std::to_string(r.refusedStamps));
  field("lost", std::to_string(r.lost));
  field("lost_with_leaver", std::to_string(r.lostWithLeaver));
  field("roots_equal", r.rootsEqual ? "true" : "false");
  field("ok", r.ok() ? "true" : "false");
  field("trace_hash", "\"" + r.traceHash + "\"");
  return s + "}";
}

void table(const SimResult& r, uint64_t seed, const std::string& store) {
  auto row = [](const char* k, const std::string& v) { std::printf("  %-42s %s\n", k, v.c_str()); };
  std::printf("chorus-sim seed %llu (%s store)\n", (unsigned long long)seed, store.c_str());
  row("nodes (at start / in all)", std::to_string(r.nodes) + " / " + std::to_string(r.totalNodes));
  row("regions", std::to_string(r.regions));
  row("simulated", num(r.simulatedS) + " s");
  row("wall", num(r.wallS) + " s (cores and stores " + num(r.coreWallS) + " s, simulator " +
                  num(r.wallS - r.coreWallS) + " s, of which polling views " +
                  num(r.viewWallS) + " s)");
  row("cpu", num(r.cpuS) + " s");
  row("node-seconds per wall / cpu second", num(r.simulatedS * r.totalNodes / r.wallS) + " / " +
                                                num(r.simulatedS * r.totalNodes / r.cpuS));
  row("events / frames delivered", std::to_string(r.events) + " / " + std::to_string(r.frames));
  row("writes / reads (stale)", std::to_string(r.writes) + " / " + std::to_string(r.reads) + " (" +
                                    std::to_string(r.staleReads) + ")");
  row("write to all p50 / p99 / max", num(r.writeToAllP50Ms) + " / " + num(r.writeToAllP99Ms) +
                                          " / " + num(r.writeToAllMaxMs) + " ms");
  row("converged after the final heal", r.healConvergeS < 0 ? "no" : num(r.healConvergeS) + " s");
  row("bytes per node per s (membership, dissemination)",
      num(r.bytesPerNodePerS) + " (" + num(r.membershipBytesPerNodePerS) + ", " +
          num(r.disseminationBytesPerNodePerS) + ")");
  row("bytes per write (cross-region)",
      num(r.bytesPerWrite) + " (" + num(r.crossRegionBytesPerWrite) + ")");
  row("delta size (mean)", num(r.deltaBytesMean) + " bytes");
  row("received per write per node (ratio)",
      num(r.receivedDisseminationBytesPerWritePerNode) + " bytes (" + num(r.receiveRatio) +
          " x delta)");
  row("worst region pair per write (ratio)",
      num(r.crossRegionDisseminationBytesPerWrite) + " bytes (" + num(r.regionPairRatioMax) +
          " x delta)");
  row("connections per node max / mean",
      std::to_string(r.maxConnectionsPerNode) + " / " + num(r.meanConnectionsPerNode) +
          " (the cores' count: max " + std::to_string(r.maxCoreConnectionsPerNode) + ")");
  row("dead detected after mean / max",
      r.detectDeadS < 0 ? "-" : num(r.detectDeadS) + " / " + num(r.detectDeadMaxS) + " s");
  row("crashes detected / not",
      std::to_string(r.crashesDetected) + " / " + std::to_string(r.crashesUndetected));
  row("joins known to all after (max)",
      r.joinKnownS < 0 ? (r.joinsUnknown ? std::to_string(r.joinsUnknown) + " not known" : "-")
                       : num(r.joinKnownS) + " s");
  row("leaves known to all after (max)", r.leaveKnownS < 0 ? "-" : num(r.leaveKnownS) + " s");
  row("suspicions / wrongly declared dead",
      std::to_string(r.suspicions) + " / " + std::to_string(r.wronglyDeclaredDead));
  row("probes failed / refutations",
      std::to_string(r.probesFailed) + " / " + std::to_string(r.refutations));
  row("broadcast duplicates / grafts",
      std::to_string(r.broadcastDuplicates) + " / " + std::to_string(r.grafts));
  row("merges refused (clock drift)", std::to_string(r.refusedStamps));
  row("lost (acknowledged by a node that left)",
      std::to_string(r.lost) + " (" + std::to_string(r.lostWithLeaver) + ")");
  row("roots equal at the end", r.rootsEqual ? "yes" : "no");
  row("trace hash", r.traceHash);
}

template <typename T>
CLI::Option* durationOption(CLI::App& app, const std::string& name, T& target,
                            const std::string& help) {
  return app
      .add_option_function<std::string>(
          name,
          [&target, name](const std::string& text) {
            auto d = parseDuration(text);
            if (!d.ok()) throw CLI::ValidationError(name, d.error().message);
            target = d.value();
          },
          help)
      ->type_name("DURATION");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "chorus-sim: runs N Chorus replication cores (gossip::ReplicationCore, the protocol\n"
      "chorusd runs) in one process, on a simulated network, in simulated time, with a\n"
      "seeded schedule of faults and a write/read workload; then checks that every\n"
      "acknowledged write reached every live node and that all Merkle roots agree.\n"
      "The same arguments and seed replay the same run (same trace hash). Durations take\n"
      "us, ms, s or min; bandwidths bit, kbit, mbit or gbit. Exit status 1 when a write\n"
      "was lost or the nodes did not converge; the replay command is printed then."};
  SimOptions o;
  std::string regions = "local:0.5ms";
  std::string bandwidth = "1gbit";
  std::string store = "memory";
  std::string protocol = "core";
  std::string lmdbDir;
  bool asJson = false;
  int runs = 1;
  Micros probe = 1 * kSeconds, gossipInterval = 200 * kMillis, antiEntropy = 1 * kSeconds,
         crossAntiEntropy = 10 * kSeconds;
  bool noEagerPush = false;
  std::vector<std::string> joinBurst;
  bool pollSet = false;

  app.add_option("--nodes", o.nodes, "nodes started at time 0")
      ->default_val(5)
      ->check(CLI::Range(1, 100000));
  app.add_option("--seed", o.seed,
                 "seed of everything random in the run (network, faults, "
                 "workload, the cores' PRNGs)")
      ->default_val(1);
  app.add_option("--runs", runs, "run this many seeds, from --seed up, one result each")
      ->default_val(1)
      ->check(CLI::Range(1, 1000000));
  app.add_option("--regions", regions,
                 "regions as name:latency, comma-separated; nodes are dealt to them round "
                 "robin; latency is one way between two nodes of the region")
      ->default_val("local:0.5ms");
  durationOption(app, "--wan", o.network.wanLatency,
                 "one-way latency between nodes of different regions [80ms]");
  app.add_option("--jitter", o.network.jitter,
                 "each frame's latency grows by up to this fraction of it, uniformly [0.1]")
      ->check(CLI::Range(0.0, 10.0));
  app.add_option("--loss", o.network.loss,
                 "probability a frame needs a TCP retransmission (it and the frames behind it "
                 "arrive max(200ms, 2 x latency) later) [0]")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--bandwidth", bandwidth,
                 "per directed link; frames queue behind each other (0 = unlimited)")
      ->default_val("1gbit");
  durationOption(app, "--warmup", o.warmup, "before the workload: nodes start and meet [5s]");
  durationOption(app, "--duration", o.duration,
                 "of the workload; faults happen within it, and at its end every fault heals "
                 "and writes stop [30s]");
  durationOption(app, "--settle", o.settle,
                 "after the final heal, at most: the run ends once every acknowledged write is "
                 "on every member and all roots are equal [60s]");
  app.add_option("--write-rate", o.writeRate,
                 "writes per second over the whole cluster, each "
                 "on a random live node (Poisson)")
      ->default_val(10);
  app.add_option("--read-rate", o.readRate,
                 "reads per second of a random acknowledged write on a random node; counted "
                 "stale when the write is not there yet")
      ->default_val(10);
  app.add_option("--products", o.products, "products the reviews are spread over")
      ->default_val(100)
      ->check(CLI::Range(1, 1000000));
  app.add_option("--update-fraction", o.updateFraction,
                 "fraction of writes that rewrite an existing review (the rest are new ones)")
      ->default_val(0.1)
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--body-bytes", o.bodyBytes, "review text size")->default_val(200);
  durationOption(app, "--split", o.faults.finalSplit,
                 "cut region 0 off from the others for this long, ending when the workload "
                 "ends: the split whose heal convergence heal_converge_s measures [0 = none]");
  app.add_option("--splits", o.faults.splits, "random region splits during the workload")
      ->default_val(0);
  app.add_option("--isolations", o.faults.isolations,
                 "random nodes cut off from everyone, both ways")
      ->default_val(0);
  app.add_option("--one-way", o.faults.oneWay,
                 "random asymmetric partitions: nothing the node sends arrives, it hears all")
      ->default_val(0);
  app.add_option("--crashes", o.faults.crashes,
                 "random crashes: the process dies (store kept, memory lost) and restarts "
                 "after the fault's duration")
      ->default_val(0);
  app.add_option("--pauses", o.faults.pauses,
                 "random pauses (SIGSTOP-like): the node runs nothing; what arrives waits")
      ->default_val(0);
  app.add_option("--skews", o.faults.skews, "random wall-clock jumps (seen by the HLC)")
      ->default_val(0);
  app.add_option_function<std::string>(
         "--max-skew",
         [&](const std::string& text) {
           auto d = parseDuration(text);
           if (!d.ok()) throw CLI::ValidationError("--max-skew", d.error().message);
           o.faults.maxSkewMillis = int64_t(d.value() / kMillis);
         },
         "a skew is uniform in [-this, +this] [5s]")
      ->type_name("DURATION");
  app.add_option("--joins", o.faults.joins, "nodes that start (and join) during the workload")
      ->default_val(0);
  app.add_option("--join-burst", joinBurst,
                 "N AT: N more nodes start all at once at simulated time AT (e.g. 100 20s)")
      ->expected(2)
      ->type_name("N AT");
  app.add_option("--leaves", o.faults.leaves,
                 "nodes that leave for good during the workload: the core announces it and "
                 "runs a last anti-entropy session; the node stops when its core is done, or "
                 "after --leave-timeout")
      ->default_val(0);
  durationOption(app, "--leave-timeout", o.leaveTimeout,
                 "a leaving node stops after this long at most [5s]");
  durationOption(app, "--fault-duration", o.faults.meanDuration,
                 "mean length of a random fault (x U[0.5, 1.5]) [5s]");
  app.add_option("--store", store,
                 "memory (any N), or lmdb: the real storage::Store, one LMDB directory per "
                 "node (small N)")
      ->check(CLI::IsMember({"memory", "lmdb"}))
      ->default_val("memory");
  app.add_option("--protocol", protocol,
                 "core: the replication core chorusd runs; flood: a trivial O(1)-per-node "
                 "baseline (fixed neighbours, 16-byte heartbeats, deltas flooded once; no "
                 "anti-entropy, so faults lose writes under it) that measures the simulator's "
                 "own cost")
      ->check(CLI::IsMember({"core", "flood"}))
      ->default_val("core");
  app.add_option("--lmdb-dir", lmdbDir,
                 "where the LMDB stores go (must not hold earlier ones); default: a temporary "
                 "directory, removed at the end");
  durationOption(app, "--poll", o.pollInterval,
                 "how often each node's membership view is sampled (suspicions, detection) "
                 "[100ms, or N ms beyond 100 nodes]")
      ->each([&](const std::string&) { pollSet = true; });
  durationOption(app, "--commit-latency", o.commitLatency,
                 "a merge of a peer's state commits this long after the core hands it over "
                 "[0: at once]");
  durationOption(app, "--probe-interval", probe,
                 "the core's SWIM probe interval (one member probed per interval) [1s]");
  durationOption(app, "--gossip-interval", gossipInterval,
                 "the core's membership gossip interval [200ms]");
  durationOption(app, "--anti-entropy", antiEntropy,
                 "the core's anti-entropy interval with in-region peers [1s]");
  durationOption(app, "--cross-anti-entropy", crossAntiEntropy,
                 "the core's anti-entropy interval across regions (bridges) [10s]");
  app.add_option("--max-connections", o.maxConnections,
                 "the core's bound on connections with peers")
      ->default_val(32);
  app.add_flag("--no-eager-push", noEagerPush,
               "the core announces deltas only (Plumtree's lazy path: ihave, then graft)");
  app.add_flag("--json", asJson, "one JSON object per run on stdout instead of a table");
  app.add_flag("--verbose", o.verbose, "faults, the cores' warnings and progress on stderr");
  CLI11_PARSE(app, argc, argv);

  auto parsedRegions = parseRegions(regions);
  if (!parsedRegions.ok()) {
    std::fprintf(stderr, "chorus-sim: %s\n", parsedRegions.error().message.c_str());
    return 2;
  }
  o.network.regions = parsedRegions.value();
  auto bw = parseBandwidth(bandwidth);
  if (!bw.ok()) {
    std::fprintf(stderr, "chorus-sim: --bandwidth: %s\n", bw.error().message.c_str());
    return 2;
  }
  o.network.bandwidthBitsPerSecond = bw.value();
  o.probeIntervalMillis = std::max<uint64_t>(1, probe / kMillis);
  o.gossipIntervalMillis = std::max<uint64_t>(1, gossipInterval / kMillis);
  o.antiEntropyMillis = std::max<uint64_t>(1, antiEntropy / kMillis);
  o.crossRegionAntiEntropyMillis = std::max<uint64_t>(1, crossAntiEntropy / kMillis);
  o.eagerPush = !noEagerPush;
  if (!joinBurst.empty()) {
    char* end = nullptr;
    long count = std::strtol(joinBurst[0].c_str(), &end, 10);
    auto at = parseDuration(joinBurst[1]);
    if (*end != '\0' || count < 0 || count > 100000 || !at.ok()) {
      std::fprintf(stderr, "chorus-sim: --join-burst takes a count and a time, e.g. 100 20s\n");
      return 2;
    }
    o.faults.joinBurst = int(count);
    o.faults.joinBurstAt = at.value();
  }
  if (!pollSet && o.nodes > 100) o.pollInterval = Micros(o.nodes) * kMillis;
  o.store = store == "lmdb" ? StoreKind::kLmdb : StoreKind::kMemory;
  o.protocol = protocol == "flood" ? ProtocolKind::kFlood : ProtocolKind::kCore;

  int exitCode = 0;
  uint64_t firstSeed = o.seed;
  for (int run = 0; run < runs; ++run) {
    o.seed = firstSeed + uint64_t(run);
    std::filesystem::path temp;
    if (o.store == StoreKind::kLmdb) {
      if (lmdbDir.empty()) {
        temp = std::filesystem::temp_directory_path() /
               ("chorus-sim-" + std::to_string(::getpid()) + "-" + std::to_string(o.seed));
        o.lmdbDir = temp.string();
      } else {
        o.lmdbDir = lmdbDir + "/seed-" + std::to_string(o.seed);
      }
    }
    auto result = runSimulation(o);
    if (!temp.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(temp, ec);
    }
    if (!result.ok()) {
      std::fprintf(stderr, "chorus-sim: %s\n", result.error().message.c_str());
      return 2;
    }
    const SimResult& r = result.value();
    if (asJson) {
      std::printf("%s\n", json(r, o.seed, store, protocol).c_str());
    } else {
      table(r, o.seed, store);
    }
    std::fflush(stdout);
    if (!r.ok()) {
      exitCode = 1;
      for (const auto& p : r.problems) std::fprintf(stderr, "chorus-sim: %s\n", p.c_str());
      std::fprintf(stderr, "chorus-sim: seed %llu FAILED; replay with:\n  %s\n",
                   (unsigned long long)o.seed, replayCommand(argc, argv, o.seed).c_str());
    }
  }
  return exitCode;
}
