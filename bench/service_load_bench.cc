// A bounded load generator for the coordinator's API: C concurrent clients each send R requests
// (GET TARGET) as fast as the server answers, then stop. Prints the latency percentiles, the
// throughput and any non-200 answers. Used by bench/service_bench.sh while a job runs.
//
//   service_load_bench --url http://127.0.0.1:8080 --token-file F --target /v1/jobs/ID \
//       [--clients 200] [--requests 50]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "hyb/common/http.h"

namespace {

std::string Arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == "--" + name) return argv[i + 1];
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string url = Arg(argc, argv, "url", "http://127.0.0.1:8080");
  const std::string target = Arg(argc, argv, "target", "/v1/jobs");
  const int clients = std::atoi(Arg(argc, argv, "clients", "200").c_str());
  const int requests = std::atoi(Arg(argc, argv, "requests", "50").c_str());
  std::string token;
  std::ifstream(Arg(argc, argv, "token-file", "/dev/null")) >> token;
  if (clients <= 0 || requests <= 0) {
    std::fprintf(stderr, "--clients and --requests must be positive\n");
    return 2;
  }
  hyb::http::ClientOptions o;
  o.bearer_token = token;
  o.timeout_s = 60;
  auto client = hyb::http::Client::Create(url, o);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
    return 2;
  }
  std::mutex mu;  // guards latencies, failures
  std::vector<double> latencies;
  latencies.reserve(static_cast<size_t>(clients) * static_cast<size_t>(requests));
  int64_t failures = 0;
  std::string first_failure;
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      hyb::http::Client mine = *client;
      std::vector<double> local;
      for (int i = 0; i < requests; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        auto r = mine.Request("GET", target);
        const double ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count();
        if (!r.ok() || r->status != 200) {
          std::lock_guard<std::mutex> lock(mu);
          if (failures++ == 0) {
            first_failure = r.ok() ? "HTTP " + std::to_string(r->status) + " " + r->body
                                   : r.status().ToString();
          }
          continue;
        }
        local.push_back(ms);
      }
      (void)c;
      std::lock_guard<std::mutex> lock(mu);
      latencies.insert(latencies.end(), local.begin(), local.end());
    });
  }
  for (auto& t : threads) t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::sort(latencies.begin(), latencies.end());
  auto pct = [&](double p) {
    if (latencies.empty()) return 0.0;
    const size_t i = std::min(latencies.size() - 1,
                              static_cast<size_t>(p * static_cast<double>(latencies.size())));
    return latencies[i];
  };
  std::printf(
      "{\"clients\": %d, \"requests\": %zu, \"failures\": %lld, \"seconds\": %.2f, "
      "\"requests_per_s\": %.1f, \"p50_ms\": %.2f, \"p90_ms\": %.2f, \"p99_ms\": %.2f, "
      "\"max_ms\": %.2f}\n",
      clients, latencies.size(), static_cast<long long>(failures), seconds,
      static_cast<double>(latencies.size()) / seconds, pct(0.50), pct(0.90), pct(0.99),
      latencies.empty() ? 0.0 : latencies.back());
  if (failures > 0) std::fprintf(stderr, "first failure: %s\n", first_failure.c_str());
  return failures > 0 ? 1 : 0;
}
