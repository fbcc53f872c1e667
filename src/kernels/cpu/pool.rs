//! The worker pool the CPU kernels run on. The caller works too, taking tasks from a shared
//! cursor; workers join when they wake. The caller never waits for a worker that has not started,
//! only for tasks already running: a worker the OS has descheduled (other programs on the cores)
//! costs at most the task it holds, where a barrier would make every op wait for it to be
//! scheduled again. When the cores are shared that held task still costs a time slice, so the
//! caller then runs a job's first task alone and hands out the rest only when it outweighs the
//! stall the pool has been seeing (`pool_stalls.rs`): a tiny model's microsecond ops stay on one
//! thread, a large product is still split. Idle workers spin briefly (ops come back to back while
//! a model runs; less while workers are being descheduled), then sleep.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

use super::pool_stalls;

thread_local! {
    /// Set while this thread runs a task of `parallel_for`.
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as inside a task until dropped (also when the task panics).
struct TaskMark(bool);

impl TaskMark {
    fn enter() -> Self {
        TaskMark(IN_TASK.with(|t| t.replace(true)))
    }
}

impl Drop for TaskMark {
    fn drop(&mut self) {
        IN_TASK.with(|t| t.set(self.0));
    }
}

/// Whether the caller is inside a parallel task (of `parallel_for` or of rayon), where a kernel
/// uses one thread.
pub(crate) fn in_task() -> bool {
    IN_TASK.with(|t| t.get()) || rayon::current_thread_index().is_some()
}

/// Spins of an idle worker before it sleeps (tens of microseconds).
const IDLE_SPINS: u32 = 20_000;

/// One call's tasks.
struct Job {
    /// The task function with its lifetime erased: called only for a claimed index (< n), and the
    /// caller does not return before every claimed task is done.
    f: *const (dyn Fn(usize) + Sync + 'static),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `f` points to a `Sync` closure that outlives every call through it (see `run`).
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs one task; false when none was left. A panic is kept for the caller.
    fn work_one(&self) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.n {
            return false;
        }
        // SAFETY: i < n was claimed, so the caller is still waiting for it: `f` is alive.
        let f = unsafe { &*self.f };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
            let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(p);
        }
        self.done.fetch_add(1, Ordering::Release);
        true
    }

    /// Claims and runs tasks until none is left; how many it ran.
    fn work(&self) -> usize {
        let mut ran = 0;
        while self.work_one() {
            ran += 1;
        }
        ran
    }

    /// Resumes the first task panic on the caller.
    fn rethrow(&self) {
        let panicked = self.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(payload) = panicked {
            resume_unwind(payload);
        }
    }
}

struct Shared {
    /// The generation and the newest job.
    job: Mutex<(u64, Option<Arc<Job>>)>,
    /// The generation, read by spinning workers without the lock.
    generation: AtomicU64,
    wake: Condvar,
}

struct Pool {
    shared: Arc<Shared>,
    workers: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let shared = Arc::new(Shared {
            job: Mutex::new((0, None)),
            generation: AtomicU64::new(0),
            wake: Condvar::new(),
        });
        let workers = candle_core::utils::get_num_threads().saturating_sub(1);
        for i in 0..workers {
            let s = shared.clone();
            // A pool without its workers still runs everything on the caller.
            let _ = std::thread::Builder::new()
                .name(format!("chatforge-kernel-{i}"))
                .spawn(move || worker(&s));
        }
        Pool { shared, workers }
    })
}

fn worker(s: &Shared) {
    let _task = TaskMark::enter();
    let mut seen = 0u64;
    loop {
        let mut spins = 0;
        let limit = if pool_stalls::POOL.expected_ns() > pool_stalls::QUIET_NS {
            IDLE_SPINS / 16
        } else {
            IDLE_SPINS
        };
        while s.generation.load(Ordering::Acquire) == seen && spins < limit {
            std::hint::spin_loop();
            spins += 1;
        }
        let job = {
            let mut g = s.job.lock().unwrap_or_else(|e| e.into_inner());
            while g.0 == seen {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            seen = g.0;
            g.1.clone()
        };
        if let Some(job) = job {
            job.work();
        }
    }
}

/// Runs f(i) for every i < n on the caller and whichever workers join; returns when all are done.
/// A task's panic resumes on the caller.
pub(crate) fn run(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let p = pool();
    if p.workers == 0 {
        (0..n).for_each(f);
        return;
    }
    // SAFETY: only the lifetime is erased; `job.work` calls `f` for claimed indices alone, and
    // this function does not return before every claimed index is done.
    let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
    let job = Arc::new(Job {
        f,
        n,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panic: Mutex::new(None),
    });
    let _task = TaskMark::enter();
    let start = Instant::now();
    let mut own = 0;
    let expected_stall = pool_stalls::POOL.expected_ns();
    if expected_stall > pool_stalls::QUIET_NS {
        // Workers are being descheduled: the first task tells what the rest is worth.
        own += usize::from(job.work_one());
        let worth =
            pool_stalls::worth_handing_out(start.elapsed(), n - own, p.workers, expected_stall);
        if !worth {
            job.work();
            job.rethrow();
            return;
        }
    }
    let generation = {
        let mut g = p.shared.job.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        g.1 = Some(job.clone());
        p.shared.generation.store(g.0, Ordering::Release);
        g.0
    };
    p.shared.wake.notify_all();
    own += job.work();
    let own_time = start.elapsed();
    let mut spins = 0u32;
    while job.done.load(Ordering::Acquire) < n {
        if spins < 64 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
    let waited = start.elapsed() - own_time;
    // A worker that wakes later finds nothing of this call's to do.
    let mut g = p.shared.job.lock().unwrap_or_else(|e| e.into_inner());
    if g.0 == generation {
        g.1 = None;
    }
    drop(g);
    pool_stalls::POOL.record(waited, own_time, own);
    job.rethrow();
}
