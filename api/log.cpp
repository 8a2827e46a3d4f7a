#include "api/log.h"

#include <atomic>
#include <cstdarg>
#include <cstdio>

namespace chorus::api {

namespace {
std::atomic<int> gLevel{static_cast<int>(LogLevel::kInfo)};
constexpr const char* kNames[] = {"error", "warn", "info", "debug"};
}  // namespace

void setLogLevel(LogLevel level) { gLevel = static_cast<int>(level); }
LogLevel logLevel() { return static_cast<LogLevel>(gLevel.load()); }

std::optional<LogLevel> parseLogLevel(std::string_view name) {
  for (int i = 0; i < 4; ++i) {
    if (name == kNames[i]) return static_cast<LogLevel>(i);
  }
  return std::nullopt;
}

void logf(LogLevel level, const char* format, ...) {
  if (static_cast<int>(level) > gLevel.load()) return;
  char buf[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buf, sizeof buf, format, args);
  va_end(args);
  std::fprintf(stderr, "chorus: %s: %s\n", kNames[static_cast<int>(level)], buf);
}

}  // namespace chorus::api
