//! Timing helpers shared by the micro-benchmarks of `benches/`.

use std::hint::black_box;
use std::time::Instant;

/// Nanoseconds per call of `run` over `calls` calls; `run` returns a size, kept from the optimiser.
pub fn ns_per_call(calls: usize, mut run: impl FnMut() -> usize) -> f64 {
    let started = Instant::now();
    let mut total = 0;
    for _ in 0..calls {
        total += run();
    }
    black_box(total);
    started.elapsed().as_nanos() as f64 / calls as f64
}

/// The median of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
