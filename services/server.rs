//! Putting it together: a manifest becomes a running gRPC server with the dynamic service, health
//! (`grpc.health.v1`) and reflection (v1 and v1alpha), and a graceful shutdown.
//!
//! Shutdown order: health goes `NOT_SERVING`, the listener stops accepting, in-flight calls get up to
//! the drain timeout, then the worker pools are stopped (stdin closed, then the process groups
//! killed).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::binding::{BoundMethod, bind};
use super::call::Executor;
use super::contract::{Contract, ContractError};
use super::dispatch::{DynamicService, MethodRuntime};
use super::limiter::Limiter;
use super::manifest::{Execution, Manifest, ManifestError};
use super::spawn::SpawnRunner;
use super::worker::outbound::Outbound;
use super::worker::pool::Pool;
use super::worker::runner::WorkerRunner;
use crate::mesh::discovery::registration::Registration;
use crate::mesh::discovery::{Discovery, Instance};
use crate::mesh::introspection::{ReflectionSetupError, set_status, with_introspection};
use crate::mesh::router::GrpcRouter;
use crate::mesh::telemetry::admin::serve_admin;
use crate::mesh::tls::policy::{AuthzLayer, Policy};
use crate::mesh::transport::serve_h2c;

/// Why a server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The contract does not compile or lacks the service.
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// A descriptor set could not be used for reflection.
    #[error(transparent)]
    Reflection(#[from] ReflectionSetupError),
    /// An `[authz]` policy without mTLS: there would be no caller identities to check.
    #[error(
        "{0}: [authz] needs mTLS to know who calls; serve with --tls-dir (or under `exemesh up` without --insecure)"
    )]
    AuthzNeedsTls(String),
}

/// How long a deregistered server keeps accepting new calls, so that callers have dropped it from
/// their sets (watch events arrive within milliseconds on loopback) before connections get GOAWAY.
pub const DEREGISTER_GRACE: Duration = Duration::from_millis(500);

/// Where and how to register the running server in discovery.
#[derive(Debug)]
pub struct Announce {
    /// The discovery backend.
    pub discovery: Arc<dyn Discovery>,
    /// The instance to register (its address is where callers connect).
    pub instance: Instance,
    /// The lease time to live.
    pub ttl: Duration,
}

/// A manifest checked against its contract: everything `serve` needs, nothing started yet.
#[derive(Debug)]
pub struct Plan {
    /// The manifest.
    pub manifest: Manifest,
    /// Its contract.
    pub contract: Contract,
    /// Its methods.
    pub methods: Vec<BoundMethod>,
}

impl Plan {
    /// Loads the contract and binds the manifest to it (what `exemesh check` runs).
    pub fn new(manifest: Manifest) -> Result<Plan, ServeError> {
        let contract = Contract::load(&manifest.protos, &manifest.include, &manifest.service)?;
        let methods = bind(&manifest, &contract)?;
        Ok(Plan {
            manifest,
            contract,
            methods,
        })
    }
}

/// Serves `plan` on `listener` until `shutdown` completes, then drains and stops.
pub async fn serve(
    plan: Plan,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    announce: Option<Announce>,
    admin: Option<TcpListener>,
) -> Result<(), ServeError> {
    let service_name = plan.contract.service.full_name().to_string();
    let ready = Arc::new(AtomicBool::new(false));
    let admin_task = admin
        .map(|listener| tokio::spawn(serve_admin(listener, ready.clone(), std::future::pending())));
    let outbound = announce
        .as_ref()
        .map(|a| Outbound::new(a.discovery.clone()));
    let pools = start_pools(&plan, outbound);
    let runtimes = plan
        .methods
        .iter()
        .map(|m| runtime(&plan, m, &pools))
        .collect::<Result<Vec<_>, _>>()?;
    let router = GrpcRouter::new().fallback(DynamicService::new(runtimes));
    let (router, reporter) = with_introspection(router, vec![plan.contract.files.clone()])?;
    let router = with_authz(router, &plan.manifest)?;
    set_status(&reporter, &service_name, ServingStatus::NotServing).await;
    let health_task = tokio::spawn(follow_pools(
        reporter.clone(),
        service_name.clone(),
        pools.values().cloned().collect(),
        ready.clone(),
    ));
    let drain = plan.manifest.drain_timeout;
    let registration = tokio::spawn({
        let pools: Vec<Arc<Pool>> = pools.values().cloned().collect();
        async move {
            let announce = announce?;
            // Callers learn about this instance only once it can serve.
            all_pools_ready(&pools).await;
            Some(Registration::start(
                announce.discovery,
                announce.instance,
                announce.ttl,
            ))
        }
    });
    let signal = {
        let reporter = reporter.clone();
        let service_name = service_name.clone();
        async move {
            shutdown.await;
            health_task.abort();
            ready.store(false, Ordering::Relaxed);
            set_status(&reporter, &service_name, ServingStatus::NotServing).await;
            // Deregister first, and keep serving while callers drop this instance from their sets.
            registration.abort();
            if let Ok(Some(registration)) = registration.await {
                registration.stop().await;
                tokio::time::sleep(DEREGISTER_GRACE).await;
            }
            tracing::info!(
                "shutting down: draining in-flight calls (up to {}s)",
                drain.as_secs_f32()
            );
        }
    };
    if !serve_h2c(
        listener,
        router,
        plan.manifest.server.http2,
        crate::mesh::tls::installed_server_config(),
        signal,
        drain,
    )
    .await
    {
        tracing::warn!(
            "drain timeout of {}s passed; the remaining calls were aborted",
            drain.as_secs_f32()
        );
    }
    for pool in pools.values() {
        pool.stop().await;
    }
    if let Some(task) = admin_task {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Puts the manifest's `[authz]` policy in front of every route (health and reflection included:
/// the policy opens them to every mesh member).
fn with_authz(router: GrpcRouter, manifest: &Manifest) -> Result<GrpcRouter, ServeError> {
    let Some(policy) = &manifest.authz else {
        return Ok(router);
    };
    let identity = crate::mesh::tls::installed()
        .ok_or_else(|| ServeError::AuthzNeedsTls(manifest.file.display().to_string()))?;
    let policy = Policy {
        trust_domain: identity.current().trust_domain.clone(),
        ..policy.clone()
    };
    Ok(router.layer(AuthzLayer::new(policy)))
}

fn start_pools(plan: &Plan, outbound: Option<Arc<Outbound>>) -> BTreeMap<String, Arc<Pool>> {
    let used: std::collections::BTreeSet<&str> = plan
        .methods
        .iter()
        .filter_map(|m| match &m.spec.execution {
            Execution::Worker { pool } => Some(pool.as_str()),
            Execution::Spawn(_) => None,
        })
        .collect();
    plan.manifest
        .pools
        .iter()
        .filter(|(name, _)| used.contains(name.as_str()))
        .map(|(name, spec)| {
            let routed: Vec<&BoundMethod> = plan
                .methods
                .iter()
                .filter(|m| matches!(&m.spec.execution, Execution::Worker { pool } if pool == name))
                .collect();
            let max_output = routed
                .iter()
                .map(|m| m.spec.limits.max_output_bytes)
                .max()
                .unwrap_or(4 * 1024 * 1024);
            let names = routed
                .iter()
                .map(|m| format!("{}/{}", plan.contract.service.full_name(), m.desc.name()))
                .collect();
            (
                name.clone(),
                Pool::start(spec.clone(), max_output, names, outbound.clone()),
            )
        })
        .collect()
}

fn runtime(
    plan: &Plan,
    method: &BoundMethod,
    pools: &BTreeMap<String, Arc<Pool>>,
) -> Result<MethodRuntime, ServeError> {
    let name: Arc<str> = format!(
        "{}/{}",
        plan.contract.service.full_name(),
        method.desc.name()
    )
    .into();
    let limits = method.spec.limits;
    let executor: Arc<dyn Executor> = match &method.spec.execution {
        Execution::Spawn(spec) => Arc::new(SpawnRunner::new(
            (**spec).clone(),
            method.desc.output(),
            limits.max_output_bytes,
        )),
        Execution::Worker { pool } => {
            let pool = pools.get(pool).cloned().ok_or_else(|| {
                ManifestError(vec![super::manifest::ManifestIssue {
                    file: plan.manifest.file.clone(),
                    key: format!("methods.{}.pool", method.spec.name),
                    message: format!("no pool named {pool:?}"),
                }])
            })?;
            Arc::new(WorkerRunner::new(
                pool,
                method.desc.output(),
                limits.max_output_bytes,
            ))
        }
    };
    Ok(MethodRuntime {
        limiter: Limiter::new(name.to_string(), limits.max_concurrency, limits.max_queue),
        name,
        desc: method.desc.clone(),
        kind: method.kind,
        default_timeout: limits.timeout,
        max_message: plan.manifest.server.max_request_bytes,
        executor,
        exec_duration: OnceLock::new(),
    })
}

/// Completes once every pool has a ready worker.
async fn all_pools_ready(pools: &[Arc<Pool>]) {
    for pool in pools {
        let mut ready = pool.ready_workers();
        let _ = ready.wait_for(|n| *n > 0).await;
    }
}

/// SERVING while every pool has at least one ready worker (immediately, for spawn-only services).
async fn follow_pools(
    reporter: HealthReporter,
    service: String,
    pools: Vec<Arc<Pool>>,
    ready: Arc<AtomicBool>,
) {
    let mut watchers: Vec<_> = pools.iter().map(|p| p.ready_workers()).collect();
    let mut last = None;
    loop {
        let serving = watchers.iter().all(|w| *w.borrow() > 0);
        if last != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::info!(service = %service, "health: {status:?}");
            set_status(&reporter, &service, status).await;
            ready.store(serving, Ordering::Relaxed);
            last = Some(serving);
        }
        if watchers.is_empty() {
            return;
        }
        let changes = watchers.iter_mut().map(|w| Box::pin(w.changed()));
        let (result, _, _) = futures_util::future::select_all(changes).await;
        if result.is_err() {
            return;
        }
    }
}
