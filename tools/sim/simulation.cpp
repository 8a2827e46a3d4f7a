#include "tools/sim/simulation.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <unordered_map>

#include "gossip/gossip.capnp.h"
#include "gossip/replication-core.h"
#include "tools/sim/checker.h"
#include "tools/sim/protocol.h"
#include "tools/sim/stores.h"

namespace chorus::sim {

namespace {

using gossip::ConnId;
using gossip::ReplicationCore;
using WallClock = std::chrono::steady_clock;

double processCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) / 1e9;
}

constexpr uint64_t kEpochMillis = 1'800'000'000'000;  // wall clock at simulated time 0
// Linux's SYN retransmissions: at 1, 3, 7, 15, 31, 63 s; connect fails at 127 s.
constexpr Micros kSynRetries[] = {1 * kSeconds,  3 * kSeconds,  7 * kSeconds,
                                  15 * kSeconds, 31 * kSeconds, 63 * kSeconds};
constexpr Micros kConnectTimeout = 127 * kSeconds;
constexpr size_t kFrameOverheadBytes = 72;  // the seal (gossip/secure-channel.h)

// What a frame is, for the byte counts: membership (hello included),
// dissemination, repair. kHello is also membership.
enum class FrameKind : uint8_t { kOther, kHello, kMembership, kDissemination, kRepair };

bool isMembership(FrameKind k) { return k == FrameKind::kHello || k == FrameKind::kMembership; }
bool isDissemination(FrameKind k) { return k == FrameKind::kDissemination; }
bool isDataFrame(FrameKind k) { return k == FrameKind::kDissemination || k == FrameKind::kRepair; }

uint32_t le32(const std::string& s, size_t at) {
  return uint32_t(uint8_t(s[at])) | uint32_t(uint8_t(s[at + 1])) << 8 |
         uint32_t(uint8_t(s[at + 2])) << 16 | uint32_t(uint8_t(s[at + 3])) << 24;
}

// The kind of a gossip frame body (for the byte counts). Anything that is
// not a well-formed Cap'n Proto message is kOther; its segment table is
// checked first, so that case costs no exception.
FrameKind classify(const std::string& body) {
  if (body.size() % sizeof(capnp::word) != 0 || body.size() < 8) return FrameKind::kOther;
  uint64_t segments = uint64_t(le32(body, 0)) + 1;
  uint64_t tableBytes = ((4 + 4 * segments) + 7) / 8 * 8;
  if (segments > 512 || tableBytes > body.size()) return FrameKind::kOther;
  uint64_t total = tableBytes;
  for (uint64_t i = 0; i < segments; ++i) total += uint64_t(le32(body, 4 + 4 * i)) * 8;
  if (total != body.size()) return FrameKind::kOther;
  FrameKind kind = FrameKind::kOther;
  auto ex = kj::runCatchingExceptions([&] {
    kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(body.data()),
                                          body.size() / sizeof(capnp::word));
    capnp::FlatArrayMessageReader reader(words);
    switch (reader.getRoot<gossip::wire::Frame>().which()) {
      case gossip::wire::Frame::HELLO:
        kind = FrameKind::kHello;
        break;
      case gossip::wire::Frame::PING:
      case gossip::wire::Frame::ACK:
      case gossip::wire::Frame::NACK:
      case gossip::wire::Frame::PING_REQ:
      case gossip::wire::Frame::GOSSIP:
      case gossip::wire::Frame::PUSH_PULL:
      case gossip::wire::Frame::PUSH_PULL_REPLY:
        kind = FrameKind::kMembership;
        break;
      case gossip::wire::Frame::BROADCAST:
      case gossip::wire::Frame::IHAVE:
      case gossip::wire::Frame::GRAFT:
      case gossip::wire::Frame::PRUNE:
        kind = FrameKind::kDissemination;
        break;
      case gossip::wire::Frame::RECONCILE:
      case gossip::wire::Frame::PULL:  // read-your-writes pulls (the simulator sends none)
      case gossip::wire::Frame::PULLED:
      case gossip::wire::Frame::SNAPSHOT:  // (never simulated: bootstrap is before the core)
        kind = FrameKind::kRepair;
        break;
    }
  });
  (void)ex;
  return kind;
}

std::string addressOf(int i) {
  return "10." + std::to_string((i >> 16) & 255) + "." + std::to_string((i >> 8) & 255) + "." +
         std::to_string(i & 255) + ":7400";
}

std::string nodeIdOf(int i) { return "n" + std::to_string(i); }

// nodeIdOf's inverse without a hash lookup: "n123" -> 123; -1 if not one of
// ours (or beyond `total`).
int nodeIndexOf(const std::string& id, int total) {
  if (id.size() < 2 || id.size() > 10 || id[0] != 'n') return -1;
  int64_t v = 0;
  for (size_t k = 1; k < id.size(); ++k) {
    char ch = id[k];
    if (ch < '0' || ch > '9' || (k == 1 && ch == '0' && id.size() > 2)) return -1;
    v = v * 10 + (ch - '0');
  }
  return v < total ? int(v) : -1;
}

// One connection as the network sees it: `a` dialled `b`.
struct SimConn {
  int a = -1, b = -1;
  ConnId aId = 0, bId = 0;
  uint64_t aInc = 0, bInc = 0;
  bool aOpen = false, bOpen = false;  // that side's core still knows it
  // A hello arrived at that side (kCore), or that side's core got opened()
  // (kFlood, which has no hello): once both, the connection counts in the
  // connections of each side that is open.
  bool readyA = false, readyB = false;
  bool established = false;
};

// The network's connections by id (ids are handed out 1, 2, 3, ...): a
// vector, not a hash map, since every frame looks its connection up.
// find() and end() mimic the map's: an entry (->second) or null.
class ConnTable {
 public:
  struct Entry {
    uint64_t first;
    SimConn second;
    bool live;
  };
  Entry* find(uint64_t cid) {
    if (cid == 0 || cid > entries_.size()) return nullptr;
    Entry* e = &entries_[size_t(cid - 1)];
    return e->live ? e : nullptr;
  }
  Entry* end() { return nullptr; }
  void emplace(uint64_t cid, const SimConn& c) {
    if (cid != entries_.size() + 1) std::abort();  // ids come in order
    entries_.push_back(Entry{cid, c, true});
  }
  void erase(Entry* e) { e->live = false; }

 private:
  std::deque<Entry> entries_;  // stable addresses as it grows
};

struct Drain {
  Micros departs;
  ConnId conn;
  uint64_t bytes;
  uint64_t deltas;
};

struct Node {
  int index = 0;
  std::string id, address;
  int region = 0;
  std::unique_ptr<SimStore> store;
  std::unique_ptr<Protocol> core;  // null while down
  std::vector<gossip::KnownMember> persisted;
  bool started = false, up = false, paused = false, left = false;
  bool leaving = false;  // leave() called; stops at leaveDone() or the leave timeout
  Micros startedAt = 0;
  uint64_t coreIncarnation = 0;  // CoreOptions::incarnation of its last start
  uint32_t connections = 0;      // established and open at this node (SimConn::established)
  Micros disturbed = 0;  // last crash, start, pause or resume
  uint64_t incarnation = 0;
  int64_t skewMillis = 0;
  std::vector<std::function<void()>> deferred;  // what arrived while paused
  std::unordered_map<ConnId, uint64_t> conns;   // core's id -> SimConn id
  std::deque<Drain> drains;
  std::vector<uint8_t> view;  // the last PeerState seen for each node; kUnknown if none
};

constexpr uint8_t kUnknown = 255;

class Sim {
 public:
  Sim(const SimOptions& o, bool keepContents)
      : o_(o),
        keepContents_(keepContents),
        total_(o.nodes + o.faults.joins + o.faults.joinBurst),
        rng_(o.seed),
        netRng_(rng_.fork(1)),
        faultRng_(rng_.fork(2)),
        workRng_(rng_.fork(3)),
        coreRng_(rng_.fork(4)),
        checker_(total_) {}

  Result<SimResult> run();

 private:
  // ---- nodes ---------------------------------------------------------------
  Status openStores();
  void startNode(int i);
  gossip::CoreOptions coreOptions(int i);
  void crash(int i);
  // The process goes (crash, or the end of a leave): connections reset.
  void teardown(int i);
  void beginLeave(int i);
  void checkLeave(int i, uint64_t inc, Micros deadline);
  void stopForGood(int i);
  void restart(int i);
  void pause(int i, Micros duration);
  void resume(int i);
  void tick(int i, uint64_t inc);
  uint64_t nowMillis() const { return loop_.now() / kMillis; }
  // Runs `fn` on node i (incarnation inc) now, or when it resumes; drops it
  // if the node crashed or restarted meanwhile.
  void onNode(int i, uint64_t inc, std::function<void()> fn);
  void runActions(int i);
  template <typename F>
  auto timed(F&& f) {
    auto t0 = WallClock::now();
    if constexpr (std::is_void_v<decltype(f())>) {
      f();
      coreWall_ += WallClock::now() - t0;
    } else {
      auto r = f();
      coreWall_ += WallClock::now() - t0;
      return r;
    }
  }

  // ---- connections ---------------------------------------------------------
  void dial(int i, ConnId conn, const std::string& address);
  void synAttempt(uint64_t cid, int attempt, Micros dialledAt);
  void sendFrame(int i, const gossip::SendFrame& send);
  void deliver(uint64_t cid, bool toB, FrameKind kind, std::shared_ptr<const std::string> body);
  // Side `fromA ? a : b` is gone (Close action, crash): the other learns it.
  void closeSide(uint64_t cid, bool sideA, bool notifyPeer);
  void tellClosed(uint64_t cid, bool sideA);
  // Side A or B of `cid` is ready (hello received, or opened for kFlood).
  void ready(uint64_t cid, bool sideA);
  FrameKind kindOf(const std::shared_ptr<const std::string>& body);
  void mergeOne(int i, uint64_t inc, uint64_t ticket, const crdt::ReviewDoc& state);

  // ---- workload, faults, observation ---------------------------------------
  void scheduleWrite();
  void write();
  void scheduleRead();
  void read();
  void applyFault(const Fault& f);
  void healAll();
  void poll();
  void pollViews();
  void checkConverged();
  int pickUpNode(Rng& rng);

  const SimOptions& o_;
  bool keepContents_;
  int total_;
  Rng rng_, netRng_, faultRng_, workRng_, coreRng_;
  EventLoop loop_;
  std::unique_ptr<Network> net_;
  Checker checker_;
  TraceHash trace_;
  std::vector<Node> nodes_;
  std::unordered_map<std::string, int> byAddress_, byId_;
  ConnTable conns_;
  uint64_t nextConn_ = 1;

  Micros loadBegin_ = 0, loadEnd_ = 0;
  Micros blocksChanged_ = 0;  // last time a partition began or ended
  bool healed_ = false;
  std::optional<Micros> converged_;
  WallClock::duration coreWall_{}, viewWall_{};

  // measurements
  uint64_t frames_ = 0, reads_ = 0, staleReads_ = 0, writeErrors_ = 0;
  uint64_t bytesWindow_ = 0, membershipBytesWindow_ = 0, disseminationBytesWindow_ = 0,
           repairBytesWindow_ = 0, crossRepairBytesWindow_ = 0;
  uint64_t receivedDisseminationWindow_ = 0;
  std::vector<uint64_t> pairBytesWindow_;  // regions x regions, [min][max]
  uint64_t deltaBytesWindow_ = 0, deltasWindow_ = 0;
  uint32_t maxConnections_ = 0;
  uint64_t maxCoreConnections_ = 0;
  double connectionSamples_ = 0, runningSamples_ = 0;  // sums over polls in the window
  uint64_t pollsWindow_ = 0;
  std::shared_ptr<const std::string> lastClassified_;  // kindOf's one-entry cache
  FrameKind lastKind_ = FrameKind::kOther;
  Micros wrongDeadQuiet_ = 10 * kSeconds;
  uint64_t suspicions_ = 0, wronglyDead_ = 0, refused_ = 0;
  struct Detection {  // a crash, a leave or a join, until every running node knows it
    int node;
    Micros at;
    bool done = false;
  };
  std::vector<Detection> detections_, leaves_, joins_;
  std::vector<double> detectTimes_, leaveTimes_, joinTimes_;
  uint64_t undetected_ = 0;
  std::vector<std::string> problems_;
};

// ---- nodes -------------------------------------------------------------------

Status Sim::openStores() {
  for (int i = 0; i < total_; ++i) {
    Node& n = nodes_[size_t(i)];
    crdt::PhysicalClock clock = [this, i] {
      return uint64_t(int64_t(kEpochMillis + loop_.now() / kMillis) + nodes_[size_t(i)].skewMillis);
    };
    if (o_.store == StoreKind::kMemory) {
      uint64_t id = size_t(i) < o_.replicaIds.size() ? o_.replicaIds[size_t(i)] : (rng_.next() | 1);
      n.store = makeMemoryStore(id, std::move(clock));
    } else {
      std::string dir = o_.lmdbDir + "/node-" + std::to_string(i);
      auto store = openLmdbStore(dir, std::move(clock));
      if (!store.ok()) return store.error();
      n.store = std::move(store).value();
    }
  }
  return okStatus();
}

void Sim::onNode(int i, uint64_t inc, std::function<void()> fn) {
  Node& n = nodes_[size_t(i)];
  if (!n.up || n.incarnation != inc) return;
  if (n.paused) {
    n.deferred.push_back(std::move(fn));
    return;
  }
  fn();
}

void Sim::startNode(int i) {
  Node& n = nodes_[size_t(i)];
  n.up = true;
  n.paused = false;
  n.disturbed = loop_.now();
  if (!n.started) {
    n.started = true;
    n.startedAt = loop_.now();
    checker_.setMember(i, true, loop_.now());
  }
  // Above every earlier start's: a restarted node refutes what was said of
  // its last run.
  n.coreIncarnation = std::max(n.coreIncarnation + 1, nowMillis() + 1);
  gossip::CoreOptions co = coreOptions(i);
  if (o_.protocol == ProtocolKind::kFlood) {
    std::vector<std::string> addresses;
    for (int k = 0; k < o_.nodes; ++k) addresses.push_back(nodes_[size_t(k)].address);
    n.core = makeFloodProtocol(i, std::move(addresses));
  } else {
    n.core = makeCoreProtocol(std::move(co), n.store->replica());
  }
  n.view.assign(size_t(total_), kUnknown);
  trace_.add(loop_.now(), 'S', uint64_t(i), n.incarnation);
  timed([&] { n.core->start(nowMillis(), n.persisted); });
  runActions(i);
  uint64_t inc = n.incarnation;
  Micros phase = Micros(coreRng_.below(ReplicationCore::kTickMillis * kMillis));
  loop_.after(phase, [this, i, inc] { tick(i, inc); });
}

gossip::CoreOptions Sim::coreOptions(int i) {
  Node& n = nodes_[size_t(i)];
  gossip::CoreOptions co;
  co.nodeId = n.id;
  co.gossipAddress = n.address;
  co.rpcAddress = "";
  co.region = o_.network.regions[size_t(n.region)].name;
  co.incarnation = n.coreIncarnation;
  co.rejoin = false;
  for (int s = 0; s < std::min(3, o_.nodes); ++s) {
    if (s != i) co.seeds.push_back(nodes_[size_t(s)].address);
  }
  co.probeIntervalMillis = o_.probeIntervalMillis;
  co.gossipIntervalMillis = o_.gossipIntervalMillis;
  co.antiEntropyIntervalMillis = o_.antiEntropyMillis;
  co.crossRegionAntiEntropyIntervalMillis = o_.crossRegionAntiEntropyMillis;
  co.maxConnections = o_.maxConnections;
  co.eagerPush = o_.eagerPush;
  co.frameOverheadBytes = kFrameOverheadBytes;
  co.seed = coreRng_.next();
  if (o_.tuneCore) o_.tuneCore(co);
  return co;
}

void Sim::tick(int i, uint64_t inc) {
  Node& n = nodes_[size_t(i)];
  if (!n.up || n.incarnation != inc) return;
  loop_.after(ReplicationCore::kTickMillis * kMillis, [this, i, inc] { tick(i, inc); });
  if (n.paused) return;
  while (!n.drains.empty() && n.drains.front().departs <= loop_.now()) {
    Drain d = n.drains.front();
    n.drains.pop_front();
    if (n.conns.count(d.conn)) timed([&] { n.core->drained(d.conn, d.bytes, d.deltas); });
  }
  timed([&] { n.core->tick(nowMillis()); });
  runActions(i);
}

void Sim::crash(int i) {
  Node& n = nodes_[size_t(i)];
  if (!n.up) return;
  trace_.add(loop_.now(), 'C', uint64_t(i));
  teardown(i);
  detections_.push_back(Detection{i, loop_.now()});
}

void Sim::teardown(int i) {
  Node& n = nodes_[size_t(i)];
  // The process dies: its kernel resets every connection; nothing is persisted.
  std::vector<uint64_t> cids;
  for (auto& [conn, cid] : n.conns) cids.push_back(cid);
  std::sort(cids.begin(), cids.end());
  for (uint64_t cid : cids) {
    auto it = conns_.find(cid);
    if (it == conns_.end()) continue;
    bool sideA = it->second.a == i && it->second.aOpen && it->second.aInc == n.incarnation;
    closeSide(cid, sideA, true);
  }
  n.conns.clear();
  n.drains.clear();
  n.deferred.clear();
  n.core.reset();
  n.up = false;
  n.paused = false;
  n.disturbed = loop_.now();
  ++n.incarnation;
}

// A leave: the core announces it and runs a last anti-entropy session; the
// node keeps running (it takes no more client writes or reads) until the
// core says it is done, or `leaveTimeout`, then stops for good.
void Sim::beginLeave(int i) {
  Node& n = nodes_[size_t(i)];
  if (n.left || n.leaving) return;
  leaves_.push_back(Detection{i, loop_.now()});
  if (!n.up) {  // down already: it never comes back
    stopForGood(i);
    return;
  }
  trace_.add(loop_.now(), 'L', uint64_t(i));
  n.leaving = true;
  uint64_t inc = n.incarnation;
  onNode(i, inc, [this, i] {
    Node& n = nodes_[size_t(i)];
    timed([&] { n.core->leave(nowMillis()); });
    runActions(i);
  });
  Micros deadline = loop_.now() + o_.leaveTimeout;
  loop_.after(ReplicationCore::kTickMillis * kMillis,
              [this, i, inc, deadline] { checkLeave(i, inc, deadline); });
}

void Sim::checkLeave(int i, uint64_t inc, Micros deadline) {
  Node& n = nodes_[size_t(i)];
  if (n.left) return;
  if (!n.up || n.incarnation != inc) {  // crashed while leaving: gone for good
    stopForGood(i);
    return;
  }
  bool done = !n.paused && timed([&] { return n.core->leaveDone(); });
  if (done || loop_.now() >= deadline) {
    if (!done && o_.verbose) {
      std::fprintf(stderr, "%10.3fs %s: leave not done after %.1f s; stopped anyway\n",
                   double(loop_.now()) / 1e6, n.id.c_str(), double(o_.leaveTimeout) / 1e6);
    }
    stopForGood(i);
    return;
  }
  loop_.after(ReplicationCore::kTickMillis * kMillis,
              [this, i, inc, deadline] { checkLeave(i, inc, deadline); });
}

void Sim::stopForGood(int i) {
  Node& n = nodes_[size_t(i)];
  trace_.add(loop_.now(), 'E', uint64_t(i));
  if (n.up) {
    timed([&] { n.core->stop(nowMillis()); });
    runActions(i);
    teardown(i);
  }
  n.left = true;
  n.leaving = false;
  checker_.setMember(i, false, loop_.now());
}

void Sim::restart(int i) {
  Node& n = nodes_[size_t(i)];
  if (n.up || n.left) return;
  for (auto& d : detections_) {
    if (d.node == i && !d.done) {
      d.done = true;
      ++undetected_;
    }
  }
  startNode(i);
}

void Sim::pause(int i, Micros duration) {
  Node& n = nodes_[size_t(i)];
  if (!n.up || n.paused) return;
  trace_.add(loop_.now(), 'P', uint64_t(i));
  n.paused = true;
  n.disturbed = loop_.now();
  uint64_t inc = n.incarnation;
  loop_.after(duration, [this, i, inc] {
    if (nodes_[size_t(i)].incarnation == inc) resume(i);
  });
}

void Sim::resume(int i) {
  Node& n = nodes_[size_t(i)];
  if (!n.up || !n.paused) return;
  trace_.add(loop_.now(), 'R', uint64_t(i));
  n.paused = false;
  n.disturbed = loop_.now();
  uint64_t inc = n.incarnation;
  // Handled in arrival order; each may crash nothing (faults are separate events).
  auto backlog = std::move(n.deferred);
  n.deferred.clear();
  for (auto& fn : backlog) {
    if (!n.up || n.incarnation != inc) break;
    fn();
  }
}

void Sim::runActions(int i) {
  Node& n = nodes_[size_t(i)];
  uint64_t inc = n.incarnation;
  for (;;) {
    if (!n.core || n.incarnation != inc) return;
    auto actions = timed([&] { return n.core->takeActions(); });
    if (actions.empty()) return;
    for (auto& action : actions) {
      if (!n.core || n.incarnation != inc) return;
      if (auto* s = std::get_if<gossip::SendFrame>(&action)) {
        sendFrame(i, *s);
      } else if (auto* d = std::get_if<gossip::Dial>(&action)) {
        dial(i, d->conn, d->address);
      } else if (auto* c = std::get_if<gossip::Close>(&action)) {
        auto it = n.conns.find(c->conn);
        if (it == n.conns.end()) continue;
        uint64_t cid = it->second;
        n.conns.erase(it);
        auto sc = conns_.find(cid);
        if (sc == conns_.end()) continue;
        bool sideA = sc->second.a == i && sc->second.aId == c->conn && sc->second.aOpen;
        closeSide(cid, sideA, true);
      } else if (auto* m = std::get_if<gossip::Merge>(&action)) {
        for (auto& state : m->states) {
          if (o_.commitLatency == 0) {
            mergeOne(i, inc, m->ticket, state);
          } else {
            loop_.after(o_.commitLatency, [this, i, inc, ticket = m->ticket, state] {
              if (nodes_[size_t(i)].incarnation != inc || !nodes_[size_t(i)].up) return;
              mergeOne(i, inc, ticket, state);
              runActions(i);
            });
          }
        }
      } else if (auto* p = std::get_if<gossip::PersistMembers>(&action)) {
        n.persisted = p->members;
      } else if (auto* w = std::get_if<gossip::Warn>(&action)) {
        if (o_.verbose) {
          std::fprintf(stderr, "%10.3fs %s warn: %s\n", double(loop_.now()) / 1e6, n.id.c_str(),
                       w->message.c_str());
        }
      }
    }
  }
}

void Sim::mergeOne(int i, uint64_t inc, uint64_t ticket, const crdt::ReviewDoc& state) {
  Node& n = nodes_[size_t(i)];
  if (!n.core || n.incarnation != inc) return;
  auto r = timed([&] { return n.store->mergeNow(state); });
  if (r.ok()) {
    if (r->changed) checker_.stored(i, r->state, loop_.now());
  } else {
    ++refused_;
  }
  timed([&] { n.core->merged(ticket); });
}

// ---- connections ---------------------------------------------------------------

void Sim::dial(int i, ConnId conn, const std::string& address) {
  Node& n = nodes_[size_t(i)];
  uint64_t cid = nextConn_++;
  SimConn c;
  c.a = i;
  c.aId = conn;
  c.aInc = n.incarnation;
  c.aOpen = true;
  auto target = byAddress_.find(address);
  c.b = target == byAddress_.end() ? -1 : target->second;
  conns_.emplace(cid, c);
  n.conns[conn] = cid;
  trace_.add(loop_.now(), 'D', uint64_t(i), uint64_t(c.b));
  if (c.b < 0) {  // no such host: the route fails at once
    loop_.after(1 * kMillis, [this, cid] { tellClosed(cid, true); });
    return;
  }
  synAttempt(cid, 0, loop_.now());
}

void Sim::synAttempt(uint64_t cid, int attempt, Micros dialledAt) {
  auto it = conns_.find(cid);
  if (it == conns_.end() || !it->second.aOpen) return;
  SimConn& c = it->second;
  int a = c.a, b = c.b;
  if (net_->blocked(a, b)) {
    if (attempt < int(std::size(kSynRetries))) {
      loop_.at(dialledAt + kSynRetries[attempt],
               [this, cid, attempt, dialledAt] { synAttempt(cid, attempt + 1, dialledAt); });
    } else {
      loop_.at(dialledAt + kConnectTimeout, [this, cid] { tellClosed(cid, true); });
    }
    return;
  }
  loop_.after(net_->latency(a, b), [this, cid] {
    auto it = conns_.find(cid);
    if (it == conns_.end() || !it->second.aOpen) return;
    int a = it->second.a, b = it->second.b;
    Node& nb = nodes_[size_t(b)];
    if (!nb.up) {  // nothing listens: reset
      loop_.after(net_->latency(b, a), [this, cid] { tellClosed(cid, true); });
      return;
    }
    onNode(b, nb.incarnation, [this, cid, a, b] {
      auto it = conns_.find(cid);
      if (it == conns_.end() || !it->second.aOpen) return;
      Node& nb = nodes_[size_t(b)];
      ConnId id = timed([&] { return nb.core->accepted(nowMillis(), nodes_[size_t(a)].address); });
      SimConn& c = it->second;
      c.bId = id;
      c.bInc = nb.incarnation;
      c.bOpen = true;
      nb.conns[id] = cid;
      trace_.add(loop_.now(), 'A', uint64_t(a), uint64_t(b));
      runActions(b);
      // The acceptor's preamble reaches the dialler, then the dialler's the acceptor.
      loop_.after(net_->latency(b, a), [this, cid] {
        auto it = conns_.find(cid);
        if (it == conns_.end() || !it->second.aOpen) return;
        int a = it->second.a;
        onNode(a, it->second.aInc, [this, cid, a] {
          auto it = conns_.find(cid);
          if (it == conns_.end() || !it->second.aOpen) return;
          int b = it->second.b;  // runActions may close (and forget) the connection
          timed([&] { nodes_[size_t(a)].core->opened(nowMillis(), it->second.aId); });
          runActions(a);
          if (o_.protocol == ProtocolKind::kFlood) ready(cid, true);
          loop_.after(net_->latency(a, b), [this, cid] {
            auto it = conns_.find(cid);
            if (it == conns_.end() || !it->second.bOpen) return;
            int b = it->second.b;
            onNode(b, it->second.bInc, [this, cid, b] {
              auto it = conns_.find(cid);
              if (it == conns_.end() || !it->second.bOpen) return;
              timed([&] { nodes_[size_t(b)].core->opened(nowMillis(), it->second.bId); });
              runActions(b);
              if (o_.protocol == ProtocolKind::kFlood) ready(cid, false);
            });
          });
        });
      });
    });
  });
}

void Sim::sendFrame(int i, const gossip::SendFrame& send) {
  Node& n = nodes_[size_t(i)];
  auto it = n.conns.find(send.conn);
  if (it == n.conns.end()) return;
  uint64_t cid = it->second;
  auto sc = conns_.find(cid);
  if (sc == conns_.end()) return;
  SimConn& c = sc->second;
  bool fromA = c.a == i && c.aId == send.conn && c.aOpen;
  int to = fromA ? c.b : c.a;
  if (to < 0) {
    n.drains.push_back(
        Drain{loop_.now(), send.conn, send.body->size() + kFrameOverheadBytes, send.deltas});
    return;
  }
  // A frame to a side that is closed still travels: deliver() answers it
  // with a reset, which is how a half-open connection (its FIN lost in a
  // partition, its peer crashed) ends.
  uint64_t bytes = send.body->size() + kFrameOverheadBytes;
  Micros now = loop_.now();
  bool inWindow = now >= loadBegin_ && now < loadEnd_;
  // Classified only when counted, or while the connection waits for its hellos.
  FrameKind kind = FrameKind::kOther;
  if (o_.protocol == ProtocolKind::kCore && (inWindow || !c.established)) {
    kind = kindOf(send.body);
  }
  auto transit = net_->send(now, i, to, bytes);
  if (inWindow) {
    bytesWindow_ += bytes;
    if (isMembership(kind)) membershipBytesWindow_ += bytes;
    if (isDissemination(kind)) disseminationBytesWindow_ += bytes;
    if (isDataFrame(kind)) {
      repairBytesWindow_ += bytes;
      int ra = net_->regionOf(i), rb = net_->regionOf(to);
      if (ra != rb) {
        crossRepairBytesWindow_ += bytes;
        if (transit) {
          pairBytesWindow_[size_t(std::min(ra, rb)) * net_->regionCount() + size_t(std::max(ra, rb))] +=
              bytes;
        }
      }
    }
  }
  n.drains.push_back(Drain{transit ? transit->departs : now, send.conn, bytes, send.deltas});
  if (!transit) return;
  loop_.at(transit->arrives, [this, cid, fromA, kind, body = send.body] {
    deliver(cid, fromA, kind, std::move(body));
  });
}

FrameKind Sim::kindOf(const std::shared_ptr<const std::string>& body) {
  // One frame body is often sent to several peers in a row (a broadcast):
  // classified once. The cache holds the body, so its address is not reused.
  if (body == lastClassified_) return lastKind_;
  lastKind_ = classify(*body);
  lastClassified_ = body;
  return lastKind_;
}

void Sim::ready(uint64_t cid, bool sideA) {
  auto it = conns_.find(cid);
  if (it == conns_.end()) return;
  SimConn& c = it->second;
  (sideA ? c.readyA : c.readyB) = true;
  if (c.established || !c.readyA || !c.readyB || !c.aOpen || !c.bOpen) return;
  c.established = true;
  for (int side : {c.a, c.b}) {
    uint32_t k = ++nodes_[size_t(side)].connections;
    maxConnections_ = std::max(maxConnections_, k);
  }
}

void Sim::deliver(uint64_t cid, bool toB, FrameKind kind,
                  std::shared_ptr<const std::string> body) {
  auto it = conns_.find(cid);
  if (it == conns_.end()) return;
  SimConn& c = it->second;
  int from = toB ? c.a : c.b, to = toB ? c.b : c.a;
  if (net_->blocked(from, to)) return;  // a partition began while it travelled
  if (!(toB ? c.bOpen : c.aOpen)) {
    // The receiver's side is closed: its kernel answers with a reset.
    if (nodes_[size_t(to)].started) {
      loop_.after(net_->latency(to, from), [this, cid, toB] { tellClosed(cid, toB); });
    }
    return;
  }
  uint64_t inc = toB ? c.bInc : c.aInc;
  onNode(to, inc, [this, cid, toB, from, to, kind, body = std::move(body)] {
    auto it = conns_.find(cid);
    if (it == conns_.end() || !(toB ? it->second.bOpen : it->second.aOpen)) return;
    ConnId id = toB ? it->second.bId : it->second.aId;
    ++frames_;
    Micros now = loop_.now();
    if (isDissemination(kind) && now >= loadBegin_ && now < loadEnd_) {
      receivedDisseminationWindow_ += body->size() + kFrameOverheadBytes;
    }
    trace_.add(now, uint64_t(from) << 32 | uint64_t(to), body->size());
    trace_.addBytes(std::string_view(*body).substr(0, 64));
    timed([&] { nodes_[size_t(to)].core->received(nowMillis(), id, std::string_view(*body)); });
    runActions(to);
    // Counted once the hello was handled and the connection is still open:
    // one the receiver refuses at once does not count.
    if (kind == FrameKind::kHello) ready(cid, !toB);
  });
}

void Sim::closeSide(uint64_t cid, bool sideA, bool notifyPeer) {
  auto it = conns_.find(cid);
  if (it == conns_.end()) return;
  SimConn& c = it->second;
  bool& open = sideA ? c.aOpen : c.bOpen;
  if (open && c.established) --nodes_[size_t(sideA ? c.a : c.b)].connections;
  open = false;
  trace_.add(loop_.now(), 'X', uint64_t(sideA ? c.a : c.b), cid);
  bool peerOpen = sideA ? c.bOpen : c.aOpen;
  if (!peerOpen) {
    conns_.erase(it);
    return;
  }
  if (!notifyPeer) return;
  int from = sideA ? c.a : c.b, to = sideA ? c.b : c.a;
  // The FIN (or reset) follows the frames already on the link; a partition
  // loses it (the peer learns at its next frame, answered by a reset).
  auto transit = net_->send(loop_.now(), from, to, 0);
  if (!transit) return;
  loop_.at(transit->arrives, [this, cid, sideA] { tellClosed(cid, !sideA); });
}

// Side `sideA` learns that the connection ended (reset, FIN, connect failure).
void Sim::tellClosed(uint64_t cid, bool sideA) {
  auto it = conns_.find(cid);
  if (it == conns_.end()) return;
  SimConn& c = it->second;
  if (!(sideA ? c.aOpen : c.bOpen)) return;
  int node = sideA ? c.a : c.b;
  uint64_t inc = sideA ? c.aInc : c.bInc;
  ConnId id = sideA ? c.aId : c.bId;
  Node& n = nodes_[size_t(node)];
  if (!n.up || n.incarnation != inc) {
    closeSide(cid, sideA, false);
    return;
  }
  onNode(node, inc, [this, cid, sideA, node, id] {
    auto it = conns_.find(cid);
    if (it == conns_.end() || !(sideA ? it->second.aOpen : it->second.bOpen)) return;
    Node& n = nodes_[size_t(node)];
    n.conns.erase(id);
    closeSide(cid, sideA, false);
    timed([&] { n.core->closed(nowMillis(), id); });
    runActions(node);
  });
}

// ---- workload ------------------------------------------------------------------------

int Sim::pickUpNode(Rng& rng) {
  std::vector<int> up;
  for (const auto& n : nodes_) {
    if (n.up && !n.paused && !n.leaving) up.push_back(n.index);
  }
  if (up.empty()) return -1;
  return up[rng.below(up.size())];
}

void Sim::scheduleWrite() {
  if (o_.writeRate <= 0) return;
  Micros gap = Micros(workRng_.exponential(1e6 / o_.writeRate)) + 1;
  if (loop_.now() + gap >= loadEnd_) return;
  loop_.after(gap, [this] {
    write();
    scheduleWrite();
  });
}

void Sim::write() {
  int i = pickUpNode(workRng_);
  if (i < 0) return;
  Node& n = nodes_[size_t(i)];
  const auto& writes = checker_.writes();
  crdt::ReviewKey key;
  if (!writes.empty() && workRng_.chance(o_.updateFraction)) {
    key = writes[workRng_.below(writes.size())].key;
  } else {
    key = {"p" + std::to_string(workRng_.below(uint64_t(o_.products))),
           "a" + std::to_string(writes.size())};
  }
  uint8_t rating = uint8_t(1 + workRng_.below(5));
  std::string body(o_.bodyBytes, 'x');
  for (auto& ch : body) ch = char('a' + workRng_.below(26));
  auto applied = timed([&] {
    return n.store->write(key, [&](crdt::ReviewDoc& doc, crdt::HybridClock& clock) {
      return Result<crdt::ReviewDoc>(doc.write(rating, "title", body, clock.now()));
    });
  });
  if (!applied.ok()) {
    ++writeErrors_;
    if (problems_.size() < 10) problems_.push_back("write failed: " + applied.error().message);
    return;
  }
  crdt::Stamp stamp = applied->delta.content().stamp();
  uint32_t id = checker_.acked(i, key, stamp, loop_.now());
  checker_.stored(i, applied->state, loop_.now());
  trace_.add(loop_.now(), 'W', uint64_t(i) << 32 | id, stamp.hlc.bits);
  std::vector<std::string> deltas{applied->delta.encode()};
  if (loop_.now() < loadEnd_) {
    deltaBytesWindow_ += deltas[0].size();
    ++deltasWindow_;
  }
  timed([&] { n.core->publish(nowMillis(), std::move(deltas)); });
  runActions(i);
}

void Sim::scheduleRead() {
  if (o_.readRate <= 0) return;
  Micros gap = Micros(workRng_.exponential(1e6 / o_.readRate)) + 1;
  if (loop_.now() + gap >= loadEnd_) return;
  loop_.after(gap, [this] {
    read();
    scheduleRead();
  });
}

void Sim::read() {
  const auto& writes = checker_.writes();
  if (writes.empty()) return;
  const WriteRecord& w = writes[workRng_.below(writes.size())];
  int i = pickUpNode(workRng_);
  if (i < 0) return;
  auto stamp = timed([&] { return nodes_[size_t(i)].store->contentStamp(w.key); });
  ++reads_;
  if (!stamp.ok() || !stamp.value() || *stamp.value() < w.stamp) ++staleReads_;
}

// ---- faults and observation -------------------------------------------------------

void Sim::applyFault(const Fault& f) {
  if (o_.verbose) std::fprintf(stderr, "fault: %s\n", describe(f).c_str());
  trace_.add(loop_.now(), 'F', uint64_t(f.kind), uint64_t(f.target));
  switch (f.kind) {
    case Fault::Kind::kSplitRegion:
    case Fault::Kind::kIsolate:
    case Fault::Kind::kOneWay: {
      Block b;
      b.kind = f.kind == Fault::Kind::kSplitRegion ? Block::Kind::kRegion
               : f.kind == Fault::Kind::kIsolate   ? Block::Kind::kNode
                                                   : Block::Kind::kOneWay;
      if (b.kind == Block::Kind::kRegion) {
        b.region = f.target;
      } else {
        b.node = f.target;
      }
      uint64_t id = net_->add(b);
      blocksChanged_ = loop_.now();
      if (f.at + f.duration < loadEnd_) {
        loop_.at(f.at + f.duration, [this, id] {
          net_->remove(id);
          blocksChanged_ = loop_.now();
        });
      }
      break;  // the final heal clears every block
    }
    case Fault::Kind::kCrash:
      crash(f.target);
      if (f.at + f.duration < loadEnd_) {
        loop_.at(f.at + f.duration, [this, t = f.target] { restart(t); });
      }
      break;
    case Fault::Kind::kPause:
      pause(f.target, std::min(f.duration, loadEnd_ - f.at));
      break;
    case Fault::Kind::kSkew:
      nodes_[size_t(f.target)].skewMillis = f.skewMillis;
      break;
    case Fault::Kind::kJoin:
      if (!nodes_[size_t(f.target)].started) {
        startNode(f.target);
        joins_.push_back(Detection{f.target, loop_.now()});
      }
      break;
    case Fault::Kind::kLeave:
      beginLeave(f.target);
      break;
  }
}

void Sim::healAll() {
  trace_.add(loop_.now(), 'H');
  net_->clear();
  blocksChanged_ = loop_.now();
  healed_ = true;
  for (int i = 0; i < total_; ++i) {
    Node& n = nodes_[size_t(i)];
    if (!n.started || n.left) continue;
    if (!n.up) restart(i);
    if (n.paused) resume(i);
  }
}

void Sim::poll() {
  auto wall0 = WallClock::now();
  pollViews();
  viewWall_ += WallClock::now() - wall0;
}

void Sim::pollViews() {
  Micros now = loop_.now();
  constexpr auto kAlive = uint8_t(gossip::PeerState::kAlive);
  constexpr auto kSuspect = uint8_t(gossip::PeerState::kSuspect);
  constexpr auto kDead = uint8_t(gossip::PeerState::kDead);
  constexpr auto kLeft = uint8_t(gossip::PeerState::kLeft);
  for (auto& n : nodes_) {
    if (!n.up || n.paused || !n.core) continue;
    maxCoreConnections_ = std::max(maxCoreConnections_, n.core->stats().connections);
    for (const auto& m : n.core->members()) {
      int p = nodeIndexOf(m.nodeId, total_);
      if (p < 0) continue;
      uint8_t& last = n.view[size_t(p)];
      uint8_t state = uint8_t(m.state);
      if (last == kAlive && (state == kSuspect || state == kDead)) ++suspicions_;
      // A declaration of death is wrong when the peer was up, running,
      // not leaving and reachable both ways, and so was the viewer, for
      // longer than the detector needs to declare a silent peer dead
      // (wrongDeadQuiet_). A suspicion refuted in time never shows here.
      if (state == kDead && last != kUnknown && last != state) {
        const Node& peer = nodes_[size_t(p)];
        Micros calmSince = std::max({blocksChanged_, peer.disturbed, n.disturbed});
        if (peer.up && !peer.paused && !peer.leaving && !net_->blocked(peer.index, n.index) &&
            !net_->blocked(n.index, peer.index) && now - calmSince > wrongDeadQuiet_) {
          ++wronglyDead_;
          if (o_.verbose) {
            std::fprintf(stderr, "%10.3fs %s: %s wrongly declared dead\n", double(now) / 1e6,
                         n.id.c_str(), m.nodeId.c_str());
          }
        }
      }
      last = state;
    }
  }
  if (now >= loadBegin_ && now < loadEnd_) {
    uint64_t running = 0, connections = 0;
    for (const auto& n : nodes_) {
      if (!n.up) continue;
      ++running;
      connections += n.connections;
    }
    ++pollsWindow_;
    runningSamples_ += double(running);
    connectionSamples_ += running ? double(connections) / double(running) : 0;
  }
  // Every running node that was there at `since` (and is not `d.node`) sees
  // `d.node` in one of the states `want` accepts.
  auto everyone = [&](const Detection& d, auto want) {
    for (const auto& n : nodes_) {
      if (n.index == d.node || !n.up || n.paused || !n.core || n.startedAt > d.at) continue;
      if (!want(n.view[size_t(d.node)])) return false;
    }
    return true;
  };
  auto follow = [&](std::vector<Detection>& list, std::vector<double>& times, auto want) {
    for (auto& d : list) {
      if (d.done || !everyone(d, want)) continue;
      d.done = true;
      times.push_back(double(now - d.at) / 1e6);
    }
  };
  follow(detections_, detectTimes_, [](uint8_t s) { return s == kDead || s == kLeft; });
  follow(leaves_, leaveTimes_, [](uint8_t s) { return s == kLeft; });
  // A joiner must be known to nodes that started after it too.
  for (auto& d : joins_) {
    if (d.done) continue;
    bool all = true;
    for (const auto& n : nodes_) {
      if (n.index == d.node || !n.up || n.paused || !n.core) continue;
      if (n.view[size_t(d.node)] != kAlive) {
        all = false;
        break;
      }
    }
    if (all) {
      d.done = true;
      joinTimes_.push_back(double(now - d.at) / 1e6);
    }
  }
}

void Sim::checkConverged() {
  if (converged_) return;
  if (checker_.incomplete() != 0) return;
  std::optional<storage::Hash> first;
  for (auto& n : nodes_) {
    if (!n.up || n.left) continue;
    auto root = n.store->root();
    if (!root.ok()) return;
    if (!first) {
      first = root.value();
    } else if (*first != root.value()) {
      return;
    }
  }
  converged_ = loop_.now();
  loop_.stop();
}

Result<SimResult> Sim::run() {
  if (o_.nodes < 1) return makeError(ErrorCode::kInvalidArgument, "--nodes must be at least 1");
  if (o_.store == StoreKind::kLmdb && o_.lmdbDir.empty()) {
    return makeError(ErrorCode::kInvalidArgument, "the LMDB store needs a directory");
  }
  if (o_.faults.joinBurst > 0 && o_.faults.joinBurstAt >= o_.warmup + o_.duration) {
    return makeError(ErrorCode::kInvalidArgument, "a join burst must start before the workload ends");
  }
  auto wallStart = WallClock::now();
  double cpuStart = processCpuSeconds();
  std::vector<int> regionOf(static_cast<size_t>(total_));
  size_t regions = o_.network.regions.size();
  for (int i = 0; i < total_; ++i) regionOf[size_t(i)] = int(size_t(i) % regions);
  net_ = std::make_unique<Network>(o_.network, regionOf, netRng_);
  pairBytesWindow_.assign(regions * regions, 0);
  nodes_.resize(size_t(total_));
  for (int i = 0; i < total_; ++i) {
    Node& n = nodes_[size_t(i)];
    n.index = i;
    n.id = nodeIdOf(i);
    n.address = addressOf(i);
    n.region = regionOf[size_t(i)];
    byAddress_[n.address] = i;
    byId_[n.id] = i;
  }
  if (auto s = openStores(); !s.ok()) return s.error();
  {
    // How long the detector may take to declare a silent member dead: a
    // probe interval, the probe timeout, and the longest suspicion
    // (maxSuspicionMult x suspicionMult x log10(max(N, 10)) x the probe
    // interval), plus a poll; at least 10 s.
    gossip::CoreOptions co;
    co.probeIntervalMillis = o_.probeIntervalMillis;
    if (o_.tuneCore) o_.tuneCore(co);
    double suspicion = co.maxSuspicionMult * co.suspicionMult *
                       std::log10(std::max(10.0, double(total_))) * double(co.probeIntervalMillis);
    Micros need = Micros(double(co.probeIntervalMillis + co.probeTimeoutMillis) + suspicion) * kMillis;
    wrongDeadQuiet_ = std::max<Micros>(10 * kSeconds, need + o_.pollInterval);
  }

  loadBegin_ = o_.warmup;
  loadEnd_ = o_.warmup + o_.duration;
  FaultOptions fo = o_.faults;
  if (fo.begin == 0 && fo.end == 0) {
    fo.begin = loadBegin_;
    fo.end = loadEnd_;
  }
  auto schedule = makeSchedule(fo, o_.nodes, int(regions), faultRng_);
  for (int i = 0; i < o_.nodes; ++i) startNode(i);
  for (const auto& f : schedule) loop_.at(f.at, [this, f] { applyFault(f); });
  loop_.at(loadBegin_, [this] {
    scheduleWrite();
    scheduleRead();
  });
  // Observation: membership views, then (after the heal) convergence.
  std::function<void()> pollLoop = [this, &pollLoop] {
    poll();
    loop_.after(o_.pollInterval, pollLoop);
  };
  loop_.after(o_.pollInterval, pollLoop);
  loop_.at(loadEnd_, [this] { healAll(); });
  std::function<void()> convergeLoop = [this, &convergeLoop] {
    checkConverged();
    if (!converged_) loop_.after(20 * kMillis, convergeLoop);
  };
  loop_.at(loadEnd_, convergeLoop);
  if (o_.verbose) {
    for (Micros t = 10 * kSeconds; t < loadEnd_ + o_.settle; t += 10 * kSeconds) {
      loop_.at(t, [this, wallStart] {
        std::fprintf(stderr, "  simulated %.0fs, wall %.1fs, %llu events\n",
                     double(loop_.now()) / 1e6,
                     std::chrono::duration<double>(WallClock::now() - wallStart).count(),
                     (unsigned long long)loop_.eventsRun());
      });
    }
  }
  loop_.runUntil(loadEnd_ + o_.settle);

  SimResult r;
  r.nodes = o_.nodes;
  r.totalNodes = total_;
  r.regions = int(regions);
  r.simulatedS = double(loop_.now()) / 1e6;
  r.events = loop_.eventsRun();
  r.frames = frames_;
  r.writes = checker_.writes().size();
  r.reads = reads_;
  r.staleReads = staleReads_;
  auto lat = checker_.latenciesMillis(loadBegin_, loadEnd_);
  auto pct = [&](double p) {
    return lat.empty() ? -1.0 : lat[std::min(lat.size() - 1, size_t(p * double(lat.size())))];
  };
  r.writeToAllP50Ms = pct(0.5);
  r.writeToAllP99Ms = pct(0.99);
  r.writeToAllMaxMs = lat.empty() ? -1 : lat.back();
  r.healConvergeS = converged_ ? double(*converged_ - loadEnd_) / 1e6 : -1;
  double windowS = double(loadEnd_ - loadBegin_) / 1e6;
  r.bytesPerNodePerS = double(bytesWindow_) / double(o_.nodes) / windowS;
  r.membershipBytesPerNodePerS = double(membershipBytesWindow_) / double(o_.nodes) / windowS;
  r.disseminationBytesPerNodePerS =
      double(disseminationBytesWindow_) / double(o_.nodes) / windowS;
  uint64_t windowWrites = 0;
  for (const auto& w : checker_.writes()) windowWrites += w.acked < loadEnd_;
  r.bytesPerWrite = windowWrites ? double(repairBytesWindow_) / double(windowWrites) : 0;
  r.crossRegionBytesPerWrite =
      windowWrites ? double(crossRepairBytesWindow_) / double(windowWrites) : 0;
  r.maxConnectionsPerNode = maxConnections_;
  r.maxCoreConnectionsPerNode = maxCoreConnections_;
  r.meanConnectionsPerNode = pollsWindow_ ? connectionSamples_ / double(pollsWindow_) : 0;
  r.deltaBytesMean = deltasWindow_ ? double(deltaBytesWindow_) / double(deltasWindow_) : 0;
  double running = pollsWindow_ ? runningSamples_ / double(pollsWindow_) : double(o_.nodes);
  if (windowWrites && running > 0) {
    r.receivedDisseminationBytesPerWritePerNode =
        double(receivedDisseminationWindow_) / double(windowWrites) / running;
    uint64_t pairMax = *std::max_element(pairBytesWindow_.begin(), pairBytesWindow_.end());
    r.crossRegionDisseminationBytesPerWrite = double(pairMax) / double(windowWrites);
  }
  if (r.deltaBytesMean > 0) {
    r.receiveRatio = r.receivedDisseminationBytesPerWritePerNode / r.deltaBytesMean;
    r.regionPairRatioMax = r.crossRegionDisseminationBytesPerWrite / r.deltaBytesMean;
  }
  if (!detectTimes_.empty()) {
    double sum = 0;
    for (double t : detectTimes_) sum += t;
    r.detectDeadS = sum / double(detectTimes_.size());
    r.detectDeadMaxS = *std::max_element(detectTimes_.begin(), detectTimes_.end());
  }
  r.crashesDetected = detectTimes_.size();
  for (const auto& d : detections_) r.crashesUndetected += !d.done;
  r.crashesUndetected += undetected_;
  r.joinsKnown = joinTimes_.size();
  r.joinsUnknown = joins_.size() - joinTimes_.size();
  if (!joinTimes_.empty() && r.joinsUnknown == 0) {
    r.joinKnownS = *std::max_element(joinTimes_.begin(), joinTimes_.end());
  }
  if (!leaveTimes_.empty()) {
    r.leaveKnownS = *std::max_element(leaveTimes_.begin(), leaveTimes_.end());
  }
  r.suspicions = suspicions_;
  r.wronglyDeclaredDead = wronglyDead_;
  r.refusedStamps = refused_;

  std::vector<int> live;
  for (const auto& n : nodes_) {
    if (n.up && !n.left) live.push_back(n.index);
  }
  for (int i : live) {
    auto st = nodes_[size_t(i)].core->stats();
    r.probesFailed += st.probesFailed;
    r.refutations += st.refutations;
    r.broadcastDuplicates += st.broadcastDuplicates;
    r.grafts += st.grafts;
  }
  std::vector<std::string> missing;
  std::vector<uint32_t> lostIds;
  r.lost = checker_.verify(
      live,
      [&](int node, const crdt::ReviewKey& key) -> std::optional<crdt::Stamp> {
        auto s = nodes_[size_t(node)].store->contentStamp(key);
        return s.ok() ? s.value() : std::nullopt;
      },
      missing, 5, &lostIds);
  for (uint32_t id : lostIds) r.lostWithLeaver += nodes_[size_t(checker_.writes()[id].node)].left;
  r.rootsEqual = true;
  std::optional<storage::Hash> first;
  for (int i : live) {
    auto root = nodes_[size_t(i)].store->root();
    if (!root.ok() || (first && *first != root.value())) r.rootsEqual = false;
    if (root.ok() && !first) first = root.value();
  }
  if (o_.verbose) {
    // Joins and crashes not known everywhere: who does not know.
    auto unknownTo = [&](const Detection& d, bool join) {
      std::string who;
      for (const auto& n : nodes_) {
        if (n.index == d.node || !n.up || !n.core || (!join && n.startedAt > d.at)) continue;
        uint8_t v = n.view[size_t(d.node)];
        bool fine = join ? v == uint8_t(gossip::PeerState::kAlive)
                         : v == uint8_t(gossip::PeerState::kDead) ||
                               v == uint8_t(gossip::PeerState::kLeft);
        if (!fine) {
          who += " " + n.id + "(" +
                 (v == kUnknown ? "unknown" : gossip::peerStateName(gossip::PeerState(v))) + ")";
        }
      }
      return who;
    };
    for (const auto& d : joins_) {
      if (!d.done) {
        std::fprintf(stderr, "  join of n%d at %.3fs not known to:%s\n", d.node,
                     double(d.at) / 1e6, unknownTo(d, true).c_str());
      }
    }
    for (const auto& d : detections_) {
      if (!d.done) {
        std::fprintf(stderr, "  crash of n%d at %.3fs not known to:%s\n", d.node,
                     double(d.at) / 1e6, unknownTo(d, false).c_str());
      }
    }
  }
  if (o_.verbose && !converged_) {
    // Each live node as it sees the others: where a run got stuck.
    for (int i : live) {
      Node& n = nodes_[size_t(i)];
      int counts[4] = {0, 0, 0, 0};
      std::string dead;
      for (const auto& m : n.core->members()) {
        ++counts[int(m.state)];
        if (m.state != gossip::PeerState::kAlive) dead += " " + m.nodeId;
      }
      auto st = n.core->stats();
      auto root = n.store->root();
      std::fprintf(stderr,
                   "  %s: %zu connections; peers alive %d, suspect %d, dead %d, left %d:%s; sessions "
                   "started %llu, completed %llu; states repaired %llu; %llu documents, root "
                   "%02x%02x%02x%02x\n",
                   n.id.c_str(), n.conns.size(), counts[0], counts[1], counts[2], counts[3], dead.c_str(),
                   (unsigned long long)st.syncStarted, (unsigned long long)st.syncCompleted,
                   (unsigned long long)st.statesRepaired, (unsigned long long)n.store->documents(),
                   root.ok() ? root.value()[0] : 0, root.ok() ? root.value()[1] : 0,
                   root.ok() ? root.value()[2] : 0, root.ok() ? root.value()[3] : 0);
      if (std::getenv("CHORUS_SIM_DEBUG_CONNS")) {
        for (const auto& [id, cid] : n.conns) {
          auto it = conns_.find(cid);
          if (it == conns_.end()) {
            std::fprintf(stderr, "    conn %llu: forgotten by the network\n",
                         (unsigned long long)id);
            continue;
          }
          const SimConn& c = it->second;
          std::fprintf(stderr, "    conn %llu: %s n%d, a open %d, b open %d, b id %llu\n",
                       (unsigned long long)id, c.a == i ? "to" : "from", c.a == i ? c.b : c.a,
                       c.aOpen, c.bOpen, (unsigned long long)c.bId);
        }
      }
    }
  }
  r.problems = problems_;
  for (auto& m : missing) r.problems.push_back("lost: " + m);
  if (!r.rootsEqual) r.problems.push_back("the live nodes' Merkle roots differ at the end");
  if (!converged_) {
    r.problems.push_back("did not converge within " + std::to_string(o_.settle / kSeconds) +
                         " s of the final heal (" + std::to_string(checker_.incomplete()) +
                         " writes not yet on every member)");
    for (auto& line : checker_.describeIncomplete(5)) r.problems.push_back(line);
  }
  for (auto& n : nodes_) {
    r.replicaIds.push_back(n.store->replicaId());
    if (keepContents_ && n.up && !n.left) {
      auto contents = storeContents(n.store->replica());
      if (!contents.ok()) return contents.error();
      r.contents.push_back(std::move(contents).value());
    }
  }
  r.traceHash = trace_.hex();
  r.coreWallS = std::chrono::duration<double>(coreWall_).count();
  r.viewWallS = std::chrono::duration<double>(viewWall_).count();
  // Cores go before their stores.
  for (auto& n : nodes_) n.core.reset();
  r.wallS = std::chrono::duration<double>(WallClock::now() - wallStart).count();
  r.cpuS = processCpuSeconds() - cpuStart;
  return r;
}

}  // namespace

Result<SimResult> runSimulation(const SimOptions& options, bool keepContents) {
  Sim sim(options, keepContents);
  return sim.run();
}

}  // namespace chorus::sim
