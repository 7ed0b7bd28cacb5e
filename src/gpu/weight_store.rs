//! Where weight chunks live: storage buffers, or on CPU devices rgba32uint textures, which
//! their drivers read faster (see [`super::Caps::weight_textures`]).

use super::Gpu;
use anyhow::{bail, Result};

/// 16-byte words per row of a weight texture (weight_texture.wgsl's TEX_ROW_SHIFT): 8 KiB,
/// so that a chunk wastes less than that at its end.
pub const TEX_ROW_TEXELS: u32 = 512;
const TEX_ROW_BYTES: u32 = 16 * TEX_ROW_TEXELS;

/// Chunks smaller than one texture row stay in buffers even where weights live in textures:
/// the driver allocates every texture in granules of its own (on lavapipe the 32-layer
/// fixture, ~140 matrices of 1-8 KiB, took 13.0 MiB of device memory in textures against
/// 9.2 in buffers), and reads of so few bytes cost little either way.
pub const MIN_TEXTURE_BYTES: usize = TEX_ROW_BYTES as usize;

/// Whether a chunk of `bytes` goes into a texture on this device.
fn in_texture(gpu: &Gpu, bytes: usize) -> bool {
    gpu.caps.weight_textures && bytes >= MIN_TEXTURE_BYTES
}

/// Texture rows of `TEX_ROW_TEXELS` words, as a copy or texture size.
fn rows_extent(rows: u32) -> wgpu::Extent3d {
    wgpu::Extent3d {
        width: TEX_ROW_TEXELS,
        height: rows,
        depth_or_array_layers: 1,
    }
}

/// Where a weight chunk's bytes live. Kernels read both the same way (the WTEX variant
/// reads the texture); see [`super::Caps::weight_textures`] for which the device uses.
pub enum WeightStore {
    /// A storage buffer.
    Buffer(wgpu::Buffer),
    /// An rgba32uint texture of [`TEX_ROW_TEXELS`] words per row, word i at texel
    /// (i % TEX_ROW_TEXELS, i / TEX_ROW_TEXELS), zero-padded to whole rows.
    Texture(wgpu::Texture, wgpu::TextureView),
}

impl WeightStore {
    /// `bytes` on the device in the store it uses for weights (see [`MIN_TEXTURE_BYTES`]).
    pub fn new(gpu: &Gpu, label: &str, bytes: &[u8]) -> Result<Self> {
        if !in_texture(gpu, bytes.len()) {
            return Ok(Self::Buffer(gpu.storage_init(label, bytes)?));
        }
        let row_bytes = TEX_ROW_BYTES as usize;
        let tex = weight_texture(gpu, label, bytes.len().div_ceil(row_bytes) as u32)?;
        // whole rows straight from `bytes` (at least one), then the last row padded
        let whole = bytes.len() / row_bytes * row_bytes;
        write_texture_rows(gpu, &tex, 0, &bytes[..whole]);
        if whole < bytes.len() {
            let mut last = bytes[whole..].to_vec();
            last.resize(row_bytes, 0);
            write_texture_rows(gpu, &tex, (whole / row_bytes) as u32, &last);
        }
        let view = tex.create_view(&Default::default());
        Ok(Self::Texture(tex, view))
    }

    /// Words to allocate for a buffer of `words` that [`WeightStore::from_buffer`] takes: a
    /// texture copy reads whole texture rows.
    pub(super) fn buffer_words(gpu: &Gpu, words: usize) -> usize {
        if in_texture(gpu, 4 * words) {
            words.next_multiple_of(TEX_ROW_BYTES as usize / 4)
        } else {
            words
        }
    }

    /// The store of a buffer filled on the GPU (`words` 4-byte words, allocated as
    /// [`WeightStore::buffer_words`] says): the buffer itself, or a texture it is copied
    /// into (the copy is queued; the buffer may be dropped).
    pub(super) fn from_buffer(
        gpu: &Gpu,
        label: &str,
        buf: wgpu::Buffer,
        words: usize,
    ) -> Result<Self> {
        if !in_texture(gpu, 4 * words) {
            return Ok(Self::Buffer(buf));
        }
        let rows = (4 * words).div_ceil(TEX_ROW_BYTES as usize) as u32;
        let tex = weight_texture(gpu, label, rows)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo {
                buffer: &buf,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(TEX_ROW_BYTES),
                    rows_per_image: None,
                },
            },
            tex.as_image_copy(),
            rows_extent(rows),
        );
        gpu.queue.submit([enc.finish()]);
        let view = tex.create_view(&Default::default());
        Ok(Self::Texture(tex, view))
    }

    /// The binding a kernel reads it through.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        match self {
            Self::Buffer(b) => b.as_entire_binding(),
            Self::Texture(_, v) => wgpu::BindingResource::TextureView(v),
        }
    }

    pub fn is_texture(&self) -> bool {
        matches!(self, Self::Texture(..))
    }

    /// The first `bytes` of the chunk, copied to the CPU (waits for the GPU).
    pub fn read(&self, gpu: &Gpu, bytes: u64) -> Result<Vec<u8>> {
        let tex = match self {
            Self::Buffer(b) => return gpu.read_bytes(b, 0, bytes),
            Self::Texture(t, _) => t,
        };
        let row_bytes = TEX_ROW_BYTES as u64;
        let rows = bytes.div_ceil(row_bytes).clamp(1, tex.height() as u64) as u32;
        let mut out = gpu.read_texture_rows(tex, TEX_ROW_TEXELS, rows)?;
        out.truncate(bytes.min(rows as u64 * row_bytes) as usize);
        Ok(out)
    }
}

/// An empty weight texture of `rows` rows of [`TEX_ROW_TEXELS`] words, checked against the
/// device's texture size limit.
fn weight_texture(gpu: &Gpu, label: &str, rows: u32) -> Result<wgpu::Texture> {
    let max = gpu.device.limits().max_texture_dimension_2d;
    if rows > max {
        bail!(
            "{label}: {rows} texture rows exceed the device's 2-D texture limit of {max} \
             (set VLM_RUN_WEIGHT_TEXTURES=0 to keep weights in buffers)"
        );
    }
    Ok(gpu.device.create_texture(&wgpu::TextureDescriptor {
        label: Some(label),
        size: rows_extent(rows),
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Uint,
        usage: wgpu::TextureUsages::STORAGE_BINDING
            | wgpu::TextureUsages::COPY_DST
            | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    }))
}

/// Write whole texture rows of `data` from row `row0`.
fn write_texture_rows(gpu: &Gpu, tex: &wgpu::Texture, row0: u32, data: &[u8]) {
    let rows = data.len() as u32 / TEX_ROW_BYTES;
    gpu.queue.write_texture(
        wgpu::TexelCopyTextureInfo {
            texture: tex,
            mip_level: 0,
            origin: wgpu::Origin3d {
                x: 0,
                y: row0,
                z: 0,
            },
            aspect: wgpu::TextureAspect::All,
        },
        data,
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(TEX_ROW_BYTES),
            rows_per_image: None,
        },
        rows_extent(rows),
    );
}
