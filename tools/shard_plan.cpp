#include "tools/shard_plan.hpp"

#include <cstdio>

namespace troupe {

std::vector<Shard> plan_shards(const std::vector<uint64_t>& tensor_bytes, uint64_t max_shard_bytes) {
  std::vector<Shard> shards;
  Shard current;
  for (size_t i = 0; i < tensor_bytes.size(); ++i) {
    if (current.last > current.first && current.bytes + tensor_bytes[i] > max_shard_bytes) {
      shards.push_back(current);
      current = Shard{i, i, 0};
    }
    current.last = i + 1;
    current.bytes += tensor_bytes[i];
  }
  if (current.last > current.first || shards.empty()) shards.push_back(current);
  return shards;
}

std::string shard_file_name(size_t index, size_t count) {
  if (count == 1) return "model.safetensors";
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

}  // namespace troupe
