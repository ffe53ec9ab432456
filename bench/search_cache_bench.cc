// Prefix-activation caching in the greedy search: the same search (same evaluator, same
// candidates, same scores) with and without the cache, measured in one run. The cached way is
// what `hybridize run` does: each candidate is scored from the base's activations below its
// layer while recording its own, and the round's winner's recording becomes the next base. Reports
// layer passes (decoder layers run, summed over forward calls) and wall time per way, and checks
// the two trajectories and every candidate's per-example scores are identical.
//
//   search_cache_bench --model DIR --task-type TYPE --data FILE.jsonl [--distill DIR]
//                      [--limit N] [--tolerance 0.1] [--max-new-tokens 12] [--threads N]
//                      [--batch-tokens 16384] [--cache-mb N] [--json FILE]
// --cache-mb: the prefix cache's budget in MiB (search.prefix_cache_max_mb; default: the
// evaluator's automatic one), to see the search under memory pressure.
// Layer passes count decoder layers run per sequence (a batch of B sequences through L layers
// counts B * L), so they compare across batch sizes; --batch-tokens 0 scores one sequence at a
// time.
// Mixers come from a job's distill/ directory when given, else from a plain weight transfer
// (the scores then differ from a distilled search, the cost comparison does not).
#include <torch/torch.h>

#include <chrono>
#include <fstream>
#include <iostream>

#include "hyb/common/json_util.h"
#include "hyb/coordinator/greedy_search.h"
#include "hyb/storage/job_layout.h"
#include "hyb/worker/attention_mixer.h"
#include "hyb/worker/candidate_evaluator.h"
#include "hyb/worker/distill.h"
#include "hyb/worker/linear_mixer.h"

namespace {

using namespace hyb;
using namespace hyb::worker;

std::string Arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == "--" + name) return argv[i + 1];
  }
  return fallback;
}

struct Outcome {
  coordinator::GreedySearch search;
  int64_t layer_passes = 0;
  double seconds = 0;
  std::vector<std::vector<double>> per_example;  // every evaluation, in order
};

StatusOr<Outcome> Search(CandidateEvaluator& eval, bool cache, double tolerance,
                         int64_t num_layers) {
  const auto start = std::chrono::steady_clock::now();
  coordinator::SearchOptions so;
  so.tolerance = tolerance;
  so.bootstrap_samples = 200;
  Outcome out{*coordinator::GreedySearch::Create(num_layers, so)};
  HYB_ASSIGN_OR_RETURN(auto teacher, cache ? eval.EvaluateAndCache({}) : eval.Evaluate({}));
  out.layer_passes += teacher.layer_passes;
  out.search = *coordinator::GreedySearch::Create(num_layers, [&] {
    auto o = so;
    o.higher_is_better = teacher.score.higher_is_better;
    return o;
  }());
  HYB_RETURN_IF_ERROR(out.search.SetTeacher({teacher.score.value, teacher.score.per_example,
                                             teacher.kl, teacher.seconds, teacher.layer_passes}));
  while (!out.search.done()) {
    const auto base = out.search.trajectory().back().linear_layers;
    if (cache && !base.empty()) {
      HYB_ASSIGN_OR_RETURN(auto b, eval.EvaluateAndCache(base));
      out.layer_passes += b.layer_passes;
    }
    for (const auto& c : out.search.Pending()) {
      // As `hybridize run` does: candidates keep their recordings, the winner's becomes the
      // next round's base without another pass.
      HYB_ASSIGN_OR_RETURN(auto r, eval.Evaluate(c.linear_layers, /*keep_recording=*/cache));
      out.layer_passes += r.layer_passes;
      out.per_example.push_back(r.score.per_example);
      HYB_RETURN_IF_ERROR(out.search.Report(
          c.id, {r.score.value, r.score.per_example, r.kl, r.seconds, r.layer_passes}));
    }
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

int Main(int argc, char** argv) {
  const std::string model_dir = Arg(argc, argv, "model", "");
  const std::string data = Arg(argc, argv, "data", "");
  if (model_dir.empty() || data.empty()) {
    std::cerr << "usage: search_cache_bench --model DIR --task-type TYPE --data FILE.jsonl "
                 "[--distill DIR] [--limit N] [--tolerance T] [--threads N] [--batch-tokens N] "
                 "[--cache-mb N] [--json FILE]\n";
    return 2;
  }
  const int64_t threads = std::stoll(Arg(argc, argv, "threads", "0"));
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  auto kind = ParseTaskKind(Arg(argc, argv, "task-type", "generate"));
  auto examples = LoadTaskExamples(data, *kind);
  auto tok = Tokenizer::FromFile(model_dir + "/tokenizer.json");
  if (!kind.ok() || !examples.ok() || !tok.ok()) {
    std::cerr << "bad inputs: " << kind.status().ToString() << " " << examples.status().ToString()
              << " " << tok.status().ToString() << "\n";
    return 1;
  }
  const int64_t limit = std::stoll(Arg(argc, argv, "limit", "0"));
  if (limit > 0 && static_cast<int64_t>(examples->size()) > limit) examples->resize(limit);
  const std::string distill = Arg(argc, argv, "distill", "");
  const double tolerance = std::stod(Arg(argc, argv, "tolerance", "0.1"));
  const int64_t cache_mb = std::stoll(Arg(argc, argv, "cache-mb", "-1"));
  Json result = {{"model", model_dir},
                 {"task", data},
                 {"examples", examples->size()},
                 {"threads", at::get_num_threads()},
                 {"batch_tokens", std::stoll(Arg(argc, argv, "batch-tokens", "16384"))},
                 {"mixers", distill.empty() ? "transfer" : distill},
                 {"cache_mb", cache_mb}};
  std::vector<Outcome> outcomes;
  for (bool cache : {false, true}) {
    auto model = std::move(DecoderModel::Load(model_dir, {})).value();
    std::vector<std::shared_ptr<const TokenMixer>> linear;
    for (int64_t l = 0; l < model->num_layers(); ++l) {
      const auto& att = dynamic_cast<const SoftmaxAttentionMixer&>(model->mixer(l));
      if (distill.empty()) {
        linear.push_back(LinearMixer::Transfer(att.shape(), att.weights(), {}));
      } else {
        linear.push_back(
            *LoadDistilledMixer(distill + "/layer_" + std::to_string(l) + ".safetensors",
                                att.shape(), model->placement()));
      }
    }
    const int64_t layers = model->num_layers();
    EvaluatorOptions o;
    o.kind = *kind;
    o.prefix_cache = cache;
    if (cache_mb >= 0) o.prefix_cache_max_bytes = cache_mb << 20;
    o.scoring.max_new_tokens = std::stoll(Arg(argc, argv, "max-new-tokens", "12"));
    o.scoring.batch_tokens = std::stoll(Arg(argc, argv, "batch-tokens", "16384"));
    o.scoring.stop_ids = model->config().eos_token_ids;
    if (*kind == TaskKind::kGenerate) o.scoring.cut_ids = StopStringTokens(**tok, *examples);
    auto eval = CandidateEvaluator::Create(std::move(model), linear, *tok, *examples, o);
    if (!eval.ok()) {
      std::cerr << eval.status().ToString() << "\n";
      return 1;
    }
    auto out = Search(**eval, cache, tolerance, layers);
    if (!out.ok()) {
      std::cerr << out.status().ToString() << "\n";
      return 1;
    }
    result[cache ? "cached" : "uncached"] = {{"layer_passes", out->layer_passes},
                                             {"seconds", out->seconds},
                                             {"evaluations", out->per_example.size()},
                                             {"rounds", out->search.rounds().size()}};
    outcomes.push_back(std::move(*out));
  }
  // Same decisions and the same numbers; timings and layer passes are what differs.
  auto decisions = [](const coordinator::GreedySearch& s) {
    Json j = s.ToJson();
    for (auto& r : j["rounds"]) {
      for (auto& c : r["candidates"]) {
        c.erase("seconds");
        c.erase("layer_passes");
      }
    }
    return j;
  };
  const bool same = decisions(outcomes[0].search) == decisions(outcomes[1].search) &&
                    outcomes[0].per_example == outcomes[1].per_example;
  result["identical_scores"] = same;
  result["trajectory"] = outcomes[1].search.ToJson()["trajectory"];
  const double pass_ratio =
      static_cast<double>(outcomes[1].layer_passes) / static_cast<double>(outcomes[0].layer_passes);
  const double time_ratio = outcomes[1].seconds / outcomes[0].seconds;
  result["cached_over_uncached"] = {{"layer_passes", pass_ratio}, {"seconds", time_ratio}};
  std::cout << "| search | layer passes | wall time (s) |\n|---|---|---|\n"
            << "| without cache | " << outcomes[0].layer_passes << " | " << outcomes[0].seconds
            << " |\n"
            << "| with prefix cache | " << outcomes[1].layer_passes << " | " << outcomes[1].seconds
            << " |\n| ratio | " << pass_ratio << " | " << time_ratio << " |\n"
            << "identical scores and trajectory: " << (same ? "yes" : "NO") << "\n";
  const std::string json = Arg(argc, argv, "json", "");
  if (!json.empty()) std::ofstream(json) << result.dump(2) << "\n";
  return same ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
