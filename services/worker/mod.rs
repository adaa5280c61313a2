//! Worker mode: a pool of long-lived processes speaking the stdio worker protocol
//! (docs/worker-protocol.md, `proto/exemesh/v1/worker.proto`).
//!
//! * [`frame`]: the JSON lines, both ways;
//! * [`conn`]: one running worker: its writer, its table of calls in flight, cancellation;
//! * [`pool`]: starting, supervising (ready handshake, restart with backoff) and choosing workers;
//! * [`runner`]: one gRPC call carried out on a worker;
//! * [`outbound`]: calls from workers into the mesh.

pub mod conn;
pub mod frame;
pub mod outbound;
pub mod pool;
pub mod runner;
