#include "engine/sampler.hpp"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>

namespace troupe {
namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// Python's repr for the values users send (-1 → "-1.0"), so messages read like vLLM's.
std::string format_number(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, end);
  if (s.find_first_of(".eni") == std::string::npos) s += ".0";
  return s;
}

// Scratch for the per-token path, one per thread rather than per sequence: a batch of hundreds of
// sequences over a 150k vocabulary would otherwise hold hundreds of vocab-sized buffers.
struct Workspace {
  std::vector<float> logits;
  std::vector<float> scratch;
};
thread_local Workspace workspace;

// The reduction pragma lets the compiler use vector max instructions (the engine builds with
// -fopenmp-simd); a std::max loop stays scalar because of its NaN semantics (116 µs against 205 µs
// over 152k floats on the H100 hosts' Xeons at -O2). Empty input → -inf.
float max_value(std::span<const float> values) {
  float m = -std::numeric_limits<float>::infinity();
  const float* v = values.data();
  const size_t n = values.size();
#pragma omp simd reduction(max : m)
  for (size_t i = 0; i < n; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

}  // namespace

// ---- SamplingParams --------------------------------------------------------------------------------

std::optional<std::string> SamplingParams::check() const {
  // Comparisons are written so that NaN fails them.
  if (!(temperature >= 0.0)) return "temperature must be non-negative, got " + format_number(temperature);
  if (std::isinf(temperature)) return "temperature must be finite, got " + format_number(temperature);
  if (!(top_p > 0.0 && top_p <= 1.0)) return "top_p must be in (0, 1], got " + format_number(top_p);
  if (top_k < -1) return "top_k must be -1 or 0 (disabled), or at least 1, got " + std::to_string(top_k);
  if (!(min_p >= 0.0 && min_p <= 1.0)) return "min_p must be in [0, 1], got " + format_number(min_p);
  if (!(repetition_penalty > 0.0))
    return "repetition_penalty must be greater than zero, got " + format_number(repetition_penalty);
  if (std::isinf(repetition_penalty))
    return "repetition_penalty must be finite, got " + format_number(repetition_penalty);
  if (!(presence_penalty >= -2.0 && presence_penalty <= 2.0))
    return "presence_penalty must be in [-2, 2], got " + format_number(presence_penalty);
  if (!(frequency_penalty >= -2.0 && frequency_penalty <= 2.0))
    return "frequency_penalty must be in [-2, 2], got " + format_number(frequency_penalty);
  if (max_tokens && *max_tokens < 1) return "max_tokens must be at least 1, got " + std::to_string(*max_tokens);
  if (min_tokens < 0) return "min_tokens must be non-negative, got " + std::to_string(min_tokens);
  if (max_tokens && min_tokens > *max_tokens)
    return "min_tokens must be less than or equal to max_tokens (" + std::to_string(*max_tokens) + "), got " +
           std::to_string(min_tokens);
  for (int32_t id : stop_token_ids)
    if (id < 0) return "stop_token_ids must be non-negative token ids, got " + std::to_string(id);
  if (logprobs && (*logprobs < 0 || *logprobs > kMaxLogprobs))
    return "logprobs must be in [0, " + std::to_string(kMaxLogprobs) + "], got " + std::to_string(*logprobs);
  return std::nullopt;
}

void SamplingParams::validate() const {
  if (auto message = check()) throw std::invalid_argument(*message);
}

// ---- Rng -------------------------------------------------------------------------------------------

Rng::Rng(uint64_t seed) {
  // splitmix64 expands the seed so that nearby seeds (0, 1, 2, …) give unrelated, non-zero states.
  for (uint64_t& s : s_) s = splitmix64(seed);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

uint64_t fresh_seed() {
  static const uint64_t base = [] {
    std::random_device device;
    return (static_cast<uint64_t>(device()) << 32) ^ device();
  }();
  static std::atomic<uint64_t> counter{0};
  uint64_t state = base + counter.fetch_add(1, std::memory_order_relaxed);
  return splitmix64(state);
}

// ---- building blocks -------------------------------------------------------------------------------

int32_t argmax(std::span<const float> values) {
  if (values.empty()) return -1;
  // One scalar pass: on the H100 hosts (Xeon, -O2) it took 127 µs for 152k logits against 224 µs for a
  // vectorised max followed by a search for its first index.
  size_t best = 0;
  for (size_t i = 1; i < values.size(); ++i)
    if (values[i] > values[best]) best = i;  // strict: an equal later value does not displace
  return static_cast<int32_t>(best);
}

float filter_threshold(std::span<const float> weights, double min_p, int32_t top_k, double top_p,
                       std::vector<float>& scratch) {
  const float max_weight = max_value(weights);
  if (!(max_weight > 0.0f)) return 0.0f;

  // τ is always one of the weights, so "w ≥ τ" reproduces each filter's decision exactly.
  float threshold = 0.0f;
  if (min_p > 0.0) {
    const double limit = min_p * static_cast<double>(max_weight);
    threshold = max_weight;
    for (float w : weights)
      if (static_cast<double>(w) >= limit && w < threshold) threshold = w;
  }

  const bool use_top_k = top_k > 0;
  const bool use_top_p = top_p < 1.0;
  const auto survives = [&threshold](float w) { return w >= threshold && w > 0.0f; };

  if (use_top_k) {
    // The k-th largest survivor through a min-heap of k: one pass, and most weights fail the first
    // comparison, where a full copy plus nth_element would touch the vocabulary three times.
    const size_t k = static_cast<size_t>(top_k);
    scratch.clear();
    for (float w : weights) {
      if (!survives(w)) continue;
      if (scratch.size() < k) {
        scratch.push_back(w);
        std::push_heap(scratch.begin(), scratch.end(), std::greater<float>());
      } else if (w > scratch.front()) {
        std::pop_heap(scratch.begin(), scratch.end(), std::greater<float>());
        scratch.back() = w;
        std::push_heap(scratch.begin(), scratch.end(), std::greater<float>());
      }
    }
    if (scratch.size() == k) threshold = std::max(threshold, scratch.front());
  }
  if (!use_top_p) return threshold;

  scratch.clear();
  for (float w : weights)
    if (survives(w)) scratch.push_back(w);
  const auto begin = scratch.begin();
  const auto end = scratch.end();

  double total = 0.0;
  for (auto it = begin; it != end; ++it) total += *it;
  const double target = top_p * total;
  // Sort only as far as the prefix reaches: language-model distributions are peaked, so a few
  // dozen of 150k tokens usually hold top_p of the mass.
  double cumulative = 0.0;
  size_t sorted = 0;
  size_t chunk = 64;
  const size_t n = static_cast<size_t>(end - begin);
  float boundary = *std::min_element(begin, end);  // if rounding never reaches target: keep all
  bool found = false;
  while (sorted < n && !found) {
    const size_t next = std::min(n, sorted + chunk);
    std::partial_sort(begin + sorted, begin + next, end, std::greater<float>());
    for (; sorted < next; ++sorted) {
      cumulative += begin[sorted];
      if (cumulative >= target) {
        boundary = begin[sorted];
        found = true;
        break;
      }
    }
    chunk *= 4;
  }
  return std::max(threshold, boundary);
}

int32_t sample_from(std::span<const float> weights, float threshold, double u) {
  double total = 0.0;
  for (float w : weights)
    if (w >= threshold) total += w;
  if (!(total > 0.0)) return -1;
  const double target = u * total;
  double cumulative = 0.0;
  int32_t last = -1;
  for (size_t i = 0; i < weights.size(); ++i) {
    const float w = weights[i];
    if (w < threshold || !(w > 0.0f)) continue;
    cumulative += w;
    last = static_cast<int32_t>(i);
    if (cumulative > target) return last;
  }
  return last;  // u · total rounded up to the full sum
}

void compute_logprobs(std::span<const float> logits, int32_t token, int32_t n, SampleResult& result) {
  const float max_logit = max_value(logits);
  // Terms in float (each is in (0, 1], as vLLM's f32 log_softmax has them), the sum in double.
  double sum = 0.0;
  for (float x : logits) sum += std::exp(x - max_logit);
  const double log_z = static_cast<double>(max_logit) + std::log(sum);
  auto logprob = [&](int32_t id) { return static_cast<float>(static_cast<double>(logits[id]) - log_z); };

  result.token = token;
  result.logprob = logprob(token);
  const float chosen = logits[token];
  int32_t rank = 1;
  for (float x : logits) rank += x > chosen;
  result.rank = rank;

  // Insertion into a short sorted list: n ≤ kMaxLogprobs, and most logits fail the first comparison.
  auto& top = result.top;
  top.clear();
  n = std::min<int32_t>(n, static_cast<int32_t>(logits.size()));
  if (n <= 0) return;
  for (size_t i = 0; i < logits.size(); ++i) {
    const float x = logits[i];
    if (static_cast<int32_t>(top.size()) == n && !(x > top.back().logprob)) continue;
    // `logprob` holds the raw logit until the end; equal logits keep id order (earlier stays first).
    const auto at = std::upper_bound(top.begin(), top.end(), x,
                                     [](float value, const TokenLogprob& e) { return value > e.logprob; }) -
                    top.begin();
    if (static_cast<int32_t>(top.size()) == n) top.pop_back();
    top.insert(top.begin() + at, TokenLogprob{static_cast<int32_t>(i), x});
  }
  for (auto& e : top) e.logprob = logprob(e.token);
}

// ---- SequenceSampler -------------------------------------------------------------------------------

SequenceSampler::SequenceSampler(SamplingParams params, std::span<const int32_t> prompt,
                                 std::span<const int32_t> eos_token_ids)
    : params_(std::move(params)), rng_(params_.seed ? static_cast<uint64_t>(*params_.seed) : fresh_seed()) {
  stop_ids_ = params_.stop_token_ids;
  if (!params_.ignore_eos) stop_ids_.insert(stop_ids_.end(), eos_token_ids.begin(), eos_token_ids.end());
  std::sort(stop_ids_.begin(), stop_ids_.end());
  stop_ids_.erase(std::unique(stop_ids_.begin(), stop_ids_.end()), stop_ids_.end());

  if (params_.repetition_penalty != 1.0) {
    prompt_.assign(prompt.begin(), prompt.end());
    std::sort(prompt_.begin(), prompt_.end());
    prompt_.erase(std::unique(prompt_.begin(), prompt_.end()), prompt_.end());
  }
}

bool SequenceSampler::is_stop_token(int32_t token) const {
  return std::binary_search(stop_ids_.begin(), stop_ids_.end(), token);
}

FinishReason SequenceSampler::accept(int32_t token) {
  ++num_output_;
  if (params_.has_penalties()) ++output_counts_[token];
  if (num_output_ < params_.min_tokens) return FinishReason::none;
  if (params_.max_tokens && num_output_ >= *params_.max_tokens) return FinishReason::length;
  if (is_stop_token(token)) return FinishReason::stop;
  return FinishReason::none;
}

void SequenceSampler::apply_min_tokens(std::span<float> logits) const {
  if (num_output_ >= params_.min_tokens) return;
  for (int32_t id : stop_ids_)
    if (static_cast<size_t>(id) < logits.size()) logits[id] = -std::numeric_limits<float>::infinity();
}

void SequenceSampler::apply_penalties(std::span<float> logits) const {
  const auto in_range = [&](int32_t id) { return id >= 0 && static_cast<size_t>(id) < logits.size(); };
  if (params_.repetition_penalty != 1.0) {
    const float r = static_cast<float>(params_.repetition_penalty);
    // A token in both prompt and output is penalised once.
    const auto penalise = [&](int32_t id) { logits[id] = logits[id] > 0.0f ? logits[id] / r : logits[id] * r; };
    for (int32_t id : prompt_)
      if (in_range(id)) penalise(id);
    for (const auto& [id, count] : output_counts_)
      if (in_range(id) && !std::binary_search(prompt_.begin(), prompt_.end(), id)) penalise(id);
  }
  if (params_.frequency_penalty != 0.0 || params_.presence_penalty != 0.0) {
    const float frequency = static_cast<float>(params_.frequency_penalty);
    const float presence = static_cast<float>(params_.presence_penalty);
    for (const auto& [id, count] : output_counts_)
      if (in_range(id)) logits[id] -= frequency * static_cast<float>(count) + presence;
  }
}

std::span<const int32_t> SequenceSampler::masked_now() const {
  if (num_output_ >= params_.min_tokens) return {};
  return stop_ids_;
}

int32_t SequenceSampler::sample(std::span<const float> raw, SampleResult* result) {
  auto& work = workspace.logits;
  work.assign(raw.begin(), raw.end());
  apply_min_tokens(work);
  apply_penalties(work);

  int32_t token;
  if (params_.greedy()) {
    token = argmax(work);
  } else {
    // Scale, then shift by the scaled maximum, as softmax(logits / T) is computed in vLLM.
    const float temperature = static_cast<float>(params_.temperature);
    for (float& x : work) x /= temperature;
    const float max_scaled = max_value(work);
    if (max_scaled == -std::numeric_limits<float>::infinity()) {
      token = 0;  // every token masked: nothing to draw from, and argmax's tie rule says 0
    } else {
      for (float& x : work) x = std::exp(x - max_scaled);
      const int32_t top_k = params_.top_k > 0 ? params_.top_k : 0;
      const float threshold = filter_threshold(work, params_.min_p, top_k, params_.top_p, workspace.scratch);
      token = sample_from(work, threshold, rng_.uniform());  // ≥ 0: the maximum has weight exp(0) = 1
    }
  }

  if (result) compute_logprobs(raw, token, params_.logprobs.value_or(0), *result);
  return token;
}

void sample_batch(std::span<const float> logits, size_t vocab, std::span<SequenceSampler* const> samplers,
                  std::span<int32_t> tokens, std::span<SampleResult> results) {
  if (logits.size() != samplers.size() * vocab || tokens.size() != samplers.size() ||
      (!results.empty() && results.size() != samplers.size()))
    throw std::invalid_argument("sample_batch: logits, samplers, tokens and results disagree on the row count");
  for (size_t r = 0; r < samplers.size(); ++r)
    tokens[r] = samplers[r]->sample(logits.subspan(r * vocab, vocab), results.empty() ? nullptr : &results[r]);
}

}  // namespace troupe
