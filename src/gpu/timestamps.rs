//! Device timestamps around each dispatch of a pass: where a pass's time goes on the device
//! itself, with every dispatch in its place (`VLM_RUN_PROFILE=gpu`). Two ways, by what the
//! adapter offers:
//! - [`TimestampWay::InsidePass`] (wgpu's TIMESTAMP_QUERY_INSIDE_PASSES; Vulkan and DX12
//!   have it): the kernels in one compute pass, as a request runs them, with a timestamp
//!   before the first dispatch and after each. Dispatch i's time runs from the timestamp
//!   before it to its own, so it holds the wait for the dispatches before it to finish (the
//!   barrier) as well as its own work, and the times add up to the pass;
//! - [`TimestampWay::PassPerDispatch`] (TIMESTAMP_QUERY alone; Metal has no timestamps
//!   inside passes): a compute pass per dispatch with timestamps at its start and end, each
//!   dispatch's own time without what passes between passes.

use super::{Gpu, Kernel};
use anyhow::{anyhow, bail, Result};
use std::time::Instant;

/// How dispatches are timed (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampWay {
    InsidePass,
    PassPerDispatch,
}

/// The device's times of one run of a pass's kernels.
#[derive(Clone, Debug)]
pub struct DispatchTimes {
    pub way: TimestampWay,
    /// Seconds of each dispatch, in the order given.
    pub secs: Vec<f64>,
    /// Seconds on the host from the submission to the end of the wait (summed over the
    /// submissions of a pass of more dispatches than one query set holds).
    pub wall: f64,
}

impl DispatchTimes {
    /// The dispatches' seconds added up: the whole pass on the device for
    /// [`TimestampWay::InsidePass`].
    pub fn total(&self) -> f64 {
        self.secs.iter().sum()
    }
}

/// The timestamp features that [`Gpu::new`] asks for where the adapter has them.
pub fn features(adapter: wgpu::Features) -> wgpu::Features {
    let all = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
    adapter & all
}

impl Gpu {
    /// The ways this device can time dispatches, best first (none without timestamps).
    pub fn timestamp_ways(&self) -> Vec<TimestampWay> {
        let f = self.device.features();
        let mut ways = Vec::new();
        if f.contains(wgpu::Features::TIMESTAMP_QUERY) {
            if f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES) {
                ways.push(TimestampWay::InsidePass);
            }
            ways.push(TimestampWay::PassPerDispatch);
        }
        ways
    }

    /// Run `kernels` once, in order, timing each dispatch with device timestamps `way`.
    pub fn time_dispatches(&self, kernels: &[&Kernel], way: TimestampWay) -> Result<DispatchTimes> {
        if !self.timestamp_ways().contains(&way) {
            bail!(
                "{:?} cannot time dispatches {way:?} (its adapter lacks the timestamp queries)",
                self.info.name
            );
        }
        let per_set = match way {
            TimestampWay::InsidePass => wgpu::QUERY_SET_MAX_QUERIES as usize - 1,
            TimestampWay::PassPerDispatch => wgpu::QUERY_SET_MAX_QUERIES as usize / 2,
        };
        let period_ns = self.queue.get_timestamp_period() as f64;
        let mut times = DispatchTimes {
            way,
            secs: Vec::with_capacity(kernels.len()),
            wall: 0.0,
        };
        for chunk in kernels.chunks(per_set) {
            let (ticks, wall) = self.timestamps_of(chunk, way)?;
            times.wall += wall;
            let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 * period_ns * 1e-9;
            match way {
                TimestampWay::InsidePass => times
                    .secs
                    .extend(ticks.windows(2).map(|w| secs(w[0], w[1]))),
                TimestampWay::PassPerDispatch => {
                    times.secs.extend(ticks.chunks(2).map(|w| secs(w[0], w[1])))
                }
            }
        }
        Ok(times)
    }

    /// One submission of `kernels` with timestamps `way`: the raw ticks and the host's wall
    /// seconds.
    fn timestamps_of(&self, kernels: &[&Kernel], way: TimestampWay) -> Result<(Vec<u64>, f64)> {
        let count = match way {
            TimestampWay::InsidePass => kernels.len() + 1,
            TimestampWay::PassPerDispatch => 2 * kernels.len(),
        } as u32;
        let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = count as u64 * wgpu::QUERY_SIZE as u64;
        let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps.resolved"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps.readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let empty = self.in_empty_grids();
        let mut enc = self.device.create_command_encoder(&Default::default());
        match way {
            TimestampWay::InsidePass => {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.write_timestamp(&set, 0);
                for (i, k) in kernels.iter().enumerate() {
                    k.encode(&mut pass, empty)?;
                    pass.write_timestamp(&set, i as u32 + 1);
                }
            }
            TimestampWay::PassPerDispatch => {
                for (i, k) in kernels.iter().enumerate() {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: &set,
                            beginning_of_pass_write_index: Some(2 * i as u32),
                            end_of_pass_write_index: Some(2 * i as u32 + 1),
                        }),
                    });
                    k.encode(&mut pass, empty)?;
                }
            }
        }
        enc.resolve_query_set(&set, 0..count, &resolved, 0);
        enc.copy_buffer_to_buffer(&resolved, 0, &staging, 0, bytes);
        let t = Instant::now();
        let index = self.queue.submit([enc.finish()]);
        let raw = self.map_and_read_after(&staging, bytes, Some(index))?;
        let wall = t.elapsed().as_secs_f64();
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
        if ticks.len() != count as usize {
            return Err(anyhow!("short timestamp readback"));
        }
        Ok((ticks, wall))
    }
}
