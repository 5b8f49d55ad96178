// UTF-8 coding and the Unicode properties the tokenizer and the template renderer ask about. ICU is
// the one property source, so a character class means what the Unicode database says it means
// (ICU 72 = Unicode 15.0 on Debian 12), never a hand-typed range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace troupe::unicode {

// Decodes the code point starting at s[i] and moves i past it. `s` must be valid UTF-8.
char32_t next(std::string_view s, size_t& i);
// Byte length of the sequence that a lead byte starts (1 for ASCII and for stray bytes).
inline size_t sequence_length(unsigned char lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}
void append(std::string& out, char32_t cp);
std::u32string to_u32(std::string_view s);
std::string to_utf8(std::u32string_view s);

bool is_valid(std::string_view s);
// Length of the longest prefix of `s` that does not end inside an unfinished (but so far valid)
// UTF-8 sequence: what a streaming decoder may hand out now.
size_t complete_prefix(std::string_view s);
// Bytes to text the way Rust's String::from_utf8_lossy does it: each maximal invalid subpart becomes
// one U+FFFD (the Unicode "best practice" substitution), which is what the HF decoders output.
std::string from_bytes_lossy(std::string_view bytes);

// General categories and binary properties.
bool is_letter(char32_t c);      // \p{L}
bool is_number(char32_t c);      // \p{N}
bool is_mark(char32_t c);        // \p{M}
bool is_white_space(char32_t c);  // White_Space: Oniguruma's and Rust regex's \s
bool is_word(char32_t c);        // Rust regex's \w: Alphabetic, M, Nd, Pc, Join_Control
bool is_python_space(char32_t c);  // Python's str.isspace (bidi WS/B/S or Zs)
bool is_printable(char32_t c);   // Python's str.isprintable, for repr()
// Simple case folding, as a case-insensitive regex compares characters.
char32_t fold_case(char32_t c);

// Full case mappings (Python's str.upper/lower, e.g. "ß".upper() == "SS").
std::string to_upper(std::string_view s);
std::string to_lower(std::string_view s);

}  // namespace troupe::unicode
