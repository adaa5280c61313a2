#!/usr/bin/env python3
"""The bare cost of one process per call: spawn ARGV, write a request line, read the reply, wait.

Usage: bare_spawn.py SECONDS ARGV...   Prints JSON: calls, p50/p99 in microseconds. posix_spawn and
pipes, the same steps exemesh takes, without gRPC; this is the floor spawn mode is compared with. The
program gets this process's environment: run it under `env -i PATH=...` to match what exemesh passes
(an allow list).
"""
import json
import os
import sys
import time

seconds = float(sys.argv[1])
argv = sys.argv[2:]
request = b'{"text":"bench"}\n'
samples = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    start = time.perf_counter_ns()
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    actions = [
        (os.POSIX_SPAWN_DUP2, stdin_r, 0),
        (os.POSIX_SPAWN_DUP2, stdout_w, 1),
        (os.POSIX_SPAWN_CLOSE, stdin_w),
        (os.POSIX_SPAWN_CLOSE, stdout_r),
    ]
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    os.close(stdin_r)
    os.close(stdout_w)
    os.write(stdin_w, request)
    os.close(stdin_w)
    while os.read(stdout_r, 65536):
        pass
    os.close(stdout_r)
    os.waitpid(pid, 0)
    samples.append((time.perf_counter_ns() - start) / 1000)
samples.sort()
print(json.dumps({
    "calls": len(samples),
    "p50_us": samples[len(samples) // 2],
    "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
}))
