// `troupe sweep` and `troupe advise`. The sweep runs for real on the CPU backend: tiny models, a few
// layouts (one the server refuses) at two concurrencies, each layout's own `troupe serve` process;
// its CSV, JSON, point files and plots are checked, then a second run must start no server and a
// third only the servers of the points removed or spoilt. `troupe advise` is checked word for word
// on a sweep.json with known figures, and on real sweeps for naming a layout and the rules it can
// test. Also layout names, the SVG writer and the flags the commands refuse.
#include "tools/sweep.hpp"

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "config/error.hpp"
#include "tests/test_support.hpp"
#include "tools/svg_plot.hpp"
#include "tools/sweep_result.hpp"

namespace troupe::test {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), {}};
}

struct Outcome {
  int rc = -1;
  std::string out, err;
  double seconds = 0;
};

// `troupe ARGS` as a process, stdout and stderr kept apart.
Outcome troupe(const std::vector<std::string>& args, const fs::path& dir) {
  std::string cmd = (binary_dir() / "troupe").string();
  for (const std::string& a : args) cmd += " '" + a + "'";
  const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  cmd += " > '" + out.string() + "' 2> '" + err.string() + "'";
  Outcome r;
  const auto t0 = std::chrono::steady_clock::now();
  const int status = std::system(cmd.c_str());
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

// An in-process command's exit code and stdout.
std::pair<int, std::string> call(int (*command)(int, char**), std::vector<std::string> args) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  testing::internal::CaptureStdout();
  testing::internal::CaptureStderr();
  const int rc = command(static_cast<int>(argv.size()), argv.data());
  std::string out = testing::internal::GetCapturedStdout();
  out += testing::internal::GetCapturedStderr();
  return {rc, out};
}

// The CSV as rows of named cells.
std::vector<std::map<std::string, std::string>> read_csv(const fs::path& p) {
  std::ifstream in(p);
  std::string line;
  std::vector<std::string> header;
  std::vector<std::map<std::string, std::string>> rows;
  auto split = [](const std::string& s) {
    std::vector<std::string> cells;
    std::string cell;
    std::stringstream ss(s);
    while (std::getline(ss, cell, ',')) cells.push_back(cell);
    if (!s.empty() && s.back() == ',') cells.push_back("");
    return cells;
  };
  if (std::getline(in, line)) header = split(line);
  while (std::getline(in, line)) {
    const std::vector<std::string> cells = split(line);
    EXPECT_EQ(cells.size(), header.size()) << line;
    std::map<std::string, std::string> row;
    for (size_t i = 0; i < header.size() && i < cells.size(); ++i) row[header[i]] = cells[i];
    rows.push_back(row);
  }
  return rows;
}

const std::map<std::string, std::string>* row(const std::vector<std::map<std::string, std::string>>& rows,
                                              const std::string& layout, int c) {
  for (const auto& r : rows)
    if (r.at("layout") == layout && r.at("concurrency") == std::to_string(c)) return &r;
  return nullptr;
}

// Tags open and close in order, one root element <svg>: XML as far as these files use it.
std::string xml_problem(const std::string& text) {
  std::vector<std::string> stack;
  size_t roots = 0;
  for (size_t i = text.find('<'); i != std::string::npos; i = text.find('<', i + 1)) {
    const size_t end = text.find('>', i);
    if (end == std::string::npos) return "a '<' without '>'";
    const std::string tag = text.substr(i + 1, end - i - 1);
    if (tag.empty()) return "an empty tag";
    if (tag[0] == '?' || tag[0] == '!') continue;
    if (tag[0] == '/') {
      if (stack.empty() || stack.back() != tag.substr(1)) return "</" + tag.substr(1) + "> closes nothing open";
      stack.pop_back();
      continue;
    }
    const std::string name = tag.substr(0, tag.find_first_of(" \n/"));
    if (stack.empty()) ++roots;
    if (stack.empty() && name != "svg") return "the root is <" + name + ">";
    if (tag.back() != '/') stack.push_back(name);
  }
  if (!stack.empty()) return "<" + stack.back() + "> is never closed";
  if (roots != 1) return std::to_string(roots) + " root elements";
  return {};
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t i = text.find(what); i != std::string::npos; i = text.find(what, i + 1)) ++n;
  return n;
}

// ---- layout names, winners, SVG -------------------------------------------------------------------

TEST(SweepLayouts, NamesParseInEveryNotation) {
  EXPECT_EQ(parse_layout_name("tp4").name(), "tp4");
  EXPECT_EQ(parse_layout_name("tp2·pp2").name(), "tp2·pp2");
  EXPECT_EQ(parse_layout_name("tp2.pp2").name(), "tp2·pp2");
  EXPECT_EQ(parse_layout_name("TP2*PP2").name(), "tp2·pp2");
  EXPECT_EQ(parse_layout_name("pp2.tp2").name(), "tp2·pp2");
  EXPECT_EQ(parse_layout_name("dp4+ep").name(), "dp4+ep");
  EXPECT_EQ(parse_layout_name("tp2.dp2+EP").name(), "tp2·dp2+ep");
  EXPECT_EQ(parse_layout_name("tp1").name(), "tp1");
  const ParallelConfig p = parse_layout_name("tp2·pp2·dp2+ep");
  EXPECT_EQ(p.tensor_parallel_size, 2);
  EXPECT_EQ(p.pipeline_parallel_size, 2);
  EXPECT_EQ(p.data_parallel_size, 2);
  EXPECT_TRUE(p.enable_expert_parallel);
  EXPECT_EQ(layout_file_name(p), "tp2.pp2.dp2+ep");
  for (const char* bad : {"", "tp", "tp0", "tq2", "tp2.tp2", "tp2+xx", "tp2+ep+ep", "tp2..pp2", "ep", "tp-1"})
    EXPECT_THROW(parse_layout_name(bad), ConfigError) << bad;
}

SweepPoint point(int c, double thr, double ttft, double tpot) {
  SweepPoint p;
  p.concurrency = c;
  p.num_prompts = p.completed = 4 * c;
  p.output_throughput = thr;
  p.total_token_throughput = 3 * thr;
  p.request_throughput = thr / 100;
  p.mean_ttft_ms = p.median_ttft_ms = ttft;
  p.p99_ttft_ms = 2 * ttft;
  p.mean_tpot_ms = p.median_tpot_ms = tpot;
  p.p99_tpot_ms = 2 * tpot;
  p.median_itl_ms = tpot;
  p.median_e2el_ms = ttft + 255 * tpot;
  p.file = "points/x_c" + std::to_string(c) + ".json";
  return p;
}

// A sweep with known figures (2 GPUs, concurrency 1, 16, 64, 256): throughput, TTFT p50, TPOT p50.
SweepData known_sweep() {
  SweepData d;
  d.model_dir = "/models/m";
  d.architecture = "Qwen3MoeForCausalLM";
  d.device = "cuda";
  d.gpus = 2;
  d.input_len = 1024;
  d.output_len = 256;
  d.concurrency = {1, 16, 64, 256};
  struct Row {
    const char* name;
    std::vector<int64_t> kv;
    double thr[4], ttft[4], tpot[4];
  };
  const Row rows[] = {
      {"tp2+ep", {1000}, {100, 1000, 2000, 2500}, {40, 50, 80, 400}, {9, 12, 20, 60}},
      {"dp2+ep", {2000, 2000}, {80, 900, 2400, 3450}, {88, 90, 100, 300}, {12, 14, 18, 40}},
      {"tp2", {1000}, {90, 950, 1900, 2400}, {45, 55, 85, 420}, {10, 13, 21, 61}},
      {"dp2", {2000, 2000}, {78, 850, 2300, 3300}, {95, 100, 110, 310}, {13, 15, 19, 42}},
      {"tp1", {900}, {50, 600, 1000, 1500}, {120, 150, 300, 900}, {20, 25, 40, 90}},
      {"pp2", {1000}, {40, 500, 1200, 1600}, {130, 160, 250, 800}, {25, 30, 35, 80}},
  };
  for (const Row& r : rows) {
    SweepLayout l;
    l.parallel = parse_layout_name(r.name);
    l.kv_blocks_per_replica = r.kv;
    for (int i = 0; i < 4; ++i) l.points.push_back(point(d.concurrency[i], r.thr[i], r.ttft[i], r.tpot[i]));
    d.layouts.push_back(l);
  }
  SweepLayout failed;
  failed.parallel = parse_layout_name("tp1+ep");
  failed.status = "failed";
  failed.error = "the server ended before it was ready (exit code 2): --enable-expert-parallel has no effect";
  d.layouts.push_back(failed);
  return d;
}

TEST(SweepResult, WinnersCrossoversAndRegimesFollowTheFigures) {
  const SweepData d = known_sweep();
  const std::vector<SweepWinner> w = sweep_winners(d);
  ASSERT_EQ(w.size(), 4u);
  EXPECT_EQ(w[0].throughput_layout, "tp2+ep");
  EXPECT_EQ(w[1].throughput_layout, "tp2+ep");
  EXPECT_EQ(w[2].throughput_layout, "dp2+ep");
  EXPECT_EQ(w[3].throughput_layout, "dp2+ep");
  EXPECT_EQ(w[3].output_throughput, 3450);
  EXPECT_EQ(w[2].ttft_layout, "tp2+ep");
  EXPECT_EQ(w[3].ttft_layout, "dp2+ep");
  const std::vector<SweepCrossover> x = sweep_crossovers(w);
  ASSERT_EQ(x.size(), 1u);
  EXPECT_EQ(x[0].below, 16);
  EXPECT_EQ(x[0].above, 64);
  EXPECT_EQ(x[0].from, "tp2+ep");
  EXPECT_EQ(x[0].to, "dp2+ep");
  const std::vector<SweepRegime> r = sweep_regimes(w, true);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].last, 2u);  // by TTFT, tp2+ep wins up to c=64

  // The JSON round trip keeps every figure the analysis reads; the CSV has a row per layout × c.
  const SweepData back = sweep_from_json(json::value(sweep_json(d)));
  ASSERT_EQ(back.layouts.size(), d.layouts.size());
  EXPECT_EQ(back.layouts[1].kv_tokens(), 64000);
  EXPECT_EQ(back.layouts[6].status, "failed");
  EXPECT_EQ(back.layouts[5].points[3].p99_ttft_ms, 1600);
  EXPECT_EQ(sweep_winners(back)[2].throughput_layout, "dp2+ep");
  const std::string csv = sweep_csv(d);
  EXPECT_EQ(count(csv, "\n"), 1u + 7 * 4);
  EXPECT_NE(csv.find("tp1+ep,1,1,1,1,256,failed,"), std::string::npos) << csv;
}

TEST(SvgPlot, LineAndBarChartsAreWellFormedWithOneLinePerSeries) {
  LineChart chart;
  chart.title = "T <&> \"q\"";
  chart.x_label = "c";
  chart.y_label = "tok/s";
  chart.series = {{"tp2·pp2", {{1, 10}, {16, 100}, {1024, 900}}}, {"dp2+ep", {{16, 50}, {1, 5}}}};
  const std::string svg = line_chart_svg(chart);
  EXPECT_EQ(xml_problem(svg), "") << svg;
  EXPECT_EQ(count(svg, "<polyline"), 2u);
  EXPECT_NE(svg.find("data-name=\"tp2·pp2\""), std::string::npos);
  EXPECT_NE(svg.find("T &lt;&amp;&gt; &quot;q&quot;"), std::string::npos);
  EXPECT_NE(svg.find(">1024<"), std::string::npos) << "an x tick at each concurrency";
  chart.log_y = true;
  EXPECT_EQ(xml_problem(line_chart_svg(chart)), "");

  BarChart bars;
  bars.title = "share";
  bars.groups = {"tp1", "tp2"};
  bars.bars = {"c=1", "c=4"};
  bars.values = {{std::nullopt, std::nullopt}, {0.1, 0.2}};
  const std::string b = bar_chart_svg(bars);
  EXPECT_EQ(xml_problem(b), "") << b;
  EXPECT_EQ(count(b, "<rect"), 1u + 1 + 2 + 2);  // background, frame, two bars, two legend keys
  EXPECT_EQ(count(b, ">n/a<"), 2u);
}

// ---- advise on known figures ---------------------------------------------------------------------

TEST(Advise, RecommendsALayoutPerRegimeWithMeasuredReasons) {
  const fs::path dir = scratch_dir();
  json::object j = sweep_json(known_sweep());
  std::ofstream(dir / "sweep.json") << json::serialize(j);
  const auto [rc, out] = call(advise_command, {"advise", "--sweep", (dir / "sweep.json").string()});
  ASSERT_EQ(rc, 0) << out;
  const std::vector<std::string> expected = {
      "measured: tp2+ep, dp2+ep, tp2, dp2, tp1, pp2 at c = 1, 16, 64, 256\n  tp1+ep failed: the server ended",
      "  ≤ 16 concurrent: tp2+ep — 1.11–1.25× the output throughput of dp2+ep (1000 vs 900 tok/s at c=16); "
      "TTFT p50 40.0 ms vs 88.0 ms for dp2+ep at c=1; 0.25× the KV capacity (16,000 vs 64,000 tokens, from the "
      "servers)\n",
      "  ≥ 64 concurrent: dp2+ep — 1.20–1.38× the output throughput of tp2+ep (3450 vs 2500 tok/s at c=256); "
      "TTFT p50 100.0 ms vs 80.0 ms for tp2+ep at c=64; 4.00× the KV capacity (64,000 vs 16,000 tokens, from the "
      "servers) (lowest TTFT p50 at c=64: tp2+ep, 80.0 ms)\n",
      "  crossover (throughput): tp2+ep → dp2+ep between c=16 and c=64\n",
      "  - larger TP gives lower TTFT: held in part at 3 of 4 concurrencies; at c=1: dp2 95.0 ms, tp2 45.0 ms "
      "(tp2 2.11× lower than dp2); not at c=256: dp2 310.0 ms, tp2 420.0 ms\n",
      "  - larger TP gives lower TTFT (expert-parallel layouts): held in part at 3 of 4 concurrencies",
      "  - DP is the linear lever for throughput: dp2 gives 2.20× tp1's output throughput at c=256 (3300 vs 1500 "
      "tok/s), 110% of linear (2×): held",
      "  - DP is the linear lever for throughput: dp2+ep gives 2.30× tp1's output throughput at c=256",
      "  - PP hurts small batches: pp2 vs tp2 at c=1: 0.44× the output throughput, TPOT p50 25.0 ms vs 10.0 ms: "
      "held\n",
      "  - EP is slower at low concurrency: tp2+ep vs tp2 at c=1: 1.11× the output throughput, TPOT p50 9.00 ms vs "
      "10.0 ms: did not hold; at c=256: 1.04×\n",
      "  - EP is slower at low concurrency: dp2+ep vs dp2 at c=1: 1.03× the output throughput, TPOT p50 12.0 ms vs "
      "13.0 ms: no difference beyond 3%; at c=256: 1.05×\n",
      "  - TP+EP wins at low concurrency, DP+EP at high: at c=1 tp2+ep has 1.25× the output throughput (TTFT p50 "
      "40.0 ms for tp2+ep vs 88.0 ms for dp2+ep); at c=256 dp2+ep has 1.38×: held; crossover between c=16 and "
      "c=64\n",
  };
  for (const std::string& e : expected)
    EXPECT_NE(out.find(e), std::string::npos) << "missing: " << e << "\nin:\n" << out;
  EXPECT_EQ(out.find("not measured"), std::string::npos) << out;
  EXPECT_EQ(out.find("smoke run"), std::string::npos) << "only CPU sweeps carry the note";

  // KV capacity from the plan where it has the layout; TTFT as the objective moves the boundary.
  json::object plan{
      {"layouts", json::array{json::object{{"name", "tp2+ep"}, {"kv", json::object{{"total_tokens", 100000}}}},
                              json::object{{"name", "dp2+ep"}, {"kv", json::object{{"total_tokens", 300000}}}}}}};
  std::ofstream(dir / "plan.json") << json::serialize(plan);
  const auto [rc2, out2] = call(advise_command, {"advise", "--sweep", (dir / "sweep.json").string(), "--plan",
                                                 (dir / "plan.json").string(), "--objective", "ttft"});
  ASSERT_EQ(rc2, 0) << out2;
  EXPECT_NE(out2.find("recommendation (lowest TTFT p50 at each concurrency)"), std::string::npos) << out2;
  EXPECT_NE(out2.find("  ≤ 64 concurrent: tp2+ep — TTFT p50 40.0 ms vs 88.0 ms for dp2+ep at c=1"), std::string::npos)
      << out2;
  EXPECT_NE(out2.find("  ≥ 256 concurrent: dp2+ep — "), std::string::npos) << out2;
  EXPECT_NE(out2.find("3.00× the KV capacity (300,000 vs 100,000 tokens, from the plan)"), std::string::npos) << out2;

  // Without the layouts a rule needs, it says so.
  SweepData small = known_sweep();
  small.layouts.resize(1);
  small.device = "cpu";
  std::ofstream(dir / "small.json") << json::serialize(sweep_json(small));
  const auto [rc3, out3] = call(advise_command, {"advise", "--sweep", (dir / "small.json").string()});
  ASSERT_EQ(rc3, 0) << out3;
  EXPECT_NE(out3.find("at every measured concurrency (1–256): tp2+ep — the only layout measured there"),
            std::string::npos)
      << out3;
  EXPECT_EQ(count(out3, "not measured"), 5u) << out3;
  EXPECT_NE(out3.find("smoke run, not a hardware result"), std::string::npos) << out3;
}

TEST(Advise, BadFlagsAndFilesExitTwo) {
  const fs::path dir = scratch_dir();
  std::ofstream(dir / "bad.json") << "{\"layouts\": 3}";
  std::ofstream(dir / "good.json") << json::serialize(sweep_json(known_sweep()));
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"advise"},
        {"advise", "--sweep", (dir / "missing.json").string()},
        {"advise", "--sweep", (dir / "bad.json").string()},
        {"advise", "--sweep", (dir / "good.json").string(), "--objective", "speed"},
        {"advise", "--sweep", (dir / "good.json").string(), "--plan", (dir / "bad.json").string()}}) {
    const auto [rc, out] = call(advise_command, args);
    EXPECT_EQ(rc, 2) << args.back() << ": " << out;
  }
}

TEST(Sweep, BadFlagsExitTwoNamingTheProblem) {
  const std::string model = tiny_model("tiny-qwen3-chat").string();
  const fs::path dir = scratch_dir();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--gpus", "2", "--layouts", "tp3x"}, "layout 'tp3x'"},
      {{"--gpus", "2", "--layouts", "tp4"}, "tp4 needs 4 GPUs"},
      {{"--gpus", "0"}, "--gpus"},
      {{"--gpus", "2", "--concurrency", "1,x"}, "--concurrency"},
      {{"--gpus", "2", "--concurrency", "0"}, "--concurrency"},
      {{"--gpus", "2", "--device", "tpu"}, "--device"},
      {{"--gpus", "2", "--waves", "0"}, "--waves must be at least 1, got 0"},
      {{"--gpus", "2", "--min-prompts", "0"}, "--min-prompts must be at least 1, got 0"},
      {{"--gpus", "2", "--", "--port", "9000"}, "--port after --"},
      {{"--gpus", "2", "--", "--tensor-parallel-size=2"}, "--tensor-parallel-size after --"},
  };
  for (const auto& [extra, message] : cases) {
    // In this process /proc/self/exe is the test program: should a check fail to stop the sweep, the
    // "server" it starts never gets ready, and the short timeout ends it.
    std::vector<std::string> args{"sweep", "--model", model, "--out", (dir / "out").string(), "--start-timeout", "5"};
    const auto dash = std::find(extra.begin(), extra.end(), "--");
    args.insert(args.end(), extra.begin(), dash);
    args.insert(args.end(), dash, extra.end());
    const auto [rc, out] = call(sweep_command, args);
    EXPECT_EQ(rc, 2) << message << ": " << out;
    EXPECT_NE(out.find(message), std::string::npos) << message << ": " << out;
  }
  EXPECT_FALSE(fs::exists(dir / "out" / "sweep.json"));
}

// ---- real sweeps on the CPU backend --------------------------------------------------------------

std::vector<std::string> sweep_args(const std::string& model, const std::string& layouts, const fs::path& out,
                                    bool png) {
  std::vector<std::string> a{"sweep",      "--model",
                             model,        "--gpus",
                             "2",          "--layouts",
                             layouts,      "--concurrency",
                             "1,4",        "--input-len",
                             "40",         "--output-len",
                             "8",          "--num-prompts-per-point",
                             "6",          "--num-warmups",
                             "1",          "--device",
                             "cpu",        "--out",
                             out.string(), "--start-timeout",
                             "120"};
  if (!png) a.push_back("--no-png");
  a.insert(a.end(), {"--", "--http-threads", "2", "--max-model-len", "256"});
  return a;
}

TEST(Sweep, MeasuresEveryLayoutAtEveryConcurrencyReportsTheRefusedOneAndResumes) {
  const std::string model = tiny_model("tiny-qwen3-chat").string();
  const fs::path dir = scratch_dir(), out = dir / "sweep";
  const Outcome first = troupe(sweep_args(model, "tp1,tp2,dp2,tp1+ep", out, true), dir);
  ASSERT_EQ(first.rc, 0) << first.out << first.err;

  // Progress on stderr, a line per point; the refused layout with the server's own message.
  for (const char* line : {"[1/8] tp1 c=1: 6 prompts, 1 warm-ups ...", "[2/8] tp1 c=4: ", "[6/8] dp2 c=4: ",
                           "tp1+ep: failed to start: the server ended before it was ready (exit code 2): troupe serve: "
                           "--enable-expert-parallel has no effect"})
    EXPECT_NE(first.err.find(line), std::string::npos) << line << "\n" << first.err;
  EXPECT_EQ(count(first.err, ": starting "), 4u) << first.err;
  EXPECT_NE(first.out.find("winners per concurrency:"), std::string::npos) << first.out;
  EXPECT_NE(first.out.find("tp1+ep failed: "), std::string::npos) << first.out;

  // The CSV: a row per layout × concurrency with the bench's figures and the servers' KV blocks.
  const auto rows = read_csv(out / "sweep.csv");
  ASSERT_EQ(rows.size(), 8u);
  for (const char* layout : {"tp1", "tp2", "dp2"})
    for (int c : {1, 4}) {
      SCOPED_TRACE(std::string(layout) + " c=" + std::to_string(c));
      const auto* r = row(rows, layout, c);
      ASSERT_NE(r, nullptr);
      EXPECT_EQ(r->at("status"), "ok");
      EXPECT_EQ(r->at("completed"), "6");
      EXPECT_EQ(r->at("failed"), "0");
      for (const char* figure :
           {"output_throughput_tok_s", "total_throughput_tok_s", "request_throughput_req_s", "ttft_mean_ms",
            "ttft_p50_ms", "ttft_p99_ms", "tpot_mean_ms", "tpot_p50_ms", "tpot_p99_ms", "itl_p50_ms", "e2el_p50_ms"})
        EXPECT_GT(std::stod(r->at(figure)), 0.0) << figure;
      ASSERT_FALSE(r->at("kv_usage_peak").empty());  // sampled every 250 ms: a short run's peak may read 0
      EXPECT_GE(std::stod(r->at("kv_usage_peak")), 0.0);
      // Output tokens are 8 per request and the prompts 40: total throughput is 6× the output's.
      EXPECT_NEAR(std::stod(r->at("total_throughput_tok_s")), 6 * std::stod(r->at("output_throughput_tok_s")), 0.01);
      // Prompts of two full blocks and more: a prompt seen before would hit the prefix cache.
      EXPECT_EQ(std::stod(r->at("prefix_hit_rate")), 0.0) << "warm-ups and other points use other prompts";
      EXPECT_EQ(r->at("preemptions"), "0");
      EXPECT_EQ(r->at("comm_share").empty(), std::string(layout) != "tp2") << "collectives only in tp2";
      if (!r->at("comm_share").empty()) {  // a share of the steps' time: above 0, below 1
        EXPECT_GT(std::stod(r->at("comm_share")), 0.0);
        EXPECT_LT(std::stod(r->at("comm_share")), 1.0);
      }
      EXPECT_EQ(r->at("file"), "points/" + std::string(layout) + "_c" + std::to_string(c) + ".json");
    }
  // 256 MiB of KV per CPU worker: tp2's worker holds one of the two KV heads (twice the blocks), dp2
  // has two replicas of tp1's.
  for (const char* layout : {"tp1", "tp2", "dp2"})
    for (int c : {1, 4}) ASSERT_FALSE(row(rows, layout, c)->at("kv_blocks_per_gpu").empty()) << layout << " c=" << c;
  const int64_t tp1_blocks = std::stoll(row(rows, "tp1", 1)->at("kv_blocks_per_gpu"));
  EXPECT_GT(tp1_blocks, 0);
  EXPECT_EQ(std::stoll(row(rows, "tp2", 1)->at("kv_blocks_per_gpu")), 2 * tp1_blocks);
  EXPECT_EQ(std::stoll(row(rows, "dp2", 4)->at("kv_blocks_per_gpu")), tp1_blocks);
  EXPECT_EQ(std::stoll(row(rows, "dp2", 4)->at("kv_tokens")), 2 * 16 * tp1_blocks);
  for (int c : {1, 4}) EXPECT_EQ(row(rows, "tp1+ep", c)->at("status"), "failed");

  // The JSON: the same figures, the failure with the server's stderr, winners among the measured.
  const json::object j = json::parse(read_file(out / "sweep.json")).as_object();
  const SweepData d = sweep_from_json(j);
  ASSERT_EQ(d.layouts.size(), 4u);
  EXPECT_EQ(d.layouts[3].name(), "tp1+ep");
  EXPECT_EQ(d.layouts[3].status, "failed");
  EXPECT_NE(d.layouts[3].log_tail.find("has no effect"), std::string::npos) << d.layouts[3].log_tail;
  EXPECT_EQ(d.layouts[0].points.size(), 2u);
  EXPECT_EQ(d.concurrency, (std::vector<int>{1, 4}));
  ASSERT_EQ(j.at("winners").as_array().size(), 2u);
  for (const json::value& w : j.at("winners").as_array()) {
    const std::string name(w.at("throughput").at("layout").as_string());
    EXPECT_TRUE(name == "tp1" || name == "tp2" || name == "dp2") << name;
  }
  // Each point file is the bench's result with the sweep's key.
  const json::object p = json::parse(read_file(out / "points" / "tp2_c4.json")).as_object();
  EXPECT_EQ(p.at("completed"), 6);
  EXPECT_EQ(p.at("max_concurrency"), 4);
  EXPECT_EQ(p.at("sweep_point").at("layout"), "tp2");
  EXPECT_EQ(p.at("total_output_tokens"), 6 * 8);
  EXPECT_FALSE(p.contains("itls")) << "per-token arrays only with --keep-itls";

  // Plots: well-formed SVG, a line per measured layout; PNG where a renderer exists.
  for (const char* plot : {"throughput", "ttft_p50", "ttft_p99"}) {
    const std::string svg = read_file(out / "plots" / (std::string(plot) + ".svg"));
    EXPECT_EQ(xml_problem(svg), "") << plot;
    EXPECT_EQ(count(svg, "<polyline"), 3u) << plot;
    for (const char* layout : {"tp1", "tp2", "dp2"})
      EXPECT_NE(svg.find("<g class=\"series\" data-name=\"" + std::string(layout) + "\">"), std::string::npos) << plot;
  }
  const std::string bars = read_file(out / "plots" / "comm_share.svg");
  EXPECT_EQ(xml_problem(bars), "");
  EXPECT_EQ(count(bars, "<g class=\"group\""), 3u);
  if (find_png_renderer()) {
    for (const char* plot : {"throughput", "ttft_p50", "ttft_p99", "comm_share"}) {
      const std::string png = read_file(out / "plots" / (std::string(plot) + ".png"));
      EXPECT_EQ(png.substr(0, 4), "\x89PNG") << plot;
    }
  } else {
    EXPECT_NE(first.out.find("SVG only"), std::string::npos) << first.out;
  }

  // Advise on it names a measured layout, and says which rules this sweep cannot test.
  const auto [arc, advice] = call(advise_command, {"advise", "--sweep", (out / "sweep.json").string()});
  EXPECT_EQ(arc, 0) << advice;
  EXPECT_TRUE(std::regex_search(advice, std::regex(": (tp1|tp2|dp2) — "))) << advice;
  EXPECT_NE(advice.find("PP hurts small batches: not measured"), std::string::npos) << advice;
  EXPECT_NE(advice.find("EP is slower at low concurrency: not measured"), std::string::npos) << advice;
  EXPECT_NE(advice.find("DP is the linear lever for throughput: dp2 gives "), std::string::npos) << advice;

  // Run again: every point is there, so no server starts (the logs do not grow) and nothing changes.
  const std::string csv = read_file(out / "sweep.csv");
  std::map<std::string, uintmax_t> log_sizes;
  for (const auto& e : fs::directory_iterator(out / "logs")) log_sizes[e.path().filename()] = fs::file_size(e.path());
  const Outcome second = troupe(sweep_args(model, "tp1,tp2,dp2,tp1+ep", out, false), dir);
  ASSERT_EQ(second.rc, 0) << second.err;
  EXPECT_EQ(count(second.err, ": starting "), 0u) << second.err;
  EXPECT_EQ(count(second.err, ": measured before (points/"), 6u) << second.err;
  EXPECT_EQ(count(second.err, "skipped: its server failed in an earlier run"), 2u) << second.err;
  for (const auto& [name, size] : log_sizes) EXPECT_EQ(fs::file_size(out / "logs" / name), size) << name;
  EXPECT_EQ(read_file(out / "sweep.csv"), csv);
  EXPECT_LT(second.seconds, first.seconds);
  // The same prompt counts asked as waves, max(1 × c, 6) at c = 1 and 4: the same points.
  std::vector<std::string> waves = sweep_args(model, "tp1,tp2,dp2,tp1+ep", out, false);
  const auto fixed = std::find(waves.begin(), waves.end(), "--num-prompts-per-point");
  ASSERT_NE(fixed, waves.end());
  *fixed = "--waves";
  *(fixed + 1) = "1";
  waves.insert(fixed + 2, {"--min-prompts", "6"});
  const Outcome as_waves = troupe(waves, dir);
  ASSERT_EQ(as_waves.rc, 0) << as_waves.err;
  EXPECT_EQ(count(as_waves.err, ": starting "), 0u) << as_waves.err;
  EXPECT_EQ(count(as_waves.err, ": measured before (points/"), 6u) << as_waves.err;

  // A point removed and one cut short: only their layouts' servers start, and only they are measured.
  fs::remove(out / "points" / "tp2_c4.json");
  const std::string dp2 = read_file(out / "points" / "dp2_c1.json");
  std::ofstream(out / "points" / "dp2_c1.json", std::ios::trunc) << dp2.substr(0, dp2.size() / 2);
  const Outcome third = troupe(sweep_args(model, "tp1,tp2,dp2,tp1+ep", out, false), dir);
  ASSERT_EQ(third.rc, 0) << third.err;
  EXPECT_EQ(count(third.err, ": starting "), 2u) << third.err;
  EXPECT_NE(third.err.find("tp2: starting"), std::string::npos) << third.err;
  EXPECT_NE(third.err.find("dp2: starting"), std::string::npos) << third.err;
  EXPECT_NE(third.err.find("[4/8] tp2 c=4: 6 prompts"), std::string::npos) << third.err;
  EXPECT_NE(third.err.find("[5/8] dp2 c=1: 6 prompts"), std::string::npos) << third.err;
  EXPECT_EQ(count(third.err, " prompts, "), 2u) << third.err;
  EXPECT_EQ(read_csv(out / "sweep.csv").size(), 8u);
  EXPECT_EQ(json::parse(read_file(out / "points" / "dp2_c1.json")).at("completed"), 6);
}

// An MoE model (tiny-qwen3-moe with the Qwen3 tokenizer, which covers its 512 ids): the expert-
// parallel layouts run, and advise can test the EP rules and take KV capacities from a plan.
TEST(Sweep, MoeLayoutsLetAdviseTestTheExpertParallelRules) {
  const fs::path dir = scratch_dir(), model = dir / "moe";
  fs::create_directories(model);
  for (const auto& e : fs::directory_iterator(tiny_model("tiny-qwen3-moe")))
    fs::copy(e.path(), model / e.path().filename());
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy(tiny_model("tiny-qwen3-chat") / f, model / f);
  const Outcome sweep = troupe(sweep_args(model.string(), "tp2,tp2+ep,dp2,dp2+ep,tp1", dir / "sweep", false), dir);
  ASSERT_EQ(sweep.rc, 0) << sweep.out << sweep.err;
  EXPECT_EQ(count(sweep.err, " tok/s out"), 10u) << sweep.err;
  const Outcome plan =
      troupe({"plan", "--model", model.string(), "--gpus", "2", "--json", (dir / "plan.json").string()}, dir);
  ASSERT_EQ(plan.rc, 0) << plan.err;
  const auto [rc, advice] = call(advise_command, {"advise", "--sweep", (dir / "sweep" / "sweep.json").string(),
                                                  "--plan", (dir / "plan.json").string()});
  ASSERT_EQ(rc, 0) << advice;
  EXPECT_TRUE(std::regex_search(advice, std::regex(": (tp2|tp2\\+ep|dp2|dp2\\+ep|tp1) — "))) << advice;
  // The plan has every 2-GPU layout but not tp1: the servers' figures where tp1 is compared.
  EXPECT_TRUE(
      std::regex_search(advice, std::regex("KV capacity \\([0-9,]+ (vs [0-9,]+ )?tokens, from the (plan|servers)\\)")))
      << advice;
  for (const char* rule :
       {"EP is slower at low concurrency: tp2+ep vs tp2 at c=1: ",
        "EP is slower at low concurrency: dp2+ep vs dp2 at c=1: ",
        "TP+EP wins at low concurrency, DP+EP at high: at c=1 ",
        "larger TP gives lower TTFT (expert-parallel layouts): ", "DP is the linear lever for throughput: dp2 gives "})
    EXPECT_NE(advice.find(rule), std::string::npos) << rule << "\n" << advice;
  EXPECT_EQ(count(advice, "not measured"), 1u) << "only the PP rule: " << advice;
}

}  // namespace
}  // namespace troupe::test
