// `troupe sweep`: layouts × concurrencies, one `troupe serve` child per layout, `troupe bench serve`
// in this process at each concurrency. See tools/sweep.hpp.
#include "tools/sweep.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "config/error.hpp"
#include "config/model_config.hpp"
#include "tools/bench_client.hpp"
#include "tools/bench_serve.hpp"
#include "tools/bench_server_metrics.hpp"
#include "tools/command_error.hpp"
#include "tools/command_flags.hpp"
#include "tools/commands.hpp"
#include "tools/json_file.hpp"
#include "tools/layout_plan.hpp"
#include "tools/server_process.hpp"
#include "tools/svg_plot.hpp"

namespace troupe {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
namespace po = boost::program_options;
using Clock = std::chrono::steady_clock;

constexpr const char* kLogHeader = "==== troupe sweep runs:";

int prompts_for(const SweepOptions& o, int c) {
  return o.num_prompts > 0 ? o.num_prompts : std::max(o.waves * c, o.min_prompts);
}
int warmups_for(const SweepOptions& o, int c) { return o.num_warmups >= 0 ? o.num_warmups : std::min(c, 16); }

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::optional<json::value> read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  const std::string text(std::istreambuf_iterator<char>(in), {});
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec) return std::nullopt;
  return v;
}

// Written whole or not at all: a sweep stopped mid-write leaves no file that looks complete.
void write_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out) throw std::runtime_error("cannot write " + tmp.string());
  }
  fs::rename(tmp, path);
}

// What makes two runs of a layout the same server: model, device, weights, extra flags, layout.
json::object layout_key(const SweepOptions& o, const ParallelConfig& p) {
  json::array args;
  for (const std::string& a : o.server_args) args.push_back(json::value(a));
  return json::object{{"model", fs::absolute(o.model_dir).lexically_normal().string()},
                      {"device", o.device},
                      {"load_format", o.load_format},
                      {"server_args", std::move(args)},
                      {"layout", p.name()}};
}

// ... and of a point: the same server under the same load.
json::object point_key(const SweepOptions& o, const ParallelConfig& p, int c) {
  json::object key = layout_key(o, p);
  key["concurrency"] = c;
  key["input_len"] = o.input_len;
  key["output_len"] = o.output_len;
  key["num_prompts"] = prompts_for(o, c);
  key["num_warmups"] = warmups_for(o, c);
  key["seed"] = o.seed;
  return key;
}

struct KvInfo {
  std::vector<int64_t> blocks_per_replica;
  int block_size = 16;
};

// --block-size among the extra server flags, else the server's default.
int block_size_flag(const SweepOptions& o) {
  for (size_t i = 0; i < o.server_args.size(); ++i) {
    const std::string& a = o.server_args[i];
    try {
      if (a == "--block-size" && i + 1 < o.server_args.size()) return std::stoi(o.server_args[i + 1]);
      if (a.rfind("--block-size=", 0) == 0) return std::stoi(a.substr(13));
    } catch (const std::exception&) {
      break;  // the server refuses it and says why
    }
  }
  return 16;
}

// The start-up lines of the latest start in the log: "dpN: B KV blocks of S tokens per worker".
KvInfo kv_from_log(const fs::path& log) {
  std::ifstream in(log);
  std::string line;
  std::map<int, int64_t> blocks;
  KvInfo kv;
  static const std::regex pattern(R"(^dp(\d+): (\d+) KV blocks of (\d+) tokens per worker)");
  while (std::getline(in, line)) {
    if (line.rfind(kLogHeader, 0) == 0) blocks.clear();
    std::smatch m;
    if (std::regex_search(line, m, pattern)) {
      blocks[std::stoi(m[1])] = std::stoll(m[2]);
      kv.block_size = std::stoi(m[3]);
    }
  }
  for (const auto& [dp, b] : blocks) kv.blocks_per_replica.push_back(b);
  return kv;
}

// The server's /metrics gauge troupe:kv_cache_blocks, one sample per data-parallel rank (when the
// start-up lines were not logged, e.g. with --quiet).
std::vector<int64_t> kv_from_metrics(const std::string& base_url) {
  HttpFetcher fetcher(parse_base_url(base_url), "");
  const HttpReply r = fetcher.get("/metrics", std::chrono::seconds(10));
  std::vector<int64_t> out;
  if (r.status != 200) return out;
  const PromPage page = parse_prometheus(r.body);
  if (auto it = page.samples.find("troupe:kv_cache_blocks"); it != page.samples.end())
    for (const auto& [labels, v] : it->second) out.push_back(static_cast<int64_t>(v));
  return out;
}

bool wait_healthy(const std::string& base_url, Clock::time_point deadline, ServerProcess& server) {
  HttpFetcher fetcher(parse_base_url(base_url), "");
  while (Clock::now() < deadline) {
    if (fetcher.get("/health", std::chrono::seconds(5)).status == 200) return true;
    if (!server.running()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

std::string indent(const std::string& text, const std::string& prefix) {
  std::istringstream in(text);
  std::string line, out;
  while (std::getline(in, line)) out += prefix + line + "\n";
  return out;
}

// The layouts named, in order and once each; `all` stands for every layout of --gpus GPUs that the
// server accepts (so "all,tp1" adds the one-GPU baseline).
std::vector<ParallelConfig> resolve_layouts(const SweepOptions& o, const ModelConfig& config) {
  std::vector<ParallelConfig> out;
  std::set<std::string> names;
  auto add = [&](const ParallelConfig& p) {
    if (names.insert(p.name()).second) out.push_back(p);
  };
  for (const std::string& text : o.layouts) {
    if (text == "all") {
      for (const ParallelConfig& p : layouts_for(config, o.gpus)) {
        try {
          validate_parallel_config(p, config);
        } catch (const ConfigError&) {
          continue;
        }
        add(p);
      }
      continue;
    }
    const ParallelConfig p = parse_layout_name(text);
    if (p.world_size() > o.gpus)
      throw ConfigError("--layouts: " + p.name() + " needs " + std::to_string(p.world_size()) + " GPUs; --gpus is " +
                        std::to_string(o.gpus));
    add(p);
  }
  return out;
}

void check_options(const SweepOptions& o) {
  if (o.model_dir.empty()) throw ConfigError("--model is required");
  if (o.gpus < 1) throw ConfigError("--gpus must be at least 1, got " + std::to_string(o.gpus));
  if (o.layouts.empty()) throw ConfigError("--layouts: no layout given");
  if (o.concurrency.empty()) throw ConfigError("--concurrency: no value given");
  for (int c : o.concurrency)
    if (c < 1) throw ConfigError("--concurrency values must be at least 1, got " + std::to_string(c));
  if (o.input_len < 1) throw ConfigError("--input-len must be at least 1");
  if (o.output_len < 1) throw ConfigError("--output-len must be at least 1");
  if (o.num_prompts < 0) throw ConfigError("--num-prompts-per-point must be positive");
  if (o.waves < 1) throw ConfigError("--waves must be at least 1, got " + std::to_string(o.waves));
  if (o.min_prompts < 1) throw ConfigError("--min-prompts must be at least 1, got " + std::to_string(o.min_prompts));
  if (o.port_base < 0 || o.port_base > 65535) throw ConfigError("--port-base must be in [1, 65535]");
  if (!(o.start_timeout_s > 0)) throw ConfigError("--start-timeout must be positive");
  if (!(o.stop_timeout_s > 0)) throw ConfigError("--stop-timeout must be positive");
  if (!(o.request_timeout_s > 0)) throw ConfigError("--request-timeout must be positive");
  if (!o.device.empty() && o.device != "auto" && o.device != "cpu" && o.device != "cuda")
    throw ConfigError("--device: expected auto, cpu or cuda, got '" + o.device + "'");
  if (!o.load_format.empty() && o.load_format != "auto" && o.load_format != "dummy")
    throw ConfigError("--load-format: expected auto or dummy, got '" + o.load_format + "'");
  static const std::set<std::string> owned{"--model",
                                           "--host",
                                           "--port",
                                           "--tensor-parallel-size",
                                           "--pipeline-parallel-size",
                                           "--data-parallel-size",
                                           "--enable-expert-parallel",
                                           "--device",
                                           "--load-format"};
  for (const std::string& a : o.server_args)
    if (owned.count(a.substr(0, a.find('='))))
      throw ConfigError("server flag " + a.substr(0, a.find('=')) +
                        " after --: the sweep sets it (use the sweep's own flag or the layout)");
}

std::vector<std::string> server_args(const SweepOptions& o, const ParallelConfig& p, int port) {
  std::vector<std::string> a{"serve",
                             "--model",
                             o.model_dir,
                             "--host",
                             "127.0.0.1",
                             "--port",
                             std::to_string(port),
                             "--tensor-parallel-size",
                             std::to_string(p.tensor_parallel_size),
                             "--pipeline-parallel-size",
                             std::to_string(p.pipeline_parallel_size),
                             "--data-parallel-size",
                             std::to_string(p.data_parallel_size)};
  if (p.enable_expert_parallel) a.push_back("--enable-expert-parallel");
  if (!o.device.empty()) a.insert(a.end(), {"--device", o.device});
  if (!o.load_format.empty()) a.insert(a.end(), {"--load-format", o.load_format});
  a.insert(a.end(), o.server_args.begin(), o.server_args.end());
  return a;
}

// One layout's server, started and healthy, or why not.
struct Started {
  std::unique_ptr<ServerProcess> process;
  std::string base_url;
  KvInfo kv;
  std::string error, log_tail;
};

Started start_server(const SweepOptions& o, const fs::path& binary, const ParallelConfig& p, int port,
                     const fs::path& log) {
  const std::vector<std::string> args = server_args(o, p, port);
  std::string line;
  for (const std::string& a : args) line += " " + a;
  {
    std::ofstream header(log, std::ios::app);
    header << kLogHeader << " " << binary.string() << line << "\n";
  }
  std::fprintf(stderr, "%s: starting %s%s\n", p.name().c_str(), binary.filename().c_str(), line.c_str());
  Started s;
  const auto t0 = Clock::now();
  const auto deadline =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.start_timeout_s));
  s.process = std::make_unique<ServerProcess>(binary, args, log);
  const ServerProcess::Ready ready =
      s.process->wait_ready(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
  if (ready.ok) {
    s.base_url = "http://" + (ready.host.find(':') != std::string::npos ? "[" + ready.host + "]" : ready.host) + ":" +
                 std::to_string(ready.port);
    if (!wait_healthy(s.base_url, deadline, *s.process)) {
      s.error = s.process->running()
                    ? "/health did not answer 200 within --start-timeout"
                    : "the server ended after its ready line (" + describe_exit(*s.process->exit_code()) + ")";
    }
  } else {
    s.error = ready.error;
  }
  if (!s.error.empty()) {
    s.process->stop(std::chrono::milliseconds(static_cast<int64_t>(o.stop_timeout_s * 1000)));
    s.log_tail = s.process->log_tail(20);
    s.process.reset();
    // The server's own last word (e.g. its validation message) belongs in the one-line error.
    std::istringstream lines(s.log_tail);
    std::string l, last;
    while (std::getline(lines, l))
      if (!l.empty() && l.rfind(kLogHeader, 0) != 0) last = l;
    if (!last.empty()) s.error += ": " + last;
    return s;
  }
  s.kv = kv_from_log(log);
  std::fprintf(stderr, "%s: ready at %s after %.1f s\n", p.name().c_str(), s.base_url.c_str(),
               std::chrono::duration<double>(Clock::now() - t0).count());
  return s;
}

// The point's bench: random token-id prompts, every request to max_tokens, at most `c` in flight.
// Warm-ups use other prompts than the measured run (a different seed), so no measured prompt finds
// itself in the prefix cache; each concurrency has its own seed for the same reason.
BenchResult run_point(const SweepOptions& o, const std::string& base_url, int c, int vocab) {
  BenchServeOptions b;
  b.base_url = base_url;
  b.dataset.kind = DatasetKind::random;
  b.dataset.format = PromptFormat::ids;
  b.dataset.input_len = o.input_len;
  b.dataset.output_len = o.output_len;
  b.dataset.vocab_size = vocab;
  b.ignore_eos = true;
  b.max_concurrency = c;
  b.timeout_s = o.request_timeout_s;
  b.progress = false;
  if (const int w = warmups_for(o, c); w > 0) {
    BenchServeOptions warm = b;
    warm.dataset.num_prompts = w;
    warm.dataset.seed = o.seed + static_cast<uint64_t>(c) + 1000003;
    run_bench_serve(warm);
  }
  b.dataset.num_prompts = prompts_for(o, c);
  b.dataset.seed = o.seed + static_cast<uint64_t>(c);
  return run_bench_serve(b);
}

// Left-aligned in `width` columns, one column per code point (layout names carry "·").
std::string pad(const std::string& s, size_t width) {
  size_t n = 0;
  for (unsigned char ch : s) n += (ch & 0xC0) != 0x80 ? 1 : 0;
  return n >= width ? s : s + std::string(width - n, ' ');
}

std::string point_line(const SweepPoint& p) {
  std::string s = fixed(p.output_throughput, 1) + " tok/s out, TTFT p50 " + fixed(p.median_ttft_ms, 1) +
                  " ms, TPOT p50 " + fixed(p.median_tpot_ms, 2) + " ms";
  if (p.failed) s += ", " + std::to_string(p.failed) + " failed";
  return s;
}

// The plots, as SVG and (where a renderer exists) PNG. Returns the files written; `note` says what
// was not.
std::vector<std::string> write_plots(const SweepData& d, const fs::path& out, bool png, std::string& note) {
  fs::create_directories(out / "plots");
  std::vector<std::string> files;
  struct Chart {
    std::string file, svg;
    int width, height;
  };
  std::vector<Chart> charts;
  auto line_chart = [&](const std::string& file, const std::string& title, const std::string& y_label,
                        double (*value)(const SweepPoint&), bool allow_log_y) {
    LineChart chart;
    chart.title = title;
    chart.x_label = "concurrent requests";
    chart.y_label = y_label;
    double lo = INFINITY, hi = 0;
    for (const SweepLayout& l : d.layouts) {
      PlotSeries s{l.name(), {}};
      for (const SweepPoint& p : l.points)
        if (p.ok()) {
          s.points.emplace_back(p.concurrency, value(p));
          if (value(p) > 0) lo = std::min(lo, value(p));
          hi = std::max(hi, value(p));
        }
      if (!s.points.empty()) chart.series.push_back(std::move(s));
    }
    chart.log_y = allow_log_y && lo > 0 && hi / lo > 20;  // TTFT spans decades from c=1 to a saturated server
    if (chart.log_y) chart.y_label += " (log scale)";
    charts.push_back({file, line_chart_svg(chart), chart.width, chart.height});
  };
  const std::string shape = " (input " + std::to_string(d.input_len) + ", output " + std::to_string(d.output_len) + ")";
  line_chart(
      "throughput", "Output token throughput" + shape, "output tokens/s",
      [](const SweepPoint& p) { return p.output_throughput; }, false);
  line_chart(
      "ttft_p50", "TTFT p50" + shape, "TTFT p50 (ms)", [](const SweepPoint& p) { return p.median_ttft_ms; }, true);
  line_chart(
      "ttft_p99", "TTFT p99" + shape, "TTFT p99 (ms)", [](const SweepPoint& p) { return p.p99_ttft_ms; }, true);
  BarChart bars;
  bars.title = "Communication share of a worker's step";
  bars.y_label = "time in collectives (%)";
  bars.note = "n/a: no collective was timed (one device per replica, or a point without the figure)";
  for (int c : d.concurrency) bars.bars.push_back("c=" + std::to_string(c));
  for (const SweepLayout& l : d.layouts) {
    std::vector<std::optional<double>> values;
    bool any = false;
    for (int c : d.concurrency) {
      const SweepPoint* p = l.at(c);
      any = any || p;
      values.push_back(p && p->communication_share ? std::optional<double>(*p->communication_share * 100)
                                                   : std::nullopt);
    }
    if (!any) continue;
    bars.groups.push_back(l.name());
    bars.values.push_back(std::move(values));
  }
  charts.push_back({"comm_share", bar_chart_svg(bars), bars.width, bars.height});

  std::optional<PngRenderer> renderer = png ? find_png_renderer() : std::nullopt;
  if (!png)
    note = "PNG off (--no-png): SVG only";
  else if (!renderer)
    note = "no PNG renderer (chromium or rsvg-convert) found: SVG only";
  else
    note = "PNG by " + renderer->kind;
  for (const Chart& c : charts) {
    const fs::path svg = out / "plots" / (c.file + ".svg");
    write_atomically(svg, c.svg);
    files.push_back(fs::relative(svg, out).string());
    if (!renderer) continue;
    const fs::path png_file = out / "plots" / (c.file + ".png");
    const std::string error = render_png(*renderer, svg, png_file, c.width, c.height);
    if (error.empty()) {
      files.push_back(fs::relative(png_file, out).string());
    } else {
      note = error + "; SVG only for the rest";
      renderer.reset();  // the other charts are still written as SVG
    }
  }
  return files;
}

void print_summary(const SweepData& d, const std::vector<std::string>& plots, const std::string& plot_note,
                   const fs::path& out) {
  const std::vector<SweepWinner> winners = sweep_winners(d);
  std::printf("troupe sweep: %zu layouts x %zu concurrencies, input %d / output %d tokens%s\n", d.layouts.size(),
              d.concurrency.size(), d.input_len, d.output_len,
              d.device.empty() ? "" : (", device " + d.device).c_str());
  for (const SweepLayout& l : d.layouts)
    if (l.status == "failed")
      std::printf("  %s failed: %s\n", l.name().c_str(), l.error.c_str());
    else if (l.status == "incomplete")
      std::printf("  %s incomplete: some points were not measured\n", l.name().c_str());
  if (winners.empty()) {
    std::printf("no point was measured\n");
  } else {
    std::printf("\nwinners per concurrency:\n  %-8s %s %14s   %s %14s\n", "c", pad("highest output", 16).c_str(),
                "tok/s", pad("lowest TTFT p50", 16).c_str(), "ms");
    for (const SweepWinner& w : winners)
      std::printf("  %-8d %s %14.1f   %s %14.1f\n", w.concurrency, pad(w.throughput_layout, 16).c_str(),
                  w.output_throughput, pad(w.ttft_layout, 16).c_str(), w.median_ttft_ms);
    const std::vector<SweepCrossover> cross = sweep_crossovers(winners);
    if (cross.empty())
      std::printf("no crossover: %s has the highest output throughput at every measured concurrency\n",
                  winners.front().throughput_layout.c_str());
    for (const SweepCrossover& x : cross)
      std::printf("crossover: the throughput winner changes from %s to %s between c=%d and c=%d\n", x.from.c_str(),
                  x.to.c_str(), x.below, x.above);
  }
  std::printf("\nwrote %s, %s", (out / "sweep.json").c_str(), (out / "sweep.csv").c_str());
  for (const std::string& p : plots) std::printf(", %s", (out / p).c_str());
  std::printf("\n%s\n", plot_note.c_str());
  std::fflush(stdout);
}

std::vector<int> parse_int_list(const std::string& text, const std::string& flag) {
  std::vector<int> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    int v = 0;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < 1)
      throw ConfigError("--" + flag + ": expected comma-separated positive integers, got '" + text + "'");
    out.push_back(v);
  }
  if (out.empty()) throw ConfigError("--" + flag + ": no value given");
  return out;
}

}  // namespace

SweepData run_sweep(const SweepOptions& options) {
  SweepOptions o = options;
  check_options(o);
  std::sort(o.concurrency.begin(), o.concurrency.end());
  o.concurrency.erase(std::unique(o.concurrency.begin(), o.concurrency.end()), o.concurrency.end());
  ModelConfig config;
  try {
    config = load_model_config(o.model_dir);
  } catch (const std::exception& e) {
    throw ConfigError(std::string("--model: ") + e.what());
  }
  const std::vector<ParallelConfig> layouts = resolve_layouts(o, config);
  if (layouts.empty()) throw ConfigError("--layouts: no valid layout over " + std::to_string(o.gpus) + " GPUs");
  if (o.port_base > 0 && o.port_base + static_cast<int>(layouts.size()) > 65536)
    throw ConfigError("--port-base: the last layout's port would exceed 65535");
  const fs::path binary = o.troupe_binary.empty() ? fs::read_symlink("/proc/self/exe") : o.troupe_binary;
  const int vocab = static_cast<int>(std::min<int64_t>(10000, config.vocab_size));
  const fs::path out = o.out_dir;
  for (const char* sub : {"points", "logs", "layouts"}) fs::create_directories(out / sub);
  const auto grace = std::chrono::milliseconds(static_cast<int64_t>(o.stop_timeout_s * 1000));

  SweepData d;
  d.model_dir = o.model_dir;
  d.architecture = std::string(architecture_name(config.arch));
  d.device = o.device;
  d.load_format = o.load_format;
  d.gpus = o.gpus;
  d.input_len = o.input_len;
  d.output_len = o.output_len;
  d.concurrency = o.concurrency;
  d.server_args = o.server_args;

  const size_t total = layouts.size() * o.concurrency.size();
  size_t step = 0;
  for (size_t i = 0; i < layouts.size(); ++i) {
    const ParallelConfig& p = layouts[i];
    const std::string name = p.name(), file = layout_file_name(p);
    SweepLayout layout;
    layout.parallel = p;
    layout.log_file = "logs/" + file + ".log";
    auto point_path = [&](int c) { return out / "points" / (file + "_c" + std::to_string(c) + ".json"); };
    auto tag = [&](size_t k, int c) {
      return "[" + std::to_string(k) + "/" + std::to_string(total) + "] " + name + " c=" + std::to_string(c);
    };

    // The points measured before with the same parameters.
    std::map<int, SweepPoint> done;
    for (int c : o.concurrency) {
      const std::optional<json::value> v = read_json(point_path(c));
      if (!v || !v->is_object()) continue;
      const json::object& obj = v->as_object();
      const json::value* sp = obj.if_contains("sweep_point");
      if (!sp || !sp->is_object() || !obj.contains("completed")) continue;
      const json::object& meta = sp->as_object();
      const json::value* key = meta.if_contains("key");
      if (!key || *key != json::value(point_key(o, p, c))) continue;
      SweepPoint point = point_from_bench_json(obj);
      point.concurrency = c;
      point.file = fs::relative(point_path(c), out).string();
      done[c] = point;
      if (layout.kv_blocks_per_replica.empty())
        if (const json::value* b = meta.if_contains("kv_blocks_per_replica"); b && b->is_array()) {
          for (const json::value& x : b->as_array())
            if (x.is_int64()) layout.kv_blocks_per_replica.push_back(x.as_int64());
          if (const json::value* bs = meta.if_contains("block_size"); bs && bs->is_int64())
            layout.block_size = static_cast<int>(bs->as_int64());
        }
    }
    const fs::path record = out / "layouts" / (file + ".json");
    const json::value key = layout_key(o, p);
    auto finish_layout = [&] {
      for (auto& [c, point] : done) layout.points.push_back(point);
      d.layouts.push_back(layout);
    };

    if (done.size() == o.concurrency.size()) {
      for (int c : o.concurrency)
        std::fprintf(stderr, "%s: measured before (%s)\n", tag(++step, c).c_str(), done[c].file.c_str());
      finish_layout();
      continue;
    }
    // A layout whose server failed to start in an earlier run is not started again unless asked.
    if (const std::optional<json::value> r = read_json(record);
        r && r->is_object() && !o.retry_failed && r->as_object().contains("key") && r->as_object().at("key") == key) {
      const json::object& f = r->as_object();
      layout.status = "failed";
      layout.error = f.contains("error") && f.at("error").is_string() ? std::string(f.at("error").as_string()) : "";
      layout.log_tail =
          f.contains("log_tail") && f.at("log_tail").is_string() ? std::string(f.at("log_tail").as_string()) : "";
      for (int c : o.concurrency)
        std::fprintf(
            stderr, "%s: %s\n", tag(++step, c).c_str(),
            done.count(c)
                ? ("measured before (" + done[c].file + ")").c_str()
                : ("skipped: its server failed in an earlier run (--retry-failed starts it again): " + layout.error)
                      .c_str());
      finish_layout();
      continue;
    }

    const int port = o.port_base > 0 ? o.port_base + static_cast<int>(i) : 0;
    Started server = start_server(o, binary, p, port, out / layout.log_file);
    if (!server.process) {
      layout.status = "failed";
      layout.error = server.error;
      layout.log_tail = server.log_tail;
      std::fprintf(stderr, "%s: failed to start: %s\n%s", name.c_str(), server.error.c_str(),
                   indent(server.log_tail, "    | ").c_str());
      write_atomically(
          record, json::serialize(json::object{
                      {"key", key}, {"status", "failed"}, {"error", server.error}, {"log_tail", server.log_tail}}) +
                      "\n");
      step += o.concurrency.size();
      finish_layout();
      continue;
    }
    std::error_code ec;
    fs::remove(record, ec);
    layout.kv_blocks_per_replica = server.kv.blocks_per_replica;
    layout.block_size = server.kv.blocks_per_replica.empty() ? block_size_flag(o) : server.kv.block_size;

    for (int c : o.concurrency) {
      const std::string t = tag(++step, c);
      if (done.count(c)) {
        std::fprintf(stderr, "%s: measured before (%s)\n", t.c_str(), done[c].file.c_str());
        continue;
      }
      std::fprintf(stderr, "%s: %d prompts, %d warm-ups ...\n", t.c_str(), prompts_for(o, c), warmups_for(o, c));
      const auto t0 = Clock::now();
      std::optional<BenchResult> result;
      std::string error;
      try {
        result = run_point(o, server.base_url, c, vocab);
      } catch (const std::exception& e) {
        error = e.what();
      }
      if (!server.process->running()) {
        layout.status = "failed";
        layout.error =
            "the server ended during c=" + std::to_string(c) + " (" + describe_exit(*server.process->exit_code()) + ")";
        layout.log_tail = server.process->log_tail(20);
        std::fprintf(stderr, "%s: %s\n%s", t.c_str(), layout.error.c_str(), indent(layout.log_tail, "    | ").c_str());
        step += static_cast<size_t>(o.concurrency.end() - std::find(o.concurrency.begin(), o.concurrency.end(), c)) - 1;
        break;
      }
      if (!result) {
        layout.status = "incomplete";
        std::fprintf(stderr, "%s: the benchmark failed: %s\n", t.c_str(), error.c_str());
        continue;
      }
      json::object obj = result_json(*result);
      if (!o.keep_itls) obj.erase("itls");
      obj.erase("generated_texts");  // random token ids: nothing to read
      json::array blocks;
      for (int64_t b : layout.kv_blocks_per_replica) blocks.push_back(b);
      obj["sweep_point"] = json::object{{"key", point_key(o, p, c)},
                                        {"layout", name},
                                        {"kv_blocks_per_replica", std::move(blocks)},
                                        {"block_size", layout.block_size}};
      write_atomically(point_path(c), json::serialize(obj) + "\n");
      SweepPoint point = point_from_bench_json(obj);
      point.concurrency = c;
      point.file = fs::relative(point_path(c), out).string();
      done[c] = point;
      std::fprintf(stderr, "%s: %s (%.1f s)\n", t.c_str(), point_line(point).c_str(),
                   std::chrono::duration<double>(Clock::now() - t0).count());
      // Without the start-up lines (--quiet), the KV blocks from /metrics once the server has
      // admitted a request (the gauge is set from then on).
      if (layout.kv_blocks_per_replica.empty()) layout.kv_blocks_per_replica = kv_from_metrics(server.base_url);
    }
    if (server.process->running()) {
      const int code = server.process->stop(grace);
      if (code != 0)
        std::fprintf(stderr, "%s: the server stopped with %s\n", name.c_str(), describe_exit(code).c_str());
    }
    finish_layout();
  }

  std::string note;
  const std::vector<std::string> plots = write_plots(d, out, o.png, note);
  json::object j = sweep_json(d);
  json::array plot_files;
  for (const std::string& f : plots) plot_files.push_back(json::value(f));
  j["plots"] = std::move(plot_files);
  j["plots_note"] = note;
  write_json_file(out / "sweep.json", j);
  write_atomically(out / "sweep.csv", sweep_csv(d));
  print_summary(d, plots, note, out);
  return d;
}

int sweep_command(int argc, char** argv) {
  po::options_description flags(
      "troupe sweep: each layout served by its own troupe serve, measured by bench serve at each concurrency\n"
      "usage: troupe sweep --model DIR --gpus N [--layouts LIST|all] [options] [-- extra troupe serve flags]");
  SweepOptions o;
  std::string layouts = "all", concurrency = "1,16,64,256,1024", out = "sweep";
  bool no_png = false;
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("model", po::value(&o.model_dir)->required(), "Hugging Face model directory")
      ("gpus", po::value(&o.gpus)->required(), "GPUs the layouts are laid over (all: every valid tp x pp x dp of N)")
      ("layouts", po::value(&layouts), "tp4,tp2.pp2,dp4+ep,...; all: every valid layout of --gpus GPUs (default all)")
      ("concurrency", po::value(&concurrency), "comma-separated max concurrencies (default 1,16,64,256,1024)")
      ("input-len", po::value(&o.input_len), "prompt tokens (default 1024)")
      ("output-len", po::value(&o.output_len), "output tokens, every request to the end (default 256)")
      ("num-prompts-per-point", po::value(&o.num_prompts), "requests measured at each point (default max(waves x c, min-prompts))")
      ("waves", po::value(&o.waves), "without --num-prompts-per-point: requests per point as a multiple of c (default 4)")
      ("min-prompts", po::value(&o.min_prompts), "without --num-prompts-per-point: the fewest requests a point sends (default 32)")
      ("num-warmups", po::value(&o.num_warmups), "requests before each point, not measured (default min(c, 16))")
      ("out", po::value(&out), "output folder (default ./sweep); points found there are not run again")
      ("device", po::value(&o.device), "passed to the servers: auto, cpu or cuda")
      ("load-format", po::value(&o.load_format), "passed to the servers: auto or dummy (random weights)")
      ("port-base", po::value(&o.port_base), "layout i listens on this + i (default: a free port each)")
      ("start-timeout", po::value(&o.start_timeout_s), "seconds a server may take to be ready (default 900)")
      ("stop-timeout", po::value(&o.stop_timeout_s), "seconds after SIGTERM before SIGKILL (default 30)")
      ("request-timeout", po::value(&o.request_timeout_s), "seconds a request may take (default 1800)")
      ("seed", po::value(&o.seed), "seed of the prompts (default 0)")
      ("retry-failed", po::bool_switch(&o.retry_failed), "start again the layouts whose server failed in an earlier run")
      ("keep-itls", po::bool_switch(&o.keep_itls), "keep every request's inter-token gaps in the point files")
      ("no-png", po::bool_switch(&no_png), "plots as SVG only");
  // clang-format on
  int own = argc;
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--") {
      own = i;
      break;
    }
  try {
    if (!parse_flags(own, argv, flags)) return 0;
    for (int i = own + 1; i < argc; ++i) o.server_args.emplace_back(argv[i]);
    std::stringstream in(layouts);
    std::string item;
    while (std::getline(in, item, ','))
      if (!item.empty()) o.layouts.push_back(item);
    o.concurrency = parse_int_list(concurrency, "concurrency");
    o.out_dir = out;
    o.png = !no_png;
  } catch (...) {
    return command_error("sweep");
  }
  try {
    const SweepData d = run_sweep(o);
    for (const SweepLayout& l : d.layouts)
      for (const SweepPoint& p : l.points)
        if (p.ok()) return 0;
    std::fprintf(stderr, "troupe sweep: no point was measured\n");
    return 1;
  } catch (...) {
    return command_error("sweep");
  }
}

}  // namespace troupe
