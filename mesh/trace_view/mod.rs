//! The trace view of the embedded default: `exemesh up` receives OTLP spans itself ([`receiver`],
//! which reads only what it indexes: [`wire`], [`span_head`]) and keeps the recent ones
//! ([`store`], in a [`span_log`]), serves them as `exemesh.v1.Traces` ([`service`]), and `exemesh trace` prints them
//! as a waterfall ([`waterfall`]).

pub mod receiver;
pub mod service;
pub mod span_head;
pub mod span_log;
pub mod store;
pub mod waterfall;
pub mod wire;
