"""exemesh_worker: a zero-dependency helper for the exemesh stdio worker protocol (v1).

A worker is a long-lived process that exemesh starts with pipes on its standard
streams; every line on stdin and stdout is one JSON frame (see
docs/worker-protocol.md). This module does the framing, the concurrency and the
error mapping, so a worker is a handful of decorated functions::

    from exemesh_worker import Worker, Error

    worker = Worker(max_in_flight=16)

    @worker.unary("shop.v1.UserService/GetUser")
    def get_user(req, ctx):
        user = USERS.get(req.get("id", ""))
        if user is None:
            raise Error("NOT_FOUND", "no user %s" % req.get("id", ""))
        return user

    if __name__ == "__main__":
        worker.run()

Only the standard library is used. If ``opentelemetry-api`` is installed,
``Context.otel_context()`` turns the call's W3C trace context into an
OpenTelemetry context; nothing else needs it.
"""

import json
import math
import os
import queue as _queue_module
import sys
import threading
import time
import traceback
from collections import deque
from queue import SimpleQueue

__all__ = [
    "Worker",
    "Context",
    "Error",
    "Cancelled",
    "OutboundStream",
    "STATUS_CODES",
    "UNARY",
    "SERVER_STREAMING",
    "CLIENT_STREAMING",
    "BIDI_STREAMING",
    "__version__",
]

__version__ = "0.1.0"

#: The ``sdk`` string sent in the ready frame.
SDK_NAME = "exemesh-worker-python/" + __version__

#: The protocol version this module speaks (``EXEMESH_PROTOCOL``).
PROTOCOL_VERSION = "1"

#: exemesh's default ``max_frame_bytes`` (4 MiB + 64 KiB). A longer line makes
#: exemesh restart the worker, so the helper answers RESOURCE_EXHAUSTED instead
#: of writing such a frame.
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024 + 64 * 1024

#: How long past an outbound call's deadline the helper keeps waiting for
#: exemesh's answer before giving up locally with DEADLINE_EXCEEDED (exemesh
#: normally answers at the deadline itself).
OUTBOUND_GRACE = 1.0

#: The default ``Worker(inline_below=...)``: a call of a method whose last
#: call took less than this (seconds) runs inline on the reading thread when
#: no other call is running.
INLINE_BELOW = 0.0002

#: How long (seconds) a call may run inline before a watchdog thread hands
#: reading to another thread (frames that arrive meanwhile wait that long).
WATCH_INTERVAL = 0.05

#: Largest outbound call id (callIds are uint32, never 0).
MAX_CALL_ID = 0xFFFFFFFF

#: Upper bound on the message of the UNKNOWN error built from an unexpected
#: exception (the full traceback goes to stderr).
MAX_EXCEPTION_MESSAGE = 1024

UNARY = "unary"
SERVER_STREAMING = "server_streaming"
CLIENT_STREAMING = "client_streaming"
BIDI_STREAMING = "bidi_streaming"
KINDS = (UNARY, SERVER_STREAMING, CLIENT_STREAMING, BIDI_STREAMING)

#: gRPC status code names and numbers.
STATUS_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
_CODE_NAMES = {number: name for name, number in STATUS_CODES.items()}


def _code_name(code):
    """Normalise a status code (name, number, numeric string or an enum such as
    ``grpc.StatusCode.NOT_FOUND``) to its name. Unknown codes and OK (which is
    not an error) become ``UNKNOWN``."""
    name = None
    if isinstance(code, bool):
        name = None
    elif isinstance(code, int):
        name = _CODE_NAMES.get(code)
    elif isinstance(code, str):
        text = code.strip().upper()
        if text.startswith("STATUSCODE."):
            text = text[len("STATUSCODE."):]
        if text.isdigit():
            name = _CODE_NAMES.get(int(text))
        elif text in STATUS_CODES:
            name = text
    else:
        enum_name = getattr(code, "name", None)
        if isinstance(enum_name, str):
            return _code_name(enum_name)
    if name is None or name == "OK":
        return "UNKNOWN"
    return name


class Error(Exception):
    """Raise from a handler to fail the call with a gRPC status.

    ``code`` is a status name (``"NOT_FOUND"``), its number (``5``) or a
    numeric string; unknown codes (and ``OK``) become ``UNKNOWN``.
    """

    def __init__(self, code, message=""):
        self.code = _code_name(code)
        self.message = "" if message is None else str(message)
        super().__init__(self.code, self.message)

    def __str__(self):
        return "%s: %s" % (self.code, self.message) if self.message else self.code


class Cancelled(Error):
    """Raised by a request iterator once exemesh has cancelled the call (or
    stdin closed). Letting it propagate out of the handler is the right thing to
    do: the helper has already answered the call with CANCELLED."""

    def __init__(self, reason="cancelled"):
        self.reason = reason
        super().__init__("CANCELLED", "call cancelled: %s" % reason)


# --------------------------------------------------------------------------
# Context

_OTEL_MISSING = object()
_otel_propagate = None  # the opentelemetry.propagate module, _OTEL_MISSING, or None (not tried yet)
_event_lock = threading.Lock()
_stderr_lock = threading.Lock()


def _stderr(text):
    """Write text (one or more whole lines) to stderr, never interleaving."""
    with _stderr_lock:
        err = sys.stderr
        if err is None:
            return
        try:
            err.write(text)
            err.flush()
        except (OSError, ValueError):
            pass


class Context:
    """Everything a handler knows about its call.

    Attributes: ``id`` (the protocol's call id), ``method``
    (``"pkg.Service/Method"``), ``kind``, ``request_id``, ``metadata`` (dict of
    str), ``traceparent`` and ``tracestate`` (str, empty when absent),
    ``caller`` (the caller's mTLS identity ``spiffe://<trust-domain>/svc/<service>``,
    empty when the server runs without TLS) and
    ``deadline`` (a ``time.monotonic()`` value computed when the start frame was
    read, or None when the call has no deadline).

    ``call()`` and ``stream()`` call other services of the mesh through exemesh
    on behalf of this call (its deadline and trace context carry over).
    """

    __slots__ = (
        "id",
        "method",
        "kind",
        "request_id",
        "metadata",
        "traceparent",
        "tracestate",
        "caller",
        "deadline",
        "cancel_reason",
        "_cancelled",
        "_event",
        "_done",
        "_queue",
        "_worker",
        "_outbound",
    )

    def __init__(self, call_id, method, kind, request_id="", metadata=None, traceparent="",
                 tracestate="", deadline=None, worker=None, caller=""):
        self.id = call_id
        self.method = method
        self.kind = kind
        self.request_id = request_id
        self.metadata = metadata if metadata is not None else {}
        self.traceparent = traceparent
        self.tracestate = tracestate
        self.caller = caller
        self.deadline = deadline
        self.cancel_reason = None
        self._cancelled = False
        self._event = None
        self._done = False
        self._queue = None
        self._worker = worker
        self._outbound = None  # the open outbound calls (_Outbound) made for this call

    def __repr__(self):
        return "<Context id=%r method=%r kind=%r request_id=%r>" % (
            self.id, self.method, self.kind, self.request_id)

    def time_remaining(self):
        """Seconds left until the deadline (never negative), or None."""
        deadline = self.deadline
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        return left if left > 0.0 else 0.0

    @property
    def cancelled(self):
        """True once exemesh cancelled the call (client gone, deadline passed)
        or the worker is shutting down."""
        self._hand_off()
        return self._cancelled

    @property
    def cancel_event(self):
        """A ``threading.Event`` set when the call is cancelled; wait on it
        instead of sleeping (``ctx.cancel_event.wait(timeout)``)."""
        self._hand_off()
        event = self._event
        if event is None:
            with _event_lock:
                event = self._event
                if event is None:
                    event = threading.Event()
                    if self._cancelled:
                        event.set()
                    self._event = event
        return event

    def otel_context(self):
        """The OpenTelemetry ``Context`` extracted from ``traceparent`` and
        ``tracestate`` with the global propagator, or None when
        ``opentelemetry`` is not installed. Use it as the parent of your spans:
        ``tracer.start_as_current_span("work", context=ctx.otel_context())``."""
        global _otel_propagate
        propagate = _otel_propagate
        if propagate is None:
            try:
                from opentelemetry import propagate  # noqa: F811 (optional dependency)
            except Exception:  # ImportError, or a broken installation
                propagate = _OTEL_MISSING
            _otel_propagate = propagate
        if propagate is _OTEL_MISSING:
            return None
        carrier = {}
        if self.traceparent:
            carrier["traceparent"] = self.traceparent
        if self.tracestate:
            carrier["tracestate"] = self.tracestate
        return propagate.extract(carrier)

    def log(self, msg):
        """Write one line to stderr (exemesh logs it with the worker's id),
        prefixed with the method and request id."""
        _stderr("[%s %s] %s\n" % (self.method, self.request_id or "#%s" % self.id, msg))

    def call(self, method, request, timeout=None, metadata=None):
        """Call the unary method ``method`` (``"pkg.Service/Method"``) of another
        service of the mesh, through exemesh, and return its reply (a dict).

        ``request`` is the proto3 JSON of the request message (None: ``{}``).
        The call gets what remains of this call's deadline; ``timeout``
        (seconds) makes it shorter. ``metadata`` (dict of str) is sent as
        request metadata. A failed call raises ``Error`` with the callee's
        status code (``exc.code == "NOT_FOUND"``, ...); ``DEADLINE_EXCEEDED`` is
        also raised locally if no answer came by the deadline (plus
        ``OUTBOUND_GRACE``), and ``CANCELLED`` if this call is cancelled (or
        the worker shuts down) meanwhile; the outbound call is cancelled then.
        Safe to use from many handler threads at once.
        """
        worker = self._worker_for_calls()
        out = worker._open_outbound(self, method, request, timeout, metadata)
        try:
            reply = None
            while True:
                kind, value = worker._next_outbound(out)
                if kind == "message":
                    if reply is None:
                        reply = value
                    continue
                # end
                if reply is None:
                    raise Error("INTERNAL", "%s answered without a reply message" % out.method)
                return reply
        finally:
            worker._close_outbound(out)

    def stream(self, method, request, timeout=None, metadata=None):
        """Call the server-streaming method ``method`` of another service of the
        mesh through exemesh and return an ``OutboundStream``: an iterator over
        the reply dicts as they arrive. Arguments and errors are those of
        ``call()``; an error status is raised by the iteration when it arrives
        (after the messages before it). The call starts at once. Stopping
        early: ``close()`` it (or use it as a context manager) to cancel the
        call; otherwise it is cancelled when this call ends.
        """
        worker = self._worker_for_calls()
        return OutboundStream(worker, worker._open_outbound(self, method, request, timeout, metadata))

    def _worker_for_calls(self):
        worker = self._worker
        if worker is None:
            raise RuntimeError("this Context does not belong to a running Worker: it cannot make calls")
        return worker

    # -- internal ------------------------------------------------------------

    def _hand_off(self):
        """The handler is about to depend on frames (a cancel, an outbound
        reply): if this call runs inline on the reading thread, reading goes
        to another thread first."""
        worker = self._worker
        if worker is not None:
            readers = worker._readers
            if readers is not None and readers._inline is self:
                readers.hand_off(self, by_handler=True)

    def _cancel(self, reason):
        if self._cancelled:
            return
        self.cancel_reason = reason
        self._cancelled = True
        with _event_lock:
            event = self._event
            outbound = list(self._outbound) if self._outbound else ()
        if event is not None:
            event.set()
        queue = self._queue
        if queue is not None:
            queue.put(_CANCEL)
        for out in outbound:
            out.queue.put(_CANCEL)  # wakes the thread waiting for the answer


_HALF_CLOSE = object()
_CANCEL = object()


class _Requests:
    """The iterator of request messages handed to client- and bidi-streaming
    handlers. It ends at the half-close and raises ``Cancelled`` once the call
    is cancelled."""

    __slots__ = ("_ctx", "_queue", "_ended")

    def __init__(self, ctx):
        self._ctx = ctx
        self._queue = ctx._queue
        self._ended = False

    def __iter__(self):
        return self

    def __next__(self):
        ctx = self._ctx
        if ctx._cancelled:
            raise Cancelled(ctx.cancel_reason or "cancelled")
        if self._ended:
            raise StopIteration
        item = self._queue.get()
        if item is _HALF_CLOSE:
            self._ended = True
            raise StopIteration
        if item is _CANCEL:
            raise Cancelled(ctx.cancel_reason or "cancelled")
        return item


class _Outbound:
    """One outbound call in flight: its id, and the queue the reader thread
    feeds with ``("message", dict)``, ``("end", None)`` and ``("error", (code,
    message))`` items (plus ``_CANCEL`` when the parent call is cancelled)."""

    __slots__ = ("call_id", "method", "ctx", "queue", "deadline", "done", "error")

    def __init__(self, method, ctx, deadline):
        self.call_id = 0
        self.method = method
        self.ctx = ctx
        self.queue = _queue_module.Queue()
        self.deadline = deadline  # time.monotonic() value, or None
        self.done = False  # over for its caller: answered, failed or abandoned
        self.error = None  # the Error to raise to a reader that comes after an abandonment


class OutboundStream:
    """The replies of a server-streaming outbound call (``ctx.stream()``):
    iterate over it to get each reply dict; a failed call raises ``Error`` when
    its status arrives. ``close()`` (or leaving a ``with`` block) cancels a call
    that is still running."""

    __slots__ = ("_worker", "_out")

    def __init__(self, worker, out):
        self._worker = worker
        self._out = out

    @property
    def call_id(self):
        """The protocol's ``callId`` of this call."""
        return self._out.call_id

    def __iter__(self):
        return self

    def __next__(self):
        out = self._out
        if out.done:
            error, out.error = out.error, None
            if error is not None:
                raise error
            raise StopIteration
        try:
            kind, value = self._worker._next_outbound(out)
        except BaseException:
            self._worker._close_outbound(out)
            raise
        if kind == "message":
            return value
        self._worker._close_outbound(out)
        raise StopIteration

    def close(self):
        """Stop reading: cancel the call if it is still running."""
        self._worker._close_outbound(self._out)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


# --------------------------------------------------------------------------
# Readers: leader/follower threads (daemons: a handler that never returns
# cannot keep the process alive after stdin closes).


class _Readers:
    """The threads of one ``run()``. One at a time (the leader, holding
    ``lock``) reads stdin and routes frames. A leader that reads a ``start``
    frame hands reading over to another thread and runs that call itself, so
    a call's request, handler and reply stay on one thread: no hand-off to a
    pool thread, no wake-up, no GIL transfer between reading the request and
    writing the reply. At most ``size`` handlers run at once (a call started
    beyond that waits in ``_backlog`` for the next thread to finish), and up
    to ``size + 1`` threads exist, so one is always free to read (cancels,
    stream messages, the replies of outbound calls).

    Quick calls run inline: when no other call is running and the method's
    last call (unary or server streaming) took less than ``inline_below``
    seconds, the leader runs the call without handing reading over, and goes
    on reading when it returns. Handing over wakes another thread, which then
    waits for the GIL the handler holds: three or four context switches a
    call, more than a quick handler costs. Reading is handed over after all
    when the handler needs frames (``ctx.call()``, ``ctx.stream()``,
    ``ctx.cancelled``, ``ctx.cancel_event``; its method then never runs
    inline again) or, by a watchdog thread, when it runs longer than
    ``watch_interval`` (frames that arrive meanwhile wait that long at most;
    the method runs the usual way until one of its calls is quick again)."""

    def __init__(self, worker, input, size, inline_below=0.0, watch_interval=0.05):
        self._worker = worker
        self._readline = input.readline
        self._size = size
        self.lock = threading.Lock()  # held by the thread reading
        self.eof = threading.Event()
        self._count_lock = threading.Lock()
        self._threads = 0
        self._running = 0  # threads running a handler
        self._backlog = deque()  # started calls waiting for a handler thread
        self._inline_below = inline_below
        self._watch_interval = watch_interval
        self._quick = set()  # methods whose last call ran in less than inline_below seconds
        self._needs_frames = set()  # methods whose handler handed reading over itself: never inline
        self._inline = None  # the Context of the call the leader runs inline
        self._inline_since = 0.0
        self._inlined = 0  # calls run inline so far
        self._watching = False  # the watchdog thread was started
        self._watch_parked = False  # it sleeps until the next inline call (set under _count_lock)
        self._watch_wake = threading.Event()

    def start(self):
        with self._count_lock:
            self._threads = 1
        self._start_thread(1)

    def _start_thread(self, number):
        threading.Thread(target=self._loop, name="exemesh-worker-%d" % number, daemon=True).start()

    def _loop(self):
        reading = False  # True while this thread still holds ``lock`` after an inline call
        clock = time.perf_counter
        while True:
            task, inline = self._read(reading)
            if task is None:
                return
            if not inline:
                self.lock.release()
            while task is not None:
                began = clock()
                try:
                    task[0](*task[1:])
                except BaseException:  # the runners catch everything; belt and braces
                    _stderr("exemesh_worker: internal error in a handler thread\n" + traceback.format_exc())
                task, reading = self._finished(task, inline, clock() - began)
                inline = False

    def _finished(self, task, inline, elapsed):
        """Books the end of ``task`` (run inline or not) and returns the next
        task for this thread (from the backlog), and whether it still holds
        ``lock`` (it ran the call inline and reading was not handed over)."""
        ctx = task[2]
        with self._count_lock:
            still_reading = inline and self._inline is ctx
            if still_reading:
                self._inline = None
            if ctx.kind in _INLINE_KINDS:
                if (elapsed < self._inline_below and (still_reading or not inline)
                        and ctx.method not in self._needs_frames):
                    self._quick.add(ctx.method)
                else:
                    self._quick.discard(ctx.method)
            if still_reading:
                self._running -= 1
                return None, True
            if self._backlog:
                return self._backlog.popleft(), False
            self._running -= 1
            return None, False

    def _admit(self, task):
        """``_RUN`` when ``task`` may run now on this thread (a thread is added
        if none would be left to read), ``_INLINE`` when it runs now without
        handing reading over, ``_QUEUED`` when it waits in the backlog for the
        next handler thread that finishes."""
        ctx = task[2]
        start_watchdog = wake_watchdog = False
        number = 0
        with self._count_lock:
            if self._running >= self._size:
                self._backlog.append(task)
                return _QUEUED
            self._running += 1
            inline = self._running == 1 and ctx.method in self._quick and ctx.kind in _INLINE_KINDS
            if inline:
                self._inline = ctx
                self._inline_since = time.monotonic()
                self._inlined += 1
                start_watchdog = not self._watching
                wake_watchdog = self._watch_parked
                self._watching = True
                self._watch_parked = False
            else:
                number = self._reserve_reader()
        if inline:
            if start_watchdog:
                try:
                    threading.Thread(target=self._watch, name="exemesh-worker-watchdog", daemon=True).start()
                except RuntimeError as exc:  # no thread to be had: the next inline call tries again
                    with self._count_lock:
                        self._watching = False
                    _stderr("exemesh_worker: cannot start the watchdog thread (%s)\n" % exc)
            elif wake_watchdog:
                self._watch_wake.set()
            return _INLINE
        if number:
            self._start_thread(number)  # before the leader lets go of reading
        return _RUN

    def _reserve_reader(self):
        """Under ``_count_lock``: when every thread runs a handler (none would
        be left to read) and the ``size + 1`` bound allows it, counts one more
        thread and returns its number, for the caller to start; else 0."""
        if self._threads == self._running and self._threads <= self._size:
            self._threads += 1
            return self._threads
        return 0

    def hand_off(self, ctx, by_handler=False):
        """Reading goes to another thread if ``ctx`` is running inline: from
        its handler (``by_handler``), which is about to depend on frames (its
        method then never runs inline again: it would hand over every other
        call), or from the watchdog. ``threading.Lock`` may be released by
        any thread."""
        with self._count_lock:
            if self._inline is not ctx:
                return
            self._inline = None
            if by_handler:
                self._needs_frames.add(ctx.method)
                self._quick.discard(ctx.method)
            number = self._reserve_reader()
        try:
            if number:
                self._start_thread(number)
        finally:
            self.lock.release()  # even without a new thread: a thread that ends its call reads

    def _watch(self):
        """Hands reading over when a call has run inline for
        ``watch_interval``. Started with the first inline call; after
        ``_WATCH_IDLE_CHECKS`` checks without an inline call it sleeps until
        the next one (an idle worker wakes up for nothing)."""
        interval = self._watch_interval
        idle, seen, wait = 0, -1, interval
        while not self.eof.wait(wait):
            wait = interval
            now = time.monotonic()
            with self._count_lock:
                ctx, since, inlined = self._inline, self._inline_since, self._inlined
                if ctx is None and inlined == seen:
                    idle += 1
                    if idle >= _WATCH_IDLE_CHECKS:
                        self._watch_parked = True
                else:
                    idle, seen = 0, inlined
            if idle >= _WATCH_IDLE_CHECKS:
                self._watch_wake.wait()  # set by the next inline call, or at end-of-file
                self._watch_wake.clear()
                idle = 0
            elif ctx is not None:
                if now - since >= interval:
                    self.hand_off(ctx)
                else:
                    wait = since + interval - now  # frames wait at most one interval

    def _read(self, reading=False):
        """As the leader: routes frames until one starts a call that may run
        now, and returns that call's task, with the lock still held, and
        whether it runs inline; ``(None, False)`` (lock released) at
        end-of-file. ``reading``: the lock is held already."""
        if not reading:
            self.lock.acquire()
        readline = self._readline
        on_line = self._worker._on_line
        while not self.eof.is_set():
            try:
                line = readline()
            except (OSError, ValueError) as exc:
                _stderr("exemesh_worker: cannot read stdin (%s); stopping\n" % exc)
                line = b""
            if not line:
                self.eof.set()
                self._watch_wake.set()  # a sleeping watchdog ends too
                break
            try:
                task = on_line(line)
            except Exception:  # a bug must not take the whole worker down
                _stderr("exemesh_worker: error handling a stdin line %.200r:\n%s"
                        % (line, traceback.format_exc()))
                continue
            if task is not None:
                how = self._admit(task)
                if how != _QUEUED:
                    return task, how == _INLINE
        self.lock.release()
        return None, False


_QUEUED, _RUN, _INLINE = 0, 1, 2
_WATCH_IDLE_CHECKS = 20
_INLINE_KINDS = (UNARY, SERVER_STREAMING)


# --------------------------------------------------------------------------
# Worker

_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False).encode
_decode_json = json.JSONDecoder().decode


class Worker:
    """A worker speaking the exemesh stdio protocol.

    ``max_in_flight`` is declared in the ready frame (exemesh uses the smaller
    of it and the pool's ``max_in_flight``) and is how many handlers run at
    once, each on its own thread (the one that read the call's start frame).
    ``max_frame_bytes`` defaults to the limit exemesh announces in
    ``EXEMESH_MAX_FRAME_BYTES`` (else 4 MiB + 64 KiB): a reply
    that would make a longer line is answered with RESOURCE_EXHAUSTED instead
    (and an outbound request that would is refused with RESOURCE_EXHAUSTED).
    ``outbound_grace`` is how long (seconds) ``ctx.call()`` waits past its
    deadline for exemesh's answer before failing with DEADLINE_EXCEEDED itself.
    ``inline_below`` (seconds; 0 turns it off): a unary or server-streaming
    call whose method's last call took less runs on the thread that read it
    when no other call is running, without handing reading to another thread
    (see the README, "Threads").
    """

    def __init__(self, max_in_flight=16, *, sdk=SDK_NAME, max_frame_bytes=None,
                 declare_methods=True, inline_below=INLINE_BELOW):
        if max_frame_bytes is None:
            max_frame_bytes = os.environ.get("EXEMESH_MAX_FRAME_BYTES") or DEFAULT_MAX_FRAME_BYTES
        max_in_flight = int(max_in_flight)
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.sdk = sdk
        self.max_frame_bytes = int(max_frame_bytes)
        self.declare_methods = declare_methods
        self.inline_below = float(inline_below)
        self._readers = None
        self._handlers = {}  # method -> (function, kind or None)
        self._calls = {}  # call id -> Context of the calls in flight
        self._write_lock = threading.Lock()
        self._out = None
        self._broken = False
        self.outbound_grace = OUTBOUND_GRACE
        self._outbound = {}  # callId -> _Outbound of the outbound calls in flight
        self._outbound_lock = threading.Lock()
        self._last_call_id = 0

    # -- registration --------------------------------------------------------

    def unary(self, method):
        """Decorator: ``handler(request: dict, ctx) -> dict``."""
        return self._decorator(method, UNARY)

    def server_streaming(self, method):
        """Decorator: ``handler(request: dict, ctx)`` is a generator yielding
        each reply dict (or returns any iterable of them)."""
        return self._decorator(method, SERVER_STREAMING)

    def client_streaming(self, method):
        """Decorator: ``handler(requests: Iterator[dict], ctx) -> dict``."""
        return self._decorator(method, CLIENT_STREAMING)

    def bidi_streaming(self, method):
        """Decorator: ``handler(requests: Iterator[dict], ctx)`` is a generator
        yielding reply dicts; it may read and yield in any order."""
        return self._decorator(method, BIDI_STREAMING)

    def method(self, name, kind=None):
        """Decorator for a handler whose kind is taken from each call's
        ``start.kind`` (or fixed with ``kind=``). The calling convention follows
        the kind: ``(request, ctx)`` for unary and server streaming,
        ``(requests_iterator, ctx)`` for client and bidi streaming."""
        return self._decorator(name, kind)

    def add_handler(self, method, kind, function):
        """Register ``function`` for ``method`` without a decorator. ``kind``
        is one of ``KINDS`` or None (taken from each call)."""
        if kind is not None and kind not in KINDS:
            raise ValueError("unknown kind %r (expected one of %s)" % (kind, ", ".join(KINDS)))
        method = str(method).lstrip("/")
        if "/" not in method:
            raise ValueError("method must be 'package.Service/Method', got %r" % method)
        if method in self._handlers:
            raise ValueError("a handler for %s is already registered" % method)
        self._handlers[method] = (function, kind)
        return function

    def _decorator(self, method, kind):
        def register(function):
            return self.add_handler(method, kind, function)
        return register

    @property
    def methods(self):
        """The registered method names."""
        return sorted(self._handlers)

    # -- main loop -----------------------------------------------------------

    def run(self, input=None, output=None):
        """Serve calls until stdin reaches end-of-file, then return at once
        (handlers still running are abandoned: their threads are daemons).

        By default frames are read from ``sys.stdin.buffer`` and written to the
        real stdout, while ``sys.stdout`` and file descriptor 1 are pointed at
        stderr for the duration, so a stray ``print()`` (or a child process)
        cannot corrupt the protocol. ``input``/``output`` (binary file objects)
        replace stdin/stdout, e.g. for tests; no redirection happens then.
        """
        protocol = os.environ.get("EXEMESH_PROTOCOL")
        if protocol and protocol != PROTOCOL_VERSION:
            _stderr("exemesh_worker: EXEMESH_PROTOCOL=%s but this helper speaks version %s\n"
                    % (protocol, PROTOCOL_VERSION))
        if input is None:
            input = sys.stdin.buffer
        restore = None
        if output is None:
            output, restore = self._redirect_stdout()
        self._calls = {}
        with self._outbound_lock:
            self._outbound = {}
        self._broken = False
        self._out = output
        readers = self._readers = _Readers(self, input, self.max_in_flight, self.inline_below, WATCH_INTERVAL)
        try:
            ready = {"maxInFlight": self.max_in_flight, "sdk": self.sdk}
            if self.declare_methods and self._handlers:
                ready["methods"] = sorted(self._handlers)
            self._write(('{"ready":%s}\n' % _encode_json(ready)).encode())
            readers.start()
            readers.eof.wait()
        except KeyboardInterrupt:
            pass  # Ctrl-C when run by hand: shut down like at end-of-file
        finally:
            self._shutdown(restore)

    def _redirect_stdout(self):
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except (OSError, ValueError):
            pass
        frames_fd = os.dup(1)  # the real stdout, kept for frames (not inherited by children)
        try:
            os.dup2(2, 1)  # fd 1 (print, C code, child processes) now goes to stderr
        except OSError:
            pass
        saved_stdout = sys.stdout
        sys.stdout = sys.stderr
        output = open(frames_fd, "wb", buffering=1 << 16)
        return output, (saved_stdout, frames_fd)

    def _shutdown(self, restore):
        # No frames are sent after end-of-file: exemesh is going away.
        with self._write_lock:
            output = self._out
            self._out = None
        calls = list(self._calls.values())
        self._calls = {}
        for ctx in calls:
            ctx._cancel("worker shutting down (stdin closed)")  # wakes their outbound calls too
        with self._outbound_lock:
            self._outbound = {}
        if restore is not None:
            saved_stdout, frames_fd = restore
            try:
                sys.stderr.flush()
            except (OSError, ValueError, AttributeError):
                pass
            try:
                os.dup2(frames_fd, 1)
            except OSError:
                pass
            sys.stdout = saved_stdout
            try:
                output.close()
            except (OSError, ValueError):
                pass
        else:
            try:
                output.flush()
            except (OSError, ValueError, AttributeError):
                pass

    # -- writing -------------------------------------------------------------

    def _write(self, data):
        with self._write_lock:
            self._write_locked(data)

    def _write_locked(self, data):
        out = self._out
        if out is None or self._broken:
            return
        try:
            out.write(data)
            out.flush()
        except (OSError, ValueError) as exc:
            self._broken = True
            _stderr("exemesh_worker: cannot write to stdout (%s); dropping frames\n" % exc)

    def _finish(self, ctx, data):
        """Send the terminal frame(s) of a call, at most once."""
        with self._write_lock:
            if ctx._done:
                return False
            ctx._done = True
            calls = self._calls
            if calls.get(ctx.id) is ctx:
                del calls[ctx.id]  # before writing: exemesh may reuse the id at once
            self._write_locked(data)
        if ctx._outbound:
            self._abandon_outbound(ctx)
        return True

    def _fail(self, ctx, code, message):
        self._finish(ctx, ('{"id":%d,"error":%s}\n' % (
            ctx.id, _encode_json({"code": code, "message": message}))).encode())

    def _send_message(self, ctx, payload):
        data = ('{"id":%d,"message":%s}\n' % (ctx.id, payload)).encode()
        with self._write_lock:
            if ctx._done:
                raise _CallOver()
            self._write_locked(data)

    def _reply_error(self, call_id, code, message):
        self._write(('{"id":%d,"error":%s}\n' % (
            call_id, _encode_json({"code": code, "message": message}))).encode())

    def _encode_reply(self, ctx, reply):
        if reply is None:
            raise Error("INTERNAL", "handler for %s returned None; return a dict ({} for an empty message)"
                        % ctx.method)
        try:
            payload = _encode_json(reply)
        except (TypeError, ValueError, RecursionError) as exc:
            raise Error("INTERNAL", "reply of %s is not JSON-serialisable: %s" % (ctx.method, exc))
        if len(payload) + 40 > self.max_frame_bytes:
            raise Error("RESOURCE_EXHAUSTED", "reply of %s is %d bytes, over the %d-byte frame limit"
                        % (ctx.method, len(payload), self.max_frame_bytes))
        return payload

    # -- reading -------------------------------------------------------------

    def _on_line(self, line):
        try:
            frame = _decode_json(line.decode("utf-8"))
        except ValueError as exc:
            if line.strip():
                _stderr("exemesh_worker: ignoring a stdin line that is not JSON (%s): %.200r\n" % (exc, line))
            return
        if type(frame) is not dict:
            _stderr("exemesh_worker: ignoring a stdin line that is not a JSON object: %.200r\n" % line)
            return
        call_id = frame.get("id")
        if not call_id and "callId" in frame:
            self._on_outbound_frame(frame, line)
            return
        if type(call_id) is not int:
            try:
                call_id = int(call_id)
            except (TypeError, ValueError):
                _stderr("exemesh_worker: ignoring a frame without a valid id: %.200r\n" % line)
                return
        start = frame.get("start")
        if start is not None:
            return self._on_start(call_id, start)
        ctx = self._calls.get(call_id)
        if ctx is None:
            return  # unknown or finished call: ignored, as the protocol says
        if "message" in frame:
            if ctx._queue is not None:
                ctx._queue.put(frame["message"])
        elif "halfClose" in frame:
            if ctx._queue is not None:
                ctx._queue.put(_HALF_CLOSE)
        elif "cancel" in frame:
            cancel = frame["cancel"]
            reason = (cancel.get("reason") if type(cancel) is dict else None) or "cancelled"
            ctx._cancel(reason)
            self._fail(ctx, "CANCELLED", "call cancelled: %s" % reason)

    def _on_outbound_frame(self, frame, line):
        """A frame about one of our outbound calls: hand it to the waiting call."""
        call_id = frame.get("callId")
        if type(call_id) is not int:
            try:
                call_id = int(call_id)
            except (TypeError, ValueError):
                _stderr("exemesh_worker: ignoring a frame without a valid callId: %.200r\n" % line)
                return
        if "message" in frame:
            item, terminal = ("message", frame["message"]), False
        elif "end" in frame:
            item, terminal = ("end", None), True
        elif "error" in frame:
            error = frame["error"]
            if type(error) is not dict:
                error = {}
            item, terminal = ("error", (error.get("code") or "UNKNOWN", error.get("message") or "")), True
        else:
            return
        with self._outbound_lock:
            out = self._outbound.get(call_id)
            if out is None:
                return  # unknown, finished or abandoned call: ignored
            if terminal:
                del self._outbound[call_id]  # exemesh sends nothing more for it
        out.queue.put(item)

    def _on_start(self, call_id, start):
        if call_id <= 0:
            _stderr("exemesh_worker: ignoring a start frame with id %r\n" % call_id)
            return
        if type(start) is not dict:
            start = {}
        method = start.get("method") or ""
        entry = self._handlers.get(method)
        if entry is None:
            self._reply_error(call_id, "UNIMPLEMENTED", "method %s is not implemented by this worker" % method)
            return
        function, kind = entry
        call_kind = start.get("kind") or kind
        if kind is None:
            kind = call_kind
            if kind not in KINDS:
                self._reply_error(call_id, "INTERNAL", "unknown call kind %r for %s" % (kind, method))
                return
        elif call_kind != kind:
            self._reply_error(call_id, "INTERNAL", "%s is registered as %s but was called as %s"
                              % (method, kind, call_kind))
            return
        if call_id in self._calls:
            _stderr("exemesh_worker: ignoring a start frame for id %d, which is still in flight\n" % call_id)
            return
        timeout_ms = start.get("timeoutMs")
        deadline = None
        if timeout_ms:
            try:
                deadline = time.monotonic() + float(timeout_ms) / 1000.0
            except (TypeError, ValueError):
                deadline = None
        metadata = start.get("metadata")
        ctx = Context(call_id, method, kind, start.get("requestId") or "",
                      metadata if type(metadata) is dict else {},
                      start.get("traceparent") or "", start.get("tracestate") or "", deadline, self,
                      start.get("caller") or "")
        self._calls[call_id] = ctx
        if kind == UNARY:
            return (self._run_unary, function, ctx, start.get("message") or {})
        if kind == SERVER_STREAMING:
            return (self._run_server_streaming, function, ctx, start.get("message") or {})
        queue = ctx._queue = SimpleQueue()
        if "message" in start:
            queue.put(start["message"])
        if start.get("halfClose"):
            queue.put(_HALF_CLOSE)
        if kind == CLIENT_STREAMING:
            return (self._run_client_streaming, function, ctx)
        return (self._run_bidi_streaming, function, ctx)

    # -- outbound calls (in handler threads) ----------------------------------

    def _open_outbound(self, ctx, method, request, timeout, metadata):
        """Register an outbound call made for ``ctx`` and send its call frame."""
        ctx._hand_off()  # its answer comes on stdin
        method = str(method).lstrip("/")
        if "/" not in method:
            raise ValueError("method must be 'package.Service/Method', got %r" % method)
        if ctx._cancelled:
            raise Error("CANCELLED", "cannot call %s: %s was cancelled (%s)"
                        % (method, ctx.method, ctx.cancel_reason or "cancelled"))
        if ctx._done:
            raise Error("CANCELLED", "cannot call %s: %s has already ended" % (method, ctx.method))
        now = time.monotonic()
        if ctx.deadline is not None and ctx.deadline <= now:
            raise Error("DEADLINE_EXCEEDED", "cannot call %s: the deadline of %s has passed" % (method, ctx.method))
        deadline = ctx.deadline
        body = {"method": method, "parentId": ctx.id}
        if timeout is not None:
            seconds = float(timeout)
            if not seconds > 0.0:  # also NaN
                raise Error("DEADLINE_EXCEEDED", "cannot call %s: timeout %r leaves no time" % (method, timeout))
            if seconds * 1000.0 >= MAX_CALL_ID:
                timeout_ms = MAX_CALL_ID
                seconds = MAX_CALL_ID / 1000.0
            else:
                timeout_ms = max(1, int(math.ceil(seconds * 1000.0)))  # 0 would mean "no timeout"
            body["timeoutMs"] = timeout_ms
            own = now + seconds
            if deadline is None or own < deadline:
                deadline = own
        if metadata:
            body["metadata"] = {str(key): str(value) for key, value in dict(metadata).items()}
        body["message"] = {} if request is None else request
        try:
            payload = _encode_json(body)
        except (TypeError, ValueError, RecursionError) as exc:
            raise Error("INTERNAL", "request to %s is not JSON-serialisable: %s" % (method, exc))
        if len(payload) + 40 > self.max_frame_bytes:
            raise Error("RESOURCE_EXHAUSTED", "request to %s is %d bytes, over the %d-byte frame limit"
                        % (method, len(payload), self.max_frame_bytes))
        if self._broken:
            raise Error("UNAVAILABLE", "cannot call %s: the worker cannot write to exemesh" % method)

        out = _Outbound(method, ctx, deadline)
        with _event_lock:  # the same lock as Context._cancel: no cancellation slips through
            cancelled = ctx._cancelled
            if not cancelled:
                if ctx._outbound is None:
                    ctx._outbound = set()
                ctx._outbound.add(out)
        if cancelled:
            raise Error("CANCELLED", "cannot call %s: %s was cancelled (%s)"
                        % (method, ctx.method, ctx.cancel_reason or "cancelled"))
        with self._outbound_lock:
            if out.done:  # abandoned meanwhile: the parent call ended
                error = out.error
            else:
                error = None
                calls = self._outbound
                call_id = self._last_call_id
                while True:  # unique among the calls in flight, never 0
                    call_id = call_id + 1 if call_id < MAX_CALL_ID else 1
                    if call_id not in calls:
                        break
                self._last_call_id = call_id
                out.call_id = call_id
                calls[call_id] = out
        if error is not None:
            raise error
        self._write(('{"callId":%d,"call":%s}\n' % (out.call_id, payload)).encode())
        return out

    def _next_outbound(self, out):
        """The next ``("message", dict)`` or ``("end", None)`` of an outbound
        call; raises Error for an error status, a cancellation or a timeout."""
        ctx = out.ctx
        get = out.queue.get
        while True:
            if ctx._cancelled:
                self._close_outbound(out)
                raise Error("CANCELLED", "call to %s abandoned: %s was cancelled (%s)"
                            % (out.method, ctx.method, ctx.cancel_reason or "cancelled"))
            if out.done:
                error, out.error = out.error, None
                raise error or Error("CANCELLED", "call to %s was closed" % out.method)
            if out.deadline is None:
                item = get()
            else:
                left = out.deadline + self.outbound_grace - time.monotonic()
                if left <= 0.0:
                    self._close_outbound(out)
                    raise Error("DEADLINE_EXCEEDED", "no answer from %s before the deadline" % out.method)
                try:
                    item = get(timeout=left)
                except _queue_module.Empty:
                    continue
            if item is _CANCEL:
                continue  # the checks above say why
            kind, value = item
            if kind == "error":
                self._close_outbound(out)
                raise Error(value[0], value[1])
            if kind == "end":
                self._close_outbound(out)
            return kind, value

    def _close_outbound(self, out, error=None):
        """The caller is done with ``out``: forget it, and cancel it with a
        cancel frame if exemesh has not ended it yet. Idempotent."""
        with self._outbound_lock:
            if out.done:
                return
            out.done = True
            out.error = error
            live = out.call_id != 0 and self._outbound.get(out.call_id) is out
            if live:
                del self._outbound[out.call_id]
        ctx = out.ctx
        with _event_lock:
            if ctx._outbound is not None:
                ctx._outbound.discard(out)
        if live:
            self._write(('{"callId":%d,"cancel":{}}\n' % out.call_id).encode())

    def _abandon_outbound(self, ctx):
        """``ctx`` has ended: cancel the outbound calls still open for it (an
        unfinished ``ctx.stream()``, a call made from another thread)."""
        with _event_lock:
            outbound = list(ctx._outbound) if ctx._outbound else ()
        for out in outbound:
            self._close_outbound(out, Error("CANCELLED", "call to %s abandoned: %s has ended"
                                            % (out.method, ctx.method)))
            out.queue.put(_CANCEL)

    # -- running handlers (in reader threads) ---------------------------------

    def _crash(self, ctx, exc):
        """Answer an unexpected exception with UNKNOWN; traceback to stderr."""
        if isinstance(exc, _CallOver) or ctx._done:
            return
        text = "%s: %s" % (type(exc).__name__, exc)
        if len(text) > MAX_EXCEPTION_MESSAGE:
            text = text[:MAX_EXCEPTION_MESSAGE - 3] + "..."
        _stderr("exemesh_worker: %s (request %s) raised:\n%s" % (
            ctx.method, ctx.request_id or "#%d" % ctx.id,
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))
        self._fail(ctx, "UNKNOWN", text)

    def _run_unary(self, function, ctx, request):
        if ctx._done:
            return  # cancelled while queued
        call_id = ctx.id
        try:
            data = '{"id":%d,"message":%s}\n{"id":%d,"end":{}}\n' % (
                call_id, self._encode_reply(ctx, function(request, ctx)), call_id)
        except Error as exc:
            self._fail(ctx, exc.code, exc.message)
        except BaseException as exc:
            self._crash(ctx, exc)
        else:
            self._finish(ctx, data.encode())

    def _run_client_streaming(self, function, ctx):
        if ctx._done:
            return
        call_id = ctx.id
        try:
            data = '{"id":%d,"message":%s}\n{"id":%d,"end":{}}\n' % (
                call_id, self._encode_reply(ctx, function(_Requests(ctx), ctx)), call_id)
        except Error as exc:
            self._fail(ctx, exc.code, exc.message)
        except BaseException as exc:
            self._crash(ctx, exc)
        else:
            self._finish(ctx, data.encode())

    def _run_server_streaming(self, function, ctx, request):
        if ctx._done:
            return
        self._stream(ctx, lambda: function(request, ctx))

    def _run_bidi_streaming(self, function, ctx):
        if ctx._done:
            return
        self._stream(ctx, lambda: function(_Requests(ctx), ctx))

    def _stream(self, ctx, call_handler):
        replies = None
        try:
            replies = call_handler()
            if replies is None or isinstance(replies, (dict, str, bytes)):
                raise Error("INTERNAL", "streaming handler for %s must yield reply dicts (or return an iterable)"
                            % ctx.method)
            for reply in replies:
                if ctx._done:
                    break
                self._send_message(ctx, self._encode_reply(ctx, reply))
        except _CallOver:
            pass
        except Error as exc:
            self._fail(ctx, exc.code, exc.message)
            return
        except BaseException as exc:
            self._crash(ctx, exc)
            return
        finally:
            close = getattr(replies, "close", None)
            if close is not None and ctx._done:
                try:
                    close()  # run the generator's cleanup (finally blocks) after a cancel
                except BaseException:
                    pass
        self._finish(ctx, ('{"id":%d,"end":{}}\n' % ctx.id).encode())


class _CallOver(Exception):
    """Internal: the call was answered already (cancelled); stop streaming."""
