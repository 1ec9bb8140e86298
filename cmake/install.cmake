# What `make install` (cmake --install) puts under the prefix: the shared
# and static libraries, the two headers (identity.cmake adds the second),
# the pkg-config module, the CMake package and the man pages. The tools and
# demo programs install themselves (tools/, demo/).
include(CMakePackageConfigHelpers)

# The .pc file finds the prefix from where it lies (${pcfiledir}), so an
# install moved elsewhere, or made with `cmake --install --prefix DIR`, holds.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(MDG_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  file(RELATIVE_PATH mdg_pc_up "/x/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/x")
  set(MDG_PC_PREFIX "\${pcfiledir}/${mdg_pc_up}")
endif()
configure_file(cmake/libmessidge.pc.in libmessidge.pc @ONLY)
install(TARGETS messidge EXPORT messidgeTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS messidge_static ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES include/messidge.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/libmessidge.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# find_package(messidge) -> messidge::messidge (the shared library), as nng
# and CZMQ do. The static library is for pkg-config --static users.
set(MDG_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/messidge)
install(EXPORT messidgeTargets NAMESPACE messidge:: DESTINATION ${MDG_CMAKE_DIR})
configure_package_config_file(cmake/messidgeConfig.cmake.in
                              ${CMAKE_CURRENT_BINARY_DIR}/messidgeConfig.cmake
                              INSTALL_DESTINATION ${MDG_CMAKE_DIR})
# 0.x: the shared library's soname is the major version; a program built
# against 0.1 runs with any later 0.y of the same soname.
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/messidgeConfigVersion.cmake
                                 COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/messidgeConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/messidgeConfigVersion.cmake
        DESTINATION ${MDG_CMAKE_DIR})

install(FILES man/messidge-broker.1 man/messidge-admin.1 man/messidge.1
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)

# An example systemd unit, with the installed broker's path.
set(MDG_BROKER_PATH ${CMAKE_INSTALL_FULL_BINDIR}/messidge-broker)
configure_file(dist/messidge-broker.service.in messidge-broker.service @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/messidge-broker.service DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)
