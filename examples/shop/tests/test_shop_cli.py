"""Tests of examples/shop/shop.py as a plain program: no exemesh needed.

The CLI is run as a subprocess; the worker mode is spoken to over pipes, the
tests playing exemesh, including its side of the worker's outbound calls
(PlaceOrder asks UserService and ProductService through the mesh).
"""

import json
import os
import queue
import subprocess
import sys
import threading

import pytest

SHOP_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOP = os.path.join(SHOP_DIR, "shop.py")
TIMEOUT = 15.0

sys.path.insert(0, SHOP_DIR)
import shop  # noqa: E402  (the data the fake mesh answers from; importing has no side effects)

P1 = {"id": "p1", "name": "Mechanical keyboard", "category": "electronics", "priceCents": "8999",
      "stock": 12, "tags": ["keyboard", "usb"]}


@pytest.fixture
def shop_env(tmp_path):
    env = dict(os.environ)
    env["SHOP_DB"] = str(tmp_path / "orders.db")
    return env


def run(env, *args):
    return subprocess.run([sys.executable, SHOP] + list(args), env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


# --------------------------------------------------------------------------
# CLI


def test_file_is_an_executable_python_script():
    with open(SHOP, "rb") as f:
        assert f.readline() == b"#!/usr/bin/env python3\n"
    assert os.access(SHOP, os.X_OK)


def test_product_get(shop_env):
    r = run(shop_env, "product", "get", "--id", "p1")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == json.dumps(P1, separators=(",", ":")) + "\n"


def test_product_get_unknown_exits_66(shop_env):
    r = run(shop_env, "product", "get", "--id", "p9")
    assert (r.returncode, r.stdout, r.stderr) == (66, "", "no product 'p9'\n")


def test_product_get_hostile_id_is_just_text(shop_env):
    r = run(shop_env, "product", "get", "--id", "; rm -rf / $(id)")
    assert r.returncode == 66
    assert r.stderr == "no product '; rm -rf / $(id)'\n"


def test_usage_error_exits_2(shop_env):
    assert run(shop_env, "product", "get").returncode == 2
    assert run(shop_env, "nope").returncode == 2


def test_product_list_all_with_empty_category(shop_env):
    # the manifest passes --category={category}: an unset category is "--category="
    r = run(shop_env, "product", "list", "--category=")
    assert r.returncode == 0
    products = [json.loads(line) for line in r.stdout.splitlines()]
    assert [p["id"] for p in products] == ["p1", "p2", "p3", "p4", "p5", "p6"]
    assert products[0] == P1
    assert len({p["category"] for p in products}) >= 2
    assert all(isinstance(p["priceCents"], str) for p in products)
    assert run(shop_env, "product", "list").stdout == r.stdout


def test_product_list_by_category(shop_env):
    r = run(shop_env, "product", "list", "--category=grocery")
    assert r.returncode == 0
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ["p4", "p5"]
    r = run(shop_env, "product", "list", "--category", "no-such-category")
    assert (r.returncode, r.stdout) == (0, "")


def test_user_get(shop_env):
    r = run(shop_env, "user", "get", "--id", "u1")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {"id": "u1", "name": "Ada Lovelace", "email": "ada@example.com",
                                    "tier": "TIER_GOLD"}
    assert run(shop_env, "user", "get", "--id", "u99").returncode == 66


def test_order_place_and_get(shop_env):
    r = run(shop_env, "order", "place", "--user", "u1", "--line", "p1:2", "--line", "p3:1")
    assert (r.returncode, r.stderr) == (0, "")
    order = json.loads(r.stdout)
    order_id = order.pop("id")
    assert order_id.startswith("o-") and len(order_id) == 14 and int(order_id[2:], 16) >= 0
    assert order == {"userId": "u1", "lines": [{"productId": "p1", "quantity": 2}, {"productId": "p3", "quantity": 1}],
                     "totalCents": str(2 * 8999 + 999), "status": "ORDER_STATUS_PLACED"}
    r = run(shop_env, "order", "get", "--id", order_id)
    assert r.returncode == 0
    assert json.loads(r.stdout) == dict(order, id=order_id)


@pytest.mark.parametrize("args,code,message", [
    (["--user", "u1", "--line", "p1:0"], 65, "line 1: quantity must be > 0, got 0\n"),
    (["--user", "u1", "--line", "p1"], 65, "--line 'p1': expected PRODUCT:QUANTITY, e.g. p1:2\n"),
    (["--user", "u1"], 65, "an order needs at least one line\n"),
    (["--user", "u1", "--line", "p42:1"], 109, "line 1: product 'p42' is not in the catalogue\n"),
    (["--user", "u1", "--line", "p5:1"], 109, "line 1: only 0 of p5 in stock, 1 ordered\n"),
    (["--user", "nobody", "--line", "p1:1"], 66, "no user 'nobody'\n"),
])
def test_order_place_errors(shop_env, args, code, message):
    r = run(shop_env, "order", "place", *args)
    assert (r.returncode, r.stdout, r.stderr) == (code, "", message)


def test_order_get_unknown(shop_env):
    r = run(shop_env, "order", "get", "--id", "o-000000000000")
    assert (r.returncode, r.stderr) == (66, "no order 'o-000000000000'\n")


def test_importing_shop_has_no_side_effects(shop_env):
    code = ("import sys; sys.path.insert(0, %r); import shop; "
            "assert 'exemesh_worker' not in sys.modules and 'sqlite3' not in sys.modules; "
            "print(len(shop.PRODUCTS), len(shop.USERS))" % SHOP_DIR)
    r = subprocess.run([sys.executable, "-c", code], env=shop_env, capture_output=True, text=True, timeout=TIMEOUT)
    assert (r.returncode, r.stdout, r.stderr) == (0, "6 4\n", "")


# --------------------------------------------------------------------------
# Worker mode, over pipes

GET_USER = "shop.v1.UserService/GetUser"
GET_PRODUCT = "shop.v1.ProductService/GetProduct"


def canonical(message):
    """A message as exemesh delivers it (proto3 JSON): fields with default values are absent."""
    return {k: v for k, v in message.items() if v not in (0, "", "0", [], None)}


def reply(message):
    return [{"message": canonical(message)}, {"end": {}}]


def error(code, message):
    return [{"error": {"code": code, "message": message}}]


def get_user(request):
    user = shop.USERS.get(request.get("id", ""))
    return reply(user) if user else error("NOT_FOUND", "no user %r" % request.get("id", ""))


def get_product(request):
    product = shop.PRODUCTS_BY_ID.get(request.get("id", ""))
    return reply(product) if product else error("NOT_FOUND", "no product %r" % request.get("id", ""))


class FakeMesh:
    """exemesh's side of the worker's outbound calls: answers each `call` frame from the
    handlers (method -> function(request) -> answer frames), by default UserService and
    ProductService over shop.py's own data, and records the calls and cancels."""

    def __init__(self, **overrides):
        self.handlers = {GET_USER: get_user, GET_PRODUCT: get_product}
        self.handlers.update({GET_USER if k == "user" else GET_PRODUCT: v for k, v in overrides.items()})
        self.calls = []  # (parentId, method, message) in arrival order
        self.cancels = []

    def answer(self, frame):
        if "cancel" in frame:
            self.cancels.append(frame["callId"])
            return []
        call = frame["call"]
        self.calls.append((call.get("parentId"), call["method"], call.get("message", {})))
        handler = self.handlers.get(call["method"])
        if handler is None:
            return error("UNIMPLEMENTED", "no service for %s" % call["method"])
        return handler(call.get("message", {}))

    def methods(self):
        return [(method, message) for _, method, message in self.calls]


class Worker:
    """`shop.py worker` over pipes. With a `mesh`, its outbound calls are answered by it (from
    the reader thread); without, their frames are delivered by recv() like any other."""

    def __init__(self, env, mesh=None):
        self.proc = subprocess.Popen([sys.executable, "-u", SHOP, "worker"], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.mesh = mesh
        self.frames = queue.Queue()
        self.pending = []
        self.stderr = []
        self.write_lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            frame = json.loads(line)
            if "callId" in frame and self.mesh is not None:
                for answer in self.mesh.answer(frame):
                    self.send(dict({"callId": frame["callId"]}, **answer))
                continue
            self.frames.put(frame)
        self.frames.put(None)

    def send(self, frame):
        with self.write_lock:
            self.proc.stdin.write(json.dumps(frame).encode() + b"\n")
            self.proc.stdin.flush()

    def recv(self):
        try:
            frame = self.frames.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail("no frame; stderr: %r" % b"".join(self.stderr))
        assert frame is not None, b"".join(self.stderr)
        return frame

    def collect(self, call_id):
        frames = [f for f in self.pending if f.get("id") == call_id]
        self.pending = [f for f in self.pending if f.get("id") != call_id]
        while not frames or not ({"end", "error"} & set(frames[-1])):
            frame = self.recv()
            (frames if frame.get("id") == call_id else self.pending).append(frame)
        return frames

    def start_unary(self, call_id, method, message):
        self.send({"id": call_id, "start": {"method": method, "kind": "unary", "message": message,
                                            "halfClose": True, "timeoutMs": 5000, "requestId": "t-%d" % call_id}})

    def unary(self, call_id, method, message):
        self.start_unary(call_id, method, message)
        return self.collect(call_id)

    def stop(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture
def spawn_worker(shop_env):
    workers = []

    def _spawn(mesh=None):
        w = Worker(shop_env, mesh)
        workers.append(w)
        ready = w.recv()
        assert ready["ready"]["maxInFlight"] == 8
        assert "shop.v1.UserService/GetUser" in ready["ready"]["methods"]
        return w

    yield _spawn
    for w in workers:
        assert w.stop() == 0


@pytest.fixture
def mesh():
    return FakeMesh()


@pytest.fixture
def worker(spawn_worker, mesh):
    return spawn_worker(mesh)


def test_worker_get_user(worker):
    assert worker.unary(1, "shop.v1.UserService/GetUser", {"id": "u2"}) == [
        {"id": 1, "message": {"id": "u2", "name": "Alan Turing", "email": "alan@example.com", "tier": "TIER_STANDARD"}},
        {"id": 1, "end": {}},
    ]
    assert worker.unary(2, "shop.v1.UserService/GetUser", {"id": "nobody"}) == [
        {"id": 2, "error": {"code": "NOT_FOUND", "message": "no user 'nobody'"}}]
    assert worker.unary(3, "shop.v1.UserService/GetUser", {}) == [
        {"id": 3, "error": {"code": "NOT_FOUND", "message": "no user ''"}}]
    assert worker.mesh.calls == []  # GetUser itself reads the table


def test_worker_place_order_calls_user_and_product_services_through_the_mesh(spawn_worker):
    w = spawn_worker()  # no automatic mesh: this test reads and answers each outbound call itself
    w.start_unary(7, "shop.v1.OrderService/PlaceOrder",
                  {"userId": "u3", "lines": [{"productId": "p4", "quantity": 2}, {"productId": "p1", "quantity": 1},
                                             {"productId": "p4", "quantity": 1}]})
    expected = [(GET_USER, {"id": "u3"}), (GET_PRODUCT, {"id": "p4"}), (GET_PRODUCT, {"id": "p1"})]
    for method, message in expected:  # one call at a time; p4 is looked up once
        frame = w.recv()
        call_id = frame["callId"]
        assert frame == {"callId": call_id, "call": {"method": method, "parentId": 7, "message": message}}
        for answer in (get_user if method == GET_USER else get_product)(message):
            w.send(dict({"callId": call_id}, **answer))
    [placed, end] = w.collect(7)
    assert end == {"id": 7, "end": {}}
    order = placed["message"]
    assert order["id"].startswith("o-")
    assert order == {"id": order["id"], "userId": "u3",
                     "lines": [{"productId": "p4", "quantity": 2}, {"productId": "p1", "quantity": 1},
                               {"productId": "p4", "quantity": 1}],
                     "totalCents": str(3 * 2450 + 8999), "status": "ORDER_STATUS_PLACED"}
    # GetOrder reads the order store: no outbound call
    assert w.unary(8, "shop.v1.OrderService/GetOrder", {"id": order["id"]}) == [
        {"id": 8, "message": order}, {"id": 8, "end": {}}]
    assert w.unary(9, "shop.v1.OrderService/GetOrder", {"id": "o-unknown"}) == [
        {"id": 9, "error": {"code": "NOT_FOUND", "message": "no order 'o-unknown'"}}]


def test_worker_place_order_uses_the_prices_and_stock_of_product_service(spawn_worker):
    # ProductService's answers win over shop.py's own table: the order service really asks it.
    def repriced(request):
        product = dict(shop.PRODUCTS_BY_ID[request["id"]], priceCents="100", stock=3)
        return reply(product)

    w = spawn_worker(FakeMesh(product=repriced))
    [placed, _] = w.unary(1, "shop.v1.OrderService/PlaceOrder",
                          {"userId": "u1", "lines": [{"productId": "p5", "quantity": 3}]})  # p5: 0 in the table
    assert placed["message"]["totalCents"] == "300"
    assert w.unary(2, "shop.v1.OrderService/PlaceOrder",
                   {"userId": "u1", "lines": [{"productId": "p1", "quantity": 4}]}) == [
        {"id": 2, "error": {"code": "FAILED_PRECONDITION", "message": "line 1: only 3 of p1 in stock, 4 ordered"}}]


def test_worker_place_order_user_not_found_by_user_service(spawn_worker):
    # u1 exists in shop.py's table, but UserService says NOT_FOUND: that is what counts.
    mesh = FakeMesh(user=lambda request: error("NOT_FOUND", "no user %r" % request["id"]))
    w = spawn_worker(mesh)
    assert w.unary(1, "shop.v1.OrderService/PlaceOrder",
                   {"userId": "u1", "lines": [{"productId": "p1", "quantity": 1}]}) == [
        {"id": 1, "error": {"code": "NOT_FOUND", "message": "no user 'u1'"}}]
    assert mesh.calls == [(1, GET_USER, {"id": "u1"})]  # no product lookup for an unknown user


def test_worker_place_order_errors(worker, mesh):
    cases = [
        ({"userId": "u1", "lines": [{"productId": "p1"}]}, "INVALID_ARGUMENT", "line 1: quantity must be > 0, got 0"),
        ({"userId": "u1", "lines": [{"productId": "p1", "quantity": -3}]}, "INVALID_ARGUMENT",
         "line 1: quantity must be > 0, got -3"),
        ({"userId": "u1"}, "INVALID_ARGUMENT", "an order needs at least one line"),
        ({"lines": [{"productId": "p1", "quantity": 1}]}, "INVALID_ARGUMENT", "user_id is required"),
        ({"userId": "u1", "lines": [{"productId": "p99", "quantity": 1}]}, "FAILED_PRECONDITION",
         "line 1: product 'p99' is not in the catalogue"),
        ({"userId": "u1", "lines": [{"productId": "p5", "quantity": 1}]}, "FAILED_PRECONDITION",
         "line 1: only 0 of p5 in stock, 1 ordered"),  # stock 0 is absent from ProductService's JSON
        ({"userId": "u7", "lines": [{"productId": "p1", "quantity": 1}]}, "NOT_FOUND", "no user 'u7'"),
    ]
    for n, (request, code, message) in enumerate(cases, 1):
        assert worker.unary(n, "shop.v1.OrderService/PlaceOrder", request) == [
            {"id": n, "error": {"code": code, "message": message}}], request
    # malformed requests are refused before any lookup
    assert [parent for parent, _, _ in mesh.calls] == [5, 5, 6, 6, 7]
    assert mesh.methods() == [(GET_USER, {"id": "u1"}), (GET_PRODUCT, {"id": "p99"}),
                              (GET_USER, {"id": "u1"}), (GET_PRODUCT, {"id": "p5"}), (GET_USER, {"id": "u7"})]


@pytest.mark.parametrize("side", ["user", "product"])
def test_worker_place_order_other_errors_propagate(spawn_worker, side):
    mesh = FakeMesh(**{side: lambda request: error("UNAVAILABLE", "no replica is serving")})
    w = spawn_worker(mesh)
    method = GET_USER if side == "user" else GET_PRODUCT
    assert w.unary(1, "shop.v1.OrderService/PlaceOrder",
                   {"userId": "u1", "lines": [{"productId": "p1", "quantity": 1}]}) == [
        {"id": 1, "error": {"code": "UNAVAILABLE", "message": "%s: no replica is serving" % method}}]


def test_orders_are_shared_between_cli_and_workers(shop_env, worker, spawn_worker):
    # an order placed by the CLI process is visible to the worker process (same SQLite file)
    r = run(shop_env, "order", "place", "--user", "u2", "--line", "p6:4")
    assert r.returncode == 0, r.stderr
    order = json.loads(r.stdout)
    assert worker.unary(1, "shop.v1.OrderService/GetOrder", {"id": order["id"]}) == [
        {"id": 1, "message": order}, {"id": 1, "end": {}}]
    # and the other way round, with a second worker process
    other = spawn_worker(FakeMesh())
    [placed, _] = other.unary(1, "shop.v1.OrderService/PlaceOrder",
                              {"user_id": "u1", "lines": [{"product_id": "p2", "quantity": 1}]})
    assert other.mesh.methods() == [(GET_USER, {"id": "u1"}), (GET_PRODUCT, {"id": "p2"})]
    r = run(shop_env, "order", "get", "--id", placed["message"]["id"])
    assert (r.returncode, json.loads(r.stdout)) == (0, placed["message"])


def test_worker_import_and_watch_orders(worker, mesh):
    worker.send({"id": 1, "start": {"method": "shop.v1.OrderService/ImportOrders", "kind": "client_streaming"}})
    worker.send({"id": 1, "message": {"userId": "u1", "lines": [{"productId": "p1", "quantity": 1}]}})
    worker.send({"id": 1, "message": {"userId": "u1", "lines": [{"productId": "p1", "quantity": 0}]}})
    worker.send({"id": 1, "message": {"userId": "u9", "lines": [{"productId": "p1", "quantity": 1}]}})
    worker.send({"id": 1, "message": {"userId": "u2", "lines": [{"productId": "p3", "quantity": 5}]}})
    worker.send({"id": 1, "halfClose": {}})
    [summary, end] = worker.collect(1)
    assert end == {"id": 1, "end": {}}
    ids = summary["message"]["orderIds"]
    assert summary["message"] == {"accepted": 2, "rejected": 2, "orderIds": ids} and len(set(ids)) == 2
    assert mesh.methods() == [(GET_USER, {"id": "u1"}), (GET_PRODUCT, {"id": "p1"}), (GET_USER, {"id": "u9"}),
                              (GET_USER, {"id": "u2"}), (GET_PRODUCT, {"id": "p3"})]
    assert {parent for parent, _, _ in mesh.calls} == {1}

    worker.send({"id": 2, "start": {"method": "shop.v1.OrderService/WatchOrders", "kind": "bidi_streaming"}})
    worker.send({"id": 2, "message": {"id": ids[1]}})
    first = worker.recv()
    assert first["id"] == 2 and first["message"]["id"] == ids[1] and first["message"]["totalCents"] == "4995"
    worker.send({"id": 2, "message": {"id": "o-unknown"}})  # skipped
    worker.send({"id": 2, "message": {"id": ids[0]}})
    second = worker.recv()
    assert second["id"] == 2 and second["message"]["id"] == ids[0]
    worker.send({"id": 2, "halfClose": {}})
    assert worker.recv() == {"id": 2, "end": {}}


def test_worker_import_fails_when_a_service_is_unavailable(spawn_worker):
    w = spawn_worker(FakeMesh(product=lambda request: error("UNAVAILABLE", "no replica is serving")))
    w.send({"id": 1, "start": {"method": "shop.v1.OrderService/ImportOrders", "kind": "client_streaming"}})
    w.send({"id": 1, "message": {"userId": "u1", "lines": [{"productId": "p1", "quantity": 1}]}})
    w.send({"id": 1, "halfClose": {}})
    assert w.collect(1) == [{"id": 1, "error": {"code": "UNAVAILABLE",
                                                "message": "%s: no replica is serving" % GET_PRODUCT}}]


def test_worker_exits_on_stdin_eof(shop_env):
    w = Worker(shop_env)
    assert "ready" in w.recv()
    assert w.stop() == 0
