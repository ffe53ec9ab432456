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
int RunPrepare(const std::vector<std::string>& args);
int RunScore(const std::vector<std::string>& args);

// Prints "hybridize <command>: error: <message>" to stderr and returns the exit code: 2 for a
// usage error (bad or missing flags), 1 for any other failure.
int ReportError(const std::string& command, const Status& status, bool usage = false);

}  // namespace hyb::cli
