// Bootstrap of a node from a peer's snapshot (issue 18): before a node opens
// its store for serving, a node with an empty (or far-behind) data dir
// fetches a consistent copy of a peer's store over the authenticated,
// encrypted gossip channel, verifies it and starts from it; ordinary
// anti-entropy then catches up the writes made since. Protocol and bounds:
// gossip/README.md, "Bootstrap from a snapshot"; the peer's side:
// gossip/snapshot-server.h.
//
//   1. Ask the peers (the seeds, then the members the data dir remembers),
//      one at a time, what they hold (`query` -> `info`: key count, schema).
//   2. Decide: kAuto fetches when the peer holds at least `minKeys` reviews
//      and this node holds none or fewer than half as many; kSnapshot
//      fetches whatever it holds; kAntiEntropy never asks.
//   3. Fetch into <dataDir>/bootstrap/: chunks written as they come (each
//      checked against its checksum), acknowledged, at most `window` in
//      flight. A dropped connection is resumed from the bytes held (also
//      after a restart of this node: the partial file and the snapshot's
//      id stay on disk); a snapshot the peer no longer has is begun again.
//   4. Check the whole file against the manifest's checksum, then restore
//      it (storage::restoreBackup: opened, verify()'d, Merkle root and key
//      count compared with the manifest, a new replica id minted, the HLC
//      high-water kept) into the data dir. A snapshot that fails any check
//      is deleted and never used; one fresh attempt follows.
//   5. Far behind (this node holds reviews already): the snapshot is
//      restored beside the store, every local review is merged into it (so
//      nothing written only here is lost), then it replaces the old store
//      with one rename (finished at the next start after a crash).
//
// Runs on the calling thread (blocking sockets, bounded waits); nothing else
// may have the data dir open.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "crdt/hlc.h"
#include "crdt/result.h"

namespace chorus::gossip {

enum class BootstrapMode { kAuto, kSnapshot, kAntiEntropy };
// "auto", "snapshot", "anti-entropy".
const char* bootstrapModeName(BootstrapMode mode);
Result<BootstrapMode> parseBootstrapMode(std::string_view text);  // kInvalidArgument

struct BootstrapOptions {
  BootstrapMode mode = BootstrapMode::kAuto;
  std::string dataDir;
  std::string nodeId;  // this node's; a peer answering with it is this node itself
  // Gossip addresses to ask, in order (Node: the seeds, then the member
  // file's addresses).
  std::vector<std::string> peers;
  // Cluster keys (base64), used when <dataDir>/keyring does not exist yet.
  std::vector<std::string> keys;
  // kAuto: a peer holding fewer reviews is caught up by anti-entropy.
  uint64_t minKeys = 10'000;
  // How long to look for a peer that answers: kAuto one pass over the
  // peers (each refused at once or given `connectTimeout`), kSnapshot
  // passes until this runs out.
  std::chrono::milliseconds findPeerFor{60'000};
  std::chrono::milliseconds connectTimeout{1'000};
  // A peer silent this long during a transfer (it may still be copying):
  // the connection is dropped and resumed.
  std::chrono::milliseconds receiveTimeout{60'000};
  uint32_t window = 8;               // chunks in flight
  size_t maxFrameBytes = 32u << 20;  // as the cluster's
  // Progress and decisions, for an operator's log.
  std::function<void(const std::string&)> notice;

  // FOR TESTS: drop the connection once after this many chunks (0: never),
  // to exercise a resume; flip one byte of the first snapshot's data as it
  // is written, to exercise the refusal of a corrupted snapshot.
  uint64_t testDropAfterChunks = 0;
  bool testCorruptOnce = false;
  // FOR TESTS: end the process (as a crash would) after this many chunks,
  // to exercise a resume by the next start (0: never).
  uint64_t testExitAfterChunks = 0;
};

struct BootstrapOutcome {
  bool fromSnapshot = false;      // false: anti-entropy will catch the node up
  std::string reason;             // why (not), for the log
  std::string peer;               // the node id it came from
  uint64_t keys = 0;              // reviews in the snapshot
  uint64_t bytes = 0;             // of the snapshot file
  uint32_t resumes = 0;           // connections resumed mid-transfer
  uint32_t refused = 0;           // snapshots that failed verification (deleted)
  uint64_t localMerged = 0;       // far behind: local reviews merged into the snapshot
  double fetchSeconds = 0;        // the last transfer: from its request to the file checked
  double restoreSeconds = 0;      // opened, verified and moved into place
  crdt::ReplicaId replicaId = 0;  // the store's new replica id
};

// Errors (the node must not start): kUnavailable when kSnapshot was asked
// and no snapshot could be fetched and verified; kIo / kCorruption from
// the data dir itself. kAuto never fails for want of a peer or a snapshot:
// the outcome says why it stays with anti-entropy.
Result<BootstrapOutcome> bootstrapDataDir(const BootstrapOptions& options);

}  // namespace chorus::gossip
