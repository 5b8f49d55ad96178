#include "kernels/gpu_timed_communicator.hpp"

#include <cuda_runtime.h>

#include <deque>
#include <vector>

#include "kernels/cuda_backend.hpp"
#include "kernels/cuda_check.hpp"

namespace troupe {
namespace {

class EventTimedCommunicator final : public GpuTimedCommunicator {
 public:
  EventTimedCommunicator(Communicator& inner, const Backend& backend, CollectiveTimes& times)
      : GpuTimedCommunicator(inner), times_(times) {
    const CudaStream cs = cuda_stream_of(backend);
    device_ = cs.device;
    stream_ = reinterpret_cast<cudaStream_t>(cs.stream);
  }

  ~EventTimedCommunicator() override {
    cudaSetDevice(device_);
    for (const Pending& p : pending_) {
      cudaEventDestroy(p.start);
      cudaEventDestroy(p.end);
    }
    for (cudaEvent_t e : free_) cudaEventDestroy(e);
    if (step_start_) cudaEventDestroy(step_start_);
  }

  void sample(bool on) override { sampling_ = on; }

  // A sampled step takes the all-reduce kernels, which can be timed; the others push their sums
  // through the projections (every rank samples the same steps, so a group agrees on the way).
  const PushedAllReduce* pushed_all_reduce(const Tensor& delta) const override {
    return sampling_ ? nullptr : MeasuredCommunicator::pushed_all_reduce(delta);
  }

  void mark_step(bool begin) override {
    if (!sampling_) return;
    if (begin) {
      if (!step_start_) step_start_ = event();
      TROUPE_CUDA_CHECK(cudaEventRecord(step_start_, stream_));
      return;
    }
    if (!step_start_) return;
    Pending p{Collective::all_reduce, step_start_, event(), true};
    step_start_ = nullptr;
    TROUPE_CUDA_CHECK(cudaEventRecord(p.end, stream_));
    pending_.push_back(p);
  }

  void collect() override {
    while (!pending_.empty()) {
      Pending& p = pending_.front();
      const cudaError_t state = cudaEventQuery(p.end);
      if (state == cudaErrorNotReady) return;  // later ones are behind it on the same stream
      float ms = 0;
      if (state == cudaSuccess && cudaEventElapsedTime(&ms, p.start, p.end) == cudaSuccess) {
        if (p.step)
          times_.add_step(ms / 1000.0);
        else
          times_.add(p.kind, ms / 1000.0);
      }
      cudaGetLastError();
      free_.push_back(p.start);
      free_.push_back(p.end);
      pending_.pop_front();
    }
  }

 private:
  struct Pending {
    Collective kind;
    cudaEvent_t start, end;
    bool step = false;  // a whole step's interval, not one collective's
  };

  cudaEvent_t event() {
    if (!free_.empty()) {
      cudaEvent_t e = free_.back();
      free_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    TROUPE_CUDA_CHECK(cudaEventCreate(&e));
    return e;
  }

  void measure(Collective kind, Call call) override {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (sampling_) TROUPE_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
    if (!sampling_ || capture != cudaStreamCaptureStatusNone) {
      call();
      return;
    }
    Pending p{kind, event(), event()};
    TROUPE_CUDA_CHECK(cudaEventRecord(p.start, stream_));
    call();
    TROUPE_CUDA_CHECK(cudaEventRecord(p.end, stream_));
    pending_.push_back(p);
  }

  CollectiveTimes& times_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  bool sampling_ = false;
  cudaEvent_t step_start_ = nullptr;  // of the sampled step under way
  std::deque<Pending> pending_;
  std::vector<cudaEvent_t> free_;
};

}  // namespace

std::unique_ptr<GpuTimedCommunicator> make_gpu_timed_communicator(Communicator& inner, const Backend& backend,
                                                                  CollectiveTimes& times) {
  return std::make_unique<EventTimedCommunicator>(inner, backend, times);
}

}  // namespace troupe
