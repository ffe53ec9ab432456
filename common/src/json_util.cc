#include "hyb/common/json_util.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

namespace hyb {

Status CheckJsonDepth(std::string_view text, int max_depth, std::string_view source) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) {
        return DataLoss(std::string(source) + ": JSON nested deeper than " +
                        std::to_string(max_depth) + " levels");
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return Status::Ok();
}

StatusOr<Json> ParseJson(std::string_view text, std::string_view source, int max_depth) {
  HYB_RETURN_IF_ERROR(CheckJsonDepth(text, max_depth, source));
  Json j = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Re-parse with exceptions only to obtain the position in the message.
    try {
      const Json reparsed = Json::parse(text.begin(), text.end());
      (void)reparsed;
    } catch (const Json::exception& e) {
      return DataLoss(std::string(source) + ": invalid JSON: " + e.what());
    }
    return DataLoss(std::string(source) + ": invalid JSON");
  }
  return j;
}

StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(path + ": cannot open file");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return IoError(path + ": read failed");
  return ss.str();
}

StatusOr<Json> ReadJsonFile(const std::string& path) {
  HYB_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseJson(text, path);
}

std::string JsonSnippet(const Json& value) {
  std::string s = value.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

const Json* JsonObject::Find(std::string_view key) const {
  if (!j_.is_object()) return nullptr;
  auto it = j_.find(std::string(key));
  if (it == j_.end() || it->is_null()) return nullptr;
  return &*it;
}

bool JsonObject::Has(std::string_view key) const { return Find(key) != nullptr; }

Status JsonObject::FieldError(std::string_view key, std::string_view what) const {
  return InvalidArgument(source_ + ": field '" + std::string(key) + "' " + std::string(what));
}

namespace {

std::optional<int64_t> AsInt(const Json& v) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return std::nullopt;
    }
    return v.get<int64_t>();
  }
  if (v.is_number_float()) {  // accept 4096.0 but not 1.5
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
      return static_cast<int64_t>(d);
    }
  }
  return std::nullopt;
}

}  // namespace

StatusOr<int64_t> JsonObject::Int(std::string_view key) const {
  const Json* v = Find(key);
  if (v == nullptr) return FieldError(key, "is required");
  auto i = AsInt(*v);
  if (!i) return FieldError(key, "must be an integer, got " + JsonSnippet(*v));
  return *i;
}

StatusOr<double> JsonObject::Number(std::string_view key) const {
  const Json* v = Find(key);
  if (v == nullptr) return FieldError(key, "is required");
  if (!v->is_number()) return FieldError(key, "must be a number, got " + JsonSnippet(*v));
  return v->get<double>();
}

StatusOr<bool> JsonObject::Bool(std::string_view key) const {
  const Json* v = Find(key);
  if (v == nullptr) return FieldError(key, "is required");
  if (!v->is_boolean()) return FieldError(key, "must be true or false, got " + JsonSnippet(*v));
  return v->get<bool>();
}

StatusOr<std::string> JsonObject::String(std::string_view key) const {
  const Json* v = Find(key);
  if (v == nullptr) return FieldError(key, "is required");
  if (!v->is_string()) return FieldError(key, "must be a string, got " + JsonSnippet(*v));
  return v->get<std::string>();
}

StatusOr<int64_t> JsonObject::Int(std::string_view key, int64_t default_value) const {
  if (!Has(key)) return default_value;
  return Int(key);
}
StatusOr<double> JsonObject::Number(std::string_view key, double default_value) const {
  if (!Has(key)) return default_value;
  return Number(key);
}
StatusOr<bool> JsonObject::Bool(std::string_view key, bool default_value) const {
  if (!Has(key)) return default_value;
  return Bool(key);
}
StatusOr<std::string> JsonObject::String(std::string_view key, std::string default_value) const {
  if (!Has(key)) return default_value;
  return String(key);
}
StatusOr<std::optional<int64_t>> JsonObject::OptionalInt(std::string_view key) const {
  if (!Has(key)) return std::optional<int64_t>();
  HYB_ASSIGN_OR_RETURN(int64_t v, Int(key));
  return std::optional<int64_t>(v);
}
StatusOr<std::optional<double>> JsonObject::OptionalNumber(std::string_view key) const {
  if (!Has(key)) return std::optional<double>();
  HYB_ASSIGN_OR_RETURN(double v, Number(key));
  return std::optional<double>(v);
}

Status JsonObject::CheckKnownKeys(std::initializer_list<std::string_view> allowed) const {
  if (!j_.is_object()) return InvalidArgument(source_ + ": expected a JSON object");
  for (auto it = j_.begin(); it != j_.end(); ++it) {
    bool known = false;
    for (std::string_view a : allowed) known = known || (a == it.key());
    if (!known) return FieldError(it.key(), "is not a known field");
  }
  return Status::Ok();
}

}  // namespace hyb
