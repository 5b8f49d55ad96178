// A deterministic EngineClient for the network layer's tests: no model, predictable text, and a
// record of what the server asked for (requests, aborts).
//
// "Tokens" are UTF-8 characters. A prompt's tokens are its bytes (text), its ids, or the bytes of
// the chat rendered as "<|role|>content" per message (+ "<|assistant|>"). The output repeats the
// source text character by character: the prompt text, the last message's content, or for id
// prompts 'a' + id % 26. Each token is one event; with a length finish the last token rides on the
// final event, otherwise the final event carries no text. A prompt or message containing "FAIL"
// ends with finish_reason "error" after one token.
#pragma once

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "actors/client.hpp"

namespace troupe::test {

class FakeEngine : public EngineClient {
 public:
  struct Options {
    int max_model_len = 256;
    std::chrono::milliseconds token_delay{0};
  };

  FakeEngine() : FakeEngine(Options{}) {}
  explicit FakeEngine(Options options) : options_(options) {}
  ~FakeEngine() override {
    std::vector<std::thread> threads;
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      threads.swap(threads_);
    }
    for (auto& t : threads) t.join();
  }

  // ---- knobs ----
  std::atomic<bool> healthy_flag{true};
  std::atomic<bool> overloaded{false};  // generate() refuses with 503

  // ---- records ----
  std::vector<GenerateRequest> requests() {
    std::lock_guard lock(mutex_);
    return requests_;
  }
  std::vector<uint64_t> aborted() {
    std::lock_guard lock(mutex_);
    return {aborted_.begin(), aborted_.end()};
  }
  int finished() {
    std::lock_guard lock(mutex_);
    return finished_;
  }
  int running() {
    std::lock_guard lock(mutex_);
    return started_ - finished_;
  }
  // Waits until `n` generations have ended (any reason); false on timeout.
  bool wait_finished(int n, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return finished_ >= n; });
  }
  bool wait_aborted(size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return aborted_finals_ >= n; });
  }

  // ---- the fake "model" ----
  static std::string render_chat(const GenerateRequest& r) {
    std::string out;
    const boost::json::value messages = boost::json::parse(*r.messages_json);
    for (const auto& m : messages.as_array()) {
      out += "<|" + std::string(m.at("role").as_string()) + "|>";
      if (m.at("content").is_string()) out += m.at("content").as_string();
    }
    if (r.add_generation_prompt) out += "<|assistant|>";
    return out;
  }
  static std::string source_text(const GenerateRequest& r) {
    if (r.prompt_text) return *r.prompt_text;
    if (r.messages_json) {
      const boost::json::value messages = boost::json::parse(*r.messages_json);
      const auto& content = messages.as_array().back().at("content");
      return content.is_string() ? std::string(content.as_string()) : "?";
    }
    std::string s;
    for (int32_t id : *r.prompt_ids) s += static_cast<char>('a' + id % 26);
    return s;
  }
  static int prompt_tokens(const GenerateRequest& r) {
    if (r.prompt_text) return static_cast<int>(r.prompt_text->size());
    if (r.prompt_ids) return static_cast<int>(r.prompt_ids->size());
    return static_cast<int>(render_chat(r).size());
  }
  static std::vector<std::string> characters(const std::string& s) {
    std::vector<std::string> out;
    for (size_t i = 0; i < s.size();) {
      const unsigned char c = s[i];
      const size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
      out.push_back(s.substr(i, len));
      i += len;
    }
    return out;
  }

  ModelCard model() const override { return {"fake-model", options_.max_model_len, 1700000000}; }

  uint64_t generate(GenerateRequest request, GenerateListener listener) override {
    if (overloaded) throw RequestError(503, "The server is overloaded: too many requests are waiting. Retry later.", "", "ServiceUnavailableError");
    const int prompt = prompt_tokens(request);
    const int len = options_.max_model_len;
    if (prompt == 0) throw RequestError(400, "The decoder prompt cannot be empty", "prompt");
    if (prompt >= len)
      throw RequestError(400, "The decoder prompt (length " + std::to_string(prompt) +
                                  ") is longer than the maximum model length of " + std::to_string(len) + ".",
                         "prompt");
    const int max_tokens = request.params.max_tokens.value_or(len - prompt);
    if (prompt + max_tokens > len)
      throw RequestError(400, "'max_tokens' or 'max_completion_tokens' is too large: " + std::to_string(max_tokens) +
                                  ". This model's maximum context length is " + std::to_string(len) +
                                  " tokens and your request has " + std::to_string(prompt) + " input tokens (" +
                                  std::to_string(max_tokens) + " > " + std::to_string(len) + " - " + std::to_string(prompt) + ").",
                         "max_tokens");
    std::lock_guard lock(mutex_);
    const uint64_t id = ++next_id_;
    ++started_;
    requests_.push_back(request);
    threads_.emplace_back([this, id, request = std::move(request), listener = std::move(listener), prompt, max_tokens] {
      run(id, request, listener, prompt, max_tokens);
    });
    return id;
  }

  void abort(uint64_t id) override {
    std::lock_guard lock(mutex_);
    if (id > 0 && id <= next_id_) aborted_.insert(id);
  }

  void embed(EmbedRequest request, EmbedListener listener) override {
    std::lock_guard lock(mutex_);
    threads_.emplace_back([request = std::move(request), listener = std::move(listener)] {
      EmbedResult r;
      auto vector = [&](double length) {
        std::vector<float> v{static_cast<float>(length), 1.0f, 0.0f, 0.0f};
        const double norm = std::sqrt(length * length + 1.0);
        for (float& x : v) x = static_cast<float>(x / norm);
        r.embeddings.push_back(v);
        r.prompt_tokens += static_cast<int>(length);
      };
      for (const std::string& t : request.texts) {
        if (t == "FAIL") r.error = "fake embedding failure";
        vector(static_cast<double>(t.size()));
      }
      for (const auto& ids : request.token_ids) vector(static_cast<double>(ids.size()));
      listener(std::move(r));
    });
  }

  std::vector<int32_t> tokenize(const GenerateRequest& request, bool add_special_tokens) override {
    std::vector<int32_t> ids;
    if (add_special_tokens) ids.push_back(1);
    const std::string text = request.prompt_text ? *request.prompt_text : render_chat(request);
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }

  std::string detokenize(const std::vector<int32_t>& ids) override {
    std::string s;
    for (int32_t id : ids) {
      if (id >= 256) throw RequestError(400, "token id " + std::to_string(id) + " is out of vocabulary", "tokens");
      s += static_cast<char>(id);
    }
    return s;
  }

  std::string metrics_text() override {
    return "# TYPE troupe:num_requests_running gauge\ntroupe:num_requests_running{model_name=\"fake-model\"} " +
           std::to_string(running()) + "\n";
  }
  bool healthy() override { return healthy_flag; }

 private:
  bool should_stop(uint64_t id) {
    std::lock_guard lock(mutex_);
    return stopping_ || aborted_.contains(id);
  }

  void run(uint64_t id, const GenerateRequest& request, const GenerateListener& listener, int prompt, int max_tokens) {
    std::vector<std::string> chars = characters(source_text(request));
    if (chars.empty()) chars.push_back("?");
    const bool fail = source_text(request).find("FAIL") != std::string::npos;
    std::string text;
    GenerateEvent last;
    last.final = true;
    last.prompt_tokens = prompt;
    int k = 0;
    for (; k < max_tokens; ++k) {
      if (options_.token_delay.count()) std::this_thread::sleep_for(options_.token_delay);
      if (should_stop(id)) {
        last.finish_reason = "abort";
        break;
      }
      GenerateEvent e;
      e.text = chars[k % chars.size()];
      e.token_ids = {static_cast<int32_t>(static_cast<unsigned char>(e.text[0]))};
      if (request.params.logprobs) {
        LogprobEntry entry{{e.token_ids[0], e.text, -0.25f}, {}};
        entry.top.push_back({e.token_ids[0], e.text, -0.25f});
        for (int j = 1; j < *request.params.logprobs; ++j) entry.top.push_back({900 + j, "x" + std::to_string(j), -1.0f - j});
        e.logprobs.push_back(entry);
      }
      text += e.text;
      last.completion_tokens = k + 1;
      if (fail) {
        listener(e);
        last.finish_reason = "error";
        last.error = "fake engine failure";
        break;
      }
      bool stopped = false;
      for (const std::string& s : request.stop) {
        if (text.size() >= s.size() && text.compare(text.size() - s.size(), s.size(), s) == 0) stopped = true;
      }
      if (stopped) {
        last.finish_reason = "stop";
        break;
      }
      if (k + 1 == max_tokens) {
        // The last token rides on the final event.
        e.final = true;
        e.finish_reason = "length";
        e.prompt_tokens = prompt;
        e.completion_tokens = k + 1;
        last = e;
        break;
      }
      listener(e);
    }
    listener(last);
    std::lock_guard lock(mutex_);
    ++finished_;
    if (last.finish_reason == "abort") ++aborted_finals_;
    cv_.notify_all();
  }

  Options options_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;
  std::vector<GenerateRequest> requests_;
  std::unordered_set<uint64_t> aborted_;
  size_t aborted_finals_ = 0;
  uint64_t next_id_ = 0;
  int started_ = 0;
  int finished_ = 0;
  bool stopping_ = false;
};

}  // namespace troupe::test
