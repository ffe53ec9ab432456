// JSON helpers: parse text or files with errors that name the source, and typed field access
// whose errors name the source and the field ("config.json: field 'hidden_size' must be a
// positive integer, got \"12\"").
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "hyb/common/status.h"

namespace hyb {

using Json = nlohmann::json;

// Nesting deeper than this is rejected before parsing: serialising or copying a parsed value
// recurses once per level, so unbounded depth from a file or request could exhaust the stack.
inline constexpr int kMaxJsonDepth = 64;

// Parses `text`; `source` (a path or a label) prefixes any error message. Input nested deeper
// than `max_depth` is DataLoss.
StatusOr<Json> ParseJson(std::string_view text, std::string_view source,
                         int max_depth = kMaxJsonDepth);

// Fails if arrays/objects in `text` nest deeper than `max_depth` (brackets inside strings do
// not count). Linear time, no recursion.
Status CheckJsonDepth(std::string_view text, int max_depth, std::string_view source);

// Reads and parses a whole file. Fails with NotFound if absent, DataLoss if not valid JSON.
StatusOr<Json> ReadJsonFile(const std::string& path);

// Reads a whole file into a string.
StatusOr<std::string> ReadFileToString(const std::string& path);

// A view of one JSON object with its source name, for field access with precise errors.
class JsonObject {
 public:
  // `object` must outlive this view. If it is not an object every getter fails.
  JsonObject(const Json& object, std::string source) : j_(object), source_(std::move(source)) {}

  bool Has(std::string_view key) const;  // present and not null
  const std::string& source() const { return source_; }
  const Json& json() const { return j_; }

  // Required fields: NotFound-style InvalidArgument when absent or null, InvalidArgument when of
  // the wrong type or out of range.
  StatusOr<int64_t> Int(std::string_view key) const;
  StatusOr<double> Number(std::string_view key) const;
  StatusOr<bool> Bool(std::string_view key) const;
  StatusOr<std::string> String(std::string_view key) const;

  // Optional fields: the default when absent or null; an error when present with a wrong type.
  StatusOr<int64_t> Int(std::string_view key, int64_t default_value) const;
  StatusOr<double> Number(std::string_view key, double default_value) const;
  StatusOr<bool> Bool(std::string_view key, bool default_value) const;
  StatusOr<std::string> String(std::string_view key, std::string default_value) const;
  StatusOr<std::optional<int64_t>> OptionalInt(std::string_view key) const;
  StatusOr<std::optional<double>> OptionalNumber(std::string_view key) const;

  // Fails naming the first key of the object that is not in `allowed`.
  Status CheckKnownKeys(std::initializer_list<std::string_view> allowed) const;

  // "<source>: field '<key>' <what>".
  Status FieldError(std::string_view key, std::string_view what) const;

 private:
  const Json* Find(std::string_view key) const;
  const Json& j_;
  std::string source_;
};

// Short rendering of a value for error messages (truncated to ~60 characters).
std::string JsonSnippet(const Json& value);

}  // namespace hyb
