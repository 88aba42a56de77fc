// kvq ppl (docs/spec.md §9): chunking, the reference first-chunk number of data/SOURCES.md,
// agreement with an NLL computed here from the whole-sequence forward, thread-count
// independence, and the methods' caches: 8-bit RTN near fp32, every method finite at 2 and 4 bits.
#include <omp.h>
#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "harness/cli/commands.h"
#include "harness/model/llama2.h"
#include "harness/model/perplexity.h"
#include "harness/model/tokenizer.h"
#include "reference/error.h"
#include "reference/methods.h"
#include "tests/data_file.h"

namespace {

struct Setup {
  kvq::Model model;
  std::vector<int32_t> ids;
};

const Setup& setup() {
  static const Setup s = [] {
    const kvq::Tokenizer tok =
        kvq::Tokenizer::load(kvq::testing::data_file("tok512.bin").string());
    return Setup{
        kvq::Model::load(kvq::testing::data_file("stories260K.bin").string()),
        tok.encode(kvq::read_text_file(
            kvq::testing::data_file("tinystories-sample.txt").string()))};
  }();
  return s;
}

std::vector<std::vector<int32_t>> first_chunks(size_t n) {
  auto chunks = kvq::ppl_chunks(setup().ids, 256);
  chunks.resize(n);
  return chunks;
}

kvq::PplResult run(const std::vector<std::vector<int32_t>>& chunks, kvq::Method method, int bits) {
  const kvq::Model& m = setup().model;
  kvq::MethodParams p;
  p.method = method;
  p.bits = bits;
  const kvq::Calibration calib = kvq::calibrate_for_ppl(m, chunks.front(), p);
  return kvq::perplexity(m, chunks, [&] { return kvq::make_method_cache(m.config(), p, calib); });
}

}  // namespace

TEST_CASE("ppl: chunks are BOS + W-1 consecutive ids, the last one shorter") {
  const std::vector<int32_t> ids = {10, 11, 12, 13, 14};
  using Chunks = std::vector<std::vector<int32_t>>;
  CHECK(kvq::ppl_chunks(ids, 3) == Chunks{{1, 10, 11}, {1, 12, 13}, {1, 14}});
  CHECK(kvq::ppl_chunks(ids, 6) == Chunks{{1, 10, 11, 12, 13, 14}});
  CHECK(kvq::ppl_chunks(ids, 2) == Chunks{{1, 10}, {1, 11}, {1, 12}, {1, 13}, {1, 14}});
  CHECK(kvq::ppl_chunks({}, 256).empty());
  CHECK_THROWS_AS(kvq::ppl_chunks(ids, 1), kvq::Error);
}

TEST_CASE("ppl: stories260K first chunk, fp32 cache: NLL 1.5391, PPL 4.661 (SOURCES.md)") {
  const auto chunks = first_chunks(1);
  REQUIRE(chunks.front().size() == 256);
  const kvq::PplResult r = run(chunks, kvq::Method::Fp32, 32);
  CHECK(r.predicted == 255);
  CHECK(r.chunks == 1);
  CHECK(std::abs(r.mean_nll() - 1.5391) <= 1e-4);
  CHECK(std::abs(r.ppl() - 4.661) <= 1e-3);
  CHECK(r.bits_per_element() == 32.0);
}

TEST_CASE("ppl: NLL equals a log-softmax of the whole-sequence forward's logits") {
  const auto chunks = first_chunks(2);
  const kvq::Model& m = setup().model;
  const size_t vocab = static_cast<size_t>(m.config().vocab_size);
  double expected = 0.0;
  for (const auto& chunk : chunks) {
    const std::vector<float> logits = kvq::forward_sequence(m, chunk);
    for (size_t t = 0; t + 1 < chunk.size(); ++t) {
      double z = 0.0;
      for (size_t i = 0; i < vocab; ++i) z += std::exp(static_cast<double>(logits[t * vocab + i]));
      expected += std::log(z) - logits[t * vocab + static_cast<size_t>(chunk[t + 1])];
    }
  }
  const kvq::PplResult r = run(chunks, kvq::Method::Fp32, 32);
  CHECK(r.predicted == 510);
  CHECK(std::abs(r.nll_sum - expected) <= 1e-5 * expected);
}

TEST_CASE("ppl: the result does not depend on the number of threads") {
  const auto chunks = first_chunks(4);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const kvq::PplResult one = run(chunks, kvq::Method::Rtn, 4);
  omp_set_num_threads(3);
  const kvq::PplResult three = run(chunks, kvq::Method::Rtn, 4);
  omp_set_num_threads(threads);
  CHECK(one.nll_sum == three.nll_sum);
  CHECK(one.storage.bits == three.storage.bits);
}

TEST_CASE("ppl: 8-bit RTN stays within 1% of the fp32 PPL on four chunks") {
  const auto chunks = first_chunks(4);
  const double fp32 = run(chunks, kvq::Method::Fp32, 32).ppl();
  const kvq::PplResult rtn8 = run(chunks, kvq::Method::Rtn, 8);
  CHECK(std::abs(rtn8.ppl() / fp32 - 1.0) <= 0.01);
  // 8 bits + fp16 scale and zero per group of 32 channels (G = 128 clamped to H_kv * d = 32).
  CHECK(rtn8.bits_per_element() == Approx(9.0));
}

TEST_CASE("ppl: every method gives a finite PPL at 2 and 4 bits") {
  const auto chunks = first_chunks(2);
  for (const char* name : {"rtn", "kivi", "kvquant", "rotatekv", "kvsink+kvquant", "akvq-vl"}) {
    for (int bits : {2, 4}) {
      INFO(name << " at " << bits << " bits");
      const kvq::PplResult r = run(chunks, kvq::parse_method(name), bits);
      CHECK(std::isfinite(r.ppl()));
      CHECK(r.ppl() > 1.0);
      CHECK(r.predicted == 510);
      CHECK(r.bits_per_element() > bits);
      CHECK(r.bits_per_element() < 32.0);
    }
  }
}

TEST_CASE("ppl: chunks longer than seq_len or without text are errors") {
  const kvq::Model& m = setup().model;
  const auto fp32 = [&] { return std::make_unique<kvq::Fp32KvCache>(m.config().n_layers); };
  std::vector<std::vector<int32_t>> too_long = {std::vector<int32_t>(514, 1)};
  CHECK_THROWS_AS(kvq::perplexity(m, too_long, fp32), kvq::Error);
  CHECK_THROWS_AS(kvq::perplexity(m, {{1}}, fp32), kvq::Error);
}

TEST_CASE("ppl: kvq ppl writes a run with one case per (method, bits) and ppl/nll rows") {
  const auto db = std::filesystem::temp_directory_path() / "kvq_test_ppl.db";
  std::filesystem::remove(db);
  std::vector<std::string> args = {
      "ppl",
      "--model",
      kvq::testing::data_file("stories260K.bin").string(),
      "--tokenizer",
      kvq::testing::data_file("tok512.bin").string(),
      "--text",
      kvq::testing::data_file("tinystories-sample.txt").string(),
      "--method",
      "rtn,fp32",
      "--bits",
      "8,4",
      "--max-tokens",
      "255",
      "--db",
      db.string(),
      "--quiet"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  REQUIRE(kvq::cmd_ppl(static_cast<int>(argv.size()), argv.data()) == 0);

  sqlite3* handle = nullptr;
  REQUIRE(sqlite3_open(db.string().c_str(), &handle) == SQLITE_OK);
  std::vector<std::string> rows;
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(handle,
                             "SELECT c.name, m.metric, m.value, m.unit FROM cases c JOIN "
                             "measurements m ON m.case_id = c.id WHERE m.metric IN ('ppl', 'nll') "
                             "ORDER BY c.id, m.metric",
                             -1, &stmt, nullptr) == SQLITE_OK);
  double fp32_ppl = 0, fp32_nll = 0;
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    const std::string name = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    const std::string metric = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 1));
    const double value = sqlite3_column_double(stmt, 2);
    CHECK(std::string(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 3))).empty());
    rows.push_back(name + " " + metric);
    if (name == "ppl/stories260K/fp32/b32/W256") (metric == "ppl" ? fp32_ppl : fp32_nll) = value;
  }
  sqlite3_finalize(stmt);
  sqlite3_close(handle);
  std::filesystem::remove(db);
  CHECK(rows == std::vector<std::string>{
                    "ppl/stories260K/fp32/b32/W256 nll", "ppl/stories260K/fp32/b32/W256 ppl",
                    "ppl/stories260K/rtn/b8/W256 nll", "ppl/stories260K/rtn/b8/W256 ppl",
                    "ppl/stories260K/rtn/b4/W256 nll", "ppl/stories260K/rtn/b4/W256 ppl"});
  // --max-tokens 255 is exactly the first chunk: the SOURCES.md number again.
  CHECK(std::abs(fp32_ppl - 4.661) <= 1e-3);
  CHECK(std::abs(std::exp(fp32_nll) - fp32_ppl) <= 1e-12 * fp32_ppl);
}

TEST_CASE("ppl: kvq ppl rejects unknown methods, bad bits and other backends") {
  const std::string model = kvq::testing::data_file("stories260K.bin").string();
  const std::string tok = kvq::testing::data_file("tok512.bin").string();
  const std::string text =
      kvq::testing::data_file("tinystories-sample.txt").string();
  const auto call = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"ppl", "--model", model,          "--tokenizer",
                                     tok,   "--text",  text,           "--db",
                                     "",    "--quiet", "--max-tokens", "10"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    return kvq::cmd_ppl(static_cast<int>(argv.size()), argv.data());
  };
  CHECK_THROWS_AS(call({"--method", "nope"}), kvq::Error);
  CHECK_THROWS_WITH(call({"--method", "rtn", "--bits", "5"}), Catch::Contains("--bits 5"));
  CHECK_THROWS_WITH(call({"--method", "rtn", "--backend", "cuda"}), Catch::Contains("cuda"));
  CHECK_THROWS_AS(call({"--method", "rtn", "--window", "1"}), kvq::Error);
  CHECK(call({"--method", "rtn", "--bits", "2"}) == 0);
}
