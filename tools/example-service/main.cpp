// A microservice that embeds Chorus: the few lines needed to keep product
// reviews in-process, without running chorusd or making RPC calls.
//
//   example-service DATA_DIR [--serve 127.0.0.1:7400 TOKENS_FILE]
//
// It writes a review, votes for it, reads the product summary back, and with
// --serve also exposes the same node over RPC (so `chorus` can inspect it)
// until interrupted. RPC clients then need a token from TOKENS_FILE (see
// `chorus token create`); the in-process calls below need none: the service
// itself decides who its users are.
#include <signal.h>

#include <cstdio>
#include <string>

#include "api/node.h"

int main(int argc, char** argv) {
  if (argc != 2 && !(argc == 5 && std::string(argv[2]) == "--serve")) {
    std::fprintf(stderr, "usage: %s DATA_DIR [--serve HOST:PORT TOKENS_FILE]\n", argv[0]);
    return 1;
  }
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  // 1. Open the node: a store in DATA_DIR, optionally an RPC endpoint too.
  chorus::Node::Options options;
  options.nodeId = "example-service";
  options.dataDir = argv[1];
  if (argc == 5) {
    options.listen = argv[3];
    options.rpc.tokensFile = argv[4];
  }
  auto node = chorus::Node::open(options);
  if (!node.ok()) {
    std::fprintf(stderr, "example-service: %s\n", node.error().toString().c_str());
    return 2;
  }

  // 2. Write and vote: each call returns once the write is durable.
  auto review = (*node)->put("espresso-machine-9", "ann", 5, "Great crema", "Two years, no issue.");
  if (!review.ok()) {
    std::fprintf(stderr, "example-service: %s\n", review.error().toString().c_str());
    return 3;
  }
  auto voted = (*node)->vote("espresso-machine-9", "ann", "bob");
  if (!voted.ok()) {
    std::fprintf(stderr, "example-service: %s\n", voted.error().toString().c_str());
    return 3;
  }

  // 3. Read: plain function calls on this thread.
  auto summary = (*node)->summary("espresso-machine-9");
  if (!summary.ok()) {
    std::fprintf(stderr, "example-service: %s\n", summary.error().toString().c_str());
    return 3;
  }
  std::printf("example-service: espresso-machine-9 has %llu review(s), average %.2f, %u helpful\n",
              static_cast<unsigned long long>(summary->count), summary->average(), voted->helpful);

  if (argc == 5) {
    std::printf("example-service: listening on %s\n", (*node)->rpcAddress().c_str());
    std::fflush(stdout);
    int sig = 0;
    sigwait(&stop, &sig);
  }
  return 0;  // ~Node commits what is queued and closes the store
}
