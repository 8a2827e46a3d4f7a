#include "tools/chorus/common.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace chorus::cli {

int exitCodeFor(const Error& e) {
  switch (e.code) {
    case ErrorCode::kNotFound:
      return kExitNotFound;
    case ErrorCode::kInvalidArgument:
      return kExitInvalid;
    case ErrorCode::kUnavailable:
    case ErrorCode::kOverloaded:
      return kExitUnavailable;
    case ErrorCode::kForbidden:
      return kExitDenied;
    default:
      return kExitOther;
  }
}

std::string json(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string hex(const storage::Hash& h) {
  std::string out;
  char buf[3];
  for (uint8_t b : h) {
    std::snprintf(buf, sizeof buf, "%02x", b);
    out += buf;
  }
  return out;
}

Result<std::string> firstLineOf(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in)
    return makeError(ErrorCode::kIo, std::string("cannot read ") + what + " file '" + path + "'");
  std::string line;
  std::getline(in, line);
  size_t b = line.find_first_not_of(" \t\r");
  size_t e = line.find_last_not_of(" \t\r");
  if (b == std::string::npos) {
    return makeError(ErrorCode::kInvalidArgument, std::string(what) + " file '" + path +
                                                      "' is empty (the " + what +
                                                      " goes on its first line)");
  }
  return line.substr(b, e - b + 1);
}

Status resolveToken(Globals& g) {
  if (g.tokenFile.empty() && g.token.empty()) {
    if (const char* t = std::getenv("CHORUS_TOKEN"); t != nullptr && *t != '\0') {
      g.token = t;
      return okStatus();
    }
    if (const char* f = std::getenv("CHORUS_TOKEN_FILE"); f != nullptr && *f != '\0') {
      g.tokenFile = f;
    }
  }
  if (!g.tokenFile.empty()) {
    auto token = firstLineOf(g.tokenFile, "token");
    if (!token.ok()) return token.error();
    g.token = std::move(*token);
  }
  return okStatus();
}

api::Client::Options clientOptions(const Globals& g, std::chrono::milliseconds timeout) {
  api::Client::Options options;
  options.timeout = timeout;
  options.token = g.token;
  return options;
}

int withClient(const Globals& g, const std::function<int(api::Client&)>& body) {
  auto client =
      api::Client::connect(g.connect, clientOptions(g, std::chrono::milliseconds(g.timeoutMs)));
  if (!client.ok()) return fail(client);
  return body(**client);
}

int fail(const Error& e) {
  std::fprintf(stderr, "chorus: %s\n", e.toString().c_str());
  return exitCodeFor(e);
}

}  // namespace chorus::cli
