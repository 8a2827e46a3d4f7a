#include "api/http/json.h"

#include <kj/debug.h>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <set>
#include <system_error>
#include <utility>
#include <vector>

namespace chorus::api::http {

namespace {

// The length of the valid UTF-8 sequence starting at s[i], or 0.
size_t utf8Sequence(std::string_view s, size_t i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = byte(i);
  size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
  if (n == 0 || c > 0xF4 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
  }
  unsigned char c1 = byte(i + 1);
  if (c == 0xE0 && c1 < 0xA0) return 0;   // overlong
  if (c == 0xED && c1 >= 0xA0) return 0;  // a surrogate
  if (c == 0xF0 && c1 < 0x90) return 0;   // overlong
  if (c == 0xF4 && c1 >= 0x90) return 0;  // above U+10FFFF
  return n;
}

template <typename T>
void appendNumber(std::string& out, T value) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, value);
  out.append(buf, r.ptr);
}

void appendValue(std::string& out, capnp::DynamicValue::Reader v, capnp::Type type) {
  switch (type.which()) {
    case capnp::schema::Type::BOOL:
      out += v.as<bool>() ? "true" : "false";
      return;
    case capnp::schema::Type::INT8:
    case capnp::schema::Type::INT16:
    case capnp::schema::Type::INT32:
    case capnp::schema::Type::INT64:
      appendNumber(out, v.as<int64_t>());
      return;
    case capnp::schema::Type::UINT8:
    case capnp::schema::Type::UINT16:
    case capnp::schema::Type::UINT32:
    case capnp::schema::Type::UINT64:
      appendNumber(out, v.as<uint64_t>());
      return;
    case capnp::schema::Type::FLOAT32:
    case capnp::schema::Type::FLOAT64: {
      double d = v.as<double>();
      if (std::isfinite(d)) {
        appendNumber(out, d);
      } else {
        out += "null";
      }
      return;
    }
    case capnp::schema::Type::TEXT: {
      auto t = v.as<capnp::Text>();
      appendJsonString(out, std::string_view(t.cStr(), t.size()));
      return;
    }
    case capnp::schema::Type::DATA: {
      static const char kHex[] = "0123456789abcdef";
      out += '"';
      for (kj::byte b : v.as<capnp::Data>()) {
        out += kHex[b >> 4];
        out += kHex[b & 15];
      }
      out += '"';
      return;
    }
    case capnp::schema::Type::LIST: {
      auto list = v.as<capnp::DynamicList>();
      capnp::Type element = type.asList().getElementType();
      out += '[';
      for (uint i = 0; i < list.size(); ++i) {
        if (i > 0) out += ',';
        appendValue(out, list[i], element);
      }
      out += ']';
      return;
    }
    case capnp::schema::Type::ENUM: {
      auto e = v.as<capnp::DynamicEnum>();
      KJ_IF_MAYBE (known, e.getEnumerant()) {
        out += '"';
        out += known->getProto().getName().cStr();  // identifiers: nothing to escape
        out += '"';
      } else {
        appendNumber(out, e.getRaw());  // a value newer than this build
      }
      return;
    }
    case capnp::schema::Type::STRUCT:
      appendJsonStruct(out, v.as<capnp::DynamicStruct>());
      return;
    case capnp::schema::Type::VOID:
    case capnp::schema::Type::INTERFACE:
    case capnp::schema::Type::ANY_POINTER:
      out += "null";  // not reached: appendJsonStruct leaves such fields out
      return;
  }
  out += "null";
}

void appendField(std::string& out, bool& first, capnp::DynamicStruct::Reader s,
                 capnp::StructSchema::Field field, std::initializer_list<std::string_view> skip) {
  auto proto = field.getProto();
  std::string_view name(proto.getName().cStr(), proto.getName().size());
  for (auto skipped : skip) {
    if (skipped == name) return;
  }
  capnp::Type type = field.getType();
  switch (type.which()) {
    case capnp::schema::Type::VOID:
    case capnp::schema::Type::INTERFACE:
    case capnp::schema::Type::ANY_POINTER:
      return;
    case capnp::schema::Type::STRUCT:
      if (proto.which() != capnp::schema::Field::GROUP && !s.has(field)) return;
      break;
    default:
      break;
  }
  if (!first) out += ',';
  first = false;
  out += '"';
  out.append(name);
  out += "\":";
  appendValue(out, s.get(field), type);
}

std::string joined(std::initializer_list<const char*> names) {
  std::string out;
  for (const char* n : names) out += (out.empty() ? "" : ", ") + std::string(n);
  return out;
}

// A parsed JSON value (request bodies are small: at most
// RpcLimits::maxMessageBytes).
struct Value {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Value> items;
  std::vector<std::pair<std::string, Value>> members;
};

// RFC 8259 JSON, nested at most kMaxDepth deep. (Cap'n Proto 0.9.2's JSON
// parser decodes \u escapes wrongly, so this one is ours.)
class Parser {
 public:
  static constexpr int kMaxDepth = 16;
  explicit Parser(std::string_view text) : s_(text) {}

  // The whole text as one value; nullopt with error() set if it is not.
  std::optional<Value> parse() {
    Value v;
    if (!value(v, 0)) return std::nullopt;
    space();
    if (i_ != s_.size()) {
      fail("unexpected text after the JSON value");
      return std::nullopt;
    }
    return v;
  }
  const std::string& error() const { return error_; }

 private:
  bool fail(const std::string& what) {
    if (error_.empty()) error_ = what + " at byte " + std::to_string(i_);
    return false;
  }
  void space() {
    while (i_ < s_.size() &&
           (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) {
      ++i_;
    }
  }
  bool literal(std::string_view word) {
    if (s_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }
  bool value(Value& v, int depth) {
    space();
    if (i_ >= s_.size()) return fail("unexpected end of the body");
    char c = s_[i_];
    if (c == '{' || c == '[') {
      if (depth >= kMaxDepth) {
        return fail("nested deeper than " + std::to_string(kMaxDepth));
      }
      return c == '{' ? object(v, depth + 1) : array(v, depth + 1);
    }
    if (c == '"') {
      v.kind = Value::kString;
      return string(v.string);
    }
    if (c == '-' || (c >= '0' && c <= '9')) return number(v);
    if (literal("true")) {
      v.kind = Value::kBool;
      v.boolean = true;
      return true;
    }
    if (literal("false")) {
      v.kind = Value::kBool;
      return true;
    }
    if (literal("null")) return true;
    return fail("unexpected character");
  }
  bool object(Value& v, int depth) {
    v.kind = Value::kObject;
    ++i_;  // {
    space();
    if (i_ < s_.size() && s_[i_] == '}') {
      ++i_;
      return true;
    }
    while (true) {
      space();
      if (i_ >= s_.size() || s_[i_] != '"') return fail("expected a member name");
      std::string name;
      if (!string(name)) return false;
      space();
      if (i_ >= s_.size() || s_[i_] != ':') return fail("expected ':'");
      ++i_;
      Value member;
      if (!value(member, depth)) return false;
      v.members.emplace_back(std::move(name), std::move(member));
      space();
      if (i_ < s_.size() && s_[i_] == ',') {
        ++i_;
        continue;
      }
      if (i_ < s_.size() && s_[i_] == '}') {
        ++i_;
        return true;
      }
      return fail("expected ',' or '}'");
    }
  }
  bool array(Value& v, int depth) {
    v.kind = Value::kArray;
    ++i_;  // [
    space();
    if (i_ < s_.size() && s_[i_] == ']') {
      ++i_;
      return true;
    }
    while (true) {
      Value item;
      if (!value(item, depth)) return false;
      v.items.push_back(std::move(item));
      space();
      if (i_ < s_.size() && s_[i_] == ',') {
        ++i_;
        continue;
      }
      if (i_ < s_.size() && s_[i_] == ']') {
        ++i_;
        return true;
      }
      return fail("expected ',' or ']'");
    }
  }
  bool number(Value& v) {
    size_t start = i_;
    auto digits = [&] {
      size_t from = i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      return i_ > from;
    };
    if (s_[i_] == '-') ++i_;
    if (i_ < s_.size() && s_[i_] == '0') {
      ++i_;
    } else if (!digits()) {
      return fail("malformed number");
    }
    if (i_ < s_.size() && s_[i_] == '.') {
      ++i_;
      if (!digits()) return fail("malformed number");
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (!digits()) return fail("malformed number");
    }
    v.kind = Value::kNumber;
    auto r = std::from_chars(s_.data() + start, s_.data() + i_, v.number);
    if (r.ec == std::errc::result_out_of_range) {
      v.number = s_[start] == '-' ? -HUGE_VAL : HUGE_VAL;  // out of every field's range
    } else if (r.ec != std::errc() || r.ptr != s_.data() + i_) {
      return fail("malformed number");
    }
    return true;
  }
  int hex4() {
    if (i_ + 4 > s_.size()) return -1;
    int v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s_[i_ + size_t(k)];
      int d = c >= '0' && c <= '9'   ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                     : -1;
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    i_ += 4;
    return v;
  }
  static void appendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }
  bool string(std::string& out) {
    ++i_;  // "
    while (true) {
      size_t run = i_;
      while (run < s_.size() && s_[run] != '"' && s_[run] != '\\' &&
             static_cast<unsigned char>(s_[run]) >= 0x20) {
        ++run;
      }
      out.append(s_.data() + i_, run - i_);
      i_ = run;
      if (i_ >= s_.size()) return fail("unterminated string");
      char c = s_[i_];
      if (c == '"') {
        ++i_;
        return true;
      }
      if (c != '\\') return fail("a control character inside a string (escape it)");
      if (++i_ >= s_.size()) return fail("unterminated string");
      char e = s_[i_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          int cp = hex4();
          if (cp < 0) return fail("malformed \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // a high surrogate: its low one follows
            if (!literal("\\u")) return fail("a lone surrogate in a \\u escape");
            int low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) {
              return fail("a lone surrogate in a \\u escape");
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return fail("a lone surrogate in a \\u escape");
          }
          appendUtf8(out, uint32_t(cp));
          break;
        }
        default:
          return fail("an unknown escape");
      }
    }
  }

  std::string_view s_;
  size_t i_ = 0;
  std::string error_;
};

const char* jsonKind(const Value& v) {
  switch (v.kind) {
    case Value::kNull:
      return "null";
    case Value::kBool:
      return "a boolean";
    case Value::kNumber:
      return "a number";
    case Value::kString:
      return "a string";
    case Value::kArray:
      return "an array";
    case Value::kObject:
      return "an object";
  }
  return "something else";
}

capnp::Text::Reader textOf(const std::string& s) { return capnp::Text::Reader(s.data(), s.size()); }

// Sets `field` of `params` from `value`; a FieldError if the type is wrong.
Check setField(capnp::DynamicStruct::Builder params, capnp::StructSchema::Field field,
               const std::string& name, const Value& value) {
  capnp::Type type = field.getType();
  auto wrong = [&](const std::string& wanted) {
    return FieldError{name, "must be " + wanted + ", not " + jsonKind(value)};
  };
  switch (type.which()) {
    case capnp::schema::Type::TEXT: {
      if (value.kind != Value::kString) return wrong("a string");
      params.set(field, textOf(value.string));
      return std::nullopt;
    }
    case capnp::schema::Type::BOOL:
      if (value.kind != Value::kBool) return wrong("true or false");
      params.set(field, value.boolean);
      return std::nullopt;
    case capnp::schema::Type::UINT8:
    case capnp::schema::Type::UINT16:
    case capnp::schema::Type::UINT32: {
      uint64_t max = type.which() == capnp::schema::Type::UINT8    ? 0xFF
                     : type.which() == capnp::schema::Type::UINT16 ? 0xFFFF
                                                                   : 0xFFFFFFFF;
      std::string range = "an integer from 0 to " + std::to_string(max);
      if (value.kind != Value::kNumber) return wrong(range);
      double d = value.number;
      if (!(d >= 0 && d <= double(max)) || std::floor(d) != d) {
        return FieldError{name, "must be " + range};
      }
      params.set(field, static_cast<uint64_t>(d));
      return std::nullopt;
    }
    case capnp::schema::Type::ENUM: {
      auto enumSchema = type.asEnum();
      std::string names;
      for (auto e : enumSchema.getEnumerants()) {
        names += (names.empty() ? "" : ", ") + std::string(e.getProto().getName().cStr());
      }
      if (value.kind != Value::kString) return wrong("one of " + names);
      KJ_IF_MAYBE (e, enumSchema.findEnumerantByName(value.string)) {
        params.set(field, capnp::DynamicEnum(*e));
        return std::nullopt;
      }
      return FieldError{name, "must be one of " + names};
    }
    case capnp::schema::Type::LIST: {
      if (type.asList().getElementType().which() != capnp::schema::Type::TEXT) break;
      if (value.kind != Value::kArray) return wrong("an array of strings");
      for (const Value& item : value.items) {
        if (item.kind != Value::kString) {
          return FieldError{
              name, std::string("must be an array of strings, not one holding ") + jsonKind(item)};
        }
      }
      auto list = params.init(field, uint(value.items.size())).as<capnp::DynamicList>();
      for (uint i = 0; i < value.items.size(); ++i) list.set(i, textOf(value.items[i].string));
      return std::nullopt;
    }
    default:
      break;
  }
  KJ_FAIL_ASSERT("a request field of a type the HTTP API does not decode", name.c_str());
}

}  // namespace

void appendJsonString(std::string& out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  out.reserve(out.size() + s.size() + 2);
  out += '"';
  size_t i = 0;
  while (i < s.size()) {
    // Copy the run of bytes that need nothing done.
    size_t run = i;
    while (run < s.size()) {
      unsigned char c = static_cast<unsigned char>(s[run]);
      if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80) break;
      ++run;
    }
    out.append(s.data() + i, run - i);
    i = run;
    if (i == s.size()) break;
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      size_t n = utf8Sequence(s, i);
      if (n == 0) {
        out += "\xEF\xBF\xBD";  // U+FFFD
        ++i;
      } else {
        out.append(s.data() + i, n);
        i += n;
      }
      continue;
    }
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
        out += "\\u00";
        out += kHex[c >> 4];
        out += kHex[c & 15];
    }
    ++i;
  }
  out += '"';
}

void appendJsonStruct(std::string& out, capnp::DynamicStruct::Reader s,
                      std::initializer_list<std::string_view> skip) {
  out += '{';
  bool first = true;
  auto schema = s.getSchema();
  for (auto field : schema.getNonUnionFields()) appendField(out, first, s, field, skip);
  if (schema.getUnionFields().size() > 0) {
    KJ_IF_MAYBE (field, s.which()) {
      appendField(out, first, s, *field, skip);
    }
  }
  out += '}';
}

std::string resultsJson(capnp::DynamicStruct::Reader s) {
  std::string out;
  appendJsonStruct(out, s, {"error"});
  return out;
}

void appendReviewJson(std::string& out, const ReviewView& r) {
  out += "{\"product\":";
  appendJsonString(out, r.product);
  out += ",\"author\":";
  appendJsonString(out, r.author);
  out += ",\"rating\":";
  appendNumber(out, uint64_t(r.rating));
  out += ",\"title\":";
  appendJsonString(out, r.title);
  out += ",\"body\":";
  appendJsonString(out, r.body);
  out += ",\"editedAtMillis\":";
  appendNumber(out, r.editedAtMillis);
  out += ",\"tags\":[";
  for (size_t i = 0; i < r.tags.size(); ++i) {
    if (i > 0) out += ',';
    appendJsonString(out, r.tags[i]);
  }
  out += "],\"helpful\":";
  appendNumber(out, uint64_t(r.helpful));
  out += ",\"visibility\":\"";
  out += visibilityName(r.visibility);
  out += "\",\"moderationReason\":";
  appendJsonString(out, r.moderationReason);
  out += ",\"reply\":";
  appendJsonString(out, r.reply);
  out += r.deleted ? ",\"deleted\":true}" : ",\"deleted\":false}";
}

void appendPageJson(std::string& out, const ReviewPage& p) {
  out += "{\"reviews\":[";
  for (size_t i = 0; i < p.reviews.size(); ++i) {
    if (i > 0) out += ',';
    appendReviewJson(out, p.reviews[i]);
  }
  out += "],\"nextCursor\":";
  appendJsonString(out, p.nextCursor);
  out += '}';
}

void appendSummaryJson(std::string& out, const std::string& product,
                       const storage::ProductSummary& s) {
  out += "{\"product\":";
  appendJsonString(out, product);
  out += ",\"count\":";
  appendNumber(out, uint64_t(s.count));
  out += ",\"average\":";
  double average = s.average();
  if (std::isfinite(average)) {
    appendNumber(out, average);
  } else {
    out += "null";
  }
  out += ",\"histogram\":[";
  for (size_t i = 0; i < 5; ++i) {
    if (i > 0) out += ',';
    appendNumber(out, uint64_t(s.histogram[i]));
  }
  out += "],\"helpfulTotal\":";
  appendNumber(out, uint64_t(s.helpfulTotal));
  out += '}';
}

std::string reviewResultsJson(const ReviewView& r) {
  std::string out;
  out.reserve(256 + r.title.size() + r.body.size() + r.reply.size());
  out += "{\"review\":";
  appendReviewJson(out, r);
  out += '}';
  return out;
}

namespace {
size_t pageBytes(const ReviewPage& p) {
  size_t n = 64 + p.nextCursor.size();
  for (const auto& r : p.reviews) n += 256 + r.title.size() + r.body.size() + r.reply.size();
  return n;
}
}  // namespace

std::string pageResultsJson(const ReviewPage& p) {
  std::string out;
  out.reserve(pageBytes(p));
  out += "{\"page\":";
  appendPageJson(out, p);
  out += '}';
  return out;
}

std::string summaryResultsJson(const std::string& product, const storage::ProductSummary& s) {
  std::string out = "{\"summary\":";
  appendSummaryJson(out, product, s);
  out += '}';
  return out;
}

std::string productPageResultsJson(const std::string& product, const ProductPageView& v) {
  std::string out;
  out.reserve(pageBytes(v.page) + 256);
  out += "{\"summary\":";
  appendSummaryJson(out, product, v.summary);
  out += ",\"page\":";
  appendPageJson(out, v.page);
  out += '}';
  return out;
}

std::string writeResultsJson(const ReviewView& r) {
  std::string out;
  out.reserve(256 + r.title.size() + r.body.size() + r.reply.size() + r.session.size());
  out += "{\"review\":";
  appendReviewJson(out, r);
  out += ",\"session\":";
  appendJsonString(out, r.session);
  out += '}';
  return out;
}

std::string eraseResultsJson(const std::string& session) {
  std::string out = "{\"session\":";
  appendJsonString(out, session);
  out += '}';
  return out;
}

void appendFeedChangeJson(std::string& out, const FeedChange& c) {
  out += "{\"seq\":";
  appendNumber(out, c.seq);
  out += ",\"product\":";
  appendJsonString(out, c.product);
  out += ",\"author\":";
  appendJsonString(out, c.author);
  out += c.deleted ? ",\"deleted\":true" : ",\"deleted\":false";
  if (c.review) {
    out += ",\"review\":";
    appendReviewJson(out, *c.review);
  }
  out += '}';
}

std::string changesResultsJson(const ChangesPage& p) {
  std::string out;
  size_t bytes = 64;
  for (const auto& c : p.changes) {
    bytes += 64 + c.product.size() + c.author.size();
    if (c.review) bytes += 256 + c.review->title.size() + c.review->body.size();
  }
  out.reserve(bytes);
  out += "{\"changes\":[";
  for (size_t i = 0; i < p.changes.size(); ++i) {
    if (i > 0) out += ',';
    appendFeedChangeJson(out, p.changes[i]);
  }
  out += "],\"lastSeq\":";
  appendNumber(out, p.lastSeq);
  out += ",\"replicaId\":";
  appendNumber(out, p.replicaId);
  out += '}';
  return out;
}

Check decodeJsonBody(std::string_view body, capnp::DynamicStruct::Builder params,
                     std::initializer_list<const char*> allowed,
                     std::initializer_list<const char*> required) {
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) body = "{}";
  Parser parser(body);
  auto root = parser.parse();
  if (!root) return FieldError{"", "the request body is not valid JSON: " + parser.error()};
  if (root->kind != Value::kObject) {
    return FieldError{
        "", std::string("the request body must be a JSON object, not ") + jsonKind(*root)};
  }
  auto schema = params.getSchema();
  std::set<std::string> seen;
  for (const auto& [name, value] : root->members) {
    bool known = false;
    for (const char* a : allowed) known = known || name == a;
    if (!known) {
      return FieldError{name, allowed.size() == 0
                                  ? "unknown field: this request takes no body"
                                  : "unknown field: this request's body takes " + joined(allowed)};
    }
    if (!seen.insert(name).second) return FieldError{name, "given twice"};
    KJ_IF_MAYBE (field, schema.findFieldByName(name)) {
      if (auto bad = setField(params, *field, name, value)) return bad;
    } else {
      KJ_FAIL_ASSERT("an allowed body field is not in the params' schema", name.c_str());
    }
  }
  for (const char* r : required) {
    if (seen.count(r) == 0) return FieldError{r, "is required"};
  }
  return std::nullopt;
}

}  // namespace chorus::api::http
