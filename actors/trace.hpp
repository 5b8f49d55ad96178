// Spans of the message flow in Chrome's trace format (loadable in Perfetto and chrome://tracing):
// one track per actor (a request, a scheduler, a pipeline stage, a worker), spans per micro-batch,
// step and MoE dispatch/combine. Any thread may record; the file is written once, at shutdown.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace troupe {

class TraceRecorder {
 public:
  using Clock = std::chrono::steady_clock;
  using Args = std::vector<std::pair<std::string, int64_t>>;

  TraceRecorder() : origin_(Clock::now()) {}

  Clock::time_point now() const { return Clock::now(); }
  // A complete span on `track`, from `start` to `end`.
  void span(const std::string& track, const std::string& name, Clock::time_point start, Clock::time_point end,
            Args args = {});
  void write(const std::filesystem::path& path) const;
  size_t size() const;

 private:
  struct Event {
    int track;
    std::string name;
    int64_t start_us;
    int64_t duration_us;
    Args args;
  };
  int track_id(const std::string& track);  // caller holds mutex_

  Clock::time_point origin_;
  mutable std::mutex mutex_;
  std::map<std::string, int> tracks_;
  std::vector<Event> events_;
};

}  // namespace troupe
