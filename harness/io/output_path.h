// Where a subcommand may write an output file. Outputs are written to a temporary file and
// renamed over the path (harness/io/safetensors.h), which would replace whatever is there: so an
// existing path must be a regular file (not a device, FIFO, directory, socket or symbolic link;
// symlinks are refused rather than followed, so --out never writes outside the folder it names)
// and must not be one of the command's own inputs (same device and inode).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace kvq {

// Throws kvq::Error "PATH: exists and is a WHAT, not a regular file; ..." unless `path` is
// absent or a regular file (not followed when it is a symlink).
void require_replaceable(const std::string& path);

// require_replaceable(out), then refuses an `out` that is the same file as one of `inputs`
// ({option, path}; absent inputs are skipped). `out_option` names the output's option.
void check_output_path(const std::string& out_option, const std::string& out,
                       const std::vector<std::pair<std::string, std::string>>& inputs);

}  // namespace kvq
