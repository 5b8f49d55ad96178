// The one-token GEMV for big weights: the weight streams through shared memory by the bulk copy
// engine instead of through registers. Each warp of a one-wave grid owns a contiguous run of rows and
// keeps kStages chunks of it in flight (cp.async.bulk completing on an mbarrier), so the loads in
// flight no longer cost registers and a warp's stream is one long sequential read; 16 warps a CTA
// keep the FMAs fed. The first chunks are requested before the wait for the previous kernel.
//
// Alone on an H200 (tools/stream_gemv_bench.cu of commit b560e9c, weights cold, 64 calls a graph),
// µs a call, this kernel against kernels/gemv.cu's register kernel and cuBLASLt: llama-3.1-8b's tp2
// down 4096 × 7168 17.0 against 23.0 and 18.6, its LM head 237 against 251 and 239 (the read-only floor
// 226), its down 4096 × 14336 30.0 against 45.0 and 30.2. Which projections it takes was measured in
// the decode step (stream_gemv_takes, below). Same bits as the register kernel (gemv_parts.cuh).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

#include "kernels/gemv_parts.cuh"
#include "kernels/mbarrier.cuh"
#include "kernels/pushed_all_reduce.cuh"

namespace troupe::cuda {
namespace gemv {
namespace {

constexpr int kStreamWarps = 16;
constexpr int kStreamThreads = kStreamWarps * 32;
constexpr int kStages = 2;

// Copies `bytes` (a multiple of 16, both ends 16-byte aligned) from global to shared memory; the
// barrier's current phase completes once they have landed.
__device__ __forceinline__ void copy_chunk(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  mbarrier_expect_bytes(bar, bytes);
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
}

// Row `local` of the warp's run: the value lane `local` loaded up front, or a load where the run is
// longer than a warp.
__device__ __forceinline__ float per_row(float held, int64_t local, const bf16* at) {
  const float shuffled = __shfl_sync(0xffffffffu, held, static_cast<int>(local & 31));
  return local < 32 ? shuffled : __bfloat162float(*at);
}

// Shared memory: each warp's kStages chunks of `chunk` elements, the barriers, then the staged input.
size_t smem_bytes(int64_t k, int chunk) {
  return static_cast<size_t>(kStreamWarps) * kStages * (static_cast<size_t>(chunk) * 2 + 8) +
         static_cast<size_t>(k) * 2;
}

// Warp g of the grid's G takes rows [n g / G, n (g + 1) / G), one contiguous run of the weight read
// chunk by chunk (a chunk: a divisor of k, or whole rows; k is a multiple of 256, so 32 lanes' vectors
// never straddle two rows).
// `early` of each warp's first kStages chunks are requested before the wait, the rest after it.
template <GemvInput IN, Out OUT>
__global__ void __launch_bounds__(kStreamThreads) stream_gemv_kernel(const Params p, const int chunk, const int early) {
  constexpr bool ADD = OUT == Out::add;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* const rings = reinterpret_cast<bf16*>(smem);
  uint64_t* const bars = reinterpret_cast<uint64_t*>(rings + static_cast<int64_t>(kStreamWarps) * kStages * chunk);
  Vec8* const staged = reinterpret_cast<Vec8*>(bars + kStreamWarps * kStages);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kStreamWarps + warp;
  const int64_t G = static_cast<int64_t>(gridDim.x) * kStreamWarps;
  const int64_t r_begin = p.n * g / G, rows = p.n * (g + 1) / G - r_begin;
  const int64_t total = rows * p.k;  // elements of the run
  const int64_t chunks = (total + chunk - 1) / chunk;
  bf16* const ring = rings + static_cast<int64_t>(warp) * kStages * chunk;
  uint64_t* const bar = bars + warp * kStages;
  const bf16* const run = p.w + r_begin * p.k;
  // Chunk c's elements: `chunk`, or what is left of the run.
  auto elements = [&](int64_t c) { return total - c * chunk < chunk ? total - c * chunk : int64_t{chunk}; };
  auto request = [&](int64_t c) {
    copy_chunk(ring + (c % kStages) * chunk, run + c * chunk, static_cast<uint32_t>(elements(c) * 2),
               &bar[c % kStages]);
  };
  if (lane == 0) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) mbarrier_init(&bar[s]);
    mbarrier_init_fence();
    for (int64_t c = 0; c < chunks && c < early; ++c) request(c);
  }
  prefetch_norm_weight<IN, kStreamThreads>(p);
  let_next_kernel_start();
  wait_for_previous_kernel();
  if (lane == 0)
    for (int64_t c = early; c < chunks && c < kStages; ++c) request(c);

  uint32_t call = 0;
  if constexpr (OUT == Out::push) call = pushed::current_call(p.ar);
  // What the epilogue of the run's first 32 rows reads, loaded beside the staging.
  float before = 0.0f, bias = 0.0f;
  if (lane < rows) {
    if (ADD) before = __bfloat162float(p.out[r_begin + lane]);
    if (p.bias) bias = __bfloat162float(p.bias[r_begin + lane]);
  }
  stage_input<1, IN, kStreamThreads>(p, staged);

  const int64_t row_vecs = p.k / kVec;
  float acc = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) {
    mbarrier_wait(&bar[c % kStages], static_cast<uint32_t>((c / kStages) & 1));
    const Vec8* const buf = reinterpret_cast<const Vec8*>(ring + (c % kStages) * chunk);
    const int64_t first = c * chunk / kVec;  // the chunk's first vector in the run
    const int vecs = static_cast<int>(elements(c) / kVec);
    for (int v0 = 0; v0 < vecs;) {  // the chunk's part of one row at a time
      const int64_t local = (first + v0) / row_vecs;
      const int64_t col0 = first + v0 - local * row_vecs;
      const int seg = static_cast<int>(vecs - v0 < row_vecs - col0 ? vecs - v0 : row_vecs - col0);
#pragma unroll 4
      for (int j = lane; j < seg; j += 32) accumulate(buf[v0 + j], staged[col0 + j], acc);
      v0 += seg;
      if (col0 + seg < row_vecs) continue;
      // The row is done: the register kernel's butterfly and epilogue.
      const int64_t row = r_begin + local;
      float value = warp_sum(acc);
      acc = 0.0f;
      if (p.bias) value += per_row(bias, local, p.bias + row);
      if (ADD) {
        const float was = per_row(before, local, p.out + row);
        if (lane == 0) p.out[row] = __float2bfloat16_rn(__bfloat162float(__float2bfloat16_rn(value)) + was);
      } else {
        const bf16 out = __float2bfloat16(value);
        if (lane == 0) p.out[row] = out;
        if constexpr (OUT == Out::push) {
          // Lane q sends to rank q.
          if (lane < p.ar.ranks && lane != p.ar.rank)
            packs::store_volatile(reinterpret_cast<uint16_t*>(pushed::slot(p.ar, lane, call, p.ar.rank)) + row,
                                  packs::scrub_element(__bfloat16_as_ushort(out)));
        }
      }
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
    if (lane == 0 && c + kStages < chunks) request(c + kStages);
  }
}

// A chunk's elements: k itself up to `most`, else k's largest divisor of at most `most` that is a
// multiple of 256; below `most`, as many whole rows as fit.
int chunk_elements(int64_t k, int64_t most) {
  if (k >= most) {
    for (int64_t parts = (k + most - 1) / most;; ++parts)
      if (k % parts == 0 && (k / parts) % 256 == 0) return static_cast<int>(k / parts);
  }
  return static_cast<int>(most / k * k);
}

// Elements a chunk holds at most: 2048 (4 KB), so that a CTA (128 KB of stages) leaves room for the
// next kernel's beside it. TROUPE_STREAM_GEMV_CHUNK sets it (a multiple of 256), to measure.
int64_t most_chunk_elements() {
  static const int64_t most = std::max<int64_t>(256, switch_value("TROUPE_STREAM_GEMV_CHUNK", 2048) / 256 * 256);
  return most;
}

// Chunks a warp requests before the wait for the previous kernel: all its stages. Fewer leave more
// of the memory's bandwidth to the kernels still running, but on 4 × H100 llama-3.1-8b's decode step
// took 5.827 / 5.865 / 5.984 ms at tp1 with 2 / 1 / 0, 3.467 / 3.480 / 3.554 at tp2 and 2.050 / 2.036 /
// 2.055 at tp4. TROUPE_STREAM_GEMV_EARLY sets it, to measure.
int early_chunks() {
  static const int early =
      static_cast<int>(std::clamp<int64_t>(switch_value("TROUPE_STREAM_GEMV_EARLY", kStages), 0, kStages));
  return early;
}

// SMs a launch leaves without a CTA: at least one for the projections that do not follow a SwiGLU
// (gate_up, the LM head), so that their one wave never waits for the last CTA of the kernel before it
// (the down projection before the next layer's gate_up ends unevenly, and at tp2 the gather before
// gate_up holds an SM: its 120 KB kept one of gate_up's 132 CTAs off until it ended). llama-3.1-8b's
// batch-1 step on 4 × H200, two alternations: tp1 4.254 -> 4.235 ms, tp2 2.561 -> 2.551, tp4 1.667 ->
// 1.667; a spare SM for the down projections as well cost tp4 9 µs and gained nothing elsewhere, two
// cost more. TROUPE_STREAM_GEMV_SPARE_OTHER and _DOWN set them, to measure.
int64_t spare_sms(GemvInput in) {
  static const int64_t other = std::clamp<int64_t>(switch_value("TROUPE_STREAM_GEMV_SPARE_OTHER", 1), 0, 8);
  static const int64_t down = std::clamp<int64_t>(switch_value("TROUPE_STREAM_GEMV_SPARE_DOWN", 0), 0, 8);
  return in == GemvInput::silu_mul ? down : other;
}
// Those projections also take the fewest CTAs that give the warps as many rows as the spare SMs
// leave them (tp2's 14336-row gate_up: 128 CTAs of 7 rows a warp instead of 131, some of whose warps
// had 6), which frees SMs and costs no time: their slowest warp has as many rows as before. 4 × H200:
// tp2 2.514 -> 2.509 ms (two alternations) and 2.528 -> 2.523 (another machine), tp1 4.183 -> 4.184
// and 4.190 -> 4.193, tp4 1.664 -> 1.664 and 1.661 -> 1.663; the same for the down projections cost
// tp1 8 µs and tp4 19. TROUPE_STREAM_GEMV_BALANCED=0 turns it off, to measure.
bool balanced_grids() {
  static const bool on = switched_on("TROUPE_STREAM_GEMV_BALANCED");
  return on;
}

template <GemvInput IN, Out OUT>
void launch(const Params& p, cudaStream_t stream) {
  const int chunk = chunk_elements(p.k, most_chunk_elements());
  // More than half an SM's shared memory, so that the block scheduler never puts two CTAs of one
  // launch on one SM (two whose stages fit would, leaving SMs without: with 2 KB chunks a step took
  // twice as long on an H200).
  const size_t smem = std::max<size_t>(smem_bytes(p.k, chunk), 116 * 1024);
  static std::atomic<uint64_t> granted{0};
  once_per_device(granted, [] {
    // All the dynamic shared memory a block may opt into beside the kernel's static shared memory.
    const void* kernel = reinterpret_cast<const void*>(&stream_gemv_kernel<IN, OUT>);
    const int optin = device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>();
    cudaFuncAttributes attributes{};
    TROUPE_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
    TROUPE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           optin - static_cast<int>(attributes.sharedSizeBytes)));
  });
  // One wave: a CTA per SM but the spare ones (fewer where there are fewer rows than warps).
  const int64_t sms = device_attribute<cudaDevAttrMultiProcessorCount>();
  int64_t ctas = std::min<int64_t>(sms - spare_sms(IN), (p.n + kStreamWarps - 1) / kStreamWarps);
  if (IN != GemvInput::silu_mul && balanced_grids()) {
    const int64_t rows_per_warp = (p.n + ctas * kStreamWarps - 1) / (ctas * kStreamWarps);
    ctas = (p.n + rows_per_warp * kStreamWarps - 1) / (rows_per_warp * kStreamWarps);
  }
  launch_overlapped<stream_gemv_kernel<IN, OUT>>(dim3(static_cast<unsigned>(ctas)), dim3(kStreamThreads), smem, stream,
                                                 p, chunk, early_chunks());
  TROUPE_CUDA_CHECK_LAUNCH(stream_gemv_kernel);
}

template <GemvInput IN>
void launch_out(const Params& p, Out out, cudaStream_t stream) {
  if (out == Out::add) return launch<IN, Out::add>(p, stream);
  if constexpr (IN != GemvInput::rms_norm)
    if (out == Out::push) return launch<IN, Out::push>(p, stream);
  launch<IN, Out::store>(p, stream);
}

}  // namespace

void launch_stream_gemv(const Params& p, GemvInput in, Out out, cudaStream_t stream) {
  switch (in) {
    case GemvInput::plain: return launch_out<GemvInput::plain>(p, out, stream);
    case GemvInput::staged: return launch_out<GemvInput::plain>(p, out, stream);  // stages every input
    case GemvInput::rms_norm: return launch_out<GemvInput::rms_norm>(p, out, stream);
    case GemvInput::silu_mul: return launch_out<GemvInput::silu_mul>(p, out, stream);
  }
}

}  // namespace gemv

namespace {

// Weight shapes "NxK,…" named by an environment variable, to measure.
class ShapeList {
 public:
  explicit ShapeList(const char* variable) {
    const char* v = std::getenv(variable);
    if (v) list_ = "," + std::string(v) + ",";
  }
  bool holds(int64_t n, int64_t k) const {
    return !list_.empty() && list_.find("," + std::to_string(n) + "x" + std::to_string(k) + ",") != std::string::npos;
  }

 private:
  std::string list_;
};

}  // namespace

// One token, k a multiple of 256 whose input fits shared memory beside the stages, and either a
// SwiGLU input (the down projection) of at least 16 MiB or a weight above the register kernel's
// 64 MiB (where the alternative is cuBLASLt and a kernel of its own for the norm or the SwiGLU) with
// rows of at least 4096, the ones measured: qwen3's LM heads (rows of 1024 and 2048) keep the
// register kernel's wide path, which their batch-1 step was measured with.
// Measured in llama-3.1-8b's decode step on 4 × H200, each shape apart (TROUPE_STREAM_GEMV_SKIP):
// streamed, the down projections and the weights above 64 MiB shortened the step at tp1, tp2 and tp4
// (tp2's 117 MB gate_up by 105 µs a step, its down by 58), while a streamed qkv, o or tp4's 56 MiB
// gate_up lengthened it (tp4's gate_up by 107 µs): a CTA's 128 KB of stages keeps the next kernel's
// CTAs (the attention's, the down projection's) from starting beside it, where the register kernel's
// leave them room. (With the attention's two stages at short contexts, tp1's 6144 × 4096 qkv streamed
// gained 42 µs a step in the bench, but lost 15 where the graphs are sized as troupe serve sizes them,
// five stages: not taken; docs/benchmarks.md, eleventh session.) TROUPE_STREAM_GEMV_MB sets the
// SwiGLU threshold (0: never stream), to measure.
bool stream_gemv_takes(int64_t tokens, int64_t n, int64_t k, GemvInput input) {
  static const int64_t min_bytes = switch_value("TROUPE_STREAM_GEMV_MB", 16) << 20;
  if (min_bytes <= 0 || tokens != 1 || k % 256 != 0 || k > 24576) return false;
  // TROUPE_STREAM_GEMV_SKIP="NxK,…": shapes kept on the register kernel; TROUPE_STREAM_GEMV_TAKE:
  // shapes streamed; to measure one at a time.
  static const ShapeList skip("TROUPE_STREAM_GEMV_SKIP"), take("TROUPE_STREAM_GEMV_TAKE");
  if (skip.holds(n, k)) return false;
  if (take.holds(n, k)) return true;
  const int64_t bytes = n * k * 2;
  return (bytes > (kGemvMaxWeightMiB << 20) && k >= 4096) || (input == GemvInput::silu_mul && bytes >= min_bytes);
}

}  // namespace troupe::cuda
