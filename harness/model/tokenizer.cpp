#include "harness/model/tokenizer.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <queue>
#include <vector>

#include "harness/io/size_limits.h"
#include "reference/error.h"

namespace kvq {
namespace {

// llama2.c starts its best-pair search at -1e10 and merges only pairs scoring strictly above it.
constexpr float kNoMerge = -1e10f;

int32_t read_i32(const std::string& bytes, size_t offset) {
  int32_t v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

float read_f32(const std::string& bytes, size_t offset) {
  float v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// One symbol of the sequence being merged: a doubly linked list over the initial positions, so
// a merged symbol keeps the position of its left part and positions stay in text order.
struct Symbol {
  int32_t id;
  int32_t prev, next;  // -1 at the ends
  bool alive;
};

// A candidate merge of the adjacent symbols at `left` and `right`, valid while both are alive,
// still adjacent and still hold the ids they had when it was queued.
struct Candidate {
  float score;
  int32_t left, right;
  int32_t left_id, right_id, merged_id;
};

// Highest score first; among equal scores the leftmost pair, which is the pair llama2.c's
// linear scan (strict `>`) picks.
struct CandidateOrder {
  bool operator()(const Candidate& a, const Candidate& b) const {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;
  }
};

// The offset of the first byte that is not part of a well-formed UTF-8 sequence (RFC 3629: no
// overlong forms, no surrogates, nothing above U+10FFFF), or npos when the text is valid.
size_t invalid_utf8_at(const std::string& s) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = byte(i);
    size_t n = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (c < 0x80) n = 1;
    else if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) n = 3, lo = 0xA0;
    else if (c == 0xED) n = 3, hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) n = 3;
    else if (c == 0xF0) n = 4, lo = 0x90;
    else if (c == 0xF4) n = 4, hi = 0x8F;
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else return i;
    if (i + n > s.size()) return i;
    for (size_t k = 1; k < n; ++k) {
      const unsigned char b = byte(i + k);
      if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return i;
    }
    i += n;
  }
  return std::string::npos;
}

}  // namespace

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw Error("text " + path + ": is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("text " + path + ": cannot open (" + std::strerror(errno) + ")");
  // In chunks, stopping past the limit: /dev/zero or a huge file ends there, not in bad_alloc.
  std::string raw;
  std::vector<char> chunk(1 << 20);
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    raw.append(chunk.data(), static_cast<size_t>(in.gcount()));
    if (static_cast<int64_t>(raw.size()) > kMaxTextBytes)
      throw Error("text " + path + ": longer than " + std::to_string(kMaxTextBytes) +
                  " bytes, the limit");
  }
  if (in.bad()) throw Error("text " + path + ": read failed");
  if (const size_t bad = invalid_utf8_at(raw); bad != std::string::npos)
    throw Error("text " + path + ": invalid UTF-8 at byte " + std::to_string(bad));
  std::string text;
  text.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] != '\r') {
      text.push_back(raw[i]);
    } else {
      text.push_back('\n');
      if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
    }
  }
  return text;
}

Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("tokenizer " + path + ": cannot open (" + std::strerror(errno) + ")");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 4)
    throw Error("tokenizer " + path + ": file has " + std::to_string(bytes.size()) +
                " bytes, too short for the int32 max_token_length header");
  Tokenizer tok;
  tok.path_ = path;
  tok.max_token_length_ = read_i32(bytes, 0);
  if (tok.max_token_length_ <= 0)
    throw Error("tokenizer " + path + ": max_token_length " +
                std::to_string(tok.max_token_length_) + " is not positive");
  size_t offset = 4;
  while (offset < bytes.size()) {
    const std::string where = "tokenizer " + path + ": token " + std::to_string(tok.pieces_.size());
    if (bytes.size() - offset < 8)
      throw Error(where + ": truncated record (score and length need 8 bytes, " +
                  std::to_string(bytes.size() - offset) + " left)");
    const float score = read_f32(bytes, offset);
    const int32_t length = read_i32(bytes, offset + 4);
    offset += 8;
    if (std::isnan(score)) throw Error(where + ": score is NaN");
    if (length < 0 || length > tok.max_token_length_)
      throw Error(where + ": length " + std::to_string(length) + " outside [0, " +
                  std::to_string(tok.max_token_length_) + "] (max_token_length)");
    if (bytes.size() - offset < static_cast<size_t>(length))
      throw Error(where + ": truncated piece (" + std::to_string(length) + " bytes declared, " +
                  std::to_string(bytes.size() - offset) + " left)");
    tok.pieces_.push_back(bytes.substr(offset, static_cast<size_t>(length)));
    tok.scores_.push_back(score);
    offset += static_cast<size_t>(length);
  }
  // Byte fallback needs ids 3..258 (docs/spec.md §9), BOS/EOS are ids 1 and 2.
  if (tok.pieces_.size() < 259)
    throw Error("tokenizer " + path + ": " + std::to_string(tok.pieces_.size()) +
                " tokens, fewer than the 259 that BOS/EOS and the 256 byte-fallback ids need");
  for (size_t i = 0; i < tok.pieces_.size(); ++i)
    tok.ids_.emplace(tok.pieces_[i], static_cast<int32_t>(i));
  return tok;
}

void Tokenizer::require_vocab_size(int32_t vocab_size) const {
  if (this->vocab_size() != vocab_size)
    throw Error("tokenizer " + path_ + ": " + std::to_string(this->vocab_size()) +
                " tokens, but the model's vocabulary has " + std::to_string(vocab_size));
}

const std::string& Tokenizer::piece(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    throw Error("tokenizer " + path_ + ": token id " + std::to_string(id) + " outside [0, " +
                std::to_string(vocab_size()) + ")");
  return pieces_[static_cast<size_t>(id)];
}

float Tokenizer::score(int32_t id) const {
  piece(id);  // range check
  return scores_[static_cast<size_t>(id)];
}

int32_t Tokenizer::lookup(std::string_view piece) const {
  const auto it = ids_.find(std::string(piece));
  return it == ids_.end() ? -1 : it->second;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  if (text.empty()) return {};
  std::vector<int32_t> initial;
  const int32_t space = lookup(" ");
  if (space < 0) throw Error("tokenizer " + path_ + ": no \" \" token for the dummy prefix");
  initial.push_back(space);

  // Codepoints as llama2.c groups them: a non-continuation byte starts a new buffer, up to 3
  // continuation bytes (10xxxxxx) join it. Unlike llama2.c (C strings) a NUL byte is encoded
  // like any other byte rather than ending the text.
  std::string buffer;
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if ((c & 0xC0) != 0x80) buffer.clear();
    buffer.push_back(static_cast<char>(c));
    const bool next_continues =
        i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
    if (next_continues && buffer.size() < 4) continue;
    const int32_t id = lookup(buffer);
    if (id >= 0) {
      initial.push_back(id);
    } else {
      for (char b : buffer) initial.push_back(static_cast<unsigned char>(b) + 3);
    }
    buffer.clear();
  }

  // Merges in llama2.c's order (highest score, leftmost on ties), with a priority queue instead
  // of its quadratic rescans so whole files encode quickly.
  const auto n = static_cast<int32_t>(initial.size());
  std::vector<Symbol> symbols(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) symbols[i] = {initial[i], i - 1, i + 1 < n ? i + 1 : -1, true};
  std::priority_queue<Candidate, std::vector<Candidate>, CandidateOrder> queue;
  const auto push_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const int32_t a = symbols[left].id, b = symbols[right].id;
    const int32_t merged = lookup(pieces_[a] + pieces_[b]);
    if (merged < 0 || !(scores_[merged] > kNoMerge)) return;
    queue.push({scores_[merged], left, right, a, b, merged});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push_pair(i, i + 1);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    Symbol& right = symbols[c.right];
    if (!left.alive || !right.alive || left.next != c.right || left.id != c.left_id ||
        right.id != c.right_id)
      continue;
    left.id = c.merged_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    push_pair(left.prev, c.left);
    push_pair(c.left, left.next);
  }
  std::vector<int32_t> ids;
  for (int32_t i = 0; i >= 0; i = symbols[i].next) ids.push_back(symbols[i].id);
  return ids;
}

std::string Tokenizer::decode(int32_t previous, int32_t id) const {
  std::string_view p = piece(id);
  if (previous == kBosId && !p.empty() && p[0] == ' ') p.remove_prefix(1);
  if (p.size() == 6 && p.substr(0, 3) == "<0x" && p[5] == '>') {
    const int hi = hex_value(p[3]), lo = hex_value(p[4]);
    if (hi >= 0 && lo >= 0) return std::string(1, static_cast<char>(hi * 16 + lo));
  }
  return std::string(p);
}

}  // namespace kvq
