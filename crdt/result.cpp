#include "result.h"

namespace chorus {

const char* errorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return "invalid-argument";
    case ErrorCode::kNotFound:
      return "not-found";
    case ErrorCode::kCorruption:
      return "corruption";
    case ErrorCode::kClockDrift:
      return "clock-drift";
    case ErrorCode::kIo:
      return "io";
    case ErrorCode::kBusy:
      return "busy";
    case ErrorCode::kOverloaded:
      return "overloaded";
    case ErrorCode::kForbidden:
      return "forbidden";
    case ErrorCode::kUnavailable:
      return "unavailable";
    case ErrorCode::kInternal:
      return "internal";
  }
  return "unknown";
}

std::string Error::toString() const { return std::string(errorCodeName(code)) + ": " + message; }

}  // namespace chorus
