#include "api/validate.h"

#include <string>

namespace chorus::api {

Error FieldError::toError() const {
  return makeError(ErrorCode::kInvalidArgument, field + ": " + message);
}

bool isValidUtf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == 0) return false;
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;  // continuation byte or 0xF8..0xFF as a lead
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) {
      return false;  // overlong
    }
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

namespace {

bool isIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == ':' || c == '@' || c == '-';
}

FieldError fieldError(std::string_view field, std::string message) {
  return FieldError{std::string(field), std::move(message)};
}

}  // namespace

Check checkId(std::string_view field, std::string_view value, const Limits& limits) {
  if (value.empty()) return fieldError(field, "must not be empty");
  if (value.size() > limits.maxIdBytes) {
    return fieldError(field, "must be at most " + std::to_string(limits.maxIdBytes) +
                                 " bytes (got " + std::to_string(value.size()) + ")");
  }
  for (size_t i = 0; i < value.size(); ++i) {
    if (!isIdChar(value[i])) {
      return fieldError(field, "byte " + std::to_string(i) +
                                   " is not allowed; ids use only A-Z a-z 0-9 and . _ : @ -");
    }
  }
  return std::nullopt;
}

Check checkRating(uint32_t rating) {
  if (rating < 1 || rating > 5) {
    return fieldError("rating", "must be 1-5 (got " + std::to_string(rating) + ")");
  }
  return std::nullopt;
}

Check checkText(std::string_view field, std::string_view value, size_t maxBytes) {
  if (value.size() > maxBytes) {
    return fieldError(field, "must be at most " + std::to_string(maxBytes) + " bytes (got " +
                                 std::to_string(value.size()) + ")");
  }
  if (!isValidUtf8(value)) return fieldError(field, "must be valid UTF-8 without NUL bytes");
  return std::nullopt;
}

Check checkKey(std::string_view product, std::string_view author, const Limits& limits) {
  if (auto e = checkId("product", product, limits)) return e;
  return checkId("author", author, limits);
}

Check checkPut(std::string_view product, std::string_view author, uint32_t rating,
               std::string_view title, std::string_view body, const Limits& limits) {
  if (auto e = checkKey(product, author, limits)) return e;
  if (auto e = checkRating(rating)) return e;
  if (auto e = checkText("title", title, limits.maxTitleBytes)) return e;
  return checkText("body", body, limits.maxBodyBytes);
}

Check checkKeyAnd(std::string_view product, std::string_view author, std::string_view field,
                  std::string_view value, const Limits& limits) {
  if (auto e = checkKey(product, author, limits)) return e;
  return checkId(field, value, limits);
}

Check checkModerate(std::string_view product, std::string_view author, std::string_view reason,
                    const Limits& limits) {
  if (auto e = checkKey(product, author, limits)) return e;
  return checkText("reason", reason, limits.maxReasonBytes);
}

Check checkReply(std::string_view product, std::string_view author, std::string_view text,
                 const Limits& limits) {
  if (auto e = checkKey(product, author, limits)) return e;
  return checkText("text", text, limits.maxBodyBytes);
}

}  // namespace chorus::api
