// Jinja template source to tokens, with the whitespace rules of the environment Hugging Face renders
// chat templates in: trim_blocks and lstrip_blocks on, `{%-` / `-%}` stripping, `{%+` / `+%}`
// opting out, newlines normalized and one trailing newline dropped (keep_trailing_newline off).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace troupe::jinja {

struct Token {
  enum class Kind { data, var_begin, var_end, block_begin, block_end, name, string, integer, floating, op, eof };
  Kind kind;
  std::string text;  // data, name, operator, or the unescaped string literal / number text
  int line;
};

// Throws TemplateError naming the line on malformed input (unterminated tag, comment or string).
std::vector<Token> lex(std::string_view source);

}  // namespace troupe::jinja
