#include "hyb/coordinator/remote_executor.h"

#include <algorithm>
#include <cstdio>
#include <map>

namespace hyb::coordinator {

Status RemoteExecutor::Validate(const JobSpec& spec) {
  gang_size_ = std::max<int64_t>(1, spec.distill.pipeline) *
               std::max<int64_t>(1, spec.distill.data_parallel);
  return Status::Ok();
}

std::string RemoteExecutor::GangMemberTaskId(const std::string& job_id, int64_t attempt,
                                             int64_t rank) {
  return job_id + ":distill:g" + std::to_string(attempt) + ":r" + std::to_string(rank);
}

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
  if (gang_size_ > 1) return DistillByGang(task, progress);
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

StatusOr<DistillResult> RemoteExecutor::DistillByGang(const DistillTask& task,
                                                      const ProgressFn& progress) {
  storage::JobStore& store = service_->store();
  // The latest attempt in the store (a restarted coordinator continues it).
  int64_t attempt = 0;
  {
    HYB_ASSIGN_OR_RETURN(auto tasks, store.JobTasks(task.job_id));
    for (const auto& t : tasks) {
      if (t.kind != "distill_member") continue;
      attempt = std::max<int64_t>(attempt, t.payload["gang"].value("attempt", int64_t{0}));
    }
  }
  bool enqueue = attempt == 0;
  if (attempt == 0) attempt = 1;
  Json last_progress;
  while (true) {
    const std::string key = task.job_id + "/distill/g" + std::to_string(attempt);
    if (enqueue) {
      for (int64_t r = 0; r < gang_size_; ++r) {
        const Json payload = {{"task", task.ToJson()},
                              {"gang",
                               {{"key", key}, {"attempt", attempt}, {"size", gang_size_}, {"rank", r}}}};
        HYB_RETURN_IF_ERROR(store
                                .EnqueueTask(GangMemberTaskId(task.job_id, attempt, r), task.job_id,
                                             "distill_member", payload, NowMs())
                                .status());
      }
      service_->NotifyTaskChange();
      if (progress) {
        progress({{"event", "distill_gang_attempt"}, {"attempt", attempt}, {"size", gang_size_}});
      }
    }
    // Wait for every member, or for the gang to break.
    std::string broken;
    bool announced = false;
    while (true) {
      std::vector<storage::TaskRow> members;
      for (int64_t r = 0; r < gang_size_; ++r) {
        const std::string id = GangMemberTaskId(task.job_id, attempt, r);
        HYB_ASSIGN_OR_RETURN(auto row, store.GetTask(id));
        if (!row) return NotFound("task '" + id + "' disappeared from the job store");
        members.push_back(std::move(*row));
      }
      bool all_done = true;
      for (const auto& m : members) {
        all_done = all_done && m.state == storage::TaskState::kDone;
        if (m.state == storage::TaskState::kFailed) {
          for (const auto& o : members) {
            (void)store.CancelTask(o.id, "gang member " + m.id + " failed for good", NowMs());
          }
          service_->NotifyTaskChange();
          return Internal("task " + m.id +
                          " failed for good (the job's retry budget is spent): " + m.error);
        }
        const bool formed = m.attempts > 0;
        if (formed && (m.state == storage::TaskState::kQueued ||
                       m.state == storage::TaskState::kCancelled)) {
          broken = m.id + (m.error.empty() ? std::string(" was handed back") : ": " + m.error);
        }
      }
      if (all_done) {
        DistillResult merged;
        std::map<int64_t, LayerDistillSummary> layers;
        for (const auto& m : members) {
          HYB_ASSIGN_OR_RETURN(DistillResult part,
                               DistillResult::FromJson(m.result, "result of task " + m.id));
          merged.steps = part.steps;
          merged.tokens = part.tokens;
          merged.seconds = std::max(merged.seconds, part.seconds);
          for (auto& l : part.layers) layers[l.layer] = std::move(l);
        }
        for (auto& [l, summary] : layers) merged.layers.push_back(std::move(summary));
        return merged;
      }
      if (!broken.empty()) break;
      // Rank 0 (the first stage) reports the steps.
      if (progress && !members[0].progress.is_null() && members[0].progress != last_progress) {
        last_progress = members[0].progress;
        if (!announced && last_progress.contains("gang")) {
          // How the gang cut the teacher, once per attempt.
          Json e = last_progress["gang"];
          e["event"] = "distill_gang";
          announced = true;
          if (!progress(e)) return Cancelled("progress could not be recorded");
        }
        if (!progress(members[0].progress)) return Cancelled("progress could not be recorded");
      }
      if (Status s = Interrupted(); !s.ok()) {
        if (s.code() == StatusCode::kCancelled) {
          for (const auto& m : members) (void)store.CancelTask(m.id, s.message(), NowMs());
          service_->NotifyTaskChange();
        }
        return s;
      }
      service_->WaitForTaskChange(1000);
    }
    // A member failed or vanished: stop the rest and form the gang again.
    for (int64_t r = 0; r < gang_size_; ++r) {
      HYB_RETURN_IF_ERROR(store.CancelTask(GangMemberTaskId(task.job_id, attempt, r),
                                           "gang attempt " + std::to_string(attempt) +
                                               " broke: " + broken,
                                           NowMs()));
    }
    service_->NotifyTaskChange();
    std::fprintf(stderr, "coordinator: job %s: distillation gang attempt %lld broke (%s); "
                 "re-forming\n", task.job_id.c_str(), static_cast<long long>(attempt),
                 broken.c_str());
    ++attempt;
    enqueue = true;
  }
}

}  // namespace hyb::coordinator
