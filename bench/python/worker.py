#!/usr/bin/env python3
"""bench.v1.Echo/Unary as an exemesh worker (the Python helper, standard library only)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "../../sdk/python"))
from exemesh_worker import Worker  # noqa: E402

from handler import echo  # noqa: E402

worker = Worker(max_in_flight=64)


@worker.unary("bench.v1.Echo/Unary")
def unary(req, ctx):
    return {"text": echo(req.get("text", ""))}


if __name__ == "__main__":
    worker.run()
