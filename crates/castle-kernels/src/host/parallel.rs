//! The host kernels' parallel helpers on rayon's pool: how to split rows into tasks, per-worker
//! accumulators, and output buffers written in parallel without a zero-fill pass first.

use std::mem::MaybeUninit;

use num_traits::Zero;
use rayon::prelude::*;

/// Sums `f`'s contributions over items `0..n` with one accumulator per worker: item `i` goes to
/// worker `i % workers`, which balances items whose cost grows or shrinks with `i`, and keeps the
/// number of `O(L d)` accumulators (their zero-fill and their merge) at `workers`.
pub(crate) fn sum_over_workers<A: Send>(
    workers: usize,
    n: usize,
    init: impl Fn() -> A + Sync,
    f: impl Fn(&mut A, usize) + Sync,
    merge: impl Fn(A, A) -> A + Sync + Send,
) -> A {
    let workers = workers.clamp(1, n.max(1));
    (0..workers)
        .into_par_iter()
        .map(|w| {
            let mut acc = init();
            (w..n).step_by(workers).for_each(|i| f(&mut acc, i));
            acc
        })
        .reduce_with(merge)
        // Cannot fail: `workers` was clamped to at least 1 above, so there is one item to reduce.
        .expect("at least one worker")
}

/// Workers per head for a backward pass over `heads` heads that already run in parallel: one
/// when the heads alone share out evenly over rayon's threads (no per-worker accumulators to
/// zero and merge), else one per thread, so that idle threads can take a share of the last heads.
pub(crate) fn workers_per_head(heads: usize) -> usize {
    let threads = rayon::current_num_threads();
    if heads.is_multiple_of(threads) {
        1
    } else {
        threads
    }
}

/// Rows per parallel task for rows of `width` elements: about 16K elements a task, so a task
/// outweighs rayon's scheduling and small inputs still split across cores.
pub(crate) fn rows_per_task(width: usize) -> usize {
    (16 * 1024 / width.max(1)).max(1)
}

/// A zero-filled buffer of `len` elements, filled in parallel by rayon's workers: a large
/// `vec![0; len]` is one `memset` on the calling thread while the workers wait.
pub(crate) fn zeroed<E: Zero + Copy + Send>(len: usize) -> Vec<E> {
    let fill = |_, [c]: [&mut [MaybeUninit<E>]; 1]| c.fill(MaybeUninit::new(E::zero()));
    // SAFETY: `fill` writes every element of its chunk.
    let [v] = unsafe { written_in_chunks(len, 64 * 1024, fill) };
    v
}

/// A new buffer of `len` elements that `write` fills, on this thread, with no zero-fill pass
/// first: the one-task form of [`written_in_chunks`], for a kernel's blocks. Inlined, so that a
/// loop in `write` is compiled with its caller (`simd::vectorized`).
///
/// # Safety
/// `write` must write every element of the slice it is given.
#[inline(always)]
pub(crate) unsafe fn written<E>(len: usize, write: impl FnOnce(&mut [MaybeUninit<E>])) -> Vec<E> {
    let mut v = Vec::with_capacity(len);
    write(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `write` wrote all `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// `K` new buffers of `len` elements each, written in parallel with no zero-fill pass first:
/// `write(i, chunks)` gets chunk `i` (elements `i chunk ..`, `chunk` of them or fewer at the end)
/// of every buffer. For outputs that a kernel overwrites in full.
///
/// # Safety
/// `write` must write every element of the chunks it is given.
pub(crate) unsafe fn written_in_chunks<E: Send, const K: usize>(
    len: usize,
    chunk: usize,
    write: impl Fn(usize, [&mut [MaybeUninit<E>]; K]) + Sync,
) -> [Vec<E>; K] {
    let (chunk, mut out) = (
        chunk.max(1),
        std::array::from_fn(|_| Vec::with_capacity(len)),
    );
    let mut per_buffer = out.each_mut().map(|v: &mut Vec<E>| {
        let chunks: Vec<_> = v.spare_capacity_mut()[..len].chunks_mut(chunk).collect();
        chunks.into_iter()
    });
    let chunks: Vec<_> = (0..len.div_ceil(chunk))
        .map(|_| {
            per_buffer
                .each_mut()
                // Cannot fail: every buffer has `len` elements cut into `chunk`-sized pieces, so each
                // yields exactly `len.div_ceil(chunk)` chunks, the number taken here.
                .map(|c| c.next().expect("K equal lengths"))
        })
        .collect();
    chunks
        .into_par_iter()
        .enumerate()
        .for_each(|(i, c)| write(i, c));
    // SAFETY: the chunks cover the first `len` elements of each buffer, and the caller's
    // `write` wrote each chunk in full.
    out.iter_mut().for_each(|v| unsafe { v.set_len(len) });
    out
}
