//! The named scenarios: what happens to which master, and when.

use clap::ValueEnum;

/// When the first thing happens; the minute before shows the steady state.
pub(crate) const START_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Master 0 down for 5 minutes, then back.
    MasterRestart,
    /// Every master down for 2 minutes in turn, 5 minutes apart.
    RollingUpgrade,
    /// One more master joins (discovery adds it).
    AddMaster,
    /// Master 0 down and up every 20 s for 5 minutes, then up for good.
    Flapping,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::MasterRestart => "master-restart",
            Scenario::RollingUpgrade => "rolling-upgrade",
            Scenario::AddMaster => "add-master",
            Scenario::Flapping => "flapping",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Down(usize),
    Up(usize),
    /// A master joins the upstream set (and is usable).
    Add(usize),
}

/// The timeline for `masters` initial masters, in time order. `AddMaster`
/// adds master index `masters`.
pub(crate) fn timeline(scenario: Scenario, masters: usize) -> Vec<(u64, Change)> {
    const MIN: u64 = 60_000;
    match scenario {
        Scenario::MasterRestart => vec![
            (START_MS, Change::Down(0)),
            (START_MS + 5 * MIN, Change::Up(0)),
        ],
        Scenario::RollingUpgrade => (0..masters)
            .flat_map(|m| {
                let down = START_MS + m as u64 * 5 * MIN;
                [(down, Change::Down(m)), (down + 2 * MIN, Change::Up(m))]
            })
            .collect(),
        Scenario::AddMaster => vec![(START_MS, Change::Add(masters))],
        Scenario::Flapping => {
            let mut v = Vec::new();
            let mut t = START_MS;
            let mut down = true;
            while t < START_MS + 5 * MIN {
                v.push((t, if down { Change::Down(0) } else { Change::Up(0) }));
                down = !down;
                t += 20_000;
            }
            v.push((t, Change::Up(0)));
            v
        }
    }
}

/// Masters in the upstream set at the end (and so in the arrays).
pub(crate) fn total_masters(scenario: Scenario, masters: usize) -> usize {
    masters + usize::from(scenario == Scenario::AddMaster)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flapping_ends_up() {
        let t = timeline(Scenario::Flapping, 3);
        assert_eq!(t.first(), Some(&(START_MS, Change::Down(0))));
        assert_eq!(t.last(), Some(&(START_MS + 300_000, Change::Up(0))));
        assert!(t.windows(2).all(|w| w[1].0 - w[0].0 == 20_000));
        assert!(t.windows(2).all(|w| w[0].1 != w[1].1));
    }

    #[test]
    fn rolling_restarts_each_once() {
        let t = timeline(Scenario::RollingUpgrade, 3);
        assert_eq!(t.len(), 6);
        assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
