// `chorus token create|list|revoke`: makes a client token and the line that
// grants it in a node's tokens file (format: api/auth.h), lists the file's
// lines (never a token: the file has only hashes) and removes lines. The
// token is shown once; the file keeps only its hash. No node is contacted:
// nodes reread the file on SIGHUP.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>

#include "api/auth.h"
#include "tools/chorus/common.h"

namespace chorus::cli {

namespace {

// Appends `line` to `path` (created 0600 if missing) and fsyncs it.
Status appendLine(const std::string& path, const std::string& line) {
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    return makeError(ErrorCode::kIo,
                     "cannot open tokens file '" + path + "': " + std::strerror(errno));
  }
  std::string text = line + "\n";
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            ::fsync(fd) == 0;
  int err = errno;
  ::close(fd);
  if (!ok) {
    return makeError(ErrorCode::kIo,
                     "cannot write tokens file '" + path + "': " + std::strerror(err));
  }
  return okStatus();
}

// "30d", "12h", "90m", "3600s", "2w": a positive whole number and a unit;
// else nullopt.
std::optional<int64_t> parseExpiry(const std::string& text) {
  if (text.size() < 2 || text.size() > 12) return std::nullopt;
  int64_t n = 0;
  for (size_t i = 0; i + 1 < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') return std::nullopt;
    n = n * 10 + (text[i] - '0');
  }
  int64_t unit = 0;
  switch (text.back()) {
    case 's':
      unit = 1;
      break;
    case 'm':
      unit = 60;
      break;
    case 'h':
      unit = 3600;
      break;
    case 'd':
      unit = 86400;
      break;
    case 'w':
      unit = 7 * 86400;
      break;
    default:
      return std::nullopt;
  }
  if (n <= 0 || n > int64_t{100} * 366 * 86400 / unit) return std::nullopt;  // 100 years
  return n * unit;
}

Result<std::string> readWhole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return makeError(ErrorCode::kIo,
                     "cannot read tokens file '" + path + "': " + std::strerror(errno));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Replaces `path` by `text` atomically (a 0600 temporary file in the same
// folder, fsynced, renamed over it), keeping the file's mode.
Status replaceFile(const std::string& path, const std::string& text) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return makeError(ErrorCode::kIo, "cannot stat '" + path + "': " + std::strerror(errno));
  }
  std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  ::unlink(tmp.c_str());
  if (auto s = writeSecretFile(tmp, text, "temporary tokens"); !s.ok()) return s;
  if (::chmod(tmp.c_str(), st.st_mode & 07777) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return makeError(ErrorCode::kIo, "cannot replace '" + path + "': " + std::strerror(err));
  }
  return okStatus();
}

}  // namespace

void addTokenCommands(CLI::App& app, const Globals& g, int& result) {
  auto* token =
      app.add_subcommand("token", "Client tokens (no node is contacted)")->require_subcommand(1);
  struct Flags {
    std::string principal, roles, tokensFile, out, expires, id;
  };
  auto flags = std::make_shared<Flags>();
  auto* create = token->add_subcommand(
      "create",
      "Make a random token for a principal. Prints the token once (or writes it to --out); the "
      "tokens file keeps only its hash");
  create
      ->add_option("--principal", flags->principal,
                   "Who the token speaks for: writes are allowed only to reviews with this "
                   "author id, votes only as this voter")
      ->required();
  create
      ->add_option("--roles", flags->roles,
                   "Comma-separated: reader, writer, moderator, merchant, admin")
      ->required();
  create->add_option("--tokens-file", flags->tokensFile,
                     "Append the grant to this tokens file (created 0600) and print only the "
                     "token; without it, the line to add is printed too");
  create->add_option("--out", flags->out,
                     "Write the token to this new file (created 0600, never overwritten) "
                     "instead of printing it; use it with --token-file");
  create->add_option("--expires", flags->expires,
                     "Refuse the token after this long: 30d, 12h, 2w, 90m (the line gets "
                     "expires=<UTC time>); default never");
  create->footer(
      "Nodes read their tokens file at start and on SIGHUP (chorusd --tokens-file): `kill -HUP` "
      "each node to apply a change.");
  create->callback([&result, flags, &g] {
    int64_t now = static_cast<int64_t>(std::time(nullptr)), expires = 0;
    if (!flags->expires.empty()) {
      auto d = parseExpiry(flags->expires);
      if (!d) {
        result = usageError("--expires: '" + flags->expires +
                            "' is not a duration like 30d, 12h, 2w or 90m (1 s to 100 years)");
        return;
      }
      expires = now + *d;
    }
    std::string t = api::newToken();
    auto line = api::tokenLine(flags->principal, flags->roles, t, now, expires);
    if (!line.ok()) {
      result = fail(line);
      return;
    }
    // The token file first, so no grant is added whose token went nowhere;
    // if the grant then fails, the token file is removed again.
    if (!flags->out.empty()) {
      if (auto s = writeSecretFile(flags->out, t + "\n", "token"); !s.ok()) {
        result = fail(s);
        return;
      }
    }
    if (!flags->tokensFile.empty()) {
      if (auto s = appendLine(flags->tokensFile, *line); !s.ok()) {
        if (!flags->out.empty()) ::unlink(flags->out.c_str());
        result = fail(s);
        return;
      }
    }
    if (g.json) {  // the token only where the text output shows it too
      std::string token = flags->out.empty() ? json(t) : "null";
      std::printf("{\"id\":%s,\"principal\":%s,\"token\":%s,\"line\":%s}\n",
                  json(api::shortId(api::tokenHash(t))).c_str(), json(flags->principal).c_str(),
                  token.c_str(), json(*line).c_str());
    } else if (!flags->tokensFile.empty()) {
      if (flags->out.empty()) std::printf("%s\n", t.c_str());
    } else if (flags->out.empty()) {
      std::printf("token: %s\ntokens-file line: %s\n", t.c_str(), line->c_str());
    } else {
      std::printf("tokens-file line: %s\n", line->c_str());  // a hash: no secret
    }
    result = kExitOk;
  });

  auto* list = token->add_subcommand(
      "list", "The tokens file's lines: id, principal, roles, created, expires (never a token)");
  list->add_option("--tokens-file", flags->tokensFile, "The tokens file")->required();
  list->callback([&result, flags, &g] {
    auto table = api::TokenTable::load(flags->tokensFile);
    if (!table.ok()) {
      result = fail(table);
      return;
    }
    bool json = g.json;
    int64_t now = static_cast<int64_t>(std::time(nullptr));
    auto when = [](int64_t t, const char* none) {
      return t == 0 ? std::string(none) : api::formatUtcTime(t);
    };
    if (json) {
      std::string out = "[";
      for (const auto& e : table->entries()) {
        auto time = [&](int64_t t) {
          return t == 0 ? std::string("null") : cli::json(api::formatUtcTime(t));
        };
        std::string roles = "[";
        for (auto r : e.principal.roles)
          roles += (roles.size() > 1 ? "," : "") + cli::json(api::roleName(r));
        out += (out.size() > 1 ? "," : "") + std::string("{\"id\":") + cli::json(e.id()) +
               ",\"principal\":" + cli::json(e.principal.id) + ",\"roles\":" + roles +
               "],\"created\":" + time(e.createdUnixSeconds) +
               ",\"expires\":" + time(e.principal.expiresUnixSeconds) +
               ",\"expired\":" + (e.principal.expired(now) ? "true" : "false") +
               ",\"line\":" + std::to_string(e.line) + "}";
      }
      std::printf("%s]\n", out.c_str());
    } else {
      std::printf("%-8s  %-20s  %-24s  %-20s  %s\n", "ID", "PRINCIPAL", "ROLES", "CREATED",
                  "EXPIRES");
      for (const auto& e : table->entries()) {
        std::string expires = when(e.principal.expiresUnixSeconds, "never");
        if (e.principal.expired(now)) expires += " (expired)";
        std::printf("%-8s  %-20s  %-24s  %-20s  %s\n", e.id().c_str(), e.principal.id.c_str(),
                    api::joinRoles(e.principal.roles).c_str(),
                    when(e.createdUnixSeconds, "-").c_str(), expires.c_str());
      }
      if (table->entries().empty()) std::printf("(no tokens)\n");
    }
    result = kExitOk;
  });

  auto* revoke = token->add_subcommand(
      "revoke",
      "Remove token lines from the tokens file: every line of --principal, or the line of --id "
      "(from `token list`); then `kill -HUP` each node to apply");
  auto* byPrincipal =
      revoke->add_option("--principal", flags->principal, "Every token of this principal");
  revoke->add_option("--id", flags->id, "The token with this id (`chorus token list`)")
      ->excludes(byPrincipal);
  revoke->add_option("--tokens-file", flags->tokensFile, "The tokens file")->required();
  revoke->callback([&result, flags] {
    if (flags->principal.empty() == flags->id.empty()) {
      result = usageError("token revoke: give --principal P or --id ID");
      return;
    }
    auto table = api::TokenTable::load(flags->tokensFile);  // refuses a broken file
    if (!table.ok()) {
      result = fail(table);
      return;
    }
    std::set<size_t> drop;  // line numbers
    std::string what;
    for (const auto& e : table->entries()) {
      bool match = flags->id.empty() ? e.principal.id == flags->principal
                                     : e.id().rfind(flags->id, 0) == 0 && flags->id.size() >= 4;
      if (!match) continue;
      drop.insert(e.line);
      what += (what.empty() ? "" : ", ") + e.id() + " (" + e.principal.id + ")";
    }
    if (drop.empty()) {
      result = fail(makeError(
          ErrorCode::kNotFound,
          (flags->id.empty()
               ? "principal " + flags->principal
               : "id " + flags->id + (flags->id.size() < 4 ? " (at least 4 hex digits)" : "")) +
              ": no such token in " + flags->tokensFile));
      return;
    }
    if (!flags->id.empty() && drop.size() > 1) {
      result = fail(makeError(ErrorCode::kInvalidArgument,
                              "id " + flags->id + " matches " + what + "; give more digits"));
      return;
    }
    auto text = readWhole(flags->tokensFile);
    if (!text.ok()) {
      result = fail(text);
      return;
    }
    std::string kept;
    size_t lineNo = 0, pos = 0;
    while (pos < text->size()) {
      size_t end = text->find('\n', pos);
      size_t next = end == std::string::npos ? text->size() : end + 1;
      if (!drop.count(++lineNo)) kept += text->substr(pos, next - pos);
      pos = next;
    }
    if (auto s = replaceFile(flags->tokensFile, kept); !s.ok()) {
      result = fail(s);
      return;
    }
    std::printf("revoked %zu token(s): %s\nsend each node SIGHUP (kill -HUP PID) to apply\n",
                drop.size(), what.c_str());
    result = kExitOk;
  });
}

}  // namespace chorus::cli
