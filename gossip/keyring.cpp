#include "gossip/keyring.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

namespace chorus::gossip {

namespace {

constexpr const char* kHeader = "# chorus keyring v1";
constexpr size_t kBase64Bytes = 44;  // sodium_base64_ENCODED_LEN(32, ORIGINAL) - 1
constexpr size_t kMaxFileBytes = 64 * 1024;

void needSodium() {
  static const bool ready = sodium_init() >= 0;
  if (!ready) {
    std::fprintf(stderr, "chorus: libsodium failed to initialize\n");
    std::abort();
  }
}

Error badKey(const std::string& why) {
  return makeError(ErrorCode::kInvalidArgument,
                   "cluster key: " + why +
                       "; a cluster key is 32 random bytes in standard base64 (44 characters "
                       "ending in '='): make one with `chorus cluster keys generate`");
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

bool isFingerprint(std::string_view s) {
  if (s.size() != 8) return false;
  for (char c : s) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

Error ioError(const std::string& what, const std::string& path) {
  return makeError(ErrorCode::kIo,
                   "keyring: cannot " + what + " " + path + ": " + std::strerror(errno));
}

}  // namespace

ClusterKey::ClusterKey(const uint8_t* bytes) {
  std::memcpy(bytes_.data(), bytes, bytes_.size());
  uint8_t hash[crypto_generichash_BYTES];
  crypto_generichash(hash, sizeof hash, bytes_.data(), bytes_.size(), nullptr, 0);
  id_ = uint32_t{hash[0]} << 24 | uint32_t{hash[1]} << 16 | uint32_t{hash[2]} << 8 | hash[3];
}

ClusterKey::~ClusterKey() { sodium_memzero(bytes_.data(), bytes_.size()); }

std::string ClusterKey::fingerprint() const {
  char out[9];
  std::snprintf(out, sizeof out, "%08x", id_);
  return out;
}

std::string ClusterKey::base64() const {
  char out[kBase64Bytes + 1];
  sodium_bin2base64(out, sizeof out, bytes_.data(), bytes_.size(), sodium_base64_VARIANT_ORIGINAL);
  return out;
}

std::string generateClusterKey() {
  needSodium();
  uint8_t bytes[kClusterKeyBytes];
  randombytes_buf(bytes, sizeof bytes);
  char out[kBase64Bytes + 1];
  sodium_bin2base64(out, sizeof out, bytes, sizeof bytes, sodium_base64_VARIANT_ORIGINAL);
  sodium_memzero(bytes, sizeof bytes);
  return out;
}

Result<std::vector<std::string>> readKeyFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return makeError(ErrorCode::kIo,
                     "cannot read key file '" + path + "': " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    Error e =
        makeError(ErrorCode::kIo, "cannot stat key file '" + path + "': " + std::strerror(errno));
    ::close(fd);
    return e;
  }
  // The same file the check saw (fstat on the open descriptor). Pipes and
  // other special files (a key handed over as <(...)) are not checked.
  if (S_ISREG(st.st_mode) && (st.st_mode & 077) != 0) {
    ::close(fd);
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return makeError(ErrorCode::kInvalidArgument,
                     "key file '" + path + "' has mode " + mode +
                         ": group or others may read or change the cluster key; refused "
                         "(run `chmod 600 " +
                         path + "`)");
  }
  std::string text;
  char buffer[4096];
  bool tooLarge = false;
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Error e =
          makeError(ErrorCode::kIo, "cannot read key file '" + path + "': " + std::strerror(errno));
      ::close(fd);
      sodium_memzero(buffer, sizeof buffer);
      sodium_memzero(text.data(), text.size());
      return e;
    }
    if (n == 0) break;
    text.append(buffer, size_t(n));
    if (text.size() > kMaxFileBytes) {
      tooLarge = true;
      break;
    }
  }
  ::close(fd);
  sodium_memzero(buffer, sizeof buffer);
  if (tooLarge) {
    sodium_memzero(text.data(), text.size());
    return makeError(ErrorCode::kInvalidArgument,
                     "key file '" + path + "' is larger than 64 KiB; it is not a key file");
  }
  std::vector<std::string> keys;
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + at, end - at);
    at = end + 1;
    size_t b = line.find_first_not_of(" \t\r");
    if (b == std::string_view::npos || line[b] == '#') continue;
    size_t e = line.find_last_not_of(" \t\r");
    keys.emplace_back(line.substr(b, e - b + 1));
  }
  sodium_memzero(text.data(), text.size());
  if (keys.empty()) {
    return makeError(ErrorCode::kInvalidArgument,
                     "key file '" + path + "' holds no key (make one with `(umask 077; chorus " +
                         "cluster keys generate > " + path + ")`)");
  }
  return keys;
}

Result<ClusterKey> parseClusterKey(std::string_view base64) {
  needSodium();
  base64 = trim(base64);
  if (base64.empty()) return badKey("empty");
  if (base64.size() != kBase64Bytes) {
    return badKey(std::to_string(base64.size()) + " characters, not 44");
  }
  uint8_t bytes[kClusterKeyBytes + 1];
  size_t length = 0;
  const char* end = nullptr;
  if (sodium_base642bin(bytes, sizeof bytes, base64.data(), base64.size(), nullptr, &length, &end,
                        sodium_base64_VARIANT_ORIGINAL) != 0 ||
      end != base64.data() + base64.size()) {
    return badKey("not valid base64");
  }
  if (length != kClusterKeyBytes) return badKey(std::to_string(length) + " bytes, not 32");
  ClusterKey key(bytes);
  sodium_memzero(bytes, sizeof bytes);
  return key;
}

// ---- Keyring ------------------------------------------------------------------

Result<Keyring> Keyring::fromBase64(const std::vector<std::string>& keys) {
  if (keys.empty()) {
    return makeError(ErrorCode::kInvalidArgument,
                     "gossip needs a cluster key: generate one with `chorus cluster keys generate` "
                     "and give every node the same one (chorusd --cluster-key-file)");
  }
  if (keys.size() > kMaxClusterKeys) {
    return makeError(ErrorCode::kInvalidArgument,
                     std::to_string(keys.size()) + " cluster keys given; at most 16");
  }
  Keyring ring;
  for (size_t i = 0; i < keys.size(); ++i) {
    auto key = parseClusterKey(keys[i]);
    if (!key.ok()) {
      return makeError(ErrorCode::kInvalidArgument, "key " + std::to_string(i + 1) + " of " +
                                                        std::to_string(keys.size()) + ": " +
                                                        key.error().message);
    }
    if (ring.keys_.empty()) {
      ring.keys_.push_back(key.value());
    } else if (auto added = ring.install(key.value()); !added.ok()) {
      return added.error();
    }
  }
  return ring;
}

Status Keyring::install(const ClusterKey& key) {
  if (contains(key)) return okStatus();
  if (find(key.id())) {
    return makeError(ErrorCode::kInvalidArgument, "another installed key has fingerprint " +
                                                      key.fingerprint() + "; generate a new key");
  }
  if (keys_.size() >= kMaxClusterKeys) {
    return makeError(
        ErrorCode::kInvalidArgument,
        "the keyring is full (16 keys): remove one first (`chorus cluster keys remove`)");
  }
  keys_.push_back(key);
  return okStatus();
}

Result<size_t> Keyring::locate(std::string_view keyOrFingerprint) const {
  keyOrFingerprint = trim(keyOrFingerprint);
  if (isFingerprint(keyOrFingerprint)) {
    std::string wanted(keyOrFingerprint);
    for (auto& c : wanted) c = char(std::tolower(static_cast<unsigned char>(c)));
    for (size_t i = 0; i < keys_.size(); ++i) {
      if (keys_[i].fingerprint() == wanted) return i;
    }
    return makeError(ErrorCode::kNotFound, "no installed cluster key has fingerprint " + wanted +
                                               " (`chorus cluster keys list` shows them)");
  }
  auto key = parseClusterKey(keyOrFingerprint);
  if (!key.ok()) {
    return makeError(ErrorCode::kInvalidArgument,
                     "neither a key fingerprint (8 hex digits) nor a key: " + key.error().message);
  }
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (keys_[i] == key.value()) return i;
  }
  return makeError(ErrorCode::kNotFound, "cluster key " + key->fingerprint() +
                                             " is not installed (`chorus cluster keys install`)");
}

Status Keyring::use(std::string_view keyOrFingerprint) {
  auto at = locate(keyOrFingerprint);
  if (!at.ok()) return at.error();
  // The new primary goes first, the others keep their order.
  ClusterKey key = keys_[at.value()];
  keys_.erase(keys_.begin() + ptrdiff_t(at.value()));
  keys_.insert(keys_.begin(), std::move(key));
  return okStatus();
}

Status Keyring::remove(std::string_view keyOrFingerprint) {
  auto at = locate(keyOrFingerprint);
  if (!at.ok()) return at.error();
  if (at.value() == 0) {
    return makeError(ErrorCode::kInvalidArgument,
                     "cluster key " + keys_[0].fingerprint() +
                         " is the primary: make another key the primary first "
                         "(`chorus cluster keys use`)");
  }
  keys_.erase(keys_.begin() + ptrdiff_t(at.value()));
  return okStatus();
}

const ClusterKey* Keyring::find(uint32_t id) const {
  for (const auto& k : keys_) {
    if (k.id() == id) return &k;
  }
  return nullptr;
}

bool Keyring::contains(const ClusterKey& key) const {
  for (const auto& k : keys_) {
    if (k == key) return true;
  }
  return false;
}

std::vector<KeyInfo> Keyring::list() const {
  std::vector<KeyInfo> out;
  for (size_t i = 0; i < keys_.size(); ++i) out.push_back({keys_[i].fingerprint(), i == 0});
  return out;
}

// ---- the file -----------------------------------------------------------------
//
//   # chorus keyring v1
//   primary <base64>
//   key <base64>
//   ...

Result<std::optional<Keyring>> Keyring::load(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::optional<Keyring>();
    return ioError("read", path);
  }
  std::string text;
  char buffer[4096];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Error e = ioError("read", path);
      ::close(fd);
      return e;
    }
    if (n == 0) break;
    text.append(buffer, size_t(n));
    if (text.size() > kMaxFileBytes) break;
  }
  ::close(fd);
  auto corrupt = [&](size_t line, const std::string& why) {
    return makeError(ErrorCode::kCorruption,
                     "keyring " + path + (line ? " line " + std::to_string(line) : "") + ": " +
                         why +
                         " (restore it from another node's keyring, or remove it to start "
                         "again from the configured keys)");
  };
  if (text.size() > kMaxFileBytes) return corrupt(0, "larger than 64 KiB");
  std::istringstream in(text);
  std::string line;
  size_t number = 0;
  std::optional<ClusterKey> primary;
  std::vector<ClusterKey> others;
  bool header = false;
  while (std::getline(in, line)) {
    ++number;
    if (number == 1) {
      if (line != kHeader)
        return corrupt(1, "not a Chorus keyring (expected '" + std::string(kHeader) + "')");
      header = true;
      continue;
    }
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string kind, base64, extra;
    fields >> kind >> base64;
    if (fields >> extra || (kind != "primary" && kind != "key")) {
      return corrupt(number, "expected 'primary <key>' or 'key <key>'");
    }
    auto key = parseClusterKey(base64);
    if (!key.ok()) return corrupt(number, key.error().message);
    if (kind == "primary") {
      if (primary) return corrupt(number, "a second primary key");
      primary = key.value();
    } else {
      others.push_back(key.value());
    }
  }
  if (!header) return corrupt(0, "empty");
  if (!primary) return corrupt(0, "no primary key");
  Keyring ring;
  ring.keys_.push_back(*primary);
  for (const auto& k : others) {
    if (ring.contains(k)) return corrupt(0, "key " + k.fingerprint() + " listed twice");
    if (auto added = ring.install(k); !added.ok()) return corrupt(0, added.error().message);
  }
  return std::optional<Keyring>(std::move(ring));
}

Status Keyring::save(const std::string& path) const {
  std::string text = std::string(kHeader) + "\n";
  for (size_t i = 0; i < keys_.size(); ++i) {
    text += (i == 0 ? "primary " : "key ") + keys_[i].base64() + "\n";
  }
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ioError("create", tmp);
  bool ok = ::fchmod(fd, 0600) == 0;  // a leftover temporary file may have had another mode
  for (size_t at = 0; ok && at < text.size();) {
    ssize_t n = ::write(fd, text.data() + at, text.size() - at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ok = false;
      break;
    }
    at += size_t(n);
  }
  ok = ok && ::fsync(fd) == 0;
  sodium_memzero(text.data(), text.size());
  if (!ok) {
    Error e = ioError("write", tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    return e;
  }
  if (::close(fd) != 0) return ioError("write", tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    Error e = ioError("replace", path);
    ::unlink(tmp.c_str());
    return e;
  }
  auto slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return ioError("open directory", dir);
  bool synced = ::fsync(dfd) == 0;
  ::close(dfd);
  if (!synced) return ioError("fsync directory", dir);
  return okStatus();
}

}  // namespace chorus::gossip
