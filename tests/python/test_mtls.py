"""Third-party clients against an mTLS server, following docs/security.md: Python grpcio with
ssl_channel_credentials and grpcurl with -cacert/-cert/-key."""
import json
import subprocess

import grpc
import pytest

from conftest import SHOP, certs, grpcurl_bin, secure_channel


@pytest.fixture
def mesh_ids(tmp_path):
    """A mesh CA with identities for ProductService (the server) and an operator (the client)."""
    ca = tmp_path / "ca"
    certs("init", "--dir", ca)
    certs("issue", "shop.v1.ProductService", "--ca", ca, "--out", tmp_path / "product")
    certs("issue", "exemesh-cli", "--ca", ca, "--out", tmp_path / "operator")
    return tmp_path


def test_grpcio_calls_with_a_mesh_certificate_and_is_refused_without(stubs, serve, mesh_ids):
    from shop.v1 import product_pb2, product_pb2_grpc

    server = serve(SHOP / "product.toml", args=("--tls-dir", str(mesh_ids / "product")),
                   client_tls=mesh_ids / "operator")
    p2 = product_pb2_grpc.ProductServiceStub(server.channel).GetProduct(
        product_pb2.GetProductRequest(id="p2"), timeout=10)
    assert p2.name == "Wireless mouse"

    for channel in (grpc.insecure_channel(server.addr),
                    secure_channel(server.addr, mesh_ids / "operator", with_cert=False)):
        with pytest.raises(grpc.RpcError) as err:
            product_pb2_grpc.ProductServiceStub(channel).GetProduct(
                product_pb2.GetProductRequest(id="p2"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()


def test_grpcurl_with_the_documented_flags(serve, mesh_ids):
    op = mesh_ids / "operator"
    server = serve(SHOP / "product.toml", args=("--tls-dir", str(mesh_ids / "product")), client_tls=op)
    flags = ["-cacert", str(op / "ca.pem"), "-cert", str(op / "cert.pem"), "-key", str(op / "key.pem")]

    def grpcurl(*args):
        out = subprocess.run([grpcurl_bin(), *args], capture_output=True, text=True, timeout=30)
        return out.returncode, out.stdout, out.stderr

    code, out, err = grpcurl(*flags, server.addr, "list")
    assert code == 0, err
    assert "shop.v1.ProductService" in out.split()
    code, out, err = grpcurl(*flags, "-d", '{"id": "p1"}', server.addr, "shop.v1.ProductService/GetProduct")
    assert code == 0, err
    assert json.loads(out)["name"] == "Mechanical keyboard"

    # Without a client certificate the handshake fails.
    code, out, err = grpcurl("-cacert", str(op / "ca.pem"), server.addr, "list")
    assert code != 0
    # And plaintext does not speak to it at all.
    code, out, err = grpcurl("-plaintext", server.addr, "list")
    assert code != 0
