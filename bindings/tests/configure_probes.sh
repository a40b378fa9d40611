#!/bin/bash
# Configure-only probes: a newcomer's machine whose python3 on PATH is not
# Debian's (a venv, pyenv, or a broken one), or that lacks a JDK or JUnit,
# still configures; the build says which Python it took, or which binding
# it skipped and what to install. Each case configures the whole project
# into a temporary directory and checks the messages and the tests that
# ctest would run.
#
# usage: configure_probes.sh <source dir> <generator> <TLS backend> <C compiler> <java>
# where <java> is 1 when this build has the Java binding (a JDK is here).
set -euo pipefail

src=$1 generator=$2 tls=$3 cc=$4 java=$5
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

# Debian's interpreter is the fallback: what each case expects from it
# depends on whether it has the headers and pytest here.
debian=/usr/bin/python3
debian_ok=0
if "$debian" -c 'import os, sysconfig, pytest
assert os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null; then
  debian_ok=1
fi

# A venv made from Debian's Python, with no packages: it has the headers
# (the base interpreter's) but no pytest, as a fresh venv or pyenv has.
venv=$tmp/venv/bin/python3
if [ -n "${PROBE_NO_VENV:-}" ] || ! "$debian" -m venv --without-pip "$tmp/venv" >/dev/null 2>&1; then
  # No venv module (python3-venv): the same Python without its
  # site-packages stands in for one. (The directory goes first: a venv's
  # python3 is a link to Debian's.)
  rm -rf "$tmp/venv"
  mkdir -p "$tmp/venv/bin"
  printf '#!/bin/sh\nexec %s -S "$@"\n' "$debian" >"$venv"
  chmod +x "$venv"
  echo "-- no venv module: $venv runs $debian -S"
fi
# A python3 that does not run at all.
mkdir -p "$tmp/broken"
printf '#!/bin/sh\necho "broken python3" >&2\nexit 1\n' >"$tmp/broken/python3"
chmod +x "$tmp/broken/python3"

# configure <case> <dir to put first on PATH> [cmake args...]
configure() {
  local name=$1 first=$2
  shift 2
  local t0=$SECONDS
  if PATH="$first:$PATH" cmake -S "$src" -B "$tmp/$name" -G "$generator" \
      -DCMAKE_C_COMPILER="$cc" -DM2MPSK_TLS="$tls" -DM2MPSK_WERROR=ON "$@" \
      >"$tmp/$name.log" 2>&1; then
    echo "-- $name: configured in $((SECONDS - t0)) s"
  else
    fail "$name" "configure failed"
  fi
}

fail() {
  echo "FAIL $1: $2" >&2
  [ -f "$tmp/$1.log" ] && sed 's/^/   | /' "$tmp/$1.log" >&2
  failures=$((failures + 1))
}

# expect_log <case> <extended regex>: a configure message (CMake wraps
# warnings over several lines: they are joined first).
expect_log() {
  tr '\n' ' ' <"$tmp/$1.log" | tr -s ' ' | grep -Eq -- "$2" ||
    fail "$1" "no message matching: $2"
}

# The command (first word) of test <name> in <case>, or nothing.
test_command() {
  { grep -rhs "^add_test($2 " "$tmp/$1" --include=CTestTestfile.cmake || true; } |
    sed -E 's/^add_test\([^ ]+ "([^"]*)".*/\1/' | head -n 1
}

# expect_test <case> <test> [<command>]: the test exists (run by <command>).
expect_test() {
  local cmd
  cmd=$(test_command "$1" "$2")
  if [ -z "$cmd" ]; then
    fail "$1" "no test $2"
  elif [ $# -gt 2 ] && [ "$cmd" != "$3" ]; then
    fail "$1" "test $2 runs $cmd, not $3"
  fi
}

expect_no_test() {
  [ -z "$(test_command "$1" "$2")" ] || fail "$1" "test $2 exists"
}

# 1. A venv first on PATH (no pytest), and no JDK.
configure venv-first "$tmp/venv/bin" -DCMAKE_DISABLE_FIND_PACKAGE_Java=ON
expect_log venv-first "JDK not found: no Java binding \(apt-get install default-jdk-headless\)"
expect_no_test venv-first java_binding
if [ $debian_ok = 1 ]; then
  expect_log venv-first "Python: $venv \([0-9.]+\) has no pytest .*; using $debian \([0-9.]+\) for the binding and the test drivers instead"
  expect_test venv-first python_binding "$debian"
  expect_test venv-first cli "$debian"
else
  expect_log venv-first "No Python binding \(nor its tests\): $venv .* has no pytest"
  expect_no_test venv-first python_binding
  expect_test venv-first cli "$venv"
fi

# 2. A python3 that does not run first on PATH, and no JUnit.
configure broken-first "$tmp/broken" -DM2MPSK_JUNIT_JAR="$tmp/none/junit4.jar"
expect_log broken-first "$tmp/broken/python3 does not run"
if [ "$java" = 1 ]; then
  expect_log broken-first "JUnit 4 not found: no Java binding \(nor its tests\) \(apt-get install junit4\)"
fi
expect_no_test broken-first java_binding
expect_test broken-first cli "$debian"
if [ $debian_ok = 1 ]; then
  expect_test broken-first python_binding "$debian"
fi

# 3. No candidate fit for the binding (the fallback does not run either):
#    the binding is skipped, naming the package; the rest is configured.
configure none-fit "$tmp/venv/bin" -DM2MPSK_PYTHON_FALLBACK="$tmp/broken/python3"
expect_log none-fit "No Python binding \(nor its tests\): $venv \([0-9.]+\) has no pytest \(.*apt-get install python3-pytest\); $tmp/broken/python3 does not run"
expect_no_test none-fit python_binding
expect_no_test none-fit python_example_register_ae
expect_test none-fit cli "$venv"
expect_test none-fit test_keystore

# 4. The user names an interpreter without pytest: it is the only
#    candidate; a warning, no error.
configure explicit "$tmp/broken" -DPython3_EXECUTABLE="$venv"
expect_log explicit "CMake Warning"
expect_log explicit "No Python binding \(nor its tests\): $venv \([0-9.]+\) has no pytest"
expect_no_test explicit python_binding
expect_test explicit cli "$venv"

# 5. Without the tests, pytest is not needed: the venv builds the binding.
configure no-tests "$tmp/venv/bin" -DM2MPSK_BUILD_TESTS=OFF
expect_log no-tests "Python [0-9.]+ for the binding and the test drivers: $venv"
grep -q "M2MPSK_PYTHON_INSTALL_DIR" "$tmp/no-tests/CMakeCache.txt" ||
  fail no-tests "the Python binding is not configured"

if [ $failures -gt 0 ]; then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all configure probes passed (Debian's python3 fit for the binding: $debian_ok)"
