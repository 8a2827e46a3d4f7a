// Kill -9 at random moments: every acknowledged write must be in the store
// when it is reopened, and verify() must pass. The writer is a separate
// program (crash-writer.cpp), named by $CHORUS_CRASH_WRITER.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "storage/helpers.h"
#include "storage/store.h"
#include "support/seed.h"

extern char** environ;

using namespace chorus;
using namespace std::chrono;

namespace {

// A running writer process; killed and reaped by its destructor at the
// latest, so no test path leaves it behind.
class Child {
 public:
  Child(const std::string& program, const std::string& dir, uint64_t seed) {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    std::string seedArg = std::to_string(seed);
    char* argv[] = {const_cast<char*>(program.c_str()), const_cast<char*>(dir.c_str()),
                    seedArg.data(), nullptr};
    int rc = ::posix_spawn(&pid_, program.c_str(), &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    out_ = fds[0];
    REQUIRE_MESSAGE(rc == 0, "cannot start " << program);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    kill();
    if (out_ >= 0) ::close(out_);
  }

  // Reads what the child printed until `deadline` or EOF; returns false at EOF.
  bool readUntil(steady_clock::time_point deadline) {
    char buf[65536];
    for (;;) {
      auto left = duration_cast<milliseconds>(deadline - steady_clock::now()).count();
      if (left <= 0) return true;
      pollfd p{out_, POLLIN, 0};
      int n = ::poll(&p, 1, static_cast<int>(left));
      if (n <= 0) continue;
      ssize_t got = ::read(out_, buf, sizeof buf);
      if (got <= 0) return false;
      output_.append(buf, static_cast<size_t>(got));
    }
  }
  bool printed(const std::string& text) const { return output_.find(text) != std::string::npos; }

  // SIGKILL, reap, then read what was left in the pipe. Returns true if the
  // signal is what ended the child.
  bool kill() {
    if (pid_ <= 0) return false;
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    readUntil(steady_clock::now() + seconds(5));
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
  }

  // Complete lines only: a line cut by the kill was never acknowledged.
  std::vector<std::string> lines() const {
    std::vector<std::string> out;
    size_t start = 0;
    for (size_t nl; (nl = output_.find('\n', start)) != std::string::npos; start = nl + 1) {
      out.push_back(output_.substr(start, nl - start));
    }
    return out;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::string output_;
};

}  // namespace

TEST_CASE("acknowledged writes survive SIGKILL at random moments") {
  const char* program = std::getenv("CHORUS_CRASH_WRITER");
  REQUIRE_MESSAGE(program != nullptr, "set CHORUS_CRASH_WRITER to the storage-crash-writer path");
  uint64_t seed = test::testSeed();
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  test::TempDir dir;
  std::string data = dir.sub("data");

  std::map<crdt::ReviewKey, std::string> titles;          // acknowledged reviews
  std::set<std::pair<crdt::ReviewKey, std::string>> votes;  // acknowledged votes
  const int rounds = test::testCases(60);
  const auto budget = steady_clock::now() + seconds(75);
  int kills = 0;
  int killedWhileWriting = 0;
  for (int round = 0; round < rounds && steady_clock::now() < budget; ++round) {
    CAPTURE(round);
    std::vector<crdt::ReviewKey> newReviews;
    std::vector<std::pair<crdt::ReviewKey, std::string>> newVotes;
    {
      Child child(program, data, seed + static_cast<uint64_t>(round));
      if (rng() % 8 == 0) {
        // Sometimes during start-up: open and first commits.
        child.readUntil(steady_clock::now() + milliseconds(rng() % 15));
      } else {
        auto readyBy = steady_clock::now() + seconds(10);
        while (!child.printed("ready\n") && steady_clock::now() < readyBy) {
          if (!child.readUntil(steady_clock::now() + milliseconds(5))) break;
        }
        REQUIRE_MESSAGE(child.printed("ready\n"), "writer did not start");
        child.readUntil(steady_clock::now() + milliseconds(5 + rng() % 60));
        ++killedWhileWriting;
      }
      if (child.kill()) ++kills;
      for (const std::string& line : child.lines()) {
        std::istringstream in(line);
        std::string kind, product, author, value;
        in >> kind >> product >> author >> value;
        REQUIRE_MESSAGE(kind != "E", line);
        if (kind == "W" && titles.emplace(crdt::ReviewKey{product, author}, value).second) {
          newReviews.push_back({product, author});
        }
        if (kind == "V" && votes.insert({{product, author}, value}).second) {
          newVotes.push_back({{product, author}, value});
        }
      }
    }

    auto store = storage::Store::open(test::optionsFor(data));
    if (!store) FAIL(store.error().toString());
    // Everything acknowledged this round, and a sample of earlier rounds.
    std::vector<crdt::ReviewKey> toCheck = newReviews;
    std::vector<crdt::ReviewKey> all;
    for (const auto& [key, title] : titles) all.push_back(key);
    for (int i = 0; i < 100 && !all.empty(); ++i) toCheck.push_back(all[rng() % all.size()]);
    for (const auto& key : toCheck) {
      auto doc = (*store)->get(key);
      REQUIRE(doc.ok());
      REQUIRE_MESSAGE(doc->has_value(), "acknowledged review lost: " << key.product << "/" << key.author);
      CHECK((*doc)->content().value().title == titles[key]);
    }
    for (const auto& [key, voter] : newVotes) {
      auto doc = (*store)->get(key);
      REQUIRE(doc.ok());
      REQUIRE(doc->has_value());
      CHECK_MESSAGE((*doc)->helpful().contains(voter), "acknowledged vote lost: " << voter);
    }
    auto v = (*store)->verify();
    if (!v) FAIL(v.error().toString());
  }
  MESSAGE("kills: " << kills << ", reviews acknowledged: " << titles.size()
                    << ", votes acknowledged: " << votes.size());
  CHECK(kills >= std::min(rounds, 50));
  CHECK(killedWhileWriting >= kills / 2);
  CHECK(titles.size() > 1000);
}
