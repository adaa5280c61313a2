//! [`Discovery`] over an etcd cluster (v3 gRPC API, etcd 3.4+).
//!
//! Layout: one key per (service, instance), `PREFIX/SERVICE/INSTANCE_ID`, whose value is the
//! protobuf-encoded `exemesh.v1.Instance`, attached to the instance's etcd lease: when the lease
//! lapses etcd deletes the keys and watchers see it. Resolve is a prefix range; watch is a range (the
//! snapshot) then an etcd watch from the next revision. Every request goes to the cluster's members in
//! turn until one answers, so a dead member only costs a retry.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};

use super::{Discovery, DiscoveryError, Instance, Lease, WatchUpdate};
use crate::pb::etcd::event::EventType;
use crate::pb::etcd::kv_client::KvClient;
use crate::pb::etcd::lease_client::LeaseClient;
use crate::pb::etcd::watch_client::WatchClient;
use crate::pb::etcd::watch_request::RequestUnion;
use crate::pb::etcd::*;

/// An identity directory (`ca.pem` for etcd's CA, `cert.pem`/`key.pem` for exemesh's client
/// certificate) for etcd clusters served over TLS with client certificates.
pub const EXEMESH_ETCD_TLS_DIR: &str = "EXEMESH_ETCD_TLS_DIR";

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/exemesh/services";
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// etcd's smallest lease.
const MIN_TTL_SECS: i64 = 2;
/// Operations per transaction that etcd accepts by default (`--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

/// An etcd cluster used for discovery.
#[derive(Debug)]
pub struct EtcdDiscovery {
    members: Vec<(String, Channel)>,
    next: AtomicUsize,
    prefix: String,
    leases: Mutex<HashMap<String, i64>>,
}

impl EtcdDiscovery {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
    pub fn new(spec: &str) -> Result<Self, DiscoveryError> {
        let bad = || DiscoveryError::BadAddress(spec.to_string());
        let rest = spec.strip_prefix("etcd://").ok_or_else(bad)?;
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_string()),
            None => (rest, DEFAULT_PREFIX.to_string()),
        };
        let tls = match std::env::var_os(EXEMESH_ETCD_TLS_DIR) {
            Some(dir) => Some(
                crate::mesh::tls::client::standard_config(std::path::Path::new(&dir))
                    .map_err(|e| DiscoveryError::Tls(format!("{EXEMESH_ETCD_TLS_DIR}: {e}")))?,
            ),
            None => None,
        };
        let mut members = Vec::new();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            let endpoint = Endpoint::from_shared(format!("http://{host}"))
                .map_err(|_| bad())?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(3));
            let channel = match &tls {
                Some(config) => {
                    crate::mesh::tls::client::lazy_with_config(config.clone(), endpoint)
                }
                None => endpoint.connect_lazy(),
            };
            members.push((host.to_string(), channel));
        }
        if members.is_empty() || prefix.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            members,
            next: AtomicUsize::new(0),
            prefix,
            leases: Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, service: &str, id: &str) -> Vec<u8> {
        format!("{}/{service}/{id}", self.prefix).into_bytes()
    }

    fn range_prefix(&self, service: &str) -> (Vec<u8>, Vec<u8>) {
        let start = if service.is_empty() {
            format!("{}/", self.prefix)
        } else {
            format!("{}/{service}/", self.prefix)
        }
        .into_bytes();
        let mut end = start.clone();
        // The smallest key after every key with this prefix: the last byte, plus one ('/' + 1 = '0').
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        (start, end)
    }

    /// Runs `op` against the members, starting with the last one that answered, until one does.
    async fn any_member<T, F, Fut>(&self, what: &str, op: F) -> Result<T, DiscoveryError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.members.len();
        let first = self.next.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..n {
            let index = (first + i) % n;
            let (host, channel) = &self.members[index];
            match tokio::time::timeout(CALL_TIMEOUT, op(channel.clone())).await {
                Ok(Ok(value)) => {
                    self.next.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                    return Err(DiscoveryError::LeaseLost(status.message().to_string()));
                }
                Ok(Err(status)) => last = format!("{host}: {}", status.message()),
                Err(_) => last = format!("{host}: timed out"),
            }
        }
        Err(DiscoveryError::Unavailable(format!(
            "etcd {what} failed on every member (last: {last})"
        )))
    }

    fn decode(kvs: &[KeyValue]) -> Vec<Instance> {
        let mut by_id: BTreeMap<String, Instance> = BTreeMap::new();
        for kv in kvs {
            if let Ok(instance) = Instance::decode(kv.value.as_slice()) {
                by_id.entry(instance.id.clone()).or_insert(instance);
            }
        }
        by_id.into_values().collect()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Discovery for EtcdDiscovery {
    fn register(
        &self,
        mut instance: Instance,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Lease, DiscoveryError>> {
        Box::pin(async move {
            let secs = (ttl.as_millis().div_ceil(1000) as i64).max(MIN_TTL_SECS);
            let grant = self
                .any_member("lease grant", |ch| async move {
                    LeaseClient::new(ch)
                        .lease_grant(LeaseGrantRequest { ttl: secs, id: 0 })
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            if !grant.error.is_empty() {
                return Err(DiscoveryError::Invalid(grant.error));
            }
            let now = unix_ms();
            instance.registered_unix_ms = now;
            instance.renewed_unix_ms = now;
            let value = instance.encode_to_vec();
            // Every key of the instance in one transaction: watchers of each of its services see
            // it in the same revision, in one round trip (etcd allows 128 operations per
            // transaction by default, so more services take several).
            let puts: Vec<RequestOp> = instance
                .services
                .iter()
                .map(|service| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: self.key(service, &instance.id),
                        value: value.clone(),
                        lease: grant.id,
                        prev_kv: false,
                    })),
                })
                .collect();
            for chunk in puts.chunks(MAX_TXN_OPS) {
                self.any_member("put", |ch| {
                    let success = chunk.to_vec();
                    async move { KvClient::new(ch).txn(TxnRequest { success }).await }
                })
                .await?;
            }
            let old = self
                .leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(instance.id.clone(), grant.id);
            if let Some(old) = old.filter(|old| *old != grant.id) {
                // The previous registration of this id: its keys were just overwritten; drop its lease.
                let _ = self
                    .any_member("lease revoke", |ch| async move {
                        LeaseClient::new(ch)
                            .lease_revoke(LeaseRevokeRequest { id: old })
                            .await
                    })
                    .await;
            }
            Ok(Lease {
                id: grant.id as u64,
                ttl: Duration::from_secs(grant.ttl.max(1) as u64),
            })
        })
    }

    fn keep_alive(
        &self,
        lease: u64,
        _instance_id: &str,
    ) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        // etcd lease ids are unique cluster-wide and survive restarts: the id alone is enough.
        Box::pin(async move {
            let ttl = self
                .any_member("lease keep-alive", |ch| async move {
                    let mut stream = LeaseClient::new(ch)
                        .lease_keep_alive(tokio_stream::once(LeaseKeepAliveRequest {
                            id: lease as i64,
                        }))
                        .await?
                        .into_inner();
                    let reply = stream
                        .message()
                        .await?
                        .ok_or_else(|| tonic::Status::unavailable("keep-alive stream closed"))?;
                    Ok(reply.ttl)
                })
                .await?;
            if ttl <= 0 {
                return Err(DiscoveryError::LeaseLost(format!(
                    "etcd lease {lease:x} expired"
                )));
            }
            Ok(())
        })
    }

    fn deregister(&self, instance_id: &str) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        let lease = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(instance_id);
        Box::pin(async move {
            let Some(lease) = lease else { return Ok(()) };
            // Revoking the lease deletes every key of the instance at once.
            self.any_member("lease revoke", |ch| async move {
                LeaseClient::new(ch)
                    .lease_revoke(LeaseRevokeRequest { id: lease })
                    .await
            })
            .await?;
            Ok(())
        })
    }

    fn resolve(&self, service: &str) -> BoxFuture<'_, Result<Vec<Instance>, DiscoveryError>> {
        let (key, range_end) = self.range_prefix(service);
        Box::pin(async move {
            let reply = self
                .any_member("range", |ch| {
                    let (key, range_end) = (key.clone(), range_end.clone());
                    async move {
                        KvClient::new(ch)
                            .range(RangeRequest {
                                key,
                                range_end,
                                limit: 0,
                                revision: 0,
                            })
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            Ok(Self::decode(&reply.kvs))
        })
    }

    fn watch(
        &self,
        service: &str,
    ) -> BoxFuture<
        '_,
        Result<BoxStream<'static, Result<WatchUpdate, DiscoveryError>>, DiscoveryError>,
    > {
        let (key, range_end) = self.range_prefix(service);
        Box::pin(async move {
            // Snapshot and watch from the same member, so the revision is consistent.
            let (snapshot, events) = self
                .any_member("watch", |ch| {
                    let (key, range_end) = (key.clone(), range_end.clone());
                    async move {
                        let range = KvClient::new(ch.clone())
                            .range(RangeRequest {
                                key: key.clone(),
                                range_end: range_end.clone(),
                                limit: 0,
                                revision: 0,
                            })
                            .await?
                            .into_inner();
                        let revision = range.header.map_or(0, |h| h.revision);
                        let create = WatchRequest {
                            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                                key,
                                range_end,
                                start_revision: revision + 1,
                                progress_notify: true,
                                prev_kv: false,
                            })),
                        };
                        // Keep the request stream open: closing it would end the watch.
                        let requests =
                            tokio_stream::once(create).chain(futures_util::stream::pending());
                        let events = WatchClient::new(ch).watch(requests).await?.into_inner();
                        Ok((range.kvs, events))
                    }
                })
                .await?;
            let first = futures_util::stream::once(async move {
                Ok(WatchUpdate::Snapshot(Self::decode(&snapshot)))
            });
            let changes = events.flat_map(|response| futures_util::stream::iter(updates(response)));
            Ok(first.chain(changes).boxed())
        })
    }
}

/// One update per event, in order (a delete and a re-put of the same instance may share a response).
fn updates(
    response: Result<WatchResponse, tonic::Status>,
) -> Vec<Result<WatchUpdate, DiscoveryError>> {
    let response = match response {
        Ok(r) => r,
        Err(status) => {
            return vec![Err(DiscoveryError::Unavailable(format!(
                "etcd watch: {}",
                status.message()
            )))];
        }
    };
    if response.canceled {
        return vec![Err(DiscoveryError::Unavailable(format!(
            "etcd cancelled the watch: {}",
            response.cancel_reason
        )))];
    }
    let mut out = Vec::new();
    for event in response.events {
        let Some(kv) = event.kv else { continue };
        if event.r#type == EventType::Delete as i32 {
            // The value is gone with the key: the id is the key's last segment.
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let id = key.rsplit('/').next().unwrap_or_default().to_string();
            out.push(Ok(WatchUpdate::Remove(vec![Instance {
                id,
                ..Default::default()
            }])));
        } else if let Ok(instance) = Instance::decode(kv.value.as_slice()) {
            out.push(Ok(WatchUpdate::Upsert(vec![instance])));
        }
    }
    out
}
