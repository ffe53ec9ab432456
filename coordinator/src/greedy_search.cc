#include "hyb/coordinator/greedy_search.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>

namespace hyb::coordinator {
namespace {

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

Json Interval(double lo, double hi) { return Json::array({lo, hi}); }

Json OptionalNumber(const std::optional<double>& v) { return v ? Json(*v) : Json(nullptr); }

}  // namespace

std::string CandidateId(const std::vector<int64_t>& linear_layers) {
  if (linear_layers.empty()) return "linear_none";
  std::string id = "linear";
  for (int64_t l : linear_layers) id += "_" + std::to_string(l);
  return id;
}

StatusOr<std::pair<double, double>> PairedBootstrapInterval(const std::vector<double>& candidate,
                                                            const std::vector<double>& base,
                                                            int64_t samples, uint64_t seed) {
  if (candidate.size() != base.size() || candidate.empty()) {
    return InvalidArgument("paired bootstrap: " + std::to_string(candidate.size()) + " and " +
                           std::to_string(base.size()) + " per-example values");
  }
  const size_t n = candidate.size();
  std::vector<double> d(n);
  for (size_t i = 0; i < n; ++i) d[i] = candidate[i] - base[i];
  if (samples <= 0) return std::pair<double, double>{0.0, 0.0};
  // mt19937_64's output sequence is fixed by the standard; the modulo keeps the draw portable
  // (uniform_int_distribution is implementation-defined). Its bias is below n / 2^64.
  std::mt19937_64 rng(seed);
  std::vector<double> means(static_cast<size_t>(samples));
  for (auto& m : means) {
    double sum = 0;
    for (size_t i = 0; i < n; ++i) sum += d[rng() % n];
    m = sum / static_cast<double>(n);
  }
  std::sort(means.begin(), means.end());
  auto at = [&](double q) {
    const double pos = q * static_cast<double>(samples - 1);
    const auto lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, means.size() - 1);
    return means[lo] + (means[hi] - means[lo]) * (pos - static_cast<double>(lo));
  };
  return std::pair<double, double>{at(0.025), at(0.975)};
}

StatusOr<GreedySearch> GreedySearch::Create(int64_t num_layers, SearchOptions options) {
  if (num_layers <= 0) return InvalidArgument("search: num_layers must be positive");
  if (options.tolerance.has_value() == options.p_min.has_value()) {
    return InvalidArgument("search: give exactly one of 'tolerance' and 'p_min'");
  }
  if (options.tolerance && !(*options.tolerance >= 0 && std::isfinite(*options.tolerance))) {
    return InvalidArgument("search: 'tolerance' must be a finite number >= 0");
  }
  if (options.p_min && !std::isfinite(*options.p_min)) {
    return InvalidArgument("search: 'p_min' must be finite");
  }
  if (options.max_linear_layers < 0) {
    return InvalidArgument("search: 'max_linear_layers' must be >= 0");
  }
  if (options.bootstrap_samples < 0) {
    return InvalidArgument("search: 'bootstrap_samples' must be >= 0");
  }
  auto& el = options.eligible_layers;
  if (el.empty()) {
    for (int64_t l = 0; l < num_layers; ++l) el.push_back(l);
  }
  std::sort(el.begin(), el.end());
  el.erase(std::unique(el.begin(), el.end()), el.end());
  for (int64_t l : el) {
    if (l < 0 || l >= num_layers) {
      return InvalidArgument("search: layer " + std::to_string(l) + " in 'layers' is outside [0, " +
                             std::to_string(num_layers) + ")");
    }
  }
  GreedySearch s;
  s.num_layers_ = num_layers;
  s.options_ = std::move(options);
  return s;
}

bool GreedySearch::Meets(double score) const {
  return options_.higher_is_better ? score >= p_min_ : score <= p_min_;
}

Status GreedySearch::SetTeacher(const CandidateResult& teacher) {
  if (teacher_set_) return FailedPrecondition("search: the teacher's result was already set");
  if (teacher.per_example.empty()) {
    return InvalidArgument("search: the teacher's result has no per-example values");
  }
  teacher_set_ = true;
  p_full_ = teacher.score;
  if (options_.p_min) {
    p_min_ = *options_.p_min;
  } else {
    const double tol = *options_.tolerance;
    // (1 -/+ tol) * P_full for positive scores; |P_full| keeps the direction right for zero
    // or negative ones (a log-likelihood, a zero KL).
    const double margin = tol * std::fabs(p_full_);
    p_min_ = options_.higher_is_better ? p_full_ - margin : p_full_ + margin;
  }
  teacher_per_example_ = teacher.per_example;
  base_per_example_ = teacher.per_example;
  trajectory_.push_back({{}, teacher.score, 0, 0, 0.0});
  OpenRound();
  return Status::Ok();
}

void GreedySearch::OpenRound() {
  const std::vector<int64_t>& current = trajectory_.back().linear_layers;
  open_.clear();
  got_.clear();
  const int64_t limit = options_.max_linear_layers;
  if (limit > 0 && static_cast<int64_t>(current.size()) >= limit) {
    done_ = true;
    stop_reason_ = "reached max_linear_layers (" + std::to_string(limit) + ")";
    return;
  }
  for (int64_t l : options_.eligible_layers) {
    if (std::binary_search(current.begin(), current.end(), l)) continue;
    Candidate c;
    c.layer = l;
    c.linear_layers = current;
    c.linear_layers.insert(std::upper_bound(c.linear_layers.begin(), c.linear_layers.end(), l), l);
    c.id = CandidateId(c.linear_layers);
    open_.push_back(std::move(c));
  }
  if (open_.empty()) {
    done_ = true;
    stop_reason_ = "every eligible layer is linear";
    return;
  }
  got_.resize(open_.size());
  SearchRound r;
  r.round = static_cast<int64_t>(rounds_.size()) + 1;
  r.base_linear_layers = current;
  r.base_score = trajectory_.back().score;
  rounds_.push_back(std::move(r));
}

std::vector<Candidate> GreedySearch::Pending() const {
  std::vector<Candidate> out;
  if (done_) return out;
  for (size_t i = 0; i < open_.size(); ++i) {
    if (!got_[i]) out.push_back(open_[i]);
  }
  return out;
}

std::vector<Candidate> GreedySearch::RoundCandidates() const {
  return done_ ? std::vector<Candidate>{} : open_;
}

Status GreedySearch::Report(const std::string& candidate_id, const CandidateResult& result) {
  if (!teacher_set_) return FailedPrecondition("search: report before the teacher's result");
  size_t i = 0;
  while (i < open_.size() && open_[i].id != candidate_id) ++i;
  if (done_ || i == open_.size()) {
    // A late duplicate of a decided round is harmless: its id was a candidate before.
    for (const auto& r : rounds_) {
      for (const auto& c : r.candidates) {
        if (c.candidate.id == candidate_id) return Status::Ok();
      }
    }
    return NotFound("search: '" + candidate_id + "' is not a candidate of the open round");
  }
  if (got_[i]) return Status::Ok();
  if (result.per_example.size() != base_per_example_.size()) {
    return InvalidArgument(
        "search: '" + candidate_id + "' has " + std::to_string(result.per_example.size()) +
        " per-example values, the teacher had " + std::to_string(base_per_example_.size()));
  }
  ScoredCandidate sc;
  sc.candidate = open_[i];
  sc.result = result;
  sc.delta = result.score - rounds_.back().base_score;
  HYB_ASSIGN_OR_RETURN(auto ci, PairedBootstrapInterval(result.per_example, base_per_example_,
                                                        options_.bootstrap_samples,
                                                        options_.seed ^ Fnv1a(candidate_id)));
  sc.delta_ci_low = ci.first;
  sc.delta_ci_high = ci.second;
  got_[i] = std::move(sc);
  if (std::all_of(got_.begin(), got_.end(), [](const auto& g) { return g.has_value(); })) {
    DecideRound();
  }
  return Status::Ok();
}

bool GreedySearch::Better(const ScoredCandidate& a, const ScoredCandidate& b) const {
  const double sa = a.result.score, sb = b.result.score;
  if (std::isnan(sa) != std::isnan(sb)) return std::isnan(sb);  // NaN ranks below any number
  if (sa != sb && !std::isnan(sa)) return options_.higher_is_better ? sa > sb : sa < sb;
  const double inf = std::numeric_limits<double>::infinity();
  const double ka = a.result.kl.value_or(inf), kb = b.result.kl.value_or(inf);
  if (ka != kb) return ka < kb;
  return a.candidate.layer < b.candidate.layer;
}

void GreedySearch::DecideRound() {
  SearchRound& r = rounds_.back();
  size_t best = 0;
  for (size_t i = 1; i < got_.size(); ++i) {
    if (Better(*got_[i], *got_[best])) best = i;
  }
  const ScoredCandidate& b = *got_[best];
  r.best_layer = b.candidate.layer;
  r.committed = Meets(b.result.score);
  for (auto& g : got_) r.candidates.push_back(std::move(*g));
  const ScoredCandidate& chosen = r.candidates[best];
  if (!r.committed) {
    done_ = true;
    char buf[160];
    std::snprintf(buf, sizeof(buf), "best candidate (layer %lld, score %.6g) misses p_min %.6g",
                  static_cast<long long>(chosen.candidate.layer), chosen.result.score, p_min_);
    stop_reason_ = buf;
    open_.clear();
    got_.clear();
    return;
  }
  trajectory_.push_back({chosen.candidate.linear_layers, chosen.result.score, chosen.delta_ci_low,
                         chosen.delta_ci_high, chosen.result.kl});
  base_per_example_ = chosen.result.per_example;
  OpenRound();
}

const TrajectoryPoint& GreedySearch::best() const {
  size_t best = 0;
  for (size_t i = 1; i < trajectory_.size(); ++i) {
    const double s = trajectory_[i].score, bs = trajectory_[best].score;
    if (options_.higher_is_better ? s >= bs : s <= bs) best = i;
  }
  return trajectory_[best];
}

Json GreedySearch::ToJson() const {
  Json tol = Json::object();
  if (options_.tolerance) tol["relative"] = *options_.tolerance;
  if (options_.p_min) tol["absolute"] = *options_.p_min;
  Json rounds = Json::array();
  for (const auto& r : rounds_) {
    Json cands = Json::array();
    for (const auto& c : r.candidates) {
      cands.push_back({{"layer", c.candidate.layer},
                       {"id", c.candidate.id},
                       {"linear_layers", c.candidate.linear_layers},
                       {"score", c.result.score},
                       {"delta", c.delta},
                       {"delta_ci95", Interval(c.delta_ci_low, c.delta_ci_high)},
                       {"kl", OptionalNumber(c.result.kl)},
                       {"seconds", c.result.seconds},
                       {"layer_passes", c.result.layer_passes}});
    }
    rounds.push_back({{"round", r.round},
                      {"base_linear_layers", r.base_linear_layers},
                      {"base_score", r.base_score},
                      {"candidates", std::move(cands)},
                      {"best_layer", r.best_layer >= 0 ? Json(r.best_layer) : Json(nullptr)},
                      {"committed", r.committed}});
  }
  Json traj = Json::array();
  for (const auto& t : trajectory_) {
    traj.push_back({{"num_linear", t.linear_layers.size()},
                    {"linear_layers", t.linear_layers},
                    {"score", t.score},
                    {"delta_ci95", Interval(t.delta_ci_low, t.delta_ci_high)},
                    {"kl", OptionalNumber(t.kl)}});
  }
  return {{"p_full", p_full_},
          {"p_min", p_min_},
          {"higher_is_better", options_.higher_is_better},
          {"tolerance", tol},
          {"eligible_layers", options_.eligible_layers},
          {"max_linear_layers", options_.max_linear_layers},
          {"bootstrap_samples", options_.bootstrap_samples},
          {"stop_reason", stop_reason_},
          {"rounds", std::move(rounds)},
          {"trajectory", std::move(traj)}};
}

}  // namespace hyb::coordinator
