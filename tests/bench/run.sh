#!/usr/bin/env bash
# Builds and runs the whole benchmark harness, then writes docs/BENCHMARKS.md
# and docs/benchmarks.png from that one run.
#
#   bash tests/bench/run.sh           # full run, about 23 minutes on 2 cores (the
#                                     # key-source sweep is 20 of them)
#   bash tests/bench/run.sh --quick   # smoke run, about a minute; writes
#                                     # build-bench/bench-results/ only
#
# Needs (Debian): cmake, a C compiler, android-libboringssl-dev, libssl-dev,
# libsodium-dev, valgrind, gnuplot-nox, python3. Its own Release build
# directory is build-bench/ (M2MPSK_BENCH_BUILD overrides it).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${M2MPSK_BENCH_BUILD:-$root/build-bench}
quick=
case "${1:-}" in
  --quick) quick=--quick ;;
  "") ;;
  *) echo "usage: bash tests/bench/run.sh [--quick]" >&2; exit 2 ;;
esac

for tool in cmake valgrind callgrind_annotate gnuplot python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "run.sh: $tool not found. apt-get install cmake valgrind gnuplot-nox python3" >&2
    exit 1
  fi
done

out=$build/bench-results
mkdir -p "$out"
echo "== configure and build ($build, Release)"
timeout 600 cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DM2MPSK_WERROR=ON -DM2MPSK_BINDINGS=OFF >"$out/configure.log"
timeout 900 cmake --build "$build" -j2 --target m2mpsk-bench m2mpsk-keysource-bench \
  >"$out/build.log" ||
  { tail -30 "$out/build.log"; exit 1; }
bench=$build/tests/bench/m2mpsk-bench

echo "== m2mpsk-bench $quick"
timeout 1500 "$bench" $quick --json "$out/results.jsonl" --workdir "$out" |
  tee "$out/bench.txt"

# Key sources (issue 19): a responder whose keys come from a source that
# answers after 50 ms, against in-memory lookup, in one event loop.
echo "== m2mpsk-keysource-bench $quick"
timeout 2700 "$build/tests/bench/m2mpsk-keysource-bench" $quick \
  --json "$out/results-keysource.jsonl" | tee "$out/keysource.txt"

# Instruction counts: one valgrind run per case and contender, the same
# fixed number of handshakes, collected inside the batch function only.
echo "== callgrind"
rm -f "$out"/cg.*
for ci in 0 1 2 3; do
  if [ -n "$quick" ]; then n=50; else n=300; fi
  if [ "$ci" = 1 ] || [ "$ci" = 3 ]; then n=$((n / 5)); fi
  for who in m2mpsk boringssl; do
    fn=bench_m2m_batch
    [ "$who" = boringssl ] && fn=bench_raw_batch
    timeout 900 valgrind --tool=callgrind --cache-sim=yes --branch-sim=yes \
      --toggle-collect=$fn --callgrind-out-file="$out/cg.$ci.$who.out" \
      "$bench" --callgrind "$ci" "$who" "$n" >"$out/cg.$ci.$who.log" 2>&1 ||
      { tail "$out/cg.$ci.$who.log"; exit 1; }
    echo "case $ci $who: $(grep -o 'Collected : [0-9]*' "$out/cg.$ci.$who.log")"
  done
  echo "$ci $n" >>"$out/cg.n"
done

# The OpenSSL 3 backend against raw OpenSSL 3: the handshake sections of
# the same harness in a build of its own.
obuild=${build}-openssl
echo "== m2mpsk-bench $quick --sections hs, OpenSSL backend ($obuild)"
timeout 600 cmake -S "$root" -B "$obuild" -DCMAKE_BUILD_TYPE=Release \
  -DM2MPSK_TLS=openssl -DM2MPSK_WERROR=ON -DM2MPSK_BINDINGS=OFF \
  >"$out/configure-openssl.log"
timeout 900 cmake --build "$obuild" -j2 --target m2mpsk-bench \
  >"$out/build-openssl.log" || { tail -30 "$out/build-openssl.log"; exit 1; }
rm -f "$out/results-openssl.jsonl"
timeout 900 "$obuild/tests/bench/m2mpsk-bench" $quick --sections hs \
  --json "$out/results-openssl.jsonl" --workdir "$out" |
  tee "$out/bench-openssl.txt"

{
  echo "nproc: $(nproc)"
  lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|L1d|L1i|L2|L3|Hypervisor|Flags)' |
    sed -E 's/^(Flags:\s+).*/\1(pku: '"$(grep -qw pku /proc/cpuinfo && echo yes || echo no)"', aes: '"$(grep -qw aes /proc/cpuinfo && echo yes || echo no)"')/'
  free -h | head -2
  echo "kernel: $(uname -srm)"
  echo "RLIMIT_MEMLOCK (ulimit -l, KiB): $(ulimit -l)"
  echo "load average at the end of the run: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/machine.txt"

rev=${M2MPSK_BENCH_REV:-$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)}
if [ -n "$quick" ]; then
  doc=$out/BENCHMARKS.md plot=$out/benchmarks.png
else
  doc=$root/docs/BENCHMARKS.md plot=$root/docs/benchmarks.png
fi
echo "== report"
python3 "$root/tests/bench/report.py" --results "$out/results.jsonl" \
  --callgrind "$out" --machine "$out/machine.txt" --out "$doc" --plot "$plot" \
  --openssl-results "$out/results-openssl.jsonl" \
  --keysource-results "$out/results-keysource.jsonl" \
  --revision "$rev" --command "bash tests/bench/run.sh${quick:+ --quick}"
