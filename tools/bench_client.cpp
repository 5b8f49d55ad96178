#include "tools/bench_client.hpp"

#include <unistd.h>

#include <algorithm>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <cmath>
#include <cstdio>
#include <deque>
#include <functional>
#include <random>

#include "config/error.hpp"

namespace troupe {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;

double seconds(BenchClock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string host_header(const BaseUrl& url) {
  const bool v6 = url.host.find(':') != std::string::npos;
  return (v6 ? "[" + url.host + "]" : url.host) + ":" + url.port;
}

http::request<http::string_body> make_request(const BaseUrl& url, const std::string& api_key, http::verb verb,
                                              const std::string& route, const std::string* body) {
  http::request<http::string_body> req{verb, url.prefix + route, 11};
  req.set(http::field::host, host_header(url));
  req.set(http::field::user_agent, "troupe-bench");
  if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + api_key);
  if (body) {
    req.set(http::field::content_type, "application/json");
    req.body() = *body;
  }
  req.prepare_payload();
  return req;
}

std::string transport_reason(const beast::error_code& ec) {
  if (ec == beast::error::timeout) return "timeout";
  return "connection error: " + ec.message();
}

tcp::resolver::results_type resolve(asio::io_context& ioc, const BaseUrl& url) {
  tcp::resolver resolver(ioc);
  beast::error_code ec;
  auto endpoints = resolver.resolve(url.host, url.port, ec);
  if (ec) throw std::runtime_error("cannot resolve " + url.host + ":" + url.port + ": " + ec.message());
  return endpoints;
}

}  // namespace

BaseUrl parse_base_url(const std::string& text) {
  const std::string scheme = "http://";
  if (text.rfind(scheme, 0) != 0)
    throw ConfigError("--base-url: expected http://HOST[:PORT][/PREFIX], got '" + text + "' (https is not supported)");
  std::string rest = text.substr(scheme.size());
  BaseUrl url;
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    url.prefix = rest.substr(slash);
    rest.resize(slash);
    while (!url.prefix.empty() && url.prefix.back() == '/') url.prefix.pop_back();
  }
  std::string port;
  if (!rest.empty() && rest[0] == '[') {
    const size_t close = rest.find(']');
    if (close == std::string::npos) throw ConfigError("--base-url: unclosed '[' in '" + text + "'");
    url.host = rest.substr(1, close - 1);
    if (close + 1 < rest.size()) {
      if (rest[close + 1] != ':') throw ConfigError("--base-url: expected ':' after ']' in '" + text + "'");
      port = rest.substr(close + 2);
    }
  } else {
    const size_t colon = rest.find(':');
    url.host = rest.substr(0, colon);
    if (colon != std::string::npos) port = rest.substr(colon + 1);
  }
  if (url.host.empty()) throw ConfigError("--base-url: no host in '" + text + "'");
  if (!port.empty()) {
    if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 || std::stoi(port) > 65535)
      throw ConfigError("--base-url: bad port '" + port + "' in '" + text + "'");
    url.port = port;
  }
  return url;
}

std::string error_message(std::string_view body) {
  boost::system::error_code ec;
  const json::value v = json::parse(body, ec);
  if (!ec && v.is_object()) {
    const json::object& o = v.as_object();
    if (const json::value* e = o.if_contains("error")) {
      if (e->is_string()) return std::string(e->as_string());
      if (e->is_object())
        if (const json::value* m = e->as_object().if_contains("message"); m && m->is_string())
          return std::string(m->as_string());
    }
    for (const char* key : {"message", "detail"})
      if (const json::value* m = o.if_contains(key); m && m->is_string()) return std::string(m->as_string());
  }
  return std::string(body.substr(0, 200));
}

// ---- HttpFetcher --------------------------------------------------------------------------------

struct HttpFetcher::Impl {
  BaseUrl url;
  std::string api_key;
  asio::io_context ioc;
  std::optional<tcp::resolver::results_type> endpoints;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;

  HttpReply call(http::verb verb, const std::string& route, const std::string* body, std::chrono::milliseconds timeout) {
    // A kept-alive connection the server has closed fails at once: then one more try on a new one.
    const bool reused = stream.has_value();
    HttpReply r = once(verb, route, body, timeout);
    if (r.status == 0 && reused) r = once(verb, route, body, timeout);
    return r;
  }

  HttpReply once(http::verb verb, const std::string& route, const std::string* body, std::chrono::milliseconds timeout) {
    beast::error_code result;
    try {
      if (!endpoints) endpoints = resolve(ioc, url);
    } catch (const std::exception& e) {
      return {0, "", e.what()};
    }
    ioc.restart();
    if (!stream) {
      stream.emplace(ioc);
      buffer.clear();
      stream->expires_after(timeout);
      stream->async_connect(*endpoints, [&](const beast::error_code& ec, const tcp::endpoint&) { result = ec; });
      ioc.run();
      if (result) {
        stream.reset();
        return {0, "", transport_reason(result)};
      }
      ioc.restart();
    }
    http::request<http::string_body> req = make_request(url, api_key, verb, route, body);
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 * 1024 * 1024);
    stream->expires_after(timeout);
    http::async_write(*stream, req, [&](const beast::error_code& ec, size_t) {
      if (ec) {
        result = ec;
        return;
      }
      http::async_read(*stream, buffer, parser, [&](const beast::error_code& ec2, size_t) { result = ec2; });
    });
    ioc.run();
    if (result) {
      stream.reset();
      return {0, "", transport_reason(result)};
    }
    http::response<http::string_body> res = parser.release();
    if (!res.keep_alive()) stream.reset();
    return {static_cast<int>(res.result_int()), std::move(res.body()), ""};
  }
};

HttpFetcher::HttpFetcher(BaseUrl url, std::string api_key) : impl_(std::make_unique<Impl>()) {
  impl_->url = std::move(url);
  impl_->api_key = std::move(api_key);
}
HttpFetcher::~HttpFetcher() = default;

HttpReply HttpFetcher::get(const std::string& route, std::chrono::milliseconds timeout) {
  return impl_->call(http::verb::get, route, nullptr, timeout);
}
HttpReply HttpFetcher::post(const std::string& route, const std::string& json_body, std::chrono::milliseconds timeout) {
  return impl_->call(http::verb::post, route, &json_body, timeout);
}

// ---- StreamRecorder ------------------------------------------------------------------------------

void StreamRecorder::feed(std::string_view bytes, BenchClock::time_point at) {
  pending_.append(bytes);
  size_t pos = 0;
  for (size_t nl; (nl = pending_.find('\n', pos)) != std::string::npos; pos = nl + 1) {
    std::string_view line(pending_.data() + pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      if (has_data_) event(data_, at);
      data_.clear();
      has_data_ = false;
    } else if (line.starts_with("data:")) {
      line.remove_prefix(5);
      if (line.starts_with(' ')) line.remove_prefix(1);
      if (has_data_) data_ += '\n';
      data_ += line;
      has_data_ = true;
    }  // comments and other fields carry nothing we measure
  }
  pending_.erase(0, pos);
}

namespace {

bool non_empty_string(const json::object& o, const char* key) {
  const json::value* v = o.if_contains(key);
  return v && v->is_string() && !v->as_string().empty();
}

// The output a choice carries: its text (completions) or its delta's content (chat); `found` says
// whether it carries any output at all (reasoning and tool calls count, though not added to text).
std::string choice_output(const json::value& choice, bool& found) {
  found = false;
  if (!choice.is_object()) return {};
  const json::object& c = choice.as_object();
  if (non_empty_string(c, "text")) {
    found = true;
    return std::string(c.at("text").as_string());
  }
  const json::value* delta = c.if_contains("delta");
  if (!delta || !delta->is_object()) return {};
  const json::object& d = delta->as_object();
  const json::value* calls = d.if_contains("tool_calls");
  found = non_empty_string(d, "content") || non_empty_string(d, "reasoning_content") ||
          non_empty_string(d, "reasoning") || (calls && calls->is_array() && !calls->as_array().empty());
  return non_empty_string(d, "content") ? std::string(d.at("content").as_string()) : std::string();
}

std::optional<int> int_field(const json::object& o, const char* key) {
  const json::value* v = o.if_contains(key);
  if (v && v->is_int64()) return static_cast<int>(v->as_int64());
  if (v && v->is_uint64()) return static_cast<int>(v->as_uint64());
  return std::nullopt;
}

}  // namespace

void StreamRecorder::event(std::string_view data, BenchClock::time_point at) {
  if (data == "[DONE]") {
    done_ = true;
    return;
  }
  boost::system::error_code ec;
  const json::value v = json::parse(data, ec);
  if (ec || !v.is_object()) {
    if (m_.error.empty()) m_.error = "malformed stream event: " + std::string(data.substr(0, 100));
    return;
  }
  const json::object& o = v.as_object();
  if (const json::value* e = o.if_contains("error"); e && !e->is_null()) {
    if (m_.error.empty()) m_.error = "stream error: " + error_message(data);
    return;
  }
  if (const json::value* choices = o.if_contains("choices"); choices && choices->is_array() && !choices->as_array().empty()) {
    last_choices_ = at;
    bool any = false;
    for (const json::value& choice : choices->as_array()) {
      bool found = false;
      std::string text = choice_output(choice, found);
      any = any || found;
      const json::value* index = choice.is_object() ? choice.as_object().if_contains("index") : nullptr;
      if (!index || (index->is_int64() && index->as_int64() == 0)) m_.text += text;
    }
    if (any) {
      if (first_token_) m_.itl.push_back(seconds(at - *last_token_));
      else first_token_ = at;
      last_token_ = at;
      ++m_.token_chunks;
    }
  }
  if (const json::value* usage = o.if_contains("usage"); usage && usage->is_object()) {
    if (auto n = int_field(usage->as_object(), "prompt_tokens")) m_.usage_prompt_tokens = n;
    if (auto n = int_field(usage->as_object(), "completion_tokens")) m_.usage_completion_tokens = n;
  }
}

StreamMeasure StreamRecorder::finish(const std::string& transport_error) {
  if (has_data_) event(data_, last_choices_.value_or(start_));  // a last event without its blank line
  has_data_ = false;
  if (first_token_) m_.ttft = seconds(*first_token_ - start_);
  if (last_choices_) m_.e2el = seconds(*last_choices_ - start_);
  if (m_.error.empty() && !transport_error.empty()) m_.error = transport_error;
  if (m_.error.empty() && !first_token_) m_.error = "no output token in the stream";
  m_.ok = m_.error.empty();
  return std::move(m_);
}

// ---- arrivals ----------------------------------------------------------------------------------

std::vector<double> arrival_offsets(size_t n, double request_rate, double burstiness, uint64_t seed) {
  std::vector<double> out(n, 0.0);
  if (!(request_rate > 0) || std::isinf(request_rate)) return out;
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ULL);
  std::gamma_distribution<double> gap(burstiness, 1.0 / (request_rate * burstiness));
  for (size_t i = 1; i < n; ++i) out[i] = out[i - 1] + gap(rng);
  return out;
}

// ---- one streamed request ------------------------------------------------------------------------

namespace {

class Call : public std::enable_shared_from_this<Call> {
 public:
  using Done = std::function<void(StreamMeasure, BenchClock::time_point start)>;

  Call(asio::io_context& ioc, const tcp::resolver::results_type& endpoints, http::request<http::string_body> req,
       double timeout_s, Done done)
      : stream_(ioc), endpoints_(endpoints), req_(std::move(req)), timeout_(timeout_s), done_(std::move(done)) {
    parser_.body_limit(boost::none);
  }

  void start() {
    start_ = BenchClock::now();
    recorder_.emplace(start_);
    stream_.expires_at(start_ + std::chrono::duration_cast<BenchClock::duration>(std::chrono::duration<double>(timeout_)));
    stream_.async_connect(endpoints_, beast::bind_front_handler(&Call::on_connect, shared_from_this()));
  }

 private:
  void on_connect(const beast::error_code& ec, const tcp::endpoint&) {
    if (ec) return fail(ec);
    stream_.socket().set_option(tcp::no_delay(true));
    http::async_write(stream_, req_, beast::bind_front_handler(&Call::on_write, shared_from_this()));
  }
  void on_write(const beast::error_code& ec, size_t) {
    if (ec) return fail(ec);
    http::async_read_header(stream_, buffer_, parser_, beast::bind_front_handler(&Call::on_header, shared_from_this()));
  }
  void on_header(const beast::error_code& ec, size_t) {
    if (ec) return fail(ec);
    status_ = static_cast<int>(parser_.get().result_int());
    read_more();
  }
  void read_more() {
    if (parser_.is_done()) return complete();
    parser_.get().body().data = chunk_;
    parser_.get().body().size = sizeof chunk_;
    http::async_read_some(stream_, buffer_, parser_, beast::bind_front_handler(&Call::on_read, shared_from_this()));
  }
  void on_read(beast::error_code ec, size_t) {
    const auto now = BenchClock::now();
    const size_t n = sizeof chunk_ - parser_.get().body().size;
    if (n > 0) {
      if (status_ == 200) {
        recorder_->feed(std::string_view(chunk_, n), now);
      } else if (error_body_.size() < 64 * 1024) {
        error_body_.append(chunk_, n);
      }
    }
    if (ec == http::error::need_buffer) ec = {};
    if (ec) return fail(ec);
    read_more();
  }
  void complete() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    if (status_ != 200) return refused();
    done_(recorder_->finish(), start_);
  }
  void fail(const beast::error_code& ec) {
    if (status_ != 0 && status_ != 200) return refused();
    done_(recorder_->finish(transport_reason(ec)), start_);
  }
  // A status other than 200: the reason is the status and the error body's message.
  void refused() {
    StreamMeasure m;
    m.error = "HTTP " + std::to_string(status_) + ": " + error_message(error_body_);
    done_(std::move(m), start_);
  }

  beast::tcp_stream stream_;
  const tcp::resolver::results_type& endpoints_;
  http::request<http::string_body> req_;
  double timeout_;
  Done done_;
  BenchClock::time_point start_;
  std::optional<StreamRecorder> recorder_;
  beast::flat_buffer buffer_;
  http::response_parser<http::buffer_body> parser_;
  char chunk_[16 * 1024];
  int status_ = 0;
  std::string error_body_;
};

// ---- the whole load ------------------------------------------------------------------------------

class Loader {
 public:
  Loader(const Dataset& d, const LoadOptions& o, size_t limit)
      : d_(d), o_(o), chats_(limit > 0 ? std::min(limit, d.conversations.size()) : d.conversations.size()),
        endpoints_(resolve(ioc_, o.url)), arrivals_(ioc_), replies_(chats_) {
    for (size_t c = 0; c < chats_; ++c) {
      first_.push_back(total_);
      for (size_t t = 0; t < d_.conversations[c].turns.size(); ++t) {
        RequestRecord r;
        r.conversation = static_cast<int>(c);
        r.turn = static_cast<int>(t);
        result_.requests.push_back(std::move(r));
      }
      total_ += d_.conversations[c].turns.size();
    }
    offsets_ = arrival_offsets(chats_, o.request_rate, o.burstiness, o.seed);
    progress_ = o.progress && ::isatty(STDERR_FILENO);
  }

  LoadResult run() {
    t0_ = last_end_ = BenchClock::now();
    schedule();
    ioc_.run();
    result_.duration_s = seconds(last_end_ - t0_);
    if (progress_) std::fprintf(stderr, "\n");
    return std::move(result_);
  }

 private:
  void schedule() {
    while (next_ < chats_ && t0_ + as_duration(offsets_[next_]) <= BenchClock::now()) arrive(next_++);
    if (next_ >= chats_) return;
    arrivals_.expires_at(t0_ + as_duration(offsets_[next_]));
    arrivals_.async_wait([this](const beast::error_code& ec) {
      if (!ec) schedule();
    });
  }
  static BenchClock::duration as_duration(double s) {
    return std::chrono::duration_cast<BenchClock::duration>(std::chrono::duration<double>(s));
  }
  void arrive(size_t c) {
    queue_.push_back({c, 0});
    pump();
  }
  void pump() {
    while (!queue_.empty() && (o_.max_concurrency <= 0 || in_flight_ < o_.max_concurrency)) {
      const auto [c, t] = queue_.front();
      queue_.pop_front();
      launch(c, t);
    }
  }

  std::string body(size_t c, size_t t) const {
    const BenchPrompt& p = d_.conversations[c].turns[t];
    json::object b{{"model", o_.model}};
    if (d_.chat) {
      json::array messages;
      for (size_t k = 0; k <= t; ++k) {
        messages.push_back(json::object{{"role", "user"}, {"content", d_.conversations[c].turns[k].text}});
        if (k < t) messages.push_back(json::object{{"role", "assistant"}, {"content", replies_[c][k]}});
      }
      b["messages"] = std::move(messages);
      b["max_completion_tokens"] = p.output_len;
    } else {
      if (p.ids.empty() && !p.text.empty()) {
        b["prompt"] = p.text;
      } else {
        json::array ids;
        for (int32_t id : p.ids) ids.push_back(id);
        b["prompt"] = std::move(ids);
      }
      b["max_tokens"] = p.output_len;
    }
    b["stream"] = true;
    b["stream_options"] = json::object{{"include_usage", true}};
    if (o_.ignore_eos) b["ignore_eos"] = true;
    if (o_.temperature) b["temperature"] = *o_.temperature;
    return json::serialize(b);
  }

  void launch(size_t c, size_t t) {
    ++in_flight_;
    result_.peak_concurrency = std::max(result_.peak_concurrency, in_flight_);
    const std::string payload = body(c, t);
    const std::string route = d_.chat ? "/v1/chat/completions" : "/v1/completions";
    auto call = std::make_shared<Call>(ioc_, endpoints_, make_request(o_.url, o_.api_key, http::verb::post, route, &payload),
                                       o_.timeout_s, [this, c, t](StreamMeasure m, BenchClock::time_point start) {
                                         finished(c, t, std::move(m), start);
                                       });
    call->start();
  }

  // What the dataset says a request's prompt holds, when the server does not say.
  int dataset_prompt_tokens(size_t c, size_t t) const {
    const Conversation& conv = d_.conversations[c];
    int n = 0;
    for (size_t k = 0; k <= t; ++k) n += conv.turns[k].prompt_len;
    for (size_t k = 0; k < t; ++k) n += result_.requests[first_[c] + k].output_tokens;
    return n;
  }

  void finished(size_t c, size_t t, StreamMeasure m, BenchClock::time_point start) {
    --in_flight_;
    last_end_ = BenchClock::now();
    RequestRecord& r = result_.requests[first_[c] + t];
    r.start_s = seconds(start - t0_);
    r.usage_reported = m.usage_completion_tokens.has_value();
    r.input_tokens = m.usage_prompt_tokens.value_or(dataset_prompt_tokens(c, t));
    r.output_tokens = m.ok ? m.usage_completion_tokens.value_or(m.token_chunks) : 0;
    const bool ok = m.ok;
    if (d_.chat) replies_[c].push_back(m.text);
    r.measure = std::move(m);
    ++done_;
    const size_t turns = d_.conversations[c].turns.size();
    if (ok && t + 1 < turns) {
      queue_.push_back({c, t + 1});
    } else if (!ok) {
      // Later turns need this reply: they fail without being sent.
      for (size_t k = t + 1; k < turns; ++k) {
        RequestRecord& later = result_.requests[first_[c] + k];
        later.start_s = r.start_s;
        later.input_tokens = d_.conversations[c].turns[k].prompt_len;
        later.measure.error = "not sent: an earlier turn of its chat failed";
        ++done_;
      }
    }
    show_progress();
    pump();
  }

  void show_progress() {
    if (!progress_) return;
    constexpr int width = 40;
    const int filled = static_cast<int>(width * done_ / std::max<size_t>(1, total_));
    std::fprintf(stderr, "\r[%s%s] %zu/%zu", std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                 done_, total_);
    std::fflush(stderr);
  }

  const Dataset& d_;
  const LoadOptions& o_;
  size_t chats_;
  asio::io_context ioc_{1};
  tcp::resolver::results_type endpoints_;
  asio::steady_timer arrivals_;
  std::vector<std::vector<std::string>> replies_;
  std::vector<size_t> first_;  // each chat's first record
  size_t total_ = 0, done_ = 0, next_ = 0;
  std::vector<double> offsets_;
  std::deque<std::pair<size_t, size_t>> queue_;
  int in_flight_ = 0;
  bool progress_ = false;
  BenchClock::time_point t0_, last_end_;
  LoadResult result_;
};

}  // namespace

LoadResult run_load(const Dataset& dataset, const LoadOptions& options, size_t limit) {
  Loader loader(dataset, options, limit);
  return loader.run();
}

}  // namespace troupe
