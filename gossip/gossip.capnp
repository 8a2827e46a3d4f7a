# Gossip frames: what nodes send each other over TCP. On the wire each frame
# is one unpacked Cap'n Proto message (a Frame), sealed by
# gossip/secure-channel.h, which carries its length. See gossip/README.md.
@0xc3b6f0e4a1d25a77;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("chorus::gossip::wire");

# Bumped on any change a peer of the previous version would misread. A
# frame of another version is refused (counted, connection closed).
const protocolVersion :UInt16 = 1;

# A node as its peers know it.
struct Member {
  nodeId @0 :Text;
  gossipAddress @1 :Text;   # "host:port" peers dial
  rpcAddress @2 :Text;      # its client API, for `chorus cluster`
}

struct Frame {
  version @0 :UInt16;
  from @1 :Text;            # the sender's node id
  union {
    # First frame each way on a new connection: who the sender is.
    hello @2 :Member;
    # Heartbeat: the sender's member list (itself included). Answered by
    # `ack` with the receiver's list.
    heartbeat @3 :List(Member);
    ack @4 :List(Member);
    # Deltas of committed local writes (crdt/state.capnp encodings).
    deltas @5 :List(Data);
    # One anti-entropy message (gossip/reconcile.capnp), answered on the
    # same connection.
    reconcile @6 :Data;
  }
}
