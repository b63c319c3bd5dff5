// Plain C++ loops for the forward and backward op: the CPU FFI target, and the path CI exercises.
#pragma once

#include "core/problem.h"

namespace qkrope::cpu {

void forward(const Problem& p);
void backward(const Problem& p, const BackwardOutputs& out);

}  // namespace qkrope::cpu
