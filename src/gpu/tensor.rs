//! GPU tensors: f32 activations, and f16 weight matrices split by rows when they exceed the
//! storage-binding limit.

use super::weight_store::WeightStore;
use super::Gpu;
use crate::gguf::quant::GgmlType;
use anyhow::{bail, Result};

/// Bytes of the uniform array that `gemm_tokens` reads its x rows from on devices that take
/// x through uniform buffers (gemv.wgsl's XUBO; 64 KiB, the smallest limit Vulkan allows
/// for a uniform binding): one size for every prompt length, so one pipeline.
pub const UNIFORM_X_BYTES: u64 = 65536;

/// An f32 activation buffer with a row-major 2-D shape. A clone shares the buffer.
#[derive(Clone)]
pub struct Tensor {
    pub buf: wgpu::Buffer,
    pub rows: usize,
    pub cols: usize,
    /// The same values in an rgba32float texture of [cols / 4, rows] texels, which the GEMV
    /// and the lane GEMMs read instead of the buffer on CPU devices ([`Tensor::with_texels`]):
    /// a decode step's residual stream, and the vision tower's product inputs. The kernels
    /// that write such a tensor keep both in step: the decode GEMV and the lane GEMMs
    /// (YTEX), the embedding gather (a copy after it), and LayerNorm, the direct prefill
    /// attention, im2col and `copy_rows` (each says where it cannot). `ops::matmul::linear` refuses one where its
    /// kernel cannot write it. The vision tower's K and V share theirs with the attention's
    /// K/V textures.
    pub texels: Option<wgpu::TextureView>,
}

impl Tensor {
    pub fn new(gpu: &Gpu, label: &str, rows: usize, cols: usize) -> Result<Self> {
        Self::with_min_bytes(gpu, label, rows, cols, 0)
    }

    /// An activation that a GEMM may read as x: on devices that give GEMMs x through
    /// uniform buffers ([`crate::gpu::Caps::uniform_x`], where a uniform binding can hold
    /// [`UNIFORM_X_BYTES`]) its buffer holds at least that many bytes, so that `gemm_tokens`
    /// can bind one fixed-size uniform array over any number of rows that fit it (one
    /// pipeline for every prompt length).
    pub fn activation(gpu: &Gpu, label: &str, rows: usize, cols: usize) -> Result<Self> {
        let pad = gpu.caps.uniform_x && UNIFORM_X_BYTES <= gpu.caps.max_uniform_binding;
        Self::with_min_bytes(
            gpu,
            label,
            rows,
            cols,
            if pad { UNIFORM_X_BYTES } else { 0 },
        )
    }

    /// [rows, cols] f32 in a buffer of at least `min_bytes`.
    fn with_min_bytes(
        gpu: &Gpu,
        label: &str,
        rows: usize,
        cols: usize,
        min_bytes: u64,
    ) -> Result<Self> {
        let bytes = 4 * rows as u64 * cols as u64;
        if bytes > gpu.caps.max_binding {
            bail!(
                "{label}: activation of {rows}x{cols} f32 ({bytes} bytes) exceeds the device's \
                 storage-binding limit of {} bytes",
                gpu.caps.max_binding
            );
        }
        Ok(Self {
            buf: gpu.storage_buffer(label, bytes.max(min_bytes))?,
            rows,
            cols,
            texels: None,
        })
    }

    /// This tensor with a texture copy of its values ([`Tensor::texels`]), on devices that
    /// read x from textures ([`crate::gpu::Caps::x_textures`]); unchanged elsewhere, or where
    /// its rows are not whole texels or exceed the texture limits.
    pub fn with_texels(mut self, gpu: &Gpu, label: &str) -> Self {
        if gpu.caps.x_textures && self.cols.is_multiple_of(4) {
            self.texels = gpu.rgba32float_texture(label, self.cols / 4, self.rows);
        }
        self
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

/// Rows `row0 .. row0 + rows` of a weight matrix, in one buffer or texture.
pub struct WeightChunk {
    pub store: WeightStore,
    pub row0: usize,
    pub rows: usize,
}

/// The GPU layout of quantized rows (`bytes`: whole rows of blocks), so that kernels read
/// every quant with aligned 16-byte loads. Q4_0, IQ4_NL, Q4_1, Q8_0: all groups' quant bytes first
/// (16 or 32 per group, in file order), then the scales (Q4_1: d and m as one 4-byte word
/// per group; Q4_0, IQ4_NL, Q8_0: one f16 d per group, two per word); the size changes by at most 2
/// bytes. Q5_0, Q5_1: [`repack_q5`]; Q3_K: [`repack_q3_k`]; Q4_K: [`repack_q4_k`]; Q5_K:
/// [`repack_q5_k`]; Q6_K: [`repack_q6_k`]; the same size. Types that are not blocks (None) keep their bytes.
pub fn repack(ty: GgmlType, bytes: &[u8]) -> Option<Vec<u8>> {
    let (scale_bytes, quant_bytes) = match ty {
        GgmlType::Q4_0 | GgmlType::IQ4NL => (2, 16),
        GgmlType::Q4_1 => (4, 16),
        GgmlType::Q8_0 => (2, 32),
        GgmlType::Q5_0 => return Some(repack_q5(bytes, 2)),
        GgmlType::Q5_1 => return Some(repack_q5(bytes, 4)),
        GgmlType::Q3K => return Some(repack_q3_k(bytes)),
        GgmlType::Q4K => return Some(repack_q4_k(bytes)),
        GgmlType::Q5K => return Some(repack_q5_k(bytes)),
        GgmlType::Q6K => return Some(repack_q6_k(bytes)),
        _ => return None,
    };
    let block = scale_bytes + quant_bytes;
    let groups = bytes.len() / block;
    let mut quants = Vec::with_capacity(groups * block + 2);
    let mut scales = Vec::with_capacity(groups * scale_bytes);
    for b in bytes.chunks_exact(block) {
        scales.extend_from_slice(&b[..scale_bytes]);
        quants.extend_from_slice(&b[scale_bytes..]);
    }
    quants.extend_from_slice(&scales);
    Some(quants)
}

/// Q4_K super-blocks (144 bytes: d, dmin, 12 bytes of packed 6-bit scales and mins, 128
/// bytes of nibbles) in the GPU layout, the same size: first every sub-block's 32 nibbles as
/// a Q4_1 block holds them (16 bytes, byte i = value i | value i + 16 << 4; the file keeps
/// sub-blocks 2c and 2c + 1 in the low and high nibbles of the same 32 bytes), then every
/// super-block's first 16 bytes as they are (shaders/q4_k.wgsl reads them). So the decode
/// kernels read a Q4_K sub-block as a Q4_1 block whose d and m its header gives.
pub fn repack_q4_k(bytes: &[u8]) -> Vec<u8> {
    let mut quants = Vec::with_capacity(bytes.len());
    let mut headers = Vec::with_capacity(bytes.len() / 9);
    for b in bytes.chunks_exact(144) {
        headers.extend_from_slice(&b[..16]);
        for pair in b[16..].chunks_exact(32) {
            for shift in [0, 4] {
                let v = |l: usize| (pair[l] >> shift) & 15;
                quants.extend((0..16).map(|i| v(i) | (v(i + 16) << 4)));
            }
        }
    }
    quants.extend_from_slice(&headers);
    quants
}

/// The GPU word of a 32-value group's high bits (`high(v)`: value v's fifth bit): value
/// 16h + 4c + j's at bit 8j + 4h + c, so that `(word >> (4h + c)) & 0x01010101` puts the
/// highs of values 16h + 4c .. 16h + 4c + 4 under their nibbles' bytes (bit 8j), as Q6_K's
/// highs words do two bits at a time.
fn five_highs(high: impl Fn(usize) -> bool) -> [u8; 4] {
    let mut word = 0u32;
    for v in 0..32 {
        let (h, c, j) = (v / 16, v % 16 / 4, v % 4);
        word |= (high(v) as u32) << (8 * j + 4 * h + c);
    }
    word.to_le_bytes()
}

/// Q5_0 / Q5_1 blocks (22 / 24 bytes: `scale_bytes` of d (and m), a 32-bit word of high
/// bits, bit v for value v, then 16 bytes of nibbles in Q4_1's order) in the GPU layout, the
/// same size, in three regions: every block's nibbles as they are, then its highs as
/// [`five_highs`] words them, then its scales as they are (Q5_0: one f16 d per block, two to
/// a word; Q5_1: d and m as one word).
pub fn repack_q5(bytes: &[u8], scale_bytes: usize) -> Vec<u8> {
    let block = scale_bytes + 20;
    let blocks = bytes.len() / block;
    let mut quants = Vec::with_capacity(blocks * block + 2);
    let mut highs = Vec::with_capacity(blocks * 4);
    let mut scales = Vec::with_capacity(blocks * scale_bytes);
    for b in bytes.chunks_exact(block) {
        scales.extend_from_slice(&b[..scale_bytes]);
        let h = &b[scale_bytes..scale_bytes + 4];
        highs.extend(five_highs(|v| (h[v / 8] >> (v % 8)) & 1 == 1));
        quants.extend_from_slice(&b[scale_bytes + 4..]);
    }
    quants.extend(highs);
    quants.extend(scales);
    quants
}

/// Q5_K super-blocks (176 bytes: Q4_K's 16-byte header, 32 bytes of high bits, bit 2p of
/// byte l for value 64p + l and bit 2p + 1 for 64p + 32 + l, then Q4_K's 128 bytes of
/// nibbles) in the GPU layout, the same size: every sub-block's nibbles as
/// [`repack_q4_k`] orders them, then its highs as [`five_highs`] words them, then every
/// super-block's header as it is. So a Q5_K sub-block is a Q5_1 block whose d and m its
/// header gives.
pub fn repack_q5_k(bytes: &[u8]) -> Vec<u8> {
    let blocks = bytes.len() / 176;
    let mut quants = Vec::with_capacity(bytes.len());
    let mut highs = Vec::with_capacity(blocks * 32);
    let mut headers = Vec::with_capacity(blocks * 16);
    for b in bytes.chunks_exact(176) {
        headers.extend_from_slice(&b[..16]);
        let qh = &b[16..48];
        for (p, pair) in b[48..].chunks_exact(32).enumerate() {
            for (s, shift) in [0, 4].into_iter().enumerate() {
                let v = |l: usize| (pair[l] >> shift) & 15;
                quants.extend((0..16).map(|i| v(i) | (v(i + 16) << 4)));
                highs.extend(five_highs(|l| (qh[l] >> (2 * p + s)) & 1 == 1));
            }
        }
    }
    [quants, highs, headers].concat()
}

/// Two bits of each of 16 values (`bits(v)`) as one word: value 4c + j's at bits 8j + 2c,
/// so that `(word >> 2c) & 0x03030303` puts those of values 4c .. 4c + 4 in bytes 0..4.
fn two_bit_word(bits: impl Fn(usize) -> u8) -> [u8; 4] {
    let mut word = 0u32;
    for v in 0..16 {
        word |= ((bits(v) & 3) as u32) << (8 * (v % 4) + 2 * (v / 4));
    }
    word.to_le_bytes()
}

/// Q3_K super-blocks (110 bytes: 32 bytes of high bits, 64 of 2-bit lows, 12 of packed 6-bit
/// scales, f16 d) in the GPU layout, the same size, in four regions: every 32-value
/// sub-block's lows as two [`two_bit_word`]s (values 0..16, 16..32), then its high bits as
/// a [`five_highs`] word, then every super-block's 12 scale bytes as they are, then its d.
pub fn repack_q3_k(bytes: &[u8]) -> Vec<u8> {
    let blocks = bytes.len() / 110;
    let mut lows = Vec::with_capacity(blocks * 64);
    let mut highs = Vec::with_capacity(blocks * 32);
    let mut scales = Vec::with_capacity(blocks * 12);
    let mut ds = Vec::with_capacity(blocks * 2);
    for b in bytes.chunks_exact(110) {
        let (hmask, qs) = (&b[..32], &b[32..96]);
        for sub in 0..8 {
            let (h, s) = (sub / 4, sub % 4);
            let low = |l: usize| qs[32 * h + l] >> (2 * s);
            lows.extend(two_bit_word(low));
            lows.extend(two_bit_word(|l| low(l + 16)));
            highs.extend(five_highs(|l| (hmask[l] >> sub) & 1 == 1));
        }
        scales.extend_from_slice(&b[96..108]);
        ds.extend_from_slice(&b[108..110]);
    }
    [lows, highs, scales, ds].concat()
}

/// Q6_K super-blocks (210 bytes: 128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales
/// of 16 values each, f16 d; value = d · scale · (q - 32) for its 6-bit q) in the GPU layout,
/// the same size, in four regions: every 32-value sub-block's low nibbles as a Q4_1 block
/// holds them (16 bytes: byte i = value i | value i + 16 << 4); then its highs (8 bytes: two
/// words, values 0..16 and 16..32, value 4c + j of each at bits 8j + 2c, so that
/// `(word >> 2c) & 0x03030303` puts the highs of values 4c .. 4c + 4 under their nibbles'
/// bytes); then each super-block's 16 scales as they are; then each super-block's d.
pub fn repack_q6_k(bytes: &[u8]) -> Vec<u8> {
    let blocks = bytes.len() / 210;
    let mut lows = Vec::with_capacity(blocks * 128);
    let mut highs = Vec::with_capacity(blocks * 64);
    let mut scales = Vec::with_capacity(blocks * 16);
    let mut ds = Vec::with_capacity(blocks * 2);
    for b in bytes.chunks_exact(210) {
        let q = q6k_quants(b);
        for sub in q.chunks_exact(32) {
            lows.extend((0..16).map(|i| (sub[i] & 15) | ((sub[i + 16] & 15) << 4)));
            for half in sub.chunks_exact(16) {
                highs.extend(two_bit_word(|v| half[v] >> 4));
            }
        }
        scales.extend_from_slice(&b[192..208]);
        ds.extend_from_slice(&b[208..210]);
    }
    [lows, highs, scales, ds].concat()
}

/// A Q6_K super-block's 256 unsigned 6-bit quants in value order (ggml's layout: each half
/// of 128 values takes 64 bytes of low nibbles and 32 of highs, four values to a high byte).
fn q6k_quants(b: &[u8]) -> [u8; 256] {
    let (ql, qh) = (&b[..128], &b[128..192]);
    let mut q = [0u8; 256];
    for n in 0..2 {
        for l in 0..32 {
            let (lo, hi) = (ql[64 * n + l], ql[64 * n + l + 32]);
            let h = qh[32 * n + l];
            let v = &mut q[128 * n..];
            v[l] = (lo & 15) | ((h & 3) << 4);
            v[l + 32] = (hi & 15) | (((h >> 2) & 3) << 4);
            v[l + 64] = (lo >> 4) | (((h >> 4) & 3) << 4);
            v[l + 96] = (hi >> 4) | (((h >> 6) & 3) << 4);
        }
    }
    q
}

/// A weight matrix [rows, cols]. As f16 (`ty` F16), each row is padded with zeros to `cols4`
/// (a multiple of 8) so that kernels can read 4 values, or one 16-byte word of 8, at a
/// time. Quantized (`ty` a ggml block type), rows are the file's blocks, `row_bytes` each,
/// unpadded, in `repack`'s layout; each chunk's buffer is padded at its end to whole 16-byte
/// words.
pub struct Weight {
    pub rows: usize,
    pub cols: usize,
    pub cols4: usize,
    pub ty: GgmlType,
    pub row_bytes: usize,
    pub chunks: Vec<WeightChunk>,
}

/// Whole rows of `row_bytes` that fit one buffer under the weight chunk limit, less `reserve`
/// bytes (the padding of a quantized chunk to whole words).
fn rows_per_chunk(gpu: &Gpu, name: &str, row_bytes: usize, reserve: u64) -> Result<usize> {
    let rows = (gpu.caps.weight_chunk.saturating_sub(reserve) / row_bytes as u64) as usize;
    if rows == 0 {
        bail!(
            "{name}: one row of {row_bytes} bytes exceeds the weight chunk limit of {} bytes",
            gpu.caps.weight_chunk
        );
    }
    Ok(rows)
}

/// Values per f16 weight row on the GPU: `cols` padded to whole 16-byte words.
fn f16_row_len(cols: usize) -> usize {
    cols.next_multiple_of(8)
}

impl Weight {
    /// Upload `data` (row-major f16 bits, `rows * cols`), split by rows to fit the binding limit.
    pub fn upload(gpu: &Gpu, name: &str, rows: usize, cols: usize, data: &[u16]) -> Result<Self> {
        if data.len() != rows * cols {
            bail!("{name}: expected {rows}x{cols} values, got {}", data.len());
        }
        let cols4 = f16_row_len(cols);
        let rows_per_chunk = rows_per_chunk(gpu, name, 2 * cols4, 0)?;
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < rows {
            let n = rows_per_chunk.min(rows - row0);
            let mut packed = vec![0u16; n * cols4];
            for r in 0..n {
                let src = &data[(row0 + r) * cols..(row0 + r + 1) * cols];
                packed[r * cols4..r * cols4 + cols].copy_from_slice(src);
            }
            let store = WeightStore::new(gpu, name, bytemuck::cast_slice(&packed))?;
            chunks.push(WeightChunk {
                store,
                row0,
                rows: n,
            });
            row0 += n;
        }
        Ok(Self {
            rows,
            cols,
            cols4,
            ty: GgmlType::F16,
            row_bytes: 2 * cols4,
            chunks,
        })
    }

    /// Upload `data` of type `ty` (f16 values, or whole blocks of a ggml type) as
    /// [`Weight::upload`] or [`Weight::upload_quantized`] would.
    pub fn upload_data(
        gpu: &Gpu,
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Self> {
        if ty == GgmlType::F16 {
            let halves: Vec<u16> = bytemuck::pod_collect_to_vec(data);
            Self::upload(gpu, name, rows, cols, &halves)
        } else {
            Self::upload_quantized(gpu, name, ty, rows, cols, data)
        }
    }

    /// Upload quantized rows (`data`: `rows` rows of whole `ty` blocks) as they are, split by
    /// rows to fit the binding limit.
    pub fn upload_quantized(
        gpu: &Gpu,
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Self> {
        let Some(row_bytes) = ty.row_bytes(cols).filter(|_| ty.is_quantized()) else {
            bail!("{name}: {cols} columns are not whole {} blocks", ty.name());
        };
        if Some(data.len()) != rows.checked_mul(row_bytes) {
            bail!(
                "{name}: expected {rows} rows of {row_bytes} bytes, got {} bytes",
                data.len()
            );
        }
        let rows_per_chunk = rows_per_chunk(gpu, name, row_bytes, 16)?;
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < rows {
            let n = rows_per_chunk.min(rows - row0);
            let bytes = &data[row0 * row_bytes..(row0 + n) * row_bytes];
            let repacked = repack(ty, bytes);
            let bytes = repacked.as_deref().unwrap_or(bytes);
            // whole 16-byte words: the kernels load the scale regions' last words whole
            let store = if bytes.len().is_multiple_of(16) {
                WeightStore::new(gpu, name, bytes)?
            } else {
                let mut padded = bytes.to_vec();
                padded.resize(bytes.len().next_multiple_of(16), 0);
                WeightStore::new(gpu, name, &padded)?
            };
            chunks.push(WeightChunk {
                store,
                row0,
                rows: n,
            });
            row0 += n;
        }
        Ok(Self {
            rows,
            cols,
            cols4: cols,
            ty,
            row_bytes,
            chunks,
        })
    }

    /// A weight of type `ty` filled on the GPU with seeded pseudo-random values, in the same
    /// layout [`Weight::upload_data`] gives: f16 values in ±0.05, or random quant bits with
    /// scales in ±0.003. Nothing is uploaded, so shapes of any size can be benchmarked without
    /// a file (`vlm-run bench --synthetic`). F16 and every block type.
    pub fn random(
        gpu: &Gpu,
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        seed: u32,
    ) -> Result<Self> {
        // (bytes of scales per block in the repacked layout, and for Q4_K the words of each
        // super-block's header there, of which only the first, d|dmin, holds f16 values)
        let (scale_bytes, header_words) = match ty {
            GgmlType::F16 => (0, 0),
            // (Q5_0, Q5_1: the highs' words lie between the nibbles and the scales)
            GgmlType::Q4_0 | GgmlType::IQ4NL | GgmlType::Q5_0 | GgmlType::Q8_0 => (2, 0),
            GgmlType::Q4_1 | GgmlType::Q5_1 => (4, 0),
            GgmlType::Q4K | GgmlType::Q5K => (16, 4),
            // the d's close the layout, after the nibbles (Q3_K: 2-bit lows), highs and
            // scales
            GgmlType::Q3K | GgmlType::Q6K => (2, 0),
            _ => bail!(
                "{name}: random weights of type {} are not supported",
                ty.name()
            ),
        };
        let (cols4, row_bytes, reserve) = if ty == GgmlType::F16 {
            let cols4 = f16_row_len(cols);
            (cols4, 2 * cols4, 0)
        } else {
            let Some(rb) = ty.row_bytes(cols) else {
                bail!("{name}: {cols} columns are not whole {} blocks", ty.name());
            };
            (cols, rb, 16)
        };
        let rows_per_chunk = rows_per_chunk(gpu, name, row_bytes, reserve)?;
        let mut chunks = Vec::new();
        let mut kernels = Vec::new();
        let mut filled = Vec::new();
        let mut row0 = 0;
        while row0 < rows {
            let n = rows_per_chunk.min(rows - row0);
            let bytes = n * row_bytes;
            let words = bytes.div_ceil(4);
            let split = match ty {
                GgmlType::F16 => 0,
                _ => (bytes / ty.block_bytes()) * (ty.block_bytes() - scale_bytes) / 4,
            };
            // whole 16-byte words, as upload_quantized pads them (the fill leaves zeros)
            let buf_words = WeightStore::buffer_words(gpu, words.next_multiple_of(4));
            let buf = gpu.storage_buffer(name, 4 * buf_words as u64)?;
            let amp = if ty == GgmlType::F16 { 0.05f32 } else { 0.003 };
            let chunk_seed = seed ^ (filled.len() as u32).wrapping_mul(0x9e37_79b9);
            let params = [
                words as u32,
                split as u32,
                header_words as u32,
                chunk_seed,
                amp.to_bits(),
                0,
                0,
                0,
            ];
            let workgroups = (words as u32).div_ceil(64).min(4096);
            kernels.push(super::Kernel::new(
                gpu,
                "random_fill",
                "fill",
                &Default::default(),
                bytemuck::cast_slice(&params),
                &[(1, &buf)],
                [workgroups, 1, 1],
            )?);
            filled.push((buf, words, row0, n));
            row0 += n;
        }
        gpu.run(&kernels.iter().collect::<Vec<_>>())?;
        for (buf, words, row0, n) in filled {
            chunks.push(WeightChunk {
                store: WeightStore::from_buffer(gpu, name, buf, words)?,
                row0,
                rows: n,
            });
        }
        Ok(Self {
            rows,
            cols,
            cols4,
            ty,
            row_bytes,
            chunks,
        })
    }

    /// Bytes this weight occupies on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.rows as u64 * self.row_bytes as u64
    }
}
