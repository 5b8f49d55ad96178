// The model maker: every tiny preset writes a loadable checkpoint with the Hugging Face tensor names
// and shapes, deterministic values scaled as documented, prefix-consistent --layers, sharding as
// save_pretrained does it, and the big presets' configs equal to the real models'.
#include "tools/model_maker.hpp"

#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "config/error.hpp"
#include "engine/safetensors.hpp"
#include "tests/test_support.hpp"
#include "tools/commands.hpp"
#include "tools/json_file.hpp"
#include "tools/layout_plan.hpp"
#include "tools/model_layout.hpp"
#include "tools/presets.hpp"
#include "tools/shard_plan.hpp"
#include "tools/weight_init.hpp"

namespace troupe {
namespace {

namespace fs = std::filesystem;
using Shape = std::vector<int64_t>;

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const std::vector<std::string> tiny_presets{"tiny-llama",      "tiny-qwen2",     "tiny-qwen3",
                                            "tiny-mixtral",    "tiny-qwen2-moe", "tiny-qwen3-moe",
                                            "tiny-qwen3-chat", "tiny-llama-mqa"};

// The tensor names and shapes of a Hugging Face checkpoint, written out from the transformers model
// classes independently of tools/model_layout.cpp.
std::map<std::string, Shape> expected_tensors(const ModelConfig& c) {
  std::map<std::string, Shape> t;
  const int64_t H = c.hidden_size, V = c.vocab_size, D = c.head_dim;
  const int64_t Q = c.num_heads * D, KV = c.num_kv_heads * D;
  t["model.embed_tokens.weight"] = {V, H};
  t["model.norm.weight"] = {H};
  if (!c.tie_word_embeddings) t["lm_head.weight"] = {V, H};
  const bool qwen2_family = c.arch == Architecture::qwen2 || c.arch == Architecture::qwen2_moe;
  const bool qwen3_family = c.arch == Architecture::qwen3 || c.arch == Architecture::qwen3_moe;
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string l = "model.layers." + std::to_string(i) + ".";
    t[l + "input_layernorm.weight"] = {H};
    t[l + "post_attention_layernorm.weight"] = {H};
    t[l + "self_attn.q_proj.weight"] = {Q, H};
    t[l + "self_attn.k_proj.weight"] = {KV, H};
    t[l + "self_attn.v_proj.weight"] = {KV, H};
    t[l + "self_attn.o_proj.weight"] = {H, Q};
    if (qwen2_family) {
      t[l + "self_attn.q_proj.bias"] = {Q};
      t[l + "self_attn.k_proj.bias"] = {KV};
      t[l + "self_attn.v_proj.bias"] = {KV};
    }
    if (qwen3_family) {
      t[l + "self_attn.q_norm.weight"] = {D};
      t[l + "self_attn.k_norm.weight"] = {D};
    }
    const bool sparse = c.arch == Architecture::mixtral ||
                        (c.is_moe() && std::count(c.mlp_only_layers.begin(), c.mlp_only_layers.end(), i) == 0 &&
                         (i + 1) % c.decoder_sparse_step == 0);
    if (!sparse) {
      t[l + "mlp.gate_proj.weight"] = {c.intermediate_size, H};
      t[l + "mlp.up_proj.weight"] = {c.intermediate_size, H};
      t[l + "mlp.down_proj.weight"] = {H, c.intermediate_size};
    } else if (c.arch == Architecture::mixtral) {
      t[l + "block_sparse_moe.gate.weight"] = {c.num_experts, H};
      for (int e = 0; e < c.num_experts; ++e) {
        const std::string x = l + "block_sparse_moe.experts." + std::to_string(e) + ".";
        t[x + "w1.weight"] = {c.intermediate_size, H};
        t[x + "w2.weight"] = {H, c.intermediate_size};
        t[x + "w3.weight"] = {c.intermediate_size, H};
      }
    } else {
      t[l + "mlp.gate.weight"] = {c.num_experts, H};
      for (int e = 0; e < c.num_experts; ++e) {
        const std::string x = l + "mlp.experts." + std::to_string(e) + ".";
        t[x + "gate_proj.weight"] = {c.moe_intermediate_size, H};
        t[x + "up_proj.weight"] = {c.moe_intermediate_size, H};
        t[x + "down_proj.weight"] = {H, c.moe_intermediate_size};
      }
      if (c.arch == Architecture::qwen2_moe) {
        const int64_t S = c.shared_expert_intermediate_size;
        t[l + "mlp.shared_expert.gate_proj.weight"] = {S, H};
        t[l + "mlp.shared_expert.up_proj.weight"] = {S, H};
        t[l + "mlp.shared_expert.down_proj.weight"] = {H, S};
        t[l + "mlp.shared_expert_gate.weight"] = {1, H};
      }
    }
  }
  return t;
}

MakeModelResult make(const std::string& preset, const fs::path& out, int layers = 0, uint64_t seed = 0,
                     uint64_t max_shard = default_max_shard_bytes) {
  MakeModelOptions o;
  o.preset = preset;
  o.out = out;
  o.layers = layers;
  o.seed = seed;
  o.max_shard_bytes = max_shard;
  return make_model(o);
}

std::vector<float> values(const HostView& v) {
  EXPECT_EQ(v.dtype, DType::bf16);
  std::vector<float> out(static_cast<size_t>(v.numel()));
  convert_to_f32(v.data, v.dtype, out.data(), out.size());
  return out;
}

struct Stats {
  double mean = 0, std = 0;
  size_t distinct = 0;
};

Stats stats(const std::vector<float>& x) {
  Stats s;
  for (float v : x) s.mean += v;
  s.mean /= static_cast<double>(x.size());
  for (float v : x) s.std += (v - s.mean) * (v - s.mean);
  s.std = std::sqrt(s.std / static_cast<double>(x.size()));
  s.distinct = std::set<float>(x.begin(), x.end()).size();
  return s;
}

std::string bytes_of(const HostView& v) { return std::string(static_cast<const char*>(v.data), v.nbytes()); }

TEST(ModelMaker, EveryTinyPresetWritesTheHuggingFaceLayout) {
  for (const std::string& name : tiny_presets) {
    SCOPED_TRACE(name);
    auto dir = test::scratch_dir(name);
    MakeModelResult r = make(name, dir);
    ModelConfig c = load_model_config(dir);
    auto want = expected_tensors(c);

    WeightFiles w = WeightFiles::open(dir);
    std::vector<std::string> want_names;
    for (const auto& [n, s] : want) want_names.push_back(n);
    EXPECT_EQ(w.names(), want_names);
    uint64_t params = 0;
    for (const auto& [n, shape] : want) {
      if (!w.contains(n)) continue;
      HostView v = w.get(n);
      EXPECT_EQ(v.shape, shape) << n;
      EXPECT_EQ(v.dtype, DType::bf16) << n;
      params += static_cast<uint64_t>(v.numel());
    }
    EXPECT_EQ(r.parameters, params);
    EXPECT_EQ(r.weight_bytes, 2 * params);
    EXPECT_EQ(w.total_bytes(), 2 * params);

    std::vector<std::string> files;
    for (const auto& f : r.files) files.push_back(f.filename().string());
    EXPECT_EQ(SafetensorsFile::open(dir / "model.safetensors").metadata().at("format"), "pt");
    EXPECT_EQ(c.torch_dtype, "bfloat16");
    if (find_preset(name)->tokenizer != TokenizerFamily::none) {
      // A tiny model that speaks text: the real tokenizer and vocabulary.
      EXPECT_EQ(files, (std::vector<std::string>{"config.json", "generation_config.json", "tokenizer.json",
                                                 "tokenizer_config.json", "model.safetensors"}));
      EXPECT_EQ(c.vocab_size, 151936);
      continue;
    }
    EXPECT_EQ(files, (std::vector<std::string>{"config.json", "generation_config.json", "model.safetensors"}));
    EXPECT_FALSE(fs::exists(dir / "tokenizer.json"));  // tiny presets have a 512-id vocabulary, no tokenizer
    auto gen = boost::json::parse(read_file(dir / "generation_config.json")).as_object();
    EXPECT_EQ(gen.at("bos_token_id").as_int64(), 1);
    EXPECT_EQ(gen.at("eos_token_id").as_int64(), 2);
    EXPECT_EQ(c.vocab_size, 512);
  }
}

TEST(ModelMaker, TinyPresetShapesAreTheOnesAskedFor) {
  auto config = [](const std::string& name) {
    return parse_model_config(pretty_json(preset_config(*find_preset(name), 0)), name);
  };
  ModelConfig llama = config("tiny-llama");
  EXPECT_EQ(llama.arch, Architecture::llama);
  EXPECT_EQ(llama.head_dim, 16);
  EXPECT_EQ(llama.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(llama.rope_scaling.factor, 8.0);
  EXPECT_EQ(llama.rope_scaling.original_max_position_embeddings, 64);
  EXPECT_EQ(llama.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(llama.rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(llama.rms_norm_eps, 1e-5);
  EXPECT_TRUE(llama.tie_word_embeddings);

  ModelConfig qwen2 = config("tiny-qwen2");
  EXPECT_EQ(qwen2.intermediate_size, 160);
  EXPECT_FALSE(qwen2.tie_word_embeddings);
  EXPECT_TRUE(qwen2.attention_bias);

  ModelConfig qwen3 = config("tiny-qwen3");
  EXPECT_EQ(qwen3.head_dim, 32);
  EXPECT_EQ(qwen3.q_size(), 128);
  EXPECT_TRUE(qwen3.tie_word_embeddings);

  ModelConfig mixtral = config("tiny-mixtral");
  EXPECT_EQ(mixtral.num_experts, 4);
  EXPECT_EQ(mixtral.num_experts_per_tok, 2);
  EXPECT_EQ(mixtral.intermediate_size, 96);

  ModelConfig q2moe = config("tiny-qwen2-moe");
  EXPECT_EQ(q2moe.num_layers, 3);
  EXPECT_EQ(q2moe.num_experts, 8);
  EXPECT_EQ(q2moe.moe_intermediate_size, 32);
  EXPECT_EQ(q2moe.shared_expert_intermediate_size, 64);
  EXPECT_FALSE(q2moe.norm_topk_prob);
  EXPECT_EQ(q2moe.mlp_only_layers, std::vector<int>{1});
  EXPECT_FALSE(q2moe.is_moe_layer(1));
  EXPECT_TRUE(q2moe.is_moe_layer(2));

  ModelConfig q3moe = config("tiny-qwen3-moe");
  EXPECT_EQ(q3moe.head_dim, 16);
  EXPECT_TRUE(q3moe.norm_topk_prob);
  EXPECT_EQ(q3moe.num_experts_per_tok, 2);
}

TEST(ModelMaker, SameSeedSameBytesOtherSeedOtherBytes) {
  auto a = test::scratch_dir("a"), b = test::scratch_dir("b"), c = test::scratch_dir("c");
  make("tiny-qwen2-moe", a, 0, 7);
  make("tiny-qwen2-moe", b, 0, 7);
  make("tiny-qwen2-moe", c, 0, 8);
  std::string ta = read_file(a / "model.safetensors");
  EXPECT_GT(ta.size(), 100000u);
  EXPECT_EQ(ta, read_file(b / "model.safetensors"));
  EXPECT_NE(ta, read_file(c / "model.safetensors"));
  EXPECT_EQ(read_file(a / "config.json"), read_file(c / "config.json"));

  // Different tensors of one model draw different values even when their shapes agree.
  auto w = WeightFiles::open(a);
  EXPECT_NE(bytes_of(w.get("model.layers.0.mlp.experts.0.gate_proj.weight")),
            bytes_of(w.get("model.layers.0.mlp.experts.1.gate_proj.weight")));
}

TEST(ModelMaker, ValuesDoNotDependOnThreadsOrChunking) {
  const uint64_t n = (uint64_t{1} << 21) + 12345;  // large enough to be split over threads
  WeightInit init{0.0f, 0.05f};
  uint64_t stream = weight_stream(3, "model.layers.0.mlp.up_proj.weight");
  std::vector<uint16_t> one(n), four(n), piece(1000);
  generate_bf16(stream, init, n, one.data(), 1);
  generate_bf16(stream, init, n, four.data(), 4);
  EXPECT_EQ(one, four);
  fill_bf16(stream, init, n - 1000, 1000, piece.data());
  EXPECT_TRUE(std::equal(piece.begin(), piece.end(), one.end() - 1000));
  EXPECT_NE(weight_stream(3, "a"), weight_stream(4, "a"));
  EXPECT_NE(weight_stream(3, "a"), weight_stream(3, "b"));
}

// The formula weight_init.hpp documents, written out again, so that checkpoints (and the golden
// fixtures computed from them) can be reproduced without this code.
TEST(ModelMaker, ValuesFollowTheDocumentedFormula) {
  auto splitmix64 = [](uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  };
  for (WeightInit init : {WeightInit{1.0f, 0.1f}, WeightInit{0.0f, 0.03125f}, WeightInit{0.0f, 0.0441941738f}}) {
    uint64_t stream = weight_stream(0, "model.norm.weight");
    std::vector<uint16_t> got(5000);
    fill_bf16(stream, init, 100, got.size(), got.data());
    for (size_t i = 0; i < got.size(); ++i) {
      uint64_t bits = splitmix64(stream + 100 + i);
      int64_t s = int64_t(bits & 0xffff) + int64_t((bits >> 16) & 0xffff) + int64_t((bits >> 32) & 0xffff) +
                  int64_t(bits >> 48);
      float n = static_cast<float>(s - 131070) * (1.7320508075688772f / 65536.0f);
      float v = init.mean + init.std * n;
      ASSERT_EQ(got[i], f32_to_bf16(v)) << i;
    }
  }
}

// Pinned: a change here changes every checkpoint the maker writes, and golden fixtures with them.
TEST(ModelMaker, StreamsArePinned) {
  EXPECT_EQ(weight_stream(0, "model.embed_tokens.weight"), 0x087c2bc2be817625ull);
  std::vector<uint16_t> first(4);
  fill_bf16(weight_stream(0, "model.embed_tokens.weight"), WeightInit{0.0f, 0.125f}, 0, 4, first.data());
  EXPECT_EQ(first, (std::vector<uint16_t>{0xbe05, 0x3e89, 0xbd1e, 0xbe0e}));
}

TEST(ModelMaker, NormalVariatesHaveUnitVariance) {
  double sum = 0, sq = 0, max_abs = 0;
  const int n = 1 << 20;
  uint64_t x = 12345;
  for (int i = 0; i < n; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t bits = x ^ (x >> 29) ^ (x << 17);
    double v = normal_from_bits(bits * 0x9e3779b97f4a7c15ull);
    sum += v;
    sq += v * v;
    max_abs = std::max(max_abs, std::fabs(v));
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sq / n, 1.0, 0.01);
  EXPECT_LE(max_abs, 2 * std::sqrt(3.0));  // the sum of four uniforms is bounded
  EXPECT_EQ(normal_from_bits(0), static_cast<float>(-131070) * (1.7320508075688772f / 65536.0f));
}

TEST(ModelMaker, LayersGivesAPrefixOfTheFullModel) {
  for (const std::string& name : {std::string("tiny-qwen2-moe"), std::string("tiny-mixtral")}) {
    SCOPED_TRACE(name);
    auto full_dir = test::scratch_dir(name + "-full"), cut_dir = test::scratch_dir(name + "-cut");
    make(name, full_dir, 0, 5);
    make(name, cut_dir, 1, 5);
    auto full = WeightFiles::open(full_dir), cut = WeightFiles::open(cut_dir);
    EXPECT_EQ(load_model_config(cut_dir).num_layers, 1);
    size_t layer0 = 0;
    for (const std::string& n : cut.names()) {
      EXPECT_EQ(n.find("model.layers.1."), std::string::npos) << n;
      ASSERT_TRUE(full.contains(n)) << n;
      EXPECT_EQ(bytes_of(cut.get(n)), bytes_of(full.get(n))) << n;
      layer0 += n.starts_with("model.layers.0.");
    }
    EXPECT_GT(layer0, 5u);
    EXPECT_LT(cut.names().size(), full.names().size());
  }
}

TEST(ModelMaker, LayersKeepsTheConfigConsistent) {
  const Preset& p = *find_preset("tiny-qwen2-moe");
  auto two = parse_model_config(pretty_json(preset_config(p, 2)), "two");
  EXPECT_EQ(two.num_layers, 2);
  EXPECT_EQ(two.mlp_only_layers, std::vector<int>{1});
  auto one = parse_model_config(pretty_json(preset_config(p, 1)), "one");
  EXPECT_TRUE(one.mlp_only_layers.empty());
  EXPECT_EQ(preset_config(*find_preset("qwen3-8b"), 3).at("max_window_layers").as_int64(), 3);
  EXPECT_THROW(preset_config(p, 4), ConfigError);
  EXPECT_THROW(preset_config(p, -1), ConfigError);
  try {
    make("qwen3-0.6b", test::scratch_dir(), 29);
    ADD_FAILURE() << "--layers 29 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--layers"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("28"), std::string::npos) << e.what();
  }
}

TEST(ModelMaker, ValuesAreScaledLikeATrainedModel) {
  auto dir = test::scratch_dir();
  make("tiny-qwen2", dir, 0, 11);
  ModelConfig c = load_model_config(dir);
  auto w = WeightFiles::open(dir);
  const double H = c.hidden_size, I = c.intermediate_size, residual = 1.0 / std::sqrt(2.0 * c.num_layers);

  auto check = [&](const std::string& name, double want_mean, double want_std, double tolerance) {
    SCOPED_TRACE(name);
    Stats s = stats(values(w.get(name)));
    EXPECT_NEAR(s.std, want_std, tolerance * want_std);
    EXPECT_NEAR(s.mean, want_mean, 0.05 * want_std + 0.05 * std::fabs(want_mean));
    EXPECT_GT(s.distinct, 20u);
  };
  check("model.layers.0.mlp.gate_proj.weight", 0.0, 1.0 / std::sqrt(H), 0.1);
  check("model.layers.1.mlp.up_proj.weight", 0.0, 1.0 / std::sqrt(H), 0.1);
  check("model.layers.0.mlp.down_proj.weight", 0.0, residual / std::sqrt(I), 0.1);
  check("model.layers.0.self_attn.o_proj.weight", 0.0, residual / std::sqrt(c.q_size()), 0.1);
  check("model.embed_tokens.weight", 0.0, 1.0 / std::sqrt(H), 0.1);
  check("lm_head.weight", 0.0, 1.0 / std::sqrt(H), 0.1);

  // Norm weights near 1 but not 1, so a missing multiply by them changes the result; biases small.
  std::vector<float> norms, biases;
  for (const std::string& n : w.names()) {
    auto v = values(w.get(n));
    if (n.ends_with("norm.weight")) norms.insert(norms.end(), v.begin(), v.end());
    if (n.ends_with(".bias")) biases.insert(biases.end(), v.begin(), v.end());
  }
  Stats ns = stats(norms), bs = stats(biases);
  EXPECT_EQ(norms.size(), 5u * 64u);
  EXPECT_NEAR(ns.mean, 1.0, 0.02);
  EXPECT_NEAR(ns.std, 0.1, 0.015);
  EXPECT_GT(ns.distinct, 50u);
  EXPECT_EQ(biases.size(), 2u * (64 + 32 + 32));
  EXPECT_NEAR(bs.mean, 0.0, 0.02);
  EXPECT_NEAR(bs.std, 0.1, 0.02);
}

TEST(ModelMaker, MoeScales) {
  auto dir = test::scratch_dir();
  make("tiny-qwen2-moe", dir, 0, 1);
  auto w = WeightFiles::open(dir);
  // Router and shared-expert gate: 1/sqrt(hidden); experts' down projections shrink with depth.
  std::vector<float> routers, downs;
  for (int layer : {0, 2}) {
    auto r = values(w.get("model.layers." + std::to_string(layer) + ".mlp.gate.weight"));
    routers.insert(routers.end(), r.begin(), r.end());
    for (int e = 0; e < 8; ++e) {
      auto d = values(w.get("model.layers." + std::to_string(layer) + ".mlp.experts." + std::to_string(e) +
                            ".down_proj.weight"));
      downs.insert(downs.end(), d.begin(), d.end());
    }
  }
  EXPECT_NEAR(stats(routers).std, 1.0 / 8.0, 0.1 / 8.0);
  EXPECT_NEAR(stats(downs).std, 1.0 / std::sqrt(32.0) / std::sqrt(6.0), 0.1 / std::sqrt(32.0) / std::sqrt(6.0));
}

// --- presets equal to the real models -----------------------------------------------------------

struct Expected {
  const char* preset;
  Architecture arch;
  int vocab, hidden, inter, layers, heads, kv, head_dim, max_pos;
  double rope_theta, eps;
  bool tied;
  int bos, eos;
  int experts = 0, top_k = 0, moe_inter = 0, shared = 0;
  bool norm_topk = false;
  double rope_factor = 0;
  uint64_t parameters = 0;  // as the hub reports for the real checkpoint
};

const std::vector<Expected> real_models{
    {"qwen3-0.6b", Architecture::qwen3, 151936, 1024, 3072, 28, 16, 8, 128, 40960, 1e6, 1e-6, true, 151643, 151645,
     0, 0, 0, 0, false, 0, 596'049'920},
    {"qwen3-8b", Architecture::qwen3, 151936, 4096, 12288, 36, 32, 8, 128, 40960, 1e6, 1e-6, false, 151643, 151645,
     0, 0, 0, 0, false, 0, 8'190'735'360},
    {"qwen3-32b", Architecture::qwen3, 151936, 5120, 25600, 64, 64, 8, 128, 40960, 1e6, 1e-6, false, 151643, 151645,
     0, 0, 0, 0, false, 0, 32'762'123'264},
    {"llama-3.2-1b", Architecture::llama, 128256, 2048, 8192, 16, 32, 8, 64, 131072, 500000, 1e-5, true, 128000,
     128001, 0, 0, 0, 0, false, 32, 1'235'814'400},
    {"llama-3.1-8b", Architecture::llama, 128256, 4096, 14336, 32, 32, 8, 128, 131072, 500000, 1e-5, false, 128000,
     128001, 0, 0, 0, 0, false, 8, 8'030'261'248},
    {"qwen3-30b-a3b", Architecture::qwen3_moe, 151936, 2048, 6144, 48, 32, 4, 128, 40960, 1e6, 1e-6, false, 151643,
     151645, 128, 8, 768, 0, true, 0, 30'532'122'624},
    {"llama-3.1-70b", Architecture::llama, 128256, 8192, 28672, 80, 64, 8, 128, 131072, 500000, 1e-5, false, 128000,
     128001, 0, 0, 0, 0, false, 8, 70'553'706'496},
    {"qwen3-235b-a22b", Architecture::qwen3_moe, 151936, 4096, 12288, 94, 64, 4, 128, 40960, 1e6, 1e-6, false, 151643,
     151645, 128, 8, 1536, 0, true, 0, 235'093'634'560},
    {"mixtral-8x7b", Architecture::mixtral, 32000, 4096, 14336, 32, 32, 8, 128, 32768, 1e6, 1e-5, false, 1, 2, 8, 2,
     14336, 0, true, 0, 46'702'792'704},
    {"qwen1.5-moe-a2.7b", Architecture::qwen2_moe, 151936, 2048, 5632, 24, 16, 16, 128, 8192, 1e6, 1e-6, false,
     151643, 151643, 60, 4, 1408, 5632, false, 0, 14'315'784'192},
};

TEST(Presets, RealModelsHaveTheHubConfigs) {
  for (const Expected& e : real_models) {
    SCOPED_TRACE(e.preset);
    const Preset* p = find_preset(e.preset);
    ASSERT_NE(p, nullptr);
    ModelConfig c = parse_model_config(pretty_json(preset_config(*p, 0)), e.preset);
    EXPECT_EQ(c.arch, e.arch);
    EXPECT_EQ(c.vocab_size, e.vocab);
    EXPECT_EQ(c.hidden_size, e.hidden);
    EXPECT_EQ(c.intermediate_size, e.inter);
    EXPECT_EQ(c.num_layers, e.layers);
    EXPECT_EQ(c.num_heads, e.heads);
    EXPECT_EQ(c.num_kv_heads, e.kv);
    EXPECT_EQ(c.head_dim, e.head_dim);
    EXPECT_EQ(c.max_position_embeddings, e.max_pos);
    EXPECT_DOUBLE_EQ(c.rope_theta, e.rope_theta);
    EXPECT_DOUBLE_EQ(c.rms_norm_eps, e.eps);
    EXPECT_EQ(c.tie_word_embeddings, e.tied);
    EXPECT_EQ(c.bos_token_ids, std::vector<int>{e.bos});
    EXPECT_EQ(c.eos_token_ids, std::vector<int>{e.eos});
    EXPECT_EQ(c.num_experts, e.experts);
    EXPECT_EQ(c.num_experts_per_tok, e.top_k);
    EXPECT_EQ(c.moe_intermediate_size, e.moe_inter);
    EXPECT_EQ(c.shared_expert_intermediate_size, e.shared);
    if (c.is_moe()) {
      EXPECT_EQ(c.norm_topk_prob, e.norm_topk);
    }
    EXPECT_EQ(c.rope_scaling.type, e.rope_factor > 0 ? "llama3" : "");
    if (e.rope_factor > 0) {
      EXPECT_DOUBLE_EQ(c.rope_scaling.factor, e.rope_factor);
      EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
      EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
      EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
    }
    EXPECT_EQ(c.torch_dtype, "bfloat16");
    EXPECT_EQ(count_parameters(c), e.parameters);
    EXPECT_TRUE(p->config.contains("transformers_version"));
    EXPECT_TRUE(p->generation_config.contains("eos_token_id"));
    EXPECT_NE(p->tokenizer, TokenizerFamily::none);
  }
  auto llama_gen = find_preset("llama-3.2-1b")->generation_config;
  EXPECT_EQ(llama_gen.at("eos_token_id"), (boost::json::array{128001, 128008, 128009}));
  EXPECT_EQ(find_preset("qwen3-0.6b")->generation_config.at("top_k").as_int64(), 20);
  EXPECT_EQ(find_preset("mixtral-8x7b")->tokenizer, TokenizerFamily::llama2);
  EXPECT_EQ(find_preset("llama-3.1-8b")->tokenizer, TokenizerFamily::llama3);
  EXPECT_EQ(find_preset("qwen1.5-moe-a2.7b")->tokenizer, TokenizerFamily::qwen3);
}

TEST(Presets, EveryPresetParses) {
  EXPECT_EQ(presets().size(), real_models.size() + tiny_presets.size());
  for (const Preset& p : presets()) {
    SCOPED_TRACE(p.name);
    EXPECT_NO_THROW(parse_model_config(pretty_json(preset_config(p, 0)), p.name));
    EXPECT_NO_THROW(parse_model_config(pretty_json(preset_config(p, 1)), p.name));
  }
  EXPECT_EQ(find_preset("gpt-5"), nullptr);
}

TEST(Presets, Qwen3SmallParameterCount) {
  const Preset& p = *find_preset("qwen3-0.6b");
  EXPECT_EQ(count_parameters(parse_model_config(pretty_json(p.config), "qwen3-0.6b")), 596'049'920u);
}

TEST(JsonFile, WritesFloatsAsPythonDoes) {
  boost::json::object o{{"a", 1e-06}, {"b", 1000000.0}, {"c", 32.0}, {"d", 0.02}, {"e", 1000000},
                        {"f", boost::json::array{}}, {"g", nullptr}, {"h", "quote \" and \\"}};
  EXPECT_EQ(pretty_json(o),
            "{\n  \"a\": 1e-06,\n  \"b\": 1000000.0,\n  \"c\": 32.0,\n  \"d\": 0.02,\n  \"e\": 1000000,\n"
            "  \"f\": [],\n  \"g\": null,\n  \"h\": \"quote \\\" and \\\\\"\n}\n");
}

// --- config-only, tokenizers ---------------------------------------------------------------------

TEST(ModelMaker, ConfigOnlyBigPreset) {
  fs::path tokenizers = tokenizer_root({});
  if (!fs::exists(tokenizers / "tokenizer-qwen3" / "models" / "tokenizer.json"))
    GTEST_SKIP() << "tokenizer packages not installed at " << tokenizers << " (run tools/setup.sh)";
  auto dir = test::scratch_dir();
  MakeModelOptions o;
  o.preset = "qwen3-30b-a3b";
  o.out = dir;
  o.config_only = true;
  MakeModelResult r = make_model(o);
  EXPECT_EQ(r.parameters, 30'532'122'624u);
  EXPECT_EQ(r.weight_bytes, 0u);
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files.insert(e.path().filename().string());
  EXPECT_EQ(files, (std::set<std::string>{"config.json", "generation_config.json", "tokenizer.json",
                                          "tokenizer_config.json"}));
  ModelConfig c = load_model_config(dir);
  EXPECT_EQ(c.num_experts, 128);
  EXPECT_EQ(c.num_layers, 48);
  EXPECT_EQ(read_file(dir / "tokenizer.json"), read_file(tokenizers / "tokenizer-qwen3" / "models" / "tokenizer.json"));
  auto gen = boost::json::parse(read_file(dir / "generation_config.json")).as_object();
  EXPECT_EQ(gen.at("eos_token_id"), (boost::json::array{151645, 151643}));
  EXPECT_DOUBLE_EQ(gen.at("temperature").as_double(), 0.6);
}

TEST(ModelMaker, MissingTokenizerIsReportedBeforeWriting) {
  auto dir = test::scratch_dir();
  MakeModelOptions o;
  o.preset = "mixtral-8x7b";
  o.out = dir / "out";
  o.config_only = true;
  o.tokenizer_dir = dir / "nowhere";
  try {
    make_model(o);
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find((dir / "nowhere" / "tokenizer-llama2").string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("tools/setup.sh"), std::string::npos) << msg;
  }
  EXPECT_FALSE(fs::exists(dir / "out" / "config.json"));
}

TEST(ModelMaker, RewritingADirectoryDropsStaleWeights) {
  auto dir = test::scratch_dir();
  make("tiny-llama", dir, 0, 0, 20000);  // sharded
  EXPECT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  make("tiny-llama", dir, 0, 0);  // single file
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_FALSE(e.path().filename().string().starts_with("model-")) << e.path();
  EXPECT_EQ(WeightFiles::open(dir).names().size(), 2u + 2u * 9u);
}

// --- sharding ------------------------------------------------------------------------------------

TEST(ShardPlan, GroupsInOrderUnderTheLimit) {
  auto shards = plan_shards({3, 3, 3, 10, 1, 1}, 6);
  ASSERT_EQ(shards.size(), 4u);
  EXPECT_EQ(shards[0].first, 0u);
  EXPECT_EQ(shards[0].last, 2u);
  EXPECT_EQ(shards[0].bytes, 6u);
  EXPECT_EQ(shards[1].first, 2u);
  EXPECT_EQ(shards[1].last, 3u);
  EXPECT_EQ(shards[2].first, 3u);  // larger than the limit: alone
  EXPECT_EQ(shards[2].last, 4u);
  EXPECT_EQ(shards[2].bytes, 10u);
  EXPECT_EQ(shards[3].first, 4u);
  EXPECT_EQ(shards[3].last, 6u);
  EXPECT_EQ(shards[3].bytes, 2u);
  EXPECT_EQ(plan_shards({1, 2, 3}, 100).size(), 1u);
  EXPECT_EQ(shard_file_name(0, 1), "model.safetensors");
  EXPECT_EQ(shard_file_name(1, 4), "model-00002-of-00004.safetensors");
  EXPECT_EQ(shard_file_name(16, 17), "model-00017-of-00017.safetensors");
}

TEST(ShardPlan, BigPresetsSplitAtFiveGigabytes) {
  for (const char* name : {"qwen3-32b", "mixtral-8x7b", "qwen3-8b", "qwen3-0.6b"}) {
    SCOPED_TRACE(name);
    ModelConfig c = parse_model_config(pretty_json(find_preset(name)->config), name);
    auto layout = checkpoint_layout(c, c.num_layers);
    std::vector<uint64_t> sizes;
    uint64_t total = 0;
    for (const auto& w : layout) {
      sizes.push_back(2 * w.numel());
      total += 2 * w.numel();
    }
    auto shards = plan_shards(sizes, default_max_shard_bytes);
    size_t next = 0;
    uint64_t sum = 0;
    for (const Shard& s : shards) {
      EXPECT_EQ(s.first, next);
      EXPECT_GT(s.last, s.first);
      EXPECT_LE(s.bytes, default_max_shard_bytes);
      next = s.last;
      sum += s.bytes;
    }
    EXPECT_EQ(next, layout.size());
    EXPECT_EQ(sum, total);
    EXPECT_EQ(shards.size(), total <= default_max_shard_bytes ? 1u : shards.size());
    EXPECT_GE(shards.size(), (total + default_max_shard_bytes - 1) / default_max_shard_bytes);
  }
}

TEST(ModelMaker, ShardedCheckpointMatchesTheSingleFile) {
  auto single = test::scratch_dir("single"), sharded = test::scratch_dir("sharded");
  const uint64_t limit = 40000;
  make("tiny-mixtral", single, 0, 9);
  MakeModelResult r = make("tiny-mixtral", sharded, 0, 9, limit);
  ASSERT_TRUE(fs::exists(sharded / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(sharded / "model.safetensors"));

  auto index = boost::json::parse(read_file(sharded / "model.safetensors.index.json")).as_object();
  EXPECT_EQ(index.at("metadata").as_object().at("total_size").to_number<uint64_t>(), r.weight_bytes);
  const auto& map = index.at("weight_map").as_object();
  std::vector<std::string> keys;
  std::set<std::string> shard_files;
  for (const auto& kv : map) {
    keys.emplace_back(kv.key());
    shard_files.insert(std::string(kv.value().as_string()));
  }
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));
  size_t n = shard_files.size();
  EXPECT_GT(n, 3u);
  for (const std::string& f : shard_files) {
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, "-of-%05zu.safetensors", n);
    EXPECT_TRUE(f.starts_with("model-000") && f.ends_with(suffix)) << f;
    auto file = SafetensorsFile::open(sharded / f);
    uint64_t bytes = 0;
    for (const auto& t : file.tensors()) bytes += t.end - t.begin;
    EXPECT_TRUE(bytes <= limit || file.tensors().size() == 1) << f << " holds " << bytes;
  }

  auto a = WeightFiles::open(single), b = WeightFiles::open(sharded);
  EXPECT_EQ(a.names(), b.names());
  EXPECT_EQ(b.names().size(), keys.size());
  for (const auto& name : a.names()) EXPECT_EQ(bytes_of(a.get(name)), bytes_of(b.get(name))) << name;
}

// --- the command line ------------------------------------------------------------------------------

int run_command(std::vector<std::string> args, std::string* err = nullptr, std::string* out = nullptr) {
  args.insert(args.begin(), "make-model");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  testing::internal::CaptureStderr();
  testing::internal::CaptureStdout();
  int rc = make_model_command(static_cast<int>(argv.size()), argv.data());
  std::string e = testing::internal::GetCapturedStderr(), o = testing::internal::GetCapturedStdout();
  if (err) *err = e;
  if (out) *out = o;
  return rc;
}

TEST(MakeModelCommand, BadFlagsAreUsageErrorsNamingTheFlag) {
  auto dir = test::scratch_dir().string();
  struct Case {
    std::vector<std::string> args;
    std::string flag;
  };
  std::vector<Case> cases{
      {{"--preset", "gpt-5", "--out", dir}, "--preset"},
      {{"--out", dir}, "preset"},
      {{"--preset", "tiny-llama"}, "out"},
      {{"--preset", "tiny-llama", "--out", dir, "--layers", "0"}, "--layers"},
      {{"--preset", "tiny-llama", "--out", dir, "--layers", "3"}, "--layers"},
      {{"--preset", "tiny-llama", "--out", dir, "--layers", "two"}, "layers"},
      {{"--preset", "tiny-llama", "--out", dir, "--seed", "-1"}, "--seed"},
      {{"--preset", "tiny-llama", "--out", dir, "--seed", "12x"}, "--seed"},
      {{"--preset", "tiny-llama", "--out", dir, "--frobnicate"}, "frobnicate"},
      {{"--preset", "llama-3.1-8b", "--out", dir, "--config-only", "--tp-shard", "3"}, "--tp-shard"},
      {{"--preset", "llama-3.1-8b", "--out", dir, "--config-only", "--tp-shard", "0"}, "--tp-shard"},
      {{"--preset", "qwen3-30b-a3b", "--out", dir, "--config-only", "--tp-shard", "2"}, "--tp-shard"},
  };
  for (const Case& c : cases) {
    std::string err;
    EXPECT_EQ(run_command(c.args, &err), 2) << c.flag;
    EXPECT_NE(err.find(c.flag), std::string::npos) << err;
  }
  EXPECT_FALSE(fs::exists(fs::path(dir) / "config.json"));
}

// A tensor-parallel shard written as a model holds, tensor by tensor as the model maker lays them out,
// the bytes `troupe plan` (the loader's own slicing rules) gives rank 0 of that layout.
TEST(ModelMaker, TpShardHoldsWhatRankZeroLoads) {
  for (const char* name : {"llama-3.1-8b", "qwen3-0.6b", "llama-3.2-1b", "tiny-llama-mqa"}) {
    const Preset* preset = find_preset(name);
    ASSERT_NE(preset, nullptr) << name;
    const ModelConfig full = parse_model_config(pretty_json(preset->config), name);
    for (int tp : {2, 4, 8}) {
      if (full.num_heads % tp != 0 || full.intermediate_size % tp != 0) continue;
      const ModelConfig shard = parse_model_config(pretty_json(tp_shard_config(preset->config, tp)), name);
      const ModelShard rank0{ParallelConfig{tp, 1, 1, false}, 0, 0, 0};
      EXPECT_EQ(2 * count_parameters(shard), rank_weights(full, rank0, DType::bf16).total()) << name << " tp" << tp;
      EXPECT_EQ(shard.head_dim, full.head_dim) << name << " tp" << tp;
      EXPECT_EQ(shard.num_heads * tp, full.num_heads) << name << " tp" << tp;
      EXPECT_EQ(shard.num_kv_heads, std::max(1, full.num_kv_heads / tp)) << name << " tp" << tp;
    }
  }
}

TEST(MakeModelCommand, WritesAndSummarises) {
  auto dir = test::scratch_dir();
  std::string err, out;
  ASSERT_EQ(run_command({"--preset", "tiny-qwen3", "--out", dir.string(), "--seed", "3"}, &err, &out), 0) << err;
  uint64_t params = count_parameters(load_model_config(dir));
  std::string grouped = std::to_string(params);
  for (int i = static_cast<int>(grouped.size()) - 3; i > 0; i -= 3) grouped.insert(static_cast<size_t>(i), ",");
  EXPECT_NE(out.find("parameters: " + grouped), std::string::npos) << out;
  EXPECT_NE(out.find("model.safetensors"), std::string::npos) << out;
  EXPECT_NE(err.find("100%"), std::string::npos) << err;
  EXPECT_TRUE(err.ends_with("\n"));

  auto again = test::scratch_dir("again");
  make("tiny-qwen3", again, 0, 3);
  EXPECT_EQ(read_file(dir / "model.safetensors"), read_file(again / "model.safetensors"));
  EXPECT_EQ(run_command({"--help"}, nullptr, &out), 0);
  EXPECT_NE(out.find("qwen3-30b-a3b"), std::string::npos);
}

}  // namespace
}  // namespace troupe
