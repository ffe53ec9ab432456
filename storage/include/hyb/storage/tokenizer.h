// Encoding and decoding with a Hugging Face `tokenizer.json` of the two kinds the supported
// families use:
//   * byte-level BPE (GPT-2, Llama 3, Qwen2/3): ByteLevel pre-tokenizer, optionally after a Split
//     with the GPT-2, Llama 3 or Qwen2 pattern; NFC normalizer (Qwen2);
//   * SentencePiece-style BPE (Llama 2, Mistral): Metaspace (or the Prepend + Replace normalizer
//     of older files) with byte fallback.
// Added and special tokens (lstrip, rstrip, single_word) are matched before normalisation.
// Anything else in the file (another model type, an unknown normalizer, a regex we do not
// implement) is rejected at load time with the field named. Torch-free; thread-safe after
// construction (const methods only).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"

namespace hyb::storage {

class Tokenizer {
 public:
  static StatusOr<std::shared_ptr<const Tokenizer>> FromFile(const std::string& path);
  static StatusOr<std::shared_ptr<const Tokenizer>> FromJson(const Json& j,
                                                             const std::string& source);
  ~Tokenizer();

  // Token ids of `text`. Invalid UTF-8 is first replaced (U+FFFD per maximal invalid subpart).
  // With add_special_tokens, the post-processor's template (e.g. a BOS token) is applied.
  std::vector<int64_t> Encode(std::string_view text, bool add_special_tokens = false) const;
  // Text of `ids`; ids outside the vocabulary are skipped. Invalid byte sequences produced by
  // byte tokens decode to U+FFFD.
  std::string Decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;

  // Vocabulary size including added tokens (max id + 1).
  int64_t vocab_size() const;
  std::optional<int64_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int64_t id) const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hyb::storage
