//! The etcd discovery backend against a real etcd (Debian's `etcd-server`): a single member that
//! restarts, and a 3-member cluster on loopback that loses a member mid-test.

mod support;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use exemesh::mesh::channel::{CallPolicy, MeshChannel};
use exemesh::mesh::discovery::{Discovery, connect};
use support::echo::{EchoClient, req};
use support::{Served, manifest, marker};

const SERVICE: &str = "test.v1.Echo";

fn free_port() -> u16 {
    // Bind :0 and release it: etcd's peer URLs must be known before it starts.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs `start` again (up to 3 times in all) when etcd lost a port race. A port picked by
/// [`free_port`] is free only until etcd binds it; a concurrent test's connection can take it in
/// between, and etcd then exits with "address already in use". Any other failure panics at once,
/// with etcd's log.
fn retry_port_races<T>(mut start: impl FnMut() -> Result<T, String>) -> T {
    let mut attempt = 1;
    loop {
        match start() {
            Ok(started) => return started,
            Err(log) if attempt < 3 && log.contains("address already in use") => attempt += 1,
            Err(log) => panic!("etcd did not start (attempt {attempt}): {log}"),
        }
    }
}

/// Why an etcd process is not serving, if it has exited: its exit status and the end of its log.
fn exited(child: &mut Child, log: &Path) -> Option<String> {
    let status = child.try_wait().ok()??;
    Some(format!("etcd exited ({status}); {}", log_tail(log)))
}

/// The last lines of an etcd log, to put in a failure message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("the end of its log {}:\n{tail}", log.display())
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// An etcd cluster of real processes in a temporary directory.
struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl Etcd {
    /// Starts an `n`-member cluster and waits until it answers.
    fn start(n: usize) -> Etcd {
        retry_port_races(|| Etcd::try_start(n))
    }

    fn try_start(n: usize) -> Result<Etcd, String> {
        let etcd = which("etcd");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("n{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let cluster = cluster(&members);
        for m in &mut members {
            m.child = Some(spawn_member(&etcd, dir.path(), m, &cluster));
        }
        let mut etcd = Etcd { dir, members };
        etcd.wait_ready(&(0..n).collect::<Vec<_>>())?;
        Ok(etcd)
    }

    fn spec(&self) -> String {
        format!(
            "etcd://{}/exemesh-test",
            self.members
                .iter()
                .map(|m| format!("127.0.0.1:{}", m.client))
                .collect::<Vec<_>>()
                .join(",")
        )
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its ports and data; the other members' ports stay as they are.
    fn restart(&mut self, i: usize) {
        let cluster = cluster(&self.members);
        let child = spawn_member(&which("etcd"), self.dir.path(), &self.members[i], &cluster);
        self.members[i].child = Some(child);
        if let Err(log) = self.wait_ready(&[i]) {
            panic!("etcd member {i} did not restart: {log}");
        }
    }

    /// Waits until each of the members `which` answers on its own client port; fails early, with
    /// the member's log, if any member exits (a cluster short of a member could still answer).
    fn wait_ready(&mut self, which: &[usize]) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let start = Instant::now();
        runtime.block_on(async {
            for &i in which {
                let spec = format!("etcd://127.0.0.1:{}/exemesh-test", self.members[i].client);
                let discovery = connect(&spec).expect("spec");
                while discovery.resolve("").await.is_err() {
                    self.check_running()?;
                    if start.elapsed() > Duration::from_secs(30) {
                        let logs = self.members.iter().map(|m| self.log_tail(m));
                        return Err(format!(
                            "etcd never became ready in 30 s; {}",
                            logs.collect::<Vec<_>>().join("\n")
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            self.check_running()
        })
    }

    /// An error with its log if a member that was started has exited.
    fn check_running(&mut self) -> Result<(), String> {
        for m in &mut self.members {
            let log = member_log(self.dir.path(), m);
            if let Some(why) = m.child.as_mut().and_then(|c| exited(c, &log)) {
                return Err(format!("member {}: {why}", m.name));
            }
        }
        Ok(())
    }

    fn log_tail(&self, m: &Member) -> String {
        log_tail(&member_log(self.dir.path(), m))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn cluster(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",")
}

fn member_log(dir: &Path, m: &Member) -> PathBuf {
    dir.join(format!("{}.log", m.name))
}

fn which(program: &str) -> String {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let path = Path::new(dir).join(program);
        if path.is_file() {
            return path.display().to_string();
        }
    }
    panic!("{program} not found in PATH: install Debian's etcd-server (scripts/test.sh does)");
}

/// An etcd process's stderr (its log), appended to `log` so a restart keeps what came before.
fn log_to(log: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map(Stdio::from)
        .expect("etcd log file")
}

fn spawn_member(etcd: &str, dir: &Path, m: &Member, cluster: &str) -> Child {
    let client = format!("http://127.0.0.1:{}", m.client);
    let peer = format!("http://127.0.0.1:{}", m.peer);
    Command::new(etcd)
        .args(["--name", &m.name, "--data-dir"])
        .arg(dir.join(&m.name))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args([
            "--initial-cluster",
            cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "exemesh-test",
        ])
        .stdout(Stdio::null())
        .stderr(log_to(&member_log(dir, m)))
        .spawn()
        .expect("start etcd")
}

async fn replica(dir: &Path, spec: &str, name: &str) -> Served {
    let template = include_str!("fixtures/echo/worker.toml").replace("workers = 2", "workers = 1");
    let path = manifest(dir, &format!("{name}.toml"), &template, &marker(name));
    Served::start_with_args(
        &path,
        &[
            "--discovery",
            spec,
            "--lease-ttl",
            "2s",
            "--instance-id",
            name,
        ],
    )
    .await
}

async fn ids(discovery: &dyn Discovery) -> BTreeSet<String> {
    discovery
        .resolve(SERVICE)
        .await
        .map(|l| l.into_iter().map(|i| i.id).collect())
        .unwrap_or_default()
}

async fn wait_ids(discovery: &dyn Discovery, want: &[&str], limit: Duration) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let start = Instant::now();
    loop {
        let got = ids(discovery).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "discovery has {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_endpoints(channel: &MeshChannel, n: usize, limit: Duration) {
    let start = Instant::now();
    while channel.active_endpoints() != n {
        assert!(
            start.elapsed() < limit,
            "the channel has {} endpoints, expected {n}",
            channel.active_endpoints()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all_calls_succeed(client: &EchoClient<MeshChannel>, n: usize) -> BTreeSet<i32> {
    use futures_util::StreamExt;
    // A few calls in flight at a time, as real traffic would be.
    let replies = futures_util::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                client
                    .unary(req(&i.to_string(), ""))
                    .await
                    .unwrap_or_else(|e| panic!("call {i} failed: {e}"))
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    replies.into_iter().map(|r| r.index).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_discovery_registers_expires_and_survives_an_etcd_restart() {
    let mut etcd = tokio::task::spawn_blocking(|| Etcd::start(1))
        .await
        .expect("etcd");
    let spec = etcd.spec();
    let discovery = connect(&spec).expect("discovery");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = replica(dir.path(), &spec, "etcd-a").await;
    let _b = replica(dir.path(), &spec, "etcd-b").await;
    wait_ids(&*discovery, &["etcd-a", "etcd-b"], Duration::from_secs(10)).await;
    let policy = CallPolicy {
        idempotent: ["/test.v1.Echo/Unary".to_string()].into(),
        one_message: ["/test.v1.Echo/Unary".to_string()].into(),
        ..CallPolicy::default()
    };
    let channel = MeshChannel::new(discovery.clone(), SERVICE, policy);
    let client = EchoClient::new_with(channel.clone());
    wait_endpoints(&channel, 2, Duration::from_secs(10)).await;
    assert_eq!(
        all_calls_succeed(&client, 40).await.len(),
        2,
        "both replicas served"
    );

    // kill -9 of a replica: its lease lapses and the key disappears; the channel follows the watch.
    a.signal(libc::SIGKILL);
    wait_ids(&*discovery, &["etcd-b"], Duration::from_secs(6)).await;
    wait_endpoints(&channel, 1, Duration::from_secs(3)).await;

    // etcd restarts (same data): callers keep their endpoint meanwhile, the watch reconnects, and a new
    // replica registered afterwards reaches the existing channel.
    etcd.kill(0);
    all_calls_succeed(&client, 20).await;
    let _etcd = tokio::task::spawn_blocking(move || {
        etcd.restart(0);
        etcd
    })
    .await
    .expect("restart");
    let _c = replica(dir.path(), &spec, "etcd-c").await;
    wait_ids(&*discovery, &["etcd-b", "etcd-c"], Duration::from_secs(10)).await;
    wait_endpoints(&channel, 2, Duration::from_secs(10)).await;
    assert_eq!(all_calls_succeed(&client, 40).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_cluster_keeps_discovery_working_when_a_member_dies() {
    let mut etcd = tokio::task::spawn_blocking(|| Etcd::start(3))
        .await
        .expect("etcd");
    let spec = etcd.spec();
    let discovery = connect(&spec).expect("discovery");
    let dir = tempfile::tempdir().expect("tempdir");
    let _a = replica(dir.path(), &spec, "cl-a").await;
    let _b = replica(dir.path(), &spec, "cl-b").await;
    wait_ids(&*discovery, &["cl-a", "cl-b"], Duration::from_secs(10)).await;
    let channel = MeshChannel::new(discovery.clone(), SERVICE, CallPolicy::default());
    let client = EchoClient::new_with(channel.clone());
    wait_endpoints(&channel, 2, Duration::from_secs(10)).await;

    // The first member listed (the one clients try first) dies.
    etcd.kill(0);
    all_calls_succeed(&client, 20).await;
    // Discovery keeps working on the remaining quorum: leases are renewed (the instances stay well past
    // their 2 s TTL), a new replica registers, and the existing watch (re-established on another
    // member) delivers it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _c = replica(dir.path(), &spec, "cl-c").await;
    wait_ids(
        &*discovery,
        &["cl-a", "cl-b", "cl-c"],
        Duration::from_secs(10),
    )
    .await;
    wait_endpoints(&channel, 3, Duration::from_secs(10)).await;
    assert_eq!(
        all_calls_succeed(&client, 60).await.len(),
        3,
        "all three replicas served"
    );
}

/// `exemesh status --discovery SPEC --json` with `EXEMESH_ETCD_TLS_DIR=tls` (or unset).
fn status(spec: &str, tls: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new(support::exemesh());
    cmd.args(["status", "--discovery", spec, "--json"])
        .env_remove("EXEMESH_ETCD_TLS_DIR");
    if let Some(tls) = tls {
        cmd.env("EXEMESH_ETCD_TLS_DIR", tls);
    }
    cmd.output().expect("status")
}

#[tokio::test]
async fn etcd_over_tls_with_client_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let certs = |args: &[&str]| {
        let out = Command::new(support::exemesh())
            .arg("certs")
            .args(args)
            .output()
            .expect("certs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let path = |p: &str| d.join(p).display().to_string();
    certs(&["init", "--dir", &path("ca")]);
    certs(&[
        "issue",
        "etcd",
        "--ca",
        &path("ca"),
        "--out",
        &path("server"),
    ]);
    certs(&[
        "issue",
        "exemesh-etcd-client",
        "--ca",
        &path("ca"),
        "--out",
        &path("client"),
    ]);
    let tls = d.join("client");
    let (spec, _etcd) = {
        let (d, tls) = (d.to_path_buf(), tls.clone());
        tokio::task::spawn_blocking(move || retry_port_races(|| start_tls_etcd(&d, &tls)))
            .await
            .expect("etcd")
    };

    let template = include_str!("fixtures/echo/worker.toml").replace("workers = 2", "workers = 1");
    let manifest_path = manifest(d, "tls.toml", &template, &marker("etcd-tls"));
    let tls_env = tls.display().to_string();
    let _served = Served::start_with_env_args(
        &manifest_path,
        &[("EXEMESH_ETCD_TLS_DIR", &tls_env)],
        &["--discovery", &spec, "--instance-id", "tls-1"],
    )
    .await;
    let start = Instant::now();
    loop {
        let out = status(&spec, Some(&tls));
        if String::from_utf8_lossy(&out.stdout).contains("tls-1") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never registered over TLS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Without the client certificate, etcd is out of reach.
    let out = status(&spec, None);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("tls-1"),
        "a plaintext client must not read the registry"
    );
}

/// Starts one etcd member that serves clients over TLS and asks for their certificate (both made
/// under `d` by `exemesh certs`), and waits until `exemesh status` reaches it with the client
/// certificate in `tls`. Returns its discovery spec and the process.
fn start_tls_etcd(d: &Path, tls: &Path) -> Result<(String, KillOnDrop), String> {
    let path = |p: &str| d.join(p).display().to_string();
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    // A data directory and a log per attempt: a retry must not find the last attempt's members.
    let log = d.join(format!("etcd-{client}.log"));
    let mut etcd = KillOnDrop(
        Command::new(which("etcd"))
            .args([
                "--name",
                "tls",
                "--data-dir",
                &path(&format!("data-{client}")),
            ])
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("tls={peer_url}")])
            .args([
                "--cert-file",
                &path("server/cert.pem"),
                "--key-file",
                &path("server/key.pem"),
            ])
            .args([
                "--client-cert-auth",
                "--trusted-ca-file",
                &path("ca/ca.pem"),
            ])
            .stdout(Stdio::null())
            .stderr(log_to(&log))
            .spawn()
            .expect("start etcd"),
    );
    let spec = format!("etcd://127.0.0.1:{client}/exemesh-tls");
    let start = Instant::now();
    while !status(&spec, Some(tls)).status.success() {
        if let Some(why) = exited(&mut etcd.0, &log) {
            return Err(why);
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "etcd over TLS never answered in 30 s; {}",
                log_tail(&log)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((spec, etcd))
}

/// Kills a process when the test ends, even by a panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_discovery_times_changes_through_etcd() {
    let etcd = tokio::task::spawn_blocking(|| Etcd::start(1))
        .await
        .expect("etcd");
    // The probe serves every watched service: its keys are written in one transaction.
    support::bench_discovery(&etcd.spec(), 100).await;
}
