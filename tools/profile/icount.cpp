// Instruction counter for code valgrind cannot run (AVX-512; docs/readme-avx.md "Profile").
// Runs PROGRAM ARGS... under ptrace and single-steps it between its first and second
// raise(SIGSTOP) (the program marks the region it wants counted); prints the count on stderr
// and, when ICOUNT_HIST names a file, writes "address count" lines for every instruction
// executed there. Single-threaded regions only (OMP_NUM_THREADS=1): other threads are not traced.
//   usage: icount PROGRAM ARGS...
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: icount PROGRAM ARGS...\n");
    return 2;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    ptrace(PTRACE_TRACEME, 0, nullptr, nullptr);
    execvp(argv[1], argv + 1);
    _exit(127);
  }
  int st = 0;
  waitpid(pid, &st, 0);  // stopped at exec
  const char* hist_path = std::getenv("ICOUNT_HIST");
  std::map<uint64_t, uint64_t> hist;
  int marks = 0;
  uint64_t count = 0;
  ptrace(PTRACE_CONT, pid, nullptr, nullptr);
  for (;;) {
    waitpid(pid, &st, 0);
    if (WIFEXITED(st) || WIFSIGNALED(st)) break;
    const int sig = WSTOPSIG(st);
    if (sig == SIGSTOP) {
      ++marks;
    } else if (sig == SIGTRAP && marks == 1) {
      ++count;
      if (hist_path) {
        user_regs_struct r;
        ptrace(PTRACE_GETREGS, pid, nullptr, &r);
        ++hist[r.rip];
      }
    }
    // The marks and the single-step traps are ours; any other signal goes to the program.
    const long deliver = sig == SIGSTOP || sig == SIGTRAP ? 0 : sig;
    ptrace(marks == 1 ? PTRACE_SINGLESTEP : PTRACE_CONT, pid, nullptr,
           reinterpret_cast<void*>(deliver));
  }
  if (marks < 2) {
    std::fprintf(stderr, "icount: the program raised SIGSTOP %d times, not 2\n", marks);
    return 1;
  }
  std::fprintf(stderr, "icount: %llu instructions\n", static_cast<unsigned long long>(count));
  if (hist_path) {
    FILE* f = std::fopen(hist_path, "w");
    if (!f) {
      std::perror(hist_path);
      return 1;
    }
    for (const auto& [rip, n] : hist)
      std::fprintf(f, "%llx %llu\n", static_cast<unsigned long long>(rip),
                   static_cast<unsigned long long>(n));
    std::fclose(f);
  }
  return 0;
}
