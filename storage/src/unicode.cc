#include "hyb/storage/unicode.h"

#include <algorithm>
#include <unordered_map>
#include <utility>
#include <vector>

namespace hyb::storage::unicode {
namespace {

struct CodeRange {
  char32_t first, last;
};
struct CodeValue {
  char32_t cp;
  int value;
};
struct Decomposition {
  char32_t cp, first, second;  // second == 0: singleton
};
struct Composition {
  char32_t first, second, composed;
};

#include "unicode_tables.inc"

template <size_t N>
bool InRanges(const CodeRange (&ranges)[N], char32_t cp) {
  const CodeRange* end = ranges + N;
  const CodeRange* it =
      std::upper_bound(ranges, end, cp, [](char32_t c, const CodeRange& r) { return c < r.first; });
  return it != ranges && cp <= (it - 1)->last;
}

int CombiningClass(char32_t cp) {
  const auto* end = kCombiningClass + std::size(kCombiningClass);
  const auto* it = std::lower_bound(kCombiningClass, end, cp,
                                    [](const CodeValue& v, char32_t c) { return v.cp < c; });
  return (it != end && it->cp == cp) ? it->value : 0;
}

const Decomposition* FindDecomposition(char32_t cp) {
  const auto* end = kDecompositions + std::size(kDecompositions);
  const auto* it = std::lower_bound(kDecompositions, end, cp,
                                    [](const Decomposition& d, char32_t c) { return d.cp < c; });
  return (it != end && it->cp == cp) ? it : nullptr;
}

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
              kSCount = kLCount * kNCount;

void DecomposeInto(char32_t cp, std::u32string* out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {  // Hangul syllables, algorithmically
    const int s = static_cast<int>(cp - kSBase);
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  const Decomposition* d = FindDecomposition(cp);
  if (d == nullptr) {
    out->push_back(cp);
    return;
  }
  DecomposeInto(d->first, out);
  if (d->second != 0) DecomposeInto(d->second, out);
}

char32_t Compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  const auto* end = kCompositions + std::size(kCompositions);
  const auto* it = std::lower_bound(kCompositions, end, std::make_pair(a, b),
                                    [](const Composition& c, std::pair<char32_t, char32_t> p) {
                                      return std::make_pair(c.first, c.second) < p;
                                    });
  return (it != end && it->first == a && it->second == b) ? it->composed : 0;
}

}  // namespace

std::u32string DecodeUtf8Lossy(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      out.push_back(c);
      ++i;
      continue;
    }
    int len = 0;
    char32_t cp = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;  // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      out.push_back(0xFFFD);  // invalid lead byte
      ++i;
      continue;
    }
    // Consume the maximal valid prefix; a broken sequence yields one U+FFFD.
    size_t j = i + 1;
    bool ok = true;
    for (int k = 1; k < len; ++k, ++j) {
      const unsigned char lo_k = (k == 1) ? lo : 0x80, hi_k = (k == 1) ? hi : 0xBF;
      if (j >= n || s[j] < lo_k || s[j] > hi_k) {
        ok = false;
        break;
      }
      cp = (cp << 6) | (s[j] & 0x3F);
    }
    out.push_back(ok ? cp : 0xFFFD);
    i = j;
  }
  return out;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string EncodeUtf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) AppendUtf8(c, &out);
  return out;
}

std::string SanitizeUtf8(std::string_view bytes) { return EncodeUtf8(DecodeUtf8Lossy(bytes)); }

bool IsLetter(char32_t cp) { return InRanges(kLetterRanges, cp); }
bool IsNumber(char32_t cp) { return InRanges(kNumberRanges, cp); }

bool IsWhitespace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

std::u32string Nfc(std::u32string_view text) {
  // Fast path: ASCII is always NFC.
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x80; })) {
    return std::u32string(text);
  }
  std::u32string d;
  d.reserve(text.size());
  for (char32_t c : text) DecomposeInto(c, &d);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < d.size();) {
    if (CombiningClass(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && CombiningClass(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + static_cast<std::ptrdiff_t>(i),
                     d.begin() + static_cast<std::ptrdiff_t>(j),
                     [](char32_t a, char32_t b) { return CombiningClass(a) < CombiningClass(b); });
    i = j;
  }
  // Canonical composition.
  std::u32string out;
  out.reserve(d.size());
  size_t starter = std::u32string::npos;
  int last_class = -1;
  for (char32_t c : d) {
    const int cc = CombiningClass(c);
    if (starter != std::u32string::npos &&
        (last_class < cc || (last_class == 0 && cc == 0 && out.size() == starter + 1))) {
      if (const char32_t composed = Compose(out[starter], c)) {
        out[starter] = composed;
        continue;
      }
    }
    if (cc == 0) {
      starter = out.size();
      last_class = 0;
    } else {
      last_class = cc;
    }
    out.push_back(c);
  }
  return out;
}

const char* UnicodeVersion() { return kUnicodeVersion; }

}  // namespace hyb::storage::unicode
