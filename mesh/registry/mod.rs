//! The embedded discovery registry: an in-memory implementation of `exemesh.v1.Registry`.
//!
//! * [`store`]: instances, leases, expiry and the change feed (pure logic, time passed in);
//! * [`service`]: the gRPC service over the store, and the expiry loop;
//! * [`server`]: serving it with health and reflection.

pub mod server;
pub mod service;
pub mod store;
