#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on top of its committed seed
# corpus, and fails if any target finds a crash, a leak, a timeout or a
# sanitizer report.
#
#   bash tests/fuzz/run.sh BUILD_DIR SECONDS [TARGET...]
#
# Without TARGETs, every target the build has (BUILD_DIR/tests/fuzz/targets.txt).
# BUILD_DIR is a build directory configured with CC=clang -DM2MPSK_FUZZ=ON
# and built with --target m2mpsk_fuzz. Each target works on a copy of its
# corpus in a temporary directory, so the repository is never modified;
# set FUZZ_KEEP=DIR to keep the grown corpora and any crash artifacts there.
# FUZZ_RUNS bounds the executions per target (default: unbounded, time
# only). Prints, per target: executions, coverage (cov/ft from libFuzzer's
# final stats line), corpus size, findings.
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: bash tests/fuzz/run.sh BUILD_DIR SECONDS [TARGET...]" >&2
  exit 2
fi
build=$1
seconds=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
bindir=$build/tests/fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ] && [ -f "$bindir/targets.txt" ]; then
  # What this build has (tests/fuzz/CMakeLists.txt writes the list): the
  # OpenSSL backend's builds add fuzz_dtls_listen.
  mapfile -t targets < <(grep -v '^$' "$bindir/targets.txt")
fi
if [ ${#targets[@]} -eq 0 ]; then
  targets=(fuzz_responder_tls fuzz_responder_dtls fuzz_initiator
           fuzz_appdata fuzz_keyfile fuzz_identifiers fuzz_wire)
fi
runs=${FUZZ_RUNS:--1}

work=${FUZZ_KEEP:-}
if [ -z "$work" ]; then
  work=$(mktemp -d "${TMPDIR:-/tmp}/m2mpsk-fuzz.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"

# Sanitizer reports are fatal and symbolized; leaks count as findings.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:symbolize=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1:symbolize=1}

failed=0
summary=()
for t in "${targets[@]}"; do
  bin=$bindir/$t
  if [ ! -x "$bin" ]; then
    echo "run.sh: $bin not built (cmake --build $build --target m2mpsk_fuzz)" >&2
    exit 2
  fi
  corpus=$work/$t/corpus
  artifacts=$work/$t/artifacts
  rm -rf "$corpus" "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  cp -R "$here/corpus/$t/." "$corpus/" 2>/dev/null || true
  seeds=$(find "$corpus" -type f | wc -l)
  log=$work/$t/log
  echo "== $t: ${seconds}s on $seeds seeds"
  "$bin" -max_total_time="$seconds" -runs="$runs" -timeout=25 \
    -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$corpus" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  final=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$final")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$final")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$final")
  findings=$(find "$artifacts" -type f | wc -l)
  status=ok
  if [ $rc -ne 0 ] || [ "$findings" -ne 0 ]; then
    status="FAILED (exit $rc)"
    failed=1
    echo "---- $t log (last 60 lines) ----"
    tail -60 "$log"
    for f in "$artifacts"/*; do
      [ -f "$f" ] && echo "artifact: $f ($(stat -c %s "$f") bytes)" &&
        od -An -tx1 -v "$f" | head -20
    done
  fi
  line=$(printf '%-20s execs %-10s cov %-6s ft %-6s corpus %-12s findings %s  %s' \
    "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$findings" "$status")
  echo "$line"
  summary+=("$line")
done

echo
echo "fuzz summary (${seconds}s per target):"
printf '  %s\n' "${summary[@]}"
if [ $failed -ne 0 ]; then
  echo "fuzz: FAILED (crash artifacts above${FUZZ_KEEP:+, kept in $work})"
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran clean"
