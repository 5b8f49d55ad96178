#include <cstdio>
#include <cstring>
#include <string_view>

#include "tools/commands.hpp"

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

constexpr Command commands[] = {
    {"make-model", troupe::make_model_command, "write a Hugging Face model directory from a preset"},
    {"generate", troupe::generate_command, "run a prompt through a model and print the continuation"},
    {"bench", troupe::bench_command, "step time against the device's limits (decode|prefill); a server under load (serve)"},
    {"tokenize", troupe::tokenize_command, "text to token ids (or back with --decode), as the server sees them"},
    {"serve", troupe::serve_command, "the OpenAI-compatible HTTP/WebSocket server (vLLM's flags)"},
    {"plan", troupe::plan_command, "every parallel layout over N GPUs: weights, KV cache and communication per GPU"},
    {"sweep", troupe::sweep_command, "serve and benchmark each layout at each concurrency: CSV, JSON, plots, winners"},
    {"advise", troupe::advise_command, "a layout per load regime from a sweep's measurements, with the reasons"},
};

void usage(std::FILE* out) {
  std::fprintf(out, "usage: troupe <command> [options]\n\ncommands:\n");
  for (const Command& c : commands) std::fprintf(out, "  %-12s %s\n", c.name, c.summary);
  std::fprintf(out, "\n`troupe <command> --help` lists a command's options.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  std::string_view name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    usage(stdout);
    return 0;
  }
  for (const Command& c : commands) {
    if (name == c.name) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "troupe: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
