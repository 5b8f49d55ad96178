#include "engine/jinja_parser.hpp"

#include <charconv>
#include <set>

#include "engine/jinja_eval.hpp"

namespace troupe::jinja {

namespace {

using K = Token::Kind;

class Parser {
 public:
  explicit Parser(const std::vector<Token>& t) : t_(t) {}

  Body parse_all() {
    Body body = parse_body({});
    if (peek().kind != K::eof) fail(peek().line, "unexpected '" + peek().text + "'");
    return body;
  }

 private:
  [[noreturn]] void fail(int line, const std::string& what) const {
    throw TemplateError("chat template line " + std::to_string(line) + ": " + what);
  }
  const Token& peek(size_t k = 0) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  const Token& next() { return t_[std::min(i_++, t_.size() - 1)]; }
  bool is_op(const char* op, size_t k = 0) const { return peek(k).kind == K::op && peek(k).text == op; }
  bool is_name(const char* n, size_t k = 0) const { return peek(k).kind == K::name && peek(k).text == n; }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(peek().line, std::string("expected '") + op + "', found '" + describe(peek()) + "'");
    ++i_;
  }
  void expect_block_end() {
    if (peek().kind != K::block_end) fail(peek().line, "expected end of statement %}, found '" + describe(peek()) + "'");
    ++i_;
  }
  static std::string describe(const Token& t) {
    switch (t.kind) {
      case K::eof: return "end of template";
      case K::block_end: return "%}";
      case K::var_end: return "}}";
      default: return t.text;
    }
  }
  std::string expect_name() {
    if (peek().kind != K::name) fail(peek().line, "expected a name, found '" + describe(peek()) + "'");
    return next().text;
  }

  // Statements until one of `stops` (a block whose first name is in the set), which is left unread
  // after its block_begin has been consumed.
  Body parse_body(const std::set<std::string>& stops) {
    Body body;
    for (;;) {
      const Token& t = peek();
      if (t.kind == K::eof) {
        for (const std::string& s : stops)
          if (s.starts_with("end")) fail(t.line, "template ended inside a block: missing {% " + s + " %}");
        return body;
      }
      if (t.kind == K::data) {
        body.push_back(Node{Node::Kind::text, t.line, t.text});
        ++i_;
        continue;
      }
      if (t.kind == K::var_begin) {
        ++i_;
        Node n{Node::Kind::output, t.line};
        n.expr = parse_tuple_or_expr();
        if (peek().kind != K::var_end) fail(peek().line, "expected }}, found '" + describe(peek()) + "'");
        ++i_;
        body.push_back(std::move(n));
        continue;
      }
      if (t.kind != K::block_begin) fail(t.line, "unexpected '" + describe(t) + "'");
      if (peek(1).kind == K::name && stops.count(peek(1).text)) {
        ++i_;
        return body;
      }
      ++i_;
      body.push_back(parse_statement());
    }
  }

  Node parse_statement() {
    const Token& t = peek();
    if (t.kind != K::name) fail(t.line, "expected a statement name, found '" + describe(t) + "'");
    const std::string kw = next().text;
    if (kw == "if") return parse_if(t.line);
    if (kw == "for") return parse_for(t.line);
    if (kw == "set") return parse_set(t.line);
    if (kw == "break" || kw == "continue") {
      expect_block_end();
      return Node{kw == "break" ? Node::Kind::break_ : Node::Kind::continue_, t.line};
    }
    static const std::set<std::string> closers = {"endif", "endfor", "endset", "elif", "else", "endmacro"};
    if (closers.count(kw)) fail(t.line, "unexpected {% " + kw + " %}");
    fail(t.line, "unsupported construct {% " + kw + " %}");
  }

  Node parse_if(int line) {
    Node n{Node::Kind::if_, line};
    ExprPtr cond = parse_tuple_or_expr();
    expect_block_end();
    for (;;) {
      Body body = parse_body({"elif", "else", "endif"});
      n.branches.emplace_back(std::move(cond), std::move(body));
      std::string kw = next().text;
      if (kw == "elif") {
        cond = parse_tuple_or_expr();
        expect_block_end();
        continue;
      }
      if (kw == "else") {
        expect_block_end();
        n.else_body = parse_body({"endif"});
        ++i_;
      }
      expect_block_end();
      return n;
    }
  }

  Node parse_for(int line) {
    Node n{Node::Kind::for_, line};
    n.targets.push_back(expect_name());
    while (is_op(",")) {
      ++i_;
      n.targets.push_back(expect_name());
    }
    if (!is_name("in")) fail(peek().line, "expected 'in' in for loop");
    ++i_;
    n.expr = parse_expr(false);
    if (is_name("if")) {
      ++i_;
      n.filter = parse_expr(false);
    }
    if (is_name("recursive")) fail(peek().line, "unsupported construct: recursive for loop");
    expect_block_end();
    n.body = parse_body({"else", "endfor"});
    if (next().text == "else") {
      expect_block_end();
      n.else_body = parse_body({"endfor"});
      ++i_;
    }
    expect_block_end();
    return n;
  }

  Node parse_set(int line) {
    Node n{Node::Kind::set, line};
    n.targets.push_back(expect_name());
    if (is_op(".")) {
      ++i_;
      n.attr = expect_name();
    } else {
      while (is_op(",")) {
        ++i_;
        n.targets.push_back(expect_name());
      }
    }
    if (peek().kind == K::block_end && n.attr.empty() && n.targets.size() == 1) {
      ++i_;
      n.kind = Node::Kind::set_block;
      n.body = parse_body({"endset"});
      ++i_;
      expect_block_end();
      return n;
    }
    expect_op("=");
    n.expr = parse_tuple_or_expr();
    expect_block_end();
    return n;
  }

  ExprPtr make(Expr::Kind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }

  // `a, b` without brackets makes a tuple (as in `{% set x = a, b %}`).
  ExprPtr parse_tuple_or_expr() {
    int line = peek().line;
    ExprPtr first = parse_expr(true);
    if (!is_op(",")) return first;
    auto t = make(Expr::Kind::tuple, line);
    t->args.push_back(std::move(first));
    while (is_op(",")) {
      ++i_;
      if (peek().kind == K::block_end || peek().kind == K::var_end) break;
      t->args.push_back(parse_expr(true));
    }
    return t;
  }

  ExprPtr parse_expr(bool with_condexpr) {
    ExprPtr e = parse_or();
    if (!with_condexpr) return e;
    while (is_name("if")) {
      int line = next().line;
      auto c = make(Expr::Kind::cond, line);
      c->b = std::move(e);
      c->a = parse_or();
      if (is_name("else")) {
        ++i_;
        c->c = parse_expr(true);
      }
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(const char* op, ExprPtr l, ExprPtr r, int line) {
    auto b = make(Expr::Kind::binary, line);
    b->name = op;
    b->a = std::move(l);
    b->b = std::move(r);
    return b;
  }

  ExprPtr parse_or() {
    ExprPtr l = parse_and();
    while (is_name("or")) {
      int line = next().line;
      l = binary("or", std::move(l), parse_and(), line);
    }
    return l;
  }
  ExprPtr parse_and() {
    ExprPtr l = parse_not();
    while (is_name("and")) {
      int line = next().line;
      l = binary("and", std::move(l), parse_not(), line);
    }
    return l;
  }
  ExprPtr parse_not() {
    if (is_name("not")) {
      int line = next().line;
      auto u = make(Expr::Kind::unary, line);
      u->name = "not";
      u->a = parse_not();
      return u;
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    int line = peek().line;
    ExprPtr l = parse_math1();
    ExprPtr cmp;
    for (;;) {
      std::string op;
      if (peek().kind == K::op && (peek().text == "==" || peek().text == "!=" || peek().text == "<" || peek().text == ">" ||
                                    peek().text == "<=" || peek().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        ++i_;
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        i_ += 2;
        op = "notin";
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Kind::compare, line);
        cmp->a = std::move(l);
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(l);
  }
  ExprPtr parse_math1() {
    ExprPtr l = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      l = binary(t.text == "+" ? "+" : "-", std::move(l), parse_concat(), t.line);
    }
    return l;
  }
  ExprPtr parse_concat() {
    int line = peek().line;
    ExprPtr l = parse_math2();
    if (!is_op("~")) return l;
    auto c = make(Expr::Kind::concat, line);
    c->args.push_back(std::move(l));
    while (is_op("~")) {
      ++i_;
      c->args.push_back(parse_math2());
    }
    return c;
  }
  ExprPtr parse_math2() {
    ExprPtr l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      static const char* ops[] = {"*", "/", "//", "%"};
      const char* op = "*";
      for (const char* o : ops)
        if (t.text == o) op = o;
      l = binary(op, std::move(l), parse_pow(), t.line);
    }
    return l;
  }
  ExprPtr parse_pow() {
    ExprPtr l = parse_unary(true);
    while (is_op("**")) {
      int line = next().line;
      l = binary("**", std::move(l), parse_unary(true), line);
    }
    return l;
  }
  ExprPtr parse_unary(bool with_filter) {
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token& t = next();
      e = make(Expr::Kind::unary, t.line);
      e->name = t.text;
      e->a = parse_unary(false);
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filters(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = next();
    switch (t.kind) {
      case K::name: {
        if (t.text == "true" || t.text == "True") return literal(Value(true), t.line);
        if (t.text == "false" || t.text == "False") return literal(Value(false), t.line);
        if (t.text == "none" || t.text == "None") return literal(Value::none(), t.line);
        auto n = make(Expr::Kind::name, t.line);
        n->name = t.text;
        return n;
      }
      case K::string: {
        std::string s = t.text;
        while (peek().kind == K::string) s += next().text;  // adjacent literals concatenate
        return literal(Value(s), t.line);
      }
      case K::integer: {
        int64_t v = 0;
        auto r = std::from_chars(t.text.data(), t.text.data() + t.text.size(), v);
        if (r.ec != std::errc()) fail(t.line, "integer literal out of range");
        return literal(Value(v), t.line);
      }
      case K::floating: return literal(Value(std::stod(t.text)), t.line);
      case K::op:
        if (t.text == "(") {
          if (is_op(")")) {
            ++i_;
            return make(Expr::Kind::tuple, t.line);
          }
          ExprPtr e = parse_expr(true);
          if (is_op(",")) {
            auto tup = make(Expr::Kind::tuple, t.line);
            tup->args.push_back(std::move(e));
            while (is_op(",")) {
              ++i_;
              if (is_op(")")) break;
              tup->args.push_back(parse_expr(true));
            }
            e = std::move(tup);
          }
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          auto l = make(Expr::Kind::list, t.line);
          while (!is_op("]")) {
            l->args.push_back(parse_expr(true));
            if (!is_op(",")) break;
            ++i_;
          }
          expect_op("]");
          return l;
        }
        if (t.text == "{") {
          auto d = make(Expr::Kind::dict, t.line);
          while (!is_op("}")) {
            d->args.push_back(parse_expr(true));
            expect_op(":");
            d->args.push_back(parse_expr(true));
            if (!is_op(",")) break;
            ++i_;
          }
          expect_op("}");
          return d;
        }
        break;
      default: break;
    }
    fail(t.line, "unexpected '" + describe(t) + "' in expression");
  }

  ExprPtr literal(Value v, int line) {
    auto e = make(Expr::Kind::literal, line);
    e->value = std::move(v);
    return e;
  }

  void parse_call_args(Expr& e) {
    // Just after "(".
    while (!is_op(")")) {
      if (peek().kind == K::name && is_op("=", 1)) {
        std::string key = next().text;
        ++i_;
        e.kwargs.emplace_back(key, parse_expr(true));
      } else {
        if (!e.kwargs.empty()) fail(peek().line, "positional argument after keyword argument");
        e.args.push_back(parse_expr(true));
      }
      if (!is_op(",")) break;
      ++i_;
    }
    expect_op(")");
  }

  ExprPtr parse_postfix(ExprPtr e) {
    for (;;) {
      if (is_op(".")) {
        int line = next().line;
        auto a = make(Expr::Kind::attr, line);
        if (peek().kind == K::integer) {
          a->kind = Expr::Kind::item;
          a->b = literal(Value(static_cast<int64_t>(std::stoll(next().text))), line);
        } else {
          a->name = expect_name();
        }
        a->a = std::move(e);
        e = std::move(a);
      } else if (is_op("[")) {
        int line = next().line;
        ExprPtr parts[3];
        int n = 0;
        bool is_slice = false;
        for (;;) {
          if (is_op(":")) {
            is_slice = true;
            ++i_;
            if (++n > 2) fail(line, "too many ':' in slice");
            continue;
          }
          if (is_op("]")) break;
          parts[n] = parse_expr(true);
          if (!is_op(":") && !is_op("]")) fail(peek().line, "expected ']' after subscript");
        }
        expect_op("]");
        auto s = make(is_slice ? Expr::Kind::slice : Expr::Kind::item, line);
        s->a = std::move(e);
        if (is_slice) {
          s->args.resize(3);
          for (int k = 0; k < 3; ++k) s->args[static_cast<size_t>(k)] = std::move(parts[k]);
        } else {
          if (!parts[0]) fail(line, "empty subscript");
          s->b = std::move(parts[0]);
        }
        e = std::move(s);
      } else if (is_op("(")) {
        int line = next().line;
        auto c = make(Expr::Kind::call, line);
        c->a = std::move(e);
        parse_call_args(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_filters(ExprPtr e) {
    for (;;) {
      if (is_op("|")) {
        int line = next().line;
        auto f = make(Expr::Kind::filter, line);
        f->name = expect_name();
        if (!known_filter(f->name)) fail(line, "unsupported filter '" + f->name + "'");
        f->a = std::move(e);
        if (is_op("(")) {
          ++i_;
          parse_call_args(*f);
        }
        e = std::move(f);
      } else if (is_name("is")) {
        int line = next().line;
        auto t = make(Expr::Kind::test, line);
        if (is_name("not")) {
          ++i_;
          t->negated = true;
        }
        if (peek().kind == K::name) {
          t->name = next().text;
        } else if (peek().kind == K::op && (peek().text == "==" || peek().text == "!=" || peek().text == "<" || peek().text == ">" ||
                                            peek().text == "<=" || peek().text == ">=")) {
          t->name = next().text;
        } else {
          fail(line, "expected a test name after 'is'");
        }
        if (!known_test(t->name)) fail(line, "unsupported test '" + t->name + "'");
        t->a = std::move(e);
        if (is_op("(")) {
          ++i_;
          parse_call_args(*t);
        } else if (peek().kind == K::string || peek().kind == K::integer || peek().kind == K::floating ||
                   (peek().kind == K::name && !is_name("and") && !is_name("or") && !is_name("else") && !is_name("if") &&
                    !is_name("in") && !is_name("not") && !is_name("is"))) {
          // `x is divisibleby 3`, `x is sameas none`: one argument without parentheses.
          t->args.push_back(parse_primary());
        }
        e = std::move(t);
      } else {
        return e;
      }
    }
  }

  const std::vector<Token>& t_;
  size_t i_ = 0;
};

}  // namespace

Body parse(const std::vector<Token>& tokens) { return Parser(tokens).parse_all(); }

}  // namespace troupe::jinja
