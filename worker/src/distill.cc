#include "hyb/worker/distill.h"

#include <torch/torch.h>

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
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
    std::shared_ptr<const storage::TokenDataset> data, std::string checkpoint_dir) {
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
  if (layers.empty()) return InvalidArgument("distill: no layers to distill");
  std::sort(layers.begin(), layers.end());
  if (std::adjacent_find(layers.begin(), layers.end()) != layers.end()) {
    return InvalidArgument("distill: a layer is listed twice");
  }
  for (int64_t l : layers) {
    if (l < 0 || l >= teacher->num_layers()) {
      return InvalidArgument("distill: layer " + std::to_string(l) + " is outside the teacher's " +
                             std::to_string(teacher->num_layers()) + " layers");
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

Status BlockwiseDistiller::Run(const DistillProgressFn& progress, int64_t stop_after_step) {
  // The stream restarts at the earliest layer; layers ahead of it wait for it.
  size_t first = 0;
  for (size_t i = 1; i < states_.size(); ++i) {
    if (states_[i].step < states_[first].step) first = i;
  }
  const int64_t start = states_[first].step;
  if (start >= options_.steps) return Status::Ok();
  storage::SamplerOptions so;
  so.sequence_length = options_.sequence_length;
  so.seed = options_.seed;
  HYB_ASSIGN_OR_RETURN(auto sampler,
                       storage::SequenceSampler::Create(data_, so, states_[first].cursor));
  const at::Device device = teacher_->placement().device;
  try {
    for (int64_t step = start + 1; step <= options_.steps; ++step) {
      if (stop_after_step >= 0 && step > stop_after_step) break;
      const auto rows = sampler.Next(options_.batch_size);
      std::vector<int64_t> flat;
      flat.reserve(static_cast<size_t>(options_.batch_size * options_.sequence_length));
      for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
      const at::Tensor ids =
          at::tensor(flat, at::kLong).view({options_.batch_size, options_.sequence_length});
      LayerTaps taps;
      {
        at::NoGradGuard no_grad;
        HYB_ASSIGN_OR_RETURN(at::Tensor logits, teacher_->Forward(ids, nullptr, &taps));
        (void)logits;
      }
      const double lr = LearningRate(step);
      for (size_t i = 0; i < layers_.size(); ++i) {
        LayerDistillState& s = states_[i];
        if (s.step != step - 1) continue;  // ahead of the stream after a resume
        const auto l = static_cast<size_t>(layers_[i]);
        const at::Tensor y = taps.mixer_output[l].to(device, at::kFloat);  // [B, T, hidden]
        LinearMixer& mixer = *mixers_[i];
        if (step == 1 && options_.calibrate_output_scale) {
          at::NoGradGuard no_grad;
          mixer.CalibrateOutputScale(taps.mixer_input[l].to(at::kFloat), y);
        }
        const auto named = mixer.NamedTensors();
        std::vector<at::Tensor> params;
        for (const auto& [name, t] : named) params.push_back(t);
        at::Tensor out;
        if (compute_dtype_ == at::kFloat) {
          out = mixer.Forward(taps.mixer_input[l].to(at::kFloat), {}, nullptr);
        } else {
          // Autocast by hand: differentiable casts of the fp32 masters feed a bf16 mixer.
          std::map<std::string, at::Tensor> cast;
          for (const auto& [name, t] : named) cast[name] = t.to(compute_dtype_);
          auto low = LinearMixer::FromTensors(
              mixer.shape(), mixer_options_,
              [&cast](const std::string& name, std::vector<int64_t>) -> StatusOr<at::Tensor> {
                return cast.at(name);
              },
              [&cast](const std::string& name) { return cast.count(name) > 0; });
          HYB_RETURN_IF_ERROR(low.status());
          out = (*low)->Forward(taps.mixer_input[l].to(compute_dtype_), {}, nullptr).to(at::kFloat);
        }
        const at::Tensor mse = (out - y).pow(2).mean();
        auto grads = torch::autograd::grad({mse}, params);
        at::NoGradGuard no_grad;
        at::Tensor sq = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(device));
        for (const auto& g : grads) sq = sq + g.pow(2).sum();
        const double norm = std::sqrt(sq.item<double>());
        if (!std::isfinite(norm)) {
          return Internal("distill: layer " + std::to_string(layers_[i]) + " step " +
                          std::to_string(step) + ": loss " + std::to_string(mse.item<double>()) +
                          " gave a non-finite gradient; lower distill.lr or check the data");
        }
        if (options_.grad_clip > 0 && norm > options_.grad_clip) {
          for (auto& g : grads) g.mul_(options_.grad_clip / (norm + 1e-6));
        }
        const double bc1 = 1 - std::pow(options_.beta1, static_cast<double>(step));
        const double bc2 = 1 - std::pow(options_.beta2, static_cast<double>(step));
        for (size_t k = 0; k < params.size(); ++k) {
          at::Tensor& m = adam_m_[i][k];
          at::Tensor& v = adam_v_[i][k];
          m.mul_(options_.beta1).add_(grads[k], 1 - options_.beta1);
          v.mul_(options_.beta2).addcmul_(grads[k], grads[k], 1 - options_.beta2);
          if (options_.weight_decay > 0) params[k].mul_(1 - lr * options_.weight_decay);
          const at::Tensor denom = (v / bc2).sqrt_().add_(options_.eps);
          params[k].addcdiv_(m, denom, -lr / bc1);
        }
        s.step = step;
        s.cursor = sampler.cursor();
        if (step == 1 || step % options_.log_every == 0 || step == options_.steps) {
          const double m = mse.item<double>();
          const double ref = y.pow(2).mean().item<double>();
          s.curve.push_back({step, m, ref > 0 ? m / ref : 0.0});
        }
      }
      const bool go_on = progress == nullptr || progress(step, states_);
      if (!go_on || step % options_.checkpoint_every == 0 || step == options_.steps) {
        for (size_t i = 0; i < states_.size(); ++i) {
          if (states_[i].step == step) HYB_RETURN_IF_ERROR(Checkpoint(i));
        }
      }
      if (!go_on) {
        return Cancelled("distillation stopped at step " + std::to_string(step) + " of " +
                         std::to_string(options_.steps) + " (checkpointed)");
      }
    }
  } catch (const c10::Error& e) {
    return Internal(std::string("distill: training step failed: ") + e.what_without_backtrace());
  }
  return Status::Ok();
}

}  // namespace hyb::worker
