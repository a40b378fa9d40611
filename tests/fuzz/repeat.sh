#!/usr/bin/env bash
# Determinism across inputs: runs each seed of CORPUS_DIR RUNS times in one
# process and fails unless every run of a seed ends the same way (the
# target's M2MPSK_FUZZ_DEBUG line). State that outlives an input (a shared
# config's rate limiter, a keystore an input revoked a record in) shows as
# a seed whose outcome changes after some runs.
#
#   bash tests/fuzz/repeat.sh TARGET_BINARY CORPUS_DIR [RUNS]
set -uo pipefail
bin=$1 dir=$2 runs=${3:-25}
export M2MPSK_FUZZ_DEBUG=1
failed=0 seeds=0
for f in "$dir"/*; do
  [ -f "$f" ] || continue
  seeds=$((seeds + 1))
  out=$("$bin" -runs="$runs" "$f" 2>&1)
  rc=$?
  lines=$(grep '^\[fuzz\]' <<<"$out" | sort | uniq -c)
  if [ $rc -ne 0 ] || [ -z "$lines" ] || [ "$(wc -l <<<"$lines")" -ne 1 ]; then
    echo "$(basename "$f"): exit $rc, outcomes over $runs runs:"
    echo "${lines:-  (none)}"
    failed=1
  fi
done
if [ $failed -ne 0 ]; then
  echo "repeat: an outcome depended on the runs before it"
  exit 1
fi
echo "repeat: $seeds seeds, $runs runs each, one outcome each"
