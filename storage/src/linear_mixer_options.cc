#include "hyb/storage/linear_mixer_options.h"

namespace hyb::storage {

std::string_view LinearMixerTypeName(LinearMixerType type) {
  switch (type) {
    case LinearMixerType::kGatedDeltaNet:
      return "gated_deltanet";
    case LinearMixerType::kGla:
      return "gla";
    case LinearMixerType::kLinearElu:
      return "linear_elu";
  }
  return "?";
}

StatusOr<LinearMixerOptions> ParseLinearMixerOptions(const Json& j, const std::string& source) {
  JsonObject o(j, source);
  HYB_RETURN_IF_ERROR(o.CheckKnownKeys({"mixer", "chunk_size", "conv_size", "conv_silu",
                                        "gate_rank", "gate_logit_normalizer", "norm_eps"}));
  LinearMixerOptions out;
  HYB_ASSIGN_OR_RETURN(std::string mixer, o.String("mixer"));
  bool found = false;
  for (auto t :
       {LinearMixerType::kGatedDeltaNet, LinearMixerType::kGla, LinearMixerType::kLinearElu}) {
    if (LinearMixerTypeName(t) == mixer) {
      out.type = t;
      found = true;
    }
  }
  if (!found) {
    return o.FieldError("mixer",
                        "'" + mixer + "' is not a known mixer (gated_deltanet, gla, linear_elu)");
  }
  HYB_ASSIGN_OR_RETURN(out.chunk_size, o.Int("chunk_size", out.chunk_size));
  if (out.chunk_size < 1 || out.chunk_size > 1024) {
    return o.FieldError("chunk_size", "must be in [1, 1024]");
  }
  HYB_ASSIGN_OR_RETURN(out.conv_size, o.Int("conv_size", out.conv_size));
  if (out.conv_size < 1 || out.conv_size > 16)
    return o.FieldError("conv_size", "must be in [1, 16]");
  HYB_ASSIGN_OR_RETURN(out.conv_silu, o.Bool("conv_silu", out.conv_silu));
  HYB_ASSIGN_OR_RETURN(out.gate_rank, o.Int("gate_rank", out.gate_rank));
  if (out.gate_rank < 1) return o.FieldError("gate_rank", "must be positive");
  HYB_ASSIGN_OR_RETURN(out.gate_logit_normalizer,
                       o.Number("gate_logit_normalizer", out.gate_logit_normalizer));
  if (!(out.gate_logit_normalizer > 0)) {
    return o.FieldError("gate_logit_normalizer", "must be positive");
  }
  HYB_ASSIGN_OR_RETURN(out.norm_eps, o.Number("norm_eps", out.norm_eps));
  if (!(out.norm_eps > 0)) return o.FieldError("norm_eps", "must be positive");
  return out;
}

StatusOr<LinearMixerOptions> ParseJobMixerOptions(const Json& spec_mixer) {
  if (!spec_mixer.is_object()) return InvalidArgument("mixer: must be an object");
  Json j = spec_mixer;
  if (j.contains("type")) {
    j["mixer"] = j["type"];
    j.erase("type");
  }
  return ParseLinearMixerOptions(j, "mixer");
}

Json LinearMixerOptionsToJson(const LinearMixerOptions& o) {
  Json j = {{"mixer", LinearMixerTypeName(o.type)}, {"chunk_size", o.chunk_size}};
  if (o.type == LinearMixerType::kGatedDeltaNet) {
    j["conv_size"] = o.conv_size;
    j["conv_silu"] = o.conv_silu;
  }
  if (o.type == LinearMixerType::kGla) {
    j["gate_rank"] = o.gate_rank;
    j["gate_logit_normalizer"] = o.gate_logit_normalizer;
  }
  if (o.type != LinearMixerType::kLinearElu) j["norm_eps"] = o.norm_eps;
  return j;
}

}  // namespace hyb::storage
