#include "hyb/worker/task_scoring.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>

namespace hyb::worker {
namespace {

std::vector<int64_t> EncodeFor(const Tokenizer& tok, const std::string& text,
                               const ScoringOptions& o) {
  return tok.Encode(text, o.add_special_tokens);
}

at::Tensor IdsTensor(const std::vector<int64_t>& ids) {
  return torch::tensor(ids, at::kLong).view({1, static_cast<int64_t>(ids.size())});
}

// log-probabilities [T, V] in double for the sequence `ids`.
StatusOr<at::Tensor> LogProbs(const LogitsFn& model, const std::vector<int64_t>& ids) {
  HYB_ASSIGN_OR_RETURN(at::Tensor logits, model(IdsTensor(ids)));
  return at::log_softmax(logits[0].to(at::kCPU, at::kDouble), -1);
}

// Sum of log p(ids[i] | ids[<i]) for i in [from, ids.size()).
double SumLogProb(const at::Tensor& logp, const std::vector<int64_t>& ids, size_t from) {
  double s = 0;
  for (size_t i = std::max<size_t>(from, 1); i < ids.size(); ++i) {
    s += logp[static_cast<int64_t>(i) - 1][ids[i]].item<double>();
  }
  return s;
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

namespace {

// Token-weighted mean of a per-position quantity over text examples (lm loss, KL): `sum(ids)`
// returns the quantity summed over the positions that predict a token (all but the last).
StatusOr<TaskScore> TokenWeightedScore(
    const Tokenizer& tok, const std::vector<TaskExample>& examples, const ScoringOptions& options,
    const std::string& task, const std::string& metric,
    const std::function<StatusOr<double>(const std::vector<int64_t>&)>& sum) {
  TaskScore score;
  score.metric = metric;
  score.higher_is_better = false;
  double total = 0;
  int64_t positions = 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    const auto ids = EncodeFor(tok, examples[i].text, options);
    if (ids.size() < 2) {
      return InvalidArgument(task + " example " + std::to_string(i) +
                             " has fewer than two tokens: nothing to predict");
    }
    HYB_ASSIGN_OR_RETURN(double s, sum(ids));
    const auto n = static_cast<int64_t>(ids.size()) - 1;
    score.per_example.push_back(s / static_cast<double>(n));
    total += s;
    positions += n;
  }
  score.value = total / static_cast<double>(positions);
  score.details = {{"tokens", positions}};
  return score;
}

}  // namespace

StatusOr<TaskScore> ScoreLm(const LogitsFn& model, const Tokenizer& tok,
                            const std::vector<TaskExample>& examples,
                            const ScoringOptions& options) {
  HYB_ASSIGN_OR_RETURN(
      TaskScore score,
      TokenWeightedScore(tok, examples, options, "lm", "loss",
                         [&](const std::vector<int64_t>& ids) -> StatusOr<double> {
                           HYB_ASSIGN_OR_RETURN(at::Tensor logp, LogProbs(model, ids));
                           return -SumLogProb(logp, ids, 1);
                         }));
  score.details["perplexity"] = std::exp(score.value);
  return score;
}

StatusOr<TaskScore> ScoreMultipleChoice(const LogitsFn& model, const Tokenizer& tok,
                                        const std::vector<TaskExample>& examples,
                                        const ScoringOptions& options) {
  TaskScore score;
  HYB_ASSIGN_OR_RETURN(score.metric, PickMetric(options, {"acc", "acc_norm"}, "multiple_choice"));
  const bool use_norm = score.metric == "acc_norm";
  const std::vector<int64_t> prefix =
      options.add_special_tokens ? tok.Encode("", true) : std::vector<int64_t>{};
  double correct = 0, correct_norm = 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    const TaskExample& e = examples[i];
    std::vector<double> ll, ll_norm;
    for (const std::string& choice : e.choices) {
      // lm-evaluation-harness: trailing whitespace of the context moves to the continuation;
      // the continuation's tokens are those of context+continuation beyond the context's.
      std::string context = e.context, continuation = choice;
      const size_t keep = context.find_last_not_of(" \t\n\r") == std::string::npos
                              ? 0
                              : context.find_last_not_of(" \t\n\r") + 1;
      continuation = context.substr(keep) + continuation;
      context = context.substr(0, keep);
      std::vector<int64_t> ctx = prefix, whole = prefix;
      const auto c = tok.Encode(context, false), w = tok.Encode(context + continuation, false);
      ctx.insert(ctx.end(), c.begin(), c.end());
      whole.insert(whole.end(), w.begin(), w.end());
      if (ctx.empty()) {
        if (!options.empty_context_token) {
          return InvalidArgument("multiple_choice example " + std::to_string(i) +
                                 " has an empty context and no BOS/EOS token to condition on");
        }
        ctx.push_back(*options.empty_context_token);
        whole.insert(whole.begin(), *options.empty_context_token);
      }
      if (whole.size() <= ctx.size()) {
        return InvalidArgument("multiple_choice example " + std::to_string(i) + ": choice '" +
                               choice + "' adds no tokens");
      }
      HYB_ASSIGN_OR_RETURN(at::Tensor logp, LogProbs(model, whole));
      const double s = SumLogProb(logp, whole, ctx.size());
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

StatusOr<TaskScore> ScoreGenerate(const GenerateFn& model, const Tokenizer& tok,
                                  const std::vector<TaskExample>& examples,
                                  const ScoringOptions& options) {
  TaskScore score;
  HYB_ASSIGN_OR_RETURN(score.metric,
                       PickMetric(options, {"exact_match", "contains", "f1"}, "generate"));
  std::vector<int64_t> end_ids = options.stop_ids;
  end_ids.insert(end_ids.end(), options.cut_ids.begin(), options.cut_ids.end());
  double sum = 0, sum_exact = 0, sum_contains = 0, sum_f1 = 0;
  Json samples = Json::array();
  for (const TaskExample& e : examples) {
    const auto prompt = EncodeFor(tok, e.prompt, options);
    HYB_ASSIGN_OR_RETURN(auto ids, model(prompt, options.max_new_tokens, end_ids));
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
    const double value = score.metric == "f1" ? f1 : score.metric == "contains" ? contains : exact;
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
}

StatusOr<TaskScore> ScoreKlToTeacher(const LogitsFn& model, const LogitsFn& teacher,
                                     const Tokenizer& tok,
                                     const std::vector<TaskExample>& examples,
                                     const ScoringOptions& options) {
  return TokenWeightedScore(
      tok, examples, options, "kl_to_teacher", "kl",
      [&](const std::vector<int64_t>& ids) -> StatusOr<double> {
        HYB_ASSIGN_OR_RETURN(at::Tensor q, LogProbs(model, ids));
        HYB_ASSIGN_OR_RETURN(at::Tensor p, LogProbs(teacher, ids));
        const auto n = static_cast<int64_t>(ids.size()) - 1;  // positions that predict a token
        return (p.exp() * (p - q)).sum(-1).narrow(0, 0, n).sum().item<double>();
      });
}

}  // namespace hyb::worker
