# `cmake --install` of the build tree into a scratch prefix, then tests/install (a separate
# project using find_package(eplb)) configured, built and run against it. Run by CTest:
#   cmake -DBUILD=<eplb build dir> -DSRC=<tests/install> -DDIR=<scratch> [-DCUDA_ROOT=...]
#         [-DCONSUMER_CXX_FLAGS=<eplb's CMAKE_CXX_FLAGS>] -DGENERATOR=... -P install_check.cmake
# With -DEPLB_SOURCE_DIR=<eplb source tree> (and SRC=<tests/subproject>, no BUILD) nothing is
# installed: the consumer builds eplb itself through add_subdirectory (MPI only, no CUDA or
# HDF5, no build type: the quickest build that still has the runtime).
file(REMOVE_RECURSE ${DIR})
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(last_out "${out}" PARENT_SCOPE)
endfunction()
if(EPLB_SOURCE_DIR)
  set(extra -DEPLB_SOURCE_DIR=${EPLB_SOURCE_DIR} -DEPLB_ENABLE_CUDA=OFF -DEPLB_ENABLE_HDF5=OFF)
else()
  run("install" ${CMAKE_COMMAND} --install ${BUILD} --prefix ${DIR}/prefix)
  set(extra -DCMAKE_PREFIX_PATH=${DIR}/prefix -DCMAKE_BUILD_TYPE=Release)
  if(CUDA_ROOT)
    list(APPEND extra -DCUDAToolkit_ROOT=${CUDA_ROOT})
  endif()
  # The installed libraries are static: a consumer links what they were compiled with (in a
  # sanitizer build, the sanitizer's runtime), so it is built with eplb's own CXX flags.
  if(CONSUMER_CXX_FLAGS)
    list(APPEND extra "-DCMAKE_CXX_FLAGS=${CONSUMER_CXX_FLAGS}")
  endif()
endif()
run("configure the consumer" ${CMAKE_COMMAND} -S ${SRC} -B ${DIR}/consumer -G ${GENERATOR} ${extra})
run("build the consumer" ${CMAKE_COMMAND} --build ${DIR}/consumer -j2)
run("run the consumer" ${DIR}/consumer/consumer)
message(STATUS "${last_out}")
if(NOT last_out MATCHES "reference example OK")
  message(FATAL_ERROR "consumer output unexpected: ${last_out}")
endif()
