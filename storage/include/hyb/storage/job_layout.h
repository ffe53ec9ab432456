// Where a job's files live under a storage root (a local directory now, shared storage in the
// service). Every file is published atomically (storage/atomic_file.h), so a reader sees either
// the old or the new version, never a partial one; events.jsonl grows by fsynced whole lines
// (AppendLine). All of it goes through an Env (storage/env.h).
//
//   <root>/<job_id>/job.json                          the validated spec, defaults filled
//   <root>/<job_id>/inputs.json                       fingerprints of teacher, data, task files
//   <root>/<job_id>/events.jsonl                      progress events, one JSON object per line
//   <root>/<job_id>/distill/layer_<l>.safetensors     mixer, optimizer state, cursor, loss curve
//   <root>/<job_id>/distill/result.json               the finished distillation's summary
//   <root>/<job_id>/eval/<split>/<candidate_id>.json  one evaluation (score, per-example values)
//   <root>/<job_id>/exports/{m_best,m_opt}/           hybrid model directories
//   <root>/<job_id>/report.json, report.html          the report (docs/report_format.md)
#pragma once

#include <string>

#include "hyb/common/status.h"
#include "hyb/storage/env.h"

namespace hyb::storage {

class JobLayout {
 public:
  JobLayout(std::string root, std::string job_id)
      : dir_(std::move(root) + "/" + std::move(job_id)) {}
  // The layout of the job whose directory is `job_dir`.
  static JobLayout ForDirectory(const std::string& job_dir) {
    JobLayout l("", "");
    l.dir_ = job_dir;
    return l;
  }

  const std::string& dir() const { return dir_; }
  std::string JobSpec() const { return dir_ + "/job.json"; }
  std::string Inputs() const { return dir_ + "/inputs.json"; }
  std::string Events() const { return dir_ + "/events.jsonl"; }
  std::string DistillDir() const { return dir_ + "/distill"; }
  std::string DistillResult() const { return dir_ + "/distill/result.json"; }
  std::string EvalDir(const std::string& split) const { return dir_ + "/eval/" + split; }
  std::string Evaluation(const std::string& split, const std::string& candidate_id) const {
    return EvalDir(split) + "/" + candidate_id + ".json";
  }
  std::string ExportsDir() const { return dir_ + "/exports"; }
  std::string Export(const std::string& name) const { return ExportsDir() + "/" + name; }
  std::string ReportJson() const { return dir_ + "/report.json"; }
  std::string ReportHtml() const { return dir_ + "/report.html"; }

  // Creates the job directory and its subdirectories through `env` (existing ones are fine).
  // IoError naming the directory that could not be made.
  Status CreateDirectories(Env* env) const;
  // The same on Env::Default().
  Status CreateDirectories() const;

 private:
  std::string dir_;
};

// Env::Default()->CreateDirectories(path): mkdir -p. IoError naming the path on failure.
Status MakeDirectories(const std::string& path);
// Env::Default()->FileExists(path): a file or directory is there.
bool PathExists(const std::string& path);

}  // namespace hyb::storage
