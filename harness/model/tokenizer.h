// llama2.c tokenizer: loader of its .bin format, the docs/spec.md §9 encoder (dummy-prefix space,
// codepoint lookup with byte fallback id = byte + 3, highest-score pair merges) and a decoder
// for printing generations.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kvq {

constexpr int32_t kBosId = 1;  // llama2.c: "\n<s>\n"
constexpr int32_t kEosId = 2;  // llama2.c: "\n</s>\n"

// Reads a text file for encoding (docs/spec.md §9 "read as UTF-8"). Line ends are normalized as
// Python's text mode does ("\r\n" and a lone "\r" become "\n"): the reference numbers in
// data/SOURCES.md (15,536 tokens for tinystories-sample.txt, which has CRLF line ends)
// were computed that way. Bytes are otherwise kept as they are; invalid UTF-8 falls back to
// byte ids in the encoder. Throws kvq::Error naming the file when it cannot be read.
std::string read_text_file(const std::string& path);

class Tokenizer {
 public:
  // File format: int32 max_token_length, then per token float32 score, int32 length, bytes, up to
  // the end of the file (the vocabulary size is the number of records). Throws kvq::Error naming
  // the file and the token index of a truncated or invalid record.
  static Tokenizer load(const std::string& path);
  // Throws kvq::Error naming the file unless the vocabulary has exactly `vocab_size` tokens.
  void require_vocab_size(int32_t vocab_size) const;

  int32_t vocab_size() const { return static_cast<int32_t>(pieces_.size()); }
  const std::string& piece(int32_t id) const;  // raw bytes of token id
  float score(int32_t id) const;
  const std::string& path() const { return path_; }

  // docs/spec.md §9: no BOS/EOS; an empty text gives no ids.
  std::vector<int32_t> encode(std::string_view text) const;
  // The bytes token `id` prints after token `previous` (llama2.c decode: a leading space is
  // dropped after BOS, "<0xHH>" pieces print their byte).
  std::string decode(int32_t previous, int32_t id) const;

 private:
  int32_t lookup(std::string_view piece) const;  // -1 when absent

  std::string path_;
  int32_t max_token_length_ = 0;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> ids_;  // piece -> lowest id with that piece
};

}  // namespace kvq
