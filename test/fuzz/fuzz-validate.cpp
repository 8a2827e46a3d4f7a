// Fuzz target: the client API's request validation (api/validate.h), pure
// functions with no I/O.
//
// Input: a selector byte (which request), a limits byte, then the request's
// fields in fuzz::Reader's format (2-byte length + bytes; 4 bytes for a
// rating). Each answer is compared with an independent model of the rules
// in api/validate.h (UTF-8 by the table of well-formed byte sequences of the
// Unicode standard, not by decoding): same accept/refuse, and a refusal
// names the field the model expects, with a message.
#include <cmath>
#include <vector>

#include "api/validate.h"
#include "fuzz-support.h"

using namespace chorus;
using api::Check;
using api::Limits;

namespace {

// Unicode 15, table 3-7, without NUL.
bool modelUtf8(std::string_view s) {
  size_t i = 0;
  auto in = [&](size_t k, unsigned lo, unsigned hi) {
    if (i + k >= s.size()) return false;
    auto c = static_cast<unsigned char>(s[i + k]);
    return c >= lo && c <= hi;
  };
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len;
    if (c >= 0x01 && c <= 0x7F) {
      len = 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
      if (!in(1, 0x80, 0xBF)) return false;
      len = 2;
    } else if (c == 0xE0 || c == 0xED || (c >= 0xE1 && c <= 0xEF)) {
      unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
      if (!in(1, lo, hi) || !in(2, 0x80, 0xBF)) return false;
      len = 3;
    } else if (c >= 0xF0 && c <= 0xF4) {
      unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
      if (!in(1, lo, hi) || !in(2, 0x80, 0xBF) || !in(3, 0x80, 0xBF)) return false;
      len = 4;
    } else {
      return false;
    }
    i += len;
  }
  return true;
}

using Expect = std::optional<std::string>;  // the field the model refuses, if any

Expect modelId(const std::string& field, std::string_view v, const Limits& l) {
  if (v.empty() || v.size() > l.maxIdBytes) return field;
  for (char c : v) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              std::string_view("._:@-").find(c) != std::string_view::npos;
    if (!ok) return field;
  }
  return std::nullopt;
}

Expect modelText(const std::string& field, std::string_view v, size_t max) {
  if (v.size() > max || !modelUtf8(v)) return field;
  return std::nullopt;
}

Expect first(std::initializer_list<Expect> checks) {
  for (const auto& e : checks)
    if (e) return e;
  return std::nullopt;
}

void same(const Check& got, const Expect& want, const std::string& what) {
  FUZZ_CHECK(got.has_value() == want.has_value(),
             what + ": validation " + (got ? "refused (" + got->field + ": " + got->message + ")"
                                           : std::string("accepted")) +
                 ", the model " + (want ? "refuses " + *want : std::string("accepts")));
  if (!got) return;
  FUZZ_CHECK(got->field == *want, what + ": refused field " + got->field + ", expected " + *want);
  FUZZ_CHECK(!got->message.empty(), what + ": refusal without a message");
  Error e = got->toError();
  FUZZ_CHECK(e.code == ErrorCode::kInvalidArgument, what + ": not invalid-argument");
  FUZZ_CHECK(e.message == got->field + ": " + got->message, what + ": error message " + e.message);
}

// parseDuration's grammar: [+-] digits with at most one '.', then a unit.
bool modelDuration(std::string_view s, double bareMillis, double& millis) {
  bool negative = false;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  size_t i = 0, digits = 0;
  bool dot = false;
  for (; i < s.size(); ++i) {
    if (s[i] >= '0' && s[i] <= '9') {
      ++digits;
    } else if (s[i] == '.' && !dot) {
      dot = true;
    } else {
      break;
    }
  }
  if (digits == 0 || i > 24) return false;
  std::string_view unit = s.substr(i);
  double scale;
  if (unit.empty()) scale = bareMillis;
  else if (unit == "ms") scale = 1;
  else if (unit == "s") scale = 1000;
  else if (unit == "m" || unit == "min") scale = 60'000;
  else if (unit == "h") scale = 3'600'000;
  else return false;
  millis = std::strtod(std::string(s.substr(0, i)).c_str(), nullptr) * scale;
  if (millis > 1000.0 * 3'600'000) return false;
  if (negative) millis = -millis;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader in(data, size);
  uint8_t which = in.byte();
  Limits limits;
  if (in.byte() & 1) limits = Limits{8, 16, 32, 12};  // small: every length limit is reachable
  std::string product = in.field(), author = in.field();
  Expect key = first({modelId("product", product, limits), modelId("author", author, limits)});
  same(api::checkKey(product, author, limits), key, "key");

  switch (which % 8) {
    case 0: {
      uint32_t rating = in.u32();
      std::string title = in.field(), body = in.field();
      Expect rated = rating >= 1 && rating <= 5 ? Expect() : Expect("rating");
      same(api::checkPut(product, author, rating, title, body, limits),
           first({key, rated, modelText("title", title, limits.maxTitleBytes),
                  modelText("body", body, limits.maxBodyBytes)}),
           "put");
      same(api::checkRating(rating), rated, "rating");
      break;
    }
    case 1:
    case 2: {
      std::string field = which % 8 == 1 ? "voter" : "tag";
      std::string value = in.field();
      same(api::checkKeyAnd(product, author, field, value, limits),
           first({key, modelId(field, value, limits)}), field);
      same(api::checkId(field, value, limits), modelId(field, value, limits), "id");
      break;
    }
    case 3: {
      std::string reason = in.field();
      same(api::checkModerate(product, author, reason, limits),
           first({key, modelText("reason", reason, limits.maxReasonBytes)}), "moderate");
      break;
    }
    case 4: {
      std::string text = in.field();
      same(api::checkReply(product, author, text, limits),
           first({key, modelText("text", text, limits.maxBodyBytes)}), "reply");
      break;
    }
    case 5: {  // Admin.partition: product is this node's id, the rest are peers
      std::vector<std::string> peers;
      while (in.left() > 0 && peers.size() <= api::kMaxPartitionPeers) peers.push_back(in.field());
      if (in.byte() & 1) peers.push_back(product);
      Expect want;
      if (peers.size() > api::kMaxPartitionPeers) want = "peers";
      for (const auto& id : peers) {
        bool control = false;
        for (char c : id) control |= static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
        if (id.empty() || id.size() > 128 || !modelUtf8(id) || control || id == product)
          want = "peers";
      }
      same(api::checkPeerIds(peers, product), want, "peers");
      break;
    }
    case 6: {
      std::string text = in.field();
      auto bare = std::chrono::milliseconds(in.byte() & 1 ? 1000 : 1);
      double want = 0;
      bool accepted = modelDuration(text, double(bare.count()), want);
      auto got = api::parseDuration(text, bare);
      FUZZ_CHECK(got.ok() == accepted, "duration '" + text + "': " +
                                            (got.ok() ? "accepted" : got.error().toString()));
      if (got.ok()) {
        double ms = double(got.value().count());
        FUZZ_CHECK(std::fabs(ms - want) <= 0.5 + 1e-9 * std::fabs(want),
                   "duration '" + text + "' = " + std::to_string(ms) + " ms, model " +
                       std::to_string(want));
      } else {
        FUZZ_CHECK(got.error().code == ErrorCode::kInvalidArgument, got.error().toString());
      }
      break;
    }
    case 7: {
      std::string text = in.field();
      FUZZ_CHECK(api::isValidUtf8(text) == modelUtf8(text), "isValidUtf8 disagrees with the model");
      same(api::checkText("title", text, limits.maxTitleBytes),
           modelText("title", text, limits.maxTitleBytes), "text");
      break;
    }
  }
  return 0;
}
