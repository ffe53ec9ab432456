// Renders a finished job's report.json (format "hyb-report-v1", docs/report_format.md) as
// report.html: one self-contained page that opens offline, from the JSON alone.
#pragma once

#include <string>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"

namespace hyb::coordinator {

// Renders `report` as one HTML page with inline CSS and inline SVG only: no <script>, no <link>,
// no <img>, no URL of any kind. Every string taken from the report is HTML-escaped, so a job id
// or path cannot inject markup.
//
// Sections, in order: job summary (job_id, created, teacher, mixer, task and which direction is
// better), models table, search trajectory plot (committed models with the committing round's
// 95% interval, every round's candidates as hollow markers, p_full and p_min as dashed lines),
// layer map (one row per model and per placement, one column per layer), per-layer distillation
// loss (nmse vs step, log scale when every value is positive) with a table of final losses, the
// search rounds table with stop_reason, placements, timings with the search's layer_passes.
//
// Required fields: format (== "hyb-report-v1"), job_id, created, teacher.{path, num_layers},
// mixer.type, task.{name, type, metric, higher_is_better}, distill.layers[].{layer, final_mse,
// final_nmse}, search.{p_full, p_min, stop_reason, layer_passes, trajectory[].{num_linear,
// linear_layers, score, delta_ci95}}, models[].{name, linear_layers, validation},
// timings[].{phase, seconds}. When search.rounds is present each round needs round, candidates
// and committed, each candidate layer, linear_layers, score, delta and delta_ci95; when
// placements is present each needs name and linear_layers; when a distill curve is present each
// point needs step, mse and nmse.
// Optional, shown as "—" when absent or null: teacher.family, task.validation_examples,
// task.test_examples, distill.{steps, tokens, seconds}, search.seconds, models[].test,
// placements[].test, rounds[].base_score, rounds[].best_layer, candidates[].{kl, seconds}.
// Optional sections, left out when absent: placements, distill curves, search.rounds.
//
// Fails with InvalidArgument "report.json: field '<path>' <problem>", the path spelled like
// "search.rounds[1].candidates[0].score", when a required field is missing or null, a field
// has the wrong type, a number is not finite, an interval is not [low, high] with low <= high,
// teacher.num_layers is outside [1, 4096], or a layer index is outside [0, num_layers) or
// repeated within one list. Pure function of its input; any thread may call it.
StatusOr<std::string> RenderReportHtml(const Json& report);

}  // namespace hyb::coordinator
