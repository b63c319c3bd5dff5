// Division of 31-bit unsigned values by a divisor fixed at launch, as a multiply and a shift.
//
// The kernels map a (token, head) pair index to its token by dividing by the head count. A 32-bit
// division by a run-time value costs about 20 instructions on the GPU (reciprocal, two corrections);
// with the multiplier computed once on the host it costs two. Granlund and Montgomery: for divisors
// 1 <= d < 2^31 and l = ceil(log2 d), m = ceil(2^(31 + l) / d) fits 32 bits and
// floor(n * m / 2^(31 + l)) = floor(n / d) for every n < 2^31, since m * d - 2^(31 + l) < d <= 2^l.
#pragma once

#include <cstdint>

#include "core/problem.h"

namespace qkrope {

// The smallest l with 2^l >= n. Host side.
inline int ceil_log2(uint64_t n) {
  int l = 0;
  while ((uint64_t{1} << l) < n) ++l;
  return l;
}

struct FastDivisor {
  uint32_t divisor = 1;
  uint32_t multiplier = 1u << 31;
  int32_t shift = 31;  // 31 + l

  // Host side, once per launch. d < 2^31 (0, from a problem without heads, divides by 1).
  static FastDivisor make(uint32_t d) {
    if (d == 0) d = 1;
    FastDivisor f;
    f.divisor = d;
    f.shift = 31 + ceil_log2(d);
    f.multiplier = static_cast<uint32_t>(((uint64_t{1} << f.shift) + d - 1) / d);
    return f;
  }
  // n < 2^31.
  QKROPE_HD uint32_t divide(uint32_t n) const {
    return static_cast<uint32_t>((static_cast<uint64_t>(n) * multiplier) >> shift);
  }
};

}  // namespace qkrope
