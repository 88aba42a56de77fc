// Hostile use of the `kvq` binary beyond one bad input file (tests/test_corpus.cpp has those):
// outputs that would destroy something, inputs sized to exhaust memory or time, options that
// contradict each other. Each run must end in one line on stderr naming the file, key or option
// and exit status 2, and leave what it was pointed at untouched (STYLE.md rule 5).
#include <fcntl.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/kvq_process.h"
#include "tests/scratch.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using kvq::testing::KvqResult;
using kvq::testing::read_whole_file;

namespace {

// This process' scratch folder, removed when the test binary exits.
struct ScratchRoot {
  const fs::path dir =
      kvq::testing::scratch_root("hostile");
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

// `kvq ARGS...` run by a process that cannot write `dir`'s files (their write bits removed): as
// root, who may write anything, the child drops the capabilities that override file modes from
// its bounding set before exec, so the kvq it starts stays root (and reaches the binary and the
// folder wherever they are, also under a 0700 folder) but obeys the owner's mode bits.
KvqResult kvq_as_reader(const fs::path& dir, const std::vector<std::string>& args) {
  const fs::path out = scratch.dir / "reader.stdout", err = scratch.dir / "reader.stderr";
  std::vector<std::string> argv_text = {kvq::testing::kvq_bin()};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0666);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (o < 0 || e < 0 || ::dup2(o, 1) < 0 || ::dup2(e, 2) < 0 || ::chdir(dir.c_str()) != 0)
      ::_exit(127);
    if (::geteuid() == 0)
      for (const int cap : {CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER})
        if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) ::_exit(126);
  std::vector<char*> argv;
    for (std::string& a : argv_text) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  KvqResult r;
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_whole_file(out);
  r.err = read_whole_file(err);
  return r;
}

// A results database with one complete run of one fwht case, in `dir`.
fs::path results_db(const fs::path& dir) {
  std::ofstream(dir / "s.toml") << "[[case]]\nop = \"fwht\"\ntokens = 1\nn = 4\n";
  const fs::path db = dir / "r.db";
  const KvqResult r = kvq_in(dir, {"run", (dir / "s.toml").string(), "--db", db.string(),
                                   "--backends", "ref"});
  INFO(r.err);
  REQUIRE(r.status == 0);
  return db;
}

}  // namespace

TEST_CASE("hostile: a report opens the database read-only, also in a folder it cannot write") {
  const fs::path dir = fresh_dir("report");
  const fs::path db = results_db(dir);
  const std::string before = read_whole_file(db);
  const std::string copy = (dir / "copy.db").string(), other = (dir / "other.db").string();
  for (const std::string& sql :
       {std::string("DELETE FROM checks"), std::string("DROP TABLE measurements"),
        "VACUUM INTO '" + copy + "'", "ATTACH '" + other + "' AS x",
        std::string("CREATE TEMP TABLE t (x)"), std::string("PRAGMA journal_mode = DELETE"),
        std::string("SELECT 1; UPDATE runs SET status = 'x'")}) {
    INFO(sql);
    require_one_line_error(kvq_in(dir, {"report", "--db", db.string(), "--sql", sql}),
                           {"query: "});
  }
  CHECK(read_whole_file(db) == before);
  CHECK(!fs::exists(copy));
  CHECK(!fs::exists(other));
  // A database in a folder this user cannot write (WAL mode, its -wal and -shm files gone: the
  // read-only reports above made them, an empty log and its index, as SQLite does).
  REQUIRE(fs::file_size(db.string() + "-wal") == 0);
  for (const char* suffix : {"-wal", "-shm"}) fs::remove(db.string() + suffix);
  const fs::perms writes = fs::perms::owner_write | fs::perms::group_write | fs::perms::others_write;
  fs::permissions(db, writes, fs::perm_options::remove);
  fs::permissions(dir, writes, fs::perm_options::remove);
  const KvqResult r = kvq_as_reader(dir, {"report", "--db", db.string()});
  fs::permissions(dir, fs::perms::owner_write, fs::perm_options::add);
  // The reader could not write the folder: it made no -wal or -shm file as the reports above did.
  for (const char* suffix : {"-wal", "-shm", "-journal"}) CHECK(!fs::exists(db.string() + suffix));
  INFO(r.err);
  CHECK(r.status == 0);
  CHECK_THAT(r.out, Contains("fwht"));
  CHECK(read_whole_file(db) == before);
}

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

TEST_CASE("hostile: a foreign SQLite file is never written as --db or merge output") {
  const fs::path dir = fresh_dir("foreign");
  const fs::path db = results_db(dir);
  const fs::path foreign = dir / "notes.db";
  sqlite3* h = nullptr;
  REQUIRE(sqlite3_open(foreign.c_str(), &h) == SQLITE_OK);
  REQUIRE(sqlite3_exec(h, "CREATE TABLE notes (text); INSERT INTO notes VALUES ('mine')", nullptr,
                       nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(h);
  const std::string before = read_whole_file(foreign);
  const std::string scenario = (dir / "s.toml").string();
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"run", scenario, "--db", foreign.string()},
        std::vector<std::string>{"merge", db.string(), "-o", foreign.string()}}) {
    INFO(args[0]);
    require_one_line_error(kvq_in(dir, args), {foreign.string(), "not a kvq results store"});
  }
  CHECK(read_whole_file(foreign) == before);
  CHECK(!fs::exists(dir / "notes.db-wal"));
  // A merge that fails leaves no output file it created.
  const fs::path out = dir / "merged.db";
  require_one_line_error(kvq_in(dir, {"merge", db.string(), foreign.string(), "-o", out.string()}),
                         {foreign.string()});
  for (const char* suffix : {"", "-wal", "-shm", "-journal"})
    CHECK(!fs::exists(out.string() + suffix));
}
