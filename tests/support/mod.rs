//! Integration-test harness: starts the real `exemesh` binary on an ephemeral port, waits for it to
//! report SERVING over gRPC health, and kills its whole process group when dropped.
#![allow(dead_code)]

pub mod collector;
pub mod echo;
pub mod raw_grpc;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The binary under test.
pub fn exemesh() -> &'static str {
    env!("CARGO_BIN_EXE_exemesh")
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture file.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// A running `exemesh serve`.
pub struct Served {
    pub child: Child,
    pub addr: String,
    /// The admin address, when started with `--admin`.
    pub admin: Option<String>,
    pub stderr_path: PathBuf,
    /// The identity this test's channels present (mTLS), if any.
    pub client_tls: Option<std::sync::Arc<exemesh::mesh::tls::material::IdentityDir>>,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Starts `exemesh serve MANIFEST --listen 127.0.0.1:0` and waits until it is SERVING.
    pub async fn start(manifest: &Path) -> Served {
        Self::start_with_env(manifest, &[]).await
    }

    /// Like [`Served::start`] with extra environment variables for exemesh itself.
    pub async fn start_with_env(manifest: &Path, env: &[(&str, &str)]) -> Served {
        let served = Self::spawn(manifest, env);
        served.wait_serving().await;
        served
    }

    /// Starts the server without waiting for health.
    pub fn spawn(manifest: &Path, env: &[(&str, &str)]) -> Served {
        Self::spawn_with(manifest, env, &[])
    }

    /// Starts `exemesh serve MANIFEST --listen 127.0.0.1:0 ARGS...` and waits until it is SERVING.
    pub async fn start_with_args(manifest: &Path, args: &[&str]) -> Served {
        Self::start_with_env_args(manifest, &[], args).await
    }

    /// Like [`Served::start_with_args`] with extra environment variables.
    pub async fn start_with_env_args(
        manifest: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Served {
        let served = Self::spawn_with(manifest, env, args);
        served.wait_serving().await;
        served
    }

    /// Starts the server with extra arguments, without waiting for health.
    pub fn spawn_with(manifest: &Path, env: &[(&str, &str)], args: &[&str]) -> Served {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(exemesh())
            .arg("serve")
            .arg(manifest)
            .args(if args.contains(&"--listen") {
                &[][..]
            } else {
                &["--listen", "127.0.0.1:0"][..]
            })
            .args(args)
            .envs(env.iter().copied())
            .env("EXEMESH_LOG", "debug,h2=warn,hyper=warn,tower=warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .expect("start exemesh");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        reader
            .read_line(&mut line)
            .expect("read the listening line");
        let admin = if args.contains(&"--admin") {
            let mut second = String::new();
            reader.read_line(&mut second).expect("read the admin line");
            second
                .trim()
                .strip_prefix("admin listening on ")
                .map(str::to_string)
        } else {
            None
        };
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            let _ = child.kill();
            panic!("exemesh did not start: stdout {line:?}\nstderr:\n{log}");
        };
        Served {
            addr: addr.to_string(),
            admin,
            child,
            stderr_path,
            client_tls: None,
            _dir: dir,
        }
    }

    /// Starts `exemesh serve MANIFEST --tls-dir SERVER ARGS...`, and waits for SERVING with channels
    /// presenting the identity in `client`.
    pub async fn start_tls(manifest: &Path, server: &Path, client: &Path, args: &[&str]) -> Served {
        let mut all = vec!["--tls-dir", server.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        let mut served = Self::spawn_with(manifest, &[], &all);
        served.client_tls =
            Some(exemesh::mesh::tls::material::IdentityDir::load(client).expect("client identity"));
        served.wait_serving().await;
        served
    }

    /// A channel to the server presenting `identity` (`None`: plaintext), not yet connected.
    pub fn channel_as(
        &self,
        identity: Option<std::sync::Arc<exemesh::mesh::tls::material::IdentityDir>>,
    ) -> Channel {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr)).expect("uri");
        exemesh::mesh::tls::client::lazy_with(identity, endpoint, None)
    }

    /// The server's pid (also its process group id).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr)).expect("uri");
        exemesh::mesh::tls::client::connect_with(self.client_tls.clone(), endpoint, None)
            .await
            .expect("connect")
    }

    /// Polls gRPC health until the overall status is SERVING (bounded).
    pub async fn wait_serving(&self) {
        self.wait_health(ServingStatus::Serving, Duration::from_secs(30))
            .await;
    }

    /// Polls gRPC health until the overall status is `want` (bounded).
    pub async fn wait_health(&self, want: ServingStatus, limit: Duration) {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < limit {
            let endpoint = Endpoint::from_shared(format!("http://{}", self.addr)).expect("uri");
            if let Ok(channel) =
                exemesh::mesh::tls::client::connect_with(self.client_tls.clone(), endpoint, None)
                    .await
            {
                let mut client = HealthClient::new(channel);
                match client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    Ok(r) if r.get_ref().status == want as i32 => return,
                    Ok(r) => last = Some(format!("{:?}", r.get_ref().status)),
                    Err(e) => last = Some(e.to_string()),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "health never became {want:?} (last: {last:?})\n{}",
            self.log()
        );
    }

    /// Sends a signal to exemesh itself (not its group).
    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Waits (bounded) for exemesh to exit and returns its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "exemesh did not exit within {limit:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        unsafe {
            libc::killpg(self.pid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A running `exemesh registry`.
pub struct Registry {
    pub child: Child,
    pub addr: String,
}

impl Registry {
    /// Starts `exemesh registry` on `addr` (`127.0.0.1:0` for any port) and reads its address.
    pub fn start(addr: &str) -> Registry {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(exemesh())
            .args(["registry", "--listen", addr])
            .env("EXEMESH_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the registry");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("registry did not start: {line:?}"))
            .to_string();
        Registry { child, addr }
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Pids of live (non-zombie) processes whose environment or command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let hay = |bytes: &[u8]| bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
        if hay(&cmdline) || hay(&environ) {
            found.push(pid);
        }
    }
    found
}

/// Pids of live processes named `comm` (e.g. "sleep") carrying `marker`.
pub fn processes_named(marker: &str, comm: &str) -> Vec<i32> {
    processes_with(marker)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// Waits (bounded) until a live process named `comm` carries `marker`.
pub async fn wait_for_process(marker: &str, comm: &str, limit: Duration) {
    let start = Instant::now();
    while processes_named(marker, comm).is_empty() {
        assert!(
            start.elapsed() < limit,
            "no {comm} process with the marker appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until no live process carries `marker`; returns the survivors otherwise.
pub async fn wait_no_processes(marker: &str, limit: Duration) -> Vec<i32> {
    let start = Instant::now();
    loop {
        let left = processes_with(marker);
        if left.is_empty() || start.elapsed() > limit {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A unique marker for the processes of one test.
pub fn marker(test: &str) -> String {
    format!(
        "exemesh-test-{test}-{}-{}",
        std::process::id(),
        rand_suffix()
    )
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

/// Writes a manifest into `dir` from a template where `@FIXTURES@` is the fixtures directory and
/// `@MARKER@` a marker for the test's processes.
pub fn manifest(dir: &Path, name: &str, template: &str, marker: &str) -> PathBuf {
    let text = template
        .replace("@FIXTURES@", &fixture("echo").display().to_string())
        .replace("@MARKER@", marker);
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Runs `exemesh bench-discovery` against `spec` with a small load (`instances` over 4 services,
/// 10 watchers on 2 connections, 6 changes, 1 s leases renewed every third of a second), checks
/// that every change reached every watcher and that it removed everything it registered, and
/// returns its JSON report.
pub async fn bench_discovery(spec: &str, instances: u32) -> serde_json::Value {
    let out = Command::new(exemesh())
        .args(["bench-discovery", "--discovery", spec, "--json"])
        .args(["--instances", &instances.to_string(), "--services", "4"])
        .args(["--watchers", "10", "--watchers-per-connection", "5"])
        .args(["--changes", "6", "--interval", "100ms", "--ttl", "1s"])
        .env("EXEMESH_LOG", "warn")
        .output()
        .expect("run exemesh bench-discovery");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["instances"], instances, "{report}");
    assert_eq!(
        (report["deliveries"].as_u64(), report["missed"].as_u64()),
        (Some(60), Some(0)),
        "6 changes x 10 watchers: {report}"
    );
    // 0.5 s of changes with leases renewed every 333 ms: at least one round of renewals (a
    // slower machine makes more, never fewer).
    assert!(
        report["renewals"].as_u64() >= Some(u64::from(instances)),
        "{report}"
    );
    assert_eq!(report["renewal_errors"], 0, "{report}");
    assert_eq!(report["watch_errors"], 0, "{report}");
    let p99 = report["delivery_ms"]["p99"].as_f64().expect("p99");
    assert!(p99 > 0.0, "{report}");
    let left = exemesh::mesh::discovery::connect(spec)
        .expect("discovery")
        .resolve("")
        .await
        .expect("resolve");
    assert!(left.is_empty(), "bench-discovery left {left:?} behind");
    report
}
