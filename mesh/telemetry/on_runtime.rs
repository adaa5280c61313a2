//! A span exporter run on the tokio runtime: for opentelemetry-otlp's HTTP exporter, whose client
//! (hyper) needs a tokio reactor, while the SDK's batch span processor calls exporters on a thread
//! of its own, outside any runtime. Called there directly, the HTTP exporter panicked on its first
//! export ("there is no reactor running") and took the processor's thread with it: no span ever
//! left over `http/protobuf`.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// Runs every export of `E` as a task on the runtime it was made in.
#[derive(Debug)]
pub struct OnRuntime<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
}

impl<E> OnRuntime<E> {
    /// Wraps `inner`; must be called inside a tokio runtime, which then runs every export.
    pub fn new(inner: E) -> Self {
        OnRuntime {
            inner: Arc::new(inner),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.export(batch).await })
            .await
            .map_err(|e| OTelSdkError::InternalFailure(format!("the export task failed: {e}")))?
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Set while the provider is built, before any export shares `inner`.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
