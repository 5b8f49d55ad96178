#include "tests/runtime_support.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "tests/test_support.hpp"

namespace troupe::test {

std::shared_ptr<FinalEvents> submit_collecting_finals(Runtime& runtime, const std::vector<Job>& jobs) {
  auto c = std::make_shared<FinalEvents>();
  c->finals.resize(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i)
    runtime.submit(jobs[i].prompt, jobs[i].params, [c, i](const RequestEvent& e) {
      if (!e.final()) return;
      std::lock_guard lock(c->m);
      c->finals[i] = e;
      ++c->finished;
      c->cv.notify_all();
    });
  return c;
}

std::vector<Outcome> run_jobs(Runtime& runtime, const std::vector<Job>& jobs, double timeout_s) {
  std::mutex m;
  std::condition_variable cv;
  std::vector<Outcome> out(jobs.size());
  size_t finished = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    runtime.submit(jobs[i].prompt, jobs[i].params, [&, i](const RequestEvent& e) {
      std::lock_guard lock(m);
      for (const TokenOut& t : e.tokens) out[i].tokens.push_back(t);
      if (e.final()) {
        out[i].final = e;
        out[i].done = true;
        ++finished;
        cv.notify_all();
      }
    });
  }
  std::unique_lock lock(m);
  if (!cv.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return finished == jobs.size(); }))
    throw std::runtime_error("requests did not finish in time: " + std::to_string(finished) + " of " +
                             std::to_string(jobs.size()));
  return out;
}

int greedy_departures(const std::string& what, const std::vector<Outcome>& ref, const std::vector<Outcome>& got,
                      NearTieRule rule, const std::vector<Outcome>* f32, const DepartureExplainer& explain) {
  int departed = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_TRUE(got[i].done) << what << " request " << i;
    EXPECT_EQ(got[i].tokens.size(), ref[i].tokens.size()) << what << " request " << i;
    for (size_t k = 0; k < std::min(got[i].tokens.size(), ref[i].tokens.size()); ++k) {
      const TokenOut& a = got[i].tokens[k];
      const TokenOut& b = ref[i].tokens[k];
      if (a.token == b.token) continue;
      ++departed;
      const float gap = b.top.size() >= 2 ? b.top[0].logprob - b.top[1].logprob : INFINITY;
      std::printf("  %s request %zu token %zu: %d instead of %d; the reference's top-2 gap %.4f\n", what.c_str(), i,
                  k, a.token, b.token, gap);
      if (f32 && i < f32->size() && (*f32)[i].tokens.size() > k) {
        bool same = true;
        for (size_t j = 0; j <= k; ++j) same = same && (*f32)[i].tokens[j].token == got[i].tokens[j].token;
        if (same) {
          // The f32 run took this very path: the reference is the one that rounded off it.
          std::printf("    the f32 CPU run gives %d there too: the reference left the f32 path\n", a.token);
          break;
        }
      }
      EXPECT_LE(gap, rule.gap) << what << " request " << i << " token " << k << ": left the reference's path where it was no near-tie";
      bool among = false;
      for (size_t j = 1; j < std::min(rule.within, b.top.size()); ++j) among = among || a.token == b.top[j].token;
      if (!among && gap <= rule.gap && explain) {
        const std::string why = explain(i, k);
        if (!why.empty()) {
          std::printf("    %s\n", why.c_str());
          break;
        }
      }
      EXPECT_TRUE(among) << what << " request " << i << " token " << k << ": not among the reference's " << rule.within
                         << " best tokens";
      break;
    }
  }
  return departed;
}

std::vector<Job> mixed_jobs(int count, int vocab, uint32_t seed, int logprobs) {
  std::mt19937 rng(seed);
  std::vector<Job> jobs(count);
  for (Job& j : jobs) {
    const int len = 1 + static_cast<int>(rng() % 40);
    for (int i = 0; i < len; ++i) j.prompt.push_back(static_cast<int32_t>(rng() % vocab));
    j.params.temperature = 0;
    j.params.max_tokens = 1 + static_cast<int>(rng() % 24);
    j.params.ignore_eos = true;
    if (logprobs > 0) j.params.logprobs = logprobs;
  }
  return jobs;
}

RuntimeOptions tiny_options(const std::string& preset, int tp, int pp, int dp, bool ep) {
  RuntimeOptions o;
  o.model_dir = tiny_model(preset);
  o.parallel = {tp, pp, dp, ep};
  o.kv_cache_memory = 8 << 20;
  o.max_model_len = 256;
  return o;
}

}  // namespace troupe::test
