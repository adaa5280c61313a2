#!/usr/bin/env bash
# Failover (issue 6, target 8): `kill -9` of 1 of 3 replicas while 16 calls are in flight through
# the mesh channel. The replicas are `exemesh serve` with a pool of Python workers
# (bench/python/worker.toml); bench.v1.Echo/Unary is marked NO_SIDE_EFFECTS in its contract, so
# the channel retries a call that fails on the dying replica on another one. The kill gives no
# warning: no deregistration, no GOAWAY; the registry learns of it only when the lease lapses.
# Each round: a 6 s run sliced in 100 ms (--timeline); the kill lands 2 s in. Reported: failed
# calls, and the worst 100 ms p99 of the second after the kill against the second before it.
# Usage: bench/failover.sh [ROUNDS=3]   (writes bench/results/failover.jsonl and prints a table)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
root=$PWD
. bench/lib.sh
need_venv
bench_init
sed -e "s|@ROOT@|$root|g" -e "s|@PYTHON@|$py|g" bench/python/worker.toml >"$work/worker.toml"
"$bin" registry --listen 127.0.0.1:0 >"$work/reg" 2>/dev/null & pids+=($!)
reg=$(addr_of "$work/reg")
method=bench.v1.Echo/Unary
protos=(--proto bench/python/echo.proto -I bench/python)
out=bench/results/failover.jsonl
mkdir -p bench/results
: >"$out"
declare -A replica
start_replica() {
  EXEMESH_LOG=warn "$bin" serve "$work/worker.toml" --listen 127.0.0.1:0 --discovery "$reg" \
    --instance-id "$1" >"$work/$1.out" 2>"$work/$1.log" &
  replica[$1]=$!; pids+=($!)
  addr_of "$work/$1.out" >/dev/null
}
for round in $(seq 1 "$rounds"); do
  for i in 1 2 3; do [ -n "${replica[r$round-$i]:-}" ] || start_replica "r$round-$i"; done
  # Three replicas registered and each pool answering before the clock starts.
  until_ok 20 serving "$reg" 3
  for i in 1 2 3; do
    until_ok 20 "$bin" call "${protos[@]}" "$(addr_of "$work/r$round-$i.out")" "$method" '{"text":"ready"}'
  done
  EXEMESH_LOG=error "$bin" bench "${protos[@]}" --discovery "$reg" "$method" '{"text":"failover"}' -c 16 -z 6s \
    --warmup 1s --timeline 100ms --json >"$work/run.json" || true &
  runner=$!
  sleep 3  # 1 s of warm-up, then 2 s of steady state
  victim=${replica[r$round-2]}
  killed_ms=$(date +%s%3N)
  kill -9 "$victim"
  { wait "$victim"; } 2>/dev/null || true
  wait "$runner"
  python3 - "$work/run.json" "$killed_ms" "$round" >>"$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
killed = int(sys.argv[2]) - r["started_unix_ms"]
before = [s for s in r["timeline"] if killed - 1000 <= s["start_ms"] < killed - 100]
after = [s for s in r["timeline"] if killed - 100 <= s["start_ms"] < killed + 1000]
worst = lambda slices: max((s["p99_us"] for s in slices), default=0)
print(json.dumps({"variant": "failover", "round": int(sys.argv[3]), "concurrency": r["concurrency"],
  "killed_at_ms": killed, "calls": r["calls"], "errors": r["errors"], "rps": r["rps"],
  "p99_before_us": worst(before), "p99_after_us": worst(after),
  "rps_after": sum(s["calls"] for s in after) / max(len(after), 1) * 10,
  "latency_us": r["latency_us"], "timeline": r["timeline"]}))
PY
  # The other replicas of this round go too (SIGTERM: they deregister).
  for i in 1 3; do kill "${replica[r$round-$i]}" 2>/dev/null || true; done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("`kill -9` of 1 of 3 replicas at 16 in flight, through the mesh channel (idempotent method):")
print()
print("| round | killed at | calls | failed | p99 steady (ms) | p99 the second after (ms) | ratio | calls/s the second after |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in runs:
    failed = sum(r["errors"].values())
    ratio = r["p99_after_us"] / max(r["p99_before_us"], 1)
    print(f"| {r['round']} | {r['killed_at_ms'] / 1000:.2f} s | {r['calls']:,} | {failed} | {r['p99_before_us'] / 1000:.3f} | {r['p99_after_us'] / 1000:.3f} | {ratio:.1f}x | {r['rps_after']:,.0f} |")
print()
print("p99 per 100 ms slice; each side is the worst slice of its second. Failed calls by status: "
      + (", ".join(f"{k} {v}" for k, v in sorted({k: sum(r['errors'].get(k, 0) for r in runs) for r in runs for k in r['errors']}.items())) or "none") + ".")
PY
