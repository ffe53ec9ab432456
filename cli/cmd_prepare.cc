// hybridize prepare: JSONL text -> packed token dataset for distillation.
#include <chrono>
#include <iostream>
#include <optional>
#include <sstream>

#include "commands.h"
#include "flags.h"
#include "hyb/common/json_util.h"
#include "hyb/storage/fingerprint.h"
#include "hyb/storage/token_dataset.h"
#include "hyb/storage/tokenizer.h"

namespace hyb::cli {
namespace {

const std::vector<FlagSpec>& Specs() {
  static const std::vector<FlagSpec> specs = {
      {"tokenizer", "FILE|DIR", "tokenizer.json, or a model directory holding one", ""},
      {"input", "A.jsonl,B.jsonl", "JSONL files, one document per line", ""},
      {"output", "DIR", "dataset directory to create (must not exist)", ""},
      {"text-field", "NAME", "field holding the document text", "text"},
      {"eos-token", "TOKEN|none", "appended after every document",
       "config.json's eos_token_id, else </s>, <|endoftext|> or <|end_of_text|> if present"},
  };
  return specs;
}

StatusOr<std::optional<int64_t>> ResolveEos(const ParsedFlags& flags, const std::string& tok_arg,
                                            const storage::Tokenizer& tok) {
  if (auto e = flags.Get("eos-token")) {
    if (*e == "none") return std::optional<int64_t>();
    auto id = tok.TokenToId(*e);
    if (!id) return InvalidArgument("flag --eos-token: '" + *e + "' is not in the vocabulary");
    return std::optional<int64_t>(*id);
  }
  auto config = ReadJsonFile(tok_arg + "/config.json");
  if (config.ok() && config->contains("eos_token_id")) {
    const Json& e = (*config)["eos_token_id"];
    if (e.is_number_integer()) return std::optional<int64_t>(e.get<int64_t>());
    if (e.is_array() && !e.empty() && e[0].is_number_integer()) {
      return std::optional<int64_t>(e[0].get<int64_t>());
    }
  }
  for (const char* name : {"</s>", "<|endoftext|>", "<|end_of_text|>"}) {
    if (auto id = tok.TokenToId(name)) return std::optional<int64_t>(*id);
  }
  return std::optional<int64_t>();
}

Status Prepare(const ParsedFlags& flags) {
  const std::string tok_arg = *flags.Get("tokenizer");
  const bool is_file = tok_arg.size() >= 5 && tok_arg.substr(tok_arg.size() - 5) == ".json";
  const std::string tok_path = is_file ? tok_arg : tok_arg + "/tokenizer.json";
  HYB_ASSIGN_OR_RETURN(auto tok, storage::Tokenizer::FromFile(tok_path));
  HYB_ASSIGN_OR_RETURN(auto eos, ResolveEos(flags, tok_arg, *tok));
  HYB_ASSIGN_OR_RETURN(const std::string tok_fingerprint, storage::FingerprintFile(tok_path));
  const std::string field = flags.GetOr("text-field", "text");
  const std::string output = *flags.Get("output");
  std::vector<std::string> inputs;
  std::stringstream list(*flags.Get("input"));
  for (std::string f; std::getline(list, f, ',');) {
    if (!f.empty()) inputs.push_back(f);
  }
  Json sources = Json::array();
  for (const auto& f : inputs) sources.push_back(f);
  storage::TokenDatasetWriter writer(output, tok->vocab_size(),
                                     {{"tokenizer", tok_path},
                                      {"tokenizer_fingerprint", tok_fingerprint},
                                      {"sources", sources},
                                      {"text_field", field},
                                      {"eos_id", eos ? Json(*eos) : Json()}});
  const auto start = std::chrono::steady_clock::now();
  int64_t docs = 0;
  for (const auto& path : inputs) {
    HYB_ASSIGN_OR_RETURN(std::string contents, ReadFileToString(path));
    std::stringstream lines(contents);
    std::string line;
    int64_t number = 0;
    while (std::getline(lines, line)) {
      ++number;
      if (line.empty()) continue;
      const std::string where = path + ":" + std::to_string(number);
      HYB_ASSIGN_OR_RETURN(Json j, ParseJson(line, where));
      if (!j.is_object() || !j.contains(field) || !j[field].is_string()) {
        return InvalidArgument(where + ": needs a string field '" + field + "'");
      }
      std::vector<int64_t> ids = tok->Encode(j[field].get<std::string>());
      if (eos) ids.push_back(*eos);
      HYB_RETURN_IF_ERROR(writer.AddDocument(ids).WithContext(where));
      if (++docs % 10000 == 0) {
        std::cerr << "prepare: " << docs << " documents, " << writer.num_tokens() << " tokens\n";
      }
    }
  }
  HYB_RETURN_IF_ERROR(writer.Finish());
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "wrote " << output << ": " << docs << " documents, " << writer.num_tokens()
            << " tokens in " << secs << " s\n";
  return Status::Ok();
}

}  // namespace

int RunPrepare(const std::vector<std::string>& args) {
  return RunCommand({"prepare",
                     "hybridize prepare --tokenizer FILE|DIR --input A.jsonl[,B.jsonl] "
                     "--output DIR [--text-field NAME] [--eos-token TOKEN|none]",
                     "Tokenizes JSONL documents into a packed, memory-mappable dataset "
                     "(tokens.bin, docs.idx, meta.json) that distillation samples "
                     "fixed-length sequences from.",
                     Specs(),
                     {"tokenizer", "input", "output"}},
                    args, Prepare);
}

}  // namespace hyb::cli
