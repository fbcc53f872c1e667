//! What handing a job to the pool's workers costs its caller in waiting, learnt as the program
//! runs. On a quiet machine a worker finishes its last task about when the caller finishes its
//! own; when other programs hold the cores, a worker the OS has descheduled keeps the task it
//! claimed for a time slice (milliseconds), and a job worth less than that is faster on the caller
//! alone. `pool::run` hands out a job at once while the expected stall is small, and otherwise
//! only a job whose remaining work outweighs it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Below this expected stall (ns) the workers are taken to be there when called.
pub(super) const QUIET_NS: u64 = 20_000;

/// Without news, the expected stall halves this often (ns): a machine that was busy and is quiet
/// again gets its parallel small jobs back within a second.
const HALF_LIFE_NS: u64 = 200_000_000;

/// The weight of the newest job in the running mean (1/256): a stall comes every few dozen jobs,
/// so the mean spans hundreds of them to say what handing out a job costs on average.
const NEWEST_SHIFT: u32 = 8;

/// A running mean of the stall, and when it was last updated (ns since [`epoch`]).
pub(super) struct StallMean {
    stall_ns: AtomicU64,
    updated_ns: AtomicU64,
}

/// The kernels' pool's.
pub(super) static POOL: StallMean = StallMean::new();

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

impl StallMean {
    pub(super) const fn new() -> Self {
        StallMean {
            stall_ns: AtomicU64::new(0),
            updated_ns: AtomicU64::new(0),
        }
    }

    /// The wait beyond its own tasks' time that a caller can expect from handing a job out (ns).
    pub(super) fn expected_ns(&self) -> u64 {
        let stall = self.stall_ns.load(Ordering::Relaxed);
        if stall == 0 {
            return 0;
        }
        let age = now_ns().saturating_sub(self.updated_ns.load(Ordering::Relaxed));
        let halvings = age / HALF_LIFE_NS;
        if halvings >= 64 {
            0
        } else {
            stall >> halvings
        }
    }

    /// Records a handed-out job: the caller waited `wait` for the workers after its own last
    /// task, having spent `own` on `own_tasks` tasks. The part of the wait beyond two of its tasks
    /// is the stall (a worker finishing the task it holds takes about one). Callers on several
    /// threads may lose one another's updates: it is an estimate.
    pub(super) fn record(&self, wait: Duration, own: Duration, own_tasks: usize) {
        let per_task = own.as_nanos() as u64 / own_tasks.max(1) as u64;
        let stall = (wait.as_nanos() as u64).saturating_sub(2 * per_task);
        let old = self.expected_ns();
        let new = old - (old >> NEWEST_SHIFT) + (stall >> NEWEST_SHIFT);
        self.stall_ns.store(new, Ordering::Relaxed);
        self.updated_ns.store(now_ns(), Ordering::Relaxed);
    }
}

/// Whether a job is worth handing out after the caller ran its first task in `first`: what the
/// workers would take off the caller must outweigh the stall it can expect (`expected_ns`).
pub(super) fn worth_handing_out(
    first: Duration,
    remaining_tasks: usize,
    workers: usize,
    expected_ns: u64,
) -> bool {
    let rest = first.as_nanos() as u64 * remaining_tasks as u64;
    let saved = rest * workers as u64 / (workers as u64 + 1);
    saved > expected_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_raise_the_bar_and_clean_jobs_lower_it() {
        let m = StallMean::new();
        let task = Duration::from_micros(5);
        assert!(
            worth_handing_out(task, 1, 1, m.expected_ns()),
            "quiet: everything is handed out"
        );
        for _ in 0..32 {
            m.record(Duration::from_millis(3), task * 4, 4);
        }
        let e = m.expected_ns();
        assert!((300_000..400_000).contains(&e), "{e}");
        assert!(
            !worth_handing_out(task, 10, 1, e),
            "a 50 us job waits for nobody"
        );
        assert!(worth_handing_out(Duration::from_millis(1), 10, 1, e));
        for _ in 0..1000 {
            m.record(Duration::from_micros(8), task * 4, 4);
        }
        assert!(m.expected_ns() < QUIET_NS, "{}", m.expected_ns());
    }
}
