// Token sampling on the device (kernels/sampling.cu); kernels/gpu_sampler.hpp is the host-facing class.
// Semantics are engine/sampler.hpp's, step for step; see that header.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace troupe::cuda {

inline constexpr int max_top_logprobs = 20;  // engine/sampler.hpp's kMaxLogprobs

// Per-row parameters, in the precision in which the CPU sampler uses them: it divides by
// float(temperature) and penalises with float factors, but compares min_p, top_p and u in double.
struct SampleRowParams {
  double u = 0.0;      // the row's uniform draw in [0, 1); unused when greedy
  double top_p = 1.0;  // < 1: on
  double min_p = 0.0;  // > 0: on
  float temperature = 1.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t greedy = 0;
  int32_t top_k = 0;         // > 0: on
  int32_t slot = -1;         // row of the penalty counts; -1: no penalties
  int32_t ban_begin = 0;     // this row's masked ids: banned[ban_begin, ban_begin + ban_count), ascending
  int32_t ban_count = 0;
  int32_t top_logprobs = -1;  // -1: no logprobs; else the chosen token's and this many top ones (≤ 20)
};

struct SampleRowResult {
  int32_t token;
  float logprob;  // of token under log_softmax(raw logits)
  int32_t rank;   // 1 + tokens with a strictly larger raw logit
  int32_t num_top;
  int32_t top_ids[max_top_logprobs];  // descending raw logit; ties → lower id first
  float top_logprobs[max_top_logprobs];
};

struct SampleLaunch {
  const void* logits = nullptr;  // [rows, vocab] f32 or bf16, rows row_stride elements apart
  bool logits_bf16 = false;
  int32_t rows = 0;
  int32_t vocab = 0;
  int64_t row_stride = 0;
  const SampleRowParams* params = nullptr;  // [rows]
  const int32_t* banned = nullptr;
  // [slots, vocab]: bit 31 = the token is in the prompt, bits 0-30 = times it was output.
  int32_t* counts = nullptr;
  bool record = false;  // add each row's sampled token to its slot's counts
  float* work = nullptr;  // [grid, vocab] f32 scratch
  int32_t grid = 1;       // blocks; each takes rows grid apart and owns one work row
  int32_t* tokens = nullptr;             // [rows]
  SampleRowResult* results = nullptr;    // [rows], or null when no row asks for logprobs
};

// One block per row (a persistent grid of launch.grid blocks); no host synchronisation.
void sample(const SampleLaunch& launch, cudaStream_t stream);

// counts_row[id] |= prompt bit for each of the n ids (those outside [0, vocab) are ignored).
void mark_prompt(int32_t* counts_row, const int32_t* ids, int64_t n, int32_t vocab, cudaStream_t stream);

// counts[slots[i], tokens[i]] += 1 for each i with slots[i] ≥ 0 and tokens[i] in [0, vocab).
void record_tokens(int32_t* counts, int32_t vocab, const int32_t* slots, const int32_t* tokens, int64_t n,
                   cudaStream_t stream);

}  // namespace troupe::cuda
