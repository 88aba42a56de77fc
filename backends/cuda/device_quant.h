// The host side of a device quantization, shared by the CUDA backend and the Python module's
// DLPack path (python/src/bind_cuda.cpp): the kernels' layout of a GroupLayout, and the
// reference's wording of a group whose scale or zero overflows fp16.
#pragma once

#include <string>

#include "backends/cuda/kernels.h"
#include "reference/error.h"
#include "reference/quantize.h"

namespace kvq::cuda {

inline DeviceQuantLayout device_layout(const GroupLayout& l, const QuantParams& p) {
  DeviceQuantLayout d;
  d.rows = l.rows;
  d.cols = l.cols;
  d.group = l.group;
  d.groups_per_line = l.groups_per_line;
  d.group_count = l.group_count;
  d.bits = p.bits;
  d.channel_axis = p.axis == Axis::Channel;
  d.int_zero_point = p.zero_point == ZeroPoint::Int;
  d.clip = p.clip;
  return d;
}

// Throws unless `bad` (the kernels' lowest failing group, group_count when none) is clean.
inline void check_bad_group(const GroupLayout& l, int64_t bad, const std::string& what) {
  if (bad >= l.group_count) return;
  const int64_t first = l.first_element(bad);
  throw Error(what + ": group " + std::to_string(bad) + " (row " + std::to_string(first / l.cols) +
              ", col " + std::to_string(first % l.cols) + ", " + std::to_string(l.group_size(bad)) +
              " elements): scale or zero of the group overflows fp16");
}

}  // namespace kvq::cuda
