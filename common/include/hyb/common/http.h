// HTTP/1.1 server and client (Boost.Beast, OpenSSL) that carry the coordinator's JSON API: jobs,
// workers long-polling for tasks, server-sent events. Torch-free; Boost stays out of this header.
//
// Server: one acceptor thread, and one joinable thread per accepted connection that reads a
// request, calls the Handler, writes the response and loops while the connection is kept alive.
// Every wait is bounded: reads by ServerOptions::read_timeout_s, writes by write_timeout_s.
// Handlers run concurrently on the connection threads and may block (long polls), but must
// return: Shutdown joins every connection thread, so it waits for handlers still running.
//
// Client: one request per fresh connection, bounded by ClientOptions::timeout_s.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"

namespace hyb::http {

// One request as the server received it.
struct Request {
  std::string method;                          // "GET"
  std::string target;                          // "/v1/jobs/abc?validate_only=true" as received
  std::string path;                            // "/v1/jobs/abc" (percent-decoded)
  std::map<std::string, std::string> query;    // decoded ("+" is a space); a repeated key: last
  std::map<std::string, std::string> headers;  // names lower-cased; repeated fields: ", "-joined
  std::string body;
  std::string remote;  // "127.0.0.1:54321", "[::1]:54321"
  // The value of header `lower_name` (already lower-case), "" when absent.
  std::string Header(const std::string& lower_name) const;
};

struct Response {
  int status = 200;                               // 200..999; anything else is answered as a 500
  std::string content_type = "application/json";  // empty: no Content-Type header
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  // When set, the body is streamed instead (server-sent events): the server sends the status
  // and headers with chunked transfer encoding, then calls stream(write) on the connection's
  // thread; write(chunk) sends one chunk (an empty chunk sends nothing and returns true) and
  // returns false once the client is gone, a write timed out, or the server is shutting down;
  // the response ends when stream returns. A stream learns that its client left only when it
  // writes, so a stream that waits for events should write a heartbeat (an SSE comment line,
  // ": ping\n\n") every few seconds.
  std::function<void(const std::function<bool(std::string_view)>& write)> stream;
};

// Called concurrently from many connection threads. An exception becomes a 500 JSON error.
using Handler = std::function<Response(const Request&)>;

// {"error": {"code": code, "message": message, "field": field}} (field omitted when empty).
Response JsonError(int status, const std::string& code, const std::string& message,
                   const std::string& field = "");
// `body` serialised (invalid UTF-8 in strings replaced, never throws), application/json.
Response JsonResponse(int status, const Json& body);
// Compares in time that depends only on the lengths, not on where the inputs differ (bearer
// tokens).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

struct ServerOptions {
  std::string address = "127.0.0.1";   // an IP address (0.0.0.0, ::), or "localhost"
  uint16_t port = 0;                   // 0: an ephemeral port, see Server::port()
  size_t max_body_bytes = 8 << 20;     // larger bodies: 413 JSON error, handler not called
  size_t max_header_bytes = 64 << 10;  // larger request heads: 431 JSON error
  // A request (headers + body) must arrive within this once its first byte has; an idle
  // keep-alive connection (and a new one that sends nothing) is closed after it. TLS
  // handshakes are bounded by it too.
  int read_timeout_s = 30;
  int write_timeout_s = 30;   // per write: a response, or one chunk of a stream
  int max_connections = 256;  // open connections beyond this get a 503 JSON error, then close
  // Both set: HTTPS only (PEM files; TLS 1.2 or newer). One set: InvalidArgument from Start.
  std::string tls_cert_file, tls_key_file;
};

class Server {
 public:
  // Binds and starts accepting. InvalidArgument naming the option at fault (address, one TLS
  // file without the other, a certificate or key that does not load), IoError naming the
  // address when binding or listening fails.
  static StatusOr<std::unique_ptr<Server>> Start(ServerOptions options, Handler handler);

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();  // Shutdown(0ms)

  uint16_t port() const;  // the bound port (the ephemeral one when options.port was 0)

  // Stops accepting new connections (connecting is refused from then on), lets in-flight
  // requests finish for up to `grace` (streams see write() return false at once; responses
  // finished while draining carry Connection: close), closes idle keep-alive connections, then
  // force-closes what is left and joins every thread (waiting for handlers that are still
  // running: they cannot be interrupted). Idempotent and thread-safe: a second caller waits for
  // the first to finish.
  void Shutdown(std::chrono::milliseconds grace);
  bool draining() const;  // true from the start of Shutdown

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct ClientOptions {
  double timeout_s = 30;      // Request: connect + request + response, per call; Stream: see there
  std::string bearer_token;   // sent as Authorization: Bearer <token> when not empty
  std::string ca_file;        // https: verify the server against this CA/cert file (PEM)
  bool insecure_tls = false;  // https: do not verify (tests, dev)
};
// Without ca_file and insecure_tls, https servers are verified against the system's CAs.

struct ClientResponse {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // names lower-cased
};

struct ClientTls;  // the TLS context of an https client, shared by its copies

// Copyable; copies share the TLS context. Calls are independent and may run concurrently.
class Client {
 public:
  // base_url: "http://host:port" or "https://host:port", with an optional path prefix
  // ("http://h:8080/api" sends "/v1/jobs" as "/api/v1/jobs"); the port defaults to 80/443.
  // InvalidArgument naming the URL when malformed, or naming ca_file when it does not load.
  static StatusOr<Client> Create(const std::string& base_url, ClientOptions options);

  // One request on a fresh connection; `target` starts with '/' and may carry a query.
  // Transport failures are Unavailable naming the method, the URL and what failed
  // ("GET http://127.0.0.1:9/healthz: connect: connection refused", "... timed out after 30 s",
  // "... TLS handshake: certificate verification failed: self-signed certificate"); any HTTP
  // status is a successful call. If the server answers before it has read the whole body (a
  // 413) and closes, that answer is returned.
  StatusOr<ClientResponse> Request(
      const std::string& method, const std::string& target, const std::string& body = "",
      const std::string& content_type = "application/json",
      const std::vector<std::pair<std::string, std::string>>& headers = {});

  // Sends a body-less request and reads a streamed (chunked or close-delimited) response body,
  // calling on_data with each piece as it arrives, until on_data returns false, the server ends
  // the response, or timeout_s passes without data (all three return the status code). The
  // connection and response head must arrive within timeout_s. A response cut off mid-chunk is
  // Unavailable. Non-2xx bodies are delivered through on_data too.
  StatusOr<int> Stream(const std::string& method, const std::string& target,
                       const std::function<bool(std::string_view)>& on_data,
                       const std::vector<std::pair<std::string, std::string>>& headers = {});

  const std::string& base_url() const { return base_url_; }

 private:
  Client() = default;
  std::string base_url_;
  bool https_ = false;
  std::string host_;  // without brackets for IPv6
  uint16_t port_ = 0;
  std::string prefix_;  // "" or "/api" (no trailing '/')
  ClientOptions options_;
  std::shared_ptr<ClientTls> tls_;
};

}  // namespace hyb::http
