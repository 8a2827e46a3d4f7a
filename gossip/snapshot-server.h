// gossip::SnapshotServer: the peer's side of snapshot transfer, which lets a
// new node start from a copy of this node's store instead of catching up
// review by review (bootstrap, gossip/bootstrap.h; protocol in
// gossip/README.md, "Bootstrap from a snapshot").
//
// A snapshot is a storage backup (storage/backup.h: a compacted copy made in
// one read transaction while writes go on, and its manifest) written to
// <dataDir>/snapshots/<id>/ on a worker thread. It is streamed while it is
// being written: chunks of `chunkBytes` as the file grows, each with a
// checksum, at most the newcomer's window beyond its last ack, then `end`
// with the manifest once the copy is complete. A snapshot is reused by new
// requests for `reuseForMillis` after it was made and kept for
// `keepForMillis` after its last transfer ended, so a newcomer whose
// connection dropped resumes from the offset it holds; then it is deleted,
// or sooner when a newer one is made (so the disk holds at most the
// snapshots transfers are reading and one more). Snapshot dirs left by an
// earlier run are deleted at start.
//
// Threads: every method runs on the Cluster's loop thread, except that the
// copy runs on a worker thread of the server's own, which calls `wake`
// (from that thread) when it finished.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gossip/gossip.capnp.h"
#include "storage/store.h"

namespace chorus::gossip {

struct SnapshotServerOptions {
  std::string dir;     // where snapshots are written; empty: this node serves none
  std::string nodeId;  // recorded in each snapshot's manifest, and the frames' sender
  size_t chunkBytes = 1u << 20;
  uint32_t maxWindow = 16;  // chunks beyond the last ack, at most (the newcomer asks for fewer)
  uint64_t reuseForMillis = 60'000;
  uint64_t keepForMillis = 600'000;
  // A transfer with no ack, or a connection with no request, for this long
  // is closed.
  uint64_t idleTimeoutMillis = 60'000;
  size_t maxTransfers = 4;  // at once; more are refused with `error` (busy)
  // Told what an operator may want in the log (a snapshot made, a
  // transfer ended); on the loop thread. Unset: nothing is said.
  std::function<void(const std::string&)> notice;
};

class SnapshotServer {
 public:
  // One frame body for connection `conn` (sealed and written by the
  // caller), or, with `close` set, the connection to close once what was
  // queued before it has been written (an `error` must reach the peer).
  struct Send {
    uint64_t conn = 0;
    std::string body;
    bool close = false;
  };

  SnapshotServer(SnapshotServerOptions options, storage::Store& store, std::function<void()> wake);
  // Waits for a copy in progress, then deletes every snapshot.
  ~SnapshotServer();
  SnapshotServer(const SnapshotServer&) = delete;
  SnapshotServer& operator=(const SnapshotServer&) = delete;

  // A snapshot frame that arrived on connection `conn`.
  void received(uint64_t now, uint64_t conn, wire::Snapshot::Reader message);
  // The connection closed (either side): its transfer ends.
  void closed(uint64_t now, uint64_t conn);
  // Progress: a copy that finished or grew, idle transfers, expired
  // snapshots. Called every tick and when woken.
  void poll(uint64_t now);
  std::vector<Send> takeSends();

  uint64_t snapshotsMade() const { return made_; }
  uint64_t chunksSent() const { return chunksSent_; }

 private:
  struct Snapshot;
  struct Transfer {
    std::shared_ptr<Snapshot> snapshot;
    uint64_t next = 0;   // next offset to send
    uint64_t acked = 0;  // the newcomer holds every byte below this
    uint32_t window = 1;
    uint64_t lastHeard = 0;
    bool ended = false;  // `end` sent
  };

  void serve(uint64_t now, uint64_t conn, wire::SnapshotRequest::Reader request);
  void pump(uint64_t conn, Transfer& t);
  void fail(uint64_t conn, const std::string& why);
  void info(uint64_t conn);
  std::shared_ptr<Snapshot> newSnapshot(uint64_t now);
  void finishCopies();  // takes the worker's result
  std::string frame(const std::function<void(wire::Snapshot::Builder)>& fill);

  SnapshotServerOptions options_;
  storage::Store& store_;
  std::function<void()> wake_;
  std::map<std::string, std::shared_ptr<Snapshot>> snapshots_;  // by id
  std::map<uint64_t, Transfer> transfers_;                      // by connection
  std::map<uint64_t, uint64_t> quiet_;  // connections without a transfer: last heard
  std::vector<Send> sends_;
  std::thread worker_;
  uint64_t made_ = 0;
  uint64_t chunksSent_ = 0;
};

// A chunk's checksum: CRC-32C of `data` (the AEAD seal authenticates each
// frame already; this catches a chunk damaged between the file and the
// wire, cheaply: the whole file's BLAKE2b-256 is checked at the end).
uint64_t snapshotChunkChecksum(const uint8_t* data, size_t size);

}  // namespace chorus::gossip
