#include "tools/json_file.hpp"

#include <boost/json/serialize.hpp>
#include <charconv>
#include <cmath>
#include <fstream>
#include <stdexcept>

namespace troupe {
namespace {

// Python's repr of a float: shortest round-trip digits, positional between 1e-4 and 1e16, and always
// with a '.' or an exponent so it reads back as a float ("32.0", not "32"). Boost.JSON would print
// "3.2E1", valid but unlike every config.json people have seen.
std::string python_float(double d) {
  if (!std::isfinite(d)) throw std::invalid_argument("JSON has no representation for " + std::to_string(d));
  char buf[64];
  double a = std::fabs(d);
  bool positional = a == 0.0 || (a >= 1e-4 && a < 1e16);
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, d,
                                 positional ? std::chars_format::fixed : std::chars_format::scientific);
  std::string s(buf, end);
  if (positional && s.find('.') == std::string::npos) s += ".0";
  return s;
}

void write(std::string& out, const boost::json::value& v, int indent) {
  auto newline = [&](int level) {
    out += '\n';
    out.append(static_cast<size_t>(level) * 2, ' ');
  };
  switch (v.kind()) {
    case boost::json::kind::object: {
      const auto& o = v.get_object();
      if (o.empty()) {
        out += "{}";
        return;
      }
      out += '{';
      bool first = true;
      for (const auto& kv : o) {
        if (!first) out += ',';
        first = false;
        newline(indent + 1);
        out += boost::json::serialize(boost::json::value(kv.key()));  // the library escapes keys
        out += ": ";
        write(out, kv.value(), indent + 1);
      }
      newline(indent);
      out += '}';
      return;
    }
    case boost::json::kind::array: {
      const auto& a = v.get_array();
      if (a.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < a.size(); ++i) {
        if (i) out += ',';
        newline(indent + 1);
        write(out, a[i], indent + 1);
      }
      newline(indent);
      out += ']';
      return;
    }
    case boost::json::kind::double_:
      out += python_float(v.get_double());
      return;
    default:  // strings, integers, booleans, null
      out += boost::json::serialize(v);
      return;
  }
}

}  // namespace

std::string pretty_json(const boost::json::value& v) {
  std::string out;
  write(out, v, 0);
  out += '\n';
  return out;
}

void write_json_file(const std::filesystem::path& path, const boost::json::value& v) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  std::string text = pretty_json(v);
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  f.close();
  if (!f) throw std::runtime_error(path.string() + ": cannot write");
}

}  // namespace troupe
