//! exemesh's own spans (server, client, exec, outbound call), carried in OpenTelemetry
//! [`Context`]s: [`MeshSpan`]s for OTLP/gRPC export, the SDK's spans for OTLP/HTTP.
//!
//! [`MeshSpan`]: super::mesh_span::MeshSpan
//!
//! Every call makes two or three of these, so they skip the `tracing` bridge: going through a
//! `tracing` span costs a registry slot, per-layer filtering, a field visitor per recorded value,
//! an enter/exit per poll and a conversion at close, whether or not the span is sampled (measured:
//! tracing at 100 % sampling cost ~45 µs of CPU per call that way). Here a span is one SDK call, an
//! unsampled span records nothing, and with tracing off no span exists at all: a context is then
//! just its parent, so a caller's trace context still passes through unchanged. `tracing` remains
//! for logs.
//!
//! The span of the running task is the current OpenTelemetry context ([`Context::current`]):
//! futures run inside theirs with [`FutureExt::with_context`], and [`record`] and [`event`] write
//! to it.
//!
//! [`FutureExt::with_context`]: opentelemetry::context::FutureExt::with_context

use std::borrow::Cow;
use std::sync::OnceLock;

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::SdkTracer;

use super::mesh_span::{EncodedAttributes, MeshSpan};
use super::mesh_tracer::MeshTracer;

/// What makes the spans.
#[derive(Debug)]
pub enum Tracer {
    /// exemesh's own spans, written as OTLP protobuf as they go (OTLP/gRPC export).
    Mesh(MeshTracer),
    /// The SDK's spans, exported by its batch processor (OTLP/HTTP export).
    Sdk(SdkTracer),
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Room for the attributes one of exemesh's spans gets, so that setting them, then the ones
/// recorded later (status, worker, pid), never grows the list.
pub const ATTRIBUTES: usize = 8;

/// Makes spans with `tracer` from now on (once per process; later calls are ignored).
pub fn install(tracer: Tracer) {
    let _ = TRACER.set(tracer);
}

/// Whether spans are made (an exporter is configured).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// A new span named `name`, child of `parent`, as a context holding it; `attributes` are only
/// written for a span that records (sampled). With tracing off, `parent` itself.
pub fn start(
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    parent: &Context,
    attributes: impl FnOnce(&mut Attributes<'_>),
) -> Context {
    let tracer = match TRACER.get() {
        None => return parent.clone(),
        Some(Tracer::Mesh(tracer)) => return tracer.start(name.into(), kind, parent, attributes),
        Some(Tracer::Sdk(tracer)) => tracer,
    };
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(Vec::with_capacity(ATTRIBUTES))
        .start_with_context(tracer, parent);
    let cx = parent.with_span(span);
    let span = cx.span();
    if span.is_recording() {
        let mut list = Vec::with_capacity(ATTRIBUTES);
        attributes(&mut Attributes::collect(&mut list));
        span.set_attributes(list);
    }
    cx
}

/// The attributes a new span starts with: written straight into exemesh's own spans, collected
/// as `KeyValue`s for the SDK's.
#[derive(Debug)]
pub struct Attributes<'a>(Sink<'a>);

#[derive(Debug)]
enum Sink<'a> {
    Span(&'a mut MeshSpan),
    List(&'a mut Vec<KeyValue>),
}

impl<'a> Attributes<'a> {
    /// Attributes written into `span`.
    pub fn of(span: &'a mut MeshSpan) -> Attributes<'a> {
        Attributes(Sink::Span(span))
    }

    /// Attributes collected as `KeyValue`s into `list`.
    pub fn collect(list: &'a mut Vec<KeyValue>) -> Attributes<'a> {
        Attributes(Sink::List(list))
    }

    /// A string attribute.
    pub fn str(&mut self, key: &'static str, value: &str) {
        match &mut self.0 {
            Sink::Span(span) => span.set_str(key, value),
            Sink::List(list) => list.push(KeyValue::new(key, value.to_string())),
        }
    }

    /// An integer attribute.
    pub fn i64(&mut self, key: &'static str, value: i64) {
        match &mut self.0 {
            Sink::Span(span) => span.set_i64(key, value),
            Sink::List(list) => list.push(KeyValue::new(key, value)),
        }
    }

    /// Any attribute.
    pub fn add(&mut self, attribute: KeyValue) {
        match &mut self.0 {
            Sink::Span(span) => span.set_attribute(attribute),
            Sink::List(list) => list.push(attribute),
        }
    }

    /// Attributes many spans get, written once.
    pub fn encoded(&mut self, attributes: &EncodedAttributes) {
        match &mut self.0 {
            Sink::Span(span) => span.set_encoded(attributes),
            Sink::List(list) => list.extend(attributes.list().iter().cloned()),
        }
    }
}

/// Sets an attribute on the span of `cx` (if it records).
pub fn set(cx: &Context, key: &'static str, value: impl Into<Value>) {
    let span = cx.span();
    if span.is_recording() {
        span.set_attribute(KeyValue::new(key, value));
    }
}

/// Marks the span of `cx` as failed with `description`.
pub fn set_error(cx: &Context, description: impl Into<Cow<'static, str>>) {
    let span = cx.span();
    if span.is_recording() {
        span.set_status(Status::error(description));
    }
}

/// Sets an attribute on the current span (the execution's, in an executor).
pub fn record(key: &'static str, value: impl Into<Value>) {
    Context::map_current(|cx| set(cx, key, value));
}

/// Adds an event to the current span (retries, ejections, stderr lines): these belong on the
/// trace, not in the log. `attributes` are only computed for a span that records.
pub fn event(name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) {
    Context::map_current(|cx| {
        let span = cx.span();
        if span.is_recording() {
            span.add_event(name, attributes());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    #[test]
    fn without_a_tracer_a_span_is_its_parent() {
        // No test in this binary installs a tracer.
        let remote = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("id"),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let parent = Context::new().with_remote_span_context(remote.clone());
        let cx = start("x", SpanKind::Server, &parent, |_| {
            panic!("attributes are not computed when nothing records")
        });
        assert_eq!(cx.span().span_context(), &remote);
        set(&cx, "k", "v");
        set_error(&cx, "no effect");
        assert!(!enabled());
    }
}
