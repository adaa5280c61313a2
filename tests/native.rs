//! The migration path: a native Rust implementation of `shop.v1.UserService`
//! (examples/shop/native) joins the same mesh as the wrapped `shop.py worker` replicas, and callers
//! cannot tell them apart.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use exemesh::mesh::channel::{CallPolicy, MeshChannel};
use exemesh::mesh::discovery::connect;
use prost_reflect::DynamicMessage;
use support::{Registry, Served, root};

fn native_binary() -> std::path::PathBuf {
    // Next to this test's own target directory: target/debug/shop-user-native.
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("shop-user-native");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (cargo build --workspace; scripts/test.sh does)",
        bin.display()
    );
    bin
}

struct Native(std::process::Child);

impl Drop for Native {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_native_rust_replica_is_interchangeable_with_the_wrapped_executable() {
    let registry = Registry::start("127.0.0.1:0");
    let python = Served::start_with_args(
        &root().join("examples/shop/user.toml"),
        &[
            "--discovery",
            &registry.addr,
            "--instance-id",
            "user-python",
        ],
    )
    .await;
    let mut child = Command::new(native_binary())
        .args(["--discovery", &registry.addr, "--instance-id", "user-rust"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the native service");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert!(line.starts_with("listening on "), "{line:?}");
    let _native = Native(child);

    let discovery = connect(&registry.addr).expect("discovery");
    let start = std::time::Instant::now();
    loop {
        let ids: BTreeSet<String> = discovery
            .resolve("shop.v1.UserService")
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.id)
            .collect();
        if ids.len() == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "both implementations never registered: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Callers use the contract through the mesh; the replies must be byte-for-byte the same.
    let pool = exemesh::mesh::reflection::fetch_pool(python.channel().await, "shop.v1.UserService")
        .await
        .expect("reflection");
    let method = pool
        .get_service_by_name("shop.v1.UserService")
        .and_then(|s| s.methods().next())
        .expect("GetUser");
    let channel = MeshChannel::new(discovery, "shop.v1.UserService", CallPolicy::default());
    let mut replies = BTreeSet::new();
    let mut errors = BTreeSet::new();
    for i in 0..60 {
        let id = if i % 10 == 9 { "u404" } else { "u1" };
        let mut request = DynamicMessage::new(method.input());
        request.set_field_by_name("id", prost_reflect::Value::String(id.into()));
        let call = exemesh::mesh::dynamic_client::Method::new(&method)
            .expect("a method path")
            .call(
                channel.clone(),
                tonic::Request::new(tokio_stream::once(request)),
            )
            .await;
        match call {
            Ok(response) => {
                let mut stream = response.into_inner();
                while let Some(reply) = stream.message().await.expect("reply") {
                    replies.insert(prost::Message::encode_to_vec(&reply));
                }
            }
            Err(status) => {
                errors.insert((status.code() as i32, status.message().to_string()));
            }
        }
    }
    assert_eq!(
        replies.len(),
        1,
        "the two implementations answered differently"
    );
    assert_eq!(
        errors.len(),
        1,
        "the two implementations failed differently: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .all(|(code, msg)| *code == tonic::Code::NotFound as i32 && msg == "no user 'u404'"),
        "{errors:?}"
    );
    // Both really served: ask each one's health directly through status.
    let status = Command::new(support::exemesh())
        .args(["status", "--discovery", &registry.addr, "--json"])
        .output()
        .expect("status");
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert!(
        rows.as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|r| r["health"] == "SERVING")),
        "{rows}"
    );
    let impls: BTreeSet<String> = rows
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            r["metadata"]["impl"]
                .as_str()
                .unwrap_or("python")
                .to_string()
        })
        .collect();
    assert_eq!(
        impls,
        BTreeSet::from(["python".to_string(), "rust".to_string()])
    );
}
