#include "actors/trace.hpp"

#include <boost/json.hpp>
#include <fstream>

namespace troupe {

int TraceRecorder::track_id(const std::string& track) {
  auto [it, inserted] = tracks_.emplace(track, static_cast<int>(tracks_.size()) + 1);
  return it->second;
}

void TraceRecorder::span(const std::string& track, const std::string& name, Clock::time_point start,
                         Clock::time_point end, Args args) {
  const auto us = [&](Clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::microseconds>(t - origin_).count();
  };
  std::lock_guard lock(mutex_);
  events_.push_back({track_id(track), name, us(start), std::max<int64_t>(1, us(end) - us(start)), std::move(args)});
}

size_t TraceRecorder::size() const {
  std::lock_guard lock(mutex_);
  return events_.size();
}

void TraceRecorder::write(const std::filesystem::path& path) const {
  std::lock_guard lock(mutex_);
  boost::json::array events;
  for (const auto& [name, id] : tracks_) {
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", 1}, {"tid", id}, {"args", {{"name", name}}}});
  }
  for (const Event& e : events_) {
    boost::json::object args;
    for (const auto& [k, v] : e.args) args[k] = v;
    events.push_back({{"name", e.name}, {"ph", "X"}, {"pid", 1}, {"tid", e.track}, {"ts", e.start_us},
                      {"dur", e.duration_us}, {"args", std::move(args)}});
  }
  std::ofstream out(path);
  out << boost::json::serialize(boost::json::object{{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}});
}

}  // namespace troupe
