#include "api/http/event-stream.h"

namespace chorus::api::http {

EventStream::EventStream(kj::Timer& timer, kj::Own<kj::AsyncOutputStream> out,
                         kj::Duration heartbeat, kj::Function<std::optional<std::string>()> valid)
    : timer_(timer), out_(kj::mv(out)), heartbeat_(heartbeat), valid_(kj::mv(valid)) {}

void EventStream::push(std::string event) {
  queue_.push_back(std::move(event));
  if (wake_) {
    wake_->fulfill();
    wake_ = nullptr;
  }
}

kj::Promise<void> EventStream::drained() {
  if (queue_.empty() && !busy_) return kj::READY_NOW;
  auto paf = kj::newPromiseAndFulfiller<void>();
  drained_ = kj::mv(paf.fulfiller);
  return kj::mv(paf.promise);
}

void EventStream::finish(std::string data) {
  if (!end_) end_ = std::move(data);
  if (wake_) {
    wake_->fulfill();
    wake_ = nullptr;
  }
}

kj::Promise<void> EventStream::run() {
  std::optional<std::string> end = queue_.empty() ? end_ : std::nullopt;
  if (!end) end = valid_();
  if (end) {
    writing_ = "event: end\ndata: " + *end + "\n\n";
    busy_ = true;
    return out_->write(writing_.data(), writing_.size());
  }
  if (!queue_.empty()) {
    writing_ = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    return out_->write(writing_.data(), writing_.size()).then([this] {
      busy_ = false;
      return run();
    });
  }
  if (drained_) {
    drained_->fulfill();
    drained_ = nullptr;
  }
  auto paf = kj::newPromiseAndFulfiller<void>();
  wake_ = kj::mv(paf.fulfiller);
  return paf.promise
      .exclusiveJoin(timer_.afterDelay(heartbeat_).then([this] {
        wake_ = nullptr;
        queue_.push_back(": heartbeat\n\n");
      }))
      .then([this] { return run(); });
}

}  // namespace chorus::api::http
