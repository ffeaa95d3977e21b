//! CPU time of processes (user + system, all threads), from Linux's
//! `/proc/PID/stat`; `None` elsewhere or when it cannot be read.
//!
//! The bench reports its own CPU over the run (near 100 % of a core per
//! worker means the bench, not the service, may be the limit) and, with
//! `--spawn`, the service's CPU per message: the figure that moves least
//! with machine noise.

use std::time::Duration;

use storm_services::sys::{USER_HZ, stat_cpu_ticks};

/// The CPU time process `pid` has used so far.
pub(crate) fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    Some(Duration::from_millis(ticks.saturating_mul(1000 / USER_HZ)))
}

/// The CPU time of several processes together; `None` if any is unknown.
pub(crate) fn total_cpu(pids: &[u32]) -> Option<Duration> {
    pids.iter()
        .map(|&pid| process_cpu(pid))
        .sum::<Option<Duration>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_an_awkward_name() {
        let line =
            "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 4 0 55 1000 10";
        assert_eq!(stat_cpu_ticks(line), Some(320));
        assert_eq!(stat_cpu_ticks("garbage"), None);
        assert_eq!(stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_its_own_process() {
        assert!(process_cpu(std::process::id()).is_some());
        assert!(total_cpu(&[std::process::id(), std::process::id()]).is_some());
    }
}
