#include "api/wire.h"

namespace chorus::api {

namespace {
std::string str(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }
kj::StringPtr text(const std::string& s) { return kj::StringPtr(s.c_str(), s.size()); }
}  // namespace

void toWire(const ReviewView& v, wire::Review::Builder b) {
  b.setProduct(text(v.product));
  b.setAuthor(text(v.author));
  b.setRating(v.rating);
  b.setTitle(text(v.title));
  b.setBody(text(v.body));
  b.setEditedAtMillis(v.editedAtMillis);
  auto tags = b.initTags(static_cast<unsigned>(v.tags.size()));
  for (unsigned i = 0; i < v.tags.size(); ++i) tags.set(i, text(v.tags[i]));
  b.setHelpful(v.helpful);
  b.setVisibility(toWire(v.visibility));
  b.setModerationReason(text(v.moderationReason));
  b.setReply(text(v.reply));
  b.setDeleted(v.deleted);
}

ReviewView fromWire(wire::Review::Reader r) {
  ReviewView v;
  v.product = str(r.getProduct());
  v.author = str(r.getAuthor());
  v.rating = r.getRating();
  v.title = str(r.getTitle());
  v.body = str(r.getBody());
  v.editedAtMillis = r.getEditedAtMillis();
  for (auto t : r.getTags()) v.tags.push_back(str(t));
  v.helpful = r.getHelpful();
  v.visibility = fromWire(r.getVisibility());
  v.moderationReason = str(r.getModerationReason());
  v.reply = str(r.getReply());
  v.deleted = r.getDeleted();
  return v;
}

void toWire(const ReviewPage& p, wire::Page::Builder b) {
  auto list = b.initReviews(static_cast<unsigned>(p.reviews.size()));
  for (unsigned i = 0; i < p.reviews.size(); ++i) toWire(p.reviews[i], list[i]);
  b.setNextCursor(text(p.nextCursor));
}

ReviewPage fromWire(wire::Page::Reader r) {
  ReviewPage p;
  for (auto review : r.getReviews()) p.reviews.push_back(fromWire(review));
  p.nextCursor = str(r.getNextCursor());
  return p;
}

void toWire(const std::string& product, const storage::ProductSummary& s,
            wire::Summary::Builder b) {
  b.setProduct(text(product));
  b.setCount(s.count);
  b.setAverage(s.average());
  auto h = b.initHistogram(5);
  for (unsigned i = 0; i < 5; ++i) h.set(i, s.histogram[i]);
  b.setHelpfulTotal(s.helpfulTotal);
}

storage::ProductSummary fromWire(wire::Summary::Reader r) {
  storage::ProductSummary s;
  s.count = r.getCount();
  auto h = r.getHistogram();
  for (unsigned i = 0; i < 5 && i < h.size(); ++i) {
    s.histogram[i] = h[i];
    s.ratingSum += h[i] * (i + 1);
  }
  s.helpfulTotal = r.getHelpfulTotal();
  return s;
}

void toWire(const NodeStatus& s, wire::NodeStatus::Builder b) {
  b.setNodeId(text(s.nodeId));
  b.setReplicaId(s.replicaId);
  b.setVersion(text(s.version));
  b.setApiVersion(s.apiVersion);
  b.setUptimeMillis(s.uptimeMillis);
  b.setKeyCount(s.keyCount);
  b.setMerkleRoot(kj::arrayPtr(s.merkleRoot.data(), s.merkleRoot.size()));
  auto st = b.initStats();
  st.setDocuments(s.stats.documents);
  st.setMapBytes(s.stats.mapBytes);
  st.setUsedBytes(s.stats.usedBytes);
  st.setCommits(s.stats.commits);
  st.setWrites(s.stats.writes);
  st.setMapGrowths(s.stats.mapGrowths);
  st.setRefusedStamps(s.stats.refusedStamps);
  b.setGossipAddress(text(s.gossipAddress));
  b.setRegion(text(s.region));
}

NodeStatus fromWire(wire::NodeStatus::Reader r) {
  NodeStatus s;
  s.nodeId = str(r.getNodeId());
  s.replicaId = r.getReplicaId();
  s.version = str(r.getVersion());
  s.apiVersion = r.getApiVersion();
  s.uptimeMillis = r.getUptimeMillis();
  s.keyCount = r.getKeyCount();
  auto root = r.getMerkleRoot();
  for (size_t i = 0; i < s.merkleRoot.size() && i < root.size(); ++i) s.merkleRoot[i] = root[i];
  auto st = r.getStats();
  s.stats.documents = st.getDocuments();
  s.stats.mapBytes = st.getMapBytes();
  s.stats.usedBytes = st.getUsedBytes();
  s.stats.commits = st.getCommits();
  s.stats.writes = st.getWrites();
  s.stats.mapGrowths = st.getMapGrowths();
  s.stats.refusedStamps = st.getRefusedStamps();
  s.gossipAddress = str(r.getGossipAddress());
  s.region = str(r.getRegion());
  return s;
}

void toWire(const NodeHealth& h, wire::NodeHealth::Builder b) {
  b.setNodeId(text(h.nodeId));
  b.setReplicaId(h.replicaId);
  b.setVersion(text(h.version));
  b.setApiVersion(h.apiVersion);
  b.setUptimeMillis(h.uptimeMillis);
  b.setServing(h.serving);
  b.setReason(text(h.reason));
  b.setKeyCount(h.keyCount);
  if (h.merkleRoot) b.setMerkleRoot(kj::arrayPtr(h.merkleRoot->data(), h.merkleRoot->size()));
  b.setClustered(h.clustered);
  b.setRegion(text(h.region));
  b.setPeersAlive(h.peersAlive);
  b.setPeersSuspect(h.peersSuspect);
  b.setPeersDead(h.peersDead);
  b.setSynced(h.lastSyncMillisAgo.has_value());
  b.setLastSyncMillisAgo(h.lastSyncMillisAgo.value_or(0));
}

NodeHealth fromWire(wire::NodeHealth::Reader r) {
  NodeHealth h;
  h.nodeId = str(r.getNodeId());
  h.replicaId = r.getReplicaId();
  h.version = str(r.getVersion());
  h.apiVersion = r.getApiVersion();
  h.uptimeMillis = r.getUptimeMillis();
  h.serving = r.getServing();
  h.reason = str(r.getReason());
  h.keyCount = r.getKeyCount();
  auto root = r.getMerkleRoot();
  if (root.size() == storage::Hash{}.size()) {
    h.merkleRoot.emplace();
    for (size_t i = 0; i < root.size(); ++i) (*h.merkleRoot)[i] = root[i];
  }
  h.clustered = r.getClustered();
  h.region = str(r.getRegion());
  h.peersAlive = r.getPeersAlive();
  h.peersSuspect = r.getPeersSuspect();
  h.peersDead = r.getPeersDead();
  if (r.getSynced()) h.lastSyncMillisAgo = r.getLastSyncMillisAgo();
  return h;
}

void toWire(const storage::BackupManifest& m, wire::BackupManifest::Builder b) {
  b.setNodeId(text(m.nodeId));
  b.setReplicaId(m.replicaId);
  b.setSchemaVersion(m.schemaVersion);
  b.setMerkleRoot(kj::arrayPtr(m.merkleRoot.data(), m.merkleRoot.size()));
  b.setKeys(m.keys);
  b.setHlcHighWater(m.hlcHighWater);
  b.setFileBytes(m.fileBytes);
  b.setChecksum(kj::arrayPtr(m.checksum.data(), m.checksum.size()));
  b.setCreatedUnixMillis(m.createdUnixMillis);
}

storage::BackupManifest fromWire(wire::BackupManifest::Reader r) {
  storage::BackupManifest m;
  m.nodeId = str(r.getNodeId());
  m.replicaId = r.getReplicaId();
  m.schemaVersion = r.getSchemaVersion();
  auto root = r.getMerkleRoot();
  if (root.size() == m.merkleRoot.size()) std::copy(root.begin(), root.end(), m.merkleRoot.begin());
  m.keys = r.getKeys();
  m.hlcHighWater = r.getHlcHighWater();
  m.fileBytes = r.getFileBytes();
  auto sum = r.getChecksum();
  if (sum.size() == m.checksum.size()) std::copy(sum.begin(), sum.end(), m.checksum.begin());
  m.createdUnixMillis = r.getCreatedUnixMillis();
  return m;
}

void toWire(const ClusterView& v, wire::ClusterView::Builder b) {
  b.setNodeId(text(v.nodeId));
  b.setGossipAddress(text(v.gossipAddress));
  b.setRpcAddress(text(v.rpcAddress));
  b.setKeyCount(v.keyCount);
  b.setMerkleRoot(kj::arrayPtr(v.merkleRoot.data(), v.merkleRoot.size()));
  b.setRefusedStamps(v.refusedStamps);
  auto partitioned = b.initPartitioned(static_cast<unsigned>(v.partitioned.size()));
  for (unsigned i = 0; i < v.partitioned.size(); ++i) partitioned.set(i, text(v.partitioned[i]));
  auto members = b.initMembers(static_cast<unsigned>(v.members.size()));
  for (unsigned i = 0; i < v.members.size(); ++i) {
    const gossip::MemberInfo& m = v.members[i];
    auto mb = members[i];
    mb.setNodeId(text(m.nodeId));
    mb.setGossipAddress(text(m.gossipAddress));
    mb.setRpcAddress(text(m.rpcAddress));
    mb.setState(toWire(m.state));
    mb.setPartitioned(m.partitioned);
    mb.setLastSyncUnixMillis(m.lastSyncUnixMillis);
    mb.setPendingDeltas(m.pendingDeltas);
    mb.setRegion(text(m.region));
    mb.setIncarnation(m.incarnation);
    mb.setActive(m.active);
  }
  const gossip::ClusterStats& s = v.stats;
  auto st = b.initStats();
  st.setFramesIn(s.framesIn);
  st.setFramesOut(s.framesOut);
  st.setBytesIn(s.bytesIn);
  st.setBytesOut(s.bytesOut);
  st.setMalformedFrames(s.malformedFrames);
  st.setPartitionDropped(s.partitionDropped);
  st.setDeltasSent(s.deltasSent);
  st.setDeltasReceived(s.deltasReceived);
  st.setDeltasDropped(s.deltasDropped);
  st.setSyncStarted(s.syncStarted);
  st.setSyncCompleted(s.syncCompleted);
  st.setAntiEntropyBytes(s.antiEntropyBytes);
  st.setStatesRepaired(s.statesRepaired);
  st.setConnectionsRefused(s.connectionsRefused);
  st.setAuthFailures(s.authFailures);
  st.setReplaysRefused(s.replaysRefused);
  st.setStatesRefused(s.statesRefused);
  st.setConnections(s.connections);
  st.setActivePeers(s.activePeers);
  st.setProbes(s.probes);
  st.setProbesFailed(s.probesFailed);
  st.setRefutations(s.refutations);
  st.setBroadcastDuplicates(s.broadcastDuplicates);
  st.setGrafts(s.grafts);
  st.setPushPulls(s.pushPulls);
  st.setVersionRefused(s.versionRefused);
  b.setNowUnixMillis(v.nowUnixMillis);
  b.setRegion(text(v.region));
  b.setState(toWire(v.state));
  b.setRemoved(v.removed);
}

ClusterView fromWire(wire::ClusterView::Reader r) {
  ClusterView v;
  v.nodeId = str(r.getNodeId());
  v.gossipAddress = str(r.getGossipAddress());
  v.rpcAddress = str(r.getRpcAddress());
  v.keyCount = r.getKeyCount();
  auto root = r.getMerkleRoot();
  for (size_t i = 0; i < v.merkleRoot.size() && i < root.size(); ++i) v.merkleRoot[i] = root[i];
  v.refusedStamps = r.getRefusedStamps();
  for (auto id : r.getPartitioned()) v.partitioned.push_back(str(id));
  for (auto mr : r.getMembers()) {
    gossip::MemberInfo m;
    m.nodeId = str(mr.getNodeId());
    m.gossipAddress = str(mr.getGossipAddress());
    m.rpcAddress = str(mr.getRpcAddress());
    m.state = fromWire(mr.getState());
    m.partitioned = mr.getPartitioned();
    m.lastSyncUnixMillis = mr.getLastSyncUnixMillis();
    m.pendingDeltas = mr.getPendingDeltas();
    m.region = str(mr.getRegion());
    m.incarnation = mr.getIncarnation();
    m.active = mr.getActive();
    v.members.push_back(std::move(m));
  }
  auto st = r.getStats();
  gossip::ClusterStats& s = v.stats;
  s.framesIn = st.getFramesIn();
  s.framesOut = st.getFramesOut();
  s.bytesIn = st.getBytesIn();
  s.bytesOut = st.getBytesOut();
  s.malformedFrames = st.getMalformedFrames();
  s.partitionDropped = st.getPartitionDropped();
  s.deltasSent = st.getDeltasSent();
  s.deltasReceived = st.getDeltasReceived();
  s.deltasDropped = st.getDeltasDropped();
  s.syncStarted = st.getSyncStarted();
  s.syncCompleted = st.getSyncCompleted();
  s.antiEntropyBytes = st.getAntiEntropyBytes();
  s.statesRepaired = st.getStatesRepaired();
  s.connectionsRefused = st.getConnectionsRefused();
  s.authFailures = st.getAuthFailures();
  s.replaysRefused = st.getReplaysRefused();
  s.statesRefused = st.getStatesRefused();
  s.connections = st.getConnections();
  s.activePeers = st.getActivePeers();
  s.probes = st.getProbes();
  s.probesFailed = st.getProbesFailed();
  s.refutations = st.getRefutations();
  s.broadcastDuplicates = st.getBroadcastDuplicates();
  s.grafts = st.getGrafts();
  s.pushPulls = st.getPushPulls();
  s.versionRefused = st.getVersionRefused();
  v.nowUnixMillis = r.getNowUnixMillis();
  v.region = str(r.getRegion());
  v.state = fromWire(r.getState());
  v.removed = r.getRemoved();
  return v;
}

wire::PeerState toWire(gossip::PeerState s) {
  switch (s) {
    case gossip::PeerState::kAlive:
      return wire::PeerState::ALIVE;
    case gossip::PeerState::kSuspect:
      return wire::PeerState::SUSPECT;
    case gossip::PeerState::kDead:
      return wire::PeerState::DEAD;
    case gossip::PeerState::kLeft:
      return wire::PeerState::LEFT;
  }
  return wire::PeerState::DEAD;
}

gossip::PeerState fromWire(wire::PeerState s) {
  switch (s) {
    case wire::PeerState::ALIVE:
      return gossip::PeerState::kAlive;
    case wire::PeerState::SUSPECT:
      return gossip::PeerState::kSuspect;
    case wire::PeerState::DEAD:
      return gossip::PeerState::kDead;
    case wire::PeerState::LEFT:
      return gossip::PeerState::kLeft;
  }
  return gossip::PeerState::kDead;  // an unknown (newer) value
}

void toWire(const Change& c, wire::Change::Builder b) {
  b.setOp(text(c.op));
  toWire(c.review, b.initReview());
  b.setMissed(c.missed);
}

Change fromWire(wire::Change::Reader r) {
  return Change{str(r.getOp()), fromWire(r.getReview()), r.getMissed()};
}

wire::Visibility toWire(crdt::Visibility v) {
  switch (v) {
    case crdt::Visibility::kVisible:
      return wire::Visibility::VISIBLE;
    case crdt::Visibility::kHidden:
      return wire::Visibility::HIDDEN;
    case crdt::Visibility::kFlagged:
      return wire::Visibility::FLAGGED;
  }
  return wire::Visibility::VISIBLE;
}

crdt::Visibility fromWire(wire::Visibility v) {
  switch (v) {
    case wire::Visibility::VISIBLE:
      return crdt::Visibility::kVisible;
    case wire::Visibility::HIDDEN:
      return crdt::Visibility::kHidden;
    case wire::Visibility::FLAGGED:
      return crdt::Visibility::kFlagged;
  }
  return crdt::Visibility::kVisible;  // an unknown (newer) value
}

wire::Order toWire(storage::Order o) {
  switch (o) {
    case storage::Order::kNewest:
      return wire::Order::NEWEST;
    case storage::Order::kHighestRating:
      return wire::Order::HIGHEST_RATING;
    case storage::Order::kLowestRating:
      return wire::Order::LOWEST_RATING;
  }
  return wire::Order::NEWEST;
}

storage::Order fromWire(wire::Order o) {
  switch (o) {
    case wire::Order::NEWEST:
      return storage::Order::kNewest;
    case wire::Order::HIGHEST_RATING:
      return storage::Order::kHighestRating;
    case wire::Order::LOWEST_RATING:
      return storage::Order::kLowestRating;
  }
  return storage::Order::kNewest;
}

const char* errorCodeWireName(wire::ErrorCode code) {
  switch (code) {
    case wire::ErrorCode::INVALID_ARGUMENT:
      return "invalidArgument";
    case wire::ErrorCode::NOT_FOUND:
      return "notFound";
    case wire::ErrorCode::FORBIDDEN:
      return "forbidden";
    case wire::ErrorCode::OVERLOADED:
      return "overloaded";
    case wire::ErrorCode::UNAVAILABLE:
      return "unavailable";
    case wire::ErrorCode::INTERNAL:
      return "internal";
    case wire::ErrorCode::UNAUTHENTICATED:
      return "unauthenticated";
  }
  return "internal";
}

const char* toWireUnauthenticated(const std::string& message, wire::Error::Builder b) {
  b.setCode(wire::ErrorCode::UNAUTHENTICATED);
  b.setMessage(text(message));
  return errorCodeWireName(wire::ErrorCode::UNAUTHENTICATED);
}

wire::KeyOp toWire(KeyOp op) {
  switch (op) {
    case KeyOp::kList:
      return wire::KeyOp::LIST;
    case KeyOp::kInstall:
      return wire::KeyOp::INSTALL;
    case KeyOp::kUse:
      return wire::KeyOp::USE;
    case KeyOp::kRemove:
      return wire::KeyOp::REMOVE;
  }
  return wire::KeyOp::LIST;
}

std::optional<KeyOp> fromWire(wire::KeyOp op) {
  switch (op) {
    case wire::KeyOp::LIST:
      return KeyOp::kList;
    case wire::KeyOp::INSTALL:
      return KeyOp::kInstall;
    case wire::KeyOp::USE:
      return KeyOp::kUse;
    case wire::KeyOp::REMOVE:
      return KeyOp::kRemove;
  }
  return std::nullopt;  // a newer client's operation
}

const char* toWire(const Error& error, wire::Error::Builder b) {
  wire::ErrorCode code = wire::ErrorCode::INTERNAL;
  switch (error.code) {
    case ErrorCode::kInvalidArgument:
      code = wire::ErrorCode::INVALID_ARGUMENT;
      break;
    case ErrorCode::kNotFound:
      code = wire::ErrorCode::NOT_FOUND;
      break;
    case ErrorCode::kForbidden:
      code = wire::ErrorCode::FORBIDDEN;
      break;
    case ErrorCode::kOverloaded:
      code = wire::ErrorCode::OVERLOADED;
      break;
    case ErrorCode::kUnavailable:
    case ErrorCode::kBusy:
      code = wire::ErrorCode::UNAVAILABLE;
      break;
    case ErrorCode::kClockDrift:
    case ErrorCode::kCorruption:
    case ErrorCode::kIo:
    case ErrorCode::kInternal:
      code = wire::ErrorCode::INTERNAL;
      break;
  }
  b.setCode(code);
  std::string message = error.message;
  if (error.code == ErrorCode::kInvalidArgument || error.code == ErrorCode::kForbidden) {
    auto colon = message.find(": ");
    if (colon != std::string::npos && colon > 0 &&
        message.find_first_of(" '\"") > colon) {  // a bare field name
      b.setField(text(message.substr(0, colon)));
      message = message.substr(colon + 2);
    }
  }
  if (code == wire::ErrorCode::INTERNAL && error.code != ErrorCode::kInternal) {
    message = std::string(errorCodeName(error.code)) + ": " + message;  // keep the cause
  }
  b.setMessage(text(message));
  return errorCodeWireName(code);
}

Error fromWire(wire::Error::Reader r) {
  ErrorCode code = ErrorCode::kInternal;
  switch (r.getCode()) {
    case wire::ErrorCode::INVALID_ARGUMENT:
      code = ErrorCode::kInvalidArgument;
      break;
    case wire::ErrorCode::NOT_FOUND:
      code = ErrorCode::kNotFound;
      break;
    case wire::ErrorCode::FORBIDDEN:
      code = ErrorCode::kForbidden;
      break;
    case wire::ErrorCode::OVERLOADED:
      code = ErrorCode::kOverloaded;
      break;
    case wire::ErrorCode::UNAVAILABLE:
      code = ErrorCode::kUnavailable;
      break;
    case wire::ErrorCode::INTERNAL:
      code = ErrorCode::kInternal;
      break;
    case wire::ErrorCode::UNAUTHENTICATED:
      // No C++ code of its own: forbidden, and the message says why.
      return makeError(ErrorCode::kForbidden, "unauthenticated: " + str(r.getMessage()));
  }
  std::string message = str(r.getMessage());
  if (r.hasField() && r.getField().size() > 0) message = str(r.getField()) + ": " + message;
  return makeError(code, std::move(message));
}

}  // namespace chorus::api
