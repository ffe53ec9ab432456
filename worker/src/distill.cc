#include "hyb/worker/distill.h"

#include <torch/torch.h>

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "hyb/common/logging.h"
#include "hyb/storage/safetensors.h"
#include "hyb/worker/attention_mixer.h"
#include "hyb/worker/tensor_io.h"

namespace hyb::worker {
namespace {

constexpr char kMetaKey[] = "hyb.distill";

LinearMixer::TensorGetter MapGetter(const std::map<std::string, at::Tensor>& tensors,
                                    const std::string& source, const at::Device& device,
                                    at::ScalarType dtype) {
  return [&tensors, source, device, dtype](const std::string& name,
                                           std::vector<int64_t> shape) -> StatusOr<at::Tensor> {
    auto it = tensors.find(name);
    if (it == tensors.end()) return DataLoss(source + ": missing tensor '" + name + "'");
    if (it->second.sizes().vec() != shape) {
      return DataLoss(source + ": tensor '" + name + "' has shape " + c10::str(it->second.sizes()) +
                      ", expected " + c10::str(at::IntArrayRef(shape)));
    }
    return it->second.to(device, dtype).clone();
  };
}

Json CurveToJson(const std::vector<DistillCurvePoint>& curve) {
  Json j = Json::array();
  for (const auto& p : curve) j.push_back({{"step", p.step}, {"mse", p.mse}, {"nmse", p.nmse}});
  return j;
}

StatusOr<std::vector<DistillCurvePoint>> CurveFromJson(const Json& j, const std::string& source) {
  std::vector<DistillCurvePoint> curve;
  if (!j.is_array()) return DataLoss(source + ": 'curve' is not an array");
  for (const Json& p : j) {
    JsonObject o(p, source + ": curve point");
    DistillCurvePoint c;
    HYB_ASSIGN_OR_RETURN(c.step, o.Int("step"));
    HYB_ASSIGN_OR_RETURN(c.mse, o.Number("mse"));
    HYB_ASSIGN_OR_RETURN(c.nmse, o.Number("nmse"));
    curve.push_back(c);
  }
  return curve;
}

const SoftmaxAttentionMixer* TeacherLayer(const DecoderModel& teacher, int64_t layer) {
  return dynamic_cast<const SoftmaxAttentionMixer*>(&teacher.mixer(layer));
}

bool FileExists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

StatusOr<Json> ReadDistillCheckpointInfo(const std::string& path) {
  HYB_ASSIGN_OR_RETURN(auto file, storage::SafetensorsFile::Open(path));
  auto it = file->metadata().find(kMetaKey);
  if (it == file->metadata().end()) {
    return DataLoss(path + ": not a distillation checkpoint (no '" + kMetaKey + "' metadata)");
  }
  return ParseJson(it->second, path + " metadata");
}

StatusOr<std::shared_ptr<LinearMixer>> LoadDistilledMixer(const std::string& path,
                                                          const AttentionShape& shape,
                                                          const RuntimePlacement& placement) {
  HYB_ASSIGN_OR_RETURN(Json info, ReadDistillCheckpointInfo(path));
  if (!info.contains("mixer")) return DataLoss(path + ": metadata has no 'mixer'");
  HYB_ASSIGN_OR_RETURN(LinearMixerOptions options,
                       ParseLinearMixerOptions(info["mixer"], path + ": mixer"));
  try {
    HYB_ASSIGN_OR_RETURN(auto tensors, LoadTensors(path));
    return LinearMixer::FromTensors(
        shape, options, MapGetter(tensors, path, placement.device, placement.dtype),
        [&tensors](const std::string& name) { return tensors.count(name) > 0; });
  } catch (const c10::Error& e) {
    return Internal(path + ": loading the mixer failed: " + e.what_without_backtrace());
  }
}

std::string BlockwiseDistiller::LayerPath(int64_t layer) const {
  return dir_ + "/layer_" + std::to_string(layer) + ".safetensors";
}

StatusOr<std::unique_ptr<BlockwiseDistiller>> BlockwiseDistiller::Create(
    std::shared_ptr<const DecoderModel> teacher, std::vector<int64_t> layers,
    const LinearMixerOptions& mixer, const DistillOptions& options,
    std::shared_ptr<const storage::TokenDataset> data, std::string checkpoint_dir,
    const DistillParallel& parallel) {
  if (options.steps < 1 || options.batch_size < 1 || options.sequence_length < 2 ||
      options.checkpoint_every < 1 || options.log_every < 1 || options.warmup_steps < 0 ||
      !(options.lr > 0)) {
    return InvalidArgument(
        "distill: steps, batch_size, checkpoint_every, log_every and lr must be positive, "
        "sequence_length >= 2, warmup_steps >= 0");
  }
  if (options.compute_dtype != "fp32" && options.compute_dtype != "bf16") {
    return InvalidArgument("distill: compute_dtype must be \"fp32\" or \"bf16\", got \"" +
                           options.compute_dtype + "\"");
  }
  if (data->vocab_size() > teacher->config().vocab_size) {
    return InvalidArgument("distill: dataset vocabulary (" + std::to_string(data->vocab_size()) +
                           ") is larger than the teacher's (" +
                           std::to_string(teacher->config().vocab_size) + ")");
  }
  const int64_t replicas = parallel.data != nullptr ? parallel.data->size() : 1;
  if (options.batch_size % replicas != 0) {
    return InvalidArgument("distill: batch_size " + std::to_string(options.batch_size) +
                           " does not split evenly over " + std::to_string(replicas) +
                           " data-parallel replicas");
  }
  const int64_t last_layer = parallel.last_layer < 0 ? teacher->num_layers() : parallel.last_layer;
  if (parallel.first_layer < teacher->first_layer() || last_layer > teacher->last_layer() ||
      parallel.first_layer >= last_layer) {
    return InvalidArgument("distill: stage layers [" + std::to_string(parallel.first_layer) +
                           ", " + std::to_string(last_layer) +
                           ") are not held by the teacher (it holds [" +
                           std::to_string(teacher->first_layer()) + ", " +
                           std::to_string(teacher->last_layer()) + "))");
  }
  // A pipeline stage may have nothing to train: it still forwards the stream.
  if (layers.empty() && parallel.pipeline == nullptr) {
    return InvalidArgument("distill: no layers to distill");
  }
  std::sort(layers.begin(), layers.end());
  if (std::adjacent_find(layers.begin(), layers.end()) != layers.end()) {
    return InvalidArgument("distill: a layer is listed twice");
  }
  for (int64_t l : layers) {
    if (l < 0 || l >= teacher->num_layers()) {
      return InvalidArgument("distill: layer " + std::to_string(l) + " is outside the teacher's " +
                             std::to_string(teacher->num_layers()) + " layers");
    }
    if (l < parallel.first_layer || l >= last_layer) {
      return InvalidArgument("distill: layer " + std::to_string(l) + " is outside this stage's [" +
                             std::to_string(parallel.first_layer) + ", " +
                             std::to_string(last_layer) + ")");
    }
    if (TeacherLayer(*teacher, l) == nullptr) {
      return FailedPrecondition("distill: teacher layer " + std::to_string(l) +
                                " is not softmax attention");
    }
  }
  ::mkdir(checkpoint_dir.c_str(), 0755);
  std::unique_ptr<BlockwiseDistiller> d(new BlockwiseDistiller());
  d->teacher_ = std::move(teacher);
  d->layers_ = std::move(layers);
  d->mixer_options_ = mixer;
  d->options_ = options;
  d->data_ = std::move(data);
  d->dir_ = std::move(checkpoint_dir);
  d->parallel_ = parallel;
  d->parallel_.last_layer = last_layer;
  d->compute_dtype_ = options.compute_dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  const size_t n = d->layers_.size();
  d->mixers_.resize(n);
  d->adam_m_.resize(n);
  d->adam_v_.resize(n);
  d->states_.resize(n);
  const at::Device device = d->teacher_->placement().device;
  try {
    for (size_t i = 0; i < n; ++i) {
      const int64_t l = d->layers_[i];
      d->states_[i].layer = l;
      const std::string path = d->LayerPath(l);
      if (FileExists(path)) {
        HYB_RETURN_IF_ERROR(d->LoadCheckpoint(i, path));
        continue;
      }
      // Transfer in the teacher's dtype, then keep fp32 master copies.
      const SoftmaxAttentionMixer* att = TeacherLayer(*d->teacher_, l);
      auto transferred = LinearMixer::Transfer(att->shape(), att->weights(), mixer);
      std::map<std::string, at::Tensor> named;
      for (auto& [name, t] : transferred->NamedTensors()) named[name] = t;
      HYB_ASSIGN_OR_RETURN(d->mixers_[i],
                           LinearMixer::FromTensors(
                               att->shape(), mixer,
                               MapGetter(named, "layer " + std::to_string(l), device, at::kFloat),
                               [&named](const std::string& k) { return named.count(k) > 0; }));
      for (auto& [name, t] : d->mixers_[i]->NamedTensors()) {
        d->adam_m_[i].push_back(at::zeros_like(t));
        d->adam_v_[i].push_back(at::zeros_like(t));
      }
    }
    d->nonfinite_ = at::zeros({static_cast<int64_t>(n)},
                              at::TensorOptions().dtype(at::kBool).device(device));
  } catch (const c10::Error& e) {
    return Internal(std::string("distill: setting up mixers failed: ") +
                    e.what_without_backtrace());
  }
  for (auto& m : d->mixers_) {
    for (auto& [name, t] : m->NamedTensors()) t.set_requires_grad(true);
  }
  return d;
}

Status BlockwiseDistiller::LoadCheckpoint(size_t i, const std::string& path) {
  HYB_ASSIGN_OR_RETURN(Json info, ReadDistillCheckpointInfo(path));
  JsonObject o(info, path);
  HYB_ASSIGN_OR_RETURN(int64_t layer, o.Int("layer"));
  if (layer != layers_[i]) {
    return DataLoss(path + ": holds layer " + std::to_string(layer) + ", expected " +
                    std::to_string(layers_[i]));
  }
  if (!info.contains("mixer") || info["mixer"] != LinearMixerOptionsToJson(mixer_options_)) {
    return DataLoss(path + ": was trained with other mixer options (" +
                    JsonSnippet(info.value("mixer", Json())) + "); remove it to start over");
  }
  LayerDistillState& s = states_[i];
  HYB_ASSIGN_OR_RETURN(s.step, o.Int("step"));
  if (!info.contains("cursor")) return DataLoss(path + ": metadata has no 'cursor'");
  HYB_ASSIGN_OR_RETURN(s.cursor, storage::DatasetCursor::FromJson(info["cursor"], path));
  HYB_ASSIGN_OR_RETURN(s.curve, CurveFromJson(info.value("curve", Json()), path));
  HYB_ASSIGN_OR_RETURN(auto tensors, LoadTensors(path));
  const AttentionShape& shape = TeacherLayer(*teacher_, layers_[i])->shape();
  const at::Device device = teacher_->placement().device;
  HYB_ASSIGN_OR_RETURN(
      mixers_[i],
      LinearMixer::FromTensors(shape, mixer_options_, MapGetter(tensors, path, device, at::kFloat),
                               [&tensors](const std::string& k) { return tensors.count(k) > 0; }));
  for (auto& [name, t] : mixers_[i]->NamedTensors()) {
    auto m = tensors.find("adam_m." + name), v = tensors.find("adam_v." + name);
    if (m == tensors.end() || v == tensors.end() || !m->second.sizes().equals(t.sizes()) ||
        !v->second.sizes().equals(t.sizes())) {
      return DataLoss(path + ": optimizer state for '" + name + "' is missing or misshapen");
    }
    adam_m_[i].push_back(m->second.to(device, at::kFloat));
    adam_v_[i].push_back(v->second.to(device, at::kFloat));
  }
  return Status::Ok();
}

Status BlockwiseDistiller::Checkpoint(size_t i) const {
  const LayerDistillState& s = states_[i];
  NamedTensors out;
  const auto named = mixers_[i]->NamedTensors();
  for (size_t k = 0; k < named.size(); ++k) {
    out.emplace_back(named[k].first, named[k].second.detach());
    out.emplace_back("adam_m." + named[k].first, adam_m_[i][k]);
    out.emplace_back("adam_v." + named[k].first, adam_v_[i][k]);
  }
  const Json info = {{"layer", s.layer},
                     {"step", s.step},
                     {"steps_planned", options_.steps},
                     {"cursor", s.cursor.ToJson()},
                     {"mixer", LinearMixerOptionsToJson(mixer_options_)},
                     {"curve", CurveToJson(s.curve)}};
  return SaveTensors(LayerPath(s.layer), out, {{kMetaKey, info.dump()}});
}

Status BlockwiseDistiller::CheckFinite() const {
  if (!nonfinite_.defined()) return Status::Ok();
  const at::Tensor bad = nonfinite_.to(at::kCPU);
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (bad[static_cast<int64_t>(i)].item<bool>()) {
      return Internal("distill: layer " + std::to_string(layers_[i]) +
                      " got a non-finite gradient by step " + std::to_string(nonfinite_step_) +
                      "; lower distill.lr or check the data");
    }
  }
  return Status::Ok();
}

double BlockwiseDistiller::LearningRate(int64_t step) const {
  const double lr = options_.lr;
  if (options_.warmup_steps > 0 && step <= options_.warmup_steps) {
    return lr * static_cast<double>(step) / static_cast<double>(options_.warmup_steps);
  }
  const double span = std::max<int64_t>(1, options_.steps - options_.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - options_.warmup_steps) / span);
  const double cosine = 0.5 * (1 + std::cos(M_PI * progress));
  return lr * (options_.min_lr_ratio + (1 - options_.min_lr_ratio) * cosine);
}

std::shared_ptr<LinearMixer> BlockwiseDistiller::mixer(int64_t layer) const {
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (layers_[i] == layer) return mixers_[i];
  }
  return nullptr;
}

namespace {

// The cursor after `samples` draws from the start of the stream (SequenceSampler::Next moves to
// the next epoch lazily, when a draw finds the epoch used up).
storage::DatasetCursor CursorAfter(int64_t samples, int64_t per_epoch) {
  storage::DatasetCursor c;
  if (samples <= 0 || per_epoch <= 0) return c;
  c.epoch = (samples - 1) / per_epoch;
  c.position = (samples - 1) % per_epoch + 1;
  return c;
}

// The header that precedes each micro-batch's stream between stages: the step and whether the
// sender stopped (then no stream follows).
at::Tensor StageHeader(int64_t step, bool stop, const at::Device& device) {
  return at::tensor({step, int64_t{stop ? 1 : 0}}, at::kLong).to(device);
}

}  // namespace

StatusOr<std::vector<std::pair<int64_t, int64_t>>> BalanceStages(
    const std::vector<int64_t>& layer_params, int64_t embedding_params, int64_t head_params,
    int64_t stages) {
  const auto n = static_cast<int64_t>(layer_params.size());
  if (stages < 1 || stages > n) {
    return InvalidArgument("cannot cut " + std::to_string(n) + " layers into " +
                           std::to_string(stages) + " pipeline stages");
  }
  std::vector<int64_t> prefix(static_cast<size_t>(n + 1), 0);
  for (int64_t l = 0; l < n; ++l) {
    int64_t w = layer_params[static_cast<size_t>(l)];
    if (l == 0) w += embedding_params;
    if (l == n - 1) w += head_params;
    prefix[static_cast<size_t>(l + 1)] = prefix[static_cast<size_t>(l)] + w;
  }
  auto sum = [&](int64_t a, int64_t b) {
    return prefix[static_cast<size_t>(b)] - prefix[static_cast<size_t>(a)];
  };
  // best[p][i]: the smallest largest stage when layers [0, i) form p stages; cut[p][i] where the
  // last of them starts.
  const int64_t kInf = std::numeric_limits<int64_t>::max();
  std::vector<std::vector<int64_t>> best(static_cast<size_t>(stages + 1),
                                         std::vector<int64_t>(static_cast<size_t>(n + 1), kInf));
  auto cut = best;
  best[0][0] = 0;
  for (int64_t p = 1; p <= stages; ++p) {
    for (int64_t i = p; i <= n; ++i) {
      for (int64_t j = p - 1; j < i; ++j) {
        const int64_t prev = best[static_cast<size_t>(p - 1)][static_cast<size_t>(j)];
        if (prev == kInf) continue;
        const int64_t cost = std::max(prev, sum(j, i));
        if (cost < best[static_cast<size_t>(p)][static_cast<size_t>(i)]) {
          best[static_cast<size_t>(p)][static_cast<size_t>(i)] = cost;
          cut[static_cast<size_t>(p)][static_cast<size_t>(i)] = j;
        }
      }
    }
  }
  std::vector<std::pair<int64_t, int64_t>> out(static_cast<size_t>(stages));
  int64_t end = n;
  for (int64_t p = stages; p >= 1; --p) {
    const int64_t begin = cut[static_cast<size_t>(p)][static_cast<size_t>(end)];
    out[static_cast<size_t>(p - 1)] = {begin, end};
    end = begin;
  }
  return out;
}

StatusOr<at::Tensor> BlockwiseDistiller::StepInput(storage::SequenceSampler& sampler,
                                                   int64_t step, bool* stop) {
  *stop = false;
  const at::Device device = teacher_->placement().device;
  const int64_t rows = options_.batch_size / replicas();
  if (first_stage()) {
    // Every replica draws the whole micro-batch (the same one) and keeps its slice of rows.
    const auto batch = sampler.Next(options_.batch_size);
    const int64_t r = parallel_.data != nullptr ? parallel_.data->rank() : 0;
    std::vector<int64_t> flat;
    flat.reserve(static_cast<size_t>(rows * options_.sequence_length));
    for (int64_t i = r * rows; i < (r + 1) * rows; ++i) {
      const auto& row = batch[static_cast<size_t>(i)];
      flat.insert(flat.end(), row.begin(), row.end());
    }
    const at::Tensor ids = at::tensor(flat, at::kLong).view({rows, options_.sequence_length});
    return teacher_->Embed(ids);
  }
  Communicator& pipe = *parallel_.pipeline;
  at::Tensor header = at::zeros({2}, at::TensorOptions().dtype(at::kLong).device(device));
  HYB_RETURN_IF_ERROR(pipe.Recv(header, pipe.rank() - 1));
  const at::Tensor h = header.cpu();
  if (h[1].item<int64_t>() != 0) {
    *stop = true;
    return at::Tensor();
  }
  if (h[0].item<int64_t>() != step) {
    return DataLoss("distill: stage " + std::to_string(pipe.rank()) + " expected step " +
                    std::to_string(step) + " from the stage before, got step " +
                    std::to_string(h[0].item<int64_t>()));
  }
  at::Tensor stream = at::empty({rows, options_.sequence_length, teacher_->config().hidden_size},
                                at::TensorOptions().dtype(teacher_->placement().dtype).device(device));
  HYB_RETURN_IF_ERROR(pipe.Recv(stream, pipe.rank() - 1));
  return stream;
}

Status BlockwiseDistiller::TrainStep(int64_t step, const LayerTaps& taps,
                                     const storage::SequenceSampler& sampler) {
  const at::Device device = teacher_->placement().device;
  const double lr = LearningRate(step);
  std::vector<size_t> active;  // layers whose state is at step - 1 (others are ahead)
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (states_[i].step == step - 1) active.push_back(i);
  }
  if (step == 1 && options_.calibrate_output_scale && !active.empty()) {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> sums;
    for (size_t i : active) {
      const auto l = static_cast<size_t>(layers_[i]);
      at::Tensor s = mixers_[i]->OutputScaleSums(taps.mixer_input[l].to(at::kFloat),
                                                 taps.mixer_output[l].to(device, at::kFloat));
      sums.push_back(s.defined() ? s : at::zeros({2}, at::TensorOptions().dtype(at::kDouble).device(device)));
    }
    at::Tensor all = at::stack(sums);  // [active, 2]
    if (parallel_.data != nullptr) HYB_RETURN_IF_ERROR(parallel_.data->AllReduce(all));
    const at::Tensor host = all.cpu();
    for (size_t k = 0; k < active.size(); ++k) {
      const double num = host[static_cast<int64_t>(k)][0].item<double>();
      const double denom = host[static_cast<int64_t>(k)][1].item<double>();
      mixers_[active[k]]->SetOutputScale(denom > 0 ? num / denom : 1.0);
    }
  }
  // The loss curve's points: only then is the teacher output's mean square needed.
  const bool logs = step == 1 || step % options_.log_every == 0 || step == options_.steps;
  std::vector<std::vector<at::Tensor>> grads(layers_.size()), params(layers_.size());
  std::vector<at::Tensor> mse(layers_.size()), ref(layers_.size());
  for (size_t i : active) {
    const auto l = static_cast<size_t>(layers_[i]);
    LinearMixer& mixer = *mixers_[i];
    const auto named = mixer.NamedTensors();
    for (const auto& [name, t] : named) params[i].push_back(t);
    if (compute_dtype_ == at::kFloat) {
      const at::Tensor y = taps.mixer_output[l].to(device, at::kFloat);  // [B, T, hidden]
      const at::Tensor out = mixer.Forward(taps.mixer_input[l].to(at::kFloat), {}, nullptr);
      const at::Tensor loss = (out - y).pow(2).mean();
      grads[i] = torch::autograd::grad({loss}, params[i]);
      mse[i] = loss.detach();
      if (logs) {
        at::NoGradGuard no_grad;
        ref[i] = y.pow(2).mean();
      }
      continue;
    }
    // Autocast by hand: differentiable casts of the fp32 masters feed a low-precision mixer.
    std::map<std::string, at::Tensor> cast;
    for (const auto& [name, t] : named) cast[name] = t.to(compute_dtype_);
    auto low = LinearMixer::FromTensors(
        mixer.shape(), mixer_options_,
        [&cast](const std::string& name, std::vector<int64_t>) -> StatusOr<at::Tensor> {
          return cast.at(name);
        },
        [&cast](const std::string& name) { return cast.count(name) > 0; });
    HYB_RETURN_IF_ERROR(low.status());
    const at::Tensor y = taps.mixer_output[l].to(device, compute_dtype_);
    const at::Tensor out = (*low)->Forward(taps.mixer_input[l].to(compute_dtype_), {}, nullptr);
    // The mean square error and its gradient without fp32 copies of the [B, T, hidden] output
    // and target: one difference in the mixer's dtype (each element's difference computed in
    // fp32, rounded once), its square summed in fp32, and d loss / d out = 2 (out - y) / n fed
    // to the backward directly.
    at::Tensor diff;
    {
      at::NoGradGuard no_grad;
      diff = at::sub(out.detach(), y);
    }
    const double n = static_cast<double>(out.numel());
    mse[i] = at::linalg_vector_norm(diff, 2, c10::nullopt, false, at::kFloat).square() / n;
    grads[i] = torch::autograd::grad({out}, params[i], {diff.mul_(2.0 / n)});
    if (logs) {
      at::NoGradGuard no_grad;
      ref[i] = at::linalg_vector_norm(y, 2, c10::nullopt, false, at::kFloat).square() / n;
    }
  }
  at::NoGradGuard no_grad;
  if (parallel_.data != nullptr && !active.empty()) {
    // One all-reduce for the whole stage: every gradient, then each layer's loss and reference.
    std::vector<at::Tensor> parts;
    for (size_t i : active) {
      for (const auto& g : grads[i]) parts.push_back(g.reshape({-1}));
    }
    for (size_t i : active) {
      parts.push_back(mse[i].reshape({1}));
      if (logs) parts.push_back(ref[i].reshape({1}));
    }
    at::Tensor flat = at::cat(parts);
    HYB_RETURN_IF_ERROR(parallel_.data->AllReduce(flat));
    flat.div_(static_cast<double>(replicas()));
    int64_t at_ = 0;
    for (size_t i : active) {
      for (auto& g : grads[i]) {
        g = flat.slice(0, at_, at_ + g.numel()).view(g.sizes());
        at_ += g.numel();
      }
    }
    for (size_t i : active) {
      mse[i] = flat[at_++];
      if (logs) ref[i] = flat[at_++];
    }
  }
  if (active.empty()) return Status::Ok();
  // Clipping and AdamW for every active layer at once, on the device: per-layer gradient norms
  // from one multi-tensor norm, clip factors min(1, clip / (norm + 1e-6)) as tensors, then one
  // multi-tensor op per AdamW stage over all the layers' tensors. Nothing is read back here:
  // a non-finite norm is remembered on the device and reported by CheckFinite.
  std::vector<at::Tensor> all_p, all_g, all_m, all_v, layer_norms;
  std::vector<int64_t> owner;  // active index of each tensor
  for (size_t a = 0; a < active.size(); ++a) {
    const size_t i = active[a];
    for (size_t k = 0; k < params[i].size(); ++k) {
      all_p.push_back(params[i][k]);
      all_g.push_back(grads[i][k]);
      all_m.push_back(adam_m_[i][k]);
      all_v.push_back(adam_v_[i][k]);
      owner.push_back(static_cast<int64_t>(a));
    }
  }
  const std::vector<at::Tensor> norms = at::_foreach_norm(all_g);
  {
    size_t at_tensor = 0;
    for (size_t a = 0; a < active.size(); ++a) {
      const size_t n = params[active[a]].size();
      std::vector<at::Tensor> mine(norms.begin() + static_cast<std::ptrdiff_t>(at_tensor),
                                   norms.begin() + static_cast<std::ptrdiff_t>(at_tensor + n));
      layer_norms.push_back(at::stack(mine).to(at::kFloat).pow(2).sum().sqrt());
      at_tensor += n;
    }
  }
  const at::Tensor norm = at::stack(layer_norms);  // [active]
  {
    // The active layers' device index is uploaded only when the set changes (a host-to-device
    // copy would wait for the stream every step).
    if (active != active_) {
      std::vector<int64_t> idx(active.begin(), active.end());
      active_index_ = at::tensor(idx, at::kLong).to(device);
      active_ = active;
    }
    nonfinite_.index_put_({active_index_}, nonfinite_.index({active_index_})
                                                .logical_or(norm.isfinite().logical_not()));
    nonfinite_step_ = step;
  }
  if (options_.grad_clip > 0) {
    const at::Tensor factor = (options_.grad_clip / (norm + 1e-6)).clamp_max(1.0);
    for (size_t t = 0; t < all_g.size(); ++t) all_g[t].mul_(factor[owner[t]]);
  }
  const double bc1 = 1 - std::pow(options_.beta1, static_cast<double>(step));
  const double bc2 = 1 - std::pow(options_.beta2, static_cast<double>(step));
  at::_foreach_mul_(all_m, options_.beta1);
  at::_foreach_add_(all_m, all_g, 1 - options_.beta1);
  at::_foreach_mul_(all_v, options_.beta2);
  at::_foreach_addcmul_(all_v, all_g, all_g, 1 - options_.beta2);
  if (options_.weight_decay > 0) at::_foreach_mul_(all_p, 1 - lr * options_.weight_decay);
  std::vector<at::Tensor> denom = at::_foreach_div(all_v, bc2);
  at::_foreach_sqrt_(denom);
  at::_foreach_add_(denom, options_.eps);
  at::_foreach_addcdiv_(all_p, all_m, denom, -lr / bc1);
  for (size_t i : active) {
    LayerDistillState& s = states_[i];
    s.step = step;
    s.cursor = sampler.cursor();
    if (logs) {
      const double m = mse[i].item<double>();
      const double r = ref[i].item<double>();
      s.curve.push_back({step, m, r > 0 ? m / r : 0.0});
    }
  }
  if (logs) HYB_RETURN_IF_ERROR(CheckFinite());
  return Status::Ok();
}

Status BlockwiseDistiller::Run(const DistillProgressFn& progress, int64_t stop_after_step) {
  const at::Device device = teacher_->placement().device;
  // The stream restarts at the earliest layer of every rank; layers ahead of it wait for it.
  int64_t start = options_.steps;
  for (const auto& s : states_) start = std::min(start, s.step);
  if (parallel_.pipeline != nullptr || parallel_.data != nullptr) {
    at::Tensor t = at::tensor({start}, at::kLong).to(device);
    if (parallel_.pipeline != nullptr) {
      HYB_RETURN_IF_ERROR(parallel_.pipeline->AllReduce(t, ReduceOp::kMin));
    }
    if (parallel_.data != nullptr) HYB_RETURN_IF_ERROR(parallel_.data->AllReduce(t, ReduceOp::kMin));
    start = t.cpu().item<int64_t>();
  }
  if (start >= options_.steps) return Status::Ok();
  storage::SamplerOptions so;
  so.sequence_length = options_.sequence_length;
  so.seed = options_.seed;
  HYB_ASSIGN_OR_RETURN(auto probe, storage::SequenceSampler::Create(data_, so));
  HYB_ASSIGN_OR_RETURN(
      auto sampler,
      storage::SequenceSampler::Create(
          data_, so, CursorAfter(start * options_.batch_size, probe.samples_per_epoch())));
  const int64_t first = parallel_.first_layer, last = parallel_.last_layer;
  Communicator* pipe = parallel_.pipeline;
  auto checkpoint_at = [&](int64_t step) -> Status {
    if (!writes_checkpoints()) return Status::Ok();
    HYB_RETURN_IF_ERROR(CheckFinite());  // never checkpoint a diverged mixer
    for (size_t i = 0; i < states_.size(); ++i) {
      if (states_[i].step == step) HYB_RETURN_IF_ERROR(Checkpoint(i));
    }
    return Status::Ok();
  };
  auto stop_downstream = [&](int64_t step) -> Status {
    if (last_stage()) return Status::Ok();
    HYB_RETURN_IF_ERROR(pipe->Send(StageHeader(step, true, device), pipe->rank() + 1));
    return pipe->Flush();
  };
  try {
    for (int64_t step = start + 1; step <= options_.steps; ++step) {
      if (stop_after_step >= 0 && step > stop_after_step) break;
      bool stopped = false;
      HYB_ASSIGN_OR_RETURN(at::Tensor h, StepInput(sampler, step, &stopped));
      if (stopped) {
        // The stage before stopped after step - 1, which this stage has finished too.
        HYB_RETURN_IF_ERROR(checkpoint_at(step - 1));
        HYB_RETURN_IF_ERROR(stop_downstream(step));
        return Cancelled("distillation stopped at step " + std::to_string(step - 1) + " of " +
                         std::to_string(options_.steps) + " (checkpointed)");
      }
      LayerTaps taps;
      {
        at::NoGradGuard no_grad;
        HYB_ASSIGN_OR_RETURN(at::Tensor out, teacher_->ForwardRange(first, last, h, &taps));
        if (!last_stage()) {
          // On its way while this stage trains: the next stage starts its forward now.
          HYB_RETURN_IF_ERROR(pipe->Send(StageHeader(step, false, device), pipe->rank() + 1));
          HYB_RETURN_IF_ERROR(pipe->Send(out, pipe->rank() + 1));
        }
      }
      HYB_RETURN_IF_ERROR(TrainStep(step, taps, sampler));
      bool go_on = true;
      if (first_stage()) {
        if (parallel_.data == nullptr || parallel_.data->rank() == 0) {
          go_on = progress == nullptr || progress(step, states_);
        }
        if (parallel_.data != nullptr) {
          at::Tensor flag = at::tensor({int64_t{go_on ? 1 : 0}}, at::kLong).to(device);
          HYB_RETURN_IF_ERROR(parallel_.data->AllReduce(flag, ReduceOp::kMin));
          go_on = flag.cpu().item<int64_t>() == 1;
        }
      }
      if (!go_on || step % options_.checkpoint_every == 0 || step == options_.steps) {
        HYB_RETURN_IF_ERROR(checkpoint_at(step));
      }
      if (!go_on) {
        HYB_RETURN_IF_ERROR(stop_downstream(step + 1));
        return Cancelled("distillation stopped at step " + std::to_string(step) + " of " +
                         std::to_string(options_.steps) + " (checkpointed)");
      }
    }
    if (pipe != nullptr) HYB_RETURN_IF_ERROR(pipe->Flush());
  } catch (const c10::Error& e) {
    return Internal(std::string("distill: training step failed: ") + e.what_without_backtrace());
  }
  return Status::Ok();
}

}  // namespace hyb::worker
