// Byte offsets as reference GroupLayout computes them (docs/spec.md §3 packing).
#include "backends/avx/quant_spec.h"

namespace kvq::avx {

QuantSpec quant_spec(const GroupLayout& l, const QuantParams& p) {
  QuantSpec s;
  s.bits = p.bits;
  s.channel_axis = p.axis == Axis::Channel;
  s.int_zero = p.zero_point == ZeroPoint::Int;
  s.clip = p.clip;
  s.rows = l.rows;
  s.cols = l.cols;
  s.group = l.group;
  s.groups_per_line = l.groups_per_line;
  s.full_bytes = (l.group * p.bits + 7) / 8;
  s.line_bytes = (!s.channel_axis && l.rows > 0) ? l.total_bytes() / l.rows : 0;
  return s;
}

}  // namespace kvq::avx
