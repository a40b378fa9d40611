#!/usr/bin/env bash
# Installs the npm package the way npm users do, offline:
#   1. libm2mpsk into a prefix of its own (cmake --install, runtime and dev),
#   2. npm pack of the staged package (build/bindings/node/package), and in
#      a copy of the checkout's bindings/node (prepack runs SWIG),
#   3. npm install --offline ./m2mpsk-<version>.tgz into a scratch project,
#      node-gyp building the addon against that prefix's m2mpsk.pc and the
#      running node's own headers (scripts/install.js),
#   4. npm_consumer.js: a TLS and a DTLS handshake and an http request with
#      the installed package.
#
#   npm_install.sh BUILD PACKAGE NODE NPM
# Exits 77 (skip) when npm is missing. Exits non-zero on the first failure.
set -euo pipefail

build=$1
pkg=$2
node=$3
npm=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "$npm" ] || [ "$npm" = "M2MPSK_NPM-NOTFOUND" ] || ! command -v "$npm" >/dev/null; then
  echo "npm not found: skipped (apt-get install npm)"
  exit 77
fi
[ -f "$pkg/src/m2mpsk_wrap.cxx" ] || { echo "FAIL: $pkg is not staged (build target m2mpsk_node_package)"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/m2mpsk-npm.XXXXXX")
trap 'rm -rf "$work"' EXIT

# npm reads nothing of this machine's configuration and writes its cache
# here; no registry is needed (the package has no dependencies).
export npm_config_userconfig=$work/npmrc npm_config_globalconfig=$work/npmrc-global
export npm_config_cache=$work/npm-cache npm_config_audit=false npm_config_fund=false
export npm_config_update_notifier=false npm_config_offline=true
unset M2MPSK_NODE_ADDON npm_config_nodedir LD_LIBRARY_PATH PKG_CONFIG_LIBDIR
: >"$work/npmrc"
: >"$work/npmrc-global"

cmake --install "$build" --prefix "$work/prefix" --component runtime >/dev/null
cmake --install "$build" --prefix "$work/prefix" --component dev >/dev/null
pc=$(find "$work/prefix" -path '*/pkgconfig/m2mpsk.pc' | head -1)
[ -n "$pc" ] || { echo "FAIL: no m2mpsk.pc installed under $work/prefix"; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$pc")
echo "libm2mpsk $(pkg-config --modversion m2mpsk) in $work/prefix"

cp -r "$pkg" "$work/pkg"
rm -f "$work/pkg/.stamp"
(cd "$work" && "$npm" pack ./pkg --pack-destination "$work" >/dev/null)
tgz=$(ls "$work"/m2mpsk-*.tgz)
echo "packed $(basename "$tgz")"
listing=$(tar tzf "$tgz")
for f in package/package.json package/binding.gyp package/src/m2mpsk_wrap.cxx \
         package/lib/index.js package/lib/dtls.js package/lib/addon.js package/scripts/install.js \
         package/index.d.ts; do
  grep -qx "$f" <<<"$listing" || { echo "FAIL: $f is not in $(basename "$tgz")"; exit 1; }
done

# npm pack in a checkout's bindings/node works too: its prepack script has
# SWIG write the wrapper from ../m2mpsk.i with the installed headers.
mkdir "$work/checkout"
cp -r "$here/../.." "$work/checkout/bindings"
rm -rf "$work/checkout/bindings/node/src" "$work/checkout/bindings/node/build" "$work/checkout/bindings/node/node_modules"
mkdir "$work/from-source"
(cd "$work/checkout/bindings/node" && "$npm" pack --pack-destination "$work/from-source" >/dev/null) || {
  echo "FAIL: npm pack in a checkout's bindings/node"; exit 1; }
listing=$(tar tzf "$work/from-source"/m2mpsk-*.tgz)
grep -qx package/src/m2mpsk_wrap.cxx <<<"$listing" || { echo "FAIL: npm pack from the checkout has no wrapper"; exit 1; }
echo "packed from the checkout: $(basename "$work"/from-source/m2mpsk-*.tgz) with the wrapper SWIG wrote"

mkdir "$work/app"
echo '{"name": "m2mpsk-consumer", "version": "1.0.0", "private": true}' >"$work/app/package.json"
(cd "$work/app" && "$npm" install --offline --foreground-scripts "$tgz") >"$work/install.log" 2>&1 || {
  cat "$work/install.log"; echo "FAIL: npm install"; exit 1; }
grep -E "m2mpsk: .*rebuild --nodedir=" "$work/install.log" || { cat "$work/install.log"; echo "FAIL: install.js did not run node-gyp with --nodedir"; exit 1; }
addon=$work/app/node_modules/m2mpsk/build/Release/m2mpsk.node
[ -f "$addon" ] || { cat "$work/install.log"; echo "FAIL: no $addon"; exit 1; }
# The addon links the prefix's libm2mpsk (its RPATH), not another one.
deps=$(ldd "$addon")
grep -q "$work/prefix/.*libm2mpsk" <<<"$deps" || { ldd "$addon"; echo "FAIL: $addon does not load the prefix's libm2mpsk"; exit 1; }
(cd "$work/app" && "$node" "$here/npm_consumer.js")
echo "OK"
