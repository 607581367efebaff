// GoogleTest main for tests run under mpiexec: rank 0 prints the usual report, the other ranks
// only their failures (prefixed with the rank), and every rank exits with the same code: 1 if
// a test failed on any rank, 77 (CTest's SKIP_RETURN_CODE) if every test that ran was skipped
// on every rank, else 0.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <string>

namespace {
/// The failures of a rank other than 0 (its result printer is removed: one report per job).
/// The test's name is kept from OnTestStart: GoogleTest 1.12 (Debian 12) reports a part result
/// with its UnitTest mutex held, so calling current_test_info() here deadlocked the rank at
/// its first failure (the job then ended only at CTest's timeout, without the message).
class RankFailurePrinter final : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestStart(const ::testing::TestInfo& test) override {
    suite_ = test.test_suite_name();
    name_ = test.name();
  }
  void OnTestEnd(const ::testing::TestInfo&) override { suite_ = name_ = "?"; }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s.%s: %s:%d: %s\n", rank_, suite_.c_str(), name_.c_str(),
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.message());
  }

 private:
  int rank_;
  std::string suite_ = "?", name_ = "?";
};
}  // namespace

int main(int argc, char** argv) {
  int provided = 0;  // eplb's planning threads make no MPI calls: FUNNELED is enough
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  const int local = RUN_ALL_TESTS();
  const auto* unit = ::testing::UnitTest::GetInstance();
  // {failed, not all skipped}: MAX over ranks.
  int flags[2] = {local != 0 ? 1 : 0,
                  unit->test_to_run_count() == 0 || unit->skipped_test_count() < unit->test_to_run_count()};
  MPI_Allreduce(MPI_IN_PLACE, flags, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (local != 0) std::fprintf(stderr, "rank %d: some tests FAILED on this rank\n", rank);
  MPI_Finalize();
  if (flags[0]) return 1;
  if (!flags[1]) {
    if (rank == 0) std::printf("every test was skipped (exit code 77: skipped)\n");
    return 77;
  }
  return 0;
}
