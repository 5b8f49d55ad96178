// The real server on the real engine (CPU backend, tiny-qwen3-chat with the Qwen3 tokenizer),
// driven by real clients: the official openai client and the ws client, 64 concurrent streams whose
// greedy text must equal each request run alone with exact usage, errors and disconnects that leave
// the KV cache idle, and a tp2·pp2 server streaming the same text through SSE.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <thread>

#include "tests/http_test_client.hpp"
#include "tests/serve_process.hpp"
#include "tests/test_support.hpp"

namespace troupe::test {
namespace {

namespace fs = std::filesystem;

struct Server {
  std::unique_ptr<ServeProcess> process;
  int port = 0;
};

Server start(const std::vector<std::string>& extra) {
  std::vector<std::string> args{"--model", tiny_model("tiny-qwen3-chat").string(), "--port", "0",
                                "--served-model-name", "tiny", "--http-threads", "4", "--max-model-len", "256"};
  args.insert(args.end(), extra.begin(), extra.end());
  Server s;
  s.process = std::make_unique<ServeProcess>(args, scratch_dir("serve") / "stderr.log");
  s.port = s.process->wait_ready(120000);
  if (s.port == 0) ADD_FAILURE() << "the server did not start:\n" << s.process->errors();
  return s;
}

int run_node(const std::string& script, const std::string& base_url, const fs::path& log) {
  const std::string cmd = "node '" + (source_dir() / "tests" / script).string() + "' '" + base_url + "' tiny > '" +
                          log.string() + "' 2>&1";
  return std::system(cmd.c_str());
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), {}};
}

struct Completion {
  std::string text;
  int prompt_tokens = -1;
  int completion_tokens = -1;
  std::string finish_reason;
};

std::string completion_body(const std::string& prompt, bool stream) {
  boost::json::object o{{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}, {"stream", stream}};
  if (stream) o["stream_options"] = boost::json::object{{"include_usage", true}};
  return boost::json::serialize(o);
}

// One streamed completion, read from its SSE body.
Completion stream_completion(int port, const std::string& prompt) {
  HttpResponse r = http_call(static_cast<uint16_t>(port), "POST", "/v1/completions", completion_body(prompt, true));
  Completion c;
  EXPECT_EQ(r.status, 200) << r.body;
  size_t at = 0;
  while ((at = r.body.find("data: ", at)) != std::string::npos) {
    const size_t end = r.body.find("\n\n", at);
    const std::string data = r.body.substr(at + 6, end - at - 6);
    at = end;
    if (data == "[DONE]") break;
    const boost::json::object chunk = boost::json::parse(data).as_object();
    for (const auto& choice : chunk.at("choices").as_array()) {
      c.text += std::string(choice.at("text").as_string());
      if (!choice.at("finish_reason").is_null()) c.finish_reason = std::string(choice.at("finish_reason").as_string());
    }
    if (chunk.contains("usage") && !chunk.at("usage").is_null()) {
      c.prompt_tokens = static_cast<int>(chunk.at("usage").at("prompt_tokens").as_int64());
      c.completion_tokens = static_cast<int>(chunk.at("usage").at("completion_tokens").as_int64());
    }
  }
  return c;
}

Completion plain_completion(int port, const std::string& prompt) {
  HttpResponse r = http_call(static_cast<uint16_t>(port), "POST", "/v1/completions", completion_body(prompt, false));
  EXPECT_EQ(r.status, 200) << r.body;
  const boost::json::object o = boost::json::parse(r.body).as_object();
  const auto& choice = o.at("choices").as_array().at(0);
  return {std::string(choice.at("text").as_string()), static_cast<int>(o.at("usage").at("prompt_tokens").as_int64()),
          static_cast<int>(o.at("usage").at("completion_tokens").as_int64()),
          std::string(choice.at("finish_reason").as_string())};
}

int prompt_length(int port, const std::string& prompt) {
  HttpResponse r = http_call(static_cast<uint16_t>(port), "POST", "/tokenize",
                             boost::json::serialize(boost::json::object{{"model", "tiny"}, {"prompt", prompt}}));
  return static_cast<int>(boost::json::parse(r.body).at("count").as_int64());
}

double metric(int port, const std::string& name) {
  const std::string page = http_call(static_cast<uint16_t>(port), "GET", "/metrics").body;
  const size_t at = page.find("\n" + name + "{");
  if (at == std::string::npos) return -1;
  return std::stod(page.substr(page.find("} ", at) + 2));
}

bool node_available() {
  return std::system("node --version > /dev/null 2>&1") == 0 &&
         fs::exists(source_dir() / "tools" / "node" / "node_modules" / "openai");
}

TEST(ServeEngine, OfficialClientsTalkToTheRealEngine) {
  if (!node_available()) GTEST_SKIP() << "node or the npm packages are missing (tools/setup.sh installs them)";
  Server s = start({});
  ASSERT_NE(s.port, 0);
  const fs::path dir = scratch_dir();
  const std::string base = "http://127.0.0.1:" + std::to_string(s.port);
  EXPECT_EQ(run_node("openai_client.mjs", base + "/v1", dir / "openai.log"), 0) << slurp(dir / "openai.log");
  EXPECT_EQ(run_node("ws_client.mjs", base, dir / "ws.log"), 0) << slurp(dir / "ws.log");
  // The ws client cancelled a conversation mid-stream and closed its socket: nothing may stay held.
  double usage = -1;
  for (int tries = 0; tries < 100 && usage != 0; ++tries) {
    usage = metric(s.port, "troupe:kv_cache_usage_perc");
    if (usage != 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(usage, 0);
  EXPECT_EQ(metric(s.port, "troupe:num_requests_running"), 0);
}

TEST(ServeEngine, SixtyFourConcurrentStreamsEqualTheirSoloRunsWithExactUsage) {
  Server s = start({"--max-num-seqs", "64"});
  ASSERT_NE(s.port, 0);
  std::vector<std::string> prompts;
  for (int i = 0; i < 64; ++i) prompts.push_back("Request number " + std::to_string(i) + (i % 3 ? " tells a story" : " counts"));
  std::vector<Completion> together(prompts.size());
  {
    std::vector<std::thread> clients;
    for (size_t i = 0; i < prompts.size(); ++i)
      clients.emplace_back([&, i] { together[i] = stream_completion(s.port, prompts[i]); });
    for (auto& t : clients) t.join();
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    const Completion alone = plain_completion(s.port, prompts[i]);
    EXPECT_EQ(together[i].text, alone.text) << prompts[i];
    EXPECT_EQ(together[i].prompt_tokens, prompt_length(s.port, prompts[i])) << prompts[i];
    EXPECT_EQ(together[i].completion_tokens, together[i].finish_reason == "length" ? 12 : alone.completion_tokens);
    EXPECT_EQ(together[i].completion_tokens, alone.completion_tokens);
    EXPECT_EQ(together[i].finish_reason, alone.finish_reason);
  }
}

TEST(ServeEngine, ErrorsAndDisconnectsLeaveTheKvCacheIdle) {
  Server s = start({});
  ASSERT_NE(s.port, 0);
  HttpResponse too_long = http_call(static_cast<uint16_t>(s.port), "POST", "/v1/completions",
                                    R"({"model": "tiny", "prompt": "hello", "max_tokens": 300})");
  EXPECT_EQ(too_long.status, 400);
  EXPECT_NE(too_long.body.find("'max_tokens' or 'max_completion_tokens' is too large: 300. This model's maximum context "
                               "length is 256 tokens and your request has 1 input tokens (300 > 256 - 1)."),
            std::string::npos)
      << too_long.body;
  // Clients that go away mid-stream: their requests are aborted and their blocks freed.
  for (int i = 0; i < 4; ++i) {
    HttpConnection c(static_cast<uint16_t>(s.port));
    const std::string body = R"({"model": "tiny", "prompt": "a long story )" + std::to_string(i) +
                             R"(", "max_tokens": 200, "stream": true, "ignore_eos": true})";
    c.send(http_request_text("POST", "/v1/completions", body));
    c.read_until("data: ");
    c.reset();
  }
  double usage = -1, running = -1;
  for (int tries = 0; tries < 100; ++tries) {
    usage = metric(s.port, "troupe:kv_cache_usage_perc");
    running = metric(s.port, "troupe:num_requests_running");
    if (usage == 0 && running == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(usage, 0);
  EXPECT_EQ(running, 0);
  const std::string page = http_call(static_cast<uint16_t>(s.port), "GET", "/metrics").body;
  EXPECT_NE(page.find("troupe:request_success_total{model_name=\"tiny\",finished_reason=\"abort\"} 4"), std::string::npos)
      << page.substr(0, 4000);
}

TEST(ServeEngine, Tp2Pp2ServerStreamsTheSameTextAsTp1) {
  const std::string prompt = "The quick brown fox";
  std::string one, four;
  {
    Server s = start({});
    ASSERT_NE(s.port, 0);
    one = stream_completion(s.port, prompt).text;
  }
  {
    Server s = start({"--tensor-parallel-size", "2", "--pipeline-parallel-size", "2"});
    ASSERT_NE(s.port, 0);
    // curl, as a user would, for the SSE framing.
    const fs::path out = scratch_dir() / "sse.txt";
    const std::string cmd = "curl -sN http://127.0.0.1:" + std::to_string(s.port) +
                            "/v1/completions -H 'Content-Type: application/json' -d '" + completion_body(prompt, true) +
                            "' > '" + out.string() + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    const std::string sse = slurp(out);
    EXPECT_EQ(sse.substr(sse.size() - 14), "data: [DONE]\n\n");
    four = stream_completion(s.port, prompt).text;
  }
  EXPECT_FALSE(one.empty());
  EXPECT_EQ(one, four);
}

}  // namespace
}  // namespace troupe::test
