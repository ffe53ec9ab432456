// The whole Distill-then-Replace pipeline's speed on one device, for a real-shaped teacher
// (`hybridize init-random`): blockwise distillation tokens/s and peak memory, a validation pass's
// tokens/s, the whole greedy search's time (prefix cache on), and decoding ms/token for the
// teacher and for a hybrid with every other layer linear, at chosen contexts and batch sizes.
// The numbers it prints stand beside ../shared/reference/dtr_reference.py run in the same
// session (BENCHMARKS.md).
//
//   gpu_pipeline_bench --model DIR [--device cuda] [--dtype bf16] [--mixer gla] [--parts
//     bld,eval,search,decode] [--bld-batch 8] [--bld-seq 2048] [--bld-steps 10]
//     [--eval-examples 500] [--eval-seq 512] [--cache-gib 40|auto] [--contexts 2048,16384,65536]
//     [--batches 1,32] [--decode-new 64] [--search-rounds N] [--profile-steps N] [--work DIR]
//     [--json FILE]
//
// --profile-steps N records N distillation steps (after the timed ones) and one validation pass
// with LibTorch's profiler (Kineto/CUPTI) and prints where the device time goes: GPU busy time
// against wall time, and the kernels that take it, by name and by kind.
#include <torch/torch.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <map>
#include <set>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>

#include "hyb/common/json_util.h"
#include "hyb/coordinator/greedy_search.h"
#include "hyb/storage/token_dataset.h"
#include "hyb/worker/attention_mixer.h"
#include "hyb/worker/candidate_evaluator.h"
#include "hyb/worker/distill.h"
#include "hyb/worker/linear_mixer.h"
#ifdef HYB_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace {

using namespace hyb;
using namespace hyb::worker;
using Clock = std::chrono::steady_clock;

std::string Arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == "--" + name) return argv[i + 1];
  }
  return fallback;
}

std::vector<int64_t> IntList(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(std::stoll(item));
  }
  return out;
}

bool Has(const std::string& list, const std::string& part) {
  return ("," + list + ",").find("," + part + ",") != std::string::npos;
}

void Sync(const at::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index() < 0 ? -1 : device.index());
}

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

void ResetPeak(const at::Device& device) {
#ifdef HYB_WITH_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index() < 0 ? 0 : device.index());
  }
#endif
  (void)device;
}

double PeakGiB(const at::Device& device) {
#ifdef HYB_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    return static_cast<double>(stats.allocated_bytes[0].peak) / (1 << 30);
  }
#endif
  (void)device;
  return 0;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Where the device time goes over a stretch of work: LibTorch's profiler with CPU and CUDA
// activities; the summary groups the device's events (kernels, copies) by name and by kind.
class DeviceProfile {
 public:
  void Start() {
    namespace prof = torch::autograd::profiler;
    const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
    const std::set<torch::profiler::impl::ActivityType> activities = {
        torch::profiler::impl::ActivityType::CPU, torch::profiler::impl::ActivityType::CUDA};
    prof::prepareProfiler(config, activities);
    prof::enableProfiler(config, activities);
    start_ = Clock::now();
  }

  // Stops (after the caller synchronised the device) and summarises: wall seconds, the device's
  // busy seconds (sum of its events' durations), and the `top` longest kernels by total time.
  Json Stop(int top) {
    const double wall = Seconds(start_);
    auto result = torch::autograd::profiler::disableProfiler();
    // Host-side operators: by correlation id (a device event's linked id names the operator that
    // launched it), and each thread's outermost operators by start time, so that a kernel is
    // charged to the operator the code called (aten::to, a backward function), not aten::copy_.
    struct Op {
      uint64_t start, end, thread;
      std::string name;
    };
    std::map<uint64_t, Op> ops;
    std::map<uint64_t, std::vector<Op>> outer;  // thread -> outermost operators, by start
    for (const auto& e : result->events()) {
      if (e.deviceType() != c10::DeviceType::CPU || e.correlationId() == 0) continue;
      const uint64_t start = StartMicros(e);
      const uint64_t end = start + static_cast<uint64_t>(DurationSeconds(e) * 1e6);
      ops[e.correlationId()] = {start, end, e.startThreadId(), e.name()};
    }
    {
      std::map<uint64_t, std::vector<Op>> by_thread;
      for (const auto& [id, op] : ops) by_thread[op.thread].push_back(op);
      for (auto& [thread, list] : by_thread) {
        std::sort(list.begin(), list.end(), [](const Op& a, const Op& b) {
          return a.start != b.start ? a.start < b.start : a.end > b.end;
        });
        auto& top_level = outer[thread];
        for (const auto& op : list) {
          if (top_level.empty() || op.start >= top_level.back().end) top_level.push_back(op);
        }
      }
    }
    auto outermost = [&](uint64_t linked) -> std::string {
      auto it = ops.find(linked);
      if (it == ops.end()) return "(no operator)";
      const auto& list = outer[it->second.thread];
      auto at = std::upper_bound(list.begin(), list.end(), it->second.start,
                                 [](uint64_t t, const Op& o) { return t < o.start; });
      if (at == list.begin()) return it->second.name;
      --at;
      return it->second.start < at->end ? at->name : it->second.name;
    };
    std::map<std::string, std::pair<double, int64_t>> by_name;  // seconds, count
    std::map<std::string, std::pair<double, int64_t>> by_op;
    std::map<std::string, double> by_kind;
    double busy = 0;
    for (const auto& e : result->events()) {
      if (e.deviceType() != c10::DeviceType::CUDA) continue;
      const double sec = DurationSeconds(e);
      busy += sec;
      auto& slot = by_name[e.name().substr(0, 110)];
      slot.first += sec;
      ++slot.second;
      auto& op_slot = by_op[outermost(e.linkedCorrelationId()).substr(0, 110)];
      op_slot.first += sec;
      ++op_slot.second;
      by_kind[Kind(e.name())] += sec;
    }
    auto table = [&](const std::map<std::string, std::pair<double, int64_t>>& m) {
      std::vector<std::pair<std::string, std::pair<double, int64_t>>> rows(m.begin(), m.end());
      std::sort(rows.begin(), rows.end(),
                [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
      Json out = Json::array();
      for (size_t i = 0; i < rows.size() && static_cast<int>(i) < top; ++i) {
        out.push_back({{"name", rows[i].first},
                       {"ms", 1000 * rows[i].second.first},
                       {"calls", rows[i].second.second},
                       {"share", busy > 0 ? rows[i].second.first / busy : 0}});
      }
      return out;
    };
    Json kinds = Json::object();
    for (const auto& [k, sec] : by_kind) kinds[k] = 1000 * sec;
    return Json{{"wall_ms", 1000 * wall}, {"device_busy_ms", 1000 * busy},
                {"kernels", table(by_name)}, {"operators", table(by_op)},
                {"ms_by_kind", kinds}};
  }

 private:
  template <typename E>
  static double DurationSeconds(const E& e) {
    if constexpr (requires { e.durationNs(); }) {
      return static_cast<double>(e.durationNs()) * 1e-9;
    } else {
      return static_cast<double>(e.durationUs()) * 1e-6;
    }
  }

  template <typename E>
  static uint64_t StartMicros(const E& e) {
    if constexpr (requires { e.startNs(); }) {
      return static_cast<uint64_t>(e.startNs() / 1000);
    } else {
      return static_cast<uint64_t>(e.startUs());
    }
  }

  static std::string Kind(const std::string& name) {
    auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
    if (has("Memcpy") || has("Memset")) return "copy/set";
    if (has("gla") || has("Gla") || has("gated_delta") || has("GatedDelta")) return "linear-attention";
    if (has("flash") || has("fmha") || has("attention") || has("Attention")) return "softmax-attention";
    if (has("gemm") || has("Gemm") || has("xmma") || has("nvjet") || has("cutlass") ||
        has("matmul")) {
      return "matmul";
    }
    if (has("multi_tensor_apply") || has("foreach") || has("Foreach")) return "foreach/optimizer";
    if (has("reduce") || has("Reduce") || has("norm") || has("Norm")) return "reduce/norm";
    if (has("softmax") || has("Softmax")) return "softmax";
    if (has("elementwise") || has("vectorized") || has("Elementwise")) return "elementwise";
    return "other";
  }

  Clock::time_point start_;
};

// Linear mixers for every layer, transferred from the teacher's attention (speed does not
// depend on training).
std::vector<std::shared_ptr<const TokenMixer>> TransferAll(const DecoderModel& model,
                                                           const LinearMixerOptions& o) {
  std::vector<std::shared_ptr<const TokenMixer>> out;
  for (int64_t l = 0; l < model.num_layers(); ++l) {
    const auto& att = dynamic_cast<const SoftmaxAttentionMixer&>(model.mixer(l));
    out.push_back(LinearMixer::Transfer(att.shape(), att.weights(), o));
  }
  return out;
}

StatusOr<Json> Bld(const std::shared_ptr<const DecoderModel>& teacher, const LinearMixerOptions& mixer,
                   const std::string& work, int64_t batch, int64_t seq, int64_t steps,
                   const std::string& dtype, int64_t profile_steps) {
  const at::Device device = teacher->placement().device;
  // Synthetic distillation data: uniform ids, enough for every step without a second epoch.
  const std::string data_dir = work + "/bld-data";
  if (auto existing = storage::TokenDataset::Open(data_dir); !existing.ok()) {
    storage::TokenDatasetWriter w(data_dir, teacher->config().vocab_size, Json::object());
    std::mt19937_64 rng(7);
    std::uniform_int_distribution<int64_t> id(0, teacher->config().vocab_size - 1);
    const int64_t docs = (steps + 4) * batch * 2;
    for (int64_t d = 0; d < docs; ++d) {
      std::vector<int64_t> ids(static_cast<size_t>(seq + 1));
      for (auto& x : ids) x = id(rng);
      HYB_RETURN_IF_ERROR(w.AddDocument(ids));
    }
    HYB_RETURN_IF_ERROR(w.Finish());
  }
  HYB_ASSIGN_OR_RETURN(auto data, storage::TokenDataset::Open(data_dir));
  std::vector<int64_t> layers;
  for (int64_t l = 0; l < teacher->num_layers(); ++l) layers.push_back(l);
  DistillOptions o;
  o.steps = steps + 3 + profile_steps;
  o.batch_size = batch;
  o.sequence_length = seq;
  o.warmup_steps = 1;
  o.checkpoint_every = 1 << 30;
  o.log_every = 1 << 30;
  o.compute_dtype = dtype == "fp32" ? "fp32" : "bf16";
  const std::string ckpt = work + "/bld-ckpt-" + std::to_string(::getpid()) + "-" +
                           std::to_string(Clock::now().time_since_epoch().count());
  HYB_ASSIGN_OR_RETURN(auto distiller,
                       BlockwiseDistiller::Create(teacher, layers, mixer, o, data, ckpt));
  ResetPeak(device);
  std::vector<double> step_seconds;
  DeviceProfile profile;
  Json profiled;
  const int64_t timed_end = steps + 3;
  auto last = Clock::now();
  Status run = distiller->Run([&](int64_t step, const std::vector<LayerDistillState>&) {
    Sync(device);
    const auto now = Clock::now();
    if (step > 3 && step <= timed_end) {
      step_seconds.push_back(std::chrono::duration<double>(now - last).count());
    }
    if (profile_steps > 0 && step == timed_end) profile.Start();
    if (profile_steps > 0 && step == timed_end + profile_steps) {
      profiled = profile.Stop(30);
      profiled["steps"] = profile_steps;
    }
    last = Clock::now();
    return step < o.steps;  // the last step would write checkpoints: stop before it
  });
  if (!run.ok() && run.code() != StatusCode::kCancelled) return run;
  const double median = Median(step_seconds);
  if (!profiled.is_null()) std::cerr << "bld profile: " << profiled.dump(1) << std::endl;
  return Json{{"bld_profile", profiled},
              {"bld_tokens_per_s", static_cast<double>(batch * seq) / median},
              {"bld_step_s", median},
              {"bld_steps_timed", step_seconds.size()},
              {"bld_peak_gib", PeakGiB(device)},
              {"batch", batch},
              {"seq", seq}};
}

std::vector<TaskExample> LmExamples(const Tokenizer& tok, int64_t n, int64_t seq, int64_t vocab) {
  std::mt19937_64 rng(11);
  std::uniform_int_distribution<int64_t> id(0, std::min<int64_t>(vocab, tok.vocab_size()) - 1);
  std::vector<TaskExample> out;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int64_t> ids(static_cast<size_t>(seq - 1));
    for (auto& x : ids) x = id(rng);
    TaskExample e;
    e.text = tok.Decode(ids, /*skip_special_tokens=*/true);
    // Random ids decoded re-encode to ~1.3x as many tokens: cut the text until it encodes to at
    // most `seq` tokens (with the template's specials), as the reference's 512-token sequences.
    for (int attempt = 0; attempt < 16; ++attempt) {
      const std::vector<int64_t> with_specials = tok.Encode(e.text, /*add_special_tokens=*/true);
      const auto n_tokens = static_cast<int64_t>(with_specials.size());
      if (n_tokens <= seq) break;
      std::vector<int64_t> plain = tok.Encode(e.text);
      plain.resize(static_cast<size_t>(
          std::max<int64_t>(1, static_cast<int64_t>(plain.size()) - (n_tokens - seq))));
      e.text = tok.Decode(plain, /*skip_special_tokens=*/true);
    }
    out.push_back(std::move(e));
  }
  return out;
}

// --cache-gib: GiB, or "auto" (-1): the budget a job gets by default.
double CacheGib(const std::string& v) { return v == "auto" ? -1.0 : std::stod(v); }

StatusOr<Json> EvalAndSearch(std::unique_ptr<DecoderModel> model,
                             std::vector<std::shared_ptr<const TokenMixer>> linear,
                             std::shared_ptr<const Tokenizer> tok, int64_t n, int64_t seq,
                             double cache_gib, bool search, int64_t search_rounds, bool profile) {
  const at::Device device = model->placement().device;
  const int64_t layers = model->num_layers();
  auto examples = LmExamples(*tok, n, seq, model->config().vocab_size);
  EvaluatorOptions o;
  o.kind = TaskKind::kLm;
  o.kl_examples = 0;  // the pass alone, as the reference's
  // A negative budget: the product's default (`auto`, resolved by the evaluator for the device).
  o.prefix_cache_max_bytes =
      cache_gib < 0 ? kAutoPrefixCacheBytes : static_cast<int64_t>(cache_gib * (1 << 30));
  Json out;
  {
    // What encoding the texts costs: once per evaluator (Create), not per evaluation.
    const auto t_enc = Clock::now();
    (void)TextSequences(*tok, examples, o.scoring);
    out["eval_encode_s"] = Seconds(t_enc);
    HYB_ASSIGN_OR_RETURN(auto eval,
                         CandidateEvaluator::Create(model->ShareWeights(), linear, tok, examples, o));
    HYB_RETURN_IF_ERROR(eval->Evaluate({}).status());  // warm-up
    std::vector<double> times;
    int64_t tokens = 0;
    for (int r = 0; r < 3; ++r) {
      Sync(device);
      const auto t0 = Clock::now();
      HYB_ASSIGN_OR_RETURN(auto ev, eval->Evaluate({}));
      Sync(device);
      times.push_back(Seconds(t0));
      tokens = ev.score.details.value("tokens", int64_t{0}) + static_cast<int64_t>(examples.size());
    }
    out["eval_pass_s"] = Median(times);
    out["eval_tokens"] = tokens;
    out["eval_tokens_per_s"] = static_cast<double>(tokens) / Median(times);
    if (profile) {
      DeviceProfile p;
      Sync(device);
      p.Start();
      HYB_RETURN_IF_ERROR(eval->Evaluate({}).status());
      Sync(device);
      out["eval_profile"] = p.Stop(20);
      std::cerr << "eval profile: " << out["eval_profile"].dump(1) << std::endl;
    }
  }
  if (!search) return out;
  // The whole greedy search (every round to the end: the tolerance never binds), prefix cache
  // on, KL tie-break on the default 32 examples, as a job runs it.
  o.kl_examples = 32;
  HYB_ASSIGN_OR_RETURN(auto eval,
                       CandidateEvaluator::Create(std::move(model), linear, tok, examples, o));
  coordinator::SearchOptions so;
  so.tolerance = 1e9;
  so.bootstrap_samples = 0;
  so.max_linear_layers = search_rounds;  // 0: every round
  so.higher_is_better = false;
  HYB_ASSIGN_OR_RETURN(auto gs, coordinator::GreedySearch::Create(layers, so));
  Sync(device);
  ResetPeak(device);
  const auto t0 = Clock::now();
  HYB_ASSIGN_OR_RETURN(auto teacher, eval->EvaluateAndCache({}));
  HYB_RETURN_IF_ERROR(gs.SetTeacher({teacher.score.value, teacher.score.per_example, teacher.kl,
                                     teacher.seconds, teacher.layer_passes}));
  int64_t evaluations = 1, passes = teacher.layer_passes;
  while (!gs.done()) {
    const auto base = gs.trajectory().back().linear_layers;
    if (!base.empty()) {
      HYB_ASSIGN_OR_RETURN(auto b, eval->EvaluateAndCache(base));
      passes += b.layer_passes;
    }
    for (const auto& c : gs.Pending()) {
      HYB_ASSIGN_OR_RETURN(auto r, eval->Evaluate(c.linear_layers, /*keep_recording=*/true));
      ++evaluations;
      passes += r.layer_passes;
      HYB_RETURN_IF_ERROR(
          gs.Report(c.id, {r.score.value, r.score.per_example, r.kl, r.seconds, r.layer_passes}));
    }
  }
  Sync(device);
  out["search_s"] = Seconds(t0);
  out["search_evaluations"] = evaluations;
  out["search_layer_passes"] = passes;
  out["search_rounds"] = gs.rounds().size();
  out["search_peak_gib"] = PeakGiB(device);
  // The layer each round committed, in order (the cache's reuse depends on it).
  Json order = Json::array();
  std::vector<int64_t> before;
  for (const auto& point : gs.trajectory()) {
    for (int64_t l : point.linear_layers) {
      if (std::find(before.begin(), before.end(), l) == before.end()) order.push_back(l);
    }
    before = point.linear_layers;
  }
  out["search_commit_order"] = order;
  out["prefix_cache_gib"] = static_cast<double>(eval->prefix_cache_budget()) / (1 << 30);
  return out;
}

StatusOr<Json> Decode(const DecoderModel& model, int64_t context, int64_t batch, int64_t new_tokens) {
  const at::Device device = model.placement().device;
  const at::Tensor prompt =
      at::randint(0, model.config().vocab_size, {batch, context}, at::TensorOptions().dtype(at::kLong));
  const int64_t capacity = context + 16 + new_tokens;
  // One prefill, then `steps` greedy tokens, each timed: the per-token time is the difference of
  // two runs' decoding alone, so the prefills' run-to-run noise (~0.5 s at 64K x 32) stays out.
  struct Times {
    double prefill, decode;
  };
  auto run = [&](const at::Tensor& p, int64_t steps) -> StatusOr<Times> {
    DecodeState state = model.NewDecodeState(capacity);
    Sync(device);
    const auto t0 = Clock::now();
    HYB_ASSIGN_OR_RETURN(const at::Tensor next, model.PrefillGreedy(p, &state));
    Sync(device);
    const double prefill = Seconds(t0);
    const auto t1 = Clock::now();
    HYB_RETURN_IF_ERROR(model.ContinueGreedy(&state, next, steps, {}).status());
    Sync(device);
    return Times{prefill, Seconds(t1)};
  };
  ResetPeak(device);
  // Warm-up (lazy initialisation, kernel loading) on at most 2,048 prompt tokens.
  HYB_RETURN_IF_ERROR(run(prompt.narrow(1, 0, std::min<int64_t>(context, 2048)), 4).status());
  HYB_ASSIGN_OR_RETURN(const Times short_run, run(prompt, 16));
  HYB_ASSIGN_OR_RETURN(const Times long_run, run(prompt, 16 + new_tokens));
  return Json{{"context", context},
              {"batch", batch},
              {"prefill_s", std::min(short_run.prefill, long_run.prefill)},
              {"ms_per_token",
               1000 * (long_run.decode - short_run.decode) / static_cast<double>(new_tokens)},
              {"peak_gib", PeakGiB(device)}};
}

int Main(int argc, char** argv) {
  const std::string model_dir = Arg(argc, argv, "model", "");
  if (model_dir.empty()) {
    std::cerr << "usage: gpu_pipeline_bench --model DIR [--device cuda] [--dtype bf16] "
                 "[--mixer gla|gated_deltanet] [--parts bld,eval,search,decode] [--bld-batch 8] "
                 "[--bld-seq 2048] [--bld-steps 10] [--eval-examples 500] [--eval-seq 512] "
                 "[--cache-gib 40|auto] [--contexts 2048,16384,65536] [--batches 1,32] "
                 "[--decode-new 64] [--search-rounds N (0: all)] [--profile-steps N] [--work DIR] "
                 "[--json FILE]\n";
    return 2;
  }
  const std::string parts = Arg(argc, argv, "parts", "bld,eval,search,decode");
  const std::string dtype = Arg(argc, argv, "dtype", "bf16");
  const std::string work = Arg(argc, argv, "work", "/tmp/gpu_pipeline_bench");
  std::filesystem::create_directories(work);
  RuntimeOptions ro;
  ro.device = Arg(argc, argv, "device", "cuda");
  ro.dtype = dtype;
  auto loaded = DecoderModel::Load(model_dir, ro);
  auto tok = Tokenizer::FromFile(model_dir + "/tokenizer.json");
  if (!loaded.ok() || !tok.ok()) {
    std::cerr << "gpu_pipeline_bench: " << loaded.status().ToString() << " "
              << tok.status().ToString() << "\n";
    return 1;
  }
  std::shared_ptr<const DecoderModel> teacher = std::move(*loaded);
  LinearMixerOptions mixer;
  const std::string mixer_name = Arg(argc, argv, "mixer", "gla");
  mixer.type = mixer_name == "gla" ? LinearMixerType::kGla : LinearMixerType::kGatedDeltaNet;
  Json result = {{"model", model_dir}, {"dtype", dtype}, {"mixer", mixer_name},
                 {"layers", teacher->num_layers()}, {"hidden", teacher->config().hidden_size}};
  auto emit = [&] {
    std::cout << result.dump() << std::endl;
    const std::string json = Arg(argc, argv, "json", "");
    if (!json.empty()) std::ofstream(json) << result.dump(2) << "\n";
  };
  auto fail = [&](const char* part, const Status& s) {
    result[std::string(part) + "_error"] = s.ToString();
    std::cerr << part << ": " << s.ToString() << "\n";
  };
  if (Has(parts, "bld")) {
    auto r = Bld(teacher, mixer, work, std::stoll(Arg(argc, argv, "bld-batch", "8")),
                 std::stoll(Arg(argc, argv, "bld-seq", "2048")),
                 std::stoll(Arg(argc, argv, "bld-steps", "10")), dtype,
                 std::stoll(Arg(argc, argv, "profile-steps", "0")));
    if (r.ok()) result.update(*r); else fail("bld", r.status());
    emit();
  }
  if (Has(parts, "eval") || Has(parts, "search")) {
    at::NoGradGuard no_grad;
    auto r = EvalAndSearch(teacher->ShareWeights(), TransferAll(*teacher, mixer),
                           std::shared_ptr<const Tokenizer>(std::move(*tok)),
                           std::stoll(Arg(argc, argv, "eval-examples", "500")),
                           std::stoll(Arg(argc, argv, "eval-seq", "512")),
                           CacheGib(Arg(argc, argv, "cache-gib", "40")), Has(parts, "search"),
                           std::stoll(Arg(argc, argv, "search-rounds", "0")),
                           std::stoll(Arg(argc, argv, "profile-steps", "0")) > 0);
    if (r.ok()) result.update(*r); else fail("eval", r.status());
    emit();
  }
  if (Has(parts, "decode")) {
    at::NoGradGuard no_grad;
    auto hybrid = teacher->ShareWeights();
    const auto linear = TransferAll(*teacher, mixer);
    for (int64_t l = 0; l < hybrid->num_layers(); l += 2) hybrid->SetMixer(l, linear[static_cast<size_t>(l)]);
    Json rows = Json::array();
    for (int64_t context : IntList(Arg(argc, argv, "contexts", "2048,16384,65536"))) {
      for (int64_t batch : IntList(Arg(argc, argv, "batches", "1,32"))) {
        for (const bool is_hybrid : {false, true}) {
          auto r = Decode(is_hybrid ? *hybrid : *teacher, context, batch,
                          std::stoll(Arg(argc, argv, "decode-new", "64")));
          Json row = r.ok() ? *r : Json{{"context", context}, {"batch", batch},
                                         {"error", r.status().ToString()}};
          row["model"] = is_hybrid ? "half_linear" : "teacher";
          std::cerr << row.dump() << std::endl;
          rows.push_back(row);
        }
      }
    }
    result["decode"] = rows;
    emit();
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
