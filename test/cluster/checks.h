// What the cluster tests ask of nodes, through the `chorus` CLI (--json) and
// the C++ client: reviews, roots, peer states, counters.
#pragma once

#include <set>

#include "api/client.h"
#include "harness.h"

namespace chorus::test::cluster {

// `chorus review get` on `id`: the review, nullopt if not found (exit 2);
// any other outcome fails the check.
inline std::optional<Json> getReview(Harness& h, const std::string& id, const std::string& product,
                                     const std::string& author) {
  auto r = h.chorus(id, {"--json", "review", "get", product, author});
  if (r.code == 2) return std::nullopt;
  if (r.code != 0) {
    FAIL_CHECK("review get " << product << "/" << author << " on " << id << " exited " << r.code
                             << ": " << r.out << r.err);
    return std::nullopt;
  }
  auto j = Json::parse(r.out);
  if (!j) FAIL_CHECK("review get: not JSON: " << r.out);
  return j;
}

// A CLI write (`chorus review <args>`) on `id`; REQUIREs exit 0.
inline void cliWrite(Harness& h, const std::string& id, std::vector<std::string> args) {
  args.insert(args.begin(), "review");
  auto r = h.chorus(id, args);
  std::string cmd;
  for (const auto& a : args) cmd += " " + a;
  REQUIRE_MESSAGE(r.code == 0, "chorus" << cmd << " on " << id << " exited " << r.code << ": "
                                        << r.out << r.err << "\n"
                                        << h.logs());
}

inline std::vector<std::string> tagsOf(const Json& review) {
  std::vector<std::string> out;
  for (const auto& t : review["tags"].items()) out.push_back(t.str());
  return out;
}

// `chorus --json node status` on `id` (null Json if it failed).
inline Json nodeStatus(Harness& h, const std::string& id) {
  return h.chorusJson(id, {"node", "status"});
}

inline Json clusterStatus(Harness& h, const std::string& id) {
  return h.chorusJson(id, {"cluster", "status"});
}

// The node list of `chorus cluster status --json`: the node asked ("state"
// "self") and its peers as it sees them.
inline const Json& membersOf(const Json& status) { return status["nodes"]; }

// The entry for `node` in `status`'s node list (a null Json if absent).
inline const Json& entryOf(const Json& status, const std::string& node) {
  static const Json none;
  for (const auto& m : membersOf(status).items()) {
    if (m["node_id"].str() == node) return m;
  }
  return none;
}

// `peer`'s state as the node asked sees it: "alive", "suspect", "dead",
// with ",partitioned" appended while partitioned; "" if absent.
inline std::string peerState(const Json& status, const std::string& peer) {
  return entryOf(status, peer)["state"].str();
}

// Does `id` see every node in `peers` alive?
inline bool seesAlive(Harness& h, const std::string& id, const std::vector<std::string>& peers) {
  auto r = h.chorus(id, {"--json", "cluster", "status"});
  if (r.code != 0) return false;
  auto j = Json::parse(r.out);
  if (!j) return false;
  for (const auto& p : peers) {
    if (p != id && peerState(*j, p) != "alive") return false;
  }
  return true;
}

// Does every node in `ids` see all the others alive?
inline bool allAlive(Harness& h, const std::vector<std::string>& ids) {
  for (const auto& id : ids) {
    if (!seesAlive(h, id, ids)) return false;
  }
  return true;
}

inline std::string aliveDetail(Harness& h, const std::vector<std::string>& ids) {
  std::string out;
  for (const auto& id : ids) {
    auto r = h.chorus(id, {"--json", "cluster", "status"});
    out += id + ": exit " + std::to_string(r.code) + " " + r.out + r.err + "\n";
  }
  return out;
}

// Merkle roots (hex) of `ids`, from `chorus --json node status`.
inline std::map<std::string, std::string> roots(Harness& h, const std::vector<std::string>& ids) {
  std::map<std::string, std::string> out;
  for (const auto& id : ids) out[id] = nodeStatus(h, id)["merkle_root"].str();
  return out;
}

inline bool allEqual(const std::map<std::string, std::string>& m) {
  std::set<std::string> values;
  for (const auto& [k, v] : m) values.insert(v);
  return values.size() == 1 && !values.begin()->empty();
}

inline std::string show(const std::map<std::string, std::string>& m) {
  std::string out;
  for (const auto& [k, v] : m) out += k + "=" + v + " ";
  return out;
}

// `chorus cluster converge --timeout <t>` on `id`; CHECKs exit 0.
inline RunResult converge(Harness& h, const std::string& id, const std::string& timeout = "30s") {
  auto r = h.chorus(id, {"cluster", "converge", "--timeout", timeout}, 45s);
  CHECK_MESSAGE(r.code == 0, "chorus cluster converge on " << id << " exited " << r.code
                                                           << "\nstdout: " << r.out
                                                           << "\nstderr: " << r.err << "\n"
                                                           << h.logs());
  return r;
}

// Writes through the C++ client (one connection per call of this function;
// the client's event loop lives on this thread only while it runs).
inline void clientPuts(Harness& h, const std::string& id, const std::string& product,
                       const std::vector<std::string>& authors, const std::string& titlePrefix) {
  auto client = chorus::api::Client::connect(h.node(id).rpc());
  REQUIRE_MESSAGE(client.ok(), client.error().toString());
  for (size_t i = 0; i < authors.size(); ++i) {
    chorus::WriteRequest r;
    r.op = chorus::WriteOp::kPut;
    r.product = product;
    r.author = authors[i];
    r.rating = static_cast<uint32_t>(1 + i % 5);
    r.title = titlePrefix + authors[i];
    auto res = (*client)->write(r);
    REQUIRE_MESSAGE(res.ok(), "write " << product << "/" << authors[i] << " on " << id << ": "
                                       << res.error().toString());
  }
}

// Authors whose review of `product` `id` lacks or has with another title.
inline std::vector<std::string> missing(Harness& h, const std::string& id,
                                        const std::string& product,
                                        const std::map<std::string, std::string>& titles) {
  std::vector<std::string> out;
  auto client = chorus::api::Client::connect(h.node(id).rpc());
  if (!client.ok()) return {"<cannot connect: " + client.error().toString() + ">"};
  for (const auto& [author, title] : titles) {
    auto r = (*client)->get(product, author);
    if (!r.ok() || r->title != title) out.push_back(author);
  }
  return out;
}

// author -> prefix + author
inline std::map<std::string, std::string> titled(const std::vector<std::string>& as,
                                          const std::string& prefix) {
  std::map<std::string, std::string> out;
  for (const auto& a : as) out[a] = prefix + a;
  return out;
}

}  // namespace chorus::test::cluster
