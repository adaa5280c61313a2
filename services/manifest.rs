//! The manifest: which contract to serve and which executable answers each method.
//!
//! Parsing is strict (`deny_unknown_fields`); validation collects *every* problem, each naming the
//! file and the key, so `exemesh check` can report them all at once. Binding to the contract (does the
//! method exist, do placeholders name fields) happens later, in [`super::binding`].
//! The format is documented in docs/manifest.md.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tonic::Code;

use super::placeholder::ArgTemplate;
use super::sandbox::{ResourceLimits, Sandbox, check_program_path, lookup_user};
use crate::mesh::status_code::parse_code;
use crate::mesh::tls::policy::{self, Policy, Principal};
use crate::mesh::transport::{Http2Settings, streams_for_calls};

/// One problem in a manifest, located by file and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestIssue {
    /// The manifest file.
    pub file: PathBuf,
    /// The dotted key path, e.g. `methods.GetProduct.argv[4]` (empty for syntax errors).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Every problem found in a manifest (never empty).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ManifestError(pub Vec<ManifestIssue>);

/// A duration written as text in the manifest, such as `"250ms"` or `"5s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextDuration(pub Duration);

impl<'de> Deserialize<'de> for TextDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(TextDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?} ({e}); write e.g. \"250ms\" or \"5s\""
                ))
            })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    service: ServiceSection,
    #[serde(default)]
    defaults: LimitsSection,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    methods: BTreeMap<String, MethodSection>,
    #[serde(default)]
    pools: BTreeMap<String, PoolSection>,
    #[serde(default)]
    telemetry: TelemetrySection,
    authz: Option<AuthzSection>,
    #[serde(default)]
    server: ServerSection,
}

/// `[server]`: limits of the gRPC server itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    max_request_bytes: Option<usize>,
    max_calls_per_connection: Option<u32>,
    max_concurrent_streams: Option<u32>,
    max_header_bytes: Option<u32>,
    keepalive_interval: Option<TextDuration>,
    keepalive_timeout: Option<TextDuration>,
    idle_timeout: Option<TextDuration>,
}

/// Limits of the gRPC server (`[server]`), each with a safe default.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Largest request message accepted (decoded size); larger ones get `RESOURCE_EXHAUSTED`.
    pub max_request_bytes: usize,
    /// HTTP/2 settings: concurrent calls per connection, header list size, keep-alive.
    pub http2: Http2Settings,
}

/// The default `max_request_bytes`: 4 MiB, as in every gRPC implementation.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// `[authz]`: who may call which method (needs mTLS).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthzSection {
    mode: Option<AuthzMode>,
    default: Option<Vec<String>>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    methods: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AuthzMode {
    Enforce,
    Audit,
}

/// `[telemetry]`: defaults for the standard OpenTelemetry variables (which win when set).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// Like `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// Like `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or `http/protobuf`.
    pub otlp_protocol: Option<String>,
    /// Like `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    /// Like `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub sampler: Option<String>,
    /// The sampler's argument, e.g. "0.1".
    pub sampler_arg: Option<String>,
}

impl TelemetrySection {
    /// The manifest's value for a standard variable, if it sets one.
    pub fn value_for(&self, variable: &str) -> Option<String> {
        match variable {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => self.otlp_endpoint.clone(),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => self.otlp_protocol.clone(),
            "OTEL_SERVICE_NAME" => self.service_name.clone(),
            "OTEL_TRACES_SAMPLER" => self.sampler.clone(),
            "OTEL_TRACES_SAMPLER_ARG" => self.sampler_arg.clone(),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    name: String,
    protos: Vec<PathBuf>,
    #[serde(default)]
    include: Vec<PathBuf>,
    listen: Option<SocketAddr>,
    drain_timeout: Option<TextDuration>,
    #[serde(default)]
    inherit_env: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    timeout: Option<TextDuration>,
    max_concurrency: Option<usize>,
    max_queue: Option<usize>,
    max_output_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodSection {
    mode: Mode,
    argv: Option<Vec<String>>,
    output: Option<OutputKind>,
    text_field: Option<String>,
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    exit_codes: BTreeMap<String, String>,
    pool: Option<String>,
    timeout: Option<TextDuration>,
    max_concurrency: Option<usize>,
    max_queue: Option<usize>,
    max_output_bytes: Option<usize>,
    allow_option_values: Option<bool>,
    user: Option<String>,
    rlimits: Option<RlimitsSection>,
}

/// `rlimits` of a spawn method or a pool.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RlimitsSection {
    cpu_seconds: Option<u64>,
    address_space_mb: Option<u64>,
    open_files: Option<u64>,
    processes: Option<u64>,
}

impl MethodSection {
    fn limits(&self) -> LimitsSection {
        LimitsSection {
            timeout: self.timeout,
            max_concurrency: self.max_concurrency,
            max_queue: self.max_queue,
            max_output_bytes: self.max_output_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Spawn,
    Worker,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum OutputKind {
    Json,
    Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolSection {
    argv: Vec<String>,
    workers: Option<usize>,
    max_in_flight: Option<usize>,
    ready_timeout: Option<TextDuration>,
    stop_timeout: Option<TextDuration>,
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    user: Option<String>,
    rlimits: Option<RlimitsSection>,
}

/// A validated manifest with paths resolved and defaults applied.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest file.
    pub file: PathBuf,
    /// OpenTelemetry defaults.
    pub telemetry: TelemetrySection,
    /// The fully-qualified service name.
    pub service: String,
    /// `.proto` files to compile.
    pub protos: Vec<PathBuf>,
    /// Include paths for imports.
    pub include: Vec<PathBuf>,
    /// Where to listen unless overridden.
    pub listen: SocketAddr,
    /// Grace period for in-flight calls at shutdown.
    pub drain_timeout: Duration,
    /// Methods by simple name (`GetProduct`).
    pub methods: BTreeMap<String, MethodSpec>,
    /// Worker pools by name.
    pub pools: BTreeMap<String, PoolSpec>,
    /// The authorization policy (`[authz]`); its trust domain is filled in from the server's
    /// identity at start.
    pub authz: Option<Policy>,
    /// The server's own limits (`[server]`).
    pub server: ServerLimits,
}

/// Limits that apply to one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deadline used when the client sends none.
    pub timeout: Duration,
    /// Calls running at once.
    pub max_concurrency: usize,
    /// Calls waiting for a slot.
    pub max_queue: usize,
    /// Largest stdout (spawn) or reply message (worker).
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_concurrency: 64,
            max_queue: 256,
            max_output_bytes: 4 * 1024 * 1024,
        }
    }
}

/// How one method runs.
#[derive(Debug, Clone)]
pub struct MethodSpec {
    /// The method's simple name.
    pub name: String,
    /// Its limits.
    pub limits: Limits,
    /// What runs it.
    pub execution: Execution,
}

/// The two execution modes.
#[derive(Debug, Clone)]
pub enum Execution {
    /// One process per call.
    Spawn(Box<SpawnSpec>),
    /// A call on a worker of the named pool.
    Worker {
        /// The pool's name.
        pool: String,
    },
}

/// How stdout becomes the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// stdout is JSON for the reply type.
    Json,
    /// stdout is stored as text in this string field.
    Text {
        /// The reply field receiving stdout.
        field: String,
    },
}

/// A spawn-mode method.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Arguments after the program, with placeholders.
    pub args: Vec<ArgTemplate>,
    /// How stdout is read.
    pub output: Output,
    /// Working directory.
    pub cwd: PathBuf,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// Extra exit code mappings, taking precedence over the built-in table.
    pub exit_codes: BTreeMap<i32, Code>,
    /// Whether a placeholder may render an argument that starts with `-` without a `--` before it.
    pub allow_option_values: bool,
    /// Resource limits and the user to run as.
    pub sandbox: Sandbox,
}

/// A pool of workers.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// The pool's name.
    pub name: String,
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Arguments after the program.
    pub args: Vec<String>,
    /// Number of processes.
    pub workers: usize,
    /// Calls in flight per worker.
    pub max_in_flight: usize,
    /// Time allowed for the ready frame.
    pub ready_timeout: Duration,
    /// Grace between closing stdin and killing the group at shutdown.
    pub stop_timeout: Duration,
    /// Working directory.
    pub cwd: PathBuf,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// Resource limits and the user to run as.
    pub sandbox: Sandbox,
}

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

impl Manifest {
    /// Reads, parses and validates a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let issue = |message: String| {
            ManifestError(vec![ManifestIssue {
                file: path.to_path_buf(),
                key: String::new(),
                message,
            }])
        };
        let text = std::fs::read_to_string(path).map_err(|e| issue(format!("cannot read: {e}")))?;
        Self::parse(path, &text)
    }

    /// Parses and validates manifest text; `path` locates it (relative paths resolve against its
    /// directory) and names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let raw: ManifestFile = toml::from_str(text).map_err(|e| {
            ManifestError(vec![ManifestIssue {
                file: path.to_path_buf(),
                key: String::new(),
                message: e.to_string().trim_end().replace('\n', "\n    "),
            }])
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut v = Validator {
            file: path.to_path_buf(),
            dir,
            issues: Vec::new(),
        };
        let manifest = v.manifest(raw);
        if v.issues.is_empty() {
            Ok(manifest)
        } else {
            Err(ManifestError(v.issues))
        }
    }
}

struct Validator {
    file: PathBuf,
    dir: PathBuf,
    issues: Vec<ManifestIssue>,
}

impl Validator {
    fn issue(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ManifestIssue {
            file: self.file.clone(),
            key: key.into(),
            message: message.into(),
        });
    }

    fn manifest(&mut self, raw: ManifestFile) -> Manifest {
        let service = raw.service;
        if service.name.trim().is_empty() {
            self.issue(
                "service.name",
                "must name the fully-qualified service, e.g. \"shop.v1.ProductService\"",
            );
        }
        if service.protos.is_empty() {
            self.issue("service.protos", "must list at least one .proto file");
        }
        let include = if service.include.is_empty() {
            vec![self.dir.clone()]
        } else {
            service.include.iter().map(|p| self.dir.join(p)).collect()
        };
        let mut base_env = Vec::new();
        for name in &service.inherit_env {
            if let Ok(value) = std::env::var(name) {
                base_env.push((name.clone(), value));
            }
        }
        base_env.extend(raw.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let defaults = self.limits("defaults", &raw.defaults, Limits::default());
        let pools: BTreeMap<String, PoolSpec> = raw
            .pools
            .into_iter()
            .map(|(name, pool)| {
                let spec = self.pool(&name, pool, &base_env);
                (name, spec)
            })
            .collect();
        let methods = raw
            .methods
            .into_iter()
            .map(|(name, method)| {
                let spec = self.method(&name, method, defaults, &base_env, &pools);
                (name, spec)
            })
            .collect();
        Manifest {
            file: self.file.clone(),
            authz: raw.authz.map(|a| self.authz(a, &methods)),
            server: self.server(&raw.server),
            telemetry: raw.telemetry,
            service: service.name,
            protos: service.protos.iter().map(|p| self.dir.join(p)).collect(),
            include,
            listen: service.listen.unwrap_or_else(|| {
                DEFAULT_LISTEN
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 50051)))
            }),
            drain_timeout: service
                .drain_timeout
                .map_or(Duration::from_secs(30), |d| d.0),
            methods,
            pools,
        }
    }

    fn server(&mut self, raw: &ServerSection) -> ServerLimits {
        let base = Http2Settings::default();
        // Set alone, the stream limit caps the call limit too (as it did before the call limit).
        let max_calls = raw.max_calls_per_connection.unwrap_or_else(|| {
            raw.max_concurrent_streams
                .map_or(base.max_calls_per_connection, |streams| {
                    streams.min(base.max_calls_per_connection)
                })
        });
        let limits = ServerLimits {
            max_request_bytes: raw.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
            http2: Http2Settings {
                max_calls_per_connection: max_calls,
                max_concurrent_streams: raw
                    .max_concurrent_streams
                    .unwrap_or_else(|| streams_for_calls(max_calls)),
                max_header_list_size: raw.max_header_bytes.unwrap_or(base.max_header_list_size),
                keepalive_interval: raw
                    .keepalive_interval
                    .map_or(base.keepalive_interval, |d| d.0),
                keepalive_timeout: raw
                    .keepalive_timeout
                    .map_or(base.keepalive_timeout, |d| d.0),
                idle_timeout: raw.idle_timeout.map_or(base.idle_timeout, |d| d.0),
            },
        };
        for (key, zero) in [
            ("max_request_bytes", limits.max_request_bytes == 0),
            (
                "max_calls_per_connection",
                limits.http2.max_calls_per_connection == 0,
            ),
            (
                "max_concurrent_streams",
                limits.http2.max_concurrent_streams == 0,
            ),
            ("max_header_bytes", limits.http2.max_header_list_size < 1024),
            (
                "keepalive_interval",
                limits.http2.keepalive_interval.is_zero(),
            ),
            (
                "keepalive_timeout",
                limits.http2.keepalive_timeout.is_zero(),
            ),
            ("idle_timeout", limits.http2.idle_timeout.is_zero()),
        ] {
            if zero {
                self.issue(
                    format!("server.{key}"),
                    "too small to serve anything (bytes: at least 1024 for headers)",
                );
            }
        }
        if limits.http2.max_concurrent_streams < limits.http2.max_calls_per_connection {
            self.issue(
                "server.max_concurrent_streams",
                format!(
                    "is {} but must be at least max_calls_per_connection ({}): calls over the \
                     call limit need a stream to be answered on",
                    limits.http2.max_concurrent_streams, limits.http2.max_calls_per_connection
                ),
            );
        }
        limits
    }

    fn principals(&mut self, key: &str, raw: &[String]) -> Vec<Principal> {
        raw.iter()
            .enumerate()
            .filter_map(|(i, text)| match Principal::parse(text) {
                Ok(p) => Some(p),
                Err(message) => {
                    self.issue(format!("{key}[{i}]"), message);
                    None
                }
            })
            .collect()
    }

    fn authz(&mut self, raw: AuthzSection, methods: &BTreeMap<String, MethodSpec>) -> Policy {
        let mut per_method = BTreeMap::new();
        for (name, list) in &raw.methods {
            let simple = name.rsplit('/').next().unwrap_or(name);
            if !methods.contains_key(simple) {
                self.issue(
                    format!("authz.methods.{name}"),
                    format!(
                        "no method {simple:?} in [methods] ({})",
                        names(methods.keys())
                    ),
                );
            }
            let list = self.principals(&format!("authz.methods.{name}"), list);
            per_method.insert(name.clone(), list);
        }
        Policy {
            mode: match raw.mode {
                Some(AuthzMode::Audit) => policy::Mode::Audit,
                _ => policy::Mode::Enforce,
            },
            default: match &raw.default {
                Some(list) => self.principals("authz.default", list),
                None => vec![Principal::AnyMember],
            },
            methods: per_method,
            deny: self.principals("authz.deny", &raw.deny),
            trust_domain: String::new(),
        }
    }

    fn limits(&mut self, key: &str, raw: &LimitsSection, base: Limits) -> Limits {
        let limits = Limits {
            timeout: raw.timeout.map_or(base.timeout, |d| d.0),
            max_concurrency: raw.max_concurrency.unwrap_or(base.max_concurrency),
            max_queue: raw.max_queue.unwrap_or(base.max_queue),
            max_output_bytes: raw.max_output_bytes.unwrap_or(base.max_output_bytes),
        };
        if limits.timeout.is_zero() {
            self.issue(format!("{key}.timeout"), "must be greater than zero");
        }
        if limits.max_concurrency == 0 {
            self.issue(format!("{key}.max_concurrency"), "must be at least 1");
        }
        if limits.max_output_bytes == 0 {
            self.issue(format!("{key}.max_output_bytes"), "must be at least 1");
        }
        limits
    }

    fn method(
        &mut self,
        name: &str,
        raw: MethodSection,
        defaults: Limits,
        base_env: &[(String, String)],
        pools: &BTreeMap<String, PoolSpec>,
    ) -> MethodSpec {
        let key = format!("methods.{name}");
        let limits = self.limits(&key, &raw.limits(), defaults);
        let execution = match raw.mode {
            Mode::Spawn => Execution::Spawn(Box::new(self.spawn(&key, raw, base_env))),
            Mode::Worker => {
                for (field, set) in [
                    ("argv", raw.argv.is_some()),
                    ("output", raw.output.is_some()),
                    ("text_field", raw.text_field.is_some()),
                    ("cwd", raw.cwd.is_some()),
                    ("env", !raw.env.is_empty()),
                    ("exit_codes", !raw.exit_codes.is_empty()),
                    ("allow_option_values", raw.allow_option_values.is_some()),
                    ("user", raw.user.is_some()),
                    ("rlimits", raw.rlimits.is_some()),
                ] {
                    if set {
                        self.issue(format!("{key}.{field}"), "only applies to mode = \"spawn\"; a worker method takes its program from its pool");
                    }
                }
                let pool = match raw.pool {
                    Some(pool) => pool,
                    None if pools.len() == 1 => pools.keys().next().cloned().unwrap_or_default(),
                    None => {
                        self.issue(
                            format!("{key}.pool"),
                            format!("must name one of the pools ({})", names(pools.keys())),
                        );
                        String::new()
                    }
                };
                if !pool.is_empty() && !pools.contains_key(&pool) {
                    self.issue(
                        format!("{key}.pool"),
                        format!("no pool named {pool:?} (pools: {})", names(pools.keys())),
                    );
                }
                Execution::Worker { pool }
            }
        };
        MethodSpec {
            name: name.to_string(),
            limits,
            execution,
        }
    }

    fn spawn(&mut self, key: &str, raw: MethodSection, base_env: &[(String, String)]) -> SpawnSpec {
        if raw.pool.is_some() {
            self.issue(format!("{key}.pool"), "only applies to mode = \"worker\"");
        }
        let argv = raw.argv.unwrap_or_default();
        let (program, args) = match argv.split_first() {
            Some((program, args)) => {
                if program.contains('{') {
                    self.issue(
                        format!("{key}.argv[0]"),
                        "the program cannot contain placeholders",
                    );
                }
                (
                    self.program(&format!("{key}.argv[0]"), program),
                    args.to_vec(),
                )
            }
            None => {
                self.issue(
                    format!("{key}.argv"),
                    "must list the program and its arguments, e.g. [\"./tool\", \"get\", \"{id}\"]",
                );
                (PathBuf::new(), Vec::new())
            }
        };
        let mut templates = Vec::new();
        for (i, arg) in args.iter().enumerate() {
            match ArgTemplate::parse(arg) {
                Ok(t) => templates.push(t),
                Err(e) => self.issue(format!("{key}.argv[{}]", i + 1), e.to_string()),
            }
        }
        let output = match (raw.output.unwrap_or(OutputKind::Json), raw.text_field) {
            (OutputKind::Json, None) => Output::Json,
            (OutputKind::Json, Some(_)) => {
                self.issue(
                    format!("{key}.text_field"),
                    "only applies to output = \"text\"",
                );
                Output::Json
            }
            (OutputKind::Text, Some(field)) => Output::Text { field },
            (OutputKind::Text, None) => {
                self.issue(
                    format!("{key}.text_field"),
                    "output = \"text\" needs the name of the string field that receives stdout",
                );
                Output::Json
            }
        };
        let mut exit_codes = BTreeMap::new();
        for (code, status) in &raw.exit_codes {
            let Ok(code) = code.parse::<i32>() else {
                self.issue(
                    format!("{key}.exit_codes.{code}"),
                    "the key must be an exit code (0-255)",
                );
                continue;
            };
            match parse_code(status) {
                Some(status) if (1..=255).contains(&code) && status != Code::Ok => {
                    exit_codes.insert(code, status);
                }
                Some(_) => self.issue(
                    format!("{key}.exit_codes.{code}"),
                    "maps a non-zero exit code (1-255) to an error status other than OK",
                ),
                None => self.issue(
                    format!("{key}.exit_codes.{code}"),
                    format!("unknown status {status:?}; use a name such as \"NOT_FOUND\""),
                ),
            }
        }
        let mut env = base_env.to_vec();
        env.extend(raw.env);
        SpawnSpec {
            program,
            args: templates,
            output,
            cwd: self.cwd(&format!("{key}.cwd"), raw.cwd),
            env,
            exit_codes,
            allow_option_values: raw.allow_option_values.unwrap_or(false),
            sandbox: self.sandbox(key, raw.user.as_deref(), raw.rlimits),
        }
    }

    fn pool(&mut self, name: &str, raw: PoolSection, base_env: &[(String, String)]) -> PoolSpec {
        let key = format!("pools.{name}");
        let (program, args) = match raw.argv.split_first() {
            Some((program, args)) => (
                self.program(&format!("{key}.argv[0]"), program),
                args.to_vec(),
            ),
            None => {
                self.issue(
                    format!("{key}.argv"),
                    "must list the worker program and its arguments",
                );
                (PathBuf::new(), Vec::new())
            }
        };
        let workers = raw.workers.unwrap_or(2);
        if workers == 0 {
            self.issue(format!("{key}.workers"), "must be at least 1");
        }
        let max_in_flight = raw.max_in_flight.unwrap_or(16);
        if max_in_flight == 0 {
            self.issue(format!("{key}.max_in_flight"), "must be at least 1");
        }
        let mut env = base_env.to_vec();
        env.extend(raw.env);
        PoolSpec {
            name: name.to_string(),
            program,
            args,
            workers,
            max_in_flight,
            ready_timeout: raw.ready_timeout.map_or(Duration::from_secs(30), |d| d.0),
            stop_timeout: raw.stop_timeout.map_or(Duration::from_secs(5), |d| d.0),
            cwd: self.cwd(&format!("{key}.cwd"), raw.cwd),
            env,
            sandbox: self.sandbox(&key, raw.user.as_deref(), raw.rlimits),
        }
    }

    fn sandbox(
        &mut self,
        key: &str,
        user: Option<&str>,
        rlimits: Option<RlimitsSection>,
    ) -> Sandbox {
        let raw = rlimits.unwrap_or_default();
        for (field, value) in [
            ("cpu_seconds", raw.cpu_seconds),
            ("address_space_mb", raw.address_space_mb),
            ("open_files", raw.open_files),
            ("processes", raw.processes),
        ] {
            if value == Some(0) {
                self.issue(format!("{key}.rlimits.{field}"), "must be at least 1");
            }
        }
        let run_as = user.and_then(|name| match lookup_user(name) {
            Ok(run_as) => Some(run_as),
            Err(message) => {
                self.issue(format!("{key}.user"), message);
                None
            }
        });
        Sandbox {
            limits: ResourceLimits {
                cpu: raw.cpu_seconds.map(Duration::from_secs),
                address_space: raw
                    .address_space_mb
                    .map(|mb| mb.saturating_mul(1024 * 1024)),
                open_files: raw.open_files,
                processes: raw.processes,
            },
            run_as,
        }
    }

    fn cwd(&mut self, key: &str, raw: Option<PathBuf>) -> PathBuf {
        let dir = raw.map_or_else(|| self.dir.clone(), |p| self.dir.join(p));
        if !dir.is_dir() {
            self.issue(key, format!("{} is not a directory", dir.display()));
        }
        dir
    }

    /// Resolves a program: a path (relative to the manifest) or a name looked up in `PATH`.
    fn program(&mut self, key: &str, program: &str) -> PathBuf {
        match resolve_program(&self.dir, program)
            .and_then(|path| check_program_path(&path).map(|()| path))
        {
            Ok(path) => path,
            Err(message) => {
                self.issue(key, message);
                PathBuf::from(program)
            }
        }
    }
}

fn names<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = keys.map(String::as_str).collect();
    if list.is_empty() {
        "none defined; add a [pools.NAME] table".to_string()
    } else {
        list.join(", ")
    }
}

/// Finds the executable a manifest names: paths containing `/` are relative to `dir`, bare names are
/// searched in `PATH`. The result must be an executable regular file.
pub fn resolve_program(dir: &Path, program: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let check = |path: &Path| -> Result<PathBuf, String> {
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("program {program:?} not found at {} ({e})", path.display()))?;
        if !meta.is_file() {
            return Err(format!(
                "program {program:?} at {} is not a regular file",
                path.display()
            ));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(format!(
                "program {program:?} at {} is not executable (chmod +x it)",
                path.display()
            ));
        }
        Ok(path.to_path_buf())
    };
    if program.is_empty() {
        return Err("the program is empty".into());
    }
    if program.contains('/') {
        let joined: PathBuf = dir
            .join(program)
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        return check(&joined);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for entry in std::env::split_paths(&path) {
        let candidate = entry.join(program);
        if candidate.is_file() {
            return check(&candidate);
        }
    }
    Err(format!(
        "program {program:?} not found in PATH; use a path such as \"./{program}\" or an absolute one"
    ))
}
