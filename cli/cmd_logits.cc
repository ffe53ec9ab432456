// hybridize logits: the interface parity checks use.
#include <torch/torch.h>

#include <iostream>

#include "commands.h"
#include "flags.h"
#include "hyb/worker/decoder_model.h"
#include "hyb/worker/tensor_io.h"

namespace hyb::cli {
namespace {

const std::vector<FlagSpec>& Specs() {
  static const std::vector<FlagSpec> specs = {
      {"model", "DIR", "Hugging Face model directory (config.json, *.safetensors)", ""},
      {"input", "IDS.safetensors", "file with an int64 (or int32) tensor 'input_ids' [batch, T]",
       ""},
      {"output", "LOGITS.safetensors", "where to write fp32 'logits' [batch, T, vocab]", ""},
      {"device", "cpu|cuda[:N]", "where to run", "cpu"},
      {"dtype", "fp32|bf16|fp16|fp64", "weights and activations", "fp32"},
  };
  return specs;
}

Status Logits(const ParsedFlags& flags) {
  HYB_ASSIGN_OR_RETURN(std::string model_dir, flags.Required("model"));
  HYB_ASSIGN_OR_RETURN(std::string input, flags.Required("input"));
  HYB_ASSIGN_OR_RETURN(std::string output, flags.Required("output"));
  worker::RuntimeOptions options;
  options.device = flags.GetOr("device", "cpu");
  options.dtype = flags.GetOr("dtype", "fp32");
  HYB_ASSIGN_OR_RETURN(auto tensors, worker::LoadTensors(input));
  auto it = tensors.find("input_ids");
  if (it == tensors.end()) return InvalidArgument(input + ": no tensor named 'input_ids'");
  HYB_ASSIGN_OR_RETURN(auto model, worker::DecoderModel::Load(model_dir, options));
  at::InferenceMode inference;
  auto logits = model->Forward(it->second);
  if (!logits.ok()) return logits.status().WithContext(input);
  return worker::SaveTensors(output, {{"logits", logits->to(at::kCPU, at::kFloat)}});
}

}  // namespace

int RunLogits(const std::vector<std::string>& args) {
  return RunCommand({"logits",
                     "hybridize logits --model DIR --input IDS.safetensors --output "
                     "LOGITS.safetensors [--device D] [--dtype T]",
                     "Runs the model on every row of input_ids (one full forward, no cache) "
                     "and writes the logits in fp32.",
                     Specs(),
                     {"model", "input", "output"}},
                    args, Logits);
}

}  // namespace hyb::cli
