//! Figures: percentiles of a set of durations, and the CPU time that each
//! process of the machine spent between two moments (from `/proc`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// Percentiles of a set of values (seconds, or anything else).
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// The nearest-rank percentiles of `values`; `None` when there are none.
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[index.clamp(1, values.len()) - 1]
        };
        Some(Self {
            count: values.len(),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: values[values.len() - 1],
        })
    }
}

/// Milliseconds, as the tables print them.
pub struct Millis(pub f64);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0 * 1000.0;
        match f.width() {
            Some(width) => write!(f, "{ms:>width$.1}"),
            None => write!(f, "{ms:.1}"),
        }
    }
}

/// CPU time (user and system, all threads) of every process, by pid, with
/// the process's command name.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    ticks: HashMap<i32, (String, u64)>,
}

impl CpuSnapshot {
    /// Reads every process of the machine; processes that vanish while it
    /// reads are skipped.
    pub fn take() -> Self {
        let mut ticks = HashMap::new();
        if let Ok(processes) = procfs::process::all_processes() {
            for stat in processes.flatten().filter_map(|p| p.stat().ok()) {
                ticks.insert(stat.pid, (stat.comm, stat.utime + stat.stime));
            }
        }
        Self { ticks }
    }
}

/// Which group a process's CPU time is counted in: the named process ids
/// (the stack's own processes) first, then well-known command names.
pub struct CpuGroups {
    named: Vec<(String, HashSet<i32>)>,
}

/// Command names of the shared services, and the group each is shown as.
const SERVICE_COMMANDS: [(&str, &str); 2] = [("postgres", "postgres"), ("beam.smp", "rabbitmq")];

/// The group of everything else on the machine (builds, the model's
/// training, other tests): it competes for the same cores.
pub const OTHER_GROUP: &str = "other processes";

impl CpuGroups {
    /// Groups with the given process ids, in the order to print them.
    pub fn new(named: Vec<(String, Vec<u32>)>) -> Self {
        let named = named
            .into_iter()
            .map(|(name, pids)| (name, pids.into_iter().map(|p| p as i32).collect()))
            .collect();
        Self { named }
    }

    fn group(&self, pid: i32, comm: &str) -> String {
        if let Some((name, _)) = self.named.iter().find(|(_, pids)| pids.contains(&pid)) {
            return name.clone();
        }
        SERVICE_COMMANDS
            .iter()
            .find(|(command, _)| *command == comm)
            .map_or(OTHER_GROUP, |(_, group)| group)
            .to_owned()
    }

    /// CPU seconds each group spent from `before` to `after`. A process
    /// that started in between counts from zero; one that exited in between
    /// is missing (its time is not in `/proc` any more).
    pub fn spent(&self, before: &CpuSnapshot, after: &CpuSnapshot) -> BTreeMap<String, f64> {
        let per_second = procfs::ticks_per_second() as f64;
        let mut spent = BTreeMap::new();
        for (pid, (comm, ticks)) in &after.ticks {
            let earlier = match before.ticks.get(pid) {
                Some((same, earlier)) if same == comm => *earlier,
                _ => 0,
            };
            *spent.entry(self.group(*pid, comm)).or_insert(0.0) +=
                ticks.saturating_sub(earlier) as f64 / per_second;
        }
        spent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let summary = Summary::of((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!(
            (summary.p50, summary.p90, summary.p99, summary.max),
            (50.0, 90.0, 99.0, 100.0)
        );
        let one = Summary::of(vec![0.25]).unwrap();
        assert_eq!((one.p50, one.p99), (0.25, 0.25));
        assert!(Summary::of(Vec::new()).is_none());
    }

    #[test]
    fn this_process_spends_cpu_in_its_own_group() {
        let before = CpuSnapshot::take();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = CpuSnapshot::take();
        let groups = CpuGroups::new(vec![("me".into(), vec![std::process::id()])]);
        let spent = groups.spent(&before, &after);
        assert!(spent.get("me").copied().unwrap_or(0.0) > 0.05, "{spent:?}");
    }
}
