#include "api/validate.h"

#include <cstdint>
#include <set>
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

Check checkLimit(uint32_t limit) {
  if (limit <= kMaxPageLimit) return std::nullopt;
  return FieldError{"limit", "at most " + std::to_string(kMaxPageLimit) + " (0 = the default, " +
                                 std::to_string(kDefaultPageLimit) + "); page on with the cursor"};
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

Check checkTagRoom(const crdt::ReviewDoc& doc, std::string_view tag, const Limits& limits) {
  const crdt::OrSet& tags = doc.tags();
  if (tags.size() < limits.maxTags || tags.contains(std::string(tag))) return std::nullopt;
  return fieldError("tag", "a review has at most " + std::to_string(limits.maxTags) +
                               " tags (this one has " + std::to_string(tags.size()) +
                               "); untag one first");
}

Check checkStateSize(const crdt::ReviewDoc& doc, size_t maxBytes) {
  size_t bytes = doc.encode().size();
  if (bytes <= maxBytes) return std::nullopt;
  return fieldError("review", "would encode to " + std::to_string(bytes) +
                                  " bytes, over the limit of " + std::to_string(maxBytes) +
                                  " bytes per review (its tags, voters and texts)");
}

namespace {

// `limit` times limits.peerSlack (at least 1), saturating.
size_t forPeers(size_t limit, const Limits& limits) {
  const size_t slack = limits.peerSlack == 0 ? 1 : limits.peerSlack;
  if (limit != 0 && slack > SIZE_MAX / limit) return SIZE_MAX;
  return limit * slack;
}

}  // namespace

Check checkPeerGrowth(const crdt::ReviewDoc& doc, const Limits& limits) {
  if (size_t maxTags = forPeers(limits.maxTags, limits); doc.tags().size() > maxTags) {
    return fieldError("tag", "a review merged from peers has at most " + std::to_string(maxTags) +
                                 " tags (got " + std::to_string(doc.tags().size()) + ")");
  }
  return checkStateSize(doc, forPeers(limits.maxStateBytes, limits));
}

Check checkState(const crdt::ReviewDoc& doc, const Limits& limits) {
  if (auto e = checkKey(doc.key().product, doc.key().author, limits)) return e;
  if (doc.tags().size() > forPeers(limits.maxTags, limits)) {
    return checkPeerGrowth(doc, limits);  // before checking each of too many tags
  }
  if (doc.content().isSet() && !doc.content().value().deleted) {
    const auto& c = doc.content().value();
    if (auto e = checkRating(c.rating)) return e;
    if (auto e = checkText("title", c.title, limits.maxTitleBytes)) return e;
    if (auto e = checkText("body", c.body, limits.maxBodyBytes)) return e;
  }
  for (const auto& tag : doc.tags().elements()) {
    if (auto e = checkId("tag", tag, limits)) return e;
  }
  for (const auto& voter : doc.helpful().elements()) {
    if (auto e = checkId("voter", voter, limits)) return e;
  }
  if (doc.moderation().isSet()) {
    if (auto e = checkText("reason", doc.moderation().value().reason, limits.maxReasonBytes)) {
      return e;
    }
  }
  if (doc.reply().isSet()) {
    if (auto e = checkText("text", doc.reply().value().text, limits.maxBodyBytes)) return e;
  }
  return checkPeerGrowth(doc, limits);
}

Check checkPeerIds(const std::vector<std::string>& peers, std::string_view self) {
  if (peers.size() > kMaxPartitionPeers) {
    return fieldError("peers", "at most " + std::to_string(kMaxPartitionPeers) + " node ids");
  }
  for (const auto& id : peers) {
    if (id.empty()) return fieldError("peers", "a node id is empty");
    if (id.size() > 128) return fieldError("peers", "a node id is longer than 128 bytes");
    if (!isValidUtf8(id)) return fieldError("peers", "a node id is not valid UTF-8");
    for (char c : id) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        return fieldError("peers", "a node id contains a control character");
      }
    }
    if (id == self) {
      return fieldError("peers", "'" + id + "' is this node; a node cannot partition itself");
    }
  }
  return std::nullopt;
}

Check checkRegion(std::string_view region) {
  const std::string rule =
      "must be 1-" + std::to_string(kMaxRegionBytes) +
      " characters of letters, digits, '-', '_' and '.' (e.g. us-east, eu.west_2)";
  if (region.empty()) return fieldError("region", "is empty; it " + rule);
  if (region.size() > kMaxRegionBytes) {
    return fieldError("region", "is " + std::to_string(region.size()) + " characters long; it " +
                                    rule);
  }
  for (char c : region) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.';
    if (!ok) {
      bool printable = static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
      return fieldError("region", (printable ? "'" + std::string(region) + "'"
                                             : std::string("the region")) +
                                      " has a character that is not allowed; it " + rule);
    }
  }
  return std::nullopt;
}

Check checkRemoveId(std::string_view node, std::string_view self) {
  if (node.empty()) return fieldError("node", "is empty; give the id of the node to remove");
  if (node.size() > 128) return fieldError("node", "is longer than 128 bytes");
  if (!isValidUtf8(node)) return fieldError("node", "is not valid UTF-8");
  for (char c : node) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return fieldError("node", "contains a control character");
    }
  }
  if (node == self) {
    return fieldError("node", "'" + std::string(node) +
                                  "' is the node asked; a node takes itself out with leave "
                                  "(`chorus cluster leave`), not remove");
  }
  return std::nullopt;
}

namespace {
// "a,b" -> {"a", "b"}; nullopt for an empty list or an empty item.
std::optional<std::vector<std::string>> commaList(std::string_view text) {
  std::vector<std::string> items;
  size_t start = 0;
  while (true) {
    size_t comma = text.find(',', start);
    std::string_view item =
        text.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    if (item.empty()) return std::nullopt;
    items.emplace_back(item);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return items;
}
}  // namespace

std::optional<SplitSides> parseSplit(std::string_view text) {
  size_t slash = text.find('/');
  if (slash == std::string_view::npos || text.find('/', slash + 1) != std::string_view::npos) {
    return std::nullopt;
  }
  auto a = commaList(text.substr(0, slash));
  auto b = commaList(text.substr(slash + 1));
  if (!a || !b) return std::nullopt;
  return SplitSides{std::move(*a), std::move(*b)};
}

Result<std::vector<std::string>> expandSplitSide(
    const std::vector<std::string>& tokens, const std::map<std::string, std::string>& regionOf) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  auto add = [&](const std::string& id) {
    if (seen.insert(id).second) out.push_back(id);
  };
  for (const auto& token : tokens) {
    if (regionOf.count(token)) {
      add(token);
      continue;
    }
    bool region = false;
    for (const auto& [id, r] : regionOf) {  // by id
      if (!r.empty() && r == token) {
        add(id);
        region = true;
      }
    }
    if (region) continue;
    std::set<std::string> regions;
    for (const auto& [id, r] : regionOf) {
      if (!r.empty()) regions.insert(r);
    }
    std::string known;
    for (const auto& r : regions) known += (known.empty() ? "" : ", ") + r;
    return makeError(ErrorCode::kInvalidArgument,
                     "'" + token + "' is neither a node id nor a region (regions: " +
                         (known.empty() ? "none known" : known) + ")");
  }
  return out;
}

Result<std::chrono::milliseconds> parseDuration(std::string_view text,
                                                std::chrono::milliseconds bareUnit) {
  auto bad = [&](const std::string& why) {
    return makeError(ErrorCode::kInvalidArgument, "'" + std::string(text) +
                                                      "' is not a duration (" + why +
                                                      "; e.g. 1500ms, 30s, -30s, 2.5s, 5m, 1h)");
  };
  std::string_view s = text;
  bool negative = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  size_t digits = 0;
  bool dot = false;
  size_t i = 0;
  for (; i < s.size(); ++i) {
    if (s[i] >= '0' && s[i] <= '9') {
      ++digits;
    } else if (s[i] == '.' && !dot) {
      dot = true;
    } else {
      break;
    }
  }
  if (digits == 0) return bad("no number");
  if (i > 24) return bad("too many digits");
  double number = std::stod(std::string(s.substr(0, i)));
  std::string_view unit = s.substr(i);
  double unitMillis;
  if (unit.empty()) {
    unitMillis = static_cast<double>(bareUnit.count());
  } else if (unit == "ms") {
    unitMillis = 1;
  } else if (unit == "s") {
    unitMillis = 1000;
  } else if (unit == "m" || unit == "min") {
    unitMillis = 60'000;
  } else if (unit == "h") {
    unitMillis = 3'600'000;
  } else {
    return bad("unknown unit '" + std::string(unit) + "'");
  }
  double millis = number * unitMillis;
  if (millis > 1000.0 * 3'600'000) return bad("more than 1000 hours");
  auto rounded = static_cast<int64_t>(millis + 0.5);
  return std::chrono::milliseconds(negative ? -rounded : rounded);
}

}  // namespace chorus::api
