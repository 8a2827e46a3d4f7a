#include "api/auth.h"

#include <sodium.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include "api/log.h"
#include "api/validate.h"

namespace chorus::api {

namespace {

constexpr std::string_view kHashPrefix = "blake2b:";
constexpr std::string_view kTokenPrefix = "chorus_";
constexpr Role kAllRoles[] = {Role::kReader, Role::kWriter, Role::kModerator, Role::kMerchant,
                              Role::kAdmin};

void initSodium() {
  static const bool ready = sodium_init() >= 0;
  CHORUS_ASSERT(ready, "sodium_init failed");
}

std::array<uint8_t, 32> blake2b(std::string_view token) {
  initSodium();
  std::array<uint8_t, 32> out{};
  crypto_generichash(out.data(), out.size(), reinterpret_cast<const unsigned char*>(token.data()),
                     token.size(), nullptr, 0);
  return out;
}

std::string hex(const std::array<uint8_t, 32>& bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

int hexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // upper case too: the format is lowercase
}

Error invalid(std::string message) {
  return makeError(ErrorCode::kInvalidArgument, std::move(message));
}

Error forbidden(std::string message) {
  return makeError(ErrorCode::kForbidden, std::move(message));
}

std::optional<Error> needRole(const Principal& p, Role role, std::string_view what) {
  if (p.has(role)) return std::nullopt;
  return forbidden("role: " + std::string(what) + " needs the " + roleName(role) + " role; " +
                   p.id + " has " + (p.roles.empty() ? "none" : joinRoles(p.roles)));
}

}  // namespace

const char* roleName(Role role) {
  switch (role) {
    case Role::kReader:
      return "reader";
    case Role::kWriter:
      return "writer";
    case Role::kModerator:
      return "moderator";
    case Role::kMerchant:
      return "merchant";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

std::optional<Role> parseRole(std::string_view name) {
  for (Role r : kAllRoles) {
    if (name == roleName(r)) return r;
  }
  return std::nullopt;
}

Result<std::vector<Role>> parseRoles(std::string_view text) {
  std::vector<Role> roles;
  size_t start = 0;
  while (true) {
    size_t comma = text.find(',', start);
    std::string_view name = text.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    if (name.empty()) {
      return invalid("roles: empty role name in '" + std::string(text) +
                     "' (use reader, writer, moderator, merchant, admin, comma-separated)");
    }
    auto role = parseRole(name);
    if (!role) {
      return invalid("roles: unknown role '" + std::string(name) +
                     "' (use reader, writer, moderator, merchant, admin)");
    }
    bool seen = false;
    for (Role r : roles) seen = seen || r == *role;
    if (!seen) roles.push_back(*role);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return roles;
}

std::string joinRoles(const std::vector<Role>& roles) {
  std::string out;
  for (Role r : roles) {
    if (!out.empty()) out += ',';
    out += roleName(r);
  }
  return out;
}

std::string formatUtcTime(int64_t unixSeconds) {
  std::time_t t = static_cast<std::time_t>(unixSeconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::optional<int64_t> parseUtcTime(std::string_view text) {
  // Exactly YYYY-MM-DDTHH:MM:SSZ.
  if (text.size() != 20) return std::nullopt;
  static constexpr std::string_view kShape = "dddd-dd-ddTdd:dd:ddZ";
  for (size_t i = 0; i < kShape.size(); ++i) {
    bool digit = text[i] >= '0' && text[i] <= '9';
    if (kShape[i] == 'd' ? !digit : text[i] != kShape[i]) return std::nullopt;
  }
  auto num = [&](size_t at, size_t n) {
    int v = 0;
    for (size_t i = at; i < at + n; ++i) v = v * 10 + (text[i] - '0');
    return v;
  };
  std::tm tm{};
  tm.tm_year = num(0, 4) - 1900;
  tm.tm_mon = num(5, 2) - 1;
  tm.tm_mday = num(8, 2);
  tm.tm_hour = num(11, 2);
  tm.tm_min = num(14, 2);
  tm.tm_sec = num(17, 2);
  if (tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 59) {
    return std::nullopt;
  }
  int64_t t = static_cast<int64_t>(timegm(&tm));
  if (formatUtcTime(t) != text) return std::nullopt;  // e.g. February 30
  return t;
}

std::string shortId(std::string_view hash) {
  if (hash.substr(0, kHashPrefix.size()) == kHashPrefix) hash.remove_prefix(kHashPrefix.size());
  return std::string(hash.substr(0, 8));
}

std::string TokenTable::Entry::id() const { return hex(hash).substr(0, 8); }

std::optional<Error> expiredError(const Principal& p, int64_t nowUnixSeconds) {
  if (!p.expired(nowUnixSeconds)) return std::nullopt;
  return makeError(ErrorCode::kForbidden,
                   "token expired at " + formatUtcTime(p.expiresUnixSeconds) + " (principal " +
                       p.id + "); make a new one with `chorus token create`");
}

bool Principal::has(Role role) const {
  for (Role r : roles) {
    if (r == role) return true;
  }
  return false;
}

std::string newToken() {
  initSodium();
  unsigned char raw[32];
  randombytes_buf(raw, sizeof raw);
  constexpr int kVariant = sodium_base64_VARIANT_URLSAFE_NO_PADDING;
  char b64[sodium_base64_ENCODED_LEN(sizeof raw, kVariant)];
  sodium_bin2base64(b64, sizeof b64, raw, sizeof raw, kVariant);
  sodium_memzero(raw, sizeof raw);
  std::string token = std::string(kTokenPrefix) + b64;
  sodium_memzero(b64, sizeof b64);
  return token;
}

std::string tokenHash(std::string_view token) {
  return std::string(kHashPrefix) + hex(blake2b(token));
}

Result<std::string> tokenLine(const std::string& principal, const std::string& rolesCommaSeparated,
                              std::string_view token, int64_t createdUnixSeconds,
                              int64_t expiresUnixSeconds) {
  if (auto bad = checkId("principal", principal, Limits{})) {
    return invalid(bad->field + ": " + bad->message);
  }
  auto roles = parseRoles(rolesCommaSeparated);
  if (!roles.ok()) return roles.error();
  if (token.empty()) return invalid("token: must not be empty");
  if (expiresUnixSeconds != 0 && createdUnixSeconds != 0 &&
      expiresUnixSeconds <= createdUnixSeconds) {
    return invalid("expires: must be after the creation time");
  }
  std::string line = principal + " " + joinRoles(*roles) + " " + tokenHash(token);
  if (createdUnixSeconds != 0) line += " created=" + formatUtcTime(createdUnixSeconds);
  if (expiresUnixSeconds != 0) line += " expires=" + formatUtcTime(expiresUnixSeconds);
  return line;
}

Result<TokenTable> TokenTable::parse(std::string_view text, const std::string& name) {
  TokenTable table;
  size_t lineNo = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++lineNo;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    auto fail = [&](const std::string& what) {
      return invalid(name + ":" + std::to_string(lineNo) + ": " + what);
    };
    std::vector<std::string_view> fields;
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
      if (i >= line.size() || line[i] == '#') break;
      size_t start = i;
      while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
      fields.push_back(line.substr(start, i - start));
    }
    if (fields.empty()) continue;  // blank or comment
    if (fields.size() < 3) {
      return fail("expected '<principal> <roles> blake2b:<hex> [created=...] [expires=...]', got " +
                  std::to_string(fields.size()) + " field(s)");
    }
    Entry entry;
    entry.line = lineNo;
    for (size_t f = 3; f < fields.size(); ++f) {
      std::string_view field = fields[f];
      size_t eq = field.find('=');
      std::string key(field.substr(0, eq));
      int64_t* slot = key == "created"   ? &entry.createdUnixSeconds
                      : key == "expires" ? &entry.principal.expiresUnixSeconds
                                         : nullptr;
      if (eq == std::string_view::npos || slot == nullptr) {
        return fail("unknown field '" + std::string(field.substr(0, 64)) +
                    "' after the hash (only created=TIME and expires=TIME)");
      }
      if (*slot != 0) return fail(key + " given twice");
      auto t = parseUtcTime(field.substr(eq + 1));
      if (!t || *t <= 0) {
        return fail(key + ": '" + std::string(field.substr(eq + 1, 64)) +
                    "' is not a UTC time like 2026-11-27T10:00:00Z");
      }
      *slot = *t;
    }
    if (auto bad = checkId("principal", fields[0], Limits{})) {
      return fail(bad->field + " '" + std::string(fields[0].substr(0, 128)) + "' " + bad->message);
    }
    entry.principal.id = std::string(fields[0]);
    auto roles = parseRoles(fields[1]);
    if (!roles.ok()) return fail(roles.error().message);
    entry.principal.roles = std::move(roles).value();
    std::string_view hash = fields[2];
    if (hash.substr(0, kHashPrefix.size()) != kHashPrefix) {
      return fail("hash: must start with 'blake2b:' (make lines with `chorus token create`)");
    }
    hash.remove_prefix(kHashPrefix.size());
    if (hash.size() != 64) {
      return fail("hash: expected 64 lowercase hex digits after 'blake2b:', got " +
                  std::to_string(hash.size()) + " character(s)");
    }
    for (size_t k = 0; k < 32; ++k) {
      int hi = hexDigit(hash[2 * k]), lo = hexDigit(hash[2 * k + 1]);
      if (hi < 0 || lo < 0) return fail("hash: not lowercase hex");
      entry.hash[k] = static_cast<uint8_t>(hi << 4 | lo);
    }
    for (const Entry& e : table.entries_) {
      if (e.hash == entry.hash) {
        return fail("hash: the same token is already listed for principal " + e.principal.id);
      }
    }
    table.entries_.push_back(std::move(entry));
  }
  return table;
}

Result<TokenTable> TokenTable::load(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return makeError(ErrorCode::kIo,
                     "tokens file " + path + ": cannot read it: " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    return invalid("tokens file " + path + ": not a regular file");
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return invalid("tokens file " + path +
                   ": group or others may write it, so anyone of them could add an admin; "
                   "chmod 600 " +
                   path);
  }
  if ((st.st_mode & (S_IRGRP | S_IROTH)) != 0) {
    logf(LogLevel::kWarn,
         "tokens file %s: group or others may read it (it holds only hashes, but chmod 600 "
         "is advised)",
         path.c_str());
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return makeError(ErrorCode::kIo,
                     "tokens file " + path + ": cannot read it: " + std::strerror(errno));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return makeError(ErrorCode::kIo, "tokens file " + path + ": read failed");
  return parse(text.str(), path);
}

TokenTable::Digest TokenTable::digest(std::string_view token) { return blake2b(token); }

std::optional<Principal> TokenTable::find(std::string_view token) const {
  return findDigest(blake2b(token));
}

std::optional<Principal> TokenTable::findDigest(const Digest& hash) const {
  const Entry* match = nullptr;
  for (const Entry& e : entries_) {
    // sodium_memcmp takes the same time whether or not (and where) they differ.
    bool equal = sodium_memcmp(e.hash.data(), hash.data(), hash.size()) == 0;
    if (equal) match = &e;
  }
  if (match == nullptr) return std::nullopt;
  return match->principal;
}

std::optional<Error> authorizeWrite(const Principal& p, const WriteRequest& r) {
  // The RPC method's name: "erase", not the change's "delete".
  const std::string op = r.op == WriteOp::kDelete ? "erase" : writeOpName(r.op);
  auto notAuthor = [&](const char* extra) -> std::optional<Error> {
    if (r.author == p.id) return std::nullopt;
    return forbidden("author: " + op + " of a review by " + r.author + " needs principal " +
                     r.author + extra + "; you are " + p.id);
  };
  switch (r.op) {
    case WriteOp::kPut:
    case WriteOp::kDelete:
      if (auto e = needRole(p, Role::kWriter, op)) return e;
      return notAuthor("");
    case WriteOp::kTag:
    case WriteOp::kUntag:
      if (p.has(Role::kModerator)) return std::nullopt;
      if (!p.has(Role::kWriter)) {
        return forbidden("role: " + op +
                         " needs the writer role (on your own review) or the moderator role; " +
                         p.id + " has " + (p.roles.empty() ? "none" : joinRoles(p.roles)));
      }
      return notAuthor(" (or the moderator role)");
    case WriteOp::kVote:
    case WriteOp::kUnvote:
      if (auto e = needRole(p, Role::kWriter, op)) return e;
      if (r.arg != p.id) {
        return forbidden("voter: you can only vote as yourself (" + p.id + "), not as " + r.arg);
      }
      return std::nullopt;
    case WriteOp::kModerate:
      return needRole(p, Role::kModerator, op);
    case WriteOp::kReply:
      return needRole(p, Role::kMerchant, op);
  }
  return forbidden("op: unknown write operation");
}

std::optional<Error> authorizeRead(const Principal& p) {
  if (!p.roles.empty()) return std::nullopt;
  return forbidden("role: reading needs any role; " + p.id + " has none");
}

std::optional<Error> authorizeAdmin(const Principal& p, std::string_view what) {
  return needRole(p, Role::kAdmin, "Admin." + std::string(what));
}

}  // namespace chorus::api
