#include "flags.h"

#include <sstream>

namespace hyb::cli {

std::optional<std::string> ParsedFlags::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::string ParsedFlags::GetOr(const std::string& name, const std::string& fallback) const {
  auto v = Get(name);
  return v ? *v : fallback;
}

StatusOr<std::string> ParsedFlags::Required(const std::string& name) const {
  auto v = Get(name);
  if (!v) return InvalidArgument("missing required flag --" + name);
  return *v;
}

StatusOr<int64_t> ParsedFlags::Int(const std::string& name, int64_t fallback) const {
  auto v = Get(name);
  if (!v) return fallback;
  try {
    size_t used = 0;
    const long long parsed = std::stoll(*v, &used);
    if (used != v->size()) throw std::invalid_argument("trailing");
    return static_cast<int64_t>(parsed);
  } catch (const std::exception&) {
    return InvalidArgument("flag --" + name + " expects an integer, got '" + *v + "'");
  }
}

StatusOr<ParsedFlags> ParseFlags(const std::vector<std::string>& args,
                                 const std::vector<FlagSpec>& specs) {
  ParsedFlags out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      out.help_ = true;
      continue;
    }
    if (a.rfind("--", 0) != 0) return InvalidArgument("unexpected argument '" + a + "'");
    std::string name = a.substr(2);
    std::optional<std::string> value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* spec = nullptr;
    for (const auto& s : specs) {
      if (s.name == name) spec = &s;
    }
    if (spec == nullptr) return InvalidArgument("unknown flag --" + name);
    if (spec->value.empty()) {
      if (value) return InvalidArgument("flag --" + name + " takes no value");
      out.values_[name] = "true";
      continue;
    }
    if (!value) {
      if (i + 1 >= args.size()) return InvalidArgument("flag --" + name + " needs a value");
      value = args[++i];
    }
    out.values_[name] = *value;
  }
  return out;
}

std::string FlagHelp(const std::string& usage, const std::string& summary,
                     const std::vector<FlagSpec>& specs) {
  std::ostringstream os;
  os << "usage: " << usage << "\n\n" << summary << "\n\nflags:\n";
  for (const auto& s : specs) {
    std::string left = "  --" + s.name + (s.value.empty() ? "" : " " + s.value);
    if (left.size() < 28) left.resize(28, ' ');
    os << left << ' ' << s.help;
    if (!s.default_value.empty()) os << " (default: " << s.default_value << ")";
    os << '\n';
  }
  os << "  -h, --help                   show this help\n";
  return os.str();
}

}  // namespace hyb::cli
