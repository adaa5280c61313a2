#!/usr/bin/env bash
# The benchmark suite in one command (issue 6): every comparison, each in one run with alternating
# rounds and ratios against a baseline measured in the same run. Everything runs on 127.0.0.1.
#   mesh.sh     mesh channel vs a plain tonic channel vs an haproxy hop     (targets 1)
#   python.sh   worker mode vs grpcio sync/aio; spawn mode vs bare spawn;
#               exemesh serve RSS idle and after the load                  (targets 2, 3, 5)
#   tracing.sh  tracing off vs on at 100 % and 10 % sampling               (target 6)
#   tls.sh      mTLS vs plaintext                                           (issue 5's cost)
# Usage: bench/suite.sh [--quick | --full]
#   --quick (default): 3 rounds x 1 s per variant, about 3 minutes on the reference machine
#   --full:            7 rounds x 5 s per variant, about 15-20 minutes
# Writes bench/results/*.jsonl and bench/results/suite.md (the tables, with the machine and commit).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:---quick}
case "$mode" in
  --quick) rounds=3 secs=1 ;;
  --full) rounds=7 secs=5 ;;
  *) echo "usage: bench/suite.sh [--quick | --full]" >&2; exit 2 ;;
esac
cargo build --release --locked -q
report=bench/results/suite.md
mkdir -p bench/results
{
  echo "# exemesh benchmark suite ($mode)"
  echo
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
  echo "- $rounds rounds x ${secs} s per variant and concurrency, variants alternating within each round; medians"
  echo
} >"$report"
for part in mesh python tracing tls; do
  echo "== bench/$part.sh $rounds $secs" >&2
  {
    echo "## bench/$part.sh $rounds $secs"
    echo
    "bench/$part.sh" "$rounds" "$secs"
    echo
  } >>"$report"
done
cat "$report"
