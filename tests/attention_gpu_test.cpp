// The CUDA backend's attention-side ops (qk_norm, rope_store_kv, attention) against the CPU reference
// on random inputs rounded to bf16, so that only the precision of the computation differs; the check
// is ‖gpu − cpu‖ / ‖cpu‖ ≤ 1e-2 with every output finite. rope_store_kv_attention, which fuses the
// rope into the decode kernel, against the two ops on the GPU, bit for bit.
//
// Traps for wrong indexing: GPU outputs are NaN-poisoned with a guard row after them; every cache
// slot that no sequence owns (including the tail of each sequence's last block) holds NaN, so a key
// read past a context's end poisons the output; block tables are padded with a block id far outside
// the cache, so a kernel that reads a table entry it does not need faults (and compute-sanitizer
// names it); blocks are handed out from a shuffled pool, so a kernel that assumes contiguous blocks
// reads the wrong keys.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/model_config.hpp"
#include "engine/cpu_backend.hpp"
#include "engine/dtype.hpp"
#include "engine/rope.hpp"
#include "kernels/cuda_backend.hpp"
#include "tests/gpu_compare.hpp"

namespace troupe {
namespace {

using Shape = std::vector<int64_t>;

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
constexpr int32_t bad_block = 1 << 29;  // pads block tables past a sequence's blocks

using test::count_of;
using test::expect_close;
using test::expect_untouched;
using test::random_values;
using test::read;

struct Seq {
  int query_len;
  int context_len;
};

std::string describe(const std::vector<Seq>& seqs) {
  std::string s;
  for (const Seq& q : seqs) s += (s.empty() ? "" : " ") + std::to_string(q.query_len) + "/" + std::to_string(q.context_len);
  return "(query/context: " + s + ")";
}

// One step's metadata on the host, in AttentionMetadata's terms.
struct HostBatch {
  std::vector<int32_t> positions, slot_mapping, query_start, context_lens, block_tables;
  int num_seqs = 0, num_tokens = 0, max_query_len = 0, max_context_len = 0, table_width = 0, block_size = 16;
};

HostBatch make_batch(const std::vector<Seq>& seqs, const std::vector<std::vector<int32_t>>& tables, int block_size) {
  HostBatch b;
  b.block_size = block_size;
  b.num_seqs = static_cast<int>(seqs.size());
  for (const auto& t : tables) b.table_width = std::max(b.table_width, static_cast<int>(t.size()));
  b.table_width += 1;  // at least one padding entry per row
  b.query_start.push_back(0);
  for (size_t s = 0; s < seqs.size(); ++s) {
    const Seq& q = seqs[s];
    for (int i = 0; i < q.query_len; ++i) {
      const int pos = q.context_len - q.query_len + i;
      b.positions.push_back(pos);
      b.slot_mapping.push_back(tables[s].at(pos / block_size) * block_size + pos % block_size);
    }
    b.query_start.push_back(static_cast<int32_t>(b.positions.size()));
    b.context_lens.push_back(q.context_len);
    b.max_query_len = std::max(b.max_query_len, q.query_len);
    b.max_context_len = std::max(b.max_context_len, q.context_len);
    std::vector<int32_t> row = tables[s];
    row.resize(static_cast<size_t>(b.table_width), bad_block);
    b.block_tables.insert(b.block_tables.end(), row.begin(), row.end());
  }
  b.num_tokens = static_cast<int>(b.positions.size());
  return b;
}

// Blocks for sequences of the given final lengths, drawn without repetition from a shuffled pool of
// `num_blocks`.
std::vector<std::vector<int32_t>> scattered_tables(const std::vector<int>& lengths, int block_size, int num_blocks,
                                                   uint32_t seed) {
  std::vector<int32_t> pool(static_cast<size_t>(num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937(seed));
  std::vector<std::vector<int32_t>> tables;
  size_t next = 0;
  for (int len : lengths) {
    const int blocks = (len + block_size - 1) / block_size;
    tables.emplace_back(pool.begin() + static_cast<int64_t>(next), pool.begin() + static_cast<int64_t>(next + blocks));
    next += static_cast<size_t>(blocks);
  }
  if (next > pool.size()) throw std::logic_error("scattered_tables: pool too small");
  return tables;
}

int blocks_for(const std::vector<int>& lengths, int block_size) {
  int n = 0;
  for (int len : lengths) n += (len + block_size - 1) / block_size;
  return n;
}

class AttentionGpuTest : public ::testing::Test {
 protected:
  static void TearDownTestSuite() { gpu_.reset(); }

  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine (tools/gpu_smoke.sh)";
    if (!gpu_) gpu_ = make_cuda_backend(0);
  }

  // The same values on both backends: bf16 on the GPU (f32 for float tables), f32 on the CPU.
  static Tensor on(Backend& be, const std::vector<float>& v, const Shape& shape) {
    Tensor t = be.allocate(shape, be.compute_dtype());
    be.upload(HostView{v.data(), DType::f32, shape}, t);
    return t;
  }
  static Tensor f32_on(Backend& be, const std::vector<float>& v, const Shape& shape) {
    Tensor t = be.allocate(shape, DType::f32);
    be.upload(HostView{v.data(), DType::f32, shape}, t);
    return t;
  }
  static Tensor i32_on(Backend& be, const std::vector<int32_t>& v, Shape shape = {}) {
    if (shape.empty()) shape = {static_cast<int64_t>(v.size())};
    Tensor t = be.allocate(shape, DType::i32);
    be.upload(HostView{v.data(), DType::i32, shape}, t);
    return t;
  }
  Tensor poisoned_gpu(const Shape& shape) { return test::poisoned_bf16(*gpu_, shape); }
  static AttentionMetadata meta_on(Backend& be, const HostBatch& b) {
    AttentionMetadata m;
    m.positions = i32_on(be, b.positions);
    m.slot_mapping = i32_on(be, b.slot_mapping);
    m.query_start = i32_on(be, b.query_start);
    m.context_lens = i32_on(be, b.context_lens);
    m.block_tables = i32_on(be, b.block_tables, {b.num_seqs, b.table_width});
    m.num_seqs = b.num_seqs;
    m.num_tokens = b.num_tokens;
    m.max_query_len = b.max_query_len;
    m.max_context_len = b.max_context_len;
    m.block_size = b.block_size;
    return m;
  }

  static inline std::unique_ptr<Backend> gpu_;
  std::unique_ptr<Backend> cpu_ = make_cpu_backend();
};

struct AttentionCase {
  int heads, kv_heads, head_dim, block_size;
  std::vector<Seq> seqs;
};

std::string describe(const AttentionCase& c) {
  return "heads " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " head_dim " +
         std::to_string(c.head_dim) + " block " + std::to_string(c.block_size) + " " + describe(c.seqs);
}

// Attention alone: a cache filled with random keys and values for every position below each
// sequence's context length (NaN everywhere else), random q, both backends, one comparison.
class AttentionMatchesCpu : public AttentionGpuTest {
 protected:
  // max_context_len: what the metadata claims, when larger than the longest context (as a step
  // captured in a CUDA graph for longer contexts would); 0 for the true value.
  void check(const AttentionCase& c, uint32_t seed, int max_context_len = 0) {
    const std::string what = describe(c);
    SCOPED_TRACE(what);
    const QkvLayout layout{c.heads, c.kv_heads, c.head_dim};
    const int bs = c.block_size;
    std::vector<int> lengths;
    for (const Seq& s : c.seqs) lengths.push_back(s.context_len);
    const int num_blocks = blocks_for(lengths, bs) + 3;
    const auto tables = scattered_tables(lengths, bs, num_blocks, seed);
    HostBatch b = make_batch(c.seqs, tables, bs);
    b.max_context_len = std::max(b.max_context_len, max_context_len);

    const int64_t kv = layout.kv_size();
    const Shape cache_shape{num_blocks, bs, c.kv_heads, c.head_dim};
    std::vector<float> k(static_cast<size_t>(count_of(cache_shape)), nan_f), v = k;
    const auto k_values = random_values(count_of(cache_shape), seed + 1);
    const auto v_values = random_values(count_of(cache_shape), seed + 2);
    for (size_t s = 0; s < c.seqs.size(); ++s) {
      for (int pos = 0; pos < c.seqs[s].context_len; ++pos) {
        const int64_t slot = static_cast<int64_t>(tables[s][pos / bs]) * bs + pos % bs;
        std::copy_n(k_values.begin() + slot * kv, kv, k.begin() + slot * kv);
        std::copy_n(v_values.begin() + slot * kv, kv, v.begin() + slot * kv);
      }
    }
    const int64_t t = b.num_tokens;
    // q of stddev 2: logits of stddev ~2, so that the softmax has real peaks to find.
    const auto qkv = random_values(t * layout.width(), seed + 3, 0.0f, 2.0f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

    Tensor ref = cpu_->allocate({t, layout.q_size()}, DType::f32);
    cpu_->attention(on(*cpu_, qkv, {t, layout.width()}), layout,
                    KvLayer{on(*cpu_, k, cache_shape), on(*cpu_, v, cache_shape)}, meta_on(*cpu_, b), scale, ref);

    Tensor out = poisoned_gpu({t + 1, layout.q_size()});
    gpu_->attention(on(*gpu_, qkv, {t, layout.width()}), layout,
                    KvLayer{on(*gpu_, k, cache_shape), on(*gpu_, v, cache_shape)}, meta_on(*gpu_, b), scale,
                    out.rows(0, t));
    expect_close(read(*gpu_, out.rows(0, t)), read(*cpu_, ref), what);
    expect_untouched(read(*gpu_, out.rows(t, t + 1)), what);
  }
};

// Context lengths 1 to 3000, on and around block boundaries of 16 and 32.
const std::vector<int> ragged_contexts = {1, 2, 15, 16, 17, 31, 32, 33, 64, 65, 255, 256, 257, 1000, 2049, 3000};

std::vector<Seq> decode_batch(const std::vector<int>& contexts) {
  std::vector<Seq> seqs;
  for (int c : contexts) seqs.push_back({1, c});
  return seqs;
}

TEST_F(AttentionMatchesCpu, DecodeRaggedContextsEveryGroupSize) {
  // Few sequences: the decode path splits the long contexts and combines the parts.
  uint32_t seed = 100;
  for (int head_dim : {64, 128, 32}) {
    for (int group : {1, 2, 4, 8}) {
      for (int block_size : {16, 32}) check({2 * group, 2, head_dim, block_size, decode_batch(ragged_contexts)}, seed++);
    }
  }
}

TEST_F(AttentionMatchesCpu, DecodeManySequencesWithoutSplits) {
  // 160 sequences × 8 kv heads = 1280 CTAs: more than the split threshold on an H100 (132 SMs × 8), so
  // every CTA writes its output directly.
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> len(1, 400);
  std::vector<int> contexts(160);
  for (int& c : contexts) c = len(rng);
  contexts[0] = 1, contexts[1] = 16, contexts[2] = 17, contexts[3] = 400;
  check({32, 8, 128, 16, decode_batch(contexts)}, 200);
  check({16, 8, 64, 32, decode_batch(contexts)}, 201);
}

TEST_F(AttentionMatchesCpu, DecodeLongContextsInManySplits) {
  // One or two sequences of 33 to 40 thousand keys: a hundred and more splits, more than the combine
  // kernel has threads.
  check({4, 1, 64, 16, decode_batch({40000})}, 250);
  check({8, 2, 128, 32, decode_batch({33000, 20})}, 251);
}

TEST_F(AttentionMatchesCpu, DecodeWithMetadataSizedForLongerContexts) {
  // Splits sized for 16384 keys while no context exceeds 300: most splits hold nothing; and the
  // reverse is not allowed (the CPU reference requires context ≤ max_context_len).
  check({8, 2, 128, 16, decode_batch({1, 16, 17, 255, 300})}, 260, 16384);
  check({8, 2, 64, 16, {{1, 40}, {30, 30}}}, 261, 16384);  // the prefill path ignores it
}

TEST_F(AttentionMatchesCpu, DecodeGroupsWiderThanOneTile) {
  // 24 query heads on one kv head (MQA): two row tiles of 16, the second half empty.
  check({24, 1, 64, 16, decode_batch({1, 17, 300, 3000})}, 300);
  check({48, 2, 128, 16, decode_batch({5, 64, 1023})}, 301);
  check({3, 1, 32, 16, decode_batch({1, 100, 2500})}, 302);  // a group of 3
}

TEST_F(AttentionMatchesCpu, DecodeOfOneSequenceSplitOverAClusterEveryGroupSize) {
  // One sequence: its context is split over a cluster of CTAs by its own length, and the CTAs combine
  // through each other's shared memory; contexts from one key (seven CTAs of the cluster empty) to
  // 3000 (several tiles each, deep stages when the metadata is sized for long contexts).
  uint32_t seed = 300;
  for (int head_dim : {64, 128, 32, 16}) {
    for (int group : {1, 2, 4, 8}) {
      for (int context : {1, 65, 513, 3000}) check({2 * group, 2, head_dim, 16, decode_batch({context})}, seed++);
    }
  }
  check({8, 1, 128, 16, decode_batch({257})}, seed++);
  check({8, 2, 128, 32, decode_batch({300})}, seed++, 16384);  // sized for longer contexts
  check({40, 2, 64, 16, decode_batch({700})}, seed++);         // groups of two row tiles
}

TEST_F(AttentionMatchesCpu, ClusterSplitDecodeDoesNotDependOnTheContextAGraphWasSizedFor) {
  // A sequence decoded alone gives the same output, bit for bit, whatever context length the metadata
  // was sized for (a CUDA graph's): its splits follow its own context only.
  const QkvLayout layout{16, 8, 128};
  const int bs = 16;
  const std::vector<int> lengths = {257, 40, 2000, 1};
  const int num_blocks = blocks_for(lengths, bs) + 3;
  const auto tables = scattered_tables(lengths, bs, num_blocks, 400);
  const Shape cache_shape{num_blocks, bs, layout.num_kv_heads, layout.head_dim};
  const KvLayer cache{on(*gpu_, random_values(count_of(cache_shape), 401), cache_shape),
                      on(*gpu_, random_values(count_of(cache_shape), 402), cache_shape)};
  const int n = static_cast<int>(lengths.size());
  const auto qkv = random_values(n * layout.width(), 403, 0.0f, 2.0f);
  auto decode = [&](int i, int max_context_len) {
    HostBatch b = make_batch({{1, lengths[i]}}, {tables[i]}, bs);
    b.max_context_len = std::max(b.max_context_len, max_context_len);
    const std::vector<float> row(qkv.begin() + i * layout.width(), qkv.begin() + (i + 1) * layout.width());
    Tensor out = gpu_->allocate({1, layout.q_size()}, DType::bf16);
    gpu_->attention(on(*gpu_, row, {1, layout.width()}), layout, cache, meta_on(*gpu_, b), 1.0f / std::sqrt(128.0f),
                    out);
    return read(*gpu_, out);
  };
  for (int i = 0; i < n; ++i) {
    SCOPED_TRACE("context " + std::to_string(lengths[i]));
    const std::vector<float> mine = decode(i, 0);
    for (int sized : {600, 4096, 16384}) EXPECT_EQ(decode(i, sized), mine) << "metadata sized for " << sized;
  }
}

TEST_F(AttentionMatchesCpu, PrefillRaggedPrompts) {
  const std::vector<Seq> prompts = {{2, 2}, {17, 17}, {64, 64}, {65, 65}, {100, 100}, {300, 300}};
  uint32_t seed = 400;
  for (int head_dim : {128, 64, 32, 16}) {
    for (int group : {1, 3, 8}) {
      for (int block_size : {16, 32}) check({2 * group, 2, head_dim, block_size, prompts}, seed++);
    }
  }
}

TEST_F(AttentionMatchesCpu, ChunkedPrefillAndPrefixHits) {
  // Query shorter than the context: the cached prefix is read through the block table, and the causal
  // limit of token i is context − query + i.
  const std::vector<Seq> chunks = {{16, 100}, {50, 300}, {7, 64}, {64, 65}, {33, 1500}, {2, 3}, {128, 256}};
  uint32_t seed = 500;
  for (int head_dim : {128, 64, 32}) {
    for (int group : {1, 4}) check({4 * group, 4, head_dim, 16, chunks}, seed++);
  }
  check({8, 2, 128, 32, chunks}, seed++);
}

TEST_F(AttentionMatchesCpu, MixedDecodeAndPrefill) {
  const std::vector<Seq> mixed = {{1, 3000}, {1, 1}, {120, 120}, {1, 33}, {40, 200}, {1, 32}, {9, 9}};
  check({16, 4, 128, 16, mixed}, 600);
  check({8, 8, 64, 32, mixed}, 601);
  check({24, 1, 64, 16, mixed}, 602);  // MQA: 24 rows per token in the prefill tiles
  check({8, 2, 16, 16, mixed}, 603);
}

TEST_F(AttentionMatchesCpu, OtherBlockSizes) {
  const std::vector<Seq> mixed = {{1, 700}, {1, 1}, {50, 50}, {20, 260}, {1, 255}, {1, 256}, {1, 257}};
  uint32_t seed = 700;
  for (int block_size : {1, 8, 24, 64, 256}) check({8, 2, 64, block_size, mixed}, seed++);
  for (int block_size : {8, 64, 256}) check({8, 2, 128, block_size, decode_batch(ragged_contexts)}, seed++);
}

TEST_F(AttentionGpuTest, AttentionRejectsWhatItCannotDo) {
  const QkvLayout odd{4, 2, 80};  // head_dim 80: no kernel instantiation
  const HostBatch b = make_batch({{1, 1}}, {{0}}, 16);
  const Shape cache_shape{1, 16, 2, 80};
  Tensor cache_k = gpu_->allocate(cache_shape, DType::bf16), cache_v = gpu_->allocate(cache_shape, DType::bf16);
  Tensor qkv = gpu_->allocate({1, odd.width()}, DType::bf16), out = gpu_->allocate({1, odd.q_size()}, DType::bf16);
  EXPECT_THROW(gpu_->attention(qkv, odd, {cache_k, cache_v}, meta_on(*gpu_, b), 1.0f, out), std::invalid_argument);

  // q rows that start 2 bytes into their allocation: no 16-byte loads possible.
  const QkvLayout layout{4, 2, 64};
  const Shape shape64{1, 16, 2, 64};
  Tensor k64 = gpu_->allocate(shape64, DType::bf16), v64 = gpu_->allocate(shape64, DType::bf16);
  Tensor whole = gpu_->allocate({layout.width() + 1}, DType::bf16);
  Tensor shifted = whole.rows(1, layout.width() + 1).reshape({1, layout.width()});
  Tensor out64 = gpu_->allocate({1, layout.q_size()}, DType::bf16);
  EXPECT_THROW(gpu_->attention(shifted, layout, {k64, v64}, meta_on(*gpu_, b), 1.0f, out64), std::invalid_argument);

  // An empty step is no error and writes nothing.
  AttentionMetadata empty = meta_on(*gpu_, b);
  empty.num_seqs = 0;
  empty.num_tokens = 0;
  empty.query_start = i32_on(*gpu_, {0});
  empty.context_lens = gpu_->allocate({0}, DType::i32);
  empty.block_tables = gpu_->allocate({0, 1}, DType::i32);
  Tensor none = gpu_->allocate({0, layout.width()}, DType::bf16);
  Tensor none_out = gpu_->allocate({0, layout.q_size()}, DType::bf16);
  EXPECT_NO_THROW(gpu_->attention(none, layout, {k64, v64}, empty, 1.0f, none_out));
  gpu_->synchronize();
}

// A Llama 3.1-style table (theta 500000, llama3 scaling), so the scaled frequencies are what is tested.
RopeValues llama3_rope(int head_dim, int max_positions) {
  ModelConfig c;
  c.head_dim = head_dim;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  return rope_values(c, max_positions);
}

struct HeadShape {
  int heads, kv_heads, head_dim;
};

std::string head_case(const char* op, const HeadShape& h, int64_t tokens) {
  return std::string(op) + " heads " + std::to_string(h.heads) + "/" + std::to_string(h.kv_heads) + " head_dim " +
         std::to_string(h.head_dim) + " tokens " + std::to_string(tokens);
}

// Tokens at random positions (the first at the table's last) in random distinct cache slots, every
// third one padding (slot -1).
HostBatch rope_batch(std::mt19937& rng, int tokens, int max_positions, int num_slots) {
  HostBatch b;
  std::vector<int32_t> slots(num_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  std::uniform_int_distribution<int> pos(0, max_positions - 1);
  for (int t = 0; t < tokens; ++t) {
    b.positions.push_back(t == 0 ? max_positions - 1 : pos(rng));
    b.slot_mapping.push_back(t % 3 == 1 ? -1 : slots[t]);
  }
  b.num_tokens = tokens;
  b.max_context_len = max_positions;
  b.query_start = {0, tokens};
  b.context_lens = {max_positions};
  b.block_tables = {0};
  b.num_seqs = 1;
  b.table_width = 1;
  return b;
}

// One rope_store_kv case: the heads, a batch of `tokens`, a Llama 3.1 table and a cache.
struct RopeCase {
  RopeCase(const HeadShape& h, int tokens, int max_positions, int num_slots, uint32_t seed)
      : layout{h.heads, h.kv_heads, h.head_dim},
        batch([&] {
          std::mt19937 rng(seed);
          return rope_batch(rng, tokens, max_positions, num_slots);
        }()),
        rope(llama3_rope(h.head_dim, max_positions)),
        rope_shape{max_positions, h.head_dim / 2},
        cache_shape{num_slots, 1, h.kv_heads, h.head_dim} {}
  QkvLayout layout;
  HostBatch batch;
  RopeValues rope;
  Shape rope_shape, cache_shape;
};

TEST_F(AttentionGpuTest, RopeStoreKvMatchesCpu) {
  // head_dim 24 and 20: half a head is not a multiple of 8, so the scalar path runs.
  const HeadShape shapes[] = {{8, 2, 128}, {4, 4, 64}, {6, 2, 32}, {2, 1, 16}, {4, 2, 24}, {2, 2, 20}};
  const int max_positions = 5000, num_slots = 300;
  uint32_t seed = 800;
  for (const HeadShape& h : shapes) {
    for (int tokens : {1, 7, 64}) {
      const std::string what = head_case("rope_store_kv", h, tokens);
      SCOPED_TRACE(what);
      const RopeCase c(h, tokens, max_positions, num_slots, seed++);
      const QkvLayout& layout = c.layout;
      const std::vector<float> poison(static_cast<size_t>(count_of(c.cache_shape)), nan_f);
      const auto qkv = random_values(tokens * layout.width(), seed * 7);

      Tensor qkv_cpu = on(*cpu_, qkv, {tokens, layout.width()});
      KvLayer cache_cpu{on(*cpu_, poison, c.cache_shape), on(*cpu_, poison, c.cache_shape)};
      cpu_->rope_store_kv(qkv_cpu, layout, meta_on(*cpu_, c.batch),
                          {f32_on(*cpu_, c.rope.cos, c.rope_shape), f32_on(*cpu_, c.rope.sin, c.rope_shape)}, cache_cpu);

      Tensor qkv_gpu = on(*gpu_, qkv, {tokens, layout.width()});
      KvLayer cache_gpu{on(*gpu_, poison, c.cache_shape), on(*gpu_, poison, c.cache_shape)};
      gpu_->rope_store_kv(qkv_gpu, layout, meta_on(*gpu_, c.batch),
                          {f32_on(*gpu_, c.rope.cos, c.rope_shape), f32_on(*gpu_, c.rope.sin, c.rope_shape)}, cache_gpu);

      const auto rotated = read(*gpu_, qkv_gpu);
      const auto expected = read(*cpu_, qkv_cpu);
      expect_close(rotated, expected, what + ", rotated qkv");
      const int64_t w = layout.width(), kv = layout.kv_size();
      for (int t = 0; t < tokens; ++t) {  // v passes through bit for bit
        for (int64_t e = layout.q_size() + kv; e < w; ++e) ASSERT_EQ(rotated[t * w + e], qkv[t * w + e]) << "token " << t;
      }

      const auto k_gpu = read(*gpu_, cache_gpu.k), v_gpu = read(*gpu_, cache_gpu.v);
      const auto k_cpu = read(*cpu_, cache_cpu.k);
      std::vector<bool> written(num_slots, false);
      std::vector<float> k_got, k_want;
      for (int t = 0; t < tokens; ++t) {
        const int slot = c.batch.slot_mapping[t];
        if (slot < 0) continue;
        written[slot] = true;
        for (int64_t e = 0; e < kv; ++e) {
          // The cached k is the rotated k of the qkv row, and v the row's v, exactly.
          ASSERT_EQ(k_gpu[slot * kv + e], rotated[t * w + layout.q_size() + e]) << "k of token " << t;
          ASSERT_EQ(v_gpu[slot * kv + e], qkv[t * w + layout.q_size() + kv + e]) << "v of token " << t;
          k_got.push_back(k_gpu[slot * kv + e]);
          k_want.push_back(k_cpu[slot * kv + e]);
        }
      }
      expect_close(k_got, k_want, what + ", cached k");
      std::vector<float> untouched;
      for (int s = 0; s < num_slots; ++s) {
        if (written[s]) continue;
        untouched.insert(untouched.end(), k_gpu.begin() + s * kv, k_gpu.begin() + (s + 1) * kv);
        untouched.insert(untouched.end(), v_gpu.begin() + s * kv, v_gpu.begin() + (s + 1) * kv);
      }
      expect_untouched(untouched, what + ", cache slots of no token (slot -1 included)");
    }
  }
}

TEST_F(AttentionGpuTest, QkNormMatchesCpu) {
  const HeadShape shapes[] = {{16, 8, 128}, {8, 2, 64}, {4, 2, 32}, {2, 1, 16}, {4, 2, 20}};
  uint32_t seed = 900;
  for (const HeadShape& h : shapes) {
    for (int64_t tokens : {1, 7, 33}) {
      const std::string what = head_case("qk_norm", h, tokens);
      const QkvLayout layout{h.heads, h.kv_heads, h.head_dim};
      const auto qkv = random_values(tokens * layout.width(), seed++, 0.5f, 2.0f);
      const auto qw = random_values(h.head_dim, seed++, 1.0f, 0.5f);
      const auto kw = random_values(h.head_dim, seed++, 1.0f, 0.5f);
      const float eps = 1e-6f;

      Tensor qkv_cpu = on(*cpu_, qkv, {tokens, layout.width()});
      cpu_->qk_norm(qkv_cpu, layout, on(*cpu_, qw, {h.head_dim}), on(*cpu_, kw, {h.head_dim}), eps);
      Tensor whole = poisoned_gpu({tokens + 1, layout.width()});
      Tensor qkv_gpu = whole.rows(0, tokens);
      gpu_->upload(HostView{qkv.data(), DType::f32, {tokens, layout.width()}}, qkv_gpu);
      gpu_->qk_norm(qkv_gpu, layout, on(*gpu_, qw, {h.head_dim}), on(*gpu_, kw, {h.head_dim}), eps);

      const auto got = read(*gpu_, qkv_gpu);
      const auto want = read(*cpu_, qkv_cpu);
      expect_close(got, want, what);
      const int64_t w = layout.width();
      for (int64_t t = 0; t < tokens; ++t) {  // v untouched
        for (int64_t e = layout.q_size() + layout.kv_size(); e < w; ++e) ASSERT_EQ(got[t * w + e], qkv[t * w + e]);
      }
      expect_untouched(read(*gpu_, whole.rows(tokens, tokens + 1)), what);
    }
  }
}

// Qwen3's norm and rotation in one pass (kernels/rope_kv.cu with q_norm/k_norm set) against the two
// kernels one after the other and against the CPU reference: head_dim 16 to 128 take the fused
// kernel, 24 the fallback. The fused kernel sums a head's squares in another order, so a value may
// round to the neighbouring bf16; anything more is a bug.
TEST_F(AttentionGpuTest, QkNormRopeStoreKvMatchesTheTwoOpsAndCpu) {
  const HeadShape shapes[] = {{16, 8, 128}, {8, 2, 64}, {6, 2, 32}, {2, 1, 16}, {4, 2, 24}};
  const int max_positions = 3000, num_slots = 200;
  uint32_t seed = 1300;
  for (const HeadShape& h : shapes) {
    for (int tokens : {1, 7, 64}) {
      const std::string what = head_case("qk_norm_rope_store_kv", h, tokens);
      SCOPED_TRACE(what);
      const RopeCase c(h, tokens, max_positions, num_slots, seed++);
      const QkvLayout& layout = c.layout;
      const std::vector<float> zeros(static_cast<size_t>(count_of(c.cache_shape)), 0.0f);
      const auto qkv = random_values(tokens * layout.width(), seed * 7, 0.5f, 2.0f);
      const auto qw = random_values(h.head_dim, seed * 7 + 1, 1.0f, 0.5f);
      const auto kw = random_values(h.head_dim, seed * 7 + 2, 1.0f, 0.5f);
      const float eps = 1e-6f;

      auto run = [&](Backend& be, bool fused) {
        Tensor x = on(be, qkv, {tokens, layout.width()});
        KvLayer cache{on(be, zeros, c.cache_shape), on(be, zeros, c.cache_shape)};
        const RopeTable table{f32_on(be, c.rope.cos, c.rope_shape), f32_on(be, c.rope.sin, c.rope_shape)};
        Tensor q_w = on(be, qw, {h.head_dim}), k_w = on(be, kw, {h.head_dim});
        if (fused) {
          be.qk_norm_rope_store_kv(x, layout, q_w, k_w, eps, meta_on(be, c.batch), table, cache);
        } else {
          be.qk_norm(x, layout, q_w, k_w, eps);
          be.rope_store_kv(x, layout, meta_on(be, c.batch), table, cache);
        }
        std::vector<float> all = read(be, x), k = read(be, cache.k), v = read(be, cache.v);
        all.insert(all.end(), k.begin(), k.end());
        all.insert(all.end(), v.begin(), v.end());
        return all;
      };
      const auto fused = run(*gpu_, true), apart = run(*gpu_, false), cpu = run(*cpu_, true);
      expect_close(fused, cpu, what + ", against the CPU");
      expect_close(fused, apart, what + ", against qk_norm then rope_store_kv");
      size_t differ = 0;
      for (size_t i = 0; i < fused.size(); ++i) differ += fused[i] != apart[i];
      EXPECT_LE(differ, fused.size() / 50) << differ << " of " << fused.size() << " values differ from the two ops'";
    }
  }
}

// The model's sequence of ops over several steps, each backend on its own cache: prompts, chunked
// prefill, a prefix-cache hit (a sequence whose first blocks are another's), decode — rope_store_kv
// writes what attention reads later.
TEST_F(AttentionGpuTest, StepsOfRopeStoreAndAttentionMatchCpu) {
  struct Plan {
    int heads, kv_heads, head_dim, block_size;
  };
  const int max_positions = 4096;
  uint32_t seed = 1000;
  for (const Plan& p : {Plan{8, 2, 64, 16}, Plan{16, 4, 128, 16}, Plan{4, 4, 32, 32}, Plan{6, 2, 128, 32}}) {
    const std::string what = "heads " + std::to_string(p.heads) + "/" + std::to_string(p.kv_heads) + " head_dim " +
                             std::to_string(p.head_dim) + " block " + std::to_string(p.block_size);
    SCOPED_TRACE(what);
    const QkvLayout layout{p.heads, p.kv_heads, p.head_dim};
    const int bs = p.block_size;
    // Final lengths: A 100 prompt + 3 decoded, B 37 + 3, C 300 in three chunks + 1, D = A's first
    // `shared` tokens (whole blocks, a prefix hit) + 20 of its own + 2 decoded.
    const int shared = (96 / bs) * bs;
    auto tables = scattered_tables({103, 40, 301, 22 + bs}, bs, blocks_for({103, 40, 301, 22 + bs}, bs) + 4, seed);
    std::vector<int32_t> d_table(tables[0].begin(), tables[0].begin() + shared / bs);
    d_table.insert(d_table.end(), tables[3].begin(), tables[3].end());
    tables[3] = d_table;
    const int shared_end = shared;
    // Each step: (query, context) per sequence, in order A, B, C, D; a query of 0 leaves it out.
    const std::vector<std::vector<Seq>> steps = {
        {{100, 100}, {37, 37}, {128, 128}, {0, 0}},
        {{1, 101}, {1, 38}, {128, 256}, {20, shared_end + 20}},
        {{1, 102}, {1, 39}, {44, 300}, {1, shared_end + 21}},
        {{1, 103}, {1, 40}, {1, 301}, {1, shared_end + 22}},
    };

    const RopeValues rope = llama3_rope(p.head_dim, max_positions);
    const Shape rope_shape{max_positions, p.head_dim / 2};
    const RopeTable rope_cpu{f32_on(*cpu_, rope.cos, rope_shape), f32_on(*cpu_, rope.sin, rope_shape)};
    const RopeTable rope_gpu{f32_on(*gpu_, rope.cos, rope_shape), f32_on(*gpu_, rope.sin, rope_shape)};
    int num_blocks = 0;
    for (const auto& t : tables) num_blocks = std::max(num_blocks, 1 + *std::max_element(t.begin(), t.end()));
    const Shape cache_shape{num_blocks + 2, bs, p.kv_heads, p.head_dim};
    const std::vector<float> poison(static_cast<size_t>(count_of(cache_shape)), nan_f);
    KvLayer cache_cpu{on(*cpu_, poison, cache_shape), on(*cpu_, poison, cache_shape)};
    KvLayer cache_gpu{on(*gpu_, poison, cache_shape), on(*gpu_, poison, cache_shape)};
    const float scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));

    for (size_t step = 0; step < steps.size(); ++step) {
      std::vector<Seq> seqs;
      std::vector<std::vector<int32_t>> step_tables;
      for (size_t s = 0; s < steps[step].size(); ++s) {
        if (steps[step][s].query_len == 0) continue;
        seqs.push_back(steps[step][s]);
        step_tables.push_back(tables[s]);
      }
      const std::string at = what + ", step " + std::to_string(step) + " " + describe(seqs);
      const HostBatch b = make_batch(seqs, step_tables, bs);
      const int64_t t = b.num_tokens;
      const auto qkv = random_values(t * layout.width(), seed + 10 + static_cast<uint32_t>(step), 0.0f, 1.5f);

      Tensor qkv_cpu = on(*cpu_, qkv, {t, layout.width()});
      const AttentionMetadata meta_cpu = meta_on(*cpu_, b);
      cpu_->rope_store_kv(qkv_cpu, layout, meta_cpu, rope_cpu, cache_cpu);
      Tensor ref = cpu_->allocate({t, layout.q_size()}, DType::f32);
      cpu_->attention(qkv_cpu, layout, cache_cpu, meta_cpu, scale, ref);

      Tensor qkv_gpu = on(*gpu_, qkv, {t, layout.width()});
      const AttentionMetadata meta_gpu = meta_on(*gpu_, b);
      gpu_->rope_store_kv(qkv_gpu, layout, meta_gpu, rope_gpu, cache_gpu);
      Tensor out = poisoned_gpu({t + 1, layout.q_size()});
      gpu_->attention(qkv_gpu, layout, cache_gpu, meta_gpu, scale, out.rows(0, t));

      expect_close(read(*gpu_, qkv_gpu), read(*cpu_, qkv_cpu), at + ", rotated qkv");
      expect_close(read(*gpu_, out.rows(0, t)), read(*cpu_, ref), at + ", attention");
      expect_untouched(read(*gpu_, out.rows(t, t + 1)), at);
    }
    seed += 100;
  }
}

// The decode kernel's own rope and cache write (rope_store_kv_attention at one new token per
// sequence) against rope_store_kv (qk_norm_rope_store_kv with norm weights) then attention, on the
// CUDA backend from the same qkv and cache: the attention output and the whole cache must be the same
// bits. Every new token's slot holds NaN before the step, so a kernel that read it before writing it,
// or skipped the write, shows; a k rotated otherwise (a sign, a table row, a rounding) changes the
// cache and the output. Contexts put the newest key in a tile copied before the kernel's wait and in
// one its loop copies after the kernel's own cache write, on the cluster path (one sequence: stages
// and split ranges by context) and on the split and whole-context paths (three sequences).
class RopeInDecodeAttention : public AttentionGpuTest {
 protected:
  static constexpr int kMaxPositions = 4096;

  // edit, when set, changes the step's metadata once it is made (a position outside the table, an
  // uncached token); max_context_len as AttentionMatchesCpu::check's.
  void check(const HeadShape& h, const std::vector<int>& contexts, bool norm, uint32_t seed, int max_context_len = 0,
             const std::function<void(HostBatch&)>& edit = nullptr) {
    std::string what = head_case(norm ? "qk_norm_rope_store_kv_attention" : "rope_store_kv_attention", h,
                                 static_cast<int64_t>(contexts.size())) + ", contexts";
    for (int c : contexts) what += " " + std::to_string(c);
    if (max_context_len > 0) what += ", sized for " + std::to_string(max_context_len);
    if (edit) what += ", edited";
    SCOPED_TRACE(what);
    const QkvLayout layout{h.heads, h.kv_heads, h.head_dim};
    const int bs = 16;
    const int num_blocks = blocks_for(contexts, bs) + 3;
    HostBatch b = make_batch(decode_batch(contexts), scattered_tables(contexts, bs, num_blocks, seed), bs);
    b.max_context_len = std::max(b.max_context_len, max_context_len);
    if (edit) edit(b);

    const int64_t kv = layout.kv_size(), t = b.num_tokens;
    const Shape cache_shape{num_blocks, bs, h.kv_heads, h.head_dim};
    std::vector<float> k = random_values(count_of(cache_shape), seed + 1);
    std::vector<float> v = random_values(count_of(cache_shape), seed + 2);
    for (int32_t slot : b.slot_mapping) {
      if (slot < 0) continue;
      std::fill_n(k.begin() + slot * kv, kv, nan_f);
      std::fill_n(v.begin() + slot * kv, kv, nan_f);
    }
    const auto qkv = random_values(t * layout.width(), seed + 3, norm ? 0.5f : 0.0f, 2.0f);
    const RopeValues rope = llama3_rope(h.head_dim, kMaxPositions);
    const Shape rope_shape{kMaxPositions, h.head_dim / 2};
    const RopeTable table{f32_on(*gpu_, rope.cos, rope_shape), f32_on(*gpu_, rope.sin, rope_shape)};
    const Tensor q_norm = on(*gpu_, random_values(h.head_dim, seed + 4, 1.0f, 0.5f), {h.head_dim});
    const Tensor k_norm = on(*gpu_, random_values(h.head_dim, seed + 5, 1.0f, 0.5f), {h.head_dim});
    const float scale = 1.0f / std::sqrt(static_cast<float>(h.head_dim)), eps = 1e-6f;
    const AttentionMetadata meta = meta_on(*gpu_, b);

    struct Result {
      std::vector<float> out, guard, k, v;
    };
    auto run = [&](bool fused) {
      const Tensor x = on(*gpu_, qkv, {t, layout.width()});
      const KvLayer cache{on(*gpu_, k, cache_shape), on(*gpu_, v, cache_shape)};
      const Tensor out = poisoned_gpu({t + 1, layout.q_size()});
      if (fused) {
        gpu_->rope_store_kv_attention(x, layout, meta, table, cache, scale, out.rows(0, t), norm ? &q_norm : nullptr,
                                      norm ? &k_norm : nullptr, eps);
      } else {
        if (norm)
          gpu_->qk_norm_rope_store_kv(x, layout, q_norm, k_norm, eps, meta, table, cache);
        else
          gpu_->rope_store_kv(x, layout, meta, table, cache);
        gpu_->attention(x, layout, cache, meta, scale, out.rows(0, t));
      }
      return Result{read(*gpu_, out.rows(0, t)), read(*gpu_, out.rows(t, t + 1)), read(*gpu_, cache.k),
                    read(*gpu_, cache.v)};
    };
    const Result fused = run(true), apart = run(false);
    test::expect_same_bits(fused.out, apart.out, what + ", attention output");
    test::expect_same_bits(fused.k, apart.k, what + ", k cache");
    test::expect_same_bits(fused.v, apart.v, what + ", v cache");
    expect_untouched(fused.guard, what);
    // Same bits could still be the same mistake: no output read a NaN slot, and the new tokens' k and
    // v are in the cache.
    EXPECT_EQ(std::count_if(fused.out.begin(), fused.out.end(), [](float x) { return !std::isfinite(x); }), 0)
        << what << ": outputs not finite";
    for (int i = 0; i < t; ++i) {
      const int64_t slot = b.slot_mapping[i];
      if (slot < 0) continue;
      const auto written = [&](const std::vector<float>& c) {
        return std::all_of(c.begin() + slot * kv, c.begin() + (slot + 1) * kv, [](float x) { return std::isfinite(x); });
      };
      EXPECT_TRUE(written(fused.k) && written(fused.v)) << what << ": token " << i << "'s k and v not cached";
    }
  }
};

// Llama 3 (32/8, 8/2 for a tensor-parallel shard), Qwen3 (16/8 is 16/4 per two ranks), and multi-head
// attention: every group size up to one row tile.
const HeadShape rope_in_decode_shapes[] = {{32, 8, 128}, {8, 2, 128}, {16, 4, 128}, {16, 16, 128},
                                           {32, 8, 64},  {8, 2, 64},  {16, 4, 64},  {16, 16, 64}};

TEST_F(RopeInDecodeAttention, OneSequenceIsTheTwoOpsBitForBit) {
  // On an H100 or H200 (132 SMs): 1 to 513 keys take two stages, the newest key in the first tile of
  // its cluster CTA; 2000 and 3000 take five stages (16 kv heads: two), the newest
  // key in the fourth tile at 2000 (copied before the wait) and the fifth at 3000 (copied by the loop);
  // sized for 4096, 300 keys take five stages.
  uint32_t seed = 1500;
  for (const HeadShape& h : rope_in_decode_shapes) {
    for (int context : {1, 63, 64, 65, 300, 513, 2000, 3000}) check(h, {context}, false, seed++);
    check(h, {300}, false, seed++, 4096);
    for (int context : {1, 65, 2000, 3000}) check(h, {context}, true, seed++);
  }
}

TEST_F(RopeInDecodeAttention, ThreeSequencesAreTheTwoOpsBitForBit) {
  // Split contexts (256-key splits; the newest key of 2000 and 3000 in a tile the loop copies where
  // the grid takes two stages), whole contexts of up to 320 keys in five stages, and splits in five.
  const std::vector<std::vector<int>> batches = {{1, 300, 2000}, {63, 64, 65}, {513, 3000, 17}, {200, 1000, 129}};
  uint32_t seed = 1700;
  for (const HeadShape& h : rope_in_decode_shapes) {
    for (const auto& contexts : batches) check(h, contexts, false, seed++);
    for (const auto& contexts : {batches[0], batches[2]}) check(h, contexts, true, seed++);
  }
}

TEST_F(RopeInDecodeAttention, UnrotatedAndUncachedTokensAreTheTwoOpsBitForBit) {
  // rope_store_kv leaves a token at a position outside the table unrotated (still cached), and one
  // without a slot uncached: attention then reads whatever its block table's slot holds.
  auto outside_and_uncached = [](HostBatch& b) {
    b.positions[0] = kMaxPositions + 5;
    b.slot_mapping[1] = -1;
    b.positions[2] = -1;
  };
  auto uncached = [](HostBatch& b) { b.slot_mapping[0] = -1; };
  uint32_t seed = 1900;
  for (const HeadShape& h : {rope_in_decode_shapes[0], rope_in_decode_shapes[3], rope_in_decode_shapes[5]}) {
    for (bool norm : {false, true}) {
      check(h, {65, 2000, 300}, norm, seed++, 0, outside_and_uncached);
      check(h, {65}, norm, seed++, 0, uncached);
      check(h, {3000}, norm, seed++, 0, uncached);
      check(h, {300}, norm, seed++, 0, [](HostBatch& b) { b.positions[0] = kMaxPositions; });
    }
  }
}

}  // namespace
}  // namespace troupe
