# Writes a jar's MANIFEST.MF with OSGi headers from the classes it will
# hold, at build time (cmake -P), so that the headers follow the sources:
#   Export-Package  every package with classes in CLASSES, at VERSION,
#                   except those with an `internal` segment; `uses:=` lists
#                   the other non-java.* packages each one refers to;
#   Import-Package  every non-java.* package the classes refer to (jdeps)
#                   that the jar does not hold; the project's own packages
#                   (org.m2mpsk*, m2mpsk*) with the 0.x range [M.m,M.m+1);
#   osgi.ee         the JavaSE version of the newest class file.
# Inputs (-D): CLASSES, TEMPLATE, OUTPUT, SYMBOLIC_NAME, NAME, DESCRIPTION,
# VERSION, JDEPS; optionally CLASS_PATH. bundle-manifest.cmake is run by
# the jar's own command
# (bindings/java/packaging.cmake: m2mpsk_java_manifest_command).
cmake_minimum_required(VERSION 3.18)
foreach(_v CLASSES TEMPLATE OUTPUT SYMBOLIC_NAME NAME DESCRIPTION VERSION JDEPS)
  if(NOT DEFINED ${_v})
    message(FATAL_ERROR "bundle-manifest.cmake: -D${_v}= missing")
  endif()
endforeach()

get_filename_component(CLASSES ${CLASSES} ABSOLUTE)
file(GLOB_RECURSE _classes RELATIVE ${CLASSES} ${CLASSES}/*.class)
if(NOT _classes)
  message(FATAL_ERROR "bundle-manifest.cmake: no classes in ${CLASSES}")
endif()
set(_own)
set(_major 0)
foreach(_c IN LISTS _classes)
  get_filename_component(_dir ${_c} DIRECTORY)
  if(_dir STREQUAL "")
    message(FATAL_ERROR "bundle-manifest.cmake: ${_c} is in the unnamed package, which a bundle cannot export")
  endif()
  string(REPLACE "/" "." _pkg ${_dir})
  list(APPEND _own ${_pkg})
  # Bytes 6-7 of a class file: its major version (55 is Java 11).
  file(READ ${CLASSES}/${_c} _hex OFFSET 6 LIMIT 2 HEX)
  math(EXPR _m "0x${_hex}")
  if(_m GREATER _major)
    set(_major ${_m})
  endif()
endforeach()
list(REMOVE_DUPLICATES _own)
list(SORT _own)
math(EXPR JAVA_EE "${_major} - 44")
if(JAVA_EE LESS 9)
  set(JAVA_EE 1.${JAVA_EE})
endif()

# jdeps -verbose:package lines: "   <package>   -> <package>   <module>".
execute_process(COMMAND ${JDEPS} -verbose:package -filter:none ${CLASSES}
                OUTPUT_VARIABLE _deps RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "bundle-manifest.cmake: jdeps failed (${_rc})")
endif()
string(REPLACE "\n" ";" _deps "${_deps}")
set(_imports)
foreach(_line IN LISTS _deps)
  if(_line MATCHES "^[ \t]+([A-Za-z0-9_.$]+)[ \t]+->[ \t]+([A-Za-z0-9_.$]+)")
    set(_from ${CMAKE_MATCH_1})
    set(_to ${CMAKE_MATCH_2})
    if(_to MATCHES "^java\\." OR _to STREQUAL _from)
      continue()
    endif()
    string(REPLACE "." "_" _key ${_from})
    list(APPEND _uses_${_key} ${_to})
    if(NOT _to IN_LIST _own)
      list(APPEND _imports ${_to})
    endif()
  endif()
endforeach()

string(REGEX MATCH "^([0-9]+)\\.([0-9]+)" _ ${VERSION})
math(EXPR _next_minor "${CMAKE_MATCH_2} + 1")
set(_range "[${CMAKE_MATCH_1}.${CMAKE_MATCH_2},${CMAKE_MATCH_1}.${_next_minor})")

# One clause per continuation line (a manifest line holds 72 bytes; jar
# folds longer ones, and a clause per line keeps them readable).
set(EXPORT_PACKAGE "")
foreach(_pkg IN LISTS _own)
  if(_pkg MATCHES "(^|\\.)internal(\\.|$)")
    continue()
  endif()
  set(_clause "${_pkg};version=\"${VERSION}\"")
  string(REPLACE "." "_" _key ${_pkg})
  if(_uses_${_key})
    list(REMOVE_DUPLICATES _uses_${_key})
    list(SORT _uses_${_key})
    list(JOIN _uses_${_key} "," _u)
    string(APPEND _clause ";uses:=\"${_u}\"")
  endif()
  if(EXPORT_PACKAGE)
    string(APPEND EXPORT_PACKAGE ",\n ")
  endif()
  string(APPEND EXPORT_PACKAGE "${_clause}")
endforeach()
if(NOT EXPORT_PACKAGE)
  message(FATAL_ERROR "bundle-manifest.cmake: nothing to export from ${CLASSES}")
endif()

set(IMPORT_PACKAGE "")
if(_imports)
  list(REMOVE_DUPLICATES _imports)
  list(SORT _imports)
  # A string, not a list: the clauses hold semicolons.
  set(_i "")
  foreach(_pkg IN LISTS _imports)
    if(_i)
      string(APPEND _i ",\n ")
    endif()
    string(APPEND _i "${_pkg}")
    if(_pkg MATCHES "^(org\\.m2mpsk|m2mpsk)(\\.|$)")
      string(APPEND _i ";version=\"${_range}\"")
    endif()
  endforeach()
  set(IMPORT_PACKAGE "Import-Package: ${_i}\n")
endif()

# Class-Path (optional): the jars beside this one that its classes need
# on a plain class path (m2mpsk-jsse.jar: m2mpsk.jar); OSGi ignores it.
set(CLASS_PATH_HEADER "")
if(CLASS_PATH)
  set(CLASS_PATH_HEADER "Class-Path: ${CLASS_PATH}\n")
endif()

configure_file(${TEMPLATE} ${OUTPUT} @ONLY NEWLINE_STYLE UNIX)
