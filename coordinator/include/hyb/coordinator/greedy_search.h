// Greedy layer replacement, Algorithm 1 of Distill-then-Replace (arXiv 2601.11667), as a
// torch-free state machine: scores in, next candidates out. The embedded `hybridize run`, the
// coordinator service and the MPI driver all drive it the same way:
//
//   GreedySearch s = *GreedySearch::Create(num_layers, options);
//   s.SetTeacher(teacher_result);              // P_full on the validation set
//   while (!s.done()) {
//     for (const Candidate& c : s.Pending()) s.Report(c.id, Evaluate(c.linear_layers));
//   }
//   s.best(); s.optimal();                     // M_best, M_opt
//
// Each round has one candidate per layer that is still full attention (the current model with
// that one layer swapped for its distilled mixer). When the last candidate of a round reports,
// the best one (score, then lower KL to the teacher, then lower layer index) is committed if it
// meets P_min; otherwise the search stops. It also stops at `max_linear_layers` or when no full
// layer is left. Beyond the paper, every candidate gets a paired bootstrap 95% interval of its
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
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"

namespace hyb::coordinator {

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
};

struct SearchRound {
  int64_t round = 0;  // 1-based
  std::vector<int64_t> base_linear_layers;
  double base_score = 0;
  std::vector<ScoredCandidate> candidates;  // ascending layer once the round is decided
  int64_t best_layer = -1;
  bool committed = false;
};

// A committed model (the teacher first).
struct TrajectoryPoint {
  std::vector<int64_t> linear_layers;
  double score = 0;
  double delta_ci_low = 0, delta_ci_high = 0;
  std::optional<double> kl;
};

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
  // tolerance, eligible layers out of [0, num_layers), negative max_linear_layers or samples.
  static StatusOr<GreedySearch> Create(int64_t num_layers, SearchOptions options);

  // The teacher's validation result: fixes P_full and P_min and opens round 1.
  // FailedPrecondition if called twice; InvalidArgument for an empty per_example list.
  Status SetTeacher(const CandidateResult& teacher);

  // Candidates of the open round that have no result yet (empty before SetTeacher or when done).
  std::vector<Candidate> Pending() const;
  // Every candidate of the open round (reported or not).
  std::vector<Candidate> RoundCandidates() const;

  // Records a candidate's result. A second report for the same id is ignored (Ok). NotFound
  // for an id that is not a candidate of the open round; InvalidArgument if per_example has a
  // different length from the teacher's. Deciding the round happens here, when its last
  // candidate reports.
  Status Report(const std::string& candidate_id, const CandidateResult& result);

  bool done() const { return done_; }
  const std::string& stop_reason() const { return stop_reason_; }
  double p_full() const { return p_full_; }
  double p_min() const { return p_min_; }
  bool Meets(double score) const;  // score meets P_min
  const SearchOptions& options() const { return options_; }
  int64_t num_layers() const { return num_layers_; }

  const std::vector<SearchRound>& rounds() const { return rounds_; }
  // Committed models, teacher first.
  const std::vector<TrajectoryPoint>& trajectory() const { return trajectory_; }
  // M_best: the highest-scoring committed model (the teacher counts; ties go to more linear
  // layers). M_opt: the committed model with the most linear layers (it meets P_min).
  const TrajectoryPoint& best() const;
  const TrajectoryPoint& optimal() const { return trajectory_.back(); }

  // The "search" object of report.json (docs/report_format.md), without timings.
  Json ToJson() const;

 private:
  GreedySearch() = default;
  bool Better(const ScoredCandidate& a, const ScoredCandidate& b) const;
  void OpenRound();
  void DecideRound();

  int64_t num_layers_ = 0;
  SearchOptions options_;
  bool teacher_set_ = false;
  bool done_ = false;
  std::string stop_reason_;
  double p_full_ = 0, p_min_ = 0;
  std::vector<double> teacher_per_example_;
  std::vector<double> base_per_example_;  // the current model's
  std::vector<SearchRound> rounds_;
  std::vector<Candidate> open_;                      // open round's candidates
  std::vector<std::optional<ScoredCandidate>> got_;  // parallel to open_
  std::vector<TrajectoryPoint> trajectory_;
};

}  // namespace hyb::coordinator
