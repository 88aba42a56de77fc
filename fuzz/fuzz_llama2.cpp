// libFuzzer target: the llama2.c checkpoint loader and the tokenizer loader (harness/model/) on
// arbitrary bytes. One input holds both files, so the fuzzer can also reach what runs once both
// load (the vocabulary check, encoding, a decode step):
//   u32 little-endian n | n bytes: checkpoint | the rest: tokenizer
// (n is clamped to what follows it; an input under 4 bytes is an empty checkpoint and tokenizer).
// fuzz/corpus/llama2/make_seeds.py writes seeds in this layout. Every input must either load,
// with the model and tokenizer usable, or throw kvq::Error; a crash, a sanitizer report or
// another exception type is a bug. Build: meson setup -Dfuzz=true (clang).
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "harness/model/kv_cache.h"
#include "harness/model/llama2.h"
#include "harness/model/tokenizer.h"
#include "reference/error.h"

namespace {

// Decode steps run on a loaded model: enough to reach the cache and attention over more than
// one position, few enough that a large fuzzed model stays fast.
constexpr int kDecodeSteps = 3;

// The loaders read paths, so each part goes through a scratch file of this process.
std::string scratch(const char* what) {
  return "/tmp/kvq_fuzz_llama2_" + std::to_string(::getpid()) + "_" + what + ".bin";
}

bool write_file(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return false;
  const bool ok = size == 0 || std::fwrite(data, 1, size, f) == size;
  return std::fclose(f) == 0 && ok;
}

std::optional<kvq::Model> load_model(const std::string& path) {
  try {
    kvq::Model model = kvq::Model::load(path);
    const kvq::ModelConfig& c = model.config();
    for (int l = 0; l < c.n_layers; ++l) (void)model.layer(l);
    // Greedy decode touches every weight and the classifier (tied or not).
    (void)kvq::generate_greedy(model, kDecodeSteps);
    return model;
  } catch (const kvq::Error&) {
    return std::nullopt;  // refused with a message: the expected outcome for hostile bytes
  }
}

std::optional<kvq::Tokenizer> load_tokenizer(const std::string& path, std::string_view text) {
  try {
    kvq::Tokenizer tokenizer = kvq::Tokenizer::load(path);
    int32_t previous = kvq::kBosId;
    for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
      (void)tokenizer.score(id);
      (void)tokenizer.decode(previous, id);
      previous = id;
    }
    // Encoding arbitrary bytes: invalid UTF-8, NUL bytes and pieces that merge into others.
    for (int32_t id : tokenizer.encode(text)) (void)tokenizer.piece(id);
    return tokenizer;
  } catch (const kvq::Error&) {
    return std::nullopt;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uint32_t n = 0;
  if (size >= 4) std::memcpy(&n, data, 4);
  const size_t body = size >= 4 ? size - 4 : 0;
  const size_t checkpoint_size = std::min<size_t>(n, body);
  const uint8_t* checkpoint = data + (size >= 4 ? 4 : size);
  const uint8_t* tokenizer_bytes = checkpoint + checkpoint_size;
  const size_t tokenizer_size = body - checkpoint_size;

  static const std::string model_path = scratch("model"), tokenizer_path = scratch("tokenizer");
  if (!write_file(model_path, checkpoint, checkpoint_size) ||
      !write_file(tokenizer_path, tokenizer_bytes, tokenizer_size))
    return 0;

  const std::string_view text(reinterpret_cast<const char*>(checkpoint), checkpoint_size);
  const std::optional<kvq::Model> model = load_model(model_path);
  const std::optional<kvq::Tokenizer> tokenizer = load_tokenizer(tokenizer_path, text);
  if (!model || !tokenizer) return 0;

  // Both loaded: what `kvq record` / `kvq ppl` do next with them.
  try {
    kvq::require_matching_tokenizer(*model, *tokenizer);
    const std::vector<int32_t> ids = tokenizer->encode("Once upon a time, a hostile file.\n");
    kvq::Fp32KvCache cache(model->config().n_layers);
    kvq::Decoder decoder(*model, cache);
    int32_t previous = kvq::kBosId;
    for (size_t i = 0; i < ids.size() && static_cast<int>(i) < kDecodeSteps; ++i) {
      if (decoder.position() >= model->config().seq_len) break;
      const std::span<const float> logits = decoder.step(ids[i]);
      const auto next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) -
                                             logits.begin());
      (void)tokenizer->decode(previous, next);
      previous = next;
    }
    const size_t prefix = std::min<size_t>(ids.size(), static_cast<size_t>(kDecodeSteps));
    (void)kvq::forward_sequence(*model, std::span<const int32_t>(ids.data(), prefix));
  } catch (const kvq::Error&) {
    // A vocabulary mismatch or a sequence past seq_len: refused with a message.
  }
  return 0;
}
