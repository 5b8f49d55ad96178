#include "engine/jinja_builtins.hpp"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <set>

#include "engine/unicode.hpp"

namespace troupe::jinja {

namespace {

const char* type_name(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::undefined: return "Undefined";
    case Value::Kind::none: return "NoneType";
    case Value::Kind::boolean: return "bool";
    case Value::Kind::integer: return "int";
    case Value::Kind::floating: return "float";
    case Value::Kind::string: return "str";
    case Value::Kind::list: return "list";
    case Value::Kind::tuple: return "tuple";
    case Value::Kind::dict: return "dict";
    case Value::Kind::ns: return "Namespace";
    case Value::Kind::function: return "function";
  }
  return "object";
}

[[noreturn]] void undefined_error(const Value& v) {
  if (v.undefined_name().empty()) throw TemplateError("undefined value used");
  throw TemplateError("'" + v.undefined_name() + "' is undefined");
}

void require_defined(const Value& v) {
  if (v.is_undefined()) undefined_error(v);
}

std::u32string cps(const std::string& s) { return unicode::to_u32(s); }
std::string utf8(std::u32string_view s) { return unicode::to_utf8(s); }

bool is_int_like(const Value& v) { return v.kind() == Value::Kind::integer || v.kind() == Value::Kind::boolean; }

int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

std::string python_strip(const std::string& s, const Value& chars, bool left, bool right) {
  std::u32string c = cps(s);
  std::u32string set;
  bool whitespace = chars.is_undefined() || chars.is_none();
  if (!whitespace) {
    if (!chars.is_string()) throw TemplateError("strip arg must be None or str");
    set = cps(chars.str());
  }
  auto strip_it = [&](char32_t ch) { return whitespace ? unicode::is_python_space(ch) : set.find(ch) != std::u32string::npos; };
  size_t b = 0, e = c.size();
  if (left)
    while (b < e && strip_it(c[b])) ++b;
  if (right)
    while (e > b && strip_it(c[e - 1])) --e;
  return utf8(std::u32string_view(c).substr(b, e - b));
}

Value python_split(const std::string& s, const Value& sep, int64_t maxsplit) {
  List out;
  if (sep.is_undefined() || sep.is_none()) {
    std::u32string c = cps(s);
    size_t i = 0;
    while (i < c.size()) {
      while (i < c.size() && unicode::is_python_space(c[i])) ++i;
      if (i >= c.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        size_t e = c.size();
        while (e > i && unicode::is_python_space(c[e - 1])) --e;
        out.emplace_back(utf8(std::u32string_view(c).substr(i, e - i)));
        break;
      }
      size_t j = i;
      while (j < c.size() && !unicode::is_python_space(c[j])) ++j;
      out.emplace_back(utf8(std::u32string_view(c).substr(i, j - i)));
      i = j;
    }
    return Value::list(std::move(out));
  }
  if (!sep.is_string()) throw TemplateError("split: separator must be a str");
  const std::string& d = sep.str();
  if (d.empty()) throw TemplateError("split: empty separator");
  size_t pos = 0;
  for (;;) {
    size_t at = s.find(d, pos);
    if (at == std::string::npos || (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit)) {
      out.emplace_back(s.substr(pos));
      break;
    }
    out.emplace_back(s.substr(pos, at - pos));
    pos = at + d.size();
  }
  return Value::list(std::move(out));
}

std::string python_replace(const std::string& s, const std::string& old, const std::string& with, int64_t count) {
  std::string out;
  if (old.empty()) {
    // Python inserts `with` before every character and at the end.
    std::u32string c = cps(s);
    int64_t n = 0;
    for (char32_t ch : c) {
      if (count < 0 || n < count) {
        out += with;
        ++n;
      }
      unicode::append(out, ch);
    }
    if (count < 0 || n < count) out += with;
    return out;
  }
  size_t pos = 0;
  int64_t n = 0;
  for (size_t at = s.find(old); at != std::string::npos && (count < 0 || n < count); at = s.find(old, pos), ++n) {
    out.append(s, pos, at - pos);
    out += with;
    pos = at + old.size();
  }
  out.append(s, pos);
  return out;
}

std::string python_capitalize(const std::string& s) {
  std::u32string c = cps(s);
  if (c.empty()) return s;
  std::string first;
  unicode::append(first, c[0]);
  return unicode::to_upper(first) + unicode::to_lower(utf8(std::u32string_view(c).substr(1)));
}

std::string python_title(const std::string& s) {
  std::u32string c = cps(s);
  std::string out;
  bool prev_cased = false;
  for (char32_t ch : c) {
    std::string one;
    unicode::append(one, ch);
    bool cased = unicode::is_letter(ch);
    out += cased ? (prev_cased ? unicode::to_lower(one) : unicode::to_upper(one)) : one;
    prev_cased = cased;
  }
  return out;
}

int64_t arg_int(const Value& v, const char* what) {
  if (!is_int_like(v)) throw TemplateError(std::string(what) + " must be an integer");
  return v.as_int();
}

Value bind(const Value& self, Function f) {
  (void)self;
  return Value::function(std::move(f));
}

void no_kwargs(const Kwargs& kw, const char* fn) {
  if (!kw.items.empty()) throw TemplateError(std::string(fn) + "() got an unexpected keyword argument '" + kw.items[0].first + "'");
}

Value arg(std::vector<Value>& args, Kwargs& kw, size_t i, const char* name, Value fallback = Value()) {
  if (i < args.size()) return args[i];
  return kw.take(name, std::move(fallback));
}

Value string_method(const Value& self, const std::string& name) {
  const std::string s = self.str();
  if (name == "startswith" || name == "endswith") {
    bool starts = name == "startswith";
    return bind(self, [s, starts](std::vector<Value>& args, Kwargs& kw) -> Value {
      no_kwargs(kw, starts ? "startswith" : "endswith");
      if (args.size() != 1) throw TemplateError("startswith/endswith take one argument");
      std::vector<Value> options = args[0].kind() == Value::Kind::tuple ? args[0].items() : std::vector<Value>{args[0]};
      for (const Value& o : options) {
        if (!o.is_string()) throw TemplateError("startswith/endswith argument must be str or a tuple of str");
        if (starts ? std::string_view(s).starts_with(o.str()) : std::string_view(s).ends_with(o.str())) return Value(true);
      }
      return Value(false);
    });
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    bool l = name != "rstrip", r = name != "lstrip";
    return bind(self, [s, l, r](std::vector<Value>& args, Kwargs& kw) -> Value {
      Value chars = arg(args, kw, 0, "chars");
      return Value(python_strip(s, chars, l, r));
    });
  }
  if (name == "split") {
    return bind(self, [s](std::vector<Value>& args, Kwargs& kw) -> Value {
      Value sep = arg(args, kw, 0, "sep");
      Value max = arg(args, kw, 1, "maxsplit", Value(int64_t{-1}));
      return python_split(s, sep, arg_int(max, "maxsplit"));
    });
  }
  if (name == "upper") return bind(self, [s](std::vector<Value>&, Kwargs&) -> Value { return Value(unicode::to_upper(s)); });
  if (name == "lower") return bind(self, [s](std::vector<Value>&, Kwargs&) -> Value { return Value(unicode::to_lower(s)); });
  if (name == "title") return bind(self, [s](std::vector<Value>&, Kwargs&) -> Value { return Value(python_title(s)); });
  if (name == "capitalize") return bind(self, [s](std::vector<Value>&, Kwargs&) -> Value { return Value(python_capitalize(s)); });
  if (name == "replace") {
    return bind(self, [s](std::vector<Value>& args, Kwargs& kw) -> Value {
      Value old = arg(args, kw, 0, "old"), with = arg(args, kw, 1, "new"), count = arg(args, kw, 2, "count", Value(int64_t{-1}));
      if (!old.is_string() || !with.is_string()) throw TemplateError("replace() arguments must be str");
      return Value(python_replace(s, old.str(), with.str(), arg_int(count, "count")));
    });
  }
  if (name == "find" || name == "count") {
    bool find = name == "find";
    return bind(self, [s, find](std::vector<Value>& args, Kwargs& kw) -> Value {
      no_kwargs(kw, find ? "find" : "count");
      if (args.size() != 1 || !args[0].is_string()) throw TemplateError("find()/count() take one str argument");
      const std::string& sub = args[0].str();
      if (find) {
        size_t at = s.find(sub);
        return Value(at == std::string::npos ? int64_t{-1} : static_cast<int64_t>(cps(s.substr(0, at)).size()));
      }
      if (sub.empty()) return Value(static_cast<int64_t>(cps(s).size() + 1));
      int64_t n = 0;
      for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
      return Value(n);
    });
  }
  if (name == "join") {
    return bind(self, [s](std::vector<Value>& args, Kwargs& kw) -> Value {
      no_kwargs(kw, "join");
      if (args.size() != 1) throw TemplateError("join() takes one argument");
      std::string out;
      bool first = true;
      for (const Value& x : iterate(args[0])) {
        if (!x.is_string()) throw TemplateError("join(): sequence item must be str, not " + std::string(type_name(x)));
        if (!first) out += s;
        first = false;
        out += x.str();
      }
      return Value(out);
    });
  }
  if (name == "isdigit" || name == "isalpha" || name == "isspace" || name == "isalnum" || name == "islower" || name == "isupper") {
    return bind(self, [s, name](std::vector<Value>&, Kwargs&) -> Value {
      std::u32string c = cps(s);
      if (name == "islower" || name == "isupper") {
        bool lower = name == "islower";
        std::string other = lower ? unicode::to_upper(s) : unicode::to_lower(s);
        return Value(other != s && (lower ? unicode::to_lower(s) : unicode::to_upper(s)) == s);
      }
      if (c.empty()) return Value(false);
      for (char32_t ch : c) {
        bool ok = name == "isdigit"   ? unicode::is_number(ch)
                  : name == "isalpha" ? unicode::is_letter(ch)
                  : name == "isspace" ? unicode::is_python_space(ch)
                                      : unicode::is_letter(ch) || unicode::is_number(ch);
        if (!ok) return Value(false);
      }
      return Value(true);
    });
  }
  return Value::undefined(name);
}

Value dict_method(const Value& self, const std::string& name) {
  if (name == "items" || name == "keys" || name == "values") {
    return bind(self, [self, name](std::vector<Value>&, Kwargs&) -> Value {
      List out;
      for (const auto& [k, v] : self.dict_ref().entries) {
        if (name == "items") {
          out.push_back(Value::tuple({k, v}));
        } else {
          out.push_back(name == "keys" ? k : v);
        }
      }
      return Value::list(std::move(out));
    });
  }
  if (name == "get") {
    return bind(self, [self](std::vector<Value>& args, Kwargs& kw) -> Value {
      no_kwargs(kw, "get");
      if (args.empty() || args.size() > 2) throw TemplateError("get() takes one or two arguments");
      Value* v = self.dict_ref().find(args[0]);
      if (v) return *v;
      return args.size() == 2 ? args[1] : Value::none();
    });
  }
  return Value();
}

Value index_into(const Value& seq, int64_t i) {
  if (seq.is_string()) {
    std::u32string c = cps(seq.str());
    int64_t n = static_cast<int64_t>(c.size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value::undefined();
    return Value(utf8(std::u32string_view(c).substr(static_cast<size_t>(i), 1)));
  }
  const List& items = seq.items();
  int64_t n = static_cast<int64_t>(items.size());
  if (i < 0) i += n;
  if (i < 0 || i >= n) return Value::undefined();
  return items[static_cast<size_t>(i)];
}

std::string format_percent(const std::string& fmt, const Value& args) {
  std::vector<Value> values = args.kind() == Value::Kind::tuple ? args.items() : std::vector<Value>{args};
  std::string out;
  size_t k = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size()) throw TemplateError("incomplete format");
    char c = fmt[i];
    if (c == '%') {
      out += '%';
      continue;
    }
    if (k >= values.size()) throw TemplateError("not enough arguments for format string");
    const Value& v = values[k++];
    if (c == 's') {
      out += v.to_str();
    } else if (c == 'r') {
      out += v.repr();
    } else if (c == 'd' || c == 'i') {
      if (!v.is_number()) throw TemplateError("%d format: a number is required");
      out += std::to_string(v.kind() == Value::Kind::floating ? static_cast<int64_t>(std::trunc(v.as_double())) : v.as_int());
    } else {
      throw TemplateError(std::string("unsupported format character '") + c + "'");
    }
  }
  if (k < values.size()) throw TemplateError("not all arguments converted during string formatting");
  return out;
}

}  // namespace

Value negate(const Value& v) {
  require_defined(v);
  if (v.kind() == Value::Kind::floating) return Value(-v.as_double());
  if (is_int_like(v)) return Value(-v.as_int());
  throw TemplateError(std::string("bad operand type for unary -: '") + type_name(v) + "'");
}

Value binary_op(std::string_view op, const Value& a, const Value& b) {
  require_defined(a);
  require_defined(b);
  const bool numbers = a.is_number() && b.is_number();
  const bool floats = numbers && (a.kind() == Value::Kind::floating || b.kind() == Value::Kind::floating);
  auto bad = [&]() -> Value {
    throw TemplateError("unsupported operand type(s) for " + std::string(op) + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
  };
  if (op == "+") {
    if (numbers) return floats ? Value(a.as_double() + b.as_double()) : Value(a.as_int() + b.as_int());
    if (a.is_string() && b.is_string()) return Value(a.str() + b.str());
    if (a.kind() == b.kind() && a.is_sequence()) {
      List out = a.items();
      out.insert(out.end(), b.items().begin(), b.items().end());
      return a.kind() == Value::Kind::tuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
    }
    return bad();
  }
  if (op == "-") {
    if (numbers) return floats ? Value(a.as_double() - b.as_double()) : Value(a.as_int() - b.as_int());
    return bad();
  }
  if (op == "*") {
    if (numbers) return floats ? Value(a.as_double() * b.as_double()) : Value(a.as_int() * b.as_int());
    const Value* seq = is_int_like(b) ? &a : is_int_like(a) ? &b : nullptr;
    const Value* n = seq == &a ? &b : &a;
    if (seq && seq->is_string()) {
      std::string out;
      for (int64_t i = 0; i < n->as_int(); ++i) out += seq->str();
      return Value(out);
    }
    if (seq && seq->is_sequence()) {
      List out;
      for (int64_t i = 0; i < n->as_int(); ++i) out.insert(out.end(), seq->items().begin(), seq->items().end());
      return seq->kind() == Value::Kind::tuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
    }
    return bad();
  }
  if (op == "/") {
    if (!numbers) return bad();
    if (b.as_double() == 0) throw TemplateError("division by zero");
    return Value(a.as_double() / b.as_double());
  }
  if (op == "//") {
    if (!numbers) return bad();
    if (b.as_double() == 0) throw TemplateError("integer division or modulo by zero");
    if (floats) return Value(std::floor(a.as_double() / b.as_double()));
    return Value(floor_div(a.as_int(), b.as_int()));
  }
  if (op == "%") {
    if (a.is_string()) return Value(format_percent(a.str(), b));
    if (!numbers) return bad();
    if (b.as_double() == 0) throw TemplateError("integer division or modulo by zero");
    if (floats) {
      double r = std::fmod(a.as_double(), b.as_double());
      if (r != 0 && ((r < 0) != (b.as_double() < 0))) r += b.as_double();
      return Value(r);
    }
    return Value(a.as_int() - floor_div(a.as_int(), b.as_int()) * b.as_int());
  }
  if (op == "**") {
    if (!numbers) return bad();
    if (!floats && b.as_int() >= 0) {
      int64_t r = 1;
      for (int64_t i = 0; i < b.as_int(); ++i) r *= a.as_int();
      return Value(r);
    }
    return Value(std::pow(a.as_double(), b.as_double()));
  }
  throw TemplateError("unknown operator " + std::string(op));
}

namespace {

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::undefined: return false;
    case Value::Kind::string:
      if (!item.is_string()) throw TemplateError("'in <string>' requires string as left operand, not " + std::string(type_name(item)));
      return container.str().find(item.str()) != std::string::npos;
    case Value::Kind::list:
    case Value::Kind::tuple:
      for (const Value& x : container.items())
        if (x.equals(item)) return true;
      return false;
    case Value::Kind::dict: return container.dict_ref().find(item) != nullptr;
    default: throw TemplateError(std::string("argument of type '") + type_name(container) + "' is not iterable");
  }
}

// -1, 0, 1 for a < b, a == b, a > b; TypeError where Python has no order.
int order(const Value& a, const Value& b, std::string_view op) {
  if (a.is_number() && b.is_number()) {
    double x = a.as_double(), y = b.as_double();
    if (is_int_like(a) && is_int_like(b)) return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int();
    return x < y ? -1 : x > y;
  }
  if (a.is_string() && b.is_string()) return a.str() < b.str() ? -1 : a.str() > b.str();  // UTF-8 order is code point order
  if (a.is_sequence() && a.kind() == b.kind()) {
    const List &l = a.items(), &r = b.items();
    for (size_t i = 0; i < l.size() && i < r.size(); ++i) {
      if (!l[i].equals(r[i])) return order(l[i], r[i], op);
    }
    return l.size() < r.size() ? -1 : l.size() > r.size();
  }
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  throw TemplateError("'" + std::string(op) + "' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) + "'");
}

}  // namespace

bool compare(std::string_view op, const Value& a, const Value& b) {
  if (op == "==") return a.equals(b);
  if (op == "!=") return !a.equals(b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  int o = order(a, b, op);
  if (op == "<") return o < 0;
  if (op == ">") return o > 0;
  if (op == "<=") return o <= 0;
  if (op == ">=") return o >= 0;
  throw TemplateError("unknown comparison " + std::string(op));
}

Value get_attr(const Value& obj, const std::string& name) {
  require_defined(obj);
  switch (obj.kind()) {
    case Value::Kind::string: return string_method(obj, name);
    case Value::Kind::dict: {
      // Like Python's getattr first: a dict's methods shadow keys of the same name.
      Value m = dict_method(obj, name);
      if (!m.is_undefined()) return m;
      if (Value* v = obj.find(name)) return *v;
      return Value::undefined(name);
    }
    case Value::Kind::ns:
      if (Value* v = obj.find(name)) return *v;
      return Value::undefined(name);
    default: return Value::undefined(name);
  }
}

Value get_item(const Value& obj, const Value& key) {
  require_defined(obj);
  if ((obj.is_string() || obj.is_sequence()) && is_int_like(key)) return index_into(obj, key.as_int());
  if (obj.is_dict_like()) {
    if (Value* v = obj.dict_ref().find(key)) return *v;
  }
  if (key.is_string()) {
    Value a = get_attr(obj, key.str());
    if (!a.is_undefined()) return a;
    return Value::undefined(key.str());
  }
  return Value::undefined();
}

Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  require_defined(obj);
  if (!obj.is_string() && !obj.is_sequence()) throw TemplateError(std::string("'") + type_name(obj) + "' object is not subscriptable");
  std::u32string chars;
  int64_t n;
  if (obj.is_string()) {
    chars = cps(obj.str());
    n = static_cast<int64_t>(chars.size());
  } else {
    n = static_cast<int64_t>(obj.items().size());
  }
  auto given = [](const Value& v) { return !v.is_undefined() && !v.is_none(); };
  int64_t st = given(step) ? arg_int(step, "slice step") : 1;
  if (st == 0) throw TemplateError("slice step cannot be zero");
  // Python's PySlice_AdjustIndices.
  auto adjust = [&](const Value& v, int64_t dflt) {
    if (!given(v)) return dflt;
    int64_t i = arg_int(v, "slice index");
    if (i < 0) {
      i += n;
      if (i < 0) i = st < 0 ? -1 : 0;
    } else if (i >= n) {
      i = st < 0 ? n - 1 : n;
    }
    return i;
  };
  int64_t b = adjust(start, st < 0 ? n - 1 : 0), e = adjust(stop, st < 0 ? -1 : n);
  std::vector<size_t> picks;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) picks.push_back(static_cast<size_t>(i));
  if (obj.is_string()) {
    std::u32string out;
    for (size_t p : picks) out += chars[p];
    return Value(utf8(out));
  }
  List out;
  for (size_t p : picks) out.push_back(obj.items()[p]);
  return obj.kind() == Value::Kind::tuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
}

std::vector<Value> iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::undefined: return {};
    case Value::Kind::list:
    case Value::Kind::tuple: return v.items();
    case Value::Kind::dict: {
      std::vector<Value> keys;
      for (const auto& [k, x] : v.dict_ref().entries) keys.push_back(k);
      return keys;
    }
    case Value::Kind::string: {
      std::vector<Value> out;
      for (char32_t c : cps(v.str())) {
        std::string s;
        unicode::append(s, c);
        out.emplace_back(s);
      }
      return out;
    }
    default: throw TemplateError(std::string("'") + type_name(v) + "' object is not iterable");
  }
}

namespace {

const std::set<std::string, std::less<>>& filter_names() {
  static const std::set<std::string, std::less<>> names = {
      "abs",    "capitalize", "count", "d",     "default", "e",      "escape",     "first", "float", "int",
      "items",  "join",       "last",  "length", "list",   "lower",  "map",        "reject", "rejectattr", "replace",
      "reverse", "safe",      "select", "selectattr", "sort", "string", "title", "tojson", "trim", "unique", "upper"};
  return names;
}

const std::set<std::string, std::less<>>& test_names() {
  static const std::set<std::string, std::less<>> names = {
      "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "even", "false", "float", "ge", "gt",
      "in",      "integer",  "iterable", "le", "lower", "lt", "mapping", "ne", "none", "number", "odd",
      "sameas",  "sequence", "string",  "true", "undefined", "upper", "==", "!=", "<", ">", "<=", ">="};
  return names;
}

// Jinja's attribute lookup for filters: "a.b" walks, integers index.
Value attribute_path(const Value& v, const Value& attribute) {
  if (is_int_like(attribute)) return get_item(v, attribute);
  Value cur = v;
  std::string path = attribute.to_str();
  size_t pos = 0;
  for (;;) {
    size_t dot = path.find('.', pos);
    std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = digits ? get_item(cur, Value(static_cast<int64_t>(std::stoll(part)))) : get_item(cur, Value(part));
    if (dot == std::string::npos) return cur;
    pos = dot + 1;
  }
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::vector<Value> select(const std::vector<Value>& items, bool by_attr, bool keep, std::vector<Value>& args) {
  std::vector<Value> out;
  size_t first_test_arg = by_attr ? 1 : 0;
  if (by_attr && args.empty()) throw TemplateError("selectattr/rejectattr need an attribute");
  for (const Value& x : items) {
    Value subject = by_attr ? attribute_path(x, args[0]) : x;
    bool ok;
    if (args.size() > first_test_arg) {
      if (!args[first_test_arg].is_string()) throw TemplateError("select: test name must be a string");
      std::vector<Value> test_args(args.begin() + static_cast<ptrdiff_t>(first_test_arg) + 1, args.end());
      ok = apply_test(args[first_test_arg].str(), subject, test_args);
    } else {
      ok = subject.truthy();
    }
    if (ok == keep) out.push_back(x);
  }
  return out;
}

}  // namespace

bool is_filter(std::string_view name) { return filter_names().count(name) > 0; }
bool is_test(std::string_view name) { return test_names().count(name) > 0; }

Value apply_filter(std::string_view name, const Value& v, std::vector<Value>& args, Kwargs& kw) {
  if (name == "length" || name == "count") {
    switch (v.kind()) {
      case Value::Kind::undefined: return Value(int64_t{0});
      case Value::Kind::string: return Value(static_cast<int64_t>(cps(v.str()).size()));
      case Value::Kind::list:
      case Value::Kind::tuple: return Value(static_cast<int64_t>(v.items().size()));
      case Value::Kind::dict:
      case Value::Kind::ns: return Value(static_cast<int64_t>(v.dict_ref().entries.size()));
      default: throw TemplateError(std::string("object of type '") + type_name(v) + "' has no len()");
    }
  }
  if (name == "trim") return Value(python_strip(v.to_str(), arg(args, kw, 0, "chars"), true, true));
  if (name == "tojson") {
    Value ensure_ascii = arg(args, kw, 0, "ensure_ascii", Value(false));
    Value indent = arg(args, kw, 1, "indent", Value::none());
    Value separators = arg(args, kw, 2, "separators", Value::none());
    Value sort_keys = arg(args, kw, 3, "sort_keys", Value(false));
    no_kwargs(kw, "tojson");
    if (ensure_ascii.truthy() || sort_keys.truthy()) throw TemplateError("tojson: ensure_ascii and sort_keys are not supported");
    int ind = -1;
    if (!indent.is_none()) ind = static_cast<int>(arg_int(indent, "tojson indent"));
    std::string item = ind >= 0 ? "," : ", ", key = ": ";
    if (!separators.is_none()) {
      if (!separators.is_sequence() || separators.items().size() != 2 || !separators.items()[0].is_string() || !separators.items()[1].is_string())
        throw TemplateError("tojson: separators must be a pair of strings");
      item = separators.items()[0].str();
      key = separators.items()[1].str();
    }
    return Value(to_json(v, ind, item, key));
  }
  if (name == "join") {
    Value sep = arg(args, kw, 0, "d", Value(""));
    Value attribute = arg(args, kw, 1, "attribute", Value::none());
    std::string out;
    bool first = true;
    for (const Value& x : iterate(v)) {
      if (!first) out += sep.to_str();
      first = false;
      out += (attribute.is_none() ? x : attribute_path(x, attribute)).to_str();
    }
    return Value(out);
  }
  if (name == "upper") return Value(unicode::to_upper(v.to_str()));
  if (name == "lower") return Value(unicode::to_lower(v.to_str()));
  if (name == "capitalize") return Value(python_capitalize(v.to_str()));
  if (name == "title") return Value(python_title(v.to_str()));
  if (name == "replace") {
    Value old = arg(args, kw, 0, "old"), with = arg(args, kw, 1, "new"), count = arg(args, kw, 2, "count", Value::none());
    return Value(python_replace(v.to_str(), old.to_str(), with.to_str(), count.is_none() ? -1 : arg_int(count, "count")));
  }
  if (name == "default" || name == "d") {
    Value dflt = arg(args, kw, 0, "default_value", Value(""));
    Value boolean = arg(args, kw, 1, "boolean", Value(false));
    if (v.is_undefined() || (boolean.truthy() && !v.truthy())) return dflt;
    return v;
  }
  if (name == "first" || name == "last") {
    std::vector<Value> items = iterate(v);
    if (items.empty()) return Value::undefined();
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") return Value::list(iterate(v));
  if (name == "string") return Value(v.to_str());
  if (name == "safe") return v;
  if (name == "escape" || name == "e") return Value(html_escape(v.to_str()));
  if (name == "int" || name == "float") {
    bool is_int = name == "int";
    Value dflt = arg(args, kw, 0, "default", is_int ? Value(int64_t{0}) : Value(0.0));
    if (v.is_number()) return is_int ? Value(static_cast<int64_t>(v.as_double())) : Value(v.as_double());
    if (v.is_string()) {
      try {
        size_t used = 0;
        std::string s = python_strip(v.str(), Value(), true, true);
        double d = std::stod(s, &used);
        if (used == s.size()) return is_int ? Value(static_cast<int64_t>(d)) : Value(d);
      } catch (const std::exception&) {
      }
    }
    return dflt;
  }
  if (name == "abs") {
    if (v.kind() == Value::Kind::floating) return Value(std::fabs(v.as_double()));
    if (is_int_like(v)) return Value(static_cast<int64_t>(std::llabs(v.as_int())));
    throw TemplateError(std::string("bad operand type for abs(): '") + type_name(v) + "'");
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::list();
    if (!v.is_dict_like()) throw TemplateError("items filter needs a mapping");
    List out;
    for (const auto& [k, x] : v.dict_ref().entries) out.push_back(Value::tuple({k, x}));
    return Value::list(std::move(out));
  }
  if (name == "reverse") {
    if (v.is_string()) {
      std::u32string c = cps(v.str());
      std::reverse(c.begin(), c.end());
      return Value(utf8(c));
    }
    std::vector<Value> items = iterate(v);
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
  }
  if (name == "map") {
    std::vector<Value> out;
    Value attribute = kw.take("attribute");
    Value dflt = kw.take("default");
    for (const Value& x : iterate(v)) {
      if (!attribute.is_undefined()) {
        Value y = attribute_path(x, attribute);
        out.push_back(y.is_undefined() && !dflt.is_undefined() ? dflt : y);
      } else {
        if (args.empty() || !args[0].is_string()) throw TemplateError("map needs attribute= or a filter name");
        std::vector<Value> rest(args.begin() + 1, args.end());
        Kwargs more = kw;
        out.push_back(apply_filter(args[0].str(), x, rest, more));
      }
    }
    return Value::list(std::move(out));
  }
  if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
    bool by_attr = name.ends_with("attr");
    bool keep = name.starts_with("select");
    return Value::list(select(iterate(v), by_attr, keep, args));
  }
  if (name == "unique") {
    std::vector<Value> out;
    for (const Value& x : iterate(v)) {
      if (std::none_of(out.begin(), out.end(), [&](const Value& y) { return y.equals(x); })) out.push_back(x);
    }
    return Value::list(std::move(out));
  }
  if (name == "sort") {
    Value reverse = arg(args, kw, 0, "reverse", Value(false));
    arg(args, kw, 1, "case_sensitive", Value(false));
    Value attribute = arg(args, kw, 2, "attribute", Value::none());
    std::vector<Value> items = iterate(v);
    auto key = [&](const Value& x) { return attribute.is_none() ? x : attribute_path(x, attribute); };
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      Value ka = key(a), kb = key(b);
      if (ka.is_string() && kb.is_string()) {
        ka = Value(unicode::to_lower(ka.str()));
        kb = Value(unicode::to_lower(kb.str()));
      }
      return reverse.truthy() ? compare(">", ka, kb) : compare("<", ka, kb);
    });
    return Value::list(std::move(items));
  }
  throw TemplateError("unsupported filter '" + std::string(name) + "'");
}

bool apply_test(std::string_view name, const Value& v, std::vector<Value>& args) {
  auto one = [&]() -> const Value& {
    if (args.size() != 1) throw TemplateError("test '" + std::string(name) + "' takes one argument");
    return args[0];
  };
  using K = Value::Kind;
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.kind() == K::boolean;
  if (name == "true") return v.kind() == K::boolean && v.as_bool();
  if (name == "false") return v.kind() == K::boolean && !v.as_bool();
  if (name == "integer") return v.kind() == K::integer;
  if (name == "float") return v.kind() == K::floating;
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.kind() == K::dict;
  if (name == "iterable") return v.is_undefined() || v.is_string() || v.is_sequence() || v.kind() == K::dict;
  if (name == "sequence") return v.is_undefined() || v.is_string() || v.is_sequence() || v.kind() == K::dict;
  if (name == "callable") return v.kind() == K::function;
  if (name == "even" || name == "odd") {
    if (!is_int_like(v)) throw TemplateError("even/odd need an integer");
    return (v.as_int() % 2 == 0) == (name == "even");
  }
  if (name == "divisibleby") return arg_int(v, "divisibleby") % arg_int(one(), "divisibleby") == 0;
  if (name == "eq" || name == "equalto" || name == "==") return compare("==", v, one());
  if (name == "ne" || name == "!=") return compare("!=", v, one());
  if (name == "lt" || name == "<") return compare("<", v, one());
  if (name == "le" || name == "<=") return compare("<=", v, one());
  if (name == "gt" || name == ">") return compare(">", v, one());
  if (name == "ge" || name == ">=") return compare(">=", v, one());
  if (name == "in") return compare("in", v, one());
  if (name == "sameas") {
    const Value& o = one();
    if (v.kind() != o.kind()) return false;
    if (v.is_none() || v.is_undefined()) return true;
    if (v.kind() == K::boolean) return v.as_bool() == o.as_bool();
    return v.equals(o) && !v.is_sequence() && !v.is_dict_like();
  }
  if (name == "lower" || name == "upper") {
    std::string s = v.to_str();
    std::string other = name == "lower" ? unicode::to_upper(s) : unicode::to_lower(s);
    return other != s && (name == "lower" ? unicode::to_lower(s) : unicode::to_upper(s)) == s;
  }
  throw TemplateError("unsupported test '" + std::string(name) + "'");
}

Value global_function(std::string_view name) {
  if (name == "range") {
    return Value::function([](std::vector<Value>& args, Kwargs& kw) -> Value {
      no_kwargs(kw, "range");
      int64_t start = 0, stop = 0, step = 1;
      if (args.size() == 1) {
        stop = arg_int(args[0], "range");
      } else if (args.size() == 2 || args.size() == 3) {
        start = arg_int(args[0], "range");
        stop = arg_int(args[1], "range");
        if (args.size() == 3) step = arg_int(args[2], "range");
      } else {
        throw TemplateError("range expected 1 to 3 arguments");
      }
      if (step == 0) throw TemplateError("range() arg 3 must not be zero");
      List out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (out.size() >= 100000) throw TemplateError("range too big");  // the sandbox's MAX_RANGE
        out.emplace_back(i);
      }
      return Value::list(std::move(out));
    });
  }
  if (name == "namespace" || name == "dict") {
    bool ns = name == "namespace";
    return Value::function([ns](std::vector<Value>& args, Kwargs& kw) -> Value {
      Value out = ns ? Value::ns() : Value::dict();
      for (const Value& a : args) {
        if (!a.is_dict_like()) throw TemplateError("namespace()/dict() positional argument must be a mapping");
        for (const auto& [k, v] : a.dict_ref().entries) out.dict_ref().set(k, v);
      }
      for (auto& [k, v] : kw.items) out.dict_ref().set(Value(k), v);
      return out;
    });
  }
  if (name == "raise_exception") {
    return Value::function([](std::vector<Value>& args, Kwargs&) -> Value {
      throw TemplateError(args.empty() ? std::string("raise_exception") : args[0].to_str());
    });
  }
  if (name == "strftime_now") {
    return Value::function([](std::vector<Value>& args, Kwargs&) -> Value {
      if (args.size() != 1 || !args[0].is_string()) throw TemplateError("strftime_now takes a format string");
      std::time_t t = std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[256];
      size_t n = std::strftime(buf, sizeof buf, args[0].str().c_str(), &tm);
      return Value(std::string(buf, n));
    });
  }
  return Value::undefined(std::string(name));
}

}  // namespace troupe::jinja
