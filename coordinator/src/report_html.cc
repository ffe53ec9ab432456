#include "hyb/coordinator/report_html.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hyb::coordinator {
namespace {

constexpr std::string_view kSource = "report.json";
constexpr std::string_view kFormat = "hyb-report-v1";
constexpr int64_t kMaxLayers = 4096;
constexpr std::string_view kMissing = "—";  // shown for absent or null optional values

// ---------------------------------------------------------------------------------------------
// Reading: the report is validated into plain structs first, so rendering cannot fail.

// A view of one JSON value at `path` inside report.json. Typed getters go through JsonObject and
// re-spell its errors with the full path ("search.rounds[1].candidates[0].score"), so the reader
// knows which of several same-named fields is at fault.
class Node {
 public:
  Node(const Json& j, std::string path) : j_(&j), path_(std::move(path)) {}

  std::string Child(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }
  Status Error(std::string_view key, std::string_view what) const {
    return View().FieldError(Child(key), what);
  }

  bool Has(std::string_view key) const { return Find(key) != nullptr; }

  StatusOr<int64_t> Int(std::string_view key) const { return Rename(key, View().Int(key)); }
  StatusOr<std::optional<int64_t>> OptionalInt(std::string_view key) const {
    return Rename(key, View().OptionalInt(key));
  }
  StatusOr<bool> Bool(std::string_view key) const { return Rename(key, View().Bool(key)); }
  StatusOr<std::string> String(std::string_view key) const {
    return Rename(key, View().String(key));
  }

  StatusOr<double> Number(std::string_view key) const {
    HYB_ASSIGN_OR_RETURN(const double v, Rename(key, View().Number(key)));
    if (!std::isfinite(v)) return Error(key, "must be a finite number");
    return v;
  }
  StatusOr<std::optional<double>> OptionalNumber(std::string_view key) const {
    if (!Has(key)) return std::optional<double>();
    HYB_ASSIGN_OR_RETURN(const double v, Number(key));
    return std::optional<double>(v);
  }
  StatusOr<std::optional<bool>> OptionalBool(std::string_view key) const {
    if (!Has(key)) return std::optional<bool>();
    HYB_ASSIGN_OR_RETURN(const bool v, Bool(key));
    return std::optional<bool>(v);
  }
  StatusOr<std::string> OptionalString(std::string_view key) const {
    if (!Has(key)) return std::string();
    return String(key);
  }
  StatusOr<std::optional<std::pair<double, double>>> OptionalInterval(std::string_view key) const {
    if (!Has(key)) return std::optional<std::pair<double, double>>();
    HYB_ASSIGN_OR_RETURN(const auto v, Interval(key));
    return std::optional<std::pair<double, double>>(v);
  }

  StatusOr<Node> Object(std::string_view key) const {
    const Json* v = Find(key);
    if (v == nullptr) return Error(key, "is required");
    if (!v->is_object()) return Error(key, "must be an object, got " + JsonSnippet(*v));
    return Node(*v, Child(key));
  }

  // A required array whose elements are all objects.
  StatusOr<std::vector<Node>> Objects(std::string_view key) const {
    const Json* v = Find(key);
    if (v == nullptr) return Error(key, "is required");
    if (!v->is_array()) return Error(key, "must be an array, got " + JsonSnippet(*v));
    std::vector<Node> out;
    out.reserve(v->size());
    for (size_t i = 0; i < v->size(); ++i) {
      const std::string element = std::string(key) + "[" + std::to_string(i) + "]";
      if (!(*v)[i].is_object()) {
        return Error(element, "must be an object, got " + JsonSnippet((*v)[i]));
      }
      out.emplace_back((*v)[i], Child(element));
    }
    return out;
  }
  StatusOr<std::optional<std::vector<Node>>> OptionalObjects(std::string_view key) const {
    if (!Has(key)) return std::optional<std::vector<Node>>();
    HYB_ASSIGN_OR_RETURN(std::vector<Node> nodes, Objects(key));
    return std::optional<std::vector<Node>>(std::move(nodes));
  }

  // A required array of distinct layer indices in [0, num_layers), kept in report order.
  StatusOr<std::vector<int64_t>> Layers(std::string_view key, int64_t num_layers) const {
    const Json* v = Find(key);
    if (v == nullptr) return Error(key, "is required");
    if (!v->is_array()) return Error(key, "must be an array, got " + JsonSnippet(*v));
    std::vector<int64_t> out;
    std::set<int64_t> seen;
    for (size_t i = 0; i < v->size(); ++i) {
      const std::string element = std::string(key) + "[" + std::to_string(i) + "]";
      const Json& e = (*v)[i];
      if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= num_layers) {
        return Error(element, "must be a layer index in [0, " + std::to_string(num_layers) +
                                  "), got " + JsonSnippet(e));
      }
      const int64_t layer = e.get<int64_t>();
      if (!seen.insert(layer).second) return Error(element, "repeats layer " + JsonSnippet(e));
      out.push_back(layer);
    }
    return out;
  }

  // A required [low, high] pair of finite numbers with low <= high.
  StatusOr<std::pair<double, double>> Interval(std::string_view key) const {
    const Json* v = Find(key);
    if (v == nullptr) return Error(key, "is required");
    const bool pair_of_numbers =
        v->is_array() && v->size() == 2 && (*v)[0].is_number() && (*v)[1].is_number();
    if (!pair_of_numbers) {
      return Error(key, "must be a [low, high] pair of numbers, got " + JsonSnippet(*v));
    }
    const double lo = (*v)[0].get<double>();
    const double hi = (*v)[1].get<double>();
    if (!std::isfinite(lo) || !std::isfinite(hi) || lo > hi) {
      return Error(key, "must be [low, high] with finite low <= high, got " + JsonSnippet(*v));
    }
    return std::make_pair(lo, hi);
  }

 private:
  JsonObject View() const { return {*j_, std::string(kSource)}; }

  const Json* Find(std::string_view key) const {
    if (!j_->is_object()) return nullptr;
    const auto it = j_->find(std::string(key));
    if (it == j_->end() || it->is_null()) return nullptr;
    return &*it;
  }

  // JsonObject errors read "report.json: field '<key>' <what>"; re-spell them with the path.
  template <typename T>
  StatusOr<T> Rename(std::string_view key, StatusOr<T> result) const {
    if (result.ok() || path_.empty()) return result;
    const std::string prefix = std::string(kSource) + ": field '" + std::string(key) + "' ";
    const std::string message = result.status().message();  // status() returns a copy
    if (message.rfind(prefix, 0) != 0) return result;
    return Error(key, message.substr(prefix.size()));
  }

  const Json* j_;
  std::string path_;
};

struct CurvePoint {
  double step = 0;
  double mse = 0;
  double nmse = 0;
};

struct DistillLayer {
  int64_t layer = 0;
  double final_mse = 0;
  double final_nmse = 0;
  std::vector<CurvePoint> curve;  // empty when the report has none
};

struct Candidate {
  int64_t layer = 0;
  std::vector<int64_t> linear_layers;  // the model after the swap
  double score = 0;
  double delta = 0;
  std::pair<double, double> delta_ci95;
  std::optional<double> kl;
  std::optional<double> seconds;
};

struct Round {
  int64_t round = 0;
  std::optional<std::vector<int64_t>> base_linear_layers;
  std::optional<double> base_score;
  std::vector<Candidate> candidates;
  std::optional<int64_t> best_layer;
  bool committed = false;
};

struct TrajectoryPoint {
  int64_t num_linear = 0;
  std::vector<int64_t> linear_layers;
  double score = 0;
  std::pair<double, double> delta_ci95;  // against the previous point
};

// A row of the layer map: a model or a placement.
struct Placement {
  std::string name;
  std::vector<int64_t> linear_layers;
  std::optional<double> validation;  // placements have none
  std::optional<double> test;
  std::string dir;
  std::optional<bool> meets_p_min;  // models
  // Models: test minus the teacher's; placements: test minus greedy's; with the paired
  // bootstrap 95% interval over test examples.
  std::optional<double> test_delta;
  std::optional<std::pair<double, double>> test_delta_ci95;
};

struct Timing {
  std::string phase;
  double seconds = 0;
};

struct Report {
  std::string job_id;
  std::string created;
  std::string teacher_path;
  int64_t num_layers = 0;
  std::string teacher_family;
  std::string mixer_type;
  std::string task_name;
  std::string task_type;
  std::string metric;
  bool higher_is_better = true;
  std::optional<int64_t> validation_examples;
  std::optional<int64_t> test_examples;
  std::optional<double> distill_steps;
  std::optional<double> distill_tokens;
  std::optional<double> distill_seconds;
  std::vector<DistillLayer> distill_layers;
  double p_full = 0;
  double p_min = 0;
  std::optional<int64_t> p_min_count;
  std::string criterion;  // empty in reports from before search.criterion
  std::string outcome;    // empty in older reports
  std::string stop_reason;
  int64_t layer_passes = 0;
  std::optional<double> search_seconds;
  std::optional<std::vector<Round>> rounds;
  std::vector<TrajectoryPoint> trajectory;
  std::vector<Placement> models;
  std::optional<std::vector<Placement>> placements;
  std::vector<Timing> timings;
};

Status ReadHeader(const Node& root, Report& r) {
  HYB_ASSIGN_OR_RETURN(const std::string format, root.String("format"));
  if (format != kFormat) {
    return root.Error("format",
                      "must be \"" + std::string(kFormat) + "\", got " + JsonSnippet(Json(format)));
  }
  HYB_ASSIGN_OR_RETURN(r.job_id, root.String("job_id"));
  HYB_ASSIGN_OR_RETURN(r.created, root.String("created"));

  HYB_ASSIGN_OR_RETURN(const Node teacher, root.Object("teacher"));
  HYB_ASSIGN_OR_RETURN(r.teacher_path, teacher.String("path"));
  HYB_ASSIGN_OR_RETURN(r.num_layers, teacher.Int("num_layers"));
  if (r.num_layers < 1 || r.num_layers > kMaxLayers) {
    return teacher.Error("num_layers", "must be in [1, " + std::to_string(kMaxLayers) + "], got " +
                                           std::to_string(r.num_layers));
  }
  if (teacher.Has("family")) {
    HYB_ASSIGN_OR_RETURN(r.teacher_family, teacher.String("family"));
  }

  HYB_ASSIGN_OR_RETURN(const Node mixer, root.Object("mixer"));
  HYB_ASSIGN_OR_RETURN(r.mixer_type, mixer.String("type"));

  HYB_ASSIGN_OR_RETURN(const Node task, root.Object("task"));
  HYB_ASSIGN_OR_RETURN(r.task_name, task.String("name"));
  HYB_ASSIGN_OR_RETURN(r.task_type, task.String("type"));
  HYB_ASSIGN_OR_RETURN(r.metric, task.String("metric"));
  HYB_ASSIGN_OR_RETURN(r.higher_is_better, task.Bool("higher_is_better"));
  HYB_ASSIGN_OR_RETURN(r.validation_examples, task.OptionalInt("validation_examples"));
  HYB_ASSIGN_OR_RETURN(r.test_examples, task.OptionalInt("test_examples"));
  return Status::Ok();
}

Status ReadDistill(const Node& root, Report& r) {
  HYB_ASSIGN_OR_RETURN(const Node distill, root.Object("distill"));
  HYB_ASSIGN_OR_RETURN(r.distill_steps, distill.OptionalNumber("steps"));
  HYB_ASSIGN_OR_RETURN(r.distill_tokens, distill.OptionalNumber("tokens"));
  HYB_ASSIGN_OR_RETURN(r.distill_seconds, distill.OptionalNumber("seconds"));
  HYB_ASSIGN_OR_RETURN(const std::vector<Node> layers, distill.Objects("layers"));
  for (const Node& node : layers) {
    DistillLayer layer;
    HYB_ASSIGN_OR_RETURN(layer.layer, node.Int("layer"));
    if (layer.layer < 0 || layer.layer >= r.num_layers) {
      return node.Error("layer", "must be a layer index in [0, " + std::to_string(r.num_layers) +
                                     "), got " + std::to_string(layer.layer));
    }
    HYB_ASSIGN_OR_RETURN(layer.final_mse, node.Number("final_mse"));
    HYB_ASSIGN_OR_RETURN(layer.final_nmse, node.Number("final_nmse"));
    HYB_ASSIGN_OR_RETURN(const std::optional<std::vector<Node>> curve,
                         node.OptionalObjects("curve"));
    if (curve.has_value()) {
      for (const Node& point_node : *curve) {
        CurvePoint point;
        HYB_ASSIGN_OR_RETURN(point.step, point_node.Number("step"));
        HYB_ASSIGN_OR_RETURN(point.mse, point_node.Number("mse"));
        HYB_ASSIGN_OR_RETURN(point.nmse, point_node.Number("nmse"));
        layer.curve.push_back(point);
      }
    }
    r.distill_layers.push_back(std::move(layer));
  }
  return Status::Ok();
}

StatusOr<Round> ReadRound(const Node& node, int64_t num_layers) {
  Round round;
  HYB_ASSIGN_OR_RETURN(round.round, node.Int("round"));
  if (node.Has("base_linear_layers")) {
    HYB_ASSIGN_OR_RETURN(round.base_linear_layers, node.Layers("base_linear_layers", num_layers));
  }
  HYB_ASSIGN_OR_RETURN(round.base_score, node.OptionalNumber("base_score"));
  HYB_ASSIGN_OR_RETURN(round.best_layer, node.OptionalInt("best_layer"));
  HYB_ASSIGN_OR_RETURN(round.committed, node.Bool("committed"));
  HYB_ASSIGN_OR_RETURN(const std::vector<Node> candidates, node.Objects("candidates"));
  for (const Node& c : candidates) {
    Candidate candidate;
    HYB_ASSIGN_OR_RETURN(candidate.layer, c.Int("layer"));
    HYB_ASSIGN_OR_RETURN(candidate.linear_layers, c.Layers("linear_layers", num_layers));
    HYB_ASSIGN_OR_RETURN(candidate.score, c.Number("score"));
    HYB_ASSIGN_OR_RETURN(candidate.delta, c.Number("delta"));
    HYB_ASSIGN_OR_RETURN(candidate.delta_ci95, c.Interval("delta_ci95"));
    HYB_ASSIGN_OR_RETURN(candidate.kl, c.OptionalNumber("kl"));
    HYB_ASSIGN_OR_RETURN(candidate.seconds, c.OptionalNumber("seconds"));
    round.candidates.push_back(std::move(candidate));
  }
  return round;
}

Status ReadSearch(const Node& root, Report& r) {
  HYB_ASSIGN_OR_RETURN(const Node search, root.Object("search"));
  HYB_ASSIGN_OR_RETURN(r.p_full, search.Number("p_full"));
  HYB_ASSIGN_OR_RETURN(r.p_min, search.Number("p_min"));
  HYB_ASSIGN_OR_RETURN(r.p_min_count, search.OptionalInt("p_min_count"));
  HYB_ASSIGN_OR_RETURN(r.criterion, search.OptionalString("criterion"));
  HYB_ASSIGN_OR_RETURN(r.stop_reason, search.String("stop_reason"));
  HYB_ASSIGN_OR_RETURN(r.layer_passes, search.Int("layer_passes"));
  HYB_ASSIGN_OR_RETURN(r.search_seconds, search.OptionalNumber("seconds"));

  HYB_ASSIGN_OR_RETURN(const std::optional<std::vector<Node>> rounds,
                       search.OptionalObjects("rounds"));
  if (rounds.has_value()) {
    r.rounds.emplace();
    for (const Node& node : *rounds) {
      HYB_ASSIGN_OR_RETURN(Round round, ReadRound(node, r.num_layers));
      r.rounds->push_back(std::move(round));
    }
  }

  HYB_ASSIGN_OR_RETURN(const std::vector<Node> trajectory, search.Objects("trajectory"));
  for (const Node& node : trajectory) {
    TrajectoryPoint point;
    HYB_ASSIGN_OR_RETURN(point.num_linear, node.Int("num_linear"));
    if (point.num_linear < 0 || point.num_linear > r.num_layers) {
      return node.Error("num_linear", "must be in [0, " + std::to_string(r.num_layers) + "], got " +
                                          std::to_string(point.num_linear));
    }
    HYB_ASSIGN_OR_RETURN(point.linear_layers, node.Layers("linear_layers", r.num_layers));
    HYB_ASSIGN_OR_RETURN(point.score, node.Number("score"));
    HYB_ASSIGN_OR_RETURN(point.delta_ci95, node.Interval("delta_ci95"));
    r.trajectory.push_back(std::move(point));
  }
  return Status::Ok();
}

StatusOr<std::vector<Placement>> ReadPlacements(const std::vector<Node>& nodes, bool is_model,
                                                int64_t num_layers) {
  std::vector<Placement> out;
  for (const Node& node : nodes) {
    Placement p;
    HYB_ASSIGN_OR_RETURN(p.name, node.String("name"));
    HYB_ASSIGN_OR_RETURN(p.linear_layers, node.Layers("linear_layers", num_layers));
    if (is_model) {
      HYB_ASSIGN_OR_RETURN(const double validation, node.Number("validation"));
      p.validation = validation;
      if (node.Has("dir")) {
        HYB_ASSIGN_OR_RETURN(p.dir, node.String("dir"));
      }
      HYB_ASSIGN_OR_RETURN(p.meets_p_min, node.OptionalBool("meets_p_min"));
    }
    HYB_ASSIGN_OR_RETURN(p.test, node.OptionalNumber("test"));
    const char* delta = is_model ? "test_minus_teacher" : "minus_greedy";
    HYB_ASSIGN_OR_RETURN(p.test_delta, node.OptionalNumber(delta));
    HYB_ASSIGN_OR_RETURN(p.test_delta_ci95,
                         node.OptionalInterval(std::string(delta) + "_ci95"));
    out.push_back(std::move(p));
  }
  return out;
}

StatusOr<Report> ReadReport(const Json& json) {
  if (!json.is_object()) {
    return InvalidArgument(std::string(kSource) + ": expected a JSON object, got " +
                           JsonSnippet(json));
  }
  const Node root(json, "");
  Report r;
  HYB_RETURN_IF_ERROR(ReadHeader(root, r));
  HYB_RETURN_IF_ERROR(ReadDistill(root, r));
  HYB_RETURN_IF_ERROR(ReadSearch(root, r));
  HYB_ASSIGN_OR_RETURN(r.outcome, root.OptionalString("outcome"));

  HYB_ASSIGN_OR_RETURN(const std::vector<Node> models, root.Objects("models"));
  HYB_ASSIGN_OR_RETURN(r.models, ReadPlacements(models, /*is_model=*/true, r.num_layers));
  HYB_ASSIGN_OR_RETURN(const std::optional<std::vector<Node>> placements,
                       root.OptionalObjects("placements"));
  if (placements.has_value()) {
    HYB_ASSIGN_OR_RETURN(r.placements,
                         ReadPlacements(*placements, /*is_model=*/false, r.num_layers));
  }

  HYB_ASSIGN_OR_RETURN(const std::vector<Node> timings, root.Objects("timings"));
  for (const Node& node : timings) {
    Timing t;
    HYB_ASSIGN_OR_RETURN(t.phase, node.String("phase"));
    HYB_ASSIGN_OR_RETURN(t.seconds, node.Number("seconds"));
    r.timings.push_back(std::move(t));
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Text helpers.

std::string Escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// Integers print as integers ("614400"), everything else with 4 significant digits ("0.2071").
std::string Num(double v) {
  if (!std::isfinite(v)) return std::string(kMissing);
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof(buf), "%.0f", v + 0.0);  // + 0.0 turns -0 into 0
  } else {
    std::snprintf(buf, sizeof(buf), "%.4g", v);
  }
  return buf;
}
std::string Num(const std::optional<double>& v) {
  return v.has_value() ? Num(*v) : std::string(kMissing);
}
std::string Num(const std::optional<int64_t>& v) {
  return v.has_value() ? std::to_string(*v) : std::string(kMissing);
}
// A difference: "+0.01", "-0.005", "0".
std::string Signed(double v) { return (v > 0 ? "+" : "") + Num(v); }

std::string LayerList(const std::vector<int64_t>& layers) {
  if (layers.empty()) return "none";
  std::string out;
  for (const int64_t layer : layers) {
    if (!out.empty()) out += ", ";
    out += std::to_string(layer);
  }
  return out;
}

// An SVG coordinate: one decimal is finer than a pixel.
std::string Px(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", v);
  return buf;
}

// Counts code points, not bytes, so UTF-8 names are measured and cut correctly.
size_t CodePoints(std::string_view s) {
  return static_cast<size_t>(
      std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
}
std::string Truncate(std::string_view s, size_t max_code_points) {
  if (CodePoints(s) <= max_code_points) return std::string(s);
  size_t seen = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((s[i] & 0xC0) != 0x80 && seen++ == max_code_points - 1) {
      return std::string(s.substr(0, i)) + "…";
    }
  }
  return std::string(s);
}

// One colour per distillation layer: a categorical palette first, then spread hues.
std::string LayerColor(size_t i) {
  static constexpr const char* kPalette[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                             "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
  if (i < std::size(kPalette)) return kPalette[i];
  char buf[48];
  std::snprintf(buf, sizeof(buf), "hsl(%d, 60%%, 45%%)", static_cast<int>((i * 137) % 360));
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Plot geometry.

// Maps data values in [lo, hi] (log10 of them when `log`) onto pixels [px_lo, px_hi].
// Constructed only through MakeAxis, which guarantees hi > lo.
struct Axis {
  double lo = 0;
  double hi = 1;
  double px_lo = 0;
  double px_hi = 1;
  bool log = false;

  double Map(double v) const {
    const double t = ((log ? std::log10(v) : v) - lo) / (hi - lo);
    return px_lo + t * (px_hi - px_lo);
  }
};

// Pads [min_v, max_v] so points do not sit on the frame; a zero-width range (a single point,
// or equal values) is widened instead of divided by.
Axis MakeAxis(double min_v, double max_v, double px_lo, double px_hi, bool log) {
  Axis a;
  a.px_lo = px_lo;
  a.px_hi = px_hi;
  a.log = log;
  double lo = log ? std::log10(min_v) : min_v;
  double hi = log ? std::log10(max_v) : max_v;
  const double span = hi - lo;
  if (!(span > 1e-12 * std::max(1.0, std::fabs(hi)))) {
    const double pad = log ? 0.5 : (std::fabs(hi) > 0 ? std::fabs(hi) * 0.1 : 1.0);
    lo -= pad;
    hi += pad;
  } else {
    lo -= span * 0.08;
    hi += span * 0.08;
  }
  a.lo = lo;
  a.hi = hi;
  return a;
}

// About `target` round-valued ticks (steps of 1, 2 or 5 times a power of ten) inside [lo, hi].
std::vector<double> LinearTicks(double lo, double hi, int target) {
  const double raw = (hi - lo) / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / magnitude;
  const double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * magnitude;
  std::vector<double> ticks;
  for (double k = std::ceil(lo / step); k * step <= hi + step * 1e-9 && ticks.size() < 50; ++k) {
    const double v = k * step;
    ticks.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  }
  return ticks;
}

std::vector<double> AxisTicks(const Axis& a, int target) {
  if (!a.log) return LinearTicks(a.lo, a.hi, target);
  // 1, 2 and 5 times each power of ten inside the range; only powers of ten when that is many.
  std::vector<double> all;
  std::vector<double> decades;
  for (double k = std::floor(a.lo); k <= std::ceil(a.hi); ++k) {
    for (const double m : {1.0, 2.0, 5.0}) {
      const double v = m * std::pow(10.0, k);
      const double lv = std::log10(v);
      if (lv < a.lo || lv > a.hi) continue;
      all.push_back(v);
      if (m == 1.0) decades.push_back(v);
    }
  }
  if (all.size() < 2) {
    // A range narrower than 1-2-5 spacing: round values in data space, all positive here.
    all.clear();
    for (const double v : LinearTicks(std::pow(10.0, a.lo), std::pow(10.0, a.hi), target)) {
      if (v > 0) all.push_back(v);
    }
    return all;
  }
  if (all.size() <= static_cast<size_t>(target) + 2) return all;
  return decades.size() >= 2 ? decades : all;
}

struct Frame {
  double width = 640;
  double height = 320;
  double left = 64;
  double right = 100;
  double top = 16;
  double bottom = 46;
  double PlotLeft() const { return left; }
  double PlotRight() const { return width - right; }
  double PlotTop() const { return top; }
  double PlotBottom() const { return height - bottom; }
};

void OpenSvg(const Frame& f, std::string_view label, std::string& out) {
  out += "<svg class=\"plot\" width=\"" + Px(f.width) + "\" height=\"" + Px(f.height) +
         "\" viewBox=\"0 0 " + Px(f.width) + " " + Px(f.height) + "\" role=\"img\" aria-label=\"" +
         Escape(label) + "\">\n";
}

// Frame, ticks with labels and grid lines, and the two axis titles.
void DrawAxes(const Frame& f, const Axis& x, const Axis& y, const std::vector<double>& x_ticks,
              std::string_view x_title, std::string_view y_title, std::string& out) {
  for (const double t : AxisTicks(y, 5)) {
    const std::string py = Px(y.Map(t));
    out += "<line class=\"grid\" x1=\"" + Px(f.PlotLeft()) + "\" x2=\"" + Px(f.PlotRight()) +
           "\" y1=\"" + py + "\" y2=\"" + py + "\"/>";
    out += "<text class=\"tick\" x=\"" + Px(f.PlotLeft() - 6) + "\" y=\"" + Px(y.Map(t) + 4) +
           "\" text-anchor=\"end\">" + Num(t) + "</text>\n";
  }
  for (const double t : x_ticks) {
    const std::string px = Px(x.Map(t));
    out += "<line class=\"axis\" x1=\"" + px + "\" x2=\"" + px + "\" y1=\"" + Px(f.PlotBottom()) +
           "\" y2=\"" + Px(f.PlotBottom() + 5) + "\"/>";
    out += "<text class=\"tick\" x=\"" + px + "\" y=\"" + Px(f.PlotBottom() + 18) +
           "\" text-anchor=\"middle\">" + Num(t) + "</text>\n";
  }
  out += "<rect class=\"frame\" x=\"" + Px(f.PlotLeft()) + "\" y=\"" + Px(f.PlotTop()) +
         "\" width=\"" + Px(f.PlotRight() - f.PlotLeft()) + "\" height=\"" +
         Px(f.PlotBottom() - f.PlotTop()) + "\"/>\n";
  out += "<text class=\"axis-title\" x=\"" + Px((f.PlotLeft() + f.PlotRight()) / 2) + "\" y=\"" +
         Px(f.height - 8) + "\" text-anchor=\"middle\">" + Escape(x_title) + "</text>\n";
  const double cy = (f.PlotTop() + f.PlotBottom()) / 2;
  out += "<text class=\"axis-title\" x=\"14\" y=\"" + Px(cy) +
         "\" text-anchor=\"middle\" transform=\"rotate(-90 14 " + Px(cy) + ")\">" +
         Escape(y_title) + "</text>\n";
}

std::string Circle(const std::string& cls, double x, double y, double r, std::string_view tip) {
  return "<circle class=\"" + cls + "\" cx=\"" + Px(x) + "\" cy=\"" + Px(y) + "\" r=\"" + Px(r) +
         "\"><title>" + Escape(tip) + "</title></circle>\n";
}

std::string Line(const std::string& cls, double x1, double y1, double x2, double y2) {
  return "<line class=\"" + cls + "\" x1=\"" + Px(x1) + "\" y1=\"" + Px(y1) + "\" x2=\"" + Px(x2) +
         "\" y2=\"" + Px(y2) + "\"/>";
}

// ---------------------------------------------------------------------------------------------
// Sections.

// "-0.043 [-0.08, -0.007]", or the missing mark.
std::string DeltaWithInterval(const Placement& p) {
  if (!p.test_delta) return std::string(kMissing);
  std::string out = Signed(*p.test_delta);
  if (p.test_delta_ci95) {
    out += " [" + Signed(p.test_delta_ci95->first) + ", " + Signed(p.test_delta_ci95->second) + "]";
  }
  return out;
}

void RenderSummary(const Report& r, std::string& out) {
  out += "<header>\n<h1>Hybridization report: <code>" + Escape(r.job_id) + "</code></h1>\n";
  out += "<dl class=\"meta\">\n";
  out += "<dt>Created</dt><dd>" + Escape(r.created) + "</dd>\n";
  out += "<dt>Teacher</dt><dd><code>" + Escape(r.teacher_path) + "</code> · " +
         std::to_string(r.num_layers) + " layers";
  if (!r.teacher_family.empty()) out += " · " + Escape(r.teacher_family);
  out += "</dd>\n";
  out += "<dt>Mixer</dt><dd>" + Escape(r.mixer_type) + "</dd>\n";
  out += "<dt>Task</dt><dd>" + Escape(r.task_name) + " (" + Escape(r.task_type) +
         ") · metric <code>" + Escape(r.metric) + "</code>, " +
         (r.higher_is_better ? "higher is better" : "lower is better") + " · " +
         Num(r.validation_examples) + " validation / " + Num(r.test_examples) +
         " test examples</dd>\n";
  out += "<dt>Distillation</dt><dd>" + Num(r.distill_steps) + " steps · " + Num(r.distill_tokens) +
         " tokens · " + Num(r.distill_seconds) + " s</dd>\n";
  out += "<dt>Search</dt><dd>p_full " + Num(r.p_full) + " · p_min " + Num(r.p_min);
  if (r.p_min_count && r.validation_examples) {
    out += " (" + std::to_string(*r.p_min_count) + " of " +
           std::to_string(*r.validation_examples) + " examples)";
  }
  if (!r.criterion.empty()) out += " · criterion " + Escape(r.criterion);
  out += " · " + Escape(r.stop_reason) + "</dd>\n";
  if (!r.outcome.empty()) out += "<dt>Outcome</dt><dd>" + Escape(r.outcome) + "</dd>\n";
  out += "</dl>\n</header>\n";
}

void RenderModels(const Report& r, std::string& out) {
  out +=
      "<section id=\"models\">\n<h2>Models</h2>\n<table>\n<thead><tr><th>Name</th>"
      "<th class=\"num\">Linear layers</th><th>Layer list</th><th class=\"num\">Validation</th>"
      "<th class=\"num\">Test</th><th class=\"num\">Test − teacher [95% CI]</th>"
      "<th>Meets p_min</th><th>Directory</th></tr></thead>\n<tbody>\n";
  for (const Placement& m : r.models) {
    out += "<tr><td>" + Escape(m.name) + "</td><td class=\"num\">" +
           std::to_string(m.linear_layers.size()) + "</td><td>" + LayerList(m.linear_layers) +
           "</td><td class=\"num\">" + Num(m.validation) + "</td><td class=\"num\">" + Num(m.test) +
           "</td><td class=\"num\">" + DeltaWithInterval(m) + "</td><td>" +
           (m.meets_p_min ? (*m.meets_p_min ? "yes" : "no") : std::string(kMissing)) +
           "</td><td><code>" + Escape(m.dir) + "</code></td></tr>\n";
  }
  out += "</tbody>\n</table>\n";
  out +=
      "<p>m_best: the best-scoring hybrid (at least one linear layer) the search scored, on "
      "validation; it need not meet p_min. m_opt: the committed hybrid with the most linear "
      "layers; it meets p_min";
  if (r.criterion == "confident") out += " and the confident criterion";
  out += ". When no hybrid meets p_min there is no m_opt.";
  out += " Intervals: paired bootstrap over the test examples.</p>\n</section>\n";
}

void RenderTrajectory(const Report& r, std::string& out) {
  const Frame f;
  // A committed point's interval is the committing round's paired 95% interval of the score
  // difference, placed on the previous model's score: delta_ci95 is "against the model one step
  // earlier" (docs/report_format.md), so previous + interval brackets this point's score.
  struct Bar {
    double x, lo, hi;
  };
  std::vector<Bar> bars;
  for (size_t i = 1; i < r.trajectory.size(); ++i) {
    const double base = r.trajectory[i - 1].score;
    const auto [lo, hi] = r.trajectory[i].delta_ci95;
    if (hi > lo) {
      bars.push_back({static_cast<double>(r.trajectory[i].num_linear), base + lo, base + hi});
    }
  }

  double y_min = std::min(r.p_full, r.p_min);
  double y_max = std::max(r.p_full, r.p_min);
  double x_max = 1;
  const auto include = [&](double x, double y) {
    y_min = std::min(y_min, y);
    y_max = std::max(y_max, y);
    x_max = std::max(x_max, x);
  };
  for (const TrajectoryPoint& p : r.trajectory) include(static_cast<double>(p.num_linear), p.score);
  for (const Bar& b : bars) {
    include(b.x, b.lo);
    include(b.x, b.hi);
  }
  if (r.rounds.has_value()) {
    for (const Round& round : *r.rounds) {
      for (const Candidate& c : round.candidates) {
        include(static_cast<double>(c.linear_layers.size()), c.score);
      }
    }
  }
  Axis x = MakeAxis(0, x_max, f.PlotLeft(), f.PlotRight(), /*log=*/false);
  x.lo = -0.5;  // whole layer counts: half a step of room each side
  x.hi = x_max + 0.5;
  const Axis y = MakeAxis(y_min, y_max, f.PlotBottom(), f.PlotTop(), /*log=*/false);
  std::vector<double> x_ticks;
  const double x_step = std::max(1.0, std::ceil(x_max / 12));
  for (double t = 0; t <= x_max; t += x_step) x_ticks.push_back(t);

  out += "<section id=\"trajectory\">\n<h2>Search trajectory</h2>\n<figure>\n";
  OpenSvg(f, "Search trajectory: " + r.metric + " against the number of linear layers", out);
  DrawAxes(f, x, y, x_ticks, "linear layers", r.metric, out);

  // Thresholds, labelled in the right margin; labels of nearby lines are pushed apart.
  const double y_full = y.Map(r.p_full);
  const double y_min_line = y.Map(r.p_min);
  double label_full = y_full + 4;
  double label_min = y_min_line + 4;
  if (std::fabs(y_full - y_min_line) < 14) {
    const double mid = (y_full + y_min_line) / 2 + 4;
    const bool full_above = y_full < y_min_line || (y_full == y_min_line && r.higher_is_better);
    label_full = mid + (full_above ? -7 : 7);
    label_min = mid + (full_above ? 7 : -7);
  }
  out += Line("ref full", f.PlotLeft(), y_full, f.PlotRight(), y_full) + "\n";
  out += "<text class=\"ref-label\" x=\"" + Px(f.PlotRight() + 6) + "\" y=\"" + Px(label_full) +
         "\">p_full " + Num(r.p_full) + "</text>\n";
  out += Line("ref min", f.PlotLeft(), y_min_line, f.PlotRight(), y_min_line) + "\n";
  out += "<text class=\"ref-label\" x=\"" + Px(f.PlotRight() + 6) + "\" y=\"" + Px(label_min) +
         "\">p_min " + Num(r.p_min) + "</text>\n";

  if (r.rounds.has_value()) {
    for (const Round& round : *r.rounds) {
      for (const Candidate& c : round.candidates) {
        out +=
            Circle("cand", x.Map(static_cast<double>(c.linear_layers.size())), y.Map(c.score), 3.5,
                   "round " + std::to_string(round.round) + ", swap layer " +
                       std::to_string(c.layer) + ": " + Num(c.score));
      }
    }
  }
  for (const Bar& b : bars) {
    const double px = x.Map(b.x);
    out += Line("err", px, y.Map(b.lo), px, y.Map(b.hi));
    out += Line("err", px - 4, y.Map(b.lo), px + 4, y.Map(b.lo));
    out += Line("err", px - 4, y.Map(b.hi), px + 4, y.Map(b.hi)) + "\n";
  }
  if (r.trajectory.size() > 1) {
    out += "<polyline class=\"traj\" points=\"";
    for (const TrajectoryPoint& p : r.trajectory) {
      out += Px(x.Map(static_cast<double>(p.num_linear))) + "," + Px(y.Map(p.score)) + " ";
    }
    out += "\"/>\n";
  }
  for (const TrajectoryPoint& p : r.trajectory) {
    out += Circle("pt", x.Map(static_cast<double>(p.num_linear)), y.Map(p.score), 4,
                  "linear [" + LayerList(p.linear_layers) + "]: " + Num(p.score));
  }
  out +=
      "</svg>\n<figcaption>Filled points: the model committed after each round (the first is "
      "the teacher), with the committing round's 95% interval. Hollow circles: every "
      "candidate scored in a round. Dashed lines: the teacher's score p_full and the "
      "acceptance threshold p_min.</figcaption>\n</figure>\n</section>\n";
}

void RenderLayerMap(const Report& r, std::string& out) {
  const int64_t n = r.num_layers;
  const double cell = std::clamp(std::floor(560.0 / static_cast<double>(n)), 10.0, 28.0);
  const double gap = 2;
  constexpr size_t kMaxLabel = 28;
  size_t longest = 10;
  const auto measure = [&](const std::vector<Placement>& rows) {
    for (const Placement& p : rows) longest = std::max(longest, CodePoints(p.name));
  };
  measure(r.models);
  if (r.placements.has_value()) measure(*r.placements);
  const double label_w = static_cast<double>(std::min(longest, kMaxLabel)) * 7.0 + 16;
  const double header = 22;
  const double section_gap = 20;
  const size_t rows = r.models.size() + (r.placements ? r.placements->size() : 0);
  const double grid_h =
      static_cast<double>(rows) * (cell + gap) + (r.placements.has_value() ? section_gap : 0);
  // Wide enough for the grid and for the legend ("linear (<mixer>)" at about 7 px a character).
  const double legend_w =
      148 +
      static_cast<double>(CodePoints(r.mixer_type) + std::string_view("linear ()").size()) * 7;
  const double width = label_w + std::max(static_cast<double>(n) * (cell + gap), legend_w) + 8;
  const double height = header + grid_h + 36;

  // Column labels: every index when it fits in a cell, else every k-th.
  const double digits =
      std::floor(std::log10(static_cast<double>(std::max<int64_t>(n - 1, 1)))) + 1;
  const int64_t label_every =
      cell >= digits * 6.5 + 2 ? 1 : static_cast<int64_t>(std::ceil((digits * 6.5 + 4) / cell));

  out += "<section id=\"layer-map\">\n<h2>Layer map</h2>\n<figure class=\"wide\">\n";
  out += "<svg class=\"map\" width=\"" + Px(width) + "\" height=\"" + Px(height) +
         "\" viewBox=\"0 0 " + Px(width) + " " + Px(height) +
         "\" role=\"img\" aria-label=\"Layer map: full attention or linear, per model\">\n";
  for (int64_t layer = 0; layer < n; ++layer) {
    if (layer % label_every != 0) continue;
    out += "<text class=\"tick\" x=\"" +
           Px(label_w + static_cast<double>(layer) * (cell + gap) + cell / 2) + "\" y=\"" +
           Px(header - 8) + "\" text-anchor=\"middle\">" + std::to_string(layer) + "</text>";
  }
  out += "\n";

  double row_y = header;
  const auto draw_rows = [&](const std::vector<Placement>& rows_of, std::string_view kind) {
    for (const Placement& p : rows_of) {
      const std::set<int64_t> linear(p.linear_layers.begin(), p.linear_layers.end());
      out += "<text class=\"row-label\" x=\"" + Px(label_w - 8) + "\" y=\"" +
             Px(row_y + cell / 2 + 4) + "\" text-anchor=\"end\"><title>" + Escape(kind) + " " +
             Escape(p.name) + "</title>" + Escape(Truncate(p.name, kMaxLabel)) + "</text>\n";
      for (int64_t layer = 0; layer < n; ++layer) {
        const bool is_linear = linear.count(layer) > 0;
        out += std::string("<rect class=\"cell ") + (is_linear ? "linear" : "full") + "\" x=\"" +
               Px(label_w + static_cast<double>(layer) * (cell + gap)) + "\" y=\"" + Px(row_y) +
               "\" width=\"" + Px(cell) + "\" height=\"" + Px(cell) + "\"><title>" +
               Escape(p.name) + ", layer " + std::to_string(layer) + ": " +
               (is_linear ? "linear" : "full attention") + "</title></rect>";
      }
      out += "\n";
      row_y += cell + gap;
    }
  };
  draw_rows(r.models, "model");
  if (r.placements.has_value()) {
    out += "<text class=\"group-label\" x=\"" + Px(label_w - 8) + "\" y=\"" +
           Px(row_y + section_gap - 6) + "\" text-anchor=\"end\">placements</text>\n";
    row_y += section_gap;
    draw_rows(*r.placements, "placement");
  }

  // Legend.
  const double ly = row_y + 14;
  out += "<rect class=\"swatch full\" x=\"" + Px(label_w) + "\" y=\"" + Px(ly) +
         "\" width=\"12\" height=\"12\"/><text class=\"legend\" x=\"" + Px(label_w + 18) +
         "\" y=\"" + Px(ly + 10) + "\">full attention</text>";
  out += "<rect class=\"swatch linear\" x=\"" + Px(label_w + 130) + "\" y=\"" + Px(ly) +
         "\" width=\"12\" height=\"12\"/><text class=\"legend\" x=\"" + Px(label_w + 148) +
         "\" y=\"" + Px(ly + 10) + "\">linear (" + Escape(r.mixer_type) + ")</text>\n";
  out += "</svg>\n<figcaption>One row per model";
  if (r.placements.has_value()) out += " and per compared placement";
  out += "; one column per layer, 0 to " + std::to_string(n - 1) + ".</figcaption>\n";
  out += "</figure>\n</section>\n";
}

void RenderDistill(const Report& r, std::string& out) {
  out += "<section id=\"distill\">\n<h2>Per-layer distillation loss</h2>\n";
  bool any_curve = false;
  bool all_positive = true;
  double s_min = 0, s_max = 0, v_min = 0, v_max = 0;
  for (const DistillLayer& layer : r.distill_layers) {
    for (const CurvePoint& p : layer.curve) {
      if (!any_curve) {
        s_min = s_max = p.step;
        v_min = v_max = p.nmse;
        any_curve = true;
      }
      s_min = std::min(s_min, p.step);
      s_max = std::max(s_max, p.step);
      v_min = std::min(v_min, p.nmse);
      v_max = std::max(v_max, p.nmse);
      all_positive = all_positive && p.nmse > 0;
    }
  }

  if (any_curve) {
    const Frame f{640, 320, 64, 24, 16, 46};
    Axis x = MakeAxis(s_min, s_max, f.PlotLeft(), f.PlotRight(), /*log=*/false);
    if (s_max > s_min) {  // steps start at the frame; only a single step needs padding
      x.lo = s_min;
      x.hi = s_max;
    }
    const Axis y = MakeAxis(v_min, v_max, f.PlotBottom(), f.PlotTop(), all_positive);
    const std::string y_title = all_positive ? "nmse (log scale)" : "nmse";
    out += "<figure>\n";
    OpenSvg(f, "Distillation nmse per layer against step", out);
    DrawAxes(f, x, y, LinearTicks(x.lo, x.hi, 6), "step", y_title, out);
    for (size_t i = 0; i < r.distill_layers.size(); ++i) {
      const DistillLayer& layer = r.distill_layers[i];
      if (layer.curve.empty()) continue;
      const std::string color = LayerColor(i);
      const std::string tip = "layer " + std::to_string(layer.layer);
      if (layer.curve.size() == 1) {
        out += "<circle cx=\"" + Px(x.Map(layer.curve[0].step)) + "\" cy=\"" +
               Px(y.Map(layer.curve[0].nmse)) + "\" r=\"3\" fill=\"" + color + "\"><title>" + tip +
               "</title></circle>\n";
        continue;
      }
      out += "<polyline class=\"curve\" stroke=\"" + color + "\" points=\"";
      for (const CurvePoint& p : layer.curve)
        out += Px(x.Map(p.step)) + "," + Px(y.Map(p.nmse)) + " ";
      out += "\"><title>" + tip + "</title></polyline>\n";
    }
    out += "</svg>\n<figcaption><span class=\"legend-list\">";
    for (size_t i = 0; i < r.distill_layers.size(); ++i) {
      if (r.distill_layers[i].curve.empty()) continue;
      out += "<span class=\"key\"><span class=\"dot\" style=\"background:" + LayerColor(i) +
             "\"></span>layer " + std::to_string(r.distill_layers[i].layer) + "</span>";
    }
    out +=
        "</span>nmse: the layer's mean squared error over the mean square of the teacher "
        "layer's output on the same batch.</figcaption>\n</figure>\n";
  }

  out +=
      "<table>\n<thead><tr><th class=\"num\">Layer</th><th class=\"num\">Final mse</th>"
      "<th class=\"num\">Final nmse</th></tr></thead>\n<tbody>\n";
  for (const DistillLayer& layer : r.distill_layers) {
    out += "<tr><td class=\"num\">" + std::to_string(layer.layer) + "</td><td class=\"num\">" +
           Num(layer.final_mse) + "</td><td class=\"num\">" + Num(layer.final_nmse) +
           "</td></tr>\n";
  }
  out += "</tbody>\n</table>\n</section>\n";
}

void RenderRounds(const Report& r, std::string& out) {
  out += "<section id=\"rounds\">\n<h2>Search rounds</h2>\n";
  if (r.rounds.has_value()) {
    out +=
        "<table>\n<thead><tr><th class=\"num\">Round</th><th class=\"num\">Swap layer</th>"
        "<th>Linear layers after swap</th><th class=\"num\">Score</th>"
        "<th class=\"num\">Delta</th><th class=\"num\">95% CI of delta</th>"
        "<th class=\"num\">KL</th><th class=\"num\">Seconds</th><th>Result</th></tr></thead>\n"
        "<tbody>\n";
    for (const Round& round : *r.rounds) {
      out +=
          "<tr class=\"round\"><th colspan=\"9\">Round " + std::to_string(round.round) + " · base ";
      out += round.base_linear_layers ? "[" + LayerList(*round.base_linear_layers) + "]" : "";
      out += " score " + Num(round.base_score) + " · ";
      if (round.best_layer.has_value()) {
        out += "best layer " + std::to_string(*round.best_layer) + ", " +
               (round.committed ? "committed" : "not committed");
      } else {
        out += "no candidate";
      }
      out += "</th></tr>\n";
      for (const Candidate& c : round.candidates) {
        const bool best = round.best_layer.has_value() && *round.best_layer == c.layer;
        out += best ? "<tr class=\"best\">" : "<tr>";
        out += "<td class=\"num\">" + std::to_string(round.round) + "</td><td class=\"num\">" +
               std::to_string(c.layer) + "</td><td>" + LayerList(c.linear_layers) +
               "</td><td class=\"num\">" + Num(c.score) + "</td><td class=\"num\">" +
               Signed(c.delta) + "</td><td class=\"num\">[" + Num(c.delta_ci95.first) + ", " +
               Num(c.delta_ci95.second) + "]</td><td class=\"num\">" + Num(c.kl) +
               "</td><td class=\"num\">" + Num(c.seconds) + "</td><td>";
        if (best) out += round.committed ? "★ best, committed" : "★ best, not committed";
        out += "</td></tr>\n";
      }
    }
    out += "</tbody>\n</table>\n";
  }
  out += "<p class=\"stop\">Stopped: " + Escape(r.stop_reason) + "</p>\n</section>\n";
}

void RenderPlacements(const Report& r, std::string& out) {
  if (!r.placements.has_value()) return;
  out +=
      "<section id=\"placements\">\n<h2>Placements</h2>\n<table>\n<thead><tr><th>Name</th>"
      "<th class=\"num\">Linear layers</th><th>Layer list</th><th class=\"num\">Test</th>"
      "<th class=\"num\">Minus greedy [95% CI]</th></tr></thead>\n<tbody>\n";
  for (const Placement& p : *r.placements) {
    out += "<tr><td>" + Escape(p.name) + "</td><td class=\"num\">" +
           std::to_string(p.linear_layers.size()) + "</td><td>" + LayerList(p.linear_layers) +
           "</td><td class=\"num\">" + Num(p.test) + "</td><td class=\"num\">" +
           DeltaWithInterval(p) + "</td></tr>\n";
  }
  out += "</tbody>\n</table>\n";
  out +=
      "<p>Every placement has as many linear layers as m_opt. greedy: m_opt; distill_loss: the "
      "layers whose mixers ended distillation with the lowest normalised loss; sensitivity: "
      "the layers whose single swap cost least in search round 1; uniform: evenly spaced; "
      "random-N: drawn at random. Intervals: paired bootstrap 95% over the test examples of "
      "the placement's score minus greedy's.</p>\n</section>\n";
}

void RenderTimings(const Report& r, std::string& out) {
  out +=
      "<section id=\"timings\">\n<h2>Timings</h2>\n<table>\n<thead><tr><th>Phase</th>"
      "<th class=\"num\">Seconds</th></tr></thead>\n<tbody>\n";
  double total = 0;
  for (const Timing& t : r.timings) {
    total += t.seconds;
    out +=
        "<tr><td>" + Escape(t.phase) + "</td><td class=\"num\">" + Num(t.seconds) + "</td></tr>\n";
  }
  out += "<tr class=\"total\"><td>total</td><td class=\"num\">" + Num(total) +
         "</td></tr>\n</tbody>\n</table>\n";
  out += "<p>Search: " + std::to_string(r.layer_passes) + " layer passes in " +
         Num(r.search_seconds) + " s.</p>\n</section>\n";
}

constexpr std::string_view kStyle = R"css(
body { font-family: system-ui, sans-serif; color: #222; margin: 24px auto; max-width: 960px;
       padding: 0 16px; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 8px; }
h2 { font-size: 1.15em; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
code { font-family: ui-monospace, monospace; font-size: 0.95em; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 0; }
dl.meta dt { color: #666; }
dl.meta dd { margin: 0; }
table { border-collapse: collapse; font-size: 0.92em; margin: 8px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { border-bottom: 2px solid #ccc; }
tr.round th { background: #f4f6f8; font-weight: 600; }
tr.best td { background: #fff6dc; font-weight: 600; }
tr.total td { border-top: 2px solid #ccc; font-weight: 600; }
figure { margin: 8px 0; }
figure.wide { overflow-x: auto; }
figcaption { color: #555; font-size: 0.88em; max-width: 640px; }
svg text { font-family: system-ui, sans-serif; }
.tick { font-size: 10px; fill: #555; }
.axis-title, .legend, .row-label { font-size: 11px; fill: #333; }
.group-label { font-size: 11px; fill: #777; font-style: italic; }
.ref-label { font-size: 11px; fill: #555; }
.grid { stroke: #eee; }
.axis { stroke: #888; }
.frame { fill: none; stroke: #888; }
.ref { stroke: #999; stroke-dasharray: 6 4; }
.ref.min { stroke: #c0392b; }
.cand { fill: none; stroke: #8aa1b8; stroke-width: 1.2; }
.err { stroke: #2c5d8a; stroke-width: 1.2; }
.traj { fill: none; stroke: #2c5d8a; stroke-width: 2; }
.pt { fill: #2c5d8a; }
.curve { fill: none; stroke-width: 1.6; }
.cell.full, .swatch.full { fill: #c8d3e0; }
.cell.linear, .swatch.linear { fill: #e07b39; }
.legend-list { display: flex; flex-wrap: wrap; gap: 4px 12px; margin-bottom: 4px; }
.key { white-space: nowrap; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 4px; }
)css";

}  // namespace

StatusOr<std::string> RenderReportHtml(const Json& report) {
  HYB_ASSIGN_OR_RETURN(const Report r, ReadReport(report));
  std::string out;
  out.reserve(size_t{64} * 1024);
  out += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  out += "<title>Hybridization report: " + Escape(r.job_id) + "</title>\n";
  out += "<style>" + std::string(kStyle) + "</style>\n</head>\n<body>\n";
  RenderSummary(r, out);
  RenderModels(r, out);
  RenderTrajectory(r, out);
  RenderLayerMap(r, out);
  RenderDistill(r, out);
  RenderRounds(r, out);
  RenderPlacements(r, out);
  RenderTimings(r, out);
  out += "</body>\n</html>\n";
  return out;
}

}  // namespace hyb::coordinator
