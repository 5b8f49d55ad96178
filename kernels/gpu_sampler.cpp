// The host side of GPU sampling: per-row parameters into pinned memory, one launch, tokens (and
// logprobs) back through pinned memory. See gpu_sampler.hpp for the contract and sampling.cu for the
// kernel.
#include "kernels/gpu_sampler.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda_backend.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/device_scratch.hpp"
#include "kernels/sampling.cuh"

namespace troupe {
namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("gpu sampler: " + what);
}

// Page-locked host memory, so that copies are truly asynchronous. Grows like DeviceScratch.
class Pinned {
 public:
  Pinned() = default;
  ~Pinned() {
    if (data_) cudaFreeHost(data_);
  }
  Pinned(const Pinned&) = delete;
  Pinned& operator=(const Pinned&) = delete;

  template <class T>
  T* get(std::size_t count) {
    const std::size_t bytes = std::max<std::size_t>(count * sizeof(T), 16);
    if (bytes > capacity_) {
      if (data_) TROUPE_CUDA_CHECK(cudaFreeHost(data_));
      data_ = nullptr;
      capacity_ = 0;
      const std::size_t size = bytes + bytes / 2;
      TROUPE_CUDA_CHECK(cudaMallocHost(&data_, size));
      capacity_ = size;
    }
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace

struct GpuSampler::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  int64_t vocab = 0;
  int32_t slots = 0;
  int32_t multiprocessors = 1;
  int32_t* counts = nullptr;  // [slots, vocab]

  cuda::DeviceScratch work, params, banned, tokens, results, aux;
  Pinned params_host, banned_host, tokens_host, results_host, aux_host;
  cudaEvent_t done = nullptr;      // after the last enqueue's copies back
  cudaEvent_t aux_done = nullptr;  // after the last use of aux_host

  // What wait() needs from the last enqueue().
  bool pending = false;
  bool with_logprobs = false;
  int32_t* last_tokens = nullptr;
  int32_t pending_rows = 0;

  void bind() const { TROUPE_CUDA_CHECK(cudaSetDevice(device)); }

  // Copies n values to the device through aux_host (waiting first for its previous copy).
  template <class T>
  T* stage(std::span<const T> values) {
    TROUPE_CUDA_CHECK(cudaEventSynchronize(aux_done));
    T* host = aux_host.get<T>(values.size());
    std::memcpy(host, values.data(), values.size_bytes());
    T* dev = static_cast<T*>(aux.get(std::max<std::size_t>(values.size_bytes(), 16)));
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(dev, host, values.size_bytes(), cudaMemcpyHostToDevice, stream));
    return dev;
  }
  void staged() { TROUPE_CUDA_CHECK(cudaEventRecord(aux_done, stream)); }
};

GpuSampler::GpuSampler(Backend& backend, int64_t vocab, int32_t penalty_slots) : impl_(std::make_unique<Impl>()) {
  require(vocab > 0 && vocab < (int64_t{1} << 30), "vocabulary of " + std::to_string(vocab) + " tokens");
  require(penalty_slots >= 0, "negative penalty slot count");
  const CudaStream placement = cuda_stream_of(backend);
  Impl& s = *impl_;
  s.device = placement.device;
  s.stream = placement.stream;
  s.vocab = vocab;
  s.slots = penalty_slots;
  s.bind();
  TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&s.multiprocessors, cudaDevAttrMultiProcessorCount, s.device));
  TROUPE_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
  TROUPE_CUDA_CHECK(cudaEventCreateWithFlags(&s.aux_done, cudaEventDisableTiming));
  const std::size_t count_bytes = static_cast<std::size_t>(std::max(penalty_slots, 1)) * vocab * sizeof(int32_t);
  TROUPE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&s.counts), count_bytes));
  TROUPE_CUDA_CHECK(cudaMemsetAsync(s.counts, 0, count_bytes, s.stream));
}

GpuSampler::~GpuSampler() {
  Impl& s = *impl_;
  cudaSetDevice(s.device);
  cudaStreamSynchronize(s.stream);
  cudaFree(s.counts);
  cudaEventDestroy(s.done);
  cudaEventDestroy(s.aux_done);
  cudaGetLastError();
}

int64_t GpuSampler::vocab() const { return impl_->vocab; }
int32_t GpuSampler::penalty_slots() const { return impl_->slots; }

void GpuSampler::begin_sequence(int32_t slot, std::span<const int32_t> prompt) {
  Impl& s = *impl_;
  require(slot >= 0 && slot < s.slots,
          "penalty slot " + std::to_string(slot) + " outside [0, " + std::to_string(s.slots) + ")");
  s.bind();
  int32_t* row = s.counts + static_cast<int64_t>(slot) * s.vocab;
  TROUPE_CUDA_CHECK(cudaMemsetAsync(row, 0, static_cast<std::size_t>(s.vocab) * sizeof(int32_t), s.stream));
  if (prompt.empty()) return;
  const int32_t* ids = s.stage(prompt);
  cuda::mark_prompt(row, ids, static_cast<int64_t>(prompt.size()), static_cast<int32_t>(s.vocab), s.stream);
  s.staged();
}

void GpuSampler::record(std::span<const int32_t> slots, std::span<const int32_t> tokens) {
  Impl& s = *impl_;
  require(slots.size() == tokens.size(), "record: slots and tokens differ in length");
  for (int32_t slot : slots) require(slot < s.slots, "record: penalty slot " + std::to_string(slot) + " out of range");
  if (slots.empty()) return;
  s.bind();
  std::vector<int32_t> both(slots.begin(), slots.end());
  both.insert(both.end(), tokens.begin(), tokens.end());
  const int32_t* dev = s.stage(std::span<const int32_t>(both));
  cuda::record_tokens(s.counts, static_cast<int32_t>(s.vocab), dev, dev + slots.size(),
                      static_cast<int64_t>(slots.size()), s.stream);
  s.staged();
}

void GpuSampler::enqueue(const Tensor& logits, std::span<const GpuSampleRow> rows, bool with_logprobs, bool record) {
  Impl& s = *impl_;
  if (s.pending) throw std::logic_error("gpu sampler: enqueue() before wait() of the previous batch");
  const int64_t n = static_cast<int64_t>(rows.size());
  require(logits.device() == Device::cuda && (logits.dtype() == DType::f32 || logits.dtype() == DType::bf16),
          "logits must be f32 or bf16 on the GPU, got " + logits.describe());
  require(logits.rank() >= 1 && logits.size(-1) == s.vocab && logits.numel() == n * s.vocab,
          "logits " + logits.describe() + " for " + std::to_string(n) + " rows of " + std::to_string(s.vocab));
  require(n < (int64_t{1} << 31), "too many rows");
  s.bind();

  // Parameters as the CPU sampler uses them (see SampleRowParams), and each row's masked ids sorted.
  cuda::SampleRowParams* params = s.params_host.get<cuda::SampleRowParams>(static_cast<std::size_t>(n));
  std::size_t masked_total = 0;
  for (const GpuSampleRow& row : rows) masked_total += row.masked.size();
  int32_t* banned = s.banned_host.get<int32_t>(masked_total);
  std::size_t banned_used = 0;
  for (int64_t r = 0; r < n; ++r) {
    const GpuSampleRow& row = rows[r];
    require(row.params != nullptr, "row " + std::to_string(r) + " has no parameters");
    const SamplingParams& p = *row.params;
    require(row.penalty_slot < s.slots, "row " + std::to_string(r) + ": penalty slot " +
                                            std::to_string(row.penalty_slot) + " out of range");
    require(!p.has_penalties() || row.penalty_slot >= 0,
            "row " + std::to_string(r) + " has penalties but no penalty slot");
    cuda::SampleRowParams& q = params[r];
    q = cuda::SampleRowParams{};
    q.greedy = p.greedy() ? 1 : 0;
    if (!q.greedy) {
      require(row.u >= 0.0 && row.u < 1.0, "row " + std::to_string(r) + ": u outside [0, 1)");
      q.u = row.u;
      q.temperature = static_cast<float>(p.temperature);
      q.top_p = p.top_p;
      q.min_p = p.min_p;
      q.top_k = p.top_k > 0 ? p.top_k : 0;
    }
    q.slot = row.penalty_slot;
    if (p.has_penalties()) {
      q.repetition_penalty = static_cast<float>(p.repetition_penalty);
      q.presence_penalty = static_cast<float>(p.presence_penalty);
      q.frequency_penalty = static_cast<float>(p.frequency_penalty);
    }
    q.ban_begin = static_cast<int32_t>(banned_used);
    q.ban_count = static_cast<int32_t>(row.masked.size());
    std::copy(row.masked.begin(), row.masked.end(), banned + banned_used);
    std::sort(banned + banned_used, banned + banned_used + row.masked.size());
    banned_used += row.masked.size();
    if (with_logprobs) {
      const int32_t top = std::min<int32_t>(p.logprobs.value_or(0), cuda::max_top_logprobs);
      q.top_logprobs = std::max(top, 0);
    }
  }
  if (n == 0) {
    s.pending = true;
    s.with_logprobs = with_logprobs;
    s.pending_rows = 0;
    return;
  }

  auto* params_dev = static_cast<cuda::SampleRowParams*>(s.params.get(static_cast<std::size_t>(n) * sizeof(cuda::SampleRowParams)));
  TROUPE_CUDA_CHECK(cudaMemcpyAsync(params_dev, params, static_cast<std::size_t>(n) * sizeof(cuda::SampleRowParams),
                                    cudaMemcpyHostToDevice, s.stream));
  auto* banned_dev = static_cast<int32_t*>(s.banned.get(std::max<std::size_t>(masked_total, 1) * sizeof(int32_t)));
  if (masked_total > 0)
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(banned_dev, banned, masked_total * sizeof(int32_t), cudaMemcpyHostToDevice,
                                      s.stream));

  cuda::SampleLaunch launch;
  launch.logits = logits.data();
  launch.logits_bf16 = logits.dtype() == DType::bf16;
  launch.rows = static_cast<int32_t>(n);
  launch.vocab = static_cast<int32_t>(s.vocab);
  launch.row_stride = s.vocab;
  launch.params = params_dev;
  launch.banned = banned_dev;
  launch.counts = s.counts;
  launch.record = record;
  launch.grid = static_cast<int32_t>(std::min<int64_t>(n, s.multiprocessors));
  launch.work = static_cast<float*>(s.work.get(static_cast<std::size_t>(launch.grid) * s.vocab * sizeof(float)));
  launch.tokens = static_cast<int32_t*>(s.tokens.get(static_cast<std::size_t>(n) * sizeof(int32_t)));
  launch.results =
      with_logprobs
          ? static_cast<cuda::SampleRowResult*>(s.results.get(static_cast<std::size_t>(n) * sizeof(cuda::SampleRowResult)))
          : nullptr;
  cuda::sample(launch, s.stream);

  TROUPE_CUDA_CHECK(cudaMemcpyAsync(s.tokens_host.get<int32_t>(static_cast<std::size_t>(n)), launch.tokens,
                                    static_cast<std::size_t>(n) * sizeof(int32_t), cudaMemcpyDeviceToHost, s.stream));
  if (with_logprobs)
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(s.results_host.get<cuda::SampleRowResult>(static_cast<std::size_t>(n)),
                                      launch.results, static_cast<std::size_t>(n) * sizeof(cuda::SampleRowResult),
                                      cudaMemcpyDeviceToHost, s.stream));
  TROUPE_CUDA_CHECK(cudaEventRecord(s.done, s.stream));
  s.pending = true;
  s.with_logprobs = with_logprobs;
  s.pending_rows = static_cast<int32_t>(n);
  s.last_tokens = launch.tokens;
}

void GpuSampler::wait(std::span<int32_t> tokens, std::span<SampleResult> results) {
  Impl& s = *impl_;
  if (!s.pending) throw std::logic_error("gpu sampler: wait() without enqueue()");
  require(tokens.size() == static_cast<std::size_t>(s.pending_rows), "wait: tokens span has the wrong length");
  require(results.size() == (s.with_logprobs ? tokens.size() : 0),
          "wait: results must be given, one per row, exactly when logprobs were asked");
  s.pending = false;
  if (s.pending_rows == 0) return;
  s.bind();
  TROUPE_CUDA_CHECK(cudaEventSynchronize(s.done));
  const int32_t* host_tokens = s.tokens_host.get<int32_t>(tokens.size());
  std::copy(host_tokens, host_tokens + tokens.size(), tokens.begin());
  if (results.empty()) return;
  const cuda::SampleRowResult* host = s.results_host.get<cuda::SampleRowResult>(results.size());
  for (std::size_t r = 0; r < results.size(); ++r) {
    const cuda::SampleRowResult& g = host[r];
    SampleResult& out = results[r];
    out.token = g.token;
    out.logprob = g.logprob;
    out.rank = g.rank;
    out.top.resize(static_cast<std::size_t>(g.num_top));
    for (int j = 0; j < g.num_top; ++j) out.top[j] = TokenLogprob{g.top_ids[j], g.top_logprobs[j]};
  }
}

void GpuSampler::sample(const Tensor& logits, std::span<const GpuSampleRow> rows, std::span<int32_t> tokens,
                        std::span<SampleResult> results, bool record) {
  enqueue(logits, rows, !results.empty(), record);
  wait(tokens, results);
}

const int32_t* GpuSampler::device_tokens() const { return impl_->last_tokens; }

}  // namespace troupe
