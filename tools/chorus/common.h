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
    "Exit codes: 0 ok; 1 usage error (unknown flag or command, missing argument, value out\n"
    "of range); 2 not found; 3 invalid argument (refused by the node, unknown node id);\n"
    "4 node unavailable, overloaded or unreachable; 5 any other error;\n"
    "6 `cluster converge` timed out before every node had the same data;\n"
    "7 refused: no token, an unknown or expired token, or the token's principal may not do\n"
    "this. With --json, errors are one line on stderr:\n"
    "{\"error\":{\"code\":\"not-found\",\"field\":null,\"message\":\"...\"}}";

struct Globals {
  std::string connect;
  bool json = false;
  std::string timeout = "10s";  // --timeout, parsed into timeoutMs after parsing
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
// Lowercase hex of `size` bytes (a backup's root and checksum).
std::string hexBytes(const uint8_t* bytes, size_t size);

// Connects to g.connect, runs `body`, and maps failures to exit codes.
int withClient(const Globals& g, const std::function<int(api::Client&)>& body);

// Prints "chorus: <error>" to stderr (with --json: recorded for
// finishErrors) and returns its exit code.
int fail(const Error& e);

// An error the CLI found itself: printf-style message, printed as
// "chorus: <message>" (with --json: recorded for finishErrors). The caller
// returns the exit code.
void errorf(const char* format, ...) __attribute__((format(printf, 1, 2)));

// --json was given: errors are printed by finishErrors as JSON.
void setJsonErrors(bool on);

// At exit: with --json and a non-zero `code`, prints the recorded errors
// to stderr as one JSON object
//   {"error":{"code":"not-found","field":"rating","message":"..."}}
// (code: the error's name, "unauthenticated", or from the exit code:
// "usage", "not-converged"; field: null unless the message names one).
// Returns `code`.
int finishErrors(int code);

// A usage error (exit 1) in the same shape: `message` as text, or JSON.
int usageError(const std::string& message);
template <typename T>
int fail(const Result<T>& r) {
  return fail(r.error());
}

// `chorus cluster ...`: status, partition, heal, converge, keys. Sets `result`.
void addClusterCommands(CLI::App& app, const Globals& g, int& result);

// `chorus token create|list|revoke`: client tokens and the tokens file.
void addTokenCommands(CLI::App& app, const Globals& g, int& result);

// Creates `path` (O_EXCL: never over an existing file, never through a
// symlink) with mode 0600 whatever the umask, writes `text`, fsyncs. On
// failure nothing is left behind. `what` names the content in messages.
Status writeSecretFile(const std::string& path, const std::string& text, const char* what);

}  // namespace chorus::cli
