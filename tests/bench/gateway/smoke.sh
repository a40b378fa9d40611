#!/usr/bin/env bash
# ctest's gwbench_smoke: the gateway benchmark's harness, each contender for
# about a second, then its report into a copy of docs/BENCHMARKS.md. Fails
# when a contender cannot be set up, a connection fails, or the report
# lacks its section; the figures themselves are not judged (a benchmark,
# not a timed test). Exit 77 (skip) without stunnel.
#
#   smoke.sh SOURCE_DIR BACKEND LOAD M2MPSK WORKDIR [gateway]
#
# With "gateway" last, `m2mpsk gateway` must be one of the contenders.
set -euo pipefail
src=$1 backend=$2 load=$3 m2mpsk=$4 work=$5 want_gateway=${6:-}
stunnel=$(command -v stunnel4 || command -v stunnel || true)
if [ -z "$stunnel" ]; then
  echo "SKIP: stunnel not installed (apt-get install stunnel4)"
  exit 77
fi
rm -rf "$work"
mkdir -p "$work"
require=(--require stunnel --require direct)
[ "$want_gateway" = gateway ] && require+=(--require gateway)
python3 "$src/tests/bench/gateway/gwbench.py" --profile smoke --check \
  "${require[@]}" --backend "$backend" --load "$load" --m2mpsk "$m2mpsk" \
  --stunnel "$stunnel" --workdir "$work/work" --json "$work/gateway.jsonl"
cp "$src/docs/BENCHMARKS.md" "$work/BENCHMARKS.md"
python3 "$src/tests/bench/gateway/report.py" --results "$work/gateway.jsonl" \
  --doc "$work/BENCHMARKS.md" --plot "$work/benchmarks-gateway.png" \
  --command "ctest -R gwbench_smoke"
# twice: the section is replaced, not appended again
python3 "$src/tests/bench/gateway/report.py" --results "$work/gateway.jsonl" \
  --doc "$work/BENCHMARKS.md" --plot "$work/benchmarks-gateway.png" \
  --command "ctest -R gwbench_smoke"
n=$(grep -c '^<!-- gateway benchmark: begin' "$work/BENCHMARKS.md")
[ "$n" = 1 ] || { echo "FAIL: $n gateway sections in the report"; exit 1; }
grep -q '^| new associations per second per core of the server' "$work/BENCHMARKS.md" ||
  { echo "FAIL: the report has no association row"; exit 1; }
head -c 8 "$work/benchmarks-gateway.png" | grep -q PNG ||
  { echo "FAIL: no plot"; exit 1; }
# the rest of the document is untouched
sed '/^<!-- gateway benchmark: begin/,$d' "$work/BENCHMARKS.md" >"$work/rest.md"
sed '/^<!-- gateway benchmark: begin/,$d' "$src/docs/BENCHMARKS.md" >"$work/rest.orig.md"
diff -q <(sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' "$work/rest.md") \
        <(sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' "$work/rest.orig.md") >/dev/null ||
  { echo "FAIL: the report changed the rest of BENCHMARKS.md"; exit 1; }
echo "gwbench smoke: passed"
