// The service's TaskExecutor: it runs nothing itself. Each task goes into the job store's
// queue under a deterministic id ("<job>:eval:<split>:<candidate>"), workers lease and run it,
// and the executor waits for the result in the store. Enqueueing a task that exists returns
// the existing one, so a restarted coordinator picks up results finished while it was down
// and leases still held by live workers. Torch-free.
#pragma once

#include <set>
#include <string>

#include "hyb/common/tasks.h"
#include "hyb/coordinator/service.h"

namespace hyb::coordinator {

class RemoteExecutor : public TaskExecutor {
 public:
  RemoteExecutor(Service* service, std::string job_id)
      : service_(service), job_id_(std::move(job_id)) {}

  // The workers check what needs LibTorch when they load the job; here only the size of the
  // distillation gang is read (distill.parallel: pipeline x data workers, absent ones 1).
  Status Validate(const JobSpec& spec) override;
  // Relays the heartbeats' progress events to `progress`.
  StatusOr<DistillResult> Distill(const DistillTask& task, const ProgressFn& progress) override;
  Status Submit(const EvaluateTask& task) override;
  StatusOr<EvaluateResult> NextEvaluation() override;
  Status Export(const ExportTask& task) override;

  static std::string DistillTaskId(const std::string& job_id);
  // Member `rank` of gang attempt `attempt`: "<job>:distill:g<attempt>:r<rank>".
  static std::string GangMemberTaskId(const std::string& job_id, int64_t attempt, int64_t rank);
  static std::string EvaluateTaskId(const EvaluateTask& task);
  static std::string ExportTaskId(const ExportTask& task);

 private:
  // Waits for task `id` to leave QUEUED/LEASED; calls `on_progress` with new progress events.
  // Cancelled when the job is being cancelled, Unavailable when the coordinator stops.
  StatusOr<storage::TaskRow> WaitFor(const std::string& id,
                                     const std::function<bool(const Json&)>& on_progress);
  Status Interrupted() const;
  // Distillation by a gang of gang_size_ workers: all members leased at once; when one fails
  // or vanishes the others are cancelled and a new attempt re-forms the gang, which resumes
  // from the per-layer checkpoints. Each failure spends one of the job's retries.
  StatusOr<DistillResult> DistillByGang(const DistillTask& task, const ProgressFn& progress);

  Service* service_;
  std::string job_id_;
  int64_t gang_size_ = 1;
  std::set<std::string> outstanding_;  // evaluation task ids
};

}  // namespace hyb::coordinator
