#include "engine/jinja_lexer.hpp"

#include <cctype>

#include "engine/jinja_value.hpp"
#include "engine/unicode.hpp"

namespace troupe::jinja {

namespace {

[[noreturn]] void fail(int line, const std::string& what) {
  throw TemplateError("chat template line " + std::to_string(line) + ": " + what);
}

// Python's str.isspace, which both str.rstrip() and the \s of Jinja's lexer regexes use.
bool space_at(std::string_view s, size_t i, size_t* len) {
  size_t j = i;
  char32_t c = unicode::next(s, j);
  *len = j - i;
  return c < 0x80 ? (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) : unicode::is_python_space(c);
}

size_t skip_space(std::string_view s, size_t i) {
  size_t len;
  while (i < s.size() && space_at(s, i, &len)) i += len;
  return i;
}

std::string rstrip(std::string_view s) {
  // Walk forward remembering where the last non-space character ends (UTF-8 safe).
  size_t end = 0, len;
  for (size_t i = 0; i < s.size();) {
    if (space_at(s, i, &len)) {
      i += len;
    } else {
      i += len;
      end = i;
    }
  }
  return std::string(s.substr(0, end));
}

bool all_space(std::string_view s) {
  size_t len;
  for (size_t i = 0; i < s.size(); i += len)
    if (!space_at(s, i, &len)) return false;
  return !s.empty();
}

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A string literal's body, unescaped as Python's "unicode-escape" codec does (which is what Jinja
// applies); unknown escapes stay as written.
std::string unescape(std::string_view body) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (c != '\\' || i + 1 == body.size()) {
      out += c;
      continue;
    }
    char e = body[++i];
    auto hex_escape = [&](size_t n) {
      uint32_t v = 0;
      for (size_t k = 1; k <= n; ++k) {
        if (i + k >= body.size()) return false;
        int h = hexval(body[i + k]);
        if (h < 0) return false;
        v = v * 16 + static_cast<uint32_t>(h);
      }
      unicode::append(out, v);
      i += n;
      return true;
    };
    switch (e) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case '\n': break;  // line continuation
      case 'x':
        if (!hex_escape(2)) out += "\\x";
        break;
      case 'u':
        if (!hex_escape(4)) out += "\\u";
        break;
      case 'U':
        if (!hex_escape(8)) out += "\\U";
        break;
      default:
        if (e >= '0' && e <= '7') {
          uint32_t v = static_cast<uint32_t>(e - '0');
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k) v = v * 8 + static_cast<uint32_t>(body[++i] - '0');
          unicode::append(out, v);
        } else {
          out += '\\';
          out += e;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string source) : src_(std::move(source)) {}

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < src_.size()) {
      size_t tag = find_tag(pos);
      if (tag == std::string::npos) {
        emit_data(src_.substr(pos), pos);
        break;
      }
      const char kind = src_[tag + 1];  // '{', '%' or '#'
      const char sign = tag + 2 < src_.size() && (src_[tag + 2] == '-' || src_[tag + 2] == '+') ? src_[tag + 2] : 0;
      std::string text = src_.substr(pos, tag - pos);
      if (sign == '-') {
        text = rstrip(text);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: a block or comment tag alone on its line takes the line's indent with it.
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if ((l_pos > 0 || line_starting) && all_space(std::string_view(text).substr(l_pos))) text.resize(l_pos);
      }
      emit_data(text, pos);
      pos = tag + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        pos = comment(pos, tag, &line_starting);
      } else {
        pos = tag_body(pos, tag, kind == '%', &line_starting);
      }
    }
    tokens_.push_back({Token::Kind::eof, "", line_at(src_.size())});
    return std::move(tokens_);
  }

 private:
  int line_at(size_t pos) {
    for (; line_pos_ < pos && line_pos_ < src_.size(); ++line_pos_)
      if (src_[line_pos_] == '\n') ++line_;
    return line_;
  }

  size_t find_tag(size_t pos) const {
    for (size_t i = src_.find('{', pos); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  void emit_data(const std::string& text, size_t pos) {
    if (!text.empty()) tokens_.push_back({Token::Kind::data, text, line_at(pos)});
  }

  // After a tag's end marker: `-` strips all following white space, a plain block end eats one
  // newline (trim_blocks), `+` and variable ends keep everything.
  size_t after_end(size_t pos, char sign, bool block, bool* line_starting) {
    size_t start = pos;
    if (sign == '-') {
      pos = skip_space(src_, pos);
    } else if (block && sign == 0 && pos < src_.size() && src_[pos] == '\n') {
      ++pos;
    }
    *line_starting = pos > start && src_[pos - 1] == '\n';
    return pos;
  }

  size_t comment(size_t pos, size_t tag, bool* line_starting) {
    size_t end = src_.find("#}", pos);
    if (end == std::string::npos) fail(line_at(tag), "comment is not closed with #}");
    char sign = end > pos && (src_[end - 1] == '-' || src_[end - 1] == '+') ? src_[end - 1] : 0;
    return after_end(end + 2, sign, true, line_starting);
  }

  size_t tag_body(size_t pos, size_t tag, bool block, bool* line_starting) {
    tokens_.push_back({block ? Token::Kind::block_begin : Token::Kind::var_begin, "", line_at(tag)});
    int depth = 0;  // open brackets: an end marker inside them is not one
    for (;;) {
      pos = skip_space(src_, pos);
      if (pos >= src_.size()) fail(line_at(tag), std::string("tag is not closed with ") + (block ? "%}" : "}}"));
      if (depth == 0) {
        std::string_view rest = std::string_view(src_).substr(pos);
        const char* end = block ? "%}" : "}}";
        char sign = 0;
        size_t len = 0;
        if (rest.starts_with(end)) {
          len = 2;
        } else if ((rest[0] == '-' || (block && rest[0] == '+')) && rest.substr(1).starts_with(end)) {
          sign = rest[0];
          len = 3;
        }
        if (len) {
          tokens_.push_back({block ? Token::Kind::block_end : Token::Kind::var_end, "", line_at(pos)});
          return after_end(pos + len, sign, block, line_starting);
        }
      }
      pos = token(pos, &depth);
    }
  }

  size_t token(size_t pos, int* depth) {
    const int line = line_at(pos);
    const char c = src_[pos];
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t e = pos;
      while (e < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
      tokens_.push_back({Token::Kind::name, src_.substr(pos, e - pos), line});
      return e;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t e = pos;
      bool is_float = false;
      auto digits = [&] {
        while (e < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
      };
      digits();
      if (e + 1 < src_.size() && src_[e] == '.' && std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
        is_float = true;
        ++e;
        digits();
      }
      if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
        size_t k = e + 1;
        if (k < src_.size() && (src_[k] == '+' || src_[k] == '-')) ++k;
        if (k < src_.size() && std::isdigit(static_cast<unsigned char>(src_[k]))) {
          is_float = true;
          e = k;
          digits();
        }
      }
      std::string text;
      for (size_t k = pos; k < e; ++k)
        if (src_[k] != '_') text += src_[k];
      tokens_.push_back({is_float ? Token::Kind::floating : Token::Kind::integer, text, line});
      return e;
    }
    if (c == '\'' || c == '"') {
      size_t e = pos + 1;
      while (e < src_.size() && src_[e] != c) e += src_[e] == '\\' ? 2 : 1;
      if (e >= src_.size()) fail(line, "string literal is not closed");
      tokens_.push_back({Token::Kind::string, unescape(std::string_view(src_).substr(pos + 1, e - pos - 1)), line});
      return e + 1;
    }
    static constexpr std::string_view two[] = {"//", "**", "==", "!=", ">=", "<="};
    for (std::string_view op : two) {
      if (std::string_view(src_).substr(pos).starts_with(op)) {
        tokens_.push_back({Token::Kind::op, std::string(op), line});
        return pos + 2;
      }
    }
    if (std::string_view("+-/*%~[](){}><=.:|,;").find(c) != std::string_view::npos) {
      if (c == '(' || c == '[' || c == '{') ++*depth;
      if ((c == ')' || c == ']' || c == '}') && *depth > 0) --*depth;
      tokens_.push_back({Token::Kind::op, std::string(1, c), line});
      return pos + 1;
    }
    fail(line, std::string("unexpected character '") + c + "'");
  }

  std::string src_;
  std::vector<Token> tokens_;
  size_t line_pos_ = 0;
  int line_ = 1;
};

// Jinja's newline handling before lexing: \r\n and \r become \n, and one trailing newline goes.
std::string normalize_source(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

std::vector<Token> lex(std::string_view source) { return Lexer(normalize_source(source)).run(); }

}  // namespace troupe::jinja
