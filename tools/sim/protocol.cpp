#include "tools/sim/protocol.h"

#include <map>
#include <set>
#include <unordered_set>

namespace chorus::sim {

namespace {

class CoreProtocol final : public Protocol {
 public:
  CoreProtocol(gossip::CoreOptions options, gossip::ReplicaStore& store)
      : core_(std::move(options), store) {}
  void start(uint64_t now, const std::vector<gossip::KnownMember>& known) override {
    core_.start(now, known);
  }
  void tick(uint64_t now) override { core_.tick(now); }
  gossip::ConnId accepted(uint64_t now, std::string remote) override {
    return core_.accepted(now, std::move(remote));
  }
  void opened(uint64_t now, gossip::ConnId conn) override { core_.opened(now, conn); }
  void closed(uint64_t now, gossip::ConnId conn) override { core_.closed(now, conn); }
  void received(uint64_t now, gossip::ConnId conn, std::string_view body) override {
    core_.received(now, conn, body);
  }
  void drained(gossip::ConnId conn, uint64_t bytes, uint64_t deltas) override {
    core_.drained(conn, bytes, deltas);
  }
  void publish(uint64_t now, std::vector<std::string> deltas) override {
    core_.publish(now, std::move(deltas));
  }
  void merged(uint64_t ticket) override { core_.merged(ticket); }
  void leave(uint64_t now) override { core_.leave(now); }
  bool leaveDone() const override { return core_.leaveDone(); }
  void stop(uint64_t now) override { core_.stop(now); }
  std::vector<gossip::Action> takeActions() override { return core_.takeActions(); }
  std::vector<gossip::MemberInfo> members() const override { return core_.members(); }
  gossip::ClusterStats stats() const override { return core_.stats(); }

 private:
  gossip::ReplicationCore core_;
};

uint64_t fnv(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

class FloodProtocol final : public Protocol {
 public:
  FloodProtocol(int self, std::vector<std::string> addresses)
      : self_(self), addresses_(std::move(addresses)) {}

  void start(uint64_t now, const std::vector<gossip::KnownMember>&) override {
    int n = int(addresses_.size());
    for (int offset : {1, 2, 7, 31, 127, 511}) {
      if (offset >= n) break;
      targets_.insert(addresses_[size_t((self_ + offset) % n)]);
    }
    dialMissing(now);
  }

  void tick(uint64_t now) override {
    if (now - lastDial_ >= 1000) dialMissing(now);
    if (now - lastBeat_ < 200) return;
    lastBeat_ = now;
    auto beat = std::make_shared<const std::string>(16, 'H');
    for (auto id : open_) actions_.push_back(gossip::SendFrame{id, beat, 0});
  }

  gossip::ConnId accepted(uint64_t, std::string) override { return nextConn_++; }
  void opened(uint64_t, gossip::ConnId conn) override { open_.insert(conn); }
  void closed(uint64_t, gossip::ConnId conn) override {
    open_.erase(conn);
    for (auto it = dialled_.begin(); it != dialled_.end(); ++it) {
      if (it->second == conn) {
        dialled_.erase(it);
        break;
      }
    }
  }

  void received(uint64_t, gossip::ConnId conn, std::string_view body) override {
    if (body.empty() || body[0] != 'D') return;
    body.remove_prefix(1);
    if (!seen_.insert(fnv(body)).second) return;
    auto doc = crdt::ReviewDoc::decode(body);
    if (!doc.ok()) return;
    gossip::Merge merge;
    merge.ticket = nextTicket_++;
    merge.from = "";
    merge.states.push_back(std::move(doc).value());
    actions_.push_back(std::move(merge));
    flood(std::string(body), conn);
  }

  void drained(gossip::ConnId, uint64_t, uint64_t) override {}
  void publish(uint64_t, std::vector<std::string> deltas) override {
    for (auto& d : deltas) {
      seen_.insert(fnv(d));
      flood(std::move(d), 0);
    }
  }
  void merged(uint64_t) override {}
  void leave(uint64_t) override {}
  bool leaveDone() const override { return true; }
  void stop(uint64_t) override {}
  std::vector<gossip::Action> takeActions() override {
    std::vector<gossip::Action> out;
    out.swap(actions_);
    return out;
  }
  std::vector<gossip::MemberInfo> members() const override { return {}; }
  gossip::ClusterStats stats() const override { return {}; }

 private:
  void dialMissing(uint64_t now) {
    lastDial_ = now;
    for (const auto& address : targets_) {
      if (dialled_.count(address)) continue;
      gossip::ConnId id = nextConn_++;
      dialled_[address] = id;
      actions_.push_back(gossip::Dial{id, address});
    }
  }
  void flood(std::string delta, gossip::ConnId except) {
    auto frame = std::make_shared<const std::string>("D" + delta);
    for (auto id : open_) {
      if (id != except) actions_.push_back(gossip::SendFrame{id, frame, 1});
    }
  }

  int self_;
  std::vector<std::string> addresses_;
  std::set<std::string> targets_;
  std::map<std::string, gossip::ConnId> dialled_;
  std::set<gossip::ConnId> open_;
  std::unordered_set<uint64_t> seen_;
  std::vector<gossip::Action> actions_;
  gossip::ConnId nextConn_ = 1;
  uint64_t nextTicket_ = 1;
  uint64_t lastDial_ = 0, lastBeat_ = 0;
};

}  // namespace

std::unique_ptr<Protocol> makeCoreProtocol(gossip::CoreOptions options,
                                           gossip::ReplicaStore& store) {
  return std::make_unique<CoreProtocol>(std::move(options), store);
}

std::unique_ptr<Protocol> makeFloodProtocol(int self, std::vector<std::string> addresses) {
  return std::make_unique<FloodProtocol>(self, std::move(addresses));
}

}  // namespace chorus::sim
