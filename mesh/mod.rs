//! What connects services: the pieces a *caller* and a *server* share, independent of how a method is
//! executed.
//!
//! * [`codec`]: a tonic codec for messages known only at run time (prost-reflect descriptors);
//! * [`deadline`]: the `grpc-timeout` header, parsed and written;
//! * [`status_code`]: gRPC status code names, both ways;
//! * [`reflection`]: fetching a server's contracts through gRPC server reflection;
//! * [`dynamic_client`]: calling any method of any server with JSON in and JSON out.
//!
//! `mesh` never depends on `services`.

pub mod codec;
pub mod deadline;
pub mod dynamic_client;
pub mod reflection;
pub mod status_code;
