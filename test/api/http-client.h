// A small blocking HTTP/1.1 client for tests of the HTTP API: one
// keep-alive connection on 127.0.0.1, requests written as given (so tests
// can send what a well-behaved client would not), answers parsed with
// Content-Length or chunked bodies. Every wait is bounded (poll with a
// deadline).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>

namespace chorus::test {

struct HttpAnswer {
  int status = 0;                              // 0: no answer (closed, or timed out)
  std::map<std::string, std::string> headers;  // names lowercase
  std::string body;
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

class HttpConnection {
 public:
  // Connects to 127.0.0.1:port ("host:port" also accepted).
  explicit HttpConnection(const std::string& address) {
    int port = std::stoi(address.substr(address.rfind(':') + 1));
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~HttpConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  bool connected() const { return fd_ >= 0; }

  // Sends raw bytes; false if the connection is gone.
  bool sendRaw(const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += size_t(n);
    }
    return true;
  }

  // One request; `headers` as "Name: value\r\n" lines.
  HttpAnswer request(const std::string& method, const std::string& path,
                     const std::string& body = "", const std::string& headers = "",
                     std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::string req = method + " " + path + " HTTP/1.1\r\nHost: test\r\n" + headers;
    if (!body.empty() || method == "PUT" || method == "POST") {
      if (headers.find("Content-Type") == std::string::npos && !body.empty()) {
        req += "Content-Type: application/json\r\n";
      }
      req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    }
    req += "\r\n" + body;
    if (!sendRaw(req)) return {};
    return read(timeout);
  }

  // Reads one answer (headers and the whole body).
  HttpAnswer read(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    HttpAnswer a;
    size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill(deadline)) return {};
    }
    std::string head = buffer_.substr(0, end);
    buffer_.erase(0, end + 4);
    size_t line = head.find("\r\n");
    std::string status = head.substr(0, line);
    a.status = std::stoi(status.substr(status.find(' ') + 1, 3));
    size_t at = line == std::string::npos ? head.size() : line + 2;
    while (at < head.size()) {
      size_t next = head.find("\r\n", at);
      if (next == std::string::npos) next = head.size();
      std::string h = head.substr(at, next - at);
      size_t colon = h.find(':');
      if (colon != std::string::npos) {
        std::string name = h.substr(0, colon);
        for (char& c : name) c = char(std::tolower(static_cast<unsigned char>(c)));
        std::string value = h.substr(colon + 1);
        while (!value.empty() && value.front() == ' ') value.erase(0, 1);
        a.headers[name] = value;
      }
      at = next + 2;
    }
    if (a.header("transfer-encoding") == "chunked") {
      while (true) {
        size_t nl;
        while ((nl = buffer_.find("\r\n")) == std::string::npos) {
          if (!fill(deadline)) return {};
        }
        size_t size = std::stoul(buffer_.substr(0, nl), nullptr, 16);
        while (buffer_.size() < nl + 2 + size + 2) {
          if (!fill(deadline)) return {};
        }
        a.body += buffer_.substr(nl + 2, size);
        buffer_.erase(0, nl + 2 + size + 2);
        if (size == 0) break;
      }
    } else {
      size_t length =
          a.headers.count("content-length") ? std::stoul(a.header("content-length")) : 0;
      while (buffer_.size() < length) {
        if (!fill(deadline)) return {};
      }
      a.body = buffer_.substr(0, length);
      buffer_.erase(0, length);
    }
    return a;
  }

  // For streams (text/event-stream): the answer's head, then readUntil.
  HttpAnswer startStream(const std::string& path, const std::string& headers = "") {
    if (!sendRaw("GET " + path + " HTTP/1.1\r\nHost: test\r\n" + headers + "\r\n")) return {};
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill(deadline)) return {};
    }
    HttpAnswer a;
    std::string head = buffer_.substr(0, end);
    buffer_.erase(0, end + 4);
    a.status = std::stoi(head.substr(head.find(' ') + 1, 3));
    a.body = head;
    return a;
  }
  // Raw bytes read until `needle` appears (chunk framing included);
  // nullopt at the deadline or when the server closed.
  std::optional<std::string> readUntil(const std::string& needle,
                                       std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    size_t at;
    while ((at = buffer_.find(needle)) == std::string::npos) {
      if (!fill(deadline)) return std::nullopt;
    }
    std::string out = buffer_.substr(0, at + needle.size());
    buffer_.erase(0, at + needle.size());
    return out;
  }

  // True if the server closes the connection within `timeout`.
  bool closedWithin(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (fill(deadline)) buffer_.clear();
    return closed_;
  }

 private:
  // Reads more into buffer_; false at the deadline or EOF.
  bool fill(std::chrono::steady_clock::time_point deadline) {
    if (fd_ < 0 || closed_) return false;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, int(left.count())) <= 0) return false;
    char buf[16384];
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) {
      closed_ = true;
      return false;
    }
    buffer_.append(buf, size_t(n));
    return true;
  }

  int fd_ = -1;
  bool closed_ = false;
  std::string buffer_;
};

}  // namespace chorus::test
