// api/auth.h without RPC: tokens, the tokens file, and the authorization
// table. The RPC enforcement is in rpc-auth-test.cpp.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <set>

#include "api/auth.h"
#include "support/results.h"
#include "temp-dir.h"

using chorus::ErrorCode;
using chorus::WriteOp;
using chorus::WriteRequest;
using chorus::api::Principal;
using chorus::api::Role;
using chorus::api::TokenTable;
using chorus::test::failure;
using chorus::test::present;
using chorus::test::TempDir;

namespace {

void writeFile(const std::string& path, const std::string& text, mode_t mode) {
  FILE* f = std::fopen(path.c_str(), "w");
  REQUIRE(f != nullptr);
  std::fputs(text.c_str(), f);
  std::fclose(f);
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

std::string parseError(const std::string& text) {
  auto table = TokenTable::parse(text, "tokens");
  REQUIRE_FALSE(table.ok());
  CHECK(table.error().code == ErrorCode::kInvalidArgument);
  return table.error().message;
}

}  // namespace

TEST_CASE("tokens: format, randomness, hash") {
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) {
    std::string t = chorus::api::newToken();
    REQUIRE(t.size() == 7 + 43);
    CHECK(t.rfind("chorus_", 0) == 0);
    CHECK(t.substr(7).find_first_not_of(
              "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
          std::string::npos);
    seen.insert(t);
  }
  CHECK(seen.size() == 100);
  // BLAKE2b-256 of "abc" (RFC 7693 parameters, 32-byte output).
  CHECK(chorus::api::tokenHash("abc") ==
        "blake2b:bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319");
}

TEST_CASE("tokens: tokenLine checks the principal and the roles") {
  auto line = chorus::api::tokenLine("alice", "writer,reader", "chorus_x");
  REQUIRE(line.ok());
  CHECK(*line == "alice writer,reader " + chorus::api::tokenHash("chorus_x"));
  CHECK(failure(chorus::api::tokenLine("al ice", "writer", "t")).code ==
        ErrorCode::kInvalidArgument);
  CHECK(failure(chorus::api::tokenLine("", "writer", "t")).code == ErrorCode::kInvalidArgument);
  auto badRole = chorus::api::tokenLine("alice", "writer,root", "t");
  REQUIRE_FALSE(badRole.ok());
  CHECK(badRole.error().message.find("unknown role 'root'") != std::string::npos);
  CHECK_FALSE(chorus::api::tokenLine("alice", "", "t").ok());
  CHECK_FALSE(chorus::api::tokenLine("alice", "writer,", "t").ok());
  CHECK_FALSE(chorus::api::tokenLine("alice", "writer", "").ok());
}

TEST_CASE("tokens file: a table finds its principals, and only them") {
  std::string a = chorus::api::newToken(), b = chorus::api::newToken();
  std::string text = "# operators' tokens\n\n" + *chorus::api::tokenLine("alice", "writer", a) +
                     "\n   \t\n" + *chorus::api::tokenLine("ops", "admin,reader", b) +
                     "  # trailing comment\r\n";
  auto table = TokenTable::parse(text, "t");
  REQUIRE_MESSAGE(table.ok(), table.error().toString());
  CHECK(table->size() == 2);
  auto alice = table->find(a);
  REQUIRE(alice.has_value());
  CHECK(alice->id == "alice");
  CHECK(alice->has(Role::kWriter));
  CHECK_FALSE(alice->has(Role::kReader));
  auto ops = table->find(b);
  REQUIRE(ops.has_value());
  CHECK(ops->roles == std::vector<Role>{Role::kAdmin, Role::kReader});
  CHECK_FALSE(table->find(chorus::api::newToken()).has_value());
  CHECK_FALSE(table->find("").has_value());
  CHECK_FALSE(table->find(a + "x").has_value());
  CHECK(TokenTable::parse("", "t")->size() == 0);
}

TEST_CASE("tokens file: parse errors name file:line and the problem") {
  std::string h = chorus::api::tokenHash("x");
  CHECK(parseError("# ok\nalice writer\n") ==
        "tokens:2: expected '<principal> <roles> blake2b:<hex> [created=...] [expires=...]', got "
        "2 field(s)");
  CHECK(parseError("alice writer " + h + " extra\n").find("tokens:1: unknown field 'extra'") == 0);
  // A misspelt field never leaves a token valid for good.
  CHECK(parseError("alice writer " + h + " expire=2030-01-01T00:00:00Z\n")
            .find("tokens:1: unknown field 'expire=") == 0);
  CHECK(parseError("alice writer " + h + " expires=2030-01-01\n")
            .find("tokens:1: expires: '2030-01-01' is not a UTC time") == 0);
  CHECK(parseError("alice writer " + h + " expires=2030-02-30T00:00:00Z\n")
            .find("tokens:1: expires:") == 0);
  CHECK(parseError("alice writer " + h +
                   " expires=2030-01-01T00:00:00Z expires=2031-01-01T00:00:00Z\n")
            .find("tokens:1: expires given twice") == 0);
  CHECK(parseError("al/ice writer " + h).find("tokens:1: principal 'al/ice'") == 0);
  CHECK(parseError("alice writer,root " + h).find("tokens:1: roles: unknown role 'root'") == 0);
  CHECK(parseError("alice writer sha256:" + h.substr(8)).find("tokens:1: hash: must start") == 0);
  CHECK(parseError("alice writer blake2b:abc").find("tokens:1: hash: expected 64") == 0);
  std::string upper = h;
  upper[10] = 'A';
  upper[11] = 'B';
  CHECK(parseError("\n\nalice writer " + upper).find("tokens:3: hash: not lowercase hex") == 0);
  CHECK(parseError("alice writer " + h + "\nbob writer " + h)
            .find("tokens:2: hash: the same token is already listed for principal alice") == 0);
}

TEST_CASE("tokens file: load refuses files others may write, reports unreadable ones") {
  TempDir tmp;
  std::string token = chorus::api::newToken();
  std::string text = *chorus::api::tokenLine("alice", "writer", token) + "\n";

  writeFile(tmp.sub("ok"), text, 0600);
  auto ok = TokenTable::load(tmp.sub("ok"));
  REQUIRE_MESSAGE(ok.ok(), ok.error().toString());
  CHECK(ok->find(token)->id == "alice");

  writeFile(tmp.sub("readable"), text, 0644);  // hashes only: a warning, not a refusal
  CHECK(TokenTable::load(tmp.sub("readable")).ok());

  for (mode_t mode : {mode_t(0620), mode_t(0602), mode_t(0666)}) {
    writeFile(tmp.sub("writable"), text, mode);
    auto refused = TokenTable::load(tmp.sub("writable"));
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().code == ErrorCode::kInvalidArgument);
    CHECK(refused.error().message.find("chmod 600") != std::string::npos);
  }

  auto missing = TokenTable::load(tmp.sub("missing"));
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == ErrorCode::kIo);
  CHECK(missing.error().message.find(tmp.sub("missing")) != std::string::npos);

  writeFile(tmp.sub("bad"), "# header\nalice writer nothash\n", 0600);
  auto bad = TokenTable::load(tmp.sub("bad"));
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find(tmp.sub("bad") + ":2: hash:") == 0);
}

namespace {

WriteRequest request(WriteOp op, std::string author, std::string arg = "x") {
  WriteRequest r;
  r.op = op;
  r.product = "p";
  r.author = std::move(author);
  r.arg = std::move(arg);
  r.rating = 5;
  return r;
}

Principal principal(std::string id, std::vector<Role> roles) { return {std::move(id), roles}; }

}  // namespace

TEST_CASE("authorize: every write operation by every role, on own and others' reviews") {
  const Role roles[] = {Role::kReader, Role::kWriter, Role::kModerator, Role::kMerchant,
                        Role::kAdmin};
  const WriteOp ops[] = {WriteOp::kPut, WriteOp::kDelete, WriteOp::kVote,     WriteOp::kUnvote,
                         WriteOp::kTag, WriteOp::kUntag,  WriteOp::kModerate, WriteOp::kReply};
  for (Role role : roles) {
    auto p = principal("alice", {role});
    for (WriteOp op : ops) {
      for (bool own : {true, false}) {
        // Votes are always cast on someone else's review, as oneself.
        WriteRequest r = request(op, own ? "alice" : "bob",
                                 op == WriteOp::kVote || op == WriteOp::kUnvote ? "alice" : "t");
        bool allowed = false;
        switch (op) {
          case WriteOp::kPut:
          case WriteOp::kDelete:
            allowed = role == Role::kWriter && own;
            break;
          case WriteOp::kTag:
          case WriteOp::kUntag:
            allowed = (role == Role::kWriter && own) || role == Role::kModerator;
            break;
          case WriteOp::kVote:
          case WriteOp::kUnvote:
            allowed = role == Role::kWriter;
            break;
          case WriteOp::kModerate:
            allowed = role == Role::kModerator;
            break;
          case WriteOp::kReply:
            allowed = role == Role::kMerchant;
            break;
        }
        auto refusal = chorus::api::authorizeWrite(p, r);
        std::string roleName = chorus::api::roleName(role), opName = chorus::writeOpName(op);
        CAPTURE(roleName);
        CAPTURE(opName);
        CAPTURE(own);
        CHECK(refusal.has_value() == !allowed);
        if (refusal) CHECK(refusal->code == ErrorCode::kForbidden);
      }
    }
    CHECK_FALSE(chorus::api::authorizeRead(p).has_value());
    CHECK(chorus::api::authorizeAdmin(p, "status").has_value() == (role != Role::kAdmin));
  }
  CHECK(chorus::api::authorizeRead(principal("nobody", {})).has_value());
}

TEST_CASE("authorize: refusals say what was needed") {
  auto alice = principal("alice", {Role::kWriter});
  CHECK(present(chorus::api::authorizeWrite(alice, request(WriteOp::kDelete, "bob"))).message ==
        "author: erase of a review by bob needs principal bob; you are alice");
  CHECK(present(chorus::api::authorizeWrite(alice, request(WriteOp::kTag, "bob"))).message ==
        "author: tag of a review by bob needs principal bob (or the moderator role); you are "
        "alice");
  CHECK(present(chorus::api::authorizeWrite(alice, request(WriteOp::kVote, "bob", "carol")))
            .message == "voter: you can only vote as yourself (alice), not as carol");
  CHECK(present(chorus::api::authorizeWrite(alice, request(WriteOp::kModerate, "bob"))).message ==
        "role: moderate needs the moderator role; alice has writer");
  CHECK(present(chorus::api::authorizeAdmin(alice, "keys")).message ==
        "role: Admin.keys needs the admin role; alice has writer");
  // Several roles add up.
  auto both = principal("m", {Role::kWriter, Role::kMerchant});
  CHECK_FALSE(chorus::api::authorizeWrite(both, request(WriteOp::kPut, "m")).has_value());
  CHECK_FALSE(chorus::api::authorizeWrite(both, request(WriteOp::kReply, "x")).has_value());
}

TEST_CASE("tokens file: created and expires fields, short ids, and old three-field lines") {
  std::string a = chorus::api::newToken(), b = chorus::api::newToken();
  auto created = chorus::api::parseUtcTime("2026-11-27T10:00:00Z");
  REQUIRE(created.has_value());
  CHECK(*created == 1'795'773'600);
  CHECK(chorus::api::formatUtcTime(*created) == "2026-11-27T10:00:00Z");
  CHECK_FALSE(chorus::api::parseUtcTime("2026-11-27 10:00:00Z").has_value());
  CHECK_FALSE(chorus::api::parseUtcTime("2026-13-01T00:00:00Z").has_value());
  auto line = chorus::api::tokenLine("ops", "admin", a, *created, *created + 86400);
  REQUIRE(line.ok());
  CHECK(*line == "ops admin " + chorus::api::tokenHash(a) +
                     " created=2026-11-27T10:00:00Z expires=2026-11-28T10:00:00Z");
  CHECK_FALSE(chorus::api::tokenLine("ops", "admin", a, *created, *created).ok());
  // A line of the old format (three fields) next to a new one.
  std::string text = *chorus::api::tokenLine("alice", "writer", b) + "\n" + *line + "\n";
  auto table = TokenTable::parse(text, "t");
  REQUIRE_MESSAGE(table.ok(), table.error().toString());
  REQUIRE(table->entries().size() == 2);
  const auto& old = table->entries()[0];
  CHECK(old.createdUnixSeconds == 0);
  CHECK(old.principal.expiresUnixSeconds == 0);
  CHECK(old.line == 1);
  CHECK(old.id() == chorus::api::tokenHash(b).substr(8, 8));
  CHECK(old.id() == chorus::api::shortId(chorus::api::tokenHash(b)));
  const auto& ops = table->entries()[1];
  CHECK(ops.createdUnixSeconds == *created);
  CHECK(ops.principal.expiresUnixSeconds == *created + 86400);
  // Expiry: the principal is found, and expiredError says so once past it.
  auto found = table->find(a);
  REQUIRE(found.has_value());
  CHECK_FALSE(chorus::api::expiredError(*found, *created + 86399).has_value());
  auto expired = chorus::api::expiredError(*found, *created + 86400);
  REQUIRE(expired.has_value());
  CHECK(expired->message.rfind("token expired at 2026-11-28T10:00:00Z (principal ops)", 0) == 0);
  CHECK_FALSE(chorus::api::expiredError(*table->find(b), INT64_MAX).has_value());  // never
}
