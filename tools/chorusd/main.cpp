// chorusd: runs one Chorus node (store + RPC server + optional metrics and
// gossip).
//
// Prints "chorusd: listening on HOST:PORT" on stdout once it accepts calls,
// then "chorusd: gossip on HOST:PORT" with --gossip-listen (and
// "chorusd: http on http://HOST:PORT/v1/" and "chorusd: dashboard on
// http://HOST:PORT/" with --http-listen,
// "chorusd: metrics on http://HOST:PORT/metrics" with --metrics-addr).
// SIGINT/SIGTERM: new writes are refused, queued writes commit, then it
// exits 0 (still a member of its cluster: `chorus cluster leave` first to
// take it out for good). SIGHUP: reread --tokens-file (a revoked token's calls are refused
// and its watches end at once; a broken file keeps the previous tokens). Exit codes: 0 clean stop,
// 1 usage or configuration, 2 the node could not start (data dir locked or damaged, address in
// use, --restore-from refused).
//
// Two offline modes open backup files directly and serve nothing (the `chorus` client links
// no LMDB, so they live here): --verify-backup DIR checks a backup (exit 0 good, 5 damaged or
// not a backup); --restore-from DIR --data-dir D --restore-only prepares D and exits (0
// prepared, 5 the backup is damaged or not a backup, 2 D refused: it holds a store, is in use,
// or an I/O error). Both print the backup's manifest, one JSON object with --json.
#include <pthread.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "api/http/overview.h"
#include "api/log.h"
#include "api/node.h"
#include "api/validate.h"
#include "gossip/keyring.h"
#include "storage/backup.h"

namespace {

// A duration flag's value, or exits with a usage error naming the flag.
bool parseDurationFlag(const char* flag, const std::string& text, std::chrono::milliseconds bare,
                       std::chrono::milliseconds& out) {
  auto d = chorus::api::parseDuration(text, bare);
  if (!d.ok()) {
    std::fprintf(stderr, "chorusd: %s: %s\n", flag, d.error().message.c_str());
    return false;
  }
  out = *d;
  return true;
}

// The keys of --cluster-key-file (gossip::readKeyFile, which refuses a file
// other users may read or write). Prints why and returns false when it
// cannot be used.
bool readClusterKeys(const std::string& path, std::vector<std::string>& keys) {
  auto read = chorus::gossip::readKeyFile(path);
  if (!read.ok()) {
    std::fprintf(stderr, "chorusd: --cluster-key-file: %s\n", read.error().message.c_str());
    return false;
  }
  keys = std::move(read).value();
  return true;
}

// A JSON string literal (quoted, escaped).
std::string json(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// A backup's manifest on stdout: one JSON object (the fields in `extra`
// first: `"name":value,` pairs), or aligned lines. The same shape as
// `chorus node backup` prints.
void printManifest(bool asJson, const std::string& extra, const std::string& dir,
                   const chorus::storage::BackupManifest& m) {
  using chorus::storage::hexOf;
  char replica[17];
  std::snprintf(replica, sizeof replica, "%016" PRIx64, m.replicaId);
  std::string root = hexOf(m.merkleRoot.data(), m.merkleRoot.size());
  std::string sum = "blake2b-256:" + hexOf(m.checksum.data(), m.checksum.size());
  if (asJson) {
    std::printf(
        "{%s\"dir\":%s,\"node_id\":%s,\"replica_id\":\"%s\",\"schema_version\":%u,"
        "\"merkle_root\":\"%s\",\"keys\":%" PRIu64 ",\"hlc_high_water\":%" PRIu64
        ",\"file_bytes\":%" PRIu64 ",\"checksum\":\"%s\",\"created_unix_ms\":%" PRIu64 "}\n",
        extra.c_str(), json(dir).c_str(), json(m.nodeId).c_str(), replica, m.schemaVersion,
        root.c_str(), m.keys, m.hlcHighWater, m.fileBytes, sum.c_str(), m.createdUnixMillis);
    return;
  }
  std::printf("dir:         %s\n", dir.c_str());
  std::printf("node:        %s (replica %s), storage schema %u\n",
              m.nodeId.empty() ? "(unknown)" : m.nodeId.c_str(), replica, m.schemaVersion);
  std::printf("keys:        %" PRIu64 ", merkle root %s\n", m.keys, root.c_str());
  std::printf("data.mdb:    %" PRIu64 " bytes, %s\n", m.fileBytes, sum.c_str());
}

// Exit codes of the offline modes.
constexpr int kExitRestoreRefused = 2;
constexpr int kExitBackupDamaged = 5;

// --verify-backup DIR: checks the backup and prints its manifest.
int verifyBackupOnly(const std::string& dir, bool asJson) {
  auto m = chorus::storage::verifyBackup(dir);
  if (!m.ok()) {
    std::fprintf(stderr, "chorusd: --verify-backup %s: %s\n", dir.c_str(),
                 m.error().toString().c_str());
    return kExitBackupDamaged;
  }
  printManifest(asJson, "\"verified\":true,", dir, *m);
  if (!asJson) std::printf("verified:    ok\n");
  std::fflush(stdout);
  return 0;
}

// --restore-from DIR --restore-only: prepares dataDir and prints the
// backup's manifest with the restored replica id.
int restoreOnly(const std::string& from, const std::string& dataDir, bool replace, bool asJson) {
  auto original = chorus::storage::readBackupManifest(from);
  if (!original.ok()) {
    std::fprintf(stderr, "chorusd: --restore-from %s: %s\n", from.c_str(),
                 original.error().toString().c_str());
    return kExitBackupDamaged;
  }
  chorus::storage::RestoreOptions ro;
  ro.keepReplicaId = replace;
  ro.notice = [](const std::string& what) {
    chorus::api::logf(chorus::api::LogLevel::kInfo, "restore: %s", what.c_str());
  };
  auto m = chorus::storage::restoreBackup(from, dataDir, ro);
  if (!m.ok()) {
    std::fprintf(stderr, "chorusd: --restore-from %s: %s\n", from.c_str(),
                 m.error().toString().c_str());
    // Corruption and a missing manifest are the backup's fault; the rest
    // (a store already there, the dir in use, I/O) the data dir's.
    auto code = m.error().code;
    return code == chorus::ErrorCode::kCorruption || code == chorus::ErrorCode::kNotFound
               ? kExitBackupDamaged
               : kExitRestoreRefused;
  }
  char now[17];
  std::snprintf(now, sizeof now, "%016" PRIx64, m->replicaId);
  printManifest(asJson,
                "\"data_dir\":" + json(dataDir) + ",\"restored_replica_id\":\"" + now +
                    "\",\"replaced\":" + (replace ? "true" : "false") + ",",
                from, *original);
  if (!asJson) {
    std::printf("restored:    into %s, replica id %s (%s)\n", dataDir.c_str(), now,
                replace ? "the backup's: --restore-replace" : "new");
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "chorusd: one node of Chorus, a replicated store for product reviews.\n"
      "Options may also come from a config file (--config, TOML or INI: key = value)."};
  app.set_config("--config", "", "Read options from this file (TOML/INI, e.g. data-dir = \"x\")");
  std::string nodeId;
  std::string dataDir;
  std::string listen = "127.0.0.1:7400";
  std::string metricsAddr;
  std::string httpListen;
  std::string logLevel = "info";
  uint32_t maxInFlight = chorus::RpcLimits{}.maxInFlightPerConnection;
  uint64_t idleTimeoutMs = static_cast<uint64_t>(chorus::RpcLimits{}.idleTimeout.count());
  bool unsafeNoSync = false;
  uint32_t rateLimit = chorus::RpcLimits{}.maxCallsPerSecond;
  uint32_t maxConnections = chorus::RpcLimits{}.maxConnections;
  const chorus::RpcLimits rpcDefaults;
  uint32_t readThreads = rpcDefaults.readThreads;
  uint32_t maxQueuedReads = rpcDefaults.maxQueuedReads;
  uint32_t maxUnfinishedCalls = rpcDefaults.maxUnfinishedCalls;
  size_t maxReplyQueueBytes = rpcDefaults.maxQueuedReplyBytes;
  size_t maxConnectionBytes = rpcDefaults.maxConnectionBytes;
  uint32_t maxWatchesPerConnection = rpcDefaults.maxWatchesPerConnection;
  uint32_t maxWatches = rpcDefaults.maxWatches;
  uint64_t authTimeoutMs = static_cast<uint64_t>(rpcDefaults.authTimeout.count());
  uint32_t maxUnauthenticated = rpcDefaults.maxUnauthenticated;
  uint32_t maxUnauthenticatedPerAddress = rpcDefaults.maxUnauthenticatedPerAddress;
  size_t unauthMessageBytes = rpcDefaults.unauthenticatedMaxMessageBytes;
  uint32_t unauthUnfinishedCalls = rpcDefaults.unauthenticatedMaxUnfinishedCalls;
  size_t unauthReplyQueueBytes = rpcDefaults.unauthenticatedMaxQueuedReplyBytes;
  size_t unauthConnectionBytes = rpcDefaults.unauthenticatedMaxConnectionBytes;
  std::string tokensFile;
  bool noAuth = false;
  std::string clusterKeyFile;
  std::string gossipListen;
  std::vector<std::string> join;
  std::string advertise;
  std::string antiEntropyInterval = "1000";
  std::string clockOffset = "0";
  std::string region = chorus::gossip::ClusterOptions{}.region;
  bool rejoin = false;
  std::string forgetDeadAfter = "24h";
  uint32_t sessionWaitMs = static_cast<uint32_t>(chorus::Node::Options{}.sessionWait.count());
  bool noDeltaPush = false;
  std::string bootstrapMode = "auto";
  uint64_t bootstrapMinKeys = chorus::gossip::BootstrapOptions{}.minKeys;
  uint64_t testSnapshotDropAfter = 0;
  uint64_t testSnapshotExitAfter = 0;
  bool testSnapshotCorrupt = false;
  auto* nodeIdOption = app.add_option(
      "--node-id", nodeId, "Name of this node, shown by `chorus node status` (required to serve)");
  auto* dataDirOption = app.add_option(
      "--data-dir", dataDir,
      "Directory of the store (created if missing); required except with --verify-backup");
  std::string restoreFrom;
  bool restoreReplace = false;
  bool restoreOnlyMode = false;
  std::string verifyDir;
  bool asJson = false;
  auto* restoreFromOption =
      app.add_option("--restore-from", restoreFrom,
                     "First prepare --data-dir from this backup (chorus node backup): verified,\n"
                     "copied, given a new replica id; refused if the backup is damaged or the\n"
                     "data dir already holds a store. The node then joins and catches up as usual")
          ->type_name("DIR");
  auto* restoreReplaceFlag = app.add_flag(
      "--restore-replace", restoreReplace,
      "With --restore-from: keep the backup's replica id, ONLY to replace the node it came\n"
      "from, which must never run again (two live nodes with one replica id break the merge\n"
      "rules)");
  auto* offlineGroup = app.add_option_group(
      "Offline",
      "Work on backup files on this host, serve nothing, and exit (no node may run "
      "on the data dir)");
  auto* restoreOnlyFlag = offlineGroup->add_flag(
      "--restore-only", restoreOnlyMode,
      "With --restore-from: prepare --data-dir, print the backup's manifest and the restored\n"
      "replica id, and exit without serving (--node-id not needed). Exit 0 prepared; 5 the\n"
      "backup is damaged or not a backup (nothing written); 2 the data dir already holds a\n"
      "store, is in use, or an I/O error");
  auto* verifyOption =
      offlineGroup
          ->add_option("--verify-backup", verifyDir,
                       "Check the backup in DIR without changing it (the checksum of data.mdb,\n"
                       "the copy's replica id, root and key count against the manifest, a full\n"
                       "recount of its derived data), print its manifest, and exit: 0 good; 5\n"
                       "damaged, unreadable or not a backup")
          ->type_name("DIR");
  auto* jsonFlag = offlineGroup->add_flag(
      "--json", asJson,
      "With --verify-backup or --restore-only: print one JSON object, as `chorus --json node\n"
      "backup` does, with \"verified\":true or \"data_dir\",\"restored_replica_id\",\"replaced\"\n"
      "first");
  verifyOption->excludes(restoreFromOption)
      ->excludes(restoreOnlyFlag)
      ->excludes(dataDirOption)
      ->excludes(nodeIdOption);
  app.add_option("--listen", listen, "RPC address host:port (port 0 = any free port)")
      ->capture_default_str();
  app.add_option("--metrics-addr", metricsAddr,
                 "Serve Prometheus metrics at http://host:port/metrics (off if empty)");
  app.add_option("--http-listen", httpListen,
                 "Serve the HTTP/JSON API at http://host:port/v1/ (port 0 = any free port; off "
                 "if empty): every RPC operation as a route, documented at /v1/openapi.json, "
                 "with the same tokens (Authorization: Bearer), roles and limits as RPC")
      ->type_name("HOST:PORT");
  std::vector<std::string> overviewNodes;
  app.add_option("--overview-nodes", overviewNodes,
                 "RPC addresses of the cluster's other nodes, HOST:PORT[,...] (repeatable): the "
                 "dashboard at http://HOST:PORT/ of --http-listen (GET /v1/cluster/overview) asks "
                 "these with the caller's admin token; members not listed are shown but not "
                 "asked (an address learned over gossip never gets the token)")
      ->type_name("HOST:PORT[,...]")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--log-level", logLevel, "error, warn, info or debug")
      ->capture_default_str()
      ->check(CLI::IsMember({"error", "warn", "info", "debug"}));
  app.add_option("--max-in-flight", maxInFlight,
                 "Calls in flight per connection before `overloaded`")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1'000'000u));
  app.add_option("--idle-timeout-ms", idleTimeoutMs,
                 "Close connections without calls or watches after this long")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{10}, uint64_t{86'400'000}));
  app.add_option("--rate-limit", rateLimit,
                 "Calls per second per connection, with bursts of " +
                     std::to_string(chorus::RpcLimits{}.callBurst) +
                     ", before calls get `overloaded` (0 = no limit)")
      ->capture_default_str();
  app.add_option("--max-connections", maxConnections,
                 "Authenticated RPC connections (every connection with --no-auth); beyond it "
                 "authenticate answers `overloaded` (--no-auth: closed at accept)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1'000'000u));
  app.add_option("--read-threads", readThreads,
                 "Threads that run reads (get, list, summary, byAuthor) off the RPC thread "
                 "(0 = one per core, " +
                     std::to_string(std::max(1u, std::thread::hardware_concurrency())) + " here)")
      ->capture_default_str()
      ->check(CLI::Range(0u, 1'024u));
  app.add_option("--max-queued-reads", maxQueuedReads,
                 "Reads waiting for a read thread before reads get `overloaded`")
      ->capture_default_str()
      ->check(CLI::Range(1u, 10'000'000u));
  app.add_option("--session-wait-ms", sessionWaitMs,
                 "Read your writes: how long a read given a session token waits for this node "
                 "to hold that write (pulling it from peers) before it answers `unavailable`")
      ->capture_default_str()
      ->check(CLI::Range(0u, 60'000u));
  auto* limitsGroup = app.add_option_group(
      "RPC limits",
      "Per-connection bounds; a connection over one is closed and what it held freed");
  limitsGroup
      ->add_option("--max-unfinished-calls", maxUnfinishedCalls,
                   "Calls a connection sent and did not finish (answered or not) before it is "
                   "closed")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1'000'000u));
  limitsGroup
      ->add_option("--max-reply-queue-bytes", maxReplyQueueBytes,
                   "Bytes of replies and watch changes queued for a client that does not read "
                   "them, before it is closed")
      ->capture_default_str()
      ->check(CLI::Range(size_t{64 << 10}, size_t{1} << 40));
  limitsGroup
      ->add_option("--max-connection-bytes", maxConnectionBytes,
                   "A connection's memory figure (request bytes held + queued reply bytes + "
                   "10 KiB per unfinished call + 1 KiB per watch) before it is closed")
      ->capture_default_str()
      ->check(CLI::Range(size_t{64 << 10}, size_t{1} << 40));
  limitsGroup
      ->add_option("--max-watches-per-connection", maxWatchesPerConnection,
                   "Watches per connection; more get `overloaded`")
      ->capture_default_str()
      ->check(CLI::Range(0u, 1'000'000u));
  limitsGroup
      ->add_option("--max-watches", maxWatches, "Watches on this node; more get `overloaded`")
      ->capture_default_str()
      ->check(CLI::Range(0u, 10'000'000u));
  limitsGroup
      ->add_option("--auth-timeout-ms", authTimeoutMs,
                   "Close a connection that has no valid token this long after it opened (or "
                   "after its token was revoked)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{10}, uint64_t{3'600'000}));
  limitsGroup
      ->add_option("--max-unauthenticated", maxUnauthenticated,
                   "Connections without a valid token (yet); a newcomer evicts the oldest. They "
                   "do not count toward --max-connections")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1'000'000u));
  limitsGroup
      ->add_option("--max-unauthenticated-per-address", maxUnauthenticatedPerAddress,
                   "Connections without a valid token from one source address; a newcomer "
                   "evicts that address's oldest")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1'000'000u));
  limitsGroup
      ->add_option("--unauthenticated-max-message-bytes", unauthMessageBytes,
                   "Largest message read from a connection without a valid token")
      ->capture_default_str()
      ->check(CLI::Range(size_t{4 << 10}, size_t{1} << 30));
  limitsGroup
      ->add_option("--unauthenticated-max-unfinished-calls", unauthUnfinishedCalls,
                   "--max-unfinished-calls for a connection without a valid token")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1'000'000u));
  limitsGroup
      ->add_option("--unauthenticated-max-reply-queue-bytes", unauthReplyQueueBytes,
                   "--max-reply-queue-bytes for a connection without a valid token")
      ->capture_default_str()
      ->check(CLI::Range(size_t{16 << 10}, size_t{1} << 40));
  limitsGroup
      ->add_option("--unauthenticated-max-connection-bytes", unauthConnectionBytes,
                   "--max-connection-bytes for a connection without a valid token")
      ->capture_default_str()
      ->check(CLI::Range(size_t{64 << 10}, size_t{1} << 40));
  app.add_flag("--unsafe-no-sync", unsafeNoSync,
               "Skip fsync at commit: an OS crash may lose acknowledged writes "
               "(benchmarks and throwaway test clusters only)");
  auto* tokens = app.add_option("--tokens-file", tokensFile,
                                "Client tokens: `principal roles hash` per line (make entries "
                                "with `chorus token create`); required unless --no-auth. "
                                "SIGHUP rereads it")
                     ->type_name("FILE");
  app.add_flag(
         "--no-auth", noAuth,
         "Serve every RPC and HTTP client as admin without a token (tests on a trusted host only)")
      ->excludes(tokens);
  auto* gossipGroup = app.add_option_group("Cluster");
  gossipGroup
      ->add_option("--gossip-listen", gossipListen,
                   "Join a cluster: gossip address host:port (port 0 = any free port)")
      ->type_name("HOST:PORT");
  gossipGroup
      ->add_option("--join", join,
                   "Gossip address of a node to join through; repeat or separate with commas")
      ->delimiter(',')
      ->type_name("HOST:PORT");
  gossipGroup
      ->add_option("--advertise", advertise,
                   "Gossip address peers should dial (default: the bound --gossip-listen address)")
      ->type_name("HOST:PORT");
  gossipGroup
      ->add_option("--cluster-key-file", clusterKeyFile,
                   "Cluster key(s) that encrypt and authenticate gossip: base64, one per line, "
                   "the first is the primary (make one with `chorus cluster keys generate`). "
                   "Needed at a node's first start; afterwards <data-dir>/keyring is used")
      ->type_name("FILE");
  gossipGroup
      ->add_option("--anti-entropy-interval", antiEntropyInterval,
                   "How often to compare Merkle trees with a peer: milliseconds, or with a unit "
                   "(500ms, 2s)")
      ->capture_default_str();
  auto* regionOption =
      gossipGroup
          ->add_option("--region", region,
                       "This node's region (1-64 letters, digits, '-', '_', '.'; e.g. us-east): "
                       "dissemination and repair prefer peers of the same region, and "
                       "`chorus cluster partition --split` takes region names")
          ->capture_default_str()
          ->type_name("NAME");
  auto* rejoinOption = gossipGroup->add_flag(
      "--rejoin", rejoin,
      "Join again after this node left (`chorus cluster leave`) or was removed (`chorus "
      "cluster remove`); without it such a node stays out, with a warning");
  auto* forgetOption =
      gossipGroup
          ->add_option("--forget-dead-after", forgetDeadAfter,
                       "Forget a dead member this long after it was declared dead (a left or "
                       "removed one: its tombstone); a duration (30m, 24h; a bare number is "
                       "milliseconds), at least 1s")
          ->capture_default_str();
  gossipGroup->add_flag("--no-delta-push", noDeltaPush,
                        "FOR TESTS: do not broadcast local writes; they reach peers only by "
                        "anti-entropy and by session reads' pulls");
  auto* bootstrapOption =
      gossipGroup
          ->add_option(
              "--bootstrap", bootstrapMode,
              "How a node with an empty or far-behind data dir catches up, before it serves: "
              "`snapshot` fetches a verified copy of a peer's store (--join seeds, else the "
              "member list) and starts from it; `anti-entropy` syncs review by review; `auto` "
              "takes a snapshot when the peer holds at least --bootstrap-min-keys reviews and "
              "this node none or fewer than half as many")
          ->capture_default_str()
          ->check(CLI::IsMember({"auto", "snapshot", "anti-entropy"}));
  auto* bootstrapMinOption =
      gossipGroup
          ->add_option("--bootstrap-min-keys", bootstrapMinKeys,
                       "--bootstrap auto: a peer holding fewer reviews is caught up by "
                       "anti-entropy, which is as quick for small stores")
          ->capture_default_str();
  auto* testDropOption = gossipGroup->add_option(
      "--test-snapshot-drop-after", testSnapshotDropAfter,
      "FOR TESTS: drop the snapshot connection once after this many chunks (it resumes)");
  auto* testExitOption = gossipGroup->add_option(
      "--test-snapshot-exit-after", testSnapshotExitAfter,
      "FOR TESTS: exit (as a crash would) after this many snapshot chunks; the next start resumes");
  auto* testCorruptOption = gossipGroup->add_flag(
      "--test-snapshot-corrupt", testSnapshotCorrupt,
      "FOR TESTS: flip one byte of the first snapshot fetched (it must be refused)");
  gossipGroup
      ->add_option("--clock-offset", clockOffset,
                   "FOR TESTS: skew this node's clock by a duration (-30s, 5m, 1500ms; a bare "
                   "number is milliseconds)")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 1;
  }
  chorus::api::setLogLevel(*chorus::api::parseLogLevel(logLevel));
  if (jsonFlag->count() > 0 && verifyOption->count() == 0 && !restoreOnlyMode) {
    std::fprintf(stderr, "chorusd: --json needs --verify-backup or --restore-only\n");
    return 1;
  }
  if (verifyOption->count() > 0) return verifyBackupOnly(verifyDir, asJson);
  if (restoreOnlyMode && restoreFrom.empty()) {
    std::fprintf(stderr, "chorusd: --restore-only needs --restore-from\n");
    return 1;
  }
  if (dataDir.empty()) {
    std::fprintf(stderr, "chorusd: --data-dir is required (see --help)\n");
    return 1;
  }
  if (restoreOnlyMode) return restoreOnly(restoreFrom, dataDir, restoreReplace, asJson);
  if (nodeId.empty()) {
    std::fprintf(stderr, "chorusd: --node-id is required (see --help)\n");
    return 1;
  }
  std::chrono::milliseconds antiEntropy{}, offset{}, forgetDead{};
  if (!parseDurationFlag("--anti-entropy-interval", antiEntropyInterval,
                         std::chrono::milliseconds(1), antiEntropy) ||
      !parseDurationFlag("--clock-offset", clockOffset, std::chrono::milliseconds(1), offset) ||
      !parseDurationFlag("--forget-dead-after", forgetDeadAfter, std::chrono::milliseconds(1),
                         forgetDead)) {
    return 1;
  }
  if (forgetDead < std::chrono::seconds(1)) {
    std::fprintf(stderr, "chorusd: --forget-dead-after: must be at least 1s (default 24h)\n");
    return 1;
  }
  if (auto bad = chorus::api::checkRegion(region)) {
    std::fprintf(stderr, "chorusd: --region: %s\n", bad->message.c_str());
    return 1;
  }
  if (antiEntropy < std::chrono::milliseconds(10) || antiEntropy > std::chrono::hours(1)) {
    std::fprintf(stderr, "chorusd: --anti-entropy-interval: must be between 10ms and 1h\n");
    return 1;
  }
  if (gossipListen.empty() && (!join.empty() || !advertise.empty())) {
    std::fprintf(stderr, "chorusd: --join and --advertise need --gossip-listen\n");
    return 1;
  }
  if (gossipListen.empty() &&
      (regionOption->count() > 0 || rejoinOption->count() > 0 || forgetOption->count() > 0)) {
    std::fprintf(stderr,
                 "chorusd: --region, --rejoin and --forget-dead-after need --gossip-listen\n");
    return 1;
  }
  if (gossipListen.empty() && (bootstrapOption->count() > 0 || bootstrapMinOption->count() > 0 ||
                               testDropOption->count() > 0 || testExitOption->count() > 0 ||
                               testCorruptOption->count() > 0)) {
    std::fprintf(stderr, "chorusd: --bootstrap and its options need --gossip-listen\n");
    return 1;
  }
  if (gossipListen.empty() && !clusterKeyFile.empty()) {
    std::fprintf(stderr, "chorusd: --cluster-key-file needs --gossip-listen\n");
    return 1;
  }
  if (restoreFrom.empty() && restoreReplaceFlag->count() > 0) {
    std::fprintf(stderr, "chorusd: --restore-replace needs --restore-from\n");
    return 1;
  }
  std::vector<std::string> clusterKeys;
  if (!clusterKeyFile.empty() && !readClusterKeys(clusterKeyFile, clusterKeys)) return 1;
  for (const auto& seed : join) {
    if (seed.empty() || seed.find(':') == std::string::npos) {
      std::fprintf(stderr, "chorusd: --join: '%s' is not host:port\n", seed.c_str());
      return 1;
    }
  }

  // Block the stop signals in every thread (threads inherit the mask), then
  // wait for them synchronously below: no async-signal-safety concerns.
  sigset_t stopSignals;
  sigemptyset(&stopSignals);
  sigaddset(&stopSignals, SIGINT);
  sigaddset(&stopSignals, SIGTERM);
  sigaddset(&stopSignals, SIGHUP);  // reload the tokens file
  pthread_sigmask(SIG_BLOCK, &stopSignals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  if (!restoreFrom.empty()) {
    chorus::storage::RestoreOptions ro;
    ro.keepReplicaId = restoreReplace;
    ro.notice = [](const std::string& what) {
      chorus::api::logf(chorus::api::LogLevel::kInfo, "restore: %s", what.c_str());
    };
    auto restored = chorus::storage::restoreBackup(restoreFrom, dataDir, ro);
    if (!restored.ok()) {
      std::fprintf(stderr, "chorusd: --restore-from %s: %s\n", restoreFrom.c_str(),
                   restored.error().toString().c_str());
      return 2;
    }
    chorus::api::logf(chorus::api::LogLevel::kInfo,
                      "restored %llu reviews from %s into %s (backup of node '%s')",
                      static_cast<unsigned long long>(restored->keys), restoreFrom.c_str(),
                      dataDir.c_str(), restored->nodeId.c_str());
  }

  chorus::Node::Options options;
  options.nodeId = nodeId;
  options.dataDir = dataDir;
  options.listen = listen;
  options.metricsAddr = metricsAddr;
  options.httpListen = httpListen;
  for (const auto& item : overviewNodes) {
    if (auto s = chorus::api::http::addOverviewNodes(item, options.overviewNodes); !s.ok()) {
      std::fprintf(stderr, "chorusd: --overview-nodes: %s\n", s.error().message.c_str());
      return 1;
    }
  }
  if (!options.overviewNodes.empty() && httpListen.empty()) {
    std::fprintf(stderr, "chorusd: --overview-nodes needs --http-listen (the dashboard)\n");
    return 1;
  }
  options.rpc.maxInFlightPerConnection = maxInFlight;
  options.rpc.idleTimeout = std::chrono::milliseconds(idleTimeoutMs);
  options.rpc.maxCallsPerSecond = rateLimit;
  options.rpc.maxConnections = maxConnections;
  options.rpc.readThreads = readThreads;
  options.rpc.maxQueuedReads = maxQueuedReads;
  options.rpc.maxUnfinishedCalls = maxUnfinishedCalls;
  options.rpc.maxQueuedReplyBytes = maxReplyQueueBytes;
  options.rpc.maxConnectionBytes = maxConnectionBytes;
  options.rpc.maxWatchesPerConnection = maxWatchesPerConnection;
  options.rpc.maxWatches = maxWatches;
  options.rpc.authTimeout = std::chrono::milliseconds(authTimeoutMs);
  options.rpc.maxUnauthenticated = maxUnauthenticated;
  options.rpc.maxUnauthenticatedPerAddress = maxUnauthenticatedPerAddress;
  options.rpc.unauthenticatedMaxMessageBytes = unauthMessageBytes;
  options.rpc.unauthenticatedMaxUnfinishedCalls = unauthUnfinishedCalls;
  options.rpc.unauthenticatedMaxQueuedReplyBytes = unauthReplyQueueBytes;
  options.rpc.unauthenticatedMaxConnectionBytes = unauthConnectionBytes;
  options.rpc.tokensFile = tokensFile;
  options.rpc.noAuth = noAuth;
  options.store.unsafeNoSync = unsafeNoSync;
  options.sessionWait = std::chrono::milliseconds(sessionWaitMs);
  if (offset.count() != 0) {
    options.store.clock = [base = chorus::crdt::systemClock(),
                           ms = static_cast<int64_t>(offset.count())]() -> uint64_t {
      int64_t now = static_cast<int64_t>(base()) + ms;
      return now < 0 ? 0 : static_cast<uint64_t>(now);
    };
    chorus::api::logf(chorus::api::LogLevel::kWarn, "clock skewed by %lld ms (--clock-offset)",
                      static_cast<long long>(offset.count()));
  }
  options.cluster.listen = gossipListen;
  options.cluster.seeds = join;
  options.cluster.advertise = advertise;
  options.cluster.antiEntropyInterval = antiEntropy;
  options.cluster.keys = clusterKeys;
  options.cluster.region = region;
  options.cluster.rejoin = rejoin;
  options.cluster.forgetDeadAfter = forgetDead;
  options.cluster.pushDeltas = !noDeltaPush;
  options.bootstrap.mode = *chorus::gossip::parseBootstrapMode(bootstrapMode);
  options.bootstrap.minKeys = bootstrapMinKeys;
  options.bootstrap.testDropAfterChunks = testSnapshotDropAfter;
  options.bootstrap.testCorruptOnce = testSnapshotCorrupt;
  options.bootstrap.testExitAfterChunks = testSnapshotExitAfter;
  auto node = chorus::Node::open(std::move(options));
  if (!node.ok()) {
    const auto& e = node.error();
    if (e.code == chorus::ErrorCode::kIo && e.message.rfind("cannot listen", 0) == 0) {
      std::fprintf(stderr, "chorusd: %s\n", e.message.c_str());  // the address and why, plainly
    } else {
      std::fprintf(stderr, "chorusd: cannot start: %s\n", e.toString().c_str());
    }
    return node.error().code == chorus::ErrorCode::kInvalidArgument ? 1 : 2;
  }
  std::printf("chorusd: listening on %s\n", (*node)->rpcAddress().c_str());
  if (auto* cluster = (*node)->cluster()) {
    std::printf("chorusd: gossip on %s\n", cluster->address().c_str());
  }
  if (!(*node)->httpAddress().empty()) {
    std::printf("chorusd: http on http://%s/v1/\n", (*node)->httpAddress().c_str());
    std::printf("chorusd: dashboard on http://%s/\n", (*node)->httpAddress().c_str());
  }
  if (!(*node)->metricsAddress().empty()) {
    std::printf("chorusd: metrics on http://%s/metrics\n", (*node)->metricsAddress().c_str());
  }
  std::fflush(stdout);
  chorus::api::logf(chorus::api::LogLevel::kInfo, "node %s serving data dir %s", nodeId.c_str(),
                    dataDir.c_str());

  int signal = 0;
  while (sigwait(&stopSignals, &signal) == 0 && signal == SIGHUP) {
    if (tokensFile.empty()) {
      chorus::api::logf(chorus::api::LogLevel::kWarn, "SIGHUP: no --tokens-file to reload");
      continue;
    }
    auto reloaded = (*node)->reloadTokens();  // logs what changed
    if (!reloaded.ok()) {
      chorus::api::logf(chorus::api::LogLevel::kError, "SIGHUP: kept the previous tokens: %s",
                        reloaded.error().toString().c_str());
    }
  }
  chorus::api::logf(chorus::api::LogLevel::kInfo,
                    "%s: refusing new writes, committing queued ones, stopping", strsignal(signal));
  (*node)->shutdown();
  node.value().reset();  // closes the store
  std::printf("chorusd: stopped\n");
  std::fflush(stdout);
  return 0;
}
