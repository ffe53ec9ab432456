// hybridize: the single binary. Subcommands live in cmd_*.cc.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"
#include "hyb/common/json_util.h"
#include "hyb/common/logging.h"
#ifdef HYB_WITH_TORCH
#include "hyb/worker/decoder_model.h"
#endif

namespace hyb::cli {

int ReportError(const std::string& command, const Status& status, bool usage) {
  std::cerr << "hybridize " << command << ": error: " << status.message() << "\n";
  return usage ? 2 : 1;
}

namespace {

const FlagSpec kFlagsFileFlag = {
    "flags-file", "FILE",
    "more flags, one per line ('--name=value', '--name value' or '--name'; '#' starts a "
    "comment line); flags on the command line override the file's",
    ""};

// Splits --flags-file out of args and returns the file's flags followed by the other args.
StatusOr<std::vector<std::string>> ExpandFlagsFile(const std::vector<std::string>& args,
                                                   const std::vector<FlagSpec>& specs) {
  std::vector<std::string> rest;
  std::optional<std::string> path;
  for (size_t i = 0; i < args.size(); ++i) {
    std::optional<std::string> p;
    if (args[i] == "--flags-file") {
      if (i + 1 >= args.size()) return InvalidArgument("flag --flags-file needs a value");
      p = args[++i];
    } else if (args[i].rfind("--flags-file=", 0) == 0) {
      p = args[i].substr(std::string("--flags-file=").size());
    }
    if (!p) {
      rest.push_back(args[i]);
      continue;
    }
    if (path) return InvalidArgument("give --flags-file once");
    path = p;
  }
  if (!path) return rest;
  HYB_ASSIGN_OR_RETURN(std::string text, ReadFileToString(*path));
  std::vector<std::string> from_file;
  std::istringstream lines(text);
  std::string line;
  for (int number = 1; std::getline(lines, line); ++number) {
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    line = line.substr(first, line.find_last_not_of(" \t\r") + 1 - first);
    const std::string where = "--flags-file " + *path + ":" + std::to_string(number);
    if (line.rfind("--", 0) != 0) {
      return InvalidArgument(where + ": expected '--name=value', '--name value' or '--name', got '" +
                             line + "'");
    }
    std::vector<std::string> tokens;
    const size_t space = line.find_first_of(" \t");
    if (space != std::string::npos && line.find('=') > space) {
      tokens = {line.substr(0, space), line.substr(line.find_first_not_of(" \t", space))};
    } else {
      tokens = {line};
    }
    if (tokens[0].rfind("--flags-file", 0) == 0) {
      return InvalidArgument(where + ": --flags-file cannot name another file");
    }
    if (auto check = ParseFlags(tokens, specs); !check.ok()) {
      return InvalidArgument(where + ": " + check.status().message());
    }
    from_file.insert(from_file.end(), tokens.begin(), tokens.end());
  }
  from_file.insert(from_file.end(), rest.begin(), rest.end());
  return from_file;
}

}  // namespace

int RunCommand(const CommandSpec& spec, const std::vector<std::string>& given_args,
               const std::function<Status(const ParsedFlags&)>& body) {
  std::vector<FlagSpec> specs = spec.flags;
  std::vector<std::string> args = given_args;
  if (spec.flags_file) {
    specs.push_back(kFlagsFileFlag);
    auto expanded = ExpandFlagsFile(given_args, spec.flags);
    if (!expanded.ok()) return ReportError(spec.name, expanded.status(), /*usage=*/true);
    args = std::move(*expanded);
  }
  auto flags = ParseFlags(args, spec.flags);
  if (!flags.ok()) return ReportError(spec.name, flags.status(), /*usage=*/true);
  if (flags->help()) {
    std::cout << FlagHelp(spec.usage, spec.summary, specs);
    return 0;
  }
  for (const auto& r : spec.required) {
    if (!flags->Has(r)) {
      return ReportError(spec.name, InvalidArgument("missing required flag --" + r),
                         /*usage=*/true);
    }
  }
  const Status s = body(*flags);
  return s.ok() ? 0 : ReportError(spec.name, s);
}

}  // namespace hyb::cli

namespace {

constexpr char kUsage[] = R"(usage: hybridize <command> [flags]

Turns a pretrained Transformer into a task-specific hybrid of softmax and linear attention.

commands:
  run        a whole Distill-then-Replace job from a job spec (distill, search, export, report)
  logits     run a model directory on token ids and write fp32 logits (parity checks)
  generate   greedy decoding with the KV cache from token ids
  tokenize   encode text / decode ids with a tokenizer.json
  prepare    tokenize JSONL or text files (or draw random ids) into a dataset for distillation
  score      score a model on a task file (lm, multiple_choice, generate, kl_to_teacher)
  init-random  write a random-initialised model directory of a real model's shape (configs/shapes)

the service (docs/service.md):
  serve      run the coordinator: HTTP API, job state in SQLite, tasks leased to workers
  worker     run a worker: lease tasks from a coordinator and run them on this machine
  submit     submit a job spec to a coordinator (--wait follows it to the end)
  status     list jobs, or show one job's state and progress
  watch      follow a job's progress events live
  cancel     cancel a job
  workers    list the workers a coordinator knows

Run 'hybridize <command> --help' for a command's flags. Environment: HYB_LOG_LEVEL
(debug|info|warning|error) sets the log threshold.
)";

}  // namespace

int Dispatch(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
#ifdef HYB_WITH_TORCH
  if (command == "logits") return hyb::cli::RunLogits(args);
  if (command == "generate") return hyb::cli::RunGenerate(args);
  if (command == "tokenize") return hyb::cli::RunTokenize(args);
  if (command == "prepare") return hyb::cli::RunPrepare(args);
  if (command == "score") return hyb::cli::RunScore(args);
  if (command == "init-random") return hyb::cli::RunInitRandom(args);
  if (command == "run") return hyb::cli::RunRun(args);
  if (command == "worker") return hyb::cli::RunWorker(args);
#else
  for (const char* needs_torch : {"logits", "generate", "tokenize", "prepare", "score", "run",
                                  "worker", "init-random"}) {
    if (command == needs_torch) {
      std::cerr << "hybridize " << command
                << ": this is the coordinator-only build (configured with -DHYB_TORCH=OFF): it "
                   "has `serve` and the API clients; use the full build for this command\n";
      return 2;
    }
  }
#endif
  if (command == "serve") {
#ifdef HYB_WITH_SERVICE
    return hyb::cli::RunServe(args);
#else
    std::cerr << "hybridize serve: this build has no coordinator (configured with "
                 "-DHYB_SERVICE=OFF); workers and the API clients are available\n";
    return 2;
#endif
  }
  if (command == "submit") return hyb::cli::RunSubmit(args);
  if (command == "status") return hyb::cli::RunStatus(args);
  if (command == "watch") return hyb::cli::RunWatch(args);
  if (command == "cancel") return hyb::cli::RunCancel(args);
  if (command == "workers") return hyb::cli::RunWorkers(args);
  std::cerr << "hybridize: unknown command '" << command << "'\n\n" << kUsage;
  return 2;
}

int main(int argc, char** argv) {
  try {
#ifdef HYB_WITH_TORCH
    hyb::worker::ConfigureCpuThreads(0);
#endif
    return Dispatch(argc, argv);
  } catch (const std::exception& e) {  // a LibTorch or allocation failure outside a Status path
    std::cerr << "hybridize: internal error: " << e.what() << "\n";
    return 1;
  }
}
