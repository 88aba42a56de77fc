#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include "shared_data.h"

namespace {

int failed_assertions = 0;

// Counts failed assertions (and unexpected exceptions) as they happen, so that a binary that
// skips itself for a missing ../shared file can still report the failures that came before.
struct FailureCounter : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  bool assertionEnded(const Catch::AssertionStats& stats) override {
    if (!stats.assertionResult.isOk()) ++failed_assertions;
    return true;
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(FailureCounter)

int kvq::testing::failed_assertions_so_far() { return failed_assertions; }
