// `chorus cluster ...`: look at and steer replication across the nodes the
// operator names: the connected node (--connect) plus --nodes HOST:PORT[,...],
// else $CHORUS_NODES, else a nodes file (--nodes-file, $CHORUS_NODES_FILE).
//
// The admin token goes only to those addresses, never to an RPC address a
// peer advertises over gossip: any holder of the cluster key can advertise
// any address, and would collect the token of every operator who ran a
// cluster command. Nodes the connected node knows over gossip but whose
// address the operator did not list are shown ("not asked"), never dialled;
// commands that need every node (converge, keys install/use/remove, and
// partition for the nodes it changes) refuse and name them. Members that
// left or were removed are shown but need not be asked: they take no part.
//
// Each node is asked over its own RPC address, all in parallel: one thread
// and one Client per node (a Client's event loop belongs to its thread), and
// a short per-call timeout, so a dead or hung node costs at most that long.
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "api/client.h"
#include "api/types.h"
#include "api/validate.h"
#include "gossip/keyring.h"
#include "tools/chorus/common.h"

namespace chorus::cli {

namespace {

using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

constexpr milliseconds kProbeTimeout{2000};    // per node and call
constexpr milliseconds kPollInterval{100};     // converge
constexpr milliseconds kMinProbeTimeout{250};  // converge, near its deadline

constexpr const char* kNotAsked = "not asked: not in --nodes";

// ---- the operator's node list ----------------------------------------------

// --nodes / --nodes-file of one subcommand (only one runs per invocation).
struct NodeFlags {
  std::vector<std::string> nodes;
  std::string nodesFile;
};

// RPC addresses from the operator, in order, without duplicates.
struct NodeList {
  std::vector<std::string> addresses;
  std::string source;  // where they came from, for messages; empty: nowhere
};

// "host:port" with a non-empty host and a port 1-65535.
bool isHostPort(const std::string& a) {
  size_t colon = a.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == a.size()) return false;
  if (a.size() - colon - 1 > 5) return false;
  for (size_t i = colon + 1; i < a.size(); ++i) {
    if (a[i] < '0' || a[i] > '9') return false;
  }
  long port = std::stol(a.substr(colon + 1));
  return port >= 1 && port <= 65535;
}

// Adds the items of `text` (separated by commas or whitespace) to `list`.
Status addItems(const std::string& text, const std::string& from, NodeList& list) {
  size_t i = 0;
  while (i < text.size()) {
    size_t end = text.find_first_of(", \t\r\n", i);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(i, end - i);
    i = end + 1;
    if (item.empty()) continue;
    if (!isHostPort(item)) {
      return makeError(ErrorCode::kInvalidArgument,
                       from + ": '" + item + "' is not HOST:PORT (a node's RPC address)");
    }
    if (std::find(list.addresses.begin(), list.addresses.end(), item) == list.addresses.end()) {
      list.addresses.push_back(item);
    }
  }
  return okStatus();
}

// One HOST:PORT per line; '#' starts a comment. The file decides where the
// admin token is sent, so it must not be writable by group or others.
Status addFile(const std::string& path, NodeList& list) {
  struct stat st {};
  std::ifstream in(path);
  if (!in || ::stat(path.c_str(), &st) != 0) {
    return makeError(ErrorCode::kInvalidArgument, "cannot read nodes file '" + path + "'");
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return makeError(ErrorCode::kInvalidArgument,
                     "nodes file '" + path +
                         "' is writable by group or others (whoever can edit it decides where "
                         "the admin token goes); chmod go-w it");
  }
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    line = line.substr(0, line.find('#'));
    size_t b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos) continue;
    size_t e = line.find_last_not_of(" \t\r");
    std::string item = line.substr(b, e - b + 1);
    std::string where = "nodes file '" + path + "' line " + std::to_string(n);
    if (item.find_first_of(" \t,") != std::string::npos) {
      return makeError(ErrorCode::kInvalidArgument, where + ": one HOST:PORT per line");
    }
    if (auto s = addItems(item, where, list); !s.ok()) return s;
  }
  return okStatus();
}

// --nodes and --nodes-file (together if both are given), else $CHORUS_NODES,
// else $CHORUS_NODES_FILE; empty if none is set (then only --connect is
// asked). There is no default file: the list decides where the admin token
// goes, so it comes only from what this command line or environment names.
Result<NodeList> operatorNodes(const NodeFlags& f) {
  NodeList list;
  if (!f.nodes.empty() || !f.nodesFile.empty()) {
    list.source = "--nodes";
    for (const auto& n : f.nodes) {
      if (auto s = addItems(n, "--nodes", list); !s.ok()) return s.error();
    }
    if (!f.nodesFile.empty()) {
      if (auto s = addFile(f.nodesFile, list); !s.ok()) return s.error();
      list.source = f.nodes.empty() ? "--nodes-file" : "--nodes and --nodes-file";
    }
    return list;
  }
  if (const char* env = std::getenv("CHORUS_NODES"); env != nullptr && *env != '\0') {
    list.source = "$CHORUS_NODES";
    if (auto s = addItems(env, "$CHORUS_NODES", list); !s.ok()) return s.error();
    return list;
  }
  if (const char* env = std::getenv("CHORUS_NODES_FILE"); env != nullptr && *env != '\0') {
    list.source = "$CHORUS_NODES_FILE";
    if (auto s = addFile(env, list); !s.ok()) return s.error();
    return list;
  }
  return list;  // no source: only --connect is asked
}

// ---- the nodes -------------------------------------------------------------

// A node: one the operator listed (asked), or one the connected node knows
// over gossip whose address the operator did not list (not asked).
struct KnownNode {
  std::string id;
  // The address it is asked at: --connect or the operator's list. Empty:
  // not asked, and never dialled.
  std::string rpcAddress;
  std::string advertisedRpc;  // what gossip says; shown, never dialled
  std::string gossipAddress;
  std::optional<gossip::MemberInfo> member;  // as the connected node sees it
  bool self = false;                         // the connected node
  // Its own answer, else the connected node's member entry; empty if unknown.
  std::string region;
  // It left or was removed (by its own answer or the connected node's
  // view): out of the cluster for good, so no command needs it.
  bool gone = false;
  bool asked() const { return !rpcAddress.empty(); }
};

std::string joinIds(const std::vector<std::string>& ids, const char* sep = ", ") {
  std::string out;
  for (const auto& id : ids) out += (out.empty() ? "" : sep) + id;
  return out;
}

std::string knownIds(const std::vector<KnownNode>& nodes) {
  std::vector<std::string> ids;
  for (const auto& n : nodes) ids.push_back(n.id);
  return joinIds(ids);
}

milliseconds probeTimeout(const Globals& g) {
  return std::min(milliseconds(g.timeoutMs), kProbeTimeout);
}

// Runs `fn` against every asked node in `nodes` at once, each on its own
// thread with its own client; returns the results in the same order. A node
// that was not asked gets an error and no connection.
template <typename T>
std::vector<Result<T>> onEach(const Globals& g, const std::vector<KnownNode>& nodes,
                              const std::function<milliseconds(size_t)>& timeout,
                              const std::function<Result<T>(size_t, api::Client&)>& fn) {
  std::vector<std::optional<Result<T>>> slots(nodes.size());
  std::vector<std::thread> threads;
  threads.reserve(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!nodes[i].asked()) {
      slots[i].emplace(makeError(ErrorCode::kUnavailable, kNotAsked));
      continue;
    }
    threads.emplace_back([&, i] {
      auto client = api::Client::connect(nodes[i].rpcAddress, clientOptions(g, timeout(i)));
      if (!client.ok()) {
        slots[i].emplace(client.error());
        return;
      }
      slots[i].emplace(fn(i, **client));
    });
  }
  for (auto& t : threads) t.join();
  std::vector<Result<T>> out;
  out.reserve(nodes.size());
  for (auto& s : slots) out.push_back(std::move(*s));
  return out;
}

template <typename T>
std::vector<Result<T>> onEach(const Globals& g, const std::vector<KnownNode>& nodes,
                              milliseconds timeout,
                              const std::function<Result<T>(size_t, api::Client&)>& fn) {
  return onEach<T>(
      g, nodes, [timeout](size_t) { return timeout; }, fn);
}

std::vector<Result<ClusterView>> viewsOf(const Globals& g, const std::vector<KnownNode>& nodes,
                                         milliseconds timeout) {
  return onEach<ClusterView>(g, nodes, timeout, [](size_t, api::Client& c) { return c.cluster(); });
}

// The cluster as the operator's list and the connected node show it.
struct Cluster {
  ClusterView view;                        // the connected node's
  std::vector<KnownNode> nodes;            // sorted by id
  std::vector<Result<ClusterView>> views;  // each node's answer; not asked: an error
  std::string source;                      // of the node list, for messages

  // Why the nodes of notAsked() were not asked.
  std::string why() const {
    return source.empty() ? "no node list given, so only --connect is asked"
                          : "not in the node list from " + source;
  }

  // Not asked, and still members (a node that left needs no asking).
  std::vector<std::string> notAsked() const {
    std::vector<std::string> ids;
    for (const auto& n : nodes) {
      if (!n.asked() && !n.gone) ids.push_back(n.id);
    }
    return ids;
  }

  // The same without the nodes that left or were removed.
  Cluster members() const {
    Cluster out;
    out.view = view;
    out.source = source;
    for (size_t i = 0; i < nodes.size(); ++i) {
      if (nodes[i].gone) continue;
      out.nodes.push_back(nodes[i]);
      out.views.push_back(views[i]);
    }
    return out;
  }
};

// Asks --connect and every listed address for its view (which names the
// node), then adds the connected node's gossip members that no listed
// address turned out to be, as not asked.
Result<Cluster> discover(const Globals& g, const NodeList& list) {
  std::vector<KnownNode> probes(1);
  probes[0].rpcAddress = g.connect;
  for (const auto& a : list.addresses) {
    if (a != g.connect) probes.emplace_back().rpcAddress = a;
  }
  auto answers = onEach<ClusterView>(
      g, probes, [&](size_t i) { return i == 0 ? milliseconds(g.timeoutMs) : probeTimeout(g); },
      [](size_t, api::Client& c) { return c.cluster(); });
  if (!answers[0].ok()) return answers[0].error();

  Cluster c;
  c.view = *answers[0];
  c.source = list.source;
  std::map<std::string, size_t> byId;
  auto add = [&](KnownNode n, Result<ClusterView> v) {
    byId[n.id] = c.nodes.size();
    c.nodes.push_back(std::move(n));
    c.views.push_back(std::move(v));
  };
  // Those that answered, under the id they gave (a second address of the
  // same node is dropped) ...
  for (size_t i = 0; i < probes.size(); ++i) {
    if (!answers[i].ok() || byId.count(answers[i]->nodeId)) continue;
    KnownNode n;
    n.id = answers[i]->nodeId;
    n.rpcAddress = probes[i].rpcAddress;
    n.gossipAddress = answers[i]->gossipAddress;
    n.self = i == 0;
    n.region = answers[i]->region;
    n.gone = answers[i]->state == gossip::PeerState::kLeft;
    add(std::move(n), answers[i]);
  }
  // ... those that did not, under the id of the member that advertises their
  // address (for display only), else under the address ...
  for (size_t i = 1; i < probes.size(); ++i) {
    if (answers[i].ok()) continue;
    KnownNode n;
    n.id = probes[i].rpcAddress;
    n.rpcAddress = probes[i].rpcAddress;
    for (const auto& m : c.view.members) {
      if (m.rpcAddress == n.rpcAddress && !byId.count(m.nodeId)) n.id = m.nodeId;
    }
    if (byId.count(n.id)) continue;
    add(std::move(n), answers[i]);
  }
  // ... and the connected node's members: the gossip state of those above,
  // and a row for each of the others, not asked.
  for (const auto& m : c.view.members) {
    auto it = byId.find(m.nodeId);
    if (it != byId.end()) {
      KnownNode& n = c.nodes[it->second];
      n.member = m;
      n.advertisedRpc = m.rpcAddress;
      if (n.gossipAddress.empty()) n.gossipAddress = m.gossipAddress;
      if (n.region.empty()) n.region = m.region;
      if (m.state == gossip::PeerState::kLeft) n.gone = true;
      continue;
    }
    KnownNode n;
    n.id = m.nodeId;
    n.advertisedRpc = m.rpcAddress;
    n.gossipAddress = m.gossipAddress;
    n.region = m.region;
    n.gone = m.state == gossip::PeerState::kLeft;
    n.member = m;
    add(std::move(n), makeError(ErrorCode::kUnavailable, kNotAsked));
  }
  std::vector<size_t> order(c.nodes.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return c.nodes[a].id < c.nodes[b].id; });
  Cluster sorted;
  sorted.view = std::move(c.view);
  sorted.source = std::move(c.source);
  for (size_t i : order) {
    sorted.nodes.push_back(std::move(c.nodes[i]));
    sorted.views.push_back(std::move(c.views[i]));
  }
  return sorted;
}

// The operator's list, then discover(); nullopt after printing why not, with
// `code` set (a bad list is a usage error, found before anything is asked).
std::optional<Cluster> discoverOrFail(const Globals& g, const NodeFlags& flags, int& code) {
  auto list = operatorNodes(flags);
  if (!list.ok()) {
    errorf("%s\n", list.error().message.c_str());
    code = kExitUsage;
    return std::nullopt;
  }
  auto c = discover(g, *list);
  if (!c.ok()) {
    code = fail(c);
    return std::nullopt;
  }
  return std::move(*c);
}

constexpr const char* kPassNodes =
    "pass their RPC addresses with --nodes HOST:PORT[,...] (or $CHORUS_NODES, --nodes-file); "
    "the admin token goes only to addresses you list, never to ones learned over gossip";

// For a command that needs every node: refuses (exit 3, nothing done) when
// the connected node knows nodes that were not asked.
std::optional<int> refuseIfNotAsked(const Cluster& c, const char* what) {
  auto missing = c.notAsked();
  if (missing.empty()) return std::nullopt;
  errorf(
      "%s needs every node, but %s knows %s, not asked (%s); nothing done. "
      "Check that they are yours, then %s\n",
      what, c.view.nodeId.c_str(), joinIds(missing).c_str(), c.why().c_str(), kPassNodes);
  return kExitInvalid;
}

std::string shortRoot(const storage::Hash& h) { return hex(h).substr(0, 8); }

std::string ago(uint64_t nowMillis, uint64_t thenMillis) {
  if (thenMillis == 0) return "never";
  double s = nowMillis > thenMillis ? double(nowMillis - thenMillis) / 1000.0 : 0.0;
  char buf[32];
  if (s < 10) {
    std::snprintf(buf, sizeof buf, "%.1fs ago", s);
  } else if (s < 120) {
    std::snprintf(buf, sizeof buf, "%.0fs ago", s);
  } else if (s < 7200) {
    std::snprintf(buf, sizeof buf, "%.0fm ago", s / 60);
  } else {
    std::snprintf(buf, sizeof buf, "%.0fh ago", s / 3600);
  }
  return buf;
}

std::string stateText(const KnownNode& n, const std::optional<ClusterView>& own) {
  if (n.self) {
    if (own && own->removed) return "self,removed";
    return n.gone ? "self,left" : "self";
  }
  if (!n.member) {
    // Answered, but the connected node does not know it.
    return n.gone ? "left" : "not a member";
  }
  std::string s = gossip::peerStateName(n.member->state);
  if (n.member->partitioned) s += ",partitioned";
  return s;
}

std::string stateText(const KnownNode& n, const Result<ClusterView>& own) {
  return stateText(n, own.ok() ? std::optional<ClusterView>(*own) : std::nullopt);
}

std::string jsonNumber(double v) {
  if (!std::isfinite(v) || v < 0) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

std::string jsonIds(const std::vector<std::string>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + json(ids[i]);
  return out + "]";
}

std::string jsonStats(const gossip::ClusterStats& s) {
  char buf[2048];
  std::snprintf(
      buf, sizeof buf,
      "{\"frames_in\":%" PRIu64 ",\"frames_out\":%" PRIu64 ",\"bytes_in\":%" PRIu64
      ",\"bytes_out\":%" PRIu64 ",\"malformed_frames\":%" PRIu64 ",\"partition_dropped\":%" PRIu64
      ",\"deltas_sent\":%" PRIu64 ",\"deltas_received\":%" PRIu64 ",\"deltas_dropped\":%" PRIu64
      ",\"sync_started\":%" PRIu64 ",\"sync_completed\":%" PRIu64 ",\"anti_entropy_bytes\":%" PRIu64
      ",\"states_repaired\":%" PRIu64 ",\"auth_failures\":%" PRIu64 ",\"replays_refused\":%" PRIu64
      ",\"states_refused\":%" PRIu64 ",\"connections\":%" PRIu64 ",\"active_peers\":%" PRIu64
      ",\"probes\":%" PRIu64 ",\"probes_failed\":%" PRIu64 ",\"refutations\":%" PRIu64
      ",\"broadcast_duplicates\":%" PRIu64 ",\"grafts\":%" PRIu64 ",\"push_pulls\":%" PRIu64
      ",\"version_refused\":%" PRIu64 "}",
      s.framesIn, s.framesOut, s.bytesIn, s.bytesOut, s.malformedFrames, s.partitionDropped,
      s.deltasSent, s.deltasReceived, s.deltasDropped, s.syncStarted, s.syncCompleted,
      s.antiEntropyBytes, s.statesRepaired, s.authFailures, s.replaysRefused, s.statesRefused,
      s.connections, s.activePeers, s.probes, s.probesFailed, s.refutations, s.broadcastDuplicates,
      s.grafts, s.pushPulls, s.versionRefused);
  return buf;
}

// "n1 drops n3; n3 drops n1, n2", from each reachable node's own answer.
std::string partitionsInPlace(const std::vector<KnownNode>& nodes,
                              const std::vector<Result<ClusterView>>& views) {
  std::string out;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!views[i].ok() || views[i]->partitioned.empty()) continue;
    out += (out.empty() ? "" : "; ") + nodes[i].id + " drops " + joinIds(views[i]->partitioned);
  }
  return out;
}

size_t idWidth(const std::vector<KnownNode>& nodes) {
  size_t w = 4;
  for (const auto& n : nodes) w = std::max(w, n.id.size());
  return std::min<size_t>(w, 24);
}

// The root every reachable node reports, or nullopt if they differ or none
// answered. `reachable` counts the answers.
std::optional<storage::Hash> commonRoot(const std::vector<Result<ClusterView>>& views,
                                        size_t& reachable) {
  std::optional<storage::Hash> root;
  bool same = true;
  reachable = 0;
  for (const auto& v : views) {
    if (!v.ok()) continue;
    ++reachable;
    if (!root) {
      root = v->merkleRoot;
    } else if (*root != v->merkleRoot) {
      same = false;
    }
  }
  return same ? root : std::nullopt;
}

// ---- status ----------------------------------------------------------------

int status(const Globals& g, const NodeFlags& flags) {
  int code = kExitOk;
  auto c = discoverOrFail(g, flags, code);
  if (!c) return code;
  const ClusterView* view = &c->view;
  const auto& nodes = c->nodes;
  const auto& views = c->views;
  auto notAsked = c->notAsked();
  size_t reachable = 0;
  auto root = commonRoot(views, reachable);

  if (g.json) {
    std::string out =
        "{\"node_id\":" + json(view->nodeId) + ",\"region\":" + json(view->region) + ",\"nodes\":[";
    for (size_t i = 0; i < nodes.size(); ++i) {
      const KnownNode& n = nodes[i];
      const auto& v = views[i];
      out += i ? "," : "";
      out += "{\"node_id\":" + json(n.id) + ",\"rpc_address\":" + json(n.rpcAddress) +
             ",\"advertised_rpc_address\":" + json(n.advertisedRpc) +
             ",\"gossip_address\":" + json(n.gossipAddress) + ",\"region\":" + json(n.region) +
             ",\"state\":" + json(stateText(n, v)) + ",\"left\":" + (n.gone ? "true" : "false") +
             ",\"partitioned\":" + (n.member && n.member->partitioned ? "true" : "false") +
             ",\"asked\":" + (n.asked() ? "true" : "false") +
             ",\"reachable\":" + (v.ok() ? "true" : "false");
      if (v.ok()) {
        out += ",\"keys\":" + std::to_string(v->keyCount) +
               ",\"merkle_root\":" + json(hex(v->merkleRoot)) +
               ",\"refused_stamps\":" + std::to_string(v->refusedStamps) +
               ",\"partitioned_from\":" + jsonIds(v->partitioned);
      } else {
        out += ",\"error\":" + json(n.asked() ? v.error().toString() : kNotAsked);
      }
      if (n.member) {
        const auto& m = *n.member;
        out += ",\"last_sync_ms_ago\":" +
               (m.lastSyncUnixMillis == 0
                    ? std::string("null")
                    : std::to_string(view->nowUnixMillis > m.lastSyncUnixMillis
                                         ? view->nowUnixMillis - m.lastSyncUnixMillis
                                         : 0)) +
               ",\"pending_deltas\":" + std::to_string(m.pendingDeltas) +
               ",\"incarnation\":" + std::to_string(m.incarnation) +
               ",\"active\":" + (m.active ? "true" : "false");
      }
      out += "}";
    }
    out += "],\"not_asked\":" + jsonIds(notAsked) + ",\"reachable\":" + std::to_string(reachable) +
           ",\"same_root\":" + (root ? "true" : "false") + ",\"gossip\":" + jsonStats(view->stats) +
           "}";
    std::printf("%s\n", out.c_str());
    return kExitOk;
  }

  int w = static_cast<int>(idWidth(nodes));
  size_t rw = 6;
  for (const auto& n : nodes) rw = std::max(rw, n.region.size());
  int regionWidth = static_cast<int>(std::min<size_t>(rw, 16));
  std::printf("%-*s %-21s %-*s %-19s %-11s %-9s %-11s %-7s %s\n", w, "NODE", "ADDRESS", regionWidth,
              "REGION", "STATE", "KEYS", "ROOT", "LAST SYNC", "PENDING", "REFUSED");
  for (size_t i = 0; i < nodes.size(); ++i) {
    const KnownNode& n = nodes[i];
    const auto& v = views[i];
    std::string keys = v.ok()      ? std::to_string(v->keyCount)
                       : n.asked() ? "unreachable"
                                   : "not asked";
    std::string rootText = v.ok() ? shortRoot(v->merkleRoot) : "-";
    std::string refused = v.ok() ? std::to_string(v->refusedStamps) : "-";
    std::string sync = n.member ? ago(view->nowUnixMillis, n.member->lastSyncUnixMillis) : "-";
    std::string pending = n.member ? std::to_string(n.member->pendingDeltas) : "-";
    std::printf("%-*s %-21s %-*s %-19s %-11s %-9s %-11s %-7s %s\n", w, n.id.c_str(),
                n.asked() ? n.rpcAddress.c_str() : "-", regionWidth,
                n.region.empty() ? "-" : n.region.c_str(), stateText(n, v).c_str(), keys.c_str(),
                rootText.c_str(), sync.c_str(), pending.c_str(), refused.c_str());
  }
  std::printf(
      "\n(state, last sync and pending as %s sees them; keys, root and refused clock "
      "stamps as each node reports)\n",
      view->nodeId.c_str());
  auto cuts = partitionsInPlace(nodes, views);
  if (!cuts.empty()) std::printf("partitions: %s\n", cuts.c_str());
  if (root) {
    std::printf("data: the %zu reachable node(s) agree (root %s)\n", reachable,
                shortRoot(*root).c_str());
  } else {
    std::printf("data: the %zu reachable nodes differ (`chorus cluster converge` waits for them)\n",
                reachable);
  }
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i].gone && !nodes[i].asked()) {
      std::printf("%s left the cluster (or was removed): needs no asking\n", nodes[i].id.c_str());
    } else if (!nodes[i].asked()) {
      std::printf("%s %s (%s)\n", nodes[i].id.c_str(), kNotAsked,
                  nodes[i].advertisedRpc.empty()
                      ? "gossip has no RPC address for it"
                      : ("gossip says its RPC address is " + nodes[i].advertisedRpc).c_str());
    } else if (!views[i].ok()) {
      std::printf("%s unreachable: %s\n", nodes[i].id.c_str(), views[i].error().toString().c_str());
    }
  }
  if (!notAsked.empty()) {
    std::printf("not asked: %s (%s); to include them, %s\n", joinIds(notAsked).c_str(),
                c->why().c_str(), kPassNodes);
  }
  const auto& s = view->stats;
  std::printf("gossip at %s (region %s): %" PRIu64 " syncs completed, %" PRIu64
              " deltas sent, %" PRIu64 " received, %" PRIu64 " states repaired, %" PRIu64
              " malformed frames, %" PRIu64 " failing the cluster key, %" PRIu64 " replays\n",
              view->nodeId.c_str(), view->region.c_str(), s.syncCompleted, s.deltasSent,
              s.deltasReceived, s.statesRepaired, s.malformedFrames, s.authFailures,
              s.replaysRefused);
  std::printf("membership at %s: %" PRIu64 " connections, %" PRIu64 " active peers, %" PRIu64
              " probes (%" PRIu64 " failed), %" PRIu64 " refutations, %" PRIu64
              " frames of another protocol version\n",
              view->nodeId.c_str(), s.connections, s.activePeers, s.probes, s.probesFailed,
              s.refutations, s.versionRefused);
  return kExitOk;
}

// ---- partition / heal ------------------------------------------------------

// Prints one line per node of `results`; returns the exit code (0, or the
// first failure's, or `failureCode` if set).
int report(const Globals& g, const std::vector<KnownNode>& targets,
           const std::vector<Status>& results, const std::function<std::string(size_t)>& did,
           const char* jsonKey, const std::function<std::string(size_t)>& jsonValue,
           std::optional<int> failureCode) {
  int code = kExitOk;
  std::string ok, failed;
  for (size_t i = 0; i < targets.size(); ++i) {
    if (results[i].ok()) {
      if (g.json) {
        ok += (ok.empty() ? "" : ",") + json(targets[i].id) + ":" + jsonValue(i);
      } else {
        std::printf("%s: %s\n", targets[i].id.c_str(), did(i).c_str());
      }
    } else if (!targets[i].asked()) {  // the caller says what to do about it
      if (g.json) {
        failed += (failed.empty() ? "" : ",") + json(targets[i].id) + ":" + json(kNotAsked);
      } else {
        std::printf("%s: %s\n", targets[i].id.c_str(), kNotAsked);
      }
    } else {
      const Error& e = results[i].error();
      if (code == kExitOk) code = failureCode ? *failureCode : exitCodeFor(e);
      if (g.json) {
        failed += (failed.empty() ? "" : ",") + json(targets[i].id) + ":" + json(e.toString());
      } else {
        std::printf("%s: FAILED: %s\n", targets[i].id.c_str(), e.toString().c_str());
      }
    }
  }
  if (g.json) std::printf("{\"%s\":{%s},\"failed\":{%s}}\n", jsonKey, ok.c_str(), failed.c_str());
  return code;
}

int unknownId(const std::string& id, const std::vector<KnownNode>& nodes) {
  errorf("unknown node id '%s'; known ids: %s\n", id.c_str(), knownIds(nodes).c_str());
  return kExitInvalid;
}

int partition(const Globals& g, const NodeFlags& flags, const std::string& isolate,
              const std::string& split) {
  if (isolate.empty() == split.empty()) {
    errorf("give either --isolate ID or --split A,B/C,D\n");
    return kExitUsage;
  }
  // Parse before asking anything: a typo should not need a running cluster.
  std::optional<api::SplitSides> sides;
  if (!split.empty()) {
    sides = api::parseSplit(split);
    if (!sides) {
      errorf(
          "--split: '%s' is not two comma-separated lists of node ids or "
          "regions joined by '/' (e.g. n1,n2/n3,n4,n5 or us/eu,ap)\n",
          split.c_str());
      return kExitUsage;
    }
  }

  int code = kExitOk;
  auto c = discoverOrFail(g, flags, code);
  if (!c) return code;
  const ClusterView* view = &c->view;
  const auto& nodes = c->nodes;
  std::map<std::string, const KnownNode*> byId;
  for (const auto& n : nodes) byId[n.id] = &n;

  std::map<std::string, std::vector<std::string>> plan;  // node -> peers it will drop
  if (!isolate.empty()) {
    if (!byId.count(isolate)) return unknownId(isolate, nodes);
    std::vector<std::string> others;
    for (const auto& n : nodes) {
      if (n.id != isolate && !n.gone) others.push_back(n.id);
    }
    if (others.empty()) {
      errorf("%s is the only node %s knows; nothing to isolate it from\n", isolate.c_str(),
             view->nodeId.c_str());
      return kExitInvalid;
    }
    plan[isolate] = others;
    for (const auto& o : others) plan[o] = {isolate};
  } else {
    // Region names stand for the nodes of that region that are still
    // members; a node id stands for itself, even one that left.
    std::map<std::string, std::string> regionOf;
    for (const auto& n : nodes) regionOf[n.id] = n.gone ? std::string() : n.region;
    auto a = api::expandSplitSide(sides->a, regionOf);
    auto b = api::expandSplitSide(sides->b, regionOf);
    for (const auto* side : {&a, &b}) {
      if (!side->ok()) {
        errorf("--split: %s; known ids: %s\n", side->error().message.c_str(),
               knownIds(nodes).c_str());
        return kExitInvalid;
      }
    }
    std::vector<std::string> sideA = std::move(*a), sideB = std::move(*b);
    std::set<std::string> inA(sideA.begin(), sideA.end());
    for (const auto& id : sideB) {
      if (inA.count(id)) {
        errorf("--split: %s is on both sides\n", id.c_str());
        return kExitInvalid;
      }
    }
    for (const auto& id : sideA) plan[id] = sideB;
    for (const auto& id : sideB) plan[id] = sideA;
  }

  std::vector<KnownNode> targets;
  std::vector<std::string> missing;
  for (const auto& [id, peers] : plan) {
    targets.push_back(*byId[id]);
    if (!byId[id]->asked()) missing.push_back(id);
  }
  if (!missing.empty()) {
    errorf(
        "this partition changes %s, not asked (%s); nothing changed. Check "
        "that they are yours, then %s\n",
        joinIds(missing).c_str(), c->why().c_str(), kPassNodes);
    return kExitInvalid;
  }
  // A new partition replaces the one before (as a declarative tool's
  // "apply" would): every asked member drops exactly what this plan says,
  // so the nodes outside it are healed too.
  std::vector<std::string> stale;  // members outside the plan we cannot heal
  for (const auto& n : nodes) {
    if (plan.count(n.id) || n.gone) continue;
    if (n.asked()) {
      targets.push_back(n);
    } else {
      stale.push_back(n.id);
    }
  }
  auto results = onEach<Ok>(g, targets, probeTimeout(g), [&](size_t i, api::Client& client) {
    auto healed = client.heal();
    if (!healed.ok() || !plan.count(targets[i].id)) return healed;
    return client.partition(plan[targets[i].id]);
  });
  code = report(
      g, targets, results,
      [&](size_t i) {
        return plan.count(targets[i].id) ? "drops gossip with " + joinIds(plan[targets[i].id])
                                         : std::string("in neither side, talks to both");
      },
      "partitioned", [&](size_t i) { return jsonIds(plan[targets[i].id]); }, std::nullopt);
  if (!stale.empty()) {
    errorf("%s not asked (%s): an earlier partition there stays until they are healed",
           joinIds(stale).c_str(), c->why().c_str());
  }
  return code;
}

// Heals every asked node; undoing a partition is always safe, so the nodes
// not asked do not stop it, but they are named and the exit is 3.
int heal(const Globals& g, const NodeFlags& flags) {
  int code = kExitOk;
  auto c = discoverOrFail(g, flags, code);
  if (!c) return code;
  const auto& nodes = c->nodes;
  auto results =
      onEach<Ok>(g, nodes, probeTimeout(g), [](size_t, api::Client& c) { return c.heal(); });
  code = report(
      g, nodes, results, [](size_t) { return std::string("healed"); }, "healed",
      [](size_t) { return std::string("true"); }, kExitUnavailable);
  if (auto missing = c->notAsked(); !missing.empty()) {
    errorf("not healed: %s, not asked (%s); %s\n", joinIds(missing).c_str(), c->why().c_str(),
           kPassNodes);
    code = kExitInvalid;
  }
  return code;
}

// ---- converge --------------------------------------------------------------

int converge(const Globals& g, const NodeFlags& flags, const std::string& timeoutText,
             bool reachableOnly) {
  auto timeout = api::parseDuration(timeoutText, milliseconds(1));
  if (!timeout.ok() || timeout->count() <= 0) {
    errorf("--timeout: %s\n", timeout.ok() ? "must be positive" : timeout.error().message.c_str());
    return kExitUsage;
  }
  auto start = SteadyClock::now();
  auto deadline = start + *timeout;
  int code = kExitOk;
  auto found = discoverOrFail(g, flags, code);
  if (!found) return code;
  // A node that left no longer receives writes: its root says nothing.
  auto c = std::optional<Cluster>(found->members());
  if (c->nodes.empty()) {
    errorf("every node asked left the cluster; connect to a member\n");
    return kExitInvalid;
  }
  // Equal roots on the asked nodes say nothing of a node that was not asked.
  if (auto refused = refuseIfNotAsked(*c, "converge")) return *refused;
  const auto& nodes = c->nodes;
  std::optional<std::vector<Result<ClusterView>>> first = std::move(c->views);
  while (true) {
    auto roundStart = SteadyClock::now();
    // A hung node may cost a round its call timeout, but not much more than
    // the time left. The first round is the answers discover() got.
    auto left = std::chrono::duration_cast<milliseconds>(deadline - roundStart);
    auto views =
        first ? std::move(*first)
              : viewsOf(g, nodes, std::min(probeTimeout(g), std::max(left, kMinProbeTimeout)));
    first.reset();
    double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
    size_t reachable = 0;
    auto root = commonRoot(views, reachable);
    std::vector<std::string> unreachable;
    for (size_t i = 0; i < nodes.size(); ++i) {
      if (!views[i].ok()) unreachable.push_back(nodes[i].id);
    }
    // By default an unreachable node is not converged: "converged" must not
    // mean "among those I could reach" unless the operator asked for that.
    if (root && (reachableOnly || unreachable.empty())) {
      if (g.json) {
        std::printf(
            "{\"converged\":true,\"seconds\":%.3f,\"nodes\":%zu,\"reachable\":%zu,"
            "\"root\":\"%s\",\"unreachable\":%s}\n",
            seconds, nodes.size(), reachable, hex(*root).c_str(), jsonIds(unreachable).c_str());
      } else if (unreachable.empty()) {
        std::printf("converged in %.2f s (%zu nodes, root %s)\n", seconds, nodes.size(),
                    shortRoot(*root).c_str());
      } else {
        std::printf("converged in %.2f s (%zu of %zu nodes reachable, root %s; unreachable: %s)\n",
                    seconds, reachable, nodes.size(), shortRoot(*root).c_str(),
                    joinIds(unreachable).c_str());
      }
      return kExitOk;
    }
    if (SteadyClock::now() >= deadline) {
      if (g.json) {
        std::string out =
            "{\"converged\":false,\"seconds\":" + jsonNumber(seconds) + ",\"nodes\":[";
        for (size_t i = 0; i < nodes.size(); ++i) {
          out += (i ? "," : "") + std::string("{\"node_id\":") + json(nodes[i].id) +
                 ",\"reachable\":" + (views[i].ok() ? "true" : "false");
          if (views[i].ok()) {
            out += ",\"merkle_root\":" + json(hex(views[i]->merkleRoot)) +
                   ",\"keys\":" + std::to_string(views[i]->keyCount) +
                   ",\"partitioned_from\":" + jsonIds(views[i]->partitioned);
          } else {
            out += ",\"error\":" + json(views[i].error().toString());
          }
          out += "}";
        }
        std::printf("%s]}\n", out.c_str());
      } else {
        std::printf("did not converge within %.1f s; %s:\n",
                    std::chrono::duration<double>(*timeout).count(),
                    root ? "not every node answered" : "the nodes differ");
        int w = static_cast<int>(idWidth(nodes));
        std::printf("%-*s %-9s %s\n", w, "NODE", "ROOT", "KEYS");
        for (size_t i = 0; i < nodes.size(); ++i) {
          if (views[i].ok()) {
            std::printf("%-*s %-9s %" PRIu64 "\n", w, nodes[i].id.c_str(),
                        shortRoot(views[i]->merkleRoot).c_str(), views[i]->keyCount);
          } else {
            std::printf("%-*s %-9s %s\n", w, nodes[i].id.c_str(), "-",
                        ("unreachable: " + views[i].error().message).c_str());
          }
        }
        auto cuts = partitionsInPlace(nodes, views);
        if (!cuts.empty()) {
          std::printf("partitions in place: %s (`chorus cluster heal` removes them)\n",
                      cuts.c_str());
        }
      }
      std::fflush(stdout);
      errorf("did not converge\n");
      return kExitNotConverged;
    }
    auto next = std::min(roundStart + kPollInterval, deadline);
    std::this_thread::sleep_until(next);
  }
}

// ---- leave / remove --------------------------------------------------------

constexpr milliseconds kMaxLeaveTimeout = std::chrono::minutes(5);

// Asks one node to leave: the connected one, or `nodeId` (which must be at
// an address the operator listed: the admin token goes nowhere else).
int leave(const Globals& g, const NodeFlags& flags, const std::string& nodeId,
          const std::string& timeoutText) {
  auto timeout = api::parseDuration(timeoutText, milliseconds(1));
  if (!timeout.ok() || timeout->count() <= 0 || *timeout > kMaxLeaveTimeout) {
    errorf("--timeout: %s\n",
           !timeout.ok() ? timeout.error().message.c_str() : "must be more than 0 and at most 5m");
    return kExitUsage;
  }
  std::string id, address = g.connect;
  if (!nodeId.empty()) {
    int code = kExitOk;
    auto c = discoverOrFail(g, flags, code);
    if (!c) return code;
    const KnownNode* target = nullptr;
    for (const auto& n : c->nodes) {
      if (n.id == nodeId) target = &n;
    }
    if (target == nullptr) return unknownId(nodeId, c->nodes);
    if (!target->asked()) {
      errorf("%s is %s (%s); nothing done. To ask it, %s\n", nodeId.c_str(), kNotAsked,
             c->why().c_str(), kPassNodes);
      return kExitInvalid;
    }
    id = nodeId;
    address = target->rpcAddress;
  }
  auto client = api::Client::connect(address, clientOptions(g, milliseconds(g.timeoutMs)));
  if (!client.ok()) return fail(client);
  if (id.empty()) {
    auto view = (*client)->cluster();
    if (!view.ok()) return fail(view);
    id = view->nodeId;
  }
  auto start = SteadyClock::now();
  Status s = (*client)->leave(*timeout);
  double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
  if (g.json) {
    std::printf("{\"node_id\":%s,\"left\":%s,\"seconds\":%s%s}\n", json(id).c_str(),
                s.ok() ? "true" : "false", jsonNumber(seconds).c_str(),
                s.ok() ? "" : (",\"error\":" + json(s.error().toString())).c_str());
  } else if (s.ok()) {
    std::printf(
        "%s left the cluster in %.2f s: a peer holds its data, the others will mark it left.\n"
        "It refuses writes now; stop its chorusd (start it with --rejoin to join again).\n",
        id.c_str(), seconds);
  }
  if (!s.ok()) {
    errorf("%s: leave: %s\n", id.c_str(), s.error().toString().c_str());
    if (s.error().code == ErrorCode::kUnavailable) {
      errorf(
          "if it began to leave, it refuses writes and may be marked left on "
          "some nodes: run leave again once peers are reachable, or restart it with "
          "--rejoin to stay\n");
    }
    return exitCodeFor(s.error());
  }
  return kExitOk;
}

// Asks the first node that answers (--connect, then the listed ones) to
// remove `nodeId`; the removal spreads from there.
int remove(const Globals& g, const NodeFlags& flags, const std::string& nodeId) {
  auto list = operatorNodes(flags);
  if (!list.ok()) {
    errorf("%s\n", list.error().message.c_str());
    return kExitUsage;
  }
  std::vector<std::string> addresses = {g.connect};
  for (const auto& a : list->addresses) {
    if (a != g.connect) addresses.push_back(a);
  }
  std::optional<Error> last;
  for (const auto& address : addresses) {
    auto client = api::Client::connect(address, clientOptions(g, probeTimeout(g)));
    if (!client.ok()) {
      last = client.error();
      if (last->code == ErrorCode::kUnavailable) continue;  // try the next node
      return fail(*last);
    }
    // What the node thinks of it, for the message; the removal decides.
    auto view = (*client)->cluster();
    if (!view.ok() && view.error().code == ErrorCode::kUnavailable &&
        view.error().message.find("without a cluster") == std::string::npos) {
      last = view.error();
      continue;
    }
    Status s = (*client)->remove(nodeId);
    if (!s.ok() && s.error().code == ErrorCode::kUnavailable &&
        s.error().message.find("without a cluster") == std::string::npos) {
      last = s.error();
      continue;
    }
    std::string asked = view.ok() ? view->nodeId : address;
    if (!s.ok()) {
      if (g.json) {
        std::printf("{\"node_id\":%s,\"removed\":false,\"asked\":%s,\"error\":%s}\n",
                    json(nodeId).c_str(), json(asked).c_str(), json(s.error().toString()).c_str());
      }
      errorf("%s: remove %s: %s\n", asked.c_str(), nodeId.c_str(), s.error().toString().c_str());
      return exitCodeFor(s.error());
    }
    std::optional<gossip::PeerState> state;
    if (view.ok()) {
      for (const auto& m : view->members) {
        if (m.nodeId == nodeId) state = m.state;
      }
    }
    if (g.json) {
      std::printf("{\"node_id\":%s,\"removed\":true,\"asked\":%s,\"was\":%s}\n",
                  json(nodeId).c_str(), json(asked).c_str(),
                  state ? json(gossip::peerStateName(*state)).c_str() : "null");
    } else {
      std::printf(
          "removed %s (through %s): every node will mark it left and stop dialling it; if it "
          "comes back it is refused until restarted with --rejoin\n",
          nodeId.c_str(), asked.c_str());
      if (state == gossip::PeerState::kAlive || state == gossip::PeerState::kSuspect) {
        std::printf(
            "note: %s saw %s %s; it will stop gossiping and refuse writes once it learns it "
            "was removed\n",
            asked.c_str(), nodeId.c_str(), gossip::peerStateName(*state));
      }
    }
    return kExitOk;
  }
  errorf("no node answered (tried %s); last: %s\n", joinIds(addresses).c_str(),
         last ? last->toString().c_str() : "-");
  return kExitUnavailable;
}

// ---- keys ------------------------------------------------------------------

// The key argument: the positional value, else the first line of --key-file.
// `what` is "key" for install (must be a key) and "key or fingerprint" else.
Result<std::string> keyArgument(const std::string& key, const std::string& keyFile,
                                const char* what) {
  if (key.empty() == keyFile.empty()) {
    return makeError(ErrorCode::kInvalidArgument,
                     std::string("give the ") + what + " as an argument or with --key-file");
  }
  if (!key.empty()) return key;
  auto keys = gossip::readKeyFile(keyFile);
  if (!keys.ok()) return keys.error();
  return keys->front();  // a key file's first key is the one it is about
}

// "a1b2c3d4 (primary), e5f6a7b8"
std::string ringText(const std::vector<gossip::KeyInfo>& ring) {
  std::string out;
  for (const auto& k : ring) {
    out += (out.empty() ? "" : ", ") + k.fingerprint + (k.primary ? " (primary)" : "");
  }
  return out.empty() ? "(none)" : out;
}

std::string ringJson(const std::vector<gossip::KeyInfo>& ring) {
  std::string out = "[";
  for (size_t i = 0; i < ring.size(); ++i) {
    out += (i ? "," : "") + std::string("{\"fingerprint\":") + json(ring[i].fingerprint) +
           ",\"primary\":" + (ring[i].primary ? "true" : "false") + "}";
  }
  return out + "]";
}

bool ringHas(const std::vector<gossip::KeyInfo>& ring, const std::string& fingerprint,
             bool primaryOnly) {
  for (const auto& k : ring) {
    if (k.fingerprint == fingerprint && (!primaryOnly || k.primary)) return true;
  }
  return false;
}

// Each known node's keyring, as it answered.
std::vector<Result<std::vector<gossip::KeyInfo>>> listRings(const Globals& g,
                                                            const std::vector<KnownNode>& nodes) {
  return onEach<std::vector<gossip::KeyInfo>>(
      g, nodes, probeTimeout(g),
      [](size_t, api::Client& c) { return c.keys(api::KeyOp::kList, ""); });
}

// Every known node's keyring; nullopt (after printing why) unless all answered.
std::optional<std::vector<std::vector<gossip::KeyInfo>>> ringsOf(
    const Globals& g, const std::vector<KnownNode>& nodes) {
  auto rings = listRings(g, nodes);
  std::vector<std::vector<gossip::KeyInfo>> out;
  bool all = true;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!rings[i].ok()) {
      errorf("%s: %s\n", nodes[i].id.c_str(), rings[i].error().toString().c_str());
      all = false;
      continue;
    }
    out.push_back(std::move(*rings[i]));
  }
  if (!all) return std::nullopt;
  return out;
}

int keysList(const Globals& g, const NodeFlags& flags) {
  int code = kExitOk;
  auto c = discoverOrFail(g, flags, code);
  if (!c) return code;
  const auto& nodes = c->nodes;
  auto rings = listRings(g, nodes);
  std::string out;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const auto& r = rings[i];
    if (!r.ok() && nodes[i].asked() && code == kExitOk) code = exitCodeFor(r.error());
    std::string error = !nodes[i].asked() ? kNotAsked : r.ok() ? "" : r.error().toString();
    if (g.json) {
      out += (i ? "," : "") + json(nodes[i].id) + ":" +
             (r.ok() ? ringJson(*r) : "{\"error\":" + json(error) + "}");
    } else {
      std::printf("%s: %s\n", nodes[i].id.c_str(),
                  r.ok()             ? ringText(*r).c_str()
                  : nodes[i].asked() ? ("FAILED: " + error).c_str()
                                     : kNotAsked);
    }
  }
  if (g.json) {
    std::printf("{\"keys\":{%s},\"not_asked\":%s}\n", out.c_str(), jsonIds(c->notAsked()).c_str());
  } else if (auto missing = c->notAsked(); !missing.empty()) {
    std::printf("not asked: %s (%s); to include them, %s\n", joinIds(missing).c_str(),
                c->why().c_str(), kPassNodes);
  }
  return code;
}

// install / use / remove on every known node, after checking that the step
// is safe on all of them (use: every node has the key; remove: no node sends
// with it).
int keysChange(const Globals& g, const NodeFlags& flags, api::KeyOp op, const std::string& key) {
  const char* verb = op == api::KeyOp::kInstall ? "installed"
                     : op == api::KeyOp::kUse   ? "now sends with"
                                                : "removed";
  std::string fingerprint = key;
  if (auto parsed = gossip::parseClusterKey(key); parsed.ok()) {
    fingerprint = parsed->fingerprint();
  } else if (op == api::KeyOp::kInstall) {
    return fail(parsed);
  }
  int code = kExitOk;
  auto found = discoverOrFail(g, flags, code);
  if (!found) return code;
  // Nodes that left or were removed take no part (and may be gone).
  auto c = std::optional<Cluster>(found->members());
  // "Every node has it" must not pass because a node was not asked.
  if (auto refused = refuseIfNotAsked(*c, (std::string("keys ") + api::keyOpName(op)).c_str())) {
    return *refused;
  }
  const auto& nodes = c->nodes;
  if (op != api::KeyOp::kInstall) {
    auto rings = ringsOf(g, nodes);
    if (!rings) {
      errorf(
          "not changing any node: every node must answer first (a node that "
          "misses this step could no longer talk to the others)\n");
      return kExitUnavailable;
    }
    for (size_t i = 0; i < nodes.size(); ++i) {
      const auto& ring = (*rings)[i];
      if (op == api::KeyOp::kUse && !ringHas(ring, fingerprint, false)) {
        errorf(
            "%s does not have key %s yet; run `chorus cluster keys install` "
            "first (nothing changed)\n",
            nodes[i].id.c_str(), fingerprint.c_str());
        return kExitInvalid;
      }
      if (op == api::KeyOp::kRemove && ringHas(ring, fingerprint, true)) {
        errorf(
            "%s still sends with key %s; `chorus cluster keys use` another "
            "key first (nothing changed)\n",
            nodes[i].id.c_str(), fingerprint.c_str());
        return kExitInvalid;
      }
    }
  }
  auto results = onEach<Ok>(g, nodes, probeTimeout(g), [&](size_t, api::Client& c) -> Status {
    auto r = c.keys(op, key);
    if (!r.ok()) return r.error();
    return okStatus();
  });
  code = report(
      g, nodes, results, [&](size_t) { return std::string(verb) + " key " + fingerprint; },
      "changed", [&](size_t) { return json(fingerprint); }, std::nullopt);
  if (code != kExitOk && !g.json) {
    errorf(
        "not every node changed; run the same command again once the failed "
        "nodes are back (each step is idempotent)\n");
  }
  return code;
}

constexpr const char* kNodesHelp =
    "The nodes: --connect plus --nodes HOST:PORT[,...] (repeatable), else $CHORUS_NODES\n"
    "(same form), else the file --nodes-file or $CHORUS_NODES_FILE names (one HOST:PORT per\n"
    "line, '#' comments, not writable by group or others). Each is an RPC address of a node;\n"
    "the admin token goes only to these, never to an address learned over gossip. Nodes the\n"
    "connected node knows over gossip but that are not listed show as 'not asked'; converge,\n"
    "keys install/use/remove and partition (for the nodes it changes) refuse with exit 3\n"
    "while any is not asked, heal heals the rest and exits 3.";

// --nodes and --nodes-file on `sub`, into `flags`.
void addNodeOptions(CLI::App* sub, const std::shared_ptr<NodeFlags>& flags) {
  sub->add_option("--nodes", flags->nodes,
                  "RPC addresses of the cluster's nodes, HOST:PORT[,...] (repeatable); else "
                  "$CHORUS_NODES")
      ->type_name("HOST:PORT[,...]")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--nodes-file", flags->nodesFile,
                  "File of RPC addresses, one HOST:PORT per line; else $CHORUS_NODES_FILE")
      ->type_name("FILE");
  sub->footer(kNodesHelp);
}

}  // namespace

void addClusterCommands(CLI::App& app, const Globals& g, int& result) {
  auto* cluster =
      app.add_subcommand("cluster", "Replication across the nodes you list (--nodes, see its help)")
          ->require_subcommand(1);
  cluster->footer(kNodesHelp);
  // The node list of whichever subcommand runs, kept alive by the callbacks
  // (which `app` owns).
  auto nodes = std::make_shared<NodeFlags>();
  auto* st = cluster->add_subcommand(
      "status",
      "Per node: address, region, member state (alive, suspect, dead, left), keys, Merkle "
      "root, last sync, pending deltas, refused clock stamps");
  addNodeOptions(st, nodes);
  st->callback([&g, &result, nodes] { result = status(g, *nodes); });

  // Option values, kept alive by the callbacks.
  struct Flags {
    std::string isolate, split, timeout = "30s", leaveTimeout = "10s", node, keyOut;
    bool reachableOnly = false;
  };
  auto flags = std::make_shared<Flags>();
  auto* part = cluster->add_subcommand(
      "partition", "Fault injection: make nodes drop gossip traffic with each other");
  auto* iso = part->add_option("--isolate", flags->isolate,
                               "Cut this node off from every other node (both directions)");
  auto* spl = part->add_option(
      "--split", flags->split,
      "Cut the cluster in two: A,B/C,D (every node of one side drops the other side). Each "
      "item is a node id, or a region name standing for every member of that region (as the "
      "nodes report it); ids win over region names. E.g. n1,n2/n3 or us/eu,ap or us,n7/eu");
  iso->excludes(spl);
  addNodeOptions(part, nodes);
  part->callback(
      [&g, &result, flags, nodes] { result = partition(g, *nodes, flags->isolate, flags->split); });
  auto* hl = cluster->add_subcommand("heal", "Undo every partition on every listed node");
  addNodeOptions(hl, nodes);
  hl->callback([&g, &result, nodes] { result = heal(g, *nodes); });
  auto* conv = cluster->add_subcommand(
      "converge",
      "Wait until every listed node answers with the same Merkle root (exit 6 on timeout, an "
      "unreachable node included; exit 3 if a node the connected node knows is not listed)");
  conv->add_option("--timeout", flags->timeout,
                   "How long to wait in all: 30s, 2m, 500ms (a bare number is milliseconds)")
      ->capture_default_str();
  conv->add_flag("--reachable", flags->reachableOnly,
                 "Converged when the nodes that answer agree; name the unreachable ones "
                 "(default: every listed node must answer)");
  addNodeOptions(conv, nodes);
  conv->callback([&g, &result, flags, nodes] {
    result = converge(g, *nodes, flags->timeout, flags->reachableOnly);
  });

  auto* lv = cluster->add_subcommand(
      "leave",
      "Take a node out of the cluster for good: it tells its peers, waits until one holds all "
      "its data, then gossips no more and refuses writes (stop it afterwards; --rejoin brings "
      "it back)");
  lv->add_option("node", flags->node,
                 "The node to leave: its id, at an address in --nodes (default: the --connect "
                 "node)");
  lv->add_option("--timeout", flags->leaveTimeout,
                 "How long the node waits for a peer: 10s, 1m, 500ms (a bare number is "
                 "milliseconds; at most 5m)")
      ->capture_default_str();
  addNodeOptions(lv, nodes);
  lv->footer(
      "Exit 0 once it left; 4 if no peer was reached in time (it may be marked left on some\n"
      "nodes already: it refuses writes; run leave again, or restart it with --rejoin).\n" +
      std::string(kNodesHelp));
  lv->callback(
      [&g, &result, flags, nodes] { result = leave(g, *nodes, flags->node, flags->leaveTimeout); });
  auto removeNode = std::make_shared<std::string>();
  auto* rm = cluster->add_subcommand(
      "remove",
      "Declare a dead node gone for good: every node marks it left and stops dialling it; if it "
      "comes back it is refused until restarted with --rejoin");
  rm->add_option("node", *removeNode, "The id of the node to remove")->required();
  addNodeOptions(rm, nodes);
  rm->footer(
      "Sent to the --connect node, else the first listed node that answers; the removal\n"
      "spreads from there. Exit 2 if that node knows no such member, 3 for the node itself\n"
      "(use `chorus cluster leave`).\n" +
      std::string(kNodesHelp));
  rm->callback([&g, &result, removeNode, nodes] { result = remove(g, *nodes, *removeNode); });

  auto* keys = cluster
                   ->add_subcommand("keys",
                                    "The gossip keyring of every listed node. Rotation: "
                                    "generate, install, use, then remove the old key")
                   ->require_subcommand(1);
  keys->footer(
      "Keys are 32 random bytes in base64 and are secrets: prefer --key-file to an argument\n"
      "(arguments show in ps). Nodes and listings name keys by fingerprint.\n" +
      std::string(kNodesHelp));
  auto* gen = keys->add_subcommand(
      "generate", "Print a new random cluster key, or write it to --out (talks to no node)");
  gen->add_option("--out", flags->keyOut,
                  "Write the key to this new file (created 0600, never overwritten) instead of "
                  "printing it");
  gen->callback([&result, flags, &g] {
    std::string key = gossip::generateClusterKey();
    if (flags->keyOut.empty()) {
      std::printf(g.json ? "{\"key\":\"%s\"}\n" : "%s\n", key.c_str());  // base64: no escapes
      result = kExitOk;
      return;
    }
    auto s = writeSecretFile(flags->keyOut, key + "\n", "key");
    result = s.ok() ? kExitOk : fail(s);
  });
  auto* list = keys->add_subcommand("list", "Each node's key fingerprints, the primary marked");
  addNodeOptions(list, nodes);
  list->callback([&g, &result, nodes] { result = keysList(g, *nodes); });
  struct KeyFlags {
    std::string key, keyFile;
  };
  for (auto [name, op, help, what] :
       {std::tuple{"install", api::KeyOp::kInstall,
                   "Add a key to every node's keyring (frames are still sent with the primary; "
                   "refused unless every node is listed)",
                   "key"},
        std::tuple{"use", api::KeyOp::kUse,
                   "Make an installed key the primary on every node (refused unless every node "
                   "is listed and has it)",
                   "key or fingerprint"},
        std::tuple{"remove", api::KeyOp::kRemove,
                   "Remove a key from every node (refused unless every node is listed, and while "
                   "any sends with it)",
                   "key or fingerprint"}}) {
    auto kf = std::make_shared<KeyFlags>();
    auto* sub = keys->add_subcommand(name, help);
    sub->add_option("key", kf->key, std::string("The ") + what);
    sub->add_option("--key-file", kf->keyFile,
                    "Read the key from this file (its first key; '#' lines skipped)");
    addNodeOptions(sub, nodes);
    sub->callback([&g, &result, kf, nodes, op = op, what = what] {
      auto key = keyArgument(kf->key, kf->keyFile, what);
      if (!key.ok()) {
        result = fail(key);
        return;
      }
      result = keysChange(g, *nodes, op, *key);
    });
  }
}

}  // namespace chorus::cli
