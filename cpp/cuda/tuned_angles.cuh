// Where the tuned forward's lanes get a pair's cos/sin from: registers held across the pairs of a token
// (HeldAngles), or rows a warp copies into shared memory with cp.async (SharedRows).
//
// Held angles are live from the first row's load, issued early so the position -> row chain overlaps the
// data loads, to the last pair's rotation: 2 * NA floats per run (16 registers for 128-dim bf16 heads at
// N = 8, whose 80 registers left 24 warps per SM on the H100 and H200). A row in flight through cp.async
// holds none; each pair reads its run from shared memory just before it rotates.
#pragma once

#include "cuda/async_copy.cuh"
#include "cuda/device_common.cuh"
#include "cuda/tuned_layout.cuh"

namespace qkrope::cuda {

// cos/sin of every run a lane of the tuned layout needs for one token's position (the identity for a
// pass-through lane of partial-rotary neox, which reads nothing; decided at compile time, so the other
// builds' PTX is what it was before the partial layout).
template <typename Lay, Inputs In, typename Lane>
__device__ __forceinline__ void load_tuned_angles(const KernelArgs& a, int64_t position, const Lane& lane,
                                                  float (&c)[Lay::AS][Lay::NA], float (&s)[Lay::AS][Lay::NA]) {
  if constexpr (Lane::kPartial) {
    if (!lane.partners) {
#pragma unroll
      for (int r = 0; r < Lay::AS; ++r) identity_angles<Lay::NA>(c[r], s[r]);
      return;
    }
  }
#pragma unroll
  for (int r = 0; r < Lay::AS; ++r) load_angles<Lay::NA, In>(a, position, Lay::angle_start(r, lane.gl), c[r], s[r]);
}

// Where the I pairs of one lane group live: validity, token, head group and element offset.
template <int I>
struct PairSlots {
  bool valid[I];
  int64_t token[I];
  int group[I];
  int64_t offset[I];

  // Pairs first_pair + i * stride, valid below `end`.
  __device__ __forceinline__ void locate(const KernelArgs& a, int64_t first_pair, int stride, int64_t end) {
    const Problem& p = a.p;
    PairCursor cur(first_pair, a.heads);
#pragma unroll
    for (int i = 0; i < I; ++i) {
      valid[i] = first_pair + static_cast<int64_t>(i) * stride < end;
      token[i] = cur.token;
      int local = 0;
      group[i] = split_head(p, cur.head, &local);
      offset[i] = head_offset(p, group[i], cur.token, local);
      cur.advance(stride, a.heads);
    }
  }
};

// The angles of the last token a lane group loaded, in registers; a pair of another token loads its own.
template <typename Lay, Inputs In>
class HeldAngles {
 public:
  // The first pair's row, as early as its position allows.
  template <typename Position, typename Lane>
  __device__ __forceinline__ void begin(const KernelArgs& a, const PairSlots<Lay::I>& at,
                                        const Position (&position)[Lay::I], const Lane& lane, bool branch_free) {
    if (branch_free || (at.valid[0] && at.group[0] < 2)) {
      load_tuned_angles<Lay, In>(a, position[0].value(a.p), lane, cs_, sn_);
      token_ = at.token[0];
    }
  }
  // Before pair i's norm: its row, if it is another token's.
  template <typename Position, typename Lane>
  __device__ __forceinline__ void prepare(const KernelArgs& a, const PairSlots<Lay::I>& at, int i,
                                          const Position (&position)[Lay::I], const Lane& lane) {
    if (at.valid[i] && at.group[i] < 2 && at.token[i] != token_) {
      load_tuned_angles<Lay, In>(a, position[i].value(a.p), lane, cs_, sn_);
      token_ = at.token[i];
    }
  }
  __device__ __forceinline__ void arrived() const {}
  template <typename Position, typename Lane>
  __device__ __forceinline__ void get(const KernelArgs&, const PairSlots<Lay::I>&, int, const Position (&)[Lay::I],
                                      const Lane&, float*, float (&c)[Lay::AS][Lay::NA],
                                      float (&s)[Lay::AS][Lay::NA]) const {
#pragma unroll
    for (int r = 0; r < Lay::AS; ++r) {
#pragma unroll
      for (int j = 0; j < Lay::NA; ++j) {
        c[r][j] = cs_[r][j];
        s[r][j] = sn_[r][j];
      }
    }
  }

 private:
  float cs_[Lay::AS][Lay::NA], sn_[Lay::AS][Lay::NA];
  int64_t token_ = -1;
};

// Full-rotary rows of an f32 cache (Inputs::kCommon, Partial = false: rotary_dim == D) for the first and the
// last token of a warp's pairs, copied into the warp's two shared-memory rows with cp.async: D floats each,
// cos then sin. A pair of a token between them (fewer heads per token than pairs per warp) loads its own
// from global memory. Every lane of the warp calls begin() and arrived().
template <typename Lay, int D>
class SharedRows {
 public:
  static constexpr int kFloats = kMaxWarpsPerBlock * 2 * D;  // the block's shared memory, in floats

  // `smem`: kFloats floats, 16-byte aligned.
  template <typename Position, typename Lane>
  __device__ __forceinline__ void begin(const KernelArgs& a, const PairSlots<Lay::I>& at,
                                        const Position (&position)[Lay::I], const Lane&, float* smem) {
    static_assert(2 * Lay::I <= 32, "two bits per pair");
    const Problem& p = a.p;
    const int lane_id = threadIdx.x % kWarp;
    float* rows = warp_rows(smem);
    // Lane 0 holds the warp's first pair, lane 31 its last (pairs past the end: the last token's).
    const int64_t first_position = shfl64(position[0].value(p), 0);
    const int64_t last_position = shfl64(position[Lay::I - 1].value(p), kWarp - 1);
    const int64_t first = shfl64(at.token[0], 0);
    const int64_t last = shfl64(at.token[Lay::I - 1], kWarp - 1);
    copy_row(p, first_position, rows, lane_id);
    if (last != first) copy_row(p, last_position, rows + D, lane_id);
    copy_async_commit();
    // Each pair's source, two bits: 0 or 1 a shared row, 2 its own load. Only these outlive begin(), not
    // the tokens.
    slots_ = 0;
#pragma unroll
    for (int i = 0; i < Lay::I; ++i) {
      const uint32_t slot = at.token[i] == first ? 0u : at.token[i] == last ? 1u : 2u;
      slots_ |= slot << (2 * i);
    }
  }
  template <typename Position, typename Lane>
  __device__ __forceinline__ void prepare(const KernelArgs&, const PairSlots<Lay::I>&, int, const Position (&)[Lay::I],
                                          const Lane&) {}
  // Once per warp, before the first get(): every lane's copies have landed and are visible to the warp.
  __device__ __forceinline__ void arrived() const {
    copy_async_wait_all();
    __syncwarp();
  }
  template <typename Position, typename Lane>
  __device__ __forceinline__ void get(const KernelArgs& a, const PairSlots<Lay::I>&, int i,
                                      const Position (&position)[Lay::I], const Lane& lane, float* smem,
                                      float (&c)[Lay::AS][Lay::NA], float (&s)[Lay::AS][Lay::NA]) const {
    const uint32_t slot = (slots_ >> (2 * i)) & 3u;
    if (slot == 2u) {
      load_tuned_angles<Lay, Inputs::kCommon>(a, position[i].value(a.p), lane, c, s);
      return;
    }
    const float* row = warp_rows(smem) + slot * D;
#pragma unroll
    for (int r = 0; r < Lay::AS; ++r) {
      const int first = Lay::angle_start(r, lane.gl);
      read_run(row + first, c[r]);
      read_run(row + D / 2 + first, s[r]);
    }
  }

 private:
  static constexpr int kWords = D * 4 / 16;  // 16-byte words per row

  // Recomputed where used rather than held: a generic pointer costs two registers.
  __device__ __forceinline__ static float* warp_rows(float* smem) { return smem + (threadIdx.x / kWarp) * 2 * D; }
  __device__ __forceinline__ static int64_t shfl64(int64_t v, int src) {
    return static_cast<int64_t>(__shfl_sync(0xffffffffu, static_cast<long long>(v), src));
  }
  __device__ __forceinline__ static void copy_row(const Problem& p, int64_t position, float* dst, int lane_id) {
    const float* src = static_cast<const float*>(p.table.data) + clamp_row(position, p.table.rows) * D;
#pragma unroll
    for (int w = lane_id; w < kWords; w += kWarp) copy_async<16>(dst + 4 * w, src + 4 * w);
  }
  // NA floats from shared memory, in the widest aligned words (a run starts at a multiple of NA).
  __device__ __forceinline__ static void read_run(const float* src, float (&out)[Lay::NA]) {
    if constexpr (Lay::NA % 4 == 0) {
#pragma unroll
      for (int w = 0; w < Lay::NA / 4; ++w) {
        const float4 v = reinterpret_cast<const float4*>(src)[w];
        out[4 * w] = v.x;
        out[4 * w + 1] = v.y;
        out[4 * w + 2] = v.z;
        out[4 * w + 3] = v.w;
      }
    } else if constexpr (Lay::NA % 2 == 0) {
#pragma unroll
      for (int w = 0; w < Lay::NA / 2; ++w) {
        const float2 v = reinterpret_cast<const float2*>(src)[w];
        out[2 * w] = v.x;
        out[2 * w + 1] = v.y;
      }
    } else {
#pragma unroll
      for (int j = 0; j < Lay::NA; ++j) out[j] = src[j];
    }
  }

  uint32_t slots_ = 0;
};

}  // namespace qkrope::cuda
