#include "engine/block_manager.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace troupe {
namespace {

using Ids = std::vector<int32_t>;
using Table = std::vector<int32_t>;

Ids range(int32_t first, int count) {
  Ids ids(count);
  for (int i = 0; i < count; ++i) ids[i] = first + i;
  return ids;
}

Ids concat(Ids a, const Ids& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Ids head(const Ids& ids, int n) { return Ids(ids.begin(), ids.begin() + n); }

// Runs one sequence's prompt through: attach what is cached, allocate the rest, compute, commit.
int prefill(BlockManager& m, SeqId seq, const Ids& tokens) {
  int cached = m.attach_cached_prefix(seq, tokens);
  if (!m.allocate(seq, static_cast<int>(tokens.size()))) throw std::runtime_error("prefill: out of blocks");
  m.commit(seq, tokens, static_cast<int>(tokens.size()));
  return cached;
}

TEST(BlockManager, RejectsBadGeometry) {
  EXPECT_THROW(BlockManager(-1, 16, true), std::invalid_argument);
  EXPECT_THROW(BlockManager(8, 0, true), std::invalid_argument);
  BlockManager m(8, 16, true);
  EXPECT_EQ(m.block_size(), 16);
  EXPECT_EQ(m.num_blocks(), 8);
  EXPECT_THROW(m.blocks_needed(1, -1), std::invalid_argument);
}

TEST(BlockManager, AllocatesWholeBlocksAndGrowsTables) {
  BlockManager m(8, 4, true);
  EXPECT_TRUE(m.idle());
  EXPECT_EQ(m.blocks_needed(1, 5), 2);
  ASSERT_TRUE(m.allocate(1, 5));
  EXPECT_EQ(m.block_table(1), (Table{0, 1}));
  EXPECT_EQ(m.blocks_needed(1, 8), 0);
  ASSERT_TRUE(m.allocate(1, 8));
  EXPECT_EQ(m.block_table(1), (Table{0, 1}));
  EXPECT_EQ(m.blocks_needed(1, 9), 1);
  ASSERT_TRUE(m.allocate(1, 9));
  EXPECT_EQ(m.block_table(1), (Table{0, 1, 2}));
  ASSERT_TRUE(m.allocate(2, 1));
  EXPECT_EQ(m.block_table(2), (Table{3}));
  ASSERT_TRUE(m.allocate(3, 0));  // nothing to hold, nothing recorded
  EXPECT_TRUE(m.block_table(3).empty());
  EXPECT_TRUE(m.block_table(99).empty());

  EXPECT_EQ(m.num_free_blocks(), 4);
  EXPECT_EQ(m.stats().used_blocks, 4);
  EXPECT_DOUBLE_EQ(m.usage(), 0.5);
  EXPECT_FALSE(m.idle());

  m.free(1);
  EXPECT_TRUE(m.block_table(1).empty());
  EXPECT_EQ(m.stats().used_blocks, 1);
  EXPECT_FALSE(m.idle());
  // Freed blocks come back in the order the sequence held them.
  ASSERT_TRUE(m.allocate(4, 12));
  EXPECT_EQ(m.block_table(4), (Table{0, 1, 2}));
  m.free(4);
  m.free(2);
  EXPECT_TRUE(m.idle());
  EXPECT_EQ(m.stats().used_blocks, 0);
  EXPECT_EQ(m.num_free_blocks(), 8);
  EXPECT_DOUBLE_EQ(m.usage(), 0.0);
}

TEST(BlockManager, AllocationIsAllOrNothing) {
  BlockManager m(4, 4, true);
  ASSERT_TRUE(m.allocate(1, 12));
  EXPECT_EQ(m.blocks_needed(2, 8), 2);
  EXPECT_FALSE(m.allocate(2, 8));
  EXPECT_TRUE(m.block_table(2).empty());
  EXPECT_EQ(m.num_free_blocks(), 1);
  EXPECT_EQ(m.stats().used_blocks, 3);

  EXPECT_FALSE(m.allocate(1, 20));  // needs 2 more, 1 is free
  EXPECT_EQ(m.block_table(1).size(), 3u);
  EXPECT_EQ(m.num_free_blocks(), 1);
  ASSERT_TRUE(m.allocate(1, 16));
  EXPECT_EQ(m.block_table(1).size(), 4u);
  EXPECT_EQ(m.num_free_blocks(), 0);
  EXPECT_DOUBLE_EQ(m.usage(), 1.0);
}

TEST(BlockManager, SharedPrefixUsesTheSamePhysicalBlocksWithReferenceCounts) {
  BlockManager m(16, 4, true);
  Ids a = range(100, 10);
  EXPECT_EQ(prefill(m, 1, a), 0);
  EXPECT_EQ(m.stats().used_blocks, 3);

  Ids b = concat(head(a, 8), range(500, 4));
  EXPECT_EQ(m.attach_cached_prefix(2, b), 8);
  EXPECT_EQ(m.block_table(2), (Table{m.block_table(1)[0], m.block_table(1)[1]}));
  EXPECT_EQ(m.stats().used_blocks, 3);  // attaching shares, it takes nothing new
  ASSERT_TRUE(m.allocate(2, 12));
  EXPECT_EQ(m.stats().used_blocks, 4);
  m.commit(2, b, 12);

  Table shared = head(m.block_table(1), 2);
  m.free(1);
  // The shared blocks keep their second reference; a's partial third block is plainly free.
  EXPECT_EQ(m.stats().used_blocks, 3);
  EXPECT_EQ(m.stats().cached_free_blocks, 0);
  EXPECT_DOUBLE_EQ(m.usage(), 3.0 / 16);
  EXPECT_EQ(head(m.block_table(2), 2), shared);
  m.free(2);
  EXPECT_TRUE(m.idle());
  EXPECT_EQ(m.stats().used_blocks, 0);
  EXPECT_EQ(m.stats().cached_free_blocks, 3);  // b's three full blocks
  EXPECT_EQ(m.num_free_blocks(), 16);

  // Three holders: the last one to let go decides.
  Ids c = concat(head(a, 8), {7});
  EXPECT_EQ(m.attach_cached_prefix(3, c), 8);
  EXPECT_EQ(m.attach_cached_prefix(4, c), 8);
  EXPECT_EQ(m.attach_cached_prefix(5, c), 8);
  EXPECT_EQ(m.block_table(3), shared);
  EXPECT_EQ(m.block_table(5), shared);
  EXPECT_EQ(m.stats().used_blocks, 2);
  m.free(3);
  m.free(4);
  EXPECT_EQ(m.stats().used_blocks, 2);
  m.free(5);
  EXPECT_EQ(m.stats().used_blocks, 0);
  EXPECT_TRUE(m.idle());
}

TEST(BlockManager, CountsQueriesAndHitsInTokens) {
  BlockManager m(16, 4, true);
  Ids a = range(0, 10);
  prefill(m, 1, a);
  EXPECT_EQ(m.stats().prefix_queries, 10u);
  EXPECT_EQ(m.stats().prefix_hits, 0u);
  EXPECT_EQ(m.attach_cached_prefix(2, a), 8);
  EXPECT_EQ(m.stats().prefix_queries, 20u);
  EXPECT_EQ(m.stats().prefix_hits, 8u);
  EXPECT_EQ(m.attach_cached_prefix(3, range(50, 7)), 0);
  EXPECT_EQ(m.stats().prefix_queries, 27u);
  EXPECT_EQ(m.stats().prefix_hits, 8u);
}

TEST(BlockManager, NeverAttachesTheWholePrompt) {
  BlockManager m(16, 4, true);
  Ids p = range(0, 8);
  prefill(m, 1, p);
  m.free(1);
  EXPECT_EQ(m.stats().cached_free_blocks, 2);
  EXPECT_EQ(m.attach_cached_prefix(2, p), 4);  // the last block is recomputed for its logits
  EXPECT_EQ(m.attach_cached_prefix(3, concat(p, {9})), 8);
  EXPECT_EQ(m.attach_cached_prefix(4, head(p, 4)), 0);
  EXPECT_EQ(m.attach_cached_prefix(5, head(p, 5)), 4);
  EXPECT_EQ(m.attach_cached_prefix(6, Ids{}), 0);
}

TEST(BlockManager, PartialLastBlockIsNotShared) {
  BlockManager m(16, 4, true);
  Ids p = range(0, 10);
  prefill(m, 1, p);
  m.free(1);
  EXPECT_EQ(m.stats().cached_free_blocks, 2);
  EXPECT_EQ(m.stats().used_blocks, 0);
  EXPECT_EQ(m.attach_cached_prefix(2, concat(p, range(10, 6))), 8);
}

TEST(BlockManager, BlockIsFoundOnlyAfterTheSamePrefix) {
  BlockManager m(16, 4, true);
  Ids x = range(0, 4), y = range(4, 4), z = range(8, 4);
  prefill(m, 1, concat(x, y));
  m.free(1);
  EXPECT_EQ(m.attach_cached_prefix(2, concat(concat(z, y), {1})), 0);  // y cached, but after x
  EXPECT_EQ(m.attach_cached_prefix(3, concat(concat(x, z), {1})), 4);
  EXPECT_EQ(m.attach_cached_prefix(4, concat(concat(x, y), {1})), 8);
}

TEST(BlockManager, OutputBlocksAreCachedAsTheyFill) {
  BlockManager m(16, 4, true);
  Ids tokens = range(0, 6);
  prefill(m, 1, tokens);
  // Decode: one token per step, its KV committed the step after it was sampled.
  for (int32_t t = 100; t < 106; ++t) {
    tokens.push_back(t);
    ASSERT_TRUE(m.allocate(1, static_cast<int>(tokens.size())));
    m.commit(1, tokens, static_cast<int>(tokens.size()));
  }
  EXPECT_EQ(tokens.size(), 12u);
  m.free(1);
  EXPECT_EQ(m.stats().cached_free_blocks, 3);
  // The next turn of the conversation finds prompt and answer.
  EXPECT_EQ(m.attach_cached_prefix(2, concat(tokens, {7, 8})), 12);
}

TEST(BlockManager, EvictsLeastRecentlyUsedAndTailsBeforeHeads) {
  BlockManager m(4, 4, true);
  Ids p = range(0, 12);
  prefill(m, 1, p);
  m.free(1);
  EXPECT_EQ(m.stats().cached_free_blocks, 3);
  EXPECT_EQ(m.num_free_blocks(), 4);

  ASSERT_TRUE(m.allocate(2, 4));  // the plainly free block goes first
  EXPECT_EQ(m.stats().cached_free_blocks, 3);
  ASSERT_TRUE(m.allocate(3, 4));  // then p's last block
  EXPECT_EQ(m.stats().cached_free_blocks, 2);
  EXPECT_EQ(m.attach_cached_prefix(4, concat(p, {1})), 8);
  m.free(4);
  ASSERT_TRUE(m.allocate(5, 4));  // then p's second block
  EXPECT_EQ(m.stats().cached_free_blocks, 1);
  EXPECT_EQ(m.attach_cached_prefix(6, concat(p, {1})), 4);
  m.free(6);
  ASSERT_TRUE(m.allocate(7, 4));
  EXPECT_EQ(m.stats().cached_free_blocks, 0);
  EXPECT_EQ(m.attach_cached_prefix(8, concat(p, {1})), 0);
  EXPECT_FALSE(m.allocate(8, 4));
}

TEST(BlockManager, ReusingACachedBlockMakesItRecent) {
  BlockManager m(4, 4, true);
  Ids a = range(0, 8), b = range(100, 8);
  prefill(m, 1, a);
  prefill(m, 2, b);
  Table a_blocks = m.block_table(1);
  m.free(1);
  m.free(2);  // LRU, oldest first: a1 a0 b1 b0
  EXPECT_EQ(m.stats().cached_free_blocks, 4);

  // Reuse takes a's blocks themselves out of the LRU list, no copy.
  EXPECT_EQ(m.attach_cached_prefix(3, concat(a, {1})), 8);
  EXPECT_EQ(m.block_table(3), a_blocks);
  EXPECT_EQ(m.stats().cached_free_blocks, 2);
  EXPECT_EQ(m.stats().used_blocks, 2);
  EXPECT_EQ(m.num_free_blocks(), 2);
  m.free(3);  // now b1 b0 a1 a0
  EXPECT_EQ(m.stats().cached_free_blocks, 4);

  ASSERT_TRUE(m.allocate(4, 8));
  EXPECT_EQ(m.stats().cached_free_blocks, 2);
  m.free(4);
  EXPECT_EQ(m.attach_cached_prefix(5, concat(b, {1})), 0);
  EXPECT_EQ(m.attach_cached_prefix(6, concat(a, {1})), 8);
}

TEST(BlockManager, ResetPrefixCacheForgetsOnlyUnreferencedBlocks) {
  BlockManager m(16, 4, true);
  Ids a = range(0, 8), b = range(100, 8);
  prefill(m, 1, a);
  prefill(m, 2, b);
  m.free(2);
  EXPECT_EQ(m.stats().cached_free_blocks, 2);
  int free_before = m.num_free_blocks();

  m.reset_prefix_cache();
  EXPECT_EQ(m.stats().cached_free_blocks, 0);
  EXPECT_EQ(m.num_free_blocks(), free_before);
  EXPECT_EQ(m.stats().used_blocks, 2);
  EXPECT_EQ(m.attach_cached_prefix(3, concat(b, {1})), 0);
  EXPECT_EQ(m.attach_cached_prefix(4, concat(a, {1})), 8);  // a is held, so it stays cached
  EXPECT_EQ(m.block_table(4), m.block_table(1));
  m.free(1);
  m.free(4);
  EXPECT_EQ(m.stats().cached_free_blocks, 2);
  EXPECT_TRUE(m.idle());
}

TEST(BlockManager, CommitIsIdempotentAndDuplicatesAreCachedOnce) {
  BlockManager m(16, 4, true);
  Ids p = range(0, 8);
  // Two identical prompts prefilled in the same step: neither finds the other.
  EXPECT_EQ(m.attach_cached_prefix(1, p), 0);
  EXPECT_EQ(m.attach_cached_prefix(2, p), 0);
  ASSERT_TRUE(m.allocate(1, 8));
  ASSERT_TRUE(m.allocate(2, 8));
  m.commit(1, p, 5);
  m.commit(1, p, 8);
  m.commit(1, p, 8);
  m.commit(1, p, 4);
  m.commit(2, p, 8);
  Table first = m.block_table(1);
  m.free(1);
  m.free(2);
  EXPECT_EQ(m.stats().cached_free_blocks, 2);  // not 4: the duplicate went plainly free
  EXPECT_EQ(m.num_free_blocks(), 16);
  EXPECT_EQ(m.attach_cached_prefix(3, concat(p, {1})), 8);
  EXPECT_EQ(m.block_table(3), first);
}

TEST(BlockManager, DuplicateKeepsItsOwnBlocksCachedAfterTheOriginalIsEvicted) {
  BlockManager m(6, 4, true);
  Ids x = range(0, 8), y = range(100, 4);
  ASSERT_EQ(m.attach_cached_prefix(1, x), 0);
  ASSERT_EQ(m.attach_cached_prefix(2, concat(x, y)), 0);
  ASSERT_TRUE(m.allocate(1, 8));
  ASSERT_TRUE(m.allocate(2, 12));
  m.commit(1, x, 8);             // seq 1's blocks cache x
  m.commit(2, concat(x, y), 12);  // seq 2 duplicates x and caches x+y in its own third block
  Table b = m.block_table(2);
  m.free(1);
  ASSERT_TRUE(m.allocate(3, 12));  // one free block plus both of x's cached blocks
  EXPECT_EQ(m.stats().cached_free_blocks, 0);
  m.free(3);
  m.free(2);
  EXPECT_EQ(m.stats().cached_free_blocks, 1);  // x+y, unreachable while x is not cached
  EXPECT_EQ(m.attach_cached_prefix(4, concat(concat(x, y), {1})), 0);
  // Recomputing x makes x+y reachable again.
  EXPECT_EQ(prefill(m, 5, x), 0);
  m.free(5);
  ASSERT_EQ(m.attach_cached_prefix(6, concat(concat(x, y), {1})), 12);
  EXPECT_EQ(m.block_table(6)[2], b[2]);
}

TEST(BlockManager, FreeOfUnknownSequenceIsHarmless) {
  BlockManager m(8, 4, true);
  prefill(m, 1, range(0, 6));
  BlockManagerStats before = m.stats();
  m.free(42);
  m.free(42);
  EXPECT_EQ(m.stats().used_blocks, before.used_blocks);
  EXPECT_EQ(m.stats().cached_free_blocks, before.cached_free_blocks);
  EXPECT_EQ(m.num_free_blocks(), 6);
  EXPECT_EQ(m.block_table(1).size(), 2u);
  m.free(1);
  m.free(1);
  EXPECT_TRUE(m.idle());
  EXPECT_EQ(m.num_free_blocks(), 8);
}

TEST(BlockManager, MisuseIsALogicError) {
  BlockManager m(8, 4, true);
  Ids p = range(0, 8);
  prefill(m, 1, p);
  m.free(1);
  ASSERT_TRUE(m.allocate(2, 4));
  EXPECT_THROW(m.attach_cached_prefix(2, p), std::logic_error);
  EXPECT_EQ(m.attach_cached_prefix(3, concat(p, {1})), 8);
  BlockManagerStats before = m.stats();
  EXPECT_THROW(m.attach_cached_prefix(3, concat(p, {1})), std::logic_error);
  EXPECT_EQ(m.stats().prefix_queries, before.prefix_queries);
  EXPECT_EQ(m.stats().used_blocks, before.used_blocks);
  EXPECT_EQ(m.block_table(3).size(), 2u);

  EXPECT_THROW(m.commit(2, p, 8), std::logic_error);  // holds one block, claims two
  EXPECT_THROW(m.commit(2, head(p, 3), 4), std::invalid_argument);
  EXPECT_THROW(m.commit(7, p, 1), std::logic_error);
  m.commit(7, p, 0);  // nothing computed, nothing held: fine
}

TEST(BlockManager, WithoutPrefixCachingNothingIsShared) {
  BlockManager m(8, 4, false);
  Ids p = range(0, 12);
  EXPECT_EQ(prefill(m, 1, p), 0);
  m.free(1);
  EXPECT_EQ(m.stats().cached_free_blocks, 0);
  EXPECT_EQ(m.attach_cached_prefix(2, p), 0);
  EXPECT_EQ(m.stats().prefix_queries, 0u);
  EXPECT_EQ(m.stats().prefix_hits, 0u);
  EXPECT_TRUE(m.idle());
  EXPECT_EQ(m.num_free_blocks(), 8);
}

// A reference that names cached blocks by their whole token prefix and finds the LRU victim by a
// scan: obviously right and slow. The manager must agree with it on every answer, and its block
// tables must map one to one onto the reference's.
class ReferenceModel {
 public:
  ReferenceModel(int num_blocks, int block_size) : bs_(block_size), blocks_(num_blocks) {
    for (int b = 0; b < num_blocks; ++b) plain_.insert(b);
  }

  int attach(SeqId seq, const Ids& tokens) {
    if (tokens.empty()) return 0;
    Seq& s = seqs_[seq];
    int max_blocks = static_cast<int>((tokens.size() - 1) / bs_);
    for (int i = 0; i < max_blocks; ++i) {
      auto it = cache_.find(head(tokens, (i + 1) * bs_));
      if (it == cache_.end()) break;
      s.table.push_back(it->second);
    }
    for (int b : s.table) ++blocks_[b].ref;
    s.processed = static_cast<int>(s.table.size());
    queries_ += tokens.size();
    hits_ += s.table.size() * bs_;
    int attached = s.processed * bs_;
    if (s.table.empty()) seqs_.erase(seq);
    return attached;
  }

  int needed(SeqId seq, int num_tokens) const {
    auto it = seqs_.find(seq);
    int held = it == seqs_.end() ? 0 : static_cast<int>(it->second.table.size());
    return std::max(0, (num_tokens + bs_ - 1) / bs_ - held);
  }

  bool allocate(SeqId seq, int num_tokens) {
    int need = needed(seq, num_tokens);
    if (need == 0) return true;
    if (need > free_count()) return false;
    for (int i = 0; i < need; ++i) seqs_[seq].table.push_back(take());
    return true;
  }

  void commit(SeqId seq, const Ids& tokens, int num_computed) {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) return;
    Seq& s = it->second;
    for (; s.processed < num_computed / bs_; ++s.processed) {
      Ids prefix = head(tokens, (s.processed + 1) * bs_);
      if (cache_.contains(prefix)) continue;
      int b = s.table[s.processed];
      cache_[prefix] = b;
      blocks_[b].prefix = prefix;
    }
  }

  void free(SeqId seq) {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) return;
    for (auto b = it->second.table.rbegin(); b != it->second.table.rend(); ++b) {
      if (--blocks_[*b].ref > 0) continue;
      if (blocks_[*b].prefix)
        blocks_[*b].freed_at = ++clock_;
      else
        plain_.insert(*b);
    }
    seqs_.erase(it);
  }

  void reset() {
    for (int b = 0; b < static_cast<int>(blocks_.size()); ++b) {
      if (blocks_[b].ref == 0 && blocks_[b].prefix) {
        cache_.erase(*blocks_[b].prefix);
        blocks_[b].prefix.reset();
        plain_.insert(b);
      }
    }
  }

  int used() const {
    return static_cast<int>(std::ranges::count_if(blocks_, [](const Block& b) { return b.ref > 0; }));
  }
  int cached_free() const {
    return static_cast<int>(std::ranges::count_if(blocks_, [](const Block& b) { return b.ref == 0 && b.prefix; }));
  }
  int free_count() const { return static_cast<int>(plain_.size()) + cached_free(); }
  uint64_t queries() const { return queries_; }
  uint64_t hits() const { return hits_; }
  const Table* table(SeqId seq) const {
    auto it = seqs_.find(seq);
    return it == seqs_.end() ? nullptr : &it->second.table;
  }

 private:
  struct Block {
    int ref = 0;
    std::optional<Ids> prefix;
    uint64_t freed_at = 0;
  };
  struct Seq {
    Table table;
    int processed = 0;
  };

  int take() {
    if (!plain_.empty()) {
      int b = *plain_.begin();
      plain_.erase(plain_.begin());
      blocks_[b].ref = 1;
      return b;
    }
    int victim = -1;
    for (int b = 0; b < static_cast<int>(blocks_.size()); ++b)
      if (blocks_[b].ref == 0 && blocks_[b].prefix && (victim < 0 || blocks_[b].freed_at < blocks_[victim].freed_at))
        victim = b;
    cache_.erase(*blocks_[victim].prefix);
    blocks_[victim].prefix.reset();
    blocks_[victim].ref = 1;
    return victim;
  }

  int bs_;
  std::vector<Block> blocks_;
  std::set<int> plain_;
  std::map<Ids, int> cache_;
  std::map<SeqId, Seq> seqs_;
  uint64_t clock_ = 0;
  uint64_t queries_ = 0;
  uint64_t hits_ = 0;
};

// Drives a manager and the reference with the calls a scheduler makes (prefill in chunks, decode,
// preemption, abort), over prompts drawn from a few shared system prompts and a small alphabet so
// that blocks repeat, and checks after every call.
class Stress {
 public:
  Stress(uint32_t seed, int num_blocks, int block_size)
      : rng_(seed), bs_(block_size), m_(num_blocks, block_size, true), ref_(num_blocks, block_size),
        content_(num_blocks) {
    for (int f = 0; f < 5; ++f) families_.push_back(random_ids(std::uniform_int_distribution<int>(0, 24)(rng_)));
  }

  void run(int steps) {
    for (step_ = 0; step_ < steps && !::testing::Test::HasFailure(); ++step_) {
      int op = pick(100);
      if (op < 20) {
        admit();
      } else if (op < 80) {
        if (!reqs_.empty()) advance(random_req());
      } else if (op < 84) {
        if (!reqs_.empty()) finish(random_req());  // abort; most requests run to their length
      } else if (op < 86) {
        m_.reset_prefix_cache();
        ref_.reset();
        ++resets_;
      } else if (op < 89) {
        m_.free(1'000'000 + pick(10));  // never admitted
      } else if (op < 92) {
        misuse();
      } else if (!reqs_.empty()) {
        recommit(random_req());
      }
      check();
    }
    while (!reqs_.empty() && !::testing::Test::HasFailure()) {
      finish(reqs_.begin()->first);
      check();
    }
    EXPECT_TRUE(m_.idle());
    EXPECT_EQ(m_.stats().used_blocks, 0);
    EXPECT_EQ(m_.num_free_blocks(), m_.num_blocks());
  }

  uint64_t hits() const { return m_.stats().prefix_hits; }
  uint64_t queries() const { return m_.stats().prefix_queries; }
  int refusals() const { return refusals_; }
  int evictions() const { return evictions_; }

 private:
  struct Req {
    Ids tokens;
    size_t final_len = 0;
    int computed = 0;
    bool running = false;  // holds blocks (attached or allocated) since its last (re)admission
  };

  int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }
  Ids random_ids(int n) {
    Ids ids(n);
    for (int32_t& t : ids) t = pick(3);
    return ids;
  }
  SeqId random_req() {
    auto it = reqs_.begin();
    std::advance(it, pick(static_cast<int>(reqs_.size())));
    return it->first;
  }

  void admit() {
    if (reqs_.size() >= 10) return;
    const Ids& family = families_[pick(static_cast<int>(families_.size()))];
    Req r;
    r.tokens = concat(head(family, pick(static_cast<int>(family.size()) + 1)), random_ids(1 + pick(10)));
    r.final_len = r.tokens.size() + pick(14);
    reqs_[next_id_++] = std::move(r);
  }

  // One scheduler step for the request: (re)admit with the cache, then a prefill chunk or a decode
  // token; out of blocks, it waits or is preempted.
  void advance(SeqId id) {
    Req& r = reqs_.at(id);
    if (!r.running) {
      int got = m_.attach_cached_prefix(id, r.tokens);
      ASSERT_EQ(got, ref_.attach(id, r.tokens)) << "attach, step " << step_;
      ASSERT_LT(got, static_cast<int>(r.tokens.size()));
      ASSERT_EQ(got % bs_, 0);
      const Table& t = m_.block_table(id);
      ASSERT_EQ(static_cast<int>(t.size()) * bs_, got);
      for (size_t j = 0; j < t.size(); ++j) {
        // The KV a hit hands out was written for exactly this prefix.
        ASSERT_TRUE(content_[t[j]].has_value()) << "attached block " << t[j] << " was never committed";
        ASSERT_EQ(*content_[t[j]], head(r.tokens, static_cast<int>(j + 1) * bs_)) << "block " << t[j];
      }
      r.computed = got;
      r.running = true;
    }
    int target;
    if (r.computed < static_cast<int>(r.tokens.size())) {
      target = std::min(static_cast<int>(r.tokens.size()), r.computed + 1 + pick(9));
    } else if (r.tokens.size() < r.final_len) {
      r.tokens.push_back(pick(3));  // sampled last step, its KV computed now
      target = static_cast<int>(r.tokens.size());
    } else {
      finish(id);
      return;
    }
    ASSERT_EQ(m_.blocks_needed(id, target), ref_.needed(id, target));
    size_t held = m_.block_table(id).size();
    int plain = m_.num_free_blocks() - m_.stats().cached_free_blocks;
    int need = m_.blocks_needed(id, target);
    bool ok = m_.allocate(id, target);
    ASSERT_EQ(ok, ref_.allocate(id, target)) << "allocate, step " << step_;
    if (!ok) {
      ASSERT_EQ(m_.block_table(id).size(), held);
      ++refusals_;
      if (pick(2) == 0) {  // preempt: drop everything, recompute prompt and output later
        m_.free(id);
        ref_.free(id);
        r.running = false;
        r.computed = 0;
      }
      return;
    }
    evictions_ += std::max(0, need - plain);
    const Table& t = m_.block_table(id);
    for (size_t j = held; j < t.size(); ++j) content_[t[j]].reset();  // fresh block, about to be overwritten
    commit(id, target);
    r.computed = target;
  }

  void commit(SeqId id, int num_computed) {
    const Req& r = reqs_.at(id);
    m_.commit(id, r.tokens, num_computed);
    ref_.commit(id, r.tokens, num_computed);
    const Table& t = m_.block_table(id);
    for (int j = 0; j < num_computed / bs_; ++j) {
      Ids prefix = head(r.tokens, (j + 1) * bs_);
      if (content_[t[j]]) {
        ASSERT_EQ(*content_[t[j]], prefix) << "block " << t[j] << " is shared by different prefixes";
      }
      content_[t[j]] = prefix;
    }
  }

  void recommit(SeqId id) {
    if (reqs_.at(id).running) commit(id, reqs_.at(id).computed);
  }

  void finish(SeqId id) {
    m_.free(id);
    ref_.free(id);
    reqs_.erase(id);
  }

  void misuse() {
    for (auto& [id, r] : reqs_) {
      if (!r.running || m_.block_table(id).empty()) continue;
      BlockManagerStats before = m_.stats();
      EXPECT_THROW(m_.attach_cached_prefix(id, r.tokens), std::logic_error);
      EXPECT_EQ(m_.stats().prefix_queries, before.prefix_queries);
      EXPECT_EQ(m_.stats().used_blocks, before.used_blocks);
      return;
    }
  }

  void check() {
    SCOPED_TRACE("step " + std::to_string(step_));
    std::map<int32_t, int> holders;
    std::map<int32_t, int32_t> to_ref, from_ref;
    for (const auto& [id, r] : reqs_) {
      const Table& t = m_.block_table(id);
      const Table* rt = ref_.table(id);
      ASSERT_EQ(t.size(), rt ? rt->size() : 0u) << "seq " << id;
      std::set<int32_t> distinct(t.begin(), t.end());
      ASSERT_EQ(distinct.size(), t.size()) << "seq " << id << " holds a block twice";
      if (r.running) {
        ASSERT_GE(static_cast<int>(t.size()) * bs_, r.computed);
      }
      for (size_t j = 0; j < t.size(); ++j) {
        ASSERT_TRUE(t[j] >= 0 && t[j] < m_.num_blocks());
        ++holders[t[j]];
        // The same sharing pattern as the reference: block b of the manager is always block r
        // of the reference and vice versa.
        auto [a, fresh_a] = to_ref.emplace(t[j], (*rt)[j]);
        auto [b, fresh_b] = from_ref.emplace((*rt)[j], t[j]);
        ASSERT_EQ(a->second, (*rt)[j]) << "seq " << id << " position " << j;
        ASSERT_EQ(b->second, t[j]) << "seq " << id << " position " << j;
      }
    }
    for (const auto& [b, n] : holders) {
      if (n > 1) {
        ASSERT_TRUE(content_[b].has_value()) << "uncommitted block " << b << " shared by " << n;
      }
    }
    BlockManagerStats s = m_.stats();
    ASSERT_EQ(s.used_blocks, static_cast<int>(holders.size()));  // no held block counted free
    ASSERT_EQ(s.used_blocks, ref_.used());
    ASSERT_EQ(s.cached_free_blocks, ref_.cached_free());
    ASSERT_EQ(m_.num_free_blocks(), m_.num_blocks() - s.used_blocks);
    ASSERT_EQ(m_.num_free_blocks(), ref_.free_count());
    ASSERT_EQ(s.prefix_queries, ref_.queries());
    ASSERT_EQ(s.prefix_hits, ref_.hits());
    ASSERT_DOUBLE_EQ(m_.usage(), static_cast<double>(s.used_blocks) / m_.num_blocks());
    ASSERT_EQ(m_.idle(), holders.empty());
  }

  std::mt19937 rng_;
  int bs_;
  BlockManager m_;
  ReferenceModel ref_;
  std::vector<std::optional<Ids>> content_;  // per block: the prefix whose KV it holds, once committed
  std::vector<Ids> families_;
  std::map<SeqId, Req> reqs_;
  SeqId next_id_ = 1;
  int step_ = 0;
  int refusals_ = 0;
  int evictions_ = 0;
  int resets_ = 0;
};

TEST(BlockManager, RandomizedAgainstReferenceModel) {
  for (uint32_t seed : {1u, 2u, 3u, 4u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Stress stress(seed, 24, 4);
    stress.run(5000);
    if (HasFailure()) return;
    // The run must have exercised the interesting paths, not only passed vacuously.
    EXPECT_GT(stress.hits(), stress.queries() / 10);
    EXPECT_GT(stress.refusals(), 50);
    EXPECT_GT(stress.evictions(), 200);
  }
}

}  // namespace
}  // namespace troupe
