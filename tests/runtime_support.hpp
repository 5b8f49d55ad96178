// Drives the actor runtime from tests: submit many requests at once, wait, collect their tokens.
#pragma once

#include <condition_variable>
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

// Submits all jobs at once and waits for every one to finish; outcomes by job index.
std::vector<Outcome> run_jobs(Runtime& runtime, const std::vector<Job>& jobs, double timeout_s = 120);

// `count` greedy jobs with prompt lengths in [1, 40] and output lengths in [1, 24], deterministic.
std::vector<Job> mixed_jobs(int count, int vocab, uint32_t seed, int logprobs = 0);

RuntimeOptions tiny_options(const std::string& preset, int tp = 1, int pp = 1, int dp = 1, bool ep = false);

}  // namespace troupe::test
