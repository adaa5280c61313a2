//! Health (`grpc.health.v1`) and reflection (v1 and v1alpha), added to every exemesh server.

use prost::Message as _;
use prost_types::FileDescriptorSet;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::router::GrpcRouter;

/// A descriptor set could not be served through reflection.
#[derive(Debug, thiserror::Error)]
#[error("reflection: {0}")]
pub struct ReflectionSetupError(String);

impl ReflectionSetupError {
    /// An error with this explanation.
    pub fn new(message: String) -> Self {
        Self(message)
    }
}

/// Adds health and reflection to `routes`. `sets` are the contracts to describe (health's own is
/// added here; grpcurl 1.8 only speaks reflection v1alpha, newer clients v1).
pub fn with_introspection(
    routes: GrpcRouter,
    sets: Vec<FileDescriptorSet>,
) -> Result<(GrpcRouter, HealthReporter), ReflectionSetupError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let health_set = FileDescriptorSet::decode(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .map_err(|e| ReflectionSetupError(e.to_string()))?;
    let mut v1 = tonic_reflection::server::Builder::configure();
    let mut v1alpha = tonic_reflection::server::Builder::configure();
    for set in sets.into_iter().chain([health_set]) {
        v1 = v1.register_file_descriptor_set(set.clone());
        v1alpha = v1alpha.register_file_descriptor_set(set);
    }
    let v1 = v1
        .build_v1()
        .map_err(|e| ReflectionSetupError(e.to_string()))?;
    let v1alpha = v1alpha
        .build_v1alpha()
        .map_err(|e| ReflectionSetupError(e.to_string()))?;
    Ok((
        routes
            .add_service(health)
            .add_service(v1)
            .add_service(v1alpha),
        reporter,
    ))
}

/// Sets the status of `service` and of the whole server (`""`).
pub async fn set_status(reporter: &HealthReporter, service: &str, status: ServingStatus) {
    reporter.set_service_status(service, status).await;
    reporter.set_service_status("", status).await;
}
