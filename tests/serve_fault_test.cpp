// `troupe serve` and `troupe generate` with a worker that fails (--inject-fault, as a failed CUDA or
// NCCL call would). serve: a streaming and a plain completion in flight both end with the error
// within seconds (an SSE error event and [DONE]; HTTP 500 with the error body), /health turns 503,
// new requests get 503 with an OpenAI-style error naming the cause, and SIGTERM ends the process
// within seconds (exit 1). generate: prints the cause and exits 1 at once. Bad --inject-fault values
// are usage errors (exit 2). The real binary on the CPU backend, tp2 so that the failed rank has a
// peer.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <boost/json.hpp>
#include <array>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <thread>

#include "tests/http_test_client.hpp"
#include "tests/serve_process.hpp"
#include "tests/test_support.hpp"

namespace troupe::test {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::string completion_body(bool stream) {
  return boost::json::serialize(boost::json::object{{"model", "tiny"},
                                                    {"prompt", "Tell a very long story"},
                                                    {"max_tokens", 200},
                                                    {"temperature", 0},
                                                    {"ignore_eos", true},
                                                    {"stream", stream}});
}

// The "error" object of an OpenAI-style error body.
boost::json::object error_of(const std::string& body) {
  const boost::json::value v = boost::json::parse(body);
  return v.at("error").as_object();
}

// Sends SIGTERM and waits at most `seconds` for the process to end: its exit code, or -1.
int terminate_within(ServeProcess& p, double seconds) {
  ::kill(p.pid, SIGTERM);
  const auto start = Clock::now();
  while (since(start) < seconds) {
    int status = 0;
    if (::waitpid(p.pid, &status, WNOHANG) == p.pid) {
      p.pid = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;  // the destructor kills it
}

TEST(ServeFault, AFailedWorkerFailsRequestsInFlightAndLaterOnesAndTheProcessStillExits) {
  ServeProcess p({"--model", tiny_model("tiny-qwen3-chat").string(), "--port", "0", "--served-model-name", "tiny",
                  "--max-model-len", "256", "--tensor-parallel-size", "2", "--inject-fault", "1:20"},
                 scratch_dir("serve-fault") / "stderr.log");
  const int port = p.wait_ready(120000);
  ASSERT_NE(port, 0) << p.errors();
  const auto port16 = static_cast<uint16_t>(port);
  EXPECT_EQ(http_call(port16, "GET", "/health").status, 200);

  // Both requests are sent before either is read: they are in flight long before step 20.
  HttpConnection streamed(port16), plain(port16);
  const auto start = Clock::now();
  streamed.send(http_request_text("POST", "/v1/completions", completion_body(true), {}, false));
  plain.send(http_request_text("POST", "/v1/completions", completion_body(false), {}, false));
  const HttpResponse s = streamed.read_response();
  const HttpResponse q = plain.read_response();
  EXPECT_LT(since(start), 10.0);

  // The stream had begun: it ends with an error event, then [DONE].
  EXPECT_EQ(s.status, 200) << s.body;
  const size_t event = s.body.find("data: {\"error\"");
  ASSERT_NE(event, std::string::npos) << s.body;
  const size_t end = s.body.find("\n\n", event);
  const boost::json::object stream_error = error_of(s.body.substr(event + 6, end - event - 6));
  EXPECT_NE(std::string(stream_error.at("message").as_string()).find("fault injected at step 20 (--inject-fault)"),
            std::string::npos)
      << s.body;
  EXPECT_EQ(s.body.substr(end + 2), "data: [DONE]\n\n");

  EXPECT_EQ(q.status, 500) << q.body;
  const boost::json::object plain_error = error_of(q.body);
  const std::string cause(plain_error.at("message").as_string());
  EXPECT_EQ(cause.rfind("the engine failed: worker ", 0), 0u) << q.body;
  EXPECT_NE(cause.find("fault injected at step 20 (--inject-fault)"), std::string::npos) << q.body;
  EXPECT_EQ(plain_error.at("code").as_int64(), 500);

  EXPECT_EQ(http_call(port16, "GET", "/health").status, 503);
  const auto late = Clock::now();
  for (const char* path : {"/v1/completions", "/v1/chat/completions", "/v1/embeddings"}) {
    const std::string body = std::string(path) == "/v1/completions" ? completion_body(false)
                             : std::string(path) == "/v1/embeddings"
                                 ? R"({"model": "tiny", "input": "hello"})"
                                 : R"({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": true})";
    const HttpResponse r = http_call(port16, "POST", path, body);
    EXPECT_EQ(r.status, 503) << path << ": " << r.body;
    EXPECT_EQ(r.header("retry-after"), "") << path << ": a failed engine does not come back";
    const boost::json::object e = error_of(r.body);
    EXPECT_EQ(e.at("type").as_string(), "ServiceUnavailableError") << path;
    EXPECT_EQ(e.at("code").as_int64(), 503) << path;
    EXPECT_TRUE(e.at("param").is_null()) << path;
    EXPECT_EQ(std::string(e.at("message").as_string()), cause) << path;
  }
  EXPECT_LT(since(late), 5.0);

  const auto stopping = Clock::now();
  EXPECT_EQ(terminate_within(p, 10), 1) << p.errors();  // a failed engine exits with 1
  EXPECT_LT(since(stopping), 10.0);
  EXPECT_NE(p.errors().find("troupe: a step failed, the server is now unhealthy: the engine failed: worker "),
            std::string::npos)
      << p.errors();
}

// troupe_cli with a time limit: a hang is exit code 124.
CliRun troupe_cli(const std::string& args, int limit) { return test::troupe_cli(args, true, limit); }

TEST(ServeFault, GeneratePrintsTheFailureAndExitsWithOne) {
  const std::string model = tiny_model("tiny-qwen3").string();
  const auto start = Clock::now();
  const CliRun r = troupe_cli("generate --quiet --model " + model +
                                  " --prompt-ids 5,6,7 --max-tokens 64 --ignore-eos --temperature 0 "
                                  "--tensor-parallel-size 2 --inject-fault 1:5",
                              60);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_LT(since(start), 30.0);
  EXPECT_NE(r.output.find("troupe generate: the engine failed: worker "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("fault injected at step 5 (--inject-fault)"), std::string::npos) << r.output;
}

TEST(ServeFault, BadInjectFaultValuesAreUsageErrors) {
  const std::string model = tiny_model("tiny-qwen3").string();
  struct Case {
    std::string command, flags, message;
  } cases[] = {
      {"serve", "--inject-fault 1", "--inject-fault: expected RANK:STEP (non-negative integers, e.g. 1:20), got '1'"},
      {"serve", "--inject-fault x:3", "--inject-fault: expected RANK:STEP"},
      {"generate --prompt-ids 1,2", "--inject-fault 1:-3", "--inject-fault: expected RANK:STEP"},
      {"serve", "--inject-fault 2:5 --tensor-parallel-size 2",
       "--inject-fault: rank 2 is not one of the 2 ranks of the layout (tensor x pipeline x data parallel size)"},
      {"generate --prompt-ids 1,2", "--inject-fault 1:0",
       "--inject-fault: rank 1 is not one of the 1 ranks of the layout"},
  };
  for (const Case& c : cases) {
    const CliRun r = troupe_cli(c.command + " --model " + model + " " + c.flags, 60);
    EXPECT_EQ(r.code, 2) << c.command << " " << c.flags << "\n" << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.command << " " << c.flags << "\n" << r.output;
  }
  const CliRun help = troupe_cli("serve --help", 60);
  std::string words;  // the help text without its line wrapping
  for (char ch : help.output)
    if (!std::isspace(static_cast<unsigned char>(ch)) || (!words.empty() && words.back() != ' ')) words += std::isspace(static_cast<unsigned char>(ch)) ? ' ' : ch;
  EXPECT_NE(words.find("--inject-fault arg for testing failure handling"), std::string::npos) << help.output;
}

}  // namespace
}  // namespace troupe::test
