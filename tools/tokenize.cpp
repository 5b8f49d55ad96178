// `troupe tokenize`: what the server will see. Reads one JSON string literal per line from stdin and
// writes one JSON array of ids per line (or the reverse with --decode), through the same Tokenizer
// the server uses.
#include <boost/json.hpp>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "config/error.hpp"
#include "engine/tokenizer.hpp"
#include "tools/command_error.hpp"
#include "tools/command_flags.hpp"
#include "tools/commands.hpp"

namespace troupe {
namespace {

namespace po = boost::program_options;

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(ids[i]);
  }
  out += ']';
  return out;
}

std::string parse_string_line(const std::string& line, size_t lineno) {
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(line, ec);
  if (ec || !v.is_string())
    throw ConfigError("line " + std::to_string(lineno) + ": expected a JSON string literal, e.g. \"Hello\"");
  return std::string(v.get_string());
}

std::vector<int32_t> parse_ids_line(const std::string& line, size_t lineno) {
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(line, ec);
  if (ec || !v.is_array()) throw ConfigError("line " + std::to_string(lineno) + ": expected a JSON array of ids, e.g. [9707, 1879]");
  std::vector<int32_t> ids;
  for (const boost::json::value& x : v.get_array()) {
    if (!x.is_int64() || x.get_int64() < 0 || x.get_int64() > INT32_MAX)
      throw ConfigError("line " + std::to_string(lineno) + ": ids must be non-negative integers");
    ids.push_back(static_cast<int32_t>(x.get_int64()));
  }
  return ids;
}

// Encode throughput on the strings of a JSON-lines file (tools/tokenizer_bench.mjs drives it and
// times Hugging Face's library on the same file). Only the encode calls are timed: the file is read
// and parsed first, one warm-up pass fills the BPE cache as the reference's warm-up does, then the
// best of `repeat` passes counts.
int run_benchmark(const Tokenizer& tok, const std::string& file, int repeat, bool add_special) {
  std::ifstream in(file);
  if (!in) throw ConfigError("--benchmark: cannot read " + file);
  std::vector<std::string> texts;
  std::string line;
  size_t lineno = 0, bytes = 0;
  while (std::getline(in, line)) {
    texts.push_back(parse_string_line(line, ++lineno));
    bytes += texts.back().size();
  }
  size_t tokens = 0;
  for (const std::string& t : texts) tokens += tok.encode(t, add_special).size();
  double best = 1e300;
  for (int r = 0; r < repeat; ++r) {
    auto start = std::chrono::steady_clock::now();
    size_t n = 0;
    for (const std::string& t : texts) n += tok.encode(t, add_special).size();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (n != tokens) throw std::logic_error("benchmark: encode is not deterministic");
    best = std::min(best, s);
  }
  std::printf("{\"strings\": %zu, \"bytes\": %zu, \"tokens\": %zu, \"seconds\": %.6f}\n", texts.size(), bytes, tokens, best);
  return 0;
}

}  // namespace

int tokenize_command(int argc, char** argv) {
  po::options_description flags(
      "troupe tokenize: one JSON string per line on stdin -> one JSON array of ids per line on stdout\n"
      "(the ids Hugging Face's tokenizers library gives for encode(text), special tokens included)");
  std::string model_dir, tokenizer_file;
  bool no_special = false, decode = false, skip_special = false;
  std::string bench_file;
  int repeat = 3;
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("model", po::value(&model_dir), "model directory (reads its tokenizer.json and tokenizer_config.json)")
      ("tokenizer", po::value(&tokenizer_file), "a tokenizer.json file, instead of --model")
      ("no-special-tokens", po::bool_switch(&no_special), "encode without the post-processor's special tokens (BOS)")
      ("decode", po::bool_switch(&decode), "the reverse: one JSON array of ids per line -> one JSON string per line")
      ("skip-special-tokens", po::bool_switch(&skip_special), "with --decode: leave special tokens out of the text")
      ("benchmark", po::value(&bench_file), "time encoding the strings of this JSON-lines file (encode calls only) and print a JSON summary")
      ("repeat", po::value(&repeat), "with --benchmark: timed passes, the best counts (default 3)");
  // clang-format on
  try {
    if (!parse_flags(argc, argv, flags)) return 0;
    if (model_dir.empty() == tokenizer_file.empty()) throw ConfigError("give exactly one of --model DIR and --tokenizer FILE");
    if (skip_special && !decode) throw ConfigError("--skip-special-tokens goes with --decode");
    if (no_special && decode) throw ConfigError("--no-special-tokens goes with encoding, not --decode");
  } catch (...) {
    return command_error("tokenize");
  }

  try {
    Tokenizer tok = model_dir.empty() ? Tokenizer::from_file(tokenizer_file) : Tokenizer::from_model_dir(model_dir);
    if (!bench_file.empty()) return run_benchmark(tok, bench_file, std::max(1, repeat), !no_special);
    std::string line, out;
    size_t lineno = 0;
    while (std::getline(std::cin, line)) {
      ++lineno;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (decode) {
        std::vector<int32_t> ids = parse_ids_line(line, lineno);
        out = boost::json::serialize(boost::json::string(tok.decode(ids, skip_special)));
      } else {
        std::string text = parse_string_line(line, lineno);
        try {
          out = ids_json(tok.encode(text, !no_special));
        } catch (const std::invalid_argument&) {
          throw ConfigError("line " + std::to_string(lineno) + ": the string is not valid Unicode (a lone surrogate?)");
        }
      }
      out += '\n';
      std::fwrite(out.data(), 1, out.size(), stdout);
    }
    std::fflush(stdout);
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "troupe tokenize: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace troupe
