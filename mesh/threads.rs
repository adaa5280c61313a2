//! How many runtime worker threads an exemesh process starts.
//!
//! A service (`serve`, `registry`, `up` and the `serve` processes it starts) shares its machine with
//! the executables it runs and, usually, with other services and their callers: by default it takes
//! half of the CPUs it may use, at least one. A one-off command (`bench`, `call`, `status`...) takes
//! all of them: a load generator must not be what limits the calls it measures. `--threads`
//! overrides both.
//!
//! Measured on 2 vCPUs shared by a client and two replicas (docs/benchmarks.md, "Runtime threads"):
//! every process starting a thread per CPU puts six busy threads on two CPUs. Since the runtime has
//! no LIFO slot ([`crate::mesh::busy_poll`]), a task woken by another task of the same thread wakes
//! a sleeping sibling thread to share it out, so a service with two threads pays a cross-thread
//! wake-up for most hand-offs within a call: one thread per service served the mesh 1.44× / 1.25×
//! the calls at 1 / 16 in flight and cut the latency a full mesh hop adds at low load, while a
//! worker-mode server (its workers are processes of their own) kept 0.96–0.98× at 1 and 64 in
//! flight.

use std::num::NonZeroUsize;

/// What kind of process the threads are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A long-running service that shares the machine: half the CPUs, at least one.
    Service,
    /// A one-off command, a load generator among them: every CPU.
    Tool,
}

/// The CPUs this process may use (its affinity and cgroup quota, as the standard library reads
/// them); one if that cannot be told.
pub fn available_cpus() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// The default number of worker threads for a process of `role` that may use `cpus` CPUs.
pub fn default_threads(role: Role, cpus: NonZeroUsize) -> NonZeroUsize {
    match role {
        Role::Tool => cpus,
        Role::Service => NonZeroUsize::new(cpus.get() / 2).unwrap_or(NonZeroUsize::MIN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: usize) -> NonZeroUsize {
        NonZeroUsize::new(v).expect("non-zero")
    }

    #[test]
    fn a_service_takes_half_the_cpus_and_at_least_one() {
        let service = |cpus| default_threads(Role::Service, n(cpus)).get();
        assert_eq!(service(1), 1);
        assert_eq!(service(2), 1);
        assert_eq!(service(3), 1);
        assert_eq!(service(4), 2);
        assert_eq!(service(16), 8);
    }

    #[test]
    fn a_tool_takes_every_cpu() {
        assert_eq!(default_threads(Role::Tool, n(1)).get(), 1);
        assert_eq!(default_threads(Role::Tool, n(2)).get(), 2);
        assert_eq!(default_threads(Role::Tool, n(16)).get(), 16);
    }
}
