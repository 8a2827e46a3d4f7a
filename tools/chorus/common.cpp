#include "tools/chorus/common.h"

#include <cstdio>

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

int withClient(const Globals& g, const std::function<int(api::Client&)>& body) {
  api::Client::Options options;
  options.timeout = std::chrono::milliseconds(g.timeoutMs);
  auto client = api::Client::connect(g.connect, options);
  if (!client.ok()) return fail(client);
  return body(**client);
}

int fail(const Error& e) {
  std::fprintf(stderr, "chorus: %s\n", e.toString().c_str());
  return exitCodeFor(e);
}

}  // namespace chorus::cli
