// Flag and signal helpers shared by the service's commands (cmd_serve.cc, cmd_service.cc).
#pragma once

#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

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

// Where a token came from, for --check-config (never the token itself).
inline std::string TokenSource(const ParsedFlags& flags, const std::string& file_flag,
                               const char* env) {
  if (auto f = flags.Get(file_flag)) return "file " + *f;
  return std::string("environment ") + env;
}

// HYB_* variables set in this process's environment that the command does not read: a
// misspelt name, or a setting meant for another command. `serve` and `worker` warn about them
// and --check-config fails on them.
inline std::vector<std::string> UnreadHybVariables(const std::vector<std::string>& reads) {
  std::vector<std::string> unread;
  for (char** e = ::environ; e != nullptr && *e != nullptr; ++e) {
    const std::string entry = *e;
    if (entry.rfind("HYB_", 0) != 0) continue;
    const std::string name = entry.substr(0, entry.find('='));
    bool known = name == "HYB_LOG_LEVEL";
    for (const auto& r : reads) known = known || r == name;
    if (!known) unread.push_back(name);
  }
  return unread;
}

// --check-config: fails on a HYB_* variable `command` does not read; otherwise returns the
// "environment" object of the settings it prints: what it reads, which of those are set, and
// the variables of the libraries it links (`libraries`, passed through to them).
inline StatusOr<Json> CheckEnvironment(const std::string& command,
                                       const std::vector<std::string>& reads,
                                       const std::vector<std::string>& libraries = {}) {
  if (const auto unread = UnreadHybVariables(reads); !unread.empty()) {
    return InvalidArgument("environment variable " + unread.front() + " is set but `hybridize " +
                           command + "` does not read it");
  }
  Json set = Json::array();
  for (const auto& name : reads) {
    if (std::getenv(name.c_str()) != nullptr) set.push_back(name);
  }
  return Json{{"reads", reads}, {"set", set}, {"libraries", libraries}};
}

// --check-config: `path` (given as --flag) is an existing directory this process can write.
inline Status CheckWritableDirectory(const std::string& flag, const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) {
    return NotFound("--" + flag + " " + path + ": no such directory");
  }
  if (!S_ISDIR(st.st_mode)) return InvalidArgument("--" + flag + " " + path + ": not a directory");
  if (::access(path.c_str(), W_OK | X_OK) != 0) {
    return FailedPrecondition("--" + flag + " " + path + ": not writable by this user (uid " +
                            std::to_string(::getuid()) + ")");
  }
  return Status::Ok();
}

// --check-config: `path` (given as --flag) is a file this process can read.
inline Status CheckReadableFile(const std::string& flag, const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) return NotFound("--" + flag + " " + path + ": no such file");
  if (!S_ISREG(st.st_mode)) return InvalidArgument("--" + flag + " " + path + ": not a file");
  if (::access(path.c_str(), R_OK) != 0) {
    return FailedPrecondition("--" + flag + " " + path + ": not readable by this user (uid " +
                            std::to_string(::getuid()) + ")");
  }
  return Status::Ok();
}

const FlagSpec kCheckConfigFlag = {
    "check-config", "",
    "check the flags, the files they name and the HYB_* environment, print the settings as "
    "JSON and exit (0: the command would start with them)",
    ""};

// The last SIGINT/SIGTERM that reached a thread not blocking it (see BlockTerminationSignals).
inline std::atomic<int> g_termination_signal{0};
inline void RecordTerminationSignal(int sig) { g_termination_signal.store(sig); }

// Blocks SIGINT and SIGTERM in this thread (and the threads it starts afterwards), so that
// WaitForSignal receives them; and handles them in every other thread (threads that libraries
// started earlier, e.g. LibTorch's pools at load time) by recording them for WaitForSignal,
// instead of the default action of killing the process (seen: a worker exiting 143 on SIGTERM
// when the kernel chose such a thread).
inline sigset_t BlockTerminationSignals() {
  struct sigaction action{};
  action.sa_handler = RecordTerminationSignal;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
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
    if (const int recorded = g_termination_signal.exchange(0); recorded != 0) return recorded;
  }
  return 0;
}

}  // namespace hyb::cli
