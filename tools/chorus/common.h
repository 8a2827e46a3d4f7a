// Shared by the `chorus` subcommands: exit codes, global flags, JSON and hex
// formatting, and connecting to the node.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "api/client.h"
#include "crdt/result.h"
#include "storage/store.h"

namespace CLI {
class App;
}  // namespace CLI

namespace chorus::cli {

// Exit codes (documented in --help and README.md).
constexpr int kExitOk = 0;
constexpr int kExitUsage = 1;
constexpr int kExitNotFound = 2;
constexpr int kExitInvalid = 3;
constexpr int kExitUnavailable = 4;
constexpr int kExitOther = 5;
constexpr int kExitNotConverged = 6;
constexpr int kExitDenied = 7;

constexpr const char* kExitHelp =
    "Exit codes: 0 ok; 1 usage error; 2 not found; 3 invalid argument;\n"
    "4 node unavailable, overloaded or unreachable; 5 any other error;\n"
    "6 `cluster converge` timed out before every reachable node had the same data;\n"
    "7 refused: no token, an unknown token, or the token's principal may not do this.";

struct Globals {
  std::string connect;
  bool json = false;
  uint32_t timeoutMs = 10'000;
  // The client token: --token-file, else --token, else $CHORUS_TOKEN, else
  // $CHORUS_TOKEN_FILE (see resolveToken). Empty: connect without one.
  std::string token;
  std::string tokenFile;
};

// The first line of `path`, trimmed; kIo / kInvalidArgument (empty) naming
// the file and `what` it should hold ("token", "key").
Result<std::string> firstLineOf(const std::string& path, const char* what);

// Fills g.token from g.tokenFile or the environment (the flags win).
// kInvalidArgument / kIo naming the file when it cannot be read or is empty.
Status resolveToken(Globals& g);

// Client options for g's token, with `timeout` per call.
api::Client::Options clientOptions(const Globals& g, std::chrono::milliseconds timeout);

int exitCodeFor(const Error& e);

// A JSON string literal (quoted, escaped).
std::string json(const std::string& s);
std::string hex(const storage::Hash& h);

// Connects to g.connect, runs `body`, and maps failures to exit codes.
int withClient(const Globals& g, const std::function<int(api::Client&)>& body);

// Prints "chorus: <error>" to stderr and returns its exit code.
int fail(const Error& e);
template <typename T>
int fail(const Result<T>& r) {
  return fail(r.error());
}

// `chorus cluster ...`: status, partition, heal, converge, keys. Sets `result`.
void addClusterCommands(CLI::App& app, const Globals& g, int& result);

// `chorus token create`: makes a client token and its tokens-file line.
void addTokenCommands(CLI::App& app, int& result);

}  // namespace chorus::cli
