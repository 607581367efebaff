#pragma once
// Allocation hooks for the tests that make allocations fail: the counting operator new of
// tests/counting_new.hpp (throws std::bad_alloc at allocation number g_fail_at while
// g_counting is set), and sweep(), which makes each allocation of one rank fail in turn.
// Include in one translation unit of a test program only (it defines the replaceable operators).
#include <gtest/gtest.h>
#include <mpi.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>

#include "../counting_new.hpp"
#include "mpi_test_util.hpp"

namespace {
struct Outcome {
  bool threw = false;
  std::string what;  ///< this rank's error
  std::string when;  ///< "allocation k of rank r (this rank's error)", for messages
};

/// For k = 1, 2, ... until rank `bad` makes fewer than k allocations in `action`: `setup()`
/// (nothing fails), then `action()` with allocation k of rank `bad` failing (std::bad_alloc),
/// then `check(outcome)` on every rank once the ranks agreed that all of them threw or none
/// did. Stops at the first failed expectation anywhere (so that no rank runs on alone).
/// Prints and returns how many actions threw.
template <class Setup, class Action, class Check>
int sweep(const char* what, int bad, Setup&& setup, Action&& action, Check&& check) {
  const int me = eplb::test::world_rank();
  int failures = 0, successes = 0;
  for (long k = 1;; ++k) {
    setup();
    Outcome o;
    g_allocations = 0;
    g_fail_at = me == bad ? k : 0;
    g_counting = me == bad;
    try {
      action();
    } catch (const std::exception& e) {
      o.threw = true;
      o.what = e.what();
    }
    g_counting = false;
    g_fail_at = 0;
    if (std::getenv("EPLB_ALLOC_TEST_DEBUG"))
      std::fprintf(stderr, "%s: rank %d k=%ld threw=%d %s\n", what, me, k, o.threw, o.what.c_str());
    const int reached = me == bad && g_allocations.load() >= k;  // allocation k happened
    int flags[3] = {reached, o.threw ? 1 : 0, o.threw ? 0 : 1};  // MAX: any reached, any threw, any went on
    MPI_Allreduce(MPI_IN_PLACE, flags, 3, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (flags[1] && flags[2]) {
      ADD_FAILURE() << what << ": allocation " << k << " of rank " << bad
                    << " failed: some ranks threw, others did not (this rank: "
                    << (o.threw ? o.what : std::string("no error")) << ")";
      return failures;
    }
    (o.threw ? failures : successes) += 1;
    o.when = "allocation " + std::to_string(k) + " of rank " + std::to_string(bad) + " (" + o.what + ")";
    check(o);
    int failed = ::testing::Test::HasFailure() ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (failed || !flags[0]) break;  // !flags[0]: every allocation of rank `bad` was tried
  }
  if (me == 0)
    std::printf("[ %s: rank %d of %d fails one allocation ] %d failed on every rank, %d went on\n", what, bad,
                eplb::test::world_size(), failures, successes);
  return failures;
}

}  // namespace
