#!/usr/bin/env bash
# Mesh channel overhead, measured in one run, the variants in a rotated order each round:
#   direct   exemesh bench -> one server (a plain tonic channel, one connection)
#   direct-2conn  the same with two connections (--connections 2), as many as the mesh channel opens
#            to its 2 replicas: target 1's "same number of connections"
#   mesh     exemesh bench -> balanced mesh channel (p2c/peak-EWMA, ejection, retry budget) -> 2 replicas
#   haproxy  exemesh bench -> haproxy (h2c, Debian package) -> 2 replicas (a plain tonic channel, as
#            the issue's reference figures call haproxy)
#   haproxy-exemesh  the same, with exemesh's own client (--client exemesh, the transport the mesh
#            channel opens to each endpoint): how much of the mesh's lead is its client
#   mesh-1server  the mesh channel over two registrations of replica 1 (two connections to one
#            server process, as direct-2conn has): the mesh channel's own cost, without the second
#            server process that `mesh` runs on the same two CPUs
# Every exemesh process runs as shipped, with busy polling on (bench/busy_poll.sh compares it off).
# The method is grpc.health.v1.Health/Check, served natively by every exemesh server, so the numbers
# measure the path, not an executable. Everything runs on 127.0.0.1.
# Usage: bench/mesh.sh [ROUNDS=5] [SECONDS=3]   (writes bench/results/mesh.jsonl and prints a table)
# With BEFORE=BINARY (an exemesh built from an earlier commit), two more variants run that binary's
# client through the same mesh (mesh-before) and the same haproxy (haproxy-before): the before/after
# of a change to the client, on both sides of the haproxy comparison. The servers are this commit's.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-3}
. bench/lib.sh
need_haproxy
bench_init

"$bin" registry --listen 127.0.0.1:0 >"$work/reg" 2>/dev/null & pids+=($!)
reg=$(addr_of "$work/reg")
for i in 1 2; do
  EXEMESH_LOG=warn "$bin" serve examples/shop/product.toml --listen 127.0.0.1:0 --discovery "$reg" --instance-id "replica-$i" >"$work/s$i" 2>/dev/null & pids+=($!)
done
a1=$(addr_of "$work/s1"); a2=$(addr_of "$work/s2")
haproxy_in_front mesh "$a1" "$a2"
hport=$haproxy_port
until_ok 20 "$bin" call "127.0.0.1:$hport" grpc.health.v1.Health/Check
until_ok 20 serving "$reg" 2
# Replica 1 once more under two made-up instances of a service of its own, for mesh-1server.
for i in 1 2; do
  "$bin" call "$reg" exemesh.v1.Registry/Register \
    "{\"instance\":{\"id\":\"one-server-$i\",\"services\":[\"bench.v1.OneServer\"],\"address\":\"$a1\"},\"ttl_ms\":86400000}" >/dev/null 2>&1
done

out=bench/results/mesh.jsonl
mkdir -p bench/results
: >"$out"
method=grpc.health.v1.Health/Check
before=${BEFORE:+$(realpath "$BEFORE")}
for round in $(seq 1 "$rounds"); do
  for c in 1 16 64; do
    for variant in $(rotated "$round" direct direct-2conn ${BEFORE:+mesh-before haproxy-before} mesh mesh-1server haproxy haproxy-exemesh); do
      client=$bin
      case $variant in
        direct) args=("$a1" "$method") ;;
        direct-2conn) args=(--connections 2 "$a1" "$method") ;;
        mesh) args=(--discovery "$reg" --service shop.v1.ProductService "$method") ;;
        mesh-1server) args=(--discovery "$reg" --service bench.v1.OneServer "$method") ;;
        mesh-before) client=$before; args=(--discovery "$reg" --service shop.v1.ProductService "$method") ;;
        haproxy) args=("127.0.0.1:$hport" "$method") ;;
        haproxy-exemesh) args=(--client exemesh "127.0.0.1:$hport" "$method") ;;
        haproxy-before) client=$before; args=("127.0.0.1:$hport" "$method") ;;
      esac
      "$client" bench "${args[@]}" -c "$c" -z "${secs}s" --warmup 500ms --json \
        | tag "$variant" "$round" >>"$out"
    done
  done
done
python3 bench/report.py "$out" direct direct-2conn ${BEFORE:+mesh-before haproxy-before} mesh mesh-1server haproxy haproxy-exemesh
