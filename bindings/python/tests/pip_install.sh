#!/usr/bin/env bash
# Installs the Python binding the way Python installs, offline, against a
# libm2mpsk installed with `cmake --install` into a prefix of its own, and
# runs pip_consumer.py (both roles handshake) with the installed package.
#
#   pip_install.sh prefix BUILD PREFIX       cmake --install BUILD --prefix PREFIX
#   pip_install.sh source PREFIX [PYTHON]    pip install bindings/python in a fresh venv
#   pip_install.sh sdist PREFIX              python3 -m build --sdist, then pip install it
#   pip_install.sh system PREFIX             `source` with PREFIX/include as a system directory, as
#                                            /usr/include is for Debian's libm2mpsk-dev
#   pip_install.sh other PREFIX              `source` with the first python3 on PATH that
#                                            is not Debian's (pyenv); exit 77 when none
#   pip_install.sh errors PREFIX             every documented build error: message, non-zero
#   pip_install.sh typing PREFIX             `source`, then mypy --strict on typing/consumer_*.py
#
# The venvs get pip and setuptools from the interpreter (ensurepip; Debian:
# python3-venv), and wheel from Debian's python3-wheel-whl, as the builds run
# with --no-build-isolation --no-index. The source is copied (bindings/ and
# the top CMakeLists.txt, which gives the version), so that pip's in-tree
# build leaves the checkout as it was. Exits non-zero on the first failure.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../.." && pwd)
mode=$1
DEBIAN_PYTHON=${DEBIAN_PYTHON:-/usr/bin/python3}
WHEEL_WHL=(/usr/share/python-wheels/wheel-*.whl)

# pip must not read this machine's configuration (an index, find-links).
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PYTHONPATH LD_LIBRARY_PATH \
      PKG_CONFIG_PATH PKG_CONFIG_LIBDIR PYTHONHOME VIRTUAL_ENV

if [ "$mode" = prefix ]; then
  rm -rf "$3"
  cmake --install "$2" --prefix "$3" >/dev/null
  echo "libm2mpsk installed into $3"
  # m2mpsk.pc names the prefix of the install, not of the configure.
  pc=$(find "$3" -path '*/pkgconfig/m2mpsk.pc' | head -1)
  got=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --variable=prefix m2mpsk)
  echo "$pc: prefix=$got"
  [ "$got" = "$3" ] || { echo "FAIL: m2mpsk.pc says prefix=$got, installed into $3"; exit 1; }
  exit 0
fi

prefix=$2
pcfile=$(find "$prefix" -path '*/pkgconfig/m2mpsk.pc' | head -1)
[ -n "$pcfile" ] || { echo "no m2mpsk.pc under $prefix (run the prefix step)"; exit 1; }
pcdir=$(dirname "$pcfile")
libdir=$(dirname "$pcdir")
version=$(sed -n 's/^project(m2mpsk VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")

work=$(mktemp -d "${TMPDIR:-/tmp}/m2mpsk-pip.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/run"
cp -r "$src/bindings" "$src/CMakeLists.txt" "$work/src/"
rm -rf "$work/src/bindings/python/build" "$work/src/bindings/python/"*.egg-info

# venv PYTHON DIR: a fresh venv with pip, setuptools and wheel, offline.
venv() {
  "$1" -m venv "$2"
  # Python 3.12 and later make venvs without setuptools; offline, there is
  # none to give them (Debian's wheel is patched for Debian's interpreter).
  "$2/bin/python" -c 'import setuptools' 2>/dev/null ||
    { echo "the venv of $1 has no setuptools (Python 3.12+): pip install setuptools into it first"; exit 1; }
  [ -e "${WHEEL_WHL[0]}" ] ||
    { echo "no wheel in /usr/share/python-wheels (apt-get install python3-wheel-whl)"; exit 1; }
  "$2/bin/python" -m pip install -q --no-index "${WHEEL_WHL[0]}"
  "$2/bin/python" -m pip --version
  "$2/bin/python" -c 'import setuptools, wheel; print("setuptools", setuptools.__version__, "wheel", wheel.__version__)'
}

# install_and_run VENV WHAT: pip install WHAT, then the consumer, from a
# directory of its own, with only what pkg-config says about the prefix.
install_and_run() {
  PKG_CONFIG_PATH=$pcdir "$1/bin/python" -m pip install --no-build-isolation --no-index "$2"
  (cd "$work/run" && M2MPSK_EXPECT_VERSION=$version M2MPSK_EXPECT_LIBDIR=$libdir \
     "$1/bin/python" -I "$here/pip_consumer.py")
}

# expect_failure WHAT TEXT [PIP-OPTION]: the install fails (non-zero) and
# says TEXT.
expect_failure() {
  local rc=0
  "$work/venv/bin/python" -m pip install --no-build-isolation --no-index ${3:-} \
    "$work/src/bindings/python" >"$work/out" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ] || ! grep -qF "$2" "$work/out"; then
    cat "$work/out"
    echo "FAIL $1: exit $rc, wanted non-zero and: $2"
    exit 1
  fi
  echo "$1: exit $rc, $(grep -m1 -F "$2" "$work/out" | sed 's/^ *//')"
  if "$work/venv/bin/python" -c 'import m2mpsk' 2>/dev/null; then
    echo "FAIL $1: m2mpsk importable after a failed install"
    exit 1
  fi
}

case $mode in
source)
  venv "${3:-$DEBIAN_PYTHON}" "$work/venv"
  install_and_run "$work/venv" "$work/src/bindings/python"
  ;;
system)
  # pkg-config prints no -I for a system include directory, and the
  # compiler searches it by itself (CPATH stands in for that here).
  export PKG_CONFIG_SYSTEM_INCLUDE_PATH=$prefix/include CPATH=$prefix/include
  PKG_CONFIG_PATH=$pcdir pkg-config --cflags m2mpsk | grep -q -- "-I" &&
    { echo "pkg-config still prints -I: not the system-header case"; exit 1; }
  venv "$DEBIAN_PYTHON" "$work/venv"
  install_and_run "$work/venv" "$work/src/bindings/python"
  ;;
other)
  other=""
  while read -r py; do
    # Debian's interpreters have the deb_system install scheme.
    if "$py" -c 'import sys, sysconfig; sys.exit("deb_system" in sysconfig.get_scheme_names())' \
         2>/dev/null; then
      other=$("$py" -c 'import sys; print(sys.executable)')
      break
    fi
  done < <(type -ap python3)
  if [ -z "$other" ]; then
    echo "SKIP: no python3 on PATH other than Debian's ($(type -ap python3 | tr '\n' ' '))"
    exit 77
  fi
  echo "non-Debian interpreter: $other"
  venv "$other" "$work/venv"
  install_and_run "$work/venv" "$work/src/bindings/python"
  ;;
sdist)
  "$DEBIAN_PYTHON" -m build --sdist --no-isolation --outdir "$work/dist" \
    "$work/src/bindings/python" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
  sdist=$(echo "$work/dist/m2mpsk-$version.tar.gz")
  [ -f "$sdist" ] || { ls "$work/dist"; echo "no m2mpsk-$version.tar.gz"; exit 1; }
  tar -tzf "$sdist" >"$work/list"
  echo "sdist: $(basename "$sdist"), $(wc -l <"$work/list") entries"
  # SWIG's inputs under swig/, as under bindings/: the interface, the
  # Python .swg files and every file they %pythoncode.
  want=(PKG-INFO setup.py pyproject.toml m2mpsk.pyi py.typed swig/m2mpsk.i
        swig/python/m2mpsk_python.swg swig/python/m2mpsk_python_tail.swg)
  while read -r f; do want+=("swig/$f"); done < <(
    sed -n 's/^[[:space:]]*%pythoncode[[:space:]]*"\([^"]*\)".*/\1/p' \
      "$src/bindings/m2mpsk.i" "$src/bindings/python/"*.swg)
  for f in "${want[@]}"; do
    grep -qx "m2mpsk-$version/$f" "$work/list" || { echo "sdist lacks $f"; exit 1; }
    echo "  has $f"
  done
  venv "$DEBIAN_PYTHON" "$work/venv"
  install_and_run "$work/venv" "$sdist"
  ;;
errors)
  venv "$DEBIAN_PYTHON" "$work/venv"
  mkdir -p "$work/empty" "$work/old"
  PKG_CONFIG_LIBDIR=$work/empty expect_failure "no m2mpsk.pc" \
    "m2mpsk: pkg-config cannot find the module m2mpsk"
  PKG_CONFIG=$work/none/pkg-config expect_failure "no pkg-config" "m2mpsk: pkg-config not found"
  SWIG=$work/none/swig PKG_CONFIG_PATH=$pcdir expect_failure "no swig" "m2mpsk: SWIG not found"
  PKG_CONFIG_PATH=$pcdir expect_failure "pip install -e" \
    "m2mpsk: editable installs (pip install -e) are not supported" -e
  sed 's/^Version: .*/Version: 0.0.1/' "$pcfile" >"$work/old/m2mpsk.pc"
  PKG_CONFIG_LIBDIR=$work/old expect_failure "another version" \
    "but pkg-config found libm2mpsk 0.0.1"
  ;;
typing)
  # mypy finds the installed package through the venv's interpreter, and
  # uses its hints only because of py.typed (PEP 561).
  venv "$DEBIAN_PYTHON" "$work/venv"
  PKG_CONFIG_PATH=$pcdir "$work/venv/bin/python" -m pip install -q --no-build-isolation \
    --no-index "$work/src/bindings/python"
  mypy=("$DEBIAN_PYTHON" -m mypy --strict --no-error-summary --python-executable
        "$work/venv/bin/python" --cache-dir "$work/mypy-cache")
  "$DEBIAN_PYTHON" -m mypy --version ||
    { echo "no mypy for $DEBIAN_PYTHON (apt-get install mypy)"; exit 1; }
  "${mypy[@]}" "$here/typing/consumer_ok.py" || { echo "FAIL consumer_ok.py"; exit 1; }
  echo "consumer_ok.py: no errors"
  rc=0
  "${mypy[@]}" "$here/typing/consumer_bad.py" >"$work/bad" 2>&1 || rc=$?
  cat "$work/bad"
  got=$(sed -n 's/^[^:]*consumer_bad\.py:\([0-9]*\): error:.*/\1/p' "$work/bad" | sort -nu | tr '\n' ' ')
  want=$(grep -n '# error:' "$here/typing/consumer_bad.py" | cut -d: -f1 | sort -nu | tr '\n' ' ')
  if [ "$rc" -eq 0 ] || [ "$got" != "$want" ]; then
    echo "FAIL consumer_bad.py: exit $rc, errors on lines $got, wanted on $want"
    exit 1
  fi
  echo "consumer_bad.py: exit $rc, errors on exactly the marked lines ($want)"
  # Without the marker the package is untyped to mypy: the right consumer
  # fails too, so the test above did use the shipped hints.
  rm "$work/venv/lib/"python3*/site-packages/m2mpsk/py.typed
  rc=0
  "${mypy[@]}" "$here/typing/consumer_ok.py" >"$work/untyped" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ] || ! grep -q 'missing library stubs or py.typed marker' "$work/untyped"; then
    cat "$work/untyped"
    echo "FAIL: without py.typed, mypy still typed m2mpsk (exit $rc)"
    exit 1
  fi
  echo "without py.typed: exit $rc, $(grep -m1 -o 'missing library stubs or py.typed marker' "$work/untyped")"
  ;;
*)
  echo "usage: $0 prefix|source|system|sdist|other|errors|typing ..." >&2
  exit 2
  ;;
esac
