//! A server's CPU time and resident memory, read from /proc by pid.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Linux reports /proc times in USER_HZ ticks, 100 per second on every architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system, all threads) used by `pid` so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The largest RSS seen by a background sampler (every 100 ms, until `stop`).
pub struct PeakRss {
    peak: Arc<AtomicU64>,
}

impl PeakRss {
    /// Starts sampling `pid`.
    pub fn start(pid: u32, stop: CancellationToken) -> PeakRss {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let seen = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(rss) = rss_kib(pid) {
                    seen.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        PeakRss { peak }
    }

    /// The peak so far, KiB.
    pub fn kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        assert!(super::cpu_seconds(pid).is_some());
        assert!(super::rss_kib(pid).is_some_and(|kib| kib > 0));
    }
}
