#include "backends/backend.h"

namespace kvq {

const char* op_name(Op op) {
  switch (op) {
    case Op::Fwht: return "fwht";
    case Op::Reorder: return "reorder";
    case Op::RotateK: return "rotate_k";
    case Op::RotateV: return "rotate_v";
    case Op::Quantize: return "quantize";
    case Op::Dequantize: return "dequantize";
    case Op::RotateQuantize: return "rotate_quantize";
    case Op::TokenAbsmax: return "token_absmax";
    case Op::ExpertStatistics: return "expert_statistics";
    case Op::AttentionDecode: return "attention_decode";
  }
  return "?";
}

}  // namespace kvq
