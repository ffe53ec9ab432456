// Minimal `--name value` / `--name=value` / `--flag` parsing for the hybridize subcommands.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "hyb/common/status.h"

namespace hyb::cli {

struct FlagSpec {
  std::string name;   // without dashes
  std::string value;  // metavariable shown in help ("DIR"); empty for boolean flags
  std::string help;
  std::string default_value;  // shown in help when not empty
};

class ParsedFlags {
 public:
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::optional<std::string> Get(const std::string& name) const;
  std::string GetOr(const std::string& name, const std::string& fallback) const;
  StatusOr<std::string> Required(const std::string& name) const;
  StatusOr<int64_t> Int(const std::string& name, int64_t fallback) const;
  bool help() const { return help_; }

 private:
  friend StatusOr<ParsedFlags> ParseFlags(const std::vector<std::string>&,
                                          const std::vector<FlagSpec>&);
  std::map<std::string, std::string> values_;
  bool help_ = false;
};

// Parses args (after the subcommand). Unknown flags, missing values and positional arguments
// are InvalidArgument naming the argument. "-h"/"--help" sets help().
StatusOr<ParsedFlags> ParseFlags(const std::vector<std::string>& args,
                                 const std::vector<FlagSpec>& specs);

// "usage: hybridize <command> [flags]" followed by one line per flag.
std::string FlagHelp(const std::string& usage, const std::string& summary,
                     const std::vector<FlagSpec>& specs);

}  // namespace hyb::cli
