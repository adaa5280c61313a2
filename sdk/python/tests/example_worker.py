"""A small worker used by test_worker.py (run as a subprocess with `python -u`)."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import exemesh_worker  # noqa: E402
from exemesh_worker import Error, Worker  # noqa: E402

worker = Worker(max_in_flight=int(os.environ.get("TEST_MAX_IN_FLIGHT", "4")),
                max_frame_bytes=int(os.environ.get("TEST_MAX_FRAME_BYTES", str(4 * 1024 * 1024 + 64 * 1024))),
                inline_below=float(os.environ.get("TEST_INLINE_BELOW", exemesh_worker.INLINE_BELOW)))

exemesh_worker.WATCH_INTERVAL = float(os.environ.get("TEST_WATCH_INTERVAL", exemesh_worker.WATCH_INTERVAL))

_pair = threading.Barrier(2)
_observed = {}  # request id -> what the Block handler saw after waking up
_observed_cond = threading.Condition()


@worker.unary("test.v1.Echo/Unary")
def unary(req, ctx):
    return {"echo": req, "method": ctx.method, "kind": ctx.kind}


@worker.unary("test.v1.Echo/Context")
def context(req, ctx):
    remaining = ctx.time_remaining()
    return {
        "requestId": ctx.request_id,
        "metadata": ctx.metadata,
        "traceparent": ctx.traceparent,
        "tracestate": ctx.tracestate,
        "hasDeadline": ctx.deadline is not None,
        "remainingMs": None if remaining is None else int(remaining * 1000),
        "cancelled": ctx.cancelled,
        "otel": ctx.otel_context() is not None,
    }


@worker.unary("test.v1.Echo/Print")
def stray_print(req, ctx):
    print("this stray print must not reach stdout")
    os.write(1, b"neither must this raw write to fd 1\n")
    ctx.log("logged via ctx.log")
    return {"printed": True}


@worker.unary("test.v1.Echo/Fail")
def fail(req, ctx):
    raise Error(req.get("code", "NOT_FOUND"), req.get("message", ""))


@worker.unary("test.v1.Echo/Crash")
def crash(req, ctx):
    raise ValueError(req.get("message", "boom"))


@worker.unary("test.v1.Echo/ReturnNone")
def return_none(req, ctx):
    return None


@worker.unary("test.v1.Echo/Big")
def big(req, ctx):
    return {"data": "x" * int(req.get("size", 0))}


@worker.unary("test.v1.Echo/Pair")
def pair(req, ctx):
    # Returns only if another Pair call is running at the same time.
    try:
        _pair.wait(timeout=float(req.get("timeout", 10)))
    except threading.BrokenBarrierError:
        raise Error("DEADLINE_EXCEEDED", "no concurrent partner")
    return {"tag": req.get("tag", "")}


@worker.unary("test.v1.Echo/Block")
def block(req, ctx):
    # Waits for the cancellation (at most 30 s), then records what it saw.
    woke = ctx.cancel_event.wait(30)
    with _observed_cond:
        _observed[ctx.request_id] = {"woke": woke, "cancelled": ctx.cancelled, "reason": ctx.cancel_reason}
        _observed_cond.notify_all()
    return {"finished": True}


@worker.unary("test.v1.Echo/Observed")
def observed(req, ctx):
    rid = req.get("requestId", "")
    with _observed_cond:
        _observed_cond.wait_for(lambda: rid in _observed, timeout=10)
        return _observed.get(rid, {})


@worker.server_streaming("test.v1.Echo/Count")
def count(req, ctx):
    n = int(req.get("n", 0))
    for i in range(n):
        yield {"i": i}
    if req.get("failAfter"):
        raise Error("ABORTED", "stopped after %d" % n)


@worker.server_streaming("test.v1.Echo/Forever")
def forever(req, ctx):
    i = 0
    while not ctx.cancelled:
        yield {"i": i}
        i += 1
        ctx.cancel_event.wait(0.01)


@worker.client_streaming("test.v1.Echo/Sum")
def sum_values(requests, ctx):
    total = 0
    count = 0
    for req in requests:
        total += int(req.get("value", 0))
        count += 1
    return {"total": str(total), "count": count}


@worker.client_streaming("test.v1.Echo/First")
def first(requests, ctx):
    # Answers before the half-close.
    return {"first": next(iter(requests))}


@worker.bidi_streaming("test.v1.Echo/Chat")
def chat(requests, ctx):
    for req in requests:
        if req.get("skip"):
            continue
        yield {"reply": req.get("text", "").upper()}


@worker.method("test.v1.Echo/Generic")
def generic(arg, ctx):
    if ctx.kind == "unary":
        return {"kind": ctx.kind, "echo": arg}
    if ctx.kind == "client_streaming":
        return {"kind": ctx.kind, "n": len(list(arg))}
    raise Error("UNIMPLEMENTED", "generic handler does not do %s" % ctx.kind)


@worker.unary("test.v1.Echo/CallOut")
def call_out(req, ctx):
    # Calls req.method through exemesh; returns its reply, or the code and message of the Error.
    options = {key: req[key] for key in ("timeout", "metadata") if key in req}
    try:
        reply = ctx.call(req.get("method", ""), req.get("message"), **options)
    except Error as exc:
        return {"code": exc.code, "message": exc.message}
    return {"reply": reply}


@worker.server_streaming("test.v1.Echo/StreamOut")
def stream_out(req, ctx):
    # Relays the replies of the server-streaming req.method; its error status propagates.
    # With "take": stops after that many replies, closing the stream unless "leaveOpen".
    replies = ctx.stream(req.get("method", ""), req.get("message"))
    take = req.get("take")
    for n, reply in enumerate(replies, 1):
        yield {"reply": reply}
        if take is not None and n >= take:
            if not req.get("leaveOpen"):
                replies.close()
            return


@worker.unary("test.v1.Echo/Where")
def where(req, ctx):
    # Answers with the thread it ran on; on request it first sleeps, waits for its cancellation
    # or calls req.method out.
    if req.get("sleep"):
        time.sleep(float(req["sleep"]))
    reply = {"thread": threading.current_thread().name}
    if req.get("waitCancel"):
        reply["cancelled"] = ctx.cancel_event.wait(float(req["waitCancel"]))
    if req.get("method"):
        reply["reply"] = ctx.call(req["method"], req.get("message"))
    return reply


if __name__ == "__main__":
    worker.run()
    sys.stderr.write("worker: stdin closed, exiting\n")
