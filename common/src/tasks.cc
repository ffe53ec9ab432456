#include "hyb/common/tasks.h"

namespace hyb {

Json DistillTask::ToJson() const {
  return {{"job_id", job_id}, {"layers", layers}, {"checkpoint_dir", checkpoint_dir}};
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

Json EvaluateTask::ToJson() const {
  return {{"job_id", job_id}, {"candidate_id", candidate_id}, {"linear_layers", linear_layers},
          {"split", split},   {"cache_base", cache_base},     {"record", record}};
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
  try {
    r.linear_layers = j.at("linear_layers").get<std::vector<int64_t>>();
    r.per_example = j.at("per_example").get<std::vector<double>>();
  } catch (const Json::exception& e) {
    return DataLoss(source + ": 'linear_layers' and 'per_example' must be arrays of numbers");
  }
  if (j.contains("details")) r.details = j["details"];
  return r;
}

Json ExportTask::ToJson() const { return {{"linear_layers", linear_layers}, {"dir", dir}}; }

}  // namespace hyb
