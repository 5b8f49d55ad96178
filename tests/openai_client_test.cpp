// Real clients against the server and the fake engine: the official `openai` npm client
// (tests/openai_client.mjs) and the `ws` WebSocket client (tests/ws_client.mjs). The lead runs the
// same scripts against `troupe serve` on tiny models; here `--fake` adds exact-text checks.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "net/server.hpp"
#include "tests/fake_engine.hpp"
#include "tests/test_support.hpp"

namespace troupe::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

bool node_ready(const char* package) {
  return std::system("node --version > /dev/null 2>&1") == 0 &&
         fs::exists(source_dir() / "tools" / "node" / "node_modules" / package);
}

int run_script(const char* script, const std::string& base_url, const fs::path& log) {
  const std::string cmd = "node '" + (source_dir() / "tests" / script).string() + "' '" + base_url + "' fake-model --fake > '" +
                          log.string() + "' 2>&1";
  return std::system(cmd.c_str());
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

TEST(OpenAIClient, OfficialNodeClientWorksUnchanged) {
  if (!node_ready("openai")) GTEST_SKIP() << "node or the openai package is missing (tools/setup.sh installs them)";
  FakeEngine engine({256, 1ms});
  net::ServerOptions options;
  options.port = 0;
  net::Server server(engine, options);
  server.start();
  const fs::path log = scratch_dir() / "node.log";
  const int rc = run_script("openai_client.mjs", "http://127.0.0.1:" + std::to_string(server.port()) + "/v1", log);
  EXPECT_EQ(rc, 0) << read_file(log);
  EXPECT_TRUE(engine.aborted().empty());
}

TEST(OpenAIClient, WebSocketClientRunsTwoConversationsAndCancelsOne) {
  if (!node_ready("ws")) GTEST_SKIP() << "node or the ws package is missing (tools/setup.sh installs them)";
  FakeEngine engine({256, 10ms});
  net::ServerOptions options;
  options.port = 0;
  net::Server server(engine, options);
  server.start();
  const fs::path log = scratch_dir() / "node.log";
  const int rc = run_script("ws_client.mjs", "http://127.0.0.1:" + std::to_string(server.port()), log);
  EXPECT_EQ(rc, 0) << read_file(log);
  // The cancel reached the engine: exactly the long conversation was aborted.
  ASSERT_TRUE(engine.wait_aborted(1, 5s));
  EXPECT_EQ(engine.aborted().size(), 1u);
  const auto requests = engine.requests();
  ASSERT_GE(requests.size(), 3u);
  EXPECT_TRUE(requests[0].params.ignore_eos);  // the long one, parameters passed through
  EXPECT_EQ(engine.aborted()[0], 1u);
}

TEST(OpenAIClient, WebSocketCloseAbortsEveryConversation) {
  if (!node_ready("ws")) GTEST_SKIP() << "node or the ws package is missing (tools/setup.sh installs them)";
  FakeEngine engine({256, 20ms});
  net::ServerOptions options;
  options.port = 0;
  net::Server server(engine, options);
  server.start();
  const std::string script = R"(
    const ws = new WebSocket(process.argv[2]);
    ws.on("open", () => {
      for (const id of ["a", "b", "c"])
        ws.send(JSON.stringify({type: "chat", id, messages: [{role: "user", content: "x"}], max_tokens: 200}));
    });
    let deltas = 0;
    ws.on("message", () => { if (++deltas === 6) ws.terminate(); });)";
  const fs::path dir = scratch_dir();
  {
    std::ofstream(dir / "close.cjs") << "const WebSocket = require('" << (source_dir() / "tools/node/node_modules/ws").string()
                                      << "');\n" << script << "\n";
  }
  const std::string cmd = "node '" + (dir / "close.cjs").string() + "' ws://127.0.0.1:" + std::to_string(server.port()) +
                          "/v1/ws > '" + (dir / "node.log").string() + "' 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << read_file(dir / "node.log");
  ASSERT_TRUE(engine.wait_aborted(3, 5s)) << "closing the socket must abort all of its conversations";
  EXPECT_EQ(engine.aborted().size(), 3u);
}

}  // namespace
}  // namespace troupe::test
