// The paged KV cache of the layers one worker holds: per layer, k and v blocks of
// [num_blocks, block_size, num_kv_heads, head_dim]. Which block belongs to which sequence is the
// block manager's business; this is only the memory.
#pragma once

#include <vector>

#include "engine/backend.hpp"

namespace troupe {

struct KvCache {
  int num_blocks = 0;
  int block_size = 16;
  std::vector<KvLayer> layers;
};

inline KvCache allocate_kv_cache(Backend& backend, int num_layers, int num_blocks, int block_size, int num_kv_heads,
                                 int head_dim) {
  KvCache cache{num_blocks, block_size, {}};
  for (int l = 0; l < num_layers; ++l) {
    std::vector<int64_t> shape{num_blocks, block_size, num_kv_heads, head_dim};
    cache.layers.push_back({backend.allocate(shape, backend.compute_dtype()), backend.allocate(shape, backend.compute_dtype())});
  }
  return cache;
}

}  // namespace troupe
