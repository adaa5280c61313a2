#!/usr/bin/env python3
"""Prints a markdown table of one setting against another from an `exemesh bench --json` log.

Usage: bench/ab_table.py FILE SUFFIX NEW OLD PATH...

FILE holds one JSON report per line, tagged with `variant` and `round` (bench/lib.sh's `tag`). For each
concurrency and each PATH, the variant PATH is the NEW setting and PATH+SUFFIX the OLD one: their median
calls/s, the median of each round's NEW / OLD ratio (paired), and their p50 and p99.
"""
import json
import statistics
import sys


def main():
    path, suffix, new_name, old_name, *paths = sys.argv[1:]
    rows = [json.loads(line) for line in open(path)]
    print(f"| in flight | path | {old_name} calls/s | {new_name} calls/s | {new_name} / {old_name} "
          f"| p50 ms {old_name} / {new_name} | p99 ms {old_name} / {new_name} |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for c in sorted({r["concurrency"] for r in rows}):
        for name in paths:
            def pick(variant):
                return [r for r in rows if r["concurrency"] == c and r["variant"] == variant]

            new, old = pick(name), pick(name + suffix)
            if not new or not old:
                continue
            med = lambda rs, f: statistics.median(f(r) for r in rs)
            by_round = {r["round"]: r["rps"] for r in old}
            paired = statistics.median(r["rps"] / by_round[r["round"]] for r in new if r["round"] in by_round)
            ms = lambda rs, q: med(rs, lambda r: r["latency_us"][q]) / 1000
            print(f"| {c} | {name} | {med(old, lambda r: r['rps']):,.0f} | {med(new, lambda r: r['rps']):,.0f} | "
                  f"{paired:.2f}x | {ms(old, 'p50'):.3f} / {ms(new, 'p50'):.3f} | {ms(old, 'p99'):.3f} / {ms(new, 'p99'):.3f} |")


if __name__ == "__main__":
    main()
