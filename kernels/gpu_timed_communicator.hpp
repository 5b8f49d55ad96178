// A GPU communicator's collectives timed with CUDA events on the rank's stream: its calls only
// enqueue work, so their wall time says nothing. Only sampled steps are timed (two event records
// per collective), and times are read once the events have completed, without waiting for them.
// Collectives inside a replayed decode graph are not seen (the graph replays without calling
// here), so the figures describe eager steps: prefill, mixed and MoE-across-DP steps.
#pragma once

#include <memory>

#include "engine/backend.hpp"
#include "engine/timed_communicator.hpp"

namespace troupe {

class GpuTimedCommunicator : public MeasuredCommunicator {
 public:
  using MeasuredCommunicator::MeasuredCommunicator;
  // Whether the collectives called from now on are timed.
  virtual void sample(bool on) = 0;
  // Adds the times of completed timed collectives to the CollectiveTimes given at construction.
  virtual void collect() = 0;
};

// `inner` and `backend` (a CUDA backend, whose stream `inner` uses) must outlive the result.
std::unique_ptr<GpuTimedCommunicator> make_gpu_timed_communicator(Communicator& inner, const Backend& backend,
                                                                  CollectiveTimes& times);

}  // namespace troupe
