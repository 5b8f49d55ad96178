#include "engine/jinja_value.hpp"

#include <boost/json.hpp>

#include <charconv>
#include <cmath>
#include <cstdio>

#include "engine/unicode.hpp"

namespace troupe::jinja {

Value Value::undefined(std::string name) {
  Value v;
  v.s_ = std::make_shared<std::string>(std::move(name));
  return v;
}

Value Value::none() {
  Value v;
  v.kind_ = Kind::none;
  return v;
}

Value::Value(bool b) : kind_(Kind::boolean), b_(b), i_(b ? 1 : 0) {}
Value::Value(int64_t i) : kind_(Kind::integer), i_(i) {}
Value::Value(double d) : kind_(Kind::floating), d_(d) {}
Value::Value(std::string s) : kind_(Kind::string), s_(std::make_shared<std::string>(std::move(s))) {}

Value Value::list(List items) {
  Value v;
  v.kind_ = Kind::list;
  v.list_ = std::make_shared<List>(std::move(items));
  return v;
}

Value Value::tuple(List items) {
  Value v = list(std::move(items));
  v.kind_ = Kind::tuple;
  return v;
}

Value Value::dict() {
  Value v;
  v.kind_ = Kind::dict;
  v.dict_ = std::make_shared<Dict>();
  return v;
}

Value Value::ns() {
  Value v = dict();
  v.kind_ = Kind::ns;
  return v;
}

Value Value::function(Function f) {
  Value v;
  v.kind_ = Kind::function;
  v.fn_ = std::make_shared<Function>(std::move(f));
  return v;
}

namespace {

Value convert(const boost::json::value& e) {
  switch (e.kind()) {
    case boost::json::kind::null: return Value::none();
    case boost::json::kind::bool_: return Value(e.get_bool());
    case boost::json::kind::int64: return Value(static_cast<int64_t>(e.get_int64()));
    case boost::json::kind::uint64: return Value(static_cast<double>(e.get_uint64()));
    case boost::json::kind::double_: return Value(e.get_double());
    case boost::json::kind::string: return Value(std::string(e.get_string()));
    case boost::json::kind::array: {
      List items;
      for (const boost::json::value& x : e.get_array()) items.push_back(convert(x));
      return Value::list(std::move(items));
    }
    case boost::json::kind::object: {
      Value d = Value::dict();
      for (const auto& field : e.get_object()) d.dict_ref().set(Value(std::string(field.key())), convert(field.value()));
      return d;
    }
  }
  return Value::none();
}

}  // namespace

// Boost.JSON rather than simdjson: Hugging Face configs carry integers beyond 64 bits
// (model_max_length 1e30), which it reads as doubles, as Python's json would keep them as numbers.
Value Value::from_json(std::string_view json) {
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(json, ec);
  if (ec) throw TemplateError("invalid JSON: " + ec.message());
  return convert(v);
}

bool Value::truthy() const {
  switch (kind_) {
    case Kind::undefined:
    case Kind::none: return false;
    case Kind::boolean: return b_;
    case Kind::integer: return i_ != 0;
    case Kind::floating: return d_ != 0.0;
    case Kind::string: return !s_->empty();
    case Kind::list:
    case Kind::tuple: return !list_->empty();
    case Kind::dict: return !dict_->entries.empty();
    case Kind::ns:
    case Kind::function: return true;
  }
  return false;
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // e.g. "-1.5e-07", "1e+16"
  bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  int exp = std::stoi(sci.substr(e + 1));
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  std::string out = neg ? "-" : "";
  if (exp < -4 || exp >= 16) {
    out += digits[0];
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    return out + eb;
  }
  if (exp < 0) {
    out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
  } else if (static_cast<size_t>(exp) + 1 >= digits.size()) {
    out += digits + std::string(static_cast<size_t>(exp) + 1 - digits.size(), '0') + ".0";
  } else {
    out += digits.substr(0, static_cast<size_t>(exp) + 1) + "." + digits.substr(static_cast<size_t>(exp) + 1);
  }
  return out;
}

namespace {

std::string repr_string(const std::string& s) {
  char quote = '\'';
  if (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) quote = '"';
  std::string out(1, quote);
  for (size_t i = 0; i < s.size();) {
    char32_t c = unicode::next(s, i);
    char buf[16];
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7F) {
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
      out += buf;
    } else if (c < 0x80 || unicode::is_printable(c)) {
      unicode::append(out, c);
    } else if (c < 0x100) {
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
      out += buf;
    } else if (c < 0x10000) {
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(c));
      out += buf;
    }
  }
  out += quote;
  return out;
}

std::string repr_dict(const Dict& d) {
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : d.entries) {
    if (!first) out += ", ";
    first = false;
    out += k.repr() + ": " + v.repr();
  }
  return out + "}";
}

}  // namespace

std::string Value::to_str() const {
  switch (kind_) {
    case Kind::undefined: return "";
    case Kind::string: return *s_;
    default: return repr();
  }
}

std::string Value::repr() const {
  switch (kind_) {
    case Kind::undefined: return "";
    case Kind::none: return "None";
    case Kind::boolean: return b_ ? "True" : "False";
    case Kind::integer: return std::to_string(i_);
    case Kind::floating: return float_repr(d_);
    case Kind::string: return repr_string(*s_);
    case Kind::list:
    case Kind::tuple: {
      bool tuple = kind_ == Kind::tuple;
      std::string out = tuple ? "(" : "[";
      for (size_t i = 0; i < list_->size(); ++i) {
        if (i) out += ", ";
        out += (*list_)[i].repr();
      }
      if (tuple && list_->size() == 1) out += ",";
      return out + (tuple ? ")" : "]");
    }
    case Kind::dict: return repr_dict(*dict_);
    case Kind::ns: return "<Namespace " + repr_dict(*dict_) + ">";
    case Kind::function: return "<function>";
  }
  return "";
}

bool Value::equals(const Value& o) const {
  if (is_number() && o.is_number()) {
    if (kind_ == Kind::floating || o.kind_ == Kind::floating) return as_double() == o.as_double();
    return i_ == o.i_;
  }
  if (kind_ != o.kind_) return false;
  switch (kind_) {
    case Kind::undefined:
    case Kind::none: return true;
    case Kind::string: return *s_ == *o.s_;
    case Kind::list:
    case Kind::tuple: {
      if (list_->size() != o.list_->size()) return false;
      for (size_t i = 0; i < list_->size(); ++i)
        if (!(*list_)[i].equals((*o.list_)[i])) return false;
      return true;
    }
    case Kind::dict: {
      if (dict_->entries.size() != o.dict_->entries.size()) return false;
      for (const auto& [k, v] : dict_->entries) {
        Value* w = o.dict_->find(k);
        if (!w || !v.equals(*w)) return false;
      }
      return true;
    }
    default: return dict_ == o.dict_ && fn_ == o.fn_;
  }
}

Value* Value::find(std::string_view key) const {
  if (!dict_) return nullptr;
  for (auto& [k, v] : dict_->entries)
    if (k.is_string() && k.str() == key) return &v;
  return nullptr;
}

Value* Dict::find(const Value& key) {
  for (auto& [k, v] : entries)
    if (k.equals(key)) return &v;
  return nullptr;
}

void Dict::set(const Value& key, Value v) {
  if (Value* w = find(key)) {
    *w = std::move(v);
  } else {
    entries.emplace_back(key, std::move(v));
  }
}

Value Kwargs::take(std::string_view name, Value fallback) {
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].first == name) {
      Value v = std::move(items[i].second);
      items.erase(items.begin() + static_cast<ptrdiff_t>(i));
      return v;
    }
  }
  return fallback;
}

bool Kwargs::has(std::string_view name) const {
  for (const auto& [k, v] : items)
    if (k == name) return true;
  return false;
}

namespace {

void json_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

void json_value(std::string& out, const Value& v, int indent, int level, std::string_view item_sep, std::string_view key_sep) {
  auto newline = [&](int lvl) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<size_t>(indent * lvl), ' ');
  };
  switch (v.kind()) {
    case Value::Kind::none: out += "null"; return;
    case Value::Kind::boolean: out += v.as_bool() ? "true" : "false"; return;
    case Value::Kind::integer: out += std::to_string(v.as_int()); return;
    case Value::Kind::floating: {
      double d = v.as_double();
      if (std::isnan(d)) {
        out += "NaN";
      } else if (std::isinf(d)) {
        out += d < 0 ? "-Infinity" : "Infinity";
      } else {
        out += float_repr(d);
      }
      return;
    }
    case Value::Kind::string: json_string(out, v.str()); return;
    case Value::Kind::list:
    case Value::Kind::tuple: {
      const List& items = v.items();
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += item_sep;
        newline(level + 1);
        json_value(out, items[i], indent, level + 1, item_sep, key_sep);
      }
      newline(level);
      out += ']';
      return;
    }
    case Value::Kind::dict: {
      const auto& entries = v.dict_ref().entries;
      if (entries.empty()) {
        out += "{}";
        return;
      }
      out += '{';
      bool first = true;
      for (const auto& [k, x] : entries) {
        if (!first) out += item_sep;
        first = false;
        newline(level + 1);
        if (k.is_string()) {
          json_string(out, k.str());
        } else if (k.is_none()) {
          out += "\"null\"";
        } else if (k.kind() == Value::Kind::boolean) {
          out += k.as_bool() ? "\"true\"" : "\"false\"";
        } else if (k.is_number()) {
          out += '"' + k.repr() + '"';
        } else {
          throw TemplateError("tojson: keys must be str, int, float, bool or None, not " + k.repr());
        }
        out += key_sep;
        json_value(out, x, indent, level + 1, item_sep, key_sep);
      }
      newline(level);
      out += '}';
      return;
    }
    case Value::Kind::undefined: throw TemplateError("tojson: Object of type Undefined is not JSON serializable");
    default: throw TemplateError("tojson: " + v.repr() + " is not JSON serializable");
  }
}

}  // namespace

std::string to_json(const Value& v, int indent, std::string_view item_sep, std::string_view key_sep) {
  std::string out;
  json_value(out, v, indent, 0, item_sep, key_sep);
  return out;
}

}  // namespace troupe::jinja
