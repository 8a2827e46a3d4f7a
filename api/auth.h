// Client authentication and per-author authorization of the RPC API.
//
// Tokens: "chorus_" + 43 characters of URL-safe base64 (no padding) of 32
// random bytes. A node never stores a token, only its hash, in a tokens file
// the operator controls; one entry per line, `#` comments and blank lines
// ignored:
//
//   # principal  roles          hash                                 [created=...] [expires=...]
//   alice        writer,reader  blake2b:<64 lowercase hex digits>
//   mod-1        moderator      blake2b:...  created=2026-11-27T10:00:00Z
//   expires=2026-12-27T10:00:00Z
//
// The hash is BLAKE2b-256 (libsodium crypto_generichash, 32-byte output, no
// key) of the whole token. A principal id follows the rules of an author id
// (api/validate.h); a principal may have several lines (token rotation).
// After the hash come optional `key=value` fields, each at most once:
// `created=` and `expires=`, UTC times in RFC 3339 form
// (YYYY-MM-DDTHH:MM:SSZ). A token past its `expires` is refused
// ("token expired"). Any other key is an error, so a misspelt `expires`
// never leaves a token valid for good. Lines of three fields (files made
// before these fields existed) still load: no creation time, no expiry.
//
// A token's id is the first 8 hex digits of its hash (shortId): enough to
// name a line for `chorus token list` / `revoke`, nothing about the token.
//
// Authorization (authorizeWrite/Read/Admin) is pure: which principal may do
// which operation. The RPC session (api/rpc-server.cpp) enforces it; the
// in-process Node API is trusted and never checks it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/types.h"
#include "crdt/result.h"

namespace chorus::api {

enum class Role : uint8_t { kReader, kWriter, kModerator, kMerchant, kAdmin };

const char* roleName(Role role);  // "reader", "writer", ...
std::optional<Role> parseRole(std::string_view name);
// "writer,reader" -> {kWriter, kReader}, duplicates dropped, order kept.
// Errors: kInvalidArgument naming the unknown or empty role.
Result<std::vector<Role>> parseRoles(std::string_view commaSeparated);
std::string joinRoles(const std::vector<Role>& roles);  // "writer,reader"

struct Principal {
  std::string id;
  std::vector<Role> roles;
  int64_t expiresUnixSeconds = 0;  // 0: never
  bool has(Role role) const;
  bool expired(int64_t nowUnixSeconds) const {
    return expiresUnixSeconds != 0 && nowUnixSeconds >= expiresUnixSeconds;
  }
};

// kForbidden "token expired at <time> (principal P); ..." when `p` expired
// by `nowUnixSeconds`, else nullopt. The RPC server refuses such a session
// as unauthenticated, at authenticate and on every later call.
std::optional<Error> expiredError(const Principal& p, int64_t nowUnixSeconds);

// "2026-11-27T10:00:00Z" <-> Unix seconds (UTC). parseUtcTime: nullopt
// unless the text is exactly that form and a real date.
std::string formatUtcTime(int64_t unixSeconds);
std::optional<int64_t> parseUtcTime(std::string_view text);

// The first 8 hex digits of a token hash ("blake2b:..." or the bare hex).
std::string shortId(std::string_view hash);

// A fresh random token (libsodium's CSPRNG).
std::string newToken();
// "blake2b:" + lowercase hex of BLAKE2b-256(token).
std::string tokenHash(std::string_view token);
// The tokens-file line for a principal: "alice writer,reader blake2b:...",
// then " created=..." when createdUnixSeconds != 0 and " expires=..." when
// expiresUnixSeconds != 0. Errors: kInvalidArgument for a bad principal id,
// an unknown or missing role name, an empty token, or an expiry not after
// the creation time.
Result<std::string> tokenLine(const std::string& principal, const std::string& rolesCommaSeparated,
                              std::string_view token, int64_t createdUnixSeconds = 0,
                              int64_t expiresUnixSeconds = 0);

class TokenTable {
 public:
  // Reads a tokens file. Errors: kIo (cannot read it), kInvalidArgument
  // ("<path>:<line>: <what is wrong>", or a file that group or others may
  // write: anyone who can add a line can make themselves admin). A file
  // that group or others may read is accepted with a warning (it holds
  // hashes, not tokens). An empty table is allowed (every token refused).
  static Result<TokenTable> load(const std::string& path);
  // Parses the text of a tokens file; `name` is used in error messages.
  static Result<TokenTable> parse(std::string_view text, const std::string& name);

  // The principal whose token this is, or nullopt. Hashes the token once and
  // compares it with every entry in constant time (no early exit).
  std::optional<Principal> find(std::string_view token) const;
  // The same by the token's digest (BLAKE2b-256), so a server can look an
  // authenticated session up again after a reload without keeping tokens.
  using Digest = std::array<uint8_t, 32>;
  static Digest digest(std::string_view token);
  std::optional<Principal> findDigest(const Digest& digest) const;
  size_t size() const { return entries_.size(); }

  // One line of the file, for listings: never the token (the file has none).
  struct Entry {
    Principal principal;
    std::array<uint8_t, 32> hash;
    int64_t createdUnixSeconds = 0;  // 0: not recorded
    size_t line = 0;                 // 1-based line number in the file
    std::string id() const;          // shortId of the hash
  };
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  std::vector<Entry> entries_;
};

// ---- authorization -----------------------------------------------------------
// Each returns nullopt when allowed, else a kForbidden Error whose message
// starts with the field it is about ("role: ", "author: ", "voter: ") and
// names what was needed, e.g.
//   "author: erase of a review by bob needs principal bob; you are alice".
//
//   put, erase      writer, and author == principal
//   tag, untag      writer and author == principal, or moderator
//   vote, unvote    writer, and voter == principal
//   moderate        moderator
//   reply           merchant
//   reads, watch,   any role
//   changes, follow
//   Admin methods   admin
std::optional<Error> authorizeWrite(const Principal& principal, const WriteRequest& request);
std::optional<Error> authorizeRead(const Principal& principal);
// `what` names the admin method for the message ("status", "keys").
std::optional<Error> authorizeAdmin(const Principal& principal, std::string_view what);

}  // namespace chorus::api
