#!/usr/bin/env bash
# CI's fuzzing stage, bounded in time: builds the fuzz targets against both
# TLS backends, replays every committed seed once (ctest -L fuzz), then
# fuzzes every target for SECONDS on top of its seed corpus, FUZZ_JOBS
# targets at a time, and prints one summary. Exits non-zero if a build
# fails, a seed fails, or any target finds a crash, a leak, a timeout or a
# sanitizer report (run.sh prints the log tail and the reproducer).
#
#   bash tests/fuzz/ci.sh [SECONDS]        # default 45
#
# Build directories (configured here with CC=clang -DM2MPSK_FUZZ=ON; kept,
# so a second run only rebuilds what changed): build-fuzz (BoringSSL) and
# build-fuzz-openssl (OpenSSL 3), or FUZZ_BUILD_BORINGSSL and
# FUZZ_BUILD_OPENSSL. The targets are what each build lists in
# tests/fuzz/targets.txt (run.sh's default): fuzz_dtls_listen exists only
# in the OpenSSL build. Targets that never reach the TLS backend
# (FUZZ_ONCE, default: fuzz_keyfile fuzz_identifiers fuzz_wire fuzz_hello
# fuzz_coap fuzz_httpreq) are fuzzed
# in the BoringSSL build only: the OpenSSL build compiles the same code for
# them. FUZZ_ONCE= fuzzes every target in both. FUZZ_CI_KEEP=DIR keeps the
# grown corpora, logs and crash artifacts in DIR/<backend>/<target>/.
#
# On this project's 2-core machine, shared with other work, with the
# default 45 s: both builds from scratch and the seed replay took 23 s,
# then 12 runs of 45 s two at a time, 300 s in all. A run takes SECONDS
# plus about 1 s, so the stage takes about ceil(runs / FUZZ_JOBS) *
# SECONDS plus the builds.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
seconds=${1:-45}
jobs=${FUZZ_JOBS:-2}
once=${FUZZ_ONCE-fuzz_keyfile fuzz_identifiers fuzz_wire fuzz_hello fuzz_coap fuzz_httpreq}
builds=("boringssl:${FUZZ_BUILD_BORINGSSL:-$root/build-fuzz}"
        "openssl:${FUZZ_BUILD_OPENSSL:-$root/build-fuzz-openssl}")
case $seconds in
  '' | *[!0-9]*) echo "usage: bash tests/fuzz/ci.sh [SECONDS]" >&2; exit 2 ;;
esac
if ! command -v clang >/dev/null; then
  echo "ci.sh: clang not found. apt-get install clang libclang-rt-14-dev llvm" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/m2mpsk-fuzz-ci.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }

# ---- builds and seed replay, one backend after the other (each -j2)
python=()
[ -x /usr/bin/python3 ] && python=(-DPython3_EXECUTABLE=/usr/bin/python3)
for b in "${builds[@]}"; do
  tls=${b%%:*} dir=${b#*:}
  echo "== build $tls ($dir) at $(elapsed)s"
  if ! CC=clang cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DM2MPSK_FUZZ=ON -DM2MPSK_WERROR=ON -DM2MPSK_BINDINGS=OFF \
      -DM2MPSK_TLS="$tls" "${python[@]}" >"$work/configure-$tls.log" 2>&1 ||
    ! cmake --build "$dir" --target m2mpsk_fuzz -j"$(nproc)" \
      >"$work/build-$tls.log" 2>&1; then
    tail -40 "$work/configure-$tls.log" "$work/build-$tls.log" 2>/dev/null
    echo "fuzz: FAILED (build $tls)"
    exit 1
  fi
  echo "== seeds $tls at $(elapsed)s"
  if ! ctest --test-dir "$dir" -L fuzz --output-on-failure --no-tests=error \
      >"$work/ctest-$tls.log" 2>&1; then
    tail -60 "$work/ctest-$tls.log"
    echo "fuzz: FAILED (seed corpus replay, $tls)"
    exit 1
  fi
  grep -E 'tests passed|tests failed' "$work/ctest-$tls.log"
done
built=$(elapsed)

# ---- the job list: (backend, build dir, target)
list=()
first=1
for b in "${builds[@]}"; do
  tls=${b%%:*} dir=${b#*:}
  while read -r t; do
    [ -n "$t" ] || continue
    if [ $first -eq 0 ] && [[ " $once " == *" $t "* ]]; then
      continue
    fi
    list+=("$tls $dir $t")
  done <"$dir/tests/fuzz/targets.txt"
  first=0
done

# ---- fuzzing: `jobs` lanes, each running its share one target at a time.
# Every run is time-bounded, so lanes of equal length finish together.
echo "== fuzzing ${#list[@]} targets, ${seconds}s each, $jobs at a time, at ${built}s"
lane() {
  local i=$1 k=0 job tls dir t
  for job in "${list[@]}"; do
    if [ $((k % jobs)) -eq "$i" ]; then
      read -r tls dir t <<<"$job"
      FUZZ_KEEP=${FUZZ_CI_KEEP:+$FUZZ_CI_KEEP/$tls} \
        bash "$root/tests/fuzz/run.sh" "$dir" "$seconds" "$t" \
        >"$work/run-$tls-$t.log" 2>&1
      echo $? >"$work/run-$tls-$t.rc"
    fi
    k=$((k + 1))
  done
}
pids=()
for ((i = 0; i < jobs; i++)); do
  lane "$i" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done

# ---- one summary
failed=0
lines=()
for job in "${list[@]}"; do
  read -r tls dir t <<<"$job"
  rc=$(cat "$work/run-$tls-$t.rc" 2>/dev/null || echo '?')
  line=$(grep -E "^$t +execs" "$work/run-$tls-$t.log" | tail -1)
  [ -n "$line" ] || line="$t (no result)"
  if [ "$rc" != 0 ]; then
    failed=1
    echo "---- $tls $t: run.sh exit $rc ----"
    cat "$work/run-$tls-$t.log"
  fi
  lines+=("$(printf '%-9s %s' "$tls" "$line")")
done
echo
echo "fuzz summary (${seconds}s per target, $jobs at a time; builds and seeds ${built}s, total $(elapsed)s):"
printf '  %s\n' "${lines[@]}"
if [ $failed -ne 0 ]; then
  echo "fuzz: FAILED"
  exit 1
fi
echo "fuzz: all ${#list[@]} runs clean"
