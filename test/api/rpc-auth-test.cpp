// Authentication, authorization and limits of the RPC server, over real
// connections on 127.0.0.1 with the C++ client.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <kj/async.h>
#include <kj/debug.h>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <functional>
#include <future>
#include <map>
#include <optional>
#include <thread>

#include "api/auth.h"
#include "api/client.h"
#include "api/metrics.h"
#include "api/node.h"
#include "gossip/keyring.h"
#include "support/results.h"
#include "temp-dir.h"

using chorus::ErrorCode;
using chorus::Node;
using chorus::WriteOp;
using chorus::WriteRequest;
using chorus::api::Client;
using chorus::api::KeyOp;
using chorus::test::TempDir;
using namespace std::chrono_literals;
using chorus::test::failure;

namespace {

constexpr const char* kNeedToken =
    "this node requires a token: pass --token-file FILE or --token T, or set $CHORUS_TOKEN_FILE "
    "or $CHORUS_TOKEN";

using Principals = std::map<std::string, std::string>;  // id -> roles

// A node with a tokens file; tokens[principal] is that principal's token.
struct AuthNode {
  TempDir tmp;
  std::map<std::string, std::string> tokens;
  std::unique_ptr<Node> node;

  // `principals`: id -> comma-separated roles.
  explicit AuthNode(const std::map<std::string, std::string>& principals,
                    chorus::RpcLimits limits = {}, bool clustered = false) {
    std::string text = "# test tokens\n";
    for (const auto& [id, roles] : principals) {
      tokens[id] = chorus::api::newToken();
      auto line = chorus::api::tokenLine(id, roles, tokens[id]);
      REQUIRE(line.ok());
      text += *line + "\n";
    }
    std::string path = tmp.sub("tokens");
    FILE* f = std::fopen(path.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fputs(text.c_str(), f);
    std::fclose(f);
    REQUIRE(::chmod(path.c_str(), 0600) == 0);
    Node::Options o;
    o.nodeId = "auth-node";
    o.dataDir = tmp.sub("data");
    o.listen = "127.0.0.1:0";
    o.rpc = limits;
    o.rpc.tokensFile = path;
    o.store.unsafeNoSync = true;
    if (clustered) {
      o.cluster.listen = "127.0.0.1:0";
      o.cluster.keys = {chorus::gossip::generateClusterKey()};
    }
    auto opened = Node::open(std::move(o));
    REQUIRE_MESSAGE(opened.ok(), opened.error().toString());
    node = std::move(opened).value();
  }

  std::unique_ptr<Client> client(const std::string& principal) {
    Client::Options o;
    o.token = tokens.at(principal);
    auto c = Client::connect(node->rpcAddress(), o);
    REQUIRE_MESSAGE(c.ok(), c.error().toString());
    return std::move(c).value();
  }
};

WriteRequest request(WriteOp op, std::string product, std::string author, std::string arg = {}) {
  WriteRequest r;
  r.op = op;
  r.product = std::move(product);
  r.author = std::move(author);
  r.arg = std::move(arg);
  r.rating = 4;
  return r;
}

bool isForbidden(const chorus::Error& e, const std::string& part) {
  return e.code == ErrorCode::kForbidden && e.message.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("auth: Node::open needs a tokens file or --no-auth for an RPC server") {
  TempDir tmp;
  Node::Options o;
  o.nodeId = "n";
  o.dataDir = tmp.sub("data");
  o.listen = "127.0.0.1:0";
  auto refused = Node::open(o);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == ErrorCode::kInvalidArgument);
  CHECK(refused.error().message ==
        "the RPC server needs a tokens file (--tokens-file); --no-auth serves every client as "
        "admin, for tests on a trusted host only");
  o.rpc.tokensFile = tmp.sub("missing");
  auto missing = Node::open(o);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == ErrorCode::kIo);
  o.rpc.noAuth = true;
  CHECK(failure(Node::open(o)).code == ErrorCode::kInvalidArgument);  // not both
  o.rpc.tokensFile.clear();
  CHECK(Node::open(o).ok());
  // Embedded without RPC: trusted, nothing needed.
  Node::Options embedded;
  embedded.nodeId = "e";
  embedded.dataDir = tmp.sub("embedded");
  CHECK(Node::open(embedded).ok());
}

TEST_CASE("auth: no token and a wrong token are refused as unauthenticated") {
  AuthNode n(Principals{{"alice", "writer"}});
  REQUIRE(n.node->put("p1", "alice", 5, "t", "b").ok());  // in-process: trusted

  auto anonymous = Client::connect(n.node->rpcAddress());
  REQUIRE(anonymous.ok());
  auto& c = **anonymous;
  for (const auto& error :
       {failure(c.get("p1", "alice")), failure(c.summary("p1")),
        failure(c.write(request(WriteOp::kPut, "p1", "alice"))), failure(c.status())}) {
    CHECK(error.code == ErrorCode::kForbidden);
    CHECK(error.message == std::string("unauthenticated: ") + kNeedToken);
  }
  {
    auto raw = c.reviews().getRequest();
    raw.setProduct("p1");
    raw.setAuthor("alice");
    auto resp = raw.send().wait(c.waitScope());
    REQUIRE(resp.hasError());
    CHECK(resp.getError().getCode() == chorus::api::wire::ErrorCode::UNAUTHENTICATED);
    CHECK_FALSE(resp.hasReview());
  }
  CHECK(n.node->get("p1", "alice")->rating == 5);  // the refused put changed nothing
  anonymous = chorus::Error{ErrorCode::kInternal, "closed"};

  // Three wrong tokens, with stderr (the log) captured.
  std::vector<std::string> wrongTokens;
  std::string log;
  {
    std::fflush(stderr);
    int saved = ::dup(2);
    FILE* capture = std::tmpfile();
    REQUIRE(capture != nullptr);
    ::dup2(::fileno(capture), 2);
    for (int i = 0; i < 3; ++i) {
      Client::Options wrong;
      wrong.token = wrongTokens.emplace_back(chorus::api::newToken());
      auto refused = Client::connect(n.node->rpcAddress(), wrong);
      REQUIRE_FALSE(refused.ok());
      CHECK(refused.error().code == ErrorCode::kForbidden);
      CHECK(refused.error().message.rfind("unauthenticated: unknown token (", 0) == 0);
      CHECK(refused.error().message.find("SIGHUP") != std::string::npos);
    }
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    std::rewind(capture);
    char buf[4096];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, capture)) > 0) log.append(buf, got);
    std::fclose(capture);
  }
  CHECK(n.node->metrics().authFailures() == 3);
  CHECK(n.node->metrics().render({}, 0).find("chorus_rpc_auth_failures_total 3") !=
        std::string::npos);
  // Logged once (rate-limited), with the peer address, never the token.
  auto first = log.find("warn: rpc: unknown token from 127.0.0.1:");
  CHECK(first != std::string::npos);
  CHECK(log.find("unknown token from", first + 30) == std::string::npos);
  for (const auto& t : wrongTokens) CHECK(log.find(t) == std::string::npos);
  CHECK(log.find("chorus_") == std::string::npos);

  auto alice = n.client("alice");
  CHECK(alice->principal() == "alice");
  CHECK(alice->roles() == std::vector<std::string>{"writer"});
  CHECK(alice->get("p1", "alice").ok());
  CHECK(n.node->metrics().authFailures() == 3);
}

TEST_CASE("auth: every operation by every role, allowed and refused") {
  const char* roles[] = {"reader", "writer", "moderator", "merchant", "admin"};
  std::map<std::string, std::string> principals;
  for (const char* r : roles) principals[std::string("as-") + r] = r;
  AuthNode n(principals);
  // Every principal has a review of its own; "zed" has one to vote on.
  for (const auto& [id, _] : principals) REQUIRE(n.node->put("p", id, 3, "", "").ok());
  REQUIRE(n.node->put("p", "zed", 3, "", "").ok());

  struct Op {
    const char* name;
    std::vector<std::string> allowedFor;
    std::function<chorus::Status(Client&, const std::string& self)> run;
  };
  auto write = [](WriteRequest r) {
    return [r](Client& c, const std::string& self) -> chorus::Status {
      WriteRequest q = r;
      if (q.author == "SELF") q.author = self;
      if (q.arg == "SELF") q.arg = self;
      auto done = c.write(q);
      if (!done.ok()) return done.error();
      return chorus::okStatus();
    };
  };
  auto status = [](auto result) -> chorus::Status {
    if (!result.ok()) return result.error();
    return chorus::okStatus();
  };
  TempDir backups;  // Admin.backup writes one per role that may
  // In order: erase comes last so the other writes find the review.
  std::vector<Op> ops = {
      {"put", {"writer"}, write(request(WriteOp::kPut, "p", "SELF"))},
      {"vote", {"writer"}, write(request(WriteOp::kVote, "p", "zed", "SELF"))},
      {"unvote", {"writer"}, write(request(WriteOp::kUnvote, "p", "zed", "SELF"))},
      {"tag", {"writer", "moderator"}, write(request(WriteOp::kTag, "p", "SELF", "t"))},
      {"untag", {"writer", "moderator"}, write(request(WriteOp::kUntag, "p", "SELF", "t"))},
      {"moderate", {"moderator"}, write(request(WriteOp::kModerate, "p", "zed", "why"))},
      {"reply", {"merchant"}, write(request(WriteOp::kReply, "p", "zed", "thanks"))},
      {"erase", {"writer"}, write(request(WriteOp::kDelete, "p", "SELF"))},
      {"get",
       {"reader", "writer", "moderator", "merchant", "admin"},
       [&](Client& c, const std::string&) { return status(c.get("p", "zed")); }},
      {"list",
       {"reader", "writer", "moderator", "merchant", "admin"},
       [&](Client& c, const std::string&) {
         return status(c.list("p", chorus::storage::Order::kNewest, "", 5));
       }},
      {"summary",
       {"reader", "writer", "moderator", "merchant", "admin"},
       [&](Client& c, const std::string&) { return status(c.summary("p")); }},
      {"byAuthor",
       {"reader", "writer", "moderator", "merchant", "admin"},
       [&](Client& c, const std::string&) { return status(c.byAuthor("zed", "", 5)); }},
      {"watch",
       {"reader", "writer", "moderator", "merchant", "admin"},
       [&](Client& c, const std::string&) {
         return c.watch(
             "p", [](const chorus::Change&) { return true; }, 10ms);
       }},
      {"status", {"admin"}, [&](Client& c, const std::string&) { return status(c.status()); }},
      {"cluster", {"admin"}, [&](Client& c, const std::string&) { return status(c.cluster()); }},
      {"partition", {"admin"}, [&](Client& c, const std::string&) { return c.partition({"n2"}); }},
      {"heal", {"admin"}, [&](Client& c, const std::string&) { return c.heal(); }},
      {"keys",
       {"admin"},
       [&](Client& c, const std::string&) { return status(c.keys(KeyOp::kList)); }},
      {"backup",
       {"admin"},
       [&](Client& c, const std::string& self) { return status(c.backup(backups.sub(self))); }},
  };
  int checked = 0;
  for (const char* role : roles) {
    std::string self = std::string("as-") + role;
    auto c = n.client(self);
    for (const Op& op : ops) {
      bool allowed =
          std::find(op.allowedFor.begin(), op.allowedFor.end(), role) != op.allowedFor.end();
      auto result = op.run(*c, self);
      std::string roleName = role, opName = op.name;
      CAPTURE(roleName);
      CAPTURE(opName);
      if (allowed) {
        // The cluster methods of a node without a cluster answer unavailable
        // once authorized.
        bool clusterOp = op.allowedFor.size() == 1 && op.allowedFor[0] == "admin" &&
                         std::string(op.name) != "status" && std::string(op.name) != "backup";
        if (clusterOp) {
          REQUIRE_FALSE(result.ok());
          CHECK(result.error().code == ErrorCode::kUnavailable);
        } else {
          CHECK_MESSAGE(result.ok(), result.error().toString());
        }
      } else {
        REQUIRE_FALSE(result.ok());
        CHECK(result.error().code == ErrorCode::kForbidden);
        CHECK(result.error().message.find("role: ") == 0);
        CHECK(result.error().message.find(std::string(self) + " has " + role) != std::string::npos);
      }
      ++checked;
    }
  }
  CHECK(checked == 5 * 19);
  // What the allowed writes did: each writer erased its own review, the
  // moderator's and merchant's writes landed on zed's.
  CHECK(failure(n.node->get("p", "as-writer")).code == ErrorCode::kNotFound);
  CHECK(n.node->get("p", "as-reader").ok());
  auto zed = n.node->get("p", "zed");
  REQUIRE(zed.ok());
  CHECK(zed->moderationReason == "why");
  CHECK(zed->reply == "thanks");
  CHECK(zed->helpful == 0);  // voted, then unvoted
}

TEST_CASE("auth: forged authors and voters are refused and store nothing") {
  AuthNode n(Principals{{"alice", "writer"}, {"bob", "writer"}, {"carol", "writer"}});
  auto bob = n.client("bob");
  REQUIRE(bob->write(request(WriteOp::kPut, "p1", "bob")).ok());
  bob.reset();
  auto alice = n.client("alice");

  auto put = alice->write(request(WriteOp::kPut, "p1", "carol"));
  REQUIRE_FALSE(put.ok());
  CHECK(put.error().message ==
        "author: put of a review by carol needs principal carol; you are alice");
  CHECK(failure(n.node->get("p1", "carol")).code == ErrorCode::kNotFound);

  auto erase = alice->write(request(WriteOp::kDelete, "p1", "bob"));
  REQUIRE_FALSE(erase.ok());
  CHECK(erase.error().message ==
        "author: erase of a review by bob needs principal bob; you are alice");
  auto tag = alice->write(request(WriteOp::kTag, "p1", "bob", "spam"));
  REQUIRE_FALSE(tag.ok());
  CHECK(isForbidden(tag.error(), "needs principal bob (or the moderator role); you are alice"));
  auto overwrite = alice->write(request(WriteOp::kPut, "p1", "bob"));
  REQUIRE_FALSE(overwrite.ok());
  CHECK(isForbidden(overwrite.error(), "needs principal bob"));

  auto forgedVote = alice->write(request(WriteOp::kVote, "p1", "bob", "carol"));
  REQUIRE_FALSE(forgedVote.ok());
  CHECK(forgedVote.error().message == "voter: you can only vote as yourself (alice), not as carol");
  auto forgedUnvote = alice->write(request(WriteOp::kUnvote, "p1", "bob", "carol"));
  REQUIRE_FALSE(forgedUnvote.ok());
  CHECK(isForbidden(forgedUnvote.error(), "you can only vote as yourself"));

  auto review = n.node->get("p1", "bob");
  REQUIRE(review.ok());
  CHECK(review->rating == 4);
  CHECK(review->tags.empty());
  CHECK(review->helpful == 0);
  CHECK_FALSE(review->deleted);
  CHECK(n.node->metrics().errors(chorus::api::Metrics::kPut) == 2);
}

TEST_CASE("auth: one vote per principal") {
  AuthNode n(Principals{{"alice", "writer"}, {"bob", "writer"}, {"carol", "writer"}});
  REQUIRE(n.node->put("p1", "bob", 5, "", "").ok());
  {
    auto alice = n.client("alice");
    CHECK(alice->write(request(WriteOp::kVote, "p1", "bob", "alice"))->helpful == 1);
  }
  {
    auto carol = n.client("carol");
    CHECK(carol->write(request(WriteOp::kVote, "p1", "bob", "carol"))->helpful == 2);
  }
  auto alice = n.client("alice");
  CHECK(alice->write(request(WriteOp::kVote, "p1", "bob", "alice"))->helpful == 2);
  CHECK(n.node->get("p1", "bob")->helpful == 2);
}

TEST_CASE("limits: an oversized request is refused; the server keeps serving") {
  chorus::RpcLimits limits;
  limits.maxMessageBytes = 64 * 1024;
  AuthNode n(Principals{{"alice", "writer"}}, limits);
  {
    auto alice = n.client("alice");
    WriteRequest big = request(WriteOp::kPut, "p1", "alice");
    big.body = std::string(100 * 1024, 'x');
    auto r = alice->write(big);
    REQUIRE_FALSE(r.ok());
    // Cap'n Proto refuses the frame and drops the connection: the client
    // sees the connection lost, and nothing was stored.
    CHECK(r.error().code == ErrorCode::kUnavailable);
    CHECK(r.error().message.find("Message is too large") != std::string::npos);
    CHECK(failure(n.node->get("p1", "alice")).code == ErrorCode::kNotFound);
  }
  auto alice = n.client("alice");
  WriteRequest fits = request(WriteOp::kPut, "p1", "alice");
  fits.body = std::string(16 * 1024, 'y');
  REQUIRE(alice->write(fits).ok());
  CHECK(n.node->get("p1", "alice")->body.size() == 16 * 1024);
}

TEST_CASE("limits: calls over the rate get overloaded, later calls succeed") {
  chorus::RpcLimits limits;
  limits.maxCallsPerSecond = 20;
  limits.callBurst = 10;
  AuthNode n(Principals{{"alice", "writer"}}, limits);
  // authenticate took one token.
  auto alice = n.client("alice");
  auto calls = kj::heapArrayBuilder<kj::Promise<void>>(60);
  int ok = 0, limited = 0, other = 0;
  for (int i = 0; i < 60; ++i) {
    auto req = alice->reviews().putRequest();
    req.setProduct("p1");
    req.setAuthor("alice");
    req.setRating(static_cast<uint8_t>(1 + i % 5));
    calls.add(req.send().then([&](auto resp) {
      if (!resp.hasError()) {
        ++ok;
      } else if (resp.getError().getCode() == chorus::api::wire::ErrorCode::OVERLOADED &&
                 std::string(resp.getError().getMessage().cStr())
                         .find("rate limit: 20 calls/s per connection") == 0) {
        ++limited;
      } else {
        ++other;
      }
    }));
  }
  kj::joinPromises(calls.finish()).wait(alice->waitScope());
  CHECK(other == 0);
  CHECK(ok >= 5);
  CHECK(limited >= 20);  // 9 left in the bucket + 20/s: 60 at once cannot all pass
  CHECK(limited == 60 - ok);
  CHECK(n.node->metrics().rateLimitedCalls() == uint64_t(limited));
  CHECK(n.node->status()->stats.writes == uint64_t(ok));  // refused before queued

  std::this_thread::sleep_for(300ms);  // ~6 tokens back
  CHECK(alice->get("p1", "alice").ok());
  CHECK(alice->summary("p1").ok());
}

namespace {

// A plain TCP connection to `address` ("127.0.0.1:port"); -1 on failure.
int rawConnect(const std::string& address) {
  auto colon = address.rfind(':');
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr);
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

TEST_CASE("limits: strangers do not count toward the cap; authenticated ones over it are refused") {
  chorus::RpcLimits limits;
  limits.maxConnections = 2;
  AuthNode n(Principals{{"alice", "reader"}}, limits);
  // Two strangers (no token) hold connections: they are not authenticated,
  // so they do not take the slots token holders need.
  int a = rawConnect(n.node->rpcAddress());
  int b = rawConnect(n.node->rpcAddress());
  REQUIRE(a >= 0);
  REQUIRE(b >= 0);
  for (int i = 0; i < 500 && n.node->metrics().unauthenticatedConnections() < 2; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  CHECK(n.node->metrics().unauthenticatedConnections() == 2);
  Client::Options o;
  o.token = n.tokens["alice"];
  o.timeout = 2s;
  // Two authenticated connections, each held by a thread of its own (a
  // thread holds one Client) until `release`.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::vector<std::promise<bool>> held(2);
  std::vector<std::thread> holders;
  for (int i = 0; i < 2; ++i) {
    holders.emplace_back([&, i] {
      auto c = Client::connect(n.node->rpcAddress(), o);
      held[i].set_value(c.ok() && (*c)->summary("p").ok());
      released.wait();
    });
  }
  for (auto& h : held) CHECK(h.get_future().get());
  // A third authenticated connection is over the cap: authenticate answers
  // overloaded, counted.
  auto third = Client::connect(n.node->rpcAddress(), o);
  REQUIRE_FALSE(third.ok());
  CHECK(third.error().code == ErrorCode::kOverloaded);
  CHECK(third.error().message.find("2 authenticated connections are open") == 0);
  CHECK(n.node->metrics().connectionsRefused() == 1);
  third = chorus::Error{ErrorCode::kInternal, "closed"};

  release.set_value();
  for (auto& t : holders) t.join();
  for (int i = 0; i < 500 && n.node->metrics().render({}, 0).find("chorus_rpc_connections 2") ==
                                 std::string::npos;
       ++i) {
    std::this_thread::sleep_for(10ms);  // until the server noticed the disconnects
  }
  auto again = Client::connect(n.node->rpcAddress(), o);
  REQUIRE_MESSAGE(again.ok(), again.error().toString());
  CHECK((*again)->summary("p").ok());
  ::close(a);
  ::close(b);
}

TEST_CASE(
    "limits: a stranger is closed at the auth deadline; the per-address cap evicts the oldest") {
  chorus::RpcLimits limits;
  limits.authTimeout = 300ms;
  limits.maxUnauthenticatedPerAddress = 3;
  AuthNode n(Principals{{"alice", "reader"}}, limits);
  std::vector<int> fds;
  for (int i = 0; i < 5; ++i) {
    fds.push_back(rawConnect(n.node->rpcAddress()));
    REQUIRE(fds.back() >= 0);
  }
  auto closedBy = [&](chorus::api::Metrics::CloseReason r) {
    return n.node->metrics().closedBy(r);
  };
  for (int i = 0; i < 500 && closedBy(chorus::api::Metrics::kEvicted) < 2; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  CHECK(closedBy(chorus::api::Metrics::kEvicted) == 2);  // 5 from one address, 3 allowed
  CHECK(n.node->metrics().unauthenticatedConnections() == 3);
  // An authenticated client stays past the deadline; the strangers do not.
  Client::Options o;
  o.token = n.tokens["alice"];
  auto alice = Client::connect(n.node->rpcAddress(), o);
  REQUIRE_MESSAGE(alice.ok(), alice.error().toString());
  for (int i = 0; i < 300 && n.node->metrics().unauthenticatedConnections() > 0; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  CHECK(n.node->metrics().unauthenticatedConnections() == 0);
  CHECK(closedBy(chorus::api::Metrics::kAuthTimeout) >= 2);
  CHECK((*alice)->summary("p").ok());
  for (int fd : fds) ::close(fd);
}

TEST_CASE("Admin.keys: list, install, use, remove; the keys themselves never come back") {
  AuthNode n(Principals{{"ops", "admin"}}, {}, true);
  auto ops = n.client("ops");
  auto initial = ops->keys(KeyOp::kList);
  REQUIRE_MESSAGE(initial.ok(), initial.error().toString());
  REQUIRE(initial->size() == 1);
  CHECK(initial->at(0).primary);
  CHECK(initial->at(0).fingerprint.size() == 8);
  const std::string old = initial->at(0).fingerprint;

  std::string fresh = chorus::gossip::generateClusterKey();
  auto installed = ops->keys(KeyOp::kInstall, fresh);
  REQUIRE_MESSAGE(installed.ok(), installed.error().toString());
  REQUIRE(installed->size() == 2);
  CHECK(installed->at(0).fingerprint == old);  // primary first, still the old one
  CHECK(installed->at(0).primary);
  const std::string added = installed->at(1).fingerprint;
  CHECK_FALSE(installed->at(1).primary);
  for (const auto& k : *installed) CHECK(k.fingerprint.find(fresh) == std::string::npos);

  auto used = ops->keys(KeyOp::kUse, added);
  REQUIRE_MESSAGE(used.ok(), used.error().toString());
  CHECK(used->at(0).fingerprint == added);
  CHECK(used->at(0).primary);

  auto removePrimary = ops->keys(KeyOp::kRemove, added);
  REQUIRE_FALSE(removePrimary.ok());
  CHECK(removePrimary.error().code == ErrorCode::kInvalidArgument);
  auto removed = ops->keys(KeyOp::kRemove, old);
  REQUIRE_MESSAGE(removed.ok(), removed.error().toString());
  REQUIRE(removed->size() == 1);
  CHECK(removed->at(0).fingerprint == added);
  CHECK(n.node->keys(KeyOp::kList, "")->size() == 1);

  auto malformed = ops->keys(KeyOp::kInstall, "not-a-key");
  REQUIRE_FALSE(malformed.ok());
  CHECK(malformed.error().code == ErrorCode::kInvalidArgument);
  auto huge = ops->keys(KeyOp::kInstall, std::string(1000, 'A'));
  REQUIRE_FALSE(huge.ok());
  CHECK(huge.error().message.find("key: at most 256 bytes") == 0);
  auto unknown = ops->keys(KeyOp::kUse, "00000000");
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().code == ErrorCode::kNotFound);
}

TEST_CASE("no-auth: every client is admin; authenticate accepts any token") {
  TempDir tmp;
  Node::Options o;
  o.nodeId = "n";
  o.dataDir = tmp.sub("data");
  o.listen = "127.0.0.1:0";
  o.rpc.noAuth = true;
  auto node = Node::open(std::move(o));
  REQUIRE(node.ok());
  {
    auto plain = Client::connect((*node)->rpcAddress());
    REQUIRE(plain.ok());
    CHECK((*plain)->write(request(WriteOp::kPut, "p1", "bob")).ok());
    CHECK((*plain)->write(request(WriteOp::kVote, "p1", "bob", "carol"))->helpful == 1);
    CHECK((*plain)->status().ok());
    CHECK((*plain)->principal().empty());
  }
  Client::Options withToken;
  withToken.token = "chorus_anything";
  auto c = Client::connect((*node)->rpcAddress(), withToken);
  REQUIRE_MESSAGE(c.ok(), c.error().toString());
  CHECK((*c)->principal().empty());
  CHECK((*c)->roles().size() == 5);
  CHECK((*c)->write(request(WriteOp::kDelete, "p1", "bob")).ok());
  CHECK((*node)->metrics().authFailures() == 0);
}

TEST_CASE("auth: a reloaded tokens file admits new tokens and revokes removed ones at once") {
  AuthNode n({{"alice", "writer"}, {"bob", "writer"}});
  // alice and bob stay connected across the reload, each on a thread of its
  // own (a thread holds one Client at a time).
  struct Outcome {
    bool before = false;
    std::optional<chorus::Error> afterWrite, afterRead;
  };
  std::promise<void> reloaded;
  std::shared_future<void> reloadedF = reloaded.get_future().share();
  std::vector<std::promise<void>> connected(2);
  std::vector<Outcome> outcome(2);
  std::vector<std::thread> threads;
  const std::vector<std::string> who = {"alice", "bob"};
  for (size_t i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      Client::Options o;
      o.token = n.tokens.at(who[i]);
      auto c = Client::connect(n.node->rpcAddress(), o);
      if (c.ok()) outcome[i].before = (*c)->write(request(WriteOp::kPut, "p", who[i])).ok();
      connected[i].set_value();
      reloadedF.wait();
      if (!c.ok()) return;
      auto w = (*c)->write(request(WriteOp::kPut, "p", who[i]));
      if (!w.ok()) outcome[i].afterWrite = w.error();
      auto r = (*c)->get("p", who[i]);
      if (!r.ok()) outcome[i].afterRead = r.error();
    });
  }
  for (auto& c : connected) c.get_future().wait();

  // The operator drops alice, demotes bob to reader and adds carol.
  std::string carol = chorus::api::newToken();
  std::string text = *chorus::api::tokenLine("bob", "reader", n.tokens.at("bob")) + "\n" +
                     *chorus::api::tokenLine("carol", "writer", carol) + "\n";
  std::string path = n.node->options().rpc.tokensFile;
  auto rewrite = [&](const std::string& content) {
    FILE* f = std::fopen(path.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fputs(content.c_str(), f);
    std::fclose(f);
  };
  rewrite(text);
  auto revoked = n.node->reloadTokens();
  reloaded.set_value();
  for (auto& t : threads) t.join();
  REQUIRE_MESSAGE(revoked.ok(), revoked.error().toString());
  CHECK(*revoked == 1);
  CHECK(outcome[0].before);
  CHECK(outcome[1].before);
  // Open connections follow the new file at their next call.
  REQUIRE(outcome[0].afterWrite.has_value());
  CHECK(isForbidden(*outcome[0].afterWrite, "token revoked"));
  REQUIRE(outcome[0].afterRead.has_value());
  CHECK(isForbidden(*outcome[0].afterRead, "token revoked"));
  REQUIRE(outcome[1].afterWrite.has_value());
  CHECK(isForbidden(*outcome[1].afterWrite, "role"));
  CHECK_FALSE(outcome[1].afterRead.has_value());  // a reader still reads

  // New connections too: alice's token is unknown now, carol's works.
  {
    Client::Options o;
    o.token = n.tokens.at("alice");
    auto again = Client::connect(n.node->rpcAddress(), o);
    CHECK_FALSE((again.ok() && (*again)->get("p", "bob").ok()));
  }
  Client::Options o;
  o.token = carol;
  auto c = Client::connect(n.node->rpcAddress(), o);
  REQUIRE_MESSAGE(c.ok(), c.error().toString());
  CHECK((*c)->write(request(WriteOp::kPut, "p", "carol")).ok());

  // A broken file is refused and the tokens in use stay.
  rewrite("carol writer not-a-hash\n");
  auto broken = n.node->reloadTokens();
  REQUIRE_FALSE(broken.ok());
  CHECK(broken.error().code == ErrorCode::kInvalidArgument);
  CHECK((*c)->get("p", "carol").ok());
}

TEST_CASE("limits: watches per connection and per node; a reload ends a revoked token's watches") {
  chorus::RpcLimits limits;
  limits.maxWatchesPerConnection = 2;
  limits.maxWatches = 3;
  AuthNode n(Principals{{"alice", "reader"}, {"bob", "reader"}}, limits);
  // Each principal on a thread of its own (a thread holds one Client),
  // registering watches in turn: alice 3 (the third over her cap), then bob
  // 2 (the second over the node's cap).
  struct Outcome {
    int ok = 0;
    std::vector<std::string> refusals;
  };
  auto watchMany = [&](const std::string& who, int count, Outcome& out, std::promise<void>& done,
                       std::shared_future<void> release) {
    Client::Options o;
    o.token = n.tokens.at(who);
    auto c = Client::connect(n.node->rpcAddress(), o);
    std::vector<chorus::api::wire::WatchHandle::Client> handles;
    if (c.ok()) {
      for (int i = 0; i < count; ++i) {
        auto q = (*c)->reviews().watchRequest();
        q.setProduct("p");
        q.setObserver(chorus::api::wire::WatchObserver::Client(
            KJ_EXCEPTION(FAILED, "not called in this test")));
        auto resp = q.send().wait((*c)->waitScope());
        if (!resp.hasError()) {
          ++out.ok;
          handles.push_back(resp.getHandle());
        } else {
          CHECK(resp.getError().getCode() == chorus::api::wire::ErrorCode::OVERLOADED);
          out.refusals.emplace_back(resp.getError().getMessage().cStr());
        }
      }
    }
    done.set_value();
    release.wait();
  };
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  Outcome alice, bob;
  std::promise<void> aliceDone, bobDone;
  std::thread a([&] { watchMany("alice", 3, alice, aliceDone, released); });
  aliceDone.get_future().wait();
  std::thread b([&] { watchMany("bob", 2, bob, bobDone, released); });
  bobDone.get_future().wait();
  CHECK(alice.ok == 2);
  REQUIRE(alice.refusals.size() == 1);
  CHECK(alice.refusals[0] == "at most 2 watches per connection; drop one first");
  CHECK(bob.ok == 1);
  REQUIRE(bob.refusals.size() == 1);
  CHECK(bob.refusals[0] == "this node serves at most 3 watches; retry later");
  CHECK(n.node->metrics().watchesRefused() == 2);
  CHECK(n.node->metrics().render({}, 0).find("chorus_watches 3") != std::string::npos);

  // alice's token is revoked: her two watches end at the reload, while her
  // connection is still open; bob's stays.
  std::string path = n.node->options().rpc.tokensFile;
  FILE* f = std::fopen(path.c_str(), "w");
  REQUIRE(f != nullptr);
  std::fputs((*chorus::api::tokenLine("bob", "reader", n.tokens.at("bob")) + "\n").c_str(), f);
  std::fclose(f);
  auto revoked = n.node->reloadTokens();
  REQUIRE(revoked.ok());
  CHECK(*revoked == 1);
  CHECK(n.node->metrics().render({}, 0).find("chorus_watches 1") != std::string::npos);
  CHECK(n.node->metrics().unauthenticatedConnections() == 1);  // alice's, on its deadline
  release.set_value();
  a.join();
  b.join();
}

TEST_CASE("auth: an expired token is refused as unauthenticated, at authenticate and later") {
  AuthNode n(Principals{{"alice", "writer"}, {"bob", "writer"}});
  auto bob = n.client("bob");
  REQUIRE(bob->get("p1", "alice").error().code == ErrorCode::kNotFound);  // authenticated
  // Rewrite the file: alice's token expired an hour ago, bob's expires in 2 s.
  int64_t now = static_cast<int64_t>(std::time(nullptr));
  std::string text =
      *chorus::api::tokenLine("alice", "writer", n.tokens["alice"], now - 7200, now - 3600) + "\n" +
      *chorus::api::tokenLine("bob", "writer", n.tokens["bob"], now - 60, now + 2) + "\n";
  FILE* f = std::fopen(n.tmp.sub("tokens").c_str(), "w");
  REQUIRE(f != nullptr);
  std::fputs(text.c_str(), f);
  std::fclose(f);
  REQUIRE(n.node->reloadTokens().ok());

  // Another thread: a thread has one client event loop, bob's.
  auto alice = std::async(std::launch::async, [&] {
                 Client::Options o;
                 o.token = n.tokens["alice"];
                 auto c = Client::connect(n.node->rpcAddress(), o);
                 return c.ok() ? std::string("connected") : c.error().message;
               }).get();
  CHECK(alice.rfind("unauthenticated: token expired at ", 0) == 0);
  CHECK(alice.find("(principal alice)") != std::string::npos);

  // bob's session keeps working until the expiry, then every call is refused.
  CHECK(bob->get("p1", "alice").error().code == ErrorCode::kNotFound);
  while (std::time(nullptr) < now + 3) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto refused = bob->get("p1", "alice");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == ErrorCode::kForbidden);
  CHECK(refused.error().message.rfind("unauthenticated: token expired at ", 0) == 0);
}
