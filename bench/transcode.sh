#!/usr/bin/env bash
# How much the reply transcoder saves per reply (issue 6, optimisation 7): an executable's JSON reply
# turned into protobuf bytes by the general path (from_json into a DynamicMessage, then encoded) vs
# the transcoder of services/transcode, in one process, alternating rounds (benches/transcode.rs).
# Usage: bench/transcode.sh   (a few seconds after the build; prints a table)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked -q --bench transcode 2>/dev/null
