#include "engine/block_manager.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace troupe {
namespace {

constexpr int32_t kNone = -1;
// The key a first block chains from; any constant works, a non-zero one keeps an all-zero block
// from hashing near zero.
constexpr uint64_t kRootKey = 0x6a09e667f3bcc908ULL;

// splitmix64's finalizer: a bijection on 64 bits in which every input bit flips about half the
// output bits, so chaining it over the ids spreads near-identical blocks far apart.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

uint64_t chain_key(uint64_t parent_key, std::span<const int32_t> ids) {
  uint64_t h = mix64(parent_key + 0x9e3779b97f4a7c15ULL);
  for (int32_t id : ids) h = mix64((h ^ static_cast<uint32_t>(id)) + 0x9e3779b97f4a7c15ULL);
  return h;
}

}  // namespace

// A prefix of full blocks is a node of a trie: its key (the hash chain), its parent node and its
// last block's token ids. The hash map finds a candidate node by key and the parent/ids comparison
// makes a 64-bit collision a miss rather than someone else's KV. A node names content, not a
// physical block: when its block is evicted the node stays (without a block) as long as a
// descendant or a sequence still needs it as a parent, so a later copy of the same prefix
// reconnects the cached blocks below it. That keeps lookups exactly "is every block of this prefix
// cached", as if the key were the token ids themselves.
struct BlockManager::Impl {
  struct Block {
    int32_t ref = 0;
    int32_t node = kNone;  // the prefix this block holds in the cache, if any
    int32_t prev = kNone;  // LRU neighbours while cached-free (ref 0 and a node)
    int32_t next = kNone;
  };
  struct Node {
    uint64_t key = 0;
    int32_t parent = kNone;
    int32_t block = kNone;
    int32_t refs = 0;  // child nodes plus sequences whose commit cursor stands here
  };
  struct Seq {
    std::vector<int32_t> table;
    int processed = 0;        // leading full blocks whose prefix commit has settled
    int32_t cursor = kNone;   // node of those blocks' prefix (kNone: the empty prefix)
    uint64_t cursor_key = kRootKey;
    bool broken = false;      // a true key collision stopped this sequence's caching
  };

  int block_size;
  int num_blocks;
  bool prefix_caching;
  std::vector<Block> blocks;
  std::vector<int32_t> free_blocks;  // plainly free, popped from the back
  int32_t lru_head = kNone;          // evicted first
  int32_t lru_tail = kNone;
  int lru_size = 0;
  int used = 0;
  std::vector<Node> nodes;
  std::vector<int32_t> node_tokens;  // block_size ids per node
  std::vector<int32_t> free_nodes;
  std::unordered_map<uint64_t, int32_t> by_key;
  std::unordered_map<SeqId, Seq> seqs;
  uint64_t queries = 0;
  uint64_t hits = 0;

  Impl(int n, int bs, bool caching) : block_size(bs), num_blocks(n), prefix_caching(caching), blocks(n) {
    free_blocks.reserve(n);
    for (int32_t b = n - 1; b >= 0; --b) free_blocks.push_back(b);  // hand out 0, 1, 2, ... first
  }

  std::span<const int32_t> ids_of(int32_t node) const {
    return {node_tokens.data() + static_cast<size_t>(node) * block_size, static_cast<size_t>(block_size)};
  }

  // The node holding exactly (parent's prefix + ids), or kNone.
  int32_t find_node(uint64_t key, int32_t parent, std::span<const int32_t> ids) const {
    auto it = by_key.find(key);
    if (it == by_key.end()) return kNone;
    const Node& n = nodes[it->second];
    if (n.parent != parent || !std::ranges::equal(ids_of(it->second), ids)) return kNone;
    return it->second;
  }

  int32_t new_node(uint64_t key, int32_t parent, std::span<const int32_t> ids) {
    int32_t id;
    if (!free_nodes.empty()) {
      id = free_nodes.back();
      free_nodes.pop_back();
    } else {
      id = static_cast<int32_t>(nodes.size());
      nodes.emplace_back();
      node_tokens.resize(node_tokens.size() + block_size);
    }
    nodes[id] = Node{key, parent, kNone, 0};
    std::ranges::copy(ids, node_tokens.begin() + static_cast<ptrdiff_t>(id) * block_size);
    if (parent != kNone) ++nodes[parent].refs;
    by_key.emplace(key, id);
    return id;
  }

  // Drops nodes that neither hold a block nor are needed as a parent, walking up the chain.
  void release_node(int32_t id) {
    while (id != kNone && nodes[id].refs == 0 && nodes[id].block == kNone) {
      by_key.erase(nodes[id].key);
      int32_t parent = nodes[id].parent;
      free_nodes.push_back(id);
      if (parent != kNone) --nodes[parent].refs;
      id = parent;
    }
  }

  void unref_node(int32_t id) {
    if (id == kNone) return;
    --nodes[id].refs;
    release_node(id);
  }

  void lru_push_back(int32_t b) {
    blocks[b].prev = lru_tail;
    blocks[b].next = kNone;
    (lru_tail == kNone ? lru_head : blocks[lru_tail].next) = b;
    lru_tail = b;
    ++lru_size;
  }

  void lru_remove(int32_t b) {
    Block& blk = blocks[b];
    (blk.prev == kNone ? lru_head : blocks[blk.prev].next) = blk.next;
    (blk.next == kNone ? lru_tail : blocks[blk.next].prev) = blk.prev;
    blk.prev = blk.next = kNone;
    --lru_size;
  }

  // The block stops holding a cached prefix; its node lives on only if something below needs it.
  void uncache(int32_t b) {
    int32_t node = blocks[b].node;
    blocks[b].node = kNone;
    nodes[node].block = kNone;
    release_node(node);
  }

  // A block for new KV: plainly free ones first, so cached prefixes survive as long as possible.
  int32_t take_block() {
    int32_t b;
    if (!free_blocks.empty()) {
      b = free_blocks.back();
      free_blocks.pop_back();
    } else {
      b = lru_head;
      lru_remove(b);
      uncache(b);
    }
    blocks[b].ref = 1;
    ++used;
    return b;
  }

  int blocks_for(int num_tokens) const {
    if (num_tokens < 0) throw std::invalid_argument("BlockManager: negative token count " + std::to_string(num_tokens));
    return static_cast<int>((static_cast<int64_t>(num_tokens) + block_size - 1) / block_size);
  }

  int available() const { return static_cast<int>(free_blocks.size()) + lru_size; }
};

BlockManager::BlockManager(int num_blocks, int block_size, bool enable_prefix_caching) {
  if (num_blocks < 0) throw std::invalid_argument("BlockManager: num_blocks must be >= 0, got " + std::to_string(num_blocks));
  if (block_size <= 0) throw std::invalid_argument("BlockManager: block_size must be > 0, got " + std::to_string(block_size));
  impl_ = std::make_unique<Impl>(num_blocks, block_size, enable_prefix_caching);
}

BlockManager::~BlockManager() = default;

int BlockManager::block_size() const { return impl_->block_size; }
int BlockManager::num_blocks() const { return impl_->num_blocks; }

int BlockManager::attach_cached_prefix(SeqId seq, std::span<const int32_t> tokens) {
  Impl& m = *impl_;
  if (auto it = m.seqs.find(seq); it != m.seqs.end() && !it->second.table.empty())
    throw std::logic_error("BlockManager::attach_cached_prefix: sequence " + std::to_string(seq) + " already holds blocks");
  if (!m.prefix_caching || tokens.empty()) return 0;

  const int bs = m.block_size;
  // The last token is always recomputed: its logits are what the step is for.
  const int max_blocks = static_cast<int>((tokens.size() - 1) / bs);
  std::vector<int32_t> table;
  int32_t node = kNone;
  uint64_t key = kRootKey;
  for (int i = 0; i < max_blocks; ++i) {
    auto ids = tokens.subspan(static_cast<size_t>(i) * bs, bs);
    uint64_t k = chain_key(key, ids);
    int32_t found = m.find_node(k, node, ids);
    // A node without a block is a prefix whose KV was evicted: the chain of usable blocks ends.
    if (found == kNone || m.nodes[found].block == kNone) break;
    table.push_back(m.nodes[found].block);
    node = found;
    key = k;
  }

  m.queries += tokens.size();
  m.hits += table.size() * static_cast<uint64_t>(bs);
  if (table.empty()) return 0;

  for (int32_t b : table) {
    if (m.blocks[b].ref++ == 0) {
      m.lru_remove(b);
      ++m.used;
    }
  }
  ++m.nodes[node].refs;
  Impl::Seq& s = m.seqs[seq];
  s.processed = static_cast<int>(table.size());
  s.cursor = node;
  s.cursor_key = key;
  s.table = std::move(table);
  return s.processed * bs;
}

bool BlockManager::allocate(SeqId seq, int num_tokens) {
  Impl& m = *impl_;
  int need = blocks_needed(seq, num_tokens);
  if (need == 0) return true;
  if (need > m.available()) return false;
  std::vector<int32_t>& table = m.seqs[seq].table;
  table.reserve(table.size() + need);
  for (int i = 0; i < need; ++i) table.push_back(m.take_block());
  return true;
}

int BlockManager::blocks_needed(SeqId seq, int num_tokens) const {
  const Impl& m = *impl_;
  int want = m.blocks_for(num_tokens);
  auto it = m.seqs.find(seq);
  int held = it == m.seqs.end() ? 0 : static_cast<int>(it->second.table.size());
  return std::max(0, want - held);
}

void BlockManager::commit(SeqId seq, std::span<const int32_t> tokens, int num_computed) {
  Impl& m = *impl_;
  if (num_computed < 0 || static_cast<size_t>(num_computed) > tokens.size())
    throw std::invalid_argument("BlockManager::commit: num_computed " + std::to_string(num_computed) + " outside the " +
                                std::to_string(tokens.size()) + " tokens given");
  auto it = m.seqs.find(seq);
  int64_t capacity = it == m.seqs.end() ? 0 : static_cast<int64_t>(it->second.table.size()) * m.block_size;
  if (num_computed > capacity)
    throw std::logic_error("BlockManager::commit: sequence " + std::to_string(seq) + " computed " +
                           std::to_string(num_computed) + " tokens but holds blocks for " + std::to_string(capacity));
  if (!m.prefix_caching || it == m.seqs.end()) return;

  Impl::Seq& s = it->second;
  const int bs = m.block_size;
  const int full = num_computed / bs;
  // Only blocks past the cursor are new, so a decode step costs O(1) however long the sequence is.
  for (; s.processed < full && !s.broken; ++s.processed) {
    auto ids = tokens.subspan(static_cast<size_t>(s.processed) * bs, bs);
    uint64_t key = chain_key(s.cursor_key, ids);
    int32_t node = m.find_node(key, s.cursor, ids);
    if (node == kNone) {
      if (m.by_key.contains(key)) {
        // Another prefix owns this 64-bit key. Caching nothing further is rare and safe; sharing
        // the slot would not be.
        s.broken = true;
        break;
      }
      node = m.new_node(key, s.cursor, ids);
    }
    if (m.nodes[node].block == kNone) {
      int32_t b = s.table[s.processed];
      m.nodes[node].block = b;
      m.blocks[b].node = node;
    }
    // else: another block already caches this prefix. Ours stays a private duplicate (vLLM does
    // the same): swapping it would change a block table a running step may be reading.
    ++m.nodes[node].refs;
    m.unref_node(s.cursor);
    s.cursor = node;
    s.cursor_key = key;
  }
}

void BlockManager::free(SeqId seq) {
  Impl& m = *impl_;
  auto it = m.seqs.find(seq);
  if (it == m.seqs.end()) return;
  const std::vector<int32_t>& table = it->second.table;
  // Tail first: a prefix's last blocks then sit nearer the LRU head and are evicted before its
  // first ones, which more requests share.
  for (auto b = table.rbegin(); b != table.rend(); ++b) {
    Impl::Block& blk = m.blocks[*b];
    if (--blk.ref > 0) continue;
    --m.used;
    if (blk.node != kNone)
      m.lru_push_back(*b);
    else
      m.free_blocks.push_back(*b);
  }
  m.unref_node(it->second.cursor);
  m.seqs.erase(it);
}

const std::vector<int32_t>& BlockManager::block_table(SeqId seq) const {
  static const std::vector<int32_t> kEmpty;
  auto it = impl_->seqs.find(seq);
  return it == impl_->seqs.end() ? kEmpty : it->second.table;
}

int BlockManager::num_free_blocks() const { return impl_->available(); }

double BlockManager::usage() const {
  return impl_->num_blocks == 0 ? 0.0 : static_cast<double>(impl_->used) / impl_->num_blocks;
}

BlockManagerStats BlockManager::stats() const {
  const Impl& m = *impl_;
  return {m.num_blocks, m.used, m.lru_size, m.queries, m.hits};
}

void BlockManager::reset_prefix_cache() {
  Impl& m = *impl_;
  while (m.lru_head != kNone) {
    int32_t b = m.lru_head;
    m.lru_remove(b);
    m.uncache(b);
    m.free_blocks.push_back(b);
  }
}

bool BlockManager::idle() const { return impl_->used == 0; }

}  // namespace troupe
