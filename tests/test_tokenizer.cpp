// llama2.c tokenizer: loading, the docs/spec.md §9 encoder against the ids listed in
// data/SOURCES.md and against a plain quadratic re-implementation of llama2.c's encode,
// byte fallback, merge order on a hand-built vocabulary, and load errors.
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "harness/model/tokenizer.h"
#include "reference/error.h"
#include "tests/data_file.h"

namespace {

using kvq::Tokenizer;

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string tok512() {
  return kvq::testing::data_file("tok512.bin").string();
}
std::string sample_text() {
  return kvq::read_text_file(
      kvq::testing::data_file("tinystories-sample.txt").string());
}

// A tokenizer file from (piece, score) pairs, ids in order.
std::filesystem::path write_tokenizer(const std::string& name,
                                      const std::vector<std::pair<std::string, float>>& vocab,
                                      int32_t max_len = 16) {
  const auto path = std::filesystem::temp_directory_path() / ("kvq_test_tokenizer_" + name);
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&max_len), 4);
  for (const auto& [piece, score] : vocab) {
    const auto len = static_cast<int32_t>(piece.size());
    out.write(reinterpret_cast<const char*>(&score), 4);
    out.write(reinterpret_cast<const char*>(&len), 4);
    out.write(piece.data(), len);
  }
  return path;
}

// <unk>, <s>, </s>, the 256 byte pieces, then `extra`.
std::vector<std::pair<std::string, float>> base_vocab(
    const std::vector<std::pair<std::string, float>>& extra) {
  std::vector<std::pair<std::string, float>> v = {{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    v.push_back({buf, 0});
  }
  v.insert(v.end(), extra.begin(), extra.end());
  return v;
}

// llama2.c's encode() as written there: per-codepoint lookup, then repeated full scans for the
// best pair (strict >, from -1e10). Independent of the priority-queue implementation.
std::vector<int32_t> naive_encode(const std::string& file, const std::string& text) {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  const std::string bytes = read_file(file);
  size_t o = 4;
  while (o < bytes.size()) {
    float s;
    int32_t n;
    std::memcpy(&s, bytes.data() + o, 4);
    std::memcpy(&n, bytes.data() + o + 4, 4);
    pieces.push_back(bytes.substr(o + 8, static_cast<size_t>(n)));
    scores.push_back(s);
    o += 8 + static_cast<size_t>(n);
  }
  std::map<std::string, int32_t> ids;
  for (size_t i = 0; i < pieces.size(); ++i) ids.emplace(pieces[i], static_cast<int32_t>(i));
  auto find = [&](const std::string& p) {
    auto it = ids.find(p);
    return it == ids.end() ? -1 : it->second;
  };
  std::vector<int32_t> t = {find(" ")};
  std::string buf;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) buf.clear();
    buf += text[i];
    if (i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80 &&
        buf.size() < 4)
      continue;
    if (find(buf) >= 0) {
      t.push_back(find(buf));
    } else {
      for (unsigned char c : buf) t.push_back(c + 3);
    }
    buf.clear();
  }
  while (true) {
    float best = -1e10f;
    int best_id = -1, best_idx = -1;
    for (size_t i = 0; i + 1 < t.size(); ++i) {
      const int id = find(pieces[t[i]] + pieces[t[i + 1]]);
      if (id >= 0 && scores[id] > best)
        best = scores[id], best_id = id, best_idx = static_cast<int>(i);
    }
    if (best_idx < 0) break;
    t[best_idx] = best_id;
    t.erase(t.begin() + best_idx + 1);
  }
  return t;
}

}  // namespace

TEST_CASE("tokenizer: tok512 loads 512 tokens with byte pieces at ids 3..258") {
  const Tokenizer tok = Tokenizer::load(tok512());
  CHECK(tok.vocab_size() == 512);
  CHECK(tok.piece(1) == "\n<s>\n");
  CHECK(tok.piece(3) == "<0x00>");
  CHECK(tok.piece(258) == "<0xFF>");
  CHECK_THROWS_AS(tok.piece(512), kvq::Error);
}

TEST_CASE("tokenizer: first ids of tinystories-sample.txt match SOURCES.md") {
  const Tokenizer tok = Tokenizer::load(tok512());
  const std::vector<int32_t> ids = tok.encode(sample_text());
  const std::vector<int32_t> expected = {353, 331, 407, 261, 378, 383,
                                         286, 261, 376, 298, 315, 421};
  REQUIRE(ids.size() >= expected.size());
  CHECK(std::vector<int32_t>(ids.begin(), ids.begin() + 12) == expected);
}

TEST_CASE("tokenizer: whole tinystories-sample.txt encodes to 15,536 tokens") {
  const Tokenizer tok = Tokenizer::load(tok512());
  CHECK(tok.encode(sample_text()).size() == 15536);
}

TEST_CASE("tokenizer: first 3,000 characters encode to 1,517 ids equal to llama2.c's scan") {
  const Tokenizer tok = Tokenizer::load(tok512());
  const std::string head = sample_text().substr(0, 3000);
  const std::vector<int32_t> ids = tok.encode(head);
  CHECK(ids.size() == 1517);
  CHECK(ids == naive_encode(tok512(), head));
}

TEST_CASE("tokenizer: a character missing from the vocabulary falls back to byte + 3") {
  const Tokenizer tok = Tokenizer::load(tok512());
  // U+00FC (C3 BC) and U+4E2D (E4 B8 AD) are not tok512 pieces; tok512 has " " at id 410 and
  // no piece starting with a byte piece, so nothing merges.
  REQUIRE(tok.piece(410) == " ");
  const std::string text = "\xC3\xBC\xE4\xB8\xAD";
  const std::vector<int32_t> expected = {410, 0xC3 + 3, 0xBC + 3, 0xE4 + 3, 0xB8 + 3, 0xAD + 3};
  CHECK(tok.encode(text) == expected);
  CHECK(naive_encode(tok512(), text) == expected);
  // A character that is a piece (U+00E9, id 485) is not split.
  CHECK(tok.encode("\xC3\xA9") == std::vector<int32_t>{410, 485});
}

TEST_CASE("tokenizer: the highest-score pair merges first, the leftmost on equal scores") {
  // ids: 259 " ", 260 "a", 261 "aa" (score 5), 262 " a" (score 1), 263 "b", 264 "ab" (5)
  const auto path = write_tokenizer(
      "merge", base_vocab({{" ", 0}, {"a", 0}, {"aa", 5}, {" a", 1}, {"b", 0}, {"ab", 5}}));
  const Tokenizer tok = Tokenizer::load(path.string());
  // " aaa": "aa" (5) beats " a" (1); of the two "aa" pairs the left one merges: " " "aa" "a",
  // then nothing merges (" aa" and "aaa" are not pieces).
  CHECK(tok.encode("aaa") == std::vector<int32_t>{259, 261, 260});
  // " aab": "aa" and "ab" tie at 5, the left one wins: " " "aa" "b".
  CHECK(tok.encode("aab") == std::vector<int32_t>{259, 261, 263});
  // " ab": "ab" (5) merges before " a" (1).
  CHECK(tok.encode("ab") == std::vector<int32_t>{259, 264});
  // " ba": only " " "b" "a", no pair exists.
  CHECK(tok.encode("ba") == std::vector<int32_t>{259, 263, 260});
  CHECK(tok.encode("").empty());
  std::filesystem::remove(path);
}

TEST_CASE("tokenizer: decode drops the space after BOS and prints byte pieces as bytes") {
  const Tokenizer tok = Tokenizer::load(tok512());
  const int32_t once = tok.encode("Once").back();
  REQUIRE(tok.piece(once) == " Once");
  CHECK(tok.decode(kvq::kBosId, once) == "Once");
  CHECK(tok.decode(once, once) == " Once");
  CHECK(tok.decode(once, 10 + 3) == "\n");
}

TEST_CASE("tokenizer: text files read with CRLF and lone CR line ends normalized to LF") {
  const auto path = std::filesystem::temp_directory_path() / "kvq_test_tokenizer_text";
  std::ofstream(path, std::ios::binary) << "a\r\nb\rc\n\nd\r";
  CHECK(kvq::read_text_file(path.string()) == "a\nb\nc\n\nd\n");
  std::filesystem::remove(path);
  CHECK_THROWS_AS(kvq::read_text_file(path.string()), kvq::Error);
}

TEST_CASE("tokenizer: truncated or invalid files give errors naming file and token index") {
  const std::string good = read_file(tok512());
  const auto path = std::filesystem::temp_directory_path() / "kvq_test_tokenizer_bad";
  const auto write = [&](const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
  };
  // Cut inside a record: tokens 0..2 are 4 + (8+5) + (8+5) + (8+6) bytes = 44; cut 3 bytes into
  // token 3's header.
  write(good.substr(0, 47));
  CHECK_THROWS_WITH(Tokenizer::load(path.string()),
                    Catch::Contains(path.string()) && Catch::Contains("token 3"));
  // Token 1's length field set to 1000 (> max_token_length 7).
  std::string bad = good;
  const int32_t huge = 1000;
  std::memcpy(bad.data() + 4 + 8 + 5 + 4, &huge, 4);
  write(bad);
  CHECK_THROWS_WITH(Tokenizer::load(path.string()), Catch::Contains("token 1"));
  write("");
  CHECK_THROWS_AS(Tokenizer::load(path.string()), kvq::Error);
  CHECK_THROWS_AS(Tokenizer::load(path.string() + ".missing"), kvq::Error);
  std::filesystem::remove(path);
}
