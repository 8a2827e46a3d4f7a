// `chorus token create`: makes a client token and the line that grants it in
// a node's tokens file (see api/README.md). The token is shown once; the file
// keeps only its hash.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
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

// Creates `path` (O_EXCL: never an existing file, never through a symlink)
// with mode 0600 whatever the umask, writes `token` and a newline, fsyncs.
// On failure nothing is left behind.
Status writeTokenFile(const std::string& path, const std::string& token) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    if (errno == EEXIST) {
      return makeError(ErrorCode::kInvalidArgument,
                       "--out '" + path +
                           "' exists; a token file is never overwritten (the token in it may "
                           "still be in use): remove it first or choose another name");
    }
    return makeError(ErrorCode::kIo,
                     "cannot create token file '" + path + "': " + std::strerror(errno));
  }
  std::string text = token + "\n";
  bool ok = ::fchmod(fd, 0600) == 0 &&
            ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            ::fsync(fd) == 0;
  int err = errno;
  ok = ::close(fd) == 0 && ok;
  if (!ok) {
    ::unlink(path.c_str());
    return makeError(ErrorCode::kIo,
                     "cannot write token file '" + path + "': " + std::strerror(err));
  }
  return okStatus();
}

}  // namespace

void addTokenCommands(CLI::App& app, int& result) {
  auto* token =
      app.add_subcommand("token", "Client tokens (no node is contacted)")->require_subcommand(1);
  struct Flags {
    std::string principal, roles, tokensFile, out;
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
  create->footer(
      "Nodes read their tokens file at start and on SIGHUP (chorusd --tokens-file): `kill -HUP` "
      "each node to apply a change.");
  create->callback([&result, flags] {
    std::string t = api::newToken();
    auto line = api::tokenLine(flags->principal, flags->roles, t);
    if (!line.ok()) {
      result = fail(line);
      return;
    }
    // The token file first, so no grant is added whose token went nowhere;
    // if the grant then fails, the token file is removed again.
    if (!flags->out.empty()) {
      if (auto s = writeTokenFile(flags->out, t); !s.ok()) {
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
      if (flags->out.empty()) std::printf("%s\n", t.c_str());
    } else if (flags->out.empty()) {
      std::printf("token: %s\ntokens-file line: %s\n", t.c_str(), line->c_str());
    } else {
      std::printf("tokens-file line: %s\n", line->c_str());  // a hash: no secret
    }
    result = kExitOk;
  });
}

}  // namespace chorus::cli
