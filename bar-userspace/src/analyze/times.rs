//! The blocked times of one off-CPU stack, for the summary's top stacks. A whole host has
//! thousands of such stacks; a latency histogram of three significant digits is about 180 KB,
//! which made them most of the memory of rendering a `record --all` capture. Times are kept as
//! they are while they are few (4 bytes each), and in a histogram of two significant digits
//! (about 25 KB) once they would take more.

use std::borrow::Cow;

use hdrhistogram::Histogram;

use super::new_histogram;

/// Times kept one by one up to this many.
const FEW: usize = 6000;

#[derive(Debug, Default)]
pub struct StackTimes {
    /// Microseconds blocked, summed.
    pub total_us: u64,
    few: Vec<u32>,
    many: Option<Box<Histogram<u64>>>,
}

impl StackTimes {
    /// Adds `n` intervals of `us` microseconds each.
    pub fn record_n(&mut self, us: u64, n: u64) {
        self.total_us = self.total_us.saturating_add(us.saturating_mul(n));
        if self.many.is_none() && self.few.len() as u64 + n <= FEW as u64 {
            let v = u32::try_from(us).unwrap_or(u32::MAX);
            self.few.extend(std::iter::repeat_n(v, n as usize));
            return;
        }
        let h = self.many.get_or_insert_with(|| {
            let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!()));
            for &v in &self.few {
                let _ = h.record(u64::from(v));
            }
            Box::new(h)
        });
        self.few = Vec::new();
        let _ = h.record_n(us, n);
    }

    /// The times as a histogram: exact (three significant digits, as every latency of the
    /// summary) while they were few, two significant digits otherwise.
    pub fn histogram(&self) -> Cow<'_, Histogram<u64>> {
        match &self.many {
            Some(h) => Cow::Borrowed(h),
            None => {
                let mut h = new_histogram();
                for &v in &self.few {
                    let _ = h.record(u64::from(v));
                }
                Cow::Owned(h)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_times_are_exact_and_many_stay_within_a_percent() {
        let mut t = StackTimes::default();
        for us in 1..=100 {
            t.record_n(us, 1);
        }
        assert_eq!(t.total_us, 5050);
        assert_eq!(t.histogram().value_at_quantile(0.5), 50);
        t.record_n(10_000, 10_000);
        assert!(t.many.is_some() && t.few.is_empty());
        assert_eq!(t.total_us, 5050 + 100_000_000);
        let p99 = t.histogram().value_at_quantile(0.99);
        assert!((9900..=10100).contains(&p99), "{p99}");
        assert_eq!(t.histogram().len(), 10_100);
    }
}
