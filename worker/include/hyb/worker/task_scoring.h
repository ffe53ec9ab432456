// Scoring a model on a task's examples: what the greedy search compares candidates with. Every
// scorer returns the aggregate and one value per example (the search's paired bootstrap needs
// them). Task files (hyb/storage/task_file.h) are JSONL, one example per line:
//   lm               {"text": "..."}                                   mean token loss, perplexity
//   multiple_choice  {"context": "...", "choices": ["...", ...], "label": 0}
//                    acc or acc_norm, lm-evaluation-harness semantics (the other in details)
//   generate         {"prompt": "...", "answer": "...", "stop": ["\n"]}  greedy decoding;
//                    exact_match, contains or token f1 (all three in details)
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
  std::string metric;             // loss, acc, acc_norm, exact_match, contains, f1, kl
  double value = 0;               // the aggregate of `metric`
  bool higher_is_better = true;
  std::vector<double> per_example;
  Json details = Json::object();  // every metric of the type's aggregate, perplexity, tokens, ...
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
  // The metric whose values become the score and per-example list: multiple_choice "acc"
  // (default) or "acc_norm", generate "exact_match" (default), "contains" or "f1". Empty: the
  // default. Another name is InvalidArgument from the scorer.
  std::string metric;
};

// Generation metrics of one output against its answer, both already cut at the stop string
// and trimmed of surrounding whitespace:
//   exact_match  output == answer
//   contains     answer occurs in output (an empty answer occurs everywhere, as in Python)
//   f1           SQuAD's token F1 (the official evaluation script, which lm-evaluation-harness
//                uses for squad_v2): both normalised (ASCII lower case; string.punctuation
//                removed; the articles a, an, the removed; whitespace-split), F1 of the
//                multiset overlap; 1 if both token lists are empty, 0 if only one is. Equal to
//                the script's for ASCII text (it lower-cases and splits Unicode too).
double ExactMatch(const std::string& output, const std::string& answer);
double Contains(const std::string& output, const std::string& answer);
double TokenF1(const std::string& output, const std::string& answer);
// The tokens TokenF1 compares: SQuAD's normalize_answer(s).split() (ASCII, as above).
std::vector<std::string> SquadTokens(const std::string& s);

// lm-evaluation-harness's acc_norm divides a choice's log-likelihood by len(choice) in Python:
// its length in code points (UTF-8 continuation bytes do not count).
int64_t ChoiceLength(const std::string& choice);

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
