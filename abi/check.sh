#!/usr/bin/env bash
# Compares a built libm2mpsk.so with the ABI baseline in abi/libm2mpsk.abi
# (libabigail). Fails on any incompatible change; reports compatible ones.
#
#   abi/check.sh LIBRARY              check (ctest does this)
#   abi/check.sh --refresh LIBRARY    rewrite the baseline, on purpose
# LIBRARY is the built libm2mpsk.so (build/lib/libm2mpsk.so).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
refresh=0
if [ "${1:-}" = --refresh ]; then refresh=1; shift; fi
lib=$(readlink -f "${1:?usage: abi/check.sh [--refresh] LIBRARY}")
baseline=$here/libm2mpsk.abi
headers=$here/../include/m2mpsk
for tool in abidw abidiff; do
  command -v $tool >/dev/null ||
    { echo "abi/check.sh: $tool missing: apt-get install abigail-tools" >&2; exit 2; }
done

if [ $refresh = 1 ]; then
  abidw --headers-dir "$headers" --no-corpus-path --no-comp-dir-path \
    --out-file "$baseline" "$lib"
  echo "abi/check.sh: baseline rewritten from $lib"
  exit 0
fi

status=0
abidiff --headers-dir2 "$headers" --no-added-syms "$baseline" "$lib" ||
  status=$?
# abidiff's exit status is a bit field: 1 error, 2 usage, 4 ABI change,
# 8 incompatible ABI change.
if [ $((status & 3)) -ne 0 ]; then
  echo "abi/check.sh: abidiff failed to compare (status $status)" >&2
  exit 2
fi
# Added symbols are left out of that comparison, so any change it reports
# alters or removes something that users link against.
if [ $((status & 12)) -ne 0 ]; then
  echo "abi/check.sh: INCOMPATIBLE ABI change against abi/libm2mpsk.abi" >&2
  exit 1
fi
if ! abidiff --headers-dir2 "$headers" "$baseline" "$lib" >/dev/null; then
  echo "abi/check.sh: symbols were added; give them a new version node in" \
       "abi/libm2mpsk.map and refresh the baseline (see abi/README.md)"
fi
echo "abi/check.sh: no incompatible change against the baseline"
