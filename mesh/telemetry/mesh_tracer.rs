//! Starting exemesh's spans for OTLP/gRPC export: the SDK tracer's decisions (its samplers, its
//! random ids, its span limits) without the SDK's span ([`MeshSpan`] instead).
//!
//! A span the sampler drops is no object at all: its context (fresh span id, the trace's id, not
//! sampled) is set in the [`Context`] as a remote span context would be, which is what the SDK's
//! non-recording span amounts to.

use std::borrow::Cow;

use opentelemetry::Context;
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, TraceContextExt as _, TraceFlags};
use opentelemetry_sdk::trace::{
    Config, IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample, SpanLimits,
};

use super::batch::Batches;
use super::mesh_span::{Lineage, MeshSpan};
use super::span::Attributes;

/// Starts [`MeshSpan`]s that end in `batches`.
#[derive(Debug)]
pub struct MeshTracer {
    sampler: Box<dyn ShouldSample>,
    ids: Box<dyn IdGenerator>,
    limits: SpanLimits,
    batches: Batches,
}

impl MeshTracer {
    /// Spans sampled by `sampler`, with random ids and the SDK's span limits (which
    /// `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT` and the like set), written to `batches`.
    pub fn new(sampler: Sampler, batches: Batches) -> MeshTracer {
        MeshTracer::with_ids(
            Box::new(sampler),
            Box::new(RandomIdGenerator::default()),
            Config::default().span_limits,
            batches,
        )
    }

    /// A tracer with its id generator and limits given.
    pub fn with_ids(
        sampler: Box<dyn ShouldSample>,
        ids: Box<dyn IdGenerator>,
        limits: SpanLimits,
        batches: Batches,
    ) -> MeshTracer {
        MeshTracer {
            sampler,
            ids,
            limits,
            batches,
        }
    }

    /// A new span named `name`, child of `parent`, as a context holding it; `attributes` are only
    /// computed for a span that records.
    pub fn start(
        &self,
        name: Cow<'static, str>,
        kind: SpanKind,
        parent: &Context,
        attributes: impl FnOnce(&mut Attributes<'_>),
    ) -> Context {
        if parent.is_telemetry_suppressed() {
            return parent.with_remote_span_context(SpanContext::empty_context());
        }
        let span_id = self.ids.new_span_id();
        let parent_span = parent.span();
        let parent_context = parent_span.span_context();
        // An invalid parent is no parent: its trace id would make an invalid span.
        let (trace_id, flags, lineage) = if parent_context.is_valid() {
            let lineage = Lineage {
                parent: parent_context.span_id(),
                parent_remote: parent_context.is_remote(),
            };
            (
                parent_context.trace_id(),
                parent_context.trace_flags(),
                lineage,
            )
        } else {
            let lineage = Lineage {
                parent: opentelemetry::trace::SpanId::INVALID,
                parent_remote: false,
            };
            (self.ids.new_trace_id(), TraceFlags::default(), lineage)
        };
        let sampling = self
            .sampler
            .should_sample(Some(parent), trace_id, &name, &kind, &[], &[]);
        let (sampled, batches) = match sampling.decision {
            SamplingDecision::Drop => {
                let context = SpanContext::new(
                    trace_id,
                    span_id,
                    TraceFlags::default(),
                    false,
                    sampling.trace_state,
                );
                return parent.with_remote_span_context(context);
            }
            SamplingDecision::RecordOnly => (false, None),
            SamplingDecision::RecordAndSample => (true, Some(self.batches.clone())),
        };
        let context = SpanContext::new(
            trace_id,
            span_id,
            flags.with_sampled(sampled),
            false,
            sampling.trace_state,
        );
        let now = opentelemetry::time::now();
        let mut span = MeshSpan::start(context, lineage, name, kind, self.limits, batches, now);
        span.set_attributes(sampling.attributes);
        attributes(&mut Attributes::of(&mut span));
        parent.with_span(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use opentelemetry::KeyValue;
    use opentelemetry::trace::{
        Link, SpanBuilder, SpanId, TraceId, TraceState, Tracer as _, TracerProvider as _,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SamplingResult, SdkTracerProvider};
    use prost::Message as _;

    use crate::mesh::telemetry::otlp::ResourceFields;
    use crate::mesh::telemetry::reference::{CountedIds, Kept};

    /// Records everything and samples nothing.
    #[derive(Debug, Clone)]
    struct RecordOnly;

    impl ShouldSample for RecordOnly {
        fn should_sample(
            &self,
            parent: Option<&Context>,
            _trace_id: TraceId,
            _name: &str,
            _kind: &SpanKind,
            _attributes: &[KeyValue],
            _links: &[Link],
        ) -> SamplingResult {
            SamplingResult {
                decision: SamplingDecision::RecordOnly,
                attributes: vec![KeyValue::new("sampler", "record only")],
                trace_state: parent
                    .map(|cx| cx.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            }
        }
    }

    fn parent(trace: u128, flags: TraceFlags, remote: bool) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(trace),
            SpanId::from(0x77),
            flags,
            remote,
            TraceState::from_key_value([("k", "v")]).expect("a trace state"),
        ))
    }

    /// A span's context, whether it records, and (if it was exported) its parent, whether that
    /// was remote and its sampler attributes.
    type Outcome = (SpanContext, bool, Option<(Vec<u8>, bool, Vec<String>)>);

    #[test]
    fn spans_are_sampled_identified_and_parented_as_the_sdks_tracer_does() {
        let samplers: Vec<Box<dyn ShouldSample>> = vec![
            Box::new(Sampler::AlwaysOn),
            Box::new(Sampler::AlwaysOff),
            Box::new(Sampler::TraceIdRatioBased(0.5)),
            Box::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))),
            Box::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOff))),
            Box::new(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                0.3,
            )))),
            Box::new(RecordOnly),
        ];
        let parents = [
            Context::new(),
            parent(0xabc, TraceFlags::SAMPLED, true),
            parent(0xabc, TraceFlags::default(), true),
            parent(0xdef, TraceFlags::SAMPLED, false),
            parent(0xdef, TraceFlags::default(), false),
            parent(0, TraceFlags::SAMPLED, true),
        ];
        let mut exported = 0;
        let mut dropped = 0;
        for (s, sampler) in samplers.iter().enumerate() {
            for (p, parent) in parents.iter().enumerate() {
                let seed = (s * 100 + p * 10) as u64;
                let sdk = sdk_outcomes(sampler.box_clone(), seed, parent);
                let ours = outcomes(sampler.box_clone(), seed, parent);
                assert_eq!(ours, sdk, "sampler {sampler:?}, parent {p}");
                exported += ours.iter().filter(|o| o.2.is_some()).count();
                dropped += ours.iter().filter(|o| !o.1).count();
            }
        }
        // The cases cover both outcomes.
        assert!(
            exported > 0 && dropped > 0,
            "{exported} exported, {dropped} dropped"
        );
    }

    /// 8 spans of the SDK's tracer under `parent`.
    fn sdk_outcomes(sampler: Box<dyn ShouldSample>, seed: u64, parent: &Context) -> Vec<Outcome> {
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(kept.clone())
            .with_id_generator(CountedIds::new(seed))
            .with_sampler(sampler)
            .build();
        let tracer = provider.tracer("exemesh");
        (0..8)
            .map(|_| {
                let span = tracer.build_with_context(
                    SpanBuilder::from_name("n").with_kind(SpanKind::Server),
                    parent,
                );
                let (context, recording) = (span.span_context().clone(), span.is_recording());
                drop(span);
                let exported = kept
                    .take()
                    .pop()
                    .filter(|data| data.span_context.is_sampled())
                    .map(|data| {
                        let parent = if data.parent_span_id == SpanId::INVALID {
                            Vec::new()
                        } else {
                            data.parent_span_id.to_bytes().to_vec()
                        };
                        let attributes = data.attributes.iter().map(|kv| kv.key.to_string());
                        (parent, data.parent_span_is_remote, attributes.collect())
                    });
                (context, recording, exported)
            })
            .collect()
    }

    /// 8 spans of a [`MeshTracer`] under `parent`.
    fn outcomes(sampler: Box<dyn ShouldSample>, seed: u64, parent: &Context) -> Vec<Outcome> {
        let batches = Batches::detached();
        let tracer = MeshTracer::with_ids(
            sampler,
            Box::new(CountedIds::new(seed)),
            SpanLimits::default(),
            batches.clone(),
        );
        (0..8)
            .map(|_| {
                let cx = tracer.start("n".into(), SpanKind::Server, parent, |_| {});
                let span = cx.span();
                let (context, recording) = (span.span_context().clone(), span.is_recording());
                drop(cx);
                let message = batches
                    .take()
                    .export_message(&ResourceFields::new(&Resource::builder_empty().build()));
                let mut request =
                    ExportTraceServiceRequest::decode(&message[5..]).expect("decodes");
                let exported = request.resource_spans[0].scope_spans[0]
                    .spans
                    .pop()
                    .map(|span| {
                        let remote = span.flags & 0x200 != 0;
                        let attributes = span.attributes.into_iter().map(|kv| kv.key);
                        (span.parent_span_id, remote, attributes.collect())
                    });
                (context, recording, exported)
            })
            .collect()
    }
}
