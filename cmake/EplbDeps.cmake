# Header-only dependencies that a machine may lack as packages (the GPU machine has no CLI11):
# use the package's CMake config when present, else the headers under .deps/include (copied
# there by scripts/gpu-check.sh's caller; git-ignored), else fail with a clear message.
find_package(CLI11 CONFIG QUIET)
if(NOT TARGET CLI11::CLI11)
  find_path(EPLB_CLI11_INCLUDE_DIR CLI/CLI.hpp
            HINTS ${PROJECT_SOURCE_DIR}/.deps/include /usr/include /usr/local/include)
  if(NOT EPLB_CLI11_INCLUDE_DIR)
    message(FATAL_ERROR "CLI11 not found: install libcli11-dev (Debian/Ubuntu) or put its "
                        "headers in ${PROJECT_SOURCE_DIR}/.deps/include/CLI")
  endif()
  add_library(CLI11::CLI11 INTERFACE IMPORTED)
  set_target_properties(CLI11::CLI11 PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${EPLB_CLI11_INCLUDE_DIR})
endif()
