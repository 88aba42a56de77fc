// `kvq apply`: a method (reference/methods.h) applied to every layer of a recording, written as
// safetensors (docs/design.md "Applied method"). Per layer i and X in {k, v}:
//   layers.{i}.X.codes        U8   packed codes of every quantized part, part after part
//   layers.{i}.X.scale, .zero F16  one per group, group order, part after part (.zero is U8 for
//                                  zero_point = int)
//   layers.{i}.X.rows         I32  the token of each quantized row, in part order
//   layers.{i}.X.kept         I32  tokens stored in fp16 (sinks, window, pending KIVI groups)
//   layers.{i}.X.kept_values  F16  [kept, H_kv, d] their rows, quantizer-input basis (pre-RoPE K
//                                  for pre-RoPE methods)
//   layers.{i}.X.dequant      F32  [T, H_kv, d] the reconstruction in the original basis (K
//                                  post-RoPE, comparable with layers.{i}.k)
//   kvquant: layers.{i}.X.outlier_index I32 (flat into [T, H_kv*d], quantized basis),
//            layers.{i}.X.outlier_value F16;  akvq-vl: layers.{i}.X.bits U8 [T] (16 = fp16);
//   rotatekv: layers.{i}.k.perm I32 [H_kv*d].   fp32 writes .dequant only.
// Metadata: method, bits, group, axis, window, clip, zero_point, permutation, backend, layers,
// source, bits_per_element_k / _v (stored layout, methods.h StorageBits).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "harness/io/safetensors.h"
#include "reference/methods.h"

namespace kvq {

struct AppliedRecording {
  MethodParams params;
  std::string backend = "ref";
  Calibration calibration;
  std::vector<AppliedLayer> layers;
  KvShape shape;
  double k_bits_per_element = 0.0, v_bits_per_element = 0.0;  // over all layers
};

// Applies `params` to every layer of an open recording. Methods run on the reference backend
// ("ref"); another backend name is an error (backends implement ops, not method compositions).
// Missing tensors and bad shapes throw kvq::Error naming the file and the tensor.
AppliedRecording apply_recording(const SafetensorsFile& recording, const MethodParams& params,
                                 const std::string& backend = "ref");

// Writes the applied recording in the layout above (atomic, via write_safetensors).
void write_applied(const std::string& path, const AppliedRecording& applied,
                   const std::string& source);

}  // namespace kvq
