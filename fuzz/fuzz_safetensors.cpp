// libFuzzer target: the safetensors reader (harness/io/safetensors.h) on arbitrary bytes. Every
// input must either open, with each tensor readable, or throw kvq::Error; a crash, a sanitizer
// report or another exception type is a bug. Build: meson setup -Dfuzz=true (clang).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "harness/io/safetensors.h"
#include "reference/error.h"

namespace {

// The reader maps a path, so each input goes through one scratch file of this process.
const std::string& scratch_path() {
  static const std::string path = "/tmp/kvq_fuzz_safetensors_" + std::to_string(::getpid());
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = scratch_path();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  if (size > 0) std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    const kvq::SafetensorsFile file = kvq::SafetensorsFile::open(path);
    for (const std::string& name : file.names()) {
      const kvq::TensorView view = file.view(name);
      // Touch every byte the view claims, so an offset the header check missed is found.
      volatile uint8_t sink = 0;
      const auto* bytes = static_cast<const uint8_t*>(view.data);
      for (size_t i = 0; i < view.nbytes(); ++i) sink = sink ^ bytes[i];
      if (view.dtype == kvq::DType::F32 || view.dtype == kvq::DType::F16 ||
          view.dtype == kvq::DType::BF16)
        (void)file.read_f32(name);
      else if (view.dtype == kvq::DType::I32)
        (void)file.read_i32(name);
    }
  } catch (const kvq::Error&) {
    // Refused with a message: the expected outcome for hostile bytes.
  }
  return 0;
}
