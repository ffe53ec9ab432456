// Loopback tests of the HTTP server and client: a real server on 127.0.0.1 (ephemeral port),
// the real client, and raw sockets where a test needs to control the bytes on the wire.
#include "hyb/common/http.h"
#include "testing/temp_dir.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace hyb::http {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::unique_ptr<Server> StartServer(ServerOptions options, Handler handler) {
  auto server = Server::Start(std::move(options), std::move(handler));
  EXPECT_TRUE(server.ok()) << server.status().ToString();
  return server.ok() ? std::move(server).value() : nullptr;
}

Client MakeClient(const std::string& url, ClientOptions options = {}) {
  auto client = Client::Create(url, std::move(options));
  EXPECT_TRUE(client.ok()) << client.status().ToString();
  return std::move(client).value();
}

std::string LocalUrl(const Server& server, const std::string& scheme = "http") {
  return scheme + "://127.0.0.1:" + std::to_string(server.port());
}

Clock::time_point DeadlineIn(double seconds) {
  return Clock::now() +
         std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// A blocking TCP connection to 127.0.0.1 whose reads all have deadlines.
class RawConnection {
 public:
  explicit RawConnection(uint16_t port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawConnection() { close(fd_); }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  bool connected() const { return connected_; }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // Reads one response (head, then Content-Length bytes of body). "" when the connection closed
  // or nothing complete arrived within `timeout_s`.
  std::string ReadResponse(double timeout_s = 5) {
    const Clock::time_point deadline = DeadlineIn(timeout_s);
    for (;;) {
      const size_t head_end = pending_.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        size_t length = 0;
        std::string head = pending_.substr(0, head_end);
        for (char& ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        const size_t at = head.find("content-length:");
        if (at != std::string::npos) length = std::stoul(head.substr(at + 15));
        const size_t total = head_end + 4 + length;
        if (pending_.size() >= total) {
          std::string response = pending_.substr(0, total);
          pending_.erase(0, total);
          return response;
        }
      }
      if (!ReadMore(deadline)) return "";
    }
  }

  // Waits for the peer to close; returns true if it did within `timeout_s` (data received
  // meanwhile is appended to what ReadResponse has not consumed).
  bool WaitClosed(double timeout_s) {
    const Clock::time_point deadline = DeadlineIn(timeout_s);
    while (ReadMore(deadline)) {
    }
    return closed_;
  }

  const std::string& pending() const { return pending_; }

 private:
  // False on close, error or deadline.
  bool ReadMore(Clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left)) <= 0) return false;
    char buf[4096];
    const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    if (n <= 0) {
      closed_ = true;
      return false;
    }
    pending_.append(buf, static_cast<size_t>(n));
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  bool closed_ = false;
  std::string pending_;
};

// A port with nothing listening on it (bound, then released).
uint16_t UnusedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

Json BodyJson(const ClientResponse& r) {
  Json j = Json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << r.body;
  return j;
}

// ---------------------------------------------------------------------------------------------

Response Echo(const Request& req) {
  Json query = Json::object();
  for (const auto& [k, v] : req.query) query[k] = v;
  Response r = JsonResponse(200, {{"method", req.method},
                                  {"target", req.target},
                                  {"path", req.path},
                                  {"query", query},
                                  {"x_test", req.Header("x-test")},
                                  {"authorization", req.Header("authorization")},
                                  {"content_type", req.Header("content-type")},
                                  {"absent", req.Header("x-absent")},
                                  {"body", req.body},
                                  {"remote", req.remote}});
  r.headers.emplace_back("X-Reply", "yes");
  return r;
}

TEST(HttpTest, GetAndPostRoundTrip) {
  auto server = StartServer({}, Echo);
  ASSERT_NE(server, nullptr);
  ASSERT_GT(server->port(), 0);
  ClientOptions options;
  options.bearer_token = "s3cret";
  Client client = MakeClient(LocalUrl(*server), options);

  auto got = client.Request("GET", "/v1/jobs/a%20b%2Fc?validate_only=true&name=x+y&amp=%26%3D&flag",
                            "", "application/json", {{"X-Test", "hello"}});
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->status, 200);
  EXPECT_EQ(got->headers["x-reply"], "yes");
  EXPECT_EQ(got->headers["content-type"], "application/json");
  Json j = BodyJson(*got);
  EXPECT_EQ(j["method"], "GET");
  EXPECT_EQ(j["target"], "/v1/jobs/a%20b%2Fc?validate_only=true&name=x+y&amp=%26%3D&flag");
  EXPECT_EQ(j["path"], "/v1/jobs/a b/c");
  EXPECT_EQ(j["query"],
            (Json{{"validate_only", "true"}, {"name", "x y"}, {"amp", "&="}, {"flag", ""}}));
  EXPECT_EQ(j["x_test"], "hello");
  EXPECT_EQ(j["authorization"], "Bearer s3cret");
  EXPECT_EQ(j["absent"], "");
  EXPECT_EQ(j["body"], "");
  EXPECT_EQ(j["remote"].get<std::string>().rfind("127.0.0.1:", 0), 0u) << j["remote"];

  const std::string payload = R"({"job_id": "j1", "text": "h\u00e9llo"})";
  auto posted = client.Request("POST", "/v1/jobs", payload);
  ASSERT_TRUE(posted.ok()) << posted.status().ToString();
  EXPECT_EQ(posted->status, 200);
  j = BodyJson(*posted);
  EXPECT_EQ(j["method"], "POST");
  EXPECT_EQ(j["path"], "/v1/jobs");
  EXPECT_EQ(j["body"], payload);
  EXPECT_EQ(j["content_type"], "application/json");
}

TEST(HttpTest, ClientPathPrefixAndStatusCodes) {
  auto server = StartServer({}, [](const Request& req) {
    if (req.path == "/api/missing") return JsonError(404, "not_found", "no such job", "job_id");
    if (req.path == "/api/throw") throw std::runtime_error("boom");
    if (req.path == "/api/bad-status") return Response{.status = 42};
    return JsonResponse(200, {{"path", req.path}});
  });
  ASSERT_NE(server, nullptr);
  Client client = MakeClient(LocalUrl(*server) + "/api/");
  EXPECT_EQ(client.base_url(), LocalUrl(*server) + "/api");

  auto ok = client.Request("GET", "/x");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(BodyJson(*ok)["path"], "/api/x");

  auto missing = client.Request("GET", "/missing");
  ASSERT_TRUE(missing.ok()) << missing.status().ToString();
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(
      BodyJson(*missing),
      (Json{{"error", {{"code", "not_found"}, {"message", "no such job"}, {"field", "job_id"}}}}));

  auto thrown = client.Request("GET", "/throw");
  ASSERT_TRUE(thrown.ok()) << thrown.status().ToString();
  EXPECT_EQ(thrown->status, 500);
  EXPECT_EQ(BodyJson(*thrown)["error"]["code"], "internal");
  EXPECT_NE(thrown->body.find("boom"), std::string::npos);

  auto bad = client.Request("GET", "/bad-status");
  ASSERT_TRUE(bad.ok()) << bad.status().ToString();
  EXPECT_EQ(bad->status, 500);
}

TEST(HttpTest, JsonErrorOmitsEmptyField) {
  Response r = JsonError(400, "bad_spec", "tolerance must be in [0, 1)");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.content_type, "application/json");
  EXPECT_EQ(Json::parse(r.body),
            (Json{{"error", {{"code", "bad_spec"}, {"message", "tolerance must be in [0, 1)"}}}}));
}

TEST(HttpTest, KeepAliveServesTwoRequestsOnOneConnection) {
  std::mutex mu;
  std::vector<std::string> remotes;
  auto server = StartServer({}, [&](const Request& req) {
    std::lock_guard<std::mutex> lock(mu);
    remotes.push_back(req.remote);
    return JsonResponse(200, {{"n", remotes.size()}});
  });
  ASSERT_NE(server, nullptr);
  RawConnection conn(server->port());
  ASSERT_TRUE(conn.connected());
  ASSERT_TRUE(conn.Send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string first = conn.ReadResponse();
  ASSERT_EQ(first.rfind("HTTP/1.1 200", 0), 0u) << first;
  EXPECT_EQ(first.find("Connection: close"), std::string::npos) << first;
  EXPECT_NE(first.find(R"({"n":1})"), std::string::npos) << first;
  ASSERT_TRUE(conn.Send("GET /b HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string second = conn.ReadResponse();
  ASSERT_EQ(second.rfind("HTTP/1.1 200", 0), 0u) << second;
  EXPECT_NE(second.find(R"({"n":2})"), std::string::npos) << second;
  // Pipelined: both requests in one write.
  ASSERT_TRUE(
      conn.Send("GET /c HTTP/1.1\r\nHost: x\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\n"
                "Connection: close\r\n\r\n"));
  EXPECT_NE(conn.ReadResponse().find(R"({"n":3})"), std::string::npos);
  const std::string fourth = conn.ReadResponse();
  EXPECT_NE(fourth.find(R"({"n":4})"), std::string::npos) << fourth;
  EXPECT_NE(fourth.find("Connection: close"), std::string::npos) << fourth;
  EXPECT_TRUE(conn.WaitClosed(2));
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(remotes.size(), 4u);
  for (const auto& r : remotes) EXPECT_EQ(r, remotes[0]);  // one connection, one client port
}

TEST(HttpTest, BodyOverTheLimitIs413AndSkipsTheHandler) {
  std::atomic<int> calls{0};
  ServerOptions options;
  options.max_body_bytes = 1024;
  auto server = StartServer(options, [&](const Request& req) {
    ++calls;
    return JsonResponse(200, {{"size", req.body.size()}});
  });
  ASSERT_NE(server, nullptr);
  Client client = MakeClient(LocalUrl(*server));

  auto at_limit = client.Request("POST", "/v1/jobs", std::string(1024, 'a'));
  ASSERT_TRUE(at_limit.ok()) << at_limit.status().ToString();
  EXPECT_EQ(at_limit->status, 200);
  EXPECT_EQ(calls.load(), 1);

  // Content-Length over the limit: refused from the head. The body is large enough that the
  // server cannot have read it before answering.
  auto over = client.Request("POST", "/v1/jobs", std::string(4 << 20, 'a'));
  ASSERT_TRUE(over.ok()) << over.status().ToString();
  EXPECT_EQ(over->status, 413);
  EXPECT_EQ(BodyJson(*over)["error"]["code"], "body_too_large");
  EXPECT_EQ(over->headers["connection"], "close");

  // Chunked, over the limit only once the chunks add up.
  RawConnection conn(server->port());
  ASSERT_TRUE(conn.connected());
  std::string chunked = "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 3; ++i) chunked += "200\r\n" + std::string(512, 'b') + "\r\n";
  chunked += "0\r\n\r\n";
  ASSERT_TRUE(conn.Send(chunked));
  const std::string response = conn.ReadResponse();
  EXPECT_EQ(response.rfind("HTTP/1.1 413", 0), 0u) << response;
  EXPECT_TRUE(conn.WaitClosed(3));
  EXPECT_EQ(calls.load(), 1);
}

TEST(HttpTest, MalformedRequestsGet400) {
  std::atomic<int> calls{0};
  auto server = StartServer({}, [&](const Request&) {
    ++calls;
    return JsonResponse(200, Json::object());
  });
  ASSERT_NE(server, nullptr);
  for (const std::string bad :
       {"GARBAGE\r\n\r\n", "GET /x HTTP/9.9\r\n\r\n", "GET /x HTTP/1.1\r\nNo colon here\r\n\r\n",
        "GET /bad%zzescape HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET no-slash HTTP/1.1\r\nHost: x\r\n\r\n"}) {
    RawConnection conn(server->port());
    ASSERT_TRUE(conn.connected());
    ASSERT_TRUE(conn.Send(bad));
    const std::string response = conn.ReadResponse();
    EXPECT_EQ(response.rfind("HTTP/1.1 400", 0), 0u) << bad << " -> " << response;
    EXPECT_NE(response.find(R"("code":"bad_request")"), std::string::npos) << response;
    EXPECT_NE(response.find("Connection: close"), std::string::npos) << response;
    EXPECT_TRUE(conn.WaitClosed(3)) << bad;
  }
  EXPECT_EQ(calls.load(), 0);
}

TEST(HttpTest, ExpectContinueAndUnsupportedExpect) {
  auto server = StartServer({}, [](const Request& req) {
    return JsonResponse(200, {{"body", req.body}});
  });
  ASSERT_NE(server, nullptr);
  RawConnection conn(server->port());
  ASSERT_TRUE(
      conn.Send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                "Expect: 100-continue\r\n\r\n"));
  EXPECT_EQ(conn.ReadResponse(), "HTTP/1.1 100 Continue\r\n\r\n");
  ASSERT_TRUE(conn.Send("hello"));
  const std::string response = conn.ReadResponse();
  EXPECT_EQ(response.rfind("HTTP/1.1 200", 0), 0u) << response;
  EXPECT_NE(response.find(R"({"body":"hello"})"), std::string::npos) << response;

  RawConnection other(server->port());
  ASSERT_TRUE(
      other.Send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                 "Expect: teapot\r\n\r\nhello"));
  EXPECT_EQ(other.ReadResponse().rfind("HTTP/1.1 417", 0), 0u);
}

TEST(HttpTest, IdleConnectionsCloseAfterTheReadTimeout) {
  ServerOptions options;
  options.read_timeout_s = 1;
  auto server = StartServer(options, [](const Request&) { return JsonResponse(200, {}); });
  ASSERT_NE(server, nullptr);

  // A connection that never sends anything.
  auto start = Clock::now();
  RawConnection silent(server->port());
  ASSERT_TRUE(silent.connected());
  EXPECT_TRUE(silent.WaitClosed(4));
  EXPECT_GT(SecondsSince(start), 0.8);
  EXPECT_LT(SecondsSince(start), 3.0);

  // A keep-alive connection after one request, and one that stalls halfway through a head.
  RawConnection kept(server->port());
  RawConnection stalled(server->port());
  ASSERT_TRUE(kept.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(stalled.Send("GET / HTTP/1.1\r\nHo"));
  EXPECT_EQ(kept.ReadResponse().rfind("HTTP/1.1 200", 0), 0u);
  start = Clock::now();
  EXPECT_TRUE(kept.WaitClosed(4));
  EXPECT_TRUE(stalled.WaitClosed(4));
  EXPECT_LT(SecondsSince(start), 3.0);
  EXPECT_EQ(stalled.pending(), "");  // no answer to a request that never arrived
}

TEST(HttpTest, ConnectionsBeyondTheLimitGet503) {
  ServerOptions options;
  options.max_connections = 1;
  auto server = StartServer(options, [](const Request&) { return JsonResponse(200, {}); });
  ASSERT_NE(server, nullptr);
  Client client = MakeClient(LocalUrl(*server));
  {
    RawConnection holder(server->port());
    ASSERT_TRUE(holder.connected());
    ASSERT_TRUE(holder.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    ASSERT_EQ(holder.ReadResponse().rfind("HTTP/1.1 200", 0), 0u);  // holder is being served

    auto refused = client.Request("GET", "/healthz");
    ASSERT_TRUE(refused.ok()) << refused.status().ToString();
    EXPECT_EQ(refused->status, 503);
    EXPECT_EQ(BodyJson(*refused)["error"]["code"], "unavailable");
    EXPECT_EQ(refused->headers["connection"], "close");
  }
  // Once the holder has gone, a new client is served again.
  int status = 0;
  for (auto start = Clock::now(); SecondsSince(start) < 3 && status != 200;) {
    auto again = client.Request("GET", "/healthz");
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    status = again->status;
    if (status != 200) std::this_thread::sleep_for(milliseconds(20));
  }
  EXPECT_EQ(status, 200);
}

TEST(HttpTest, StreamedResponseArrivesInPieces) {
  auto server = StartServer({}, [](const Request& req) {
    Response r;
    r.content_type = "text/event-stream";
    r.headers.emplace_back("Cache-Control", "no-cache");
    const int count = std::stoi(req.query.at("n"));
    r.stream = [count](const std::function<bool(std::string_view)>& write) {
      for (int i = 1; i <= count; ++i) {
        if (!write("data: " + std::to_string(i) + "\n\n")) return;
        EXPECT_TRUE(write(""));  // nothing to send is not a failure
        std::this_thread::sleep_for(milliseconds(30));
      }
    };
    return r;
  });
  ASSERT_NE(server, nullptr);
  Client client = MakeClient(LocalUrl(*server));
  std::vector<std::string> pieces;
  auto status = client.Stream("GET", "/v1/jobs/j/events?n=4", [&](std::string_view piece) {
    pieces.emplace_back(piece);
    return true;
  });
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  EXPECT_EQ(*status, 200);
  std::string all;
  for (const auto& p : pieces) all += p;
  EXPECT_EQ(all, "data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n");
  EXPECT_GE(pieces.size(), 3u) << "the pieces were 30 ms apart: they must not arrive as one";

  // The connection stays usable after a streamed response (chunked framing).
  RawConnection conn(server->port());
  ASSERT_TRUE(conn.Send("GET /?n=1 HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(conn.WaitClosed(0.5) == false);
  EXPECT_NE(conn.pending().find("Transfer-Encoding: chunked"), std::string::npos);
  EXPECT_NE(conn.pending().find("data: 1\n\n\r\n0\r\n\r\n"), std::string::npos) << conn.pending();
}

TEST(HttpTest, StreamStopsWhenTheClientStops) {
  std::atomic<bool> stream_ended{false};
  std::atomic<int> written{0};
  auto server = StartServer({}, [&](const Request&) {
    Response r;
    r.content_type = "text/event-stream";
    r.stream = [&](const std::function<bool(std::string_view)>& write) {
      while (write("data: tick\n\n")) {
        ++written;
        std::this_thread::sleep_for(milliseconds(10));
      }
      stream_ended = true;
    };
    return r;
  });
  ASSERT_NE(server, nullptr);
  Client client = MakeClient(LocalUrl(*server));
  int seen = 0;
  const auto start = Clock::now();
  auto status = client.Stream("GET", "/events", [&](std::string_view) { return ++seen < 2; });
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  EXPECT_EQ(*status, 200);
  EXPECT_EQ(seen, 2);
  EXPECT_LT(SecondsSince(start), 2.0);
  // The server notices on one of its next writes.
  for (auto t = Clock::now(); SecondsSince(t) < 3 && !stream_ended.load();) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_TRUE(stream_ended.load());
}

TEST(HttpTest, StreamEndsAfterTimeoutWithoutData) {
  auto server = StartServer({}, [](const Request&) {
    Response r;
    r.stream = [](const std::function<bool(std::string_view)>& write) {
      write("first");
      std::this_thread::sleep_for(milliseconds(800));
      write("late");
    };
    return r;
  });
  ASSERT_NE(server, nullptr);
  ClientOptions options;
  options.timeout_s = 0.3;
  Client client = MakeClient(LocalUrl(*server), options);
  std::string got;
  const auto start = Clock::now();
  auto status = client.Stream("GET", "/", [&](std::string_view p) {
    got += p;
    return true;
  });
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  EXPECT_EQ(*status, 200);
  EXPECT_EQ(got, "first");
  EXPECT_LT(SecondsSince(start), 0.75);
}

TEST(HttpTest, ShutdownLetsASlowHandlerFinishThenRefusesConnections) {
  std::atomic<bool> started{false};
  auto server = StartServer({}, [&](const Request& req) {
    if (req.path == "/slow") {
      started = true;
      std::this_thread::sleep_for(milliseconds(500));
    }
    return JsonResponse(200, {{"done", true}});
  });
  ASSERT_NE(server, nullptr);
  Client client = MakeClient(LocalUrl(*server));
  // An idle keep-alive connection: closed at once, it must not hold Shutdown for the grace.
  RawConnection idle(server->port());
  ASSERT_TRUE(idle.Send("GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_EQ(idle.ReadResponse().rfind("HTTP/1.1 200", 0), 0u);

  StatusOr<ClientResponse> slow = Status(StatusCode::kInternal, "not run");
  std::thread caller([&] { slow = client.Request("GET", "/slow"); });
  while (!started.load()) std::this_thread::sleep_for(milliseconds(5));
  EXPECT_FALSE(server->draining());
  const auto start = Clock::now();
  server->Shutdown(std::chrono::seconds(5));
  const double took = SecondsSince(start);
  caller.join();
  EXPECT_TRUE(server->draining());
  EXPECT_GT(took, 0.2) << "Shutdown did not wait for the handler";
  EXPECT_LT(took, 2.0) << "Shutdown waited longer than the handler needed";
  ASSERT_TRUE(slow.ok()) << slow.status().ToString();
  EXPECT_EQ(slow->status, 200);
  EXPECT_EQ(BodyJson(*slow)["done"], true);
  EXPECT_EQ(slow->headers["connection"], "close");
  EXPECT_TRUE(idle.WaitClosed(0.1));  // closed already
  EXPECT_EQ(idle.pending(), "");

  auto after = client.Request("GET", "/slow");
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(after.status().message().find("connection refused"), std::string::npos)
      << after.status().ToString();
  server->Shutdown(std::chrono::seconds(5));  // idempotent
}

TEST(HttpTest, ShutdownEndsStreamsAndClosesIdleConnectionsAtOnce) {
  std::atomic<bool> streaming{false};
  std::atomic<bool> saw_false{false};
  auto server = StartServer({}, [&](const Request&) {
    Response r;
    r.stream = [&](const std::function<bool(std::string_view)>& write) {
      streaming = true;
      while (write("tick\n")) std::this_thread::sleep_for(milliseconds(20));
      saw_false = true;
    };
    return r;
  });
  ASSERT_NE(server, nullptr);
  Client client = MakeClient(LocalUrl(*server));
  StatusOr<int> streamed = Status(StatusCode::kInternal, "not run");
  std::thread watcher(
      [&] { streamed = client.Stream("GET", "/events", [](std::string_view) { return true; }); });
  RawConnection idle(server->port());
  ASSERT_TRUE(idle.connected());
  while (!streaming.load()) std::this_thread::sleep_for(milliseconds(5));
  const auto start = Clock::now();
  server->Shutdown(std::chrono::seconds(10));
  EXPECT_LT(SecondsSince(start), 1.0);
  watcher.join();
  EXPECT_TRUE(saw_false.load());
  ASSERT_TRUE(streamed.ok()) << streamed.status().ToString();  // ended cleanly (last chunk)
  EXPECT_EQ(*streamed, 200);
  EXPECT_TRUE(idle.WaitClosed(1));
}

TEST(HttpTest, ClientTimesOutOnASlowServer) {
  auto server = StartServer({}, [](const Request&) {
    std::this_thread::sleep_for(milliseconds(700));
    return JsonResponse(200, {});
  });
  ASSERT_NE(server, nullptr);
  ClientOptions options;
  options.timeout_s = 0.2;
  Client client = MakeClient(LocalUrl(*server), options);
  const auto start = Clock::now();
  auto got = client.Request("GET", "/v1/workers");
  EXPECT_LT(SecondsSince(start), 0.6);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(got.status().message().find("timed out after 0.2 s"), std::string::npos)
      << got.status().ToString();
  EXPECT_NE(got.status().message().find(LocalUrl(*server) + "/v1/workers"), std::string::npos);
}

TEST(HttpTest, ConnectionRefusedNamesTheUrl) {
  const std::string url = "http://127.0.0.1:" + std::to_string(UnusedPort());
  Client client = MakeClient(url);
  auto got = client.Request("GET", "/healthz");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(got.status().message(), "GET " + url + "/healthz: connect: connection refused");
  auto streamed = client.Stream("GET", "/events", [](std::string_view) { return true; });
  ASSERT_FALSE(streamed.ok());
  EXPECT_NE(streamed.status().message().find(url + "/events"), std::string::npos);
}

TEST(HttpTest, MalformedBaseUrlsAreRejected) {
  for (const std::string bad :
       {"", "127.0.0.1:80", "ftp://h:1", "http://", "http://:80", "http://h:0", "http://h:70000",
        "http://h:8x", "http://h:", "http://u@h:80", "http://h/x?y", "http://[::1"}) {
    auto c = Client::Create(bad, {});
    ASSERT_FALSE(c.ok()) << bad;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find("'" + bad + "'"), std::string::npos)
        << c.status().ToString();
  }
  EXPECT_TRUE(Client::Create("http://[::1]:8080/", {}).ok());
  EXPECT_TRUE(Client::Create("HTTP://example.com", {}).ok());
  ClientOptions missing_ca;
  missing_ca.ca_file = "/nonexistent/ca.pem";
  auto c = Client::Create("https://h:1", missing_ca);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("/nonexistent/ca.pem"), std::string::npos);
}

TEST(HttpTest, StartRejectsBadOptions) {
  ServerOptions one_file;
  one_file.tls_cert_file = "/tmp/cert.pem";
  auto s = Server::Start(one_file, Echo);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("tls_key_file"), std::string::npos);

  ServerOptions bad_address;
  bad_address.address = "not an address!";
  s = Server::Start(bad_address, Echo);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("not an address!"), std::string::npos);

  auto first = StartServer({}, Echo);
  ASSERT_NE(first, nullptr);
  ServerOptions taken;
  taken.port = first->port();
  s = Server::Start(taken, Echo);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kIoError);
  EXPECT_NE(s.status().message().find("127.0.0.1:" + std::to_string(first->port())),
            std::string::npos)
      << s.status().ToString();
}

TEST(HttpTest, ConstantTimeEquals) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("token-123", "token-123"));
  EXPECT_FALSE(ConstantTimeEquals("token-123", "token-124"));
  EXPECT_FALSE(ConstantTimeEquals("token-123", "Token-123"));
  EXPECT_FALSE(ConstantTimeEquals("token", "token-123"));
  EXPECT_FALSE(ConstantTimeEquals("token-123", "token"));
  EXPECT_FALSE(ConstantTimeEquals("", "x"));
  EXPECT_FALSE(ConstantTimeEquals(std::string_view("a\0b", 3), std::string_view("a\0c", 3)));
  EXPECT_FALSE(ConstantTimeEquals(std::string_view("a\0", 2), "a"));
}

// ---------------------------------------------------------------------------------------------
// TLS, with a self-signed certificate for 127.0.0.1 made by the openssl tool.

class HttpsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    temp_ = std::make_unique<hyb::testing::TempDir>();
    dir_ = temp_->path();
    const std::string command =
        "openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost "
        "-addext subjectAltName=IP:127.0.0.1 -days 1 -keyout " +
        dir_ + "/key.pem -out " + dir_ + "/cert.pem >/dev/null 2>&1";
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
  }
  static void TearDownTestSuite() { temp_.reset(); }

  std::unique_ptr<Server> StartTls() {
    ServerOptions options;
    options.tls_cert_file = dir_ + "/cert.pem";
    options.tls_key_file = dir_ + "/key.pem";
    return StartServer(options, Echo);
  }

  static std::unique_ptr<hyb::testing::TempDir> temp_;  // the suite's certificate and key
  static std::string dir_;
};
std::unique_ptr<hyb::testing::TempDir> HttpsTest::temp_;
std::string HttpsTest::dir_;

TEST_F(HttpsTest, VerifiedClientSucceeds) {
  auto server = StartTls();
  ASSERT_NE(server, nullptr);
  ClientOptions options;
  options.ca_file = dir_ + "/cert.pem";
  Client client = MakeClient(LocalUrl(*server, "https"), options);
  auto got = client.Request("POST", "/v1/jobs?x=1", R"({"a":1})");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->status, 200);
  Json j = BodyJson(*got);
  EXPECT_EQ(j["path"], "/v1/jobs");
  EXPECT_EQ(j["body"], R"({"a":1})");
  EXPECT_EQ(j["query"]["x"], "1");

  // A stream over TLS.
  std::string all;
  auto status = client.Stream("GET", "/s", [&](std::string_view p) {
    all += p;
    return true;
  });
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  EXPECT_EQ(*status, 200);
  EXPECT_NE(all.find(R"("path":"/s")"), std::string::npos) << all;

  ClientOptions insecure;
  insecure.insecure_tls = true;
  auto unverified = MakeClient(LocalUrl(*server, "https"), insecure).Request("GET", "/");
  ASSERT_TRUE(unverified.ok()) << unverified.status().ToString();
  EXPECT_EQ(unverified->status, 200);
}

TEST_F(HttpsTest, UnverifiedCertificateIsRefused) {
  auto server = StartTls();
  ASSERT_NE(server, nullptr);
  Client client = MakeClient(LocalUrl(*server, "https"));  // system CAs only
  auto got = client.Request("GET", "/healthz");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(got.status().message().find("certificate verification failed"), std::string::npos)
      << got.status().ToString();
  EXPECT_NE(got.status().message().find(LocalUrl(*server, "https") + "/healthz"),
            std::string::npos);

  // The certificate is for 127.0.0.1 only: the same server reached as 127.0.0.2 must not verify.
  ServerOptions other_ip;
  other_ip.address = "127.0.0.2";
  other_ip.tls_cert_file = dir_ + "/cert.pem";
  other_ip.tls_key_file = dir_ + "/key.pem";
  auto elsewhere = Server::Start(other_ip, Echo);
  ASSERT_TRUE(elsewhere.ok()) << elsewhere.status().ToString();
  ClientOptions options;
  options.ca_file = dir_ + "/cert.pem";
  auto mismatch = MakeClient("https://127.0.0.2:" + std::to_string((*elsewhere)->port()), options)
                      .Request("GET", "/");
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(
      mismatch.status().message().find("certificate verification failed: IP address mismatch"),
      std::string::npos)
      << mismatch.status().ToString();
}

TEST_F(HttpsTest, PlainClientsAndServersFailCleanly) {
  auto server = StartTls();
  ASSERT_NE(server, nullptr);
  // Plain HTTP to the TLS port: a plain answer that says so.
  auto plain = MakeClient(LocalUrl(*server)).Request("GET", "/healthz");
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_EQ(plain->status, 400);
  EXPECT_EQ(BodyJson(*plain)["error"]["code"], "https_required");

  // TLS to a plain server: the handshake fails, naming the URL.
  auto plain_server = StartServer({}, Echo);
  ASSERT_NE(plain_server, nullptr);
  ClientOptions insecure;
  insecure.insecure_tls = true;
  auto tls_to_plain =
      MakeClient(LocalUrl(*plain_server, "https"), insecure).Request("GET", "/healthz");
  ASSERT_FALSE(tls_to_plain.ok());
  EXPECT_EQ(tls_to_plain.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(tls_to_plain.status().message().find("TLS handshake"), std::string::npos)
      << tls_to_plain.status().ToString();

  // A certificate file that does not load names the file.
  ServerOptions broken;
  broken.tls_cert_file = dir_ + "/key.pem";  // a key is not a certificate
  broken.tls_key_file = dir_ + "/key.pem";
  auto s = Server::Start(broken, Echo);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find(dir_ + "/key.pem"), std::string::npos)
      << s.status().ToString();
}

}  // namespace
}  // namespace hyb::http
