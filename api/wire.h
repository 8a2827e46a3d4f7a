// Conversions between api/types.h and the Cap'n Proto messages of
// api/chorus.capnp. Shared by the server and the client.
#pragma once

#include <optional>
#include <string>

#include "api/chorus.capnp.h"
#include "api/types.h"
#include "crdt/result.h"
#include "storage/backup.h"
#include "storage/store.h"

namespace chorus::api {

void toWire(const ReviewView& v, wire::Review::Builder b);
ReviewView fromWire(wire::Review::Reader r);

void toWire(const ReviewPage& p, wire::Page::Builder b);
ReviewPage fromWire(wire::Page::Reader r);

void toWire(const std::string& product, const storage::ProductSummary& s, wire::Summary::Builder b);
storage::ProductSummary fromWire(wire::Summary::Reader r);

void toWire(const NodeStatus& s, wire::NodeStatus::Builder b);
NodeStatus fromWire(wire::NodeStatus::Reader r);

void toWire(const NodeHealth& h, wire::NodeHealth::Builder b);
NodeHealth fromWire(wire::NodeHealth::Reader r);
void toWire(const ClusterView& v, wire::ClusterView::Builder b);
ClusterView fromWire(wire::ClusterView::Reader r);

void toWire(const storage::BackupManifest& m, wire::BackupManifest::Builder b);
storage::BackupManifest fromWire(wire::BackupManifest::Reader r);

void toWire(const Change& c, wire::Change::Builder b);
Change fromWire(wire::Change::Reader r);

wire::Visibility toWire(crdt::Visibility v);
crdt::Visibility fromWire(wire::Visibility v);
wire::PeerState toWire(gossip::PeerState s);
gossip::PeerState fromWire(wire::PeerState s);
wire::Order toWire(storage::Order o);
storage::Order fromWire(wire::Order o);

// Fills `b` from `error` and returns the wire code's name ("notFound").
// kInvalidArgument and kForbidden messages of the form "<field>: <text>" are
// split into field and message. Store-level codes (corruption, io, busy,
// clock drift) map to internal or unavailable.
const char* toWire(const Error& error, wire::Error::Builder b);
// The client's view: "<field>: <message>" when a field is named;
// `unauthenticated` becomes kForbidden "unauthenticated: <message>".
Error fromWire(wire::Error::Reader r);

const char* errorCodeWireName(wire::ErrorCode code);

// Fills `b` as `unauthenticated` (no C++ ErrorCode has that meaning; the
// client turns it into kForbidden "unauthenticated: <message>").
const char* toWireUnauthenticated(const std::string& message, wire::Error::Builder b);

wire::KeyOp toWire(KeyOp op);
std::optional<KeyOp> fromWire(wire::KeyOp op);  // nullopt: unknown to this build

}  // namespace chorus::api
