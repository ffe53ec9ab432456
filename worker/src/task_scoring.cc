#include "hyb/worker/task_scoring.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "hyb/kernels/logits.h"

namespace hyb::worker {
namespace {

std::vector<int64_t> EncodeFor(const Tokenizer& tok, const std::string& text,
                               const ScoringOptions& o) {
  return tok.Encode(text, o.add_special_tokens);
}

at::Tensor IdsTensor(const std::vector<int64_t>& ids) {
  return torch::tensor(ids, at::kLong).view({1, static_cast<int64_t>(ids.size())});
}

// The arithmetic type of log-softmax over logits of `dtype`: double for full-precision models
// (the per-example path's precision), fp32 for half-precision ones.
at::ScalarType MathType(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// Rows of [*, vocab] logits per chunk: ScoringOptions::logits_chunk_bytes in `math`.
int64_t ChunkRows(int64_t vocab, at::ScalarType math, const ScoringOptions& o) {
  const int64_t row_bytes =
      std::max<int64_t>(1, vocab) * static_cast<int64_t>(c10::elementSize(math));
  return std::max<int64_t>(1, o.logits_chunk_bytes / row_bytes);
}

Status CheckLogits(const at::Tensor& logits, const at::Tensor& ids, const char* what) {
  if (logits.dim() != 3 || logits.size(0) != ids.size(0) || logits.size(1) != ids.size(1)) {
    return Internal(std::string(what) + " returned logits of shape " + c10::str(logits.sizes()) +
                    " for ids of shape " + c10::str(ids.sizes()));
  }
  return Status::Ok();
}

// Per row r of a batch (ids [B, T] on the CPU, logits [B, T, V]): the sum of
// log p(ids[r][i] | ids[r][<i]) over i in [from[r], len[r]), from[r] >= 1. Log-softmax runs in
// row chunks on the logits' device; one [B] copy comes back.
std::vector<double> RowLogProbSums(const at::Tensor& logits, const at::Tensor& ids,
                                   const std::vector<int64_t>& from,
                                   const std::vector<int64_t>& len, const ScoringOptions& o) {
  const int64_t b = ids.size(0), t = ids.size(1), v = logits.size(2);
  const at::ScalarType math = MathType(logits.scalar_type());
  // Position p of row r predicts ids[r][p + 1]; the last position predicts nothing (weight 0).
  at::Tensor targets = at::zeros({b, t}, at::kLong);
  targets.narrow(1, 0, t - 1).copy_(ids.narrow(1, 1, t - 1));
  at::Tensor weight = at::zeros({b, t}, at::kDouble);
  auto w = weight.accessor<double, 2>();
  for (int64_t r = 0; r < b; ++r) {
    const auto ur = static_cast<size_t>(r);
    for (int64_t p = std::max<int64_t>(from[ur], 1) - 1; p < len[ur] - 1; ++p) w[r][p] = 1;
  }
  const at::Tensor flat = logits.reshape({b * t, v});  // a view of contiguous logits
  const at::Tensor target = targets.view({b * t}).to(logits.device());
  at::Tensor logp = at::empty({b * t}, logits.options().dtype(math));
  const int64_t chunk = ChunkRows(v, math, o);
  for (int64_t r0 = 0; r0 < b * t; r0 += chunk) {
    const int64_t n = std::min(chunk, b * t - r0);
    // fp32/fp64 models keep fp64 math (rows as doubles); half-precision rows go to the fused
    // kernel as they are (read once, fp32 math).
    const at::Tensor rows = flat.narrow(0, r0, n);  // [n, V]
    logp.narrow(0, r0, n).copy_(kernels::TokenLogProbs(
        math == at::kDouble ? rows.to(math) : rows, target.narrow(0, r0, n)));
  }
  const at::Tensor sums =
      (logp.view({b, t}) * weight.to(logits.device(), math)).sum(1).to(at::kCPU, at::kDouble);
  return {sums.data_ptr<double>(), sums.data_ptr<double>() + b};
}

// Per row r: the sum over positions p in [0, len[r] - 1) (those that predict a token) of
// KL(softmax(teacher[r][p]) || softmax(logits[r][p])), in row chunks on the logits' device.
std::vector<double> RowKlSums(const at::Tensor& logits, const at::Tensor& teacher,
                              const std::vector<int64_t>& len, const ScoringOptions& o) {
  const int64_t b = logits.size(0), t = logits.size(1), v = logits.size(2);
  const at::ScalarType math = MathType(logits.scalar_type()) == at::kDouble ||
                                      MathType(teacher.scalar_type()) == at::kDouble
                                  ? at::kDouble
                                  : at::kFloat;
  at::Tensor weight = at::zeros({b, t}, at::kDouble);
  auto w = weight.accessor<double, 2>();
  for (int64_t r = 0; r < b; ++r) {
    for (int64_t p = 0; p < len[static_cast<size_t>(r)] - 1; ++p) w[r][p] = 1;
  }
  const at::Tensor q_flat = logits.reshape({b * t, v});
  const at::Tensor p_flat = teacher.to(logits.device()).reshape({b * t, v});
  at::Tensor kl = at::empty({b * t}, logits.options().dtype(math));
  const int64_t chunk = ChunkRows(v, math, o);
  for (int64_t r0 = 0; r0 < b * t; r0 += chunk) {
    const int64_t n = std::min(chunk, b * t - r0);
    const at::Tensor q = q_flat.narrow(0, r0, n), p = p_flat.narrow(0, r0, n);  // [n, V]
    kl.narrow(0, r0, n).copy_(math == at::kDouble ? kernels::RowKl(p.to(math), q.to(math))
                                                  : kernels::RowKl(p, q));
  }
  const at::Tensor sums =
      (kl.view({b, t}) * weight.to(logits.device(), math)).sum(1).to(at::kCPU, at::kDouble);
  return {sums.data_ptr<double>(), sums.data_ptr<double>() + b};
}

std::vector<int64_t> Lengths(const std::vector<std::vector<int64_t>>& sequences) {
  std::vector<int64_t> lengths;
  lengths.reserve(sequences.size());
  for (const auto& s : sequences) lengths.push_back(static_cast<int64_t>(s.size()));
  return lengths;
}

// Per sequence: the sum of log p(seq[i] | seq[<i]) over i in [from[k], seq.size()), `model`
// run once per batch.
StatusOr<std::vector<double>> SumLogProbs(const LogitsFn& model,
                                          const std::vector<std::vector<int64_t>>& sequences,
                                          const std::vector<int64_t>& from,
                                          const ScoringOptions& options,
                                          const BatchLogitsFn* also = nullptr) {
  const std::vector<int64_t> lengths = Lengths(sequences);
  std::vector<double> sums(sequences.size());
  for (const auto& rows : PlanBatches(lengths, options)) {
    const at::Tensor ids = PaddedIds(sequences, rows);
    HYB_ASSIGN_OR_RETURN(at::Tensor logits, model(ids));
    HYB_RETURN_IF_ERROR(CheckLogits(logits, ids, "the model"));
    std::vector<int64_t> f, l;
    for (size_t k : rows) {
      f.push_back(from[k]);
      l.push_back(lengths[k]);
    }
    const std::vector<double> s = RowLogProbSums(logits, ids, f, l, options);
    for (size_t k = 0; k < rows.size(); ++k) sums[rows[k]] = s[k];
    if (also != nullptr) HYB_RETURN_IF_ERROR((*also)(rows, logits));
  }
  return sums;
}

// LibTorch throws; the scorers answer Internal instead.
StatusOr<TaskScore> Guarded(const std::string& task,
                            const std::function<StatusOr<TaskScore>()>& fn) {
  try {
    at::NoGradGuard no_grad;
    return fn();
  } catch (const c10::Error& e) {
    return Internal(task + " scoring failed: " + e.what_without_backtrace());
  }
}

std::string Trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  const size_t b = s.find_last_not_of(" \t\r\n");
  return s.substr(a, b - a + 1);
}

// The metric `options` asks for among `allowed` (the first is the default).
StatusOr<std::string> PickMetric(const ScoringOptions& options,
                                 const std::vector<std::string>& allowed,
                                 const std::string& task) {
  if (options.metric.empty()) return allowed.front();
  if (std::find(allowed.begin(), allowed.end(), options.metric) != allowed.end()) {
    return options.metric;
  }
  std::string list;
  for (const auto& m : allowed) list += (list.empty() ? "" : ", ") + m;
  return InvalidArgument("task.metric: '" + options.metric + "' is not a metric of " + task +
                         " tasks (" + list + ")");
}

}  // namespace

std::vector<std::string> SquadTokens(const std::string& s) {
  static const std::string kPunctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
  std::string text;
  for (const char c : s) {
    if (kPunctuation.find(c) != std::string::npos) continue;
    text += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  std::vector<std::string> tokens;
  std::string token;
  auto flush = [&] {
    if (!token.empty() && token != "a" && token != "an" && token != "the") tokens.push_back(token);
    token.clear();
  };
  for (const char c : text) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      flush();
    } else {
      token += c;
    }
  }
  flush();
  return tokens;
}

double ExactMatch(const std::string& output, const std::string& answer) {
  return output == answer ? 1.0 : 0.0;
}

double Contains(const std::string& output, const std::string& answer) {
  return output.find(answer) != std::string::npos ? 1.0 : 0.0;
}

double TokenF1(const std::string& output, const std::string& answer) {
  const std::vector<std::string> pred = SquadTokens(output), gold = SquadTokens(answer);
  if (pred.empty() || gold.empty()) return pred == gold ? 1.0 : 0.0;
  std::map<std::string, int64_t> gold_counts;
  for (const auto& t : gold) ++gold_counts[t];
  int64_t same = 0;
  for (const auto& t : pred) {
    auto it = gold_counts.find(t);
    if (it != gold_counts.end() && it->second > 0) {
      --it->second;
      ++same;
    }
  }
  if (same == 0) return 0.0;
  const double precision = static_cast<double>(same) / static_cast<double>(pred.size());
  const double recall = static_cast<double>(same) / static_cast<double>(gold.size());
  return 2 * precision * recall / (precision + recall);
}

int64_t ChoiceLength(const std::string& choice) {
  return static_cast<int64_t>(std::count_if(
      choice.begin(), choice.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

LogitsFn LogitsOf(const DecoderModel& model) {
  return [&model](const at::Tensor& ids) -> StatusOr<at::Tensor> {
    at::NoGradGuard no_grad;
    return model.Forward(ids);
  };
}

GenerateFn GreedyOf(const DecoderModel& model) {
  return [&model](const std::vector<int64_t>& prompt, int64_t max_new,
                  const std::vector<int64_t>& stop_ids) -> StatusOr<std::vector<int64_t>> {
    HYB_ASSIGN_OR_RETURN(at::Tensor out, model.GenerateGreedy(IdsTensor(prompt), max_new, stop_ids));
    std::vector<int64_t> ids;
    for (int64_t i = static_cast<int64_t>(prompt.size()); i < out.size(1); ++i) {
      ids.push_back(out[0][i].item<int64_t>());
    }
    return ids;
  };
}

BatchGenerateFn BatchGreedyOf(const DecoderModel& model) {
  return [&model](const at::Tensor& prompts, int64_t max_new,
                  const std::vector<int64_t>& stop_ids) -> StatusOr<at::Tensor> {
    at::NoGradGuard no_grad;
    return model.GenerateGreedy(prompts, max_new, stop_ids);
  };
}

BatchGenerateFn RowByRow(GenerateFn generate) {
  return [generate = std::move(generate)](
             const at::Tensor& prompts, int64_t max_new,
             const std::vector<int64_t>& stop_ids) -> StatusOr<at::Tensor> {
    const at::Tensor p = prompts.to(at::kCPU, at::kLong).contiguous();
    const int64_t b = p.size(0), t = p.size(1);
    std::vector<std::vector<int64_t>> outs;
    size_t n = 0;
    for (int64_t r = 0; r < b; ++r) {
      const int64_t* row = p.data_ptr<int64_t>() + r * t;
      HYB_ASSIGN_OR_RETURN(auto out, generate({row, row + t}, max_new, stop_ids));
      n = std::max(n, out.size());
      outs.push_back(std::move(out));
    }
    at::Tensor result = at::empty({b, t + static_cast<int64_t>(n)}, at::kLong);
    result.narrow(1, 0, t).copy_(p);
    auto acc = result.accessor<int64_t, 2>();
    for (int64_t r = 0; r < b; ++r) {
      const auto& out = outs[static_cast<size_t>(r)];
      // A row shorter than the longest ended with its stop id: padded with it.
      for (size_t i = 0; i < n; ++i) {
        acc[r][t + static_cast<int64_t>(i)] = i < out.size() ? out[i] : out.back();
      }
    }
    return result;
  };
}

GenerateFn GreedyByFullForward(LogitsFn logits) {
  return [logits = std::move(logits)](const std::vector<int64_t>& prompt, int64_t max_new,
                                      const std::vector<int64_t>& stop_ids)
             -> StatusOr<std::vector<int64_t>> {
    std::vector<int64_t> seq = prompt, out;
    for (int64_t step = 0; step < max_new; ++step) {
      HYB_ASSIGN_OR_RETURN(at::Tensor l, logits(IdsTensor(seq)));
      const int64_t next = l[0][static_cast<int64_t>(seq.size()) - 1].argmax().item<int64_t>();
      out.push_back(next);
      seq.push_back(next);
      if (std::find(stop_ids.begin(), stop_ids.end(), next) != stop_ids.end()) break;
    }
    return out;
  };
}

std::vector<std::vector<size_t>> PlanBatches(const std::vector<int64_t>& lengths,
                                             const ScoringOptions& options, int64_t extra_per_row,
                                             bool same_length) {
  std::vector<size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return lengths[a] > lengths[b]; });
  std::vector<std::vector<size_t>> batches;
  for (size_t i : order) {
    if (!batches.empty() && options.batch_tokens > 0) {
      std::vector<size_t>& last = batches.back();
      const auto rows = static_cast<int64_t>(last.size()) + 1;
      const int64_t longest = lengths[last.front()] + extra_per_row;  // sorted: the first
      if ((options.max_batch_size <= 0 || rows <= options.max_batch_size) &&
          rows * longest <= options.batch_tokens &&
          (!same_length || lengths[i] == lengths[last.front()])) {
        last.push_back(i);
        continue;
      }
    }
    batches.push_back({i});
  }
  return batches;
}

at::Tensor PaddedIds(const std::vector<std::vector<int64_t>>& sequences,
                     const std::vector<size_t>& rows) {
  size_t t = 0;
  for (size_t r : rows) t = std::max(t, sequences[r].size());
  at::Tensor ids =
      at::zeros({static_cast<int64_t>(rows.size()), static_cast<int64_t>(t)}, at::kLong);
  int64_t* data = ids.data_ptr<int64_t>();
  for (size_t k = 0; k < rows.size(); ++k) {
    std::copy(sequences[rows[k]].begin(), sequences[rows[k]].end(), data + k * t);
  }
  return ids;
}

std::vector<std::vector<int64_t>> TextSequences(const Tokenizer& tok,
                                                const std::vector<TaskExample>& examples,
                                                const ScoringOptions& options) {
  std::vector<std::vector<int64_t>> sequences;
  sequences.reserve(examples.size());
  for (const TaskExample& e : examples) sequences.push_back(EncodeFor(tok, e.text, options));
  return sequences;
}

namespace {

// Token-weighted mean of a per-position quantity over text examples (lm loss, KL): `sums[i]`
// is the quantity summed over sequence i's positions that predict a token (all but the last).
TaskScore TokenWeightedScore(const std::vector<std::vector<int64_t>>& sequences,
                             const std::vector<double>& sums, const std::string& metric) {
  TaskScore score;
  score.metric = metric;
  score.higher_is_better = false;
  double total = 0;
  int64_t positions = 0;
  for (size_t i = 0; i < sequences.size(); ++i) {
    const auto n = static_cast<int64_t>(sequences[i].size()) - 1;
    score.per_example.push_back(sums[i] / static_cast<double>(n));
    total += sums[i];
    positions += n;
  }
  score.value = total / static_cast<double>(positions);
  score.details = {{"tokens", positions}};
  return score;
}

// lm and kl_to_teacher encode their texts alike: either encoding serves both scorers.
bool IsTextKind(TaskKind kind) { return kind == TaskKind::kLm || kind == TaskKind::kKlToTeacher; }

// InvalidArgument unless `encoded` is of a kind `task`'s scorer takes and holds `sequences`
// sequences (-1: any number).
Status CheckEncoded(const EncodedExamples& encoded, const std::string& task, bool kind_ok,
                    int64_t sequences) {
  if (!kind_ok) {
    return InvalidArgument(task + " scoring was given examples encoded for " +
                           TaskKindName(encoded.kind) + " tasks");
  }
  if (sequences >= 0 && static_cast<int64_t>(encoded.sequences.size()) != sequences) {
    return InvalidArgument(task + " scoring was given " +
                           std::to_string(encoded.sequences.size()) +
                           " encoded sequences for examples that make " +
                           std::to_string(sequences));
  }
  return Status::Ok();
}

// Each (example, choice) of multiple_choice as one sequence, scored from the end of its
// context (lm-evaluation-harness semantics).
StatusOr<EncodedExamples> EncodeChoices(const Tokenizer& tok,
                                        const std::vector<TaskExample>& examples,
                                        const ScoringOptions& options) {
  EncodedExamples enc;
  enc.kind = TaskKind::kMultipleChoice;
  std::vector<int64_t> prefix;
  if (options.add_special_tokens) {
    prefix = tok.Encode("", true);
    ++enc.tokenizer_calls;
  }
  for (size_t i = 0; i < examples.size(); ++i) {
    const TaskExample& e = examples[i];
    // lm-evaluation-harness: trailing whitespace of the context moves to the continuation;
    // the continuation's tokens are those of context+continuation beyond the context's.
    const size_t last = e.context.find_last_not_of(" \t\n\r");
    const size_t keep = last == std::string::npos ? 0 : last + 1;
    const std::string context = e.context.substr(0, keep);
    std::vector<int64_t> ctx = prefix;
    if (!e.choices.empty()) {
      const auto c = tok.Encode(context, false);
      ++enc.tokenizer_calls;
      ctx.insert(ctx.end(), c.begin(), c.end());
    }
    for (const std::string& choice : e.choices) {
      // The whole text: the stripped context, its trailing whitespace, the choice.
      std::vector<int64_t> whole = prefix, from_ctx = ctx;
      const auto w = tok.Encode(e.context + choice, false);
      ++enc.tokenizer_calls;
      whole.insert(whole.end(), w.begin(), w.end());
      if (from_ctx.empty()) {
        if (!options.empty_context_token) {
          return InvalidArgument("multiple_choice example " + std::to_string(i) +
                                 " has an empty context and no BOS/EOS token to condition on");
        }
        from_ctx.push_back(*options.empty_context_token);
        whole.insert(whole.begin(), *options.empty_context_token);
      }
      if (whole.size() <= from_ctx.size()) {
        return InvalidArgument("multiple_choice example " + std::to_string(i) + ": choice '" +
                               choice + "' adds no tokens");
      }
      enc.from.push_back(static_cast<int64_t>(from_ctx.size()));
      enc.sequences.push_back(std::move(whole));
    }
  }
  return enc;
}

}  // namespace

StatusOr<EncodedExamples> EncodeExamples(const Tokenizer& tok, TaskKind kind,
                                         const std::vector<TaskExample>& examples,
                                         const ScoringOptions& options) {
  if (kind == TaskKind::kMultipleChoice) return EncodeChoices(tok, examples, options);
  EncodedExamples enc;
  enc.kind = kind;
  enc.sequences.reserve(examples.size());
  for (const TaskExample& e : examples) {
    enc.sequences.push_back(
        EncodeFor(tok, kind == TaskKind::kGenerate ? e.prompt : e.text, options));
    ++enc.tokenizer_calls;
  }
  if (IsTextKind(kind)) {
    for (size_t i = 0; i < enc.sequences.size(); ++i) {
      if (enc.sequences[i].size() < 2) {
        return InvalidArgument(TaskKindName(kind) + " example " + std::to_string(i) +
                               " has fewer than two tokens: nothing to predict");
      }
    }
  }
  return enc;
}

StatusOr<TaskScore> ScoreLm(const LogitsFn& model, const Tokenizer& tok,
                            const std::vector<TaskExample>& examples,
                            const ScoringOptions& options) {
  HYB_ASSIGN_OR_RETURN(const EncodedExamples encoded,
                       EncodeExamples(tok, TaskKind::kLm, examples, options));
  return ScoreLm(model, encoded, options);
}

StatusOr<TaskScore> ScoreLm(const LogitsFn& model, const EncodedExamples& encoded,
                            const ScoringOptions& options) {
  return ScoreLm(model, encoded, options, BatchLogitsFn());
}

StatusOr<TaskScore> ScoreLm(const LogitsFn& model, const EncodedExamples& encoded,
                            const ScoringOptions& options, const BatchLogitsFn& also) {
  HYB_RETURN_IF_ERROR(CheckEncoded(encoded, "lm", IsTextKind(encoded.kind), -1));
  return Guarded("lm", [&]() -> StatusOr<TaskScore> {
    const auto& sequences = encoded.sequences;
    HYB_ASSIGN_OR_RETURN(std::vector<double> sums,
                         SumLogProbs(model, sequences, std::vector<int64_t>(sequences.size(), 1),
                                     options, also ? &also : nullptr));
    for (double& s : sums) s = -s;
    TaskScore score = TokenWeightedScore(sequences, sums, "loss");
    score.details["perplexity"] = std::exp(score.value);
    return score;
  });
}

StatusOr<TaskScore> ScoreMultipleChoice(const LogitsFn& model, const Tokenizer& tok,
                                        const std::vector<TaskExample>& examples,
                                        const ScoringOptions& options) {
  // The metric first: a bad one is the error reported even when an example is bad too.
  HYB_RETURN_IF_ERROR(PickMetric(options, {"acc", "acc_norm"}, "multiple_choice").status());
  HYB_ASSIGN_OR_RETURN(const EncodedExamples encoded,
                       EncodeExamples(tok, TaskKind::kMultipleChoice, examples, options));
  return ScoreMultipleChoice(model, examples, encoded, options);
}

StatusOr<TaskScore> ScoreMultipleChoice(const LogitsFn& model,
                                        const std::vector<TaskExample>& examples,
                                        const EncodedExamples& encoded,
                                        const ScoringOptions& options) {
  int64_t n_choices = 0;
  for (const TaskExample& e : examples) n_choices += static_cast<int64_t>(e.choices.size());
  HYB_RETURN_IF_ERROR(CheckEncoded(encoded, "multiple_choice",
                                   encoded.kind == TaskKind::kMultipleChoice &&
                                       encoded.from.size() == encoded.sequences.size(),
                                   n_choices));
  return Guarded("multiple_choice", [&]() -> StatusOr<TaskScore> {
    TaskScore score;
    HYB_ASSIGN_OR_RETURN(score.metric, PickMetric(options, {"acc", "acc_norm"}, "multiple_choice"));
    const bool use_norm = score.metric == "acc_norm";
    HYB_ASSIGN_OR_RETURN(const std::vector<double> sums,
                         SumLogProbs(model, encoded.sequences, encoded.from, options));
    double correct = 0, correct_norm = 0;
    size_t k = 0;  // the sequence of examples[i].choices[j]
    for (const TaskExample& e : examples) {
      std::vector<double> ll, ll_norm;
      for (const std::string& choice : e.choices) {
        const double s = sums[k++];
        ll.push_back(s);
        // lm-evaluation-harness: per character of the choice (Python's len: code points).
        ll_norm.push_back(s / static_cast<double>(std::max<int64_t>(1, ChoiceLength(choice))));
      }
      const auto best = std::max_element(ll.begin(), ll.end()) - ll.begin();
      const auto best_norm = std::max_element(ll_norm.begin(), ll_norm.end()) - ll_norm.begin();
      const double hit = best == e.label ? 1.0 : 0.0;
      const double hit_norm = best_norm == e.label ? 1.0 : 0.0;
      score.per_example.push_back(use_norm ? hit_norm : hit);
      correct += hit;
      correct_norm += hit_norm;
    }
    const auto n = static_cast<double>(examples.size());
    score.value = (use_norm ? correct_norm : correct) / n;
    score.details = {{"acc", correct / n}, {"acc_norm", correct_norm / n}};
    return score;
  });
}

std::vector<int64_t> StopStringTokens(const Tokenizer& tok,
                                      const std::vector<TaskExample>& examples) {
  std::vector<char> common;
  for (size_t i = 0; i < examples.size(); ++i) {
    std::vector<char> mine;
    for (const auto& s : examples[i].stop) {
      if (s.size() == 1 && static_cast<unsigned char>(s[0]) < 0x80) mine.push_back(s[0]);
    }
    if (i == 0) {
      common = mine;
    } else {
      std::erase_if(common, [&](char c) { return std::find(mine.begin(), mine.end(), c) == mine.end(); });
    }
  }
  std::vector<int64_t> ids;
  if (common.empty()) return ids;
  for (int64_t id = 0; id < tok.vocab_size(); ++id) {
    const std::string text = tok.Decode({id}, /*skip_special_tokens=*/true);
    for (char c : common) {
      if (text.find(c) != std::string::npos) {
        ids.push_back(id);
        break;
      }
    }
  }
  return ids;
}

StatusOr<TaskScore> ScoreGenerate(const BatchGenerateFn& model, const Tokenizer& tok,
                                  const std::vector<TaskExample>& examples,
                                  const ScoringOptions& options) {
  HYB_RETURN_IF_ERROR(
      PickMetric(options, {"exact_match", "contains", "f1"}, "generate").status());
  HYB_ASSIGN_OR_RETURN(const EncodedExamples encoded,
                       EncodeExamples(tok, TaskKind::kGenerate, examples, options));
  return ScoreGenerate(model, tok, examples, encoded, options);
}

StatusOr<TaskScore> ScoreGenerate(const BatchGenerateFn& model, const Tokenizer& tok,
                                  const std::vector<TaskExample>& examples,
                                  const EncodedExamples& encoded,
                                  const ScoringOptions& options) {
  HYB_RETURN_IF_ERROR(CheckEncoded(encoded, "generate", encoded.kind == TaskKind::kGenerate,
                                   static_cast<int64_t>(examples.size())));
  return Guarded("generate", [&]() -> StatusOr<TaskScore> {
    TaskScore score;
    HYB_ASSIGN_OR_RETURN(score.metric,
                         PickMetric(options, {"exact_match", "contains", "f1"}, "generate"));
    std::vector<int64_t> end_ids = options.stop_ids;
    end_ids.insert(end_ids.end(), options.cut_ids.begin(), options.cut_ids.end());
    const std::vector<std::vector<int64_t>>& prompts = encoded.sequences;
    // Prompts of one token length decode together; each row is cut after its first end id,
    // as decoding it alone would have stopped there.
    std::vector<std::vector<int64_t>> outputs(examples.size());
    for (const auto& rows :
         PlanBatches(Lengths(prompts), options, std::max<int64_t>(0, options.max_new_tokens),
                     /*same_length=*/true)) {
      const at::Tensor ids = PaddedIds(prompts, rows);
      HYB_ASSIGN_OR_RETURN(at::Tensor out, model(ids, options.max_new_tokens, end_ids));
      out = out.to(at::kCPU, at::kLong).contiguous();
      const int64_t t = ids.size(1), width = out.size(1);
      if (out.dim() != 2 || out.size(0) != ids.size(0) || width < t ||
          width - t > std::max<int64_t>(0, options.max_new_tokens)) {
        return Internal("generation returned ids of shape " + c10::str(out.sizes()) +
                        " for prompts of shape " + c10::str(ids.sizes()));
      }
      for (size_t k = 0; k < rows.size(); ++k) {
        const int64_t* row = out.data_ptr<int64_t>() + static_cast<int64_t>(k) * width;
        std::vector<int64_t>& ids_out = outputs[rows[k]];
        for (int64_t i = t; i < width; ++i) {
          ids_out.push_back(row[i]);
          if (std::find(end_ids.begin(), end_ids.end(), row[i]) != end_ids.end()) break;
        }
      }
    }
    double sum = 0, sum_exact = 0, sum_contains = 0, sum_f1 = 0;
    Json samples = Json::array();
    for (size_t i = 0; i < examples.size(); ++i) {
      const TaskExample& e = examples[i];
      std::vector<int64_t>& ids = outputs[i];
      // Drop a trailing stop token, decode, cut at the first stop string.
      if (!ids.empty() && std::find(options.stop_ids.begin(), options.stop_ids.end(), ids.back()) !=
                              options.stop_ids.end()) {
        ids.pop_back();
      }
      std::string text = tok.Decode(ids, /*skip_special_tokens=*/true);
      size_t cut = text.size();
      for (const auto& s : e.stop) cut = std::min(cut, text.find(s));
      text = Trim(text.substr(0, cut));
      const std::string answer = Trim(e.answer);
      const double exact = ExactMatch(text, answer), contains = Contains(text, answer),
                   f1 = TokenF1(text, answer);
      const double value = score.metric == "f1"         ? f1
                           : score.metric == "contains" ? contains
                                                        : exact;
      score.per_example.push_back(value);
      sum += value;
      sum_exact += exact;
      sum_contains += contains;
      sum_f1 += f1;
      if (samples.size() < 5) samples.push_back({{"output", text}, {"answer", e.answer}});
    }
    const auto n = static_cast<double>(examples.size());
    score.value = sum / n;
    score.details = {{"exact_match", sum_exact / n},
                     {"contains", sum_contains / n},
                     {"f1", sum_f1 / n},
                     {"samples", samples}};
    return score;
  });
}

std::vector<double> KlSums(const at::Tensor& logits, const at::Tensor& teacher,
                           const std::vector<int64_t>& lengths, const ScoringOptions& options) {
  TORCH_CHECK(logits.dim() == 3 && teacher.sizes() == logits.sizes() &&
                  static_cast<int64_t>(lengths.size()) == logits.size(0),
              "KlSums: logits ", logits.sizes(), " and teacher ", teacher.sizes(), " for ",
              lengths.size(), " lengths");
  return RowKlSums(logits, teacher, lengths, options);
}

StatusOr<TaskScore> ScoreKlToTeacher(const LogitsFn& model, const LogitsFn& teacher,
                                     const Tokenizer& tok,
                                     const std::vector<TaskExample>& examples,
                                     const ScoringOptions& options) {
  HYB_ASSIGN_OR_RETURN(const EncodedExamples encoded,
                       EncodeExamples(tok, TaskKind::kKlToTeacher, examples, options));
  return ScoreKlToTeacher(model, teacher, encoded, options);
}

StatusOr<TaskScore> ScoreKlToTeacher(const LogitsFn& model, const LogitsFn& teacher,
                                     const EncodedExamples& encoded,
                                     const ScoringOptions& options) {
  HYB_RETURN_IF_ERROR(CheckEncoded(encoded, "kl_to_teacher", IsTextKind(encoded.kind), -1));
  return Guarded("kl_to_teacher", [&]() -> StatusOr<TaskScore> {
    const auto& sequences = encoded.sequences;
    const std::vector<int64_t> lengths = Lengths(sequences);
    std::vector<double> sums(sequences.size());
    for (const auto& rows : PlanBatches(lengths, options)) {
      const at::Tensor ids = PaddedIds(sequences, rows);
      HYB_ASSIGN_OR_RETURN(at::Tensor q, model(ids));
      HYB_RETURN_IF_ERROR(CheckLogits(q, ids, "the model"));
      HYB_ASSIGN_OR_RETURN(at::Tensor p, teacher(ids));
      HYB_RETURN_IF_ERROR(CheckLogits(p, ids, "the teacher"));
      if (p.size(2) != q.size(2)) {
        return InvalidArgument("kl_to_teacher: the teacher's vocabulary (" +
                               std::to_string(p.size(2)) + ") is not the model's (" +
                               std::to_string(q.size(2)) + ")");
      }
      std::vector<int64_t> l;
      for (size_t k : rows) l.push_back(lengths[k]);
      const std::vector<double> s = RowKlSums(q, p, l, options);
      for (size_t k = 0; k < rows.size(); ++k) sums[rows[k]] = s[k];
    }
    return TokenWeightedScore(sequences, sums, "kl");
  });
}

}  // namespace hyb::worker
