//! Running a kernel over the cores (the kernels' worker pool, `pool.rs`), shared output buffers,
//! and the small reductions the kernels need.

pub(crate) use super::pool::in_task;

/// Runs f(i) for every i < n over the kernels' worker pool (`pool.rs`), the calling thread among
/// them, each task taken from a shared cursor: the caller never waits for a worker that has not
/// started. Called from inside a task (ours or rayon's), it runs inline on that thread.
pub(crate) fn parallel_for(n: usize, f: impl Fn(usize) + Sync) {
    if n <= 1 || in_task() {
        (0..n).for_each(f);
        return;
    }
    super::pool::run(n, &f);
}

/// Multiply-adds (or element steps of like cost) below which work is not worth handing to another
/// thread: waking a worker and meeting it again costs a few microseconds, about this much work.
pub(crate) const MIN_TASK_WORK: usize = 1 << 16;

/// [`parallel_for`] over n items of `work` each, on the calling thread alone when all of them
/// together are less than two tasks' worth (a tiny model's decoding step).
pub(crate) fn parallel_for_sized(n: usize, work: usize, f: impl Fn(usize) + Sync) {
    if n.saturating_mul(work) < 2 * MIN_TASK_WORK {
        (0..n).for_each(f);
        return;
    }
    parallel_for(n, f);
}

/// Items a task, for n items of `work` each: at least [`MIN_TASK_WORK`] a task, and no more than
/// `per_thread` tasks a thread (the slack that lets idle threads take over a descheduled one's
/// share).
pub(crate) fn items_per_task(n: usize, work: usize, per_thread: usize) -> usize {
    let threads = candle_core::utils::get_num_threads().max(1);
    n.div_ceil(threads * per_thread)
        .max(MIN_TASK_WORK.div_ceil(work.max(1)))
        .max(1)
}

/// f(i) for every i < n over the pool ([`parallel_for`]), the results in index order.
pub(crate) fn parallel_map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    let slots = SharedMut(out.as_mut_ptr());
    // SAFETY: slot i is written by task i alone, and `out` outlives the tasks.
    parallel_for(n, |i| unsafe { *slots.at(i) = Some(f(i)) });
    out.into_iter()
        .map(|r| r.expect("every task ran"))
        .collect()
}

/// `out` in chunks of `chunk` elements (the last one may be shorter): f(chunk index, chunk) over
/// the pool ([`parallel_for`]).
pub(crate) fn for_each_chunk_mut(
    out: &mut [f32],
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    let (len, base) = (out.len(), SharedMut(out.as_mut_ptr()));
    let chunk = chunk.max(1);
    parallel_for(len.div_ceil(chunk), |i| {
        let (lo, hi) = (i * chunk, ((i + 1) * chunk).min(len));
        // SAFETY: chunk i is out[lo..hi], disjoint from the others and visited by one task.
        f(i, unsafe { base.slice(lo, hi - lo) })
    });
}

/// A new vector of `n` elements made by f(chunk index, chunk) over the pool ([`parallel_for`]), in
/// chunks of `chunk` elements that each task zeroes just before: `vec![0.0; n]` would zero the
/// whole buffer on the calling thread first, while the pool's other worker waits.
pub(crate) fn filled(n: usize, chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut v = Vec::<f32>::with_capacity(n);
    let base = SharedMut(v.as_mut_ptr());
    let chunk = chunk.max(1);
    parallel_for(n.div_ceil(chunk), |i| {
        let (lo, hi) = (i * chunk, ((i + 1) * chunk).min(n));
        // SAFETY: elements lo..hi of the allocation, this task's alone.
        f(i, unsafe { base.zeroed_slice(lo, hi - lo) })
    });
    // SAFETY: every chunk of the n elements was initialised above.
    unsafe { v.set_len(n) };
    v
}

/// A pointer that parallel tasks share to write disjoint parts of one output buffer.
pub(crate) struct SharedMut<T = f32>(pub(crate) *mut T);
// SAFETY: every user writes regions no other task touches (documented at each use).
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The element `offset` past the start (a method, so that closures capture the whole
    /// `SharedMut` and not the bare pointer).
    ///
    /// # Safety
    /// `offset` must lie inside the buffer.
    pub(crate) unsafe fn at(&self, offset: usize) -> *mut T {
        self.0.add(offset)
    }

    /// The `len` elements from `offset` as a slice.
    ///
    /// # Safety
    /// They must lie inside the buffer, and no other live reference may reach them.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, offset: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(offset), len)
    }
}

impl SharedMut<f32> {
    /// As [`SharedMut::slice`], for memory that may be uninitialised: zeroed first.
    ///
    /// # Safety
    /// The elements must lie inside the allocation, and no other live reference may reach them.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn zeroed_slice(&self, offset: usize, len: usize) -> &mut [f32] {
        std::ptr::write_bytes(self.0.add(offset), 0, len);
        self.slice(offset, len)
    }
}

/// Sum of the rows of `x` (rows × cols), split over the cores: (cols,).
pub(crate) fn column_sums(x: &[f32], cols: usize) -> Vec<f32> {
    let rows = x.len() / cols.max(1);
    let chunk = rows
        .div_ceil(4 * candle_core::utils::get_num_threads())
        .max(1);
    let parts = parallel_map(rows.div_ceil(chunk), |c| {
        let mut acc = vec![0f32; cols];
        for row in x[c * chunk * cols..((c + 1) * chunk).min(rows) * cols].chunks_exact(cols) {
            acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
        }
        acc
    });
    let mut sum = vec![0f32; cols];
    for p in parts {
        sum.iter_mut().zip(&p).for_each(|(s, v)| *s += v);
    }
    sum
}
