#include "hyb/worker/gang.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>

#if HYB_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include "hyb/storage/job_layout.h"
#include "hyb/storage/model_dir.h"
#include "hyb/storage/token_dataset.h"
#include "hyb/worker/distill.h"
#include "hyb/worker/storage_types.h"

namespace hyb::worker {
namespace {

// Parameters of one decoder layer, of the embeddings and of the head (the embedding again when
// tied: the last stage loads it for the head).
struct ParamCounts {
  int64_t layer = 0, embedding = 0, head = 0;
  int64_t Total(int64_t layers) const { return layer * layers + embedding + head; }
};

ParamCounts CountParams(const ModelConfig& c) {
  ParamCounts p;
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  p.layer = h * q + 2 * h * kv + q * h + 3 * h * c.intermediate_size + 2 * h;
  p.embedding = c.vocab_size * h;
  p.head = c.vocab_size * h + h;
  return p;
}

// Memory one rank may use: the device's on CUDA, this machine's available memory shared by the
// ranks mpirun started on it on CPU.
int64_t RankMemoryBytes(const at::Device& device) {
#if HYB_WITH_CUDA
  if (device.is_cuda()) {
    size_t free_bytes = 0, total = 0;
    if (cudaSetDevice(device.index()) == cudaSuccess &&
        cudaMemGetInfo(&free_bytes, &total) == cudaSuccess) {
      return static_cast<int64_t>(total);
    }
    return 0;
  }
#endif
  (void)device;
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (meminfo >> key >> kb >> unit) {
    if (key == "MemAvailable:") {
      const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
      const int64_t share = local != nullptr ? std::max(1, std::atoi(local)) : 1;
      return kb * 1024 / share;
    }
  }
  return 0;
}

StatusOr<ModelConfig> ReadTeacherConfig(const std::string& dir) {
  HYB_ASSIGN_OR_RETURN(auto model_dir, storage::ModelDirectory::Open(dir));
  return ParseModelConfig(model_dir.config(), model_dir.config_path());
}

Json ErrorReply(const Status& s) { return {{"error", s.ToString()}}; }

Status ReplyError(const Json& reply, int rank) {
  if (!reply.contains("error")) return Status::Ok();
  return Internal("rank " + std::to_string(rank) + ": " + reply["error"].get<std::string>());
}

}  // namespace

StatusOr<DistillResult> DistillGangPart(const LocalExecutor& local, Communicator* control,
                                      Communicator* device_world, const DistillTask& task,
                                      const ProgressFn& progress) {
  const JobSpec& spec = local.spec();
  HYB_ASSIGN_OR_RETURN(RuntimePlacement placement, ResolvePlacement(local.runtime()));
  HYB_ASSIGN_OR_RETURN(ModelConfig config, ReadTeacherConfig(spec.teacher));
  const ParamCounts params = CountParams(config);
  const int64_t dtype_bytes = placement.dtype == at::kFloat ? 4 : placement.dtype == at::kDouble ? 8 : 2;
  // The smallest rank decides.
  at::Tensor memory = at::tensor({RankMemoryBytes(placement.device)}, at::kLong);
  HYB_RETURN_IF_ERROR(control->AllReduce(memory, ReduceOp::kMin));
  HYB_ASSIGN_OR_RETURN(GangShape shape,
                       ChooseGangShape(spec, control->size(),
                                       params.Total(config.num_layers) * dtype_bytes,
                                       memory.item<int64_t>()));
  const int rank = control->rank();
  const int64_t stage = rank / shape.data, replica = rank % shape.data;
  HYB_ASSIGN_OR_RETURN(auto stages,
                       BalanceStages(std::vector<int64_t>(static_cast<size_t>(config.num_layers),
                                                          params.layer),
                                     params.embedding, config.tie_word_embeddings ? 0 : params.head,
                                     shape.pipeline));
  const auto [first, last] = stages[static_cast<size_t>(stage)];
  std::unique_ptr<Communicator> pipeline, data;
  if (shape.pipeline > 1) {
    HYB_ASSIGN_OR_RETURN(pipeline, device_world->Split(static_cast<int>(replica),
                                                       static_cast<int>(stage), "pipeline"));
  }
  if (shape.data > 1) {
    HYB_ASSIGN_OR_RETURN(data, device_world->Split(static_cast<int>(stage),
                                                   static_cast<int>(replica),
                                                   "stage " + std::to_string(stage) + " replicas"));
  }
  std::string cut;
  for (const auto& [a, b] : stages) {
    cut += (cut.empty() ? "" : ", ") + std::string("[") + std::to_string(a) + ", " +
           std::to_string(b) + ")";
  }
  const Json gang = {{"pipeline", shape.pipeline},
                     {"data", shape.data},
                     {"stages", cut},
                     {"backend", device_world->backend()}};
  if (rank == 0 && progress) {
    Json e = gang;
    e["event"] = "distill_gang";
    progress(e);
  }
  // Only this stage's layers, in the job's dtype on this rank's device.
  HYB_ASSIGN_OR_RETURN(auto teacher_range,
                       DecoderModel::LoadRange(spec.teacher, local.runtime(), first, last));
  std::shared_ptr<const DecoderModel> teacher(std::move(teacher_range));
  std::vector<int64_t> layers;
  for (int64_t l : task.layers) {
    if (l >= first && l < last) layers.push_back(l);
  }
  HYB_ASSIGN_OR_RETURN(LinearMixerOptions mixer, storage::ParseJobMixerOptions(spec.mixer));
  HYB_ASSIGN_OR_RETURN(auto dataset, storage::TokenDataset::Open(spec.distill.data));
  const DistillOptions o = DistillOptionsFromSpec(spec, placement);
  const std::string dir = storage::JobLayout::ForDirectory(local.job_dir()).DistillDir();
  HYB_RETURN_IF_ERROR(storage::MakeDirectories(dir));
  DistillParallel parallel;
  parallel.pipeline = pipeline.get();
  parallel.data = data.get();
  parallel.first_layer = first;
  parallel.last_layer = last;
  HYB_ASSIGN_OR_RETURN(auto distiller,
                       BlockwiseDistiller::Create(teacher, layers, mixer, o, dataset, dir, parallel));
  // The shape rides along in every step event: a service worker's heartbeat carries only its
  // latest event.
  return RunDistiller(*distiller, o, progress, Json{{"gang", gang}});
}

namespace {

// The candidates of a round in contiguous runs, one per rank: sorted by the layer each adds to
// its prefix base (by its layer list without one), then cut into `ranks` runs of equal length
// (the first ones one longer).
std::vector<std::vector<EvaluateTask>> AssignEvaluations(std::vector<EvaluateTask> tasks,
                                                         int ranks) {
  auto key = [](const EvaluateTask& t) {
    std::vector<int64_t> added;
    if (t.prefix_base) {
      std::set<int64_t> base(t.prefix_base->begin(), t.prefix_base->end());
      for (int64_t l : t.linear_layers) {
        if (!base.count(l)) added.push_back(l);
      }
    }
    return std::make_pair(added, t.linear_layers);
  };
  std::stable_sort(tasks.begin(), tasks.end(),
                   [&](const EvaluateTask& a, const EvaluateTask& b) { return key(a) < key(b); });
  std::vector<std::vector<EvaluateTask>> out(static_cast<size_t>(ranks));
  const size_t n = tasks.size(), per = n / static_cast<size_t>(ranks),
               extra = n % static_cast<size_t>(ranks);
  size_t at = 0;
  for (size_t r = 0; r < static_cast<size_t>(ranks); ++r) {
    const size_t len = per + (r < extra ? 1 : 0);
    for (size_t k = 0; k < len; ++k) out[r].push_back(tasks[at++]);
  }
  return out;
}

Json RunEvaluations(LocalExecutor& local, const Json& tasks) {
  Json results = Json::array();
  for (const Json& t : tasks) {
    auto task = EvaluateTask::FromJson(t, "evaluate command");
    if (!task.ok()) return ErrorReply(task.status());
    auto r = local.Evaluate(*task);
    if (!r.ok()) return ErrorReply(r.status().WithContext(task->candidate_id));
    results.push_back(r->ToJson());
  }
  return {{"results", results}};
}

}  // namespace

StatusOr<GangShape> ChooseGangShape(const JobSpec& spec, int64_t ranks, int64_t teacher_bytes,
                                    int64_t rank_memory_bytes) {
  GangShape s;
  const int64_t p = spec.distill.pipeline, d = spec.distill.data_parallel;
  auto mismatch = [&](int64_t pp, int64_t dd) {
    return InvalidArgument("distill.parallel: pipeline " + std::to_string(pp) + " x data " +
                           std::to_string(dd) + " does not equal the " + std::to_string(ranks) +
                           " ranks of this gang");
  };
  if (p > 0 && d > 0) {
    if (p * d != ranks) return mismatch(p, d);
    return GangShape{p, d};
  }
  if (p > 0) {
    if (ranks % p != 0) return mismatch(p, ranks / std::max<int64_t>(1, p));
    return GangShape{p, ranks / p};
  }
  if (d > 0) {
    if (ranks % d != 0) return mismatch(ranks / std::max<int64_t>(1, d), d);
    return GangShape{ranks / d, d};
  }
  // The fewest stages whose share fits (x3: the weights, the stream and taps, the students).
  for (int64_t stages = 1; stages <= ranks; ++stages) {
    if (ranks % stages != 0) continue;
    if (rank_memory_bytes <= 0 || teacher_bytes * 3 / stages <= rank_memory_bytes) {
      s.pipeline = stages;
      s.data = ranks / stages;
      if (spec.distill.batch_size % s.data == 0) return s;
    }
  }
  return InvalidArgument("distill.parallel: no pipeline x data shape of " + std::to_string(ranks) +
                         " ranks fits a teacher of " + std::to_string(teacher_bytes >> 20) +
                         " MiB into " + std::to_string(rank_memory_bytes >> 20) +
                         " MiB per rank with batch_size " +
                         std::to_string(spec.distill.batch_size) + "; give it explicitly");
}

GangExecutor::GangExecutor(std::string job_dir, Communicator* control, Communicator* device_world,
                           GangOptions options)
    : local_(std::move(job_dir), /*defer_teacher=*/true),
      control_(control),
      device_world_(device_world),
      options_(options) {
  control_->set_timeout(options_.idle_timeout);
}

Status GangExecutor::Broadcast(const Json& command) {
  std::string text = command.dump();
  members_idle_ = false;
  return control_->BroadcastString(&text, 0);
}

Status GangExecutor::Stop() {
  if (!members_idle_) return FailedPrecondition("the gang's members are busy; abort it instead");
  return Broadcast({{"op", "stop"}});
}

Status GangExecutor::Validate(const JobSpec& spec) {
  Status own = local_.Validate(spec);
  HYB_RETURN_IF_ERROR(Broadcast({{"op", "validate"}, {"identity", JobIdentity(spec.resolved)}}));
  std::vector<std::string> errors;
  if (!own.ok()) errors.push_back("rank 0: " + own.ToString());
  for (int r = 1; r < control_->size(); ++r) {
    HYB_ASSIGN_OR_RETURN(std::string text, control_->RecvString(r));
    HYB_ASSIGN_OR_RETURN(Json reply, ParseJson(text, "rank " + std::to_string(r) + " reply"));
    if (Status s = ReplyError(reply, r); !s.ok()) errors.push_back(s.message());
  }
  members_idle_ = true;
  if (errors.empty()) return Status::Ok();
  std::string all;
  for (const auto& e : errors) all += (all.empty() ? "" : "; ") + e;
  return FailedPrecondition(all);
}

StatusOr<DistillResult> GangExecutor::Distill(const DistillTask& task, const ProgressFn& progress) {
  HYB_RETURN_IF_ERROR(Broadcast({{"op", "distill"}, {"task", task.ToJson()}}));
  auto own = DistillGangPart(local_, control_, device_world_, task, progress);
  // The others finish within about one step of this rank (each waits on its neighbours with the
  // short timeout): collect them with it.
  control_->set_timeout(options_.timeout);
  std::vector<std::string> errors;
  DistillResult merged;
  std::map<int64_t, LayerDistillSummary> layers;
  if (own.ok()) {
    merged = *own;
    for (const auto& l : own->layers) layers[l.layer] = l;
  } else {
    errors.push_back("rank 0: " + own.status().ToString());
  }
  bool all_replied = true;
  for (int r = 1; r < control_->size(); ++r) {
    auto text = control_->RecvString(r);
    if (!text.ok()) {
      errors.push_back(text.status().ToString());
      all_replied = false;
      break;
    }
    auto reply = ParseJson(*text, "rank " + std::to_string(r) + " reply");
    if (!reply.ok()) return reply.status();
    if (Status s = ReplyError(*reply, r); !s.ok()) {
      errors.push_back(s.message());
      continue;
    }
    auto part = DistillResult::FromJson((*reply)["result"], "rank " + std::to_string(r));
    if (!part.ok()) return part.status();
    for (const auto& l : part->layers) layers[l.layer] = l;
  }
  control_->set_timeout(options_.idle_timeout);
  members_idle_ = all_replied;
  if (!errors.empty()) {
    std::string all;
    for (const auto& e : errors) all += (all.empty() ? "" : "; ") + e;
    // A Cancelled leader (the job is being stopped) stays Cancelled.
    if (!own.ok() && own.status().code() == StatusCode::kCancelled && errors.size() == 1) {
      return own.status();
    }
    return Unavailable("distillation across " + std::to_string(control_->size()) +
                       " ranks failed: " + all);
  }
  merged.layers.clear();
  for (auto& [l, summary] : layers) merged.layers.push_back(std::move(summary));
  return merged;
}

Status GangExecutor::Submit(const EvaluateTask& task) {
  queued_.push_back(task);
  return Status::Ok();
}

StatusOr<EvaluateResult> GangExecutor::NextEvaluation() {
  if (finished_.empty() && !queued_.empty()) {
    const auto assigned = AssignEvaluations(std::move(queued_), control_->size());
    queued_.clear();
    Json assign = Json::array();
    for (const auto& run : assigned) {
      Json tasks = Json::array();
      for (const auto& t : run) tasks.push_back(t.ToJson());
      assign.push_back(tasks);
    }
    HYB_RETURN_IF_ERROR(Broadcast({{"op", "evaluate"}, {"assign", assign}}));
    for (const auto& t : assigned[0]) finished_.push_back(local_.Evaluate(t));
    for (int r = 1; r < control_->size(); ++r) {
      HYB_ASSIGN_OR_RETURN(std::string text, control_->RecvString(r));
      HYB_ASSIGN_OR_RETURN(Json reply, ParseJson(text, "rank " + std::to_string(r) + " reply"));
      if (Status s = ReplyError(reply, r); !s.ok()) {
        finished_.push_back(s);
        continue;
      }
      for (const Json& j : reply["results"]) {
        finished_.push_back(EvaluateResult::FromJson(j, "rank " + std::to_string(r)));
      }
    }
    members_idle_ = true;
  }
  if (finished_.empty()) return FailedPrecondition("no evaluation is outstanding");
  auto next = std::move(finished_.front());
  finished_.pop_front();
  return next;
}

Status GangExecutor::Export(const ExportTask& task) { return local_.Export(task); }

Status RunGangMember(const JobSpec& spec, std::string job_dir, Communicator* control,
                     Communicator* device_world, GangOptions options) {
  control->set_timeout(options.idle_timeout);
  LocalExecutor local(std::move(job_dir), /*defer_teacher=*/true);
  for (;;) {
    std::string text;
    HYB_RETURN_IF_ERROR(control->BroadcastString(&text, 0));
    HYB_ASSIGN_OR_RETURN(Json command, ParseJson(text, "command from rank 0"));
    const std::string op = command.value("op", "");
    Json reply;
    if (op == "stop") return Status::Ok();
    if (op == "validate") {
      Status s = local.Validate(spec);
      if (s.ok() && command.value("identity", Json()) != JobIdentity(spec.resolved)) {
        s = FailedPrecondition("this rank read another job spec than rank 0");
      }
      reply = s.ok() ? Json{{"ok", true}} : ErrorReply(s);
    } else if (op == "distill") {
      auto task = DistillTask::FromJson(command.value("task", Json()), "distill command");
      if (!task.ok()) {
        reply = ErrorReply(task.status());
      } else {
        auto r = DistillGangPart(local, control, device_world, *task, nullptr);
        reply = r.ok() ? Json{{"result", r->ToJson()}} : ErrorReply(r.status());
      }
    } else if (op == "evaluate") {
      const Json& assign = command.value("assign", Json::array());
      reply = static_cast<int>(assign.size()) > control->rank()
                  ? RunEvaluations(local, assign[static_cast<size_t>(control->rank())])
                  : ErrorReply(InvalidArgument("no evaluations assigned to this rank"));
    } else {
      reply = ErrorReply(InvalidArgument("unknown command '" + op + "'"));
    }
    HYB_RETURN_IF_ERROR(control->SendString(reply.dump(), 0));
  }
}

}  // namespace hyb::worker
