#include "worker/hf_hybrid_fixture.h"

#include <torch/torch.h>

#include <stdexcept>

#include "hyb/worker/linear_mixer.h"

namespace hyb::testing {

TinyModelSpec HfFixtureTeacherSpec(const std::string& family) {
  TinyModelSpec s;
  s.family = family;
  s.layers = 3;
  s.hidden = 32;
  s.heads = 4;
  if (family == "llama") {
    s.kv_heads = 2;
    s.tie = true;
    s.attention_bias = true;
  } else if (family == "qwen2") {
    s.kv_heads = 1;
    s.extra = {{"use_sliding_window", true},
               {"sliding_window", 5},
               {"max_window_layers", 1},
               {"layer_types", {"full_attention", "sliding_attention", "full_attention"}}};
  } else if (family == "qwen3") {
    s.kv_heads = 2;
  } else if (family == "mistral") {
    s.kv_heads = 2;
    s.extra = {{"sliding_window", 6}};
  } else {
    throw std::runtime_error("no fixture teacher for family " + family);
  }
  return s;
}

std::unique_ptr<worker::DecoderModel> MakeNoisyHybrid(const std::string& teacher_dir,
                                                      const std::string& mixer,
                                                      const std::vector<int64_t>& linear_layers,
                                                      uint64_t seed) {
  auto model = worker::DecoderModel::Load(teacher_dir, worker::RuntimeOptions{});
  if (!model.ok()) throw std::runtime_error(model.status().ToString());
  auto options = worker::ParseLinearMixerOptions(Json{{"mixer", mixer}}, "fixture mixer");
  if (!options.ok()) throw std::runtime_error(options.status().ToString());
  at::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (int64_t l : linear_layers) {
    const auto* att = dynamic_cast<const worker::SoftmaxAttentionMixer*>(&(*model)->mixer(l));
    if (att == nullptr) throw std::runtime_error("layer " + std::to_string(l) + " is not softmax");
    auto linear = worker::LinearMixer::Transfer(att->shape(), att->weights(), *options);
    for (at::Tensor t : linear->Parameters()) {
      t.add_(at::normal(0.0, 0.2, t.sizes(), gen, t.options()));
    }
    (*model)->SetMixer(l, linear);
  }
  return std::move(*model);
}

}  // namespace hyb::testing
