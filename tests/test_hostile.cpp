// Hostile use of the `kvq` binary beyond one bad input file (tests/test_corpus.cpp has those):
// outputs that would destroy something, inputs sized to exhaust memory or time, options that
// contradict each other. Each run must end in one line on stderr naming the file, key or option
// and exit status 2, and leave what it was pointed at untouched (STYLE.md rule 5).
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/kvq_process.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using kvq::testing::KvqResult;
using kvq::testing::read_whole_file;

namespace {

// This process' scratch folder, removed when the test binary exits.
struct ScratchRoot {
  const fs::path dir =
      fs::temp_directory_path() / ("kvq_test_hostile_" + std::to_string(::getpid()));
  ~ScratchRoot() { fs::remove_all(dir); }
} scratch;

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = scratch.dir / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

fs::path corpus(const std::string& name) {
  const char* root = std::getenv("KVQ_SOURCE_ROOT");
  return fs::path(root ? root : ".") / "tests" / "corpus" / name;
}

KvqResult kvq_in(const fs::path& dir, const std::vector<std::string>& args) {
  return kvq::testing::run_kvq(args, dir);
}

// Exit status 2 and exactly one stderr line holding every one of `words`.
void require_one_line_error(const KvqResult& r, const std::vector<std::string>& words) {
  INFO("stderr: " << r.err << "stdout: " << r.out);
  CHECK(r.status == 2);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK(r.err.rfind("kvq: ", 0) == 0);
  for (const std::string& w : words) CHECK_THAT(r.err, Contains(w));
}

}  // namespace

TEST_CASE("hostile: --out never replaces a FIFO, directory or symlink, nor one of the inputs") {
  const fs::path dir = fresh_dir("out");
  const fs::path rec = dir / "rec.safetensors";
  REQUIRE(kvq_in(dir, {"synth", "--out", rec.string()}).status == 0);
  const std::string rec_bytes = read_whole_file(rec);
  REQUIRE(::mkfifo((dir / "fifo").c_str(), 0644) == 0);
  std::ofstream(dir / "target") << "keep";
  fs::create_symlink(dir / "target", dir / "link");
  fs::create_directory(dir / "folder");
  const std::vector<std::pair<std::string, std::string>> kinds = {
      {"fifo", "FIFO"}, {"link", "symbolic link"}, {"folder", "directory"}};
  for (const auto& [name, kind] : kinds) {
    const std::string out = (dir / name).string();
    INFO("--out " << out);
    require_one_line_error(kvq_in(dir, {"synth", "--out", out}), {out, kind, "not a regular file"});
    require_one_line_error(kvq_in(dir, {"apply", "--method", "rtn", "--bits", "2", "--in",
                                        rec.string(), "--out", out}),
                           {out, kind});
  }
  CHECK(fs::is_fifo(dir / "fifo"));
  CHECK(fs::is_symlink(dir / "link"));
  CHECK(read_whole_file(dir / "target") == "keep");
  CHECK(fs::is_directory(dir / "folder"));

  // An output that is an input, by its own name or through a hard link, is refused before any
  // work; the input stays byte for byte.
  fs::create_hard_link(rec, dir / "same.safetensors");
  for (const fs::path& out : {rec, dir / "same.safetensors"})
    require_one_line_error(kvq_in(dir, {"apply", "--method", "rtn", "--bits", "2", "--in",
                                        rec.string(), "--out", out.string()}),
                           {"--out is the same file as --in", rec.string()});
  CHECK(read_whole_file(rec) == rec_bytes);
  const fs::path model = dir / "model.bin";
  fs::copy_file(corpus("ckpt_good.bin"), model);
  const std::string model_bytes = read_whole_file(model);
  require_one_line_error(
      kvq_in(dir, {"record", "--model", model.string(), "--tokenizer",
                   corpus("tok_260.bin").string(), "--text", corpus("text.txt").string(),
                   "--tokens", "2", "--out", model.string()}),
      {"--out is the same file as --model", model.string()});
  CHECK(read_whole_file(model) == model_bytes);
}
