#!/usr/bin/env bash
# Wrapped Python vs the same logic rewritten as a grpcio service, measured in one run with
# rounds in a rotated order (issue 6, targets 2, 3 and 5). Every variant runs bench/python/handler.py:
#   worker        exemesh serve, worker mode: a pool of 2 Python workers (bench/python/worker.py)
#   grpcio-sync   grpcio, ThreadPoolExecutor(32), one process (bench/python/grpcio_server.py sync)
#   grpcio-aio    grpcio.aio, one process                      (bench/python/grpcio_server.py aio)
#   spawn         exemesh serve, spawn mode: one Python process per call (bench/python/spawn.py)
#   spawn-cat     the same manifest running /bin/cat (it echoes the request): exemesh's fixed cost
#   spawn-exe     the same manifest running spawn.py built by PyInstaller (--onedir), as a team
#                 shipping its monolith as an executable would
# plus the floor for spawn mode: the same programs spawned bare (posix_spawn, pipes, wait; no gRPC),
# and the RSS of the `exemesh serve` processes (without their workers) idle and after the load.
# `exemesh bench --client exemesh` calls each server directly (one HTTP/2 connection, the one the
# mesh channel opens to each endpoint: the lightest client exemesh has, so the most CPU is left to
# the servers compared) at 1, 16 and 64 calls in flight.
# Usage: bench/python.sh [ROUNDS=5] [SECONDS=3]   (writes bench/results/python.jsonl and prints tables)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-3}
root=$PWD
. bench/lib.sh
need_venv
bench_init
# spawn.py as a PyInstaller --onedir executable, rebuilt when its sources change.
exe_dir=$root/target/bench-pyinstaller
exe=$exe_dir/dist/spawn/spawn
if [ ! -x "$exe" ] || [ bench/python/spawn.py -nt "$exe" ] || [ bench/python/handler.py -nt "$exe" ]; then
  "$py" -m pip install --quiet --disable-pip-version-check pyinstaller==6.22.0
  "$py" -m PyInstaller --noconfirm --clean --log-level WARN --onedir --name spawn \
    --paths bench/python --distpath "$exe_dir/dist" --workpath "$exe_dir/build" --specpath "$exe_dir/build" \
    bench/python/spawn.py
fi
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

"$py" -m grpc_tools.protoc -I bench/python --python_out="$work" --grpc_python_out="$work" bench/python/echo.proto
declare -A addr pid
sed -e "s|@ROOT@|$root|g" -e 's|argv = \["@PYTHON@", .*|argv = ["/bin/cat"]|' bench/python/spawn.toml >"$work/spawn-cat.toml"
sed -e "s|@ROOT@|$root|g" -e "s|argv = \\[\"@PYTHON@\", .*|argv = [\"$exe\"]|" bench/python/spawn.toml >"$work/spawn-exe.toml"
for mode in worker spawn spawn-cat spawn-exe; do
  [ -f "$work/$mode.toml" ] || sed -e "s|@ROOT@|$root|g" -e "s|@PYTHON@|$py|g" "bench/python/$mode.toml" >"$work/$mode.toml"
  EXEMESH_LOG=warn "$bin" serve "$work/$mode.toml" --listen 127.0.0.1:0 >"$work/$mode.out" 2>"$work/$mode.log" &
  pids+=($!); pid[$mode]=$!
  addr[$mode]=$(addr_of "$work/$mode.out")
done
for flavour in sync aio; do
  "$py" bench/python/grpcio_server.py "$flavour" "$work" >"$work/grpcio-$flavour.out" 2>"$work/grpcio-$flavour.log" &
  pids+=($!)
  addr[grpcio-$flavour]=$(addr_of "$work/grpcio-$flavour.out")
done
method=bench.v1.Echo/Unary
protos=(--proto bench/python/echo.proto -I bench/python)
# Every variant answers before the clock starts (worker pools ready, grpcio bound).
for variant in worker spawn spawn-cat spawn-exe grpcio-sync grpcio-aio; do
  until_ok 20 "$bin" call "${protos[@]}" "${addr[$variant]}" "$method" '{"text":"ready"}'
done
idle_worker=$(rss_kb "${pid[worker]}")
idle_spawn=$(rss_kb "${pid[spawn]}")

out=bench/results/python.jsonl
mkdir -p bench/results
: >"$out"
for round in $(seq 1 "$rounds"); do
  for c in 1 16 64; do
    for variant in $(rotated "$round" worker grpcio-sync grpcio-aio); do
      "$bin" bench --client exemesh "${protos[@]}" "${addr[$variant]}" "$method" '{"text":"bench"}' -c "$c" -z "${secs}s" --warmup 500ms --json | tag "$variant" "$round" >>"$out"
    done
  done
  # Spawn mode at 1 in flight against its floor: the same program spawned bare, with the
  # environment exemesh gives it (an allow list: PATH here).
  for variant in $(rotated "$round" spawn spawn-cat spawn-exe); do
    "$bin" bench --client exemesh "${protos[@]}" "${addr[$variant]}" "$method" '{"text":"bench"}' -c 1 -z "${secs}s" --warmup 500ms --json | tag "$variant" "$round" >>"$out"
  done
  for program in python cat exe; do
    case $program in
      python) argv=("$py" "$root/bench/python/spawn.py"); name=bare-spawn ;;
      cat) argv=(/bin/cat); name=bare-cat ;;
      exe) argv=("$exe"); name=bare-exe ;;
    esac
    env -i PATH="$PATH" "$py" bench/python/bare_spawn.py "$secs" "${argv[@]}" \
      | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'variant':'$name','round':$round,'concurrency':1,'calls':r['calls'],'rps':r['calls']/$secs,'latency_us':{'p50':r['p50_us'],'p99':r['p99_us']},'errors':{}}))" >>"$out"
  done
done
printf '{"variant":"rss","round":0,"concurrency":0,"serve_worker_idle_kb":%s,"serve_worker_peak_kb":%s,"serve_spawn_idle_kb":%s,"serve_spawn_peak_kb":%s}\n' \
  "$idle_worker" "$(hwm_kb "${pid[worker]}")" "$idle_spawn" "$(hwm_kb "${pid[spawn]}")" >>"$out"

echo "## Worker mode vs grpcio (same handler)"
python3 bench/report.py "$out" grpcio-sync grpcio-aio worker
echo
echo "## Spawn mode vs the bare spawn of the same program (1 in flight)"
python3 bench/report.py "$out" bare-spawn spawn
python3 bench/report.py "$out" bare-cat spawn-cat
python3 bench/report.py "$out" bare-exe spawn-exe
echo
python3 - "$out" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["variant"] == "rss":
        print("## exemesh serve RSS (without its workers)")
        print(f"| manifest | idle MB | peak MB (VmHWM, after the load) |")
        print("|---|---:|---:|")
        for mode in ("worker", "spawn"):
            print(f"| {mode} | {r[f'serve_{mode}_idle_kb']/1024:.1f} | {r[f'serve_{mode}_peak_kb']/1024:.1f} |")
PY
