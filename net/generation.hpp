// An API request that waits on the engine, independent of the connection it came on: the HTTP
// session hands it a sink and gets back either one body or a stream of SSE events.
//
// Threading: engine callbacks arrive on engine threads and only post (through `Post`) onto the
// session's strand; everything else here runs on that strand, so nothing is locked.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "actors/client.hpp"
#include "net/openai_protocol.hpp"

namespace troupe::net {

// Runs a function on the session's strand (later, never inline); drops it once the server stops.
using Post = std::function<void(std::function<void()>)>;

// A piece of the response: the whole body (not streaming) or SSE events; `last` ends it.
struct Output {
  int status = 200;
  std::string data;
  bool last = false;
};
using Sink = std::function<void(Output)>;

class Pending {
 public:
  virtual ~Pending() = default;
  virtual bool stream() const = 0;
  // Called once, on the strand, before any posted event runs.
  virtual void begin(Sink sink) = 0;
  // The client went away: stop the engine's work. No output follows.
  virtual void abort() = 0;
};

// A /v1/completions or /v1/chat/completions request: one engine generation per choice.
class Generation : public Pending, public std::enable_shared_from_this<Generation> {
 public:
  enum class Api { completion, chat };
  struct Options {
    Api api = Api::completion;
    bool stream = false;
    bool include_usage = false;
    bool logprobs = false;
    int n = 1;  // choices per prompt: prompt_tokens counts each prompt once
    ResponseMeta meta;
  };

  // Starts every choice. Throws what generate() throws, after aborting the choices already started.
  static std::shared_ptr<Generation> start(EngineClient& engine, Options options, std::vector<GenerateRequest> requests,
                                           Post post);

  Generation(EngineClient& engine, Options options, size_t choices);
  bool stream() const override { return options_.stream; }
  void begin(Sink sink) override;
  void abort() override;

 private:
  void on_event(size_t choice, const GenerateEvent& event);
  void on_stream_event(size_t choice, const GenerateEvent& event);
  void fail(size_t choice, const std::string& message);
  void finish();
  void emit(Output output);
  void abort_engine(size_t except);

  EngineClient& engine_;
  Options options_;
  std::vector<uint64_t> ids_;
  std::vector<ChoiceResult> results_;
  std::vector<bool> done_;
  std::vector<CompletionLogprobState> offsets_;
  Usage usage_;
  size_t remaining_;
  bool ended_ = false;  // the last output went out, or the client left
  Sink sink_;
};

}  // namespace troupe::net
