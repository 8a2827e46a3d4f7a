// The sealed stream of one gossip connection, in memory: frames open only on
// the connection, in the direction and at the position they were sealed for.
#include <doctest/doctest.h>

#include "gossip/secure-channel.h"

using namespace chorus;
using namespace chorus::gossip;
using Kind = SecureChannel::Received::Kind;

namespace {

Keyring ringOf(const std::vector<std::string>& keys) {
  auto ring = Keyring::fromBase64(keys);
  REQUIRE(ring.ok());
  return std::move(ring).value();
}

ClusterKey keyOf(const std::string& base64) { return parseClusterKey(base64).value(); }

// Two ends of a connection that exchanged preambles.
struct Pair {
  SecureChannel a{1 << 20}, b{1 << 20};
  std::string aPreamble = a.preamble(), bPreamble = b.preamble();
  explicit Pair(const Keyring& ring) {
    a.append(bPreamble.data(), bPreamble.size());
    b.append(aPreamble.data(), aPreamble.size());
    CHECK(a.next(ring).kind == Kind::kNeedMore);
    CHECK(b.next(ring).kind == Kind::kNeedMore);
    REQUIRE(a.ready());
    REQUIRE(b.ready());
  }
};

std::string body(char fill, size_t words = 4) { return std::string(words * 8, fill); }

std::string text(const kj::Array<capnp::word>& words) {
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

Kind feed(SecureChannel& to, const std::string& bytes, const Keyring& ring) {
  to.append(bytes.data(), bytes.size());
  return to.next(ring).kind;
}

}  // namespace

TEST_CASE("sealed frames open in order, both ways, cut into any pieces") {
  std::string k = generateClusterKey();
  auto ring = ringOf({k});
  Pair p(ring);
  std::string stream;
  for (int i = 0; i < 5; ++i)
    stream += p.a.seal(ring.primary(), body(char('a' + i), size_t(i + 1)));
  CHECK(stream.size() == 5 * kSealOverheadBytes + 15 * 8);
  CHECK(stream.find(body('c', 3)) == std::string::npos);  // not in clear
  size_t got = 0;
  for (size_t at = 0; at < stream.size(); at += 7) {
    p.b.append(stream.data() + at, std::min<size_t>(7, stream.size() - at));
    for (auto r = p.b.next(ring); r.kind != Kind::kNeedMore; r = p.b.next(ring)) {
      REQUIRE(r.kind == Kind::kFrame);
      CHECK(text(r.body) == body(char('a' + got), got + 1));
      ++got;
    }
  }
  CHECK(got == 5);
  auto back = p.b.seal(ring.primary(), body('z'));
  p.a.append(back.data(), back.size());
  auto r = p.a.next(ring);
  REQUIRE(r.kind == Kind::kFrame);
  CHECK(text(r.body) == body('z'));
}

TEST_CASE("a receiver accepts any installed key and refuses others") {
  std::string k1 = generateClusterKey(), k2 = generateClusterKey();
  auto both = ringOf({k1, k2});
  auto onlyK1 = ringOf({k1});
  Pair p(both);
  CHECK(feed(p.b, p.a.seal(keyOf(k2), body('x')), both) == Kind::kFrame);
  CHECK(feed(p.b, p.a.seal(keyOf(k1), body('y')), both) == Kind::kFrame);
  auto r = [&] {
    std::string sealed = p.a.seal(keyOf(k2), body('w'));
    p.b.append(sealed.data(), sealed.size());
    return p.b.next(onlyK1);
  }();
  CHECK(r.kind == Kind::kAuthFailed);
  CHECK(r.why.find(keyOf(k2).fingerprint()) != std::string::npos);
}

TEST_CASE("every flipped bit of a sealed frame is refused") {
  auto ring = ringOf({generateClusterKey()});
  size_t frameBytes = 0;
  for (size_t bit = 0;; ++bit) {
    Pair p(ring);
    std::string sealed = p.a.seal(ring.primary(), body('m'));
    frameBytes = sealed.size();
    if (bit >= frameBytes * 8) break;
    sealed[bit / 8] = char(sealed[bit / 8] ^ (1 << (bit % 8)));
    p.b.append(sealed.data(), sealed.size());
    auto r = p.b.next(ring);
    CAPTURE(bit);
    if (bit < 32) {
      // The length: too short or not whole words is malformed, longer waits
      // for bytes that never come (the connection times out or closes).
      CHECK(r.kind != Kind::kFrame);
      CHECK(r.kind != Kind::kReplayed);
    } else if (bit < 64) {
      CHECK(r.kind == Kind::kAuthFailed);  // key id: no such key
    } else {
      // seq, the challenge, the nonce, the ciphertext and the tag are all
      // bound by the tag.
      CHECK(r.kind == Kind::kAuthFailed);
    }
  }
  CHECK(frameBytes == kSealOverheadBytes + 32);
}

TEST_CASE(
    "replays: a repeated, skipped or reordered frame, and a stream recorded on another "
    "connection") {
  auto ring = ringOf({generateClusterKey()});
  {
    Pair p(ring);
    std::string f0 = p.a.seal(ring.primary(), body('0'));
    std::string f1 = p.a.seal(ring.primary(), body('1'));
    CHECK(feed(p.b, f0, ring) == Kind::kFrame);
    CHECK(feed(p.b, f0, ring) == Kind::kReplayed);  // the same frame again
  }
  {
    Pair p(ring);
    (void)p.a.seal(ring.primary(), body('0'));  // lost
    CHECK(feed(p.b, p.a.seal(ring.primary(), body('1')), ring) == Kind::kReplayed);
  }
  {
    // Recorded: a's side of a whole connection. Replayed to a fresh receiver,
    // preamble included: its challenge differs, so the first frame is refused.
    Pair p(ring);
    std::string recorded = p.aPreamble;
    for (int i = 0; i < 3; ++i) recorded += p.a.seal(ring.primary(), body(char('r' + i)));
    SecureChannel fresh(1 << 20);
    fresh.append(recorded.data(), recorded.size());
    auto r = fresh.next(ring);
    CHECK(r.kind == Kind::kReplayed);
    CHECK(r.why.find("another connection") != std::string::npos);
  }
  {
    // Reflected: b's frames sent back to b.
    Pair p(ring);
    CHECK(feed(p.b, p.b.seal(ring.primary(), body('b')), ring) != Kind::kFrame);
  }
}

TEST_CASE("streams that are not sealed gossip are refused before anything large is buffered") {
  auto ring = ringOf({generateClusterKey()});
  {
    SecureChannel c(1 << 20);
    std::string plaintext("\x10\x00\x00\x00", 4);  // an old-style frame length
    c.append(plaintext.data(), plaintext.size());
    CHECK(c.next(ring).kind == Kind::kNotSealed);
  }
  {
    SecureChannel c(1 << 20);
    std::string preamble = SecureChannel(1 << 20).preamble();
    preamble[4] = 9;  // another version
    c.append(preamble.data(), preamble.size());
    CHECK(c.next(ring).kind == Kind::kMalformed);
  }
  {
    // Before any frame opened, at most kMaxUnauthenticatedBytes: a stranger
    // cannot make the node wait for (and buffer) a 1 MiB frame.
    Pair p(ring);
    std::string big("\x00\x00\x10\x00", 4);  // 1 MiB
    CHECK(feed(p.b, big, ring) == Kind::kMalformed);
  }
  {
    Pair p(ring);
    std::string tiny("\x08\x00\x00\x00", 4);
    CHECK(feed(p.b, tiny, ring) == Kind::kMalformed);
  }
  {
    // After one frame opened, frames up to the limit are fine.
    Pair p(ring);
    CHECK(feed(p.b, p.a.seal(ring.primary(), body('s')), ring) == Kind::kFrame);
    CHECK(feed(p.b, p.a.seal(ring.primary(), body('L', (256 << 10) / 8)), ring) == Kind::kFrame);
  }
}
