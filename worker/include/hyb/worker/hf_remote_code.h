// The Hugging Face transformers code that travels with every exported model directory, so that
// `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads a hybrid
// (docs/hybrid_format.md). The Python source lives in worker/python/modeling_hybridize.py and is
// embedded into the library at build time; DecoderModel::Save writes it beside config.json.
#pragma once

#include <string>
#include <string_view>

#include "hyb/common/json_util.h"

namespace hyb::worker {

// File name of the modeling code inside an exported directory.
inline constexpr char kHfModelingFile[] = "modeling_hybridize.py";

// The contents of worker/python/modeling_hybridize.py as of the build.
std::string_view HfModelingSource();

// Class names for config.json's "auto_map" and "architectures" for a teacher family
// ("llama", "qwen2", "qwen3", "mistral"): e.g. HybridizeQwen2Config and
// HybridizeQwen2ForCausalLM. Empty strings for any other family.
std::string HfConfigClass(const std::string& family);
std::string HfCausalLmClass(const std::string& family);

// {"AutoConfig": "modeling_hybridize.<config class>", "AutoModelForCausalLM": "...<model class>"};
// an empty object for an unknown family.
Json HfAutoMap(const std::string& family);

}  // namespace hyb::worker
