#!/usr/bin/env python3
"""bench.v1.Echo/Unary in spawn mode: one process per call, a JSON request on stdin, the reply on stdout."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from handler import echo  # noqa: E402

request = json.loads(sys.stdin.readline() or "{}")
sys.stdout.write(json.dumps({"text": echo(request.get("text", ""))}) + "\n")
