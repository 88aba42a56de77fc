// safetensors reader (mmap, every offset checked) and writer (atomic: temp file + rename).
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape,
// data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data. Errors name the
// file and the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "reference/tensor.h"

namespace kvq {

class SafetensorsFile {
 public:
  // Maps the file and validates the whole header (length within the file and under 100 MiB,
  // JSON, dtypes, shape products without overflow, byte counts, offsets in range and not
  // overlapping). Throws kvq::Error naming the file (and tensor) on any problem.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const;
  const std::map<std::string, std::string>& metadata() const;
  std::vector<std::string> names() const;  // sorted
  bool has(const std::string& name) const;
  // A view into the mapping (valid while this object lives). Throws naming the file and tensor
  // when absent.
  TensorView view(const std::string& name) const;
  // view(name) widened to fp32 (F32/F16/BF16), checked finite.
  std::vector<float> read_f32(const std::string& name) const;
  std::vector<int32_t> read_i32(const std::string& name) const;

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

 private:
  struct Impl;
  explicit SafetensorsFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct NamedTensor {
  std::string name;
  TensorView view;
};

// Writes tensors (data laid out in the given order) and metadata to `path` via a temporary
// file in the same folder and rename, so a reader never sees a half-written file.
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata);

}  // namespace kvq
