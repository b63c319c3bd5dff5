// The problem description shared by the CPU loops and the CUDA kernels.
//
// Plain data only (pointers, sizes, enums), so one struct can be passed by value to a kernel. The FFI
// layer (cpp/ffi) fills it from XLA buffers after validating every size; nothing downstream re-checks.
#pragma once

#include <cstdint>

// Functions callable from host code and from kernels.
#if defined(__CUDACC__)
#define QKROPE_HD __host__ __device__ __forceinline__
#else
#define QKROPE_HD inline
#endif

namespace qkrope {

enum class Style : int32_t { kNeox = 0, kGptj = 1 };

enum class ElemType : int32_t { kF32 = 0, kBF16 = 1, kF16 = 2 };

QKROPE_HD int elem_bytes(ElemType t) { return t == ElemType::kF32 ? 4 : 2; }

// One group of heads laid out token-major: head h of token t starts at
// base + t * token_stride + h * head_dim (all in elements of the q/k dtype).
struct HeadGroup {
  const void* in = nullptr;
  void* out = nullptr;       // forward output / backward dx; may equal `in` (aliased, in place)
  const void* grad = nullptr;  // backward only: the cotangent dy, same layout as `in`
  int64_t token_stride = 0;
  int32_t num_heads = 0;
};

// Where cos/sin come from: a [rows, rotary_dim] table (cos in the first half of a row, sin in the
// second), or an inv_freq vector of rotary_dim / 2 float32 values (angles computed on the fly).
struct RopeTable {
  const void* data = nullptr;
  ElemType dtype = ElemType::kF32;
  bool is_cache = true;
  int64_t rows = 0;  // cache rows (positions are clamped to [0, rows)); unused for inv_freq
};

struct Problem {
  // Groups 0 and 1 are q and k (normalised and rotated); group 2 is V of a packed qkv that the kernel
  // only copies (num_heads == 0 when the output aliases the input, so V is already in place).
  HeadGroup group[3];
  const void* weight[2] = {nullptr, nullptr};  // q_weight, k_weight; nullptr means scale 1
  ElemType weight_dtype[2] = {ElemType::kF32, ElemType::kF32};

  const void* positions = nullptr;
  bool positions_64 = false;
  RopeTable table;

  int64_t num_tokens = 0;
  int32_t head_dim = 0;
  int32_t rotary_dim = 0;
  Style style = Style::kNeox;
  ElemType dtype = ElemType::kF32;
  float eps = 1e-6f;
  float weight_offset = 0.0f;

  QKROPE_HD int32_t total_heads() const { return group[0].num_heads + group[1].num_heads + group[2].num_heads; }
  QKROPE_HD int64_t total_pairs() const { return num_tokens * static_cast<int64_t>(total_heads()); }
};

// Block sizes in warps: every kernel's launch bounds, and the single-pair forward's (a lean kernel of at most
// 54 registers a thread under these bounds, so blocks of up to 16 warps cost it nothing in registers).
inline constexpr int32_t kMaxWarpsPerBlock = 8;
inline constexpr int32_t kMaxSingleWarpsPerBlock = 16;

// How the CUDA kernels split the work; decided host-side at trace time and passed as attributes.
// The CPU target receives the same attributes and ignores them.
struct Launch {
  int32_t pairs_per_warp = 1;   // (token, head) pairs one warp owns: 1, 2, 4, 8 (16: auto dispatch only)
  int32_t warps_per_block = 4;  // 1..kMaxWarpsPerBlock
  // The block size where the forward launches its single-pair kernel instead (which only the launcher
  // decides: it sees the inputs' dtypes and alignment): 1..kMaxSingleWarpsPerBlock.
  int32_t single_warps_per_block = 8;
  bool pdl = false;             // programmatic dependent launch (overlap with the previous kernel)
  // Tuned forward kernels: each warp warms L2 with the positions and cos/sin rows of the pairs this far
  // ahead of its own (0: off), so later warps do not wait on two dependent DRAM round trips before
  // rotating. The generic kernels ignore it.
  int32_t prefetch_pairs = 0;
  // Tuned forward for the common inputs with two pairs per lane group: a grid of resident warps looping
  // over their tasks, the next one's loads in flight while the current one computes. Others ignore it.
  bool persistent = false;
  // Tuned forward for the common inputs at full rotary with two pairs per lane group: each warp copies its
  // tokens' cos/sin rows into shared memory (fewer registers, more latency per warp). Others ignore it.
  bool shared_rows = false;
  // The forward kernels' L2 policy for their head traffic (an L2Policy value; the backward ignores it).
  int32_t l2_policy = 0;
};

// Values of Launch::l2_policy.
enum class L2Policy : int32_t {
  kDefault = 0,  // no eviction priorities (the tuned kernels issue evict_normal hints, the others plain accesses)
  // The op's inputs are dead once read and its outputs are read next (attention, or the next call of a
  // chain): the heads are read evict-first and stored evict-last, the latter on as many of the output's
  // lines as half the L2 holds (all of them for a small output), the rest evict-first. Pays while the
  // output is not much larger than the L2 (the calibration's l2_keep_max_bytes); slower past it.
  kKeepOutputs = 1,
};

// Backward extras: float32 weight gradients, reduced deterministically from per-block partials.
// The tokens split into num_examples equal, contiguous runs (vmap over a batch makes one per batch
// element) and each run gets its own weight gradient.
struct BackwardOutputs {
  float* dweight[2] = {nullptr, nullptr};  // [num_examples, head_dim] each, or nullptr when that weight is absent
  float* partials = nullptr;               // [num_examples, blocks_per_example, 2, head_dim] scratch
  int64_t num_examples = 1;
  int64_t blocks_per_example = 1;
};

}  // namespace qkrope
