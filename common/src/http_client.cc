// The HTTP client: one connection per call, driven on the calling thread by an io_context of the
// call's own, so that the deadline (beast::tcp_stream's timer) bounds connecting, the TLS
// handshake, writing and reading alike.
#include "hyb/common/http.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "http_internal.h"

namespace hyb::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using boost::system::error_code;

struct ClientTls {
  ssl::context context{ssl::context::tls_client};
  bool verify = true;
};

namespace {

// Responses larger than this are refused (the coordinator's answers are far smaller).
constexpr uint64_t kMaxResponseBytes = uint64_t{1} << 30;
constexpr uint32_t kMaxResponseHeadBytes = 1 << 20;

std::string Lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

// "Connection refused" -> "connection refused", to read well after "connect: ".
std::string Describe(const error_code& ec) {
  std::string m = ec.message();
  if (m.size() > 1 && std::isupper(static_cast<unsigned char>(m[0])) &&
      !std::isupper(static_cast<unsigned char>(m[1]))) {
    m[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(m[0])));
  }
  return m;
}

std::string Seconds(double s) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", s);
  return text;
}

std::chrono::steady_clock::duration ToDuration(double seconds) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(seconds));
}

// One call's connection, plain or TLS.
class Connection {
 public:
  Connection(std::string what, double timeout_s) : what_(std::move(what)), timeout_s_(timeout_s) {}
  ~Connection() { Close(); }

  beast::tcp_stream& Transport() { return tls_ ? tls_->next_layer() : *tcp_; }

  // Resolves, connects and (for https) handshakes, all before `deadline`.
  Status Open(const std::string& host, uint16_t port, ClientTls* tls,
              std::chrono::steady_clock::time_point deadline) {
    error_code ec;
    std::vector<tcp::endpoint> endpoints;
    const asio::ip::address address = asio::ip::make_address(host, ec);
    if (!ec) {
      endpoints.emplace_back(address, port);
    } else {
      // Name resolution runs getaddrinfo, bounded by the system resolver's own timeouts.
      tcp::resolver resolver(ioc_);
      tcp::resolver::results_type results;
      error_code resolve_ec;
      resolver.async_resolve(host, std::to_string(port),
                             [&](const error_code& e, tcp::resolver::results_type found) {
                               resolve_ec = e;
                               results = std::move(found);
                             });
      ioc_.restart();
      ioc_.run();
      if (resolve_ec || results.empty()) {
        return Fail("cannot resolve '" + host + "': " + Describe(resolve_ec));
      }
      for (const auto& entry : results) endpoints.push_back(entry.endpoint());
    }
    tcp_.emplace(ioc_);
    tcp_->expires_at(deadline);
    auto r = internal::Await(ioc_, [&](auto&& h) { tcp_->async_connect(endpoints, std::move(h)); });
    if (r.ec) return Fail("connect: " + Describe(r.ec), r.ec);
    if (tls == nullptr) return Status::Ok();

    tls_.emplace(std::move(*tcp_), tls->context);
    SSL* ssl_handle = tls_->native_handle();
    asio::ip::make_address(host, ec);
    const bool is_ip = !ec;
    if (!is_ip) SSL_set_tlsext_host_name(ssl_handle, host.c_str());
    if (tls->verify) {
      // OpenSSL's own host check, so a mismatch reads "hostname mismatch" in the verify result.
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl_handle);
      if (is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str());
      } else {
        X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0);
      }
    }
    tls_->next_layer().expires_at(deadline);
    r = internal::Await(
        ioc_, [&](auto&& h) { tls_->async_handshake(ssl::stream_base::client, std::move(h)); });
    if (r.ec) {
      const long verify = SSL_get_verify_result(ssl_handle);
      if (tls->verify && verify != X509_V_OK) {
        return Fail(std::string("TLS handshake: certificate verification failed: ") +
                    X509_verify_cert_error_string(verify));
      }
      return Fail("TLS handshake: " + Describe(r.ec), r.ec);
    }
    return Status::Ok();
  }

  template <class F>
  auto Visit(F&& f) {
    return tls_ ? f(*tls_) : f(*tcp_);
  }

  asio::io_context& ioc() { return ioc_; }

  // Unavailable "<what>: <detail>", or the timeout's own message when `ec` is the timeout.
  Status Fail(const std::string& detail, const error_code& ec = {}) const {
    if (ec == beast::error::timeout) {
      return Status(StatusCode::kUnavailable, what_ + ": timed out after " + Seconds(timeout_s_) +
                                                  " s (" + detail.substr(0, detail.find(':')) +
                                                  ")");
    }
    return Status(StatusCode::kUnavailable, what_ + ": " + detail);
  }

  void Close() {
    if (!tcp_ && !tls_) return;
    error_code ec;
    Transport().socket().shutdown(tcp::socket::shutdown_both, ec);
    Transport().close();
  }

 private:
  std::string what_;  // "GET http://host:port/target"
  double timeout_s_;
  asio::io_context ioc_{1};
  std::optional<beast::tcp_stream> tcp_;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls_;
};

}  // namespace

StatusOr<Client> Client::Create(const std::string& base_url, ClientOptions options) {
  auto bad = [&](const std::string& why) {
    return InvalidArgument("base URL '" + base_url + "': " + why);
  };
  Client client;
  std::string_view rest(base_url);
  const size_t scheme_end = rest.find("://");
  if (scheme_end == std::string_view::npos) return bad("expected http://host:port or https://...");
  const std::string scheme = Lower(std::string(rest.substr(0, scheme_end)));
  if (scheme == "https") {
    client.https_ = true;
  } else if (scheme != "http") {
    return bad("scheme '" + scheme + "' is not http or https");
  }
  rest.remove_prefix(scheme_end + 3);
  const size_t slash = rest.find('/');
  const std::string_view authority = rest.substr(0, slash);
  std::string_view prefix = slash == std::string_view::npos ? "" : rest.substr(slash);
  while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);
  if (authority.find_first_of("@ ") != std::string_view::npos ||
      rest.find_first_of("?# \r\n") != std::string_view::npos) {
    return bad("only scheme://host[:port][/prefix] is supported");
  }
  std::string_view port_text;
  if (!authority.empty() && authority[0] == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated IPv6 address");
    client.host_ = std::string(authority.substr(1, close - 1));
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return bad("unexpected text after the IPv6 address");
      port_text = after.substr(1);
      if (port_text.empty()) return bad("empty port");
    }
  } else {
    const size_t colon = authority.find(':');
    client.host_ = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      if (port_text.empty()) return bad("empty port");
    }
  }
  if (client.host_.empty()) return bad("no host");
  client.port_ = client.https_ ? 443 : 80;
  if (!port_text.empty()) {
    if (port_text.size() > 5 ||
        port_text.find_first_not_of("0123456789") != std::string_view::npos ||
        std::stoi(std::string(port_text)) < 1 || std::stoi(std::string(port_text)) > 65535) {
      return bad("port '" + std::string(port_text) + "' is not a number in 1..65535");
    }
    client.port_ = static_cast<uint16_t>(std::stoi(std::string(port_text)));
  }
  client.prefix_ = std::string(prefix);
  if (!(options.timeout_s > 0) || !std::isfinite(options.timeout_s)) {
    return InvalidArgument("ClientOptions.timeout_s must be positive, got " +
                           Seconds(options.timeout_s));
  }
  std::string_view trimmed(base_url);
  while (!trimmed.empty() && trimmed.back() == '/') trimmed.remove_suffix(1);
  client.base_url_ = std::string(trimmed);

  if (client.https_) {
    auto tls = std::make_shared<ClientTls>();
    tls->context.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                             ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                             ssl::context::no_tlsv1_1);
    SSL_CTX_set_min_proto_version(tls->context.native_handle(), TLS1_2_VERSION);
    error_code ec;
    if (options.insecure_tls) {
      tls->verify = false;
      tls->context.set_verify_mode(ssl::verify_none);
    } else {
      tls->context.set_verify_mode(ssl::verify_peer);
      if (!options.ca_file.empty()) {
        tls->context.load_verify_file(options.ca_file, ec);
        if (ec) {
          return InvalidArgument("ClientOptions.ca_file '" + options.ca_file +
                                 "': cannot load PEM certificates: " + Describe(ec));
        }
      } else {
        tls->context.set_default_verify_paths(ec);
        if (ec) {
          return InvalidArgument("https client for '" + base_url +
                                 "': cannot load the system's CA certificates: " + Describe(ec));
        }
      }
    }
    client.tls_ = std::move(tls);
  }
  client.options_ = std::move(options);
  return client;
}

namespace {

template <class Message>
void FillRequestHead(Message& m, const std::string& host, uint16_t port, bool https,
                     const ClientOptions& options,
                     const std::vector<std::pair<std::string, std::string>>& headers) {
  const bool default_port = port == (https ? 443 : 80);
  const bool v6 = host.find(':') != std::string::npos;
  m.set(bhttp::field::host,
        (v6 ? "[" + host + "]" : host) + (default_port ? "" : ":" + std::to_string(port)));
  m.set(bhttp::field::user_agent, "hybridize");
  if (!options.bearer_token.empty()) {
    m.set(bhttp::field::authorization, "Bearer " + options.bearer_token);
  }
  for (const auto& [name, value] : headers) m.set(name, value);
  m.keep_alive(false);  // one request per connection
}

std::map<std::string, std::string> HeadersOf(const bhttp::fields& fields) {
  std::map<std::string, std::string> out;
  for (const auto& field : fields) {
    auto [it, inserted] =
        out.emplace(Lower(std::string(field.name_string())), std::string(field.value()));
    if (!inserted) it->second += ", " + std::string(field.value());
  }
  return out;
}

bool BadTarget(const std::string& target) {
  return target.empty() || target[0] != '/' || target.find_first_of("\r\n ") != std::string::npos;
}

}  // namespace

StatusOr<ClientResponse> Client::Request(
    const std::string& method, const std::string& target, const std::string& body,
    const std::string& content_type,
    const std::vector<std::pair<std::string, std::string>>& headers) {
  const std::string what = method + " " + base_url_ + target;
  if (BadTarget(target)) return InvalidArgument(what + ": the target must start with '/'");
  const auto deadline = std::chrono::steady_clock::now() + ToDuration(options_.timeout_s);
  Connection conn(what, options_.timeout_s);
  HYB_RETURN_IF_ERROR(conn.Open(host_, port_, tls_.get(), deadline));

  bhttp::request<bhttp::string_body> req;
  req.method_string(method);
  req.target(prefix_ + target);
  req.version(11);
  FillRequestHead(req, host_, port_, https_, options_, headers);
  if (!body.empty() || method == "POST" || method == "PUT" || method == "PATCH") {
    if (!content_type.empty()) req.set(bhttp::field::content_type, content_type);
    req.body() = body;
  }
  req.prepare_payload();

  conn.Transport().expires_at(deadline);
  auto written = conn.Visit([&](auto& stream) {
    return internal::Await(conn.ioc(),
                           [&](auto&& h) { bhttp::async_write(stream, req, std::move(h)); });
  });
  // A server may answer (413) and close before it has read the whole body: read its answer
  // even when writing failed, and report the write error only when there is none.
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(kMaxResponseBytes);
  parser.header_limit(kMaxResponseHeadBytes);
  if (written.ec == beast::error::timeout) return conn.Fail("write", written.ec);
  conn.Transport().expires_at(deadline);
  auto read = conn.Visit([&](auto& stream) {
    return internal::Await(
        conn.ioc(), [&](auto&& h) { bhttp::async_read(stream, buffer, parser, std::move(h)); });
  });
  if (read.ec) {
    if (written.ec) return conn.Fail("sending the request: " + Describe(written.ec));
    if (read.ec == bhttp::error::end_of_stream || read.ec == asio::error::eof ||
        read.ec == asio::error::connection_reset) {
      return conn.Fail("the server closed the connection without a complete response");
    }
    return conn.Fail("reading the response: " + Describe(read.ec), read.ec);
  }
  ClientResponse response;
  response.status = static_cast<int>(parser.get().result_int());
  response.headers = HeadersOf(parser.get().base());
  response.body = std::move(parser.get().body());
  return response;
}

StatusOr<int> Client::Stream(const std::string& method, const std::string& target,
                             const std::function<bool(std::string_view)>& on_data,
                             const std::vector<std::pair<std::string, std::string>>& headers) {
  const std::string what = method + " " + base_url_ + target;
  if (BadTarget(target)) return InvalidArgument(what + ": the target must start with '/'");
  const auto timeout = ToDuration(options_.timeout_s);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  Connection conn(what, options_.timeout_s);
  HYB_RETURN_IF_ERROR(conn.Open(host_, port_, tls_.get(), deadline));

  bhttp::request<bhttp::empty_body> req;
  req.method_string(method);
  req.target(prefix_ + target);
  req.version(11);
  FillRequestHead(req, host_, port_, https_, options_, headers);
  conn.Transport().expires_at(deadline);
  auto r = conn.Visit([&](auto& stream) {
    return internal::Await(conn.ioc(),
                           [&](auto&& h) { bhttp::async_write(stream, req, std::move(h)); });
  });
  if (r.ec) return conn.Fail("sending the request: " + Describe(r.ec), r.ec);

  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::buffer_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());  // boost::none misbehaves in 1.74
  parser.header_limit(kMaxResponseHeadBytes);
  conn.Transport().expires_at(deadline);
  r = conn.Visit([&](auto& stream) {
    return internal::Await(conn.ioc(), [&](auto&& h) {
      bhttp::async_read_header(stream, buffer, parser, std::move(h));
    });
  });
  if (r.ec) return conn.Fail("reading the response head: " + Describe(r.ec), r.ec);
  const int status = static_cast<int>(parser.get().result_int());

  char piece[16 << 10];
  while (!parser.is_done()) {
    parser.get().body().data = piece;
    parser.get().body().size = sizeof(piece);
    conn.Transport().expires_after(timeout);  // timeout_s without data ends the stream
    r = conn.Visit([&](auto& stream) {
      return internal::Await(conn.ioc(), [&](auto&& h) {
        bhttp::async_read_some(stream, buffer, parser, std::move(h));
      });
    });
    const size_t n = sizeof(piece) - parser.get().body().size;
    if (n > 0 && !on_data(std::string_view(piece, n))) return status;
    if (!r.ec || r.ec == bhttp::error::need_buffer) continue;
    if (r.ec == beast::error::timeout) return status;
    if (r.ec == ssl::error::stream_truncated && parser.need_eof()) return status;
    return conn.Fail("reading the streamed response: " + Describe(r.ec));
  }
  return status;
}

}  // namespace hyb::http
