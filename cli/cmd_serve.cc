// hybridize serve: the coordinator (coordinator/service.h) behind an HTTP server. Built when
// the build has the coordinator (HYB_SERVICE, which needs SQLite).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "commands.h"
#include "flags.h"
#include "hyb/common/http.h"
#include "hyb/coordinator/service.h"
#include "hyb/storage/atomic_file.h"
#include "hyb/storage/env.h"
#include "service_flags.h"

namespace hyb::cli {
namespace {

const std::vector<std::string> kServeReads = {"HYB_API_TOKEN", "HYB_WORKER_TOKEN",
                                               "HYB_LOG_LEVEL"};

// --check-config: what `serve` checks before it opens the database, and the settings it would
// run with (the ports and probe routes a deployment must point at).
Status CheckServeConfig(const ParsedFlags& f, const coordinator::ServiceOptions& so,
                        const http::ServerOptions& ho, double drain_seconds) {
  HYB_RETURN_IF_ERROR(CheckWritableDirectory("storage", so.storage_root));
  const std::string db = coordinator::DatabasePath(so);
  const size_t slash = db.rfind('/');
  HYB_RETURN_IF_ERROR(
      CheckWritableDirectory("db", slash == std::string::npos ? "." : db.substr(0, slash + 1)));
  if (!ho.tls_cert_file.empty()) {
    HYB_RETURN_IF_ERROR(CheckReadableFile("tls-cert", ho.tls_cert_file));
    HYB_RETURN_IF_ERROR(CheckReadableFile("tls-key", ho.tls_key_file));
  }
  HYB_ASSIGN_OR_RETURN(Json environment, CheckEnvironment("serve", kServeReads));
  Json j = {{"command", "serve"},
            {"listen", {{"host", ho.address}, {"port", ho.port}}},
            {"scheme", ho.tls_cert_file.empty() ? "http" : "https"},
            {"storage", so.storage_root},
            {"db", db},
            {"api_token", TokenSource(f, "token-file", "HYB_API_TOKEN")},
            {"worker_token", TokenSource(f, "worker-token-file", "HYB_WORKER_TOKEN")},
            {"lease_seconds", so.lease_seconds},
            {"retry_budget", so.retry_budget},
            {"max_body_bytes", ho.max_body_bytes},
            {"max_connections", ho.max_connections},
            {"drain_seconds", drain_seconds},
            {"ports", Json::array({ho.port})},
            {"routes", {{"liveness", "/healthz"}, {"readiness", "/readyz"}}},
            {"environment", environment}};
  std::cout << j.dump(2) << "\n";
  return Status::Ok();
}

}  // namespace

int RunServe(const std::vector<std::string>& args) {
  static const std::vector<FlagSpec> flags = {
      {"listen", "HOST:PORT", "address to serve on (port 0: any free port)", "127.0.0.1:8080"},
      {"storage", "DIR", "shared storage root: job directories; relative paths in specs", ""},
      {"db", "FILE", "the SQLite database", "DIR/hybridize.db"},
      {"token-file", "FILE", "users' API token (environment: HYB_API_TOKEN)", ""},
      {"worker-token-file", "FILE", "workers' token (environment: HYB_WORKER_TOKEN)", ""},
      {"tls-cert", "FILE", "serve HTTPS with this PEM certificate (with --tls-key)", ""},
      {"tls-key", "FILE", "the certificate's PEM private key", ""},
      {"lease-seconds", "S", "a worker silent this long loses its task to another", "30"},
      {"retry-budget", "N", "task failures (lost workers included) a job survives", "3"},
      {"max-body-bytes", "N", "larger request bodies are refused (413)", "8388608"},
      {"max-connections", "N", "connections beyond this are refused (503)", "256"},
      {"drain-seconds", "S", "on SIGTERM, how long in-flight requests may finish", "10"},
      {"port-file", "FILE", "write the bound port here once listening", ""},
      kCheckConfigFlag,
  };
  return RunCommand(
      {"serve",
       "hybridize serve --storage DIR [--listen HOST:PORT] [--token-file F] "
       "[--worker-token-file F] [--tls-cert F --tls-key F]",
       "Runs the coordinator: the HTTP API (docs/service.md), job state in SQLite, and the "
       "scheduler that leases tasks to `hybridize worker` processes. Relative paths in submitted "
       "specs refer to the storage root, which every worker must mount too. A restarted "
       "coordinator resumes every unfinished job. SIGTERM or SIGINT drains: new jobs and leases "
       "are refused, in-flight requests finish, workers keep their tasks for a restarted "
       "coordinator, and the process exits 0.",
       flags,
       {"storage"},
       /*flags_file=*/true},
      args, [](const ParsedFlags& f) -> Status {
        coordinator::ServiceOptions so;
        so.storage_root = *f.Get("storage");
        so.database = f.GetOr("db", "");
        HYB_ASSIGN_OR_RETURN(so.api_token, Token(f, "token-file", "HYB_API_TOKEN", true));
        HYB_ASSIGN_OR_RETURN(so.worker_token,
                             Token(f, "worker-token-file", "HYB_WORKER_TOKEN", true));
        HYB_ASSIGN_OR_RETURN(so.lease_seconds, Seconds(f, "lease-seconds", 30));
        so.long_poll_seconds = std::min(20.0, so.lease_seconds);
        HYB_ASSIGN_OR_RETURN(so.retry_budget, f.Int("retry-budget", 3));
        if (so.retry_budget < 0) return InvalidArgument("--retry-budget: must be >= 0");
        http::ServerOptions ho;
        const std::string listen = f.GetOr("listen", "127.0.0.1:8080");
        const size_t colon = listen.rfind(':');
        if (colon == std::string::npos) {
          return InvalidArgument("--listen: expected HOST:PORT, got '" + listen + "'");
        }
        ho.address = listen.substr(0, colon);
        if (ho.address.size() > 2 && ho.address.front() == '[') {
          ho.address = ho.address.substr(1, ho.address.size() - 2);
        }
        try {
          const int port = std::stoi(listen.substr(colon + 1));
          if (port < 0 || port > 65535) throw std::out_of_range(listen);
          ho.port = static_cast<uint16_t>(port);
        } catch (const std::exception&) {
          return InvalidArgument("--listen: bad port in '" + listen + "'");
        }
        HYB_ASSIGN_OR_RETURN(int64_t body, f.Int("max-body-bytes", 8 << 20));
        HYB_ASSIGN_OR_RETURN(int64_t conns, f.Int("max-connections", 256));
        if (body <= 0 || conns <= 0) {
          return InvalidArgument("--max-body-bytes and --max-connections must be positive");
        }
        ho.max_body_bytes = static_cast<size_t>(body);
        ho.max_connections = static_cast<int>(conns);
        ho.tls_cert_file = f.GetOr("tls-cert", "");
        ho.tls_key_file = f.GetOr("tls-key", "");
        HYB_ASSIGN_OR_RETURN(double drain, Seconds(f, "drain-seconds", 10));
        if (ho.tls_cert_file.empty() != ho.tls_key_file.empty()) {
          return InvalidArgument("give both --tls-cert and --tls-key, or neither");
        }
        if (f.Has("check-config")) return CheckServeConfig(f, so, ho, drain);
        for (const auto& name : UnreadHybVariables(kServeReads)) {
          std::fprintf(stderr, "hybridize serve: warning: %s is set but not read by serve\n",
                       name.c_str());
        }

        const sigset_t signals = BlockTerminationSignals();
        HYB_ASSIGN_OR_RETURN(auto service, coordinator::Service::Create(so));
        HYB_RETURN_IF_ERROR(service->Start());
        coordinator::Service* svc = service.get();
        HYB_ASSIGN_OR_RETURN(auto server, http::Server::Start(ho, [svc](const http::Request& r) {
                               return svc->Handle(r);
                             }));
        if (auto pf = f.Get("port-file")) {
          HYB_RETURN_IF_ERROR(storage::AtomicWriteString(storage::Env::Default(), *pf,
                                                         std::to_string(server->port()) + "\n"));
        }
        std::fprintf(stderr, "hybridize serve: listening on %s://%s:%u, storage %s, database %s\n",
                     ho.tls_cert_file.empty() ? "http" : "https", ho.address.c_str(),
                     server->port(), so.storage_root.c_str(), service->options().database.c_str());
        std::atomic<bool> never{false};
        const int sig = WaitForSignal(signals, never);
        std::fprintf(stderr, "hybridize serve: %s, draining\n",
                     sig == SIGINT ? "SIGINT" : "SIGTERM");
        service->Stop();
        server->Shutdown(std::chrono::milliseconds(static_cast<int64_t>(drain * 1000)));
        std::fprintf(stderr, "hybridize serve: stopped\n");
        return Status::Ok();
      });
}

}  // namespace hyb::cli
