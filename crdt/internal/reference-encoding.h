// The canonical encoding of a review as Cap'n Proto's own canonicalizer
// produces it: build the message with the generated builders, then
// capnp::canonicalize(). ReviewDoc::encode() writes the same bytes directly
// (about a tenth of the work); this slow path is the specification it is
// tested against. Not for production code paths.
#pragma once

#include <string>

#include "crdt/review.h"

namespace chorus::crdt::internal {

std::string encodeWithCapnpCanonicalize(const ReviewDoc& doc);

}  // namespace chorus::crdt::internal
