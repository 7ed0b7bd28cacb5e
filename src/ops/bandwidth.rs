//! The device's own copy bandwidth, measured with a copy kernel: the yardstick that
//! `vlm-run bench` compares decode's effective bandwidth against.

use super::{bytes, Kernel};
use crate::gpu::Gpu;
use anyhow::Result;
use std::time::Instant;

/// Copy bandwidth in bytes per second, counting bytes read plus bytes written, median of
/// `reps` runs. On GPUs a run is [`GPU_COPIES`] copies of up to 256 MiB (less when the
/// binding limit is lower) in one submission, so that the submission's own cost (tens of
/// microseconds, as long as one copy of 64 MiB takes on an H100) does not count as copy
/// time; on CPU devices one copy of up to 64 MiB, which takes milliseconds there.
pub fn copy_bandwidth(gpu: &Gpu, reps: usize) -> Result<f64> {
    let (cap, copies, max_wg) = if gpu.caps.cpu {
        (64u64 << 20, 1, 64)
    } else {
        (256u64 << 20, GPU_COPIES, 65535)
    };
    let size = cap.min(gpu.caps.max_binding) / 16 * 16;
    let src = gpu.storage_buffer("bandwidth.src", size)?;
    let dst = gpu.storage_buffer("bandwidth.dst", size)?;
    let n = (size / 16) as u32;
    let params = [n, 0, 0, 0];
    let k = Kernel::new(
        gpu,
        "bandwidth",
        "copy",
        &Default::default(),
        bytes(&params),
        &[(1, &src), (2, &dst)],
        [n.div_ceil(64).min(max_wg), 1, 1],
    )?;
    let run = vec![&k; copies];
    gpu.run(&run)?; // warm-up
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        gpu.run(&run)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(2.0 * (size * copies as u64) as f64 / times[times.len() / 2])
}

/// Copies per timed submission on GPUs ([`copy_bandwidth`]).
pub const GPU_COPIES: usize = 8;

/// The host's memory read bandwidth in bytes per second: one thread per core each sums its
/// own slice of a `mib` MiB array, best of `passes`. On CPU devices (lavapipe) this, not
/// the copy kernel, is the ceiling that decode's effective bandwidth is measured against
/// (issue 6's stretch goal), since the device is the host's cores.
pub fn host_read_bandwidth(mib: usize, passes: usize) -> Result<f64> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    host_read_bandwidth_with(mib, passes, threads)
}

/// [`host_read_bandwidth`] with `threads` reader threads.
pub fn host_read_bandwidth_with(mib: usize, passes: usize, threads: usize) -> Result<f64> {
    let words = mib.max(1) * (1 << 20) / 8;
    // written, so that every page is backed before the timing
    let data: Vec<u64> = (0..words as u64).map(|i| i & 7).collect();
    let per = words.div_ceil(threads.max(1));
    // the sum of i & 7 over the array: what every pass must find, so that no read is skipped
    let expect = (words as u64 / 8) * 28 + (0..words as u64 % 8).sum::<u64>();
    let mut best = f64::MAX;
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        let sum = std::thread::scope(|sc| {
            let hs: Vec<_> = data
                .chunks(per)
                .map(|s| sc.spawn(|| sum_words(s)))
                .collect();
            hs.into_iter()
                .map(|h| h.join())
                .try_fold(0u64, |t, s| s.map(|s| t.wrapping_add(s)))
        })
        .map_err(|_| anyhow::anyhow!("host read probe: a reader thread panicked"))?;
        best = best.min(t.elapsed().as_secs_f64());
        anyhow::ensure!(
            sum == expect,
            "host read probe: sum {sum}, expected {expect}"
        );
    }
    Ok((words * 8) as f64 / best)
}

/// The wrapping sum of `s`, with eight independent accumulators so that the loop is bound
/// by loads rather than by one chain of adds.
fn sum_words(s: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = s.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |t, v| t.wrapping_add(*v));
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*v);
        }
    }
    acc.iter().fold(tail, |t, v| t.wrapping_add(*v))
}
