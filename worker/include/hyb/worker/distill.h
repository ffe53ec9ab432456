// Blockwise local distillation (BLD), step (1) of Distill-then-Replace: every selected layer gets
// a linear mixer initialised from the teacher's attention weights, and all of them train at once
// on MSE(teacher attention output, mixer output) given the same input hidden states. One
// teacher forward (no gradient) per micro-batch feeds every layer; only the mixers train.
//
// Checkpoints: one file per layer, `<dir>/layer_<l>.safetensors`, published atomically (write,
// fsync, rename). It holds the mixer's fp32 weights under their layer-relative names
// ("linear_attn.q_proj.weight"), the AdamW moments ("adam_m.<name>", "adam_v.<name>") and, in
// the metadata key "hyb.distill", JSON with the layer, the step reached, the data cursor after
// that step, the mixer options and the loss curve. Each layer's file is self-contained, so a
// resumed run restarts the data stream at the earliest layer's step and lets layers that are
// ahead (a crash between two layers' publishes) sit out until the stream reaches them: the
// result is the same as an uninterrupted run's.
//
// Many ranks (DistillParallel): the teacher is cut into pipeline stages of consecutive layers;
// each stage holds only its layers (DecoderModel::LoadRange), receives the residual stream of
// every micro-batch from the stage before, runs its teacher layers, sends the stream on and
// trains its own layers' mixers while the next stage computes. Data-parallel replicas of a stage
// take equal slices of each micro-batch's rows and all-reduce their mixers' gradients (and the
// losses) before the update, so P stages x D replicas train the same mixers as one process on
// the same data order. The resumed step is the earliest over every rank; the data cursor of a
// step is a function of the step, so no rank needs another's files.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"
#include "hyb/storage/token_dataset.h"
#include "hyb/worker/communicator.h"
#include "hyb/worker/decoder_model.h"
#include "hyb/worker/linear_mixer.h"

namespace hyb::worker {

struct DistillOptions {
  int64_t steps = 200;            // optimizer steps (one micro-batch each)
  int64_t batch_size = 8;         // sequences per micro-batch
  int64_t sequence_length = 128;  // tokens per sequence
  double lr = 1e-3;               // peak learning rate
  int64_t warmup_steps = 20;      // linear warmup from lr / warmup_steps
  double min_lr_ratio = 0.1;      // cosine decays to lr * min_lr_ratio at `steps`
  double weight_decay = 0.0;      // AdamW, decoupled
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double grad_clip = 1.0;         // per layer, on the global norm of its gradients (0: off)
  int64_t checkpoint_every = 50;  // steps between checkpoints (the last step always checkpoints)
  int64_t log_every = 10;         // steps between loss-curve points
  uint64_t seed = 0;              // data order
  // Compute precision of the teacher forward and the mixers' forward/backward: "bf16" keeps
  // fp32 master weights and optimizer state and casts them per step (autocast-style); "fp32".
  std::string compute_dtype = "fp32";
  // Set Gated DeltaNet / GLA output scale from the first batch before training (see
  // LinearMixer::CalibrateOutputScale).
  bool calibrate_output_scale = true;
};

struct DistillCurvePoint {
  int64_t step = 0;  // 1-based step whose batch gave the loss
  double mse = 0;    // mean squared error
  double nmse = 0;   // mse / mean square of the teacher output on that batch
};

struct LayerDistillState {
  int64_t layer = -1;
  int64_t step = 0;               // steps applied to this layer
  storage::DatasetCursor cursor;  // the data stream's position after `step`
  std::vector<DistillCurvePoint> curve;
};

// Per-step progress: the step just done and the latest loss of every layer. Returning false
// stops the run: every layer is checkpointed at that step and Run returns Cancelled.
using DistillProgressFn = std::function<bool(int64_t step, const std::vector<LayerDistillState>&)>;

// This rank's place in a distillation gang. Communicators are borrowed (they must outlive the
// distiller); null means one stage / one replica.
struct DistillParallel {
  // The stages of this rank's data replica, rank = stage index: stage s receives the residual
  // stream from s - 1 and sends to s + 1.
  Communicator* pipeline = nullptr;
  // The replicas of this rank's stage, rank = replica index: they split each micro-batch's rows
  // (batch_size must divide by their number) and all-reduce gradients; replica 0 writes the
  // stage's checkpoints.
  Communicator* data = nullptr;
  // The stage's teacher layers [first_layer, last_layer) (-1: through the last layer). The
  // distiller's `layers` must lie inside.
  int64_t first_layer = 0, last_layer = -1;
};

// Stages of consecutive layers with about equal parameter counts (the embeddings count towards
// the first stage, the final norm and head towards the last): the [first, last) of each of
// `stages`. `layer_params` is the parameter count of each layer. InvalidArgument when there are
// more stages than layers.
StatusOr<std::vector<std::pair<int64_t, int64_t>>> BalanceStages(
    const std::vector<int64_t>& layer_params, int64_t embedding_params, int64_t head_params,
    int64_t stages);

class BlockwiseDistiller {
 public:
  // The teacher must be all softmax attention. `layers` (sorted, distinct) are the layers to
  // distill. Existing checkpoints in `checkpoint_dir` are resumed (their mixer options must equal
  // `mixer`; DataLoss naming the file otherwise); missing layers start from a weight transfer.
  // Creates `checkpoint_dir` if needed.
  static StatusOr<std::unique_ptr<BlockwiseDistiller>> Create(
      std::shared_ptr<const DecoderModel> teacher, std::vector<int64_t> layers,
      const LinearMixerOptions& mixer, const DistillOptions& options,
      std::shared_ptr<const storage::TokenDataset> data, std::string checkpoint_dir,
      const DistillParallel& parallel = {});

  // Trains until every layer has reached options.steps, or (if stop_after_step >= 0) stops
  // after that step, as a crash right after it would (it is checkpointed only if it falls on
  // the checkpoint_every grid). Checkpoints every checkpoint_every steps and at the end.
  // Cancelled (after checkpointing) when `progress` returns false; with many ranks only the
  // first stage's replica 0 calls `progress`, and its answer travels down the pipeline so that
  // every rank stops after the same step. Internal naming the layer and step if a loss or
  // gradient is not finite; the communicator's error (naming the peer) if a rank stops
  // answering.
  Status Run(const DistillProgressFn& progress = nullptr, int64_t stop_after_step = -1);

  const std::vector<LayerDistillState>& states() const { return states_; }
  // The trained mixer of `layer` (fp32, on the teacher's device).
  std::shared_ptr<LinearMixer> mixer(int64_t layer) const;
  int64_t tokens_per_step() const { return options_.batch_size * options_.sequence_length; }

 private:
  BlockwiseDistiller() = default;
  Status Checkpoint(size_t i) const;
  // One step's input on this stage: the first stage samples (and slices its replica's rows),
  // later stages receive the stream. *stop: the stage before has stopped.
  StatusOr<at::Tensor> StepInput(storage::SequenceSampler& sampler, int64_t step, bool* stop);
  // The mixers' gradients for `step` on this rank's rows, all-reduced over the replicas, and
  // the update. Fills the loss curve.
  Status TrainStep(int64_t step, const LayerTaps& taps, const storage::SequenceSampler& sampler);
  bool first_stage() const { return parallel_.pipeline == nullptr || parallel_.pipeline->rank() == 0; }
  bool last_stage() const {
    return parallel_.pipeline == nullptr ||
           parallel_.pipeline->rank() == parallel_.pipeline->size() - 1;
  }
  int64_t replicas() const { return parallel_.data != nullptr ? parallel_.data->size() : 1; }
  bool writes_checkpoints() const { return parallel_.data == nullptr || parallel_.data->rank() == 0; }
  Status LoadCheckpoint(size_t i, const std::string& path);
  std::string LayerPath(int64_t layer) const;
  double LearningRate(int64_t step) const;  // for 1-based step
  // Internal naming the first layer whose gradient norm was ever non-finite (one device read).
  Status CheckFinite() const;

  std::shared_ptr<const DecoderModel> teacher_;
  std::vector<int64_t> layers_;
  LinearMixerOptions mixer_options_;
  DistillOptions options_;
  std::shared_ptr<const storage::TokenDataset> data_;
  std::string dir_;
  at::ScalarType compute_dtype_ = at::kFloat;
  std::vector<std::shared_ptr<LinearMixer>> mixers_;  // parallel to layers_
  std::vector<std::vector<at::Tensor>> adam_m_, adam_v_;
  at::Tensor nonfinite_;  // bool [layers] on the device: a non-finite gradient norm was seen
  int64_t nonfinite_step_ = 0;  // the last step whose norms it includes
  std::vector<size_t> active_;   // the layers TrainStep last updated, and their device index
  at::Tensor active_index_;
  std::vector<LayerDistillState> states_;
  DistillParallel parallel_;
};

// Reads a layer checkpoint's mixer (weights only) for `shape`: what evaluation and export load.
StatusOr<std::shared_ptr<LinearMixer>> LoadDistilledMixer(const std::string& path,
                                                          const AttentionShape& shape,
                                                          const RuntimePlacement& placement);
// The "hyb.distill" metadata of a layer checkpoint.
StatusOr<Json> ReadDistillCheckpointInfo(const std::string& path);

}  // namespace hyb::worker
