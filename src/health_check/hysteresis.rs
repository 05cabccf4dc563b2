//! rise/fall: consecutive results needed to flip the active state, so one
//! lost probe flips nothing. Pure code.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    pub up: bool,
    successes: u32,
    failures: u32,
}

impl Hysteresis {
    pub fn new(up: bool) -> Hysteresis {
        Hysteresis {
            up,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one probe result; returns the new state if it flipped.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::Hysteresis;

    #[test]
    fn fall_consecutive_failures_mark_down() {
        let mut h = Hysteresis::new(true);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), Some(false));
        assert_eq!(h.record(false, 2, 3), None, "reported once");
    }

    #[test]
    fn one_lost_probe_flips_nothing() {
        let mut h = Hysteresis::new(true);
        for _ in 0..10 {
            assert_eq!(h.record(false, 2, 3), None);
            assert_eq!(h.record(false, 2, 3), None);
            assert_eq!(h.record(true, 2, 3), None);
        }
        assert!(h.up);
    }

    #[test]
    fn rise_consecutive_successes_mark_up() {
        let mut h = Hysteresis::new(false);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true));
    }
}
