// `troupe plan`: every parallel layout of a model over N GPUs, from config.json alone (no GPU, no
// weights): per-GPU weight bytes (non-MoE, routed experts, shared experts), the KV cache the server
// would size, the communication a token costs, and the layouts the server would refuse with its
// messages. A table on stdout; --json FILE writes everything (tools/layout_plan.hpp has the rules).
#include <boost/json.hpp>
#include <boost/program_options.hpp>
#include <cstdio>
#include <sstream>
#include <string>

#include "config/error.hpp"
#include "tools/command_error.hpp"
#include "tools/command_flags.hpp"
#include "tools/commands.hpp"
#include "tools/json_file.hpp"
#include "tools/layout_plan.hpp"

namespace troupe {
namespace {

namespace po = boost::program_options;
namespace json = boost::json;

constexpr double kGiB = 1024.0 * 1024 * 1024;

// The line the server logs for this rank at start-up (actors/worker.cpp, describe()), so the two can
// be compared line by line.
std::string describe_rank(const ModelConfig& c, const RankPlan& r) {
  std::ostringstream out;
  const ModelShard& s = r.shard;
  out << "rank " << r.rank << " (dp" << s.dp_rank << " pp" << s.pp_rank << " tp" << s.tp_rank << "): layers ["
      << r.layers.begin << ", " << r.layers.end << "), " << r.heads << " heads, " << r.kv_heads << " kv heads";
  if (c.num_kv_heads < s.layout.tensor_parallel_size)
    out << " (replicated " << s.layout.tensor_parallel_size / c.num_kv_heads << "x)";
  if (c.is_moe()) {
    if (s.layout.enable_expert_parallel)
      out << ", experts [" << r.expert_begin << ", " << r.expert_end << ")";
    else
      out << ", all " << c.num_experts << " experts sliced 1/" << r.expert_slice;
  }
  out << ", " << r.weights.total() << " weight bytes";
  return out.str();
}

const RankPlan& heaviest(const LayoutPlan& plan) {
  const RankPlan* best = &plan.ranks.front();
  for (const RankPlan& r : plan.ranks)
    if (r.weights.total() > best->weights.total()) best = &r;
  return *best;
}

std::string status_of(const ModelConfig& c, const PlanHardware& hw, const LayoutPlan& p) {
  if (!p.valid) return "invalid: " + p.error;
  if (!p.fit_error.empty()) return "does not fit: " + p.fit_error;
  std::string s = "ok";
  const int wanted = hw.max_model_len > 0 ? hw.max_model_len : c.max_position_embeddings;
  if (p.max_model_len < wanted) s += " (max model len capped at " + std::to_string(p.max_model_len) + " by the KV cache)";
  for (const std::string& w : p.warnings) s += " (warning: " + w + ")";
  return s;
}

// Bytes per token per layer of the MoE collectives across data-parallel ranks (off-rank share for
// all-to-all), as shown in the table.
std::string moe_cell(const LayoutPlan& p) {
  double bytes = 0;
  std::string kinds;
  for (const CommOp& op : p.comms) {
    if (op.group != "moe") continue;
    bytes += op.bytes_per_token * op.off_rank_fraction;
    const std::string k = op.kind == "all_gather" ? "AG" : op.kind == "reduce_scatter" ? "RS" : "A2A";
    if (kinds.find(k) == std::string::npos) kinds += (kinds.empty() ? "" : "+") + k;
  }
  if (kinds.empty()) return "-";
  return kinds + " " + std::to_string(static_cast<int64_t>(bytes + 0.5));
}

std::string tp_cell(const LayoutPlan& p) {
  // The two all-reduces of every decoder layer (after attention, after the MLP or MoE block).
  double bytes = 0;
  for (const CommOp& op : p.comms)
    if (op.kind == "all_reduce" && (op.where == "attention" || op.where == "mlp" || op.where == "moe"))
      bytes = op.bytes_per_token * 2;
  return bytes > 0 ? "AR " + std::to_string(static_cast<int64_t>(bytes)) : "-";
}

std::string pp_cell(const LayoutPlan& p) {
  for (const CommOp& op : p.comms)
    if (op.where == "stage_boundary")
      return std::to_string(static_cast<int64_t>(op.bytes_per_token)) + " x" + std::to_string(op.count);
  return "-";
}

std::string group_commas(int64_t v) {
  std::string s = std::to_string(v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

// Display width of UTF-8 text (layout names carry "·"): one column per code point.
size_t display_width(const std::string& s) {
  size_t n = 0;
  for (unsigned char ch : s) n += (ch & 0xC0) != 0x80 ? 1 : 0;
  return n;
}

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// Routed experts a GPU holds: "all 1/8" (every expert, sliced) or, with EP, "16 (62%)": whole
// experts and the chance that a token needs that GPU at all (uniform routing).
std::string experts_cell(const LayoutPlan& p, const RankPlan& r) {
  if (!p.parallel.enable_expert_parallel) return "all 1/" + std::to_string(r.expert_slice);
  return std::to_string(r.expert_end - r.expert_begin) + " (" +
         std::to_string(static_cast<int>(p.experts.rank_touch_probability * 100 + 0.5)) + "%)";
}

void print_table(const ModelConfig& c, const std::vector<LayoutPlan>& plans, const PlanHardware& hw, int gpus,
                 bool show_ranks) {
  const int wanted = hw.max_model_len > 0 ? hw.max_model_len : c.max_position_embeddings;
  const bool moe = c.is_moe(), shared = c.has_shared_expert();
  const bool default_memory = hw.gpu_memory_bytes == PlanHardware{}.gpu_memory_bytes;
  std::printf("%s, %d GPUs of %.1f GiB%s, %s, --gpu-memory-utilization %.2f, block %d, max model len %d\n",
              std::string(architecture_name(c.arch)).c_str(), gpus, hw.gpu_memory_bytes / kGiB,
              default_memory ? " (an H100 80GB reports ~79.1 GiB: --gpu-memory 79.1 matches it)" : "",
              hw.dtype == DType::bf16 ? "bf16" : "f32", hw.gpu_memory_utilization, hw.block_size, wanted);
  if (moe)
    std::printf("%d of %d routed experts per token in each MoE layer (density %.2f%%)\n", c.num_experts_per_tok,
                c.num_experts, 100.0 * c.num_experts_per_tok / c.num_experts);
  std::printf("per GPU: the rank with the most weight bytes (GB = 1e9 bytes); KV tokens: the smallest replica's "
              "and all replicas'; communication: bytes per token per layer (PP: per stage boundary x boundaries)\n\n");

  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> header{"layout", moe ? "non-MoE GB" : "weights GB"};
  if (moe) header.insert(header.end(), {"experts GB", "experts/GPU"});
  if (shared) header.push_back("shared GB");
  if (moe) header.push_back("total GB");
  header.insert(header.end(), {"KV tok/replica", "KV tok total", "KV rep", "TP"});
  if (moe) header.push_back("MoE");
  header.insert(header.end(), {"PP", "status"});
  rows.push_back(header);
  std::vector<std::vector<std::string>> rank_lines(plans.size());
  int64_t reserve = 0;
  for (size_t i = 0; i < plans.size(); ++i) {
    const LayoutPlan& p = plans[i];
    std::vector<std::string> row(header.size(), "-");
    row.front() = p.parallel.name();
    row.back() = status_of(c, hw, p);
    if (p.valid) {
      reserve = p.ranks.front().activation_reserve_bytes;
      const RankPlan& r = heaviest(p);
      size_t col = 1;
      row[col++] = fixed(r.weights.non_moe / 1e9, 2);
      if (moe) {
        row[col++] = fixed(r.weights.routed / 1e9, 2);
        row[col++] = experts_cell(p, r);
      }
      if (shared) row[col++] = fixed(r.weights.shared / 1e9, 2);
      if (moe) row[col++] = fixed(r.weights.total() / 1e9, 2);
      int64_t total = 0;
      for (int64_t t : p.replica_kv_tokens) total += t;
      row[col++] = group_commas(p.kv_tokens);
      row[col++] = group_commas(total);
      row[col++] = std::to_string(p.kv_replication) + "x";
      row[col++] = tp_cell(p);
      if (moe) row[col++] = moe_cell(p);
      row[col++] = pp_cell(p);
      for (const RankPlan& k : p.ranks) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "; used %.2f GiB, KV budget %.2f GiB: %lld blocks of %lld bytes", k.used_bytes / kGiB,
                      k.kv_budget_bytes / kGiB, static_cast<long long>(k.kv_blocks),
                      static_cast<long long>(k.kv_bytes_per_block));
        rank_lines[i].push_back(describe_rank(c, k) + buf);
      }
    }
    rows.push_back(row);
  }
  std::vector<size_t> width(header.size(), 0);
  for (const auto& row : rows)
    for (size_t j = 0; j + 1 < row.size(); ++j) width[j] = std::max(width[j], display_width(row[j]));
  for (size_t i = 0; i < rows.size(); ++i) {
    std::string line;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      const std::string& cell = rows[i][j];
      const std::string gap(j + 1 < rows[i].size() ? width[j] - display_width(cell) : 0, ' ');
      // The layout and the status read from the left, figures from the right.
      line += j == 0 ? cell + gap : j + 1 == rows[i].size() ? cell : gap + cell;
      if (j + 1 < rows[i].size()) line += "  ";
    }
    std::printf("%s\n", line.c_str());
    if (show_ranks && i > 0)
      for (const std::string& r : rank_lines[i - 1]) std::printf("    %s\n", r.c_str());
  }
  std::printf("\n");
  if (moe)
    std::printf("experts/GPU: \"all 1/N\" = every routed expert, its intermediate dimension split N ways; with EP, whole "
                "experts and the chance a token needs that GPU. MoE: AG+RS = all-gather before and reduce-scatter after "
                "(dp > 1, no EP); A2A = all-to-all dispatch and combine (dp > 1, EP), expected off-rank bytes for uniform "
                "routing.\n");
  std::printf("KV budget per GPU = memory x utilization - used - activation reserve (%.2f GiB); used = weights in the "
              "CUDA allocator's size classes + rope tables + sampler + %.2f GiB CUDA context (an estimate).\n",
              reserve / kGiB, hw.context_overhead_bytes / kGiB);
}

json::object rank_json(const ModelConfig& c, const RankPlan& r) {
  json::object o;
  o["rank"] = r.rank;
  o["dp"] = r.shard.dp_rank;
  o["pp"] = r.shard.pp_rank;
  o["tp"] = r.shard.tp_rank;
  o["layers"] = json::array{r.layers.begin, r.layers.end};
  o["heads"] = r.heads;
  o["kv_heads"] = r.kv_heads;
  if (c.is_moe()) {
    o["experts"] = json::array{r.expert_begin, r.expert_end};
    o["expert_slice"] = r.expert_slice;
  }
  o["weight_bytes"] = json::object{{"non_moe", r.weights.non_moe},
                                   {"routed_experts", r.weights.routed},
                                   {"shared_experts", r.weights.shared},
                                   {"total", r.weights.total()}};
  o["device_bytes"] = json::object{{"weights", r.weight_device_bytes},
                                   {"rope", r.rope_bytes},
                                   {"sampler", r.sampler_bytes},
                                   {"used", r.used_bytes}};
  o["activation_reserve_bytes"] = r.activation_reserve_bytes;
  o["kv_budget_bytes"] = r.kv_budget_bytes;
  o["kv_bytes_per_block"] = r.kv_bytes_per_block;
  o["kv_blocks"] = r.kv_blocks;
  o["description"] = describe_rank(c, r);
  return o;
}

json::object layout_json(const ModelConfig& c, const PlanHardware& hw, const LayoutPlan& p) {
  json::object o;
  o["name"] = p.parallel.name();
  o["tensor_parallel_size"] = p.parallel.tensor_parallel_size;
  o["pipeline_parallel_size"] = p.parallel.pipeline_parallel_size;
  o["data_parallel_size"] = p.parallel.data_parallel_size;
  o["enable_expert_parallel"] = p.parallel.enable_expert_parallel;
  o["valid"] = p.valid;
  o["status"] = status_of(c, hw, p);
  if (!p.valid) {
    o["error"] = p.error;
    return o;
  }
  json::array warnings;
  for (const std::string& w : p.warnings) warnings.push_back(json::value(w));
  o["warnings"] = std::move(warnings);
  if (!p.fit_error.empty()) o["fit_error"] = p.fit_error;
  json::array ranks;
  for (const RankPlan& r : p.ranks) ranks.push_back(rank_json(c, r));
  o["ranks"] = std::move(ranks);
  json::array replicas;
  int64_t total = 0;
  for (int64_t t : p.replica_kv_tokens) {
    replicas.push_back(t);
    total += t;
  }
  o["kv"] = json::object{{"replication", p.kv_replication},
                         {"tokens_per_replica", std::move(replicas)},
                         {"capacity_tokens", p.kv_tokens},
                         {"total_tokens", total},
                         {"max_model_len", p.max_model_len}};
  json::array comms;
  // Per token through the model (embedding, layers, stage boundaries; all-to-all at its off-rank
  // share), and per token that gets logits (the LM head's gather).
  double per_token = 0, per_logits_row = 0;
  for (const CommOp& op : p.comms) {
    comms.push_back(json::object{{"where", op.where},
                                 {"kind", op.kind},
                                 {"group", op.group},
                                 {"group_size", op.group_size},
                                 {"count", op.count},
                                 {"bytes_per_token", op.bytes_per_token},
                                 {"off_rank_fraction", op.off_rank_fraction}});
    (op.where == "lm_head" ? per_logits_row : per_token) += op.count * op.bytes_per_token * op.off_rank_fraction;
  }
  o["communication"] = std::move(comms);
  o["communication_bytes_per_token"] = per_token;
  o["communication_bytes_per_logits_row"] = per_logits_row;
  if (c.is_moe())
    o["expert_density"] = json::object{{"per_layer", p.experts.per_layer},
                                       {"experts_per_rank", p.experts.experts_per_rank},
                                       {"local_fraction", p.experts.local_fraction},
                                       {"rank_touch_probability", p.experts.rank_touch_probability}};
  return o;
}

json::object plan_json(const std::string& model_dir, const ModelConfig& c, const std::vector<LayoutPlan>& plans,
                       const PlanHardware& hw, int gpus) {
  int moe_layers = 0;
  for (int l = 0; l < c.num_layers; ++l) moe_layers += c.is_moe_layer(l) ? 1 : 0;
  json::object model{{"dir", model_dir},
                     {"architecture", std::string(architecture_name(c.arch))},
                     {"hidden_size", c.hidden_size},
                     {"intermediate_size", c.intermediate_size},
                     {"num_layers", c.num_layers},
                     {"moe_layers", moe_layers},
                     {"num_heads", c.num_heads},
                     {"num_kv_heads", c.num_kv_heads},
                     {"head_dim", c.head_dim},
                     {"vocab_size", c.vocab_size},
                     {"tie_word_embeddings", c.tie_word_embeddings},
                     {"max_position_embeddings", c.max_position_embeddings},
                     {"num_experts", c.num_experts},
                     {"num_experts_per_tok", c.num_experts_per_tok},
                     {"moe_intermediate_size", c.moe_intermediate_size},
                     {"shared_expert_intermediate_size", c.shared_expert_intermediate_size}};
  json::object hardware{{"gpu_memory_bytes", hw.gpu_memory_bytes},
                        {"gpu_memory_utilization", hw.gpu_memory_utilization},
                        {"dtype", hw.dtype == DType::bf16 ? "bf16" : "f32"},
                        {"block_size", hw.block_size},
                        {"max_num_batched_tokens", hw.max_num_batched_tokens},
                        {"max_num_seqs", hw.max_num_seqs},
                        {"max_model_len", hw.max_model_len},
                        {"all2all_backend", hw.moe_exchange == MoeExchange::allgather_reducescatter
                                                ? "allgather_reducescatter"
                                                : "all_to_all"},
                        {"context_overhead_bytes", hw.context_overhead_bytes}};
  json::array layouts;
  for (const LayoutPlan& p : plans) layouts.push_back(layout_json(c, hw, p));
  return json::object{{"gpus", gpus},
                      {"model", std::move(model)},
                      {"hardware", std::move(hardware)},
                      {"layouts", std::move(layouts)}};
}

}  // namespace

int plan_command(int argc, char** argv) {
  po::options_description flags("troupe plan: every parallel layout of a model over N GPUs, from config.json alone");
  std::string model_dir, dtype = "bf16", json_file, all2all = "all_to_all";
  int gpus = 0;
  double gpu_memory_gib = 80.0;
  bool show_ranks = false;
  PlanHardware hw;
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("model", po::value(&model_dir)->required(), "model directory (only config.json is read)")
      ("gpus", po::value(&gpus)->required(), "number of GPUs to lay the model over")
      ("gpu-memory", po::value(&gpu_memory_gib), "GiB of memory each GPU reports (default 80; an H100 80GB reports ~79.1)")
      ("gpu-memory-utilization", po::value(&hw.gpu_memory_utilization), "share of each GPU's memory troupe may use (default 0.9)")
      ("max-model-len", po::value(&hw.max_model_len), "prompt + output tokens of a request at most (default: the model's)")
      ("block-size", po::value(&hw.block_size), "tokens per KV cache block (default 16)")
      ("max-num-batched-tokens", po::value(&hw.max_num_batched_tokens), "tokens in one step at most (default 2048)")
      ("max-num-seqs", po::value(&hw.max_num_seqs), "sequences in one step at most (default 256)")
      ("dtype", po::value(&dtype), "bf16 (the CUDA backend's, default) or f32 (the CPU backend's)")
      ("all2all-backend", po::value(&all2all), "all_to_all (default) or allgather_reducescatter: the server's flag, "
       "which decides the MoE collectives of expert parallelism across data-parallel ranks")
      ("ranks", po::bool_switch(&show_ranks), "also list every rank as the server's start-up log describes it, with its KV budget")
      ("json", po::value(&json_file), "write every figure of every layout to this file");
  // clang-format on
  ModelConfig config;
  try {
    const std::optional<po::variables_map> vm = parse_flags(argc, argv, flags);
    if (!vm) return 0;
    if (gpus < 1) throw ConfigError("--gpus must be at least 1, got " + std::to_string(gpus));
    if (!(gpu_memory_gib > 0) || gpu_memory_gib > 1e6)
      throw ConfigError("--gpu-memory must be a positive number of GiB, got " + std::to_string(gpu_memory_gib));
    hw.gpu_memory_bytes = static_cast<int64_t>(gpu_memory_gib * kGiB);
    if (!(hw.gpu_memory_utilization > 0 && hw.gpu_memory_utilization <= 1))
      throw ConfigError("--gpu-memory-utilization must be in (0, 1], got " + std::to_string(hw.gpu_memory_utilization));
    if (hw.block_size < 1 || hw.block_size > 1024)
      throw ConfigError("--block-size must be in [1, 1024], got " + std::to_string(hw.block_size));
    if (hw.max_num_batched_tokens < 1)
      throw ConfigError("--max-num-batched-tokens must be at least 1, got " + std::to_string(hw.max_num_batched_tokens));
    if (hw.max_num_seqs < 1) throw ConfigError("--max-num-seqs must be at least 1, got " + std::to_string(hw.max_num_seqs));
    if (vm->count("max-model-len") && hw.max_model_len < 1)
      throw ConfigError("--max-model-len must be at least 1, got " + std::to_string(hw.max_model_len));
    hw.moe_exchange = parse_moe_exchange(all2all);
    if (dtype == "bf16" || dtype == "bfloat16") {
      hw.dtype = DType::bf16;
    } else if (dtype == "f32" || dtype == "float32") {
      hw.dtype = DType::f32;
    } else {
      throw ConfigError("--dtype: expected bf16 or f32, got '" + dtype + "'");
    }
    try {
      config = load_model_config(model_dir);
    } catch (const std::exception& e) {
      throw ConfigError(std::string("--model: ") + e.what());
    }
  } catch (...) {
    return command_error("plan", 2);
  }

  try {
    std::vector<LayoutPlan> plans;
    for (const ParallelConfig& p : layouts_for(config, gpus)) plans.push_back(plan_layout(config, p, hw));
    print_table(config, plans, hw, gpus, show_ranks);
    if (!json_file.empty()) write_json_file(json_file, plan_json(model_dir, config, plans, hw, gpus));
    return 0;
  } catch (...) {
    return command_error("plan");
  }
}

}  // namespace troupe
