#include "actors/request.hpp"

#include <optional>

#include "actors/metrics.hpp"
#include "engine/incremental_detokenizer.hpp"
#include "engine/stop_checker.hpp"

namespace troupe {

void validate_request(const std::vector<int32_t>& prompt, SamplingParams& params, int vocab_size, int max_model_len) {
  if (prompt.empty()) throw RequestError(400, "The prompt is empty.", "prompt");
  for (int32_t id : prompt)
    if (id < 0 || id >= vocab_size)
      throw RequestError(400, "Token id " + std::to_string(id) + " is out of vocabulary (" + std::to_string(vocab_size) +
                                  " ids).", "prompt");
  if (auto problem = params.check()) throw RequestError(400, *problem, problem->substr(0, problem->find(' ')));
  const int n = static_cast<int>(prompt.size());
  if (n >= max_model_len)
    throw RequestError(400, "This model's maximum context length is " + std::to_string(max_model_len) +
                                " tokens. However, you requested " + std::to_string(n + params.max_tokens.value_or(0)) +
                                " tokens (" + std::to_string(n) + " in the messages, " +
                                std::to_string(params.max_tokens.value_or(0)) +
                                " in the completion). Please reduce the length of the messages or completion.",
                       "messages");
  if (!params.max_tokens) {
    params.max_tokens = max_model_len - n;
  } else if (n + *params.max_tokens > max_model_len) {
    const int m = *params.max_tokens;
    throw RequestError(400, "'max_tokens' or 'max_completion_tokens' is too large: " + std::to_string(m) +
                                ". This model's maximum context length is " + std::to_string(max_model_len) +
                                " tokens and your request has " + std::to_string(n) + " input tokens (" +
                                std::to_string(m) + " > " + std::to_string(max_model_len) + " - " + std::to_string(n) + ").",
                       "max_tokens");
  }
}

namespace {

struct RequestState {
  RequestSpec spec;
  caf::actor scheduler;
  bool abort_requested = false;
  bool scheduled = false;
  bool done = false;
  TraceRecorder::Clock::time_point arrival;
  RequestMetrics timing;
  // Text requests.
  std::optional<IncrementalDetokenizer> detok;
  std::optional<StopChecker> stops;
  int completion_tokens = 0;
  static inline const char* name = "request";
};

using Self = caf::stateful_actor<RequestState>;

// Token arrival times for TTFT and inter-token latency, as the request sees them.
void note_tokens(RequestState& st, const SequenceUpdate& u) {
  if (u.first_scheduled) st.timing.scheduled = u.scheduled_time;
  if (u.tokens.empty()) return;
  const auto now = MetricsClock::now();
  if (st.timing.last_token) st.timing.inter_token_seconds.push_back(std::chrono::duration<float>(now - *st.timing.last_token).count());
  if (!st.timing.first_token) st.timing.first_token = now;
  st.timing.last_token = now;
}

void finish(Self* self, int prompt_tokens, int output_tokens, bool aborted, FinishedReason reason) {
  RequestState& st = self->state;
  st.done = true;
  if (st.spec.metrics) {
    st.timing.arrival = st.arrival;
    st.timing.finished = MetricsClock::now();
    st.timing.prompt_tokens = prompt_tokens;
    st.timing.generation_tokens = output_tokens;
    st.timing.reason = reason;
    self->send(st.spec.metrics, atoms::observe::value, std::move(st.timing));
    self->send(st.spec.metrics, atoms::observe::value, MailboxDepth{ActorFamily::request, self->mailbox().size()});
  }
  self->send(st.spec.router, atoms::finished::value, st.spec.id);
  if (!st.scheduled && st.spec.on_scheduled) st.spec.on_scheduled(st.spec.id);
  if (st.spec.trace)
    st.spec.trace->span("request " + std::to_string(st.spec.id), aborted ? "aborted" : "generate", st.arrival,
                        st.spec.trace->now(), {{"prompt_tokens", prompt_tokens}, {"output_tokens", output_tokens}});
  if (st.spec.on_exit) st.spec.on_exit(st.spec.id);
  self->quit();
}

// A text request's update: text released by the detokenizer and the stop strings.
void relay_text(Self* self, SequenceUpdate& u) {
  RequestState& st = self->state;
  GenerateEvent e;
  e.prompt_tokens = u.num_prompt_tokens;
  e.cached_tokens = u.num_cached_tokens;
  for (const SampledToken& t : u.tokens) {
    ++st.completion_tokens;
    e.token_ids.push_back(t.token);
    if (st.spec.params.logprobs) {
      LogprobEntry entry{{t.token, st.spec.text->token_text(t.token), t.logprob}, {}};
      for (const TokenLogprob& top : t.top) entry.top.push_back({top.token, st.spec.text->token_text(top.token), top.logprob});
      e.logprobs.push_back(std::move(entry));
    }
    e.text += st.stops->push(st.detok->push(t.token));
    if (st.stops->stopped()) break;
  }
  e.completion_tokens = st.completion_tokens;
  const bool stopped = st.stops->stopped();
  if (stopped) {
    e.final = true;
    e.finish_reason = "stop";
    // The sequence may still be running: stop it there too.
    if (st.scheduler) self->send(st.scheduler, atoms::abort::value, st.spec.id);
  } else if (u.aborted || u.finish != FinishReason::none) {
    e.text += st.stops->push(st.detok->finish());
    e.text += st.stops->finish();
    e.final = true;
    e.error = u.error;
    e.finish_reason = !u.error.empty() ? "error" : u.aborted ? "abort" : u.finish == FinishReason::stop ? "stop" : "length";
  }
  if (e.text.empty() && e.token_ids.empty() && !e.final) return;
  st.spec.text_listener(e);
  if (e.final)
    finish(self, e.prompt_tokens, e.completion_tokens, e.finish_reason == "abort",
           e.finish_reason == "error"   ? FinishedReason::error
           : e.finish_reason == "abort" ? FinishedReason::abort
           : e.finish_reason == "stop"  ? FinishedReason::stop
                                        : FinishedReason::length);
}

void relay_tokens(Self* self, SequenceUpdate& u) {
  RequestState& st = self->state;
  RequestEvent e;
  e.id = st.spec.id;
  for (SampledToken& t : u.tokens) e.tokens.push_back({t.token, t.logprob, std::move(t.top)});
  e.finish = u.finish;
  e.aborted = u.aborted;
  e.error = u.error;
  e.prompt_tokens = u.num_prompt_tokens;
  e.output_tokens = u.num_output_tokens;
  e.cached_tokens = u.num_cached_tokens;
  if (e.tokens.empty() && !e.final()) return;
  st.spec.listener(e);
  if (e.final()) finish(self, e.prompt_tokens, e.output_tokens, e.aborted, finished_reason(e.finish, e.aborted, !e.error.empty()));
}

caf::behavior request(Self* self, RequestSpec spec) {
  RequestState& st = self->state;
  st.spec = std::move(spec);
  st.arrival = TraceRecorder::Clock::now();
  if (st.spec.text) {
    try {
      st.spec.prompt = st.spec.text->prompt_tokens(st.spec.generate);
      st.spec.params = st.spec.generate.params;
      validate_request(st.spec.prompt, st.spec.params, st.spec.vocab_size, st.spec.max_model_len);
      st.detok.emplace(st.spec.text->tokenizer(), st.spec.generate.skip_special_tokens);
      st.stops.emplace(st.spec.generate.stop);
      st.spec.accepted->set_value();
    } catch (...) {
      st.spec.accepted->set_exception(std::current_exception());
      if (st.spec.on_exit) st.spec.on_exit(st.spec.id);
      self->quit();
      return {};
    }
  }
  SubmitRequest submit{st.spec.id, st.spec.prompt, st.spec.params, caf::actor_cast<caf::actor>(self)};
  self->request(st.spec.router, caf::infinite, atoms::submit::value, std::move(submit)).then([=](caf::actor& scheduler) {
    self->state.scheduler = scheduler;
    if (self->state.abort_requested) self->send(scheduler, atoms::abort::value, self->state.spec.id);
  });
  return {
      [=](atoms::abort) {
        RequestState& st = self->state;
        st.abort_requested = true;
        if (st.scheduler) self->send(st.scheduler, atoms::abort::value, st.spec.id);
      },
      [=](atoms::update, SequenceUpdate& u) {
        RequestState& st = self->state;
        if (st.done) return;
        note_tokens(st, u);
        if (u.first_scheduled && !st.scheduled) {
          st.scheduled = true;
          if (st.spec.on_scheduled) st.spec.on_scheduled(st.spec.id);
        }
        if (st.spec.text) {
          relay_text(self, u);
        } else {
          relay_tokens(self, u);
        }
      },
  };
}

}  // namespace

caf::actor spawn_request(caf::actor_system& system, RequestSpec spec) { return system.spawn(request, std::move(spec)); }

}  // namespace troupe
