// Drives the actor runtime from tests: submit many requests at once, wait, collect their tokens.
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <random>

#include "actors/runtime.hpp"

namespace troupe::test {

struct Outcome {
  std::vector<TokenOut> tokens;
  RequestEvent final;
  bool done = false;
};

struct Job {
  std::vector<int32_t> prompt;
  SamplingParams params;
};

// The final events of submitted jobs, by job index. Shared with the listeners, which may outlive a
// wait that gave up (a failed engine's test).
struct FinalEvents {
  std::mutex m;
  std::condition_variable cv;
  std::vector<RequestEvent> finals;
  size_t finished = 0;
};
// Submits every job; the result fills in as they end.
std::shared_ptr<FinalEvents> submit_collecting_finals(Runtime& runtime, const std::vector<Job>& jobs);

// Submits all jobs at once and waits for every one to finish; outcomes by job index.
std::vector<Outcome> run_jobs(Runtime& runtime, const std::vector<Job>& jobs, double timeout_s = 120);

// `count` greedy jobs with prompt lengths in [1, 40] and output lengths in [1, 24], deterministic.
std::vector<Job> mixed_jobs(int count, int vocab, uint32_t seed, int logprobs = 0);

// Greedy outcomes of the same jobs whose sums ran in another order (another layout; replayed graphs
// against eager steps; another batch composition): bf16 rounding may flip a near-tie of the logits,
// and in an MoE model also of the router, which moves the logits further. A request may leave the
// reference's path only where the reference's two best tokens were within `gap` in log-probability,
// and only to one of the reference's `within` best (the jobs need logprobs ≥ within); the rest of that
// request is not compared. Where the f32 CPU backend's outcomes of the same jobs are given and they
// take `got`'s very tokens up to and past the departure, the departure counts as the reference's own
// rounding (bf16 flipped a tie the other way in the reference), whatever the gap. Failures are
// reported under `what`; returns how many requests left.
struct NearTieRule {
  float gap;
  size_t within;
};
constexpr NearTieRule kDenseNearTie{0.1f, 2};
constexpr NearTieRule kMoeNearTie{0.3f, 5};
// Why request i left the reference's path at its token k beyond the rule's bound, where it can tell
// ("" where it cannot: then the departure fails the test).
using DepartureExplainer = std::function<std::string(size_t request, size_t token)>;
int greedy_departures(const std::string& what, const std::vector<Outcome>& ref, const std::vector<Outcome>& got,
                      NearTieRule rule, const std::vector<Outcome>* f32 = nullptr,
                      const DepartureExplainer& explain = {});

RuntimeOptions tiny_options(const std::string& preset, int tp = 1, int pp = 1, int dp = 1, bool ep = false);

}  // namespace troupe::test
