//! The gRPC face of the embedded registry, and its expiry loop.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::store::{Change, Store, serves};
use crate::mesh::tls::identity::PeerIdentity;
use crate::pb::v1::registry_server::Registry;
use crate::pb::v1::watch_event::Kind;
use crate::pb::v1::*;

/// `exemesh.v1.Registry` over a [`Store`].
#[derive(Debug, Clone)]
pub struct RegistryService {
    store: Arc<Store>,
}

impl RegistryService {
    /// A service over `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

/// Checks that the caller may act for `services`: over mTLS, its certificate must name each of
/// them (a rogue member cannot register under, or remove, another service's name). A plaintext
/// registry has no identities to check.
fn may_act_as(
    caller: Option<&PeerIdentity>,
    services: &[String],
    what: &str,
) -> Result<(), Status> {
    let Some(caller) = caller else {
        return Ok(());
    };
    match services
        .iter()
        .find(|s| !caller.ids.iter().any(|id| id.service == **s))
    {
        None => Ok(()),
        Some(service) => {
            let own: Vec<String> = caller.ids.iter().map(ToString::to_string).collect();
            tracing::warn!(caller = %caller.primary(), %service, "refused: {what}");
            Err(Status::permission_denied(format!(
                "{what}: {} may not act as {service}; its certificate names only [{}]",
                if own.is_empty() {
                    "a caller without a mesh identity".to_string()
                } else {
                    caller.primary()
                },
                own.join(", ")
            )))
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let caller = request.extensions().get::<PeerIdentity>().cloned();
        let request = request.into_inner();
        let Some(instance) = request.instance else {
            return Err(Status::invalid_argument("register: instance is required"));
        };
        if instance.id.is_empty() || instance.address.is_empty() || instance.services.is_empty() {
            return Err(Status::invalid_argument(
                "register: instance needs an id, an address and at least one service",
            ));
        }
        may_act_as(caller.as_ref(), &instance.services, "register")?;
        if let Some(existing) = self.store.services_of(&instance.id) {
            may_act_as(
                caller.as_ref(),
                &existing,
                "register over an existing instance",
            )?;
        }
        tracing::info!(id = %instance.id, address = %instance.address, services = ?instance.services, "registered");
        let (lease_id, ttl) = self.store.register(
            instance,
            Duration::from_millis(u64::from(request.ttl_ms)),
            Instant::now(),
        );
        Ok(Response::new(RegisterResponse {
            lease_id,
            ttl_ms: ttl.as_millis() as u32,
        }))
    }

    async fn keep_alive(
        &self,
        request: Request<KeepAliveRequest>,
    ) -> Result<Response<KeepAliveResponse>, Status> {
        let request = request.into_inner();
        let instance = Some(request.instance_id.as_str()).filter(|i| !i.is_empty());
        let ttl = self
            .store
            .keep_alive(request.lease_id, instance, Instant::now())
            .map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(KeepAliveResponse {
            ttl_ms: ttl.as_millis() as u32,
        }))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let id = &request.get_ref().instance_id;
        if let Some(existing) = self.store.services_of(id) {
            may_act_as(
                request.extensions().get::<PeerIdentity>(),
                &existing,
                "deregister",
            )?;
        }
        if self.store.deregister(id) {
            tracing::info!(id = %id, "deregistered");
        }
        Ok(Response::new(DeregisterResponse {}))
    }

    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<ResolveResponse>, Status> {
        Ok(Response::new(ResolveResponse {
            instances: self.store.resolve(&request.get_ref().service),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let store = self.store.clone();
        let (snapshot, feed) = store.watch(&service);
        let first = WatchEvent {
            kind: Kind::Snapshot as i32,
            instances: snapshot,
        };
        let state = (store, service, feed, Some(first));
        let stream =
            futures_util::stream::unfold(state, |(store, service, mut feed, pending)| async move {
                if let Some(event) = pending {
                    return Some((Ok(event), (store, service, feed, None)));
                }
                loop {
                    match feed.recv().await {
                        Ok(change) if serves(change.instance(), &service) => {
                            let event = match change {
                                Change::Upsert(i) => WatchEvent {
                                    kind: Kind::Upsert as i32,
                                    instances: vec![i],
                                },
                                Change::Remove(i) => WatchEvent {
                                    kind: Kind::Remove as i32,
                                    instances: vec![i],
                                },
                            };
                            return Some((Ok(event), (store, service, feed, None)));
                        }
                        Ok(_) => continue,
                        // Fell behind: start over from a fresh snapshot.
                        Err(RecvError::Lagged(_)) => {
                            let (snapshot, fresh) = store.watch(&service);
                            let event = WatchEvent {
                                kind: Kind::Snapshot as i32,
                                instances: snapshot,
                            };
                            return Some((Ok(event), (store, service, fresh, None)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Expires lapsed leases until `shutdown` completes, waking at the next expiry (at least every 100 ms
/// while leases exist, so new short leases are honoured promptly).
pub async fn run_expiry(store: Arc<Store>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let now = Instant::now();
        for gone in store.expire(now) {
            tracing::info!(id = %gone.id, address = %gone.address, "lease expired");
        }
        let next = store
            .next_expiry()
            .map_or(now + Duration::from_millis(100), |t| {
                t.min(now + Duration::from_millis(100))
            });
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = &mut shutdown => return,
        }
    }
}
