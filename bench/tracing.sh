#!/usr/bin/env bash
# Tracing overhead on the mesh path, measured in one run, the variants in a rotated order each round:
#   off     tracing off (OTEL_SDK_DISABLED=true)
#   on100   every call traced and exported (to `exemesh up`'s own OTLP receiver)
#   on10    10 % sampled (OTEL_TRACES_SAMPLER=traceidratio, OTEL_TRACES_SAMPLER_ARG=0.1)
# Each round runs every variant (in an order rotated from round to round: see `rotated` in
# bench/lib.sh). Each variant is its own `exemesh up` (registry + 1 replica with a pool of 2 Python workers serving
# test.v1.Echo/Unary); `exemesh bench` calls it through discovery and the mesh channel.
# Usage: bench/tracing.sh [ROUNDS=5] [SECONDS=3]   (writes bench/results/tracing.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-3}
. bench/lib.sh
bench_init

echo_manifest "$work/echo.toml"
printf '[registry]\nlisten = "127.0.0.1:0"\n\n[services.echo]\nmanifest = "echo.toml"\nreplicas = 1\n' >"$work/mesh.toml"

declare -A registry
start() { # variant, env...
  local variant=$1; shift
  env "$@" "$bin" up "$work/mesh.toml" --insecure >"$work/$variant.out" 2>"$work/$variant.log" &
  pids+=($!)
}
start off OTEL_SDK_DISABLED=true
start on100
start on10 OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.1
for variant in off on100 on10; do
  until_ok 60 grep -q "^mesh up:" "$work/$variant.out"
  registry[$variant]=$(sed -n 's/^registry listening on //p' "$work/$variant.out")
done

out=bench/results/tracing.jsonl
mkdir -p bench/results
: >"$out"
for round in $(seq 1 "$rounds"); do
  for c in 1 16; do
    for variant in $(rotated "$round" off on100 on10); do
      "$bin" bench --discovery "${registry[$variant]}" test.v1.Echo/Unary '{"text":"bench"}' -c "$c" -z "${secs}s" --warmup 500ms --json \
        | tag "$variant" "$round" >>"$out"
    done
  done
done
python3 bench/report.py "$out" off on100 on10
