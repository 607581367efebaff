# `cmake --install` and find_package(eplb): the libraries, their headers (under
# include/eplb/, included as "eplb/algo/policy.hpp", as eplb's own sources do) and a
# package configuration with exported targets eplb::algo, eplb::comm, eplb::runtime,
# eplb::checkpoint_io (those that were built).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
set(EPLB_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/eplb)
set(EPLB_INCLUDE_DIR ${CMAKE_INSTALL_INCLUDEDIR}/eplb)

set(_eplb_targets eplb_warnings eplb_algo)
foreach(t eplb_comm eplb_runtime eplb_cuda_kernels eplb_checkpoint_io)
  if(TARGET ${t})
    list(APPEND _eplb_targets ${t})
  endif()
endforeach()
# The exported names drop the prefix: eplb_algo -> eplb::algo, as the in-tree aliases.
foreach(t IN LISTS _eplb_targets)
  string(REGEX REPLACE "^eplb_" "" _name ${t})
  set_target_properties(${t} PROPERTIES EXPORT_NAME ${_name})
endforeach()
install(TARGETS ${_eplb_targets} EXPORT eplbTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
# Headers of the built layers (the AVX-512 kernel's header is internal but harmless).
set(_eplb_header_dirs algo)
if(TARGET eplb_comm)
  list(APPEND _eplb_header_dirs comm runtime)
endif()
foreach(d IN LISTS _eplb_header_dirs)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/${d}/ DESTINATION ${EPLB_INCLUDE_DIR}/${d}
          FILES_MATCHING PATTERN "*.hpp")
endforeach()
install(FILES ${EPLB_BUILD_INCLUDE_DIR}/eplb/config.hpp
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/eplb)  # "eplb/config.hpp"
install(EXPORT eplbTargets NAMESPACE eplb:: DESTINATION ${EPLB_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/eplbConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/eplbConfig.cmake
                              INSTALL_DESTINATION ${EPLB_CMAKE_DIR}
                              PATH_VARS CMAKE_INSTALL_INCLUDEDIR)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/eplbConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/eplbConfig.cmake ${PROJECT_BINARY_DIR}/eplbConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/cmake/FindNCCL.cmake
        DESTINATION ${EPLB_CMAKE_DIR})
