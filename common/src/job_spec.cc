#include "hyb/common/job_spec.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>

#include "hyb/common/json_schema.h"

namespace hyb {
namespace {

const StatusOr<JsonSchema>& Schema() {
  static const StatusOr<JsonSchema> schema = []() -> StatusOr<JsonSchema> {
    HYB_ASSIGN_OR_RETURN(Json j, ParseJson(JobSchemaText(), "job.schema.json"));
    return JsonSchema::Parse(j, "job.schema.json");
  }();
  return schema;
}

std::string Resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || path[0] == '/' || base_dir.empty()) return path;
  return base_dir + "/" + path;
}

}  // namespace

StatusOr<std::string> ResolveTaskMetric(const TaskSpec& task) {
  struct Kind {
    const char* type;
    std::vector<std::string> metrics;  // the first is the default
  };
  static const Kind kKinds[] = {{"multiple_choice", {"acc", "acc_norm"}},
                                {"generate", {"exact_match", "contains", "f1"}},
                                {"lm", {"loss"}},
                                {"kl_to_teacher", {"kl"}}};
  for (const Kind& k : kKinds) {
    if (task.type != k.type) continue;
    if (task.metric.empty()) return k.metrics.front();
    if (k.metrics.size() == 1) {
      return InvalidArgument("task.metric: " + task.type + " tasks have one metric (" +
                             k.metrics.front() + ") and take no task.metric, got '" +
                             task.metric + "'");
    }
    if (std::find(k.metrics.begin(), k.metrics.end(), task.metric) != k.metrics.end()) {
      return task.metric;
    }
    std::string list;
    for (const auto& m : k.metrics) list += (list.empty() ? "" : ", ") + m;
    return InvalidArgument("task.metric: '" + task.metric + "' is not a metric of " + task.type +
                           " tasks (" + list + ")");
  }
  return InvalidArgument("task.type: unknown task type '" + task.type + "'");
}

StatusOr<JobSpec> ParseJobSpec(std::string_view text, const std::string& source,
                               const std::string& base_dir) {
  const auto& schema = Schema();
  if (!schema.ok())
    return Internal("the built-in job schema is broken: " + schema.status().ToString());
  HYB_ASSIGN_OR_RETURN(Json doc, ParseJson(text, source));
  HYB_RETURN_IF_ERROR(schema->Validate(doc, source));
  Json j = schema->WithDefaults(doc);
  // Paths become absolute-or-as-given relative to the job file, once, here.
  j["teacher"] = Resolve(base_dir, j["teacher"].get<std::string>());
  j["distill"]["data"] = Resolve(base_dir, j["distill"]["data"].get<std::string>());
  j["task"]["validation"] = Resolve(base_dir, j["task"]["validation"].get<std::string>());
  if (j["task"].contains("test")) {
    j["task"]["test"] = Resolve(base_dir, j["task"]["test"].get<std::string>());
  }
  JobSpec s;
  s.job_id = j["job_id"];
  s.teacher = j["teacher"];
  s.device = j["device"];
  s.dtype = j["dtype"];
  s.threads = j["threads"];
  s.mixer = j["mixer"];
  const Json& d = j["distill"];
  s.distill.data = d["data"];
  s.distill.steps = d["steps"];
  s.distill.batch_size = d["batch_size"];
  s.distill.sequence_length = d["sequence_length"];
  s.distill.lr = d["lr"];
  s.distill.warmup_steps = d["warmup_steps"];
  s.distill.min_lr_ratio = d["min_lr_ratio"];
  s.distill.weight_decay = d["weight_decay"];
  s.distill.grad_clip = d["grad_clip"];
  s.distill.checkpoint_every = d["checkpoint_every"];
  s.distill.log_every = d["log_every"];
  s.distill.seed = d["seed"].get<uint64_t>();
  s.distill.calibrate_output_scale = d["calibrate_output_scale"];
  if (d.contains("parallel")) {
    s.distill.pipeline = d["parallel"].value("pipeline", int64_t{0});
    s.distill.data_parallel = d["parallel"].value("data", int64_t{0});
  }
  const Json& t = j["task"];
  s.task.name = t["name"];
  s.task.type = t["type"];
  s.task.validation = t["validation"];
  s.task.test = t.value("test", "");
  s.task.max_validation_examples = t["max_validation_examples"];
  s.task.max_test_examples = t["max_test_examples"];
  s.task.max_new_tokens = t["max_new_tokens"];
  s.task.add_special_tokens = t["add_special_tokens"];
  s.task.metric = t.value("metric", "");
  const Json& r = j["search"];
  if (r.contains("tolerance")) s.search.tolerance = r["tolerance"].get<double>();
  if (r.contains("p_min")) s.search.p_min = r["p_min"].get<double>();
  s.search.max_linear_layers = r["max_linear_layers"];
  if (r.contains("layers")) s.search.layers = r["layers"].get<std::vector<int64_t>>();
  s.search.bootstrap_samples = r["bootstrap_samples"];
  s.search.seed = r["seed"].get<uint64_t>();
  s.search.prefix_cache = r["prefix_cache"];
  if (r["prefix_cache_max_mb"].is_number_integer()) {
    s.search.prefix_cache_max_mb = r["prefix_cache_max_mb"].get<int64_t>();
  }  // else "auto"
  s.search.kl_examples = r["kl_examples"];
  s.search.criterion = r["criterion"];
  s.search.eval_batch_tokens = r["eval_batch_tokens"];
  s.search.eval_max_batch_size = r["eval_max_batch_size"];
  if (j.contains("compare_placements")) {
    s.compare_placements.enabled = true;
    s.compare_placements.random = j["compare_placements"]["random"];
    s.compare_placements.seed = j["compare_placements"]["seed"].get<uint64_t>();
  }
  s.resolved = std::move(j);
  return s;
}

JobSpec ResolvePaths(JobSpec spec, const std::string& root) {
  spec.teacher = Resolve(root, spec.teacher);
  spec.distill.data = Resolve(root, spec.distill.data);
  spec.task.validation = Resolve(root, spec.task.validation);
  spec.task.test = Resolve(root, spec.task.test);
  return spec;
}

Json JobIdentity(const Json& resolved) {
  Json j = resolved;
  if (j.contains("distill") && j["distill"].is_object()) j["distill"].erase("parallel");
  if (j.contains("search") && j["search"].is_object()) {
    for (const char* field :
         {"prefix_cache", "prefix_cache_max_mb", "eval_batch_tokens", "eval_max_batch_size"}) {
      j["search"].erase(field);
    }
  }
  return j;
}

}  // namespace hyb
