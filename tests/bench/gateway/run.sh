#!/usr/bin/env bash
# The gateway benchmark: `m2mpsk gateway`, stunnel and the backend reached
# directly, side by side in one run, in front of the same backend. Writes
# the gateway section of docs/BENCHMARKS.md and docs/benchmarks-gateway.png
# (the rest of the document is tests/bench/run.sh's and stays as it is).
#
#   bash tests/bench/gateway/run.sh           # full run, about 7 minutes
#   bash tests/bench/gateway/run.sh --quick   # about 1 minute; writes
#                                             # build-bench/gateway-results/ only
#
# Needs (Debian): cmake, a C compiler, libevent-dev, stunnel4, gnuplot-nox,
# valgrind (the heap breakdown; optional),
# python3, and what the library needs. Shares tests/bench/run.sh's Release
# build directory build-bench/ (M2MPSK_BENCH_BUILD overrides it). Opt-in:
# not part of CI (ctest runs only a one-second smoke run of each contender,
# gwbench_smoke).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
build=${M2MPSK_BENCH_BUILD:-$root/build-bench}
profile=full
case "${1:-}" in
  --quick) profile=quick ;;
  "") ;;
  *) echo "usage: bash tests/bench/gateway/run.sh [--quick]" >&2; exit 2 ;;
esac

for tool in cmake gnuplot python3 stunnel4; do
  if ! command -v "$tool" >/dev/null; then
    echo "run.sh: $tool not found. apt-get install cmake gnuplot-nox python3 stunnel4 libevent-dev" >&2
    exit 1
  fi
done

out=$build/gateway-results
mkdir -p "$out"
echo "== configure and build ($build, Release)"
timeout 600 cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DM2MPSK_WERROR=ON -DM2MPSK_BINDINGS=OFF >"$out/configure.log"
timeout 900 cmake --build "$build" -j2 --target m2mpsk-cli \
  m2mpsk-gwbench-backend m2mpsk-gwbench-load >"$out/build.log" ||
  { tail -30 "$out/build.log"; exit 1; }
bin=$build/tests/bench/gateway
[ -x "$bin/m2mpsk-gwbench-load" ] ||
  { echo "run.sh: the gateway benchmark was not built (libevent-dev missing?)" >&2; exit 1; }

# The idle-memory phase holds thousands of sockets in three processes.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== gwbench.py --profile $profile"
timeout 1500 python3 "$root/tests/bench/gateway/gwbench.py" --profile "$profile" \
  --backend "$bin/m2mpsk-gwbench-backend" --load "$bin/m2mpsk-gwbench-load" \
  --m2mpsk "$build/m2mpsk" --stunnel "$(command -v stunnel4)" \
  --workdir "$out/work" --json "$out/gateway.jsonl" | tee "$out/gateway.txt"

rev=${M2MPSK_BENCH_REV:-$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)}
if [ "$profile" = full ]; then
  doc=$root/docs/BENCHMARKS.md plot=$root/docs/benchmarks-gateway.png
else
  # a copy, so that the engine's memory table is there to compare with
  cp "$root/docs/BENCHMARKS.md" "$out/BENCHMARKS.md"
  doc=$out/BENCHMARKS.md plot=$out/benchmarks-gateway.png
fi
echo "== report"
python3 "$root/tests/bench/gateway/report.py" --results "$out/gateway.jsonl" \
  --doc "$doc" --plot "$plot" --revision "$rev" \
  --command "bash tests/bench/gateway/run.sh$([ "$profile" = quick ] && echo ' --quick')"
