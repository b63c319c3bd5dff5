// How a warp of the tuned kernels splits its N (token, head) pairs among lanes, for a head_dim known at
// compile time.
//
// A head is handled by a group of L lanes; each lane holds E = D / L elements as SL chunks of C elements
// (one 16-byte word at most). A warp runs G = 32 / L heads side by side and repeats I times, so it owns
// N = G * I consecutive pairs, usually of the same token, whose cos/sin it loads once.
//
// Chunk s of lane l covers elements [(s * L + l) * C, +C). For neox with full rotary, SL = 2: chunk 0 lies
// in the first half of the head and chunk 1 is its rotate-half partner, so the rotation needs no shuffle.
// For gptj the pairs (2i, 2i + 1) sit inside one chunk. Partial-rotary neox: TunedLane.
#pragma once

#include "core/problem.h"

namespace qkrope::cuda {

template <typename T, int D, int N, Style S>
struct TunedLayout {
  static constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte word
  static constexpr int kPrefLanes = D / (2 * kVec) < 32 ? D / (2 * kVec) : 32;  // two words per lane
  static constexpr int kPrefGroups = 32 / kPrefLanes;
  // Fewer pairs per warp than preferred groups: spread each head over more lanes instead.
  static constexpr int L = N >= kPrefGroups ? kPrefLanes : 32 / N;
  static constexpr int G = 32 / L;
  static constexpr int I = N / G;
  static constexpr int E = D / L;
  static constexpr int C = S == Style::kNeox ? E / 2 : (E < kVec ? E : kVec);
  static constexpr int SL = E / C;
  // cos/sin runs per lane: neox shares one run of C angles between its two chunks; gptj has C / 2 per chunk.
  static constexpr int AS = S == Style::kNeox ? 1 : SL;
  static constexpr int NA = S == Style::kNeox ? C : C / 2;

  static_assert(L >= 1 && L <= 32 && (L & (L - 1)) == 0, "lanes per head: a power of two");
  static_assert(G * I == N, "a warp owns exactly N pairs");
  static_assert(E * L == D && C * SL == E && C >= 1, "chunks tile the head");
  static_assert(S == Style::kGptj || SL == 2, "neox keeps each rotate-half pair inside a lane");
  static_assert(S == Style::kNeox || C % 2 == 0, "gptj keeps each interleaved pair inside a chunk");

  // First element of chunk s of lane gl.
  __host__ __device__ static constexpr int chunk_start(int s, int gl) { return (s * L + gl) * C; }
  // First rotary pair of cos/sin run a of lane gl.
  __host__ __device__ static constexpr int angle_start(int a, int gl) {
    return S == Style::kNeox ? gl * C : chunk_start(a, gl) / 2;
  }
};

// Where one lane's chunks of a head start (chunk(s), elements) and whether its cos/sin run is rotary.
// Partial = false: TunedLayout::chunk_start, every run rotary (full-rotary neox; gptj, whose pairs past
// rotary_dim get the identity from load_angles). Partial = true, neox with rotary_dim < D and the rotary
// half a whole number H of chunks: lane gl < H holds the rotate-half partners, chunks gl and gl + H, and
// its angles are those of chunk gl, as at full rotary; lane gl >= H holds the pass-through chunks 2 gl and
// 2 gl + 1 and rotates by the identity. Each lane still moves whole 16-byte words and a warp's accesses
// still cover whole 32-byte sectors (the layout of the generic forward's PairedLayout, with D fixed).
template <typename Lay, bool Partial>
struct TunedLane {
  static_assert(!Partial || (Lay::SL == 2 && Lay::AS == 1), "partial rotary: neox, one rotate-half pair per lane");
  static constexpr bool kPartial = Partial;
  int gl;
  int first[Partial ? Lay::SL : 1];
  bool partners;  // Partial: this lane holds rotate-half partners

  __device__ __forceinline__ TunedLane(int lane_in_group, int rotary_dim) : gl(lane_in_group) {
    if constexpr (Partial) {
      const int h = rotary_dim / (2 * Lay::C);
      partners = gl < h;
      first[0] = (partners ? gl : 2 * gl) * Lay::C;
      first[1] = (partners ? gl + h : 2 * gl + 1) * Lay::C;
    } else {
      (void)rotary_dim;
    }
  }
  __device__ __forceinline__ int chunk(int s) const {
    if constexpr (Partial) {
      return first[s];
    } else {
      return Lay::chunk_start(s, gl);
    }
  }
};

}  // namespace qkrope::cuda
