# Canonical encoding of Chorus CRDT states and deltas (a delta is a partial
# state and uses the same schema). Review.version is checked on decode; bump
# it, and teach decode the old one, on any change that alters meaning.
@0xb329b5b21b1b4af8;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("chorus::crdt::wire");

struct Stamp {
  hlc @0 :UInt64;       # 48-bit millis << 16 | 16-bit logical
  replica @1 :UInt64;
}

struct Dot {
  replica @0 :UInt64;
  counter @1 :UInt64;
}

struct CausalContext {
  versionVector @0 :List(Dot);  # sorted by replica; counter = highest contiguous
  cloud @1 :List(Dot);          # sorted; dots not contiguous with the vector
}

struct OrSet {
  elements @0 :List(Element);   # sorted by value, unique
  context @1 :CausalContext;

  struct Element {
    value @0 :Text;
    dots @1 :List(Dot);         # sorted, non-empty
  }
}

struct Content {
  stamp @0 :Stamp;              # zero: never written
  deleted @1 :Bool;             # tombstone: rating 0, no title, no body
  rating @2 :UInt8;             # 1-5 when live
  title @3 :Text;
  body @4 :Text;
}

enum Visibility {
  visible @0;
  hidden @1;
  flagged @2;
}

struct Moderation {
  stamp @0 :Stamp;
  visibility @1 :Visibility;
  reason @2 :Text;
}

struct Reply {
  stamp @0 :Stamp;
  text @1 :Text;
}

struct Review {
  version @0 :UInt16;           # kStateVersion in review.h
  product @1 :Text;
  author @2 :Text;
  content @3 :Content;
  tags @4 :OrSet;
  helpful @5 :OrSet;            # voter ids
  moderation @6 :Moderation;
  reply @7 :Reply;
}
