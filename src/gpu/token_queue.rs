//! The token loop's submissions and readbacks. Each pass (the prefill, then one per decode
//! step) samples its token id into the device buffer `token`, which the next step's
//! embedding reads there, and copies it into one of two staging buffers for the host. So a
//! step can be submitted before the host has read the previous step's token: while the
//! device runs step i, the host reads token i and encodes step i + 1, and the device never
//! waits for the host between steps (`Engine::generate` queues one step ahead; see
//! [`super::Gpu::decode_ahead`]).

use super::{Gpu, Kernel};
use anyhow::{anyhow, Result};

/// Token readbacks in flight: two staging buffers, token i in slot i % 2, and the
/// submission that fills each.
pub struct TokenQueue<'a> {
    gpu: &'a Gpu,
    token: &'a wgpu::Buffer,
    staging: [wgpu::Buffer; 2],
    pending: [Option<wgpu::SubmissionIndex>; 2],
}

impl<'a> TokenQueue<'a> {
    /// Readbacks of the 4-byte token id in `token`.
    pub fn new(gpu: &'a Gpu, token: &'a wgpu::Buffer) -> Self {
        let staging = |slot: usize| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(["token readback 0", "token readback 1"][slot]),
                size: 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        Self {
            gpu,
            token,
            staging: [staging(0), staging(1)],
            pending: [None, None],
        }
    }

    /// Encode `kernels` into one compute pass, then the copy of the token they sample into
    /// slot `i % 2` for token `i`, and submit; returns at once. Slot `i % 2` must have been
    /// read since it was last filled (at most two tokens in flight).
    pub fn submit(&mut self, kernels: &[&Kernel], i: usize) -> Result<()> {
        let slot = i % 2;
        if self.pending[slot].is_some() {
            return Err(anyhow!(
                "token {i} submitted while its readback slot still holds an unread token"
            ));
        }
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.gpu.encode(&mut pass, kernels)?;
        }
        enc.copy_buffer_to_buffer(self.token, 0, &self.staging[slot], 0, 4);
        self.pending[slot] = Some(self.gpu.queue.submit([enc.finish()]));
        Ok(())
    }

    /// Token `i`, once the submission that sampled it has finished (not any submitted
    /// after it).
    pub fn read(&mut self, i: usize) -> Result<u32> {
        let slot = i % 2;
        let Some(after) = self.pending[slot].take() else {
            return Err(anyhow!("token {i} was read before it was submitted"));
        };
        let b = self
            .gpu
            .map_and_read_after(&self.staging[slot], 4, Some(after))?;
        b.try_into()
            .map(u32::from_le_bytes)
            .map_err(|_| anyhow!("short token readback"))
    }
}
