"""Summarises bench results (bench/mesh.sh, bench/tracing.sh): medians over rounds, ratios against the
first variant (the baseline, to three decimals: a target's line is often within the second); rows without a baseline at their concurrency are skipped.
Two ratios: the ratio of the medians, and the paired one, the median over rounds of each round's
ratio. The variants of a round run within seconds of each other, so the paired ratio is not moved
by the machine's pace drifting during the run (two identical meshes measured 0.976x by the first
and 1.002x by the second in 12 rounds; docs/benchmarks.md, "Variant order and noise").
Usage: report.py RESULTS.jsonl [VARIANT...] (default: direct mesh haproxy)"""
import json
import statistics
import sys
from collections import defaultdict

runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
runs = [r for r in runs if "rps" in r]
variants = sys.argv[2:] or ["direct", "mesh", "haproxy"]
by = defaultdict(list)
for r in runs:
    by[(r["concurrency"], r["variant"])].append(r)

print(f"| in flight | variant | calls/s (median) | vs {variants[0]} | paired | p50 ms | p99 ms | errors |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
for c in sorted({k[0] for k in by}):
    if not by.get((c, variants[0])):
        continue
    base = statistics.median(r["rps"] for r in by[(c, variants[0])])
    base_by_round = {r["round"]: r["rps"] for r in by[(c, variants[0])]}
    for variant in variants:
        rs = by.get((c, variant), [])
        if not rs:
            continue
        rps = statistics.median(r["rps"] for r in rs)
        p50 = statistics.median(r["latency_us"]["p50"] for r in rs) / 1000
        p99 = statistics.median(r["latency_us"]["p99"] for r in rs) / 1000
        errors = sum(sum(r["errors"].values()) for r in rs)
        paired = [r["rps"] / base_by_round[r["round"]] for r in rs if base_by_round.get(r["round"])]
        paired = f"{statistics.median(paired):.3f}x" if paired else "-"
        print(f"| {c} | {variant} | {rps:,.0f} | {rps / base:.3f}x | {paired} | {p50:.3f} | {p99:.3f} | {errors} |")
print()
print(f"{len({r['round'] for r in runs})} rounds, every variant once per round, in an order rotated from round to round; "
      "paired: the median of each round's ratio.")
