#include "harness/cli/cli.h"

int main(int argc, char** argv) {
  return kvq::cli_main(argc, argv);
}
