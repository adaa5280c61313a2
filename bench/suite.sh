#!/usr/bin/env bash
# The benchmark suite in one command (issue 6): every comparison, each in one run with its variants
# in an order rotated each round, and ratios against a baseline measured in the same run. Everything runs on 127.0.0.1.
#   mesh.sh       mesh channel vs a plain tonic channel vs an haproxy hop    (target 1)
#                 (haproxy called with a plain tonic channel and with exemesh's own client)
#   python.sh     worker mode vs grpcio sync/aio; spawn mode vs bare spawn
#                 (Python, /bin/cat, a PyInstaller executable); serve RSS    (targets 2, 3, 5)
#   latency.sh    added latency of a full mesh hop at a fixed 1k calls/s     (target 4)
#   up.sh         memory of a whole `exemesh up` mesh under load            (target 5)
#   tracing.sh    tracing off vs on at 100 % and 10 % sampling              (target 6)
#   discovery.sh  10k instances / 1k watchers on the registry; etcd at 1k   (target 7)
#   failover.sh   kill -9 of 1 of 3 replicas at 16 in flight                (target 8)
#   tls.sh        mTLS vs plaintext                                          (issue 5's cost)
#   busy_poll.sh  busy polling on (as shipped) vs off: calls back to back, paced CPU per call, idle
#   threads.sh    services with half the runtime threads (--threads) vs one per CPU (the default);
#                 --full only
#   transcode.sh  an executable's JSON reply to protobuf: general path vs transcoder (optimisation 7)
# then renders the results as SVG charts (bench/plot, with the plotters crate) into docs/bench/.
# Usage: bench/suite.sh [--quick | --full]
#   --quick (default): 3 rounds x 1 s per variant (1 round of discovery, 1 failover, 1 of
#                      busy_poll.sh), under 5 minutes on the reference machine
#   --full:            6 rounds x 5 s per variant (3 rounds of discovery, 5 failovers), 9 rounds
#                      for mesh.sh and python.sh and 12 for tracing.sh, whose targets sit near their lines,
#                      4 for busy_poll.sh and threads.sh
#                      (on this machine two identical meshes differ by up to ±14 % in one 5 s
#                      round, see docs/benchmarks.md, "Variant order and noise"): about 45
#                      minutes on the reference machine (build included), plus about 6 for threads.sh
# Writes bench/results/*.jsonl, bench/results/suite.md (the tables, with the machine and commit) and
# docs/bench/*.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:---quick}
case "$mode" in
  --quick) rounds=3 secs=1 discovery_rounds=1 failovers=1 up_secs=3 mesh_rounds=3 python_rounds=3 tracing_rounds=3 busy_rounds=1 ;;
  --full) rounds=6 secs=5 discovery_rounds=3 failovers=5 up_secs=10 mesh_rounds=9 python_rounds=9 tracing_rounds=12 busy_rounds=4 ;;
  *) echo "usage: bench/suite.sh [--quick | --full]" >&2; exit 2 ;;
esac
cargo build --release --locked -q --workspace
report=bench/results/suite.md
mkdir -p bench/results
{
  echo "# exemesh benchmark suite ($mode)"
  echo
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
  echo "- $rounds rounds x ${secs} s per variant and concurrency ($mesh_rounds for mesh.sh, $python_rounds for python.sh, $tracing_rounds for tracing.sh, $busy_rounds for busy_poll.sh), every variant once per round, in an order rotated from round to round; medians"
  echo
} >"$report"
parts=(
  "mesh $mesh_rounds $secs"
  "python $python_rounds $secs"
  "latency $rounds $secs"
  "up $up_secs"
  "tracing $tracing_rounds $secs"
  "discovery $discovery_rounds"
  "failover $failovers"
  "tls $rounds $secs"
  "busy_poll $busy_rounds $secs"
  "transcode"
)
[ "$mode" = --full ] && parts+=("threads $busy_rounds 3")
for part in "${parts[@]}"; do
  read -r name args <<<"$part"
  echo "== bench/$name.sh $args" >&2
  began=$SECONDS
  {
    echo "## bench/$name.sh $args"
    echo
    # shellcheck disable=SC2086 # the arguments are words
    "bench/$name.sh" $args
    echo
    echo "($((SECONDS - began)) s)"
    echo
  } >>"$report"
done
target/release/bench-plot bench/results docs/bench >&2
echo "The suite took $((SECONDS / 60)) min $((SECONDS % 60)) s, the release build included." >>"$report"
cat "$report"
