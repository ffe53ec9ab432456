// hybridize generate: greedy decoding from token ids (text in and out arrives with the
// tokenizer).
#include <torch/torch.h>

#include <chrono>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "flags.h"
#include "hyb/worker/decoder_model.h"
#include "hyb/worker/tensor_io.h"

namespace hyb::cli {
namespace {

const std::vector<FlagSpec>& Specs() {
  static const std::vector<FlagSpec> specs = {
      {"model", "DIR", "Hugging Face model directory", ""},
      {"prompt-ids", "ID,ID,...", "one prompt as comma-separated token ids", ""},
      {"input", "IDS.safetensors", "or a batch of equal-length prompts: tensor 'input_ids'", ""},
      {"max-new-tokens", "N", "tokens to generate per prompt", "32"},
      {"stop-ids", "ID,...", "stop once a row produces one of these ('none' to disable)",
       "eos_token_id of config.json"},
      {"output", "OUT.safetensors", "also write 'output_ids' [batch, T + n] (int64)", ""},
      {"device", "cpu|cuda[:N]", "where to run", "cpu"},
      {"dtype", "fp32|bf16|fp16|fp64", "weights and activations", "fp32"},
  };
  return specs;
}

StatusOr<std::vector<int64_t>> ParseIdList(const std::string& flag, const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      ids.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      return InvalidArgument("flag --" + flag + ": '" + item + "' is not a token id");
    }
  }
  if (ids.empty()) return InvalidArgument("flag --" + flag + " is empty");
  return ids;
}

Status Generate(const ParsedFlags& flags) {
  HYB_ASSIGN_OR_RETURN(std::string model_dir, flags.Required("model"));
  HYB_ASSIGN_OR_RETURN(int64_t max_new, flags.Int("max-new-tokens", 32));
  if (max_new < 0) return InvalidArgument("flag --max-new-tokens must be >= 0");
  at::Tensor prompt;
  if (flags.Has("prompt-ids") == flags.Has("input")) {
    return InvalidArgument("give exactly one of --prompt-ids and --input");
  }
  if (auto text = flags.Get("prompt-ids")) {
    HYB_ASSIGN_OR_RETURN(auto ids, ParseIdList("prompt-ids", *text));
    prompt = torch::tensor(ids, at::kLong).unsqueeze(0);
  } else {
    const std::string input = *flags.Get("input");
    HYB_ASSIGN_OR_RETURN(auto tensors, worker::LoadTensors(input));
    auto it = tensors.find("input_ids");
    if (it == tensors.end()) return InvalidArgument(input + ": no tensor named 'input_ids'");
    prompt = it->second;
  }
  worker::RuntimeOptions options;
  options.device = flags.GetOr("device", "cpu");
  options.dtype = flags.GetOr("dtype", "fp32");
  HYB_ASSIGN_OR_RETURN(auto model, worker::DecoderModel::Load(model_dir, options));
  std::vector<int64_t> stop_ids = model->config().eos_token_ids;
  if (auto text = flags.Get("stop-ids")) {
    stop_ids.clear();
    if (*text != "none") {
      HYB_ASSIGN_OR_RETURN(stop_ids, ParseIdList("stop-ids", *text));
    }
  }
  const auto start = std::chrono::steady_clock::now();
  HYB_ASSIGN_OR_RETURN(at::Tensor out, model->GenerateGreedy(prompt, max_new, stop_ids));
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const int64_t new_tokens = out.size(1) - prompt.size(1);
  auto acc = out.accessor<int64_t, 2>();
  for (int64_t r = 0; r < out.size(0); ++r) {
    for (int64_t c = prompt.size(1); c < out.size(1); ++c) {
      std::cout << (c > prompt.size(1) ? " " : "") << acc[r][c];
    }
    std::cout << "\n";
  }
  std::cerr << "generated " << new_tokens << " tokens x " << out.size(0) << " rows in " << secs
            << " s\n";
  if (auto path = flags.Get("output")) {
    HYB_RETURN_IF_ERROR(worker::SaveTensors(*path, {{"output_ids", out}}));
  }
  return Status::Ok();
}

}  // namespace

int RunGenerate(const std::vector<std::string>& args) {
  return RunCommand({"generate",
                     "hybridize generate --model DIR (--prompt-ids IDS | --input FILE) "
                     "[--max-new-tokens N] [--stop-ids IDS] [--output FILE]",
                     "Greedy decoding with the KV cache. Prints the generated ids of each "
                     "prompt on one line (token ids until the tokenizer lands).",
                     Specs(),
                     {"model"}},
                    args, Generate);
}

}  // namespace hyb::cli
