#include "harness/recording/case_recording.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <system_error>
#include <vector>

#include "harness/io/sha256.h"
#include "harness/model/llama2.h"
#include "harness/model/recorder.h"
#include "harness/model/tokenizer.h"
#include "harness/recording/synth.h"
#include "reference/error.h"

namespace kvq {

namespace {

namespace fs = std::filesystem;

// Bumped whenever what a cached recording holds changes for the same keys (key meanings, file
// layout), so an old cache file is never read as a new one.
constexpr int kCacheFormat = 1;

// A file's identity for the cache key: absolute path, size and mtime (content hashing a model
// for every case would cost more than recording it).
nlohmann::json file_identity(const std::string& path, const std::string& where,
                             const std::string& key) {
  std::error_code ec;
  const fs::path absolute = fs::absolute(path, ec);
  const auto size = fs::file_size(path, ec);
  if (ec)
    throw Error(where + ": key '" + key + "': cannot read '" + path + "' (" + ec.message() + ")");
  const auto mtime = fs::last_write_time(path, ec);
  if (ec) throw Error(where + ": key '" + key + "': cannot stat '" + path + "'");
  return {{"path", absolute.string()},
          {"size", static_cast<uint64_t>(size)},
          {"mtime", static_cast<int64_t>(mtime.time_since_epoch().count())}};
}


}  // namespace

SynthParams case_synth_params(const RecordingKeys& k) {
  // Keys as `kvq synth` and the method study name them: heads = KV heads, q_heads = query heads.
  SynthParams p;
  p.seed = static_cast<uint64_t>(k.seed);
  p.tokens = k.tokens;
  p.kv_heads = k.heads;
  p.heads = k.q_heads.value_or(std::max(p.heads, p.kv_heads));
  p.head_dim = k.head_dim;
  p.hidden = k.hidden;
  p.experts = k.experts;
  p.top_k = k.top_k;
  p.layers = k.layers;
  p.image_tokens = k.image_tokens;
  p.text_attention = k.text_attention;
  return p;
}

std::string recording_cache_dir() {
  fs::path dir;
  if (const char* env = std::getenv("KVQ_CACHE"); env && *env) {
    dir = env;
  } else {
    std::error_code ec;
    fs::path tmp = fs::temp_directory_path(ec);
    if (ec) tmp = "/tmp";
    dir = tmp / ("kvq-cache-" + std::to_string(::getuid()));
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    throw Error("recording cache '" + dir.string() + "': cannot create the folder (" +
                ec.message() + "; set KVQ_CACHE to a writable folder)");
  return dir.string();
}

std::string case_recording(const ScenarioCase& c, const RecordingKeys& k) {
  if (c.input != "synthetic" && c.input != "model") return c.input;  // a recording path

  nlohmann::json identity = {{"format", kCacheFormat}, {"source", c.input}};
  // The generator and the llama2.c runner are code: a rebuilt kvq records anew rather than
  // trusting a file an older build wrote.
  std::error_code ec;
  const fs::path self = fs::canonical("/proc/self/exe", ec);
  if (!ec) identity["kvq"] = file_identity(self.string(), c.where, "kvq binary");
  std::string source;
  if (c.input == "synthetic") {
    const SynthParams p = case_synth_params(k);
    identity["synth"] = {{"seed", p.seed},         {"tokens", p.tokens},
                         {"heads", p.heads},       {"kv_heads", p.kv_heads},
                         {"head_dim", p.head_dim}, {"hidden", p.hidden},
                         {"experts", p.experts},   {"top_k", p.top_k},
                         {"layers", p.layers},     {"image_tokens", p.image_tokens}};
    if (p.text_attention > 0.0) identity["synth"]["text_attention"] = p.text_attention;
    source = "synthetic seed " + std::to_string(p.seed);
  } else {
    for (const auto& [key, given] :
         {std::pair{"model", k.model}, std::pair{"tokenizer", k.tokenizer}, std::pair{"text", k.text}})
      if (!given)
        throw Error(c.where + ": key '" + key +
                    "': input = \"model\" needs model, tokenizer and "
                    "text");
    const std::string model = *k.model, text = *k.text;
    identity["model"] = file_identity(model, c.where, "model");
    identity["tokenizer"] = file_identity(*k.tokenizer, c.where, "tokenizer");
    identity["text"] = file_identity(text, c.where, "text");
    identity["tokens"] = k.tokens;  // default 256: BOS + 255 text tokens
    source = fs::path(model).filename().string() + " on " + fs::path(text).filename().string();
  }
  const std::string path =
      (fs::path(recording_cache_dir()) / (sha256_hex(identity.dump()) + ".safetensors")).string();
  if (fs::is_regular_file(path)) return path;  // written whole (atomic rename) by a earlier case

  try {
    if (c.input == "synthetic") {
      write_recording(path, synthesize(case_synth_params(k)));
    } else {
      const std::string text_path = *k.text;
      const Model model = Model::load(*k.model);
      const Tokenizer tokenizer = Tokenizer::load(*k.tokenizer);
      require_matching_tokenizer(model, tokenizer);
      const int64_t tokens = k.tokens;
      if (tokens < 1 || tokens > model.config().seq_len)
        throw Error("key 'tokens': " + std::to_string(tokens) + " outside [1, seq_len = " +
                    std::to_string(model.config().seq_len) + "] of the model");
      // BOS, then the text, as `kvq record` and docs/spec.md §9 chunks start.
      std::vector<int32_t> ids = tokenizer.encode(read_text_file(text_path));
      ids.insert(ids.begin(), kBosId);
      if (static_cast<int64_t>(ids.size()) < tokens)
        throw Error("key 'tokens': " + text_path + " encodes to " + std::to_string(ids.size() - 1) +
                    " tokens, " + std::to_string(tokens - 1) + " needed after BOS");
      ids.resize(static_cast<size_t>(tokens));
      Recording rec = record_activations(model, ids);
      for (size_t i = 1; i < ids.size(); ++i) rec.text += tokenizer.decode(ids[i - 1], ids[i]);
      write_recording(path, rec);
    }
  } catch (const Error& e) {
    throw Error(c.where + ": recording " + source + ": " + e.what());
  }
  std::fprintf(stderr, "recording %s -> %s\n", source.c_str(), path.c_str());
  return path;
}

}  // namespace kvq
