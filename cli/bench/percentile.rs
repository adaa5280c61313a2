//! Percentiles of a sorted sample, shared by the bench reports.

/// The nearest-rank `p` percentile (0 < p ≤ 1) of `sorted` values; the default (zero) for none.
pub fn rank<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(
            (rank(&v, 0.5), rank(&v, 0.99), rank(&v, 1.0)),
            (50, 99, 100)
        );
        assert_eq!(rank(&[7.5], 0.99), 7.5);
        assert_eq!(rank::<u32>(&[], 0.5), 0);
    }
}
