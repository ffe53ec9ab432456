#include "hyb/coordinator/report_html.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <string_view>

namespace hyb::coordinator {
namespace {

// A finished 6-layer job with 2 search rounds, shaped like docs/report_format.md.
Json SampleReport() {
  return Json::parse(R"json({
    "format": "hyb-report-v1",
    "job_id": "demo-recall",
    "created": "2026-11-27T09:12:03Z",
    "teacher": {"path": "configs/demo/teacher", "num_layers": 6, "family": "llama"},
    "mixer": {"type": "gated_deltanet"},
    "task": {"name": "recall", "type": "generate", "metric": "exact_match",
             "higher_is_better": true, "validation_examples": 200, "test_examples": 500},
    "distill": {
      "steps": 300, "tokens": 614400, "seconds": 181.2,
      "layers": [
        {"layer": 0, "final_mse": 0.0012, "final_nmse": 0.081,
         "curve": [{"step": 0, "mse": 0.0101, "nmse": 0.62}, {"step": 10, "mse": 0.004, "nmse": 0.3},
                   {"step": 20, "mse": 0.0012, "nmse": 0.081}]},
        {"layer": 1, "final_mse": 0.0021, "final_nmse": 0.0912345,
         "curve": [{"step": 0, "mse": 0.02, "nmse": 0.7}, {"step": 10, "mse": 0.0021, "nmse": 0.0912345}]},
        {"layer": 3, "final_mse": 0.0009, "final_nmse": 0.05,
         "curve": [{"step": 0, "mse": 0.01, "nmse": 0.5}, {"step": 10, "mse": 0.0009, "nmse": 0.05}]}
      ]
    },
    "search": {
      "p_full": 0.23, "p_min": 0.207, "tolerance": {"relative": 0.1},
      "max_linear_layers": 6, "prefix_cache": true, "stop_reason": "no candidate meets p_min",
      "layer_passes": 1234, "seconds": 95.0,
      "rounds": [
        {"round": 1, "base_linear_layers": [], "base_score": 0.23,
         "candidates": [
           {"layer": 1, "linear_layers": [1], "score": 0.21, "delta": -0.02,
            "delta_ci95": [-0.04, 0.0], "kl": 0.05, "seconds": 2.0},
           {"layer": 3, "linear_layers": [3], "score": 0.225, "delta": -0.005,
            "delta_ci95": [-0.02, 0.01], "kl": 0.031, "seconds": 1.9}
         ],
         "best_layer": 3, "committed": true},
        {"round": 2, "base_linear_layers": [3], "base_score": 0.225,
         "candidates": [
           {"layer": 1, "linear_layers": [3, 1], "score": 0.19, "delta": -0.035,
            "delta_ci95": [-0.06, -0.01], "kl": null, "seconds": 1.7},
           {"layer": 4, "linear_layers": [3, 4], "score": 0.2, "delta": -0.025,
            "delta_ci95": [-0.05, 0.0], "kl": 0.06, "seconds": 1.8}
         ],
         "best_layer": 4, "committed": false}
      ],
      "trajectory": [
        {"num_linear": 0, "linear_layers": [], "score": 0.23, "delta_ci95": [0, 0]},
        {"num_linear": 1, "linear_layers": [3], "score": 0.225, "delta_ci95": [-0.02, 0.01]}
      ]
    },
    "models": [
      {"name": "teacher", "linear_layers": [], "validation": 0.23, "test": 0.228, "dir": ""},
      {"name": "m_best", "linear_layers": [3], "validation": 0.2071234, "test": 0.22,
       "dir": "exports/m_best"},
      {"name": "m_opt", "linear_layers": [1, 3, 4], "validation": 0.21, "test": null,
       "dir": "exports/m_opt"}
    ],
    "placements": [
      {"name": "greedy", "linear_layers": [1, 3, 4], "test": 0.2},
      {"name": "uniform", "linear_layers": [0, 2, 4], "test": 0.15},
      {"name": "random-1", "linear_layers": [2, 3, 5], "test": 0.12}
    ],
    "timings": [
      {"phase": "validating", "seconds": 0.4},
      {"phase": "distilling", "seconds": 181.2},
      {"phase": "searching", "seconds": 95.0},
      {"phase": "exporting", "seconds": 30.1}
    ]
  })json");
}

size_t Count(std::string_view haystack, std::string_view needle) {
  size_t n = 0;
  for (size_t pos = haystack.find(needle); pos != std::string_view::npos;
       pos = haystack.find(needle, pos + needle.size())) {
    ++n;
  }
  return n;
}

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// Renders `report`, failing the test (and returning "") if rendering fails.
std::string Render(const Json& report) {
  StatusOr<std::string> html = RenderReportHtml(report);
  EXPECT_TRUE(html.ok()) << html.status().ToString();
  return html.ok() ? *html : std::string();
}

// NaN or infinity written by printf into a coordinate or label.
void ExpectNoNonFinite(const std::string& html) {
  EXPECT_FALSE(Contains(html, "nan"));
  EXPECT_FALSE(Contains(html, "NaN"));
  EXPECT_FALSE(Contains(html, "inf"));
}

TEST(ReportHtmlTest, RendersEverySectionOfTheSample) {
  const std::string html = Render(SampleReport());
  ASSERT_FALSE(html.empty());

  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_TRUE(Contains(html, "demo-recall"));
  EXPECT_TRUE(Contains(html, "configs/demo/teacher"));
  EXPECT_TRUE(Contains(html, "gated_deltanet"));
  EXPECT_TRUE(Contains(html, "higher is better"));
  EXPECT_TRUE(Contains(html, "2026-11-27T09:12:03Z"));
  // Trajectory plot, layer map and distillation plot.
  EXPECT_EQ(Count(html, "<svg"), 3u);
  // Sections in the documented order.
  const size_t models = html.find("id=\"models\"");
  const size_t trajectory = html.find("id=\"trajectory\"");
  const size_t layer_map = html.find("id=\"layer-map\"");
  const size_t distill = html.find("id=\"distill\"");
  const size_t rounds = html.find("id=\"rounds\"");
  const size_t placements = html.find("id=\"placements\"");
  const size_t timings = html.find("id=\"timings\"");
  ASSERT_NE(timings, std::string::npos);
  EXPECT_LT(models, trajectory);
  EXPECT_LT(trajectory, layer_map);
  EXPECT_LT(layer_map, distill);
  EXPECT_LT(distill, rounds);
  EXPECT_LT(rounds, placements);
  EXPECT_LT(placements, timings);

  // HYB_KEEP_REPORT=1 keeps the page for a look in a browser.
  if (std::getenv("HYB_KEEP_REPORT") != nullptr) {
    const char* tmp = std::getenv("TMPDIR");
    const std::string path = std::string(tmp != nullptr ? tmp : "/tmp") + "/hyb_report_sample.html";
    std::ofstream(path) << html;
    std::cout << "sample report written to " << path << "\n";
  }
}

// The comparisons of issue 14: each model's test change against the teacher and each
// placement's against greedy, with their intervals; the criterion, the count P_min needs and
// the outcome; what m_best and m_opt are.
TEST(ReportHtmlTest, ShowsTestDifferencesWithIntervalsAndTheOutcome) {
  Json r = SampleReport();
  r["search"]["criterion"] = "confident";
  r["search"]["p_min_count"] = 99;
  r["task"]["validation_examples"] = 200;
  r["outcome"] = "m_opt has 3 linear layers and meets p_min";
  r["models"][1]["meets_p_min"] = false;
  r["models"][1]["test_minus_teacher"] = -0.008;
  r["models"][1]["test_minus_teacher_ci95"] = {-0.03, 0.01};
  r["placements"][1]["minus_greedy"] = -0.05;
  r["placements"][1]["minus_greedy_ci95"] = {-0.09, -0.012};
  const std::string html = Render(r);
  EXPECT_TRUE(Contains(html, "p_min 0.207 (99 of 200 examples) · criterion confident"));
  EXPECT_TRUE(Contains(html, "<dt>Outcome</dt><dd>m_opt has 3 linear layers and meets p_min"));
  EXPECT_TRUE(Contains(html, "<td class=\"num\">-0.008 [-0.03, +0.01]</td><td>no</td>"));
  EXPECT_TRUE(Contains(html, "<td class=\"num\">-0.05 [-0.09, -0.012]</td>"));
  EXPECT_TRUE(Contains(html, "m_best: the best-scoring hybrid (at least one linear layer)"));
  EXPECT_TRUE(Contains(html, "meets p_min and the confident criterion"));
  EXPECT_TRUE(Contains(html, "distill_loss: the layers whose mixers ended distillation"));
  r["placements"][1]["minus_greedy_ci95"] = {0.1, -0.1};
  auto bad = RenderReportHtml(r);
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(Contains(bad.status().message(), "placements[1].minus_greedy_ci95"))
      << bad.status().ToString();
}

TEST(ReportHtmlTest, LayerMapHasOneCellPerRowPerLayer) {
  const std::string html = Render(SampleReport());
  // Rows: 3 models (0 + 1 + 3 linear layers) and 3 placements (3 + 3 + 3), 6 layers each.
  EXPECT_EQ(Count(html, "class=\"cell linear\""), 4u + 9u);
  EXPECT_EQ(Count(html, "class=\"cell full\""), 6u * 6u - 13u);
  // Column header: the layer indices 0..5.
  for (int layer = 0; layer < 6; ++layer) {
    EXPECT_TRUE(Contains(html, "text-anchor=\"middle\">" + std::to_string(layer) + "</text>"))
        << layer;
  }
  EXPECT_TRUE(Contains(html, "class=\"swatch linear\""));
  EXPECT_TRUE(Contains(html, "class=\"swatch full\""));
  EXPECT_TRUE(Contains(html, "full attention</text>"));
}

TEST(ReportHtmlTest, TrajectoryPlotsPointsIntervalsCandidatesAndThresholds) {
  const std::string html = Render(SampleReport());
  EXPECT_TRUE(Contains(html, ">p_min 0.207</text>"));
  EXPECT_TRUE(Contains(html, ">p_full 0.23</text>"));
  EXPECT_EQ(Count(html, "class=\"ref full\""), 1u);
  EXPECT_EQ(Count(html, "class=\"ref min\""), 1u);
  EXPECT_EQ(Count(html, "<circle class=\"pt\""), 2u);    // teacher + one committed model
  EXPECT_EQ(Count(html, "<circle class=\"cand\""), 4u);  // 2 rounds x 2 candidates
  // One interval (the teacher's [0, 0] has none): a bar and two caps.
  EXPECT_EQ(Count(html, "class=\"err\""), 3u);
  EXPECT_EQ(Count(html, "<polyline class=\"traj\""), 1u);
  EXPECT_TRUE(Contains(html, ">linear layers</text>"));
  EXPECT_TRUE(Contains(html, ">exact_match</text>"));
  ExpectNoNonFinite(html);
}

TEST(ReportHtmlTest, TablesShowFormattedNumbers) {
  const std::string html = Render(SampleReport());
  // Models: 4 significant digits, null test as a dash, layer lists.
  EXPECT_TRUE(Contains(html, ">0.2071</td>"));
  EXPECT_FALSE(Contains(html, "0.2071234"));
  EXPECT_TRUE(Contains(html,
                       "<td>m_opt</td><td class=\"num\">3</td><td>1, 3, 4</td>"
                       "<td class=\"num\">0.21</td><td class=\"num\">—</td>"));
  EXPECT_TRUE(Contains(html, "<td>teacher</td><td class=\"num\">0</td><td>none</td>"));
  // Integers stay integers.
  EXPECT_TRUE(Contains(html, "614400 tokens"));
  EXPECT_TRUE(Contains(html, "300 steps"));
  // Distillation table: final losses per layer.
  EXPECT_TRUE(Contains(html,
                       "<td class=\"num\">1</td><td class=\"num\">0.0021</td>"
                       "<td class=\"num\">0.09123</td>"));
  // Rounds: best candidate marked, committed or not; null KL as a dash.
  EXPECT_EQ(Count(html, "<tr class=\"round\">"), 2u);
  EXPECT_EQ(Count(html, "<tr class=\"best\">"), 2u);
  EXPECT_TRUE(Contains(html, "★ best, committed"));
  EXPECT_TRUE(Contains(html, "★ best, not committed"));
  EXPECT_TRUE(Contains(html,
                       "<td class=\"num\">-0.005</td><td class=\"num\">[-0.02, 0.01]</td>"
                       "<td class=\"num\">0.031</td><td class=\"num\">1.9</td>"));
  EXPECT_TRUE(Contains(html, "<td class=\"num\">[-0.06, -0.01]</td><td class=\"num\">—</td>"));
  EXPECT_TRUE(Contains(html, "Stopped: no candidate meets p_min"));
  // Placements and timings.
  EXPECT_TRUE(Contains(html,
                       "<td>uniform</td><td class=\"num\">3</td><td>0, 2, 4</td>"
                       "<td class=\"num\">0.15</td>"));
  EXPECT_TRUE(Contains(html, "<td>distilling</td><td class=\"num\">181.2</td>"));
  EXPECT_TRUE(Contains(html, "<td>total</td><td class=\"num\">306.7</td>"));
  EXPECT_TRUE(Contains(html, "1234 layer passes in 95 s"));
}

TEST(ReportHtmlTest, DistillCurvesUseLogScaleOnlyWhenAllPositive) {
  const std::string html = Render(SampleReport());
  EXPECT_EQ(Count(html, "<polyline class=\"curve\""), 3u);
  EXPECT_TRUE(Contains(html, ">nmse (log scale)</text>"));
  EXPECT_EQ(Count(html, "<span class=\"key\">"), 3u);
  EXPECT_TRUE(Contains(html, "</span>layer 3</span>"));

  Json report = SampleReport();
  report["distill"]["layers"][0]["curve"][2]["nmse"] = 0.0;
  const std::string linear = Render(report);
  EXPECT_FALSE(Contains(linear, "log scale"));
  EXPECT_TRUE(Contains(linear, ">nmse</text>"));
  ExpectNoNonFinite(linear);
}

TEST(ReportHtmlTest, PageIsSelfContained) {
  const std::string html = Render(SampleReport());
  EXPECT_FALSE(Contains(html, "<script"));
  EXPECT_FALSE(Contains(html, "http"));
  EXPECT_FALSE(Contains(html, "//"));
  EXPECT_FALSE(Contains(html, "<link"));
  EXPECT_FALSE(Contains(html, "<img"));
  EXPECT_FALSE(Contains(html, "url("));
}

TEST(ReportHtmlTest, EscapesStringsFromTheReport) {
  Json report = SampleReport();
  report["job_id"] = "<script>alert(1)</script>";
  report["teacher"]["path"] = "a\"b&c'<d>";
  report["models"][1]["name"] = "<b>bold</b>";
  const std::string html = Render(report);
  EXPECT_FALSE(Contains(html, "<script"));
  EXPECT_FALSE(Contains(html, "<b>"));
  EXPECT_TRUE(Contains(html, "&lt;script&gt;alert(1)&lt;/script&gt;"));
  EXPECT_TRUE(Contains(html, "a&quot;b&amp;c&#39;&lt;d&gt;"));
  EXPECT_TRUE(Contains(html, "&lt;b&gt;bold&lt;/b&gt;"));
}

TEST(ReportHtmlTest, MissingTaskIsInvalidArgumentNamingTask) {
  Json report = SampleReport();
  report.erase("task");
  const StatusOr<std::string> html = RenderReportHtml(report);
  ASSERT_FALSE(html.ok());
  EXPECT_EQ(html.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(html.status().message(), "report.json: field 'task' is required");
}

TEST(ReportHtmlTest, ErrorsNameTheFullPath) {
  struct Case {
    const char* pointer;  // JSON pointer of the field to corrupt
    Json value;
    const char* message;
  };
  const Case cases[] = {
      {"/task/metric", 3, "report.json: field 'task.metric' must be a string, got 3"},
      {"/search/rounds/1/candidates/0/score", "x",
       "report.json: field 'search.rounds[1].candidates[0].score' must be a number, got \"x\""},
      {"/models/2/linear_layers/1", 6,
       "report.json: field 'models[2].linear_layers[1]' must be a layer index in [0, 6), got 6"},
      {"/models/2/linear_layers/1", 1,
       "report.json: field 'models[2].linear_layers[1]' repeats layer 1"},
      {"/search/trajectory/1/delta_ci95", Json::array({0.1, -0.1}),
       "report.json: field 'search.trajectory[1].delta_ci95' must be [low, high] with finite "
       "low <= high, got [0.1,-0.1]"},
      {"/timings/0", 5, "report.json: field 'timings[0]' must be an object, got 5"},
      {"/format", "hyb-report-v0",
       "report.json: field 'format' must be \"hyb-report-v1\", got \"hyb-report-v0\""},
      {"/teacher/num_layers", 0,
       "report.json: field 'teacher.num_layers' must be in [1, 4096], "
       "got 0"},
      {"/distill/layers/0/curve/1/nmse", nullptr,
       "report.json: field 'distill.layers[0].curve[1].nmse' is required"},
  };
  for (const Case& c : cases) {
    Json report = SampleReport();
    report[Json::json_pointer(c.pointer)] = c.value;
    const StatusOr<std::string> html = RenderReportHtml(report);
    ASSERT_FALSE(html.ok()) << c.pointer;
    EXPECT_EQ(html.status().code(), StatusCode::kInvalidArgument) << c.pointer;
    EXPECT_EQ(html.status().message(), c.message);
  }

  const StatusOr<std::string> not_object = RenderReportHtml(Json::array());
  ASSERT_FALSE(not_object.ok());
  EXPECT_EQ(not_object.status().message(), "report.json: expected a JSON object, got []");
}

TEST(ReportHtmlTest, OptionalSectionsAreLeftOut) {
  Json report = SampleReport();
  report["search"].erase("rounds");
  report.erase("placements");
  for (Json& layer : report["distill"]["layers"]) layer.erase("curve");
  report["models"][0]["test"] = nullptr;
  report["distill"].erase("tokens");
  const std::string html = Render(report);
  ASSERT_FALSE(html.empty());
  EXPECT_FALSE(Contains(html, "<tr class=\"round\">"));
  EXPECT_FALSE(Contains(html, "class=\"cand\""));
  EXPECT_TRUE(Contains(html, "Stopped: no candidate meets p_min"));
  EXPECT_FALSE(Contains(html, "id=\"placements\""));
  EXPECT_FALSE(Contains(html, "class=\"group-label\""));
  EXPECT_EQ(Count(html, "class=\"cell linear\""), 4u);
  EXPECT_EQ(Count(html, "class=\"cell full\""), 3u * 6u - 4u);
  // No curves: trajectory and layer map only, but the final-loss table stays.
  EXPECT_EQ(Count(html, "<svg"), 2u);
  EXPECT_TRUE(Contains(html, "<td class=\"num\">0.0012</td>"));
  EXPECT_TRUE(Contains(html, "— tokens"));
  ExpectNoNonFinite(html);
}

TEST(ReportHtmlTest, SinglePointTrajectoryHasNoNonFiniteNumbers) {
  Json report = SampleReport();
  report["search"].erase("rounds");
  report["search"]["trajectory"] = Json::parse(
      R"([{"num_linear": 0, "linear_layers": [], "score": 0.23, "delta_ci95": [0, 0]}])");
  report["search"]["p_full"] = 0.23;
  report["search"]["p_min"] = 0.23;  // every y value equal: the range must be padded
  // One-point curves with equal values too.
  report["distill"]["layers"] = Json::parse(
      R"([{"layer": 0, "final_mse": 0.5, "final_nmse": 0.5,
           "curve": [{"step": 0, "mse": 0.5, "nmse": 0.5}]}])");
  const std::string html = Render(report);
  ASSERT_FALSE(html.empty());
  EXPECT_EQ(Count(html, "<circle class=\"pt\""), 1u);
  EXPECT_FALSE(Contains(html, "class=\"traj\""));
  EXPECT_TRUE(Contains(html, ">p_min 0.23</text>"));
  ExpectNoNonFinite(html);

  // All zeros: linear axis, zero-width range.
  report["search"]["trajectory"][0]["score"] = 0.0;
  report["search"]["p_full"] = 0.0;
  report["search"]["p_min"] = 0.0;
  report["distill"]["layers"][0]["curve"][0]["nmse"] = 0.0;
  ExpectNoNonFinite(Render(report));
}

TEST(ReportHtmlTest, WideModelsLabelEveryFewLayers) {
  Json report = SampleReport();
  report["teacher"]["num_layers"] = 200;
  report["models"][2]["linear_layers"] = Json::array({1, 3, 4, 150, 199});
  const std::string html = Render(report);
  ASSERT_FALSE(html.empty());
  EXPECT_EQ(Count(html, "class=\"cell linear\""), 1u + 5u + 9u);
  EXPECT_EQ(Count(html, "class=\"cell full\""), 6u * 200u - 15u);
  EXPECT_TRUE(Contains(html, "text-anchor=\"middle\">0</text>"));
  EXPECT_FALSE(Contains(html, "text-anchor=\"middle\">199</text>"));  // 10 px cells: not all fit
}

}  // namespace
}  // namespace hyb::coordinator
