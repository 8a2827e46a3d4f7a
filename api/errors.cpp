#include "api/errors.h"

namespace chorus::api {

ApiError apiError(const Error& error) {
  ApiError out;
  switch (error.code) {
    case ErrorCode::kInvalidArgument:
      out.code = ApiCode::kInvalidArgument;
      break;
    case ErrorCode::kNotFound:
      out.code = ApiCode::kNotFound;
      break;
    case ErrorCode::kForbidden:
      out.code = ApiCode::kForbidden;
      break;
    case ErrorCode::kOverloaded:
      out.code = ApiCode::kOverloaded;
      break;
    case ErrorCode::kUnavailable:
    case ErrorCode::kBusy:
      out.code = ApiCode::kUnavailable;
      break;
    case ErrorCode::kClockDrift:
    case ErrorCode::kCorruption:
    case ErrorCode::kIo:
    case ErrorCode::kInternal:
      out.code = ApiCode::kInternal;
      break;
  }
  out.message = error.message;
  if (error.code == ErrorCode::kInvalidArgument || error.code == ErrorCode::kForbidden) {
    auto colon = out.message.find(": ");
    if (colon != std::string::npos && colon > 0 &&
        out.message.find_first_of(" '\"") > colon) {  // a bare field name
      out.field = out.message.substr(0, colon);
      out.message = out.message.substr(colon + 2);
    }
  }
  if (out.code == ApiCode::kInternal && error.code != ErrorCode::kInternal) {
    out.message = std::string(errorCodeName(error.code)) + ": " + out.message;  // keep the cause
  }
  return out;
}

ApiError unauthenticatedError(std::string message) {
  return ApiError{ApiCode::kUnauthenticated, "", std::move(message)};
}

const char* apiCodeName(ApiCode code) {
  switch (code) {
    case ApiCode::kInvalidArgument:
      return "invalidArgument";
    case ApiCode::kNotFound:
      return "notFound";
    case ApiCode::kForbidden:
      return "forbidden";
    case ApiCode::kOverloaded:
      return "overloaded";
    case ApiCode::kUnavailable:
      return "unavailable";
    case ApiCode::kInternal:
      return "internal";
    case ApiCode::kUnauthenticated:
      return "unauthenticated";
  }
  return "internal";
}

int httpStatus(ApiCode code) {
  switch (code) {
    case ApiCode::kInvalidArgument:
      return 400;
    case ApiCode::kUnauthenticated:
      return 401;
    case ApiCode::kForbidden:
      return 403;
    case ApiCode::kNotFound:
      return 404;
    case ApiCode::kOverloaded:
      return 429;
    case ApiCode::kUnavailable:
      return 503;
    case ApiCode::kInternal:
      return 500;
  }
  return 500;
}

}  // namespace chorus::api
