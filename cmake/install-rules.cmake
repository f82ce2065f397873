# Install rules for C++ embedders: `find_package(kvserve REQUIRED)` + `target_link_libraries(app
# kvserve::engine)`. Skipped when scikit-build-core builds the Python wheel.
include(CMakePackageConfigHelpers)

install(TARGETS kvserve_engine EXPORT kvserveTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/kvserve" DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES
  "${PROJECT_BINARY_DIR}/include/kvserve/export.h"
  "${PROJECT_BINARY_DIR}/include/kvserve/config.h"
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvserve)

set(KVSERVE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/kvserve)
install(EXPORT kvserveTargets NAMESPACE kvserve:: DESTINATION ${KVSERVE_CMAKE_DIR})
configure_package_config_file(cmake/kvserve-config.cmake.in kvserve-config.cmake
  INSTALL_DESTINATION ${KVSERVE_CMAKE_DIR})
write_basic_package_version_file(kvserve-config-version.cmake COMPATIBILITY SameMajorVersion)
install(FILES
  "${PROJECT_BINARY_DIR}/kvserve-config.cmake"
  "${PROJECT_BINARY_DIR}/kvserve-config-version.cmake"
  DESTINATION ${KVSERVE_CMAKE_DIR})
