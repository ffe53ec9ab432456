#include "hyb/storage/tokenizer.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <functional>
#include <map>
#include <queue>
#include <unordered_map>
#include <variant>

#include "hyb/storage/unicode.h"

namespace hyb::storage {
namespace {

using unicode::IsLetter;
using unicode::IsNumber;
using unicode::IsWhitespace;

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer split patterns, implemented as scanners with the regex engines' semantics
// (alternatives tried in order at each position, greedy quantifiers with backtracking).

enum class SplitPattern { kGpt2, kLlama3, kQwen2 };

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

bool IsOther(char32_t c) { return !IsWhitespace(c) && !IsLetter(c) && !IsNumber(c); }
bool IsNewline(char32_t c) { return c == U'\r' || c == U'\n'; }

char32_t FoldAscii(char32_t c, bool fold) {
  if (!fold) return c;
  if (c >= U'A' && c <= U'Z') return c + 32;
  if (c == 0x17F) return U's';  // LATIN SMALL LETTER LONG S folds to s
  return c;
}

// Length of the contraction ('s 't 're 've 'm 'll 'd) at i, or 0.
size_t MatchContraction(const std::u32string& s, size_t i, bool fold) {
  if (s[i] != U'\'' || i + 1 >= s.size()) return 0;
  const char32_t a = FoldAscii(s[i + 1], fold);
  if (a == U's' || a == U't' || a == U'm' || a == U'd') return 2;
  if (i + 2 >= s.size()) return 0;
  const char32_t b = FoldAscii(s[i + 2], fold);
  if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return 3;
  return 0;
}

template <typename Pred>
size_t Run(const std::u32string& s, size_t i, Pred pred) {
  size_t j = i;
  while (j < s.size() && pred(s[j])) ++j;
  return j - i;
}

// \s+(?!\S) then \s+ : a whitespace run, leaving its last character to the next token when a
// non-space follows (so " word" keeps its space).
size_t MatchWhitespace(const std::u32string& s, size_t i) {
  const size_t m = Run(s, i, IsWhitespace);
  if (m == 0) return 0;
  if (i + m == s.size() || m == 1) return m;  // (?!\S) holds at the end; else \s+ takes 1
  return m - 1;
}

size_t MatchAt(SplitPattern p, const std::u32string& s, size_t i) {
  const char32_t c = s[i];
  const bool has_next = i + 1 < s.size();
  if (p == SplitPattern::kGpt2) {
    if (size_t n = MatchContraction(s, i, false)) return n;
    const size_t sp = (c == U' ' && has_next) ? 1 : 0;
    for (auto pred : {IsLetter, IsNumber, IsOther}) {
      if (size_t n = Run(s, i + sp, pred)) return sp + n;
    }
    return MatchWhitespace(s, i);
  }
  // Llama 3 and Qwen2.
  if (size_t n = MatchContraction(s, i, true)) return n;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (!IsNewline(c) && !IsLetter(c) && !IsNumber(c) && has_next && IsLetter(s[i + 1])) {
    return 1 + Run(s, i + 1, IsLetter);
  }
  if (IsLetter(c)) return Run(s, i, IsLetter);
  // \p{N}{1,3} or \p{N}
  if (IsNumber(c)) {
    const size_t n = Run(s, i, IsNumber);
    return p == SplitPattern::kLlama3 ? std::min<size_t>(n, 3) : 1;
  }
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  {
    const size_t sp = (c == U' ' && has_next && IsOther(s[i + 1])) ? 1 : 0;
    if (const size_t n = Run(s, i + sp, IsOther)) return sp + n + Run(s, i + sp + n, IsNewline);
  }
  // \s*[\r\n]+ : the whitespace run up to and including its last newline.
  const size_t m = Run(s, i, IsWhitespace);
  for (size_t k = m; k > 0; --k) {
    if (IsNewline(s[i + k - 1])) return k;
  }
  return MatchWhitespace(s, i);
}

std::vector<std::u32string> SplitByPattern(SplitPattern p, const std::u32string& s) {
  std::vector<std::u32string> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t n = MatchAt(p, s, i);
    if (n == 0) n = 1;  // every character matches some alternative; guard against loops
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

// GPT-2's reversible map from bytes to printable code points.
const std::array<char32_t, 256>& ByteToChar() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    std::array<bool, 256> direct{};
    for (int b = '!'; b <= '~'; ++b) direct[static_cast<size_t>(b)] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[static_cast<size_t>(b)] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[static_cast<size_t>(b)] = true;
    char32_t next = 256;
    for (size_t b = 0; b < 256; ++b) t[b] = direct[b] ? static_cast<char32_t>(b) : next++;
    return t;
  }();
  return table;
}

const std::unordered_map<char32_t, uint8_t>& CharToByte() {
  static const std::unordered_map<char32_t, uint8_t> table = [] {
    std::unordered_map<char32_t, uint8_t> t;
    const auto& fwd = ByteToChar();
    for (size_t b = 0; b < 256; ++b) t[fwd[b]] = static_cast<uint8_t>(b);
    return t;
  }();
  return table;
}

// ---------------------------------------------------------------------------------------------
// Pipeline pieces.

struct NormalizerStep {
  enum Kind { kNfc, kPrepend, kReplace } kind;
  std::u32string a, b;  // prepend: a; replace: a -> b
};

struct PreTokenizerStep {
  enum Kind { kByteLevel, kSplit, kMetaspace } kind;
  bool add_prefix_space = false;  // ByteLevel
  bool use_regex = true;          // ByteLevel
  SplitPattern pattern = SplitPattern::kGpt2;
  char32_t replacement = 0x2581;  // Metaspace
  std::string prepend_scheme = "always";
  bool split = true;
};

struct DecoderStep {
  enum Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind;
  std::string a, b;  // replace a -> b; strip content = a
  int64_t start = 0, stop = 0;
  char32_t replacement = 0x2581;
  bool prepend = true;  // metaspace: strip the leading space of the first token
};

struct AddedToken {
  std::string content;
  int64_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false;
};

std::u32string ToU32(std::string_view s) { return unicode::DecodeUtf8Lossy(s); }

std::string ReplaceAll(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
  return s;
}

std::u32string ReplaceAll(std::u32string s, const std::u32string& from, const std::u32string& to) {
  if (from.empty()) return s;
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::u32string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
  return s;
}

StatusOr<std::string> PatternString(const JsonObject& o, const std::string& where) {
  if (!o.Has("pattern") || !o.json()["pattern"].is_object()) {
    return InvalidArgument(o.source() + ": " + where + " needs a 'pattern' object");
  }
  const Json& p = o.json()["pattern"];
  if (p.contains("String") && p["String"].is_string()) return p["String"].get<std::string>();
  return InvalidArgument(o.source() + ": " + where + " supports only String patterns");
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::string source;
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<std::string> id_to_token;
  // (left id, right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int32_t, int64_t>> merges;
  std::optional<int64_t> unk_id;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::array<int64_t, 256> byte_token_ids{};  // <0xXX> ids, -1 if absent
  std::vector<NormalizerStep> normalizers;
  std::vector<PreTokenizerStep> pre_tokenizers;
  std::vector<DecoderStep> decoders;
  std::vector<AddedToken> added;                    // sorted by content length, longest first
  std::unordered_map<int64_t, bool> added_special;  // id -> special
  std::vector<std::variant<int64_t, int>> single_template;  // id, or 0 for the sequence
  bool has_template = false;

  static uint64_t PairKey(int64_t a, int64_t b) {
    return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(b);
  }

  Status LoadModel(const JsonObject& m);
  Status LoadNormalizer(const Json& j, const std::string& where);
  Status LoadPreTokenizer(const Json& j, const std::string& where);
  Status LoadDecoder(const Json& j, const std::string& where);
  Status LoadPostProcessor(const Json& j);

  std::u32string Normalize(std::u32string s) const;
  std::vector<std::u32string> PreTokenize(std::u32string s, bool first_segment) const;
  void Bpe(const std::u32string& word, std::vector<int64_t>* out) const;
  void EncodeSegment(std::string_view text, bool first_segment, std::vector<int64_t>* out) const;
};

Status Tokenizer::Impl::LoadModel(const JsonObject& m) {
  HYB_ASSIGN_OR_RETURN(std::string type, m.String("type", "BPE"));
  if (type != "BPE") return m.FieldError("type", "'" + type + "' is not supported (only BPE)");
  HYB_ASSIGN_OR_RETURN(auto dropout, m.OptionalNumber("dropout"));
  if (dropout && *dropout != 0.0) return m.FieldError("dropout", "is not supported");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    HYB_ASSIGN_OR_RETURN(std::string v, m.String(k, ""));
    if (!v.empty()) return m.FieldError(k, "is not supported");
  }
  HYB_ASSIGN_OR_RETURN(fuse_unk, m.Bool("fuse_unk", false));
  HYB_ASSIGN_OR_RETURN(byte_fallback, m.Bool("byte_fallback", false));
  HYB_ASSIGN_OR_RETURN(ignore_merges, m.Bool("ignore_merges", false));
  if (!m.Has("vocab") || !m.json()["vocab"].is_object()) {
    return m.FieldError("vocab", "must be an object of token -> id");
  }
  for (auto it = m.json()["vocab"].begin(); it != m.json()["vocab"].end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0) {
      return m.FieldError("vocab", "entry '" + it.key() + "' has no valid id");
    }
    vocab[it.key()] = it.value().get<int64_t>();
  }
  HYB_ASSIGN_OR_RETURN(std::string unk, m.String("unk_token", ""));
  if (!unk.empty()) {
    auto it = vocab.find(unk);
    if (it == vocab.end()) return m.FieldError("unk_token", "'" + unk + "' is not in the vocab");
    unk_id = it->second;
  }
  if (!m.Has("merges") || !m.json()["merges"].is_array()) {
    return m.FieldError("merges", "must be a list");
  }
  int32_t rank = 0;
  for (const Json& e : m.json()["merges"]) {
    std::string a, b;
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) return m.FieldError("merges", "entry '" + s + "' has no space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      return m.FieldError("merges", "entry " + JsonSnippet(e) + " is not a pair");
    }
    auto ia = vocab.find(a), ib = vocab.find(b), im = vocab.find(a + b);
    if (ia == vocab.end() || ib == vocab.end() || im == vocab.end()) {
      return m.FieldError("merges", "entry '" + a + " " + b + "' uses tokens not in the vocab");
    }
    merges.emplace(PairKey(ia->second, ib->second), std::make_pair(rank++, im->second));
  }
  for (size_t byte = 0; byte < 256; ++byte) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", static_cast<unsigned>(byte));
    auto it = vocab.find(name);
    byte_token_ids[byte] = it == vocab.end() ? -1 : it->second;
  }
  return Status::Ok();
}

Status Tokenizer::Impl::LoadNormalizer(const Json& j, const std::string& where) {
  if (j.is_null()) return Status::Ok();
  JsonObject o(j, source + " (" + where + ")");
  HYB_ASSIGN_OR_RETURN(std::string type, o.String("type"));
  if (type == "Sequence") {
    if (!o.Has("normalizers") || !j["normalizers"].is_array()) {
      return o.FieldError("normalizers", "must be a list");
    }
    for (const Json& n : j["normalizers"]) HYB_RETURN_IF_ERROR(LoadNormalizer(n, where));
    return Status::Ok();
  }
  if (type == "NFC") {
    normalizers.push_back({NormalizerStep::kNfc, {}, {}});
  } else if (type == "Prepend") {
    HYB_ASSIGN_OR_RETURN(std::string p, o.String("prepend"));
    normalizers.push_back({NormalizerStep::kPrepend, ToU32(p), {}});
  } else if (type == "Replace") {
    HYB_ASSIGN_OR_RETURN(std::string pattern, PatternString(o, "Replace"));
    HYB_ASSIGN_OR_RETURN(std::string content, o.String("content"));
    normalizers.push_back({NormalizerStep::kReplace, ToU32(pattern), ToU32(content)});
  } else {
    return o.FieldError("type", "normalizer '" + type +
                                    "' is not supported (NFC, Prepend, "
                                    "Replace, Sequence)");
  }
  return Status::Ok();
}

Status Tokenizer::Impl::LoadPreTokenizer(const Json& j, const std::string& where) {
  if (j.is_null()) return Status::Ok();
  JsonObject o(j, source + " (" + where + ")");
  HYB_ASSIGN_OR_RETURN(std::string type, o.String("type"));
  PreTokenizerStep step;
  if (type == "Sequence") {
    if (!o.Has("pretokenizers") || !j["pretokenizers"].is_array()) {
      return o.FieldError("pretokenizers", "must be a list");
    }
    for (const Json& p : j["pretokenizers"]) HYB_RETURN_IF_ERROR(LoadPreTokenizer(p, where));
    return Status::Ok();
  }
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::kByteLevel;
    HYB_ASSIGN_OR_RETURN(step.add_prefix_space, o.Bool("add_prefix_space", true));
    HYB_ASSIGN_OR_RETURN(step.use_regex, o.Bool("use_regex", true));
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::kSplit;
    if (!o.Has("pattern") || !j["pattern"].contains("Regex")) {
      return o.FieldError("pattern", "must be a Regex");
    }
    const std::string re = j["pattern"]["Regex"].get<std::string>();
    if (re == kGpt2Pattern) {
      step.pattern = SplitPattern::kGpt2;
    } else if (re == kLlama3Pattern) {
      step.pattern = SplitPattern::kLlama3;
    } else if (re == kQwen2Pattern) {
      step.pattern = SplitPattern::kQwen2;
    } else {
      return o.FieldError("pattern",
                          "regex is not one of the GPT-2, Llama 3 or Qwen2 split "
                          "patterns this tokenizer implements");
    }
    HYB_ASSIGN_OR_RETURN(std::string behavior, o.String("behavior", "Isolated"));
    HYB_ASSIGN_OR_RETURN(bool invert, o.Bool("invert", false));
    if (behavior != "Isolated" || invert) {
      return o.FieldError("behavior", "only Isolated, not inverted, is supported");
    }
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::kMetaspace;
    HYB_ASSIGN_OR_RETURN(std::string rep, o.String("replacement", "\u2581"));
    const std::u32string r = ToU32(rep);
    if (r.size() != 1) return o.FieldError("replacement", "must be one character");
    step.replacement = r[0];
    if (o.Has("prepend_scheme")) {
      HYB_ASSIGN_OR_RETURN(step.prepend_scheme, o.String("prepend_scheme"));
    } else {
      HYB_ASSIGN_OR_RETURN(bool add_prefix, o.Bool("add_prefix_space", true));
      step.prepend_scheme = add_prefix ? "always" : "never";
    }
    if (step.prepend_scheme != "always" && step.prepend_scheme != "first" &&
        step.prepend_scheme != "never") {
      return o.FieldError("prepend_scheme", "must be always, first or never");
    }
    HYB_ASSIGN_OR_RETURN(step.split, o.Bool("split", true));
  } else {
    return o.FieldError("type", "pre-tokenizer '" + type +
                                    "' is not supported (ByteLevel, Split, Metaspace, Sequence)");
  }
  pre_tokenizers.push_back(step);
  return Status::Ok();
}

Status Tokenizer::Impl::LoadDecoder(const Json& j, const std::string& where) {
  if (j.is_null()) return Status::Ok();
  JsonObject o(j, source + " (" + where + ")");
  HYB_ASSIGN_OR_RETURN(std::string type, o.String("type"));
  DecoderStep d{};
  if (type == "Sequence") {
    if (!o.Has("decoders") || !j["decoders"].is_array()) {
      return o.FieldError("decoders", "must be a list");
    }
    for (const Json& x : j["decoders"]) HYB_RETURN_IF_ERROR(LoadDecoder(x, where));
    return Status::Ok();
  }
  if (type == "ByteLevel") {
    d.kind = DecoderStep::kByteLevel;
  } else if (type == "Replace") {
    d.kind = DecoderStep::kReplace;
    HYB_ASSIGN_OR_RETURN(d.a, PatternString(o, "Replace"));
    HYB_ASSIGN_OR_RETURN(d.b, o.String("content"));
  } else if (type == "ByteFallback") {
    d.kind = DecoderStep::kByteFallback;
  } else if (type == "Fuse") {
    d.kind = DecoderStep::kFuse;
  } else if (type == "Strip") {
    d.kind = DecoderStep::kStrip;
    HYB_ASSIGN_OR_RETURN(d.a, o.String("content"));
    HYB_ASSIGN_OR_RETURN(d.start, o.Int("start", 0));
    HYB_ASSIGN_OR_RETURN(d.stop, o.Int("stop", 0));
  } else if (type == "Metaspace") {
    d.kind = DecoderStep::kMetaspace;
    HYB_ASSIGN_OR_RETURN(std::string rep, o.String("replacement", "\u2581"));
    const std::u32string r = ToU32(rep);
    if (r.size() != 1) return o.FieldError("replacement", "must be one character");
    d.replacement = r[0];
    std::string scheme = "always";
    if (o.Has("prepend_scheme")) {
      HYB_ASSIGN_OR_RETURN(scheme, o.String("prepend_scheme"));
    } else {
      HYB_ASSIGN_OR_RETURN(bool add_prefix, o.Bool("add_prefix_space", true));
      scheme = add_prefix ? "always" : "never";
    }
    d.prepend = scheme != "never";
  } else {
    return o.FieldError("type", "decoder '" + type + "' is not supported");
  }
  decoders.push_back(d);
  return Status::Ok();
}

Status Tokenizer::Impl::LoadPostProcessor(const Json& j) {
  if (j.is_null()) return Status::Ok();
  JsonObject o(j, source + " (post_processor)");
  HYB_ASSIGN_OR_RETURN(std::string type, o.String("type"));
  if (type == "ByteLevel") return Status::Ok();  // offsets only; ids unchanged
  if (type == "Sequence") {
    for (const Json& p : j.value("processors", Json::array()))
      HYB_RETURN_IF_ERROR(LoadPostProcessor(p));
    return Status::Ok();
  }
  if (type != "TemplateProcessing") {
    return o.FieldError("type", "post-processor '" + type + "' is not supported");
  }
  if (!j.contains("single") || !j["single"].is_array())
    return o.FieldError("single", "must be a list");
  const Json special = j.value("special_tokens", Json::object());
  for (const Json& item : j["single"]) {
    if (item.contains("Sequence")) {
      single_template.emplace_back(0);
    } else if (item.contains("SpecialToken")) {
      const std::string name = item["SpecialToken"].value("id", "");
      if (!special.contains(name) || !special[name].contains("ids")) {
        return o.FieldError("special_tokens", "has no ids for '" + name + "'");
      }
      for (const Json& id : special[name]["ids"]) single_template.emplace_back(id.get<int64_t>());
    } else {
      return o.FieldError("single", "entry " + JsonSnippet(item) + " is not understood");
    }
  }
  has_template = true;
  return Status::Ok();
}

std::u32string Tokenizer::Impl::Normalize(std::u32string s) const {
  for (const auto& n : normalizers) {
    switch (n.kind) {
      case NormalizerStep::kNfc:
        s = unicode::Nfc(s);
        break;
      case NormalizerStep::kPrepend:
        if (!s.empty()) s = n.a + s;
        break;
      case NormalizerStep::kReplace:
        s = ReplaceAll(std::move(s), n.a, n.b);
        break;
    }
  }
  return s;
}

std::vector<std::u32string> Tokenizer::Impl::PreTokenize(std::u32string s,
                                                         bool first_segment) const {
  std::vector<std::u32string> pieces = {std::move(s)};
  for (const auto& p : pre_tokenizers) {
    std::vector<std::u32string> next;
    for (size_t k = 0; k < pieces.size(); ++k) {
      std::u32string piece = std::move(pieces[k]);
      switch (p.kind) {
        case PreTokenizerStep::kSplit:
          for (auto& x : SplitByPattern(p.pattern, piece)) next.push_back(std::move(x));
          break;
        case PreTokenizerStep::kByteLevel: {
          if (p.add_prefix_space && !piece.empty() && piece[0] != U' ') piece = U" " + piece;
          std::vector<std::u32string> parts;
          if (p.use_regex) {
            parts = SplitByPattern(SplitPattern::kGpt2, piece);
          } else {
            parts.push_back(std::move(piece));
          }
          const auto& map = ByteToChar();
          for (const auto& part : parts) {
            std::u32string mapped;
            for (unsigned char byte : unicode::EncodeUtf8(part)) mapped.push_back(map[byte]);
            next.push_back(std::move(mapped));
          }
          break;
        }
        case PreTokenizerStep::kMetaspace: {
          for (char32_t& c : piece) {
            if (c == U' ') c = p.replacement;
          }
          const bool prepend = p.prepend_scheme == "always" ||
                               (p.prepend_scheme == "first" && first_segment && k == 0);
          if (prepend && !piece.empty() && piece[0] != p.replacement) {
            piece = std::u32string(1, p.replacement) + piece;
          }
          if (!p.split) {
            next.push_back(std::move(piece));
            break;
          }
          // Split before each replacement character (MergedWithNext).
          size_t start = 0;
          for (size_t i = 1; i <= piece.size(); ++i) {
            if (i == piece.size() || piece[i] == p.replacement) {
              next.push_back(piece.substr(start, i - start));
              start = i;
            }
          }
          break;
        }
      }
    }
    pieces = std::move(next);
  }
  return pieces;
}

void Tokenizer::Impl::Bpe(const std::u32string& word, std::vector<int64_t>* out) const {
  if (word.empty()) return;
  const std::string utf8 = unicode::EncodeUtf8(word);
  if (ignore_merges) {
    if (auto it = vocab.find(utf8); it != vocab.end()) {
      out->push_back(it->second);
      return;
    }
  }
  // Initial symbols: characters, or their bytes (byte fallback), or unk.
  std::vector<int64_t> ids;
  ids.reserve(word.size());
  bool last_unk = false;
  for (char32_t c : word) {
    std::string ch;
    unicode::AppendUtf8(c, &ch);
    if (auto it = vocab.find(ch); it != vocab.end()) {
      ids.push_back(it->second);
      last_unk = false;
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (unsigned char b : ch) all = all && byte_token_ids[b] >= 0;
      if (all) {
        for (unsigned char b : ch) ids.push_back(byte_token_ids[b]);
        last_unk = false;
        continue;
      }
    }
    if (unk_id) {
      if (!(fuse_unk && last_unk)) ids.push_back(*unk_id);
      last_unk = true;
    }
  }
  const size_t n = ids.size();
  if (n == 0) return;
  // Merge lowest-rank adjacent pairs first (leftmost on ties), over a linked list.
  std::vector<int64_t> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int64_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int64_t>(i + 1) : -1;
  }
  struct Candidate {
    int32_t rank;
    int64_t pos;
    int64_t left_id, right_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto push = [&](int64_t i) {
    if (i < 0 || next[static_cast<size_t>(i)] < 0) return;
    const int64_t j = next[static_cast<size_t>(i)];
    auto it = merges.find(PairKey(ids[static_cast<size_t>(i)], ids[static_cast<size_t>(j)]));
    if (it != merges.end()) {
      queue.push({it->second.first, i, ids[static_cast<size_t>(i)], ids[static_cast<size_t>(j)]});
    }
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int64_t>(i));
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    const auto i = static_cast<size_t>(c.pos);
    if (!alive[i] || next[i] < 0) continue;
    const auto j = static_cast<size_t>(next[i]);
    if (ids[i] != c.left_id || ids[j] != c.right_id) continue;  // stale
    ids[i] = merges.at(PairKey(c.left_id, c.right_id)).second;
    alive[j] = false;
    next[i] = next[j];
    if (next[j] >= 0) prev[static_cast<size_t>(next[j])] = static_cast<int64_t>(i);
    push(prev[i]);
    push(static_cast<int64_t>(i));
  }
  for (size_t i = 0; i < n; ++i) {
    if (alive[i]) out->push_back(ids[i]);
  }
}

void Tokenizer::Impl::EncodeSegment(std::string_view text, bool first_segment,
                                    std::vector<int64_t>* out) const {
  if (text.empty()) return;
  const std::u32string normalized = Normalize(ToU32(text));
  for (const auto& piece : PreTokenize(normalized, first_segment)) Bpe(piece, out);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

StatusOr<std::shared_ptr<const Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  HYB_ASSIGN_OR_RETURN(Json j, ReadJsonFile(path));
  return FromJson(j, path);
}

StatusOr<std::shared_ptr<const Tokenizer>> Tokenizer::FromJson(const Json& j,
                                                               const std::string& source) {
  if (!j.is_object()) return DataLoss(source + ": not a JSON object");
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  if (!j.contains("model") || !j["model"].is_object()) {
    return InvalidArgument(source + ": field 'model' is required");
  }
  HYB_RETURN_IF_ERROR(impl->LoadModel(JsonObject(j["model"], source + " (model)")));
  HYB_RETURN_IF_ERROR(impl->LoadNormalizer(j.value("normalizer", Json()), "normalizer"));
  HYB_RETURN_IF_ERROR(impl->LoadPreTokenizer(j.value("pre_tokenizer", Json()), "pre_tokenizer"));
  HYB_RETURN_IF_ERROR(impl->LoadDecoder(j.value("decoder", Json()), "decoder"));
  HYB_RETURN_IF_ERROR(impl->LoadPostProcessor(j.value("post_processor", Json())));
  for (const Json& a : j.value("added_tokens", Json::array())) {
    AddedToken t;
    t.content = a.value("content", "");
    t.id = a.value("id", int64_t{-1});
    t.special = a.value("special", false);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    t.single_word = a.value("single_word", false);
    if (t.content.empty() || t.id < 0) {
      return InvalidArgument(source + ": added_tokens entry " + JsonSnippet(a) +
                             " needs content and id");
    }
    impl->vocab[t.content] = t.id;
    impl->added_special[t.id] = t.special;
    impl->added.push_back(t);
  }
  std::stable_sort(
      impl->added.begin(), impl->added.end(),
      [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  int64_t max_id = -1;
  for (const auto& [tok, id] : impl->vocab) max_id = std::max(max_id, id);
  impl->id_to_token.assign(static_cast<size_t>(max_id + 1), "");
  for (const auto& [tok, id] : impl->vocab) impl->id_to_token[static_cast<size_t>(id)] = tok;
  return std::shared_ptr<const Tokenizer>(new Tokenizer(std::move(impl)));
}

std::vector<int64_t> Tokenizer::Encode(std::string_view raw, bool add_special_tokens) const {
  const std::string text = unicode::SanitizeUtf8(raw);
  std::vector<int64_t> ids;
  // Split on added tokens: at each position the longest added token wins.
  size_t segment_start = 0, i = 0;
  bool first_segment = true;
  auto is_word_char = [&](size_t pos) {  // for single_word boundaries (ASCII approximation)
    const unsigned char c = static_cast<unsigned char>(text[pos]);
    return std::isalnum(c) || c == '_' || c >= 0x80;
  };
  while (i < text.size()) {
    const AddedToken* match = nullptr;
    for (const auto& t : impl_->added) {
      if (text.compare(i, t.content.size(), t.content) != 0) continue;
      if (t.single_word) {
        const size_t end = i + t.content.size();
        if ((i > 0 && is_word_char(i - 1)) || (end < text.size() && is_word_char(end))) continue;
      }
      match = &t;
      break;
    }
    if (match == nullptr) {
      ++i;
      continue;
    }
    size_t seg_end = i, after = i + match->content.size();
    if (match->lstrip) {
      while (seg_end > segment_start && std::isspace(static_cast<unsigned char>(text[seg_end - 1])))
        --seg_end;
    }
    if (match->rstrip) {
      while (after < text.size() && std::isspace(static_cast<unsigned char>(text[after]))) ++after;
    }
    impl_->EncodeSegment(std::string_view(text).substr(segment_start, seg_end - segment_start),
                         first_segment && segment_start == 0, &ids);
    ids.push_back(match->id);
    first_segment = false;
    segment_start = i = after;
  }
  impl_->EncodeSegment(std::string_view(text).substr(segment_start),
                       first_segment && segment_start == 0, &ids);
  if (add_special_tokens && impl_->has_template) {
    std::vector<int64_t> out;
    for (const auto& item : impl_->single_template) {
      if (std::holds_alternative<int64_t>(item)) {
        out.push_back(std::get<int64_t>(item));
      } else {
        out.insert(out.end(), ids.begin(), ids.end());
      }
    }
    return out;
  }
  return ids;
}

std::string Tokenizer::Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  for (int64_t id : ids) {
    if (id < 0 || id >= static_cast<int64_t>(impl_->id_to_token.size())) continue;
    if (skip_special_tokens) {
      auto it = impl_->added_special.find(id);
      if (it != impl_->added_special.end() && it->second) continue;
    }
    tokens.push_back(impl_->id_to_token[static_cast<size_t>(id)]);
  }
  for (const auto& d : impl_->decoders) {
    switch (d.kind) {
      case DecoderStep::kByteLevel: {
        // Concatenate, map characters back to bytes, decode lossily.
        const auto& map = CharToByte();
        std::string bytes;
        for (const auto& t : tokens) {
          for (char32_t c : ToU32(t)) {
            auto it = map.find(c);
            if (it != map.end()) {
              bytes.push_back(static_cast<char>(it->second));
            } else {
              unicode::AppendUtf8(c, &bytes);
            }
          }
        }
        tokens = {unicode::SanitizeUtf8(bytes)};
        break;
      }
      case DecoderStep::kReplace:
        for (auto& t : tokens) t = ReplaceAll(t, d.a, d.b);
        break;
      case DecoderStep::kByteFallback: {
        std::vector<std::string> out;
        std::string pending;
        size_t pending_count = 0;
        auto flush = [&] {
          if (pending_count == 0) return;
          const std::string clean = unicode::SanitizeUtf8(pending);
          if (clean == pending) {
            out.push_back(pending);
          } else {  // invalid bytes: one U+FFFD per byte token
            std::string rep;
            for (size_t k = 0; k < pending_count; ++k) rep += "\xEF\xBF\xBD";
            out.push_back(rep);
          }
          pending.clear();
          pending_count = 0;
        };
        for (const auto& t : tokens) {
          unsigned int byte = 0;
          if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
              std::sscanf(t.c_str() + 3, "%2X", &byte) == 1) {
            pending.push_back(static_cast<char>(byte));
            ++pending_count;
          } else {
            flush();
            out.push_back(t);
          }
        }
        flush();
        tokens = std::move(out);
        break;
      }
      case DecoderStep::kFuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        tokens = {all};
        break;
      }
      case DecoderStep::kStrip:
        for (auto& t : tokens) {
          int64_t k = 0;
          while (k < d.start && t.compare(0, d.a.size(), d.a) == 0 && !d.a.empty()) {
            t.erase(0, d.a.size());
            ++k;
          }
          k = 0;
          while (k < d.stop && t.size() >= d.a.size() && !d.a.empty() &&
                 t.compare(t.size() - d.a.size(), d.a.size(), d.a) == 0) {
            t.erase(t.size() - d.a.size());
            ++k;
          }
        }
        break;
      case DecoderStep::kMetaspace: {
        std::string rep;
        unicode::AppendUtf8(d.replacement, &rep);
        for (size_t k = 0; k < tokens.size(); ++k) {
          tokens[k] = ReplaceAll(tokens[k], rep, " ");
          if (k == 0 && d.prepend && !tokens[k].empty() && tokens[k][0] == ' ') {
            tokens[k].erase(0, 1);
          }
        }
        break;
      }
    }
  }
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_to_token.size()); }

std::optional<int64_t> Tokenizer::TokenToId(std::string_view token) const {
  auto it = impl_->vocab.find(std::string(token));
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> Tokenizer::IdToToken(int64_t id) const {
  if (id < 0 || id >= vocab_size()) return std::nullopt;
  return impl_->id_to_token[static_cast<size_t>(id)];
}

}  // namespace hyb::storage
