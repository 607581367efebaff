# cmake -DCMD=<list> -DEXPECT_EXIT=n [-DEXPECT_STDERR=re] [-DEXPECT_STDOUT=re] -P run_cli_check.cmake
string(REPLACE "^^" ";" CMD "${CMD}")  # list separator escaped by eplb_add_cli_test
execute_process(COMMAND ${CMD} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("--- command: ${CMD}\n--- exit: ${rc}\n--- stdout:\n${out}\n--- stderr:\n${err}")
if(NOT "${rc}" STREQUAL "${EXPECT_EXIT}")
  message(FATAL_ERROR "exit code ${rc}, expected ${EXPECT_EXIT}")
endif()
if(EXPECT_STDERR AND NOT err MATCHES "${EXPECT_STDERR}")
  message(FATAL_ERROR "stderr does not match '${EXPECT_STDERR}'")
endif()
if(EXPECT_STDOUT AND NOT out MATCHES "${EXPECT_STDOUT}")
  message(FATAL_ERROR "stdout does not match '${EXPECT_STDOUT}'")
endif()
