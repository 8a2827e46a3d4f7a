#include "api/http/overview.h"

#include <algorithm>
#include <cinttypes>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include <capnp/message.h>

#include "api/client.h"
#include "api/http/json.h"
#include "api/http/overview.capnp.h"
#include "api/internal/server-loop.h"
#include "api/node.h"
#include "api/validate.h"

namespace chorus::api::http {

namespace {

// ---- JSON output -------------------------------------------------------------

// The HTTP API's string encoder (json.h), as a value.
std::string jsonString(std::string_view s) {
  std::string out;
  appendJsonString(out, s);
  return out;
}

std::string jsonIds(const std::vector<std::string>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + jsonString(ids[i]);
  return out + "]";
}

std::string hexOf(const storage::Hash& h) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(h.size() * 2);
  for (uint8_t b : h) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

// The code names of api/chorus.capnp's ErrorCode (what the HTTP API's
// problem documents say in `code`). The C++ client reports `unauthenticated`
// as kForbidden "unauthenticated: ...".
const char* codeName(const Error& e) {
  switch (e.code) {
    case ErrorCode::kInvalidArgument:
      return "invalidArgument";
    case ErrorCode::kNotFound:
      return "notFound";
    case ErrorCode::kForbidden:
      return e.message.rfind("unauthenticated", 0) == 0 ? "unauthenticated" : "forbidden";
    case ErrorCode::kOverloaded:
      return "overloaded";
    case ErrorCode::kUnavailable:
      return "unavailable";
    default:
      return "internal";
  }
}

std::string jsonError(const Error& e) {
  return "{\"code\":\"" + std::string(codeName(e)) + "\",\"message\":" + jsonString(e.message) +
         "}";
}

std::string joinIds(const std::vector<std::string>& ids) {
  std::string out;
  for (const auto& id : ids) out += (out.empty() ? "" : ", ") + id;
  return out;
}

constexpr const char* kNotAsked =
    "not asked: its RPC address is not in the serving node's --overview-nodes (the admin "
    "token goes only to listed addresses)";

// ---- gathering ---------------------------------------------------------------

// What one node answered over RPC.
struct Answer {
  std::optional<ClusterView> view;
  std::optional<NodeStatus> status;
};

// A node as the overview shows it.
struct Entry {
  std::string id;
  std::string address;     // where it was asked; empty: not asked (but self)
  std::string advertised;  // its RPC address per gossip; shown, never dialled
  std::string region;
  bool self = false;
  bool gone = false;                         // left or removed: takes no part
  std::optional<gossip::MemberInfo> member;  // the serving node's entry for it
  Result<Answer> answer = makeError(ErrorCode::kUnavailable, kNotAsked);
  bool asked() const { return self || !address.empty(); }  // the serving node needs no asking
  bool reachable() const { return answer.ok() && answer->view.has_value(); }
};

// Runs `fn(i)` for every index at once, one thread each (api::Client's event
// loop belongs to its thread), and waits for all.
void onEach(size_t n, const std::function<void(size_t)>& fn) {
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (size_t i = 0; i < n; ++i) threads.emplace_back([&fn, i] { fn(i); });
  for (auto& t : threads) t.join();
}

Result<std::unique_ptr<Client>> dial(const std::string& address, const std::string& token,
                                     std::chrono::milliseconds timeout) {
  Client::Options o;
  o.timeout = timeout;
  o.token = token;
  return Client::connect(address, o);
}

// Asks `address` for its cluster view and status.
Result<Answer> ask(const std::string& address, const std::string& token,
                   std::chrono::milliseconds timeout) {
  auto client = dial(address, token, timeout);
  if (!client.ok()) return client.error();
  auto view = (*client)->cluster();
  if (!view.ok()) return view.error();
  Answer a;
  a.view = std::move(*view);
  if (auto status = (*client)->status(); status.ok()) a.status = std::move(*status);
  return a;
}

struct Gathered {
  std::string servedBy;
  uint64_t nowUnixMillis = 0;
  std::vector<Entry> nodes;  // by id
};

}  // namespace

class Overview::Slot {
 public:
  explicit Slot(std::atomic<int>& n) : n_(n), held_(n.fetch_add(1) < kMaxConcurrent) {}
  ~Slot() { n_.fetch_sub(1); }
  bool held() const { return held_; }

 private:
  std::atomic<int>& n_;
  bool held_;
};

namespace {

// The serving node's own answer, then every listed address at once; every
// node is matched by the id it answers with (so an address listed twice, or
// the serving node's own address, counts once), else by the member that
// advertises that address.
Result<Gathered> gather(Node& node, const Overview::Options& options, const std::string& token) {
  auto status = node.status();
  if (!status.ok()) return status.error();
  Gathered g;
  g.servedBy = status->nodeId;
  Entry self;
  self.id = status->nodeId;
  self.address = node.rpcAddress();
  self.self = true;
  auto view = node.clusterView();
  Answer own;
  own.status = *status;
  if (view.ok()) {
    own.view = *view;
  } else {
    // No cluster: a lone node, shown from its status.
    ClusterView v;
    v.nodeId = status->nodeId;
    v.rpcAddress = node.rpcAddress();
    v.keyCount = status->keyCount;
    v.merkleRoot = status->merkleRoot;
    v.refusedStamps = status->stats.refusedStamps;
    v.nowUnixMillis = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                std::chrono::system_clock::now().time_since_epoch())
                                                .count());
    own.view = v;
  }
  g.nowUnixMillis = own.view->nowUnixMillis;
  self.region = own.view->region;
  self.advertised = own.view->rpcAddress;
  self.gone = own.view->state == gossip::PeerState::kLeft;
  const ClusterView selfView = *own.view;
  self.answer = std::move(own);

  std::vector<std::string> targets;
  for (const auto& a : options.nodes) {
    if (a != node.rpcAddress() && a != selfView.rpcAddress) targets.push_back(a);
  }
  std::vector<std::optional<Result<Answer>>> answers(targets.size());
  onEach(targets.size(),
         [&](size_t i) { answers[i].emplace(ask(targets[i], token, options.timeout)); });

  std::map<std::string, Entry> byId;
  byId.emplace(self.id, std::move(self));
  for (size_t i = 0; i < targets.size(); ++i) {
    auto& a = *answers[i];
    if (!a.ok() || byId.count(a->view->nodeId)) continue;
    Entry e;
    e.id = a->view->nodeId;
    e.address = targets[i];
    e.region = a->view->region;
    e.gone = a->view->state == gossip::PeerState::kLeft;
    e.answer = std::move(a);
    byId.emplace(e.id, std::move(e));
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    auto& a = *answers[i];
    if (a.ok()) continue;
    std::string id = targets[i];
    for (const auto& m : selfView.members) {
      if (m.rpcAddress == targets[i] && !byId.count(m.nodeId)) id = m.nodeId;
    }
    if (byId.count(id)) continue;
    Entry e;
    e.id = id;
    e.address = targets[i];
    e.answer = a.error();
    byId.emplace(id, std::move(e));
  }
  for (const auto& m : selfView.members) {
    auto it = byId.find(m.nodeId);
    if (it == byId.end()) {
      Entry e;
      e.id = m.nodeId;
      it = byId.emplace(m.nodeId, std::move(e)).first;
    }
    Entry& e = it->second;
    e.member = m;
    e.advertised = m.rpcAddress;
    if (e.region.empty()) e.region = m.region;
    if (m.state == gossip::PeerState::kLeft) e.gone = true;
  }
  for (auto& [id, e] : byId) g.nodes.push_back(std::move(e));
  return g;
}

// A node's state: its own (self: alive or left), else as the serving node
// sees it; "unknown" for a listed node the serving node does not know.
std::string stateOf(const Entry& e) {
  if (e.self || (!e.member && e.reachable())) {
    return e.gone ? "left" : "alive";
  }
  if (e.gone) return "left";
  return e.member ? gossip::peerStateName(e.member->state) : "unknown";
}

std::string ago(uint64_t now, uint64_t then) {
  if (then == 0) return "null";
  return std::to_string(now > then ? now - then : 0);
}

// `now`: the serving node's wall clock (for its member entry's ages).
std::string entryJson(const Entry& e, uint64_t now) {
  std::string out = "{\"nodeId\":" + jsonString(e.id) + ",\"self\":" + (e.self ? "true" : "false") +
                    ",\"region\":" + jsonString(e.region) + ",\"state\":" + jsonString(stateOf(e)) +
                    ",\"rpcAddress\":" + jsonString(e.address) +
                    ",\"advertisedRpcAddress\":" + jsonString(e.advertised) +
                    ",\"asked\":" + (e.asked() ? "true" : "false") +
                    ",\"reachable\":" + (e.reachable() ? "true" : "false");
  if (e.reachable()) {
    const ClusterView& v = *e.answer->view;
    uint64_t lastSync = 0, pending = 0;
    for (const auto& m : v.members) {
      lastSync = std::max(lastSync, m.lastSyncUnixMillis);
      pending += m.pendingDeltas;
    }
    out += ",\"keys\":" + std::to_string(v.keyCount) + ",\"merkleRoot\":\"" + hexOf(v.merkleRoot) +
           "\",\"refusedStamps\":" + std::to_string(v.refusedStamps) +
           ",\"partitioned\":" + jsonIds(v.partitioned) +
           ",\"lastSyncMillisAgo\":" + ago(v.nowUnixMillis, lastSync) +
           ",\"pendingDeltas\":" + std::to_string(pending) +
           ",\"authFailures\":" + std::to_string(v.stats.authFailures);
    if (const auto& s = e.answer->status) {
      out += ",\"writes\":" + std::to_string(s->stats.writes) +
             ",\"uptimeMillis\":" + std::to_string(s->uptimeMillis);
    }
  } else {
    out += ",\"error\":" + jsonError(e.answer.ok() ? makeError(ErrorCode::kUnavailable,
                                                               "answered without a cluster view")
                                                   : e.answer.error());
  }
  if (e.member && !e.self) {
    // How the serving node sees it (its clock): useful when it did not answer.
    const auto& m = *e.member;
    out += ",\"seenBy\":{\"state\":" + jsonString(gossip::peerStateName(m.state)) +
           ",\"partitioned\":" + (m.partitioned ? "true" : "false") +
           ",\"lastSyncMillisAgo\":" + ago(now, m.lastSyncUnixMillis) +
           ",\"pendingDeltas\":" + std::to_string(m.pendingDeltas) + "}";
  }
  return out + "}";
}

}  // namespace

Overview::Overview(Node& node, Options options) : node_(node), options_(std::move(options)) {}

Result<std::string> Overview::json(const std::string& token) {
  Slot slot(inFlight_);
  if (!slot.held()) {
    return makeError(ErrorCode::kOverloaded,
                     "too many cluster overviews at once on this node; retry in a second");
  }
  auto g = gather(node_, options_, token);
  if (!g.ok()) return g.error();
  std::string nodes;
  std::map<std::string, std::vector<std::string>> byRoot;
  std::map<std::string, uint64_t> keysOf;
  std::vector<std::string> unreachable, notAsked;
  for (const auto& e : g->nodes) {
    nodes += (nodes.empty() ? "" : ",") + entryJson(e, g->nowUnixMillis);
    if (e.gone) continue;
    if (e.reachable()) {
      std::string root = hexOf(e.answer->view->merkleRoot);
      byRoot[root].push_back(e.id);
      keysOf[root] = e.answer->view->keyCount;
    } else if (e.asked()) {
      unreachable.push_back(e.id);
    } else {
      notAsked.push_back(e.id);
    }
  }
  std::vector<std::pair<std::string, std::vector<std::string>>> groups(byRoot.begin(),
                                                                       byRoot.end());
  std::stable_sort(groups.begin(), groups.end(),
                   [](const auto& a, const auto& b) { return a.second.size() > b.second.size(); });
  std::string groupsJson;
  for (const auto& [root, ids] : groups) {
    groupsJson += std::string(groupsJson.empty() ? "" : ",") + "{\"merkleRoot\":\"" + root +
                  "\",\"nodes\":" + jsonIds(ids) + ",\"keys\":" + std::to_string(keysOf[root]) +
                  "}";
  }
  bool agree = groups.size() == 1 && unreachable.empty() && notAsked.empty();
  return "{\"servedBy\":" + jsonString(g->servedBy) +
         ",\"nowUnixMillis\":" + std::to_string(g->nowUnixMillis) + ",\"nodes\":[" + nodes +
         "],\"groups\":[" + groupsJson + "],\"agree\":" + (agree ? "true" : "false") +
         ",\"unreachable\":" + jsonIds(unreachable) + ",\"notAsked\":" + jsonIds(notAsked) + "}";
}

namespace {

// Runs `fn` on every target at once: on the serving node directly, on the
// others through a client of their own. Returns each target's status.
std::vector<Status> onTargets(Node& node, const std::vector<const Entry*>& targets,
                              const std::string& token, std::chrono::milliseconds timeout,
                              const std::function<Status(const Entry&, Node*, Client*)>& fn) {
  std::vector<std::optional<Status>> results(targets.size());
  onEach(targets.size(), [&](size_t i) {
    const Entry& e = *targets[i];
    if (e.self) {
      results[i].emplace(fn(e, &node, nullptr));
      return;
    }
    auto client = dial(e.address, token, timeout);
    if (!client.ok()) {
      results[i].emplace(client.error());
      return;
    }
    results[i].emplace(fn(e, nullptr, client->get()));
  });
  std::vector<Status> out;
  for (auto& r : results) out.push_back(std::move(*r));
  return out;
}

// "n2: unavailable: ...; n3: ..." for the targets that failed, or "".
std::string failures(const std::vector<const Entry*>& targets, const std::vector<Status>& results) {
  std::string out;
  for (size_t i = 0; i < targets.size(); ++i) {
    if (results[i].ok()) continue;
    out += (out.empty() ? "" : "; ") + targets[i]->id + ": " + results[i].error().toString();
  }
  return out;
}

}  // namespace

Result<std::string> Overview::partition(const std::vector<std::vector<std::string>>& groups,
                                        const std::string& token) {
  Slot slot(inFlight_);
  if (!slot.held()) {
    return makeError(ErrorCode::kOverloaded,
                     "too many cluster operations at once on this node; retry in a second");
  }
  static const char* const kSide[] = {"a", "b"};  // the groups' fields in the HTTP body
  if (groups.size() != 2) {
    return makeError(ErrorCode::kInvalidArgument, "a: give two groups, a and b");
  }
  for (size_t i = 0; i < 2; ++i) {
    if (groups[i].empty()) {
      return makeError(ErrorCode::kInvalidArgument,
                       std::string(kSide[i]) + ": list at least one node id or region name");
    }
  }
  auto g = gather(node_, options_, token);
  if (!g.ok()) return g.error();
  std::map<std::string, const Entry*> byId;
  std::map<std::string, std::string> regionOf;  // region names stand for current members
  for (const auto& e : g->nodes) {
    byId[e.id] = &e;
    regionOf[e.id] = e.gone ? std::string() : e.region;
  }
  std::vector<std::string> known;
  for (const auto& e : g->nodes) known.push_back(e.id);
  std::vector<std::vector<std::string>> sides;
  for (size_t i = 0; i < 2; ++i) {
    auto side = expandSplitSide(groups[i], regionOf);
    if (!side.ok()) {
      return makeError(
          ErrorCode::kInvalidArgument,
          std::string(kSide[i]) + ": " + side.error().message + "; known ids: " + joinIds(known));
    }
    sides.push_back(std::move(*side));
  }
  std::set<std::string> inA(sides[0].begin(), sides[0].end());
  for (const auto& id : sides[1]) {
    if (inA.count(id)) {
      return makeError(ErrorCode::kInvalidArgument, "b: " + id + " is in both groups");
    }
  }
  std::map<std::string, std::vector<std::string>> plan;  // node -> the peers it drops
  for (const auto& id : sides[0]) plan[id] = sides[1];
  for (const auto& id : sides[1]) plan[id] = sides[0];
  std::vector<const Entry*> targets;
  for (const auto& [id, peers] : plan) targets.push_back(byId[id]);
  for (size_t i = 0; i < 2; ++i) {
    std::vector<std::string> missing;
    for (const auto& id : sides[i]) {
      if (!byId[id]->asked()) missing.push_back(id);
    }
    if (!missing.empty()) {
      return makeError(ErrorCode::kInvalidArgument,
                       std::string(kSide[i]) + ": " + joinIds(missing) +
                           " not asked: list their RPC addresses in the serving node's "
                           "--overview-nodes; nothing changed");
    }
  }
  // A new partition replaces the one before: the asked members outside
  // the plan are healed.
  for (const auto& e : g->nodes) {
    if (!plan.count(e.id) && !e.gone && e.asked()) targets.push_back(&e);
  }
  auto results =
      onTargets(node_, targets, token, options_.timeout,
                [&](const Entry& e, Node* local, Client* remote) -> Status {
                  auto healed = local ? local->heal() : remote->heal();
                  auto it = plan.find(e.id);
                  if (!healed.ok() || it == plan.end()) return healed;
                  return local ? local->partition(it->second) : remote->partition(it->second);
                });
  if (auto failed = failures(targets, results); !failed.empty()) {
    return makeError(ErrorCode::kUnavailable,
                     "not every node changed: " + failed + " (the others did; run it again)");
  }
  std::string partitioned, healed;
  for (const auto* e : targets) {
    auto it = plan.find(e->id);
    if (it != plan.end()) {
      partitioned +=
          (partitioned.empty() ? "" : ",") + jsonString(e->id) + ":" + jsonIds(it->second);
    } else {
      healed += (healed.empty() ? "" : ",") + jsonString(e->id);
    }
  }
  return "{\"partitioned\":{" + partitioned + "},\"healed\":[" + healed + "]}";
}

Result<std::string> Overview::heal(const std::string& token) {
  Slot slot(inFlight_);
  if (!slot.held()) {
    return makeError(ErrorCode::kOverloaded,
                     "too many cluster operations at once on this node; retry in a second");
  }
  auto g = gather(node_, options_, token);
  if (!g.ok()) return g.error();
  std::vector<const Entry*> targets;
  std::vector<std::string> ids, notAsked;
  for (const auto& e : g->nodes) {
    if (e.asked() && (!e.gone || e.reachable())) {  // a node that left may be stopped
      targets.push_back(&e);
      ids.push_back(e.id);
    } else if (!e.gone) {
      notAsked.push_back(e.id);
    }
  }
  auto results = onTargets(node_, targets, token, options_.timeout,
                           [](const Entry&, Node* local, Client* remote) {
                             return local ? local->heal() : remote->heal();
                           });
  if (auto failed = failures(targets, results); !failed.empty()) {
    return makeError(ErrorCode::kUnavailable,
                     "not every node healed: " + failed + " (the others did; run it again)");
  }
  return "{\"healed\":" + jsonIds(ids) + ",\"notAsked\":" + jsonIds(notAsked) + "}";
}

// ---- on the HTTP server --------------------------------------------------------

OverviewRunner::OverviewRunner(internal::ServerLoop& loop, Overview::Options options)
    : loop_(loop), overview_(loop.node(), std::move(options)) {}

OverviewRunner::~OverviewRunner() {
  pending_.clear();
  std::map<uint64_t, std::thread> running;
  {
    std::lock_guard lock(threadsMutex_);
    running.swap(threads_);
  }
  for (auto& [id, t] : running) t.join();
}

kj::Promise<OverviewRunner::Answer> OverviewRunner::overview(std::string token) {
  return run([this, token = std::move(token)] { return overview_.json(token); });
}

kj::Promise<OverviewRunner::Answer> OverviewRunner::partition(
    std::vector<std::vector<std::string>> groups, std::string token) {
  return run([this, groups = std::move(groups), token = std::move(token)] {
    return overview_.partition(groups, token);
  });
}

kj::Promise<OverviewRunner::Answer> OverviewRunner::heal(std::string token) {
  return run([this, token = std::move(token)] { return overview_.heal(token); });
}

kj::Promise<OverviewRunner::Answer> OverviewRunner::run(std::function<Result<std::string>()> work) {
  std::lock_guard lock(threadsMutex_);
  // Refused here, before a thread is made for it: a flood of requests
  // costs no threads.
  if (threads_.size() >= size_t(Overview::kMaxConcurrent)) {
    return kj::Promise<Answer>(
        kj::heap<Result<std::string>>(makeError(ErrorCode::kOverloaded,
                                                "too many cluster overviews and operations at once "
                                                "on this node; retry in a second")));
  }
  auto paf = kj::newPromiseAndFulfiller<Answer>();
  uint64_t id = next_++;
  pending_.emplace(id, kj::mv(paf.fulfiller));
  threads_.emplace(id, std::thread([this, id, work = std::move(work)] {
                     Result<std::string> answer = work();
                     // Unrun (and dropped here) once the server stopped.
                     loop_.post([this, id, answer = std::move(answer)]() mutable {
                       finished(id, std::move(answer));
                     });
                   }));
  return kj::mv(paf.promise);
}

void OverviewRunner::finished(uint64_t id, Result<std::string> answer) {
  auto it = pending_.find(id);
  if (it != pending_.end()) {
    it->second->fulfill(kj::heap<Result<std::string>>(std::move(answer)));  // no-op if dropped
    pending_.erase(it);
  }
  std::thread done;
  {
    std::lock_guard lock(threadsMutex_);
    auto t = threads_.find(id);
    if (t == threads_.end()) return;
    done = std::move(t->second);
    threads_.erase(t);
  }
  done.join();  // it posted this as its last step
}

std::variant<std::vector<std::vector<std::string>>, FieldError> parsePartitionBody(
    std::string_view body) {
  constexpr size_t kMaxIds = 1024;
  capnp::MallocMessageBuilder message(256);
  auto p = message.initRoot<generated::OverviewPartitionParams>();
  if (auto bad = decodeJsonBody(body, capnp::toDynamic(p), {"a", "b"}, {"a", "b"})) return *bad;
  std::vector<std::vector<std::string>> groups;
  for (auto [name, list] : {std::pair{"a", p.getA()}, std::pair{"b", p.getB()}}) {
    if (list.size() == 0 || list.size() > kMaxIds) {
      return FieldError{name,
                        "must list 1 to " + std::to_string(kMaxIds) + " node ids or region names"};
    }
    auto& group = groups.emplace_back();
    for (auto id : list) group.emplace_back(id.cStr(), id.size());
  }
  return groups;
}

Check parseHealBody(std::string_view body) {
  capnp::MallocMessageBuilder message(64);
  return decodeJsonBody(body, capnp::toDynamic(message.initRoot<generated::OverviewHealParams>()),
                        {});
}

Status addOverviewNodes(const std::string& text, std::vector<std::string>& out) {
  size_t i = 0;
  while (i < text.size()) {
    size_t end = text.find_first_of(", \t\r\n", i);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(i, end - i);
    i = end + 1;
    if (item.empty()) continue;
    size_t colon = item.rfind(':');
    bool ok = colon != std::string::npos && colon > 0 && colon + 1 < item.size() &&
              item.size() - colon - 1 <= 5;
    for (size_t k = colon + 1; ok && k < item.size(); ++k) ok = item[k] >= '0' && item[k] <= '9';
    if (ok) {
      long port = std::stol(item.substr(colon + 1));
      ok = port >= 1 && port <= 65535;
    }
    if (!ok) {
      return makeError(ErrorCode::kInvalidArgument,
                       "'" + item + "' is not HOST:PORT (a node's RPC address)");
    }
    if (std::find(out.begin(), out.end(), item) == out.end()) out.push_back(item);
  }
  return okStatus();
}

}  // namespace chorus::api::http
