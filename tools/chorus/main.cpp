// chorus: the command-line client of a Chorus node.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include "api/client.h"
#include "api/types.h"
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"chorus: command-line client of a Chorus node (product reviews)."};
  app.footer(std::string(kExitHelp) +
             "\nThe node address comes from --connect, else $CHORUS_ADDR, else 127.0.0.1:7400.\n"
             "Nodes that require tokens refuse calls without a valid one (exit 7).");
  app.require_subcommand(1);
  Globals g;
  const char* env = std::getenv("CHORUS_ADDR");
  g.connect = (env != nullptr && *env != '\0') ? env : "127.0.0.1:7400";
  app.add_option("--connect", g.connect, "Node address host:port")->capture_default_str();
  app.add_flag("--json", g.json, "Print JSON instead of tables");
  app.add_option("--timeout-ms", g.timeoutMs, "Bound on connecting and on each call")
      ->capture_default_str();
  auto* tokenFile = app.add_option("--token-file", g.tokenFile,
                                   "File whose first line is the client token (see `chorus token "
                                   "create`); else $CHORUS_TOKEN_FILE");
  app.add_option("--token", g.token,
                 "Client token; else $CHORUS_TOKEN (prefer --token-file: arguments show in ps)")
      ->excludes(tokenFile);
  // Runs after parsing, before any subcommand's callback.
  app.parse_complete_callback([&g] {
    if (auto s = resolveToken(g); !s.ok()) throw CLI::ValidationError(s.error().message);
  });

  int result = kExitOk;
  std::string product, author, arg, title, body, reason, cursor;
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
  put->add_option("--body,-b", body, "Up to 20000 bytes");
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
  auto* list = reviews->add_subcommand("list", "A product's reviews, one page");
  list->add_option("product", product, "Product id")->required();
  list->add_option("--order", order, "newest, highest or lowest")
      ->capture_default_str()
      ->check(CLI::IsMember({"newest", "highest", "lowest"}));
  list->add_option("--limit", limit, "Page size, 1-100")->capture_default_str();
  list->add_option("--cursor", cursor, "From a previous page's 'more:' line");
  list->callback([&] {
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
  });

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
  byAuthor->add_option("--limit", limit, "Page size, 1-100")->capture_default_str();
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
            std::printf("gossip:      %s\n", s->gossipAddress.empty()
                                                 ? "off (chorusd without --gossip-listen)"
                                                 : (s->gossipAddress + ", region " + s->region).c_str());
          }
          return kExitOk;
        });
      });

  addClusterCommands(app, g, result);
  addTokenCommands(app, result);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  return result;
}
