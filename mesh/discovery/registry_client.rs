//! [`Discovery`] over the embedded registry's gRPC API.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::{Discovery, DiscoveryError, Instance, Lease, WatchUpdate};
use crate::pb::v1::registry_client::RegistryClient;
use crate::pb::v1::watch_event::Kind;
use crate::pb::v1::*;

/// The embedded registry, reached over gRPC (the channel reconnects by itself).
#[derive(Debug, Clone)]
pub struct RegistryDiscovery {
    client: RegistryClient<Channel>,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The identity a registry proves (its certificate names this service).
pub const REGISTRY_SERVICE: &str = "exemesh.v1.Registry";

impl RegistryDiscovery {
    /// A lazy client for the registry at `addr` (`host:port`).
    pub fn new(addr: &str) -> Result<Self, DiscoveryError> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| DiscoveryError::BadAddress(addr.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(Self {
            client: RegistryClient::new(crate::mesh::tls::client::lazy(
                endpoint,
                Some(REGISTRY_SERVICE),
            )),
        })
    }

    fn client(&self) -> RegistryClient<Channel> {
        self.client.clone()
    }
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

fn map_status(status: tonic::Status) -> DiscoveryError {
    match status.code() {
        Code::NotFound => DiscoveryError::LeaseLost(status.message().to_string()),
        Code::InvalidArgument => DiscoveryError::Invalid(status.message().to_string()),
        _ => {
            // "transport error" alone says little: the causes tell what happened (and whether
            // plaintext met TLS).
            let mut detail = status.message().to_string();
            let mut source = std::error::Error::source(&status);
            while let Some(cause) = source {
                detail.push_str(": ");
                detail.push_str(&cause.to_string());
                source = cause.source();
            }
            let hint = crate::mesh::tls::client::mismatch_hint(&detail)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            DiscoveryError::Unavailable(format!(
                "{}: {detail}{hint}",
                crate::mesh::status_code::code_name(status.code()),
            ))
        }
    }
}

impl Discovery for RegistryDiscovery {
    fn register(
        &self,
        instance: Instance,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Lease, DiscoveryError>> {
        Box::pin(async move {
            let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
            let reply = self
                .client()
                .register(request(RegisterRequest {
                    instance: Some(instance),
                    ttl_ms,
                }))
                .await
                .map_err(map_status)?;
            let reply = reply.into_inner();
            Ok(Lease {
                id: reply.lease_id,
                ttl: Duration::from_millis(u64::from(reply.ttl_ms)),
            })
        })
    }

    fn keep_alive(
        &self,
        lease: u64,
        instance_id: &str,
    ) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        let instance_id = instance_id.to_string();
        Box::pin(async move {
            self.client()
                .keep_alive(request(KeepAliveRequest {
                    lease_id: lease,
                    instance_id,
                }))
                .await
                .map_err(map_status)?;
            Ok(())
        })
    }

    fn deregister(&self, instance_id: &str) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        let instance_id = instance_id.to_string();
        Box::pin(async move {
            self.client()
                .deregister(request(DeregisterRequest { instance_id }))
                .await
                .map_err(map_status)?;
            Ok(())
        })
    }

    fn resolve(&self, service: &str) -> BoxFuture<'_, Result<Vec<Instance>, DiscoveryError>> {
        let service = service.to_string();
        Box::pin(async move {
            let reply = self
                .client()
                .resolve(request(ResolveRequest { service }))
                .await
                .map_err(map_status)?;
            Ok(reply.into_inner().instances)
        })
    }

    fn watch(
        &self,
        service: &str,
    ) -> BoxFuture<
        '_,
        Result<BoxStream<'static, Result<WatchUpdate, DiscoveryError>>, DiscoveryError>,
    > {
        let service = service.to_string();
        Box::pin(async move {
            let stream = self
                .client()
                .watch(WatchRequest { service })
                .await
                .map_err(map_status)?
                .into_inner();
            let updates = stream.map(|event| {
                let event = event.map_err(map_status)?;
                Ok(match Kind::try_from(event.kind) {
                    Ok(Kind::Snapshot) => WatchUpdate::Snapshot(event.instances),
                    Ok(Kind::Upsert) => WatchUpdate::Upsert(event.instances),
                    Ok(Kind::Remove) => WatchUpdate::Remove(event.instances),
                    _ => {
                        return Err(DiscoveryError::Invalid(format!(
                            "unknown watch event kind {}",
                            event.kind
                        )));
                    }
                })
            });
            Ok(updates.boxed())
        })
    }
}
