// `troupe serve` as a user runs it: flag errors are usage errors (exit 2) naming the flag; with a
// tiny model it prints the ready line, answers, and stops cleanly on SIGTERM (exit 0).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <fstream>
#include <regex>

#include "tests/http_test_client.hpp"
#include "tests/serve_process.hpp"
#include "tests/test_support.hpp"

namespace troupe::test {
namespace {

namespace fs = std::filesystem;

int run_serve(const std::string& args, std::string* output) {
  const std::string cmd = (binary_dir() / "troupe").string() + " serve " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) output->append(buf, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(ServeCli, BadFlagsAreUsageErrors) {
  const std::string model = tiny_model("tiny-qwen3").string();
  struct Case {
    std::string args;
    std::string message;
  } cases[] = {
      {"", "the option '--model' is required"},
      {"--model " + model + " --port 70000", "--port must be in [0, 65535], got 70000"},
      {"--model " + model + " --http-threads 0", "--http-threads must be in [1, 1024], got 0"},
      {"--model " + model + " --pooling max", "--pooling: expected last or mean, got 'max'"},
      {"--model " + model + " --max-request-bytes 10", "--max-request-bytes must be between 1KiB and 1GiB, got '10'"},
      {"--model " + model + " --max-request-bytes lots", "--max-request-bytes: expected a positive size"},
      {"--model " + model + " --max-queued-requests -1", "--max-queued-requests must be non-negative, got -1"},
      {"--model " + model + " --no-such-flag", "unrecognised option '--no-such-flag'"},
  };
  for (const Case& c : cases) {
    std::string out;
    EXPECT_EQ(run_serve(c.args, &out), 2) << c.args << "\n" << out;
    EXPECT_NE(out.find(c.message), std::string::npos) << c.args << "\n" << out;
  }
  std::string help;
  EXPECT_EQ(run_serve("--help", &help), 0);
  for (const char* flag : {"--host", "--port", "--served-model-name", "--api-key", "--max-request-bytes", "--max-queued-requests",
                           "--http-threads", "--chat-template", "--pooling", "--tensor-parallel-size"})
    EXPECT_NE(help.find(flag), std::string::npos) << flag;
}

TEST(ServeCli, ServesATinyModelAndStopsOnSigterm) {
  const fs::path dir = scratch_dir();
  ServeProcess serve({"--model", tiny_model("tiny-qwen3-chat").string(), "--port", "0", "--served-model-name", "tiny",
                      "--http-threads", "2"},
                     dir / "serve.log");
  const int port = serve.wait_ready(120000);
  if (port == 0 && serve.errors().find("not built yet") != std::string::npos)
    GTEST_SKIP() << "the runtime client is still a stub: " << serve.errors();
  ASSERT_NE(port, 0) << "no ready line; stderr:\n" << serve.errors();

  EXPECT_EQ(http_call(static_cast<uint16_t>(port), "GET", "/health").status, 200);
  const HttpResponse models = http_call(static_cast<uint16_t>(port), "GET", "/v1/models");
  EXPECT_EQ(boost::json::parse(models.body).at("data").at(0).at("id"), "tiny");
  const HttpResponse r = http_call(static_cast<uint16_t>(port), "POST", "/v1/completions",
                                   R"({"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0, "ignore_eos": true})");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(boost::json::parse(r.body).at("usage").at("completion_tokens"), 4);
  EXPECT_EQ(serve.stop(SIGTERM), 0) << serve.errors();
}

}  // namespace
}  // namespace troupe::test
