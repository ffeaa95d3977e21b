//! A fixed-size, log-linear latency histogram that many tasks record into
//! at once (HDR-like: every power of two split into 128 linear buckets, so a
//! reported value is within 1/128 of the true one).
//!
//! Written here rather than taken from `hdrhistogram`: recording from every
//! connection's task needs a lock-free shared histogram, which that crate
//! offers only through per-thread recorders and a phased merge; what the
//! bench needs is ~100 lines of relaxed atomics with a fixed 58 KiB table.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of linear resolution inside each power of two.
const SUB_BITS: u32 = 7;
/// Linear buckets per power of two (and exact buckets below it).
const SUB_COUNT: u64 = 1 << SUB_BITS;
/// Buckets: the exact ones below `SUB_COUNT`, then `SUB_COUNT` per power of
/// two from `2^SUB_BITS` to `2^63`.
const BUCKETS: usize = (SUB_COUNT as usize) * (64 - SUB_BITS as usize + 1);

/// Values (nanoseconds) recorded concurrently; percentiles read at the end.
pub(crate) struct Histogram {
    counts: Box<[AtomicU64]>,
    total: AtomicU64,
    max: AtomicU64,
}

impl Histogram {
    /// An empty histogram.
    pub(crate) fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub(crate) fn record(&self, value: u64) {
        if let Some(count) = self.counts.get(index(value)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// Values recorded.
    pub(crate) fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The largest value recorded, exactly (0 when empty).
    pub(crate) fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The nearest-rank `q` quantile (`0.0 < q <= 1.0`): the highest value
    /// of the bucket holding it, capped at the exact maximum; 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        // Nearest rank: the smallest value with at least q * total values
        // at or below it.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count.load(Ordering::Relaxed);
            if seen >= rank {
                return highest_in(i).min(self.max());
            }
        }
        self.max()
    }
}

/// The bucket of `value`.
fn index(value: u64) -> usize {
    if value < SUB_COUNT {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros(); // >= SUB_BITS
    let shift = exp - SUB_BITS;
    let sub = (value >> shift) & (SUB_COUNT - 1);
    (SUB_COUNT + u64::from(shift) * SUB_COUNT + sub) as usize
}

/// The highest value that falls in bucket `i`.
fn highest_in(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB_COUNT {
        return i;
    }
    let shift = (i - SUB_COUNT) / SUB_COUNT;
    let sub = (i - SUB_COUNT) % SUB_COUNT;
    let lowest = (SUB_COUNT + sub) << shift;
    lowest.saturating_add((1u64 << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.max(), 100);
    }

    #[test]
    fn large_values_are_within_one_part_in_128() {
        for v in [128, 129, 1_000, 65_537, 12_345_678, 1 << 40, u64::MAX] {
            let i = index(v);
            assert!(i < BUCKETS, "{v}");
            let high = highest_in(i);
            assert!(high >= v, "{v}: {high}");
            assert!((high - v) as f64 <= v as f64 / 128.0, "{v}: {high}");
            // The bucket boundaries agree with the indexing.
            assert_eq!(index(high), i, "{v}");
            if high < u64::MAX {
                assert_eq!(index(high + 1), i + 1, "{v}");
            }
        }
    }

    #[test]
    fn percentiles_of_a_spread() {
        let h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 5_000_000.0).abs() / 5_000_000.0 < 0.01, "{p50}");
        assert!((p99 - 9_900_000.0).abs() / 9_900_000.0 < 0.01, "{p99}");
        assert_eq!(h.quantile(1.0), 10_000_000);
    }

    #[test]
    fn empty_is_zero() {
        let h = Histogram::new();
        assert_eq!((h.count(), h.quantile(0.5), h.max()), (0, 0, 0));
    }
}
