#include "harness/io/output_path.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "reference/error.h"

namespace kvq {

namespace {

const char* file_type(mode_t mode) {
  if (S_ISLNK(mode)) return "symbolic link";
  if (S_ISDIR(mode)) return "directory";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  if (S_ISFIFO(mode)) return "FIFO";
  if (S_ISSOCK(mode)) return "socket";
  return "special file";
}

}  // namespace

void require_replaceable(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw Error(path + ": cannot stat (" + std::strerror(errno) + ")");
  }
  if (!S_ISREG(st.st_mode))
    throw Error(path + ": exists and is a " + file_type(st.st_mode) +
                ", not a regular file; refusing to replace it (remove it or choose another path)");
}

void check_output_path(const std::string& out_option, const std::string& out,
                       const std::vector<std::pair<std::string, std::string>>& inputs) {
  require_replaceable(out);
  struct stat target {};
  if (::stat(out.c_str(), &target) != 0) return;  // absent: nothing to overwrite
  for (const auto& [option, path] : inputs) {
    struct stat input {};
    if (::stat(path.c_str(), &input) == 0 && input.st_dev == target.st_dev &&
        input.st_ino == target.st_ino)
      throw Error(out + ": " + out_option + " is the same file as " + option + " " + path +
                  "; refusing to overwrite an input");
  }
}

}  // namespace kvq
