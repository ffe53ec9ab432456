// The hybridize subcommands. Each takes the arguments after its name and returns the process
// exit code (0 success, 1 failure, 2 usage error), printing errors to stderr.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "flags.h"
#include "hyb/common/status.h"

namespace hyb::cli {

int RunLogits(const std::vector<std::string>& args);
int RunGenerate(const std::vector<std::string>& args);
int RunTokenize(const std::vector<std::string>& args);
int RunPrepare(const std::vector<std::string>& args);
int RunScore(const std::vector<std::string>& args);
int RunInitRandom(const std::vector<std::string>& args);
int RunRun(const std::vector<std::string>& args);
// The service (cmd_service.cc): the coordinator, a worker, and the API's clients.
int RunServe(const std::vector<std::string>& args);
int RunWorker(const std::vector<std::string>& args);
int RunSubmit(const std::vector<std::string>& args);
int RunStatus(const std::vector<std::string>& args);
int RunWatch(const std::vector<std::string>& args);
int RunCancel(const std::vector<std::string>& args);
int RunWorkers(const std::vector<std::string>& args);

// Prints "hybridize <command>: error: <message>" to stderr and returns the exit code: 2 for a
// usage error (bad or missing flags), 1 for any other failure.
int ReportError(const std::string& command, const Status& status, bool usage = false);

struct CommandSpec {
  std::string name;     // "logits"
  std::string usage;    // one-line synopsis for --help
  std::string summary;  // what the command does
  std::vector<FlagSpec> flags;
  std::vector<std::string> required;  // flags that must be given
  // Also accept --flags-file FILE: flags one per line, given before the command line's (which
  // override them). For the long-running commands whose flags live in a deployment's config.
  bool flags_file = false;
};

// The shared shape of every subcommand: parse flags (usage error -> 2), print --help, check
// required flags, run `body` (failure -> 1).
int RunCommand(const CommandSpec& spec, const std::vector<std::string>& args,
               const std::function<Status(const ParsedFlags&)>& body);

}  // namespace hyb::cli
