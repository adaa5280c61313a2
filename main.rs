//! The `exemesh` command line.

mod cli;

/// mimalloc instead of glibc's malloc: a call allocates and frees on different threads (the
/// runtime's workers, the span exporter's thread), where glibc's arenas spend ~12–17 % of a serving
/// process's CPU (measured with perf; before/after in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
