#include "actors/metrics_registry.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>
#include <type_traits>

namespace troupe {
namespace {

bool valid_metric_name(const std::string& name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool valid_label_name(const std::string& name) {
  if (name.empty() || name.starts_with("__")) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

// HELP text escapes backslash and newline only; a quote stays as it is there.
std::string escape_help(const std::string& help) {
  std::string out;
  out.reserve(help.size());
  for (char c : help) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

const char* type_name(MetricType type) {
  switch (type) {
    case MetricType::counter: return "counter";
    case MetricType::gauge: return "gauge";
    case MetricType::histogram: return "histogram";
  }
  return "untyped";
}

// `{a="x",b="y"}`, or `{a="x",le="0.5"}` with the bucket label; nothing when there are no labels.
void append_labels(std::string& out, const std::vector<std::string>& names, const std::vector<std::string>& values,
                   const std::string* le = nullptr) {
  if (names.empty() && !le) return;
  out += '{';
  for (size_t i = 0; i < names.size(); ++i) {
    if (i) out += ',';
    out += names[i];
    out += "=\"";
    out += escape_label_value(values[i]);
    out += '"';
  }
  if (le) {
    if (!names.empty()) out += ',';
    out += "le=\"";
    out += *le;
    out += '"';
  }
  out += '}';
}

void append_sample(std::string& out, const std::string& name, const std::vector<std::string>& names,
                   const std::vector<std::string>& values, double value, const std::string* le = nullptr) {
  out += name;
  append_labels(out, names, values, le);
  out += ' ';
  out += format_metric_value(value);
  out += '\n';
}

template <class Metric>
void render_series(std::string& out, const FamilyBase& family, const std::vector<std::string>& values,
                   const Metric& metric) {
  append_sample(out, family.name(), family.label_names(), values, metric.value());
}

template <>
void render_series<Histogram>(std::string& out, const FamilyBase& family, const std::vector<std::string>& values,
                              const Histogram& h) {
  const std::vector<uint64_t> cumulative = h.cumulative();
  const std::string bucket = family.name() + "_bucket";
  for (size_t i = 0; i < cumulative.size(); ++i) {
    const std::string le = i < h.bounds().size() ? format_metric_value(h.bounds()[i]) : "+Inf";
    append_sample(out, bucket, family.label_names(), values, static_cast<double>(cumulative[i]), &le);
  }
  append_sample(out, family.name() + "_sum", family.label_names(), values, h.sum());
  append_sample(out, family.name() + "_count", family.label_names(), values, static_cast<double>(h.count()));
}

}  // namespace

std::string format_metric_value(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[64];
  // The shortest digits that read back as the same double (0.1 stays "0.1", 3.0 becomes "3"), in
  // plain decimals over the range bucket bounds and counts live in: the shortest form overall would
  // write 0.0005 as "5e-04" and a million as "1e+06", which nobody wants to read in an `le` label.
  const double magnitude = std::fabs(value);
  const bool plain = value == 0.0 || (magnitude >= 1e-5 && magnitude < 1e16);
  const auto [end, ec] = plain ? std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::fixed)
                               : std::to_chars(buffer, buffer + sizeof buffer, value);
  return std::string(buffer, end);
}

std::string escape_label_value(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

void Counter::inc(double by) {
  if (!(by >= 0.0))
    throw std::invalid_argument("counter increment must be non-negative, got " + format_metric_value(by));
  value_ += by;
}

Histogram::Histogram(const std::vector<double>* bounds) : bounds_(bounds), counts_(bounds->size() + 1, 0) {}

void Histogram::observe(double value) {
  if (std::isnan(value)) throw std::invalid_argument("histogram observation is NaN");
  const auto it = std::lower_bound(bounds_->begin(), bounds_->end(), value);
  ++counts_[static_cast<size_t>(it - bounds_->begin())];
  ++count_;
  sum_ += value;
}

std::vector<uint64_t> Histogram::cumulative() const {
  std::vector<uint64_t> out(counts_.size());
  uint64_t running = 0;
  for (size_t i = 0; i < counts_.size(); ++i) out[i] = running += counts_[i];
  return out;
}

FamilyBase::FamilyBase(std::string name, std::string help, MetricType type, std::vector<std::string> label_names,
                       std::vector<double> bounds)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      label_names_(std::move(label_names)),
      bounds_(std::move(bounds)) {
  if (!valid_metric_name(name_)) throw std::invalid_argument("invalid metric name '" + name_ + "'");
  std::set<std::string> seen;
  for (const std::string& label : label_names_) {
    if (!valid_label_name(label))
      throw std::invalid_argument("metric " + name_ + ": invalid label name '" + label + "'");
    if (type_ == MetricType::histogram && label == "le")
      throw std::invalid_argument("metric " + name_ + ": a histogram cannot have a label named 'le'");
    if (!seen.insert(label).second)
      throw std::invalid_argument("metric " + name_ + ": label '" + label + "' appears twice");
  }
  if (type_ == MetricType::histogram) {
    for (size_t i = 0; i < bounds_.size(); ++i) {
      if (!std::isfinite(bounds_[i]))
        throw std::invalid_argument("metric " + name_ + ": bucket bounds must be finite (+Inf is implicit)");
      if (i > 0 && !(bounds_[i - 1] < bounds_[i]))
        throw std::invalid_argument("metric " + name_ + ": bucket bounds must increase strictly");
    }
  }
}

void FamilyBase::check_values(const std::vector<std::string>& values) const {
  if (values.size() != label_names_.size())
    throw std::invalid_argument("metric " + name_ + ": " + std::to_string(values.size()) + " label values for " +
                                std::to_string(label_names_.size()) + " labels");
}

template <class Metric>
Family<Metric>::Family(std::string name, std::string help, MetricType type, std::vector<std::string> label_names,
                       std::vector<double> bounds)
    : FamilyBase(std::move(name), std::move(help), type, std::move(label_names), std::move(bounds)) {}

template <class Metric>
Metric& Family<Metric>::with(const std::vector<std::string>& values) {
  if (auto it = series_.find(values); it != series_.end()) return it->second;
  check_values(values);
  if constexpr (std::is_same_v<Metric, Histogram>) {
    return series_.try_emplace(values, &bounds_).first->second;
  } else {
    return series_.try_emplace(values).first->second;
  }
}

template <class Metric>
const Metric* Family<Metric>::find(const std::vector<std::string>& values) const {
  auto it = series_.find(values);
  return it == series_.end() ? nullptr : &it->second;
}

template <class Metric>
void Family<Metric>::render(std::string& out) const {
  out += "# HELP ";
  out += name_;
  out += ' ';
  out += escape_help(help_);
  out += "\n# TYPE ";
  out += name_;
  out += ' ';
  out += type_name(type_);
  out += '\n';
  for (const auto& [values, metric] : series_) render_series(out, *this, values, metric);
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

void MetricsRegistry::reserve_names(const std::string& name, MetricType type) {
  std::vector<std::string> names{name};
  if (type == MetricType::histogram) {
    for (const char* suffix : {"_bucket", "_sum", "_count"}) names.push_back(name + suffix);
  }
  for (const std::string& n : names) {
    if (sample_names_.count(n)) throw std::invalid_argument("metric " + name + ": the name " + n + " is taken");
  }
  sample_names_.insert(names.begin(), names.end());
}

CounterFamily& MetricsRegistry::counter(std::string name, std::string help, std::vector<std::string> label_names) {
  auto family = std::make_unique<CounterFamily>(std::move(name), std::move(help), MetricType::counter,
                                                std::move(label_names));
  reserve_names(family->name(), MetricType::counter);
  CounterFamily& ref = *family;
  families_.push_back(std::move(family));
  return ref;
}

GaugeFamily& MetricsRegistry::gauge(std::string name, std::string help, std::vector<std::string> label_names) {
  auto family =
      std::make_unique<GaugeFamily>(std::move(name), std::move(help), MetricType::gauge, std::move(label_names));
  reserve_names(family->name(), MetricType::gauge);
  GaugeFamily& ref = *family;
  families_.push_back(std::move(family));
  return ref;
}

HistogramFamily& MetricsRegistry::histogram(std::string name, std::string help, std::vector<std::string> label_names,
                                            std::vector<double> bounds) {
  auto family = std::make_unique<HistogramFamily>(std::move(name), std::move(help), MetricType::histogram,
                                                  std::move(label_names), std::move(bounds));
  reserve_names(family->name(), MetricType::histogram);
  HistogramFamily& ref = *family;
  families_.push_back(std::move(family));
  return ref;
}

std::string MetricsRegistry::render() const {
  std::string out;
  for (const auto& family : families_) family->render(out);
  return out;
}

}  // namespace troupe
