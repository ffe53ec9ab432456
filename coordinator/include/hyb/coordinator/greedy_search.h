// Greedy layer replacement, Algorithm 1 of Distill-then-Replace (arXiv 2601.11667), as a
// torch-free state machine: scores in, next candidates out. The embedded `hybridize run`, the
// coordinator service and the MPI driver all drive it the same way:
//
//   GreedySearch s = *GreedySearch::Create(num_layers, options);
//   s.SetTeacher(teacher_result);              // P_full on the validation set
//   while (!s.done()) {
//     for (const Candidate& c : s.Pending()) s.Report(c.id, Evaluate(c.linear_layers));
//   }
//   s.best(); s.optimal();                     // M_best, M_opt (each may be unset)
//
// Each round has one candidate per layer that is still full attention (the current model with
// that one layer swapped for its distilled mixer). When the last candidate of a round reports,
// the best one (score, then lower KL to the teacher, then lower layer index) is committed if it
// meets P_min (criterion `point`, the paper's rule) and, under criterion `confident`, also if the
// lower bound of the paired bootstrap 95% interval of its change against the teacher stays within
// the tolerance (P_min - P_full); otherwise the search stops. It also stops at
// `max_linear_layers` or when no full layer is left.
//
// Comparisons with P_min are exact where they can be. A tolerance or an absolute p_min is read
// as the shortest decimal that round-trips its double (the number as the user wrote it, up to
// 15 significant digits). For proportion metrics (the score is the number of examples whose
// value is 1, over n: acc, acc_norm, exact_match, contains) P_min becomes the least number of
// such examples, computed in integers: with P_full = 110/200 and tolerance 0.1 a candidate needs
// 99 of 200, and 99/200 meets P_min. Other scores (a loss, a KL, a token F1) meet P_min when they
// are within kScoreSlack of its magnitude of it: see there. Beyond the paper, every candidate gets a paired bootstrap 95% interval of its
// per-example change against the current model: an interval for the mean over examples of the
// per-example difference. For accuracy-like metrics that mean is the score's change; for the
// token-weighted lm and kl scores it is the unweighted per-document mean, close to but not the
// same as the reported delta. A NaN score ranks below every number.
//
// Candidate ids are deterministic functions of the layer set ("linear_1_3_4"), so results may be
// reported in any order, duplicates are ignored, and a restarted driver that replays stored
// results reaches the same state. Not thread-safe: one driver owns a search.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"

namespace hyb::coordinator {

// Scores closer to P_min than kScoreSlack * max(1, |P_full|, |P_min|) meet it (for non-proportion
// metrics). Why that is safe both ways: P_min's own computation rounds at most three times
// (decimal to double, product, difference: <= 3 * 2^-53 relative), and a score that is a sum of
// up to 10^6 per-token or per-example doubles carries at most 10^6 * 2^-53 ~ 1.1e-10 of relative
// rounding error, below the slack; while no task tells models apart by a part in 10^9 of its
// score, and for a mean over n < 10^9 values in [0, 1] distinct exact means differ by more.
inline constexpr double kScoreSlack = 1e-9;

// Metrics whose score is a count of examples scored 1 over the number of examples (per-example
// values are 0 or 1): acc, acc_norm, exact_match, contains.
bool IsProportionMetric(std::string_view metric);

// When a round's best candidate is committed.
enum class SearchCriterion {
  kPoint,      // its score meets P_min (the paper's rule)
  kConfident,  // and the paired bootstrap 95% lower bound of its change against the teacher is
               // within the tolerance: lower >= P_min - P_full (upper <= for lower-is-better)
};
// "point" / "confident"; InvalidArgument naming search.criterion for anything else.
StatusOr<SearchCriterion> ParseSearchCriterion(std::string_view name);
std::string_view SearchCriterionName(SearchCriterion c);

struct SearchOptions {
  // P_min: exactly one of the two. Relative: P_min = P_full - tolerance * |P_full| when higher
  // is better, P_full + tolerance * |P_full| when lower is better (e.g. a loss); for positive
  // scores that is the paper's (1 -/+ tolerance) * P_full.
  std::optional<double> tolerance;
  std::optional<double> p_min;
  bool higher_is_better = true;
  // Layers that may become linear (empty: all). Sorted and de-duplicated by Create.
  std::vector<int64_t> eligible_layers;
  // Stop once this many layers are linear (0: no limit beyond the eligible layers).
  int64_t max_linear_layers = 0;
  int64_t bootstrap_samples = 1000;  // resamples per interval (0: no intervals)
  uint64_t seed = 0;                 // bootstrap resampling
  // The score is a proportion (IsProportionMetric): P_min is compared in counts, and every
  // reported per-example value must be 0 or 1 with score = their mean. Needs higher_is_better.
  bool proportion = false;
  SearchCriterion criterion = SearchCriterion::kPoint;  // kConfident needs bootstrap_samples > 0
};

// One evaluated model (teacher or candidate) on the validation set.
struct CandidateResult {
  double score = 0;                 // the task's aggregate metric
  std::vector<double> per_example;  // same examples, same order, for every model
  std::optional<double> kl;         // mean KL(teacher || model), for tie-breaks
  double seconds = 0;
  int64_t layer_passes = 0;  // decoder-layer evaluations spent (for cost accounting)
};

struct Candidate {
  std::string id;                      // CandidateId(linear_layers)
  int64_t layer = -1;                  // the layer this candidate swaps
  std::vector<int64_t> linear_layers;  // sorted: the current model's linear layers plus `layer`
};

struct ScoredCandidate {
  Candidate candidate;
  CandidateResult result;
  double delta = 0;  // score - round's base score
  double delta_ci_low = 0, delta_ci_high = 0;
  // Paired bootstrap 95% interval of the change against the teacher (what `confident` uses).
  double teacher_ci_low = 0, teacher_ci_high = 0;
};

struct SearchRound {
  int64_t round = 0;  // 1-based
  std::vector<int64_t> base_linear_layers;
  double base_score = 0;
  std::vector<ScoredCandidate> candidates;  // ascending layer once the round is decided
  int64_t best_layer = -1;
  bool committed = false;
};

// A committed model (the teacher first), or M_best.
struct TrajectoryPoint {
  std::vector<int64_t> linear_layers;
  double score = 0;
  double delta_ci_low = 0, delta_ci_high = 0;  // against the round's base model
  std::optional<double> kl;
};

// FNV-1a, 64 bits: a portable seed for one comparison's bootstrap stream from its name.
uint64_t Fnv1a64(std::string_view s);

// "linear_none" for the teacher, else "linear_" + the sorted layers joined by "_".
std::string CandidateId(const std::vector<int64_t>& linear_layers);

// Paired bootstrap percentile interval (2.5%, 97.5%) of mean(candidate - base) over examples.
// Deterministic for a given seed. InvalidArgument if sizes differ or are zero.
StatusOr<std::pair<double, double>> PairedBootstrapInterval(const std::vector<double>& candidate,
                                                            const std::vector<double>& base,
                                                            int64_t samples, uint64_t seed);

class GreedySearch {
 public:
  // InvalidArgument naming the option: not exactly one of tolerance / p_min, negative
  // tolerance, eligible layers out of [0, num_layers), negative max_linear_layers or samples,
  // criterion confident without bootstrap samples, a proportion that is lower-is-better.
  static StatusOr<GreedySearch> Create(int64_t num_layers, SearchOptions options);

  // The teacher's validation result: fixes P_full and P_min and opens round 1.
  // FailedPrecondition if called twice; InvalidArgument for an empty per_example list, or, for a
  // proportion, per-example values other than 0 and 1 or a score that is not their mean.
  Status SetTeacher(const CandidateResult& teacher);

  // Candidates of the open round that have no result yet (empty before SetTeacher or when done).
  std::vector<Candidate> Pending() const;
  // Every candidate of the open round (reported or not).
  std::vector<Candidate> RoundCandidates() const;

  // Records a candidate's result. A second report for the same id is ignored (Ok). NotFound
  // for an id that is not a candidate of the open round; InvalidArgument if per_example has a
  // different length from the teacher's (or, for a proportion, values as in SetTeacher).
  // Deciding the round happens here, when its last candidate reports.
  Status Report(const std::string& candidate_id, const CandidateResult& result);

  bool done() const { return done_; }
  const std::string& stop_reason() const { return stop_reason_; }
  double p_full() const { return p_full_; }
  double p_min() const { return p_min_; }
  // For a proportion: the least number of validation examples scored 1 that meets P_min (may
  // be 0, or n + 1 when an absolute p_min is above 1). Unset before SetTeacher or otherwise.
  std::optional<int64_t> p_min_count() const { return p_min_count_; }
  // Whether `score` (on the validation examples) meets P_min, exactly as described above.
  bool Meets(double score) const;
  const SearchOptions& options() const { return options_; }
  int64_t num_layers() const { return num_layers_; }

  const std::vector<SearchRound>& rounds() const { return rounds_; }
  // Committed models, teacher first.
  const std::vector<TrajectoryPoint>& trajectory() const { return trajectory_; }
  // M_best: the highest-scoring hybrid (at least one linear layer) among every candidate the
  // search scored, committed or not (each round's best stands for its round); ties go to more
  // linear layers, then to the earlier round's pick. It need not meet P_min (Meets says). Unset
  // until a round is decided.
  const std::optional<TrajectoryPoint>& best() const { return best_; }
  // M_opt: the committed hybrid with the most linear layers; it meets P_min (and, under
  // `confident`, the interval rule). Unset when no hybrid was committed: no hybrid meets P_min.
  std::optional<TrajectoryPoint> optimal() const;

  // The "search" object of report.json (docs/report_format.md), without timings.
  Json ToJson() const;

  // Whether `a` ranks above `b` in a round: better score (NaN last), then lower KL to the
  // teacher (missing last), then lower layer index.
  bool Better(const ScoredCandidate& a, const ScoredCandidate& b) const;

 private:
  GreedySearch() = default;
  // InvalidArgument unless, for a proportion, `r` holds only 0s and 1s and its score is their
  // mean; `who` names the model in the message.
  Status CheckProportion(const CandidateResult& r, const std::string& who) const;
  // The change against the teacher that P_min allows: P_min - P_full, or for a proportion
  // (p_min_count - teacher's count) / n.
  double AllowedChange() const;
  // The confident rule's test of a round's best candidate (true under `point`).
  bool ConfidentEnough(const ScoredCandidate& c) const;
  void OpenRound();
  void DecideRound();

  int64_t num_layers_ = 0;
  SearchOptions options_;
  bool teacher_set_ = false;
  bool done_ = false;
  std::string stop_reason_;
  double p_full_ = 0, p_min_ = 0;
  std::optional<int64_t> p_min_count_;  // proportions only
  std::optional<TrajectoryPoint> best_;
  std::vector<double> teacher_per_example_;
  std::vector<double> base_per_example_;  // the current model's
  std::vector<SearchRound> rounds_;
  std::vector<Candidate> open_;                      // open round's candidates
  std::vector<std::optional<ScoredCandidate>> got_;  // parallel to open_
  std::vector<TrajectoryPoint> trajectory_;
};

}  // namespace hyb::coordinator
