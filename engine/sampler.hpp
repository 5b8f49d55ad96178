// Host-side sampling from f32 logits: the reference semantics that the GPU sampler must reproduce
// and that the OpenAI-compatible server exposes. Semantics follow vLLM, because its users bring
// their request parameters with them:
//
//   raw logits ─▶ min_tokens mask ─▶ repetition penalty ─▶ frequency/presence penalties
//     ├─ greedy (temperature < 1e-5): argmax, ties → lowest id; no random number is drawn
//     └─ else: ÷ temperature ─▶ softmax weights ─▶ min_p ─▶ top_k ─▶ top_p ─▶ one uniform draw
//
// Logprobs are those of the RAW logits (log_softmax before penalties and temperature), as vLLM
// reports them by default.
//
// Every filter (min_p, top_k, top_p) is a threshold on probability, so together they reduce to one
// threshold τ: a token survives iff its weight ≥ τ. Ties at a boundary therefore all survive (vLLM's
// top_k does the same: it masks logits below the k-th largest), and a GPU kernel only has to find τ.
// The draw is an inverse CDF over surviving tokens in id order with a single uniform u ∈ [0, 1), so a
// kernel given the same u picks the same token up to float summation order.
//
// Stop handling: accept() reports whether a token ends the sequence (stop token or max_tokens), as
// vLLM's check_stop does; stop strings and the model's context limit are the caller's business.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace troupe {

// Below this temperature sampling is greedy (vLLM's _SAMPLING_EPS): dividing by it would overflow.
inline constexpr double kGreedyTemperature = 1e-5;
// vLLM's default --max-logprobs, and the OpenAI API's limit on top_logprobs.
inline constexpr int32_t kMaxLogprobs = 20;

struct SamplingParams {
  double temperature = 1.0;  // < kGreedyTemperature: greedy, and top_p/top_k/min_p/seed are ignored
  double top_p = 1.0;        // (0, 1]
  int32_t top_k = 0;         // 0 or -1: off
  double min_p = 0.0;        // [0, 1]; 0: off
  std::optional<int64_t> seed;
  double repetition_penalty = 1.0;  // > 0; prompt and output tokens; 1: off
  double presence_penalty = 0.0;    // [-2, 2]; output tokens only
  double frequency_penalty = 0.0;   // [-2, 2]; output tokens only
  std::optional<int32_t> max_tokens = 16;  // vLLM's default; nullopt: until the context is full
  int32_t min_tokens = 0;  // stop tokens (incl. EOS unless ignore_eos) are masked until this many
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  std::optional<int32_t> logprobs;  // number of top logprobs to return, [0, kMaxLogprobs]

  bool greedy() const { return temperature < kGreedyTemperature; }
  bool has_penalties() const {
    return repetition_penalty != 1.0 || presence_penalty != 0.0 || frequency_penalty != 0.0;
  }
  // The first out-of-range parameter as a message for an HTTP 400 body, e.g.
  // "temperature must be non-negative, got -1.0"; nullopt when all are valid.
  std::optional<std::string> check() const;
  // Throws std::invalid_argument with check()'s message.
  void validate() const;
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

// What sample() reports besides the token. Reuse one across calls: `top` keeps its capacity.
struct SampleResult {
  int32_t token = 0;
  float logprob = 0.0f;           // of `token` under the raw logits
  int32_t rank = 0;               // 1 + number of tokens with a strictly larger raw logit
  std::vector<TokenLogprob> top;  // params.logprobs entries, descending; ties → lower id first
};

enum class FinishReason : uint8_t { none, stop, length };

// xoshiro256** seeded through splitmix64: a fixed algorithm, so a seed means the same draws on every
// platform and standard library (std::*_distribution are implementation-defined).
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1) from the top 53 bits

 private:
  uint64_t s_[4];
};

// A seed for a request that gave none: a process-wide counter, offset once from std::random_device
// and mixed, so concurrent requests get independent streams.
uint64_t fresh_seed();

// The sampling state of one sequence: its parameters, random stream, and the token history that
// penalties need. sample() does not record the token; accept() does, so a token chosen elsewhere
// (another rank, a speculative verifier) keeps the history right.
class SequenceSampler {
 public:
  // `prompt` feeds the repetition penalty; `eos_token_ids` are the model's (generation_config.json)
  // and stop the sequence unless params.ignore_eos. params must be valid (see validate()).
  SequenceSampler(SamplingParams params, std::span<const int32_t> prompt,
                  std::span<const int32_t> eos_token_ids = {});

  const SamplingParams& params() const { return params_; }
  int32_t num_output_tokens() const { return num_output_; }

  // Picks the next token from one row of logits (vocab entries). Draws one uniform unless greedy.
  // Logits must be finite or -inf (masked). Fills `result` (incl. logprobs) when given.
  int32_t sample(std::span<const float> logits, SampleResult* result = nullptr);

  // Records an output token and says whether the sequence is finished. As in vLLM: nothing stops
  // before min_tokens; then max_tokens (length) wins over a stop token.
  FinishReason accept(int32_t token);

  // Whether `token` is one of this sequence's stop tokens (stop_token_ids, plus EOS unless ignored).
  bool is_stop_token(int32_t token) const;

  // For a sampler that runs elsewhere (the GPU): the uniform sample() would draw now (advancing the
  // stream; call it exactly when sample() would: once per non-greedy step), and the ids
  // apply_min_tokens masks now (empty once min_tokens are out).
  double draw_uniform() { return rng_.uniform(); }
  std::span<const int32_t> masked_now() const;
  // The prompt's distinct tokens (kept only when penalties are on): the repetition penalty's set.
  std::span<const int32_t> prompt_tokens() const { return prompt_; }

  // The steps sample() applies to raw logits, exposed so tests and the GPU sampler can compare.
  // Stop tokens → -inf while fewer than min_tokens have been accepted.
  void apply_min_tokens(std::span<float> logits) const;
  // Repetition (prompt ∪ output: x > 0 ? x / r : x * r), then x -= frequency·count +
  // presence·(count > 0) over output tokens. Ids outside the span are ignored.
  void apply_penalties(std::span<float> logits) const;

 private:
  SamplingParams params_;
  Rng rng_;
  std::vector<int32_t> stop_ids_;  // sorted, unique
  std::vector<int32_t> prompt_;    // sorted, unique; kept only when penalties are on
  std::unordered_map<int32_t, int32_t> output_counts_;  // kept only when penalties are on
  int32_t num_output_ = 0;
};

// Samples each row r of a [rows × vocab] row-major matrix with samplers[r]; tokens[r] receives the
// token and results[r] (when results is non-empty) the logprobs. Does not accept() the tokens.
void sample_batch(std::span<const float> logits, size_t vocab, std::span<SequenceSampler* const> samplers,
                  std::span<int32_t> tokens, std::span<SampleResult> results = {});

// The building blocks, for tests and for checking the GPU sampler.

// Index of the largest value; ties → the lowest index. Empty input → -1.
int32_t argmax(std::span<const float> values);

// τ such that the tokens with weight ≥ τ are those min_p, top_k and top_p keep, in that order, each
// on the distribution the previous one left. `weights` are non-negative and proportional to
// probabilities (any scale). min_p: drop w < min_p · max w. top_k (> 0): keep w ≥ the k-th largest.
// top_p (< 1): sort survivors descending and keep each token whose preceding cumulative mass is
// < top_p · total, i.e. the smallest prefix reaching top_p (always ≥ 1 token), widened to ties.
// Returns 0 when nothing is filtered. `scratch` avoids an allocation per call.
float filter_threshold(std::span<const float> weights, double min_p, int32_t top_k, double top_p,
                       std::vector<float>& scratch);

// Inverse CDF over the tokens with weight ≥ threshold, in id order: the first token whose cumulative
// weight exceeds u · total. -1 when no token has positive weight.
int32_t sample_from(std::span<const float> weights, float threshold, double u);

// Fills result's token, logprob, rank and the n best (token, logprob) under log_softmax(logits).
void compute_logprobs(std::span<const float> logits, int32_t token, int32_t n, SampleResult& result);

}  // namespace troupe
