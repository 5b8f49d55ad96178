// The chat page in a real browser against the real server: `troupe serve` on tiny-qwen3-chat, and
// tests/chat_page.mjs driving Debian's headless Chromium through playwright-core (both installed by
// tools/setup.sh). The script checks that a reply streams in and that Stop aborts one; this program
// checks that it passed and that it left a real screenshot, whose path it prints for a person to see.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "tests/serve_process.hpp"
#include "tests/test_support.hpp"

namespace troupe::test {
namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Why the browser test cannot run here, or empty when it can.
std::string missing_browser() {
  const char* chromium = std::getenv("CHROMIUM");
  const fs::path browser = chromium && *chromium ? chromium : "/usr/bin/chromium";
  if (!fs::exists(browser)) return browser.string() + " is missing (tools/setup.sh installs Debian's chromium)";
  if (std::system("node --version > /dev/null 2>&1") != 0) return "node is missing (tools/setup.sh installs it)";
  if (!fs::exists(source_dir() / "tools/node/node_modules/playwright-core"))
    return "playwright-core is missing (tools/setup.sh installs it into tools/node)";
  return "";
}

TEST(ChatPage, StreamsAReplyAndStopsOneInHeadlessChromium) {
  if (const std::string why = missing_browser(); !why.empty()) GTEST_SKIP() << why;
  const fs::path dir = scratch_dir();
  // The reply that Stop must cut short asks for the rest of the context: 8192 tokens outlast the
  // click by far even where the tiny model runs at thousands of tokens a second.
  ServeProcess serve({"--model", tiny_model("tiny-qwen3-chat").string(), "--port", "0", "--served-model-name",
                      "tiny-qwen3-chat", "--http-threads", "2", "--max-model-len", "8192"},
                     dir / "serve.log");
  const int port = serve.wait_ready(60000);
  ASSERT_NE(port, 0) << "no ready line; stderr:\n" << serve.errors();

  const fs::path screenshot = dir / "chat_page.png";
  const fs::path log = dir / "node.log";
  const std::string cmd = "node '" + (source_dir() / "tests/chat_page.mjs").string() + "' http://127.0.0.1:" +
                          std::to_string(port) + " '" + screenshot.string() + "' > '" + log.string() + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  const std::string output = slurp(log);
  EXPECT_EQ(rc, 0) << output << "\nserver stderr:\n" << serve.errors();
  std::cout << output;

  // At 960x640 a blank page compresses to about 3 KiB and the page without a conversation to about
  // 16 KiB; two turns of text bring it past 30 KiB.
  for (const fs::path& picture : {screenshot, dir / "chat_page-streaming.png"}) {
    ASSERT_TRUE(fs::exists(picture)) << "the script wrote no " << picture;
    const std::string png = slurp(picture);
    EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << picture << " is not a PNG";
    EXPECT_GT(png.size(), 24u * 1024) << picture << " is suspiciously small: " << png.size() << " bytes";
    std::cout << "screenshot: " << picture.string() << " (" << png.size() << " bytes)\n";
  }

  EXPECT_EQ(serve.stop(SIGTERM), 0) << serve.errors();
}

}  // namespace
}  // namespace troupe::test
