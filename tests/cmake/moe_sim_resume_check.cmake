# moe_sim: 2N passes in one run must end like N passes + checkpoint + resume + N passes
# (same placement, window, epoch and pass in the final checkpoint; same rebalance rows apart
# from the timings). moe_sim's skip code 77 prints "SKIPPED: <reason>" and ends the check
# (the test's SKIP_REGULAR_EXPRESSION). Run by CTest:
#   cmake -DMPIEXEC="mpiexec;-n;2;..." -DSIM=moe_sim -DH5DUMP=h5dump -DDIR=work -DN=100
#         "-DARGS=--layers;4;..." -P moe_sim_resume_check.cmake
file(REMOVE_RECURSE ${DIR})
file(MAKE_DIRECTORY ${DIR})
math(EXPR N2 "2 * ${N}")

function(sim)
  execute_process(COMMAND ${MPIEXEC} ${SIM} ${ARGS} ${ARGN} WORKING_DIRECTORY ${DIR}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 77)  # moe_sim's skip code (e.g. --device cuda without a GPU per rank)
    string(STRIP "${err}" err)
    string(REPLACE "moe_sim: SKIPPED: " "" err "${err}")
    message(STATUS "SKIPPED: ${err}")
    set(skipped TRUE PARENT_SCOPE)
  elseif(NOT rc EQUAL 0)
    message(FATAL_ERROR "moe_sim ${ARGN} failed (${rc}):\n${out}\n${err}")
  endif()
endfunction()

sim(--passes ${N2} --checkpoint full.h5 --csv full.csv)
if(skipped)
  return()
endif()
sim(--passes ${N} --checkpoint half.h5 --checkpoint-every 2)
sim(--passes ${N} --resume half.h5 --checkpoint half.h5 --csv resumed.csv)

# The final state: everything h5dump shows of phy2log, window (with cursor), epoch and pass
# (where h5dump is installed; the rows below are compared in any case).
set(compared "same final checkpoint")
if(NOT H5DUMP)
  set(compared "final checkpoints not compared: no h5dump")
endif()
foreach(f full half)
  if(NOT H5DUMP)
    break()
  endif()
  execute_process(COMMAND ${H5DUMP} -d /phy2log -d /window -a /epoch -a /pass ${f}.h5
                  WORKING_DIRECTORY ${DIR} RESULT_VARIABLE rc OUTPUT_VARIABLE dump_${f})
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "h5dump ${f}.h5 failed")
  endif()
  string(REGEX REPLACE "^HDF5 \"[^\"]*\"" "" dump_${f} "${dump_${f}}")
endforeach()
if(H5DUMP AND NOT dump_full STREQUAL dump_half)
  message(FATAL_ERROR "final checkpoints differ:\n--- 2N passes:\n${dump_full}\n--- resumed:\n${dump_half}")
endif()

# The rebalances after the checkpoint: the resumed run's rows are the full run's last rows.
function(rows file out)
  file(STRINGS ${DIR}/${file} lines)
  list(REMOVE_AT lines 0)
  set(r "")
  foreach(l IN LISTS lines)
    string(REPLACE "," ";" cells "${l}")
    list(SUBLIST cells 0 12 keep)  # pass .. local bytes; the rest are timings
    list(JOIN keep "," k)
    list(APPEND r "${k}")
  endforeach()
  set(${out} "${r}" PARENT_SCOPE)
endfunction()
rows(full.csv full_rows)
rows(resumed.csv resumed_rows)
list(LENGTH resumed_rows n)
list(LENGTH full_rows nf)
if(n EQUAL 0)
  message(FATAL_ERROR "the resumed run did not rebalance: choose N larger than the interval")
endif()
math(EXPR first "${nf} - ${n}")
list(SUBLIST full_rows ${first} ${n} tail)
if(NOT tail STREQUAL resumed_rows)
  message(FATAL_ERROR "rebalance rows differ:\n--- 2N passes:\n${tail}\n--- resumed:\n${resumed_rows}")
endif()
# A resume with another router seed is refused (the settings recorded beside the checkpoint).
execute_process(COMMAND ${MPIEXEC} ${SIM} ${ARGS} --passes 1 --resume half.h5 --seed 9 WORKING_DIRECTORY ${DIR}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "--seed 1 \\(this run: 9\\)")
  message(FATAL_ERROR "a resume with --seed 9 was not refused naming --seed (exit ${rc}):\n${out}\n${err}")
endif()
message(STATUS "resume matches: ${n} rebalances after the checkpoint; ${compared}; another --seed is refused")
file(REMOVE_RECURSE ${DIR})
