// A small JSON reader for checking the `chorus --json` output in tests:
// parses a whole document into a tree; a parse error is reported, never a
// crash. Numbers are kept as double (exact up to 2^53, enough for counts).
#pragma once

#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace chorus::test {

class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  Type type() const { return type_; }
  bool isNull() const { return type_ == Type::kNull; }
  bool isObject() const { return type_ == Type::kObject; }
  bool isArray() const { return type_ == Type::kArray; }
  bool boolean() const { return bool_; }
  double number() const { return number_; }
  uint64_t u64() const { return number_ < 0 ? 0 : static_cast<uint64_t>(number_); }
  const std::string& str() const { return string_; }
  const std::vector<Json>& items() const { return items_; }
  const std::map<std::string, Json>& fields() const { return fields_; }

  bool has(const std::string& key) const { return fields_.count(key) != 0; }
  // The member `key`, or a null value if absent (or not an object).
  const Json& operator[](const std::string& key) const {
    auto it = fields_.find(key);
    return it == fields_.end() ? null() : it->second;
  }
  const Json& operator[](size_t i) const { return i < items_.size() ? items_[i] : null(); }
  size_t size() const { return type_ == Type::kArray ? items_.size() : fields_.size(); }

  // Parses `text` (surrounding whitespace allowed); nullopt on any error.
  static std::optional<Json> parse(const std::string& text) {
    Parser p{text, 0};
    Json out;
    if (!p.value(out, 0)) return std::nullopt;
    p.space();
    if (p.pos != text.size()) return std::nullopt;
    return out;
  }

 private:
  static const Json& null() {
    static const Json n;
    return n;
  }

  struct Parser {
    const std::string& s;
    size_t pos;

    void space() {
      while (pos < s.size() && (s[pos] == ' ' || s[pos] == '\n' || s[pos] == '\r' || s[pos] == '\t'))
        ++pos;
    }
    bool literal(const char* word) {
      size_t n = std::char_traits<char>::length(word);
      if (s.compare(pos, n, word) != 0) return false;
      pos += n;
      return true;
    }
    bool string(std::string& out) {
      if (pos >= s.size() || s[pos] != '"') return false;
      ++pos;
      while (pos < s.size()) {
        char c = s[pos++];
        if (c == '"') return true;
        if (c != '\\') {
          out += c;
          continue;
        }
        if (pos >= s.size()) return false;
        char e = s[pos++];
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            if (pos + 4 > s.size()) return false;
            unsigned code = static_cast<unsigned>(std::strtoul(s.substr(pos, 4).c_str(), nullptr, 16));
            pos += 4;
            if (code < 0x80) {
              out += static_cast<char>(code);
            } else if (code < 0x800) {
              out += static_cast<char>(0xC0 | (code >> 6));
              out += static_cast<char>(0x80 | (code & 0x3F));
            } else {
              out += static_cast<char>(0xE0 | (code >> 12));
              out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
              out += static_cast<char>(0x80 | (code & 0x3F));
            }
            break;
          }
          default: return false;
        }
      }
      return false;
    }
    bool value(Json& out, int depth) {
      if (depth > 64) return false;
      space();
      if (pos >= s.size()) return false;
      char c = s[pos];
      if (c == '{') {
        ++pos;
        out.type_ = Type::kObject;
        space();
        if (pos < s.size() && s[pos] == '}') return ++pos, true;
        while (true) {
          space();
          std::string key;
          if (!string(key)) return false;
          space();
          if (pos >= s.size() || s[pos] != ':') return false;
          ++pos;
          Json v;
          if (!value(v, depth + 1)) return false;
          out.fields_[key] = std::move(v);
          space();
          if (pos < s.size() && s[pos] == ',') {
            ++pos;
            continue;
          }
          if (pos < s.size() && s[pos] == '}') return ++pos, true;
          return false;
        }
      }
      if (c == '[') {
        ++pos;
        out.type_ = Type::kArray;
        space();
        if (pos < s.size() && s[pos] == ']') return ++pos, true;
        while (true) {
          Json v;
          if (!value(v, depth + 1)) return false;
          out.items_.push_back(std::move(v));
          space();
          if (pos < s.size() && s[pos] == ',') {
            ++pos;
            continue;
          }
          if (pos < s.size() && s[pos] == ']') return ++pos, true;
          return false;
        }
      }
      if (c == '"') {
        out.type_ = Type::kString;
        return string(out.string_);
      }
      if (literal("true")) {
        out.type_ = Type::kBool;
        out.bool_ = true;
        return true;
      }
      if (literal("false")) {
        out.type_ = Type::kBool;
        return true;
      }
      if (literal("null")) return true;
      const char* begin = s.c_str() + pos;
      char* end = nullptr;
      double d = std::strtod(begin, &end);
      if (end == begin) return false;
      pos += static_cast<size_t>(end - begin);
      out.type_ = Type::kNumber;
      out.number_ = d;
      return true;
    }
  };

  Type type_ = Type::kNull;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<Json> items_;
  std::map<std::string, Json> fields_;
};

}  // namespace chorus::test
