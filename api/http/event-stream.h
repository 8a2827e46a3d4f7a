// A text/event-stream answer (server-sent events) of the HTTP API, for
// answers that go on: watch, and the change feed's eventsource mode. Internal to api/http/.
//
// The loop thread queues events (push); run() writes them in order, and a
// comment line every `heartbeat` while none comes, so a client (or a proxy)
// knows the stream is alive and a client that went away is noticed at the
// next write. Before each write it asks `valid()`: when that names a
// problem (a token revoked or expired since the request), the stream ends
// with a last `end` event carrying it. It never holds more than the caller
// lets it (full()): what to drop, and how to say so, is the caller's.
//
// Thread: the RPC thread (the KJ event loop) only.
#pragma once

#include <kj/async-io.h>
#include <kj/function.h>
#include <kj/timer.h>

#include <cstddef>
#include <deque>
#include <optional>
#include <string>

namespace chorus::api::http {

class EventStream {
 public:
  // `valid` returns nullopt while the stream may go on, else the `data` of
  // its `end` event (a JSON problem document).
  EventStream(kj::Timer& timer, kj::Own<kj::AsyncOutputStream> out, kj::Duration heartbeat,
              kj::Function<std::optional<std::string>()> valid);

  // Queues a whole event ("event: change\ndata: {...}\n\n", or a
  // ": comment\n\n" line) and wakes the writer.
  void push(std::string event);
  size_t queued() const { return queue_.size(); }
  // Resolves once every event pushed so far has been written (at once if
  // none waits): a producer that pushes its next batch only then holds at
  // most one batch. Never resolves if the stream ends first.
  kj::Promise<void> drained();
  // Ends the stream after the events queued: a last `end` event with
  // `data` (a JSON problem document), as when valid() names a problem.
  void finish(std::string data);

  // Writes until the stream ends: resolves after the `end` event, throws
  // when a write fails (the client went away). Dropping the promise ends
  // it too. Call once.
  kj::Promise<void> run();

 private:
  kj::Timer& timer_;
  kj::Own<kj::AsyncOutputStream> out_;
  kj::Duration heartbeat_;
  kj::Function<std::optional<std::string>()> valid_;
  std::deque<std::string> queue_;
  std::string writing_;                       // the event being written
  bool busy_ = false;                         // a write is in progress
  std::optional<std::string> end_;            // finish()'s data
  kj::Own<kj::PromiseFulfiller<void>> wake_;  // set while run() waits
  kj::Own<kj::PromiseFulfiller<void>> drained_;
};

}  // namespace chorus::api::http
