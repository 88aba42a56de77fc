#include "harness/cli/cli.h"
#include "kvq_version.h"  // generated at build time (harness/meson.build)

int main(int argc, char** argv) {
  return kvq::cli_main(argc, argv, kvq::version_string(KVQ_VERSION, KVQ_GIT_REVISION));
}
