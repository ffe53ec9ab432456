// Status and StatusOr<T>: how every expected failure (I/O, parse, bad spec, missing file) is
// returned. Messages name the input at fault ("config.json: field 'hidden_size' ...").
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace hyb {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // the caller's input is malformed or out of range
  kNotFound,         // a file, tensor or key does not exist
  kAlreadyExists,
  kFailedPrecondition,
  kDataLoss,         // a stored file is corrupt or truncated
  kUnimplemented,    // a valid request that this build does not support
  kInternal,
  kUnavailable,
  kCancelled,
  kIoError,
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: <message>", or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "<prefix>: <message>"; OK stays OK.
  Status WithContext(std::string_view prefix) const;

  // Explicitly drops a status whose failure is acceptable at this call site.
  void IgnoreError() const {}

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status Unimplemented(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status IoError(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
inline Status FailedPrecondition(std::string m) {
  return {StatusCode::kFailedPrecondition, std::move(m)};
}
inline Status AlreadyExists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }

// Either a value or a non-OK Status. Accessing value() of an error is a programming bug
// (asserts in debug builds).
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status status) : state_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    assert(!std::get<Status>(state_).ok() && "StatusOr constructed from an OK status");
    if (std::get<Status>(state_).ok()) state_ = Internal("StatusOr constructed from OK status");
  }
  StatusOr(T value) : state_(std::move(value)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<T>(state_); }
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(state_); }

  T& value() & { return std::get<T>(state_); }
  const T& value() const& { return std::get<T>(state_); }
  T&& value() && { return std::get<T>(std::move(state_)); }

  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<Status, T> state_;
};

}  // namespace hyb

#define HYB_CONCAT_INNER_(a, b) a##b
#define HYB_CONCAT_(a, b) HYB_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if it is not OK.
#define HYB_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::hyb::Status hyb_status_ = (expr);        \
    if (!hyb_status_.ok()) return hyb_status_; \
  } while (0)

// `HYB_ASSIGN_OR_RETURN(auto x, F());` declares x from F()'s value or returns its error.
#define HYB_ASSIGN_OR_RETURN(lhs, expr) \
  HYB_ASSIGN_OR_RETURN_IMPL_(HYB_CONCAT_(hyb_statusor_, __LINE__), lhs, expr)
#define HYB_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
