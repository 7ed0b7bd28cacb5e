//! GPU tensors: f32 activations, and f16 weight matrices split by rows when they exceed the
//! storage-binding limit.

use super::Gpu;
use anyhow::{bail, Result};

/// An f32 activation buffer with a row-major 2-D shape.
pub struct Tensor {
    pub buf: wgpu::Buffer,
    pub rows: usize,
    pub cols: usize,
}

impl Tensor {
    pub fn new(gpu: &Gpu, label: &str, rows: usize, cols: usize) -> Result<Self> {
        let bytes = 4 * rows as u64 * cols as u64;
        if bytes > gpu.caps.max_binding {
            bail!(
                "{label}: activation of {rows}x{cols} f32 ({bytes} bytes) exceeds the device's \
                 storage-binding limit of {} bytes",
                gpu.caps.max_binding
            );
        }
        Ok(Self {
            buf: gpu.storage_buffer(label, bytes)?,
            rows,
            cols,
        })
    }

    pub fn from_f32(
        gpu: &Gpu,
        label: &str,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<Self> {
        assert_eq!(data.len(), rows * cols, "{label}");
        let t = Self::new(gpu, label, rows, cols)?;
        gpu.queue
            .write_buffer(&t.buf, 0, bytemuck::cast_slice(data));
        Ok(t)
    }

    pub fn read(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        gpu.read_f32(&self.buf, self.rows * self.cols)
    }
}

/// Rows `row0 .. row0 + rows` of a weight matrix, in one buffer.
pub struct WeightChunk {
    pub buf: wgpu::Buffer,
    pub row0: usize,
    pub rows: usize,
}

/// A weight matrix [rows, cols] stored as f16, each row padded with zeros to `cols4`
/// (a multiple of 4) so that kernels can read 4 values at a time.
pub struct Weight {
    pub rows: usize,
    pub cols: usize,
    pub cols4: usize,
    pub chunks: Vec<WeightChunk>,
}

impl Weight {
    /// Upload `data` (row-major f16 bits, `rows * cols`), split by rows to fit the binding limit.
    pub fn upload(gpu: &Gpu, name: &str, rows: usize, cols: usize, data: &[u16]) -> Result<Self> {
        if data.len() != rows * cols {
            bail!("{name}: expected {rows}x{cols} values, got {}", data.len());
        }
        let cols4 = cols.next_multiple_of(4);
        let row_bytes = 2 * cols4 as u64;
        let rows_per_chunk = (gpu.caps.weight_chunk / row_bytes) as usize;
        if rows_per_chunk == 0 {
            bail!(
                "{name}: one row of {cols} f16 values exceeds the weight chunk limit of {} bytes",
                gpu.caps.weight_chunk
            );
        }
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < rows {
            let n = rows_per_chunk.min(rows - row0);
            let mut packed = vec![0u16; n * cols4];
            for r in 0..n {
                let src = &data[(row0 + r) * cols..(row0 + r + 1) * cols];
                packed[r * cols4..r * cols4 + cols].copy_from_slice(src);
            }
            let buf = gpu.storage_init(name, bytemuck::cast_slice(&packed))?;
            chunks.push(WeightChunk { buf, row0, rows: n });
            row0 += n;
        }
        Ok(Self {
            rows,
            cols,
            cols4,
            chunks,
        })
    }

    /// Bytes this weight occupies on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        2 * self.rows as u64 * self.cols4 as u64
    }
}
