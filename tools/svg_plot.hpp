// A small SVG chart writer for `troupe sweep` (no dependencies): line charts with a log-2 or linear
// x axis and a linear or log-10 y axis, one polyline per series; grouped bar charts. Plus turning an
// SVG file into a PNG with whatever renderer the machine has (Debian's chromium headless, else
// rsvg-convert).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace troupe {

struct PlotSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), drawn in x order
};

struct LineChart {
  std::string title, x_label, y_label;
  bool log_x = true;   // base 2; ticks at the points' x values
  bool log_y = false;  // base 10; else linear from 0
  std::vector<PlotSeries> series;
  int width = 820, height = 480;
};

struct BarChart {
  std::string title, y_label;
  std::vector<std::string> groups;                         // along x (layouts)
  std::vector<std::string> bars;                           // within a group, in the legend (concurrencies)
  std::vector<std::vector<std::optional<double>>> values;  // [group][bar]; nullopt: no bar, "n/a" shown
  std::string note;                                        // a line under the chart (what n/a means)
  int width = 820, height = 480;
};

std::string line_chart_svg(const LineChart& chart);
std::string bar_chart_svg(const BarChart& chart);

// The first PNG renderer found: the CHROMIUM environment variable, /usr/bin/chromium,
// chromium-browser or rsvg-convert on PATH; empty when there is none.
struct PngRenderer {
  std::string kind;  // "chromium" or "rsvg-convert"
  std::filesystem::path program;
};
std::optional<PngRenderer> find_png_renderer();
// Renders `svg` (width × height) into `png`. Returns the error, empty on success.
std::string render_png(const PngRenderer& renderer, const std::filesystem::path& svg, const std::filesystem::path& png,
                       int width, int height);

}  // namespace troupe
