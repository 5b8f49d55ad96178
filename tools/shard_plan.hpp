// How a checkpoint is split into files, as Hugging Face's save_pretrained does it: tensors stay in
// order, a shard is closed when the next tensor would push its data past the limit, and a tensor larger
// than the limit gets a shard of its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace troupe {

// Hugging Face's default max_shard_size, "5GB" (decimal).
constexpr uint64_t default_max_shard_bytes = 5'000'000'000;

struct Shard {
  size_t first = 0;  // tensor indices [first, last)
  size_t last = 0;
  uint64_t bytes = 0;  // tensor data, without the header
};

std::vector<Shard> plan_shards(const std::vector<uint64_t>& tensor_bytes, uint64_t max_shard_bytes);

// "model.safetensors" for a single file, else "model-00002-of-00004.safetensors" (index from 0).
std::string shard_file_name(size_t index, size_t count);

}  // namespace troupe
