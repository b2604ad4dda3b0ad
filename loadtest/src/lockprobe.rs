//! A Cyrus reader's view of a mailboxes.db being written: take the whole-file read lock a
//! Cyrus lookup takes, read the header, let go, again and again, and record how long each
//! lock took to get when someone held it (0 when it was free), until the file holds the
//! records wanted.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rustix::fs::{FlockOperation, fcntl_lock};
use rustix::io::Errno;

/// Offset of `num_records` (big-endian u64) in a twoskip header.
const NUM_RECORDS_AT: u64 = 32;

/// What the probe saw.
pub struct Probed {
    /// Seconds from the start until the file held the records wanted.
    pub seconds: f64,
    /// Lock acquisitions made.
    pub probes: u64,
    /// Waits for the read lock, in microseconds.
    pub waits: Histogram<u64>,
}

/// Probes `db` until it holds at least `records` records or `timeout` passes.
pub fn probe(db: &Path, records: u64, timeout: Duration) -> anyhow::Result<Probed> {
    let started = Instant::now();
    let mut waits = Histogram::<u64>::new(3)?;
    let mut probes = 0;
    loop {
        anyhow::ensure!(
            started.elapsed() < timeout,
            "{} did not reach {records} records in {timeout:?}",
            db.display()
        );
        // A fresh open each time, as a new imapd would: follows a repack's rename.
        let Ok(file) = File::open(db) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        // A lookup that finds the lock free has not waited for it, however long the
        // machine took to run the call: only a lock someone holds is timed.
        let asked = Instant::now();
        let waited = match fcntl_lock(&file, FlockOperation::NonBlockingLockShared) {
            Ok(()) => Duration::ZERO,
            Err(busy)
                if busy == Errno::WOULDBLOCK || busy == Errno::AGAIN || busy == Errno::ACCESS =>
            {
                fcntl_lock(&file, FlockOperation::LockShared).context("read lock")?;
                asked.elapsed()
            }
            Err(other) => return Err(other).context("read lock"),
        };
        if waited > Duration::from_millis(5) {
            eprintln!(
                "lock-probe: waited {:.1} ms at {:.3} s",
                waited.as_secs_f64() * 1e3,
                started.elapsed().as_secs_f64()
            );
        }
        waits.record(waited.as_micros() as u64)?;
        probes += 1;
        let mut count = [0u8; 8];
        let held = file.read_exact_at(&mut count, NUM_RECORDS_AT).is_ok();
        fcntl_lock(&file, FlockOperation::Unlock).context("unlock")?;
        if held && u64::from_be_bytes(count) >= records {
            return Ok(Probed {
                seconds: started.elapsed().as_secs_f64(),
                probes,
                waits,
            });
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}
