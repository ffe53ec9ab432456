#include "hyb/coordinator/greedy_search.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>

namespace hyb::coordinator {
namespace {

Json Interval(double lo, double hi) { return Json::array({lo, hi}); }

Json OptionalNumber(const std::optional<double>& v) { return v ? Json(*v) : Json(nullptr); }

// A finite double as the shortest decimal that reads back as it: +-digits * 10^exponent. For a
// number from a JSON text with up to 15 significant digits that is the number as written.
struct Decimal {
  uint64_t digits = 0;  // at most 17 decimal digits
  int exponent = 0;
};
Decimal ShortestDecimal(double v) {
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), std::fabs(v),
                                 std::chars_format::scientific);  // "1.2345e-05"
  Decimal d;
  int fraction_digits = 0;
  bool after_point = false;
  const char* p = buf;
  for (; p < res.ptr && *p != 'e'; ++p) {
    if (*p == '.') {
      after_point = true;
      continue;
    }
    d.digits = d.digits * 10 + static_cast<uint64_t>(*p - '0');
    if (after_point) ++fraction_digits;
  }
  int e = 0;
  if (p < res.ptr) std::from_chars(p + 1 + (p[1] == '+' ? 1 : 0), res.ptr, e);
  d.exponent = e - fraction_digits;
  return d;
}

using Uint128 = unsigned __int128;

// floor(d * m) and ceil(d * m) for a decimal d < 1 (exponent < 0, or d == 0) and m >= 0, in
// integers: digits < 2^57 and m < 2^63 keep the product below 2^120.
Uint128 Pow10(int k) {
  Uint128 p = 1;
  for (int i = 0; i < k; ++i) p *= 10;
  return p;
}
int64_t FloorTimes(const Decimal& d, int64_t m) {
  const Uint128 num = static_cast<Uint128>(d.digits) * static_cast<Uint128>(m);
  if (d.exponent >= 0) return static_cast<int64_t>(num);  // d == 0
  if (-d.exponent > 38) return 0;                          // 10^39 > 2^128 > num
  return static_cast<int64_t>(num / Pow10(-d.exponent));
}
int64_t CeilTimes(const Decimal& d, int64_t m) {
  const Uint128 num = static_cast<Uint128>(d.digits) * static_cast<Uint128>(m);
  if (d.exponent >= 0) return static_cast<int64_t>(num);
  if (-d.exponent > 38) return num > 0 ? 1 : 0;
  const Uint128 den = Pow10(-d.exponent);
  return static_cast<int64_t>((num + den - 1) / den);
}

}  // namespace

bool IsProportionMetric(std::string_view metric) {
  return metric == "acc" || metric == "acc_norm" || metric == "exact_match" ||
         metric == "contains";
}

StatusOr<SearchCriterion> ParseSearchCriterion(std::string_view name) {
  if (name == "point") return SearchCriterion::kPoint;
  if (name == "confident") return SearchCriterion::kConfident;
  return InvalidArgument("search.criterion: must be \"point\" or \"confident\", got \"" +
                         std::string(name) + "\"");
}

std::string_view SearchCriterionName(SearchCriterion c) {
  return c == SearchCriterion::kConfident ? "confident" : "point";
}

uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

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
  if (options.criterion == SearchCriterion::kConfident && options.bootstrap_samples == 0) {
    return InvalidArgument(
        "search: criterion 'confident' needs intervals: 'bootstrap_samples' must be > 0");
  }
  if (options.proportion && !options.higher_is_better) {
    return InvalidArgument("search: a proportion score must be higher-is-better");
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
  if (std::isnan(score)) return false;
  if (p_min_count_) {
    const auto n = static_cast<double>(teacher_per_example_.size());
    return std::llround(score * n) >= *p_min_count_;
  }
  const double slack =
      kScoreSlack * std::max({1.0, std::fabs(p_full_), std::fabs(p_min_)});
  return options_.higher_is_better ? score >= p_min_ - slack : score <= p_min_ + slack;
}

Status GreedySearch::CheckProportion(const CandidateResult& r, const std::string& who) const {
  if (!options_.proportion) return Status::Ok();
  double count = 0;
  for (size_t i = 0; i < r.per_example.size(); ++i) {
    const double v = r.per_example[i];
    if (v != 0.0 && v != 1.0) {
      return InvalidArgument("search: " + who + ": a proportion's per-example values are 0 or 1, "
                             "value " + std::to_string(i) + " is " + std::to_string(v));
    }
    count += v;
  }
  const auto n = static_cast<double>(r.per_example.size());
  if (!(std::fabs(r.score - count / n) < 0.5 / n)) {
    return InvalidArgument("search: " + who + ": score " + std::to_string(r.score) +
                           " is not the proportion of its per-example values (" +
                           std::to_string(static_cast<int64_t>(count)) + " of " +
                           std::to_string(r.per_example.size()) + ")");
  }
  return Status::Ok();
}

double GreedySearch::AllowedChange() const {
  if (!p_min_count_) return p_min_ - p_full_;
  const auto n = static_cast<double>(teacher_per_example_.size());
  return static_cast<double>(*p_min_count_ - std::llround(p_full_ * n)) / n;
}

bool GreedySearch::ConfidentEnough(const ScoredCandidate& c) const {
  if (options_.criterion != SearchCriterion::kConfident) return true;
  const double allowed = AllowedChange();
  const double slack = kScoreSlack * std::max({1.0, std::fabs(p_full_), std::fabs(p_min_)});
  return options_.higher_is_better ? c.teacher_ci_low >= allowed - slack
                                   : c.teacher_ci_high <= allowed + slack;
}

Status GreedySearch::SetTeacher(const CandidateResult& teacher) {
  if (teacher_set_) return FailedPrecondition("search: the teacher's result was already set");
  if (teacher.per_example.empty()) {
    return InvalidArgument("search: the teacher's result has no per-example values");
  }
  HYB_RETURN_IF_ERROR(CheckProportion(teacher, "the teacher"));
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
  if (options_.proportion) {
    // In counts: a candidate with c of n examples meets P_min iff c >= p_min_count. Relative:
    // c >= c_t - tol * c_t, i.e. c >= c_t - floor(tol * c_t) (c is an integer); absolute:
    // c >= ceil(p_min * n). Both with the tolerance or p_min as a decimal, in integers.
    const auto n = static_cast<int64_t>(teacher.per_example.size());
    const int64_t teacher_count = std::llround(p_full_ * static_cast<double>(n));
    if (options_.p_min) {
      const double p = *options_.p_min;
      p_min_count_ = p <= 0 ? 0 : p > 1 ? n + 1 : CeilTimes(ShortestDecimal(p), n);
    } else {
      const double tol = *options_.tolerance;
      p_min_count_ =
          tol >= 1 ? 0 : teacher_count - FloorTimes(ShortestDecimal(tol), teacher_count);
    }
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
  HYB_RETURN_IF_ERROR(CheckProportion(result, "'" + candidate_id + "'"));
  ScoredCandidate sc;
  sc.candidate = open_[i];
  sc.result = result;
  sc.delta = result.score - rounds_.back().base_score;
  HYB_ASSIGN_OR_RETURN(auto ci, PairedBootstrapInterval(result.per_example, base_per_example_,
                                                        options_.bootstrap_samples,
                                                        options_.seed ^ Fnv1a64(candidate_id)));
  sc.delta_ci_low = ci.first;
  sc.delta_ci_high = ci.second;
  HYB_ASSIGN_OR_RETURN(
      auto teacher_ci,
      PairedBootstrapInterval(result.per_example, teacher_per_example_,
                              options_.bootstrap_samples,
                              options_.seed ^ Fnv1a64(candidate_id + "/teacher")));
  sc.teacher_ci_low = teacher_ci.first;
  sc.teacher_ci_high = teacher_ci.second;
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
  const bool meets = Meets(b.result.score);
  const bool confident = ConfidentEnough(b);
  r.committed = meets && confident;
  for (auto& g : got_) r.candidates.push_back(std::move(*g));
  const ScoredCandidate& chosen = r.candidates[best];
  const double s = chosen.result.score;
  if (!std::isnan(s) &&
      (!best_ || (options_.higher_is_better ? s >= best_->score : s <= best_->score))) {
    best_ = TrajectoryPoint{chosen.candidate.linear_layers, s, chosen.delta_ci_low,
                            chosen.delta_ci_high, chosen.result.kl};
  }
  if (!r.committed) {
    done_ = true;
    char buf[256];
    if (!meets) {
      std::snprintf(buf, sizeof(buf), "best candidate (layer %lld, score %.6g) misses p_min %.6g",
                    static_cast<long long>(chosen.candidate.layer), s, p_min_);
    } else {
      std::snprintf(buf, sizeof(buf),
                    "best candidate (layer %lld, score %.6g) meets p_min %.6g, but the 95%% %s "
                    "bound of its change against the teacher (%+.6g) is beyond the tolerated "
                    "%+.6g (criterion confident)",
                    static_cast<long long>(chosen.candidate.layer), s, p_min_,
                    options_.higher_is_better ? "lower" : "upper",
                    options_.higher_is_better ? chosen.teacher_ci_low : chosen.teacher_ci_high,
                    AllowedChange());
    }
    stop_reason_ = buf;
    if (trajectory_.size() == 1) stop_reason_ += "; no hybrid meets p_min";
    open_.clear();
    got_.clear();
    return;
  }
  trajectory_.push_back({chosen.candidate.linear_layers, chosen.result.score, chosen.delta_ci_low,
                         chosen.delta_ci_high, chosen.result.kl});
  base_per_example_ = chosen.result.per_example;
  OpenRound();
}

std::optional<TrajectoryPoint> GreedySearch::optimal() const {
  if (trajectory_.size() < 2) return std::nullopt;
  return trajectory_.back();
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
                       {"teacher_delta_ci95", Interval(c.teacher_ci_low, c.teacher_ci_high)},
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
  Json out = {{"p_full", p_full_},
          {"p_min", p_min_},
          {"p_min_count", p_min_count_ ? Json(*p_min_count_) : Json(nullptr)},
          {"validation_examples", teacher_per_example_.size()},
          {"criterion", SearchCriterionName(options_.criterion)},
          {"teacher_meets_p_min", teacher_set_ && Meets(p_full_)},
          {"hybrid_meets_p_min", trajectory_.size() > 1},
          {"higher_is_better", options_.higher_is_better},
          {"tolerance", tol},
          {"eligible_layers", options_.eligible_layers},
          {"max_linear_layers", options_.max_linear_layers},
          {"bootstrap_samples", options_.bootstrap_samples},
          {"stop_reason", stop_reason_},
          {"rounds", std::move(rounds)},
          {"trajectory", std::move(traj)}};
  return out;
}

}  // namespace hyb::coordinator
