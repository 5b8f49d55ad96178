// The worker actor: one per device (here a CPU thread; a GPU later). Detached, so it has its own
// thread and may block inside collectives with its peers while a forward pass runs. It owns the
// backend, the model shard, the KV cache shard and, on the sampling rank, the samplers.
#pragma once

#include <array>
#include <filesystem>
#include <functional>
#include <string>

#include "actors/atoms.hpp"
#include "actors/trace.hpp"
#include "engine/model.hpp"
#include "engine/step_plan.hpp"

namespace troupe {

namespace cuda {
class PeerAllReduceGroup;
}

// A worker's seat in one NCCL group (a GPU layout of more than one device): which of its ShardComms
// the group is, and the group's rendezvous id. Every member of a group joins at once, so a worker
// joins its groups in the order of its seats, which follow one order of groups on every worker.
struct NcclSeat {
  enum class Slot : uint8_t { tp, moe, prev, next };
  Slot slot = Slot::tp;
  std::array<char, 128> id{};
  int rank = 0;  // in the group
  int size = 0;
  std::shared_ptr<cuda::PeerAllReduceGroup> peer;  // small all-reduces over peer memory; may be null
};
using NcclSeats = std::vector<NcclSeat>;

// The member of `comms` that a group in `slot` fills.
inline Communicator*& slot_of(ShardComms& comms, NcclSeat::Slot slot) {
  switch (slot) {
    case NcclSeat::Slot::tp: return comms.tp;
    case NcclSeat::Slot::moe: return comms.moe;
    case NcclSeat::Slot::prev: return comms.prev;
    case NcclSeat::Slot::next: return comms.next;
  }
  return comms.tp;
}

struct WorkerSpec {
  int rank = 0;  // in the world
  ModelShard shard;
  ShardComms comms;
  std::function<void(const std::string&)> abort_comms;  // fails its CPU thread groups: peers stop waiting
  // Whether the engine failed (a step of any worker); asked when this worker exits. May be null.
  std::function<bool()> engine_failed;
  std::filesystem::path model_dir;
  std::string device = "cpu";
  int device_index = 0;
  int max_positions = 0;
  bool dummy_weights = false;
  bool enforce_eager = false;  // no decode graphs
  double gpu_memory_utilization = 0.9;
  int max_batched_tokens = 2048;  // sizes the activation reserve kept out of the KV budget
  int max_seqs = 256;
  TraceRecorder* trace = nullptr;  // may be null
  // Fault injection (--inject-fault): this worker's step of that index (0: its first) fails as a
  // failed CUDA or NCCL call would, after its peers have been sent the same step. -1: never.
  int64_t fail_at_step = -1;
  std::vector<caf::actor> expert_shards;  // of this stage; each step's routing counts go to all of them
  caf::actor metrics;
};

// Reply to atoms::load: what the runtime needs to size the KV cache.
struct WorkerInfo {
  int rank = 0;
  uint64_t weight_bytes = 0;
  int64_t kv_bytes_per_block = 0;
  int64_t kv_budget_bytes = -1;  // device memory left for the KV cache; -1 where unknown (the CPU)
  std::string description;  // the start-up line: layers, heads, experts, bytes
};

using PlanPtr = std::shared_ptr<const StepPlan>;

// Protocol: (load, NcclSeats) -> WorkerInfo (the seats empty on the CPU and on one GPU); (allocate, int num_blocks, int block_size) -> int num_blocks;
// (run, PlanPtr) -> StepResult. Errors come back as StepResult::error (run) or caf errors (load).
caf::actor spawn_worker(caf::actor_system& system, WorkerSpec spec);

}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::WorkerInfo)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::NcclSeats)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::PlanPtr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::StepResult)
