// chorus: the command-line client of a Chorus node.
#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "api/client.h"
#include "api/types.h"
#include "api/validate.h"
#include "storage/backup.h"
#include "tools/chorus/common.h"

namespace {

using chorus::ErrorCode;
using chorus::ReviewPage;
using chorus::ReviewView;
using namespace chorus::cli;
using chorus::cli::json;  // overloaded below for reviews and pages

std::string json(const ReviewView& r) {
  std::string tags = "[";
  for (size_t i = 0; i < r.tags.size(); ++i) tags += (i ? "," : "") + json(r.tags[i]);
  tags += "]";
  return "{\"product\":" + json(r.product) + ",\"author\":" + json(r.author) +
         ",\"rating\":" + std::to_string(r.rating) + ",\"title\":" + json(r.title) +
         ",\"body\":" + json(r.body) + ",\"edited_at_ms\":" + std::to_string(r.editedAtMillis) +
         ",\"tags\":" + tags + ",\"helpful\":" + std::to_string(r.helpful) +
         ",\"visibility\":" + json(chorus::visibilityName(r.visibility)) +
         ",\"moderation_reason\":" + json(r.moderationReason) + ",\"reply\":" + json(r.reply) +
         ",\"deleted\":" + (r.deleted ? "true" : "false") + "}";
}

std::string json(const ReviewPage& p) {
  std::string out = "{\"reviews\":[";
  for (size_t i = 0; i < p.reviews.size(); ++i) out += (i ? "," : "") + json(p.reviews[i]);
  return out + "],\"next_cursor\":" + json(p.nextCursor) + "}";
}

// `chorus node health`: healthy = the node answers and serves; with
// `strict`, also every peer it knows (not left) alive in its view. Prints
// the report either way; exit 0 healthy, 4 (unavailable) not.
int printHealth(const Globals& g, const chorus::NodeHealth& h, bool strict) {
  uint32_t down = h.peersSuspect + h.peersDead;
  bool healthy = h.serving && (!strict || down == 0);
  std::string why = !h.serving ? h.reason
                    : !healthy ? std::to_string(down) + " peer(s) suspect or dead (--strict)"
                               : "";
  std::string root = h.merkleRoot ? hex(*h.merkleRoot) : "";
  std::string sync = h.lastSyncMillisAgo ? std::to_string(*h.lastSyncMillisAgo) : "null";
  if (g.json) {
    std::string cluster = "null";
    if (h.clustered) {
      cluster = "{\"region\":" + json(h.region) +
                ",\"peers_alive\":" + std::to_string(h.peersAlive) +
                ",\"peers_suspect\":" + std::to_string(h.peersSuspect) +
                ",\"peers_dead\":" + std::to_string(h.peersDead) +
                ",\"all_peers_alive\":" + (down == 0 ? "true" : "false") +
                ",\"last_sync_ms_ago\":" + sync + "}";
    }
    std::printf(
        "{\"healthy\":%s,\"serving\":%s,\"reason\":%s,\"node_id\":%s,\"replica_id\":\"%016" PRIx64
        "\",\"version\":%s,\"api_version\":%u,\"uptime_ms\":%" PRIu64 ",\"keys\":%" PRIu64
        ",\"merkle_root\":%s,\"cluster\":%s}\n",
        healthy ? "true" : "false", h.serving ? "true" : "false", json(why).c_str(),
        json(h.nodeId).c_str(), h.replicaId, json(h.version).c_str(), h.apiVersion, h.uptimeMillis,
        h.keyCount, h.merkleRoot ? ("\"" + root + "\"").c_str() : "null", cluster.c_str());
  } else {
    std::printf("health:      %s\n", healthy ? "ok" : ("NOT healthy: " + why).c_str());
    std::printf("node:        %s (replica %016" PRIx64 "), version %s (api %u), up %.1f s\n",
                h.nodeId.c_str(), h.replicaId, h.version.c_str(), h.apiVersion,
                double(h.uptimeMillis) / 1000.0);
    std::printf("keys:        %" PRIu64 ", merkle root %s\n", h.keyCount,
                h.merkleRoot ? root.substr(0, 8).c_str() : "(unreadable)");
    if (!h.clustered) {
      std::printf("cluster:     none (chorusd without --gossip-listen)\n");
    } else {
      std::printf("cluster:     region %s; peers %u alive, %u suspect, %u dead; ", h.region.c_str(),
                  h.peersAlive, h.peersSuspect, h.peersDead);
      if (h.lastSyncMillisAgo) {
        std::printf("last anti-entropy %.1f s ago\n", double(*h.lastSyncMillisAgo) / 1000.0);
      } else {
        std::printf("no anti-entropy session yet\n");
      }
    }
  }
  return healthy ? kExitOk : kExitUnavailable;
}

// A backup's manifest: one JSON object (with the fields in `extra`
// prepended), or aligned lines.
void printManifest(const Globals& g, const std::string& extra, const std::string& dir,
                   const chorus::storage::BackupManifest& m) {
  using chorus::storage::hexOf;
  char replica[17];
  std::snprintf(replica, sizeof replica, "%016" PRIx64, m.replicaId);
  std::string root = hexOf(m.merkleRoot.data(), m.merkleRoot.size());
  std::string sum = "blake2b-256:" + hexOf(m.checksum.data(), m.checksum.size());
  if (g.json) {
    std::printf(
        "{%s\"dir\":%s,\"node_id\":%s,\"replica_id\":\"%s\",\"schema_version\":%u,"
        "\"merkle_root\":\"%s\",\"keys\":%" PRIu64 ",\"hlc_high_water\":%" PRIu64
        ",\"file_bytes\":%" PRIu64 ",\"checksum\":\"%s\",\"created_unix_ms\":%" PRIu64 "}\n",
        extra.c_str(), json(dir).c_str(), json(m.nodeId).c_str(), replica, m.schemaVersion,
        root.c_str(), m.keys, m.hlcHighWater, m.fileBytes, sum.c_str(), m.createdUnixMillis);
    return;
  }
  std::printf("dir:         %s\n", dir.c_str());
  std::printf("node:        %s (replica %s), storage schema %u\n",
              m.nodeId.empty() ? "(unknown)" : m.nodeId.c_str(), replica, m.schemaVersion);
  std::printf("keys:        %" PRIu64 ", merkle root %s\n", m.keys, root.c_str());
  std::printf("data.mdb:    %" PRIu64 " bytes, %s\n", m.fileBytes, sum.c_str());
}

std::string clip(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  size_t cut = n - 3;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // UTF-8
  return s.substr(0, cut) + "...";
}

void printReview(const ReviewView& r) {
  std::printf("product:    %s\nauthor:     %s\n", r.product.c_str(), r.author.c_str());
  if (r.deleted) {
    std::printf("deleted:    yes\n");
    return;
  }
  std::string tags;
  for (const auto& t : r.tags) tags += (tags.empty() ? "" : ", ") + t;
  std::printf("rating:     %u/5\ntitle:      %s\nbody:       %s\nhelpful:    %u\ntags:       %s\n",
              r.rating, r.title.c_str(), r.body.c_str(), r.helpful, tags.c_str());
  std::printf("visibility: %s%s%s\n", chorus::visibilityName(r.visibility),
              r.moderationReason.empty() ? "" : " - ", r.moderationReason.c_str());
  if (!r.reply.empty()) std::printf("reply:      %s\n", r.reply.c_str());
}

void printPage(const ReviewPage& p, bool byAuthor) {
  std::printf("%-24s %-6s %-7s %-9s %s\n", byAuthor ? "PRODUCT" : "AUTHOR", "RATING", "HELPFUL",
              "STATE", "TITLE");
  for (const auto& r : p.reviews) {
    std::printf("%-24s %-6u %-7u %-9s %s\n", clip(byAuthor ? r.product : r.author, 24).c_str(),
                r.rating, r.helpful, chorus::visibilityName(r.visibility),
                clip(r.title, 60).c_str());
  }
  if (p.reviews.empty()) std::printf("(no reviews)\n");
  if (!p.nextCursor.empty()) std::printf("more: --cursor %s\n", p.nextCursor.c_str());
}

// Edits (insert, delete, replace, swap two neighbours) from a to b.
size_t editDistance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min(
          {d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

// Walks the command line as CLI11 will, through subcommand names (skipping
// options and their values), to the first word that should name a
// subcommand and does not: "unknown command 'reviw' (did you mean
// 'review'?)" with the choices. nullopt when every word fits.
std::optional<std::string> unknownCommand(CLI::App& app, int argc, char** argv) {
  CLI::App* cur = &app;
  std::string path = "chorus";
  for (int i = 1; i < argc; ++i) {
    std::string word = argv[i];
    if (word == "--") return std::nullopt;
    if (word.size() > 1 && word[0] == '-') {
      if (word.find('=') != std::string::npos) continue;
      for (CLI::App* a = cur; a != nullptr; a = a->get_parent()) {
        if (auto* opt = a->get_option_no_throw(word)) {
          if (opt->get_expected_min() > 0) ++i;  // its value
          break;
        }
      }
      continue;
    }
    auto subs = cur->get_subcommands([](CLI::App*) { return true; });
    if (subs.empty()) return std::nullopt;  // positional arguments from here
    CLI::App* next = nullptr;
    for (auto* s : subs) {
      if (s->check_name(word)) next = s;
    }
    if (next != nullptr) {
      cur = next;
      path += " " + next->get_name();
      continue;
    }
    if (cur->get_require_subcommand_min() == 0) return std::nullopt;
    std::string best, names;
    size_t bestDistance = std::max<size_t>(2, word.size() / 3) + 1;  // only near misses
    for (auto* s : subs) {
      names += (names.empty() ? "" : ", ") + s->get_name();
      size_t d = editDistance(word, s->get_name());
      bool prefix = s->get_name().rfind(word, 0) == 0 || word.rfind(s->get_name(), 0) == 0;
      if (d < bestDistance || (prefix && best.empty())) {
        best = s->get_name();
        bestDistance = std::min(d, bestDistance);
      }
    }
    return "unknown command '" + word + "' for '" + path + "'" +
           (best.empty() ? "" : " (did you mean '" + best + "'?)") + "; commands: " + names;
  }
  return std::nullopt;
}

// --body-file: the file's whole text, or stdin's for "-".
chorus::Result<std::string> readBody(const std::string& path) {
  std::ostringstream text;
  if (path == "-") {
    text << std::cin.rdbuf();
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return chorus::makeError(ErrorCode::kInvalidArgument,
                               "--body-file: cannot read '" + path + "': " + std::strerror(errno));
    }
    text << in.rdbuf();
  }
  return text.str();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"chorus: command-line client of a Chorus node (product reviews)."};
  app.footer(std::string(kExitHelp) +
             "\nGlobal flags, anywhere on the line: --connect, --token-file, --token, --json,\n"
             "--timeout (chorus --help says more).\n"
             "The node address comes from --connect, else $CHORUS_ADDR, else 127.0.0.1:7400.\n"
             "Nodes that require tokens refuse calls without a valid one (exit 7).");
  app.require_subcommand(1);
  // The global flags below go anywhere on the line, as in kubectl and
  // etcdctl: a subcommand passes what it does not know to its parent.
  // Subcommands inherit this setting, so it comes first.
  app.fallthrough();
  Globals g;
  const char* env = std::getenv("CHORUS_ADDR");
  g.connect = (env != nullptr && *env != '\0') ? env : "127.0.0.1:7400";
  app.add_option("--connect", g.connect, "Node address host:port; else $CHORUS_ADDR")
      ->capture_default_str();
  app.add_flag("--json", g.json,
               "Print JSON instead of tables (shapes: README.md, \"JSON output\"); errors too, "
               "as {\"error\":{...}} on stderr");
  app.add_option("--timeout", g.timeout,
                 "Bound on connecting and on each call: 5s, 500ms, 2m (a bare number is "
                 "milliseconds, as in chorusd). In `cluster converge` and `cluster leave`, "
                 "their own --timeout bounds the whole wait instead")
      ->capture_default_str();
  std::optional<uint32_t> timeoutMs;
  app.add_option("--timeout-ms", timeoutMs, "Same as --timeout in milliseconds (older spelling)")
      ->group("");
  auto* tokenFile = app.add_option("--token-file", g.tokenFile,
                                   "File whose first line is the client token (see `chorus token "
                                   "create`); else $CHORUS_TOKEN_FILE");
  app.add_option("--token", g.token,
                 "Client token; else $CHORUS_TOKEN (prefer --token-file: arguments show in ps)")
      ->excludes(tokenFile);
  // Runs after parsing, before any subcommand's callback.
  app.parse_complete_callback([&g, &timeoutMs] {
    setJsonErrors(g.json);
    if (timeoutMs) {
      g.timeoutMs = *timeoutMs;
    } else {
      auto t = chorus::api::parseDuration(g.timeout, std::chrono::milliseconds(1));
      if (!t.ok() || t->count() <= 0 || t->count() > 3'600'000) {
        throw CLI::ValidationError("--timeout", (t.ok() ? "must be 1ms to 1h" : t.error().message));
      }
      g.timeoutMs = static_cast<uint32_t>(t->count());
    }
    if (auto s = resolveToken(g); !s.ok()) throw CLI::ValidationError(s.error().message);
  });

  int result = kExitOk;
  std::string product, author, arg, title, body, bodyFile, reason, cursor;
  std::string visibility = "visible", order = "newest";
  uint32_t rating = 0, limit = 20, count = 0;
  double seconds = 0;

  auto write = [&](chorus::WriteOp op) {
    return [&, op] {
      chorus::WriteRequest r;
      r.op = op;
      r.product = product;
      r.author = author;
      r.rating = rating;
      r.title = title;
      r.body = body;
      if (!bodyFile.empty()) {
        auto text = readBody(bodyFile);
        if (!text.ok()) {
          result = usageError(text.error().message);
          return;
        }
        r.body = std::move(*text);
      }
      r.arg = op == chorus::WriteOp::kModerate ? reason : arg;
      r.visibility = visibility == "hidden"    ? chorus::crdt::Visibility::kHidden
                     : visibility == "flagged" ? chorus::crdt::Visibility::kFlagged
                                               : chorus::crdt::Visibility::kVisible;
      result = withClient(g, [&](chorus::api::Client& c) {
        auto res = c.write(r);
        if (!res.ok()) return fail(res);
        if (g.json) {
          std::printf("%s\n", json(*res).c_str());
        } else if (op == chorus::WriteOp::kDelete) {
          std::printf("deleted %s/%s\n", product.c_str(), author.c_str());
        } else {
          printReview(*res);
        }
        return kExitOk;
      });
    };
  };

  auto* review = app.add_subcommand("review", "Write and read one review")->require_subcommand(1);
  auto key = [&](CLI::App* sub) {
    sub->add_option("product", product, "Product id")->required();
    sub->add_option("author", author, "Author id")->required();
    return sub;
  };
  auto* put = key(review->add_subcommand("put", "Write or replace a review"));
  put->add_option("--rating,-r", rating, "1-5")->required();
  put->add_option("--title,-t", title, "Up to 200 bytes");
  auto* bodyOption = put->add_option("--body,-b", body, "Up to 20000 bytes");
  put->add_option("--body-file", bodyFile, "Read the body from this file, or stdin for -")
      ->excludes(bodyOption);
  put->callback(write(chorus::WriteOp::kPut));

  key(review->add_subcommand("delete", "Erase a review's text everywhere"))
      ->callback(write(chorus::WriteOp::kDelete));
  for (auto [name, op, what, help] :
       {std::tuple{"vote", chorus::WriteOp::kVote, "voter", "Mark helpful for a voter"},
        std::tuple{"unvote", chorus::WriteOp::kUnvote, "voter", "Retract a helpful vote"},
        std::tuple{"tag", chorus::WriteOp::kTag, "tag", "Add a tag"},
        std::tuple{"untag", chorus::WriteOp::kUntag, "tag", "Remove a tag"},
        std::tuple{"reply", chorus::WriteOp::kReply, "text",
                   "Set the merchant's reply (empty removes it)"}}) {
    auto* sub = key(review->add_subcommand(name, help));
    sub->add_option(what, arg, what)->required();
    sub->callback(write(op));
  }
  auto* moderate = key(review->add_subcommand("moderate", "Set visibility (moderators)"));
  moderate->add_option("--visibility", visibility, "visible, hidden or flagged")
      ->required()
      ->check(CLI::IsMember({"visible", "hidden", "flagged"}));
  moderate->add_option("--reason", reason, "Why (shown to the author)");
  moderate->callback(write(chorus::WriteOp::kModerate));

  auto* get = key(review->add_subcommand("get", "Show a review"));
  get->callback([&] {
    result = withClient(g, [&](chorus::api::Client& c) {
      auto r = c.get(product, author);
      if (!r.ok()) return fail(r);
      if (g.json)
        std::printf("%s\n", json(*r).c_str());
      else
        printReview(*r);
      return kExitOk;
    });
  });

  auto* reviews = app.add_subcommand("reviews", "List reviews")->require_subcommand(1);
  auto listCallback = [&] {
    auto o = order == "highest"  ? chorus::storage::Order::kHighestRating
             : order == "lowest" ? chorus::storage::Order::kLowestRating
                                 : chorus::storage::Order::kNewest;
    result = withClient(g, [&](chorus::api::Client& c) {
      auto r = c.list(product, o, cursor, limit);
      if (!r.ok()) return fail(r);
      if (g.json)
        std::printf("%s\n", json(*r).c_str());
      else
        printPage(*r, false);
      return kExitOk;
    });
  };
  // `reviews list`, and `review list` for those who type the singular.
  for (auto* parent : {reviews, review}) {
    auto* list = parent->add_subcommand(
        "list", parent == reviews ? "A product's reviews, one page" : "Same as `reviews list`");
    list->add_option("product", product, "Product id")->required();
    list->add_option("--order", order, "newest, highest or lowest")
        ->capture_default_str()
        ->check(CLI::IsMember({"newest", "highest", "lowest"}));
    list->add_option("--limit", limit, "Page size, 1-100")
        ->capture_default_str()
        ->check(CLI::Range(1u, 100u));
    list->add_option("--cursor", cursor, "From a previous page's 'more:' line");
    list->callback(listCallback);
  }

  auto* productCmd = app.add_subcommand("product", "Product-level views")->require_subcommand(1);
  auto* summary = productCmd->add_subcommand("summary", "Count, average and histogram");
  summary->add_option("product", product, "Product id")->required();
  summary->callback([&] {
    result = withClient(g, [&](chorus::api::Client& c) {
      auto r = c.summary(product);
      if (!r.ok()) return fail(r);
      const auto& h = r->histogram;
      if (g.json) {
        std::printf("{\"product\":%s,\"count\":%" PRIu64 ",\"average\":%.4f,\"histogram\":[%" PRIu64
                    ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 "],\"helpful_total\":%" PRIu64
                    "}\n",
                    json(product).c_str(), r->count, r->average(), h[0], h[1], h[2], h[3], h[4],
                    r->helpfulTotal);
      } else {
        std::printf("product: %s\nreviews: %" PRIu64 "\naverage: %.2f\nhelpful: %" PRIu64 "\n",
                    product.c_str(), r->count, r->average(), r->helpfulTotal);
        for (int star = 5; star >= 1; --star) {
          std::printf("%d star:  %" PRIu64 "\n", star, h[star - 1]);
        }
      }
      return kExitOk;
    });
  });

  auto* authorCmd = app.add_subcommand("author", "Author-level views")->require_subcommand(1);
  auto* byAuthor = authorCmd->add_subcommand("reviews", "An author's reviews, one page");
  byAuthor->add_option("author", author, "Author id")->required();
  byAuthor->add_option("--limit", limit, "Page size, 1-100")
      ->capture_default_str()
      ->check(CLI::Range(1u, 100u));
  byAuthor->add_option("--cursor", cursor, "From a previous page's 'more:' line");
  byAuthor->callback([&] {
    result = withClient(g, [&](chorus::api::Client& c) {
      auto r = c.byAuthor(author, cursor, limit);
      if (!r.ok()) return fail(r);
      if (g.json)
        std::printf("%s\n", json(*r).c_str());
      else
        printPage(*r, true);
      return kExitOk;
    });
  });

  auto* watch = app.add_subcommand(
      "watch", "Print each change of a product's reviews as it commits (Ctrl-C to stop)");
  watch->add_option("product", product, "Product id")->required();
  watch->add_option("--count", count, "Stop after this many changes (0 = no limit)");
  watch->add_option("--for", seconds, "Stop after this many seconds (0 = no limit)");
  watch->callback([&] {
    result = withClient(g, [&](chorus::api::Client& c) {
      uint32_t seen = 0;
      auto duration = std::chrono::milliseconds(seconds > 0 ? static_cast<int64_t>(seconds * 1000)
                                                            : int64_t{365} * 86'400'000);
      auto status = c.watch(
          product,
          [&](const chorus::Change& ch) {
            if (g.json) {
              std::printf("{\"op\":%s,\"missed\":%u,\"review\":%s}\n", json(ch.op).c_str(),
                          ch.missed, json(ch.review).c_str());
            } else {
              if (ch.missed > 0) std::printf("(%u changes missed)\n", ch.missed);
              std::printf("%-8s %s/%s rating=%u helpful=%u %s\n", ch.op.c_str(),
                          ch.review.product.c_str(), ch.review.author.c_str(), ch.review.rating,
                          ch.review.helpful, clip(ch.review.title, 60).c_str());
            }
            std::fflush(stdout);
            return count == 0 || ++seen < count;
          },
          duration,
          [&] {
            std::fprintf(stderr, "chorus: watching %s\n", product.c_str());
            std::fflush(stderr);
          });
      if (!status.ok()) return fail(status);
      return kExitOk;
    });
  });

  auto* nodeCmd = app.add_subcommand("node", "The node itself")->require_subcommand(1);
  nodeCmd->add_subcommand("status", "Id, version, uptime, keys, Merkle root, store stats")
      ->callback([&] {
        result = withClient(g, [&](chorus::api::Client& c) {
          auto s = c.status();
          if (!s.ok()) return fail(s);
          const auto& st = s->stats;
          if (g.json) {
            std::printf("{\"node_id\":%s,\"replica_id\":\"%016" PRIx64
                        "\",\"version\":%s,\"api_version\":%u,"
                        "\"uptime_ms\":%" PRIu64 ",\"keys\":%" PRIu64
                        ",\"merkle_root\":\"%s\","
                        "\"stats\":{\"documents\":%" PRIu64 ",\"map_bytes\":%" PRIu64
                        ",\"used_bytes\":%" PRIu64 ",\"commits\":%" PRIu64 ",\"writes\":%" PRIu64
                        ",\"map_growths\":%" PRIu64 ",\"refused_stamps\":%" PRIu64
                        "},\"gossip_address\":%s,\"region\":%s}\n",
                        json(s->nodeId).c_str(), s->replicaId, json(s->version).c_str(),
                        s->apiVersion, s->uptimeMillis, s->keyCount, hex(s->merkleRoot).c_str(),
                        st.documents, st.mapBytes, st.usedBytes, st.commits, st.writes,
                        st.mapGrowths, st.refusedStamps, json(s->gossipAddress).c_str(),
                        json(s->region).c_str());
          } else {
            std::printf("node:        %s (replica %016" PRIx64
                        ")\nversion:     %s (api %u)\n"
                        "uptime:      %.1f s\nkeys:        %" PRIu64
                        "\nmerkle root: %s\n"
                        "store:       %" PRIu64 " of %" PRIu64 " bytes used, %" PRIu64
                        " writes in %" PRIu64 " commits\n",
                        s->nodeId.c_str(), s->replicaId, s->version.c_str(), s->apiVersion,
                        double(s->uptimeMillis) / 1000.0, s->keyCount, hex(s->merkleRoot).c_str(),
                        st.usedBytes, st.mapBytes, st.writes, st.commits);
            std::printf("gossip:      %s\n",
                        s->gossipAddress.empty()
                            ? "off (chorusd without --gossip-listen)"
                            : (s->gossipAddress + ", region " + s->region).c_str());
          }
          return kExitOk;
        });
      });

  bool healthStrict = false;
  auto* health = nodeCmd->add_subcommand(
      "health",
      "Any role: is the node up and serving, its replica id, root and view of the cluster.\n"
      "Exit 0 healthy; 4 unreachable or not serving (shutting down, left or removed from the\n"
      "cluster, store unreadable); the report is printed either way (--json: on stdout)");
  health->add_flag("--strict", healthStrict,
                   "Also unhealthy (exit 4) while a peer it knows is suspect or dead");
  health->callback([&] {
    result = withClient(g, [&](chorus::api::Client& c) {
      auto h = c.health();
      if (!h.ok()) return fail(h);
      return printHealth(g, *h, healthStrict);
    });
  });

  std::string backupOut;
  auto* backup = nodeCmd->add_subcommand(
      "backup",
      "Admin: the node writes a hot backup of its store into --out on its own host: a\n"
      "compacted copy of one consistent snapshot (data.mdb) and its manifest\n"
      "(backup.manifest: replica id, schema, Merkle root, keys, BLAKE2b checksum). The node\n"
      "keeps serving reads and writes meanwhile. Restore with `chorus node restore` or\n"
      "`chorusd --restore-from`");
  backup
      ->add_option("--out", backupOut,
                   "Directory on the node's host; must not exist or be empty. A relative path\n"
                   "is made absolute here, in this command's working directory")
      ->required();
  backup->callback([&] {
    std::string dir = backupOut;
    if (!dir.empty() && dir.front() != '/') {
      dir = std::filesystem::absolute(dir).lexically_normal().string();
    }
    result = withClient(g, [&](chorus::api::Client& c) {
      auto started = std::chrono::steady_clock::now();
      auto m = c.backup(dir);
      if (!m.ok()) return fail(m);
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::steady_clock::now() - started)
                    .count();
      printManifest(g, "\"took_ms\":" + std::to_string(ms) + ",", dir, *m);
      if (!g.json) std::printf("took:        %.1f s\n", double(ms) / 1000.0);
      return kExitOk;
    });
  });

  std::string restoreFrom, restoreDataDir;
  bool restoreReplace = false;
  auto* restore = nodeCmd->add_subcommand(
      "restore",
      "Prepares a data dir from a backup, on this host, with no node running: verifies the\n"
      "backup (checksum, then a full recount of the copy; a damaged one is refused and\n"
      "nothing is written), copies it, gives it a NEW replica id (unless --replace), and\n"
      "verifies it again. Start chorusd on the data dir afterwards: it joins its cluster and\n"
      "catches up the writes made since the backup");
  restore->add_option("--from", restoreFrom, "The backup directory")->required();
  restore
      ->add_option("--data-dir", restoreDataDir,
                   "The data dir to prepare; it may exist but must hold no store")
      ->required();
  restore->add_flag(
      "--replace", restoreReplace,
      "Keep the backup's replica id: ONLY to replace the node the backup came from, which must\n"
      "never run again. Two live nodes with one replica id break the merge rules (the same\n"
      "dot for two different tags or votes), silently");
  restore->callback([&] {
    auto original = chorus::storage::readBackupManifest(restoreFrom);
    if (!original.ok()) {
      result = fail(original);
      return;
    }
    chorus::storage::RestoreOptions o;
    o.keepReplicaId = restoreReplace;
    o.notice = [&](const std::string& what) {
      if (!g.json) std::fprintf(stderr, "chorus: %s\n", what.c_str());
    };
    auto m = chorus::storage::restoreBackup(restoreFrom, restoreDataDir, o);
    if (!m.ok()) {
      result = fail(m);
      return;
    }
    char now[17];
    std::snprintf(now, sizeof now, "%016" PRIx64, m->replicaId);
    printManifest(g,
                  "\"data_dir\":" + json(restoreDataDir) + ",\"restored_replica_id\":\"" + now +
                      "\",\"replaced\":" + (restoreReplace ? "true" : "false") + ",",
                  restoreFrom, *original);
    if (!g.json) {
      std::printf("restored:    into %s, replica id %s (%s)\n", restoreDataDir.c_str(), now,
                  restoreReplace ? "the backup's: --replace" : "new");
    }
    result = kExitOk;
  });

  std::string verifyDir;
  auto* verifyBackup = nodeCmd->add_subcommand(
      "verify-backup",
      "Checks a backup on this host without changing it: the checksum of data.mdb, then the\n"
      "copy's own replica id, root and key count against the manifest, and a full recount of\n"
      "its derived data. Exit 0 good; 5 damaged or unreadable");
  verifyBackup->add_option("dir", verifyDir, "The backup directory")->required();
  verifyBackup->callback([&] {
    auto m = chorus::storage::verifyBackup(verifyDir);
    if (!m.ok()) {
      result = fail(m);
      return;
    }
    printManifest(g, "\"verified\":true,", verifyDir, *m);
    if (!g.json) std::printf("verified:    ok\n");
    result = kExitOk;
  });

  addClusterCommands(app, g, result);
  addTokenCommands(app, g, result);

  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--") break;
    if (std::string(argv[i]) == "--json") setJsonErrors(true);  // parse errors too
  }
  if (auto unknown = unknownCommand(app, argc, argv)) {
    return finishErrors(usageError(*unknown + " (chorus --help lists them)"));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return kExitOk;
    return finishErrors(usageError(std::string(e.what()) + " (see --help)"));
  }
  return finishErrors(result);
}
