#include "tools/chorus/common.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

namespace chorus::cli {

namespace {

struct RecordedError {
  std::string code;  // empty: from the exit code
  std::string message;
};
bool jsonErrors = false;
std::vector<RecordedError> recorded;

const char* codeForExit(int code) {
  switch (code) {
    case kExitUsage:
      return "usage";
    case kExitNotFound:
      return "not-found";
    case kExitInvalid:
      return "invalid-argument";
    case kExitUnavailable:
      return "unavailable";
    case kExitNotConverged:
      return "not-converged";
    case kExitDenied:
      return "forbidden";
    default:
      return "error";
  }
}

void record(std::string code, std::string message) {
  if (!message.empty() && message.back() == '\n') message.pop_back();
  if (!jsonErrors) {
    std::fprintf(stderr, "chorus: %s\n", message.c_str());
    return;
  }
  recorded.push_back({std::move(code), std::move(message)});
}

}  // namespace

void setJsonErrors(bool on) { jsonErrors = on; }

void errorf(const char* format, ...) {
  va_list args;
  va_start(args, format);
  char buf[4096];
  std::vsnprintf(buf, sizeof buf, format, args);
  va_end(args);
  record("", buf);
}

int finishErrors(int code) {
  if (!jsonErrors || recorded.empty()) return code;
  if (code == kExitOk) {  // said on the way, the command still succeeded
    std::string message;
    for (const auto& r : recorded) message += (message.empty() ? "" : "; ") + r.message;
    std::fprintf(stderr, "{\"warning\":{\"message\":%s}}\n", json(message).c_str());
    recorded.clear();
    return code;
  }
  const RecordedError& first = recorded.front();
  std::string name = first.code.empty() ? codeForExit(code) : first.code;
  std::string message;
  for (const auto& r : recorded) message += (message.empty() ? "" : "; ") + r.message;
  // "rating: must be 1-5", "--limit: ...": a bare word before ": " names the field.
  std::string field = "null";
  size_t colon = message.find(": ");
  if (colon != std::string::npos && colon > 0 && message.find_first_of(" '\"") > colon) {
    field = json(message.substr(0, colon));
    message = message.substr(colon + 2);
  }
  std::fprintf(stderr, "{\"error\":{\"code\":%s,\"field\":%s,\"message\":%s}}\n",
               json(name).c_str(), field.c_str(), json(message).c_str());
  recorded.clear();
  return code;
}

int usageError(const std::string& message) {
  record("usage", message);
  return kExitUsage;
}

Status writeSecretFile(const std::string& path, const std::string& text, const char* what) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    if (errno == EEXIST) {
      return makeError(ErrorCode::kInvalidArgument,
                       "--out '" + path + "' exists; a " + what +
                           " file is never overwritten (the secret in it may still be in use): "
                           "remove it first or choose another name");
    }
    return makeError(ErrorCode::kIo, std::string("cannot create ") + what + " file '" + path +
                                         "': " + std::strerror(errno));
  }
  bool ok = ::fchmod(fd, 0600) == 0 &&
            ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            ::fsync(fd) == 0;
  int err = errno;
  ok = ::close(fd) == 0 && ok;
  if (!ok) {
    ::unlink(path.c_str());
    return makeError(ErrorCode::kIo, std::string("cannot write ") + what + " file '" + path +
                                         "': " + std::strerror(err));
  }
  return okStatus();
}

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

std::string hexBytes(const uint8_t* bytes, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (size_t i = 0; i < size; ++i) {
    out += kDigits[bytes[i] >> 4];
    out += kDigits[bytes[i] & 0x0f];
  }
  return out;
}

std::string hex(const storage::Hash& h) { return hexBytes(h.data(), h.size()); }

Result<std::string> firstLineOf(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) {
    return makeError(ErrorCode::kIo, std::string("cannot read ") + what + " file '" + path +
                                         "': " + std::strerror(errno));
  }
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

int fail(const Error& given) {
  static constexpr std::string_view kUnauthenticated = "unauthenticated: ";
  Error e = given;
  // The node says what to do in API terms (call authenticate); here that
  // means a flag or the environment.
  if (e.code == ErrorCode::kForbidden &&
      e.message.rfind("unauthenticated: this node requires a token", 0) == 0) {
    e.message +=
        " (chorus: pass --token-file FILE or --token T, or set $CHORUS_TOKEN_FILE or "
        "$CHORUS_TOKEN)";
  }
  if (!jsonErrors) {
    std::fprintf(stderr, "chorus: %s\n", e.toString().c_str());
  } else if (e.code == ErrorCode::kForbidden && e.message.rfind(kUnauthenticated, 0) == 0) {
    record("unauthenticated", e.message.substr(kUnauthenticated.size()));
  } else {
    record(errorCodeName(e.code), e.message);
  }
  return exitCodeFor(e);
}

}  // namespace chorus::cli
