// The cluster overview: every node's view of the cluster, gathered by the
// node that serves the dashboard (a browser can reach only that node), and
// the partition / heal operations applied across nodes from there.
//
// The caller's bearer token goes only to the RPC addresses the operator
// listed (chorusd --overview-nodes), never to an address learned over
// gossip: any holder of the cluster key can advertise any address and would
// collect the admin token of everyone who opens the dashboard (the same rule
// as `chorus cluster`, tools/chorus/cluster.cpp). Members whose address is
// not listed are shown as "not asked", with what the serving node knows of
// them (state, last sync, pending deltas).
//
// Threads: every method blocks (it dials the other nodes, one thread and one
// api::Client each, every call bounded by Options::timeout) and must not run
// on the HTTP server's event loop thread; any other thread may call it, and
// several may at once (at most kMaxConcurrent; more answer kOverloaded).
#pragma once

#include <kj/async.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

#include "api/validate.h"
#include "crdt/result.h"

namespace chorus {
class Node;
}
namespace chorus::api::internal {
class ServerLoop;
}

namespace chorus::api::http {

class Overview {
 public:
  struct Options {
    // RPC addresses ("host:port") of the cluster's nodes that may receive
    // the caller's token; the serving node itself needs no entry.
    std::vector<std::string> nodes;
    // Per node: connecting, authenticating and each call.
    std::chrono::milliseconds timeout{1500};
  };
  static constexpr int kMaxConcurrent = 8;

  // `node` must outlive this object.
  Overview(Node& node, Options options);

  // GET /v1/cluster/overview: a JSON object (see api/http/openapi.json,
  // ClusterOverview): the serving node's id, every node it knows or was
  // listed (its own answer when it answered: keys, Merkle root, what it
  // drops, last sync, pending deltas, refused stamps, gossip auth failures,
  // store writes), the reachable nodes grouped by root, and whether they all
  // agree. A node that does not answer is in the result with its error; the
  // call itself fails only with kOverloaded (too many at once) or
  // kUnavailable (the serving node is shutting down).
  Result<std::string> json(const std::string& token);

  // POST /v1/cluster/overview/partition: `groups` is two lists of node ids
  // (or region names, as `chorus cluster partition --split` takes them),
  // the body's `a` and `b`;
  // every node of one drops gossip with every node of the other, and every
  // other member that was asked is healed (a new partition replaces the one
  // before). Answers {"partitioned": {id: [ids it drops]}, "healed": [ids]}.
  // Errors: kInvalidArgument (field "a" or "b": not two non-empty disjoint
  // lists, an unknown id or region, or a node of the plan that is not
  // asked: nothing changed then); kUnavailable naming the nodes that failed
  // (the others changed: run it again); kOverloaded.
  Result<std::string> partition(const std::vector<std::vector<std::string>>& groups,
                                const std::string& token);

  // POST /v1/cluster/overview/heal: every asked node stops dropping gossip.
  // Answers {"healed": [ids], "notAsked": [ids]} (members that could not be
  // healed since their address is not listed). Errors: kUnavailable naming
  // the nodes that failed (the others healed); kOverloaded.
  Result<std::string> heal(const std::string& token);

 private:
  class Slot;  // holds one of the kMaxConcurrent places
  Node& node_;
  Options options_;
  std::atomic<int> inFlight_{0};
};

// The overview routes for the HTTP server (api/http/server.cpp), which runs
// on the RPC thread: each operation runs on a thread of its own (it waits
// for other nodes) and its answer comes back through ServerLoop::post().
class OverviewRunner {
 public:
  using Answer = kj::Own<Result<std::string>>;

  // RPC thread. `loop` outlives this object; its node() is the one served.
  OverviewRunner(internal::ServerLoop& loop, Overview::Options options);
  // RPC thread: waits for the operations still running (each bounded by
  // the per-node timeout); their answers are dropped.
  ~OverviewRunner();

  // RPC thread. Each resolves on the RPC thread with Overview's answer;
  // dropping the promise drops the answer when it arrives.
  kj::Promise<Answer> overview(std::string token);
  kj::Promise<Answer> partition(std::vector<std::vector<std::string>> groups, std::string token);
  kj::Promise<Answer> heal(std::string token);

 private:
  kj::Promise<Answer> run(std::function<Result<std::string>()> work);
  void finished(uint64_t id, Result<std::string> answer);  // RPC thread

  internal::ServerLoop& loop_;
  Overview overview_;
  uint64_t next_ = 1;                                                  // RPC thread
  std::map<uint64_t, kj::Own<kj::PromiseFulfiller<Answer>>> pending_;  // RPC thread
  std::mutex threadsMutex_;  // guards threads_ (a thread is added before it starts)
  std::map<uint64_t, std::thread> threads_;
};

// The groups of a POST /v1/cluster/overview/partition body, {"a": [ids],
// "b": [ids]} (ids or region names, at most 1024 each); a FieldError naming
// the member that is wrong.
std::variant<std::vector<std::vector<std::string>>, FieldError> parsePartitionBody(
    std::string_view body);
// A POST /v1/cluster/overview/heal body: empty or {}.
Check parseHealBody(std::string_view body);

// Parses --overview-nodes items ("host:port" separated by commas or
// whitespace) into `out`, skipping duplicates. kInvalidArgument naming the
// item that is not HOST:PORT with a port 1-65535.
Status addOverviewNodes(const std::string& text, std::vector<std::string>& out);

}  // namespace chorus::api::http
