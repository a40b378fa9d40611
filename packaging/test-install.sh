#!/usr/bin/env bash
# The install test: builds the Debian packages from this tree, runs lintian
# on them, installs them, and checks with the installed files only that each
# kind of consumer works: C with pkg-config, C with CMake find_package, the
# m2mpsk command over loopback, Python and Java (the jar also as an OSGi
# bundle and as a Maven dependency from /usr/share/maven-repo), the docs and
# examples the binding packages ship, and that both engines are
# installed: TS-0003's mandated suites with default options against
# OpenSSL's s_server and s_client; and that m2mpsk-gateway's service runs
# as its unit says, as its own account. Then purges the packages
# and checks that the machine's package set is what it was before.
#
#   bash packaging/test-install.sh
#
# Run as root (CI does, on a fresh machine) after the Build-Depends of
# packaging/debian/control are installed (.ci/run deps installs them).
# Exits non-zero if any step fails.
set -uo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
packages=(libm2mpsk0 libm2mpsk-dev m2mpsk-tools python3-m2mpsk libm2mpsk-java m2mpsk-gateway)
passed=0
failed=0
installed=0

# Only what the packages install may be used: nothing from a build tree, a
# user's CMake registry or another prefix.
unset PKG_CONFIG_PATH LD_LIBRARY_PATH PYTHONPATH CLASSPATH CMAKE_PREFIX_PATH \
      JAVA_TOOL_OPTIONS _JAVA_OPTIONS
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

if [ "$(id -u)" -ne 0 ]; then
  echo "test-install: run as root (it installs and purges packages)" >&2
  exit 2
fi
for p in "${packages[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$'; then
    echo "test-install: $p is already installed; purge it first, so that" \
         "the test can leave the machine as it found it" >&2
    exit 2
  fi
done

work=$(mktemp -d /tmp/m2mpsk-install-test.XXXXXX)
# m2mpsk-gateway's postinst creates the service account; Debian leaves such
# accounts behind on purge, the test removes it if it made it.
had_user=0
getent passwd m2mpsk >/dev/null && had_user=1
gwdir=""
dpkg-query -W -f='${Package}:${Architecture} ${Version}\n' | sort >"$work/before"

cleanup() {
  if [ "$installed" = 1 ]; then
    echo "== purge"
    apt-get purge -y -qq "${packages[@]}" >"$work/purge.log" 2>&1 ||
      { cat "$work/purge.log"; echo "purge failed"; }
  fi
  if [ "$had_user" = 0 ] && getent passwd m2mpsk >/dev/null; then
    userdel m2mpsk 2>/dev/null
    getent group m2mpsk >/dev/null && groupdel m2mpsk 2>/dev/null
  fi
  [ -n "$gwdir" ] && rm -rf "$gwdir"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# step NAME COMMAND...: runs one step, prints its output, counts it.
step() {
  local name=$1
  shift
  echo "== $name"
  if "$@" >"$work/step.log" 2>&1; then
    sed 's/^/   /' "$work/step.log"
    echo "   PASS $name"
    passed=$((passed + 1))
    return 0
  fi
  sed 's/^/   /' "$work/step.log" | tail -40
  echo "   FAIL $name"
  failed=$((failed + 1))
  return 1
}

summary() {
  echo "test-install: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

# ---- build -------------------------------------------------------------------
# A copy of the source with packaging/debian as debian/, so nothing is ever
# written into the repository.
build_debs() {
  local tree=$work/src/m2mpsk
  mkdir -p "$tree"
  if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    # Tracked files, and new ones not yet committed; never build/ outputs.
    git -C "$src" ls-files -z --cached --others --exclude-standard |
      tar -C "$src" -cf - --null -T - | tar -C "$tree" -xf -
  else
    tar -C "$src" --exclude=./build --exclude='./build-*' -cf - . |
      tar -C "$tree" -xf -
  fi
  rm -rf "$tree/debian"
  cp -r "$tree/packaging/debian" "$tree/debian"
  cd "$tree" || return 1
  dpkg-checkbuilddeps || return 1
  # No -dbgsym packages: nothing here uses them, and they halve the time.
  DEB_BUILD_OPTIONS="noautodbgsym parallel=$(nproc)" \
    dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1 ||
    { tail -60 "$work/build.log"; return 1; }
  cd "$work" || return 1
  ls -1 "$work"/src/*.deb
}

run_lintian() {
  # Errors fail; warnings must each be fixed or overridden with a reason
  # (packaging/debian/*.lintian-overrides), so they fail too.
  # The report shows each override with its reason; the verdict is a
  # second run, as --show-overrides turns lintian's exit status into 2.
  lintian --info --show-overrides --fail-on none "$work"/src/m2mpsk_*.changes
  lintian --fail-on error,warning "$work"/src/m2mpsk_*.changes
}

install_debs() {
  apt-get install -y -qq --no-install-recommends "$work"/src/*.deb || return 1
  installed=1
  dpkg-query -W "${packages[@]}"
}

# ---- the consumers -----------------------------------------------------------
write_consumer() {
  # The in-memory handshake driver of the coexistence tests uses only the
  # public API, so it serves here unchanged against the installed files.
  cp "$src/tests/coexist/handshake.c" "$src/tests/coexist/handshake.h" \
    "$work/"
  cat >"$work/consumer.c" <<'EOF'
/* Entity A and Entity B in one process, bytes moved in memory, over TLS
 * and DTLS: proves the installed header, library and backend module. */
#include <m2mpsk/m2mpsk.h>
#include <stdio.h>

#include "handshake.h"

int main(void) {
  printf("m2mpsk %s (header %s), backend %s\n", m2mpsk_version_string(),
         M2MPSK_VERSION_STRING, m2mpsk_backend_name());
  for (int t = 0; t < 2; t++) {
    char pa[600], pb[600];
    if (coexist_handshake((m2mpsk_transport)t, pa, pb, sizeof(pa)) != 0)
      return 1;
    printf("%s: A bound to %s, B bound to %s\n", t ? "DTLS" : "TLS", pa, pb);
  }
  return 0;
}
EOF
}

# Where the dynamic loader found libm2mpsk for a program: must be the
# installed copy.
check_libm2mpsk_from_libdir() {
  local found
  found=$(ldd "$1" | awk '/libm2mpsk\.so/ {print $3}')
  echo "libm2mpsk: $found"
  # /lib is /usr/lib on a merged-/usr system: compare where they lead.
  [ -n "$found" ] && [ "$(readlink -f "$found")" = \
    "$(readlink -f "/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)/libm2mpsk.so.0")" ]
}

consumer_pkg_config() {
  write_consumer
  echo "pkg-config --modversion m2mpsk: $(pkg-config --modversion m2mpsk)"
  echo "pkg-config --cflags --libs m2mpsk: $(pkg-config --cflags --libs m2mpsk)"
  # shellcheck disable=SC2046  # the flags are words
  cc -std=c11 -Wall -Werror -o "$work/consumer-pc" "$work/consumer.c" \
    "$work/handshake.c" $(pkg-config --cflags --libs m2mpsk) || return 1
  check_libm2mpsk_from_libdir "$work/consumer-pc" || return 1
  "$work/consumer-pc"
}

consumer_cmake() {
  local proj=$work/cmake-consumer
  mkdir -p "$proj"
  cp "$work/consumer.c" "$work/handshake.c" "$work/handshake.h" "$proj/"
  cat >"$proj/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.18)
project(consumer LANGUAGES C)
# SameMajorVersion: a request for another major version must not match.
find_package(m2mpsk 1.0 CONFIG QUIET)
if(m2mpsk_FOUND)
  message(FATAL_ERROR "find_package(m2mpsk 1.0) accepted ${m2mpsk_VERSION}")
endif()
find_package(m2mpsk 0.1 CONFIG REQUIRED)
message(STATUS "m2mpsk ${m2mpsk_VERSION} from ${m2mpsk_DIR}")
add_executable(consumer consumer.c handshake.c)
target_link_libraries(consumer PRIVATE m2mpsk::m2mpsk)
EOF
  cmake -S "$proj" -B "$proj/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF >"$work/cmake.log" 2>&1 ||
    { cat "$work/cmake.log"; return 1; }
  grep 'm2mpsk .* from' "$work/cmake.log"
  cmake --build "$proj/build" >"$work/cmake.log" 2>&1 ||
    { cat "$work/cmake.log"; return 1; }
  check_libm2mpsk_from_libdir "$proj/build/consumer" || return 1
  "$proj/build/consumer"
}

# One association between `m2mpsk serve --once` and `m2mpsk connect` over
# 127.0.0.1; $1 is tcp (TLS) or udp (DTLS).
cli_loopback() {
  local port="" srv line rc msg="hello over $1" udp=()
  [ "$1" = udp ] && udp=(--udp)
  rm -f "$work/serve.err"
  m2mpsk serve --keys "$work/keys" --id //m2m.example.com/cse-in --once \
    --port 0 "${udp[@]}" --timeout 10000 2>"$work/serve.err" &
  srv=$!
  for _ in $(seq 100); do
    line=$(grep -m1 'listening on' "$work/serve.err" 2>/dev/null)
    port=$(printf '%s' "$line" | sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\).*/\1/p')
    [ -n "$port" ] && break
    kill -0 "$srv" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$port" ]; then
    echo "serve did not start:"; cat "$work/serve.err"
    kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null
    return 1
  fi
  out=$(echo "$msg" | timeout 20 m2mpsk connect \
        "127.0.0.1:$port" --keys "$work/keys" --kpsa-id test@onem2m.com "${udp[@]}" \
        --timeout 10000 2>"$work/connect.err")
  rc=$?
  # --once: serve ends with the association; bounded all the same.
  for _ in $(seq 100); do kill -0 "$srv" 2>/dev/null || break; sleep 0.1; done
  kill "$srv" 2>/dev/null
  wait "$srv"
  local src_rc=$?
  echo "serve (exit $src_rc):"; sed 's/^/  /' "$work/serve.err"
  echo "connect (exit $rc):"; sed 's/^/  /' "$work/connect.err"
  echo "connect stdout: $out"
  [ "$rc" -eq 0 ] && [ "$src_rc" -eq 0 ] && [ "$out" = "$msg" ]
}

consumer_cli() {
  command -v m2mpsk
  [ "$(command -v m2mpsk)" = /usr/bin/m2mpsk ] || return 1
  m2mpsk --help >"$work/help.txt" || return 1
  head -3 "$work/help.txt"
  m2mpsk version || return 1
  (umask 077 && m2mpsk keygen --keys "$work/keys" --kpsa-id test@onem2m.com \
     --idb //m2m.example.com/cse-in --ida //m2m.example.com/cse-in/Cae1) || return 1
  cli_loopback tcp && cli_loopback udp || return 1
  # The packaged tool has the etcd component (libcurl, json-c): a KEK is
  # made, and an etcd URL nobody listens on is an I/O error (exit 3), not
  # "built without etcd support" (exit 2).
  m2mpsk keys kek --out "$work/kek" || return 1
  [ "$(stat -c %a "$work/kek")" = 600 ] || return 1
  local rc=0
  m2mpsk keys list --etcd etcd://127.0.0.1:1/m2mpsk 2>"$work/keys.err" || rc=$?
  sed 's/^/  keys list: /' "$work/keys.err"
  [ "$rc" -eq 3 ]
}

consumer_python() {
  # From a directory of its own, with a clean environment, so that nothing
  # but the installed module can be imported.
  mkdir -p "$work/py"
  (cd "$work/py" && env -i PATH=/usr/bin:/bin LC_ALL=C.UTF-8 \
     /usr/bin/python3 -I -c '
import os
import m2mpsk

print("module", m2mpsk.__file__, "from", m2mpsk._m2mpsk.__file__)
# The package m2mpsk/: the SWIG proxy as __init__.py, the extension, the
# hints and py.typed (PEP 561) beside them.
pkg = "/usr/lib/python3/dist-packages/m2mpsk/"
assert m2mpsk.__file__ == pkg + "__init__.py", m2mpsk.__file__
assert m2mpsk._m2mpsk.__file__.startswith(pkg), m2mpsk._m2mpsk.__file__
assert os.path.isfile(pkg + "__init__.pyi") and os.path.isfile(pkg + "py.typed")
print("m2mpsk", m2mpsk.version_string(), "backend", m2mpsk.backend_name())
IDB = "//m2m.example.com/cse-in"
for transport, name in ((m2mpsk.TRANSPORT_TLS, "TLS"), (m2mpsk.TRANSPORT_DTLS, "DTLS")):
    with m2mpsk.Keystore() as ks, m2mpsk.Config() as ca, m2mpsk.Config() as cb:
        ks.add("test@onem2m.com", bytes(range(32)), None, IDB)
        cb.add_local_id(IDB)
        with m2mpsk.Association(m2mpsk.ROLE_INITIATOR, transport, ca, ks, "test@onem2m.com") as a, \
             m2mpsk.Association(m2mpsk.ROLE_RESPONDER, transport, cb, ks) as b:
            b.start(1000)
            a.start(1000)
            for _ in range(20):
                moved = False
                for src, dst in ((a, b), (b, a)):
                    while out := src.drain():
                        dst.feed(out, 1000)
                        moved = True
                if not moved:
                    break
            assert a.state() == m2mpsk.STATE_ESTABLISHED, a.failure_detail()
            assert b.state() == m2mpsk.STATE_ESTABLISHED, b.failure_detail()
            print(f"{name}: A bound to {a.peer_id()}, B bound to {b.peer_id()}"
                  f" (credential: {b.peer_id_is_credential()}), {a.version()} {a.suite()}")

# The drop-in (m2mpsk_context.py, inserted into m2mpsk/__init__.py): both roles of
# Context.wrap_socket over loopback TCP, the responder in a thread.
import socket, threading
ks = m2mpsk.Keystore()
ks.add("test@onem2m.com", bytes(range(32)), None, IDB)
srv = m2mpsk.Context(server_side=True, keystore=ks)
srv.config.add_local_id(IDB)
cli = m2mpsk.Context(keystore=ks, kpsa_id="test@onem2m.com")
with socket.create_server(("127.0.0.1", 0)) as lsock:
    c = socket.create_connection(lsock.getsockname(), timeout=20)
    s, _ = lsock.accept()
s.settimeout(20)
got = []
t = threading.Thread(target=lambda: got.append(srv.wrap_socket(s)), daemon=True)
t.start()
with cli.wrap_socket(c) as pc:
    t.join(20)
    with got[0] as ps:
        pc.sendall(b"ping")
        assert ps.recv(4) == b"ping"
        print(f"Context.wrap_socket: A bound to {pc.peer_id()}, B bound to {ps.peer_id()}")
')
}

consumer_java() {
  local jdir=$work/java jar=/usr/share/java/m2mpsk.jar
  local jdk=/usr/lib/jvm/default-java/bin
  mkdir -p "$jdir"
  cat >"$jdir/Handshake.java" <<'EOF'
import org.m2mpsk.Association;
import org.m2mpsk.Config;
import org.m2mpsk.Keystore;
import org.m2mpsk.M2mpsk;

/** Entity A and Entity B in memory, over TLS and DTLS, through the jar; the
 * library loads itself from /usr/lib/<multiarch>/jni. */
public class Handshake {

  static final String IDB = "//m2m.example.com/cse-in";

  public static void main(String[] args) throws Exception {
    System.out.println("m2mpsk " + M2mpsk.versionString() + " backend " + M2mpsk.backendName());
    byte[] key = new byte[32];
    for (int i = 0; i < key.length; i++) key[i] = (byte) i;
    int[] transports = {M2mpsk.TRANSPORT_TLS, M2mpsk.TRANSPORT_DTLS};
    for (int t : transports) {
      try (Keystore ks = new Keystore(); Config ca = new Config(); Config cb = new Config()) {
        ks.add("test@onem2m.com", key, null, IDB);
        cb.addLocalId(IDB);
        try (Association a = new Association(M2mpsk.ROLE_INITIATOR, t, ca, ks, "test@onem2m.com");
             Association b = new Association(M2mpsk.ROLE_RESPONDER, t, cb, ks)) {
          b.start(1000);
          a.start(1000);
          for (int round = 0; round < 20; round++) {
            boolean moved = false;
            for (byte[] o = a.drain(); o.length > 0; o = a.drain()) { b.feed(o, 1000); moved = true; }
            for (byte[] o = b.drain(); o.length > 0; o = b.drain()) { a.feed(o, 1000); moved = true; }
            if (!moved) break;
          }
          if (a.state() != M2mpsk.STATE_ESTABLISHED || b.state() != M2mpsk.STATE_ESTABLISHED)
            throw new AssertionError("A: " + a.failureDetail() + ", B: " + b.failureDetail());
          System.out.println((t == M2mpsk.TRANSPORT_TLS ? "TLS" : "DTLS") + ": A bound to "
              + a.peerId() + ", B bound to " + b.peerId() + ", " + a.version() + " " + a.suite());
        }
      }
    }
  }
}
EOF
  ls -l "$jar"
  "$jdk/javac" -cp "$jar" -d "$jdir" "$jdir/Handshake.java" || return 1
  # No -Djava.library.path: Debian's JVMs search /usr/lib/<multiarch>/jni.
  (cd "$jdir" && "$jdk/java" -cp "$jar:." Handshake)
}

# The installed jar as an OSGi bundle in Apache Felix (Debian's), with
# bindings/java/tests/OsgiLauncher.java: resolved, exports at the package's
# version, wired to an importer; libm2mpskjni.so from Debian's default
# library path (no -Djava.library.path).
consumer_osgi() {
  local felix=/usr/share/java/org.apache.felix.framework.jar jdk=/usr/lib/jvm/default-java/bin
  local odir=$work/osgi version
  version=$(dpkg-query -W -f='${Version}' libm2mpsk-java | sed 's/-[^-]*$//')
  mkdir -p "$odir"
  /usr/bin/python3 -c 'import sys, zipfile; sys.stdout.write(zipfile.ZipFile(sys.argv[1]).read("META-INF/MANIFEST.MF").decode())' \
    /usr/share/java/m2mpsk.jar | grep -E '^(Bundle-|Export-Package|Import-Package|Require-Capability| )' || return 1
  "$jdk/javac" -cp "$felix" -d "$odir" "$src/bindings/java/tests/OsgiLauncher.java" || return 1
  timeout 120 "$jdk/java" --add-opens java.base/java.security=ALL-UNNAMED -cp "$felix:$odir" \
    OsgiLauncher /usr/share/java/m2mpsk.jar org.m2mpsk "$version"
}

# org.m2mpsk:m2mpsk from Debian's Maven repository: a Maven project that
# depends on it (bindings/java/tests/maven-consumer) builds and passes its
# JUnit handshake tests with mvn -o, /usr/share/maven-repo its only
# repository and an empty local one; what Maven resolved is the installed
# jar.
consumer_maven() {
  local version dir=/usr/share/maven-repo/org/m2mpsk/m2mpsk
  version=$(dpkg-query -W -f='${Version}' libm2mpsk-java | sed 's/-[^-]*$//')
  ls -l "$dir"/*/
  for v in "$version" debian; do
    [ -f "$dir/$v/m2mpsk-$v.pom" ] || { echo "no $dir/$v/m2mpsk-$v.pom"; return 1; }
    [ "$(readlink -f "$dir/$v/m2mpsk-$v.jar")" = "$(readlink -f /usr/share/java/m2mpsk.jar)" ] ||
      { echo "$dir/$v/m2mpsk-$v.jar does not lead to /usr/share/java/m2mpsk.jar"; return 1; }
  done
  MVN=/usr/bin/mvn M2MPSK_MAVEN_SYSTEM_REPO=/usr/share/maven-repo \
    sh "$src/bindings/java/tests/maven-consumer.sh" "$work/maven" "$work/m2repo" "$version" || return 1
  cmp "$work/m2repo/org/m2mpsk/m2mpsk/$version/m2mpsk-$version.jar" /usr/share/java/m2mpsk.jar &&
    echo "Maven resolved the installed jar"
}

# The docs and examples the binding packages ship, as in the tree (gzipped
# or not, as dh_compress left them), and the examples still build against
# the installed module and jar.
shipped_same() { # INSTALLED SOURCE
  local f
  for f in "$1" "$1.gz"; do
    if [ -f "$f" ]; then
      zcat -f "$f" | cmp - "$2" && echo "$f" && return 0
      return 1
    fi
  done
  echo "missing: $1"
  return 1
}

consumer_docs() {
  local f doc=/usr/share/doc
  shipped_same "$doc/python3-m2mpsk/python.md" "$src/docs/python.md" || return 1
  shipped_same "$doc/libm2mpsk-java/java.md" "$src/docs/java.md" || return 1
  for f in "$src"/examples/python/*; do
    shipped_same "$doc/python3-m2mpsk/examples/${f##*/}" "$f" || return 1
  done
  for f in "$src"/examples/java/*; do
    shipped_same "$doc/libm2mpsk-java/examples/${f##*/}" "$f" || return 1
  done
  mkdir -p "$work/examples"
  for f in "$doc"/python3-m2mpsk/examples/*.py; do
    # Each example runs its demo (servers, connections) only as a script.
    grep -q '^if __name__ == "__main__":' "$f" ||
      { echo "$f: no 'if __name__ == \"__main__\":' guard"; return 1; }
    (cd "$work/examples" && /usr/bin/python3 -I - "$f" <<'PYEOF'
import runpy, sys

# Imports the example (so its `import m2mpsk` runs against the installed
# module) without running main().
runpy.run_path(sys.argv[1], run_name="example")
print(sys.argv[1], "imports")
PYEOF
    ) || return 1
  done
  # The Java examples against the installed jars: m2mpsk.jar, m2mpsk-jsse.jar
  # (DtlsEcho, JettyCse) and Debian's Jetty 9.4 (JettyCse), when
  # libjetty9-java is installed; without it, the Jetty examples are skipped.
  local j java=() cp=/usr/share/java/m2mpsk.jar:/usr/share/java/m2mpsk-jsse.jar jetty=yes
  for j in jetty9-server jetty9-http jetty9-io jetty9-util jetty9-servlet jetty9-security \
           servlet-api; do
    if [ -f "/usr/share/java/$j.jar" ]; then cp=$cp:/usr/share/java/$j.jar; else jetty=; fi
  done
  for f in "$doc"/libm2mpsk-java/examples/*.java; do
    if [ -z "$jetty" ] && grep -q '^import org\.eclipse\.jetty\.' "$f"; then
      echo "$f: skipped, it needs Jetty 9 (libjetty9-java)"
      continue
    fi
    java+=("$f")
  done
  /usr/lib/jvm/default-java/bin/javac -cp "$cp" -d "$work/examples" "${java[@]}" &&
    echo "the Java examples compile against $cp"
}

# The suites TS-0003 §10.2.2 mandates, with m2mpsk's default options on
# both sides: `m2mpsk connect` against `openssl s_server` forced to
# TLS_PSK_WITH_AES_128_CBC_SHA256 (TLS) or TLS_PSK_WITH_AES_128_CCM_8
# (DTLS), and `openssl s_client` forced to them against `m2mpsk serve`.
# $1: tcp or udp.
mandated_connect() {
  local cipher=PSK-AES128-CBC-SHA256 proto=-tls1_2 udp=() port="" srv rc
  [ "$1" = udp ] && cipher=PSK-AES128-CCM8 proto=-dtls1_2 udp=(--udp)
  rm -f "$work/s_server.out"
  # stdin held open (sleep) so that s_server does not quit at its EOF.
  sleep 30 | timeout 30 openssl s_server -accept 127.0.0.1:0 -naccept 1 \
    -nocert -psk "$(cat "$work/key.hex")" -psk_identity test@onem2m.com \
    -cipher "$cipher" "$proto" >"$work/s_server.out" 2>&1 &
  srv=$!
  for _ in $(seq 100); do
    port=$(sed -n 's/^ACCEPT 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$work/s_server.out")
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$work/s_server.out"; kill "$srv"; return 1; }
  echo "mandated over $1" | timeout 20 m2mpsk connect "127.0.0.1:$port" \
    --keys "$work/mkeys" --kpsa-id test@onem2m.com "${udp[@]}" \
    --timeout 10000 2>"$work/connect.err"
  rc=$?
  for _ in $(seq 50); do grep -q "mandated over $1" "$work/s_server.out" && break; sleep 0.1; done
  kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null
  echo "connect (exit $rc):"; sed 's/^/  /' "$work/connect.err"
  echo "s_server:"; grep -E "^CIPHER is|mandated over" "$work/s_server.out" | sed 's/^/  /'
  [ "$rc" -eq 0 ] && grep -q "^CIPHER is $cipher\$" "$work/s_server.out" &&
    grep -q "mandated over $1" "$work/s_server.out" &&
    grep -q "suite=TLS_PSK_WITH_AES_128_" "$work/connect.err"
}

mandated_serve() {
  local cipher=PSK-AES128-CBC-SHA256 proto=-tls1_2 udp=() port="" srv rc line
  [ "$1" = udp ] && cipher=PSK-AES128-CCM8 proto=-dtls1_2 udp=(--udp)
  rm -f "$work/serve.err"
  m2mpsk serve --keys "$work/mkeys" --id //m2m.example.com/cse-in --once \
    --port 0 "${udp[@]}" --timeout 10000 2>"$work/serve.err" &
  srv=$!
  for _ in $(seq 100); do
    line=$(grep -m1 'listening on' "$work/serve.err" 2>/dev/null)
    port=$(printf '%s' "$line" | sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\).*/\1/p')
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$work/serve.err"; kill "$srv"; return 1; }
  echo "mandated over $1" | timeout 20 openssl s_client \
    -connect "127.0.0.1:$port" -servername m2m.example.com \
    -psk "$(cat "$work/key.hex")" -psk_identity test@onem2m.com \
    -cipher "$cipher" "$proto" >"$work/s_client.out" 2>&1
  rc=$?
  for _ in $(seq 100); do kill -0 "$srv" 2>/dev/null || break; sleep 0.1; done
  kill "$srv" 2>/dev/null
  wait "$srv"
  local srv_rc=$?
  echo "serve (exit $srv_rc):"; sed 's/^/  /' "$work/serve.err"
  echo "s_client (exit $rc):"; grep -E "Cipher is" "$work/s_client.out" | sed 's/^/  /'
  [ "$rc" -eq 0 ] && [ "$srv_rc" -eq 0 ] &&
    grep -q "Cipher is $cipher\$" "$work/s_client.out" &&
    grep -q "suite=TLS_PSK_WITH_AES_128_" "$work/serve.err"
}

consumer_mandated() {
  command -v openssl || return 1
  # Both engines shipped and loadable.
  m2mpsk version | grep -E '^(m2mpsk|engine [a-z]+:|profile)' || return 1
  m2mpsk version | grep -q '^engine boringssl: [0-9]* suites$' || return 1
  m2mpsk version | grep -q '^engine openssl: [0-9]* suites$' || return 1
  # A key file of its own: step 3's holds the same KpsaID.
  (umask 077 && m2mpsk keygen --keys "$work/mkeys" --kpsa-id test@onem2m.com \
     --idb //m2m.example.com/cse-in --print hex >"$work/key.hex") || return 1
  mandated_connect tcp && mandated_connect udp &&
    mandated_serve tcp && mandated_serve udp
}

# Purged means gone: the package set is what it was before the test.
# m2mpsk-gateway: the unit, the account and the config file are installed;
# the unit's command runs as that account with a config made from the
# shipped one (loopback ports, a key file of its own, a Python HTTP server
# as the CSE); a request with the bound originator is forwarded, a forged
# one gets 4106 from the gateway; SIGHUP reloads, SIGTERM ends it with 0.
gw_request() { # PORT ORIGIN RI: one HTTP request over TLS-PSK (the mandated suite)
  printf 'GET /hello.txt HTTP/1.1\r\nHost: cse\r\nX-M2M-Origin: %s\r\nX-M2M-RI: %s\r\nConnection: close\r\n\r\n' "$2" "$3" |
    timeout 20 openssl s_client -connect "127.0.0.1:$1" -quiet -ign_eof \
      -psk "$(cat "$gwdir/key.hex")" -psk_identity test@onem2m.com \
      -cipher PSK-AES128-CBC-SHA256 -tls1_2 2>/dev/null
}

consumer_gateway() {
  local unit="" u exec_line gw be bport="" port="" line rc out
  for u in /lib/systemd/system/m2mpsk-gateway.service \
           /usr/lib/systemd/system/m2mpsk-gateway.service; do
    [ -f "$u" ] && unit=$u
  done
  [ -n "$unit" ] || { echo "m2mpsk-gateway.service not installed"; return 1; }
  echo "unit: $unit"
  if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "$unit" || return 1
    echo "systemd-analyze verify: ok"
  fi
  getent passwd m2mpsk || { echo "no m2mpsk account"; return 1; }
  [ -f /etc/m2mpsk/gateway.conf ] || { echo "no /etc/m2mpsk/gateway.conf"; return 1; }
  exec_line=$(sed -n 's/^ExecStart=//p' "$unit")
  echo "ExecStart: $exec_line"
  [ "$exec_line" = "/usr/bin/m2mpsk gateway --config /etc/m2mpsk/gateway.conf" ] || return 1
  grep -q '^User=m2mpsk$' "$unit" && grep -q '^LimitMEMLOCK=' "$unit" || return 1
  # The account cannot enter $work (0700, root's): a directory of its own.
  gwdir=$(mktemp -d /tmp/m2mpsk-gateway-test.XXXXXX)
  chown m2mpsk:m2mpsk "$gwdir"
  mkdir -p "$gwdir/www" && echo "hello from the CSE" >"$gwdir/www/hello.txt"
  runuser -u m2mpsk -- m2mpsk keygen --keys "$gwdir/keys" --kpsa-id test@onem2m.com \
    --idb //m2m.example.com/cse-in --ida //m2m.example.com/cse-in/Cae1 || return 1
  sed -n 's/.*kpsa=hex:\([0-9a-f]*\).*/\1/p' "$gwdir/keys" >"$gwdir/key.hex"
  python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$gwdir/www" \
    >"$gwdir/backend.out" 2>&1 &
  be=$!
  for _ in $(seq 100); do
    bport=$(sed -n 's/.*port \([0-9][0-9]*\).*/\1/p' "$gwdir/backend.out" | head -1)
    [ -n "$bport" ] && break
    sleep 0.1
  done
  [ -n "$bport" ] || { cat "$gwdir/backend.out"; kill "$be"; return 1; }
  sed -e "s|^keys = .*|keys = $gwdir/keys|" \
      -e 's|^id = .*|id = //m2m.example.com/cse-in|' \
      -e 's|^http-listen = .*|http-listen = 127.0.0.1:0|' \
      -e "s|^http-backend = .*|http-backend = 127.0.0.1:$bport|" \
      /etc/m2mpsk/gateway.conf >"$gwdir/gateway.conf"
  chmod 644 "$gwdir/gateway.conf"
  # setpriv execs the command itself (runuser would stay its parent and
  # take the signals meant for it), as systemd's User= does.
  setpriv --reuid m2mpsk --regid m2mpsk --init-groups -- \
    ${exec_line/\/etc\/m2mpsk\/gateway.conf/$gwdir/gateway.conf} \
    --threads 1 2>"$gwdir/gateway.err" &
  gw=$!
  for _ in $(seq 100); do
    grep -q 'gateway ready' "$gwdir/gateway.err" 2>/dev/null && break
    kill -0 "$gw" 2>/dev/null || break
    sleep 0.1
  done
  line=$(grep -m1 'gateway listening http' "$gwdir/gateway.err")
  port=$(printf '%s' "$line" | sed -n 's/.*:\([0-9][0-9]*\)$/\1/p')
  rc=0
  if [ -z "$port" ]; then
    rc=1
  else
    out=$(gw_request "$port" //m2m.example.com/cse-in/Cae1 i1)
    echo "bound originator: $(printf '%s' "$out" | head -1)"
    printf '%s' "$out" | grep -q '^HTTP/1.1 200' &&
      printf '%s' "$out" | grep -q 'hello from the CSE' || rc=1
    out=$(gw_request "$port" //m2m.example.com/cse-in/Cmallory i2)
    echo "forged originator: $(printf '%s' "$out" | head -1), $(printf '%s' "$out" | grep -i '^X-M2M-RSC' | tr -d '\r')"
    printf '%s' "$out" | grep -qi '^X-M2M-RSC: 4106' || rc=1
    kill -HUP "$gw"
    for _ in $(seq 50); do grep -q 'keys reloaded' "$gwdir/gateway.err" && break; sleep 0.1; done
    grep -q 'keys reloaded (1 records)' "$gwdir/gateway.err" || rc=1
  fi
  kill -TERM "$gw" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$gw" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$gw" 2>/dev/null
  wait "$gw"
  local gw_rc=$?
  kill "$be" 2>/dev/null; wait "$be" 2>/dev/null
  echo "gateway (exit $gw_rc):"; sed 's/^/  /' "$gwdir/gateway.err"
  grep -q "GET /hello.txt" "$gwdir/backend.out" || { echo "the CSE saw no request"; rc=1; }
  [ "$(grep -c 'GET /hello.txt' "$gwdir/backend.out")" -eq 1 ] ||
    { echo "the CSE saw the forged request"; rc=1; }
  [ "$rc" -eq 0 ] && [ "$gw_rc" -eq 0 ]
}

machine_as_found() {
  apt-get purge -y -qq "${packages[@]}" || return 1
  installed=0
  dpkg-query -W -f='${Package}:${Architecture} ${Version}\n' | sort >"$work/after"
  diff "$work/before" "$work/after" && echo "package set unchanged"
}

start=$SECONDS
if step "build the .debs (dpkg-buildpackage -us -uc -b)" build_debs &&
   step "lintian (no errors; warnings fixed or overridden)" run_lintian &&
   step "install (apt-get install ./*.deb)" install_debs; then
  step "1. C consumer with pkg-config" consumer_pkg_config
  step "2. C consumer with CMake find_package(m2mpsk CONFIG)" consumer_cmake
  step "3. m2mpsk --help, serve --once / connect over 127.0.0.1 (TLS, DTLS)" consumer_cli
  step "4. python3 -c 'import m2mpsk' handshake" consumer_python
  step "5. Java class with /usr/share/java/m2mpsk.jar handshake" consumer_java
  step "5a. /usr/share/java/m2mpsk.jar as an OSGi bundle in Apache Felix" consumer_osgi
  step "5b. Maven project depending on org.m2mpsk:m2mpsk, mvn -o with /usr/share/maven-repo" consumer_maven
  step "5c. docs and examples shipped in /usr/share/doc (python3-m2mpsk, libm2mpsk-java)" consumer_docs
  step "6. mandated suites, default options: m2mpsk vs openssl s_server/s_client (TLS, DTLS)" consumer_mandated
  step "7. m2mpsk-gateway: unit, account, config; the service's command forwards, refuses a forged originator (4106), reloads, stops" consumer_gateway
  step "purge, machine as found" machine_as_found
fi
echo "== took $((SECONDS - start)) s"
summary
