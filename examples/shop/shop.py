#!/usr/bin/env python3
"""shop.py: a small shop "monolith", the worked example of exemesh.

One program, two faces:

* a plain command-line tool, as such programs usually start out::

      shop.py product get --id p1
      shop.py product list [--category electronics]
      shop.py user get --id u1
      shop.py order place --user u1 --line p1:2 --line p3:1
      shop.py order get --id o-3f2a9c0b1d7e

  Results are printed as proto3 JSON (the messages of proto/shop/v1/*.proto),
  errors as a message on stderr with a sysexits-style exit code that exemesh maps
  to a gRPC status (66 = NOT_FOUND, 65 = INVALID_ARGUMENT, 109 =
  FAILED_PRECONDITION, argparse's 2 = INVALID_ARGUMENT);

* ``shop.py worker``: a long-lived exemesh worker (docs/worker-protocol.md)
  serving shop.v1.UserService, shop.v1.OrderService and shop.v1.ProductService
  over stdin/stdout with the exemesh_worker helper. In this mode PlaceOrder
  (and ImportOrders) check the user and the products by calling
  shop.v1.UserService/GetUser and shop.v1.ProductService/GetProduct through
  the mesh (``ctx.call``) instead of reading the tables below, so the order
  service needs the other two services and a registry (``exemesh up
  mesh.toml``). The CLI reads the tables directly: there is no mesh then.

Orders live in a SQLite file, ``$SHOP_DB`` (default: shop-orders.db in the
system's temporary directory), shared by every process. Only the standard
library is used (plus sdk/python/exemesh_worker for the worker mode).
"""

import os
import sys
import threading

# Exit codes (sysexits.h, and 100 + gRPC code) that exemesh maps to statuses.
EXIT_CODES = {
    "INVALID_ARGUMENT": 65,  # EX_DATAERR
    "NOT_FOUND": 66,  # EX_NOINPUT
    "FAILED_PRECONDITION": 109,  # 100 + 9
}

# --------------------------------------------------------------------------
# The catalogue and the users: fixed data. Keys are proto3 JSON names.

PRODUCTS = [
    {"id": "p1", "name": "Mechanical keyboard", "category": "electronics", "priceCents": "8999",
     "stock": 12, "tags": ["keyboard", "usb"]},
    {"id": "p2", "name": "Wireless mouse", "category": "electronics", "priceCents": "2499",
     "stock": 40, "tags": ["mouse", "bluetooth"]},
    {"id": "p3", "name": "USB-C cable (1 m)", "category": "electronics", "priceCents": "999",
     "stock": 200, "tags": ["usb", "cable"]},
    {"id": "p4", "name": "Espresso beans (1 kg)", "category": "grocery", "priceCents": "2450",
     "stock": 30, "tags": ["coffee", "organic"]},
    {"id": "p5", "name": "Green tea (100 g)", "category": "grocery", "priceCents": "799",
     "stock": 0, "tags": ["tea"]},
    {"id": "p6", "name": "Notebook A5, dotted", "category": "stationery", "priceCents": "450",
     "stock": 150, "tags": ["paper"]},
]
PRODUCTS_BY_ID = {p["id"]: p for p in PRODUCTS}

USERS = {
    "u1": {"id": "u1", "name": "Ada Lovelace", "email": "ada@example.com", "tier": "TIER_GOLD"},
    "u2": {"id": "u2", "name": "Alan Turing", "email": "alan@example.com", "tier": "TIER_STANDARD"},
    "u3": {"id": "u3", "name": "Grace Hopper", "email": "grace@example.com", "tier": "TIER_GOLD"},
    "u4": {"id": "u4", "name": "Edsger Dijkstra", "email": "edsger@example.com"},  # tier unspecified
}


class ShopError(Exception):
    """A business error with a gRPC status name."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------
# Business logic, shared by the CLI and the worker.


def get_product(product_id):
    product = PRODUCTS_BY_ID.get(product_id)
    if product is None:
        raise ShopError("NOT_FOUND", "no product %r" % product_id)
    return product


def list_products(category=""):
    return [p for p in PRODUCTS if not category or p["category"] == category]


def get_user(user_id):
    user = USERS.get(user_id)
    if user is None:
        raise ShopError("NOT_FOUND", "no user %r" % user_id)
    return user


def _field(message, camel, snake, default):
    """A field of a proto3 JSON request (lowerCamelCase, or the original name)."""
    value = message.get(camel)
    if value is None:
        value = message.get(snake, default)
    return value


def place_order(request, store=None, lookup_user=None, lookup_product=None):
    """Validate a PlaceOrderRequest (proto3 JSON dict) and store the order.

    ``lookup_user(user_id)`` returns the user or raises ShopError NOT_FOUND;
    ``lookup_product(product_id)`` returns the product (proto3 JSON: fields with
    default values may be absent) or None when there is no such product. They
    default to the local tables (the CLI); the worker passes lookups that call
    UserService and ProductService through the mesh. The request is checked
    first, so a malformed order costs no lookup.
    """
    user_id = _field(request, "userId", "user_id", "")
    if not user_id:
        raise ShopError("INVALID_ARGUMENT", "user_id is required")
    raw_lines = request.get("lines") or []
    if not raw_lines:
        raise ShopError("INVALID_ARGUMENT", "an order needs at least one line")
    wanted = []
    for n, line in enumerate(raw_lines, 1):
        product_id = _field(line, "productId", "product_id", "")
        try:
            quantity = int(line.get("quantity", 0))
        except (TypeError, ValueError):
            raise ShopError("INVALID_ARGUMENT", "line %d: quantity %r is not an integer"
                            % (n, line.get("quantity")))
        if quantity <= 0:
            raise ShopError("INVALID_ARGUMENT", "line %d: quantity must be > 0, got %d" % (n, quantity))
        wanted.append((n, product_id, quantity))

    (lookup_user or get_user)(user_id)
    lookup_product = lookup_product or PRODUCTS_BY_ID.get
    products = {}  # each product is looked up once per order
    lines = []
    total = 0
    for n, product_id, quantity in wanted:
        if product_id not in products:
            products[product_id] = lookup_product(product_id)
        product = products[product_id]
        if product is None:
            raise ShopError("FAILED_PRECONDITION", "line %d: product %r is not in the catalogue" % (n, product_id))
        stock = int(product.get("stock") or 0)
        if quantity > stock:
            raise ShopError("FAILED_PRECONDITION", "line %d: only %d of %s in stock, %d ordered"
                            % (n, stock, product_id, quantity))
        total += int(product.get("priceCents") or 0) * quantity
        lines.append({"productId": product_id, "quantity": quantity})
    import uuid

    order = {
        "id": "o-" + uuid.uuid4().hex[:12],
        "userId": user_id,
        "lines": lines,
        "totalCents": str(total),
        "status": "ORDER_STATUS_PLACED",
    }
    (store or OrderStore.for_thread()).insert(order)
    return order


def get_order(order_id, store=None):
    order = (store or OrderStore.for_thread()).get(order_id) if order_id else None
    if order is None:
        raise ShopError("NOT_FOUND", "no order %r" % order_id)
    return order


# --------------------------------------------------------------------------
# Order storage: SQLite in WAL mode, one connection per thread, shared by
# every process that uses the same $SHOP_DB.


def db_path():
    path = os.environ.get("SHOP_DB")
    if path:
        return path
    import tempfile

    return os.path.join(tempfile.gettempdir(), "shop-orders.db")


class OrderStore:
    _local = threading.local()

    def __init__(self, path=None):
        import sqlite3

        self._sqlite3 = sqlite3
        self.path = path or db_path()
        # autocommit mode (isolation_level=None); busy timeout so that concurrent
        # writers in other processes wait instead of failing with "database is locked".
        self.conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        self._retry(self._init_schema)

    @classmethod
    def for_thread(cls):
        """This thread's store (connections are not shared between threads)."""
        store = getattr(cls._local, "store", None)
        if store is None or store.path != db_path():
            store = cls._local.store = cls()
        return store

    def _init_schema(self):
        self.conn.execute("PRAGMA busy_timeout = 10000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS orders ("
            " id TEXT PRIMARY KEY,"
            " user_id TEXT NOT NULL,"
            " lines TEXT NOT NULL,"
            " total_cents INTEGER NOT NULL,"
            " status TEXT NOT NULL,"
            " created_at REAL NOT NULL)")

    def _retry(self, action, attempts=50):
        # The busy timeout covers almost everything; switching a brand-new file to
        # WAL while another process does the same can still report "locked".
        import time

        for attempt in range(attempts):
            try:
                return action()
            except self._sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or attempt == attempts - 1:
                    raise
                time.sleep(0.02 * (attempt + 1))

    def insert(self, order):
        import json
        import time

        self._retry(lambda: self.conn.execute(
            "INSERT INTO orders (id, user_id, lines, total_cents, status, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (order["id"], order["userId"], json.dumps(order["lines"], separators=(",", ":")),
             int(order["totalCents"]), order["status"], time.time())))

    def get(self, order_id):
        import json

        row = self._retry(lambda: self.conn.execute(
            "SELECT id, user_id, lines, total_cents, status FROM orders WHERE id = ?", (order_id,)).fetchone())
        if row is None:
            return None
        return {"id": row[0], "userId": row[1], "lines": json.loads(row[2]),
                "totalCents": str(row[3]), "status": row[4]}


# --------------------------------------------------------------------------
# Worker mode


def _load_worker_sdk():
    """exemesh_worker from this checkout (../../sdk/python), else an installed one."""
    here = os.path.dirname(os.path.abspath(__file__))
    vendored = os.path.normpath(os.path.join(here, "..", "..", "sdk", "python"))
    if os.path.isdir(os.path.join(vendored, "exemesh_worker")) and vendored not in sys.path:
        sys.path.insert(0, vendored)
    import exemesh_worker

    return exemesh_worker


GET_USER = "shop.v1.UserService/GetUser"
GET_PRODUCT = "shop.v1.ProductService/GetProduct"


def _setup_tracing():
    """Optional: with the OpenTelemetry SDK installed (pip install opentelemetry-sdk
    opentelemetry-exporter-otlp-proto-grpc) and OTEL_EXPORTER_OTLP_ENDPOINT set, the worker's own
    spans are exported and nest under exemesh's execution span (ctx.otel_context()). Returns a
    tracer, or None when tracing is off."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    try:
        import atexit
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": "shop.py"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    atexit.register(provider.shutdown)
    return provider.get_tracer("shop.py")


def build_worker(max_in_flight=8):
    """The exemesh worker serving UserService, OrderService and ProductService."""
    sdk = _load_worker_sdk()
    tracer = _setup_tracing()

    def traced(name, ctx):
        """A span of this process under exemesh's execution span, when tracing is on."""
        if tracer is None:
            import contextlib
            return contextlib.nullcontext()
        return tracer.start_as_current_span(name, context=ctx.otel_context())

    Error = sdk.Error
    worker = sdk.Worker(max_in_flight=max_in_flight, sdk="shop.py/1.0 (" + sdk.SDK_NAME + ")")

    def status(exc):
        return Error(exc.code, exc.message)

    def by_id(lookup, req):
        """One record by the request's id; a business error becomes its gRPC status."""
        try:
            return lookup(req.get("id", ""))
        except ShopError as exc:
            raise status(exc)

    def through_the_mesh(ctx):
        """place_order's lookups for the call ``ctx``: UserService and
        ProductService, called through exemesh (with ctx's deadline). NOT_FOUND
        becomes the business error place_order expects; any other status (the
        service is down, the deadline passed, ...) fails the order with it."""

        def lookup_user(user_id):
            try:
                return ctx.call(GET_USER, {"id": user_id})
            except Error as exc:
                if exc.code == "NOT_FOUND":
                    raise ShopError("NOT_FOUND", "no user %r" % user_id)
                raise Error(exc.code, "%s: %s" % (GET_USER, exc.message))

        def lookup_product(product_id):
            try:
                return ctx.call(GET_PRODUCT, {"id": product_id})
            except Error as exc:
                if exc.code == "NOT_FOUND":
                    return None  # place_order: FAILED_PRECONDITION, not in the catalogue
                raise Error(exc.code, "%s: %s" % (GET_PRODUCT, exc.message))

        return {"lookup_user": lookup_user, "lookup_product": lookup_product}

    @worker.unary("shop.v1.UserService/GetUser")
    def _get_user(req, ctx):
        with traced("shop.get_user", ctx):
            return by_id(get_user, req)

    @worker.unary("shop.v1.OrderService/PlaceOrder")
    def _place_order(req, ctx):
        with traced("shop.place_order", ctx):
            try:
                order = place_order(req, **through_the_mesh(ctx))
            except ShopError as exc:
                raise status(exc)
        ctx.log("placed %s for %s (%s cents)" % (order["id"], order["userId"], order["totalCents"]))
        return order

    @worker.unary("shop.v1.OrderService/GetOrder")
    def _get_order(req, ctx):
        return by_id(get_order, req)

    @worker.client_streaming("shop.v1.OrderService/ImportOrders")
    def _import_orders(requests, ctx):
        # A business error rejects one order; a failed lookup (UserService or ProductService
        # unavailable, deadline) fails the whole import with its status.
        lookups = through_the_mesh(ctx)
        accepted, rejected, order_ids = 0, 0, []
        for req in requests:
            try:
                order_ids.append(place_order(req, **lookups)["id"])
                accepted += 1
            except ShopError as exc:
                rejected += 1
                ctx.log("rejected an imported order: %s: %s" % (exc.code, exc.message))
        return {"accepted": accepted, "rejected": rejected, "orderIds": order_ids}

    @worker.bidi_streaming("shop.v1.OrderService/WatchOrders")
    def _watch_orders(requests, ctx):
        for req in requests:
            order = OrderStore.for_thread().get(req.get("id", ""))
            if order is not None:
                yield order

    @worker.unary("shop.v1.ProductService/GetProduct")
    def _get_product(req, ctx):
        return by_id(get_product, req)

    @worker.server_streaming("shop.v1.ProductService/ListProducts")
    def _list_products(req, ctx):
        for product in list_products(req.get("category", "")):
            if ctx.cancelled:
                return
            yield product

    return worker


# --------------------------------------------------------------------------
# Command line


def _print_json(message):
    import json

    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")


def _parse_line(text):
    product_id, sep, quantity = text.rpartition(":")
    if not sep or not product_id:
        raise ShopError("INVALID_ARGUMENT", "--line %r: expected PRODUCT:QUANTITY, e.g. p1:2" % text)
    try:
        return {"productId": product_id, "quantity": int(quantity)}
    except ValueError:
        raise ShopError("INVALID_ARGUMENT", "--line %r: quantity %r is not an integer" % (text, quantity))


def _parser():
    import argparse

    parser = argparse.ArgumentParser(prog="shop.py", description="A small shop, as a CLI and as an exemesh worker.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    product = commands.add_parser("product", help="the catalogue").add_subparsers(dest="action", metavar="ACTION")
    product.required = True
    p = product.add_parser("get", help="print one product")
    p.add_argument("--id", required=True)
    p = product.add_parser("list", help="print products, one per line")
    p.add_argument("--category", default="", help="only this category (empty: all)")

    user = commands.add_parser("user", help="customers").add_subparsers(dest="action", metavar="ACTION")
    user.required = True
    p = user.add_parser("get", help="print one user")
    p.add_argument("--id", required=True)

    order = commands.add_parser("order", help="orders").add_subparsers(dest="action", metavar="ACTION")
    order.required = True
    p = order.add_parser("place", help="place an order and print it")
    p.add_argument("--user", required=True, help="user id")
    p.add_argument("--line", action="append", default=[], metavar="PRODUCT:QTY", help="an order line (repeatable)")
    p = order.add_parser("get", help="print one order")
    p.add_argument("--id", required=True)

    p = commands.add_parser("worker", help="serve the exemesh worker protocol on stdin/stdout")
    p.add_argument("--max-in-flight", type=int, default=8, help="concurrent calls per process (default 8)")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.command == "worker":
            build_worker(args.max_in_flight).run()
        elif args.command == "product" and args.action == "get":
            _print_json(get_product(args.id))
        elif args.command == "product" and args.action == "list":
            for product in list_products(args.category):
                _print_json(product)
        elif args.command == "user":
            _print_json(get_user(args.id))
        elif args.command == "order" and args.action == "place":
            _print_json(place_order({"userId": args.user, "lines": [_parse_line(t) for t in args.line]}))
        elif args.command == "order" and args.action == "get":
            _print_json(get_order(args.id))
    except ShopError as exc:
        sys.stderr.write(exc.message + "\n")
        return EXIT_CODES.get(exc.code, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
