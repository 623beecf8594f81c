# A stand-in for an installed Slicer, used only by Testing/Python/test_packaging.py (no Slicer can be
# installed on our machines). It is NOT Slicer's code: the three macros below are written from the
# documented contract of, and the behaviour read in the sources of,
#   - Slicer  CMake/SlicerMacroBuildScriptedModule.cmake  (slicerMacroBuildScriptedModule)
#   - CTK     CMake/ctkMacroCompilePythonScript.cmake      (ctkMacroCompilePythonScript)
#   - Slicer  CMake/SlicerMacroPythonTesting.cmake        (slicer_add_python_unittest)
# reproducing what decides where files land: which source path each entry is copied from, the
# destination path it gets, and what `install(DIRECTORY …)` installs. Not reproduced: byte compilation,
# translations, the generic tests, the application launcher and CPack.
set(Slicer_FOUND TRUE)
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/NoOp.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/NoOp.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/NoOp.cmake)
set(Slicer_USE_PYTHONQT TRUE)
# Slicer's values: lib/Slicer-<major>.<minor>/qt-scripted-modules, the same in the build and install trees.
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
file(WRITE ${CMAKE_BINARY_DIR}/python_unittests.txt "")

# ctkMacroCompilePythonScript(TARGET_NAME n SCRIPTS … [RESOURCES …] [SOURCE_DIR d] DESTINATION_DIR d
#                             INSTALL_DIR d [NO_INSTALL_SUBDIR])
# SCRIPTS entry f (".py" appended when its extension is not py): SOURCE_DIR/f → DESTINATION_DIR/f
#   (SOURCE_DIR defaults to CMAKE_CURRENT_SOURCE_DIR; an absolute f lands at its path relative to
#   CMAKE_CURRENT_BINARY_DIR). RESOURCES entry f: CMAKE_CURRENT_SOURCE_DIR/f → DESTINATION_DIR/f.
# Install: install(DIRECTORY DESTINATION_DIR DESTINATION INSTALL_DIR), with a trailing "/" (the folder's
#   content, not the folder) under NO_INSTALL_SUBDIR.
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET" ""
    "TARGET_NAME;SCRIPTS;RESOURCES;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" ${ARGN})
  foreach(varname TARGET_NAME SCRIPTS DESTINATION_DIR INSTALL_DIR)
    if(NOT DEFINED MY_${varname})
      message(FATAL_ERROR "${varname} is mandatory")
    endif()
  endforeach()
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  get_filename_component(MY_SOURCE_DIR ${MY_SOURCE_DIR} REALPATH)
  get_filename_component(MY_DESTINATION_DIR ${MY_DESTINATION_DIR} REALPATH)
  set(_copied)
  foreach(file ${MY_SCRIPTS})
    get_filename_component(file_ext ${file} EXT)
    if(NOT "${file_ext}" MATCHES "py")
      set(file "${file}.py")
    endif()
    set(src "${MY_SOURCE_DIR}/${file}")
    set(tgt_file ${file})
    if(IS_ABSOLUTE ${file})
      set(src ${file})
      file(RELATIVE_PATH tgt_file ${CMAKE_CURRENT_BINARY_DIR} ${file})
    endif()
    add_custom_command(OUTPUT ${MY_DESTINATION_DIR}/${tgt_file} DEPENDS ${src}
      COMMAND ${CMAKE_COMMAND} -E copy ${src} ${MY_DESTINATION_DIR}/${tgt_file})
    list(APPEND _copied ${MY_DESTINATION_DIR}/${tgt_file})
  endforeach()
  foreach(file ${MY_RESOURCES})
    set(src "${CMAKE_CURRENT_SOURCE_DIR}/${file}")
    add_custom_command(OUTPUT ${MY_DESTINATION_DIR}/${file} DEPENDS ${src}
      COMMAND ${CMAKE_COMMAND} -E copy ${src} ${MY_DESTINATION_DIR}/${file})
    list(APPEND _copied ${MY_DESTINATION_DIR}/${file})
  endforeach()
  add_custom_target(Copy${MY_TARGET_NAME}PythonFiles ALL DEPENDS ${_copied})
  set(_directory_to_install ${MY_DESTINATION_DIR})
  if(MY_NO_INSTALL_SUBDIR)
    set(_directory_to_install ${MY_DESTINATION_DIR}/)
  endif()
  install(DIRECTORY "${_directory_to_install}" DESTINATION "${MY_INSTALL_DIR}" COMPONENT RuntimeLibraries
    USE_SOURCE_PERMISSIONS)
endmacro()

# slicerMacroBuildScriptedModule(NAME n SCRIPTS … RESOURCES … [WITH_GENERIC_TESTS] [WITH_SUBDIR])
# Every SCRIPTS/RESOURCES entry must exist (relative to CMAKE_CURRENT_SOURCE_DIR, ".py" optional), then
# ctkMacroCompilePythonScript with DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
# (/<folder name> under WITH_SUBDIR), INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}, and
# NO_INSTALL_SUBDIR unless WITH_SUBDIR.
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): \"${MY_SLICER_UNPARSED_ARGUMENTS}\"")
  endif()
  foreach(value ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    set(value_absolute ${value})
    if(NOT IS_ABSOLUTE ${value})
      set(value_absolute ${CMAKE_CURRENT_SOURCE_DIR}/${value})
    endif()
    if(NOT EXISTS ${value_absolute} AND NOT EXISTS ${value_absolute}.py)
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file or directory '${value}'")
    endif()
  endforeach()
  set(_no_install_subdir_option NO_INSTALL_SUBDIR)
  set(_destination_subdir "")
  if(MY_SLICER_WITH_SUBDIR)
    get_filename_component(_destination_subdir ${CMAKE_CURRENT_SOURCE_DIR} NAME)
    set(_destination_subdir "/${_destination_subdir}")
    set(_no_install_subdir_option "")
  endif()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}${_destination_subdir}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    ${_no_install_subdir_option}
    )
endmacro()

# slicer_add_python_unittest(SCRIPT s): Slicer's harness runs
#   slicer.testing.runUnitTest([CMAKE_CURRENT_BINARY_DIR, <folder of s, else CMAKE_CURRENT_SOURCE_DIR>], <s without extension>)
# which imports the script by name from those folders. Here: record "<folder>/<name>.py" for the test to check.
macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "TESTNAME_PREFIX;SCRIPT" "SLICER_ARGS" ${ARGN})
  get_filename_component(test_name ${MY_SCRIPT} NAME_WE)
  get_filename_component(_script_source_dir ${MY_SCRIPT} PATH)
  if("${_script_source_dir}" STREQUAL "")
    set(_script_source_dir ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  file(APPEND ${CMAKE_BINARY_DIR}/python_unittests.txt "${_script_source_dir}/${test_name}.py\n")
endmacro()
