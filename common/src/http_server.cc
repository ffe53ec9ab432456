// The HTTP server: an acceptor thread running its own io_context, and one joinable thread per
// connection that owns an io_context of its own and runs it for one asynchronous operation at a
// time. Running operations asynchronously (rather than with blocking calls) is what bounds every
// wait: beast::tcp_stream's timer closes the socket when an operation outlives its deadline,
// and Shutdown interrupts a connection by posting a close to the connection's io_context, where
// it runs on the connection's own thread.
#include "hyb/common/http.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <condition_variable>
#include <exception>
#include <list>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "http_internal.h"
#include "hyb/common/logging.h"

namespace hyb::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using boost::system::error_code;

std::string Request::Header(const std::string& lower_name) const {
  auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

Response JsonError(int status, const std::string& code, const std::string& message,
                   const std::string& field) {
  Json error = {{"code", code}, {"message", message}};
  if (!field.empty()) error["field"] = field;
  return JsonResponse(status, Json{{"error", std::move(error)}});
}

Response JsonResponse(int status, const Json& body) {
  Response response;
  response.status = status;
  response.content_type = "application/json";
  response.body = body.dump(-1, ' ', false, Json::error_handler_t::replace);
  return response;
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Walks the longer input whatever the contents, so the time says nothing about where (or
  // whether) they differ beyond their lengths.
  const size_t n = std::max(a.size(), b.size());
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

namespace internal {

bool PercentDecode(std::string_view in, bool plus_is_space, std::string* out) {
  auto hex = [](char ch) -> int {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
  };
  out->clear();
  out->reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const char ch = in[i];
    if (ch == '%') {
      const int hi = i + 1 < in.size() ? hex(in[i + 1]) : -1;
      const int lo = i + 2 < in.size() ? hex(in[i + 2]) : -1;
      if (hi < 0 || lo < 0) return false;
      out->push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (ch == '+' && plus_is_space) {
      out->push_back(' ');
    } else {
      out->push_back(ch);
    }
  }
  return true;
}

Status ParseTarget(const std::string& target, std::string* path,
                   std::map<std::string, std::string>* query) {
  if (target.empty() || target[0] != '/') {
    return InvalidArgument("request target '" + target + "' does not start with '/'");
  }
  std::string_view rest(target);
  rest = rest.substr(0, rest.find('#'));
  const size_t question = rest.find('?');
  if (!PercentDecode(rest.substr(0, question), /*plus_is_space=*/false, path) ||
      path->find('\0') != std::string::npos) {
    return InvalidArgument("request target '" + target +
                           "': malformed percent-encoding in the path");
  }
  query->clear();
  if (question == std::string_view::npos) return Status::Ok();
  std::string_view q = rest.substr(question + 1);
  while (!q.empty()) {
    const size_t amp = q.find('&');
    const std::string_view item = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view() : q.substr(amp + 1);
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    std::string key, value;
    if (!PercentDecode(item.substr(0, eq), true, &key) ||
        (eq != std::string_view::npos && !PercentDecode(item.substr(eq + 1), true, &value))) {
      return InvalidArgument("request target '" + target +
                             "': malformed percent-encoding in the query");
    }
    (*query)[std::move(key)] = std::move(value);
  }
  return Status::Ok();
}

}  // namespace internal

namespace {

constexpr size_t kReadChunk = 16 << 10;
// After an error answer whose request was not read to its end, the rest is read and discarded
// for up to this long before closing, so that closing with unread data (which makes the kernel
// send a reset) does not destroy the answer before the client has read it.
constexpr auto kLingerAfterError = std::chrono::seconds(2);
// Bounds the whole exchange with a client turned away because of max_connections.
constexpr auto kRejectTimeout = std::chrono::seconds(2);

bool IsHttpParseError(const error_code& ec) {
  return ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category() &&
         ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message &&
         ec != bhttp::error::need_buffer && ec != bhttp::error::need_more;
}

// The wire form of an error answer that ends the connection.
std::string SerializedError(int status, const std::string& code, const std::string& message) {
  const Response r = JsonError(status, code, message);
  bhttp::response<bhttp::string_body> m{static_cast<bhttp::status>(status), 11};
  m.set(bhttp::field::content_type, r.content_type);
  m.keep_alive(false);
  m.body() = r.body;
  m.prepare_payload();
  std::ostringstream out;
  out << m;
  return out.str();
}

std::string RemoteOf(const tcp::socket& socket) {
  error_code ec;
  const tcp::endpoint ep = socket.remote_endpoint(ec);
  if (ec) return "?";
  const std::string address = ep.address().to_string();
  return (ep.address().is_v6() ? "[" + address + "]" : address) + ":" + std::to_string(ep.port());
}

bool HasLineBreak(std::string_view s) { return s.find_first_of("\r\n") != std::string_view::npos; }

// One accepted connection. The streams, `buffer` and `idle` are touched only on the
// connection's thread (lambdas that Shutdown posts to `ioc` run there too).
struct Connection {
  asio::io_context ioc{1};
  std::optional<beast::tcp_stream> plain;  // the plain stream, or the TLS one's before handshake
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls;
  beast::flat_buffer buffer;
  std::string remote;
  bool idle = false;  // waiting for the first byte of a request
  std::thread thread;
  std::atomic<bool> finished{false};      // the thread has left Serve
  std::atomic<bool> force_closed{false};  // Shutdown's grace is over

  beast::tcp_stream& Transport() { return tls ? tls->next_layer() : *plain; }
  void Close() {
    error_code ec;
    Transport().socket().shutdown(tcp::socket::shutdown_both, ec);
    Transport().close();
  }
};

// A client turned away because max_connections are open: handled asynchronously on the
// acceptor's thread, so that no thread is spent on it.
struct Rejection {
  explicit Rejection(tcp::socket socket) : plain(std::move(socket)) {}
  std::optional<beast::tcp_stream> plain;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls;
  std::string message;
  char discard[4096];
  beast::tcp_stream& Transport() { return tls ? tls->next_layer() : *plain; }
};

// Reads and discards until the client closes, an error, or the stream's deadline.
void DrainRejected(const std::shared_ptr<Rejection>& r) {
  r->Transport().async_read_some(asio::buffer(r->discard), [r](error_code ec, size_t) {
    if (!ec) DrainRejected(r);
  });
}

}  // namespace

struct Server::Impl {
  ServerOptions options;
  Handler handler;
  std::unique_ptr<ssl::context> tls_context;  // set for HTTPS
  uint16_t port = 0;

  // Accept thread only: receives the next accepted socket. Declared before accept_ioc so that
  // it outlives the pending accept that accept_ioc's destructor destroys (that accept holds a
  // socket of next->ioc).
  std::shared_ptr<Connection> next;
  asio::io_context accept_ioc{1};
  tcp::acceptor acceptor{accept_ioc};
  asio::steady_timer retry_timer{accept_ioc};
  std::thread accept_thread;

  std::atomic<bool> draining{false};
  std::atomic<int> open_connections{0};

  std::mutex connections_mu;  // guards connections
  std::condition_variable connection_finished;
  std::list<std::shared_ptr<Connection>> connections;

  std::mutex shutdown_mu;  // serialises Shutdown; guards shut_down
  bool shut_down = false;

  void StartAccept();
  void OnAccept(const error_code& ec, tcp::socket socket);
  void Reject(tcp::socket socket);
  void ReapFinished();
  void Serve(const std::shared_ptr<Connection>& c);
  template <class Stream>
  void ServeRequests(Stream& stream, Connection& c);
  template <class Stream>
  bool ReadRequest(Stream& stream, Connection& c, bhttp::request_parser<bhttp::string_body>& p);
  template <class Stream>
  bool WriteResponse(Stream& stream, Connection& c, const bhttp::request<bhttp::string_body>& req,
                     Response& res, bool keep_alive);
  template <class Stream>
  void SendErrorAndClose(Stream& stream, Connection& c, int status, const std::string& code,
                         const std::string& message);
  void LingerAndClose(Connection& c);
  Response CallHandler(const Request& request);
};

// ---------------------------------------------------------------------------------------------
// Accepting.

void Server::Impl::StartAccept() {
  next = std::make_shared<Connection>();
  acceptor.async_accept(next->ioc, [this](const error_code& ec, tcp::socket socket) {
    OnAccept(ec, std::move(socket));
  });
}

void Server::Impl::OnAccept(const error_code& ec, tcp::socket socket) {
  if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
  if (ec) {
    // Out of file descriptors and the like: wait a little rather than spin.
    HYB_LOG(Warning) << "http server :" << port << ": accept failed: " << ec.message();
    retry_timer.expires_after(std::chrono::milliseconds(100));
    retry_timer.async_wait([this](const error_code& e) {
      if (!e && acceptor.is_open()) StartAccept();
    });
    return;
  }
  ReapFinished();
  if (open_connections.load() >= options.max_connections) {
    Reject(std::move(socket));
    StartAccept();
    return;
  }
  std::shared_ptr<Connection> c = std::move(next);
  c->remote = RemoteOf(socket);
  c->plain.emplace(std::move(socket));
  ++open_connections;
  {
    std::lock_guard<std::mutex> lock(connections_mu);
    connections.push_back(c);
  }
  try {
    c->thread = std::thread([this, c] { Serve(c); });
  } catch (const std::system_error& e) {
    HYB_LOG(Warning) << "http server :" << port
                     << ": cannot start a connection thread: " << e.what();
    c->Close();
    --open_connections;
    std::lock_guard<std::mutex> lock(connections_mu);
    connections.remove(c);
  }
  StartAccept();
}

void Server::Impl::Reject(tcp::socket socket) {
  auto r = std::make_shared<Rejection>(std::move(socket));
  r->message = SerializedError(503, "unavailable",
                               "too many open connections (max_connections " +
                                   std::to_string(options.max_connections) + "); retry later");
  r->plain->expires_after(kRejectTimeout);
  // After the answer: stop sending, then read and discard until the client closes or the
  // timeout closes the socket.
  auto after_write = [r](error_code ec, size_t) {
    if (ec) return;
    r->Transport().socket().shutdown(tcp::socket::shutdown_send, ec);
    DrainRejected(r);
  };
  if (!tls_context) {
    asio::async_write(*r->plain, asio::buffer(r->message), after_write);
    return;
  }
  r->tls.emplace(std::move(*r->plain), *tls_context);
  r->tls->async_handshake(ssl::stream_base::server, [r, after_write](error_code ec) {
    if (!ec) asio::async_write(*r->tls, asio::buffer(r->message), after_write);
  });
}

void Server::Impl::ReapFinished() {
  std::vector<std::shared_ptr<Connection>> done;
  {
    std::lock_guard<std::mutex> lock(connections_mu);
    for (auto it = connections.begin(); it != connections.end();) {
      if ((*it)->finished.load()) {
        done.push_back(std::move(*it));
        it = connections.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& c : done) c->thread.join();  // the thread has left Serve: this returns at once
}

// ---------------------------------------------------------------------------------------------
// One connection.

void Server::Impl::Serve(const std::shared_ptr<Connection>& c) {
  try {
    if (!tls_context) {
      ServeRequests(*c->plain, *c);
    } else {
      // Wait for the first bytes: a TLS handshake starts with a handshake record (0x16); a
      // plain-HTTP client gets a plain answer telling it to use https.
      c->idle = true;
      c->plain->expires_after(std::chrono::seconds(options.read_timeout_s));
      auto r = internal::Await(c->ioc, [&](auto&& h) {
        c->plain->async_read_some(c->buffer.prepare(kReadChunk), std::move(h));
      });
      c->idle = false;
      c->buffer.commit(r.bytes);
      if (!r.ec && !c->force_closed.load()) {
        if (static_cast<const unsigned char*>(c->buffer.data().data())[0] != 0x16) {
          SendErrorAndClose(*c->plain, *c, 400, "https_required",
                            "this server speaks HTTPS only; use an https:// URL");
        } else {
          c->tls.emplace(std::move(*c->plain), *tls_context);
          c->tls->next_layer().expires_after(std::chrono::seconds(options.read_timeout_s));
          r = internal::Await(c->ioc, [&](auto&& h) {
            c->tls->async_handshake(ssl::stream_base::server, c->buffer.data(), std::move(h));
          });
          if (r.ec) {
            HYB_LOG(Debug) << "http server: TLS handshake with " << c->remote
                           << " failed: " << r.ec.message();
          } else {
            c->buffer.consume(r.bytes);
            ServeRequests(*c->tls, *c);
          }
        }
      }
    }
  } catch (const std::exception& e) {
    HYB_LOG(Error) << "http server: connection " << c->remote << ": " << e.what();
  }
  c->Close();
  --open_connections;
  {
    std::lock_guard<std::mutex> lock(connections_mu);
    c->finished = true;
  }
  connection_finished.notify_all();
}

template <class Stream>
void Server::Impl::ServeRequests(Stream& stream, Connection& c) {
  for (;;) {
    if (draining.load() || c.force_closed.load()) return;
    if (c.buffer.size() == 0) {
      // Idle: the only phase in which Shutdown closes the connection right away.
      c.idle = true;
      c.Transport().expires_after(std::chrono::seconds(options.read_timeout_s));
      auto r = internal::Await(c.ioc, [&](auto&& h) {
        stream.async_read_some(c.buffer.prepare(kReadChunk), std::move(h));
      });
      c.idle = false;
      c.buffer.commit(r.bytes);
      if (r.ec) return;  // the client left, the idle timeout passed, or Shutdown closed it
    }
    // From its first byte, the whole request must arrive within read_timeout_s.
    c.Transport().expires_after(std::chrono::seconds(options.read_timeout_s));
    bhttp::request_parser<bhttp::string_body> parser;
    if (!ReadRequest(stream, c, parser)) return;
    bhttp::request<bhttp::string_body> message = parser.release();

    Request request;
    request.method = std::string(message.method_string());
    request.target = std::string(message.target());
    request.remote = c.remote;
    if (Status s = internal::ParseTarget(request.target, &request.path, &request.query); !s.ok()) {
      SendErrorAndClose(stream, c, 400, "bad_request", s.message());
      return;
    }
    for (const auto& field : message) {
      std::string name(field.name_string());
      for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      auto [it, inserted] = request.headers.emplace(name, std::string(field.value()));
      if (!inserted) it->second += ", " + std::string(field.value());
    }
    request.body = std::move(message.body());

    Response response = CallHandler(request);
    const bool keep_alive = message.keep_alive() && !draining.load();
    if (!WriteResponse(stream, c, message, response, keep_alive)) return;
    if (!keep_alive) {
      error_code ec;
      c.Transport().socket().shutdown(tcp::socket::shutdown_send, ec);
      return;
    }
  }
}

template <class Stream>
bool Server::Impl::ReadRequest(Stream& stream, Connection& c,
                               bhttp::request_parser<bhttp::string_body>& parser) {
  parser.header_limit(static_cast<std::uint32_t>(
      std::min<size_t>(options.max_header_bytes, std::numeric_limits<std::uint32_t>::max())));
  parser.body_limit(options.max_body_bytes);
  auto failed = [&](const error_code& ec) {
    if (ec == bhttp::error::body_limit) {
      SendErrorAndClose(
          stream, c, 413, "body_too_large",
          "request body exceeds " + std::to_string(options.max_body_bytes) + " bytes");
    } else if (ec == bhttp::error::header_limit) {
      SendErrorAndClose(
          stream, c, 431, "headers_too_large",
          "request head exceeds " + std::to_string(options.max_header_bytes) + " bytes");
    } else if (IsHttpParseError(ec)) {
      SendErrorAndClose(stream, c, 400, "bad_request", "malformed request: " + ec.message());
    }
    // Anything else (timeout, the client left, Shutdown): nobody to answer.
    return false;
  };
  auto r = internal::Await(
      c.ioc, [&](auto&& h) { bhttp::async_read_header(stream, c.buffer, parser, std::move(h)); });
  if (r.ec) return failed(r.ec);

  const auto expect = parser.get()[bhttp::field::expect];
  if (!expect.empty()) {
    if (!beast::iequals(expect, "100-continue")) {
      SendErrorAndClose(stream, c, 417, "expectation_failed",
                        "unsupported Expect: " + std::string(expect));
      return false;
    }
    if (!parser.is_done() && c.buffer.size() == 0) {
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      c.Transport().expires_after(std::chrono::seconds(options.write_timeout_s));
      r = internal::Await(c.ioc, [&](auto&& h) {
        asio::async_write(stream, asio::buffer(kContinue.data(), kContinue.size()), std::move(h));
      });
      if (r.ec) return false;
      c.Transport().expires_after(std::chrono::seconds(options.read_timeout_s));
    }
  }
  if (!parser.is_done()) {
    r = internal::Await(
        c.ioc, [&](auto&& h) { bhttp::async_read(stream, c.buffer, parser, std::move(h)); });
    if (r.ec) return failed(r.ec);
  }
  return true;
}

Response Server::Impl::CallHandler(const Request& request) {
  try {
    return handler(request);
  } catch (const std::exception& e) {
    HYB_LOG(Error) << "http server: handler for " << request.method << " " << request.target
                   << " threw: " << e.what();
    return JsonError(500, "internal", std::string("internal error: ") + e.what());
  } catch (...) {
    HYB_LOG(Error) << "http server: handler for " << request.method << " " << request.target
                   << " threw a non-exception";
    return JsonError(500, "internal", "internal error");
  }
}

template <class Stream>
bool Server::Impl::WriteResponse(Stream& stream, Connection& c,
                                 const bhttp::request<bhttp::string_body>& req, Response& res,
                                 bool keep_alive) {
  std::string invalid;
  if (res.status < 200 || res.status > 999) {
    invalid = "the handler answered with status " + std::to_string(res.status);
  } else if (HasLineBreak(res.content_type)) {
    invalid = "the handler's content type holds a line break";
  }
  for (const auto& [name, value] : res.headers) {
    if (name.empty() || HasLineBreak(name) || HasLineBreak(value)) {
      invalid = "the handler's header '" + name + "' is empty or holds a line break";
    }
  }
  if (!invalid.empty()) {
    HYB_LOG(Error) << "http server: " << req.method_string() << " " << req.target() << ": "
                   << invalid;
    res = JsonError(500, "internal", "internal error: " + invalid);
  }
  auto fill_head = [&](auto& m) {
    if (!res.content_type.empty()) m.set(bhttp::field::content_type, res.content_type);
    for (const auto& [name, value] : res.headers) {
      // The transport owns framing and the connection's fate.
      if (beast::iequals(name, "content-length") || beast::iequals(name, "transfer-encoding") ||
          beast::iequals(name, "connection")) {
        continue;
      }
      m.insert(name, value);
    }
  };
  const auto write_timeout = std::chrono::seconds(options.write_timeout_s);

  if (!res.stream) {
    bhttp::response<bhttp::string_body> m{static_cast<bhttp::status>(res.status), req.version()};
    fill_head(m);
    m.keep_alive(keep_alive);
    if (res.status == 204 || res.status == 304) res.body.clear();
    if (req.method() == bhttp::verb::head) {
      m.content_length(res.body.size());
    } else {
      m.body() = std::move(res.body);
      m.prepare_payload();
    }
    c.Transport().expires_after(write_timeout);
    auto r = internal::Await(c.ioc, [&](auto&& h) { bhttp::async_write(stream, m, std::move(h)); });
    return !r.ec;
  }

  // Streamed: chunked for HTTP/1.1, close-delimited for HTTP/1.0 clients.
  const bool chunked = req.version() >= 11;
  bhttp::response<bhttp::empty_body> m{static_cast<bhttp::status>(res.status), req.version()};
  fill_head(m);
  m.keep_alive(keep_alive && chunked);
  if (chunked) m.chunked(true);
  bhttp::response_serializer<bhttp::empty_body> serializer{m};
  c.Transport().expires_after(write_timeout);
  auto r = internal::Await(
      c.ioc, [&](auto&& h) { bhttp::async_write_header(stream, serializer, std::move(h)); });
  if (r.ec) return false;
  bool transport_ok = true;
  auto write = [&](std::string_view data) -> bool {
    if (!transport_ok || draining.load() || c.force_closed.load()) return false;
    if (data.empty()) return true;
    c.Transport().expires_after(write_timeout);
    const asio::const_buffer piece(data.data(), data.size());
    r = internal::Await(c.ioc, [&](auto&& h) {
      if (chunked) {
        asio::async_write(stream, bhttp::make_chunk(piece), std::move(h));
      } else {
        asio::async_write(stream, piece, std::move(h));
      }
    });
    transport_ok = !r.ec;
    return transport_ok;
  };
  try {
    res.stream(write);
  } catch (const std::exception& e) {
    // The head is gone already: cutting the response short is all that is left to say.
    HYB_LOG(Error) << "http server: stream for " << req.target() << " threw: " << e.what();
    return false;
  }
  if (!transport_ok || !chunked || c.force_closed.load()) return false;
  c.Transport().expires_after(write_timeout);
  r = internal::Await(
      c.ioc, [&](auto&& h) { asio::async_write(stream, bhttp::make_chunk_last(), std::move(h)); });
  return !r.ec && m.keep_alive();
}

template <class Stream>
void Server::Impl::SendErrorAndClose(Stream& stream, Connection& c, int status,
                                     const std::string& code, const std::string& message) {
  const std::string wire = SerializedError(status, code, message);
  c.Transport().expires_after(std::chrono::seconds(options.write_timeout_s));
  auto r = internal::Await(
      c.ioc, [&](auto&& h) { asio::async_write(stream, asio::buffer(wire), std::move(h)); });
  if (!r.ec) LingerAndClose(c);
}

void Server::Impl::LingerAndClose(Connection& c) {
  error_code ec;
  c.Transport().socket().shutdown(tcp::socket::shutdown_send, ec);
  c.Transport().expires_after(std::min<std::chrono::seconds>(
      kLingerAfterError, std::chrono::seconds(options.read_timeout_s)));
  char discard[kReadChunk];
  for (;;) {
    if (c.force_closed.load()) return;
    auto r = internal::Await(c.ioc, [&](auto&& h) {
      c.Transport().async_read_some(asio::buffer(discard), std::move(h));
    });
    if (r.ec) return;
  }
}

// ---------------------------------------------------------------------------------------------
// Server.

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { Shutdown(std::chrono::milliseconds(0)); }

uint16_t Server::port() const { return impl_->port; }

bool Server::draining() const { return impl_->draining.load(); }

StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options, Handler handler) {
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return InvalidArgument(
        "ServerOptions: tls_cert_file and tls_key_file must be set together (got only " +
        std::string(options.tls_cert_file.empty() ? "tls_key_file '" + options.tls_key_file
                                                  : "tls_cert_file '" + options.tls_cert_file) +
        "')");
  }
  if (options.read_timeout_s <= 0 || options.write_timeout_s <= 0) {
    return InvalidArgument("ServerOptions: read_timeout_s and write_timeout_s must be positive");
  }
  if (options.max_connections <= 0) {
    return InvalidArgument("ServerOptions: max_connections must be positive, got " +
                           std::to_string(options.max_connections));
  }
  if (!handler) return InvalidArgument("Server::Start: no handler");

  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->handler = std::move(handler);
  error_code ec;

  if (!options.tls_cert_file.empty()) {
    auto ctx = std::make_unique<ssl::context>(ssl::context::tls_server);
    ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                     ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                     ssl::context::single_dh_use);
    SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
    ctx->use_certificate_chain_file(options.tls_cert_file, ec);
    if (ec) {
      return InvalidArgument("ServerOptions.tls_cert_file '" + options.tls_cert_file +
                             "': cannot load a PEM certificate: " + ec.message());
    }
    ctx->use_private_key_file(options.tls_key_file, ssl::context::pem, ec);
    if (ec) {
      return InvalidArgument("ServerOptions.tls_key_file '" + options.tls_key_file +
                             "': cannot load a PEM private key matching '" + options.tls_cert_file +
                             "': " + ec.message());
    }
    impl->tls_context = std::move(ctx);
  }

  const std::string where = options.address + ":" + std::to_string(options.port);
  // Only literals (and "localhost"): a name would make start-up wait on DNS, and a service
  // should say exactly which interface it listens on.
  const asio::ip::address address =
      asio::ip::make_address(options.address == "localhost" ? "127.0.0.1" : options.address, ec);
  if (ec) {
    return InvalidArgument("ServerOptions.address '" + options.address +
                           "' is not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::)");
  }
  const tcp::endpoint endpoint(address, options.port);
  tcp::acceptor& acceptor = impl->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (ec) return IoError("http server " + where + ": cannot open a socket: " + ec.message());
  acceptor.bind(endpoint, ec);
  if (ec) return IoError("http server: cannot bind " + where + ": " + ec.message());
  acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return IoError("http server: cannot listen on " + where + ": " + ec.message());
  impl->port = acceptor.local_endpoint(ec).port();
  if (ec) return IoError("http server " + where + ": " + ec.message());

  Impl* raw = impl.get();
  raw->StartAccept();
  raw->accept_thread = std::thread([raw] {
    for (;;) {
      try {
        raw->accept_ioc.run();
        return;
      } catch (const std::exception& e) {
        HYB_LOG(Error) << "http server :" << raw->port << ": acceptor: " << e.what();
      }
    }
  });
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

void Server::Shutdown(std::chrono::milliseconds grace) {
  Impl& s = *impl_;
  std::lock_guard<std::mutex> shutdown_lock(s.shutdown_mu);
  if (s.shut_down) return;
  s.shut_down = true;
  const auto deadline = std::chrono::steady_clock::now() + grace;
  s.draining = true;

  // No new connections: once the acceptor is closed, connecting is refused. Clients turned
  // away for max_connections are dropped with the acceptor's io_context.
  asio::post(s.accept_ioc, [&s] {
    error_code ec;
    s.acceptor.close(ec);
    s.retry_timer.cancel();
    s.accept_ioc.stop();
  });
  if (s.accept_thread.joinable()) s.accept_thread.join();
  error_code ignored;
  s.acceptor.close(ignored);  // in case the acceptor's thread had stopped on its own

  // From here only connection threads touch the list's entries; the list itself only shrinks
  // here. Idle connections close at once; the others finish their request, answer with
  // Connection: close, and leave.
  std::vector<std::shared_ptr<Connection>> live;
  {
    std::lock_guard<std::mutex> lock(s.connections_mu);
    live.assign(s.connections.begin(), s.connections.end());
  }
  for (const auto& c : live) {
    Connection* raw = c.get();  // a raw pointer: the lambda lives in raw->ioc, inside *raw
    asio::post(raw->ioc, [raw] {
      if (raw->idle) raw->Close();
    });
  }
  {
    std::unique_lock<std::mutex> lock(s.connections_mu);
    s.connection_finished.wait_until(lock, deadline, [&] {
      for (const auto& c : live) {
        if (!c->finished.load()) return false;
      }
      return true;
    });
  }
  for (const auto& c : live) {
    if (c->finished.load()) continue;
    c->force_closed = true;
    Connection* raw = c.get();
    asio::post(raw->ioc, [raw] { raw->Close(); });
  }
  for (const auto& c : live) c->thread.join();  // waits for handlers still running
  std::lock_guard<std::mutex> lock(s.connections_mu);
  s.connections.clear();
}

}  // namespace hyb::http
