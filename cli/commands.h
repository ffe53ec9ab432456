// The hybridize subcommands. Each takes the arguments after its name and returns the process
// exit code (0 success, 1 failure, 2 usage error), printing errors to stderr.
#pragma once

#include <string>
#include <vector>

#include "hyb/common/status.h"

namespace hyb::cli {

int RunLogits(const std::vector<std::string>& args);
int RunGenerate(const std::vector<std::string>& args);
int RunTokenize(const std::vector<std::string>& args);

// Prints "error: <message>" to stderr and returns 1 (2 for InvalidArgument: a usage error).
int ReportError(const std::string& command, const Status& status);

}  // namespace hyb::cli
