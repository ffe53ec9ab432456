// hybridize tokenize: encode text or decode ids with a tokenizer.json.
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "flags.h"
#include "hyb/common/json_util.h"
#include "hyb/storage/atomic_file.h"
#include "hyb/storage/tokenizer.h"

namespace hyb::cli {
namespace {

const std::vector<FlagSpec>& Specs() {
  static const std::vector<FlagSpec> specs = {
      {"tokenizer", "FILE", "tokenizer.json, or a model directory holding one", ""},
      {"text", "TEXT", "encode this text and print the ids", ""},
      {"decode", "ID,ID,...", "decode these ids and print the text", ""},
      {"input", "FILE.jsonl",
       "one object per line: \"text\" (encode), \"text_hex\" (encode raw bytes, for invalid "
       "UTF-8) or \"ids\" (decode only)",
       ""},
      {"output", "FILE.jsonl",
       "with --input: write {\"ids\": [...], \"decoded\": \"...\"} per line", ""},
      {"add-special-tokens", "", "apply the post-processor template (e.g. BOS)", ""},
      {"skip-special-tokens", "", "when decoding, drop special tokens", ""},
  };
  return specs;
}

Status Tokenize(const ParsedFlags& flags) {
  HYB_ASSIGN_OR_RETURN(std::string path, flags.Required("tokenizer"));
  if (path.size() < 5 || path.substr(path.size() - 5) != ".json") path += "/tokenizer.json";
  HYB_ASSIGN_OR_RETURN(auto tok, storage::Tokenizer::FromFile(path));
  const bool special = flags.Has("add-special-tokens");
  const bool skip = flags.Has("skip-special-tokens");
  if (auto text = flags.Get("text")) {
    const auto ids = tok->Encode(*text, special);
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    std::cout << "\n";
    return Status::Ok();
  }
  if (auto list = flags.Get("decode")) {
    std::vector<int64_t> ids;
    std::stringstream ss(*list);
    std::string item;
    while (std::getline(ss, item, ',')) {
      try {
        size_t used = 0;
        ids.push_back(std::stoll(item, &used));
        if (used != item.size()) throw std::invalid_argument("trailing characters");
      } catch (const std::exception&) {
        return InvalidArgument("flag --decode: '" + item + "' is not a token id");
      }
    }
    std::cout << tok->Decode(ids, skip) << "\n";
    return Status::Ok();
  }
  HYB_ASSIGN_OR_RETURN(std::string input, flags.Required("input"));
  HYB_ASSIGN_OR_RETURN(std::string output, flags.Required("output"));
  HYB_ASSIGN_OR_RETURN(std::string contents, ReadFileToString(input));
  struct Item {
    bool decode_only = false;
    std::string text;
    std::vector<int64_t> ids;
  };
  std::vector<Item> items;
  std::stringstream lines(contents);
  std::string line;
  size_t number = 0;
  while (std::getline(lines, line)) {
    ++number;
    if (line.empty()) continue;
    const std::string where = input + ":" + std::to_string(number);
    auto j = ParseJson(line, where);
    if (!j.ok()) return j.status();
    Item item;
    if (j->is_object() && j->contains("text") && (*j)["text"].is_string()) {
      item.text = (*j)["text"].get<std::string>();
    } else if (j->is_object() && j->contains("text_hex") && (*j)["text_hex"].is_string()) {
      const std::string hex = (*j)["text_hex"].get<std::string>();
      if (hex.size() % 2 != 0) return InvalidArgument(where + ": text_hex has odd length");
      for (size_t k = 0; k < hex.size(); k += 2) {
        try {
          item.text.push_back(static_cast<char>(std::stoi(hex.substr(k, 2), nullptr, 16)));
        } catch (const std::exception&) {
          return InvalidArgument(where + ": text_hex is not hexadecimal");
        }
      }
    } else if (j->is_object() && j->contains("ids") && (*j)["ids"].is_array()) {
      item.decode_only = true;
      for (const Json& id : (*j)["ids"]) {
        if (!id.is_number_integer()) return InvalidArgument(where + ": ids must be integers");
        item.ids.push_back(id.get<int64_t>());
      }
    } else {
      return InvalidArgument(where + ": needs a string \"text\" or \"text_hex\", or \"ids\"");
    }
    items.push_back(std::move(item));
  }
  size_t bytes = 0, tokens = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& item : items) {
    if (item.decode_only) continue;
    item.ids = tok->Encode(item.text, special);
    bytes += item.text.size();
    tokens += item.ids.size();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string out;
  for (const auto& item : items) {
    // Decoded text is valid UTF-8 (invalid bytes become U+FFFD), so dump() cannot throw.
    out += Json{{"ids", item.ids}, {"decoded", tok->Decode(item.ids, skip)}}.dump(
               -1, ' ', false, Json::error_handler_t::replace) +
           "\n";
  }
  HYB_RETURN_IF_ERROR(storage::AtomicWriteString(output, out));
  std::cerr << Json{{"texts", items.size()},
                    {"bytes", bytes},
                    {"tokens", tokens},
                    {"encode_seconds", secs},
                    {"mb_per_second", bytes / secs / 1e6}}
                   .dump()
            << "\n";
  return Status::Ok();
}

}  // namespace

int RunTokenize(const std::vector<std::string>& args) {
  return RunCommand({"tokenize",
                     "hybridize tokenize --tokenizer FILE (--text TEXT | --decode IDS | "
                     "--input IN.jsonl --output OUT.jsonl)",
                     "Encodes text to token ids or decodes ids to text with a Hugging Face "
                     "tokenizer.json (byte-level BPE or SentencePiece-style BPE). Batch mode "
                     "prints encode throughput to stderr.",
                     Specs(),
                     {"tokenizer"}},
                    args, Tokenize);
}

}  // namespace hyb::cli
