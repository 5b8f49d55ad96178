// Counters, gauges and histograms with labels, rendered in Prometheus' text exposition format
// (version 0.0.4). Plain C++ with no locks or atomics: the metrics actor owns the one registry and
// is the only thing that touches it, so a series is a plain double.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace troupe {

enum class MetricType : uint8_t { counter, gauge, histogram };

class Counter {
 public:
  // Counters never go down (Prometheus treats a decrease as a restart); a negative or NaN increment
  // is a caller's bug and throws std::invalid_argument.
  void inc(double by = 1.0);
  double value() const { return value_; }

 private:
  double value_ = 0.0;
};

class Gauge {
 public:
  void set(double value) { value_ = value; }
  void add(double by) { value_ += by; }
  double value() const { return value_; }

 private:
  double value_ = 0.0;
};

class Histogram {
 public:
  explicit Histogram(const std::vector<double>* bounds);  // the family's bucket bounds, which outlive it

  // Counts `value` in the first bucket whose bound is >= value (Prometheus' `le`). NaN throws.
  void observe(double value);
  const std::vector<double>& bounds() const { return *bounds_; }
  // Observations <= each bound, as rendered; one more entry than bounds(), the +Inf bucket (= count).
  std::vector<uint64_t> cumulative() const;
  uint64_t count() const { return count_; }
  double sum() const { return sum_; }

 private:
  const std::vector<double>* bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative: observe() touches one entry
  uint64_t count_ = 0;
  double sum_ = 0.0;
};

class FamilyBase {
 public:
  virtual ~FamilyBase() = default;
  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  MetricType type() const { return type_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  // Appends `# HELP`, `# TYPE` and every series' samples. A family with no series yet renders its
  // two comment lines only, which scrapers accept.
  virtual void render(std::string& out) const = 0;

 protected:
  FamilyBase(std::string name, std::string help, MetricType type, std::vector<std::string> label_names,
             std::vector<double> bounds);
  void check_values(const std::vector<std::string>& values) const;

  std::string name_;
  std::string help_;
  MetricType type_;
  std::vector<std::string> label_names_;
  std::vector<double> bounds_;  // histograms only
};

// All series of one metric, keyed by their label values (in label_names() order).
template <class Metric>
class Family final : public FamilyBase {
 public:
  Family(std::string name, std::string help, MetricType type, std::vector<std::string> label_names,
         std::vector<double> bounds = {});

  // The series with these label values, created at zero on first use. The reference stays valid as
  // long as the registry, so callers look a series up once and keep it. Throws std::invalid_argument
  // when the number of values differs from the number of label names.
  Metric& with(const std::vector<std::string>& values);
  // nullptr when the series was never created.
  const Metric* find(const std::vector<std::string>& values) const;
  size_t size() const { return series_.size(); }
  void render(std::string& out) const override;

 private:
  // Ordered by label values, so a page renders the same way every time.
  std::map<std::vector<std::string>, Metric> series_;
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

// Families are registered once, up front; registering checks what Prometheus would reject later:
// metric names match [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]* and do not start
// with "__" (reserved), a histogram has no `le` label and strictly increasing finite bounds, and no
// two families render a sample of the same name (so a counter `x_count` next to a histogram `x` is
// refused). Violations throw std::invalid_argument naming the metric.
class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  CounterFamily& counter(std::string name, std::string help, std::vector<std::string> label_names = {});
  GaugeFamily& gauge(std::string name, std::string help, std::vector<std::string> label_names = {});
  // `bounds` are the finite upper bounds; the +Inf bucket is implicit.
  HistogramFamily& histogram(std::string name, std::string help, std::vector<std::string> label_names,
                             std::vector<double> bounds);

  // The whole page, families in registration order (Content-Type: text/plain; version=0.0.4).
  std::string render() const;

 private:
  void reserve_names(const std::string& name, MetricType type);

  std::vector<std::unique_ptr<FamilyBase>> families_;
  std::set<std::string> sample_names_;
};

// Prometheus' spelling of a sample value: shortest round-trip decimal, +Inf, -Inf, NaN.
std::string format_metric_value(double value);
// A label value with backslash, double quote and newline escaped, as the text format requires.
std::string escape_label_value(const std::string& value);

}  // namespace troupe
