"""The handler logic every Python variant of the benchmark shares: an echo of `text`.

The exemesh worker (worker.py), the grpcio servers (grpcio_server.py) and the spawn-mode program
(spawn.py) all call `echo`, so the comparison measures how each is served, not what it computes.
"""


def echo(text):
    """The reply's text for a request's text."""
    return text
