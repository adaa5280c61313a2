//! # exemesh
//!
//! Turns existing executables into a real gRPC service mesh.
//!
//! ## Layout tour
//!
//! * [`pb`]: generated code for exemesh's own contracts in `proto/` (the worker protocol frames).
//! * [`mesh`]: what connects services and is shared by callers and servers: the dynamic codec,
//!   deadlines, status code names, reflection, a dynamic client. It never imports `services`.
//! * [`services`]: serving a `.proto` contract by running executables: the manifest, run-time
//!   contracts, the generic gRPC service, spawn mode, worker pools, status mapping, health,
//!   reflection and graceful shutdown.
//!
//! The `exemesh` binary (`main.rs`, `cli/`) is a thin layer of subcommands over this library.
//! docs/ARCHITECTURE.md explains the design.

pub mod mesh;
pub mod pb;
pub mod services;
