// Tokens to the syntax tree of a chat template: the Jinja subset that real chat templates use.
// Statements: if / elif / else, for (with `if` filter, `else`, tuple targets), set (name, namespace
// attribute, tuple, block form), break / continue. Expressions: literals, names, attributes,
// subscripts and slices, calls with keyword arguments, filters, tests, `not` / `and` / `or`,
// comparisons and `in`, arithmetic, `~`, and inline if. Anything else (macro, include, extends,
// raw, unknown filters and tests...) is a TemplateError at load time naming the construct and line.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/jinja_lexer.hpp"
#include "engine/jinja_value.hpp"

namespace troupe::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    literal,    // value
    name,       // name
    list,       // args
    tuple,      // args
    dict,       // args: key, value, key, value...
    attr,       // a.name
    item,       // a[b]
    slice,      // a[b:c:d] (missing parts are null)
    call,       // a(args, kwargs)
    filter,     // a | name(args, kwargs)
    test,       // a is [not] name(args)
    unary,      // op a: "not", "-", "+"
    binary,     // a op b: + - * / // % ** and or
    concat,     // args joined with ~
    compare,    // a (ops[i] args[i])...
    cond,       // b if a else c
  };
  Kind kind;
  int line = 0;
  Value value;
  std::string name;  // name, attribute, filter, test, or operator
  ExprPtr a, b, c;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // compare
  bool negated = false;          // test
};

struct Node;
using Body = std::vector<Node>;

struct Node {
  enum class Kind { text, output, if_, for_, set, set_block, break_, continue_ };
  Kind kind;
  int line = 0;
  std::string text;
  ExprPtr expr;                                 // output; set value; for iterable
  std::vector<std::pair<ExprPtr, Body>> branches;  // if / elif
  Body body, else_body;                         // for; if's else; set block
  std::vector<std::string> targets;             // for / set names
  std::string attr;                             // set ns.attr: targets[0] is ns
  ExprPtr filter;                               // for ... if filter
};

Body parse(const std::vector<Token>& tokens);

}  // namespace troupe::jinja
