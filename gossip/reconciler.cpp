#include "reconciler.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "gossip/reconcile.capnp.h"
#include "storage/merkle.h"

namespace chorus::gossip {

namespace {

using Store = ReplicaStore;

// Hashes travel as their first 8 bytes, read as a little-endian uint64: a
// false "equal" needs a 64-bit collision between two states of one node.
uint64_t readLe64(const uint8_t* bytes) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | bytes[i];
  return v;
}

uint64_t wireHash(const storage::Hash& h) { return readLe64(h.data()); }

void putHashes(capnp::Data::Builder out, const std::vector<storage::Hash>& hashes) {
  for (size_t i = 0; i < hashes.size(); ++i) std::memcpy(out.begin() + 8 * i, hashes[i].data(), 8);
}

uint64_t hashAt(capnp::Data::Reader data, size_t i) { return readLe64(data.begin() + 8 * i); }

// The message's bytes, written once into the string that carries them.
Outgoing finish(capnp::MallocMessageBuilder& message, size_t payloadBytes) {
  std::string bytes(capnp::computeSerializedSizeInWords(message) * sizeof(capnp::word), '\0');
  kj::ArrayOutputStream out(kj::arrayPtr(reinterpret_cast<kj::byte*>(bytes.data()), bytes.size()));
  capnp::writeMessage(out, message);
  return Outgoing{std::move(bytes), payloadBytes};
}

wire::Reconcile::Builder newMessage(capnp::MallocMessageBuilder& message) {
  auto root = message.initRoot<wire::Reconcile>();
  root.setVersion(wire::RECONCILE_VERSION);
  return root;
}

// "Nothing more to exchange": ends the session on both sides.
Outgoing done(capnp::MallocMessageBuilder& message) {
  newMessage(message).setInSync();
  Outgoing out = finish(message, 0);
  out.last = true;
  return out;
}

Error malformed(const std::string& why) {
  return makeError(ErrorCode::kCorruption, "reconcile message from peer: " + why);
}

// States for the given keys, encoded, until they add up to `budget` bytes;
// `cut` tells whether some were left out.
Result<std::vector<std::string>> encodeStates(Store& store,
                                              const std::vector<crdt::ReviewKey>& keys,
                                              size_t budget, bool& cut) {
  std::vector<std::string> out;
  out.reserve(keys.size());
  size_t bytes = 0;
  for (const auto& key : keys) {
    if (bytes >= budget) {
      cut = true;
      break;
    }
    auto state = store.encodedState(key);  // stored bytes are the canonical encoding
    if (!state.ok()) return state.error();
    if (state.value()) {
      bytes += state.value()->size();
      out.push_back(std::move(*state.value()));
    }
  }
  return out;
}

void fillStates(capnp::List<capnp::Data>::Builder list, const std::vector<std::string>& states,
                size_t& payload) {
  for (unsigned i = 0; i < states.size(); ++i) {
    list.set(i, capnp::Data::Reader(reinterpret_cast<const uint8_t*>(states[i].data()),
                                    states[i].size()));
    payload += states[i].size();
  }
}

}  // namespace

Reconciler::Reconciler(ReplicaStore& store, MergeSink merge, size_t maxMessageBytes, Admit admit)
    : store_(store),
      merge_(std::move(merge)),
      maxMessageBytes_(maxMessageBytes),
      admit_(std::move(admit)) {}

Reconciler::Reconciler(storage::Store& store, storage::Done onMerged, size_t maxMessageBytes,
                       Admit admit)
    : owned_(std::make_unique<StoreReplica>(store)),
      store_(*owned_),
      merge_([replica = owned_.get(), done = std::move(onMerged)](crdt::ReviewDoc state) {
        replica->merge(std::move(state), done);
      }),
      maxMessageBytes_(maxMessageBytes),
      admit_(std::move(admit)) {}

Result<Outgoing> Reconciler::start() {
  auto root = store_.root();
  if (!root.ok()) return root.error();
  capnp::MallocMessageBuilder message(64);
  newMessage(message).setRoot(wireHash(root.value()));
  return finish(message, 0);
}

Result<std::optional<Outgoing>> Reconciler::handle(std::string_view bytes, bool busy) {
  peerHasMore_ = false;
  peerBusy_ = false;
  if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0) {
    ++counters_.malformed;
    return malformed("length " + std::to_string(bytes.size()) + " is not a multiple of 8");
  }
  // Read in place when word-aligned (a Data field of a received frame is),
  // else from an aligned copy.
  kj::Array<capnp::word> copy;
  kj::ArrayPtr<const capnp::word> words;
  if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(capnp::word) == 0) {
    words = kj::arrayPtr(reinterpret_cast<const capnp::word*>(bytes.data()),
                         bytes.size() / sizeof(capnp::word));
  } else {
    copy = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
    std::memcpy(copy.begin(), bytes.data(), bytes.size());
    words = copy;
  }

  std::optional<Error> failure;
  std::optional<Outgoing> reply;
  auto exception = kj::runCatchingExceptions([&] {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = words.size() * 2 + 64;
    options.nestingLimit = 8;
    capnp::FlatArrayMessageReader reader(words, options);
    auto in = reader.getRoot<wire::Reconcile>();
    peerHasMore_ = in.getMore();
    if (in.getVersion() != wire::RECONCILE_VERSION) {
      failure = malformed("unknown version " + std::to_string(in.getVersion()));
      return;
    }
    capnp::MallocMessageBuilder message;
    switch (in.which()) {
      case wire::Reconcile::ROOT: {
        if (busy) {
          newMessage(message).setBusy();
          reply = finish(message, 0);
          reply->last = true;
          reply->busy = true;
          return;
        }
        auto root = store_.root();
        if (!root.ok()) {
          failure = root.error();
          return;
        }
        if (wireHash(root.value()) == in.getRoot()) {
          reply = done(message);
          return;
        }
        auto out = newMessage(message);
        {
          auto children = store_.children(0, 0);
          if (!children.ok()) {
            failure = children.error();
            return;
          }
          auto group = out.initChildren();
          group.setLevel(0);
          auto node = group.initNodes(1)[0];
          node.setIndex(0);
          putHashes(node.initHashes(8 * Store::kFanout), children.value());
        }
        reply = finish(message, 0);
        return;
      }
      case wire::Reconcile::IN_SYNC:
        return;
      case wire::Reconcile::BUSY:
        peerBusy_ = true;
        return;
      case wire::Reconcile::CHILDREN: {
        auto group = in.getChildren();
        int level = group.getLevel();
        if (level < 0 || level >= Store::kDepth) {
          failure = malformed("bad level");
          return;
        }
        uint64_t levelSize = uint64_t{1} << (4 * level);
        // Children (at level + 1) whose hashes differ from ours.
        std::vector<uint64_t> differing;
        for (auto node : group.getNodes()) {
          auto hashes = node.getHashes();  // read once: each get counts toward the limit
          if (node.getIndex() >= levelSize || hashes.size() != 8 * Store::kFanout) {
            failure = malformed("bad node at level " + std::to_string(level));
            return;
          }
          auto mine = store_.children(level, node.getIndex());
          if (!mine.ok()) {
            failure = mine.error();
            return;
          }
          for (size_t i = 0; i < Store::kFanout; ++i) {
            if (wireHash(mine.value()[i]) != hashAt(hashes, i)) {
              differing.push_back(node.getIndex() * Store::kFanout + i);
            }
          }
        }
        if (differing.empty()) {  // the trees changed meanwhile: done, next round
          reply = done(message);
          return;
        }
        auto out = newMessage(message);
        if (level + 1 < Store::kDepth) {
          auto next = out.initChildren();
          next.setLevel(static_cast<uint8_t>(level + 1));
          auto nodes = next.initNodes(static_cast<unsigned>(differing.size()));
          for (unsigned i = 0; i < differing.size(); ++i) {
            auto children = store_.children(level + 1, differing[i]);
            if (!children.ok()) {
              failure = children.error();
              return;
            }
            nodes[i].setIndex(differing[i]);
            putHashes(nodes[i].initHashes(8 * Store::kFanout), children.value());
          }
        } else {
          // Leaves until their entries (16 bytes each) fill the budget,
          // kept as the wire carries them (key hash, first 8 bytes of the
          // digest): memory follows the message, not the leaves' keys.
          std::vector<std::vector<std::pair<uint64_t, uint64_t>>> entries;
          size_t bytes = 0;
          for (size_t i = 0; i < differing.size() && bytes < maxMessageBytes_; ++i) {
            auto leaf = store_.leafEntries(differing[i]);
            if (!leaf.ok()) {
              failure = leaf.error();
              return;
            }
            bytes += 16 * leaf.value().size() + 16;
            auto& compact = entries.emplace_back();
            compact.reserve(leaf.value().size());
            for (const auto& e : leaf.value()) compact.emplace_back(e.keyHash, wireHash(e.digest));
          }
          auto leaves = out.initLeaves(static_cast<unsigned>(entries.size()));
          for (unsigned i = 0; i < entries.size(); ++i) {
            leaves[i].setIndex(differing[i]);
            auto list = leaves[i].initEntries(static_cast<unsigned>(entries[i].size()));
            for (unsigned j = 0; j < entries[i].size(); ++j) {
              list[j].setKeyHash(entries[i][j].first);
              list[j].setDigest(entries[i][j].second);
            }
            std::vector<std::pair<uint64_t, uint64_t>>().swap(entries[i]);  // freed as written
          }
          if (entries.size() < differing.size()) out.setMore(true);
        }
        reply = finish(message, 0);
        reply->more = message.getRoot<wire::Reconcile>().getMore();
        return;
      }
      case wire::Reconcile::LEAVES: {
        // Leaf by leaf, in order: our states for keys that differ or the
        // peer lacks (read and encoded at once), and the key hashes we
        // want. Stops at the first leaf past the budget of either (the rest
        // is for another session, `more`), so a session reads and holds
        // about one message's worth, however far apart the two replicas are.
        std::vector<std::string> states;
        std::vector<uint64_t> wants;
        size_t stateBytes = 0;
        // Each wanted state comes back in one answer, cut to the budget by
        // the peer: ask for about what fits (at a guessed 256 bytes each).
        size_t maxWants = std::max<size_t>(1, maxMessageBytes_ / 256);
        bool cut = false;
        auto leafList = in.getLeaves();
        for (unsigned li = 0; li < leafList.size(); ++li) {
          if (stateBytes >= maxMessageBytes_ || wants.size() >= maxWants) {
            cut = true;
            break;
          }
          auto leaf = leafList[li];
          if (leaf.getIndex() >= storage::kMerkleLeaves) {
            failure = malformed("bad leaf index");
            return;
          }
          std::map<uint64_t, uint64_t> theirs;
          for (auto e : leaf.getEntries()) theirs[e.getKeyHash()] ^= e.getDigest();
          auto mine = store_.leafEntries(leaf.getIndex());
          if (!mine.ok()) {
            failure = mine.error();
            return;
          }
          std::map<uint64_t, uint64_t> ours;
          for (const auto& e : mine.value()) {
            ours[e.keyHash] ^= wireHash(e.digest);  // (64-bit key hash collisions fold)
          }
          for (const auto& e : mine.value()) {
            auto it = theirs.find(e.keyHash);
            if (it != theirs.end() && it->second == ours[e.keyHash]) continue;
            if (stateBytes >= maxMessageBytes_) {  // a large leaf: the rest next time
              cut = true;
              break;
            }
            auto state = store_.encodedState(e.key);  // stored bytes are the canonical encoding
            if (!state.ok()) {
              failure = state.error();
              return;
            }
            if (state.value()) {
              stateBytes += state.value()->size();
              states.push_back(std::move(*state.value()));
            }
          }
          for (const auto& [keyHash, digest] : theirs) {
            auto it = ours.find(keyHash);
            if (it == ours.end() || it->second != digest) wants.push_back(keyHash);
          }
        }
        if (states.empty() && wants.empty()) {
          reply = done(message);
          return;
        }
        if (wants.size() > maxWants) {  // the last leaf's excess
          wants.resize(maxWants);
          cut = true;
        }
        auto root = newMessage(message);
        auto out = root.initStatesAndWants();
        size_t payload = 0;
        fillStates(out.initStates(static_cast<unsigned>(states.size())), states, payload);
        std::vector<std::string>().swap(states);  // copied into the message
        auto list = out.initWants(static_cast<unsigned>(wants.size()));
        for (unsigned i = 0; i < wants.size(); ++i) list.set(i, wants[i]);
        root.setMore(cut);
        counters_.statesSent += out.getStates().size();
        reply = finish(message, payload);
        reply->more = cut;
        return;
      }
      case wire::Reconcile::STATES_AND_WANTS:
      case wire::Reconcile::STATES: {
        bool withWants = in.which() == wire::Reconcile::STATES_AND_WANTS;
        auto states = withWants ? in.getStatesAndWants().getStates() : in.getStates();
        for (auto data : states) {
          auto doc = crdt::ReviewDoc::decode(
              std::string_view(reinterpret_cast<const char*>(data.begin()), data.size()));
          if (!doc.ok()) {
            ++counters_.malformed;  // drop this state, keep the others
            continue;
          }
          if (admit_) {
            if (auto admitted = admit_(*doc); !admitted.ok()) {
              ++counters_.refused;
              lastRefusal_ = admitted.error().message;
              continue;
            }
          }
          ++counters_.statesReceived;
          merge_(std::move(doc).value());
        }
        if (!withWants) return;
        auto wants = in.getStatesAndWants().getWants();
        if (wants.size() == 0) {
          reply = done(message);
          return;
        }
        // Find our keys behind the wanted key hashes (a leaf holds them).
        std::map<uint64_t, std::vector<uint64_t>> byLeaf;
        for (uint64_t keyHash : wants) {
          byLeaf[storage::leafIndexOf(keyHash)].push_back(keyHash);
        }
        std::vector<crdt::ReviewKey> send;
        for (const auto& [leaf, keyHashes] : byLeaf) {
          auto entries = store_.leafEntries(leaf);
          if (!entries.ok()) {
            failure = entries.error();
            return;
          }
          for (const auto& e : entries.value()) {
            if (std::find(keyHashes.begin(), keyHashes.end(), e.keyHash) != keyHashes.end()) {
              send.push_back(e.key);
            }
          }
        }
        if (send.empty()) {
          reply = done(message);
          return;
        }
        bool cut = false;
        auto encoded = encodeStates(store_, send, maxMessageBytes_, cut);
        if (!encoded.ok()) {
          failure = encoded.error();
          return;
        }
        size_t payload = 0;
        auto root = newMessage(message);
        fillStates(root.initStates(static_cast<unsigned>(encoded.value().size())), encoded.value(),
                   payload);
        root.setMore(cut);
        counters_.statesSent += encoded.value().size();
        reply = finish(message, payload);
        reply->last = true;
        reply->more = cut;
        return;
      }
    }
    failure = malformed("unknown message kind");
  });
  KJ_IF_MAYBE (e, exception) {
    ++counters_.malformed;
    return malformed(e->getDescription().cStr());
  }
  if (failure) {
    if (failure->code == ErrorCode::kCorruption) ++counters_.malformed;
    return *failure;
  }
  return reply;
}

}  // namespace chorus::gossip

namespace chorus::gossip {

Result<SessionStats> reconcileDirect(Reconciler& initiator, Reconciler& responder) {
  SessionStats stats;
  auto first = initiator.start();
  if (!first.ok()) return first.error();
  std::optional<Outgoing> message = std::move(first).value();
  bool toResponder = true;
  // Each message goes one step further; a session has at most 8 messages.
  for (int step = 0; message && step < 16; ++step) {
    if (toResponder) {
      ++stats.roundTrips;
      stats.bytesToResponder += message->bytes.size();
      stats.payloadToResponder += message->payloadBytes;
    } else {
      stats.bytesToInitiator += message->bytes.size();
      stats.payloadToInitiator += message->payloadBytes;
    }
    auto reply = (toResponder ? responder : initiator).handle(message->bytes);
    if (!reply.ok()) return reply.error();
    message = std::move(reply).value();
    toResponder = !toResponder;
  }
  CHORUS_ASSERT(!message, "reconcile session did not end");
  return stats;
}

}  // namespace chorus::gossip
