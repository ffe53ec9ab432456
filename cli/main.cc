// hybridize: the single binary. Subcommands live in cmd_*.cc.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "commands.h"
#include "hyb/worker/decoder_model.h"
#include "hyb/common/logging.h"

namespace hyb::cli {

int ReportError(const std::string& command, const Status& status, bool usage) {
  std::cerr << "hybridize " << command << ": error: " << status.message() << "\n";
  return usage ? 2 : 1;
}

int RunCommand(const CommandSpec& spec, const std::vector<std::string>& args,
               const std::function<Status(const ParsedFlags&)>& body) {
  auto flags = ParseFlags(args, spec.flags);
  if (!flags.ok()) return ReportError(spec.name, flags.status(), /*usage=*/true);
  if (flags->help()) {
    std::cout << FlagHelp(spec.usage, spec.summary, spec.flags);
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
  prepare    tokenize JSONL documents into a packed dataset for distillation
  score      score a model on a task file (lm, multiple_choice, generate, kl_to_teacher)

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
  if (command == "logits") return hyb::cli::RunLogits(args);
  if (command == "generate") return hyb::cli::RunGenerate(args);
  if (command == "tokenize") return hyb::cli::RunTokenize(args);
  if (command == "prepare") return hyb::cli::RunPrepare(args);
  if (command == "score") return hyb::cli::RunScore(args);
  if (command == "run") return hyb::cli::RunRun(args);
  if (command == "serve") {
#ifdef HYB_WITH_SERVICE
    return hyb::cli::RunServe(args);
#else
    std::cerr << "hybridize serve: this build has no coordinator (configured with "
                 "-DHYB_SERVICE=OFF); workers and the API clients are available\n";
    return 2;
#endif
  }
  if (command == "worker") return hyb::cli::RunWorker(args);
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
    hyb::worker::ConfigureCpuThreads(0);
    return Dispatch(argc, argv);
  } catch (const std::exception& e) {  // a LibTorch or allocation failure outside a Status path
    std::cerr << "hybridize: internal error: " << e.what() << "\n";
    return 1;
  }
}
