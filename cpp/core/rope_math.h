// Scalar pieces of the math shared by the CPU loops and the CUDA kernels (host and device).
#pragma once

#include <cstdint>

#include "core/problem.h"

namespace qkrope {

// Index of the element paired with `pair` (0 <= pair < rotary_dim / 2): (first, second).
QKROPE_HD int32_t pair_first(Style style, int32_t pair, int32_t rotary_dim) {
  return style == Style::kNeox ? pair : 2 * pair;
}
QKROPE_HD int32_t pair_second(Style style, int32_t pair, int32_t rotary_dim) {
  return style == Style::kNeox ? pair + rotary_dim / 2 : 2 * pair + 1;
}

// Row of the cos/sin cache for a position: clamped like jnp.take(mode="clip").
QKROPE_HD int64_t clamp_row(int64_t position, int64_t rows) {
  return position < 0 ? 0 : (position >= rows ? rows - 1 : position);
}

}  // namespace qkrope
