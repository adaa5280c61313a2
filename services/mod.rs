//! Serving contracts by running executables.
//!
//! The request path, in the order data flows:
//! [`manifest`] (what to run) → [`contract`] (the `.proto` files, compiled at run time) →
//! [`binding`] (manifest checked against the contract) → [`server`] (tonic server with health and
//! reflection) → [`dispatch`] (one generic service for every method, deadlines and limits) →
//! a backend: [`spawn`] (one process per call) or [`worker`] (a pool speaking the worker protocol) →
//! [`json`] (proto3 JSON both ways), [`reply`] and [`transcode`] (replies straight from JSON to
//! protobuf on the hot path) and [`error`] (the one mapping to gRPC statuses).

pub mod binding;
pub mod call;
pub mod call_headers;
pub mod child;
pub mod contract;
pub mod dispatch;
pub mod error;
pub mod exit_status;
pub mod guard_table;
pub mod json;
pub mod limiter;
pub mod line_reader;
pub mod manifest;
pub mod mesh_file;
pub mod placeholder;
pub mod process;
pub mod reaper;
pub mod reply;
pub mod rpc_kind;
pub mod sandbox;
pub mod server;
pub mod spawn;
pub mod supervisor;
pub mod transcode;
pub mod vfork;
pub mod worker;
