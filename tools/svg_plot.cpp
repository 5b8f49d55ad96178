#include "tools/svg_plot.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>

namespace troupe {
namespace {

constexpr const char* kPalette[] = {"#1f6fb4", "#e8741a", "#2e9b3a", "#cc2f2f", "#8a5cc0",
                                    "#8c564b", "#d45fb0", "#6b6b6b", "#a8a81a", "#17a8bb"};
const char* color(size_t i) { return kPalette[i % (sizeof kPalette / sizeof kPalette[0])]; }

std::string escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += ch;
    }
  }
  return out;
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

// A tick label: up to 4 significant digits, thousands as "k".
std::string tick_label(double v) {
  char buf[32];
  if (std::fabs(v) >= 10000)
    std::snprintf(buf, sizeof buf, "%gk", v / 1000);
  else
    std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

// A linear axis from 0 to a round top with about five steps of 1, 2 or 5 × 10^k.
std::vector<double> linear_ticks(double max) {
  if (!(max > 0)) max = 1;
  const double raw = max / 5;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> ticks;
  for (int i = 0; ticks.empty() || ticks.back() < max * (1 - 1e-9); ++i) ticks.push_back(i * step);
  return ticks;
}

// Decades around [min, max] (with 2× and 5× between them when they span two decades or less).
std::vector<double> log_ticks(double min, double max) {
  double lo = std::pow(10.0, std::floor(std::log10(min)));
  double hi = std::pow(10.0, std::ceil(std::log10(max)));
  if (hi <= lo) hi = lo * 10;
  const bool fine = hi / lo <= 100;
  std::vector<double> ticks;
  for (double d = lo; d <= hi * (1 + 1e-9); d *= 10) {
    ticks.push_back(d);
    if (fine && d * 10 <= hi * (1 + 1e-9)) {
      ticks.push_back(2 * d);
      ticks.push_back(5 * d);
    }
  }
  std::sort(ticks.begin(), ticks.end());
  return ticks;
}

struct Frame {
  double left = 78, right = 190, top = 46, bottom = 58;
  int width, height;
  double plot_w() const { return width - left - right; }
  double plot_h() const { return height - top - bottom; }
};

void header(std::ostringstream& out, const Frame& f, const std::string& title) {
  out << R"(<?xml version="1.0" encoding="UTF-8"?>)"
      << "\n"
      << R"(<svg xmlns="http://www.w3.org/2000/svg" width=")" << f.width << R"(" height=")" << f.height
      << R"(" viewBox="0 0 )" << f.width << " " << f.height
      << R"(" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">)"
      << "\n"
      << R"(<rect x="0" y="0" width=")" << f.width << R"(" height=")" << f.height << R"(" fill="white"/>)"
      << "\n"
      << R"(<text x=")" << num(f.width / 2.0) << R"(" y="26" text-anchor="middle" font-size="16" font-weight="bold">)"
      << escape(title) << "</text>\n";
}

void y_axis(std::ostringstream& out, const Frame& f, const std::vector<double>& ticks, const std::string& label,
            const std::vector<double>& positions) {
  for (size_t i = 0; i < ticks.size(); ++i) {
    const double y = positions[i];
    out << R"(<line x1=")" << num(f.left) << R"(" x2=")" << num(f.left + f.plot_w()) << R"(" y1=")" << num(y)
        << R"(" y2=")" << num(y) << R"(" stroke="#e3e3e3"/>)"
        << "\n"
        << R"(<text x=")" << num(f.left - 6) << R"(" y=")" << num(y + 4) << R"(" text-anchor="end">)"
        << escape(tick_label(ticks[i])) << "</text>\n";
  }
  const double cy = f.top + f.plot_h() / 2;
  out << R"(<text x="18" y=")" << num(cy) << R"svg(" text-anchor="middle" transform="rotate(-90 18 )svg" << num(cy)
      << R"svg()">)svg" << escape(label) << "</text>\n";
}

void frame_box(std::ostringstream& out, const Frame& f) {
  out << R"(<rect x=")" << num(f.left) << R"(" y=")" << num(f.top) << R"(" width=")" << num(f.plot_w())
      << R"(" height=")" << num(f.plot_h()) << R"(" fill="none" stroke="#444"/>)"
      << "\n";
}

void legend(std::ostringstream& out, const Frame& f, const std::vector<std::string>& names, bool bars) {
  const double x = f.left + f.plot_w() + 16;
  for (size_t i = 0; i < names.size(); ++i) {
    const double y = f.top + 8 + 20.0 * i;
    if (bars)
      out << R"(<rect x=")" << num(x) << R"(" y=")" << num(y - 6) << R"(" width="18" height="12" fill=")" << color(i)
          << R"("/>)"
          << "\n";
    else
      out << R"(<line x1=")" << num(x) << R"(" x2=")" << num(x + 18) << R"(" y1=")" << num(y) << R"(" y2=")" << num(y)
          << R"(" stroke=")" << color(i) << R"(" stroke-width="2.5"/>)"
          << "\n";
    out << R"(<text x=")" << num(x + 24) << R"(" y=")" << num(y + 4) << R"(">)" << escape(names[i]) << "</text>\n";
  }
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char ch : s) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return out + "'";
}

std::optional<std::filesystem::path> on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::filesystem::path p = std::filesystem::path(dir.empty() ? "." : dir) / name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return std::nullopt;
}

}  // namespace

std::string line_chart_svg(const LineChart& c) {
  const Frame f{78, 190, 46, 58, c.width, c.height};
  std::set<double> xs;
  double ymin = INFINITY, ymax = 0;
  for (const PlotSeries& s : c.series)
    for (const auto& [x, y] : s.points) {
      if (c.log_x && !(x > 0)) continue;
      xs.insert(x);
      if (c.log_y && !(y > 0)) continue;
      ymin = std::min(ymin, y);
      ymax = std::max(ymax, y);
    }
  if (xs.empty()) xs.insert(1);
  if (!(ymax > 0)) ymin = ymax = 1;
  auto tx = [&](double v) { return c.log_x ? std::log2(v) : v; };
  double x0 = tx(*xs.begin()), x1 = tx(*xs.rbegin());
  if (x1 <= x0) x0 -= 1, x1 += 1;
  const double pad = (x1 - x0) * 0.05;
  x0 -= pad, x1 += pad;
  auto px = [&](double v) { return f.left + (tx(v) - x0) / (x1 - x0) * f.plot_w(); };

  const std::vector<double> yt = c.log_y ? log_ticks(ymin, ymax) : linear_ticks(ymax);
  auto ty = [&](double v) { return c.log_y ? std::log10(v) : v; };
  const double y0 = ty(yt.front()), y1 = ty(yt.back());
  auto py = [&](double v) { return f.top + f.plot_h() - (ty(v) - y0) / (y1 - y0) * f.plot_h(); };

  std::ostringstream out;
  header(out, f, c.title);
  std::vector<double> ypos;
  for (double t : yt) ypos.push_back(py(t));
  y_axis(out, f, yt, c.y_label, ypos);
  for (double x : xs) {
    out << R"(<line x1=")" << num(px(x)) << R"(" x2=")" << num(px(x)) << R"(" y1=")" << num(f.top) << R"(" y2=")"
        << num(f.top + f.plot_h()) << R"(" stroke="#f0f0f0"/>)"
        << "\n"
        << R"(<text x=")" << num(px(x)) << R"(" y=")" << num(f.top + f.plot_h() + 18) << R"(" text-anchor="middle">)"
        << escape(tick_label(x)) << "</text>\n";
  }
  out << R"(<text x=")" << num(f.left + f.plot_w() / 2) << R"(" y=")" << num(f.height - 14.0)
      << R"(" text-anchor="middle">)" << escape(c.x_label + (c.log_x ? " (log scale)" : "")) << "</text>\n";
  frame_box(out, f);
  std::vector<std::string> names;
  for (size_t i = 0; i < c.series.size(); ++i) {
    const PlotSeries& s = c.series[i];
    names.push_back(s.name);
    std::vector<std::pair<double, double>> pts;
    for (const auto& p : s.points)
      if ((!c.log_x || p.first > 0) && (!c.log_y || p.second > 0)) pts.push_back(p);
    std::sort(pts.begin(), pts.end());
    out << R"(<g class="series" data-name=")" << escape(s.name) << R"(">)"
        << "\n";
    out << R"(<polyline fill="none" stroke=")" << color(i) << R"(" stroke-width="2.5" points=")";
    for (size_t k = 0; k < pts.size(); ++k)
      out << (k ? " " : "") << num(px(pts[k].first)) << "," << num(py(pts[k].second));
    out << R"("/>)"
        << "\n";
    for (const auto& [x, y] : pts)
      out << R"(<circle cx=")" << num(px(x)) << R"(" cy=")" << num(py(y)) << R"(" r="3.5" fill=")" << color(i)
          << R"("><title>)" << escape(s.name + ": " + tick_label(x) + ", " + tick_label(y)) << "</title></circle>\n";
    out << "</g>\n";
  }
  legend(out, f, names, false);
  out << "</svg>\n";
  return out.str();
}

std::string bar_chart_svg(const BarChart& c) {
  const Frame f{78, 190, 46, 58, c.width, c.height};
  double ymax = 0;
  for (const auto& g : c.values)
    for (const auto& v : g)
      if (v) ymax = std::max(ymax, *v);
  const std::vector<double> yt = linear_ticks(ymax);
  auto py = [&](double v) { return f.top + f.plot_h() - v / yt.back() * f.plot_h(); };
  std::ostringstream out;
  header(out, f, c.title);
  std::vector<double> ypos;
  for (double t : yt) ypos.push_back(py(t));
  y_axis(out, f, yt, c.y_label, ypos);
  frame_box(out, f);
  const double group_w = f.plot_w() / std::max<size_t>(1, c.groups.size());
  const double bar_w = group_w * 0.8 / std::max<size_t>(1, c.bars.size());
  for (size_t g = 0; g < c.groups.size(); ++g) {
    const double gx = f.left + g * group_w;
    out << R"(<g class="group" data-name=")" << escape(c.groups[g]) << R"(">)"
        << "\n";
    for (size_t b = 0; b < c.bars.size(); ++b) {
      const double x = gx + group_w * 0.1 + b * bar_w;
      const std::optional<double> v = g < c.values.size() && b < c.values[g].size() ? c.values[g][b] : std::nullopt;
      if (v) {
        out << R"(<rect x=")" << num(x) << R"(" y=")" << num(py(*v)) << R"(" width=")" << num(bar_w * 0.92)
            << R"(" height=")" << num(f.top + f.plot_h() - py(*v)) << R"(" fill=")" << color(b) << R"("><title>)"
            << escape(c.groups[g] + " " + c.bars[b] + ": " + tick_label(*v)) << "</title></rect>\n";
      } else {
        out << R"(<text x=")" << num(x + bar_w / 2) << R"(" y=")" << num(f.top + f.plot_h() - 4)
            << R"(" text-anchor="middle" font-size="9" fill="#888">n/a</text>)"
            << "\n";
      }
    }
    out << R"(<text x=")" << num(gx + group_w / 2) << R"(" y=")" << num(f.top + f.plot_h() + 18)
        << R"(" text-anchor="middle">)" << escape(c.groups[g]) << "</text>\n</g>\n";
  }
  legend(out, f, c.bars, true);
  if (!c.note.empty())
    out << R"(<text x=")" << num(f.left) << R"(" y=")" << num(f.height - 14.0) << R"(" font-size="11" fill="#555">)"
        << escape(c.note) << "</text>\n";
  out << "</svg>\n";
  return out.str();
}

std::optional<PngRenderer> find_png_renderer() {
  if (const char* env = std::getenv("CHROMIUM"); env && *env && ::access(env, X_OK) == 0)
    return PngRenderer{"chromium", env};
  if (::access("/usr/bin/chromium", X_OK) == 0) return PngRenderer{"chromium", "/usr/bin/chromium"};
  for (const char* name : {"chromium", "chromium-browser"})
    if (auto p = on_path(name)) return PngRenderer{"chromium", *p};
  if (auto p = on_path("rsvg-convert")) return PngRenderer{"rsvg-convert", *p};
  return std::nullopt;
}

std::string render_png(const PngRenderer& r, const std::filesystem::path& svg, const std::filesystem::path& png,
                       int width, int height) {
  namespace fs = std::filesystem;
  const fs::path svg_abs = fs::absolute(svg), png_abs = fs::absolute(png);
  std::error_code ec;
  fs::remove(png_abs, ec);
  std::string cmd;
  fs::path profile;
  if (r.kind == "chromium") {
    // A profile of its own, so a chromium the user has open is not disturbed; no network, no GPU.
    char tmpl[] = "/tmp/troupe-svg-XXXXXX";
    if (!::mkdtemp(tmpl)) return "cannot make a temporary profile folder for chromium";
    profile = tmpl;
    cmd = "timeout 120 " + shell_quote(r.program.string()) +
          " --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-sync"
          " --disable-background-networking --disable-component-update --default-background-color=ffffffff"
          " --user-data-dir=" +
          shell_quote(profile.string()) + " --window-size=" + std::to_string(width) + "," + std::to_string(height) +
          " --screenshot=" + shell_quote(png_abs.string()) + " " + shell_quote("file://" + svg_abs.string()) +
          " >/dev/null 2>&1";
  } else {
    cmd = "timeout 120 " + shell_quote(r.program.string()) + " -w " + std::to_string(width) + " -h " +
          std::to_string(height) + " -b white -o " + shell_quote(png_abs.string()) + " " +
          shell_quote(svg_abs.string()) + " >/dev/null 2>&1";
  }
  const int rc = std::system(cmd.c_str());
  if (!profile.empty()) fs::remove_all(profile, ec);
  if (rc != 0 || !fs::exists(png_abs) || fs::file_size(png_abs, ec) == 0)
    return r.kind + " could not render " + svg.string() + " (status " + std::to_string(rc) + ")";
  return {};
}

}  // namespace troupe
