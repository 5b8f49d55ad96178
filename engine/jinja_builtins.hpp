// What Jinja and Python do to values inside a template: operators, attribute and item access (with
// the sandbox's view of str and dict methods), iteration, slicing, filters, tests and global
// functions. Errors are TemplateErrors without a line; the renderer adds it.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "engine/jinja_value.hpp"

namespace troupe::jinja {

// Python's binary operators: + - * / // % ** (and str % args formatting).
Value binary_op(std::string_view op, const Value& a, const Value& b);
// ==, !=, <, >, <=, >=, in, notin.
bool compare(std::string_view op, const Value& a, const Value& b);
Value negate(const Value& v);

// obj.name: a str / dict method bound to obj, a dict key or namespace attribute, else undefined.
Value get_attr(const Value& obj, const std::string& name);
// obj[key]: index (negative counts from the end), dict key, else undefined.
Value get_item(const Value& obj, const Value& key);
Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
// The items a for loop visits: list / tuple items, dict keys, string characters; none for undefined.
std::vector<Value> iterate(const Value& v);

Value apply_filter(std::string_view name, const Value& v, std::vector<Value>& args, Kwargs& kwargs);
bool apply_test(std::string_view name, const Value& v, std::vector<Value>& args);
// range, namespace, dict, raise_exception, strftime_now; undefined for other names.
Value global_function(std::string_view name);

bool is_filter(std::string_view name);
bool is_test(std::string_view name);

}  // namespace troupe::jinja
