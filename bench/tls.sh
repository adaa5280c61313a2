#!/usr/bin/env bash
# What mTLS costs: the same `exemesh serve` plaintext and with mTLS, side by side, called with
# `exemesh bench` (health checks, so that only transport and server overhead are measured; new
# connections are made once, so this is the steady-state cost of encryption, not of handshakes).
# Usage: bench/tls.sh [ROUNDS=5] [SECONDS=3]   (writes bench/results/tls.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-3}
. bench/lib.sh
bench_init

"$bin" certs init --dir "$work/ca" >/dev/null
"$bin" certs issue test.v1.Echo --ca "$work/ca" --out "$work/server" >/dev/null
"$bin" certs issue exemesh-bench --ca "$work/ca" --out "$work/client" >/dev/null
echo_manifest "$work/echo.toml"

declare -A addr
start() { # variant, args...
  local variant=$1; shift
  "$bin" serve "$work/echo.toml" --listen 127.0.0.1:0 "$@" >"$work/$variant.out" 2>"$work/$variant.log" &
  pids+=($!)
  addr[$variant]=$(addr_of "$work/$variant.out")
}
start plaintext
start mtls --tls-dir "$work/server"
tls_for() { [ "$1" = mtls ] && echo "--tls-dir=$work/client" || true; }

out=bench/results/tls.jsonl
mkdir -p bench/results
: >"$out"
for round in $(seq 1 "$rounds"); do
  for c in 1 16 64; do
    for variant in $(rotated "$round" plaintext mtls); do
      # shellcheck disable=SC2046
      "$bin" bench $(tls_for "$variant") "${addr[$variant]}" grpc.health.v1.Health/Check '{}' -c "$c" -z "${secs}s" --warmup 500ms --json \
        | tag "$variant" "$round" >>"$out"
    done
  done
done
python3 bench/report.py "$out" plaintext mtls
