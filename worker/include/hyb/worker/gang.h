// A job's ranks working together: `mpirun -np N hybridize run job.json --mpi`. Rank 0 (the
// leader) runs the job runner with a GangExecutor; every other rank (a member) runs
// RunGangMember, which executes what the leader sends until it says stop.
//
// What each rank does:
//   distill   every rank: the teacher is cut into `pipeline` stages of consecutive layers with
//             about equal parameter counts, each stage replicated `data` times (rank r is stage
//             r / data, replica r % data); a rank loads only its stage's layers and trains their
//             mixers (BlockwiseDistiller with DistillParallel). The tensors move over NCCL when
//             the job runs on CUDA, over MPI on CPU.
//   evaluate  the candidates of a search round are cut into contiguous runs of layers, one run
//             per rank, so each rank's prefix cache serves its whole run; each rank loads the
//             whole teacher for this (evaluation does not shard).
//   export    the leader alone.
// Control messages (JSON) travel over a communicator of their own with a long idle timeout
// (a member waits for the leader's next command); tensor traffic fails after the short one.
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "hyb/common/job_spec.h"
#include "hyb/common/tasks.h"
#include "hyb/worker/communicator.h"
#include "hyb/worker/local_executor.h"

namespace hyb::worker {

struct GangOptions {
  // Bound on every tensor operation between ranks (and on collecting a distillation's results).
  std::chrono::milliseconds timeout{std::chrono::seconds(600)};
  // Bound on a member's wait for the leader's next command and on the leader's wait for a
  // member's evaluations.
  std::chrono::milliseconds idle_timeout{std::chrono::hours(24)};
};

// The pipeline x data shape of a gang of `ranks` for this job: the spec's distill.parallel where
// given; otherwise the fewest stages (dividing `ranks`) whose share of the teacher's weights,
// times 3 for activations and the students, fits in `rank_memory_bytes`, and data = ranks /
// pipeline. InvalidArgument naming distill.parallel when the shape does not fit the ranks.
struct GangShape {
  int64_t pipeline = 1, data = 1;
};
StatusOr<GangShape> ChooseGangShape(const JobSpec& spec, int64_t ranks, int64_t teacher_bytes,
                                    int64_t rank_memory_bytes);

// Rank 0's executor. `world` and `control` span the same ranks (control: JSON, long timeout;
// world: tensors on CPU); `device_world` carries the distillation tensors (NCCL on CUDA, or
// `world` itself on CPU).
class GangExecutor : public TaskExecutor {
 public:
  GangExecutor(std::string job_dir, Communicator* control, Communicator* device_world,
               GangOptions options);
  // Asks the members to stop (if they are waiting for a command). Call once at the end.
  Status Stop();
  // Whether every member is waiting for a command (false after an operation failed midway:
  // then only aborting the whole gang ends it).
  bool members_idle() const { return members_idle_; }

  Status Validate(const JobSpec& spec) override;
  StatusOr<DistillResult> Distill(const DistillTask& task, const ProgressFn& progress) override;
  Status Submit(const EvaluateTask& task) override;
  StatusOr<EvaluateResult> NextEvaluation() override;
  Status Export(const ExportTask& task) override;

 private:
  // Sends `command` to every member and runs this rank's part.
  Status Broadcast(const Json& command);

  LocalExecutor local_;
  Communicator* control_;
  Communicator* device_world_;
  GangOptions options_;
  bool members_idle_ = true;
  std::vector<EvaluateTask> queued_;
  std::deque<StatusOr<EvaluateResult>> finished_;
};

// Every other rank: executes the leader's commands until "stop". Returns the first error of its
// own work only if it could not report it to the leader.
// One rank's part of a gang's distillation (every rank of the gang calls it at once): the
// shape from the spec or the ranks' memory, this rank's stage of the teacher, its layers'
// mixers. `control` carries CPU values (any backend), `device_world` the stages' tensors.
// `progress` is called on rank 0 only. Returns this rank's layers.
StatusOr<DistillResult> DistillGangPart(const LocalExecutor& executor, Communicator* control,
                                        Communicator* device_world, const DistillTask& task,
                                        const ProgressFn& progress);

// `spec` is the member's own reading of the job file (the leader checks that it matches its own).
Status RunGangMember(const JobSpec& spec, std::string job_dir, Communicator* control,
                     Communicator* device_world, GangOptions options);

}  // namespace hyb::worker
