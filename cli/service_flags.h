// Flag and signal helpers shared by the service's commands (cmd_serve.cc, cmd_service.cc).
#pragma once

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <ctime>
#include <string>

#include "flags.h"
#include "hyb/common/json_util.h"
#include "hyb/common/status.h"

namespace hyb::cli {

// A token from --NAME-file (first line, whitespace trimmed) or the environment variable.
inline StatusOr<std::string> Token(const ParsedFlags& flags, const std::string& file_flag,
                                   const char* env, bool required) {
  std::string token;
  if (auto f = flags.Get(file_flag)) {
    HYB_ASSIGN_OR_RETURN(token, ReadFileToString(*f));
  } else if (const char* e = std::getenv(env)) {
    token = e;
  }
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.front()))) {
    token.erase(token.begin());
  }
  if (required && token.empty()) {
    return InvalidArgument("no token: give --" + file_flag + " FILE or set " + env);
  }
  return token;
}

inline StatusOr<double> Seconds(const ParsedFlags& flags, const std::string& name,
                                double fallback) {
  auto v = flags.Get(name);
  if (!v) return fallback;
  try {
    size_t used = 0;
    const double d = std::stod(*v, &used);
    if (used != v->size() || !(d > 0)) throw std::invalid_argument(*v);
    return d;
  } catch (const std::exception&) {
    return InvalidArgument("--" + name + ": expected a positive number of seconds, got '" + *v +
                           "'");
  }
}

// Blocks SIGINT and SIGTERM in this thread (and the threads it starts afterwards), so that
// WaitForSignal receives them.
inline sigset_t BlockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

// Waits for SIGINT/SIGTERM, checking `done` every 200 ms. Returns the signal, or 0 if `done`.
inline int WaitForSignal(const sigset_t& set, const std::atomic<bool>& done) {
  while (!done) {
    timespec ts{0, 200 * 1000 * 1000};
    const int sig = sigtimedwait(&set, nullptr, &ts);
    if (sig > 0) return sig;
  }
  return 0;
}

}  // namespace hyb::cli
