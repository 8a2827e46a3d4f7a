# Anti-entropy messages: Merkle-tree reconciliation between two replicas.
# A session is stateless on both sides: every message carries what the
# receiver needs to answer it. See gossip/README.md for the exchange.
@0x914e21840e8c5957;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("chorus::gossip::wire");

const reconcileVersion :UInt16 = 1;

struct NodeHashes {
  index @0 :UInt64;         # node index within its level
  hashes @1 :Data;          # its 16 children's hashes, 8 bytes each
}

struct LeafEntry {
  keyHash @0 :UInt64;
  digest @1 :UInt64;        # first 8 bytes of the state digest
}

struct Leaf {
  index @0 :UInt64;         # leaf index
  entries @1 :List(LeafEntry);  # sorted by keyHash
}

struct Reconcile {
  version @0 :UInt16;
  union {
    # initiator -> responder: my root. Answered by inSync or children.
    root @1 :UInt64;
    # Nothing more to exchange (the roots are equal, or the trees changed
    # meanwhile, or the other side wants nothing): ends the session.
    inSync @2 :Void;
    # The children of nodes at `level` that differed. The receiver compares
    # them with its own and answers with the next level (or leaf entries).
    children :group {
      level @3 :UInt8;
      nodes @4 :List(NodeHashes);
    }
    # Entries of leaves that differ. The receiver answers with statesAndWants.
    leaves @5 :List(Leaf);
    # States the sender holds for differing keys, and the key hashes whose
    # states it wants back. Answered by `states`.
    statesAndWants :group {
      states @6 :List(Data);     # canonical review states (crdt/state.capnp)
      wants @7 :List(UInt64);
    }
    # The wanted states. Ends the session.
    states @8 :List(Data);
    # Answer to `root` from a node already busy repairing: try later, or
    # another peer. Ends the session; it does not count as a sync.
    busy @10 :Void;
  }
  # The sender left out part of what differs to keep the message under the
  # size cap (leaves, states or wants): the initiator starts another session
  # at once, which picks up the rest.
  more @9 :Bool;
}
