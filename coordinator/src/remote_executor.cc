#include "hyb/coordinator/remote_executor.h"

namespace hyb::coordinator {

std::string RemoteExecutor::DistillTaskId(const std::string& job_id) { return job_id + ":distill"; }

std::string RemoteExecutor::EvaluateTaskId(const EvaluateTask& task) {
  return task.job_id + ":eval:" + task.split + ":" + task.candidate_id;
}

std::string RemoteExecutor::ExportTaskId(const ExportTask& task) {
  return task.job_id + ":export:" + task.name;
}

Status RemoteExecutor::Interrupted() const {
  if (service_->stopping()) return Unavailable("the coordinator is shutting down");
  auto job = service_->store().GetJob(job_id_);
  if (!job.ok()) return job.status();
  if (!job->has_value()) return NotFound("job '" + job_id_ + "' is gone");
  if ((*job)->cancel_requested) return Cancelled("job '" + job_id_ + "' was cancelled");
  return Status::Ok();
}

StatusOr<storage::TaskRow> RemoteExecutor::WaitFor(
    const std::string& id, const std::function<bool(const Json&)>& on_progress) {
  Json last_progress;
  while (true) {
    HYB_ASSIGN_OR_RETURN(auto row, service_->store().GetTask(id));
    if (!row) return NotFound("task '" + id + "' disappeared from the job store");
    switch (row->state) {
      case storage::TaskState::kDone:
        return *row;
      case storage::TaskState::kFailed:
        return Internal("task " + id +
                        " failed for good (the job's retry budget is spent): " + row->error);
      case storage::TaskState::kCancelled:
        return Cancelled("task " + id + " was cancelled");
      default:
        break;
    }
    if (on_progress && !row->progress.is_null() && row->progress != last_progress) {
      last_progress = row->progress;
      if (!on_progress(row->progress)) return Cancelled("progress could not be recorded");
    }
    HYB_RETURN_IF_ERROR(Interrupted());
    service_->WaitForTaskChange(1000);
  }
}

StatusOr<DistillResult> RemoteExecutor::Distill(const DistillTask& task,
                                                const ProgressFn& progress) {
  const std::string id = DistillTaskId(task.job_id);
  HYB_RETURN_IF_ERROR(
      service_->store().EnqueueTask(id, task.job_id, "distill", task.ToJson(), NowMs()).status());
  service_->NotifyTaskChange();
  HYB_ASSIGN_OR_RETURN(storage::TaskRow row, WaitFor(id, progress));
  return DistillResult::FromJson(row.result, "result of task " + id);
}

Status RemoteExecutor::Submit(const EvaluateTask& task) {
  const std::string id = EvaluateTaskId(task);
  HYB_RETURN_IF_ERROR(
      service_->store().EnqueueTask(id, task.job_id, "evaluate", task.ToJson(), NowMs()).status());
  outstanding_.insert(id);
  service_->NotifyTaskChange();
  return Status::Ok();
}

StatusOr<EvaluateResult> RemoteExecutor::NextEvaluation() {
  if (outstanding_.empty()) return FailedPrecondition("no evaluation is outstanding");
  while (true) {
    for (const std::string id : outstanding_) {  // a copy: the loop may erase it
      HYB_ASSIGN_OR_RETURN(auto row, service_->store().GetTask(id));
      if (!row) return NotFound("task '" + id + "' disappeared from the job store");
      if (row->state == storage::TaskState::kQueued || row->state == storage::TaskState::kLeased) {
        continue;
      }
      outstanding_.erase(id);
      if (row->state == storage::TaskState::kDone) {
        return EvaluateResult::FromJson(row->result, "result of task " + row->id);
      }
      if (row->state == storage::TaskState::kCancelled) {
        return Cancelled("task " + row->id + " was cancelled");
      }
      return Internal("task " + row->id +
                      " failed for good (the job's retry budget is spent): " + row->error);
    }
    HYB_RETURN_IF_ERROR(Interrupted());
    service_->WaitForTaskChange(1000);
  }
}

Status RemoteExecutor::Export(const ExportTask& task) {
  const std::string id = ExportTaskId(task);
  HYB_RETURN_IF_ERROR(
      service_->store().EnqueueTask(id, task.job_id, "export", task.ToJson(), NowMs()).status());
  service_->NotifyTaskChange();
  return WaitFor(id, nullptr).status();
}

}  // namespace hyb::coordinator
