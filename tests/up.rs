//! `exemesh up`: a whole mesh from one command, as a user runs it.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{exemesh, fixture, marker, processes_named, wait_no_processes};

fn write_mesh(dir: &std::path::Path, mark: &str) -> std::path::PathBuf {
    let worker = include_str!("fixtures/echo/worker.toml")
        .replace("@FIXTURES@", &fixture("echo").display().to_string())
        .replace("@MARKER@", mark)
        .replace("workers = 2", "workers = 1");
    std::fs::write(dir.join("echo.toml"), worker).expect("manifest");
    let mesh = "[registry]\nlisten = \"127.0.0.1:0\"\n\n[services.echo]\nmanifest = \"echo.toml\"\nreplicas = 3\n";
    let path = dir.join("mesh.toml");
    std::fs::write(&path, mesh).expect("mesh file");
    path
}

/// Kills `exemesh up` if a test fails before stopping it (its children die with it).
struct UpGuard(Option<std::process::Child>);

impl Drop for UpGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `exemesh up` and everything it printed up to its "mesh up:" line.
struct Up {
    guard: UpGuard,
    pid: i32,
    registry: String,
    /// The CLI identity `up` issued (mTLS is on by default), from its banner.
    tls_dir: String,
    banner: String,
    // Kept open: `up` prints again when it stops.
    _stdout: BufReader<std::process::ChildStdout>,
}

fn start_up(mesh: &std::path::Path) -> Up {
    let mut child = Command::new(exemesh())
        .arg("up")
        .arg(mesh)
        .args(["--busy-poll", "40", "--threads", "2"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("EXEMESH_BUSY_POLL")
        .env_remove("EXEMESH_THREADS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("exemesh up");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let pid = child.id() as i32;
    let guard = UpGuard(Some(child));
    let mut banner = String::new();
    while !banner.contains("mesh up:") {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).expect("read") > 0,
            "up exited early:\n{banner}"
        );
        banner.push_str(&line);
    }
    let registry = banner
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("registry listening on "))
        .unwrap_or_else(|| panic!("{banner:?}"))
        .to_string();
    let tls_dir = banner
        .split("export EXEMESH_TLS_DIR=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("mTLS is on by default: {banner:?}"))
        .to_string();
    Up {
        guard,
        pid,
        registry,
        tls_dir,
        banner,
        _stdout: out,
    }
}

impl Up {
    /// Ctrl-C, then the exit status.
    async fn interrupt(mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.pid, libc::SIGINT);
        }
        let mut child = self.guard.0.take().expect("up");
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait")
    }
}

fn call(up: &Up, json: &str) -> std::process::Output {
    Command::new(exemesh())
        .env("EXEMESH_TLS_DIR", &up.tls_dir)
        .args([
            "call",
            "--discovery",
            &up.registry,
            "test.v1.Echo/Legacy",
            json,
        ])
        .output()
        .expect("call")
}

fn serve_pids(dir: &std::path::Path) -> Vec<i32> {
    let dir = dir.display().to_string();
    // The `exemesh serve` children of this test's `up` carry its instance names on their command line.
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'));
        if !zombie && text.contains(" serve ") && text.contains(&dir) {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test]
async fn up_runs_the_mesh_restarts_a_crashed_instance_and_stops_everything() {
    let dir = tempfile::Builder::new()
        .prefix("exemesh-up-test")
        .tempdir()
        .expect("tempdir");
    let mark = marker("up");
    let mesh = write_mesh(dir.path(), &mark);
    let up = start_up(&mesh);
    let registry = up.registry.clone();
    // The table: one SERVING row per replica, printed once all are up.
    let table = up.banner.clone();
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("test.v1.Echo"))
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows.iter()
            .all(|r| r.contains("SERVING") && r.contains("127.0.0.1:")),
        "{table}"
    );
    for n in 1..=3 {
        assert!(table.contains(&format!("echo-{n}")), "{table}");
    }

    // mTLS by default: a caller without the mesh's certificate is refused.
    let plaintext = Command::new(exemesh())
        .env_remove("EXEMESH_TLS_DIR")
        .args([
            "call",
            "--discovery",
            &registry,
            "test.v1.Echo/Legacy",
            "{}",
        ])
        .output()
        .expect("call");
    assert!(
        !plaintext.status.success(),
        "a plaintext call must fail: {}",
        String::from_utf8_lossy(&plaintext.stdout)
    );
    let stderr = String::from_utf8_lossy(&plaintext.stderr);
    assert!(
        stderr.contains("may require mTLS") && stderr.contains("EXEMESH_TLS_DIR"),
        "the error says what to do: {stderr}"
    );
    let reply = call(&up, r#"{"text":"through discovery"}"#);
    assert!(
        reply.status.success(),
        "{}",
        String::from_utf8_lossy(&reply.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&reply.stdout),
        "{\"text\":\"through discovery\"}\n"
    );

    // kill -9 one instance: up restarts it and it registers again.
    let pids = serve_pids(dir.path());
    assert_eq!(pids.len(), 3, "{pids:?}");
    // Each instance polls and sizes its runtime as `up` was told to.
    for pid in &pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        for want in [&b"EXEMESH_BUSY_POLL=40"[..], b"EXEMESH_THREADS=2"] {
            assert!(
                environ.split(|&b| b == 0).any(|var| var == want),
                "instance {pid} was not given {}",
                String::from_utf8_lossy(want)
            );
        }
    }
    unsafe {
        libc::kill(pids[0], libc::SIGKILL);
    }
    let start = Instant::now();
    loop {
        let now = serve_pids(dir.path());
        if now.len() == 3 && !now.contains(&pids[0]) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the instance was not restarted: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    loop {
        let status = Command::new(exemesh())
            .env("EXEMESH_TLS_DIR", &up.tls_dir)
            .args(["status", "--discovery", &registry, "--json"])
            .output()
            .expect("status");
        let rows: serde_json::Value =
            serde_json::from_slice(&status.stdout).expect("status --json");
        // The echo instances (up also registers its trace view).
        let echo: Vec<&serde_json::Value> = rows
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["service"] == "test.v1.Echo")
            .collect();
        let serving = echo.iter().filter(|r| r["health"] == "SERVING").count();
        let ids: std::collections::BTreeSet<String> = echo
            .iter()
            .filter_map(|r| r["instance"].as_str().map(str::to_string))
            .collect();
        if serving == 3 && ids.len() == 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "status never showed 3 serving instances: {rows}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Ctrl-C: everything stops, nothing is left behind.
    assert!(!processes_named(&mark, "python3").is_empty());
    let status = up.interrupt().await;
    assert!(status.success(), "{status:?}");
    assert!(
        serve_pids(dir.path()).is_empty(),
        "serve processes survived: {:?}",
        serve_pids(dir.path())
    );
    let left = wait_no_processes(&mark, Duration::from_secs(5)).await;
    assert!(left.is_empty(), "workers survived: {left:?}");
}

#[tokio::test]
async fn up_collects_traces_and_exemesh_trace_shows_the_waterfall() {
    let dir = tempfile::Builder::new()
        .prefix("exemesh-up-trace")
        .tempdir()
        .expect("tempdir");
    let mark = marker("up-trace");
    let mesh = write_mesh(dir.path(), &mark);
    let up = start_up(&mesh);
    let registry = up.registry.clone();
    let text = up.banner.clone();
    assert!(text.contains("traces collected on"), "{text}");

    let called = call(&up, r#"{"text":"traced"}"#);
    assert!(called.status.success());
    let stderr = String::from_utf8_lossy(&called.stderr).into_owned();
    let trace = stderr
        .lines()
        .find_map(|l| l.strip_prefix("trace "))
        .expect("trace id printed")
        .to_string();

    // The servers export in batches: wait (bounded) for the trace to appear.
    let start = Instant::now();
    let view = loop {
        let shown = Command::new(exemesh())
            .env("EXEMESH_TLS_DIR", &up.tls_dir)
            .args(["trace", "--discovery", &registry, &trace[..12]])
            .output()
            .expect("exemesh trace");
        let view = String::from_utf8_lossy(&shown.stdout).into_owned();
        if shown.status.success() && view.contains("exec test.v1.Echo/Legacy") {
            break view;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the trace never showed up: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines: Vec<&str> = view.lines().collect();
    assert!(
        lines[0].starts_with("SPAN") && lines[0].contains("TIME LINE"),
        "{view}"
    );
    let server = lines
        .iter()
        .position(|l| l.starts_with("test.v1.Echo/Legacy"))
        .expect("the server span, at the root");
    assert!(
        lines[server + 1].starts_with("  exec test.v1.Echo/Legacy"),
        "the exec span is indented under it:\n{view}"
    );
    assert!(
        lines[server].contains("code 0") && lines[server].contains('█'),
        "{view}"
    );

    let list = Command::new(exemesh())
        .env("EXEMESH_TLS_DIR", &up.tls_dir)
        .args(["trace", "--discovery", &registry])
        .output()
        .expect("exemesh trace");
    assert!(
        String::from_utf8_lossy(&list.stdout).contains(&trace),
        "the recent traces list it"
    );

    let status = up.interrupt().await;
    assert!(status.success(), "{status:?}");
}
