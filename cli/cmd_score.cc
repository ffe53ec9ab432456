// hybridize score: a model's score on a task file (the numbers the search compares).
#include <chrono>
#include <iostream>

#include "commands.h"
#include "flags.h"
#include "hyb/storage/atomic_file.h"
#include "hyb/storage/tokenizer.h"
#include "hyb/worker/decoder_model.h"
#include "hyb/worker/task_scoring.h"

namespace hyb::cli {
namespace {

const std::vector<FlagSpec>& Specs() {
  static const std::vector<FlagSpec> specs = {
      {"model", "DIR", "model directory (config.json, weights, tokenizer.json)", ""},
      {"task-type", "TYPE", "lm | multiple_choice | generate | kl_to_teacher", ""},
      {"data", "FILE.jsonl", "task examples (formats in README)", ""},
      {"teacher", "DIR", "reference model for kl_to_teacher", ""},
      {"limit", "N", "score only the first N examples", "all"},
      {"max-new-tokens", "N", "generate: tokens per answer", "32"},
      {"batch-tokens", "N",
       "sequences scored together: at most N tokens per batch counting padding (generate: "
       "prompts of one length, prompt plus max-new-tokens per row); 0: one at a time",
       "16384"},
      {"no-special-tokens", "", "do not apply the tokenizer's template (e.g. BOS)", ""},
      {"output", "FILE.json", "also write the score with per-example values", ""},
      {"device", "cpu|cuda[:N]", "where to run", "cpu"},
      {"dtype", "fp32|bf16|fp16|fp64", "weights and activations", "fp32"},
  };
  return specs;
}

Status Score(const ParsedFlags& flags) {
  const std::string dir = *flags.Get("model");
  HYB_ASSIGN_OR_RETURN(worker::TaskKind kind, worker::ParseTaskKind(*flags.Get("task-type")));
  HYB_ASSIGN_OR_RETURN(auto examples, worker::LoadTaskExamples(*flags.Get("data"), kind));
  HYB_ASSIGN_OR_RETURN(int64_t limit, flags.Int("limit", 0));
  if (limit > 0 && static_cast<size_t>(limit) < examples.size()) examples.resize(limit);
  HYB_ASSIGN_OR_RETURN(auto tok, worker::Tokenizer::FromFile(dir + "/tokenizer.json"));
  worker::RuntimeOptions options{flags.GetOr("device", "cpu"), flags.GetOr("dtype", "fp32")};
  HYB_ASSIGN_OR_RETURN(auto model, worker::DecoderModel::Load(dir, options));
  worker::ScoringOptions so;
  so.add_special_tokens = !flags.Has("no-special-tokens");
  HYB_ASSIGN_OR_RETURN(so.max_new_tokens, flags.Int("max-new-tokens", 32));
  HYB_ASSIGN_OR_RETURN(so.batch_tokens, flags.Int("batch-tokens", so.batch_tokens));
  if (so.batch_tokens < 0) {
    return InvalidArgument("--batch-tokens must be >= 0, not " + std::to_string(so.batch_tokens));
  }
  so.stop_ids = model->config().eos_token_ids;
  if (model->config().bos_token_id) so.empty_context_token = *model->config().bos_token_id;
  const auto start = std::chrono::steady_clock::now();
  StatusOr<worker::TaskScore> score = InvalidArgument("unreachable");
  switch (kind) {
    case worker::TaskKind::kLm:
      score = worker::ScoreLm(worker::LogitsOf(*model), *tok, examples, so);
      break;
    case worker::TaskKind::kMultipleChoice:
      score = worker::ScoreMultipleChoice(worker::LogitsOf(*model), *tok, examples, so);
      break;
    case worker::TaskKind::kGenerate:
      score = worker::ScoreGenerate(worker::BatchGreedyOf(*model), *tok, examples, so);
      break;
    case worker::TaskKind::kKlToTeacher: {
      if (!flags.Has("teacher")) return InvalidArgument("kl_to_teacher needs --teacher DIR");
      HYB_ASSIGN_OR_RETURN(auto teacher,
                           worker::DecoderModel::Load(*flags.Get("teacher"), options));
      score = worker::ScoreKlToTeacher(worker::LogitsOf(*model), worker::LogitsOf(*teacher), *tok,
                                       examples, so);
      break;
    }
  }
  if (!score.ok()) return score.status();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  Json summary = {{"task_type", worker::TaskKindName(kind)},
                  {"metric", score->metric},
                  {"value", score->value},
                  {"higher_is_better", score->higher_is_better},
                  {"examples", examples.size()},
                  {"details", score->details},
                  {"seconds", secs}};
  std::cout << summary.dump() << "\n";
  if (auto out = flags.Get("output")) {
    summary["per_example"] = score->per_example;
    HYB_RETURN_IF_ERROR(storage::AtomicWriteString(*out, summary.dump(2) + "\n"));
  }
  return Status::Ok();
}

}  // namespace

int RunScore(const std::vector<std::string>& args) {
  return RunCommand({"score",
                     "hybridize score --model DIR --task-type TYPE --data FILE.jsonl "
                     "[--teacher DIR] [--limit N] [--batch-tokens N] [--output FILE.json]",
                     "Scores a model (teacher or hybrid) on a task file and prints the "
                     "aggregate as JSON; --output adds the per-example values.",
                     Specs(),
                     {"model", "task-type", "data"}},
                    args, Score);
}

}  // namespace hyb::cli
