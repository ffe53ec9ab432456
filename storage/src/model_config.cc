#include "hyb/storage/model_config.h"

#include <cmath>

namespace hyb::storage {
namespace {

// Families and the defaults their transformers config classes apply to absent fields.
struct FamilyDefaults {
  const char* name;
  int64_t max_position_embeddings;
  int64_t head_dim;      // 0: hidden_size / num_attention_heads
  int64_t num_kv_heads;  // when the key is absent; 0: num_attention_heads (null means that too)
};
constexpr FamilyDefaults kFamilies[] = {
    {"llama", 2048, 0, 0},
    {"qwen2", 32768, 0, 32},
    {"qwen3", 32768, 128, 32},
    {"mistral", 131072, 0, 8},
};
// MistralConfig's sliding_window when the key is absent (an explicit null disables it).
constexpr int64_t kMistralDefaultSlidingWindow = 4096;

// Fields of config.json whose value changes the computation and that we do not implement.
// Presence with a non-default value is an error, so nothing is silently ignored.
Status CheckUnsupported(const JsonObject& c) {
  if (c.Has("quantization_config")) {
    return c.FieldError("quantization_config", "is not supported (quantized checkpoints)");
  }
  HYB_ASSIGN_OR_RETURN(double prf, c.Number("partial_rotary_factor", 1.0));
  if (prf != 1.0) return c.FieldError("partial_rotary_factor", "other than 1.0 is not supported");
  HYB_ASSIGN_OR_RETURN(std::string act, c.String("hidden_act", "silu"));
  if (act != "silu") {
    return c.FieldError("hidden_act", "'" + act + "' is not supported (only 'silu', SwiGLU)");
  }
  return Status::Ok();
}

StatusOr<RopeType> ParseRopeType(const JsonObject& rope, const std::string& field) {
  std::string type = "default";
  if (rope.Has("rope_type")) {
    HYB_ASSIGN_OR_RETURN(type, rope.String("rope_type"));
  } else if (rope.Has("type")) {
    HYB_ASSIGN_OR_RETURN(type, rope.String("type"));
  }
  if (type == "default") return RopeType::kDefault;
  if (type == "linear") return RopeType::kLinear;
  if (type == "llama3") return RopeType::kLlama3;
  if (type == "yarn") return RopeType::kYarn;
  return InvalidArgument(rope.source() + ": field '" + field + ".rope_type' value '" + type +
                         "' is not supported (default, linear, llama3, yarn)");
}

StatusOr<RopeConfig> ParseRope(const JsonObject& c, int64_t max_position_embeddings) {
  RopeConfig r;
  HYB_ASSIGN_OR_RETURN(r.theta, c.Number("rope_theta", 10000.0));
  // Old spelling: rope_scaling (may be null). New spelling: rope_parameters, which also holds
  // rope_theta. transformers lets rope_scaling win when both are present.
  const char* field = nullptr;
  if (c.Has("rope_scaling")) {
    field = "rope_scaling";
  } else if (c.Has("rope_parameters")) {
    field = "rope_parameters";
  }
  if (field == nullptr) return r;
  const Json& rj = c.json()[field];
  if (!rj.is_object()) return c.FieldError(field, "must be an object");
  JsonObject rope(rj, c.source() + " (" + field + ")");
  if (rope.Has("full_attention") || rope.Has("sliding_attention")) {
    return c.FieldError(field, "per-layer-type rotary parameters are not supported");
  }
  HYB_RETURN_IF_ERROR(rope.CheckKnownKeys(
      {"rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
       "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "mscale",
       "mscale_all_dim", "truncate", "partial_rotary_factor"}));
  HYB_ASSIGN_OR_RETURN(r.theta, rope.Number("rope_theta", r.theta));
  HYB_ASSIGN_OR_RETURN(double prf, rope.Number("partial_rotary_factor", 1.0));
  if (prf != 1.0)
    return rope.FieldError("partial_rotary_factor", "other than 1.0 is not supported");
  HYB_ASSIGN_OR_RETURN(r.type, ParseRopeType(rope, field));
  if (r.type == RopeType::kDefault) return r;
  HYB_ASSIGN_OR_RETURN(r.factor, rope.Number("factor"));
  if (!(r.factor >= 1.0)) return rope.FieldError("factor", "must be >= 1");
  HYB_ASSIGN_OR_RETURN(auto orig, rope.OptionalInt("original_max_position_embeddings"));
  r.original_max_position_embeddings = orig.value_or(max_position_embeddings);
  if (r.type == RopeType::kLlama3) {
    HYB_ASSIGN_OR_RETURN(r.low_freq_factor, rope.Number("low_freq_factor"));
    HYB_ASSIGN_OR_RETURN(r.high_freq_factor, rope.Number("high_freq_factor"));
    if (!orig) return rope.FieldError("original_max_position_embeddings", "is required for llama3");
    if (!(r.high_freq_factor > r.low_freq_factor) || r.low_freq_factor <= 0) {
      return rope.FieldError("high_freq_factor", "must exceed low_freq_factor > 0");
    }
  }
  if (r.type == RopeType::kYarn) {
    HYB_ASSIGN_OR_RETURN(r.beta_fast, rope.Number("beta_fast", 32.0));
    HYB_ASSIGN_OR_RETURN(r.beta_slow, rope.Number("beta_slow", 1.0));
    HYB_ASSIGN_OR_RETURN(r.attention_factor, rope.OptionalNumber("attention_factor"));
    HYB_ASSIGN_OR_RETURN(r.mscale, rope.OptionalNumber("mscale"));
    HYB_ASSIGN_OR_RETURN(r.mscale_all_dim, rope.OptionalNumber("mscale_all_dim"));
    HYB_ASSIGN_OR_RETURN(r.truncate, rope.Bool("truncate", true));
    if (!(r.beta_fast > 0)) return rope.FieldError("beta_fast", "must be positive");
    if (!(r.beta_slow > 0)) return rope.FieldError("beta_slow", "must be positive");
  }
  if (r.original_max_position_embeddings <= 0) {
    return rope.FieldError("original_max_position_embeddings", "must be positive");
  }
  return r;
}

StatusOr<std::vector<int64_t>> ParseTokenIds(const JsonObject& c, const char* key) {
  std::vector<int64_t> out;
  if (!c.Has(key)) return out;
  const Json& v = c.json()[key];
  if (v.is_number_integer()) {
    out.push_back(v.get<int64_t>());
  } else if (v.is_array()) {
    for (const Json& e : v) {
      if (!e.is_number_integer()) return c.FieldError(key, "must hold integers");
      out.push_back(e.get<int64_t>());
    }
  } else {
    return c.FieldError(key, "must be an integer or a list of integers");
  }
  return out;
}

// Marks the layers that layer_types calls "linear_attention" and parses the mixer settings.
// Softmax layer kinds (full/sliding) are the families' business above; here every entry must be
// one of the three names and the list must have one entry per layer.
Status ParseLinearLayers(const JsonObject& c, ModelConfig* m) {
  m->layer_is_linear.assign(static_cast<size_t>(m->num_layers), false);
  if (c.Has("layer_types")) {
    const Json& lt = c.json()["layer_types"];
    if (!lt.is_array() || static_cast<int64_t>(lt.size()) != m->num_layers) {
      return c.FieldError("layer_types", "must be a list of num_hidden_layers (" +
                                             std::to_string(m->num_layers) + ") strings");
    }
    for (size_t i = 0; i < lt.size(); ++i) {
      const std::string t = lt[i].is_string() ? lt[i].get<std::string>() : "";
      const bool sliding_ok = m->family != "llama";
      if (t == "linear_attention") {
        m->layer_is_linear[i] = true;
      } else if (!(t == "full_attention" || (sliding_ok && t == "sliding_attention"))) {
        return c.FieldError("layer_types", "entry " + std::to_string(i) + " is " +
                                               JsonSnippet(lt[i]) + ", not supported for family " +
                                               m->family);
      }
    }
  }
  if (c.Has("linear_attention")) {
    HYB_ASSIGN_OR_RETURN(
        m->linear_mixer,
        ParseLinearMixerOptions(c.json()["linear_attention"], c.source() + " (linear_attention)"));
  } else if (m->num_linear_layers() > 0) {
    return c.FieldError("linear_attention",
                        "is required when layer_types has \"linear_attention\" entries");
  }
  return Status::Ok();
}

}  // namespace

int64_t ModelConfig::num_linear_layers() const {
  int64_t n = 0;
  for (bool b : layer_is_linear) n += b ? 1 : 0;
  return n;
}

StatusOr<ModelConfig> ParseModelConfig(const Json& config, const std::string& source) {
  if (!config.is_object()) return InvalidArgument(source + ": not a JSON object");
  JsonObject c(config, source);
  ModelConfig m;
  HYB_ASSIGN_OR_RETURN(m.family, c.String("model_type"));
  const FamilyDefaults* fam = nullptr;
  for (const auto& f : kFamilies) {
    if (m.family == f.name) fam = &f;
  }
  if (fam == nullptr) {
    return c.FieldError("model_type", "'" + m.family +
                                          "' is not a supported family (llama, qwen2, qwen3, "
                                          "mistral)");
  }
  HYB_RETURN_IF_ERROR(CheckUnsupported(c));

  auto positive = [&](const char* key, int64_t* out) -> Status {
    HYB_ASSIGN_OR_RETURN(*out, c.Int(key));
    if (*out <= 0) return c.FieldError(key, "must be positive, got " + std::to_string(*out));
    return Status::Ok();
  };
  HYB_RETURN_IF_ERROR(positive("vocab_size", &m.vocab_size));
  HYB_RETURN_IF_ERROR(positive("hidden_size", &m.hidden_size));
  HYB_RETURN_IF_ERROR(positive("intermediate_size", &m.intermediate_size));
  HYB_RETURN_IF_ERROR(positive("num_hidden_layers", &m.num_layers));
  HYB_RETURN_IF_ERROR(positive("num_attention_heads", &m.num_heads));
  const int64_t default_kv = (!config.contains("num_key_value_heads") && fam->num_kv_heads > 0)
                                 ? fam->num_kv_heads
                                 : m.num_heads;
  HYB_ASSIGN_OR_RETURN(m.num_kv_heads, c.Int("num_key_value_heads", default_kv));
  if (m.num_kv_heads <= 0 || m.num_heads % m.num_kv_heads != 0) {
    return c.FieldError("num_key_value_heads", "must be positive and divide num_attention_heads (" +
                                                   std::to_string(m.num_heads) + "), got " +
                                                   std::to_string(m.num_kv_heads));
  }
  const int64_t default_head_dim = fam->head_dim > 0 ? fam->head_dim : m.hidden_size / m.num_heads;
  HYB_ASSIGN_OR_RETURN(m.head_dim, c.Int("head_dim", default_head_dim));
  if (m.head_dim <= 0 || m.head_dim % 2 != 0) {
    return c.FieldError("head_dim",
                        "must be a positive even number, got " + std::to_string(m.head_dim));
  }
  if (!c.Has("head_dim") && fam->head_dim == 0 && m.hidden_size % m.num_heads != 0) {
    return c.FieldError("num_attention_heads", "must divide hidden_size when head_dim is absent");
  }
  HYB_ASSIGN_OR_RETURN(m.max_position_embeddings,
                       c.Int("max_position_embeddings", fam->max_position_embeddings));
  HYB_ASSIGN_OR_RETURN(m.rms_norm_eps, c.Number("rms_norm_eps", 1e-6));
  if (!(m.rms_norm_eps > 0)) return c.FieldError("rms_norm_eps", "must be positive");
  HYB_ASSIGN_OR_RETURN(m.tie_word_embeddings, c.Bool("tie_word_embeddings", false));

  if (m.family == "qwen2") {
    m.qkv_bias = true;  // hard-wired in Qwen2Attention; o_proj has none
  } else if (m.family == "llama" || m.family == "qwen3") {
    HYB_ASSIGN_OR_RETURN(bool bias, c.Bool("attention_bias", false));
    m.qkv_bias = m.o_bias = bias;
  } else if (c.Has("attention_bias")) {
    HYB_ASSIGN_OR_RETURN(bool bias, c.Bool("attention_bias"));
    if (bias) return c.FieldError("attention_bias", "is not used by family " + m.family);
  }
  if (m.family == "llama") {
    HYB_ASSIGN_OR_RETURN(m.mlp_bias, c.Bool("mlp_bias", false));
  } else if (c.Has("mlp_bias")) {
    HYB_ASSIGN_OR_RETURN(bool bias, c.Bool("mlp_bias"));
    if (bias) return c.FieldError("mlp_bias", "is not used by family " + m.family);
  }
  m.qk_norm = m.family == "qwen3";

  // Sliding window and per-layer attention kinds.
  m.layer_attention.assign(static_cast<size_t>(m.num_layers), AttentionKind::kFull);
  if (m.family == "mistral") {
    HYB_ASSIGN_OR_RETURN(auto window, c.OptionalInt("sliding_window"));
    if (!config.contains("sliding_window")) window = kMistralDefaultSlidingWindow;
    if (window) {
      if (*window <= 0) return c.FieldError("sliding_window", "must be positive or null");
      m.sliding_window = *window;
      m.layer_attention.assign(static_cast<size_t>(m.num_layers), AttentionKind::kSliding);
    }
  } else if (m.family == "qwen2" || m.family == "qwen3") {
    HYB_ASSIGN_OR_RETURN(bool use_sw, c.Bool("use_sliding_window", false));
    HYB_ASSIGN_OR_RETURN(auto window, c.OptionalInt("sliding_window"));
    if (use_sw && window) {
      if (*window <= 0) return c.FieldError("sliding_window", "must be positive or null");
      m.sliding_window = *window;
    }
    if (c.Has("layer_types")) {
      const Json& lt = config["layer_types"];
      if (!lt.is_array() || static_cast<int64_t>(lt.size()) != m.num_layers) {
        return c.FieldError("layer_types", "must be a list of num_hidden_layers (" +
                                               std::to_string(m.num_layers) + ") strings");
      }
      for (size_t i = 0; i < lt.size(); ++i) {
        const std::string t = lt[i].is_string() ? lt[i].get<std::string>() : "";
        if (t == "full_attention" || t == "linear_attention") {
          m.layer_attention[i] = AttentionKind::kFull;
        } else if (t == "sliding_attention") {
          m.layer_attention[i] = AttentionKind::kSliding;
        } else {
          return c.FieldError("layer_types", "entry " + std::to_string(i) + " is " +
                                                 JsonSnippet(lt[i]) +
                                                 ", expected \"full_attention\", "
                                                 "\"sliding_attention\" or \"linear_attention\"");
        }
      }
    } else if (m.sliding_window > 0) {
      HYB_ASSIGN_OR_RETURN(int64_t max_window_layers, c.Int("max_window_layers", 28));
      for (int64_t i = max_window_layers; i < m.num_layers; ++i) {
        m.layer_attention[static_cast<size_t>(i)] = AttentionKind::kSliding;
      }
    }
    // A sliding layer without a window attends fully (transformers sets its window to None).
    if (m.sliding_window == 0) {
      m.layer_attention.assign(static_cast<size_t>(m.num_layers), AttentionKind::kFull);
    }
  }
  HYB_RETURN_IF_ERROR(ParseLinearLayers(c, &m));

  HYB_ASSIGN_OR_RETURN(m.rope, ParseRope(c, m.max_position_embeddings));
  HYB_ASSIGN_OR_RETURN(auto bos, ParseTokenIds(c, "bos_token_id"));
  if (!bos.empty()) m.bos_token_id = bos.front();
  HYB_ASSIGN_OR_RETURN(m.eos_token_ids, ParseTokenIds(c, "eos_token_id"));
  return m;
}

}  // namespace hyb::storage
