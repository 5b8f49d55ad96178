// The values a chat template computes with, with Python's semantics where Jinja inherits them:
// undefined (Jinja's default Undefined: prints empty, is falsy, fails when used further), None,
// bool, int, float, str (UTF-8, indexed by code point), list / tuple, dict (insertion order),
// namespace, and callables (globals, bound string and dict methods, loop.cycle).
// Messages and tools arrive as JSON: from_json parses JSON text into a Value.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace troupe::jinja {

// A template failed: a syntax or unsupported construct at load time, or an error while rendering
// (raise_exception, an undefined value used, a type error). The message names the line.
class TemplateError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Value;
using List = std::vector<Value>;
struct Dict;
struct Kwargs;
using Function = std::function<Value(std::vector<Value>& args, Kwargs& kwargs)>;

class Value {
 public:
  enum class Kind { undefined, none, boolean, integer, floating, string, list, tuple, dict, ns, function };

  Value() = default;  // undefined
  static Value undefined(std::string name = {});
  static Value none();
  Value(bool b);
  Value(int64_t i);
  Value(int i) : Value(static_cast<int64_t>(i)) {}
  Value(double d);
  Value(std::string s);
  Value(const char* s) : Value(std::string(s)) {}
  static Value list(List items = {});
  static Value tuple(List items);
  static Value dict();
  static Value ns();
  static Value function(Function f);
  // JSON text to a Value (objects keep their key order). Throws TemplateError on bad JSON.
  static Value from_json(std::string_view json);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::undefined; }
  bool is_none() const { return kind_ == Kind::none; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_number() const { return kind_ == Kind::integer || kind_ == Kind::floating || kind_ == Kind::boolean; }
  bool is_sequence() const { return kind_ == Kind::list || kind_ == Kind::tuple; }
  bool is_mapping() const { return kind_ == Kind::dict; }
  bool is_dict_like() const { return kind_ == Kind::dict || kind_ == Kind::ns; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return kind_ == Kind::floating ? static_cast<int64_t>(d_) : i_; }
  double as_double() const { return kind_ == Kind::floating ? d_ : static_cast<double>(i_); }
  const std::string& str() const { return *s_; }
  List& items() const { return *list_; }  // list or tuple
  Dict& dict_ref() const { return *dict_; }
  const Function& fn() const { return *fn_; }
  const std::string& undefined_name() const { return *s_; }

  // Python truthiness.
  bool truthy() const;
  // Python str() / repr(); undefined prints as "".
  std::string to_str() const;
  std::string repr() const;
  // Python ==.
  bool equals(const Value& o) const;
  // For dict keys and `in`: the same as equals.
  // Member lookup on a dict / namespace (nullptr when absent).
  Value* find(std::string_view key) const;

 private:
  Kind kind_ = Kind::undefined;
  bool b_ = false;
  int64_t i_ = 0;
  double d_ = 0;
  std::shared_ptr<std::string> s_;  // string, or the name of an undefined value
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Function> fn_;
};

// Insertion-ordered mapping; keys are values (strings in practice, as from JSON).
struct Dict {
  std::vector<std::pair<Value, Value>> entries;
  Value* find(const Value& key);
  void set(const Value& key, Value v);
};

struct Kwargs {
  std::vector<std::pair<std::string, Value>> items;
  // Takes a keyword argument out (so leftovers can be reported), or returns `fallback`.
  Value take(std::string_view name, Value fallback = Value());
  bool has(std::string_view name) const;
};

// Python's repr() of a float (shortest round trip, "1e+16", "1.5e-07", "1.0").
std::string float_repr(double d);
// Python's json.dumps(v, ensure_ascii=False, indent=indent, separators=..., sort_keys=False), as
// transformers' tojson filter calls it. indent < 0: none.
std::string to_json(const Value& v, int indent, std::string_view item_sep, std::string_view key_sep);

}  // namespace troupe::jinja
