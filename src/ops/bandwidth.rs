//! The device's own copy bandwidth, measured with a copy kernel: the yardstick that
//! `vlm-run bench` compares decode's effective bandwidth against.

use super::{bytes, Kernel};
use crate::gpu::Gpu;
use anyhow::Result;
use std::time::Instant;

/// Copy bandwidth in bytes per second, counting bytes read plus bytes written, over a copy
/// of up to 64 MiB (less when the binding limit is lower), median of `reps` runs.
pub fn copy_bandwidth(gpu: &Gpu, reps: usize) -> Result<f64> {
    let size = (64u64 << 20).min(gpu.caps.max_binding) / 16 * 16;
    let src = gpu.storage_buffer("bandwidth.src", size)?;
    let dst = gpu.storage_buffer("bandwidth.dst", size)?;
    let n = (size / 16) as u32;
    let params = [n, 0, 0, 0];
    let workgroups = n.div_ceil(64).min(if gpu.caps.cpu { 64 } else { 4096 });
    let k = Kernel::new(
        gpu,
        "bandwidth",
        "copy",
        &Default::default(),
        bytes(&params),
        &[(1, &src), (2, &dst)],
        [workgroups, 1, 1],
    )?;
    gpu.run(&[&k])?; // warm-up
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        gpu.run(&[&k])?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(2.0 * size as f64 / times[times.len() / 2])
}
