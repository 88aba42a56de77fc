// Hostile inputs (tests/corpus/, made by make_corpus.py) fed to the real `kvq` binary, one row of
// tests/corpus/cases.tsv each: the process must exit with the expected status (2: bad input),
// print exactly one line on stderr that names the file and contains the row's key words, and
// leave no output file behind (STYLE.md rule 5: errors are one line with context, never a crash).
#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/kvq_process.h"
#include "tests/scratch.h"

namespace fs = std::filesystem;
using kvq::testing::run_kvq;

namespace {

struct Row {
  int line = 0;
  std::string file, command;
  int status = 0;
  std::vector<std::string> keywords;
};

fs::path corpus_dir() {
  const char* root = std::getenv("KVQ_SOURCE_ROOT");
  return fs::path(root ? root : ".") / "tests" / "corpus";
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::string part;
  std::istringstream in(text);
  while (std::getline(in, part, sep)) out.push_back(part);
  return out;
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

// cases.tsv: FILE <tab> COMMAND <tab> STATUS <tab> KEY WORDS (separated by '|'); '#' comments.
std::vector<Row> read_cases() {
  std::ifstream in(corpus_dir() / "cases.tsv");
  REQUIRE(in);
  std::vector<Row> rows;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty() || line[0] == '#') continue;
    const std::vector<std::string> cols = split(line, '\t');
    INFO("cases.tsv:" << number << ": " << line);
    REQUIRE(cols.size() == 4);
    Row r;
    r.line = number;
    r.file = cols[0];
    r.command = cols[1];
    r.status = std::stoi(cols[2]);
    r.keywords = split(cols[3], '|');
    REQUIRE(!r.keywords.empty());
    rows.push_back(r);
  }
  return rows;
}

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = kvq::testing::scratch_root("corpus") / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

}  // namespace

TEST_CASE("corpus: every hostile input exits 2 with one stderr line naming the file and problem") {
  const std::vector<Row> rows = read_cases();
  REQUIRE(rows.size() >= 40);
  const fs::path logs = fresh_dir("logs");
  for (const Row& row : rows) {
    const fs::path work = fresh_dir("work");
    const std::string file = (corpus_dir() / row.file).string();
    std::string command = replace_all(row.command, "{file}", file);
    command = replace_all(command, "{corpus}", corpus_dir().string());
    command = replace_all(command, "{tmp}", work.string());
    std::vector<std::string> args;
    for (const std::string& a : split(command, ' '))
      if (!a.empty()) args.push_back(a);
    const auto result = run_kvq(args, logs);
    INFO("cases.tsv:" << row.line << ": kvq " << command << "\nstderr: " << result.err
                      << "stdout: " << result.out);
    CHECK(result.status == row.status);
    // Exactly one line: non-empty, ends in '\n', no other '\n'.
    CHECK(!result.err.empty());
    CHECK(result.err.back() == '\n');
    CHECK(std::count(result.err.begin(), result.err.end(), '\n') == 1);
    // The CLI's one prefix, once: "kvq: MESSAGE", never "kvq: kvq apply: ..." or "kvq: x: x: ...".
    REQUIRE(result.err.rfind("kvq: ", 0) == 0);
    const std::string message = result.err.substr(5);
    CHECK(message.rfind("kvq", 0) != 0);
    if (const size_t colon = message.find(": "); colon != std::string::npos) {
      const std::string head = message.substr(0, colon + 2);
      CHECK(message.compare(head.size(), head.size(), head) != 0);
    }
    if (row.file != "-")  // '-': command-line misuse, no file to name
      CHECK(result.err.find(fs::path(row.file).filename().string()) != std::string::npos);
    for (const std::string& word : row.keywords) {
      INFO("key words: " << word);
      CHECK(result.err.find(word) != std::string::npos);
    }
    // Nothing half-written: a refused input leaves no output (or temporary) file.
    CHECK(fs::is_empty(work));
  }
}

TEST_CASE("corpus: every file in tests/corpus is used by a row of cases.tsv") {
  std::ifstream in(corpus_dir() / "cases.tsv");
  const std::string table((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::set<std::string> not_inputs = {"cases.tsv", "make_corpus.py"};
  int files = 0;
  for (const auto& entry : fs::directory_iterator(corpus_dir())) {
    const std::string name = entry.path().filename().string();
    if (not_inputs.count(name)) continue;
    ++files;
    INFO(name << " is in tests/corpus but no row of cases.tsv uses it");
    CHECK(table.find(name) != std::string::npos);
  }
  CHECK(files >= 40);
}
