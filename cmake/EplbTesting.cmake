# Test helpers: MPI tests under mpiexec at several rank counts, and command-line checks.

# --bind-to none: Open MPI binds the ranks of small jobs to cores, each job from core 0, so two
# tests run side by side (ctest -j2) would share one core and leave the other idle.
set(EPLB_MPIEXEC_PREFLAGS "--oversubscribe;--allow-run-as-root;--bind-to;none"
    CACHE STRING "Extra flags placed before the program on mpiexec's command line (Open MPI's)")
set(EPLB_TEST_TIMEOUT 120 CACHE STRING "Default timeout (s) of every multi-rank test")

# eplb_add_mpi_test(NAME name TARGET tgt RANKS 1 2 4 [ARGS ...] [TIMEOUT s] [LABELS ...]
#                   [FAIL_REGEX regex])
# Adds one CTest test per rank count, named NAME.npN. No gtest_discover_tests: every rank
# must run the same list of tests, so the whole binary is one test per rank count.
# FAIL_REGEX: output that fails the test even when every rank exits 0.
function(eplb_add_mpi_test)
  cmake_parse_arguments(A "" "NAME;TARGET;TIMEOUT;FAIL_REGEX" "RANKS;ARGS;LABELS" ${ARGN})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT ${EPLB_TEST_TIMEOUT})
  endif()
  foreach(np IN LISTS A_RANKS)
    add_test(NAME ${A_NAME}.np${np}
             COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${np} ${EPLB_MPIEXEC_PREFLAGS}
                     ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${A_TARGET}> ${MPIEXEC_POSTFLAGS} ${A_ARGS})
    set_tests_properties(${A_NAME}.np${np} PROPERTIES
      TIMEOUT ${A_TIMEOUT} PROCESSORS ${np} LABELS "mpi;${A_LABELS}"
      ENVIRONMENT "OMPI_MCA_rmaps_base_oversubscribe=1;NCCL_NVLS_ENABLE=0")
    if(A_FAIL_REGEX)
      set_tests_properties(${A_NAME}.np${np} PROPERTIES FAIL_REGULAR_EXPRESSION "${A_FAIL_REGEX}")
    endif()
  endforeach()
endfunction()

# eplb_add_cli_test(NAME n EXIT code [STDERR regex] [STDOUT regex] [TIMEOUT s] COMMAND ...)
# Runs COMMAND and checks its exit code and output (regexes on stdout / stderr).
function(eplb_add_cli_test)
  cmake_parse_arguments(A "" "NAME;EXIT;STDERR;STDOUT;TIMEOUT" "COMMAND;LABELS" ${ARGN})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 60)
  endif()
  string(REPLACE ";" "^^" cmd "${A_COMMAND}")
  add_test(NAME ${A_NAME}
           COMMAND ${CMAKE_COMMAND} "-DCMD=${cmd}" "-DEXPECT_EXIT=${A_EXIT}"
                   "-DEXPECT_STDERR=${A_STDERR}" "-DEXPECT_STDOUT=${A_STDOUT}"
                   -P ${PROJECT_SOURCE_DIR}/cmake/run_cli_check.cmake)
  set_tests_properties(${A_NAME} PROPERTIES TIMEOUT ${A_TIMEOUT} LABELS "cli;${A_LABELS}"
                       ENVIRONMENT "NCCL_NVLS_ENABLE=0")
endfunction()
