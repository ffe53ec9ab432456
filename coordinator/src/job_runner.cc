#include "hyb/coordinator/job_runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "hyb/coordinator/greedy_search.h"
#include "hyb/coordinator/job_validation.h"
#include "hyb/coordinator/report_html.h"
#include "hyb/storage/atomic_file.h"
#include "hyb/storage/env.h"
#include "hyb/storage/fingerprint.h"

namespace hyb::coordinator {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string Fmt(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

std::string Layers(const std::vector<int64_t>& layers) {
  if (layers.empty()) return "none";
  std::string s;
  for (size_t i = 0; i < layers.size(); ++i) s += (i ? "," : "") + std::to_string(layers[i]);
  return s;
}

std::string Duration(double s) {
  s = std::round(s);
  if (s < 90) return Fmt("%.0fs", s);
  if (s < 5400) return Fmt("%.0fm", std::floor(s / 60)) + Fmt("%02.0fs", std::fmod(s, 60));
  return Fmt("%.1fh", s / 3600);
}

std::string NowUtc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool IsTeacherFile(const std::string& name) {
  const std::string ext = ".safetensors";
  return name == "config.json" || name == "tokenizer.json" ||
         name == "model.safetensors.index.json" ||
         (name.size() > ext.size() && name.compare(name.size() - ext.size(), ext.size(), ext) == 0);
}

// A file's or a directory's fingerprints; null where the path does not exist (the executor's
// validation is what requires inputs to exist).
StatusOr<Json> PathFingerprint(const std::string& path, bool (*keep)(const std::string&)) {
  if (path.empty() || !storage::PathExists(path)) return Json(nullptr);
  if (storage::IsDirectory(path)) return storage::FingerprintDirectory(path, keep);
  HYB_ASSIGN_OR_RETURN(std::string fingerprint, storage::FingerprintFile(path));
  return Json(fingerprint);
}

// What the job's stored results are computed from: the teacher's config, tokenizer and
// weights, the distillation data and the task files.
StatusOr<Json> InputFingerprints(const JobSpec& spec) {
  Json out = Json::object();
  HYB_ASSIGN_OR_RETURN(out["teacher"], PathFingerprint(spec.teacher, IsTeacherFile));
  HYB_ASSIGN_OR_RETURN(out["distill.data"], PathFingerprint(spec.distill.data, nullptr));
  HYB_ASSIGN_OR_RETURN(out["task.validation"], PathFingerprint(spec.task.validation, nullptr));
  HYB_ASSIGN_OR_RETURN(out["task.test"], PathFingerprint(spec.task.test, nullptr));
  return out;
}

// "teacher/model.safetensors, task.test": the inputs whose fingerprints differ. Flattened, each
// file is one key ("/teacher/model.safetensors"; a missing input is null).
std::string ChangedInputs(const Json& before, const Json& now) {
  const Json a = before.flatten(), b = now.flatten();
  std::set<std::string> keys;
  for (const auto& [key, v] : a.items()) keys.insert(key);
  for (const auto& [key, v] : b.items()) keys.insert(key);
  std::string out;
  for (const auto& key : keys) {
    if (a.value(key, Json()) == b.value(key, Json())) continue;
    out += (out.empty() ? "" : ", ") + key.substr(1);
  }
  return out;
}

}  // namespace

std::vector<int64_t> UniformPlacement(const std::vector<int64_t>& eligible, int64_t k) {
  std::vector<int64_t> out;
  const auto n = static_cast<int64_t>(eligible.size());
  if (k <= 0 || n == 0) return out;
  k = std::min(k, n);
  for (int64_t i = 0; i < k; ++i) {
    const auto idx = static_cast<int64_t>(std::floor(
        (static_cast<double>(i) + 0.5) * static_cast<double>(n) / static_cast<double>(k)));
    out.push_back(eligible[static_cast<size_t>(std::min(idx, n - 1))]);
  }
  return out;
}

StatusOr<std::vector<int64_t>> DistillLossPlacement(const Json& distill_report,
                                                    const std::vector<int64_t>& eligible,
                                                    int64_t k) {
  std::vector<std::pair<double, int64_t>> ranked;  // (final nmse, layer)
  for (int64_t l : eligible) {
    std::optional<double> nmse;
    for (const auto& layer : distill_report.value("layers", Json::array())) {
      if (layer.value("layer", int64_t{-1}) == l && layer.contains("final_nmse") &&
          layer["final_nmse"].is_number()) {
        nmse = layer["final_nmse"].get<double>();
      }
    }
    if (!nmse) {
      return FailedPrecondition("the distillation result has no final loss (final_nmse) for layer " +
                                std::to_string(l));
    }
    ranked.emplace_back(*nmse, l);
  }
  std::sort(ranked.begin(), ranked.end());
  std::vector<int64_t> out;
  for (size_t i = 0; i < ranked.size() && static_cast<int64_t>(i) < k; ++i) {
    out.push_back(ranked[i].second);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<int64_t> SensitivityPlacement(const GreedySearch& search, int64_t k) {
  std::vector<int64_t> out;
  if (search.rounds().empty()) return out;
  std::vector<ScoredCandidate> round1 = search.rounds().front().candidates;
  std::stable_sort(round1.begin(), round1.end(),
                   [&](const ScoredCandidate& a, const ScoredCandidate& b) {
                     return search.Better(a, b);
                   });
  for (size_t i = 0; i < round1.size() && static_cast<int64_t>(i) < k; ++i) {
    out.push_back(round1[i].candidate.layer);
  }
  std::sort(out.begin(), out.end());
  return out;
}

JobRunner::JobRunner(JobSpec spec, TaskExecutor* executor, RunOptions options)
    : spec_(std::move(spec)),
      executor_(executor),
      options_(std::move(options)),
      layout_(options_.storage_root, spec_.job_id) {}

void JobRunner::Print(const std::string& line) const {
  if (options_.print) options_.print(line);
}

Status JobRunner::Event(Json event) const {
  event["time"] = NowUtc();
  event["job_id"] = spec_.job_id;
  HYB_RETURN_IF_ERROR(storage::AppendLine(storage::Env::Default(), layout_.Events(), event.dump())
                          .WithContext("recording a progress event"));
  if (options_.on_event) options_.on_event(event);
  return Status::Ok();
}

Status JobRunner::Validate() {
  // Everything that needs no LibTorch first (the same checks as --validate-only and the API's
  // validate_only), then what the executor's runtime checks (the teacher loads).
  HYB_ASSIGN_OR_RETURN(ValidatedJob validated,
                       options_.validate ? options_.validate(spec_) : ValidateJob(spec_));
  num_layers_ = validated.num_layers;
  family_ = validated.family;
  HYB_RETURN_IF_ERROR(executor_->Validate(spec_));
  // Resume only the same job on the same inputs.
  HYB_ASSIGN_OR_RETURN(const Json inputs, InputFingerprints(spec_));
  const std::string stored = layout_.JobSpec();
  if (storage::PathExists(stored)) {
    HYB_ASSIGN_OR_RETURN(Json previous, ReadJsonFile(stored));
    if (JobIdentity(previous) != JobIdentity(spec_.resolved)) {
      return FailedPrecondition(stored + " holds a different spec for job '" + spec_.job_id +
                                "'; use another job_id or remove " + layout_.dir());
    }
    if (storage::PathExists(layout_.Inputs())) {
      HYB_ASSIGN_OR_RETURN(Json before, ReadJsonFile(layout_.Inputs()));
      const std::string changed = ChangedInputs(before, inputs);
      if (!changed.empty()) {
        return FailedPrecondition("inputs of job '" + spec_.job_id +
                                  "' changed since it started (" + changed + "; fingerprints in " +
                                  layout_.Inputs() +
                                  "): its stored results come from the old ones; use another "
                                  "job_id or remove " +
                                  layout_.dir());
      }
    }
    Print("resuming job " + spec_.job_id + " in " + layout_.dir());
  }
  HYB_RETURN_IF_ERROR(layout_.CreateDirectories());
  HYB_RETURN_IF_ERROR(storage::AtomicWriteString(layout_.Inputs(), inputs.dump(2) + "\n"));
  return storage::AtomicWriteString(stored, spec_.resolved.dump(2) + "\n");
}

Status JobRunner::Distill(Json* distill_report) {
  std::vector<int64_t> layers = spec_.search.layers;
  if (layers.empty()) {
    for (int64_t l = 0; l < num_layers_; ++l) layers.push_back(l);
  }
  std::sort(layers.begin(), layers.end());
  if (storage::PathExists(layout_.DistillResult())) {
    HYB_ASSIGN_OR_RETURN(*distill_report, ReadJsonFile(layout_.DistillResult()));
    Print("distillation: finished earlier (" + layout_.DistillResult() + ")");
    return Status::Ok();
  }
  DistillTask task{spec_.job_id, layers};
  HYB_RETURN_IF_ERROR(
      Event({{"event", "task_started"}, {"task", "distill"}, {"spec", task.ToJson()}}));
  Print("distilling layers " + Layers(layers) + ": " + std::to_string(spec_.distill.steps) +
        " steps of " + std::to_string(spec_.distill.batch_size) + " x " +
        std::to_string(spec_.distill.sequence_length) + " tokens");
  const auto start = Clock::now();
  auto last = Clock::now() - std::chrono::hours(1);
  int64_t first_step = -1;
  Status event_error;
  auto progress = [&](const Json& e) {
    if (e.value("event", "") == "distill_gang_attempt") {
      // The service formed (or re-formed) a gang of workers for distillation.
      Print("distillation gang attempt " + std::to_string(e.value("attempt", 0)) + ": " +
            std::to_string(e.value("size", 0)) + " workers, leased all at once");
      event_error = Event(e);
      return event_error.ok();
    }
    if (e.value("event", "") == "distill_gang") {
      // How a gang of ranks split the work (hybridize run --mpi, a service gang).
      Print("distilling on " + std::to_string(e.value("pipeline", 1) * e.value("data", 1)) +
            " ranks: pipeline " + std::to_string(e.value("pipeline", 1)) + " x data " +
            std::to_string(e.value("data", 1)) + ", stages " + e.value("stages", "") + " over " +
            e.value("backend", ""));
      event_error = Event(e);
      return event_error.ok();
    }
    const int64_t step = e.value("step", int64_t{0});
    if (first_step < 0) first_step = step;
    const bool final = step >= spec_.distill.steps;
    if (!final && Since(last) < options_.progress_interval_s) return true;
    last = Clock::now();
    std::string line = "distill step " + std::to_string(step) + "/" +
                       std::to_string(spec_.distill.steps) + " | nmse";
    for (const auto& l : e.value("layers", Json::array())) {
      line += " " + std::to_string(l.value("layer", -1)) + ":" + Fmt("%.3f", l.value("nmse", 0.0));
    }
    const double elapsed = Since(start);
    const double rate = static_cast<double>(step - first_step + 1) / std::max(elapsed, 1e-9);
    line += " | " + Fmt("%.1f", rate) + " steps/s";
    if (!final) {
      line += " | ETA " + Duration(static_cast<double>(spec_.distill.steps - step) / rate);
    }
    Print(line);
    Json event = e;
    event["steps"] = spec_.distill.steps;
    if (!final) event["eta_seconds"] = static_cast<double>(spec_.distill.steps - step) / rate;
    event_error = Event(event);
    return event_error.ok();  // stop rather than train on unrecorded
  };
  auto result = executor_->Distill(task, progress);
  HYB_RETURN_IF_ERROR(event_error);
  if (!result.ok()) return result.status();
  *distill_report = result->ToJson();
  HYB_RETURN_IF_ERROR(
      Event({{"event", "task_finished"}, {"task", "distill"}, {"seconds", result->seconds}}));
  return storage::AtomicWriteString(layout_.DistillResult(), distill_report->dump(2) + "\n");
}

StatusOr<std::optional<EvaluateResult>> JobRunner::LoadStored(const EvaluateTask& task) const {
  const std::string path = layout_.Evaluation(task.split, task.candidate_id);
  if (!storage::PathExists(path)) return std::optional<EvaluateResult>();
  HYB_ASSIGN_OR_RETURN(Json j, ReadJsonFile(path));
  HYB_ASSIGN_OR_RETURN(EvaluateResult r, EvaluateResult::FromJson(j, path));
  return std::optional<EvaluateResult>(std::move(r));
}

Status JobRunner::Store(const EvaluateResult& r) const {
  // JSON has no NaN or infinity (they would be stored as null and break a resume).
  if (!std::isfinite(r.score) || (r.kl && !std::isfinite(*r.kl)) ||
      std::any_of(r.per_example.begin(), r.per_example.end(),
                  [](double v) { return !std::isfinite(v); })) {
    return Internal(r.split + " evaluation of " + r.candidate_id +
                    " produced a non-finite score (score " + std::to_string(r.score) + ")");
  }
  HYB_RETURN_IF_ERROR(storage::AtomicWriteString(layout_.Evaluation(r.split, r.candidate_id),
                                                 r.ToJson().dump() + "\n"));
  return Event({{"event", "evaluated"},
                {"split", r.split},
                {"candidate_id", r.candidate_id},
                {"linear_layers", r.linear_layers},
                {"score", r.score},
                {"seconds", r.seconds}});
}

StatusOr<EvaluateResult> JobRunner::EvaluateStored(const EvaluateTask& task) {
  HYB_ASSIGN_OR_RETURN(std::optional<EvaluateResult> stored, LoadStored(task));
  if (stored) return std::move(*stored);
  HYB_ASSIGN_OR_RETURN(EvaluateResult r, executor_->Evaluate(task));
  HYB_RETURN_IF_ERROR(Store(r));
  return r;
}

StatusOr<RunOutcome> JobRunner::Run() {
  Json timings = Json::array();
  auto phase_start = Clock::now();
  auto end_phase = [&](const std::string& name) {
    timings.push_back({{"phase", name}, {"seconds", Since(phase_start)}});
    phase_start = Clock::now();
  };

  // --- VALIDATING -------------------------------------------------------------------------
  if (Status s = Validate(); !s.ok()) return s.WithContext("validating");
  HYB_RETURN_IF_ERROR(
      Event({{"event", "phase"}, {"phase", "validating"}, {"job_id", spec_.job_id}}));
  end_phase("validating");

  // --- DISTILLING -------------------------------------------------------------------------
  HYB_RETURN_IF_ERROR(Event({{"event", "phase"}, {"phase", "distilling"}}));
  Json distill_report;
  if (Status s = Distill(&distill_report); !s.ok()) return s.WithContext("distilling");
  end_phase("distilling");

  // --- SEARCHING --------------------------------------------------------------------------
  HYB_RETURN_IF_ERROR(Event({{"event", "phase"}, {"phase", "searching"}}));
  const auto search_start = Clock::now();
  int64_t layer_passes = 0;
  EvaluateTask teacher_task{spec_.job_id, CandidateId({}), {}, "validation"};
  if (spec_.search.prefix_cache) teacher_task.prefix_base = std::vector<int64_t>{};
  auto teacher = EvaluateStored(teacher_task);
  if (!teacher.ok()) return teacher.status().WithContext("searching: teacher");
  // Layer passes count every evaluation the search used, stored ones included (a resumed run
  // reports what the whole search cost, plus any cache base it had to record again).
  layer_passes += teacher->layer_passes;
  Print("teacher: validation " + teacher->metric + " " + Fmt("%.4f", teacher->score) + " (" +
        std::to_string(teacher->per_example.size()) + " examples, " +
        Fmt("%.1fs", teacher->seconds) + ")");
  SearchOptions so;
  so.tolerance = spec_.search.tolerance;
  so.p_min = spec_.search.p_min;
  so.higher_is_better = teacher->higher_is_better;
  so.eligible_layers = spec_.search.layers;
  so.max_linear_layers = spec_.search.max_linear_layers;
  so.bootstrap_samples = spec_.search.bootstrap_samples;
  so.seed = spec_.search.seed;
  so.proportion = IsProportionMetric(teacher->metric);
  auto criterion = ParseSearchCriterion(spec_.search.criterion);
  if (!criterion.ok()) return criterion.status().WithContext("searching");
  so.criterion = *criterion;
  auto created = GreedySearch::Create(num_layers_, so);
  if (!created.ok()) return created.status().WithContext("searching");
  GreedySearch search = std::move(created).value();
  CandidateResult tr{teacher->score, teacher->per_example, teacher->kl, teacher->seconds,
                     teacher->layer_passes};
  if (Status s = search.SetTeacher(tr); !s.ok()) return s.WithContext("searching");
  Print("p_full " + Fmt("%.4f", search.p_full()) + ", p_min " + Fmt("%.4f", search.p_min()) +
        (search.p_min_count() ? " (" + std::to_string(*search.p_min_count()) + " of " +
                                    std::to_string(teacher->per_example.size()) + " examples)"
                              : "") +
        ", criterion " + spec_.search.criterion);
  double candidate_seconds = 0;
  int64_t candidates_run = 0;
  while (!search.done()) {
    const auto round_candidates = search.RoundCandidates();
    const int64_t round = static_cast<int64_t>(search.rounds().size());
    const std::vector<int64_t> base = search.trajectory().back().linear_layers;
    // Worst case left: this round's and every later round's candidates.
    int64_t left_worst = 0;
    for (int64_t k = static_cast<int64_t>(round_candidates.size()); k > 0; --k) left_worst += k;
    int64_t done_in_round = 0;
    // Stored results first (a resumed job), then every other candidate of the round at once:
    // the executor runs them concurrently where it can and reports them as they finish.
    std::vector<std::pair<EvaluateResult, bool>> arrived;  // result, stored
    int64_t outstanding = 0;
    for (const Candidate& c : round_candidates) {
      EvaluateTask task{spec_.job_id, c.id,         c.linear_layers,
                        "validation", std::nullopt, spec_.search.prefix_cache};
      if (spec_.search.prefix_cache) task.prefix_base = base;
      auto stored = LoadStored(task);
      if (!stored.ok()) return stored.status().WithContext("searching: " + c.id);
      if (stored->has_value()) {
        arrived.push_back({std::move(**stored), true});
        continue;
      }
      if (Status s = executor_->Submit(task); !s.ok()) {
        return s.WithContext("searching: submitting " + c.id);
      }
      ++outstanding;
    }
    size_t next_stored = 0;
    while (next_stored < arrived.size() || outstanding > 0) {
      EvaluateResult r;
      bool stored = false;
      if (next_stored < arrived.size()) {
        r = arrived[next_stored].first;
        stored = true;
        ++next_stored;
      } else {
        auto got = executor_->NextEvaluation();
        if (!got.ok()) return got.status().WithContext("searching: round " + std::to_string(round));
        --outstanding;
        if (Status s = Store(*got); !s.ok()) return s.WithContext("searching");
        r = std::move(got).value();
        candidate_seconds += r.seconds;
        ++candidates_run;
      }
      layer_passes += r.layer_passes;
      ++done_in_round;
      CandidateResult cr{r.score, r.per_example, r.kl, r.seconds, r.layer_passes};
      if (Status s = search.Report(r.candidate_id, cr); !s.ok()) return s.WithContext("searching");
      const double mean =
          candidates_run > 0 ? candidate_seconds / static_cast<double>(candidates_run) : 0;
      const int64_t remaining = left_worst - done_in_round;
      const auto& scored = search.rounds()[static_cast<size_t>(round - 1)];
      int64_t layer = -1;
      for (const Candidate& c : round_candidates) {
        if (c.id == r.candidate_id) layer = c.layer;
      }
      std::string line = "round " + std::to_string(round) + " [" + std::to_string(done_in_round) +
                         "/" + std::to_string(round_candidates.size()) + "] layer " +
                         std::to_string(layer) + " -> linear {" + Layers(r.linear_layers) +
                         "}: " + r.metric + " " + Fmt("%.4f", r.score) + " (delta " +
                         Fmt("%+.4f", r.score - scored.base_score) + ")";
      if (r.kl) line += ", kl " + Fmt("%.4f", *r.kl);
      line += stored ? ", stored" : ", " + Fmt("%.1fs", r.seconds);
      if (mean > 0 && remaining > 0)
        line += ", ETA <= " + Duration(mean * static_cast<double>(remaining));
      Print(line);
      HYB_RETURN_IF_ERROR(Event({{"event", "candidate"},
                                 {"round", round},
                                 {"layer", layer},
                                 {"candidate_id", r.candidate_id},
                                 {"linear_layers", r.linear_layers},
                                 {"score", r.score},
                                 {"kl", r.kl ? Json(*r.kl) : Json(nullptr)},
                                 {"stored", stored},
                                 {"scored", done_in_round},
                                 {"of", round_candidates.size()},
                                 {"eta_seconds", mean * static_cast<double>(remaining)}}));
    }
    const SearchRound& decided = search.rounds()[static_cast<size_t>(round - 1)];
    for (const auto& sc : decided.candidates) {
      if (sc.candidate.layer != decided.best_layer) continue;
      Print("round " + std::to_string(round) + ": best layer " +
            std::to_string(sc.candidate.layer) + " " + Fmt("%.4f", sc.result.score) +
            " [delta 95% CI " + Fmt("%+.4f", sc.delta_ci_low) + ", " +
            Fmt("%+.4f", sc.delta_ci_high) + "] -> " +
            (decided.committed             ? "committed"
             : search.Meets(sc.result.score) ? "meets p_min, but its 95% bound against the "
                                               "teacher is beyond the tolerance (criterion "
                                               "confident), stop"
                                             : "below p_min, stop"));
    }
    HYB_RETURN_IF_ERROR(Event({{"event", "round"},
                               {"round", round},
                               {"best_layer", decided.best_layer},
                               {"committed", decided.committed}}));
  }
  const double search_seconds = Since(search_start);
  Print("search stopped: " + search.stop_reason());
  end_phase("searching");

  // --- EXPORTING --------------------------------------------------------------------------
  HYB_RETURN_IF_ERROR(Event({{"event", "phase"}, {"phase", "exporting"}}));
  // M_best is the best hybrid the search scored; M_opt the most-linear committed one, absent
  // when no hybrid meets P_min (then nothing pretends to be M_opt, and the report says so).
  const std::optional<TrajectoryPoint> best = search.best();
  const std::optional<TrajectoryPoint> opt = search.optimal();
  std::vector<std::pair<std::string, TrajectoryPoint>> hybrids;
  if (best) hybrids.emplace_back("m_best", *best);
  if (opt) hybrids.emplace_back("m_opt", *opt);
  for (const auto& [name, point] : hybrids) {
    const std::string dir = layout_.Export(name);
    if (storage::PathExists(dir)) continue;
    if (Status s = executor_->Export({spec_.job_id, point.linear_layers, name}); !s.ok()) {
      return s.WithContext("exporting " + name);
    }
    Print("exported " + name + " (linear " + Layers(point.linear_layers) + ") to " + dir);
  }
  if (!opt) Print("no hybrid meets p_min: there is no m_opt");
  const bool has_test = !spec_.task.test.empty();
  auto test_result = [&](const std::vector<int64_t>& layers) -> StatusOr<EvaluateResult> {
    auto r = EvaluateStored({spec_.job_id, CandidateId(layers), layers, "test"});
    if (!r.ok()) return r.status().WithContext("exporting: test split");
    return r;
  };
  // Paired bootstrap 95% interval of mean(a - b) over the test examples, seeded by `name`.
  auto test_interval = [&](const EvaluateResult& a, const EvaluateResult& b,
                           const std::string& name) -> StatusOr<Json> {
    HYB_ASSIGN_OR_RETURN(auto ci, PairedBootstrapInterval(
                                      a.per_example, b.per_example, spec_.search.bootstrap_samples,
                                      spec_.search.seed ^ Fnv1a64(name)));
    return Json::array({ci.first, ci.second});
  };
  std::optional<EvaluateResult> teacher_test;
  if (has_test) {
    HYB_ASSIGN_OR_RETURN(teacher_test, test_result({}));
  }
  Json models = Json::array();
  models.push_back({{"name", "teacher"},
                    {"linear_layers", Json::array()},
                    {"validation", search.p_full()},
                    {"test", teacher_test ? Json(teacher_test->score) : Json(nullptr)},
                    {"meets_p_min", search.Meets(search.p_full())},
                    {"dir", ""}});
  for (const auto& [name, point] : hybrids) {
    Json m = {{"name", name},
              {"linear_layers", point.linear_layers},
              {"validation", point.score},
              {"test", nullptr},
              {"meets_p_min", search.Meets(point.score)},
              {"dir", "exports/" + name}};
    if (has_test) {
      HYB_ASSIGN_OR_RETURN(const EvaluateResult t, test_result(point.linear_layers));
      m["test"] = t.score;
      m["test_minus_teacher"] = t.score - teacher_test->score;
      HYB_ASSIGN_OR_RETURN(m["test_minus_teacher_ci95"],
                           test_interval(t, *teacher_test, name + "/teacher"));
    }
    models.push_back(std::move(m));
  }
  Json placements;
  const auto k = opt ? static_cast<int64_t>(opt->linear_layers.size()) : 0;
  if (spec_.compare_placements.enabled && has_test && k > 0) {
    placements = Json::array();
    const std::vector<int64_t> eligible = search.options().eligible_layers;
    HYB_ASSIGN_OR_RETURN(const std::vector<int64_t> by_loss,
                         DistillLossPlacement(distill_report, eligible, k));
    std::vector<std::pair<std::string, std::vector<int64_t>>> sets = {
        {"greedy", opt->linear_layers},
        {"distill_loss", by_loss},
        {"sensitivity", SensitivityPlacement(search, k)},
        {"uniform", UniformPlacement(eligible, k)}};
    // Random placements avoid greedy's and uniform's (the set earlier reports drew from).
    std::mt19937_64 rng(spec_.compare_placements.seed);
    std::set<std::vector<int64_t>> seen = {sets[0].second, sets[3].second};
    for (int64_t i = 0, tries = 0; i < spec_.compare_placements.random && tries < 1000; ++tries) {
      std::vector<int64_t> pool = eligible;
      std::shuffle(pool.begin(), pool.end(), rng);
      std::vector<int64_t> pick(pool.begin(), pool.begin() + k);
      std::sort(pick.begin(), pick.end());
      if (!seen.insert(pick).second && tries < 100) continue;  // prefer distinct placements
      sets.push_back({"random-" + std::to_string(++i), pick});
    }
    HYB_ASSIGN_OR_RETURN(const EvaluateResult greedy, test_result(opt->linear_layers));
    for (const auto& [name, layers] : sets) {
      HYB_ASSIGN_OR_RETURN(const EvaluateResult t, test_result(layers));
      Json p = {{"name", name}, {"linear_layers", layers}, {"test", t.score}};
      std::string line = "placement " + name + " {" + Layers(layers) + "}: test " +
                         Fmt("%.4f", t.score);
      if (name != "greedy") {
        p["minus_greedy"] = t.score - greedy.score;
        HYB_ASSIGN_OR_RETURN(p["minus_greedy_ci95"], test_interval(t, greedy, name + "/greedy"));
        line += " (minus greedy " + Fmt("%+.4f", t.score - greedy.score) + " [" +
                Fmt("%+.4f", p["minus_greedy_ci95"][0].get<double>()) + ", " +
                Fmt("%+.4f", p["minus_greedy_ci95"][1].get<double>()) + "])";
      }
      placements.push_back(std::move(p));
      Print(line);
    }
  }
  end_phase("exporting");

  // --- REPORT -----------------------------------------------------------------------------
  Json search_json = search.ToJson();
  search_json["layer_passes"] = layer_passes;
  search_json["seconds"] = search_seconds;
  search_json["prefix_cache"] = spec_.search.prefix_cache;
  Json report = {
      {"format", "hyb-report-v1"},
      {"job_id", spec_.job_id},
      {"created", NowUtc()},
      {"teacher", {{"path", spec_.teacher}, {"num_layers", num_layers_}, {"family", family_}}},
      {"mixer", spec_.mixer},
      {"task",
       {{"name", spec_.task.name},
        {"type", spec_.task.type},
        {"metric", teacher->metric},
        {"higher_is_better", teacher->higher_is_better},
        {"validation_examples", teacher->per_example.size()}}},
      {"distill", distill_report},
      {"search", search_json},
      {"outcome", opt ? "m_opt has " + std::to_string(opt->linear_layers.size()) +
                            " linear layers and meets p_min"
                      : std::string("no hybrid meets p_min: there is no m_opt")},
      {"models", models},
      {"timings", timings}};
  if (teacher_test) report["task"]["test_examples"] = teacher_test->per_example.size();
  if (!placements.is_null()) report["placements"] = placements;
  HYB_RETURN_IF_ERROR(storage::AtomicWriteString(layout_.ReportJson(), report.dump(2) + "\n"));
  auto html = RenderReportHtml(report);
  if (!html.ok()) return html.status().WithContext("rendering report.html");
  HYB_RETURN_IF_ERROR(storage::AtomicWriteString(layout_.ReportHtml(), *html));
  HYB_RETURN_IF_ERROR(Event({{"event", "phase"}, {"phase", "succeeded"}}));

  std::ostringstream sum;
  sum << "job " << spec_.job_id << ": " << num_layers_ << "-layer " << family_ << " teacher, "
      << spec_.mixer.value("type", std::string("?")) << " mixers, task " << spec_.task.name << " ("
      << teacher->metric << ", " << (teacher->higher_is_better ? "higher" : "lower")
      << " is better)\n";
  sum << "  p_full " << Fmt("%.4f", search.p_full()) << "  p_min " << Fmt("%.4f", search.p_min())
      << "  criterion " << spec_.search.criterion << "  stop: " << search.stop_reason() << "\n";
  if (!opt) sum << "  no hybrid meets p_min: there is no m_opt\n";
  sum << "  model     linear layers          validation   test\n";
  for (const auto& m : models) {
    char line[160];
    const std::string layers = "{" + Layers(m["linear_layers"].get<std::vector<int64_t>>()) + "}";
    std::snprintf(line, sizeof(line), "  %-9s %-22s %-12.4f %s\n",
                  m["name"].get<std::string>().c_str(), layers.c_str(),
                  m["validation"].get<double>(),
                  m["test"].is_number() ? Fmt("%.4f", m["test"].get<double>()).c_str() : "-");
    sum << line;
  }
  sum << "  " << search.rounds().size() << " rounds, " << layer_passes << " layer passes; time: ";
  for (size_t i = 0; i < timings.size(); ++i) {
    sum << (i ? ", " : "") << timings[i]["phase"].get<std::string>() << " "
        << Duration(timings[i]["seconds"].get<double>());
  }
  sum << "\n  report: " << layout_.ReportHtml() << "\n";
  return RunOutcome{layout_.dir(), report, sum.str()};
}

}  // namespace hyb::coordinator
