//! What connects services: the pieces a *caller* and a *server* share, independent of how a method is
//! executed.
//!
//! * [`busy_poll`]: runtime threads that poll briefly for the next event before they sleep;
//! * [`codec`]: a tonic codec for messages known only at run time (prost-reflect descriptors);
//! * [`deadline`]: the `grpc-timeout` header, parsed and written;
//! * [`status_code`]: gRPC status code names, both ways;
//! * [`reflection`]: fetching a server's contracts through gRPC server reflection;
//! * [`dynamic_client`]: calling any method of any server with JSON in and JSON out;
//! * [`transport`]: the HTTP/2 accept loop every exemesh server uses;
//! * [`drain_body`]: request bodies read to their end even when the answer came first;
//! * [`router`]: which of a server's services a call is for;
//! * [`introspection`]: health and reflection, served next to every service;
//! * [`registry`]: the embedded discovery registry (`exemesh registry`);
//! * [`telemetry`]: OpenTelemetry tracing and trace-context propagation;
//! * [`threads`]: how many runtime threads a process starts.
//!
//! `mesh` never depends on `services`.

pub mod busy_poll;
pub mod call_limit;
pub mod channel;
pub mod codec;
pub mod deadline;
pub mod discovery;
pub mod drain_body;
pub mod dynamic_client;
pub mod introspection;
pub mod reflection;
pub mod registry;
pub mod router;
pub mod status_code;
pub mod telemetry;
pub mod threads;
pub mod tls;
pub mod trace_view;
pub mod transport;
