// Leveled logging to stderr. The threshold comes from SetLogLevel() or, at start, from the
// HYB_LOG_LEVEL environment variable (debug|info|warning|error; default info). Thread-safe:
// each message is written with one call under a mutex.
#pragma once

#include <sstream>
#include <string>
#include <string_view>

#include "hyb/common/status.h"

namespace hyb {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Parses "debug", "info", "warning"/"warn", "error".
StatusOr<LogLevel> ParseLogLevel(std::string_view name);

namespace internal {
// Collects one message and emits it on destruction if its level passes the threshold.
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};
bool LogEnabled(LogLevel level);
}  // namespace internal

}  // namespace hyb

#define HYB_LOG(level)                                                          \
  if (!::hyb::internal::LogEnabled(::hyb::LogLevel::k##level)) {                \
  } else                                                                        \
    ::hyb::internal::LogMessage(::hyb::LogLevel::k##level, __FILE__, __LINE__).stream()
