# Chooses the Python interpreters of the build, once per configure, for
# tests/ (the test drivers: any Python 3.7 or later runs them) and for the
# Python binding (its development headers, and pytest when the tests are
# built). Included by tests/CMakeLists.txt and bindings/python/CMakeLists.txt,
# whichever comes first; each then sets Python3_EXECUTABLE to its choice
# before find_package(Python3), so that FindPython never picks another.
#
# The first python3 on PATH may not be Debian's (pyenv, a venv) and lack
# pytest or the headers. Candidates, in order:
#  - Python3_EXECUTABLE when given (-DPython3_EXECUTABLE=...): the only one;
#  - else the first python3 on PATH, then M2MPSK_PYTHON_FALLBACK (Debian's
#    /usr/bin/python3).
# The binding gets the first candidate that has all it needs; the test
# drivers get the same one, or else the first that runs. With no candidate
# fit for the binding, the binding and its tests are skipped with a message
# naming what is missing, and the rest builds.
#
# Results (cache INTERNAL, so that every directory sees them):
#  M2MPSK_PYTHON_FOR_BINDING  the binding's interpreter, or empty
#  M2MPSK_PYTHON_FOR_SCRIPTS  the test drivers' interpreter, or empty
include_guard(GLOBAL)

set(M2MPSK_PYTHON_FALLBACK /usr/bin/python3 CACHE FILEPATH
    "The Python tried when the first python3 on PATH lacks what the build needs")

# Sets <var>_OK (runs, 3.7 or later), <var>_VERSION, <var>_HEADERS (Python.h
# in its include directory) and <var>_PYTEST (importable).
function(_m2mpsk_python_probe exe var)
  set(${var}_OK FALSE PARENT_SCOPE)
  if(NOT exe OR NOT EXISTS "${exe}")
    return()
  endif()
  execute_process(
    COMMAND "${exe}" -c [=[
import importlib.util, os, sys, sysconfig
inc = sysconfig.get_paths().get("include") or ""
print("%d.%d.%d;%d;%d" % (sys.version_info[:3] + (
    os.path.isfile(os.path.join(inc, "Python.h")),
    importlib.util.find_spec("pytest") is not None)))
]=]
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_QUIET TIMEOUT 60
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT rc EQUAL 0 OR NOT out MATCHES "^([0-9]+\\.[0-9]+\\.[0-9]+);([01]);([01])$")
    return()
  endif()
  set(${var}_VERSION ${CMAKE_MATCH_1} PARENT_SCOPE)
  set(${var}_HEADERS ${CMAKE_MATCH_2} PARENT_SCOPE)
  set(${var}_PYTEST ${CMAKE_MATCH_3} PARENT_SCOPE)
  if(CMAKE_MATCH_1 VERSION_GREATER_EQUAL 3.7)
    set(${var}_OK TRUE PARENT_SCOPE)
  endif()
endfunction()

# What `exe` (probed as `var`) lacks for the binding, with the way to get it,
# in <out>; empty when it has everything.
function(_m2mpsk_python_lacks exe var out)
  if(exe MATCHES "^/usr/bin/")
    set(headers "apt-get install python3-dev")
    set(pytest "apt-get install python3-pytest")
  else()
    set(headers "the development headers of that Python, or Debian's: apt-get install python3-dev")
    set(pytest "${exe} -m pip install pytest, or Debian's: apt-get install python3-pytest")
  endif()
  set(lacks "")
  if(NOT ${var}_OK)
    if(${var}_VERSION)
      set(lacks "is Python ${${var}_VERSION}; 3.7 or later is needed")
    else()
      set(lacks "does not run")
    endif()
  else()
    if(NOT ${var}_HEADERS)
      list(APPEND lacks "has no Python.h (${headers})")
    endif()
    if(M2MPSK_BUILD_TESTS AND NOT ${var}_PYTEST)
      list(APPEND lacks "has no pytest (${pytest})")
    endif()
    list(JOIN lacks " and " lacks)
  endif()
  set(${out} "${lacks}" PARENT_SCOPE)
endfunction()

set(_explicit FALSE)
if(DEFINED Python3_EXECUTABLE)
  set(_explicit TRUE)
  set(_candidates "${Python3_EXECUTABLE}")
else()
  # A throwaway cache entry (find_program(NO_CACHE) needs CMake 3.21), so
  # that a changed PATH counts at the next configure.
  find_program(_M2MPSK_PYTHON_ON_PATH NAMES python3)
  set(_candidates "")
  if(_M2MPSK_PYTHON_ON_PATH)
    list(APPEND _candidates "${_M2MPSK_PYTHON_ON_PATH}")
  endif()
  unset(_M2MPSK_PYTHON_ON_PATH CACHE)
  # By path, not by what the link points at: a venv's python3 is a link to
  # the system one, with other packages.
  if(M2MPSK_PYTHON_FALLBACK AND NOT M2MPSK_PYTHON_FALLBACK IN_LIST _candidates)
    list(APPEND _candidates "${M2MPSK_PYTHON_FALLBACK}")
  endif()
endif()

set(_binding "")
set(_scripts "")
set(_why "")
set(_i 0)
foreach(_exe IN LISTS _candidates)
  _m2mpsk_python_probe("${_exe}" _p${_i})
  _m2mpsk_python_lacks("${_exe}" _p${_i} _lacks)
  if(NOT _scripts AND _p${_i}_OK)
    set(_scripts "${_exe}")
    set(_scripts_version ${_p${_i}_VERSION})
  endif()
  if(M2MPSK_BINDINGS AND NOT _binding AND _lacks STREQUAL "")
    set(_binding "${_exe}")
    set(_binding_version ${_p${_i}_VERSION})
  endif()
  if(NOT _lacks STREQUAL "")
    if(_p${_i}_VERSION)
      list(APPEND _why "${_exe} (${_p${_i}_VERSION}) ${_lacks}")
    else()
      list(APPEND _why "${_exe} ${_lacks}")
    endif()
  endif()
  math(EXPR _i "${_i} + 1")
endforeach()
if(_binding)
  set(_scripts "${_binding}")
  set(_scripts_version ${_binding_version})
endif()
list(JOIN _why "; " _why)

if(NOT M2MPSK_BINDINGS)
  if(_scripts)
    message(STATUS "Python ${_scripts_version} for the test drivers: ${_scripts}")
  endif()
elseif(_binding AND _why STREQUAL "")
  message(STATUS "Python ${_binding_version} for the binding and the test drivers: ${_binding}")
elseif(_binding)
  message(STATUS "Python: ${_why}; using ${_binding} (${_binding_version}) for the binding "
                 "and the test drivers instead")
elseif(_candidates STREQUAL "")
  message(STATUS "No Python binding: no python3 found (apt-get install python3-dev python3-pytest)")
else()
  if(_explicit)
    set(_level WARNING)
  else()
    set(_level STATUS)
  endif()
  message(${_level} "No Python binding (nor its tests): ${_why}")
  if(_scripts)
    message(STATUS "Python ${_scripts_version} for the test drivers: ${_scripts}")
  endif()
endif()

set(M2MPSK_PYTHON_FOR_BINDING "${_binding}" CACHE INTERNAL "")
set(M2MPSK_PYTHON_FOR_SCRIPTS "${_scripts}" CACHE INTERNAL "")
unset(_binding)
unset(_scripts)
unset(_why)
unset(_candidates)
unset(_explicit)
