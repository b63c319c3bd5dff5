// Test hook: when enabled, handlers fill every output that does not alias an input with 0xFF bytes
// (NaN in every float type) before computing, so an element a kernel forgets to write fails the tests.
#pragma once

#include <atomic>

namespace qkrope {

inline std::atomic<bool>& poison_outputs_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}

inline bool poison_outputs() { return poison_outputs_flag().load(std::memory_order_relaxed); }

}  // namespace qkrope
