#include "hyb/worker/decoder_model.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <set>
#include <thread>

#include "hyb/common/logging.h"
#ifdef HYB_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif
#include "hyb/kernels/elementwise.h"
#include "hyb/kernels/linear.h"
#include "hyb/kernels/norm.h"
#include "hyb/storage/atomic_file.h"
#include "hyb/storage/model_dir.h"
#include "hyb/worker/attention_mixer.h"
#include "hyb/worker/hf_remote_code.h"
#include "hyb/worker/linear_mixer.h"
#include "hyb/worker/tensor_io.h"

namespace hyb::worker {
namespace {

std::string ShapeString(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Fetches checkpoint tensors, checks shapes, and places them; remembers what it consumed.
class WeightLoader {
 public:
  WeightLoader(const storage::Checkpoint& ckpt, const RuntimePlacement& placement)
      : ckpt_(ckpt), placement_(placement) {}

  StatusOr<at::Tensor> Get(const std::string& name, std::vector<int64_t> shape) {
    auto view = ckpt_.Get(name);
    if (!view.ok()) return NotFound(ckpt_.source() + ": missing tensor '" + name + "'");
    if (view->shape != shape) {
      return DataLoss(ckpt_.source() + ": tensor '" + name + "' has shape " +
                      ShapeString(view->shape) + ", expected " + ShapeString(shape));
    }
    used_.insert(name);
    const at::Tensor raw = TensorFromView(*view);
    // Copy whenever the result could alias the read-only mapping.
    at::Tensor placed = raw.to(placement_.device, placement_.dtype, /*non_blocking=*/false,
                               /*copy=*/true);
    return placed;
  }

  bool Has(const std::string& name) const { return ckpt_.Contains(name); }

  StatusOr<at::Tensor> GetIf(bool present, const std::string& name, std::vector<int64_t> shape) {
    if (!present) return at::Tensor();
    return Get(name, std::move(shape));
  }

  std::vector<std::string> Unused() const {
    std::vector<std::string> out;
    for (const auto& n : ckpt_.Names()) {
      if (!used_.count(n)) out.push_back(n);
    }
    return out;
  }

 private:
  const storage::Checkpoint& ckpt_;
  RuntimePlacement placement_;
  std::set<std::string> used_;
};

Status CheckIds(const at::Tensor& ids, int64_t vocab) {
  if (!ids.defined()) return InvalidArgument("input_ids is undefined");
  if (ids.dim() != 2) {
    return InvalidArgument("input_ids must be 2-D [batch, tokens], got shape " +
                           ShapeString(ids.sizes()));
  }
  if (ids.scalar_type() != at::kLong && ids.scalar_type() != at::kInt) {
    return InvalidArgument(std::string("input_ids must be int64 or int32, got ") +
                           c10::toString(ids.scalar_type()));
  }
  if (ids.size(0) == 0 || ids.size(1) == 0) return InvalidArgument("input_ids is empty");
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  if (lo < 0 || hi >= vocab) {
    return InvalidArgument("input_ids must lie in [0, " + std::to_string(vocab) + "), found " +
                           std::to_string(lo < 0 ? lo : hi));
  }
  return Status::Ok();
}

at::Tensor Mlp(const at::Tensor& x, const MlpWeights& w) {
  const at::Tensor gated = kernels::SiluMul(kernels::Linear(x, w.gate_proj, w.gate_bias),
                                            kernels::Linear(x, w.up_proj, w.up_bias));
  return kernels::Linear(gated, w.down_proj, w.down_bias);
}

}  // namespace

void ConfigureCpuThreads(int threads) {
  if (threads <= 0 && std::getenv("OMP_NUM_THREADS") == nullptr) {
    // LibTorch's default is the physical cores; on SMT machines (2 vCPUs on one core) that
    // leaves half the CPU idle once BLAS is single-threaded below.
    threads = static_cast<int>(std::thread::hardware_concurrency());
  }
  if (threads > 0) at::set_num_threads(threads);
  if (std::getenv("OPENBLAS_NUM_THREADS") == nullptr) {
    using SetThreads = void (*)(int);
    if (auto f = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
      f(1);
    }
  }
}

StatusOr<RuntimePlacement> ResolvePlacement(const RuntimeOptions& options) {
  RuntimePlacement p;
  if (options.dtype == "fp32") {
    p.dtype = at::kFloat;
  } else if (options.dtype == "bf16") {
    p.dtype = at::kBFloat16;
  } else if (options.dtype == "fp16") {
    p.dtype = at::kHalf;
  } else if (options.dtype == "fp64") {
    p.dtype = at::kDouble;
  } else {
    return InvalidArgument("dtype '" + options.dtype + "' is not one of fp32, bf16, fp16, fp64");
  }
  try {
    p.device = at::Device(options.device);
  } catch (const c10::Error&) {
    return InvalidArgument("device '" + options.device + "' is not a device (cpu, cuda, cuda:N)");
  }
  if (p.device.is_cuda()) {
    if (!torch::cuda::is_available()) {
      return FailedPrecondition("device '" + options.device +
                                "' requested but no CUDA device is available to this build");
    }
    if (p.device.has_index() && p.device.index() >= static_cast<int>(torch::cuda::device_count())) {
      return InvalidArgument("device '" + options.device + "' does not exist (" +
                             std::to_string(torch::cuda::device_count()) + " CUDA devices)");
    }
  } else if (!p.device.is_cpu()) {
    return InvalidArgument("device '" + options.device + "' is not supported (cpu, cuda)");
  }
  return p;
}

int64_t DecodeState::Bytes() const {
  int64_t total = 0;
  for (const auto& l : layers) total += l ? l->Bytes() : 0;
  return total;
}

StatusOr<std::unique_ptr<DecoderModel>> DecoderModel::Load(const std::string& dir,
                                                           const RuntimeOptions& options) {
  HYB_ASSIGN_OR_RETURN(RuntimePlacement placement, ResolvePlacement(options));
  HYB_ASSIGN_OR_RETURN(auto model_dir, storage::ModelDirectory::Open(dir));
  HYB_ASSIGN_OR_RETURN(ModelConfig config,
                       ParseModelConfig(model_dir.config(), model_dir.config_path()));
  return FromCheckpoint(config, model_dir.weights(), placement, model_dir.config(), dir);
}

StatusOr<std::unique_ptr<DecoderModel>> DecoderModel::LoadRange(const std::string& dir,
                                                                const RuntimeOptions& options,
                                                                int64_t first_layer,
                                                                int64_t last_layer) {
  HYB_ASSIGN_OR_RETURN(RuntimePlacement placement, ResolvePlacement(options));
  HYB_ASSIGN_OR_RETURN(auto model_dir, storage::ModelDirectory::Open(dir));
  HYB_ASSIGN_OR_RETURN(ModelConfig config,
                       ParseModelConfig(model_dir.config(), model_dir.config_path()));
  return FromCheckpoint(config, model_dir.weights(), placement, model_dir.config(), dir,
                        first_layer, last_layer);
}

StatusOr<std::unique_ptr<DecoderModel>> DecoderModel::FromCheckpoint(
    const ModelConfig& config, const storage::Checkpoint& weights,
    const RuntimePlacement& placement, const Json& source_config, const std::string& source_dir,
    int64_t first_layer, int64_t last_layer) {
  if (last_layer < 0) last_layer = config.num_layers;
  if (first_layer < 0 || first_layer >= last_layer || last_layer > config.num_layers) {
    return InvalidArgument("layer range [" + std::to_string(first_layer) + ", " +
                           std::to_string(last_layer) + ") is not inside the model's " +
                           std::to_string(config.num_layers) + " layers");
  }
  std::unique_ptr<DecoderModel> m(new DecoderModel());
  m->config_ = config;
  m->source_config_ = source_config;
  m->source_dir_ = source_dir;
  m->placement_ = placement;
  m->first_layer_ = first_layer;
  m->last_layer_ = last_layer;
  const auto n = static_cast<size_t>(config.num_layers);
  m->input_norm_.resize(n);
  m->post_attention_norm_.resize(n);
  m->mlp_.resize(n);
  m->mixers_.resize(n);
  HYB_ASSIGN_OR_RETURN(m->rope_, RotaryEmbedding::Create(config.rope, config.head_dim));
  m->rope_.PlaceOn(placement.device);
  try {
    WeightLoader load(weights, placement);
    const int64_t h = config.hidden_size, v = config.vocab_size, f = config.intermediate_size;
    const int64_t q_out = config.num_heads * config.head_dim;
    const int64_t kv_out = config.num_kv_heads * config.head_dim;
    const bool first_stage = first_layer == 0, last_stage = last_layer == config.num_layers;
    if (first_stage || (last_stage && config.tie_word_embeddings)) {
      HYB_ASSIGN_OR_RETURN(m->embed_tokens_, load.Get("model.embed_tokens.weight", {v, h}));
    }
    if (last_stage) {
      HYB_ASSIGN_OR_RETURN(m->final_norm_, load.Get("model.norm.weight", {h}));
      if (config.tie_word_embeddings) {
        m->lm_head_ = m->embed_tokens_;
        if (weights.Contains("lm_head.weight")) (void)load.Get("lm_head.weight", {v, h});
      } else {
        HYB_ASSIGN_OR_RETURN(m->lm_head_, load.Get("lm_head.weight", {v, h}));
      }
    }
    for (int64_t l = first_layer; l < last_layer; ++l) {
      const auto ul = static_cast<size_t>(l);
      const std::string p = "model.layers." + std::to_string(l) + ".";
      HYB_ASSIGN_OR_RETURN(at::Tensor in_norm, load.Get(p + "input_layernorm.weight", {h}));
      HYB_ASSIGN_OR_RETURN(at::Tensor post_norm,
                           load.Get(p + "post_attention_layernorm.weight", {h}));
      m->input_norm_[ul] = in_norm;
      m->post_attention_norm_[ul] = post_norm;
      MlpWeights mlp;
      HYB_ASSIGN_OR_RETURN(mlp.gate_proj, load.Get(p + "mlp.gate_proj.weight", {f, h}));
      HYB_ASSIGN_OR_RETURN(mlp.up_proj, load.Get(p + "mlp.up_proj.weight", {f, h}));
      HYB_ASSIGN_OR_RETURN(mlp.down_proj, load.Get(p + "mlp.down_proj.weight", {h, f}));
      HYB_ASSIGN_OR_RETURN(mlp.gate_bias,
                           load.GetIf(config.mlp_bias, p + "mlp.gate_proj.bias", {f}));
      HYB_ASSIGN_OR_RETURN(mlp.up_bias, load.GetIf(config.mlp_bias, p + "mlp.up_proj.bias", {f}));
      HYB_ASSIGN_OR_RETURN(mlp.down_bias,
                           load.GetIf(config.mlp_bias, p + "mlp.down_proj.bias", {h}));
      m->mlp_[ul] = std::move(mlp);

      AttentionShape shape;
      shape.hidden_size = h;
      shape.num_heads = config.num_heads;
      shape.num_kv_heads = config.num_kv_heads;
      shape.head_dim = config.head_dim;
      shape.rms_norm_eps = config.rms_norm_eps;
      shape.sliding_window =
          config.layer_attention[static_cast<size_t>(l)] == AttentionKind::kSliding
              ? config.sliding_window
              : 0;
      if (config.layer_is_linear[static_cast<size_t>(l)]) {
        HYB_ASSIGN_OR_RETURN(auto mixer,
                             LinearMixer::FromTensors(
                                 shape, *config.linear_mixer,
                                 [&](const std::string& name, std::vector<int64_t> dims) {
                                   return load.Get(p + name, std::move(dims));
                                 },
                                 [&](const std::string& name) { return load.Has(p + name); }));
        m->mixers_[ul] = std::move(mixer);
        continue;
      }
      AttentionWeights a;
      const std::string s = p + "self_attn.";
      HYB_ASSIGN_OR_RETURN(a.q_proj, load.Get(s + "q_proj.weight", {q_out, h}));
      HYB_ASSIGN_OR_RETURN(a.k_proj, load.Get(s + "k_proj.weight", {kv_out, h}));
      HYB_ASSIGN_OR_RETURN(a.v_proj, load.Get(s + "v_proj.weight", {kv_out, h}));
      HYB_ASSIGN_OR_RETURN(a.o_proj, load.Get(s + "o_proj.weight", {h, q_out}));
      HYB_ASSIGN_OR_RETURN(a.q_bias, load.GetIf(config.qkv_bias, s + "q_proj.bias", {q_out}));
      HYB_ASSIGN_OR_RETURN(a.k_bias, load.GetIf(config.qkv_bias, s + "k_proj.bias", {kv_out}));
      HYB_ASSIGN_OR_RETURN(a.v_bias, load.GetIf(config.qkv_bias, s + "v_proj.bias", {kv_out}));
      HYB_ASSIGN_OR_RETURN(a.o_bias, load.GetIf(config.o_bias, s + "o_proj.bias", {h}));
      HYB_ASSIGN_OR_RETURN(a.q_norm,
                           load.GetIf(config.qk_norm, s + "q_norm.weight", {config.head_dim}));
      HYB_ASSIGN_OR_RETURN(a.k_norm,
                           load.GetIf(config.qk_norm, s + "k_norm.weight", {config.head_dim}));
      m->mixers_[ul] = std::make_shared<SoftmaxAttentionMixer>(shape, std::move(a));
    }
    // A stage leaves the other stages' tensors unread on purpose.
    const auto unused = m->holds_all_layers() ? load.Unused() : std::vector<std::string>();
    for (const auto& n : unused) {
      // Stale rotary buffers in old checkpoints are harmless; anything else is worth a warning.
      if (n.find("rotary_emb.inv_freq") == std::string::npos) {
        HYB_LOG(Warning) << weights.source() << ": ignoring unexpected tensor '" << n << "'";
      }
    }
  } catch (const c10::Error& e) {
    return Internal(weights.source() + ": placing weights failed: " + e.what_without_backtrace());
  }
  return m;
}

std::unique_ptr<DecoderModel> DecoderModel::ShareWeights() const {
  // Member-wise copy: at::Tensor and shared_ptr copies are references to the same storage.
  return std::unique_ptr<DecoderModel>(new DecoderModel(*this));
}

void DecoderModel::SetMixer(int64_t layer, std::shared_ptr<const TokenMixer> mixer) {
  mixers_.at(static_cast<size_t>(layer)) = std::move(mixer);
}

DecodeState DecoderModel::NewDecodeState(int64_t capacity) const {
  DecodeState s;
  for (const auto& m : mixers_) {
    s.layers.push_back(m ? m->NewState() : nullptr);
    if (auto* kv = dynamic_cast<KvCache*>(s.layers.back().get()); kv != nullptr && capacity > 0) {
      kv->Reserve(capacity);
    }
  }
  return s;
}

Status DecoderModel::CheckWhole(const char* what) const {
  if (holds_all_layers()) return Status::Ok();
  return FailedPrecondition(std::string(what) + ": this model holds layers [" +
                            std::to_string(first_layer_) + ", " + std::to_string(last_layer_) +
                            ") of " + std::to_string(config_.num_layers) + " only");
}

StatusOr<at::Tensor> DecoderModel::Embed(const at::Tensor& input_ids) const {
  if (first_layer_ != 0) return CheckWhole("embedding tokens");
  HYB_RETURN_IF_ERROR(CheckIds(input_ids, config_.vocab_size));
  try {
    return at::embedding(embed_tokens_, input_ids.to(placement_.device, at::kLong));
  } catch (const c10::Error& e) {
    return Internal(std::string("embedding failed: ") + e.what_without_backtrace());
  }
}

StatusOr<at::Tensor> DecoderModel::ForwardRange(int64_t first, int64_t last,
                                                const at::Tensor& residual,
                                                LayerTaps* taps) const {
  if (first < first_layer_ || last > last_layer_ || first >= last) {
    return InvalidArgument("layers [" + std::to_string(first) + ", " + std::to_string(last) +
                           ") are not inside the held [" + std::to_string(first_layer_) + ", " +
                           std::to_string(last_layer_) + ")");
  }
  if (!residual.defined() || residual.dim() != 3 || residual.size(2) != config_.hidden_size) {
    return InvalidArgument("residual stream must be [B, T, " + std::to_string(config_.hidden_size) +
                           "]");
  }
  try {
    return RunRange(first, last, residual.to(placement_.device, placement_.dtype), nullptr, taps);
  } catch (const c10::Error& e) {
    return Internal(std::string("forward pass failed: ") + e.what_without_backtrace());
  }
}

StatusOr<at::Tensor> DecoderModel::Head(const at::Tensor& residual) const {
  if (last_layer_ != config_.num_layers) return CheckWhole("the head");
  if (!residual.defined() || residual.dim() != 3 || residual.size(2) != config_.hidden_size) {
    return InvalidArgument("residual stream must be [B, T, " + std::to_string(config_.hidden_size) +
                           "]");
  }
  try {
    const at::Tensor h = residual.to(placement_.device, placement_.dtype);
    return kernels::Linear(kernels::RmsNorm(h, final_norm_, config_.rms_norm_eps), lm_head_);
  } catch (const c10::Error& e) {
    return Internal(std::string("head failed: ") + e.what_without_backtrace());
  }
}

StatusOr<at::Tensor> DecoderModel::Forward(const at::Tensor& input_ids, DecodeState* state,
                                           LayerTaps* taps) const {
  HYB_RETURN_IF_ERROR(CheckWhole("forward"));
  HYB_RETURN_IF_ERROR(CheckIds(input_ids, config_.vocab_size));
  if (state != nullptr && state->length < 0) {
    return FailedPrecondition(
        "decode state is unusable after a failed forward pass; start a "
        "new one with NewDecodeState()");
  }
  if (state != nullptr && state->layers.size() != mixers_.size()) {
    return InvalidArgument("decode state has " + std::to_string(state->layers.size()) +
                           " layers, the model " + std::to_string(mixers_.size()));
  }
  try {
    return ForwardImpl(input_ids, state, taps);
  } catch (const c10::Error& e) {
    // Layers before the failure may have advanced their caches: poison the state rather than
    // let a retry continue from a half-updated one.
    if (state != nullptr) state->length = -1;
    return Internal(std::string("forward pass failed: ") + e.what_without_backtrace());
  }
}

StatusOr<at::Tensor> DecoderModel::ForwardFrom(int64_t first_layer, const at::Tensor& residual,
                                               DecodeState* state, LayerTaps* taps) const {
  HYB_RETURN_IF_ERROR(CheckWhole("forward"));
  if (first_layer < 0 || first_layer > num_layers()) {
    return InvalidArgument("first layer " + std::to_string(first_layer) + " is outside [0, " +
                           std::to_string(num_layers()) + "]");
  }
  if (!residual.defined() || residual.dim() != 3 || residual.size(2) != config_.hidden_size) {
    return InvalidArgument("residual stream must be [B, T, " + std::to_string(config_.hidden_size) +
                           "]");
  }
  if (state != nullptr && (state->length < 0 || state->layers.size() != mixers_.size())) {
    return FailedPrecondition("decode state is unusable or belongs to another model");
  }
  try {
    return RunLayers(first_layer, residual.to(placement_.device, placement_.dtype), state, taps);
  } catch (const c10::Error& e) {
    if (state != nullptr) state->length = -1;
    return Internal(std::string("forward pass failed: ") + e.what_without_backtrace());
  }
}

at::Tensor DecoderModel::ForwardImpl(const at::Tensor& input_ids, DecodeState* state,
                                     LayerTaps* taps) const {
  const at::Tensor ids = input_ids.to(placement_.device, at::kLong);
  return RunLayers(0, at::embedding(embed_tokens_, ids), state, taps);  // h: [B, T, hidden]
}

at::Tensor DecoderModel::RunLayers(int64_t first_layer, at::Tensor h, DecodeState* state,
                                   LayerTaps* taps, bool last_only) const {
  h = RunRange(first_layer, num_layers(), std::move(h), state, taps);
  if (last_only) h = h.narrow(1, h.size(1) - 1, 1);
  return kernels::Linear(kernels::RmsNorm(h, final_norm_, config_.rms_norm_eps), lm_head_);
}

at::Tensor DecoderModel::PositionedStep(const at::Tensor& ids, const at::Tensor& position,
                                        const at::Tensor& cos_table, const at::Tensor& sin_table,
                                        DecodeState* state) const {
  MixerContext ctx;
  ctx.position = position;
  ctx.cos = cos_table.index_select(0, position);  // [1, head_dim]
  ctx.sin = sin_table.index_select(0, position);
  at::Tensor h = RunRange(0, num_layers(), at::embedding(embed_tokens_, ids), state, nullptr, &ctx);
  const at::Tensor logits =
      kernels::Linear(kernels::RmsNorm(h, final_norm_, config_.rms_norm_eps), lm_head_);
  return logits.argmax(-1);  // [B, 1]
}

at::Tensor DecoderModel::RunRange(int64_t first, int64_t last, at::Tensor h, DecodeState* state,
                                  LayerTaps* taps, const MixerContext* preset) const {
  const int64_t t = h.size(1);
  const int64_t offset = state != nullptr ? state->length : 0;
  MixerContext ctx;
  if (preset != nullptr) {
    ctx = *preset;
  } else {
    ctx.position_offset = offset;
    std::tie(ctx.cos, ctx.sin) = rope_.CosSin(offset, t, placement_.device, placement_.dtype);
  }
  if (taps != nullptr) {
    taps->residual.assign(mixers_.size(), at::Tensor());
    taps->mixer_input.assign(mixers_.size(), at::Tensor());
    taps->mixer_output.assign(mixers_.size(), at::Tensor());
  }
  for (auto l = static_cast<size_t>(first); l < static_cast<size_t>(last); ++l) {
    if (taps != nullptr) taps->residual[l] = h;
    const at::Tensor x = kernels::RmsNorm(h, input_norm_[l], config_.rms_norm_eps);
    const at::Tensor a =
        mixers_[l]->Forward(x, ctx, state != nullptr ? state->layers[l].get() : nullptr);
    if (taps != nullptr) {
      taps->mixer_input[l] = x;
      taps->mixer_output[l] = a;
    }
    h = h + a;
    h = h + Mlp(kernels::RmsNorm(h, post_attention_norm_[l], config_.rms_norm_eps), mlp_[l]);
  }
  if (state != nullptr && preset == nullptr) state->length += t;
  return h;
}

namespace {

bool CudaGraphsEnabled() {
  const char* v = std::getenv("HYB_CUDA_GRAPHS");
  return v == nullptr || std::string(v) != "0";
}

// Greedy decoding's host side: the rows' tokens so far and which rows have stopped.
class GreedyRows {
 public:
  GreedyRows(const at::Tensor& prompt, std::vector<int64_t> stop_ids)
      : out_(prompt.to(at::kCPU, at::kLong)),
        stop_ids_(std::move(stop_ids)),
        done_(static_cast<size_t>(prompt.size(0)), -1) {}

  // Takes the next ids ([B] or [B, 1], any device: one copy to the host) and returns whether
  // every row has stopped.
  bool Take(const at::Tensor& next_ids) {
    // A copy even on the CPU: the caller keeps writing its ids buffer in place.
    at::Tensor next = next_ids.reshape({-1}).to(at::kCPU, at::kLong, false, /*copy=*/true);
    auto acc = next.accessor<int64_t, 1>();
    bool all_done = true;
    for (int64_t i = 0; i < next.size(0); ++i) {
      const auto ui = static_cast<size_t>(i);
      if (done_[ui] >= 0) {
        acc[i] = done_[ui];
      } else if (std::find(stop_ids_.begin(), stop_ids_.end(), acc[i]) != stop_ids_.end()) {
        done_[ui] = acc[i];
      }
      all_done = all_done && done_[ui] >= 0;
    }
    columns_.push_back(next.unsqueeze(1));
    return all_done;
  }

  at::Tensor Result() const {
    std::vector<at::Tensor> parts = {out_};
    parts.insert(parts.end(), columns_.begin(), columns_.end());
    return at::cat(parts, 1);
  }

 private:
  at::Tensor out_;
  std::vector<int64_t> stop_ids_;
  std::vector<int64_t> done_;  // the stop id a row ended with, -1 while it runs
  std::vector<at::Tensor> columns_;
};

}  // namespace

StatusOr<at::Tensor> DecoderModel::GenerateGreedy(const at::Tensor& prompt, int64_t max_new_tokens,
                                                  const std::vector<int64_t>& stop_ids,
                                                  int64_t prefill_tokens) const {
  HYB_RETURN_IF_ERROR(CheckWhole("generation"));
  if (max_new_tokens < 0) return InvalidArgument("max_new_tokens must be >= 0");
  HYB_RETURN_IF_ERROR(CheckIds(prompt, config_.vocab_size));
  const at::Tensor host_prompt = prompt.to(at::kCPU, at::kLong);
  if (max_new_tokens == 0) return host_prompt;
  DecodeState state = NewDecodeState(prompt.size(1) + max_new_tokens);
  HYB_ASSIGN_OR_RETURN(const at::Tensor next, PrefillGreedy(prompt, &state, prefill_tokens));
  HYB_ASSIGN_OR_RETURN(at::Tensor generated, ContinueGreedy(&state, next, max_new_tokens, stop_ids));
  return at::cat({host_prompt, generated}, 1);
}

StatusOr<at::Tensor> DecoderModel::PrefillGreedy(const at::Tensor& prompt, DecodeState* state,
                                                 int64_t prefill_tokens) const {
  HYB_RETURN_IF_ERROR(CheckWhole("generation"));
  HYB_RETURN_IF_ERROR(CheckIds(prompt, config_.vocab_size));
  if (state == nullptr || state->length != 0 || state->layers.size() != mixers_.size()) {
    return InvalidArgument("prefill needs an empty decode state of this model (NewDecodeState)");
  }
  try {
    at::NoGradGuard no_grad;
    const int64_t b = prompt.size(0), t = prompt.size(1);
    // In pieces that bound the activations of long prompts; logits of the last position only.
    const at::Tensor ids = prompt.to(placement_.device, at::kLong);
    const int64_t piece = std::max<int64_t>(1, std::max<int64_t>(1, prefill_tokens) / b);
    at::Tensor logits;
    for (int64_t s = 0; s < t; s += piece) {
      const at::Tensor part = ids.narrow(1, s, std::min(piece, t - s));
      logits = RunLayers(0, at::embedding(embed_tokens_, part), state, nullptr,
                         /*last_only=*/true);  // [B, 1, V]
    }
    return logits.argmax(-1);  // [B, 1]
  } catch (const c10::Error& e) {
    return Internal(std::string("generation failed: ") + e.what_without_backtrace());
  }
}

StatusOr<at::Tensor> DecoderModel::ContinueGreedy(DecodeState* state, const at::Tensor& next_ids,
                                                  int64_t max_new_tokens,
                                                  const std::vector<int64_t>& stop_ids) const {
  HYB_RETURN_IF_ERROR(CheckWhole("generation"));
  if (max_new_tokens < 1) return InvalidArgument("max_new_tokens must be >= 1");
  if (state == nullptr || state->length < 0 || state->layers.size() != mixers_.size()) {
    return FailedPrecondition("decode state is unusable or belongs to another model");
  }
  try {
    at::NoGradGuard no_grad;
    const at::Tensor next = next_ids.to(placement_.device, at::kLong).reshape({-1, 1});  // [B, 1]
    GreedyRows rows(at::empty({next.size(0), 0}, at::kLong), stop_ids);
    int64_t produced = 1;
    if (rows.Take(next) || produced == max_new_tokens) return rows.Result();
    const int64_t start = state->length, capacity = start + max_new_tokens;
    for (auto& layer : state->layers) {
      if (auto* kv = dynamic_cast<KvCache*>(layer.get())) kv->Reserve(capacity);
    }
    // Positioned steps: caches sized for the whole generation, the position on the device.
    const auto long_opts = at::TensorOptions().dtype(at::kLong).device(placement_.device);
    at::Tensor ids_buf = next.clone();
    at::Tensor pos_buf = at::full({1}, start, long_opts);
    at::Tensor cos_table, sin_table;
    std::tie(cos_table, sin_table) = rope_.CosSin(0, capacity, placement_.device, placement_.dtype);
    auto step = [&] {
      ids_buf.copy_(PositionedStep(ids_buf, pos_buf, cos_table, sin_table, state));
      pos_buf.add_(1);
    };
    state->length = -1;  // host lengths are not kept from here on: the state is used up
#ifdef HYB_WITH_CUDA
    if (placement_.device.is_cuda() && CudaGraphsEnabled() && max_new_tokens - produced >= 3) {
      // Capture one step on a side stream after a first (warm-up) step run normally, then
      // replay it: one launch per token instead of hundreds of per-op launches.
      const c10::cuda::CUDAStream side =
          c10::cuda::getStreamFromPool(false, placement_.device.index());
      c10::cuda::getCurrentCUDAStream(placement_.device.index()).synchronize();
      const c10::cuda::CUDAStreamGuard guard(side);
      step();
      ++produced;
      if (rows.Take(ids_buf)) return rows.Result();
      std::unique_ptr<at::cuda::CUDAGraph> graph;
      try {
        graph = std::make_unique<at::cuda::CUDAGraph>();
        graph->capture_begin();
        step();
        graph->capture_end();
      } catch (const c10::Error& e) {
        cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(side.stream(), &status) == cudaSuccess &&
            status != cudaStreamCaptureStatusNone) {
          cudaGraph_t broken = nullptr;
          (void)cudaStreamEndCapture(side.stream(), &broken);
          if (broken != nullptr) (void)cudaGraphDestroy(broken);
        }
        (void)cudaGetLastError();
        graph.reset();
        static bool warned = false;
        if (!warned) {
          warned = true;
          HYB_LOG(Warning) << "decoding without CUDA graphs: capture failed: "
                           << e.what_without_backtrace();
        }
      }
      while (produced < max_new_tokens) {
        if (graph != nullptr) {
          graph->replay();
        } else {
          step();
        }
        ++produced;
        if (rows.Take(ids_buf)) break;
      }
      side.synchronize();
      return rows.Result();
    }
#endif
    while (produced < max_new_tokens) {
      step();
      ++produced;
      if (rows.Take(ids_buf)) break;
    }
    return rows.Result();
  } catch (const c10::Error& e) {
    return Internal(std::string("generation failed: ") + e.what_without_backtrace());
  }
}

}  // namespace hyb::worker

namespace hyb::worker {
namespace {

// Removes a directory tree (nftw, not std::filesystem::remove_all, which crashes when linked
// against the PyTorch wheel's libtorch).
void RemoveTree(const std::string& path) {
  ::nftw(
      path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); },
      16, FTW_DEPTH | FTW_PHYS);
}

Status CopyFileIfExists(const std::string& from, const std::string& to) {
  auto contents = ReadFileToString(from);
  if (!contents.ok()) return Status::Ok();  // absent: nothing to copy
  return storage::AtomicWriteString(to, *contents);
}

}  // namespace

Status DecoderModel::Save(const std::string& dir) const {
  HYB_RETURN_IF_ERROR(CheckWhole("saving"));
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) return FailedPrecondition(dir + ": already exists");
  // config.json: the source config, with the layer mixers written out.
  Json config = source_config_.is_object() ? source_config_ : Json::object();
  Json layer_types = Json::array();
  std::optional<LinearMixerOptions> linear;
  for (size_t l = 0; l < mixers_.size(); ++l) {
    if (const auto* lm = dynamic_cast<const LinearMixer*>(mixers_[l].get())) {
      const Json options = LinearMixerOptionsToJson(lm->options());
      if (linear && LinearMixerOptionsToJson(*linear) != options) {
        return InvalidArgument("layer " + std::to_string(l) +
                               ": linear layers with different mixer options cannot share one "
                               "config.json");
      }
      linear = lm->options();
      layer_types.push_back("linear_attention");
    } else {
      layer_types.push_back(config_.layer_attention[l] == AttentionKind::kSliding
                                ? "sliding_attention"
                                : "full_attention");
    }
  }
  config["layer_types"] = layer_types;
  if (linear) {
    config["linear_attention"] = LinearMixerOptionsToJson(*linear);
  } else {
    config.erase("linear_attention");
  }
  // transformers loads the directory through the modeling code written below (model_type stays
  // the teacher's, which is what our own loader reads).
  const Json auto_map = HfAutoMap(config_.family);
  if (!auto_map.empty()) {
    config["auto_map"] = auto_map;
    config["architectures"] = Json::array({HfCausalLmClass(config_.family)});
  }
  // Weights under the Hugging Face names; tied heads are stored once, as transformers does.
  NamedTensors tensors = {{"model.embed_tokens.weight", embed_tokens_},
                          {"model.norm.weight", final_norm_}};
  if (!config_.tie_word_embeddings) tensors.emplace_back("lm_head.weight", lm_head_);
  for (size_t l = 0; l < mixers_.size(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    tensors.emplace_back(p + "input_layernorm.weight", input_norm_[l]);
    tensors.emplace_back(p + "post_attention_layernorm.weight", post_attention_norm_[l]);
    const MlpWeights& w = mlp_[l];
    tensors.emplace_back(p + "mlp.gate_proj.weight", w.gate_proj);
    tensors.emplace_back(p + "mlp.up_proj.weight", w.up_proj);
    tensors.emplace_back(p + "mlp.down_proj.weight", w.down_proj);
    if (w.gate_bias.defined()) {
      tensors.emplace_back(p + "mlp.gate_proj.bias", w.gate_bias);
      tensors.emplace_back(p + "mlp.up_proj.bias", w.up_bias);
      tensors.emplace_back(p + "mlp.down_proj.bias", w.down_bias);
    }
    for (const auto& [name, t] : mixers_[l]->NamedTensors()) tensors.emplace_back(p + name, t);
  }
  // Assemble beside the target, then publish with one rename that never replaces an existing
  // directory.
  const std::string staging = dir + ".partial." + storage::UniqueSuffix();
  if (::mkdir(staging.c_str(), 0755) != 0) {
    return IoError(staging + ": cannot create directory: " + std::strerror(errno));
  }
  auto cleanup = [&](Status s) {
    RemoveTree(staging);
    return s;
  };
  Status s = storage::AtomicWriteString(staging + "/config.json", config.dump(2) + "\n");
  if (!s.ok()) return cleanup(s);
  if (!auto_map.empty()) {
    s = storage::AtomicWriteString(staging + "/" + kHfModelingFile,
                                   std::string(HfModelingSource()));
    if (!s.ok()) return cleanup(s);
  }
  try {
    std::vector<at::Tensor> keep;
    std::vector<storage::TensorToWrite> items;
    for (const auto& [name, t] : tensors) {
      auto dtype = ToStorageDType(t.scalar_type());
      if (!dtype.ok()) return cleanup(dtype.status().WithContext(name));
      keep.push_back(t.detach().to(at::kCPU).contiguous());
      items.push_back({name, *dtype, keep.back().sizes().vec(), keep.back().data_ptr(),
                       static_cast<size_t>(keep.back().numel()) * storage::DTypeSize(*dtype)});
    }
    s = storage::WriteCheckpoint(staging, items);
  } catch (const c10::Error& e) {
    s = Internal(std::string("copying weights to host failed: ") + e.what_without_backtrace());
  }
  if (!s.ok()) return cleanup(s);
  if (!source_dir_.empty()) {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                          "generation_config.json"}) {
      s = CopyFileIfExists(source_dir_ + "/" + f, staging + "/" + f);
      if (!s.ok()) return cleanup(s);
    }
  }
  if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, dir.c_str(), RENAME_NOREPLACE) != 0) {
    const int err = errno;
    return cleanup(err == EEXIST ? FailedPrecondition(dir + ": already exists")
                                 : IoError(dir + ": cannot publish: " + std::strerror(err)));
  }
  return storage::SyncParentDirectory(dir);
}

}  // namespace hyb::worker
