# The client API of a Chorus node (Cap'n Proto RPC).
#
# Versioning: this file id is the API's identity. Fields and methods are only
# ever added (with new ordinals), never renumbered or retyped; a breaking
# change gets a new interface. `NodeStatus.apiVersion` reports `apiVersion` below.
#
# Errors: every method's results start with `error :Error`. When it is not
# set (hasError() is false) the call succeeded and the other results are
# valid; when it is set the call had no effect and the other results are
# unset. RPC-level exceptions (disconnected, overloaded by the transport)
# still happen and mean "unavailable: retry elsewhere or later".
@0xd2bdc79027679372;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("chorus::api::wire");

const apiVersion :UInt32 = 6;  # 2: authenticate, Admin.keys, unauthenticated;
                               # 3: Admin.leave/remove, regions, member state `left`
                               # 4: Admin.health (any role)
                               # 5: ReviewStore.page
                               # 6: Admin.backup

enum ErrorCode {
  invalidArgument @0;  # the input is wrong; `field` names which part
  notFound @1;         # no such review (or it was deleted)
  forbidden @2;        # the operation is not allowed for this caller/input
  overloaded @3;       # a limit (calls in flight, calls per second); retry with backoff
  unavailable @4;      # the node is shutting down or cannot serve
  internal @5;         # a bug or a storage fault; the message says which
  unauthenticated @6;  # no token (call Chorus.authenticate) or an unknown one
}

struct Error {
  code @0 :ErrorCode;
  field @1 :Text;      # e.g. "title", "rating"; empty when not about a field
  message @2 :Text;    # for humans: what went wrong and what to do
}

enum Visibility {
  visible @0;
  hidden @1;
  flagged @2;
}

enum Order {
  newest @0;
  highestRating @1;
  lowestRating @2;
}

# A review as readers see it.
struct Review {
  product @0 :Text;
  author @1 :Text;
  rating @2 :UInt8;              # 1-5
  title @3 :Text;
  body @4 :Text;
  editedAtMillis @5 :UInt64;     # HLC physical part of the last edit
  tags @6 :List(Text);           # sorted
  helpful @7 :UInt32;            # distinct voters
  visibility @8 :Visibility;
  moderationReason @9 :Text;
  reply @10 :Text;               # the merchant's answer; empty if none
  deleted @11 :Bool;             # only in watch changes: the review was erased
}

struct Summary {
  product @0 :Text;
  count @1 :UInt64;
  average @2 :Float64;
  histogram @3 :List(UInt64);    # 5 entries: histogram[r-1] = reviews rated r
  helpfulTotal @4 :UInt64;
}

struct Page {
  reviews @0 :List(Review);
  nextCursor @1 :Text;           # empty when there is no more
}

# One change to a watched product's reviews, after it committed.
struct Change {
  op @0 :Text;                   # put, delete, vote, unvote, tag, untag,
                                 # moderate, reply, or merge (from a peer)
  review @1 :Review;             # the review after the change
  missed @2 :UInt32;             # changes dropped before this one because
                                 # the observer was too slow
}

interface WatchObserver {
  onChange @0 (change :Change);
}

# Dropping the handle (or the connection) ends the watch.
interface WatchHandle {}

interface ReviewStore {
  # Writes (creates or replaces) the author's review of the product.
  put @0 (product :Text, author :Text, rating :UInt8, title :Text, body :Text)
      -> (error :Error, review :Review);
  # Erases the review's text everywhere (a tombstone). notFound if absent.
  erase @1 (product :Text, author :Text) -> (error :Error);
  # Marks the review helpful for `voter` (idempotent). An author cannot vote
  # for their own review (forbidden).
  vote @2 (product :Text, author :Text, voter :Text) -> (error :Error, review :Review);
  unvote @3 (product :Text, author :Text, voter :Text) -> (error :Error, review :Review);
  tag @4 (product :Text, author :Text, tag :Text) -> (error :Error, review :Review);
  untag @5 (product :Text, author :Text, tag :Text) -> (error :Error, review :Review);
  moderate @6 (product :Text, author :Text, visibility :Visibility, reason :Text)
      -> (error :Error, review :Review);
  # The merchant's public answer; empty text removes it.
  reply @7 (product :Text, author :Text, text :Text) -> (error :Error, review :Review);

  get @8 (product :Text, author :Text) -> (error :Error, review :Review);
  # limit 0 means the server default (20); at most 100.
  list @9 (product :Text, order :Order, cursor :Text, limit :UInt32)
      -> (error :Error, page :Page);
  summary @10 (product :Text) -> (error :Error, summary :Summary);
  byAuthor @11 (author :Text, cursor :Text, limit :UInt32)
      -> (error :Error, page :Page);
  # A product page in one call: `summary` and `list` read from one snapshot
  # of the store, so the two always agree (two calls may see a write land
  # between them). Same arguments, limits and errors as `list`. Since api 5.
  page @13 (product :Text, order :Order, cursor :Text, limit :UInt32)
      -> (error :Error, summary :Summary, page :Page);

  # Streams every committed change of `product`'s reviews to `observer` until
  # `handle` is dropped.
  watch @12 (product :Text, observer :WatchObserver)
      -> (error :Error, handle :WatchHandle);
}

struct StoreStats {
  documents @0 :UInt64;
  mapBytes @1 :UInt64;
  usedBytes @2 :UInt64;
  commits @3 :UInt64;
  writes @4 :UInt64;
  mapGrowths @5 :UInt64;
  refusedStamps @6 :UInt64;
}

struct NodeStatus {
  nodeId @0 :Text;
  replicaId @1 :UInt64;
  version @2 :Text;              # chorus release, e.g. "0.1.0"
  apiVersion @3 :UInt32;
  uptimeMillis @4 :UInt64;
  keyCount @5 :UInt64;
  merkleRoot @6 :Data;           # 16 bytes
  stats @7 :StoreStats;
  gossipAddress @8 :Text;        # empty when the node runs without a cluster
  region @9 :Text;               # its region (chorusd --region); empty without a cluster
}

enum PeerState {
  alive @0;
  suspect @1;                    # a probe failed; it has a while to refute
  dead @2;
  left @3;                       # it left, or an administrator removed it: for good
}

# A peer as the answering node sees it.
struct ClusterMember {
  nodeId @0 :Text;
  gossipAddress @1 :Text;
  rpcAddress @2 :Text;           # its client API address; empty if unknown
  state @3 :PeerState;
  partitioned @4 :Bool;          # traffic to and from it dropped by `partition`
  lastSyncUnixMillis @5 :UInt64; # last completed anti-entropy session; 0 = never
  pendingDeltas @6 :UInt64;      # queued for it, not yet sent
  obsoletePhi @7 :Float64;       # unused since gossip protocol v2 (SWIM has no phi): never set
  region @8 :Text;
  incarnation @9 :UInt64;        # its SWIM incarnation: bumped when it refutes a suspicion
  active @10 :Bool;              # in the answering node's partial view (a broadcast link)
}

# Replication counters of one node since it started.
struct GossipStats {
  framesIn @0 :UInt64;
  framesOut @1 :UInt64;
  bytesIn @2 :UInt64;
  bytesOut @3 :UInt64;
  malformedFrames @4 :UInt64;    # refused frames (each closed its connection)
  partitionDropped @5 :UInt64;   # frames dropped by `partition`
  deltasSent @6 :UInt64;
  deltasReceived @7 :UInt64;
  deltasDropped @8 :UInt64;      # not sent: peer unreachable or queue full
  syncStarted @9 :UInt64;
  syncCompleted @10 :UInt64;
  antiEntropyBytes @11 :UInt64;  # reconcile frames, both directions
  statesRepaired @12 :UInt64;    # states received through anti-entropy
  connectionsRefused @13 :UInt64;  # inbound gossip connections over the cap, closed at once
  authFailures @14 :UInt64;      # frames failing the cluster key check (wrong key, tampered)
  replaysRefused @15 :UInt64;    # authentic frames replayed or reordered, refused
  statesRefused @16 :UInt64;     # well-formed states from peers this node's API rules refuse
  connections @17 :UInt64;       # with peers (hello done), now
  activePeers @18 :UInt64;       # in the partial view, now
  probes @19 :UInt64;            # direct probes sent
  probesFailed @20 :UInt64;      # unanswered, direct and indirect: the member became suspect
  refutations @21 :UInt64;       # suspicions of this node it refuted
  broadcastDuplicates @22 :UInt64;  # deltas received again
  grafts @23 :UInt64;            # deltas fetched after an announcement alone
  pushPulls @24 :UInt64;         # full member-list exchanges started
  versionRefused @25 :UInt64;    # frames of another gossip protocol version
}

# One node's view of the cluster.
struct ClusterView {
  nodeId @0 :Text;
  gossipAddress @1 :Text;
  rpcAddress @2 :Text;
  keyCount @3 :UInt64;
  merkleRoot @4 :Data;           # 16 bytes; equal roots = equal stores
  refusedStamps @5 :UInt64;      # remote stamps refused for clock drift
  partitioned @6 :List(Text);    # node ids this node drops traffic of
  members @7 :List(ClusterMember);  # its peers, without itself; by id
  stats @8 :GossipStats;
  nowUnixMillis @9 :UInt64;      # this node's wall clock, for lastSyncUnixMillis
  region @10 :Text;              # this node's region
  state @11 :PeerState;          # this node's own: alive, or left (it left, or was removed)
  removed @12 :Bool;             # another node removed this one (state is then left)
}

# A health check's answer (Admin.health): cheap, for load balancers and
# scripts. Every field is what the answering node knows on its own; it asks
# no peer.
struct NodeHealth {
  nodeId @0 :Text;
  replicaId @1 :UInt64;
  version @2 :Text;
  apiVersion @3 :UInt32;
  uptimeMillis @4 :UInt64;
  serving @5 :Bool;              # it takes reads and writes
  reason @6 :Text;               # why not, when serving is false; else empty
  keyCount @7 :UInt64;
  merkleRoot @8 :Data;           # 16 bytes; empty if the store could not say
  clustered @9 :Bool;            # runs with a cluster (--gossip-listen)
  region @10 :Text;
  # Its membership view: peers it knows that have not left, by state.
  peersAlive @11 :UInt32;
  peersSuspect @12 :UInt32;
  peersDead @13 :UInt32;
  # Since the most recent completed anti-entropy session with any peer
  # (trees compared and repaired); 0 with `synced` false = never.
  synced @14 :Bool;
  lastSyncMillisAgo @15 :UInt64;
}

interface Admin {
  status @0 () -> (error :Error, status :NodeStatus);

  # The cluster methods answer `unavailable` on a node that runs without a
  # cluster (chorusd without --gossip-listen).

  # Drops all gossip traffic to and from the named peers (added to those
  # already partitioned; ids not yet known apply once such a peer appears).
  # For fault injection. invalidArgument for an empty or oversized id, more
  # than 1024 ids, or this node's own id.
  partition @1 (peers :List(Text)) -> (error :Error);
  # Stops dropping traffic to and from every peer.
  heal @2 () -> (error :Error);
  cluster @3 () -> (error :Error, view :ClusterView);

  # The cluster's gossip keys (see gossip/README.md): `list` them, `install`
  # one (base64, as from `chorus cluster keygen`), `use` one (key or
  # fingerprint) as primary, or `remove` one. Answers the key list after the
  # change; keys are never sent back, only their fingerprints.
  keys @4 (op :KeyOp, key :Text) -> (error :Error, keys :List(ClusterKey));

  # Takes the answering node out of the cluster for good: it tells its
  # peers, waits up to `timeoutMillis` (0 = 10 s, at most 300000) until a
  # peer holds all its data, then gossips no more and refuses writes
  # (unavailable); stop it afterwards. unavailable if no peer was reached in
  # time (the announcement may still spread: the node stays out), or a
  # leave is already running. Start it with --rejoin to join again.
  leave @5 (timeoutMillis :UInt32) -> (error :Error);
  # Declares the member `node` gone for good (a dead node that will not
  # return as it is): every node marks it left and stops dialling it; it is
  # refused if it comes back, until restarted with --rejoin. notFound if the
  # answering node does not know it; invalidArgument (field "node") for an
  # empty or oversized id, or the answering node itself (use leave).
  remove @6 (node :Text) -> (error :Error);

  # Whether the node serves, and its view of the cluster (NodeHealth). Any
  # role may call it (every other Admin method needs admin).
  health @7 () -> (error :Error, health :NodeHealth);

  # Writes a hot backup of the node's store into `dir`, a directory on the
  # node's host (absolute; it must not exist or be empty): a compacted copy
  # of one consistent snapshot and its manifest (storage/backup.h). The node
  # goes on serving reads and writes meanwhile; the call answers when the
  # backup is complete and synced. One at a time per node (unavailable while
  # another runs). invalidArgument (field "dir") for a relative, empty or
  # over-4096-byte path, or a directory that is not empty.
  backup @8 (dir :Text) -> (error :Error, manifest :BackupManifest);
}

# What a backup holds (its backup.manifest, storage/backup.h).
struct BackupManifest {
  nodeId @0 :Text;               # the node that took it
  replicaId @1 :UInt64;
  schemaVersion @2 :UInt32;      # storage schema of the copy
  merkleRoot @3 :Data;           # 16 bytes
  keys @4 :UInt64;               # reviews, deleted ones included
  hlcHighWater @5 :UInt64;
  fileBytes @6 :UInt64;          # size of data.mdb
  checksum @7 :Data;             # BLAKE2b-256 of data.mdb, 32 bytes
  createdUnixMillis @8 :UInt64;
}

enum KeyOp {
  list @0;
  install @1;
  use @2;
  remove @3;
}

struct ClusterKey {
  fingerprint @0 :Text;
  primary @1 :Bool;              # the key this node encrypts with
}

# What a client gets on connect (the bootstrap capability).
#
# A node started with a tokens file serves `reviews` and `admin` capabilities
# whose every call answers `unauthenticated`; `authenticate` with a token
# returns capabilities that act for the token's principal, each call checked
# against its roles (api/README.md has the table). A node started with
# --no-auth serves everyone as admin, and `authenticate` accepts any token.
interface Chorus {
  reviews @0 () -> (reviews :ReviewStore);
  admin @1 () -> (admin :Admin);
  authenticate @2 (token :Text) -> (error :Error, reviews :ReviewStore, admin :Admin,
                                    principal :Text, roles :List(Text));
}
