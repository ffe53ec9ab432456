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

// The model as the scorers see it: ids [B, T] int64 (on the CPU), B sequences right-padded to T
// -> logits [B, T, V] in any floating dtype on any device. The model must be causal: a row's
// logits at positions below its length may not depend on its padding.
using LogitsFn = std::function<StatusOr<at::Tensor>(const at::Tensor& ids)>;
// Greedy continuation of `prompt` by up to `max_new` tokens, stopping after any of `stop_ids`.
using GenerateFn = std::function<StatusOr<std::vector<int64_t>>(
    const std::vector<int64_t>& prompt, int64_t max_new, const std::vector<int64_t>& stop_ids)>;
// Greedy continuations of B prompts of one length: [B, T] int64 -> [B, T + n] int64 on the CPU,
// n <= max_new; decoding ends once every row has produced one of `stop_ids`, and a row that has
// is padded with its stop id after it (DecoderModel::GenerateGreedy's contract).
using BatchGenerateFn = std::function<StatusOr<at::Tensor>(
    const at::Tensor& prompts, int64_t max_new, const std::vector<int64_t>& stop_ids)>;

LogitsFn LogitsOf(const DecoderModel& model);
GenerateFn GreedyOf(const DecoderModel& model);
BatchGenerateFn BatchGreedyOf(const DecoderModel& model);
// Greedy decoding with repeated full forwards (for models without a decode state).
GenerateFn GreedyByFullForward(LogitsFn logits);
// A BatchGenerateFn that decodes the rows one at a time with `generate`.
BatchGenerateFn RowByRow(GenerateFn generate);

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
  // Batching. The sequences of a split (lm and kl_to_teacher texts, every (example, choice) of
  // multiple_choice) are sorted by length, longest first, and cut into batches of at most
  // `batch_tokens` tokens counting padding (rows x longest row) and `max_batch_size` rows, one
  // forward each; generate batches prompts of equal token length, counting prompt plus
  // max_new_tokens per row. A sequence over the budget is a batch of its own. 0: one sequence
  // per forward (the per-example path). Scores equal the per-example path's up to
  // floating-point reassociation (right padding cannot change a causal model's earlier
  // positions). The logits of a batch, [rows, longest, vocab] in the model's dtype, are the
  // largest tensor: 4 GiB at the default for a 128K vocabulary in bf16.
  int64_t batch_tokens = 16384;
  int64_t max_batch_size = 256;
  // Log-softmax, target gathering and KL run over rows of the logits in chunks of at most this
  // many bytes in their arithmetic type (double for fp32/fp64 logits, fp32 for bf16/fp16) on
  // the logits' device; only per-sequence sums come back to the host.
  int64_t logits_chunk_bytes = int64_t{256} << 20;
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

// How the scorers batch sequences of `lengths` tokens (each row counting `extra_per_row` more,
// e.g. generation's new tokens; with `same_length`, only sequences of one length share a
// batch): indices into `lengths`, longest first (ties in index order), as ScoringOptions
// describes. Deterministic: the same lengths and options give the same batches.
std::vector<std::vector<size_t>> PlanBatches(const std::vector<int64_t>& lengths,
                                             const ScoringOptions& options,
                                             int64_t extra_per_row = 0, bool same_length = false);
// [rows.size(), T] int64 on the CPU: the sequences `rows` of `sequences`, right-padded with id 0
// to the longest of them (T).
at::Tensor PaddedIds(const std::vector<std::vector<int64_t>>& sequences,
                     const std::vector<size_t>& rows);
// The token sequences ScoreLm and ScoreKlToTeacher score: each example's text, encoded.
std::vector<std::vector<int64_t>> TextSequences(const Tokenizer& tok,
                                                const std::vector<TaskExample>& examples,
                                                const ScoringOptions& options);

// A split's token ids as the scorers consume them. EncodeExamples tokenises a split once; the
// scorers' overloads that take it never call the tokenizer's Encode, so one encoding serves
// every model scored on the split (the greedy search scores every candidate of every round on
// the same validation split). Valid only with the examples and the ScoringOptions
// (add_special_tokens, empty_context_token) it was encoded from.
struct EncodedExamples {
  TaskKind kind = TaskKind::kLm;
  // lm, kl_to_teacher: each example's text (with the template when add_special_tokens);
  // multiple_choice: each (example, choice), examples in order and each example's choices in
  // order, as context plus continuation (see ScoreMultipleChoice); generate: each prompt.
  std::vector<std::vector<int64_t>> sequences;
  // multiple_choice: per sequence, the position of the first continuation token (the first
  // scored one). Empty for the other kinds.
  std::vector<int64_t> from;
  // Tokenizer::Encode calls the encoding took: tests read it to show that a split is encoded
  // once however many models are scored on it.
  int64_t tokenizer_calls = 0;
};

// Encodes `examples` of `kind` as the scorers do. InvalidArgument, naming the example, for
// what the scorers reject at encoding: an lm or kl_to_teacher text of fewer than two tokens
// (nothing to predict); a multiple-choice example with an empty context and neither the
// template's prefix nor options.empty_context_token to condition on, or a choice that adds no
// tokens to its context.
StatusOr<EncodedExamples> EncodeExamples(const Tokenizer& tok, TaskKind kind,
                                         const std::vector<TaskExample>& examples,
                                         const ScoringOptions& options);

// The scorers. Every batch is one call of `model`; only per-sequence results (and generated
// ids) come back to the host. ScoreKlToTeacher calls `teacher` with exactly the batches it
// gives `model`: PlanBatches over TextSequences, padded by PaddedIds.
//
// Each scorer comes twice: from the examples (EncodeExamples, then the other form) and from
// an EncodedExamples of the scorer's kind (InvalidArgument for another kind, or for examples
// other than those encoded, by count). Both give bit-identical scores; the second never
// encodes (ScoreGenerate decodes the outputs with `tok`).
StatusOr<TaskScore> ScoreLm(const LogitsFn& model, const Tokenizer& tok,
                            const std::vector<TaskExample>& examples,
                            const ScoringOptions& options = {});
StatusOr<TaskScore> ScoreLm(const LogitsFn& model, const EncodedExamples& encoded,
                            const ScoringOptions& options = {});
// Sees each batch's logits [rows.size(), T, V] (rows: indices into the encoded sequences) as
// the scorer gets them, before they are dropped; a failing status stops the scorer.
using BatchLogitsFn =
    std::function<Status(const std::vector<size_t>& rows, const at::Tensor& logits)>;
// ScoreLm, also handing every batch's logits to `also` (the same score as without).
StatusOr<TaskScore> ScoreLm(const LogitsFn& model, const EncodedExamples& encoded,
                            const ScoringOptions& options, const BatchLogitsFn& also);
// Per row r of logits [B, T, V] against teacher [B, T, V]: KL(softmax(teacher) ||
// softmax(logits)) summed over the positions that predict a token, p < lengths[r] - 1.
// ScoreKlToTeacher's per-sequence sums; its value is their sum over the sum of lengths - 1.
std::vector<double> KlSums(const at::Tensor& logits, const at::Tensor& teacher,
                           const std::vector<int64_t>& lengths, const ScoringOptions& options);
StatusOr<TaskScore> ScoreMultipleChoice(const LogitsFn& model, const Tokenizer& tok,
                                        const std::vector<TaskExample>& examples,
                                        const ScoringOptions& options = {});
StatusOr<TaskScore> ScoreMultipleChoice(const LogitsFn& model,
                                        const std::vector<TaskExample>& examples,
                                        const EncodedExamples& encoded,
                                        const ScoringOptions& options = {});
StatusOr<TaskScore> ScoreGenerate(const BatchGenerateFn& model, const Tokenizer& tok,
                                  const std::vector<TaskExample>& examples,
                                  const ScoringOptions& options = {});
StatusOr<TaskScore> ScoreGenerate(const BatchGenerateFn& model, const Tokenizer& tok,
                                  const std::vector<TaskExample>& examples,
                                  const EncodedExamples& encoded,
                                  const ScoringOptions& options = {});
StatusOr<TaskScore> ScoreKlToTeacher(const LogitsFn& model, const LogitsFn& teacher,
                                     const Tokenizer& tok,
                                     const std::vector<TaskExample>& examples,
                                     const ScoringOptions& options = {});
StatusOr<TaskScore> ScoreKlToTeacher(const LogitsFn& model, const LogitsFn& teacher,
                                     const EncodedExamples& encoded,
                                     const ScoringOptions& options = {});

}  // namespace hyb::worker
