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

class BlockwiseDistiller {
 public:
  // The teacher must be all softmax attention. `layers` (sorted, distinct) are the layers to
  // distill. Existing checkpoints in `checkpoint_dir` are resumed (their mixer options must equal
  // `mixer`; DataLoss naming the file otherwise); missing layers start from a weight transfer.
  // Creates `checkpoint_dir` if needed.
  static StatusOr<std::unique_ptr<BlockwiseDistiller>> Create(
      std::shared_ptr<const DecoderModel> teacher, std::vector<int64_t> layers,
      const LinearMixerOptions& mixer, const DistillOptions& options,
      std::shared_ptr<const storage::TokenDataset> data, std::string checkpoint_dir);

  // Trains until every layer has reached options.steps, or (if stop_after_step >= 0) stops
  // after that step, as a crash right after it would (it is checkpointed only if it falls on
  // the checkpoint_every grid). Checkpoints every checkpoint_every steps and at the end.
  // Cancelled (after checkpointing) when `progress` returns false.
  // Internal naming the layer and step if a loss or gradient is not finite.
  Status Run(const DistillProgressFn& progress = nullptr, int64_t stop_after_step = -1);

  const std::vector<LayerDistillState>& states() const { return states_; }
  // The trained mixer of `layer` (fp32, on the teacher's device).
  std::shared_ptr<LinearMixer> mixer(int64_t layer) const;
  int64_t tokens_per_step() const { return options_.batch_size * options_.sequence_length; }

 private:
  BlockwiseDistiller() = default;
  Status Checkpoint(size_t i) const;
  Status LoadCheckpoint(size_t i, const std::string& path);
  std::string LayerPath(int64_t layer) const;
  double LearningRate(int64_t step) const;  // for 1-based step

  std::shared_ptr<const DecoderModel> teacher_;
  std::vector<int64_t> layers_;
  LinearMixerOptions mixer_options_;
  DistillOptions options_;
  std::shared_ptr<const storage::TokenDataset> data_;
  std::string dir_;
  at::ScalarType compute_dtype_ = at::kFloat;
  std::vector<std::shared_ptr<LinearMixer>> mixers_;  // parallel to layers_
  std::vector<std::vector<at::Tensor>> adam_m_, adam_v_;
  std::vector<LayerDistillState> states_;
};

// Reads a layer checkpoint's mixer (weights only) for `shape`: what evaluation and export load.
StatusOr<std::shared_ptr<LinearMixer>> LoadDistilledMixer(const std::string& path,
                                                          const AttentionShape& shape,
                                                          const RuntimePlacement& placement);
// The "hyb.distill" metadata of a layer checkpoint.
StatusOr<Json> ReadDistillCheckpointInfo(const std::string& path);

}  // namespace hyb::worker
