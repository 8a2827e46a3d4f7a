// Minimal leveled logging to stderr, shared by the node and the tools.
// Thread-safe (one fprintf per line).
#pragma once

#include <optional>
#include <string_view>

namespace chorus::api {

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

void setLogLevel(LogLevel level);
LogLevel logLevel();
// "error", "warn", "info", "debug"; nullopt for anything else.
std::optional<LogLevel> parseLogLevel(std::string_view name);

// printf-style; prints "chorus: <level>: <message>\n" when level is enabled.
void logf(LogLevel level, const char* format, ...) __attribute__((format(printf, 2, 3)));

}  // namespace chorus::api
