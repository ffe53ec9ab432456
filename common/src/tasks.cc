#include "hyb/common/tasks.h"

namespace hyb {
namespace {

template <typename T>
Status ArrayField(const Json& j, const char* key, const std::string& source, T* out) {
  const auto it = j.find(key);
  if (it == j.end() || !it->is_array()) {
    return InvalidArgument(source + ": field '" + key + "' must be an array");
  }
  try {
    *out = it->get<T>();
  } catch (const Json::exception&) {
    return InvalidArgument(source + ": field '" + key + "' must be an array of numbers");
  }
  return Status::Ok();
}

}  // namespace

Json DistillTask::ToJson() const { return {{"job_id", job_id}, {"layers", layers}}; }

StatusOr<DistillTask> DistillTask::FromJson(const Json& j, const std::string& source) {
  JsonObject o(j, source);
  HYB_RETURN_IF_ERROR(o.CheckKnownKeys({"job_id", "layers"}));
  DistillTask t;
  HYB_ASSIGN_OR_RETURN(t.job_id, o.String("job_id"));
  HYB_RETURN_IF_ERROR(ArrayField(j, "layers", source, &t.layers));
  return t;
}

Json DistillResult::ToJson() const {
  Json ls = Json::array();
  for (const auto& l : layers) {
    Json curve = Json::array();
    for (const auto& p : l.curve)
      curve.push_back({{"step", p.step}, {"mse", p.mse}, {"nmse", p.nmse}});
    ls.push_back({{"layer", l.layer},
                  {"step", l.step},
                  {"final_mse", l.curve.empty() ? Json(nullptr) : Json(l.curve.back().mse)},
                  {"final_nmse", l.curve.empty() ? Json(nullptr) : Json(l.curve.back().nmse)},
                  {"curve", std::move(curve)}});
  }
  return {{"steps", steps}, {"tokens", tokens}, {"seconds", seconds}, {"layers", std::move(ls)}};
}

StatusOr<DistillResult> DistillResult::FromJson(const Json& j, const std::string& source) {
  JsonObject o(j, source);
  HYB_RETURN_IF_ERROR(o.CheckKnownKeys({"steps", "tokens", "seconds", "layers"}));
  DistillResult r;
  HYB_ASSIGN_OR_RETURN(r.steps, o.Int("steps"));
  HYB_ASSIGN_OR_RETURN(r.tokens, o.Int("tokens", 0));
  HYB_ASSIGN_OR_RETURN(r.seconds, o.Number("seconds", 0.0));
  if (!j.contains("layers") || !j["layers"].is_array()) {
    return InvalidArgument(source + ": field 'layers' must be an array");
  }
  for (size_t i = 0; i < j["layers"].size(); ++i) {
    const std::string where = source + ": layers[" + std::to_string(i) + "]";
    JsonObject l(j["layers"][i], where);
    LayerDistillSummary s;
    HYB_ASSIGN_OR_RETURN(s.layer, l.Int("layer"));
    HYB_ASSIGN_OR_RETURN(s.step, l.Int("step", 0));
    for (const auto& p : j["layers"][i].value("curve", Json::array())) {
      JsonObject po(p, where + ".curve");
      LayerDistillSummary::Point pt;
      HYB_ASSIGN_OR_RETURN(pt.step, po.Int("step"));
      HYB_ASSIGN_OR_RETURN(pt.mse, po.Number("mse"));
      HYB_ASSIGN_OR_RETURN(pt.nmse, po.Number("nmse"));
      s.curve.push_back(pt);
    }
    r.layers.push_back(std::move(s));
  }
  return r;
}

Json EvaluateTask::ToJson() const {
  return {{"job_id", job_id},
          {"candidate_id", candidate_id},
          {"linear_layers", linear_layers},
          {"split", split},
          {"prefix_base", prefix_base ? Json(*prefix_base) : Json(nullptr)},
          {"record", record}};
}

StatusOr<EvaluateTask> EvaluateTask::FromJson(const Json& j, const std::string& source) {
  JsonObject o(j, source);
  HYB_RETURN_IF_ERROR(o.CheckKnownKeys(
      {"job_id", "candidate_id", "linear_layers", "split", "prefix_base", "record"}));
  EvaluateTask t;
  HYB_ASSIGN_OR_RETURN(t.job_id, o.String("job_id"));
  HYB_ASSIGN_OR_RETURN(t.candidate_id, o.String("candidate_id"));
  HYB_RETURN_IF_ERROR(ArrayField(j, "linear_layers", source, &t.linear_layers));
  HYB_ASSIGN_OR_RETURN(t.split, o.String("split"));
  if (t.split != "validation" && t.split != "test") {
    return o.FieldError("split", "must be \"validation\" or \"test\"");
  }
  if (o.Has("prefix_base")) {
    std::vector<int64_t> base;
    HYB_RETURN_IF_ERROR(ArrayField(j, "prefix_base", source, &base));
    t.prefix_base = std::move(base);
  }
  HYB_ASSIGN_OR_RETURN(t.record, o.Bool("record", false));
  return t;
}

Json EvaluateResult::ToJson() const {
  return {{"candidate_id", candidate_id},
          {"linear_layers", linear_layers},
          {"split", split},
          {"metric", metric},
          {"higher_is_better", higher_is_better},
          {"score", score},
          {"per_example", per_example},
          {"kl", kl ? Json(*kl) : Json(nullptr)},
          {"seconds", seconds},
          {"layer_passes", layer_passes},
          {"first_layer", first_layer},
          {"details", details}};
}

StatusOr<EvaluateResult> EvaluateResult::FromJson(const Json& j, const std::string& source) {
  JsonObject o(j, source);
  HYB_RETURN_IF_ERROR(o.CheckKnownKeys({"candidate_id", "linear_layers", "split", "metric",
                                        "higher_is_better", "score", "per_example", "kl", "seconds",
                                        "layer_passes", "first_layer", "details"}));
  EvaluateResult r;
  HYB_ASSIGN_OR_RETURN(r.candidate_id, o.String("candidate_id"));
  HYB_ASSIGN_OR_RETURN(r.split, o.String("split"));
  HYB_ASSIGN_OR_RETURN(r.metric, o.String("metric"));
  HYB_ASSIGN_OR_RETURN(r.higher_is_better, o.Bool("higher_is_better"));
  HYB_ASSIGN_OR_RETURN(r.score, o.Number("score"));
  HYB_ASSIGN_OR_RETURN(r.kl, o.OptionalNumber("kl"));
  HYB_ASSIGN_OR_RETURN(r.seconds, o.Number("seconds", 0.0));
  HYB_ASSIGN_OR_RETURN(r.layer_passes, o.Int("layer_passes", 0));
  HYB_ASSIGN_OR_RETURN(r.first_layer, o.Int("first_layer", 0));
  if (Status s = ArrayField(j, "linear_layers", source, &r.linear_layers); !s.ok()) {
    return DataLoss(s.message());
  }
  if (Status s = ArrayField(j, "per_example", source, &r.per_example); !s.ok()) {
    return DataLoss(s.message());
  }
  if (j.contains("details")) r.details = j["details"];
  return r;
}

Json ExportTask::ToJson() const {
  return {{"job_id", job_id}, {"linear_layers", linear_layers}, {"name", name}};
}

StatusOr<ExportTask> ExportTask::FromJson(const Json& j, const std::string& source) {
  JsonObject o(j, source);
  HYB_RETURN_IF_ERROR(o.CheckKnownKeys({"job_id", "linear_layers", "name"}));
  ExportTask t;
  HYB_ASSIGN_OR_RETURN(t.job_id, o.String("job_id"));
  HYB_RETURN_IF_ERROR(ArrayField(j, "linear_layers", source, &t.linear_layers));
  HYB_ASSIGN_OR_RETURN(t.name, o.String("name"));
  if (t.name.empty() || t.name.find('/') != std::string::npos || t.name[0] == '.') {
    return o.FieldError("name", "must be a plain directory name");
  }
  return t;
}

StatusOr<EvaluateResult> TaskExecutor::Evaluate(const EvaluateTask& task) {
  HYB_RETURN_IF_ERROR(Submit(task));
  return NextEvaluation();
}

Status SequentialTaskExecutor::Submit(const EvaluateTask& task) {
  queued_.push_back(task);
  return Status::Ok();
}

StatusOr<EvaluateResult> SequentialTaskExecutor::NextEvaluation() {
  if (queued_.empty()) return FailedPrecondition("no evaluation is outstanding");
  const EvaluateTask task = std::move(queued_.front());
  queued_.pop_front();
  auto r = RunEvaluation(task);
  if (!r.ok()) return r.status().WithContext(task.split + " evaluation of " + task.candidate_id);
  return r;
}

}  // namespace hyb
