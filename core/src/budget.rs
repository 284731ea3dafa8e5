//! A per-VM budget for log lines about refused requests: a client that sends garbage in a loop
//! must not flood the proxy's log, yet every refusal reason must reach the operator.

use std::cell::Cell;

/// Lines admitted per second; the rest are counted and reported with the next admitted line.
const PER_SECOND: u32 = 5;

#[derive(Debug, Default)]
pub struct LogBudget {
    second: Cell<u64>,
    used: Cell<u32>,
    suppressed: Cell<u64>,
}

impl LogBudget {
    /// `Some(n)` when a line may be logged now, `n` being how many were left out before it.
    pub fn admit(&self, now_secs: u64) -> Option<u64> {
        if self.second.get() != now_secs {
            self.second.set(now_secs);
            self.used.set(0);
        }
        if self.used.get() >= PER_SECOND {
            self.suppressed.set(self.suppressed.get().saturating_add(1));
            return None;
        }
        self.used.set(self.used.get() + 1);
        Some(self.suppressed.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_few_lines_a_second_and_counts_the_rest() {
        let budget = LogBudget::default();
        for _ in 0..PER_SECOND {
            assert_eq!(budget.admit(7), Some(0));
        }
        assert_eq!(budget.admit(7), None);
        assert_eq!(budget.admit(7), None);
        assert_eq!(
            budget.admit(8),
            Some(2),
            "the next second reports what was left out"
        );
        assert_eq!(budget.admit(8), Some(0));
    }
}
