#!/usr/bin/env python3
"""CPU per call of each process of a running mesh, from /proc, around one `exemesh bench` run.

Usage: bench/cpu.py REGISTRY CONCURRENCY UP_PID [SECONDS=5] [METHOD=test.v1.Echo/Unary] [JSON={"text":"bench"}]
BENCH_EXTRA (environment) adds arguments to `exemesh bench`, e.g. BENCH_EXTRA="--rate 8000" for the
CPU per call at a fixed rate instead of at saturation.

Prints calls/s and the CPU microseconds per call of the `exemesh up` process (its OTLP receiver and
registry), its `exemesh serve` children, their Python workers, and the `exemesh bench` client.
"""
import json
import os
import resource
import subprocess
import sys

BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "exemesh")


def processes():
    """pid -> (command line, utime+stime in ticks, parent pid)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(pid)] = (cmd, int(stat[11]) + int(stat[12]), int(stat[1]))
    return out


def tree(root, procs):
    pids = {root}
    grew = True
    while grew:
        grew = False
        for pid, (_, _, parent) in procs.items():
            if parent in pids and pid not in pids:
                pids.add(pid)
                grew = True
    return pids


def role(cmd):
    if "python" in cmd:
        return "workers"
    if " serve " in cmd:
        return "serve"
    if " up " in cmd:
        return "up"
    return "other"


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    registry, concurrency, root = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seconds = sys.argv[4] if len(sys.argv) > 4 else "5"
    method = sys.argv[5] if len(sys.argv) > 5 else "test.v1.Echo/Unary"
    body = sys.argv[6] if len(sys.argv) > 6 else '{"text":"bench"}'
    before = processes()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(
        [BIN, "bench", "--discovery", registry, method, body, "-c", concurrency, "-z", f"{seconds}s", "--json"]
        + os.environ.get("BENCH_EXTRA", "").split(),
        capture_output=True, text=True, check=True,
    )
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = processes()
    result = json.loads(run.stdout)
    calls = max(result["calls"], 1)
    hz = os.sysconf("SC_CLK_TCK")
    ticks = {}
    for pid in tree(root, after):
        if pid in before:
            key = role(after[pid][0])
            ticks[key] = ticks.get(key, 0) + after[pid][1] - before[pid][1]
    per_call = {k: round(v / hz * 1e6 / calls, 1) for k, v in ticks.items()}
    client = (children_after.ru_utime - children_before.ru_utime) + (children_after.ru_stime - children_before.ru_stime)
    per_call["bench client"] = round(client * 1e6 / calls, 1)
    per_call["total"] = round(sum(per_call.values()), 1)
    print(json.dumps({"rps": round(result["rps"]), "cpu_us_per_call": per_call}))


if __name__ == "__main__":
    main()
