//! The zero-trust mesh, as an attacker on the same machine sees it: the real binary serving over
//! mTLS, real certificates from `exemesh certs`, and clients with no, foreign, expired or
//! unauthorized certificates.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exemesh::mesh::tls::authority::{Authority, LeafRequest};
use exemesh::mesh::tls::material::IdentityDir;
use exemesh::pb::v1::registry_client::RegistryClient;
use exemesh::pb::v1::{DeregisterRequest, Instance, RegisterRequest};
use support::echo::{EchoClient, req};
use support::{Served, exemesh, http_get, manifest, marker};
use tonic::Code;
use tonic::transport::Endpoint;

const TRUST_DOMAIN: &str = "mesh.test";

/// Runs `exemesh certs ...` and checks that it succeeded.
fn certs(args: &[&str]) {
    let out = Command::new(exemesh())
        .arg("certs")
        .args(args)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA in `dir/name` and identity directories for `services` (each `dir/<service>`).
fn ca_with(dir: &Path, name: &str, services: &[&str]) -> PathBuf {
    let ca = dir.join(name);
    let ca_arg = ca.to_str().expect("utf-8");
    certs(&["init", "--dir", ca_arg, "--trust-domain", TRUST_DOMAIN]);
    for service in services {
        let out = dir.join(format!("{name}-{service}"));
        certs(&[
            "issue",
            service,
            "--ca",
            ca_arg,
            "--out",
            out.to_str().expect("utf-8"),
        ]);
    }
    ca
}

fn identity(dir: &Path, name: &str) -> Option<Arc<IdentityDir>> {
    Some(IdentityDir::load(&dir.join(name)).expect("identity"))
}

/// The worker-mode echo service with an `[authz]` policy: only OrderService may call Unary.
fn secured_manifest(dir: &Path) -> PathBuf {
    let template = format!(
        "{}\n[authz]\ndefault = [\"*\"]\n\n[authz.methods]\nUnary = [\"shop.v1.OrderService\"]\n",
        include_str!("fixtures/echo/worker.toml")
    );
    manifest(dir, "secured.toml", &template, &marker("tls"))
}

#[tokio::test]
async fn only_mesh_members_get_in_and_only_allowed_callers_reach_a_method() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    ca_with(
        d,
        "ca",
        &[
            "test.v1.Echo",
            "shop.v1.OrderService",
            "shop.v1.UserService",
        ],
    );
    // Same names, another CA: an impostor who knows the mesh's (public) CA certificate, so that
    // it trusts the server, and presents a certificate the mesh never issued.
    ca_with(d, "other", &["shop.v1.OrderService"]);
    let impostor = d.join("impostor");
    std::fs::create_dir_all(&impostor).expect("mkdir");
    std::fs::copy(d.join("ca/ca.pem"), impostor.join("ca.pem")).expect("copy");
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(
            d.join("other-shop.v1.OrderService").join(file),
            impostor.join(file),
        )
        .expect("copy");
    }
    // A certificate of the right CA that expired an hour ago.
    let ca = Authority::load(&d.join("ca")).expect("ca");
    ca.write_identity(
        &d.join("expired"),
        &LeafRequest {
            services: vec!["shop.v1.OrderService".into()],
            lifetime: Duration::from_secs(3600),
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: Some(time::OffsetDateTime::now_utc() - time::Duration::hours(2)),
        },
    )
    .expect("expired identity");

    let path = secured_manifest(d);
    let served = Served::start_tls(
        &path,
        &d.join("ca-test.v1.Echo"),
        &d.join("ca-shop.v1.OrderService"),
        &["--admin", "127.0.0.1:0"],
    )
    .await;

    // The allowed caller: served, and the worker learns who called.
    let order = EchoClient::new(served.channel_as(identity(d, "ca-shop.v1.OrderService")));
    let reply = order.unary(req("hi", "caller")).await.expect("allowed");
    assert_eq!(
        reply.text, "spiffe://mesh.test/svc/shop.v1.OrderService",
        "the caller identity reaches the executable"
    );

    // A member outside the allow list: PERMISSION_DENIED, with the reason; other methods are open.
    let user = EchoClient::new(served.channel_as(identity(d, "ca-shop.v1.UserService")));
    let status = user
        .unary(req("hi", ""))
        .await
        .expect_err("not on the list");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains(
            "spiffe://mesh.test/svc/shop.v1.UserService may not call test.v1.Echo/Unary (allowed: shop.v1.OrderService)"
        ),
        "{}",
        status.message()
    );
    user.unary_with("/test.v1.Echo/Legacy", req("open", ""), None)
        .await
        .expect("the default lets every member call Legacy");

    // Strangers never get past the handshake.
    for (who, channel) in [
        ("no certificate", served.channel_as(None)),
        ("another CA", served.channel_as(identity(d, "impostor"))),
        (
            "an expired certificate",
            served.channel_as(identity(d, "expired")),
        ),
    ] {
        let status = EchoClient::new(channel)
            .unary_with(
                "/test.v1.Echo/Legacy",
                req("x", ""),
                Some(Duration::from_secs(5)),
            )
            .await
            .expect_err(who);
        assert_ne!(status.code(), Code::Ok, "{who}");
    }
    let log = served.log();
    // The foreign CA has the same name as the mesh's: its signature is what gives it away.
    assert!(
        log.contains("invalid peer certificate: BadSignature"),
        "foreign CA refused:\n{log}"
    );
    assert!(
        log.contains("certificate expired"),
        "expired certificate refused:\n{log}"
    );
    assert!(
        log.contains("permission denied: caller spiffe://mesh.test/svc/shop.v1.UserService"),
        "denials are logged with the caller:\n{log}"
    );

    let admin = served.admin.clone().expect("admin address");
    let (_, metrics) = http_get(&admin, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("exemesh_authz_denied_total{")
                && l.contains("caller=\"spiffe://mesh.test/svc/shop.v1.UserService\"")
                && l.contains("decision=\"denied\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_rotated_ca_and_certificate_are_picked_up_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    ca_with(d, "old", &["test.v1.Echo", "shop.v1.OrderService"]);
    // The server's identity directory, rotated in place below.
    let server_dir = d.join("server");
    std::fs::create_dir_all(&server_dir).expect("mkdir");
    for file in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::copy(d.join("old-test.v1.Echo").join(file), server_dir.join(file)).expect("copy");
    }
    let path = manifest(
        d,
        "echo.toml",
        include_str!("fixtures/echo/worker.toml"),
        &marker("rotation"),
    );
    let served =
        Served::start_tls(&path, &server_dir, &d.join("old-shop.v1.OrderService"), &[]).await;
    let before = EchoClient::new(served.channel().await);
    before
        .unary_with("/test.v1.Echo/Legacy", req("before", ""), None)
        .await
        .expect("old identity");

    // Rotation: a new CA, and new certificates for the server (in place) and the client.
    let new_ca = ca_with(d, "new", &["shop.v1.OrderService"]);
    certs(&[
        "issue",
        "test.v1.Echo",
        "--ca",
        new_ca.to_str().expect("utf-8"),
        "--out",
        server_dir.to_str().expect("utf-8"),
    ]);
    let start = Instant::now();
    loop {
        let fresh = EchoClient::new(served.channel_as(identity(d, "new-shop.v1.OrderService")));
        match fresh
            .unary_with(
                "/test.v1.Echo/Legacy",
                req("after", ""),
                Some(Duration::from_secs(2)),
            )
            .await
        {
            Ok(reply) => {
                assert_eq!(reply.text, "after");
                break;
            }
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(20),
                "the server never picked up the new files: {e}\n{}",
                served.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served.log().contains("reloaded TLS certificates"));
    // The connection made before the rotation is still up and still serves.
    before
        .unary_with("/test.v1.Echo/Legacy", req("still", ""), None)
        .await
        .expect("an established connection survives rotation");
    // New connections with the retired CA's certificate are refused.
    let retired = EchoClient::new(served.channel_as(identity(d, "old-shop.v1.OrderService")));
    assert!(
        retired
            .unary_with(
                "/test.v1.Echo/Legacy",
                req("x", ""),
                Some(Duration::from_secs(5))
            )
            .await
            .is_err(),
        "the old CA is no longer trusted"
    );
}

/// `exemesh registry --tls-dir DIR` on an ephemeral port, killed on drop.
struct SecureRegistry {
    child: std::process::Child,
    addr: String,
}

impl Drop for SecureRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn secure_registry(tls: &Path) -> SecureRegistry {
    use std::io::BufRead;
    let mut child = Command::new(exemesh())
        .args(["registry", "--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(tls)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("registry");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    SecureRegistry { child, addr }
}

fn instance(id: &str, service: &str) -> Option<Instance> {
    Some(Instance {
        id: id.into(),
        services: vec![service.into()],
        address: "127.0.0.1:1".into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn a_member_registers_only_under_its_own_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    ca_with(
        d,
        "ca",
        &[
            "exemesh.v1.Registry",
            "shop.v1.ProductService",
            "shop.v1.OrderService",
        ],
    );
    let registry = secure_registry(&d.join("ca-exemesh.v1.Registry"));
    let client_as = |name: &str| {
        let endpoint = Endpoint::from_shared(format!("http://{}", registry.addr)).expect("uri");
        RegistryClient::new(exemesh::mesh::tls::client::lazy_with(
            identity(d, name),
            endpoint,
            Some("exemesh.v1.Registry"),
        ))
    };
    let mut product = client_as("ca-shop.v1.ProductService");
    let mut rogue = client_as("ca-shop.v1.OrderService");

    product
        .register(RegisterRequest {
            instance: instance("product-1", "shop.v1.ProductService"),
            ttl_ms: 10_000,
        })
        .await
        .expect("a service registers under its own name");

    // The order service's certificate does not name ProductService: no stealing its traffic.
    for attempt in [
        instance("rogue-1", "shop.v1.ProductService"),
        instance("product-1", "shop.v1.OrderService"),
    ] {
        let status = rogue
            .register(RegisterRequest {
                instance: attempt,
                ttl_ms: 10_000,
            })
            .await
            .expect_err("rogue registration");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(
            status.message().contains(
                "spiffe://mesh.test/svc/shop.v1.OrderService may not act as shop.v1.ProductService"
            ),
            "{}",
            status.message()
        );
    }
    let status = rogue
        .deregister(DeregisterRequest {
            instance_id: "product-1".into(),
        })
        .await
        .expect_err("removing another service's instance");
    assert_eq!(status.code(), Code::PermissionDenied);
    let resolved = product
        .resolve(exemesh::pb::v1::ResolveRequest {
            service: "shop.v1.ProductService".into(),
        })
        .await
        .expect("resolve")
        .into_inner()
        .instances;
    assert_eq!(
        resolved.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec!["product-1"],
        "only the genuine instance is registered"
    );

    // Watching and resolving need a mesh identity too: plaintext is refused at the handshake.
    let endpoint = Endpoint::from_shared(format!("http://{}", registry.addr)).expect("uri");
    let mut plaintext =
        RegistryClient::new(exemesh::mesh::tls::client::lazy_with(None, endpoint, None));
    assert!(
        plaintext
            .resolve(exemesh::pb::v1::ResolveRequest {
                service: "shop.v1.ProductService".into(),
            })
            .await
            .is_err()
    );
}

#[test]
fn authz_without_tls_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = secured_manifest(dir.path());
    let out = Command::new(exemesh())
        .args([
            "serve",
            path.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("EXEMESH_TLS_DIR")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[authz] needs mTLS"), "{stderr}");
}
