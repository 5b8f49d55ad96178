#include "net/generation.hpp"

#include "net/sse.hpp"

namespace troupe::net {

std::shared_ptr<Generation> Generation::start(EngineClient& engine, Options options, std::vector<GenerateRequest> requests,
                                              Post post) {
  auto self = std::make_shared<Generation>(engine, std::move(options), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    // The listener holds the generation alive until the engine's final event has been handled.
    auto listener = [self, i, post](const GenerateEvent& event) { post([self, i, event] { self->on_event(i, event); }); };
    try {
      self->ids_.push_back(engine.generate(std::move(requests[i]), std::move(listener)));
    } catch (...) {
      self->ended_ = true;
      for (uint64_t id : self->ids_) engine.abort(id);
      throw;
    }
  }
  return self;
}

Generation::Generation(EngineClient& engine, Options options, size_t choices)
    : engine_(engine),
      options_(std::move(options)),
      results_(choices),
      done_(choices, false),
      offsets_(choices),
      remaining_(choices) {
  ids_.reserve(choices);
}

void Generation::begin(Sink sink) {
  sink_ = std::move(sink);
  if (ended_) return;
  // OpenAI's chat stream opens every choice with the assistant role before any content.
  if (options_.stream && options_.api == Api::chat) {
    std::string data;
    for (size_t i = 0; i < results_.size(); ++i)
      data += sse_event(chat_role_chunk(options_.meta, static_cast<int>(i), options_.include_usage));
    emit({200, std::move(data), false});
  }
}

void Generation::abort() {
  if (ended_) return;
  ended_ = true;
  sink_ = nullptr;
  abort_engine(results_.size());
}

void Generation::abort_engine(size_t except) {
  for (size_t i = 0; i < ids_.size(); ++i)
    if (i != except && !done_[i]) engine_.abort(ids_[i]);
}

void Generation::emit(Output output) {
  const bool last = output.last;
  if (sink_) sink_(std::move(output));
  // The sink holds the session: dropping it after the last output breaks the cycle.
  if (last) sink_ = nullptr;
}

void Generation::on_event(size_t i, const GenerateEvent& event) {
  if (ended_ || done_[i]) return;
  if (event.final) {
    done_[i] = true;
    --remaining_;
    // n choices of one prompt share it: count its tokens once.
    if (i % options_.n == 0) {
      usage_.prompt_tokens += event.prompt_tokens;
      usage_.cached_tokens += event.cached_tokens;
    }
    usage_.completion_tokens += event.completion_tokens;
    if (event.finish_reason == "error") return fail(i, event.error.empty() ? "the engine failed" : event.error);
  }
  if (options_.stream) return on_stream_event(i, event);

  ChoiceResult& r = results_[i];
  r.text += event.text;
  r.logprobs.insert(r.logprobs.end(), event.logprobs.begin(), event.logprobs.end());
  if (!event.final) return;
  r.finish_reason = event.finish_reason;
  if (remaining_ == 0) finish();
}

void Generation::on_stream_event(size_t i, const GenerateEvent& event) {
  const int index = static_cast<int>(i);
  const auto* logprobs = options_.logprobs ? &event.logprobs : nullptr;
  const bool has_content = !event.text.empty() || (logprobs && !event.logprobs.empty());
  const bool usage_null = options_.include_usage;
  std::string data;
  if (options_.api == Api::completion) {
    // The last text rides with the finish reason, as in vLLM's stream.
    if (has_content || event.final) {
      std::optional<std::string_view> reason;
      if (event.final) reason = event.finish_reason;
      data = sse_event(completion_chunk(options_.meta, index, event.text, logprobs, &offsets_[i], reason, usage_null));
    }
  } else {
    if (has_content) data = sse_event(chat_content_chunk(options_.meta, index, event.text, logprobs, usage_null));
    if (event.final) data += sse_event(chat_finish_chunk(options_.meta, index, event.finish_reason, usage_null));
  }
  if (!data.empty()) emit({200, std::move(data), false});
  if (remaining_ == 0) finish();
}

void Generation::finish() {
  ended_ = true;
  if (!options_.stream) {
    const bool logprobs = options_.logprobs;
    std::string body = options_.api == Api::completion ? completion_response(options_.meta, results_, logprobs, usage_)
                                                       : chat_response(options_.meta, results_, logprobs, usage_);
    return emit({200, std::move(body), true});
  }
  std::string data;
  if (options_.include_usage) {
    const char* object = options_.api == Api::completion ? "text_completion" : "chat.completion.chunk";
    data = sse_event(usage_chunk(options_.meta, object, usage_));
  }
  data += kSseDone;
  emit({200, std::move(data), true});
}

// An engine failure ends the whole request: the other choices are aborted, and the client gets an
// error body (500), or, mid-stream, an error event and [DONE] as vLLM sends them.
void Generation::fail(size_t i, const std::string& message) {
  ended_ = true;
  abort_engine(i);
  const std::string body = error_body(500, message);
  if (options_.stream) return emit({200, sse_event(body) + std::string(kSseDone), true});
  emit({500, body, true});
}

}  // namespace troupe::net
