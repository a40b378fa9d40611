# The Java binding as something to install: OSGi headers in the jar's
# manifest, Maven coordinates (a pom), a local Maven repository filled
# offline, Debian's Maven repository layout at install time, and the tests
# of all three. Included from bindings/java/CMakeLists.txt before the jar
# is built (the jar's command calls m2mpsk_java_manifest_command), which
# calls m2mpsk_java_maven() per jar and m2mpsk_java_packaging_tests() at
# its end.
#
# A jar is one bundle: m2mpsk.jar is org.m2mpsk (packages org.m2mpsk and
# the deprecated m2mpsk); m2mpsk-jsse.jar is a bundle of its own,
# org.m2mpsk.jsse, whose Import-Package of org.m2mpsk is generated from its
# classes like everything else (bundle-manifest.cmake). A second jar takes
# the same calls: m2mpsk_java_manifest_command in its jar command,
# m2mpsk_java_maven(ARTIFACT m2mpsk-jsse ... DEPENDS m2mpsk), and
# m2mpsk_java_osgi_test(java_osgi_bundle_jsse ... REQUIRES ${M2MPSK_JAR}).
#
# No Bundle-NativeCode: Debian installs libm2mpskjni.so apart from the jar,
# in /usr/lib/<multiarch>/jni, which its JVMs have on java.library.path; a
# bundle without the header loads its JNI library from there (an OSGi
# framework's class loaders fall back to the JVM's path). Carrying the .so
# inside the jar would make it one architecture's jar, and a second copy
# of what libm2mpsk-java already installs.

# The class files' level: Java 11, which find_package(Java 11) asks for,
# whatever JDK builds them. The manifest's osgi.ee is read from the class
# files, so the two cannot disagree.
set(M2MPSK_JAVA_RELEASE 11)
get_filename_component(_javac_dir ${Java_JAVAC_EXECUTABLE} DIRECTORY)
find_program(M2MPSK_JDEPS jdeps HINTS ${_jdk}/bin ${_javac_dir} NO_DEFAULT_PATH)
if(NOT M2MPSK_JDEPS)
  message(FATAL_ERROR "jdeps not found beside ${Java_JAVAC_EXECUTABLE}: the jar's Import-Package is computed with it")
endif()

# m2mpsk_java_manifest_command(<var> CLASSES <dir> MANIFEST <file>
#     SYMBOLIC_NAME <bsn> NAME <name> DESCRIPTION <text> [CLASS_PATH <jars>])
# Sets <var> to the COMMAND words that write <file> from the classes in
# <dir> (run them after javac, before `jar cfm <jar> <file>`), and
# <var>_DEPENDS to the files that command reads. CLASS_PATH: a Class-Path
# header, the jars (beside this one) its classes need outside OSGi.
function(m2mpsk_java_manifest_command var)
  cmake_parse_arguments(A "" "CLASSES;MANIFEST;SYMBOLIC_NAME;NAME;DESCRIPTION;CLASS_PATH" "" ${ARGN})
  set(${var} ${CMAKE_COMMAND}
      -DCLASS_PATH=${A_CLASS_PATH}
      -DCLASSES=${A_CLASSES} -DOUTPUT=${A_MANIFEST}
      -DTEMPLATE=${CMAKE_CURRENT_FUNCTION_LIST_DIR}/MANIFEST.MF.in
      -DSYMBOLIC_NAME=${A_SYMBOLIC_NAME} -DNAME=${A_NAME}
      -DDESCRIPTION=${A_DESCRIPTION} -DVERSION=${PROJECT_VERSION}
      -DJDEPS=${M2MPSK_JDEPS}
      -P ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/bundle-manifest.cmake PARENT_SCOPE)
  set(${var}_DEPENDS ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/MANIFEST.MF.in
      ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/bundle-manifest.cmake PARENT_SCOPE)
endfunction()

# ---- Maven -------------------------------------------------------------------
# Debian's Maven repository (maven-repo-helper's layout): the plugins that
# `mvn -o` runs come from it, and libm2mpsk-java installs its pom there.
set(M2MPSK_MAVEN_SYSTEM_REPO /usr/share/maven-repo CACHE PATH
    "A Maven repository on disk that mvn -o resolves plugins from (Debian's)")
set(M2MPSK_MAVEN_REPO_INSTALL_DIR ${CMAKE_INSTALL_DATADIR}/maven-repo CACHE STRING
    "Where the poms and jar links are installed in Maven's layout (relative to CMAKE_INSTALL_PREFIX, or absolute; empty: not installed)")
set(M2MPSK_MAVEN_DEBIAN_PACKAGE "" CACHE STRING
    "The Debian package holding the jars: also installs Maven version 'debian', as maven-repo-helper does")
# The local repository `cmake --build build --target maven-install` fills.
set(M2MPSK_M2REPO ${PROJECT_BINARY_DIR}/m2repo)
find_program(M2MPSK_MVN mvn)
# Without plugin metadata in Debian's repository, mvn cannot resolve the
# `install:` prefix: the install plugin is named with the newest version
# that repository holds (older ones there are relocations to it).
file(GLOB _versions LIST_DIRECTORIES true RELATIVE
     ${M2MPSK_MAVEN_SYSTEM_REPO}/org/apache/maven/plugins/maven-install-plugin
     ${M2MPSK_MAVEN_SYSTEM_REPO}/org/apache/maven/plugins/maven-install-plugin/*)
list(FILTER _versions INCLUDE REGEX "^[0-9][0-9.]*$")
list(SORT _versions COMPARE NATURAL ORDER DESCENDING)
set(_install_plugin "")
if(_versions)
  list(GET _versions 0 _install_plugin)
endif()
set(M2MPSK_MAVEN_OK FALSE)
if(M2MPSK_MVN AND _install_plugin)
  set(M2MPSK_MAVEN_OK TRUE)
endif()
# Offline, and resolving from Debian's repository all the same: -o stops
# every remote repository but those whose protocol is listed here.
set(M2MPSK_MVN_OFFLINE ${M2MPSK_MVN} -o -B -q
    -s ${CMAKE_CURRENT_LIST_DIR}/tests/maven-settings.xml
    -Daether.offline.protocols=file
    -Dm2mpsk.maven.system.repo=file://${M2MPSK_MAVEN_SYSTEM_REPO})

# m2mpsk_java_maven(ARTIFACT <id> JAR <file> TARGET <target> NAME <name>
#     DESCRIPTION <text> [DEPENDS <artifact>...])
# org.m2mpsk:<id>:${PROJECT_VERSION}: writes lib/<id>.pom (DEPENDS: other
# org.m2mpsk artifacts at the same version); adds <id> to the target
# maven-install, which installs the jar and pom into build/m2repo offline;
# installs the pom, and a link to the installed <id>-<version>.jar (the
# jar's own install rule names it so), in M2MPSK_MAVEN_REPO_INSTALL_DIR.
function(m2mpsk_java_maven)
  cmake_parse_arguments(A "" "ARTIFACT;JAR;TARGET;NAME;DESCRIPTION" "DEPENDS" ${ARGN})
  set(ARTIFACT ${A_ARTIFACT})
  set(NAME ${A_NAME})
  set(DESCRIPTION ${A_DESCRIPTION})
  set(DEPENDENCIES "")
  foreach(_d IN LISTS A_DEPENDS)
    string(APPEND DEPENDENCIES "    <dependency>
      <groupId>org.m2mpsk</groupId>
      <artifactId>${_d}</artifactId>
      <version>${PROJECT_VERSION}</version>
    </dependency>\n")
  endforeach()
  if(DEPENDENCIES)
    set(DEPENDENCIES "  <dependencies>\n${DEPENDENCIES}  </dependencies>\n")
  endif()
  set(_pom ${PROJECT_BINARY_DIR}/lib/${ARTIFACT}.pom)
  set(POM_VERSION ${PROJECT_VERSION})
  set(POM_PROPERTIES "")
  configure_file(${CMAKE_CURRENT_FUNCTION_LIST_DIR}/pom.xml.in ${_pom} @ONLY)
  set(_deb_pom "")
  if(M2MPSK_MAVEN_DEBIAN_PACKAGE)
    set(_deb_pom ${CMAKE_CURRENT_BINARY_DIR}/${ARTIFACT}-debian.pom)
    set(POM_VERSION debian)
    set(POM_PROPERTIES "  <properties>
    <debian.originalVersion>${PROJECT_VERSION}</debian.originalVersion>
    <debian.package>${M2MPSK_MAVEN_DEBIAN_PACKAGE}</debian.package>
  </properties>\n")
    string(REPLACE "<version>${PROJECT_VERSION}</version>" "<version>debian</version>"
           DEPENDENCIES "${DEPENDENCIES}")
    configure_file(${CMAKE_CURRENT_FUNCTION_LIST_DIR}/pom.xml.in ${_deb_pom} @ONLY)
  endif()

  if(M2MPSK_MAVEN_OK)
    set(_dir ${M2MPSK_M2REPO}/org/m2mpsk/${ARTIFACT}/${PROJECT_VERSION})
    add_custom_command(OUTPUT ${_dir}/${ARTIFACT}-${PROJECT_VERSION}.jar
      COMMAND ${M2MPSK_MVN_OFFLINE} -Dmaven.repo.local=${M2MPSK_M2REPO}
              org.apache.maven.plugins:maven-install-plugin:${_install_plugin}:install-file
              -Dfile=${A_JAR} -DpomFile=${_pom}
      DEPENDS ${A_TARGET} ${A_JAR} ${_pom}
      COMMENT "Installing org.m2mpsk:${ARTIFACT}:${PROJECT_VERSION} into ${M2MPSK_M2REPO} (mvn -o)"
      VERBATIM)
    add_custom_target(maven-install-${ARTIFACT}
                      DEPENDS ${_dir}/${ARTIFACT}-${PROJECT_VERSION}.jar)
    if(NOT TARGET maven-install)
      add_custom_target(maven-install)
    endif()
    add_dependencies(maven-install maven-install-${ARTIFACT})
  endif()

  if(M2MPSK_MAVEN_REPO_INSTALL_DIR)
    set(_repo ${M2MPSK_MAVEN_REPO_INSTALL_DIR}/org/m2mpsk/${ARTIFACT})
    install(FILES ${_pom} DESTINATION ${_repo}/${PROJECT_VERSION}
            RENAME ${ARTIFACT}-${PROJECT_VERSION}.pom COMPONENT java)
    set(_links "${PROJECT_VERSION}:${ARTIFACT}-${PROJECT_VERSION}.jar")
    if(_deb_pom)
      install(FILES ${_deb_pom} DESTINATION ${_repo}/debian
              RENAME ${ARTIFACT}-debian.pom COMPONENT java)
      list(APPEND _links "debian:${ARTIFACT}.jar")
    endif()
    # Relative links, as maven-repo-helper makes them.
    install(CODE "
      foreach(_l ${_links})
        string(REPLACE \":\" \";\" _l \"\${_l}\")
        list(GET _l 0 _v)
        list(GET _l 1 _jar)
        set(_repo \"${_repo}\")
        set(_jars \"${M2MPSK_JAR_INSTALL_DIR}\")
        foreach(_d _repo _jars)
          if(NOT IS_ABSOLUTE \"\${\${_d}}\")
            set(\${_d} \"\${CMAKE_INSTALL_PREFIX}/\${\${_d}}\")
          endif()
        endforeach()
        file(RELATIVE_PATH _target \"\${_repo}/\${_v}\" \"\${_jars}/\${_jar}\")
        set(_link \"\$ENV{DESTDIR}\${_repo}/\${_v}/${ARTIFACT}-\${_v}.jar\")
        message(STATUS \"Installing: \${_link} -> \${_target}\")
        file(CREATE_LINK \"\${_target}\" \"\${_link}\" SYMBOLIC)
      endforeach()
    " COMPONENT java)
  endif()
endfunction()

# ---- tests -------------------------------------------------------------------
# A test whose tool is missing says what to install and is reported skipped
# (.ci/run lists skipped tests; CI installs the tools).
function(_m2mpsk_java_skip name why)
  add_test(NAME ${name} COMMAND sh -c "echo \"$1\"; exit 77" sh "${why}")
  set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE 77)
endfunction()

# m2mpsk_java_osgi_test(<test> JAR <file> SYMBOLIC_NAME <bsn> [REQUIRES <jar>...])
# The bundle <bsn> in Apache Felix (tests/OsgiLauncher.java), the REQUIRES
# jars installed and started before it (for m2mpsk-jsse.jar: m2mpsk.jar).
function(m2mpsk_java_osgi_test name)
  cmake_parse_arguments(A "" "JAR;SYMBOLIC_NAME" "REQUIRES" ${ARGN})
  find_file(M2MPSK_FELIX_JAR NAMES org.apache.felix.framework.jar
            PATHS /usr/share/java NO_DEFAULT_PATH)
  if(NOT M2MPSK_FELIX_JAR)
    _m2mpsk_java_skip(${name}
      "Apache Felix not found in /usr/share/java (apt-get install libfelix-framework-java)")
    return()
  endif()
  set(_lc ${PROJECT_BINARY_DIR}/bindings/java/osgi-launcher)
  if(NOT TARGET m2mpsk_osgi_launcher)
    set(_src ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/tests/OsgiLauncher.java)
    add_custom_command(OUTPUT ${_lc}/OsgiLauncher.class
      COMMAND ${CMAKE_COMMAND} -E make_directory ${_lc}
      COMMAND ${Java_JAVAC_EXECUTABLE} -encoding UTF-8 -Xlint:all -Werror
              -cp ${M2MPSK_FELIX_JAR} -d ${_lc} ${_src}
      DEPENDS ${_src}
      COMMENT "Compiling the OSGi test launcher"
      VERBATIM)
    add_custom_target(m2mpsk_osgi_launcher ALL DEPENDS ${_lc}/OsgiLauncher.class)
  endif()
  # Only Felix and the launcher on the class path: the bundle's classes
  # reach the launcher through the framework or not at all.
  add_test(NAME ${name}
           COMMAND ${Java_JAVA_EXECUTABLE} -Djava.library.path=${PROJECT_BINARY_DIR}/lib
                   # Felix 4.6 makes its boot delegation class loader by
                   # reflection into java.security.
                   --add-opens java.base/java.security=ALL-UNNAMED
                   -cp ${M2MPSK_FELIX_JAR}:${_lc} OsgiLauncher
                   ${A_JAR} ${A_SYMBOLIC_NAME} ${PROJECT_VERSION} ${A_REQUIRES})
  set_tests_properties(${name} PROPERTIES TIMEOUT 120 LABELS packaging)
endfunction()

# m2mpsk_java_packaging_tests(JAR <file>): java_osgi_bundle and
# java_maven_offline for m2mpsk.jar.
function(m2mpsk_java_packaging_tests)
  cmake_parse_arguments(A "" "JAR" "" ${ARGN})
  m2mpsk_java_osgi_test(java_osgi_bundle JAR ${A_JAR} SYMBOLIC_NAME org.m2mpsk)

  # java_maven_offline: the consumer project in tests/maven-consumer built
  # and tested by mvn -o against build/m2repo, which the fixture fills.
  if(M2MPSK_MAVEN_OK)
    add_test(NAME java_maven_install
             COMMAND ${CMAKE_COMMAND} --build ${PROJECT_BINARY_DIR} --target maven-install)
    set_tests_properties(java_maven_install PROPERTIES
      TIMEOUT 300 FIXTURES_SETUP m2repo RESOURCE_LOCK m2repo LABELS packaging)
    add_test(NAME java_maven_offline
             COMMAND sh ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/tests/maven-consumer.sh
                     ${CMAKE_CURRENT_BINARY_DIR}/maven-consumer ${M2MPSK_M2REPO}
                     ${PROJECT_VERSION} ${PROJECT_BINARY_DIR}/lib)
    set_tests_properties(java_maven_offline PROPERTIES
      TIMEOUT 600 FIXTURES_REQUIRED m2repo RESOURCE_LOCK m2repo LABELS packaging
      ENVIRONMENT "MVN=${M2MPSK_MVN};M2MPSK_MAVEN_SYSTEM_REPO=${M2MPSK_MAVEN_SYSTEM_REPO}")
  else()
    _m2mpsk_java_skip(java_maven_offline
      "mvn, or Debian's Maven plugins in ${M2MPSK_MAVEN_SYSTEM_REPO}, not found (apt-get install maven libmaven-install-plugin-java libmaven-compiler-plugin-java libmaven-resources-plugin-java libmaven-jar-plugin-java libsurefire-java)")
  endif()
endfunction()
