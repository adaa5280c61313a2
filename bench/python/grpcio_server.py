#!/usr/bin/env python3
"""bench.v1.Echo/Unary as a plain grpcio server, the "rewrite it in grpcio" baseline.

Usage: grpcio_server.py sync|aio STUBS_DIR
Binds 127.0.0.1:0, prints "listening on 127.0.0.1:PORT", serves until SIGTERM/SIGINT. STUBS_DIR holds
echo_pb2.py and echo_pb2_grpc.py generated from bench/python/echo.proto.
"""
import asyncio
import os
import signal
import sys
from concurrent import futures

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, sys.argv[2])
import grpc  # noqa: E402

import echo_pb2  # noqa: E402
import echo_pb2_grpc  # noqa: E402
from handler import echo  # noqa: E402


class Echo(echo_pb2_grpc.EchoServicer):
    def Unary(self, request, context):
        return echo_pb2.EchoReply(text=echo(request.text))


class AsyncEcho(echo_pb2_grpc.EchoServicer):
    async def Unary(self, request, context):
        return echo_pb2.EchoReply(text=echo(request.text))


def serve_sync():
    # Blocked before grpc starts its threads (they inherit the mask), then awaited here: a signal
    # handler may never run while the main thread waits inside grpc.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    signal.sigwait(stop_signals)
    server.stop(0).wait()


async def serve_aio():
    server = grpc.aio.server()
    echo_pb2_grpc.add_EchoServicer_to_server(AsyncEcho(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    if sys.argv[1] == "aio":
        asyncio.run(serve_aio())
    else:
        serve_sync()
