// The streaming forward kernel: a persistent grid whose warps walk the (token, head) pairs in steps of G
// (one pair per lane group, the tuned layout with I = 1), grid-strided so that at any moment the whole
// GPU streams through neighbouring memory. Each warp software-pipelines one step ahead: it issues the
// next step's head loads and cos/sin loads (and the position of the step after) before computing and
// storing the current one, so loads stay in flight continuously instead of a load -> position -> cos/sin
// -> compute chain per warp. Auto dispatch picks it for large problems; a forced token_heads_per_warp
// runs the classic kernels.
#pragma once

#include "cuda/forward_kernels.cuh"

namespace qkrope::cuda {

template <typename T, int D, Style S>
struct StreamLayout {
  using Lay = TunedLayout<T, D, TunedLayout<T, D, 1, S>::kPrefGroups, S>;
  static_assert(Lay::I == 1, "one pair per lane group per step");
};

// One step's data of one lane, loaded ahead of its use.
template <typename T, typename Lay>
struct StreamStage {
  Chunk<T, Lay::C> raw[Lay::SL];
  float cs[Lay::AS][Lay::NA], sn[Lay::AS][Lay::NA];
  int64_t offset;
  int group;
  bool valid;
};

// A (token, head) cursor that advances by a fixed number of pairs without dividing.
struct StridedCursor {
  int64_t token;
  int head;
  __device__ __forceinline__ void advance(int64_t tokens, int heads_step, int heads) {
    token += tokens;
    head += heads_step;
    if (head >= heads) {
      head -= heads;
      ++token;
    }
  }
};

template <typename T, int D, Style S>
struct StreamWarp {
  using Lay = typename StreamLayout<T, D, S>::Lay;
  using Stage = StreamStage<T, Lay>;
  static constexpr int G = Lay::G;

  const KernelArgs& a;
  int gl, heads;
  int64_t stride_tokens;  // a grid stride of steps, in whole tokens ...
  int stride_heads;       // ... and remaining heads

  __device__ __forceinline__ void advance(StridedCursor& c) const { c.advance(stride_tokens, stride_heads, heads); }

  // Position of a cursor's token (0 past the end): loaded two steps ahead of its use.
  __device__ __forceinline__ int64_t position(const StridedCursor& c) const {
    return c.token < a.p.num_tokens ? load_position(a.p, c.token) : 0;
  }

  // Issues the loads of the cursor's pair into st; `position` was loaded a step earlier.
  __device__ __forceinline__ void fetch(Stage& st, const StridedCursor& c, int64_t position) const {
    const Problem& p = a.p;
    st.valid = c.token < p.num_tokens;
    int local = 0;
    st.group = split_head(p, c.head, &local);
    st.offset = st.valid ? head_offset(p, st.group, c.token, local) : 0;
    const T* src = static_cast<const T*>(p.group[st.group].in) + st.offset;
#pragma unroll
    for (int s = 0; s < Lay::SL; ++s) {
      if (st.valid) {
        st.raw[s].load(src + Lay::chunk_start(s, gl));
      } else {
        st.raw[s].zero();
      }
    }
    if (st.valid && st.group < 2) {
#pragma unroll
      for (int r = 0; r < Lay::AS; ++r) load_angles<Lay::NA>(a, position, Lay::angle_start(r, gl), st.cs[r], st.sn[r]);
    }
  }

  // Normalises, rotates and stores a fetched pair. Every lane of the warp calls it.
  __device__ __forceinline__ void finish(Stage& st) const {
    const Problem& p = a.p;
    float v[Lay::SL][Lay::C];
    float sumsq = 0.0f;
#pragma unroll
    for (int s = 0; s < Lay::SL; ++s) {
#pragma unroll
      for (int j = 0; j < Lay::C; ++j) {
        v[s][j] = st.raw[s].get(j);
        sumsq += v[s][j] * v[s][j];
      }
    }
    sumsq = group_sum<Lay::L>(sumsq);
    if (!st.valid) return;
    T* dst = static_cast<T*>(p.group[st.group].out) + st.offset;
    if (st.group == 2) {
#pragma unroll
      for (int s = 0; s < Lay::SL; ++s) st.raw[s].store(dst + Lay::chunk_start(s, gl));
      return;
    }
    const float r = rsqrtf(sumsq / static_cast<float>(D) + p.eps);
#pragma unroll
    for (int s = 0; s < Lay::SL; ++s) {
      float w[Lay::C];
      load_scale<Lay::C>(p, st.group, Lay::chunk_start(s, gl), a.weight_vec, w);
#pragma unroll
      for (int j = 0; j < Lay::C; ++j) v[s][j] = v[s][j] * r * w[j];
    }
    rotate_tuned<Lay, S>(v, st.cs, st.sn, 1.0f);
#pragma unroll
    for (int s = 0; s < Lay::SL; ++s) {
      Chunk<T, Lay::C> out;
#pragma unroll
      for (int j = 0; j < Lay::C; ++j) out.set(j, v[s][j]);
      out.store(dst + Lay::chunk_start(s, gl));
    }
  }
};

template <typename T, int D, Style S>
__global__ void __launch_bounds__(kMaxThreads) forward_stream_kernel(const KernelArgs a) {
  using Warp = StreamWarp<T, D, S>;
  using Stage = typename Warp::Stage;
  constexpr int G = Warp::G;
  const Problem& p = a.p;
  const int lane = threadIdx.x % kWarp, grp = lane / Warp::Lay::L;
  const int heads = p.total_heads();
  const int64_t total = p.total_pairs();
  const int64_t steps = (total + G - 1) / G;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  int64_t step = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (step >= steps) return;  // warp-uniform; no block-wide barrier follows
  const int64_t stride_pairs = stride * G;
  const Warp w{a, lane % Warp::Lay::L, heads, stride_pairs / heads, static_cast<int>(stride_pairs % heads)};

  // Cursors at this step (fetched first) and two strides ahead (positions only).
  const int64_t pair = step * G + grp;
  StridedCursor at{pair / heads, static_cast<int>(pair % heads)};
  StridedCursor ahead = at;
  w.advance(ahead);
  // Positions are never written by these kernels, so they may be read before the previous one ends.
  const int64_t first_position = w.position(at);
  int64_t next_position = w.position(ahead);
  wait_for_previous_kernel(a.pdl);

  // Ping-pong between two stages: while one is computed and stored, the other's loads are in flight.
  Stage even, odd;
  w.fetch(even, at, first_position);
  w.advance(ahead);  // now two strides ahead of `at`
  for (;;) {
    w.advance(at);
    bool more = step + stride < steps;
    if (more) {
      w.fetch(odd, at, next_position);
      next_position = w.position(ahead);
      w.advance(ahead);
    }
    w.finish(even);
    if (!more) break;
    step += stride;
    w.advance(at);
    more = step + stride < steps;
    if (more) {
      w.fetch(even, at, next_position);
      next_position = w.position(ahead);
      w.advance(ahead);
    }
    w.finish(odd);
    if (!more) break;
    step += stride;
  }
}

}  // namespace qkrope::cuda
