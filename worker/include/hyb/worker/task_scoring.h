// Scoring a model on a task's examples: what the greedy search compares candidates with. Every
// scorer returns the aggregate and one value per example (the search's paired bootstrap needs
// them). Task files (hyb/storage/task_file.h) are JSONL, one example per line:
//   lm               {"text": "..."}                                   mean token loss, perplexity
//   multiple_choice  {"context": "...", "choices": ["...", ...], "label": 0}
//                    accuracy and length-normalised accuracy, lm-evaluation-harness semantics
//   generate         {"prompt": "...", "answer": "...", "stop": ["\n"]}  greedy decoding, exact match
//   kl_to_teacher    {"text": "..."}                                   mean per-token KL(teacher || model)
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"
#include "hyb/worker/decoder_model.h"
#include "hyb/worker/storage_types.h"

namespace hyb::worker {

struct TaskScore {
  std::string metric;             // "loss", "acc", "exact_match", "kl"
  double value = 0;               // the aggregate of `metric`
  bool higher_is_better = true;
  std::vector<double> per_example;
  Json details = Json::object();  // secondary metrics (perplexity, acc_norm, tokens, ...)
};

// The model as the scorers see it: ids [1, T] int64 -> logits [1, T, V].
using LogitsFn = std::function<StatusOr<at::Tensor>(const at::Tensor& ids)>;
// Greedy continuation of `prompt` by up to `max_new` tokens, stopping after any of `stop_ids`.
using GenerateFn = std::function<StatusOr<std::vector<int64_t>>(
    const std::vector<int64_t>& prompt, int64_t max_new, const std::vector<int64_t>& stop_ids)>;

LogitsFn LogitsOf(const DecoderModel& model);
GenerateFn GreedyOf(const DecoderModel& model);
// Greedy decoding with repeated full forwards (for models without a decode state).
GenerateFn GreedyByFullForward(LogitsFn logits);

struct ScoringOptions {
  // Encode with the tokenizer's post-processor template (e.g. a BOS token) for lm,
  // kl_to_teacher and generate prompts, and prepend it to multiple-choice contexts.
  bool add_special_tokens = true;
  int64_t max_new_tokens = 32;        // generate
  std::vector<int64_t> stop_ids;      // generate: e.g. the EOS ids (dropped from the output)
  // generate: tokens after which decoding may end because their text contains a stop string
  // that every example uses (see StopStringTokens); kept, and the text is cut as usual. Saves
  // decoding steps without changing any result.
  std::vector<int64_t> cut_ids;
  std::optional<int64_t> empty_context_token;  // multiple_choice with an empty context
};

// Ids of the tokens whose decoded text contains one of `stops` that every example lists, for
// single-character ASCII stops only (a multi-byte or multi-character stop could span tokens).
std::vector<int64_t> StopStringTokens(const Tokenizer& tok, const std::vector<TaskExample>& examples);

StatusOr<TaskScore> ScoreLm(const LogitsFn& model, const Tokenizer& tok,
                            const std::vector<TaskExample>& examples,
                            const ScoringOptions& options = {});
StatusOr<TaskScore> ScoreMultipleChoice(const LogitsFn& model, const Tokenizer& tok,
                                        const std::vector<TaskExample>& examples,
                                        const ScoringOptions& options = {});
StatusOr<TaskScore> ScoreGenerate(const GenerateFn& model, const Tokenizer& tok,
                                  const std::vector<TaskExample>& examples,
                                  const ScoringOptions& options = {});
StatusOr<TaskScore> ScoreKlToTeacher(const LogitsFn& model, const LogitsFn& teacher,
                                     const Tokenizer& tok,
                                     const std::vector<TaskExample>& examples,
                                     const ScoringOptions& options = {});

}  // namespace hyb::worker
