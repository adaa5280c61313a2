#!/usr/bin/env bash
# Discovery at scale (issue 6, target 7), with `exemesh bench-discovery`:
#   registry  one embedded registry (`exemesh registry`): 10,000 instances over 100 services,
#             leases renewed every 5/3 s as `exemesh serve` does, and 1,000 watchers
#   etcd      one etcd member (Debian's etcd-server, installed if missing): 1,000 instances and
#             1,000 watchers, through exemesh's etcd backend
# Each run makes 40 changes 100 ms apart (a probe instance serving every watched service,
# registered then removed in turn) and times each change's arrival at every watcher. The RSS of
# the registry (or etcd) process is read from /proc: idle, after the load, and its peak (VmHWM).
# Usage: bench/discovery.sh [ROUNDS=3] [INSTANCES=10000] [WATCHERS=1000] [ETCD_INSTANCES=1000]
#   (writes bench/results/discovery.jsonl and prints a table)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
instances=${2:-10000}
watchers=${3:-1000}
etcd_instances=${4:-1000}
if ! command -v etcd >/dev/null; then
  apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null
fi
. bench/lib.sh
bench_init
kb() { awk "/^$2/ {print \$2}" "/proc/$1/status"; }

EXEMESH_LOG=warn "$bin" registry --listen 127.0.0.1:0 >"$work/reg" 2>"$work/reg.log" & pids+=($!)
reg_pid=$!
reg=$(addr_of "$work/reg")
client=$(free_port) peer=$(free_port)
etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "bench=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 & pids+=($!)
etcd_pid=$!
until_ok 20 python3 -c "import socket; socket.create_connection(('127.0.0.1', $client), 0.2)"

out=bench/results/discovery.jsonl
mkdir -p bench/results
: >"$out"
for round in $(seq 1 "$rounds"); do
  for backend in registry etcd; do
    case $backend in
      registry) spec=$reg pid=$reg_pid n=$instances ;;
      etcd) spec=etcd://127.0.0.1:$client pid=$etcd_pid n=$etcd_instances ;;
    esac
    idle=$(kb "$pid" VmRSS)
    "$bin" bench-discovery --discovery "$spec" --instances "$n" --watchers "$watchers" --json >"$work/run.json" || true
    python3 - "$work/run.json" "$backend" "$round" "$idle" "$(kb "$pid" VmRSS)" "$(kb "$pid" VmHWM)" >>"$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r.update(variant=sys.argv[2], round=int(sys.argv[3]), rss_idle_kb=int(sys.argv[4]),
         rss_after_kb=int(sys.argv[5]), rss_peak_kb=int(sys.argv[6]))
print(json.dumps(r))
PY
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| backend | instances | watchers | register s | watch s | arrivals | missed | p50 ms | p99 ms | max ms | renewals (failed) | RSS idle / peak MB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for v in ("registry", "etcd"):
    rs = [r for r in runs if r["variant"] == v]
    if not rs:
        continue
    m = lambda f: statistics.median(f(r) for r in rs)
    print(f"| {v} | {rs[0]['instances']:,} | {rs[0]['watchers']:,} | {m(lambda r: r['register_seconds']):.2f} | {m(lambda r: r['watch_seconds']):.2f} "
          f"| {sum(r['deliveries'] for r in rs):,} | {sum(r['missed'] for r in rs)} | {m(lambda r: r['delivery_ms']['p50']):.1f} "
          f"| {m(lambda r: r['delivery_ms']['p99']):.1f} | {max(r['delivery_ms']['max'] for r in rs):.1f} "
          f"| {sum(r['renewals'] for r in rs):,} ({sum(r['renewal_errors'] for r in rs)}) "
          f"| {rs[0]['rss_idle_kb'] / 1024:.1f} / {max(r['rss_peak_kb'] for r in rs) / 1024:.1f} |")
print()
print(f"Medians of {len({r['round'] for r in runs})} rounds (arrivals, missed and renewals summed; max and peak RSS over all rounds).")
PY
