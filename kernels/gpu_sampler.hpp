// Sampling on the GPU for the model runner: the semantics of engine/sampler.hpp (read its header),
// computed where the logits are, so that only token ids (and logprobs when asked) cross to the host.
//
// The host stays the reference for randomness: each row brings the uniform u that its sequence's
// Rng draws (one per non-greedy row and step, exactly when SequenceSampler::sample would draw), so a
// seeded request samples the same tokens on the CPU and the GPU, up to near-ties of cumulative sums
// (within ~1e-8 of the total; kernels/sampling.cu says why).
//
// Penalties need each sequence's token history. It lives on the device, in "penalty slots": a slot is
// a vocab-wide row of counts (output occurrences, plus a prompt flag for the repetition penalty).
// The caller owns the slot ↔ sequence mapping: begin_sequence(slot, prompt) when a sequence that has
// penalties starts (or is re-admitted after preemption), and the sampler adds each sampled token to
// its row's slot (or record() adds tokens chosen elsewhere). Rows without penalties use slot −1 and
// need no slot at all, so the slot pool only has to cover sequences that use penalties.
//
// Typical step:
//   sampler.enqueue(logits, rows, /*with_logprobs=*/any_row_wants_them);
//   ... host work that overlaps the kernel ...
//   sampler.wait(tokens, results);   // the one host synchronisation, on this sampler's own event
//
// Not thread-safe: one gpu_worker thread owns it, like the backend it belongs to. Work is ordered on
// the backend's stream, after whatever produced the logits.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "engine/backend.hpp"
#include "engine/sampler.hpp"
#include "engine/tensor.hpp"

namespace troupe {

// One row of logits to sample.
struct GpuSampleRow {
  const SamplingParams* params = nullptr;  // must stay valid until enqueue() returns
  // The sequence's next Rng::uniform() (in [0, 1)); ignored for a greedy row, which draws nothing.
  double u = 0.0;
  // The slot holding this sequence's penalty state (begin_sequence), or −1. A row whose params have
  // penalties must name a slot; a slot appears at most once per enqueue().
  int32_t penalty_slot = -1;
  // Ids whose logits become −inf before anything else: the sequence's stop tokens while fewer than
  // min_tokens have been accepted (SequenceSampler::apply_min_tokens), else empty. Any order.
  std::span<const int32_t> masked;
};

class GpuSampler {
 public:
  // backend: a CUDA backend (make_cuda_backend); vocab: the logits' width; penalty_slots: how many
  // sequences with penalties can be tracked at once (device memory: penalty_slots × vocab × 4 bytes,
  // 600 KB per slot for a 152k vocabulary). Scratch grows on demand and is kept: about rows × vocab ×
  // 4 bytes, bounded by the number of multiprocessors.
  GpuSampler(Backend& backend, int64_t vocab, int32_t penalty_slots);
  ~GpuSampler();
  GpuSampler(const GpuSampler&) = delete;
  GpuSampler& operator=(const GpuSampler&) = delete;

  int64_t vocab() const;
  int32_t penalty_slots() const;

  // Clears `slot` and marks the prompt's tokens for the repetition penalty. Enqueued on the stream
  // (ordered before later sampling); `prompt` may be freed on return.
  void begin_sequence(int32_t slot, std::span<const int32_t> prompt);

  // Adds tokens[i] to the output counts of slots[i] (slot −1: skipped): for tokens accepted without
  // this sampler choosing them, or after an enqueue() with record = false.
  void record(std::span<const int32_t> slots, std::span<const int32_t> tokens);

  // Starts sampling every row of logits ([rows.size(), vocab], f32 or bf16, on the backend's device).
  // with_logprobs: compute, for every row, the raw-logit logprob and rank of its token and its
  // params.logprobs.value_or(0) best tokens (as sample_batch does when given results). record: add
  // each sampled token to its row's penalty slot on the device. Returns without waiting; call
  // wait() before the next enqueue().
  void enqueue(const Tensor& logits, std::span<const GpuSampleRow> rows, bool with_logprobs, bool record = true);

  // Waits for the last enqueue() and writes its tokens (and results, which must be given exactly when
  // with_logprobs was set; each result's `top` is resized, keeping its capacity).
  void wait(std::span<int32_t> tokens, std::span<SampleResult> results = {});

  // enqueue() then wait().
  void sample(const Tensor& logits, std::span<const GpuSampleRow> rows, std::span<int32_t> tokens,
              std::span<SampleResult> results = {}, bool record = true);

  // The last enqueue()'s tokens on the device, i32 [rows], valid until the next enqueue(): for a
  // next step that embeds them without a host round trip.
  const int32_t* device_tokens() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe
