#include "worker/test_model.h"

#include <torch/torch.h>

#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <random>
#include <stdexcept>

#include "hyb/storage/atomic_file.h"
#include "hyb/storage/token_dataset.h"
#include "hyb/storage/tokenizer.h"
#include "hyb/worker/decoder_model.h"
#include "hyb/worker/task_scoring.h"
#include "hyb/worker/tensor_io.h"

namespace hyb::testing {

Json WriteTinyModel(const std::string& dir, const TinyModelSpec& s, uint64_t seed) {
  const int64_t hd = s.head_dim > 0 ? s.head_dim : s.hidden / s.heads;
  Json config = {{"model_type", s.family},
                 {"vocab_size", s.vocab},
                 {"hidden_size", s.hidden},
                 {"intermediate_size", s.intermediate},
                 {"num_hidden_layers", s.layers},
                 {"num_attention_heads", s.heads},
                 {"num_key_value_heads", s.kv_heads},
                 {"head_dim", hd},
                 {"rms_norm_eps", 1e-5},
                 {"max_position_embeddings", 256},
                 {"hidden_act", "silu"},
                 {"tie_word_embeddings", s.tie},
                 {"eos_token_id", 2}};
  if (s.family == "llama" || s.family == "qwen3") config["attention_bias"] = s.attention_bias;
  if (s.family == "mistral") config["sliding_window"] = nullptr;
  for (auto it = s.extra.begin(); it != s.extra.end(); ++it) config[it.key()] = it.value();

  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto randn = [&](std::vector<int64_t> shape, double scale) {
    return at::normal(0.0, scale, shape, gen, at::TensorOptions().dtype(at::kFloat));
  };
  auto norm_weight = [&](int64_t n) { return 1.0 + randn({n}, 0.1); };
  const int64_t q_out = s.heads * hd, kv_out = s.kv_heads * hd;
  const bool qkv_bias = s.family == "qwen2" || s.attention_bias;
  const bool o_bias = s.attention_bias && s.family != "qwen2";
  worker::NamedTensors t;
  t.emplace_back("model.embed_tokens.weight", randn({s.vocab, s.hidden}, 1.0));
  t.emplace_back("model.norm.weight", norm_weight(s.hidden));
  if (!s.tie) t.emplace_back("lm_head.weight", randn({s.vocab, s.hidden}, 0.2));
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.emplace_back(p + "input_layernorm.weight", norm_weight(s.hidden));
    t.emplace_back(p + "post_attention_layernorm.weight", norm_weight(s.hidden));
    t.emplace_back(p + "self_attn.q_proj.weight", randn({q_out, s.hidden}, 0.3));
    t.emplace_back(p + "self_attn.k_proj.weight", randn({kv_out, s.hidden}, 0.3));
    t.emplace_back(p + "self_attn.v_proj.weight", randn({kv_out, s.hidden}, 0.3));
    t.emplace_back(p + "self_attn.o_proj.weight", randn({s.hidden, q_out}, 0.2));
    if (qkv_bias) {
      t.emplace_back(p + "self_attn.q_proj.bias", randn({q_out}, 0.1));
      t.emplace_back(p + "self_attn.k_proj.bias", randn({kv_out}, 0.1));
      t.emplace_back(p + "self_attn.v_proj.bias", randn({kv_out}, 0.1));
    }
    if (o_bias) t.emplace_back(p + "self_attn.o_proj.bias", randn({s.hidden}, 0.1));
    if (s.family == "qwen3") {
      t.emplace_back(p + "self_attn.q_norm.weight", norm_weight(hd));
      t.emplace_back(p + "self_attn.k_norm.weight", norm_weight(hd));
    }
    t.emplace_back(p + "mlp.gate_proj.weight", randn({s.intermediate, s.hidden}, 0.2));
    t.emplace_back(p + "mlp.up_proj.weight", randn({s.intermediate, s.hidden}, 0.2));
    t.emplace_back(p + "mlp.down_proj.weight", randn({s.hidden, s.intermediate}, 0.2));
  }
  const Status st = worker::SaveTensors(dir + "/model.safetensors", t, {{"format", "pt"}});
  if (!st.ok()) throw std::runtime_error(st.ToString());
  const Status cs = storage::AtomicWriteString(dir + "/config.json", config.dump(2));
  if (!cs.ok()) throw std::runtime_error(cs.ToString());
  return config;
}

std::vector<double> ReferenceInvFreq(const Json& config, int64_t head_dim, double* scaling) {
  Json rope = Json::object();
  if (config.contains("rope_scaling") && config["rope_scaling"].is_object()) {
    rope = config["rope_scaling"];
  } else if (config.contains("rope_parameters") && config["rope_parameters"].is_object()) {
    rope = config["rope_parameters"];
  }
  double theta = config.value("rope_theta", 10000.0);
  theta = rope.value("rope_theta", theta);
  const std::string type = rope.value("rope_type", rope.value("type", std::string("default")));
  const double factor = rope.value("factor", 1.0);
  const int64_t half = head_dim / 2;
  std::vector<double> f(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    f[static_cast<size_t>(i)] =
        1.0 / std::pow(theta, 2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
  }
  *scaling = 1.0;
  if (type == "linear") {
    for (double& x : f) x /= factor;
  } else if (type == "llama3") {
    const double orig = rope.at("original_max_position_embeddings").get<double>();
    const double lo = rope.at("low_freq_factor").get<double>();
    const double hi = rope.at("high_freq_factor").get<double>();
    for (double& x : f) {
      const double wavelen = 2 * M_PI / x;
      if (wavelen < orig / hi) continue;  // high frequency: unchanged
      if (wavelen > orig / lo) {          // low frequency: interpolated
        x /= factor;
        continue;
      }
      const double smooth = (orig / wavelen - lo) / (hi - lo);
      x = (1 - smooth) * x / factor + smooth * x;
    }
  } else if (type == "yarn") {
    const double orig = rope.value("original_max_position_embeddings",
                                   config.value("max_position_embeddings", 2048.0));
    const double beta_fast = rope.value("beta_fast", 32.0),
                 beta_slow = rope.value("beta_slow", 1.0);
    const double dim = static_cast<double>(head_dim);
    auto corr = [&](double r) {
      return dim * std::log(orig / (r * 2 * M_PI)) / (2 * std::log(theta));
    };
    double low = corr(beta_fast), high = corr(beta_slow);
    if (rope.value("truncate", true)) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, dim - 1);
    if (low == high) high += 0.001;
    for (int64_t i = 0; i < half; ++i) {
      const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
      double& x = f[static_cast<size_t>(i)];
      x = (x / factor) * ramp + x * (1 - ramp);
    }
    *scaling = rope.contains("attention_factor") ? rope["attention_factor"].get<double>()
                                                 : 0.1 * std::log(factor) + 1.0;
  }
  return f;
}

namespace {

using at::Tensor;

Tensor RmsNormRef(const Tensor& x, const Tensor& w, double eps) {  // x: [D]
  double ss = 0;
  for (int64_t i = 0; i < x.size(0); ++i) ss += x[i].item<double>() * x[i].item<double>();
  return x / std::sqrt(ss / static_cast<double>(x.size(0)) + eps) * w;
}

Tensor RotateRef(const Tensor& x, int64_t pos, const std::vector<double>& inv_freq,
                 double scaling) {  // x: [D]
  const int64_t half = x.size(0) / 2;
  Tensor out = x.clone();
  for (int64_t i = 0; i < half; ++i) {
    const double a = static_cast<double>(pos) * inv_freq[static_cast<size_t>(i)];
    const double c = std::cos(a) * scaling, s = std::sin(a) * scaling;
    const double x1 = x[i].item<double>(), x2 = x[i + half].item<double>();
    out[i] = x1 * c - x2 * s;
    out[i + half] = x2 * c + x1 * s;
  }
  return out;
}

}  // namespace

Tensor ReferenceLogits(const std::string& dir, const Tensor& input_ids) {
  const Json config = *ReadJsonFile(dir + "/config.json");
  auto raw = *worker::LoadTensors(dir + "/model.safetensors");
  auto W = [&](const std::string& name) -> Tensor {
    auto it = raw.find(name);
    return it == raw.end() ? Tensor() : it->second.to(at::kDouble);
  };
  const std::string family = config["model_type"];
  const int64_t heads = config["num_attention_heads"], kv_heads = config["num_key_value_heads"];
  const int64_t hd = config["head_dim"], layers = config["num_hidden_layers"];
  const double eps = config["rms_norm_eps"];
  double scaling = 1.0;
  const std::vector<double> inv_freq = ReferenceInvFreq(config, hd, &scaling);
  // Sliding window per layer, as the families define it.
  std::vector<int64_t> window(static_cast<size_t>(layers), 0);
  if (family == "mistral" && config.contains("sliding_window") &&
      !config["sliding_window"].is_null()) {
    window.assign(static_cast<size_t>(layers), config["sliding_window"].get<int64_t>());
  }
  if ((family == "qwen2" || family == "qwen3") && config.value("use_sliding_window", false)) {
    for (int64_t l = 0; l < layers; ++l) {
      if (config["layer_types"][static_cast<size_t>(l)] == "sliding_attention") {
        window[static_cast<size_t>(l)] = config["sliding_window"].get<int64_t>();
      }
    }
  }
  const Tensor embed = W("model.embed_tokens.weight");
  const Tensor head = config.value("tie_word_embeddings", false) ? embed : W("lm_head.weight");
  auto linear = [](const Tensor& x, const Tensor& w, const Tensor& b) {
    Tensor y = at::mv(w, x);
    return b.defined() ? y + b : y;
  };
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  Tensor logits = at::zeros({B, T, embed.size(0)}, at::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<Tensor> h;
    for (int64_t t = 0; t < T; ++t) h.push_back(embed[input_ids[b][t].item<int64_t>()].clone());
    for (int64_t l = 0; l < layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      std::vector<Tensor> q(static_cast<size_t>(T)), k(static_cast<size_t>(T)),
          v(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) {
        const Tensor x =
            RmsNormRef(h[static_cast<size_t>(t)], W(p + "input_layernorm.weight"), eps);
        q[static_cast<size_t>(t)] =
            linear(x, W(p + "self_attn.q_proj.weight"), W(p + "self_attn.q_proj.bias"));
        k[static_cast<size_t>(t)] =
            linear(x, W(p + "self_attn.k_proj.weight"), W(p + "self_attn.k_proj.bias"));
        v[static_cast<size_t>(t)] =
            linear(x, W(p + "self_attn.v_proj.weight"), W(p + "self_attn.v_proj.bias"));
      }
      auto head_of = [&](const Tensor& x, int64_t i) { return x.narrow(0, i * hd, hd); };
      auto prep = [&](const Tensor& x, int64_t i, int64_t pos, const char* norm) {
        Tensor y = head_of(x, i);
        const Tensor nw = W(p + "self_attn." + norm + ".weight");
        if (nw.defined()) y = RmsNormRef(y, nw, eps);
        return RotateRef(y, pos, inv_freq, scaling);
      };
      std::vector<Tensor> attn_out(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) {
        std::vector<Tensor> per_head;
        for (int64_t hh = 0; hh < heads; ++hh) {
          const int64_t g = hh / (heads / kv_heads);
          const Tensor qi = prep(q[static_cast<size_t>(t)], hh, t, "q_norm");
          std::vector<double> scores;
          std::vector<int64_t> keys;
          const int64_t w = window[static_cast<size_t>(l)];
          for (int64_t j = 0; j <= t; ++j) {
            if (w > 0 && j <= t - w) continue;
            const Tensor kj = prep(k[static_cast<size_t>(j)], g, j, "k_norm");
            scores.push_back(at::dot(qi, kj).item<double>() / std::sqrt(static_cast<double>(hd)));
            keys.push_back(j);
          }
          const double mx = *std::max_element(scores.begin(), scores.end());
          double z = 0;
          for (double& s : scores) z += (s = std::exp(s - mx));
          Tensor o = at::zeros({hd}, at::kDouble);
          for (size_t n = 0; n < keys.size(); ++n) {
            o += scores[n] / z * head_of(v[static_cast<size_t>(keys[n])], g);
          }
          per_head.push_back(o);
        }
        attn_out[static_cast<size_t>(t)] = linear(
            at::cat(per_head), W(p + "self_attn.o_proj.weight"), W(p + "self_attn.o_proj.bias"));
      }
      for (int64_t t = 0; t < T; ++t) {
        Tensor& ht = h[static_cast<size_t>(t)];
        ht = ht + attn_out[static_cast<size_t>(t)];
        const Tensor y = RmsNormRef(ht, W(p + "post_attention_layernorm.weight"), eps);
        const Tensor gate = linear(y, W(p + "mlp.gate_proj.weight"), W(p + "mlp.gate_proj.bias"));
        const Tensor up = linear(y, W(p + "mlp.up_proj.weight"), W(p + "mlp.up_proj.bias"));
        const Tensor act = gate / (1 + at::exp(-gate)) * up;
        ht = ht + linear(act, W(p + "mlp.down_proj.weight"), W(p + "mlp.down_proj.bias"));
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      logits[b][t] =
          at::mv(head, RmsNormRef(h[static_cast<size_t>(t)], W("model.norm.weight"), eps));
    }
  }
  return logits;
}

Json CharTokenizerJson() {
  return {{"model",
           {{"type", "BPE"},
            {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {" ", 3}, {"\n", 4}}},
            {"merges", Json::array()}}},
          {"added_tokens", {{{"id", 5}, {"content", "<s>"}, {"special", true}}}},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
            {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {5}}}}}}}}};
}

void WriteRandomTokenData(const std::string& dir, int64_t vocab, int docs, int length,
                          uint32_t seed) {
  storage::TokenDatasetWriter w(dir, vocab, {});
  std::mt19937 rng(seed);
  for (int d = 0; d < docs; ++d) {
    std::vector<int64_t> doc;
    for (int i = 0; i < length; ++i) doc.push_back(static_cast<int64_t>(rng() % vocab));
    if (!w.AddDocument(doc).ok()) throw std::runtime_error("WriteRandomTokenData: AddDocument");
  }
  if (!w.Finish().ok()) throw std::runtime_error("WriteRandomTokenData: Finish");
}

// A 3-layer teacher, distillation data, a generate task whose answers are half the teacher's
// own continuations, and a job spec.
void WriteTinyJob(const std::string& root, const Json& overrides) {
  struct {
    const std::string& root;
    std::string File(const std::string& name) const { return root + "/" + name; }
  } dir{root};
  ::mkdir(dir.File("teacher").c_str(), 0755);
  TinyModelSpec spec;
  spec.vocab = 6;
  spec.layers = 3;
  WriteTinyModel(dir.File("teacher"), spec, 5);
  std::ofstream(dir.File("teacher/tokenizer.json")) << CharTokenizerJson().dump();
  storage::TokenDatasetWriter w(dir.File("data"), 6, {});
  for (int d = 0; d < 30; ++d) {
    std::vector<int64_t> doc = {5};
    for (int i = 0; i < 40; ++i) doc.push_back((d * 7 + i * i) % 5);
    if (!w.AddDocument(doc).ok()) throw std::runtime_error("WriteTinyJob: AddDocument");
  }
  if (!w.Finish().ok()) throw std::runtime_error("WriteTinyJob: Finish");
  auto teacher = std::move(worker::DecoderModel::Load(dir.File("teacher"), {})).value();
  auto tok = *storage::Tokenizer::FromJson(CharTokenizerJson(), "char");
  for (const std::string split : {"validation", "test"}) {
    std::ofstream out(dir.File(split + ".jsonl"));
    for (int i = 0; i < 12; ++i) {
      std::string prompt;
      for (int k = 0; k < 6 + i % 4; ++k)
        prompt += "abc "[(i * 3 + k * (split == "test" ? 5 : 1)) % 4];
      const auto cont = *worker::GreedyOf(*teacher)(tok->Encode(prompt, true), 3, {});
      const std::string answer = i % 2 == 0 ? tok->Decode(cont) : "cc";
      out << Json({{"prompt", prompt}, {"answer", answer}, {"stop", {"\n"}}}).dump() << "\n";
    }
  }
  Json job = {{"job_id", "tiny"},
              {"teacher", "teacher"},
              {"threads", 1},
              {"distill",
               {{"data", "data"},
                {"steps", 6},
                {"batch_size", 2},
                {"sequence_length", 16},
                {"checkpoint_every", 2},
                {"log_every", 2}}},
              {"task",
               {{"type", "generate"},
                {"validation", "validation.jsonl"},
                {"test", "test.jsonl"},
                {"max_new_tokens", 3}}},
              {"search", {{"tolerance", 0.5}, {"bootstrap_samples", 200}}},
              {"compare_placements", {{"random", 2}}}};
  job.merge_patch(overrides);
  std::ofstream(dir.File("job.json")) << job.dump(2);
}

}  // namespace hyb::testing
