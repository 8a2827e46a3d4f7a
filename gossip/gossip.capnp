# Gossip frames: what nodes send each other over TCP. On the wire each frame
# is one unpacked Cap'n Proto message (a Frame), sealed by
# gossip/secure-channel.h, which carries its length. See gossip/README.md.
@0xc3b6f0e4a1d25a77;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("chorus::gossip::wire");

# Bumped on any change a peer of the previous version would misread. A
# frame of another version is refused (counted, connection closed, and the
# operator warned with both versions).
#   1: full member lists on heartbeats, direct delta push
#   2: SWIM membership, partial views, regions, epidemic broadcast
const protocolVersion :UInt16 = 2;

enum MemberState {
  alive @0;
  suspect @1;
  dead @2;
  left @3;      # left, or removed by an administrator: for good
}

# What one node says about a member (itself or another). For one member, a
# higher incarnation wins; at equal incarnations alive < suspect < dead <
# left. Only the member raises its own incarnation (refuting a suspicion,
# or at each start). `left` is final: only `alive` with `rejoin` set and a
# higher incarnation supersedes it.
struct Member {
  nodeId @0 :Text;
  gossipAddress @1 :Text;   # "host:port" peers dial
  rpcAddress @2 :Text;      # its client API, for `chorus cluster`
  region @3 :Text;
  incarnation @4 :UInt64;
  state @5 :MemberState;
  rejoin @6 :Bool;          # alive again after having left or been removed
}

# A probe (SWIM): `ping` asks the receiver to `ack` with the same seq;
# `pingReq` asks the receiver to ping `target` on the sender's behalf and
# ack the sender if the target answers (else `nack`, Lifeguard).
struct Probe {
  seq @0 :UInt64;
  target @1 :Text;          # pingReq: the member to probe
  targetAddress @2 :Text;
}

# A review's key, as a pull names it.
struct ReviewKey {
  product @0 :Text;
  author @1 :Text;
}

# One write's delta in epidemic broadcast (Plumtree).
struct Broadcast {
  id @0 :UInt64;            # random, chosen by the node that accepted the write
  round @1 :UInt16;         # hops so far
  scope @2 :Text;           # empty: everyone; else only this region
  data @3 :Data;            # crdt/state.capnp encoding
  origin @4 :Text;          # the node that started it: each origin has its own tree
}

struct Frame {
  version @0 :UInt16;
  from @1 :Text;            # the sender's node id
  # Membership updates riding on any frame (SWIM's piggyback), at most
  # ReplicationCore::kMaxPiggyback.
  members @2 :List(Member);
  union {
    # First frame each way on a new connection: who the sender is, and
    # whether the dialler wants the link in both partial views (`active`)
    # or only for a probe or a repair (transient). The acceptor answers
    # with its own hello; `active` there says whether it took the link.
    hello @3 :Hello;
    ping @4 :Probe;
    ack @5 :Probe;
    nack @6 :Probe;
    pingReq @7 :Probe;
    # Only the piggybacked members.
    gossip @8 :Void;
    # Full state exchange (the only frame carrying the whole member list),
    # every pushPullInterval with one random member; answered with
    # `pushPullReply`.
    pushPull @9 :List(Member);
    pushPullReply @10 :List(Member);
    # Plumtree: deltas pushed eagerly along the tree of their origin; ids
    # announced lazily elsewhere; `graft` asks for ids missed (and puts the
    # link in their origins' trees), `prune` takes the link out of the
    # named origins' trees.
    broadcast @11 :List(Broadcast);
    ihave @12 :List(UInt64);
    graft @13 :List(UInt64);
    prune @14 :List(Text);
    # One anti-entropy message (gossip/reconcile.capnp), answered on the
    # same connection.
    reconcile @15 :Data;
    # Read-your-writes (api sessions): "send me your state of these
    # reviews", sent to a few live peers when a read waits for a write this
    # node does not hold yet. Answered on the same connection by `pulled`
    # with the states the receiver holds (none held: no answer). Added
    # within protocol 2: a node built before it refuses the frame as an
    # unknown kind and closes the connection (it is dialled again), so a
    # session read in a mixed cluster may wait its whole bound.
    pull @16 :List(ReviewKey);
    # Review states (crdt/state.capnp) answering a pull; merged like
    # anti-entropy's, after ClusterOptions::admit.
    pulled @17 :List(Data);
    # Snapshot transfer (bootstrap of a new node, gossip/snapshot.h): only
    # on a connection whose first frame is a snapshot query, instead of
    # hello; every frame on it then is one of these. A node of an older
    # build refuses it as an unknown kind, and the newcomer falls back to
    # anti-entropy.
    snapshot @18 :Snapshot;
  }
}

struct Snapshot {
  union {
    # newcomer -> peer: what do you hold? Answered by `info`.
    query @0 :Void;
    info @1 :SnapshotInfo;
    # newcomer -> peer: send a snapshot (a new one, or one begun before).
    # Answered by `start`, then chunks, then `end` (or `error`).
    request @2 :SnapshotRequest;
    start @3 :SnapshotStart;
    chunk @4 :SnapshotChunk;
    # newcomer -> peer: every byte below this offset arrived and is written.
    ack @5 :UInt64;
    # peer: the last chunk has been sent; the snapshot's manifest
    # (storage/backup.h's text form: checksum of the whole file, Merkle
    # root, key count, schema version).
    end @6 :Text;
    # peer: refused or failed (busy, unknown snapshot, no data dir); ends
    # the transfer.
    error @7 :Text;
  }
}

struct SnapshotInfo {
  keys @0 :UInt64;            # documents in the peer's store, tombstones included
  schemaVersion @1 :UInt32;   # its store's schema (storage::kSchemaVersion)
  serves @2 :Bool;            # it can make snapshots (it keeps a data dir)
}

struct SnapshotRequest {
  id @0 :Text;                # empty: a new snapshot; else the one to resume
  offset @1 :UInt64;          # first byte wanted: what the newcomer holds already
  window @2 :UInt32;          # chunks the peer may send beyond the last ack
}

struct SnapshotStart {
  id @0 :Text;                # names the snapshot for a later resume
  offset @1 :UInt64;          # chunks follow from here
  chunkBytes @2 :UInt32;      # every chunk but the last carries this many bytes
}

struct SnapshotChunk {
  offset @0 :UInt64;
  data @1 :Data;
  checksum @2 :UInt64;        # CRC-32C of data
}

struct Hello {
  member @0 :Member;
  active @1 :Bool;
}
