//! Percentiles of timed samples, as every tool of this crate reports them.

/// The nearest-rank `q` quantile (`0.0 < q <= 1.0`) of `sorted` (ascending,
/// nanoseconds), in microseconds; 0 when there are no samples.
#[must_use]
pub fn percentile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::percentile_us;

    #[test]
    fn nearest_rank() {
        let sorted: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_us(&sorted, 0.50), 50.0);
        assert_eq!(percentile_us(&sorted, 0.99), 99.0);
        assert_eq!(percentile_us(&sorted, 1.0), 100.0);
        assert_eq!(percentile_us(&sorted, 0.001), 1.0);
        assert_eq!(percentile_us(&[], 0.5), 0.0);
    }
}
