#include "tests/model_support.hpp"

#include <numeric>

namespace troupe::test {

std::vector<float> logits_alone(Model& model, const std::vector<int32_t>& tokens, int block) {
  const int blocks = static_cast<int>(tokens.size() + block - 1) / block;
  KvCache cache = model.allocate_kv_cache(blocks, block);
  std::vector<int32_t> table(blocks);
  std::iota(table.begin(), table.end(), 0);
  StepBatch batch;
  batch.add_sequence(tokens, 0, table, Logits::all);
  std::vector<float> out(tokens.size() * model.config().vocab_size);
  model.backend().download(model.forward(batch, cache), out.data());
  return out;
}

}  // namespace troupe::test
