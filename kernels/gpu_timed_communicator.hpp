// A GPU communicator's collectives timed with CUDA events on the rank's stream: its calls only
// enqueue work, so their wall time says nothing. Only sampled steps are timed (two event records
// per collective, and two around the whole step), and times are read once the events have
// completed, without waiting for them. Collectives inside a replayed decode graph are not seen (the
// graph replays without calling here): the worker runs its sampled steps eagerly.
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
  // The start and the end of a sampled step's work on the stream (a no-op when not sampling): the
  // step's GPU time, against which its collectives' time is a share.
  virtual void mark_step(bool begin) = 0;
  // Adds the times of completed timed collectives to the CollectiveTimes given at construction.
  virtual void collect() = 0;
};

// `inner` and `backend` (a CUDA backend, whose stream `inner` uses) must outlive the result.
std::unique_ptr<GpuTimedCommunicator> make_gpu_timed_communicator(Communicator& inner, const Backend& backend,
                                                                  CollectiveTimes& times);

}  // namespace troupe
