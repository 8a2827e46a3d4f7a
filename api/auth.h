// Client authentication and per-author authorization of the RPC API.
//
// Tokens: "chorus_" + 43 characters of URL-safe base64 (no padding) of 32
// random bytes. A node never stores a token, only its hash, in a tokens file
// the operator controls; one entry per line, `#` comments and blank lines
// ignored:
//
//   # principal  roles                hash
//   alice        writer,reader        blake2b:<64 lowercase hex digits>
//   mod-1        moderator            blake2b:...
//
// The hash is BLAKE2b-256 (libsodium crypto_generichash, 32-byte output, no
// key) of the whole token. A principal id follows the rules of an author id
// (api/validate.h); a principal may have several lines (token rotation).
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
  bool has(Role role) const;
};

// A fresh random token (libsodium's CSPRNG).
std::string newToken();
// "blake2b:" + lowercase hex of BLAKE2b-256(token).
std::string tokenHash(std::string_view token);
// The tokens-file line for a principal: "alice writer,reader blake2b:...".
// Errors: kInvalidArgument for a bad principal id, an unknown or missing
// role name, or an empty token.
Result<std::string> tokenLine(const std::string& principal, const std::string& rolesCommaSeparated,
                              std::string_view token);

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

 private:
  struct Entry {
    Principal principal;
    std::array<uint8_t, 32> hash;
  };
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
//   reads, watch    any role
//   Admin methods   admin
std::optional<Error> authorizeWrite(const Principal& principal, const WriteRequest& request);
std::optional<Error> authorizeRead(const Principal& principal);
// `what` names the admin method for the message ("status", "keys").
std::optional<Error> authorizeAdmin(const Principal& principal, std::string_view what);

}  // namespace chorus::api
