"""Third-party clients against the real binary: Python grpcio stubs and grpcurl (reflection only)."""
import json
import subprocess

import grpc
import pytest

from conftest import FIXTURES, SHOP, grpcurl_bin, instantiate


def test_shop_products_wrap_the_unmodified_cli(stubs, serve):
    from shop.v1 import product_pb2, product_pb2_grpc

    server = serve(SHOP / "product.toml")
    products = product_pb2_grpc.ProductServiceStub(server.channel)
    p1 = products.GetProduct(product_pb2.GetProductRequest(id="p1"), timeout=10)
    assert (p1.id, p1.name, p1.price_cents, p1.stock) == ("p1", "Mechanical keyboard", 8999, 12)
    assert list(p1.tags) == ["keyboard", "usb"]
    with pytest.raises(grpc.RpcError) as err:
        products.GetProduct(product_pb2.GetProductRequest(id="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = list(products.ListProducts(product_pb2.ListProductsRequest(category="grocery"), timeout=10))
    assert [p.id for p in listed] == ["p4", "p5"]
    assert len(list(products.ListProducts(product_pb2.ListProductsRequest(), timeout=10))) == 6


def test_shop_users_and_orders_in_worker_mode(stubs, serve, shop_env, registry):
    from shop.v1 import order_pb2, order_pb2_grpc, user_pb2, user_pb2_grpc

    # PlaceOrder calls UserService and ProductService through the mesh: all three join one registry.
    mesh = ("--discovery", registry)
    serve(SHOP / "product.toml", shop_env, mesh)
    users = user_pb2_grpc.UserServiceStub(serve(SHOP / "user.toml", shop_env, mesh).channel)
    ada = users.GetUser(user_pb2.GetUserRequest(id="u1"), timeout=10)
    assert (ada.name, ada.tier) == ("Ada Lovelace", user_pb2.TIER_GOLD)
    with pytest.raises(grpc.RpcError) as err:
        users.GetUser(user_pb2.GetUserRequest(id="u404"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    orders = order_pb2_grpc.OrderServiceStub(serve(SHOP / "order.toml", shop_env, mesh).channel)
    line = order_pb2.OrderLine(product_id="p1", quantity=2)
    placed = orders.PlaceOrder(order_pb2.PlaceOrderRequest(user_id="u1", lines=[line]), timeout=10)
    assert placed.total_cents == 2 * 8999 and placed.status == order_pb2.ORDER_STATUS_PLACED
    # Either worker of the pool can read it: the order is shared through SQLite.
    for _ in range(4):
        assert orders.GetOrder(order_pb2.GetOrderRequest(id=placed.id), timeout=10).id == placed.id
    with pytest.raises(grpc.RpcError) as err:
        orders.PlaceOrder(order_pb2.PlaceOrderRequest(user_id="u1", lines=[order_pb2.OrderLine(product_id="p1", quantity=0)]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    batch = [order_pb2.PlaceOrderRequest(user_id="u2", lines=[order_pb2.OrderLine(product_id="p3", quantity=1)]),
             order_pb2.PlaceOrderRequest(user_id="nobody", lines=[line])]
    summary = orders.ImportOrders(iter(batch), timeout=10)
    assert (summary.accepted, summary.rejected, len(summary.order_ids)) == (1, 1, 1)

    watched = list(orders.WatchOrders(iter([order_pb2.GetOrderRequest(id=placed.id), order_pb2.GetOrderRequest(id="o-missing"),
                                            order_pb2.GetOrderRequest(id=summary.order_ids[0])]), timeout=10))
    assert [o.id for o in watched] == [placed.id, summary.order_ids[0]]


@pytest.mark.parametrize("manifest", ["spawn.toml", "worker.toml"])
def test_every_rpc_kind_with_grpcio(stubs, serve, tmp_path, manifest):
    import echo_pb2
    import echo_pb2_grpc

    server = serve(instantiate(FIXTURES / manifest, tmp_path, manifest))
    echo = echo_pb2_grpc.EchoStub(server.channel)
    reply = echo.Unary(echo_pb2.EchoRequest(text="hi", big=-(2 ** 62)), timeout=10)
    assert (reply.text, reply.big) == ("hi", -(2 ** 62))
    assert [r.index for r in echo.Expand(echo_pb2.EchoRequest(text="s", count=3), timeout=10)] == [0, 1, 2]
    got = echo.Collect(iter([echo_pb2.EchoRequest(text=t) for t in "abc"]), timeout=10)
    assert (got.text, got.index) == ("a,b,c", 3)
    assert [r.text for r in echo.Chat(iter([echo_pb2.EchoRequest(text=t) for t in ["x", "y"]]), timeout=10)] == ["X", "Y"]
    with pytest.raises(grpc.RpcError) as err:
        echo.Unary(echo_pb2.EchoRequest(mode="sleep", sleep_ms=5000), timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # And it keeps serving afterwards.
    assert echo.Unary(echo_pb2.EchoRequest(text="again"), timeout=10).text == "again"


def json_documents(text):
    decoder, docs, i = json.JSONDecoder(), [], 0
    while i < len(text.rstrip()):
        while text[i].isspace():
            i += 1
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)
    return docs


def grpcurl(*args):
    out = subprocess.run([grpcurl_bin(), "-plaintext", *args], capture_output=True, text=True, timeout=30)
    return out.returncode, out.stdout, out.stderr


def test_grpcurl_lists_describes_and_calls_through_reflection(serve):
    server = serve(SHOP / "product.toml")
    code, out, err = grpcurl(server.addr, "list")
    assert code == 0, err
    assert set(out.split()) >= {"shop.v1.ProductService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}

    code, out, err = grpcurl(server.addr, "describe", "shop.v1.ProductService")
    assert code == 0, err
    assert "rpc GetProduct ( .shop.v1.GetProductRequest ) returns ( .shop.v1.Product );" in out
    assert "rpc ListProducts ( .shop.v1.ListProductsRequest ) returns ( stream .shop.v1.Product );" in out

    code, out, err = grpcurl("-d", '{"id": "p2"}', server.addr, "shop.v1.ProductService/GetProduct")
    assert code == 0, err
    assert json.loads(out)["name"] == "Wireless mouse"

    code, out, err = grpcurl("-d", '{"category": "electronics"}', server.addr, "shop.v1.ProductService/ListProducts")
    assert code == 0, err
    assert [doc["id"] for doc in json_documents(out)] == ["p1", "p2", "p3"]

    code, out, err = grpcurl("-d", '{"id": "p404"}', server.addr, "shop.v1.ProductService/GetProduct")
    assert code != 0 and "NotFound" in err, (code, err)

    code, out, err = grpcurl(server.addr, "grpc.health.v1.Health/Check")
    assert code == 0 and json.loads(out) == {"status": "SERVING"}, (out, err)
