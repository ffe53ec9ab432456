// hybridize prepare: JSONL text -> packed token dataset for distillation.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "commands.h"
#include "flags.h"
#include "hyb/common/json_util.h"
#include "hyb/storage/env.h"
#include "hyb/storage/fingerprint.h"
#include "hyb/storage/token_dataset.h"
#include "hyb/storage/tokenizer.h"

namespace hyb::cli {
namespace {

const std::vector<FlagSpec>& Specs() {
  static const std::vector<FlagSpec> specs = {
      {"tokenizer", "FILE|DIR", "tokenizer.json, or a model directory holding one", ""},
      {"input", "A.jsonl,B.jsonl", "JSONL files, one document per line", ""},
      {"text", "PATH,PATH",
       "plain-text files, one document each, or directories read recursively in name order "
       "(files that are not UTF-8 text, e.g. .gz, are skipped): e.g. /usr/share/common-licenses "
       "or /usr/share/doc on any Debian machine",
       ""},
      {"synthetic-tokens", "N",
       "no text: N random token ids of the tokenizer's vocabulary (special tokens excluded), in "
       "documents of --doc-length",
       ""},
      {"output", "DIR", "dataset directory to create (must not exist)", ""},
      {"tokens", "N",
       "with --input or --text: stop at exactly N tokens, reading the inputs again as often as "
       "needed (the last document is cut)",
       "every input once"},
      {"doc-length", "L", "--synthetic-tokens: tokens per document, the eos token included",
       "2048"},
      {"distribution", "zipf|uniform",
       "--synthetic-tokens: ids uniform, or Zipf (exponent 1) over the vocabulary in id order "
       "(lower ids more frequent, as in BPE vocabularies)",
       "zipf"},
      {"seed", "S", "--synthetic-tokens: same seed, same ids", "0"},
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

std::vector<std::string> SplitList(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream in(list);
  for (std::string f; std::getline(in, f, ',');) {
    if (!f.empty()) out.push_back(f);
  }
  return out;
}

// True if `s` is UTF-8 text: valid sequences and no NUL or other C0 control bytes than tab,
// newline, carriage return and form feed.
bool IsUtf8Text(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if (c < 0x20 && c != '\t' && c != '\n' && c != '\r' && c != '\f') return false;
      ++i;
      continue;
    }
    const size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
    if (n == 0 || c > 0xf4 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

// The files under `path` (a file itself, or a directory walked recursively, entries in name
// order; dangling links and unreadable directories below `path` are skipped). NotFound naming
// `path` if it does not exist.
Status ListTextFiles(storage::Env* env, const std::string& path, std::vector<std::string>* out,
                     int depth = 0) {
  if (!env->FileExists(path)) {
    return depth == 0 ? NotFound("flag --text: " + path + ": no such file") : Status::Ok();
  }
  if (!env->IsDirectory(path)) {
    out->push_back(path);
    return Status::Ok();
  }
  if (depth > 32) return Status::Ok();  // a link cycle
  auto names = env->ListDirectory(path);
  if (!names.ok()) return depth == 0 ? names.status() : Status::Ok();
  for (const auto& n : *names) {
    HYB_RETURN_IF_ERROR(ListTextFiles(env, path + "/" + n, out, depth + 1));
  }
  return Status::Ok();
}

// The ids of tokenizer.json's special added tokens.
std::set<int64_t> SpecialIds(const std::string& tok_path) {
  std::set<int64_t> out;
  auto j = ReadJsonFile(tok_path);
  if (!j.ok() || !j->contains("added_tokens") || !(*j)["added_tokens"].is_array()) return out;
  for (const Json& t : (*j)["added_tokens"]) {
    if (t.value("special", false) && t.contains("id") && t["id"].is_number_integer()) {
      out.insert(t["id"].get<int64_t>());
    }
  }
  return out;
}

// --synthetic-tokens settings.
struct SyntheticSpec {
  int64_t tokens = 0;
  int64_t doc_length = 2048;  // the eos token included
  int64_t seed = 0;
  std::string distribution = "zipf";
  Json ToJson() const {
    return {{"tokens", tokens},
            {"doc_length", doc_length},
            {"seed", seed},
            {"distribution", distribution}};
  }
};

StatusOr<SyntheticSpec> ParseSynthetic(const ParsedFlags& flags, bool has_eos) {
  SyntheticSpec spec;
  HYB_ASSIGN_OR_RETURN(spec.tokens, flags.Int("synthetic-tokens", 0));
  if (spec.tokens <= 0) return InvalidArgument("flag --synthetic-tokens must be positive");
  HYB_ASSIGN_OR_RETURN(spec.doc_length, flags.Int("doc-length", 2048));
  if (spec.doc_length < (has_eos ? 2 : 1)) {
    return InvalidArgument("flag --doc-length must be at least " +
                           std::string(has_eos ? "2 (the eos token is one of them)" : "1"));
  }
  HYB_ASSIGN_OR_RETURN(spec.seed, flags.Int("seed", 0));
  spec.distribution = flags.GetOr("distribution", "zipf");
  if (spec.distribution != "zipf" && spec.distribution != "uniform") {
    return InvalidArgument("flag --distribution: '" + spec.distribution +
                           "' is not zipf or uniform");
  }
  return spec;
}

// Adds spec.tokens random ids in documents of spec.doc_length (the last one shorter), each ending
// in `eos` if there is one. Ids are drawn from [0, vocab) without `excluded` and eos.
Status AddSyntheticDocuments(const SyntheticSpec& spec, int64_t vocab,
                             const std::set<int64_t>& excluded, std::optional<int64_t> eos,
                             storage::TokenDatasetWriter* writer) {
  std::vector<int64_t> ids;  // what a draw picks from, in id order
  for (int64_t id = 0; id < vocab; ++id) {
    if (excluded.count(id) == 0 && id != eos.value_or(-1)) ids.push_back(id);
  }
  if (ids.empty()) return InvalidArgument("flag --tokenizer: no ordinary tokens to draw from");
  std::vector<double> cdf;  // Zipf: P(rank r) proportional to 1 / (r + 1)
  if (spec.distribution == "zipf") {
    double sum = 0;
    for (size_t r = 0; r < ids.size(); ++r) cdf.push_back(sum += 1.0 / static_cast<double>(r + 1));
    for (double& c : cdf) c /= sum;
  }
  // mt19937_64 and the 53-bit conversion are specified exactly: the same ids on every platform.
  std::mt19937_64 rng(static_cast<uint64_t>(spec.seed));
  auto draw = [&]() -> int64_t {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    size_t r = 0;
    if (cdf.empty()) {
      r = static_cast<size_t>(u * static_cast<double>(ids.size()));
    } else {
      r = static_cast<size_t>(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
    }
    return ids[std::min(r, ids.size() - 1)];
  };
  std::vector<int64_t> doc;
  for (int64_t done = 0; done < spec.tokens;) {
    const int64_t n = std::min(spec.doc_length, spec.tokens - done);
    doc.clear();
    for (int64_t k = 0; k < n; ++k) {
      doc.push_back(eos && k == spec.doc_length - 1 ? *eos : draw());
    }
    HYB_RETURN_IF_ERROR(writer->AddDocument(doc));
    done += n;
  }
  return Status::Ok();
}

Status Prepare(const ParsedFlags& flags) {
  const int sources = (flags.Has("input") ? 1 : 0) + (flags.Has("text") ? 1 : 0) +
                      (flags.Has("synthetic-tokens") ? 1 : 0);
  if (sources != 1) {
    return InvalidArgument("give exactly one of --input, --text and --synthetic-tokens");
  }
  const std::string tok_arg = *flags.Get("tokenizer");
  const bool is_file = tok_arg.size() >= 5 && tok_arg.substr(tok_arg.size() - 5) == ".json";
  const std::string tok_path = is_file ? tok_arg : tok_arg + "/tokenizer.json";
  HYB_ASSIGN_OR_RETURN(auto tok, storage::Tokenizer::FromFile(tok_path));
  HYB_ASSIGN_OR_RETURN(auto eos, ResolveEos(flags, tok_arg, *tok));
  HYB_ASSIGN_OR_RETURN(const std::string tok_fingerprint, storage::FingerprintFile(tok_path));
  if (eos && (*eos < 0 || *eos >= tok->vocab_size())) {
    return InvalidArgument("eos token id " + std::to_string(*eos) + " (from " + tok_arg +
                           "/config.json) is not in " + tok_path + " (" +
                           std::to_string(tok->vocab_size()) + " tokens); give --eos-token");
  }
  const std::string field = flags.GetOr("text-field", "text");
  const std::string output = *flags.Get("output");
  HYB_ASSIGN_OR_RETURN(const int64_t max_tokens, flags.Int("tokens", 0));
  if (flags.Has("tokens") && (max_tokens <= 0 || flags.Has("synthetic-tokens"))) {
    return InvalidArgument(
        "flag --tokens must be positive and goes with --input or --text (--synthetic-tokens "
        "says how many)");
  }
  std::vector<std::string> inputs = SplitList(flags.GetOr("input", ""));
  storage::Env* env = storage::Env::Default();
  std::vector<std::string> text_files;
  for (const auto& p : SplitList(flags.GetOr("text", ""))) {
    HYB_RETURN_IF_ERROR(ListTextFiles(env, p, &text_files));
  }
  Json sources_json = Json::array();
  for (const auto& f : inputs) sources_json.push_back(f);
  for (const auto& p : SplitList(flags.GetOr("text", ""))) sources_json.push_back(p);
  Json meta = {{"tokenizer", tok_path},
               {"tokenizer_fingerprint", tok_fingerprint},
               {"sources", sources_json},
               {"eos_id", eos ? Json(*eos) : Json()}};
  if (!inputs.empty()) meta["text_field"] = field;
  if (max_tokens > 0) meta["tokens"] = max_tokens;
  const auto start = std::chrono::steady_clock::now();
  int64_t docs = 0;
  if (flags.Has("synthetic-tokens")) {
    HYB_ASSIGN_OR_RETURN(const SyntheticSpec spec, ParseSynthetic(flags, eos.has_value()));
    meta["sources"] = Json::array({"synthetic"});
    meta["synthetic"] = spec.ToJson();
    storage::TokenDatasetWriter writer(output, tok->vocab_size(), meta);
    HYB_RETURN_IF_ERROR(
        AddSyntheticDocuments(spec, tok->vocab_size(), SpecialIds(tok_path), eos, &writer));
    HYB_RETURN_IF_ERROR(writer.Finish());
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "wrote " << output << ": " << writer.num_tokens() << " synthetic tokens ("
              << spec.distribution << ") in " << secs << " s\n";
    return Status::Ok();
  }
  storage::TokenDatasetWriter writer(output, tok->vocab_size(), meta);
  // Adds one document, cut to what --tokens still allows; false once --tokens is reached.
  auto add = [&](std::vector<int64_t> ids, const std::string& where) -> StatusOr<bool> {
    if (eos) ids.push_back(*eos);
    if (max_tokens > 0) {
      const int64_t room = max_tokens - writer.num_tokens();
      if (static_cast<int64_t>(ids.size()) > room) ids.resize(static_cast<size_t>(room));
    }
    if (!ids.empty()) HYB_RETURN_IF_ERROR(writer.AddDocument(ids).WithContext(where));
    if (++docs % 10000 == 0) {
      std::cerr << "prepare: " << docs << " documents, " << writer.num_tokens() << " tokens\n";
    }
    return max_tokens == 0 || writer.num_tokens() < max_tokens;
  };
  // One pass over every input; false once --tokens is reached.
  auto pass = [&]() -> StatusOr<bool> {
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
        HYB_ASSIGN_OR_RETURN(bool more, add(tok->Encode(j[field].get<std::string>()), where));
        if (!more) return false;
      }
    }
    for (const auto& path : text_files) {
      auto contents = env->ReadFile(path);
      if (!contents.ok() || contents->empty() || !IsUtf8Text(*contents)) continue;
      HYB_ASSIGN_OR_RETURN(bool more, add(tok->Encode(*contents), path));
      if (!more) return false;
    }
    return true;
  };
  for (int64_t round = 0;; ++round) {
    const int64_t before = writer.num_tokens();
    HYB_ASSIGN_OR_RETURN(bool more, pass());
    if (!more || max_tokens == 0) break;
    if (writer.num_tokens() == before) {
      return InvalidArgument("the inputs hold no text (--tokens " + std::to_string(max_tokens) +
                             " cannot be reached)");
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
                     "hybridize prepare --tokenizer FILE|DIR (--input A.jsonl[,B.jsonl] | "
                     "--text PATH[,PATH] | --synthetic-tokens N) --output DIR [--tokens N] "
                     "[--text-field NAME] [--eos-token TOKEN|none]",
                     "Tokenizes JSONL documents or plain-text files (or draws random ids) into a "
                     "packed, memory-mappable dataset (tokens.bin, docs.idx, meta.json) that "
                     "distillation samples fixed-length sequences from. Tokens are held in "
                     "memory until the end (4 bytes each).",
                     Specs(),
                     {"tokenizer", "output"}},
                    args, Prepare);
}

}  // namespace hyb::cli
