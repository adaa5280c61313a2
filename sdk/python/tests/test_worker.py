"""Tests of exemesh_worker: a real worker process spoken to over pipes."""

import io
import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SDK_DIR = os.path.dirname(HERE)
EXAMPLE = os.path.join(HERE, "example_worker.py")
sys.path.insert(0, SDK_DIR)

import exemesh_worker  # noqa: E402
from exemesh_worker import Error, Worker  # noqa: E402

TIMEOUT = 10.0  # upper bound for any single expected frame
QUIET = 0.3  # how long "nothing more arrives" is observed

ALL_METHODS = sorted([
    "test.v1.Echo/Unary", "test.v1.Echo/Context", "test.v1.Echo/Print", "test.v1.Echo/Fail",
    "test.v1.Echo/Crash", "test.v1.Echo/ReturnNone", "test.v1.Echo/Big", "test.v1.Echo/Pair",
    "test.v1.Echo/Block", "test.v1.Echo/Observed", "test.v1.Echo/Count", "test.v1.Echo/Forever",
    "test.v1.Echo/Sum", "test.v1.Echo/First", "test.v1.Echo/Chat", "test.v1.Echo/Generic",
    "test.v1.Echo/CallOut", "test.v1.Echo/StreamOut", "test.v1.Echo/Where",
])

try:
    import opentelemetry  # noqa: F401
    HAVE_OTEL = True
except ImportError:
    HAVE_OTEL = False


class WorkerProcess:
    """The example worker as a subprocess, with frames collected by threads."""

    def __init__(self, **env):
        full_env = dict(os.environ)
        full_env.update({k: str(v) for k, v in env.items()})
        full_env.setdefault("EXEMESH_PROTOCOL", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", EXAMPLE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env)
        self._frames = queue.Queue()
        self._pending = []
        self.raw_lines = []
        self.stderr_lines = []
        self._stdout_thread = threading.Thread(target=self._read_stdout, daemon=True)
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stdout_thread.start()
        self._stderr_thread.start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.raw_lines.append(line)
            try:
                frame = json.loads(line)
            except ValueError:
                frame = {"NOT_A_FRAME": line.decode("utf-8", "replace")}
            self._frames.put(frame)
        self._frames.put(None)  # EOF

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line.decode("utf-8", "replace"))

    @property
    def stderr(self):
        return "".join(self.stderr_lines)

    # -- sending --
    def send(self, frame):
        self.send_raw(json.dumps(frame, separators=(",", ":")).encode() + b"\n")

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def start(self, call_id, method, message=None, kind="unary", half_close=None, **fields):
        start = {"method": method, "kind": kind}
        if message is not None:
            start["message"] = message
        if half_close is None:
            half_close = kind in ("unary", "server_streaming")
        if half_close:
            start["halfClose"] = True
        start.update(fields)
        self.send({"id": call_id, "start": start})

    # -- receiving --
    def recv(self, timeout=TIMEOUT):
        """The next frame (of any call); fails the test after `timeout`."""
        if self._pending:
            return self._pending.pop(0)
        try:
            frame = self._frames.get(timeout=timeout)
        except queue.Empty:
            pytest.fail("no frame within %.1fs; stderr:\n%s" % (timeout, self.stderr))
        assert frame is not None, "worker closed stdout; stderr:\n" + self.stderr
        assert "NOT_A_FRAME" not in frame, frame
        return frame

    def recv_for(self, call_id, timeout=TIMEOUT):
        """The next frame of `call_id`, keeping other calls' frames for later."""
        return self._recv_matching(lambda frame: frame.get("id") == call_id, "id %d" % call_id, timeout)

    def recv_outbound(self, call_id=None, timeout=TIMEOUT):
        """The next frame of an outbound call (one with a callId; of `call_id` if given),
        keeping other frames for later."""
        if call_id is None:
            return self._recv_matching(lambda frame: "callId" in frame, "an outbound call", timeout)
        return self._recv_matching(lambda frame: frame.get("callId") == call_id, "callId %d" % call_id, timeout)

    def _recv_matching(self, wanted, what, timeout):
        for i, frame in enumerate(self._pending):
            if wanted(frame):
                return self._pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail("no frame for %s within %.1fs; stderr:\n%s" % (what, timeout, self.stderr))
            try:
                frame = self._frames.get(timeout=left)
            except queue.Empty:
                continue
            assert frame is not None, "worker closed stdout; stderr:\n" + self.stderr
            assert "NOT_A_FRAME" not in frame, frame
            if wanted(frame):
                return frame
            self._pending.append(frame)

    def collect(self, call_id, timeout=TIMEOUT):
        """All frames of `call_id` up to and including its terminal frame."""
        frames = []
        while True:
            frame = self.recv_for(call_id, timeout)
            frames.append(frame)
            if "end" in frame or "error" in frame:
                return frames

    def expect_quiet(self, seconds=QUIET):
        """Assert that no frame arrives for `seconds`."""
        assert not self._pending, self._pending
        try:
            frame = self._frames.get(timeout=seconds)
        except queue.Empty:
            return
        pytest.fail("unexpected frame %r" % (frame,))

    def call(self, call_id, method, message, **fields):
        self.start(call_id, method, message, **fields)
        return self.collect(call_id)

    def close_stdin(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def rest_until_eof(self, timeout=TIMEOUT):
        """Every frame still to come until the worker closes stdout."""
        frames = list(self._pending)
        self._pending = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail("worker did not close stdout")
            try:
                frame = self._frames.get(timeout=left)
            except queue.Empty:
                continue
            if frame is None:
                return frames
            frames.append(frame)

    def stop(self):
        self.close_stdin()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stdout_thread.join(timeout=5)
        self._stderr_thread.join(timeout=5)


@pytest.fixture
def spawn():
    procs = []

    def _spawn(**env):
        w = WorkerProcess(**env)
        procs.append(w)
        ready = w.recv()
        assert "ready" in ready, ready
        return w

    yield _spawn
    for w in procs:
        w.stop()


@pytest.fixture
def worker(spawn):
    return spawn()


# --------------------------------------------------------------------------


def test_ready_frame_is_first_line():
    w = WorkerProcess(TEST_MAX_IN_FLIGHT=3)
    try:
        assert w.recv() == {"ready": {"maxInFlight": 3, "sdk": "exemesh-worker-python/0.1.0",
                                      "methods": ALL_METHODS}}
        assert w.raw_lines[0].startswith(b'{"ready":{"maxInFlight":3,')
    finally:
        w.stop()


def test_unary_ok_exact_lines(worker):
    frames = worker.call(1, "test.v1.Echo/Unary", {"x": 1, "s": "h\u00e9"})
    assert frames == [
        {"id": 1, "message": {"echo": {"x": 1, "s": "h\u00e9"}, "method": "test.v1.Echo/Unary", "kind": "unary"}},
        {"id": 1, "end": {}},
    ]
    # compact JSON, one frame per line
    assert worker.raw_lines[-2] == (b'{"id":1,"message":{"echo":{"x":1,"s":"h\\u00e9"},'
                                    b'"method":"test.v1.Echo/Unary","kind":"unary"}}\n')
    assert worker.raw_lines[-1] == b'{"id":1,"end":{}}\n'


def test_unary_without_message_gets_empty_dict(worker):
    assert worker.call(4, "test.v1.Echo/Unary", None) == [
        {"id": 4, "message": {"echo": {}, "method": "test.v1.Echo/Unary", "kind": "unary"}},
        {"id": 4, "end": {}},
    ]


@pytest.mark.parametrize("code,expected", [
    ("NOT_FOUND", "NOT_FOUND"),
    (5, "NOT_FOUND"),
    ("7", "PERMISSION_DENIED"),
    ("invalid_argument", "INVALID_ARGUMENT"),
    ("NO_SUCH_CODE", "UNKNOWN"),
    ("OK", "UNKNOWN"),
])
def test_error_mapping(worker, code, expected):
    assert worker.call(2, "test.v1.Echo/Fail", {"code": code, "message": "no user u9"}) == [
        {"id": 2, "error": {"code": expected, "message": "no user u9"}},
    ]


def test_plain_exception_is_unknown_with_traceback_on_stderr(worker):
    assert worker.call(3, "test.v1.Echo/Crash", {"message": "boom"}) == [
        {"id": 3, "error": {"code": "UNKNOWN", "message": "ValueError: boom"}},
    ]
    deadline = time.monotonic() + TIMEOUT
    while "raise ValueError" not in worker.stderr and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "Traceback (most recent call last)" in worker.stderr
    assert "raise ValueError" in worker.stderr


def test_exception_message_is_bounded(worker):
    [frame] = worker.call(3, "test.v1.Echo/Crash", {"message": "y" * 5000})
    message = frame["error"]["message"]
    assert frame["error"]["code"] == "UNKNOWN"
    assert message.startswith("ValueError: yyy")
    assert len(message) == exemesh_worker.MAX_EXCEPTION_MESSAGE
    assert message.endswith("...")


def test_unimplemented(worker):
    assert worker.call(5, "test.v1.Echo/Nope", {}) == [
        {"id": 5, "error": {"code": "UNIMPLEMENTED",
                            "message": "method test.v1.Echo/Nope is not implemented by this worker"}},
    ]


def test_kind_mismatch_is_internal(worker):
    assert worker.call(6, "test.v1.Echo/Unary", {}, kind="server_streaming") == [
        {"id": 6, "error": {"code": "INTERNAL",
                            "message": "test.v1.Echo/Unary is registered as unary but was called as server_streaming"}},
    ]


def test_handler_returning_none_is_internal(worker):
    [frame] = worker.call(7, "test.v1.Echo/ReturnNone", {})
    assert frame["error"]["code"] == "INTERNAL"
    assert "returned None" in frame["error"]["message"]


def test_reply_over_frame_limit_is_resource_exhausted(spawn):
    w = spawn(TEST_MAX_FRAME_BYTES=1000)
    assert w.call(1, "test.v1.Echo/Big", {"size": 100}) == [
        {"id": 1, "message": {"data": "x" * 100}}, {"id": 1, "end": {}}]
    [frame] = w.call(2, "test.v1.Echo/Big", {"size": 2000})
    assert frame["error"]["code"] == "RESOURCE_EXHAUSTED"
    # the worker is still healthy
    assert w.call(3, "test.v1.Echo/Big", {"size": 1})[-1] == {"id": 3, "end": {}}


def test_server_streaming(worker):
    assert worker.call(8, "test.v1.Echo/Count", {"n": 3}, kind="server_streaming") == [
        {"id": 8, "message": {"i": 0}},
        {"id": 8, "message": {"i": 1}},
        {"id": 8, "message": {"i": 2}},
        {"id": 8, "end": {}},
    ]
    assert worker.call(9, "test.v1.Echo/Count", {}, kind="server_streaming") == [{"id": 9, "end": {}}]
    assert worker.call(10, "test.v1.Echo/Count", {"n": 1, "failAfter": True}, kind="server_streaming") == [
        {"id": 10, "message": {"i": 0}},
        {"id": 10, "error": {"code": "ABORTED", "message": "stopped after 1"}},
    ]


def test_client_streaming(worker):
    worker.start(11, "test.v1.Echo/Sum", kind="client_streaming")
    for value in (1, 2, "3"):
        worker.send({"id": 11, "message": {"value": value}})
    worker.send({"id": 11, "halfClose": {}})
    assert worker.collect(11) == [{"id": 11, "message": {"total": "6", "count": 3}}, {"id": 11, "end": {}}]


def test_client_streaming_with_inline_first_message_and_half_close(worker):
    assert worker.call(12, "test.v1.Echo/Sum", {"value": 40}, kind="client_streaming", half_close=True) == [
        {"id": 12, "message": {"total": "40", "count": 1}}, {"id": 12, "end": {}}]
    worker.start(13, "test.v1.Echo/Sum", {"value": 40}, kind="client_streaming")
    worker.send({"id": 13, "message": {"value": 2}})
    worker.send({"id": 13, "halfClose": {}})
    assert worker.collect(13) == [{"id": 13, "message": {"total": "42", "count": 2}}, {"id": 13, "end": {}}]


def test_client_streaming_answer_before_half_close(worker):
    worker.start(14, "test.v1.Echo/First", kind="client_streaming")
    worker.send({"id": 14, "message": {"n": 1}})
    assert worker.collect(14) == [{"id": 14, "message": {"first": {"n": 1}}}, {"id": 14, "end": {}}]
    # late frames for the finished call are ignored
    worker.send({"id": 14, "message": {"n": 2}})
    worker.send({"id": 14, "halfClose": {}})
    worker.send({"id": 14, "cancel": {"reason": "cancelled"}})
    assert worker.call(15, "test.v1.Echo/Unary", {}) [-1] == {"id": 15, "end": {}}
    worker.expect_quiet()


def test_bidi_interleaves(worker):
    worker.start(16, "test.v1.Echo/Chat", kind="bidi_streaming")
    # each reply arrives before the next request is sent: true interleaving
    worker.send({"id": 16, "message": {"text": "hello"}})
    assert worker.recv_for(16) == {"id": 16, "message": {"reply": "HELLO"}}
    worker.send({"id": 16, "message": {"text": "skipped", "skip": True}})
    worker.send({"id": 16, "message": {"text": "world"}})
    assert worker.recv_for(16) == {"id": 16, "message": {"reply": "WORLD"}}
    worker.send({"id": 16, "halfClose": {}})
    assert worker.recv_for(16) == {"id": 16, "end": {}}


def test_two_calls_run_concurrently(worker):
    # Pair returns only when another Pair call is inside its handler at the same time.
    worker.start(20, "test.v1.Echo/Pair", {"tag": "a", "timeout": 10})
    worker.start(21, "test.v1.Echo/Pair", {"tag": "b", "timeout": 10})
    assert worker.collect(20) == [{"id": 20, "message": {"tag": "a"}}, {"id": 20, "end": {}}]
    assert worker.collect(21) == [{"id": 21, "message": {"tag": "b"}}, {"id": 21, "end": {}}]


def test_max_in_flight_one_runs_calls_sequentially(spawn):
    # The same scenario fails with a pool of one thread: proves the test above can fail.
    w = spawn(TEST_MAX_IN_FLIGHT=1)
    w.start(20, "test.v1.Echo/Pair", {"tag": "a", "timeout": 0.5})
    w.start(21, "test.v1.Echo/Pair", {"tag": "b", "timeout": 0.5})
    assert w.collect(20) == [{"id": 20, "error": {"code": "DEADLINE_EXCEEDED", "message": "no concurrent partner"}}]
    assert w.collect(21)[-1]["error"]["code"] == "DEADLINE_EXCEEDED"


def test_frames_are_read_while_every_handler_place_is_busy(spawn):
    # Two handlers block (max_in_flight=2); a third call waits for a place. The cancels must still be
    # read (one thread is always free to read), and the waiting call then runs, on a freed thread.
    w = spawn(TEST_MAX_IN_FLIGHT=2)
    w.start(40, "test.v1.Echo/Block", {}, requestId="r-40")
    w.start(41, "test.v1.Echo/Block", {}, requestId="r-41")
    w.start(42, "test.v1.Echo/Unary", {"n": 42})
    w.expect_quiet()  # 42 does not run beyond the limit
    for call_id in (40, 41):
        w.send({"id": call_id, "cancel": {"reason": "cancelled"}})
        assert w.recv_for(call_id) == {"id": call_id, "error": {"code": "CANCELLED",
                                                                "message": "call cancelled: cancelled"}}
    assert w.collect(42) == [
        {"id": 42, "message": {"echo": {"n": 42}, "method": "test.v1.Echo/Unary", "kind": "unary"}},
        {"id": 42, "end": {}},
    ]


def test_many_pipelined_calls_each_answered_once(worker):
    n = 300
    payload = b"".join(
        json.dumps({"id": i, "start": {"method": "test.v1.Echo/Unary", "kind": "unary",
                                       "message": {"n": i}, "halfClose": True}}).encode() + b"\n"
        for i in range(1, n + 1))
    worker.send_raw(payload)
    seen = {}
    for _ in range(2 * n):
        frame = worker.recv()
        seen.setdefault(frame["id"], []).append(frame)
    assert sorted(seen) == list(range(1, n + 1))
    for i, frames in seen.items():
        assert frames == [{"id": i, "message": {"echo": {"n": i}, "method": "test.v1.Echo/Unary", "kind": "unary"}},
                          {"id": i, "end": {}}]
    worker.expect_quiet()


def test_cancel_sends_cancelled_once_and_wakes_handler(worker):
    worker.start(30, "test.v1.Echo/Block", {}, requestId="r-block")
    worker.send({"id": 30, "cancel": {"reason": "deadline_exceeded"}})
    assert worker.recv_for(30) == {"id": 30, "error": {"code": "CANCELLED",
                                                       "message": "call cancelled: deadline_exceeded"}}
    # the handler saw the cancellation through ctx.cancel_event / ctx.cancelled
    assert worker.call(31, "test.v1.Echo/Observed", {"requestId": "r-block"}) == [
        {"id": 31, "message": {"woke": True, "cancelled": True, "reason": "deadline_exceeded"}},
        {"id": 31, "end": {}},
    ]
    # the handler's own return value is not sent: no second terminal frame for id 30
    worker.send({"id": 30, "cancel": {"reason": "cancelled"}})  # a repeated cancel is ignored too
    worker.expect_quiet()
    worker.close_stdin()
    assert [f for f in worker.rest_until_eof() if f.get("id") == 30] == []


def test_cancel_client_streaming_iterator(worker):
    worker.start(32, "test.v1.Echo/Sum", kind="client_streaming")
    worker.send({"id": 32, "message": {"value": 1}})
    worker.send({"id": 32, "cancel": {"reason": "cancelled"}})
    assert worker.collect(32) == [{"id": 32, "error": {"code": "CANCELLED", "message": "call cancelled: cancelled"}}]
    worker.expect_quiet()


def test_cancel_server_streaming_stops_the_stream(worker):
    worker.start(33, "test.v1.Echo/Forever", {}, kind="server_streaming")
    assert worker.recv_for(33) == {"id": 33, "message": {"i": 0}}
    worker.send({"id": 33, "cancel": {"reason": "cancelled"}})
    frames = worker.collect(33)
    assert frames[-1] == {"id": 33, "error": {"code": "CANCELLED", "message": "call cancelled: cancelled"}}
    assert all("message" in f for f in frames[:-1])
    worker.expect_quiet()


def test_frames_for_unknown_ids_and_garbage_are_ignored(worker):
    worker.send({"id": 99, "cancel": {"reason": "cancelled"}})
    worker.send({"id": 98, "message": {"x": 1}})
    worker.send({"id": 97, "halfClose": {}})
    worker.send_raw(b"this is not json\n")
    worker.send_raw(b"\n")
    worker.send_raw(b"[1,2]\n")
    assert worker.call(40, "test.v1.Echo/Unary", {}) == [
        {"id": 40, "message": {"echo": {}, "method": "test.v1.Echo/Unary", "kind": "unary"}},
        {"id": 40, "end": {}},
    ]
    worker.expect_quiet()


def test_context_fields_and_deadline(worker):
    [msg, end] = worker.call(50, "test.v1.Echo/Context", {}, timeoutMs=5000, requestId="r-17",
                             metadata={"x-user": "ada"},
                             traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                             tracestate="k=v")
    assert end == {"id": 50, "end": {}}
    reply = msg["message"]
    remaining = reply.pop("remainingMs")
    assert 0 < remaining <= 5000
    assert reply == {"requestId": "r-17", "metadata": {"x-user": "ada"},
                     "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                     "tracestate": "k=v", "hasDeadline": True, "cancelled": False, "otel": HAVE_OTEL}


def test_context_without_deadline(worker):
    [msg, _] = worker.call(51, "test.v1.Echo/Context", {})
    assert msg["message"] == {"requestId": "", "metadata": {}, "traceparent": "", "tracestate": "",
                              "hasDeadline": False, "remainingMs": None, "cancelled": False, "otel": HAVE_OTEL}


def test_stray_output_goes_to_stderr(worker):
    assert worker.call(60, "test.v1.Echo/Print", {}) == [
        {"id": 60, "message": {"printed": True}}, {"id": 60, "end": {}}]
    worker.close_stdin()
    assert worker.rest_until_eof() == []
    worker.proc.wait(timeout=TIMEOUT)
    worker._stderr_thread.join(timeout=TIMEOUT)
    # every stdout line was a frame (recv asserts it), and the stray output landed on stderr
    assert all(json.loads(line) for line in worker.raw_lines)
    assert "this stray print must not reach stdout" in worker.stderr
    assert "neither must this raw write to fd 1" in worker.stderr
    assert "[test.v1.Echo/Print #60] logged via ctx.log" in worker.stderr


def test_generic_method_uses_start_kind(worker):
    assert worker.call(70, "test.v1.Echo/Generic", {"a": 1}) == [
        {"id": 70, "message": {"kind": "unary", "echo": {"a": 1}}}, {"id": 70, "end": {}}]
    worker.start(71, "test.v1.Echo/Generic", kind="client_streaming")
    worker.send({"id": 71, "message": {}})
    worker.send({"id": 71, "message": {}})
    worker.send({"id": 71, "halfClose": {}})
    assert worker.collect(71) == [{"id": 71, "message": {"kind": "client_streaming", "n": 2}},
                                  {"id": 71, "end": {}}]
    assert worker.call(72, "test.v1.Echo/Generic", {}, kind="server_streaming") == [
        {"id": 72, "error": {"code": "UNIMPLEMENTED", "message": "generic handler does not do server_streaming"}}]


def test_stdin_eof_exits_promptly_despite_running_handler(worker):
    worker.start(80, "test.v1.Echo/Block", {})  # would block for 30 s
    worker.start(81, "test.v1.Echo/Sum", kind="client_streaming")  # waits for requests
    worker.call(82, "test.v1.Echo/Unary", {})  # both calls above have been read
    started = time.monotonic()
    worker.close_stdin()
    assert worker.proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 5
    # no terminal frames are sent for the abandoned calls
    assert worker.rest_until_eof() == []


# --------------------------------------------------------------------------
# In-process checks of the API surface.


def test_error_code_normalisation():
    assert Error("NOT_FOUND", "x").code == "NOT_FOUND"
    assert Error(5).code == "NOT_FOUND"
    assert Error("14").code == "UNAVAILABLE"
    assert Error(" permission_denied ").code == "PERMISSION_DENIED"
    assert Error(0).code == "UNKNOWN"
    assert Error(99).code == "UNKNOWN"
    assert Error("StatusCode.ABORTED").code == "ABORTED"

    class FakeStatus:
        name = "UNAUTHENTICATED"

    assert Error(FakeStatus(), "m").code == "UNAUTHENTICATED"
    assert str(Error("NOT_FOUND", "no user u9")) == "NOT_FOUND: no user u9"
    assert isinstance(exemesh_worker.Cancelled(), Error)


def test_registration_validation():
    w = Worker()
    w.unary("pkg.S/M")(lambda req, ctx: {})
    with pytest.raises(ValueError):
        w.unary("pkg.S/M")(lambda req, ctx: {})
    with pytest.raises(ValueError):
        w.unary("no-slash")(lambda req, ctx: {})
    with pytest.raises(ValueError):
        Worker(max_in_flight=0)
    assert w.methods == ["pkg.S/M"]


def test_run_in_process_with_explicit_streams():
    w = Worker(max_in_flight=2, declare_methods=False)

    @w.unary("pkg.S/M")
    def m(req, ctx):
        return {"v": req.get("v", 0) + 1}

    inp = io.BytesIO(b'{"id":1,"start":{"method":"pkg.S/M","kind":"unary","message":{"v":1},"halfClose":true}}\n')

    class Out(io.BytesIO):
        def __init__(self):
            super().__init__()
            self.answered = threading.Event()

        def write(self, data):
            n = super().write(data)
            if b'"end"' in data:
                self.answered.set()
            return n

    out = Out()
    # input EOF makes run() return at once, possibly before the call is answered; the
    # helper drops frames after EOF, so feed EOF only once the answer is out.
    class SlowInput:
        def __init__(self):
            self.lines = [inp.readline()]

        def readline(self):
            if self.lines:
                return self.lines.pop()
            out.answered.wait(TIMEOUT)
            return b""

    w.run(input=SlowInput(), output=out)
    assert out.getvalue() == (b'{"ready":{"maxInFlight":2,"sdk":"exemesh-worker-python/0.1.0"}}\n'
                              b'{"id":1,"message":{"v":2}}\n{"id":1,"end":{}}\n')


def test_cancel_event_is_set_when_created_after_cancel():
    ctx = exemesh_worker.Context(1, "pkg.S/M", "unary")
    assert not ctx.cancelled
    ctx._cancel("cancelled")
    assert ctx.cancelled and ctx.cancel_event.is_set()
    ctx2 = exemesh_worker.Context(2, "pkg.S/M", "unary", deadline=time.monotonic() + 10)
    event = ctx2.cancel_event
    assert not event.is_set()
    ctx2._cancel("deadline_exceeded")
    assert event.is_set() and ctx2.cancel_reason == "deadline_exceeded"
    assert 0 < ctx2.time_remaining() <= 10
    assert exemesh_worker.Context(3, "m/m", "unary").time_remaining() is None


# --------------------------------------------------------------------------
# Outbound calls: the test plays exemesh, answering the worker's `call` frames.

CALL_OUT = "test.v1.Echo/CallOut"
STREAM_OUT = "test.v1.Echo/StreamOut"
GET_USER = "shop.v1.UserService/GetUser"
LIST_PRODUCTS = "shop.v1.ProductService/ListProducts"


def answer(w, call_id, *frames):
    """Send exemesh's answer frames for the outbound call `call_id`."""
    for frame in frames:
        w.send(dict({"callId": call_id}, **frame))


def test_outbound_call_returns_the_reply(worker):
    worker.start(7, CALL_OUT, {"method": GET_USER, "message": {"id": "u1"}}, timeoutMs=5000)
    frame = worker.recv_outbound()
    call_id = frame["callId"]
    assert type(call_id) is int and call_id > 0
    # no timeoutMs and no metadata unless asked for: exemesh applies the parent's deadline
    assert frame == {"callId": call_id, "call": {"method": GET_USER, "parentId": 7, "message": {"id": "u1"}}}
    assert worker.raw_lines[-1] == (b'{"callId":%d,"call":{"method":"shop.v1.UserService/GetUser","parentId":7,'
                                    b'"message":{"id":"u1"}}}\n' % call_id)
    answer(worker, call_id, {"message": {"id": "u1", "name": "Ada Lovelace"}}, {"end": {}})
    assert worker.collect(7) == [{"id": 7, "message": {"reply": {"id": "u1", "name": "Ada Lovelace"}}},
                                 {"id": 7, "end": {}}]
    # late frames of the finished outbound call and frames of unknown callIds are ignored
    answer(worker, call_id, {"message": {}}, {"end": {}})
    answer(worker, 4242, {"message": {}}, {"error": {"code": "INTERNAL", "message": "x"}})
    worker.send({"callId": 4243, "id": 0, "end": {}})
    worker.expect_quiet()
    # the worker still works, and its next outbound call gets a new callId
    worker.start(8, CALL_OUT, {"method": GET_USER})
    second = worker.recv_outbound()
    assert second["callId"] not in (0, call_id)
    assert second["call"] == {"method": GET_USER, "parentId": 8, "message": {}}
    answer(worker, second["callId"], {"message": {}}, {"end": {}})
    assert worker.collect(8) == [{"id": 8, "message": {"reply": {}}}, {"id": 8, "end": {}}]


@pytest.mark.parametrize("code,expected", [
    ("NOT_FOUND", "NOT_FOUND"),
    ("5", "NOT_FOUND"),
    (14, "UNAVAILABLE"),
    ("NO_SUCH_CODE", "UNKNOWN"),
])
def test_outbound_call_error_raises_error_with_its_code(worker, code, expected):
    worker.start(3, CALL_OUT, {"method": GET_USER, "message": {"id": "u9"}})
    call_id = worker.recv_outbound()["callId"]
    answer(worker, call_id, {"error": {"code": code, "message": "no user u9"}})
    assert worker.collect(3) == [{"id": 3, "message": {"code": expected, "message": "no user u9"}},
                                 {"id": 3, "end": {}}]
    worker.expect_quiet()  # no cancel frame: exemesh had ended the call


def test_outbound_unary_end_without_message_is_internal(worker):
    worker.start(3, CALL_OUT, {"method": GET_USER})
    answer(worker, worker.recv_outbound()["callId"], {"end": {}})
    [msg, _] = worker.collect(3)
    assert msg["message"]["code"] == "INTERNAL"
    assert "without a reply message" in msg["message"]["message"]


def test_outbound_call_timeout_and_metadata(worker):
    worker.start(4, CALL_OUT, {"method": GET_USER, "message": {"id": "u1"}, "timeout": 0.25,
                               "metadata": {"x-tenant": "acme"}}, timeoutMs=5000)
    frame = worker.recv_outbound()
    assert frame["call"] == {"method": GET_USER, "parentId": 4, "message": {"id": "u1"}, "timeoutMs": 250,
                             "metadata": {"x-tenant": "acme"}}
    answer(worker, frame["callId"], {"message": {"id": "u1"}}, {"end": {}})
    assert worker.collect(4)[0] == {"id": 4, "message": {"reply": {"id": "u1"}}}


def test_outbound_stream_relays_messages_as_they_arrive(worker):
    worker.start(5, STREAM_OUT, {"method": LIST_PRODUCTS, "message": {"category": "grocery"}},
                 kind="server_streaming", timeoutMs=5000)
    frame = worker.recv_outbound()
    call_id = frame["callId"]
    assert frame["call"] == {"method": LIST_PRODUCTS, "parentId": 5, "message": {"category": "grocery"}}
    for i in range(3):  # each reply is relayed before the next one is even sent
        answer(worker, call_id, {"message": {"id": "p%d" % i}})
        assert worker.recv_for(5) == {"id": 5, "message": {"reply": {"id": "p%d" % i}}}
    answer(worker, call_id, {"end": {}})
    assert worker.recv_for(5) == {"id": 5, "end": {}}
    worker.expect_quiet()


def test_outbound_stream_error_arrives_after_the_messages(worker):
    worker.start(6, STREAM_OUT, {"method": LIST_PRODUCTS}, kind="server_streaming")
    call_id = worker.recv_outbound()["callId"]
    answer(worker, call_id, {"message": {"id": "p1"}})
    assert worker.recv_for(6) == {"id": 6, "message": {"reply": {"id": "p1"}}}
    answer(worker, call_id, {"message": {"id": "p2"}}, {"error": {"code": "UNAVAILABLE", "message": "lost it"}})
    assert worker.collect(6) == [{"id": 6, "message": {"reply": {"id": "p2"}}},
                                 {"id": 6, "error": {"code": "UNAVAILABLE", "message": "lost it"}}]
    worker.expect_quiet()


def test_outbound_stream_closed_early_is_cancelled(worker):
    worker.start(9, STREAM_OUT, {"method": LIST_PRODUCTS, "take": 1}, kind="server_streaming")
    call_id = worker.recv_outbound()["callId"]
    answer(worker, call_id, {"message": {"id": "p1"}})
    assert worker.recv_for(9) == {"id": 9, "message": {"reply": {"id": "p1"}}}
    assert worker.recv_outbound(call_id) == {"callId": call_id, "cancel": {}}
    assert worker.recv_for(9) == {"id": 9, "end": {}}
    answer(worker, call_id, {"message": {"id": "p2"}}, {"end": {}})  # too late: ignored
    worker.expect_quiet()


def test_outbound_stream_left_open_is_cancelled_when_the_call_ends(worker):
    worker.start(9, STREAM_OUT, {"method": LIST_PRODUCTS, "take": 1, "leaveOpen": True},
                 kind="server_streaming")
    call_id = worker.recv_outbound()["callId"]
    answer(worker, call_id, {"message": {"id": "p1"}})
    assert worker.collect(9) == [{"id": 9, "message": {"reply": {"id": "p1"}}}, {"id": 9, "end": {}}]
    assert worker.recv_outbound(call_id) == {"callId": call_id, "cancel": {}}
    worker.expect_quiet()


def test_outbound_call_without_answer_times_out_at_the_parent_deadline(worker):
    started = time.monotonic()
    worker.start(11, CALL_OUT, {"method": GET_USER}, timeoutMs=300)
    call_id = worker.recv_outbound()["callId"]
    # exemesh never answers: the helper gives up at the deadline plus its grace and cancels the call
    assert worker.recv_outbound(call_id) == {"callId": call_id, "cancel": {}}
    [msg, end] = worker.collect(11)
    elapsed = time.monotonic() - started
    assert msg["message"]["code"] == "DEADLINE_EXCEEDED", msg
    assert end == {"id": 11, "end": {}}
    grace = exemesh_worker.OUTBOUND_GRACE
    assert 0.3 + grace - 0.05 <= elapsed < 0.3 + grace + 3.0
    answer(worker, call_id, {"message": {}}, {"end": {}})  # a late answer is ignored
    worker.expect_quiet()


def test_outbound_call_own_timeout_bounds_the_wait(worker):
    started = time.monotonic()
    worker.start(12, CALL_OUT, {"method": GET_USER, "timeout": 0.1})  # parent without deadline
    frame = worker.recv_outbound()
    assert frame["call"]["timeoutMs"] == 100
    assert worker.recv_outbound(frame["callId"]) == {"callId": frame["callId"], "cancel": {}}
    assert worker.collect(12)[0]["message"]["code"] == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 0.1 + exemesh_worker.OUTBOUND_GRACE + 3.0


def test_cancelling_the_parent_cancels_the_outbound_call(spawn):
    w = spawn(TEST_MAX_IN_FLIGHT=1)
    w.start(13, CALL_OUT, {"method": GET_USER})  # no deadline: would wait forever
    call_id = w.recv_outbound()["callId"]
    w.send({"id": 13, "cancel": {"reason": "cancelled"}})
    assert w.recv_for(13) == {"id": 13, "error": {"code": "CANCELLED", "message": "call cancelled: cancelled"}}
    assert w.recv_outbound(call_id) == {"callId": call_id, "cancel": {}}
    # the handler woke up (with CANCELLED): the only pool thread is free again
    assert w.call(14, "test.v1.Echo/Unary", {})[-1] == {"id": 14, "end": {}}
    w.expect_quiet()


def test_concurrent_outbound_calls_answered_out_of_order(worker):
    worker.start(1, CALL_OUT, {"method": GET_USER, "message": {"id": "a"}})
    worker.start(2, CALL_OUT, {"method": GET_USER, "message": {"id": "b"}})
    calls = [worker.recv_outbound(), worker.recv_outbound()]
    by_parent = {c["call"]["parentId"]: c for c in calls}
    assert sorted(by_parent) == [1, 2]
    assert by_parent[1]["call"]["message"] == {"id": "a"} and by_parent[2]["call"]["message"] == {"id": "b"}
    assert by_parent[1]["callId"] != by_parent[2]["callId"]
    answer(worker, by_parent[2]["callId"], {"message": {"who": "b"}})
    answer(worker, by_parent[1]["callId"], {"message": {"who": "a"}}, {"end": {}})
    assert worker.collect(1) == [{"id": 1, "message": {"reply": {"who": "a"}}}, {"id": 1, "end": {}}]
    answer(worker, by_parent[2]["callId"], {"end": {}})
    assert worker.collect(2) == [{"id": 2, "message": {"reply": {"who": "b"}}}, {"id": 2, "end": {}}]


def test_many_concurrent_outbound_calls_are_routed(spawn):
    w = spawn(TEST_MAX_IN_FLIGHT=8)
    n = 40
    for i in range(1, n + 1):
        w.start(i, CALL_OUT, {"method": GET_USER, "message": {"n": i}}, timeoutMs=20000)
    replies = {}
    open_calls = []
    in_flight = set()
    while len(replies) < n:
        try:
            frame = w._pending.pop(0) if w._pending else w._frames.get(timeout=0.05)
        except queue.Empty:
            # answer everything waiting, newest first, interleaving the frames of different calls
            for call in reversed(open_calls):
                answer(w, call["callId"], {"message": {"n": call["call"]["message"]["n"],
                                                       "parent": call["call"]["parentId"]}})
            for call in open_calls:
                answer(w, call["callId"], {"end": {}})
            open_calls = []
            continue
        assert frame is not None, w.stderr
        if "call" in frame:
            assert frame["callId"] not in in_flight and frame["callId"] != 0
            in_flight.add(frame["callId"])
            open_calls.append(frame)
        elif "message" in frame:
            replies[frame["id"]] = frame["message"]
        elif "end" in frame:
            pass
        else:
            pytest.fail("unexpected frame %r" % (frame,))
    assert replies == {i: {"reply": {"n": i, "parent": i}} for i in range(1, n + 1)}


# In-process checks of outbound calls.


def _detached_worker(**kwargs):
    w = Worker(**kwargs)
    w._out = io.BytesIO()
    return w


def test_outbound_call_ids_wrap_and_skip_zero_and_calls_in_flight():
    w = _detached_worker()
    ctx = exemesh_worker.Context(3, "pkg.S/M", "unary", worker=w)
    w._last_call_id = exemesh_worker.MAX_CALL_ID - 1
    first = w._open_outbound(ctx, "pkg.T/N", {"a": 1}, None, None)
    assert first.call_id == exemesh_worker.MAX_CALL_ID
    blocker = w._open_outbound(ctx, "pkg.T/N", {}, None, None)
    assert blocker.call_id == 1  # wrapped, skipping 0
    w._last_call_id = 0
    third = w._open_outbound(ctx, "pkg.T/N", {}, None, None)
    assert third.call_id == 2  # 1 is still in flight
    for out in (first, blocker, third):
        w._close_outbound(out)
    w._close_outbound(first)  # idempotent: no second cancel frame
    lines = w._out.getvalue().decode().splitlines()
    assert lines == [
        '{"callId":4294967295,"call":{"method":"pkg.T/N","parentId":3,"message":{"a":1}}}',
        '{"callId":1,"call":{"method":"pkg.T/N","parentId":3,"message":{}}}',
        '{"callId":2,"call":{"method":"pkg.T/N","parentId":3,"message":{}}}',
        '{"callId":4294967295,"cancel":{}}',
        '{"callId":1,"cancel":{}}',
        '{"callId":2,"cancel":{}}',
    ]
    assert w._outbound == {} and not ctx._outbound


def test_outbound_call_argument_errors():
    w = _detached_worker(max_frame_bytes=200)
    ctx = exemesh_worker.Context(3, "pkg.S/M", "unary", worker=w)
    with pytest.raises(ValueError):
        ctx.call("no-slash", {})
    with pytest.raises(Error) as info:
        ctx.call("pkg.T/N", {"x": object()})
    assert info.value.code == "INTERNAL"
    with pytest.raises(Error) as info:
        ctx.call("pkg.T/N", {"x": "y" * 500})
    assert info.value.code == "RESOURCE_EXHAUSTED"
    for timeout in (0, -1, float("nan")):
        with pytest.raises(Error) as info:
            ctx.call("pkg.T/N", {}, timeout=timeout)
        assert info.value.code == "DEADLINE_EXCEEDED"
    late = exemesh_worker.Context(4, "pkg.S/M", "unary", deadline=time.monotonic() - 1, worker=w)
    with pytest.raises(Error) as info:
        late.call("pkg.T/N", {})
    assert info.value.code == "DEADLINE_EXCEEDED"
    cancelled = exemesh_worker.Context(5, "pkg.S/M", "unary", worker=w)
    cancelled._cancel("cancelled")
    with pytest.raises(Error) as info:
        cancelled.stream("pkg.T/N", {})
    assert info.value.code == "CANCELLED"
    assert w._out.getvalue() == b""  # nothing was sent
    with pytest.raises(RuntimeError):
        exemesh_worker.Context(6, "pkg.S/M", "unary").call("pkg.T/N", {})


def test_outbound_huge_timeout_is_capped():
    w = _detached_worker()
    ctx = exemesh_worker.Context(3, "pkg.S/M", "unary", worker=w)
    out = w._open_outbound(ctx, "pkg.T/N", None, float("inf"), {"k": 1})
    assert json.loads(w._out.getvalue())["call"] == {
        "method": "pkg.T/N", "parentId": 3, "timeoutMs": 4294967295, "metadata": {"k": "1"}, "message": {}}
    w._close_outbound(out)


# --------------------------------------------------------------------------
# Quick calls run inline on the reading thread. The timing threshold is raised to
# 0.25 s, so that which calls count as quick does not depend on the machine's pace, and
# the watchdog is off (60 s) unless a test is about it.

WHERE = "test.v1.Echo/Where"
INLINE = {"TEST_INLINE_BELOW": "0.25", "TEST_WATCH_INTERVAL": "60"}


def where_calls(w, first_id, n):
    """`n` Where calls one after another: the names of the threads they ran on."""
    names = []
    for call_id in range(first_id, first_id + n):
        frames = w.call(call_id, WHERE, {})
        assert frames[-1] == {"id": call_id, "end": {}}, frames
        names.append(frames[0]["message"]["thread"])
    return names


def warm_up(w, first_id):
    """Three quick calls: from then on the method runs inline (once a call ran inline, the
    thread that ran it books it before it reads the next frame). The next free call id."""
    where_calls(w, first_id, 3)
    return first_id + 3


def slow_then_quick(w):
    """A call that sleeps 0.3 s and, right behind it, a quick one: the order of their replies."""
    call_id = warm_up(w, 1)
    w.start(call_id, WHERE, {"sleep": 0.3})
    w.start(call_id + 1, WHERE, {})
    first = w.recv()
    w.collect(call_id)
    w.collect(call_id + 1)
    return first["id"] - call_id  # 0: the slow call answered first


def test_quick_calls_one_at_a_time_run_on_the_thread_that_read_them(spawn):
    w = spawn(**INLINE)
    names = where_calls(w, warm_up(w, 1), 6)
    assert len(set(names)) == 1, names


def test_a_call_run_inline_holds_reading_until_it_returns(spawn):
    assert slow_then_quick(spawn(**INLINE)) == 0


def test_without_inline_a_call_is_read_while_the_one_before_runs(spawn):
    assert slow_then_quick(spawn(TEST_INLINE_BELOW="0", TEST_WATCH_INTERVAL="60")) == 1


def test_a_quick_method_hands_reading_over_before_an_outbound_call(spawn):
    w = spawn(**INLINE)
    call_id = warm_up(w, 1)
    w.start(call_id, WHERE, {"method": GET_USER, "message": {"id": "u1"}})
    out = w.recv_outbound()  # inline, nobody would read the answer: the handler hands reading over
    answer(w, out["callId"], {"message": {"id": "u1"}}, {"end": {}})
    frames = w.collect(call_id)
    assert frames[0]["message"]["reply"] == {"id": "u1"}, frames
    assert frames[1:] == [{"id": call_id, "end": {}}]
    # a method that needed frames runs the usual way from then on, even after quick calls: the
    # call behind a slow one is read at once
    assert len(w.call(call_id + 1, WHERE, {})) == 2
    w.start(call_id + 2, WHERE, {"sleep": 0.3})
    w.start(call_id + 3, WHERE, {})
    assert w.recv()["id"] == call_id + 3


def test_a_quick_method_hands_reading_over_before_waiting_for_its_cancellation(spawn):
    w = spawn(**INLINE)
    call_id = warm_up(w, 1)
    w.start(call_id, WHERE, {"waitCancel": 30})
    time.sleep(0.1)  # the handler is waiting (a cancel sent earlier would also be read)
    w.send({"id": call_id, "cancel": {"reason": "deadline_exceeded"}})
    # read at once (not after the handler's 30 s): the CANCELLED answer, then nothing
    assert w.collect(call_id, timeout=5) == [
        {"id": call_id, "error": {"code": "CANCELLED", "message": "call cancelled: deadline_exceeded"}}]


def test_a_slow_inline_call_lets_other_calls_run_after_the_watchdog_interval(spawn):
    w = spawn(TEST_INLINE_BELOW="0.25", TEST_WATCH_INTERVAL="0.2")
    call_id = warm_up(w, 1)
    w.start(call_id, WHERE, {"sleep": 2.0})  # inline, and it blocks nothing for long
    w.start(call_id + 1, WHERE, {})
    assert w.recv(timeout=5)["id"] == call_id + 1
    assert w.recv_for(call_id + 1) == {"id": call_id + 1, "end": {}}
    assert len(w.collect(call_id)) == 2
    # that call was slow: its method runs the usual way next time, and quick calls make it
    # inline again
    names = where_calls(w, warm_up(w, call_id + 2), 4)
    assert len(set(names)) == 1, names


def wait_until(condition):
    """Polls `condition` every 10 ms for up to TIMEOUT (the caller asserts it afterwards)."""
    deadline = time.monotonic() + TIMEOUT
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_an_idle_watchdog_sleeps_until_the_next_inline_call(monkeypatch):
    monkeypatch.setattr(exemesh_worker, "WATCH_INTERVAL", 0.05)
    w = Worker(max_in_flight=2, inline_below=0.25)

    @w.unary("pkg.S/M")
    def m(req, ctx):
        time.sleep(req.get("sleep", 0))
        return {}

    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    feed = os.fdopen(w_in, "wb", buffering=0)
    lines = queue.Queue()
    replies = os.fdopen(r_out, "rb")

    def read_replies():
        for line in replies:
            lines.put(json.loads(line))

    reader = threading.Thread(target=read_replies, daemon=True)
    reader.start()
    out = os.fdopen(w_out, "wb")
    runner = threading.Thread(target=w.run, daemon=True, kwargs={"input": os.fdopen(r_in, "rb"), "output": out})
    runner.start()

    def call(call_id, message):
        feed.write(b'{"id":%d,"start":{"method":"pkg.S/M","kind":"unary","message":%s,"halfClose":true}}\n'
                   % (call_id, json.dumps(message).encode()))

    def reply():
        return lines.get(timeout=TIMEOUT)

    assert "ready" in reply()
    call_id = 1
    while not w._readers._inlined:  # until a call ran inline, which starts the watchdog
        assert call_id <= 20, "no call ran inline"
        call(call_id, {})
        assert [reply(), reply()] == [{"id": call_id, "message": {}}, {"id": call_id, "end": {}}]
        call_id += 1
    readers = w._readers
    wait_until(lambda: readers._watch_parked)
    assert readers._watch_parked, "the watchdog still checks every interval while nothing runs inline"
    # the next call runs inline and wakes it: that call is slow, so the one behind it is read and
    # answered first
    inlined = readers._inlined
    call(call_id, {"sleep": 1.0})
    call(call_id + 1, {})
    assert reply() == {"id": call_id + 1, "message": {}}
    assert readers._inlined == inlined + 1
    assert [reply(), reply(), reply()] == [
        {"id": call_id + 1, "end": {}}, {"id": call_id, "message": {}}, {"id": call_id, "end": {}}]
    wait_until(lambda: readers._watch_parked)
    assert readers._watch_parked
    feed.close()  # end-of-file: run() returns, and the sleeping watchdog ends too
    runner.join(TIMEOUT)
    assert not runner.is_alive()
    watchdog_alive = lambda: any(t.name == "exemesh-worker-watchdog" for t in threading.enumerate())  # noqa: E731
    wait_until(lambda: not watchdog_alive())
    assert not watchdog_alive()
    out.close()
    reader.join(TIMEOUT)
    replies.close()
