#include "actors/request.hpp"

namespace troupe {
namespace {

struct RequestState {
  RequestSpec spec;
  caf::actor scheduler;
  bool abort_requested = false;
  TraceRecorder::Clock::time_point arrival;
  static inline const char* name = "request";
};

caf::behavior request(caf::stateful_actor<RequestState>* self, RequestSpec spec) {
  RequestState& st = self->state;
  st.spec = std::move(spec);
  st.arrival = TraceRecorder::Clock::now();
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
        if (!e.final()) return;
        self->send(st.spec.router, atoms::finished::value, st.spec.id);
        if (st.spec.trace)
          st.spec.trace->span("request " + std::to_string(st.spec.id), e.aborted ? "aborted" : "generate", st.arrival,
                              st.spec.trace->now(),
                              {{"prompt_tokens", e.prompt_tokens}, {"output_tokens", e.output_tokens}});
        if (st.spec.on_exit) st.spec.on_exit(st.spec.id);
        self->quit();
      },
  };
}

}  // namespace

caf::actor spawn_request(caf::actor_system& system, RequestSpec spec) { return system.spawn(request, std::move(spec)); }

}  // namespace troupe
