// Hot backup and restore of a store, without a running node.
//
// A backup is a directory holding two files:
//   data.mdb         a compacted copy of the store's LMDB file, taken in one
//                    read transaction (one consistent snapshot) while the
//                    store keeps committing writes
//   backup.manifest  what the copy holds, key=value lines (below), written
//                    last: a directory without it is an unfinished backup
//
// The manifest's checksum is BLAKE2b-256 of data.mdb (computed while the
// copy is written, read back in bounded chunks when verified); its root,
// key count, replica id, schema version and HLC high-water mark are read
// from the copy itself, so they describe exactly the snapshot it holds.
//
// Store::backup (store.h) writes one; verifyBackup checks one; restoreBackup
// turns one into a data dir a node can open.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>

#include "crdt/hlc.h"
#include "crdt/result.h"
#include "storage/store.h"

namespace chorus::storage {

// Version of the backup directory's layout and manifest, its first line.
inline constexpr uint32_t kBackupFormatVersion = 1;
inline constexpr const char* kBackupDataFile = "data.mdb";
inline constexpr const char* kBackupManifestFile = "backup.manifest";

// The manifest, one `key=value` per line after the header line
// `chorus-backup 1`:
//   node-id=<text or empty>        replica-id=<16 hex>
//   schema-version=<decimal>       merkle-root=<32 hex>
//   keys=<documents, decimal>      hlc-high-water=<decimal>
//   file-bytes=<size of data.mdb>  checksum=blake2b-256:<64 hex>
//   created-unix-ms=<decimal>
// Unknown keys are ignored by readers (so a newer writer may add some);
// a missing or malformed known key makes the manifest unreadable.
struct BackupManifest {
  std::string nodeId;  // the node that took it, when known; may be empty
  crdt::ReplicaId replicaId = 0;
  uint32_t schemaVersion = 0;
  Hash merkleRoot{};
  uint64_t keys = 0;  // documents, tombstones included
  uint64_t hlcHighWater = 0;
  uint64_t fileBytes = 0;
  std::array<uint8_t, 32> checksum{};  // BLAKE2b-256 of data.mdb
  uint64_t createdUnixMillis = 0;

  std::string encode() const;
  static Result<BackupManifest> decode(std::string_view text);
};

struct BackupOptions {
  std::string nodeId;  // recorded in the manifest; empty when unknown
  // False: data.mdb is not fsync'd (a temporary copy that is deleted after
  // use, such as a snapshot served to a new node, gossip/snapshot-server.h:
  // it spares the disk a write it does not need).
  bool sync = true;
  // False: the copy's pages stay in the page cache once written back (a
  // snapshot is read again at once, to be streamed to a peer); true drops
  // them, so a backup does not push the store's hot pages out.
  bool dropFromCache = true;
};

// Lowercase hex of a hash or checksum, as the manifest writes it.
std::string hexOf(const uint8_t* bytes, size_t size);

// Reads <dir>/backup.manifest. kNotFound when it is missing (not a backup,
// or an unfinished one), kCorruption when it does not parse.
Result<BackupManifest> readBackupManifest(const std::string& dir);

// BLAKE2b-256 of a file and its size, read in 1 MiB chunks (bounded
// memory). kIo if it cannot be read.
struct FileChecksum {
  std::array<uint8_t, 32> checksum{};
  uint64_t bytes = 0;
};
Result<FileChecksum> checksumFile(const std::string& path);

// Checks a backup directory against its manifest, without modifying it:
// the size and checksum of data.mdb, then the copy opened read-only (no
// lock file is created): its schema version, replica id, Merkle root and
// document count must equal the manifest's, and, when its schema is this
// build's, the full Store::verify() recount of every derived structure.
// (An older schema's copy is verified after migration, by restoreBackup.)
// kCorruption names the first mismatch; kNotFound when there is no
// manifest. Runs on the calling thread; takes about as long as reading the
// file once plus a verify().
Result<BackupManifest> verifyBackup(const std::string& dir);

struct RestoreOptions {
  // False (the default): the restored store gets a new, random replica id,
  // so it can run beside the node the backup came from. True: it keeps the
  // backup's replica id, for replacing that node when it is gone for good;
  // two live nodes stamping with one replica id break the merge rules
  // (the same dot for two different tags or votes), and even a lone
  // replacement must catch up before it takes writes (README: Backup and
  // restore).
  bool keepReplicaId = false;
  // Told about steps worth an operator's attention (migration, new id).
  std::function<void(const std::string&)> notice;
  // The backup is this restore's to use up (a snapshot fetched from a peer,
  // gossip/bootstrap.h): its data.mdb is moved into the staging dir, not
  // copied (the two dirs must share a file system), and the backup is
  // checked once, not twice: its size and checksum against the manifest
  // (unless `checksumChecked`: the caller hashed the file as it wrote it),
  // then the opened store's verify(), root and key count. On a failure the
  // moved file is deleted with the staging dir: the backup is gone.
  bool consume = false;
  bool checksumChecked = false;
};

// Prepares `dataDir` from the backup in `backupDir`: verifies the backup
// (verifyBackup), copies data.mdb into a staging dir inside dataDir
// (checking the checksum of the bytes it copies again), sets the replica id
// (RestoreOptions), opens the copy as a Store (migrating an older schema),
// runs verify() and compares the Merkle root and key count with the
// manifest, and only then moves it into place as dataDir/data.mdb. A crash
// or failure at any step leaves no data.mdb in dataDir (the staging dir is
// removed on failure and on the next attempt). The HLC high-water mark is
// kept, so the restored store never stamps below what the backup saw.
// dataDir may exist but must hold no store (kInvalidArgument otherwise) and
// no other process may hold it (kBusy). Returns the backup's manifest with
// replicaId set to the restored store's id.
Result<BackupManifest> restoreBackup(const std::string& backupDir, const std::string& dataDir,
                                     const RestoreOptions& options = {});

}  // namespace chorus::storage
