// `chorus cluster ...`: look at and steer replication across every node the
// connected node knows (itself plus its gossip members).
//
// Each node is asked over its own RPC address, all in parallel: one thread
// and one Client per node (a Client's event loop belongs to its thread), and
// a short per-call timeout, so a dead or hung node costs at most that long.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
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

// A node as the connected node knows it.
struct KnownNode {
  std::string id;
  std::string rpcAddress;  // empty: not known (yet)
  std::string gossipAddress;
  std::optional<gossip::MemberInfo> member;  // as the connected node sees it; none for itself
};

// The connected node first, then its members; sorted by id.
std::vector<KnownNode> knownNodes(const ClusterView& view, const std::string& connectedAddress) {
  std::vector<KnownNode> out;
  out.push_back({view.nodeId, connectedAddress, view.gossipAddress, std::nullopt});
  for (const auto& m : view.members) out.push_back({m.nodeId, m.rpcAddress, m.gossipAddress, m});
  std::sort(out.begin(), out.end(),
            [](const KnownNode& a, const KnownNode& b) { return a.id < b.id; });
  return out;
}

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

// Runs `fn` against every node in `nodes` at once, each on its own thread
// with its own client; returns the results in the same order.
template <typename T>
std::vector<Result<T>> onEach(const Globals& g, const std::vector<KnownNode>& nodes,
                              milliseconds timeout,
                              const std::function<Result<T>(size_t, api::Client&)>& fn) {
  std::vector<std::optional<Result<T>>> slots(nodes.size());
  std::vector<std::thread> threads;
  threads.reserve(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    threads.emplace_back([&, i] {
      if (nodes[i].rpcAddress.empty()) {
        slots[i].emplace(makeError(ErrorCode::kUnavailable,
                                   "its RPC address is not known yet (no heartbeat from it)"));
        return;
      }
      auto client = api::Client::connect(nodes[i].rpcAddress, clientOptions(g, timeout));
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

std::vector<Result<ClusterView>> viewsOf(const Globals& g, const std::vector<KnownNode>& nodes,
                                         milliseconds timeout) {
  return onEach<ClusterView>(g, nodes, timeout, [](size_t, api::Client& c) { return c.cluster(); });
}

// The connected node's view of the cluster.
Result<ClusterView> connectedView(const Globals& g) {
  auto client = api::Client::connect(g.connect, clientOptions(g, milliseconds(g.timeoutMs)));
  if (!client.ok()) return client.error();
  return (*client)->cluster();
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

std::string stateText(const KnownNode& n) {
  if (!n.member) return "self";
  std::string s = gossip::peerStateName(n.member->state);
  if (n.member->partitioned) s += ",partitioned";
  return s;
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
  char buf[1024];
  std::snprintf(
      buf, sizeof buf,
      "{\"frames_in\":%" PRIu64 ",\"frames_out\":%" PRIu64 ",\"bytes_in\":%" PRIu64
      ",\"bytes_out\":%" PRIu64 ",\"malformed_frames\":%" PRIu64 ",\"partition_dropped\":%" PRIu64
      ",\"deltas_sent\":%" PRIu64 ",\"deltas_received\":%" PRIu64 ",\"deltas_dropped\":%" PRIu64
      ",\"sync_started\":%" PRIu64 ",\"sync_completed\":%" PRIu64 ",\"anti_entropy_bytes\":%" PRIu64
      ",\"states_repaired\":%" PRIu64 ",\"auth_failures\":%" PRIu64 ",\"replays_refused\":%" PRIu64
      ",\"states_refused\":%" PRIu64 "}",
      s.framesIn, s.framesOut, s.bytesIn, s.bytesOut, s.malformedFrames, s.partitionDropped,
      s.deltasSent, s.deltasReceived, s.deltasDropped, s.syncStarted, s.syncCompleted,
      s.antiEntropyBytes, s.statesRepaired, s.authFailures, s.replaysRefused, s.statesRefused);
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

int status(const Globals& g) {
  auto view = connectedView(g);
  if (!view.ok()) return fail(view);
  auto nodes = knownNodes(*view, g.connect);
  auto views = viewsOf(g, nodes, probeTimeout(g));
  size_t reachable = 0;
  auto root = commonRoot(views, reachable);

  if (g.json) {
    std::string out = "{\"node_id\":" + json(view->nodeId) + ",\"nodes\":[";
    for (size_t i = 0; i < nodes.size(); ++i) {
      const KnownNode& n = nodes[i];
      const auto& v = views[i];
      out += i ? "," : "";
      out += "{\"node_id\":" + json(n.id) + ",\"rpc_address\":" + json(n.rpcAddress) +
             ",\"gossip_address\":" + json(n.gossipAddress) + ",\"state\":" + json(stateText(n)) +
             ",\"partitioned\":" + (n.member && n.member->partitioned ? "true" : "false") +
             ",\"reachable\":" + (v.ok() ? "true" : "false");
      if (v.ok()) {
        out += ",\"keys\":" + std::to_string(v->keyCount) +
               ",\"merkle_root\":" + json(hex(v->merkleRoot)) +
               ",\"refused_stamps\":" + std::to_string(v->refusedStamps) +
               ",\"partitioned_from\":" + jsonIds(v->partitioned);
      } else {
        out += ",\"error\":" + json(v.error().toString());
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
               ",\"phi\":" + jsonNumber(m.phi);
      }
      out += "}";
    }
    out += "],\"reachable\":" + std::to_string(reachable) +
           ",\"same_root\":" + (root ? "true" : "false") + ",\"gossip\":" + jsonStats(view->stats) +
           "}";
    std::printf("%s\n", out.c_str());
    return kExitOk;
  }

  int w = static_cast<int>(idWidth(nodes));
  std::printf("%-*s %-21s %-19s %-11s %-9s %-11s %-7s %s\n", w, "NODE", "ADDRESS", "STATE", "KEYS",
              "ROOT", "LAST SYNC", "PENDING", "REFUSED");
  for (size_t i = 0; i < nodes.size(); ++i) {
    const KnownNode& n = nodes[i];
    const auto& v = views[i];
    std::string keys = v.ok() ? std::to_string(v->keyCount) : "unreachable";
    std::string rootText = v.ok() ? shortRoot(v->merkleRoot) : "-";
    std::string refused = v.ok() ? std::to_string(v->refusedStamps) : "-";
    std::string sync = n.member ? ago(view->nowUnixMillis, n.member->lastSyncUnixMillis) : "-";
    std::string pending = n.member ? std::to_string(n.member->pendingDeltas) : "-";
    std::printf("%-*s %-21s %-19s %-11s %-9s %-11s %-7s %s\n", w, n.id.c_str(),
                n.rpcAddress.empty() ? "?" : n.rpcAddress.c_str(), stateText(n).c_str(),
                keys.c_str(), rootText.c_str(), sync.c_str(), pending.c_str(), refused.c_str());
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
    if (!views[i].ok()) {
      std::printf("%s unreachable: %s\n", nodes[i].id.c_str(), views[i].error().toString().c_str());
    }
  }
  const auto& s = view->stats;
  std::printf("gossip at %s: %" PRIu64 " syncs completed, %" PRIu64 " deltas sent, %" PRIu64
              " received, %" PRIu64 " states repaired, %" PRIu64 " malformed frames, %" PRIu64
              " failing the cluster key, %" PRIu64 " replays\n",
              view->nodeId.c_str(), s.syncCompleted, s.deltasSent, s.deltasReceived,
              s.statesRepaired, s.malformedFrames, s.authFailures, s.replaysRefused);
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
  std::fprintf(stderr, "chorus: unknown node id '%s'; known ids: %s\n", id.c_str(),
               knownIds(nodes).c_str());
  return kExitInvalid;
}

// "n1,n2" -> {"n1", "n2"}; empty items are a usage error (nullopt).
std::optional<std::vector<std::string>> splitIds(const std::string& text) {
  std::vector<std::string> ids;
  size_t start = 0;
  while (true) {
    size_t comma = text.find(',', start);
    std::string id =
        text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (id.empty()) return std::nullopt;
    ids.push_back(id);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return ids;
}

int partition(const Globals& g, const std::string& isolate, const std::string& split) {
  if (isolate.empty() == split.empty()) {
    std::fprintf(stderr, "chorus: give either --isolate ID or --split A,B/C,D\n");
    return kExitUsage;
  }
  // Parse before asking anything: a typo should not need a running cluster.
  std::vector<std::string> sideA, sideB;
  if (!split.empty()) {
    auto slash = split.find('/');
    std::optional<std::vector<std::string>> a, b;
    if (slash != std::string::npos && split.find('/', slash + 1) == std::string::npos) {
      a = splitIds(split.substr(0, slash));
      b = splitIds(split.substr(slash + 1));
    }
    if (!a || !b) {
      std::fprintf(stderr,
                   "chorus: --split: '%s' is not two comma-separated id lists joined by '/' "
                   "(e.g. n1,n2/n3,n4,n5)\n",
                   split.c_str());
      return kExitUsage;
    }
    sideA = std::move(*a);
    sideB = std::move(*b);
  }

  auto view = connectedView(g);
  if (!view.ok()) return fail(view);
  auto nodes = knownNodes(*view, g.connect);
  std::map<std::string, const KnownNode*> byId;
  for (const auto& n : nodes) byId[n.id] = &n;

  std::map<std::string, std::vector<std::string>> plan;  // node -> peers it will drop
  if (!isolate.empty()) {
    if (!byId.count(isolate)) return unknownId(isolate, nodes);
    std::vector<std::string> others;
    for (const auto& n : nodes) {
      if (n.id != isolate) others.push_back(n.id);
    }
    if (others.empty()) {
      std::fprintf(stderr, "chorus: %s is the only node %s knows; nothing to isolate it from\n",
                   isolate.c_str(), view->nodeId.c_str());
      return kExitInvalid;
    }
    plan[isolate] = others;
    for (const auto& o : others) plan[o] = {isolate};
  } else {
    std::set<std::string> inA;
    for (const auto& id : sideA) {
      if (!byId.count(id)) return unknownId(id, nodes);
      inA.insert(id);
    }
    for (const auto& id : sideB) {
      if (!byId.count(id)) return unknownId(id, nodes);
      if (inA.count(id)) {
        std::fprintf(stderr, "chorus: --split: %s is on both sides\n", id.c_str());
        return kExitInvalid;
      }
    }
    for (const auto& id : sideA) plan[id] = sideB;
    for (const auto& id : sideB) plan[id] = sideA;
  }

  std::vector<KnownNode> targets;
  for (const auto& [id, peers] : plan) targets.push_back(*byId[id]);
  auto results = onEach<Ok>(g, targets, probeTimeout(g), [&](size_t i, api::Client& c) {
    return c.partition(plan[targets[i].id]);
  });
  int code = report(
      g, targets, results,
      [&](size_t i) { return "drops gossip with " + joinIds(plan[targets[i].id]); }, "partitioned",
      [&](size_t i) { return jsonIds(plan[targets[i].id]); }, std::nullopt);
  if (!g.json) {
    for (const auto& n : nodes) {
      if (!plan.count(n.id)) {
        std::printf("%s: in neither side, still talks to both\n", n.id.c_str());
      }
    }
  }
  return code;
}

int heal(const Globals& g) {
  auto view = connectedView(g);
  if (!view.ok()) return fail(view);
  auto nodes = knownNodes(*view, g.connect);
  auto results =
      onEach<Ok>(g, nodes, probeTimeout(g), [](size_t, api::Client& c) { return c.heal(); });
  return report(
      g, nodes, results, [](size_t) { return std::string("healed"); }, "healed",
      [](size_t) { return std::string("true"); }, kExitUnavailable);
}

// ---- converge --------------------------------------------------------------

int converge(const Globals& g, const std::string& timeoutText) {
  auto timeout = api::parseDuration(timeoutText, std::chrono::seconds(1));
  if (!timeout.ok() || timeout->count() <= 0) {
    std::fprintf(stderr, "chorus: --timeout: %s\n",
                 timeout.ok() ? "must be positive" : timeout.error().message.c_str());
    return kExitUsage;
  }
  auto view = connectedView(g);
  if (!view.ok()) return fail(view);
  auto nodes = knownNodes(*view, g.connect);
  auto start = SteadyClock::now();
  auto deadline = start + *timeout;
  while (true) {
    auto roundStart = SteadyClock::now();
    // A hung node may cost a round its call timeout, but not much more than
    // the time left.
    auto left = std::chrono::duration_cast<milliseconds>(deadline - roundStart);
    auto views = viewsOf(g, nodes, std::min(probeTimeout(g), std::max(left, kMinProbeTimeout)));
    double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
    size_t reachable = 0;
    auto root = commonRoot(views, reachable);
    std::vector<std::string> unreachable;
    for (size_t i = 0; i < nodes.size(); ++i) {
      if (!views[i].ok()) unreachable.push_back(nodes[i].id);
    }
    if (root) {
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
        std::printf("did not converge within %.1f s; the nodes differ:\n",
                    std::chrono::duration<double>(*timeout).count());
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
      std::fprintf(stderr, "chorus: did not converge\n");
      return kExitNotConverged;
    }
    auto next = std::min(roundStart + kPollInterval, deadline);
    std::this_thread::sleep_until(next);
  }
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
      std::fprintf(stderr, "chorus: %s: %s\n", nodes[i].id.c_str(),
                   rings[i].error().toString().c_str());
      all = false;
      continue;
    }
    out.push_back(std::move(*rings[i]));
  }
  if (!all) return std::nullopt;
  return out;
}

int keysList(const Globals& g) {
  auto view = connectedView(g);
  if (!view.ok()) return fail(view);
  auto nodes = knownNodes(*view, g.connect);
  auto rings = listRings(g, nodes);
  int code = kExitOk;
  std::string out;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const auto& r = rings[i];
    if (!r.ok() && code == kExitOk) code = exitCodeFor(r.error());
    if (g.json) {
      out += (i ? "," : "") + json(nodes[i].id) + ":" +
             (r.ok() ? ringJson(*r) : "{\"error\":" + json(r.error().toString()) + "}");
    } else {
      std::printf("%s: %s\n", nodes[i].id.c_str(),
                  r.ok() ? ringText(*r).c_str() : ("FAILED: " + r.error().toString()).c_str());
    }
  }
  if (g.json) std::printf("{\"keys\":{%s}}\n", out.c_str());
  return code;
}

// install / use / remove on every known node, after checking that the step
// is safe on all of them (use: every node has the key; remove: no node sends
// with it).
int keysChange(const Globals& g, api::KeyOp op, const std::string& key) {
  const char* verb = op == api::KeyOp::kInstall ? "installed"
                     : op == api::KeyOp::kUse   ? "now sends with"
                                                : "removed";
  std::string fingerprint = key;
  if (auto parsed = gossip::parseClusterKey(key); parsed.ok()) {
    fingerprint = parsed->fingerprint();
  } else if (op == api::KeyOp::kInstall) {
    return fail(parsed);
  }
  auto view = connectedView(g);
  if (!view.ok()) return fail(view);
  auto nodes = knownNodes(*view, g.connect);
  if (op != api::KeyOp::kInstall) {
    auto rings = ringsOf(g, nodes);
    if (!rings) {
      std::fprintf(stderr,
                   "chorus: not changing any node: every node must answer first (a node that "
                   "misses this step could no longer talk to the others)\n");
      return kExitUnavailable;
    }
    for (size_t i = 0; i < nodes.size(); ++i) {
      const auto& ring = (*rings)[i];
      if (op == api::KeyOp::kUse && !ringHas(ring, fingerprint, false)) {
        std::fprintf(stderr,
                     "chorus: %s does not have key %s yet; run `chorus cluster keys install` "
                     "first (nothing changed)\n",
                     nodes[i].id.c_str(), fingerprint.c_str());
        return kExitInvalid;
      }
      if (op == api::KeyOp::kRemove && ringHas(ring, fingerprint, true)) {
        std::fprintf(stderr,
                     "chorus: %s still sends with key %s; `chorus cluster keys use` another "
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
  int code = report(
      g, nodes, results, [&](size_t) { return std::string(verb) + " key " + fingerprint; },
      "changed", [&](size_t) { return json(fingerprint); }, std::nullopt);
  if (code != kExitOk && !g.json) {
    std::fprintf(stderr,
                 "chorus: not every node changed; run the same command again once the failed "
                 "nodes are back (each step is idempotent)\n");
  }
  return code;
}

}  // namespace

void addClusterCommands(CLI::App& app, const Globals& g, int& result) {
  auto* cluster =
      app.add_subcommand("cluster", "Replication across the nodes the connected node knows")
          ->require_subcommand(1);
  cluster
      ->add_subcommand("status",
                       "Per node: address, state, keys, Merkle root, last sync, pending deltas, "
                       "refused clock stamps")
      ->callback([&] { result = status(g); });

  // Option values, kept alive by the callbacks (which `app` owns).
  struct Flags {
    std::string isolate, split, timeout = "30s";
  };
  auto flags = std::make_shared<Flags>();
  auto* part = cluster->add_subcommand(
      "partition", "Fault injection: make nodes drop gossip traffic with each other");
  auto* iso = part->add_option("--isolate", flags->isolate,
                               "Cut this node off from every other node (both directions)");
  auto* spl = part->add_option("--split", flags->split,
                               "Cut the cluster in two: A,B/C,D (every node of one side drops "
                               "the other side)");
  iso->excludes(spl);
  part->callback([&g, &result, flags] { result = partition(g, flags->isolate, flags->split); });
  cluster->add_subcommand("heal", "Undo every partition on every known node")->callback([&] {
    result = heal(g);
  });
  auto* conv = cluster->add_subcommand(
      "converge",
      "Wait until every reachable node reports the same Merkle root (exit 6 on timeout)");
  conv->add_option("--timeout", flags->timeout, "How long to wait: 30s, 2m, 500ms (bare = seconds)")
      ->capture_default_str();
  conv->callback([&g, &result, flags] { result = converge(g, flags->timeout); });

  auto* keys = cluster
                   ->add_subcommand("keys",
                                    "The gossip keyring of every known node. Rotation: "
                                    "generate, install, use, then remove the old key")
                   ->require_subcommand(1);
  keys->footer(
      "Keys are 32 random bytes in base64 and are secrets: prefer --key-file to an argument\n"
      "(arguments show in ps). Nodes and listings name keys by fingerprint.");
  keys->add_subcommand("generate", "Print a new random cluster key (talks to no node)")
      ->callback([&result] {
        std::printf("%s\n", gossip::generateClusterKey().c_str());
        result = kExitOk;
      });
  keys->add_subcommand("list", "Each node's key fingerprints, the primary marked")->callback([&] {
    result = keysList(g);
  });
  struct KeyFlags {
    std::string key, keyFile;
  };
  for (auto [name, op, help, what] :
       {std::tuple{"install", api::KeyOp::kInstall,
                   "Add a key to every node's keyring (frames are still sent with the primary)",
                   "key"},
        std::tuple{"use", api::KeyOp::kUse,
                   "Make an installed key the primary on every node (refused unless every node "
                   "has it)",
                   "key or fingerprint"},
        std::tuple{"remove", api::KeyOp::kRemove,
                   "Remove a key from every node (refused while any node sends with it)",
                   "key or fingerprint"}}) {
    auto kf = std::make_shared<KeyFlags>();
    auto* sub = keys->add_subcommand(name, help);
    sub->add_option("key", kf->key, std::string("The ") + what);
    sub->add_option("--key-file", kf->keyFile,
                    "Read the key from this file (its first key; '#' lines skipped)");
    sub->callback([&g, &result, kf, op = op, what = what] {
      auto key = keyArgument(kf->key, kf->keyFile, what);
      if (!key.ok()) {
        result = fail(key);
        return;
      }
      result = keysChange(g, op, *key);
    });
  }
}

}  // namespace chorus::cli
