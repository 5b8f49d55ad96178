#include "config/parallel_config.hpp"

#include "config/error.hpp"

namespace troupe {

MoeExchange parse_moe_exchange(const std::string& name) {
  if (name == "all_to_all") return MoeExchange::all_to_all;
  if (name == "allgather_reducescatter") return MoeExchange::allgather_reducescatter;
  throw ConfigError("--all2all-backend: expected all_to_all or allgather_reducescatter, got '" + name + "'");
}
namespace {

std::string num(int v) { return std::to_string(v); }

}  // namespace

std::string ParallelConfig::name() const {
  std::string out;
  auto part = [&](const char* tag, int v) {
    if (v <= 1) return;
    if (!out.empty()) out += "·";
    out += tag + num(v);
  };
  part("tp", tensor_parallel_size);
  part("pp", pipeline_parallel_size);
  part("dp", data_parallel_size);
  if (out.empty()) out = "tp1";
  if (enable_expert_parallel) out += "+ep";
  return out;
}

std::vector<std::string> validate_parallel_config(const ParallelConfig& p, const ModelConfig& m) {
  const int tp = p.tensor_parallel_size, pp = p.pipeline_parallel_size, dp = p.data_parallel_size;
  if (tp < 1) throw ConfigError("--tensor-parallel-size must be at least 1, got " + num(tp));
  if (pp < 1) throw ConfigError("--pipeline-parallel-size must be at least 1, got " + num(pp));
  if (dp < 1) throw ConfigError("--data-parallel-size must be at least 1, got " + num(dp));
  if (m.num_heads % tp != 0)
    throw ConfigError("Total number of attention heads (" + num(m.num_heads) +
                      ") must be divisible by tensor parallel size (" + num(tp) + ").");
  if (m.num_kv_heads >= tp ? m.num_kv_heads % tp != 0 : tp % m.num_kv_heads != 0)
    throw ConfigError("Total number of key/value heads (" + num(m.num_kv_heads) +
                      ") must be divisible by tensor parallel size (" + num(tp) +
                      "), or tensor parallel size by it (the heads are then replicated).");
  if (pp > m.num_layers)
    throw ConfigError("pipeline parallel size (" + num(pp) + ") exceeds the number of layers (" + num(m.num_layers) + ")");
  bool has_dense_layer = !m.is_moe();
  for (int l = 0; l < m.num_layers && !has_dense_layer; ++l) has_dense_layer = !m.is_moe_layer(l);
  if (has_dense_layer && m.intermediate_size % tp != 0)
    throw ConfigError("intermediate size (" + num(m.intermediate_size) + ") must be divisible by tensor parallel size (" +
                      num(tp) + ")");
  if (m.has_shared_expert() && m.shared_expert_intermediate_size % tp != 0)
    throw ConfigError("shared expert intermediate size (" + num(m.shared_expert_intermediate_size) +
                      ") must be divisible by tensor parallel size (" + num(tp) + ")");

  std::vector<std::string> warnings;
  const int group = p.moe_group_size();
  if (p.enable_expert_parallel && group == 1)
    throw ConfigError("--enable-expert-parallel has no effect: tensor × data parallel size is 1");
  if (!m.is_moe()) {
    if (p.enable_expert_parallel) warnings.push_back("--enable-expert-parallel has no effect: the model has no experts");
    return warnings;
  }
  if (p.enable_expert_parallel) {
    if (m.num_experts % group != 0)
      throw ConfigError("routed experts (" + num(m.num_experts) + ") must be divisible by the expert-parallel size (" +
                        num(group) + ")");
  } else {
    // Without EP every rank of the MoE group holds a slice of every expert's intermediate dimension.
    const int shards = dp > 1 ? group : tp;
    if (m.moe_intermediate_size % shards != 0)
      throw ConfigError("expert intermediate size (" + num(m.moe_intermediate_size) + ") must be divisible by " +
                        (dp > 1 ? "tensor × data parallel size (" : "tensor parallel size (") + num(shards) +
                        "); or use --enable-expert-parallel");
  }
  return warnings;
}

LayerRange stage_layers(int num_layers, int pp_size, int stage) {
  return {static_cast<int>(static_cast<int64_t>(num_layers) * stage / pp_size),
          static_cast<int>(static_cast<int64_t>(num_layers) * (stage + 1) / pp_size)};
}

}  // namespace troupe
