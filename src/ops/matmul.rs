//! Linear layers: GEMM for many rows (prefill, encoder), GEMV for one row (decode).

use super::attention::KvTextures;
use super::rope::RopeKv;
use super::{bytes, Kernel};
use crate::gguf::quant::GgmlType;
use crate::gpu::shader::Defines;
use crate::gpu::{fold_workgroups, GemmTile, Gpu, Tensor, Weight, WeightChunk, UNIFORM_X_BYTES};
use anyhow::{bail, Result};

/// Activation fused into the epilogue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Act {
    #[default]
    None,
    Gelu,
    QuickGelu,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// The parameter block of matmul.wgsl and matmul_quant.wgsl (whose `embed_rows` reads it
/// too: m ids, n table rows from row `out_col`, k columns, `k4` bytes per row).
pub(crate) struct Params {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub k4: u32,
    pub x_stride: u32,
    pub out_stride: u32,
    pub out_col: u32,
    pub pad: u32,
}

/// y[.., 0..w.rows] (=|+=) act(x · wᵀ + bias). x: [m, ≥ w.cols]; y: [m, ≥ w.rows].
/// A weight split into row chunks becomes one dispatch per chunk, each writing its columns.
pub fn linear(
    gpu: &Gpu,
    x: &Tensor,
    w: &Weight,
    bias: Option<&wgpu::Buffer>,
    y: &Tensor,
    act: Act,
    accumulate: bool,
) -> Result<Vec<Kernel>> {
    linear_at(gpu, x, w, bias, y, 0, act, accumulate)
}

/// [`linear`] into columns `y_col .. y_col + w.rows` of y (no bias then).
#[allow(clippy::too_many_arguments)]
pub fn linear_at(
    gpu: &Gpu,
    x: &Tensor,
    w: &Weight,
    bias: Option<&wgpu::Buffer>,
    y: &Tensor,
    y_col: usize,
    act: Act,
    accumulate: bool,
) -> Result<Vec<Kernel>> {
    let m = x.rows;
    if bias.is_some() && y_col != 0 {
        bail!("linear: a bias with an output column offset");
    }
    if x.cols < w.cols || y.cols < y_col + w.rows || y.rows < m {
        bail!(
            "linear: x {}x{}, w {}x{}, y {}x{} do not fit",
            x.rows,
            x.cols,
            w.rows,
            w.cols,
            y.rows,
            y.cols
        );
    }
    // an output's texture copy: the decode GEMV and the lane GEMMs write one (and say where
    // they cannot)
    if y.texels.is_some() && !(m == 1 && gemv_reads(w) || lanes_write_texels(gpu, m, w, y_col)) {
        bail!(
            "linear: a {m}x{} by {}x{} product cannot write its output's texture copy",
            w.cols,
            w.rows,
            w.cols
        );
    }
    let tile = gpu.gemm_tile();
    let mut defines = gpu.base_defines();
    defines.set("TN", tile.threads());
    epilogue_flags(&mut defines, bias.is_some(), act, accumulate);
    // f16 weights: matmul.wgsl (k4 = padded row length). ggml blocks: matmul_quant.wgsl's
    // GEMM reads them in place (k4 = bytes per row), also for one row where gemv.wgsl, which
    // reads every block type, declines.
    let (family, k4) = match w.ty.shader_flag() {
        Some(flag) => {
            defines.flag(flag);
            ("matmul_quant", w.row_bytes)
        }
        None => ("matmul", w.cols4),
    };
    let epilogue = Epilogue {
        bias,
        act,
        accumulate,
        y_col,
        ..Default::default()
    };
    if m > 1 && tile == GemmTile::Lanes {
        if let Some(ks) = gemm_lanes(gpu, x, w, y, epilogue)? {
            return Ok(ks);
        }
    }
    if m == 1 {
        if let Some(ks) = gemv(gpu, x, w, y, epilogue)? {
            return Ok(ks);
        }
    }
    if y.texels.is_some() {
        bail!("linear: matmul.wgsl does not write an output's texture copy");
    }
    let mut kernels = Vec::new();
    for chunk in &w.chunks {
        let params = Params {
            m: m as u32,
            n: chunk.rows as u32,
            k: w.cols as u32,
            k4: k4 as u32,
            x_stride: x.cols as u32,
            out_stride: y.cols as u32,
            out_col: (y_col + chunk.row0) as u32,
            pad: 0,
        };
        let mut bindings = vec![(1, &x.buf), (4, &y.buf)];
        if let Some(b) = bias {
            bindings.push((3, b));
        }
        let (entry, grid) = if m == 1 && family == "matmul" {
            // matmul.wgsl's GEMV: 4 rows a workgroup
            let groups = (chunk.rows as u32).div_ceil(4);
            (
                "gemv",
                fold_workgroups(groups, gpu.caps.max_workgroups_per_dim),
            )
        } else {
            let side = tile.side() as usize;
            ("gemm", grid_2d(gpu, chunk.rows, side, m, side)?)
        };
        kernels.push(Kernel::with_weight(
            gpu,
            family,
            entry,
            &defines,
            bytes(&params),
            &bindings,
            chunk,
            Vec::new(),
            grid,
        )?);
    }
    Ok(kernels)
}

/// Input rows per lane group of gemm_lanes: each weight unit it loads and decodes serves
/// that many rows. 4 for the quant formats (measured on lavapipe with SmolLM2-135M Q4_1: 4
/// input rows and 32 weight rows per lane group prefill 4-5× faster than the 64×64 tile; at
/// 8 and 16 the 32-value units of x spill, and the prefill's products took 1.3× and 2-4× as
/// long). 8 for f16, whose units hold 8 values (lavapipe, 2 cores, `examples/gemm_probe.rs`,
/// 2026-11-24), against 4: llava-1.5-7b's f16 products over 584 rows 16.3-17.4 → 19.3-21.2
/// GFLOP/s (4096 × 4096, 4096 → 11008, 11008 → 4096, q|k|v with RMSNorm on load), CLIP-L's
/// fc1 (577 × 1024 → 4096) 15.6-15.8 → 18.9, SmolLM2-135M's [gate; up] with RMSNorm over 130
/// rows 13.4-13.8 → 15.2-15.7. 16 rows were faster still on the plain products (22.3-22.8)
/// but slower with the fusions (13.0-17.0).
fn lane_tokens(ty: GgmlType) -> usize {
    match ty {
        GgmlType::F16 => 8,
        _ => 4,
    }
}

/// The longest rows gemm_tokens always takes instead of gemm_lanes. Its invocations each own an
/// input row and walk all of k, and the workgroup's rows share every weight load, so it
/// needs no lane sums: at k = 64 the 8 lanes of gemm_lanes hold one unit each and spend
/// as long summing as multiplying. Measured on lavapipe (profile, 2 cores): on
/// tiny-llava-32l (k = 32 and 64) the decoder's GEMMs took 110-150 ms instead of ~250 and
/// the encoder's layer GEMMs 20-27 ms instead of 32-38; at k = 128 (weights/tiny-llava-vqa)
/// the lane groups were as fast in the encoder and faster in the decoder (SwiGLU's
/// [gate; up] 99-120 ms against 115-139, with 8 to 32 weight rows per workgroup). Measured
/// again on 2026-11-23 the narrow matrices of k = 128 and more ran faster by token over long
/// inputs: [`TOKENS_MAX_N`].
pub const TOKENS_MAX_K: usize = 64;

/// Longer rows go to gemm_tokens too when the matrix has at most this many rows (weight
/// rows per chunk) and the input at least [`TOKENS_MIN_M`] rows: each x row is then loaded
/// only n / 8 times, and the encoders' wide inputs fill its 32-row workgroups. Measured on
/// lavapipe (profile, 2 cores, 2026-11-23): the vision tower's GEMMs on tiny-llava-32l (577
/// rows; fc2 k = 128, the patch embedding k = 588, n = 64) took 17-24 ms against 26-34, on
/// weights/tiny-llava-vqa (257 rows, k = 128-588, n = 128-512) 46-49 ms against 68-78, and
/// that model's decoder GEMMs over a 267-row prompt (k = 128 and 384, n = 128-256) 66-76 ms
/// against 78-91 ([gate; up], n = 768, level either way, stays with the lanes). SmolLM2's
/// F16 matrices (k = 576, n = 576-3072) were 1.7x slower by token, so they kept the lanes.
/// Raised from 512 after gemm_tokens took two rows per invocation (`TOKENS_PER_INVOCATION`;
/// lavapipe, 2 cores, alternated runs): weights/tiny-llava-vqa's [gate; up] (n = 768) in
/// the profile 51-74 ms against 80-92, its prefill 102-146 ms against 124-151; SmolLM2 F16
/// (synthetic) over a 274-token prompt 46-52 tok/s against 41-48 with its 576-row matrices
/// by token, and 45 with all of them (4096).
pub const TOKENS_MAX_N: usize = 1024;
/// See [`TOKENS_MAX_N`]: narrow matrices go by token only with rows shorter than this. Once
/// gemm_lanes took 8 input rows for f16 (`lane_tokens`), it beat gemm_tokens on long rows
/// (lavapipe, 2 cores, 2026-11-24, `examples/gemm_probe.rs`): CLIP-L's 577 × 1024 → 1024
/// 17.0 → 19.2 GFLOP/s and fc2 (577 × 4096 → 1024) 17.3 → 21.0, so llava-1.5-7b's vision
/// tower took 20.0 s against 21.7; SmolLM2-135M's down projection (130 × 1536 → 576) 12.9 →
/// 14.7, with its F16 prefill level (8 alternated pairs, median ratio 0.993). At k = 576
/// the by-token q|k|v keeps its RoPE epilogue and SmolLM2's prefill was faster with it.
pub const TOKENS_NARROW_MAX_K: usize = 1024;
/// See [`TOKENS_MAX_N`]: shorter inputs leave most of a 32-row workgroup idle. Lowered from
/// 128 once gemm_tokens shared its weight words by subgroup shuffles (gemv.wgsl's SHARED_W;
/// lavapipe, 2 cores, 2026-11-24, alternated runs): SmolLM2-135M F16 prefilled 107 tokens at
/// 60.5-63.0 tok/s against 57.2-57.3 and 49 tokens at 57.6 against 50.8-52.8, and
/// weights/tiny-llava-vqa's prefill pruned to 28 visual tokens (45 rows) took 15.3-17.0 ms
/// against 19.5-19.9. At 8 a prefill of 25 rows (8 visual tokens) took 14.6 ms against 12.2.
pub const TOKENS_MIN_M: usize = 32;

/// Invocations per gemm_tokens workgroup (gemv.wgsl's `TOKENS_WG`; each takes
/// [`TOKENS_PER_INVOCATION`] input rows, measured here with one) and weight rows per workgroup (8 measured as fast as 16 and faster than 4 on tiny-llava-32l). 32
/// rows pad a short prefill less than 64: on tiny-llava-32l pruned to 64 visual tokens (94
/// rows: 3 workgroups of 32 against 2 of 64) the decoder's GEMMs took 20-23 ms against 27;
/// 16 rows took 27-29 ms (lavapipe profile).
const TOKENS_PER_WG: usize = 32;
const TOKENS_ROWS: usize = 8;
// gemv.wgsl's SHARED_W takes a workgroup's weight rows from the 8 lanes of a lane group
const _: () = assert!(TOKENS_ROWS <= 8);
/// Input rows per gemm_tokens invocation (gemv.wgsl's `TPI`): each weight word it loads and
/// decodes serves two rows of x. Measured on lavapipe (examples/gemm_probe.rs, 2 cores,
/// three runs each): the patch embedding (576 x 588 -> 64) 4.1-5.0 ms against 3.0-3.1 with
/// 2 rows, the tiny fixtures' 577-row encoder products 10-20% faster, a 589-row decoder q|k|v
/// (k = 32) 0.54-0.83 ms against 0.44-0.55, a 96-row one level. 4 rows were no faster
/// overall and slower on the patch embedding (4.5-4.9 ms).
const TOKENS_PER_INVOCATION: usize = 2;

/// Whether the lane kernels run m rows of x times the f16 `w` with an invocation per input
/// row (`gemm_tokens`) rather than lanes over k: short rows, or few outputs of rows under
/// [`TOKENS_NARROW_MAX_K`] over many input rows ([`TOKENS_MAX_N`]).
pub fn by_token(m: usize, w: &Weight) -> bool {
    let narrow = w.chunks.iter().all(|c| c.rows <= TOKENS_MAX_N)
        && w.cols < TOKENS_NARROW_MAX_K
        && m >= TOKENS_MIN_M;
    w.ty == GgmlType::F16 && (w.cols <= TOKENS_MAX_K || narrow)
}

/// The shortest rows gemm_lanes takes: a 32-value block of the quant formats per lane, or
/// for f16 half the lanes busy with a 16-byte word (8 values) each, which still beats the
/// workgroup-memory tile on CPU devices.
pub fn lane_min_k(ty: GgmlType) -> usize {
    match ty {
        GgmlType::F16 => 32,
        _ => 256,
    }
}

/// Weight rows per lane group of gemm_lanes: 32, or fewer when a matrix has too few rows
/// to keep two workgroups busy.
fn lane_rows(rows: usize) -> usize {
    [32, 16, 8, 4]
        .into_iter()
        .find(|r| rows.div_ceil(8 * r) >= 2)
        .unwrap_or(2)
}

/// y[.., y_col..] = x W^T with the fusions in `e`, for x's m > 1 rows, with gemv.wgsl's
/// lane groups (`gemm_lanes`), or an invocation per input row (`gemm_tokens`, where
/// [`by_token`] says); None when those kernels do not read w's format, x's rows are not
/// whole vec4s, or the fusions do not fit w.
fn gemm_lanes(
    gpu: &Gpu,
    x: &Tensor,
    w: &Weight,
    y: &Tensor,
    e: Epilogue,
) -> Result<Option<Vec<Kernel>>> {
    // Its 8 lanes stride over K in units: below lane_min_k some lanes would idle, and the
    // workgroup tile is faster. RoPE runs only as gemm_tokens' epilogue.
    let m = x.rows;
    let by_token = by_token(m, w);
    // (a part of q|k|v, rope_from, is the decode GEMV's alone)
    if !fusable(w, &e)
        || (e.rope.is_some() && (!by_token || e.rope_from.is_some()))
        || !x.cols.is_multiple_of(4)
        || w.cols < lane_min_k(w.ty)
    {
        return Ok(None);
    }
    check_fit("gemm_lanes", m, x, w, y, &e)?;
    let pairs = e.gate_up || e.rope.is_some();
    if y.texels.is_some() && (pairs || !lanes_write_texels(gpu, m, w, e.y_col)) {
        bail!(
            "gemm_lanes: a {m}x{} by {}x{} product cannot write its output's texture copy",
            w.cols,
            w.rows,
            w.cols
        );
    }
    let mut d = fused_defines(gpu, w, &e);
    d.set("TOKENS", format!("{}u", lane_tokens(w.ty)));
    if let Some(t) = e.kv_copy {
        let h = e.rope.map(|r| r.heads);
        if !h.is_some_and(|h| copy_fits(h, t, m)) {
            bail!("gemm_tokens: K and V of {m} rows do not fit the prefill textures");
        }
        d.flag("KV_TEX_COPY");
    }
    // the module holds both entries, so gemm_lanes' variants carry TOKENS_WG too
    d.set("TOKENS_WG", format!("{TOKENS_PER_WG}u"));
    d.set("TPI", format!("{TOKENS_PER_INVOCATION}u"));
    let (entry, m_per) = if by_token {
        ("gemm_tokens", TOKENS_PER_WG * TOKENS_PER_INVOCATION)
    } else {
        ("gemm_lanes", lane_tokens(w.ty))
    };
    let mut bindings = fused_bindings(x, y, &e);
    let mut ranges = Vec::new();
    // x's rows from its texture copy (XTEX): lavapipe fetches a texel for 8 lanes where it
    // loads a storage buffer lane by lane
    let x_tex = (x.texels.as_ref())
        .filter(|_| e.norm.is_some() == e.norm_texels.is_some() && x.rows < 1 << 16);
    let textures = texel_bindings(&mut d, &mut bindings, x_tex, y, &e);
    if by_token && gpu.lane_groups() {
        // each lane of 8 fetches one of the workgroup's TOKENS_ROWS weight rows and shares it
        d.flag("SHARED_W");
    }
    if by_token && x_tex.is_none() {
        if let Some((xb, gb)) = uniform_x_rows(gpu, m, x, w, &e) {
            d.flag("XUBO");
            d.set("XLEN", format!("{}u", xb / 16));
            d.set("GLEN", format!("{}u", gb / 16));
            bindings.retain(|(b, _)| *b != 1 && *b != 6);
            ranges.push((1, xb, &x.buf));
            if let Some((g, _)) = e.norm {
                ranges.push((6, gb, g));
            }
        }
    }
    let mut kernels = Vec::new();
    for chunk in &w.chunks {
        // LG_ROWS weight rows per lane group (gemm_lanes, 8 groups per workgroup) or per
        // workgroup (gemm_tokens); they are LG_ROWS / 2 outputs with GATE_UP
        let (rows, groups) = if by_token {
            (TOKENS_ROWS, 1)
        } else {
            (lane_rows(chunk.rows), 8)
        };
        d.set("LG_ROWS", format!("{rows}u"));
        let (outputs, per_wg) = if e.gate_up || e.rope.is_some() {
            (chunk.rows / 2, groups * rows / 2)
        } else {
            (chunk.rows, groups * rows)
        };
        let grid = grid_2d(gpu, outputs, per_wg, m, m_per)?;
        let params = fused_params(m, x, w, chunk, y, &e);
        let mut resources: Vec<_> = ranges
            .iter()
            .map(|(b, size, buf)| (*b, range(buf, *size)))
            .collect();
        resources
            .extend((textures.iter()).map(|(b, t)| (*b, wgpu::BindingResource::TextureView(t))));
        if let Some(t) = e.kv_copy {
            let (k, v) = t.views();
            resources.push((12, wgpu::BindingResource::TextureView(k)));
            resources.push((13, wgpu::BindingResource::TextureView(v)));
        }
        kernels.push(Kernel::with_weight(
            gpu,
            "gemv",
            entry,
            &d,
            bytes(&params),
            &bindings,
            chunk,
            resources,
            grid,
        )?);
    }
    Ok(Some(kernels))
}

/// Whether a prefill's q|k|v product over m rows of x runs RoPE and the KV-cache write as its
/// epilogue: on devices whose table picks the lane kernels, where `gemm_tokens` takes w
/// ([`by_token`]) in one chunk. That saves `rope_kv`'s dispatch in every layer: on
/// lavapipe (2 cores) a dispatch costs ~45 µs of hand-off to the driver's threads beside
/// its work.
pub fn rope_by_token(gpu: &Gpu, m: usize, w: &Weight) -> bool {
    m > 1 && gpu.gemm_tile() == GemmTile::Lanes && by_token(m, w) && gemv_reads(w)
}

/// Whether gemm_tokens' RoPE epilogue can also write K and V of m prefill rows into `tex`
/// (KV_TEX_COPY): 4 rotation pairs of a workgroup must be two whole texels of one head.
pub fn copy_fits(h: super::attention::Heads, tex: &KvTextures, m: usize) -> bool {
    (h.hd / 2).is_multiple_of(4) && (TOKENS_ROWS / 2).is_multiple_of(4) && tex.holds(h, m)
}

/// Whether gemm_lanes should take RMSNorm on load for w rather than a norm dispatch before
/// it. For f16 rows it costs nothing (SmolLM2 F16 prefill 51.7 tok/s either way on
/// lavapipe) and saves the dispatch (tiny-llava-32l unpruned time to first token 290-294 ms
/// against 309-317); for the quant formats, whose lane units hold 32 values, it slowed the
/// q|k|v and gate|up products by ~30% (SmolLM2 Q4_1 prefill 51-62 tok/s against 68-76).
pub fn lanes_norm_pays(w: &Weight) -> bool {
    w.ty == GgmlType::F16
}

/// x's rows times w with the fusions in `e` (RMSNorm on load, SwiGLU over [gate; up]), one
/// dispatch per chunk: the decode GEMV for one row, gemm_lanes for more where the device's
/// table picks it. None where neither applies; the caller then runs the ops unfused.
pub fn fused(
    gpu: &Gpu,
    x: &Tensor,
    w: &Weight,
    y: &Tensor,
    e: Epilogue,
) -> Result<Option<Vec<Kernel>>> {
    match x.rows {
        1 => gemv(gpu, x, w, y, e),
        _ if gpu.gemm_tile() == GemmTile::Lanes => gemm_lanes(gpu, x, w, y, e),
        _ => Ok(None),
    }
}

/// What the decode GEMV fuses around the product.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a wgpu::Buffer>,
    pub act: Act,
    pub accumulate: bool,
    /// RMSNorm x on load with this weight `[k]` and epsilon.
    pub norm: Option<(&'a wgpu::Buffer, f32)>,
    /// The same weight as a row of this rgba32float texture, for the decode GEMV that reads
    /// x from its texture copy (gemv.wgsl's XTEX; see [`crate::gpu::Tensor::texels`]).
    pub norm_texels: Option<(&'a wgpu::TextureView, u32)>,
    /// w is [gate; up] (2m rows); y[0..m] = silu(gate) · up.
    pub gate_up: bool,
    /// Write columns y_col.. of y (no bias then).
    pub y_col: usize,
    /// w the stacked q|k|v of these heads in one chunk (no other fusion but the norm): RoPE
    /// and the KV-cache write as the epilogue, y = `rope.q`. The decode GEMV, and
    /// `gemm_tokens` for a prefill's rows (see [`rope_by_token`]).
    pub rope: Option<RopeKv<'a>>,
    /// With `rope` over a prefill's rows: also write K and V into these textures, the ones
    /// the prefill attention's `KV_TEX` variant reads (gemv.wgsl's KV_TEX_COPY).
    pub kv_copy: Option<&'a KvTextures>,
    /// With `rope` in the decode GEMV: w is a part of the stacked q|k|v, whole heads from
    /// this one on (q|k|v's parts apart where their storage types differ, as in llama.cpp's
    /// K-quant mixes, each still one dispatch with RoPE and the cache write).
    pub rope_from: Option<usize>,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GemvParams {
    n: u32,
    k: u32,
    row_vec4: u32,
    out_col: u32,
    eps: f32,
    out_stride: u32,
    /// gemm_lanes: input rows and the input's row stride in vec4s.
    m: u32,
    x_stride4: u32,
    /// ROPE: q|k|v's query and key heads, and the KV cache's row length.
    heads: u32,
    kv_heads: u32,
    kv_stride: u32,
    /// XTEX with NORM: the norm weight's row of its texture.
    g_row: u32,
    /// The decode GEMV's ROPE: w's rows are q|k|v's from this head on.
    head0: u32,
    pad: [u32; 3],
}

/// The grid of an m×n output in blocks of rows_per × m_per: (n blocks, m blocks, 1), or an
/// error when either side passes the device's dispatch limit.
fn grid_2d(gpu: &Gpu, n: usize, rows_per: usize, m: usize, m_per: usize) -> Result<[u32; 3]> {
    let grid = [n.div_ceil(rows_per), m.div_ceil(m_per), 1];
    let max = gpu.caps.max_workgroups_per_dim as usize;
    if grid[0] > max || grid[1] > max {
        bail!("linear: {m}x{n} output exceeds the dispatch limit");
    }
    Ok(grid.map(|g| g as u32))
}

/// The flags of the shared epilogue (`linear_store.wgsl`): bias, activation, residual add.
fn epilogue_flags(d: &mut Defines, bias: bool, act: Act, accumulate: bool) {
    if bias {
        d.flag("BIAS");
    }
    match act {
        Act::None => {}
        Act::Gelu => {
            d.flag("ACT_GELU");
        }
        Act::QuickGelu => {
            d.flag("ACT_QUICK_GELU");
        }
    }
    if accumulate {
        d.flag("ACCUMULATE");
    }
}

/// gemv.wgsl's base variant for `w`: its format, and subgroup lane sums when subgroups
/// hold at least a lane group (8).
fn gemv_defines(gpu: &Gpu, w: &Weight) -> Defines {
    let mut d = Defines::new();
    if gpu.lane_groups() {
        d.flag("SUBGROUPS");
    }
    d.flag(w.ty.shader_flag().unwrap_or("WF16"));
    d
}

/// Whether gemv.wgsl reads `w`'s format: f16 with rows of whole 16-byte words and k a
/// multiple of 4, or any repacked block type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
/// Q6_K).
pub fn gemv_reads(w: &Weight) -> bool {
    match w.ty {
        GgmlType::F16 => w.cols.is_multiple_of(4) && w.cols4.is_multiple_of(8),
        ty => ty.is_quantized(),
    }
}

/// Rows per lane group (gemv.wgsl's LG_ROWS) for a chunk of `rows` weight rows (paired or
/// not, a workgroup holds 8 LG_ROWS of them): as many as keep enough workgroups in flight.
/// With word lanes ([`gemv_lanes`], GPUs) 2 rows: each lane group then holds 2 rows × 32
/// lanes, and the grid the most lane groups. On an H100 (`examples/gemm_probe.rs`,
/// 2026-11-24) 2 rows were within 4% of the fastest of 1, 2 and 4 on every llava-1.5-7b
/// product (4096 × 4096 13.2 us, 11008 → 4096 44.1, q|k|v 42.7, [gate; up] 74.0 us: 2.0-2.5
/// TB/s) and 4 rows up to 27% slower (down: 56 us). Else, on a GPU, many narrow
/// workgroups (at least 128). On a CPU device, wide lane groups and as
/// few as 4 workgroups: a lane group loads x once per round for all its rows, and on
/// lavapipe those loads are per-lane gathers. Measured there (`VLM_RUN_PROFILE`, SmolLM2-135M
/// Q4_1, best of 3-4 runs, 30 layers): [gate; up] 10.1-10.4 ms at 16 rows → 8.6-8.9 at 32,
/// q|k|v 5.0-5.1 → 4.5-4.7, o and down 7.7-7.9 → 7.4-8.0 at 16, the head 4.5 → 4.2; rules
/// with 64 rows measured the same as 32.
fn gemv_rows(gpu: &Gpu, w: &Weight, rows: usize) -> usize {
    if gemv_lanes(gpu, w).1 {
        return 2;
    }
    let (candidates, target): (&[usize], usize) = if gpu.caps.cpu {
        (&[32, 16, 8, 4], 4)
    } else {
        (&[16, 8, 4], 128)
    };
    candidates
        .iter()
        .copied()
        .find(|r| rows.div_ceil(8 * r) >= target)
        .unwrap_or(2)
}

/// The decode GEMV's lanes per lane group and whether they take the GPU layout (gemv.wgsl's
/// GV_LANES), for weight `w`: on GPUs lane groups of 32 lanes step over whole 16-byte words
/// of f16 rows, or whole 32-value blocks of rows of any block type, at a stride of 32, with
/// x and the row sums in registers (no run-time-indexed arrays). CPU devices keep lane groups
/// of 8 over 32-value groups. Measured on an H100 (Vulkan, 2026-11-24, `examples/gemm_probe.rs`),
/// llava-1.5-7b's 4096 × 4096 f16: the 32-value groups took 105-108 us (320 GB/s); words over
/// lane groups of 8, 16 and 32 lanes 43, 26 and 20 us, and 13.2 with two words a round
/// (loads issued ahead); its decode went from 19 to 115-120 tokens/s. The setting is the device's
/// ([`Gpu::gemv_word_lanes`], env `VLM_RUN_GEMV_WORD_LANES`).
pub fn gemv_lanes(gpu: &Gpu, w: &Weight) -> (usize, bool) {
    let gpu_layout = w.ty == GgmlType::F16 || w.ty.is_quantized();
    match gpu.gemv_word_lanes() {
        n @ (8 | 16 | 32) if gpu_layout => (n as usize, true),
        _ => (8, false),
    }
}

/// Whether the decode GEMV of the stacked q|k|v `w` with `rope` as its epilogue writes K and
/// V straight into `rope.into_textures` (gemv.wgsl's ROPE with KV_TEX): when it is given,
/// and a lane group's rotation pairs can come in whole texels (hd / 2 a multiple of 4; the
/// lane groups of 8 lanes, not the GPUs' word lanes, then take at least 8 rows, 4 pairs).
/// Measured on lavapipe: SmolLM2-135M Q4_K_M's v_proj apart (192 rows) wrote its cache
/// row into the textures from lane groups of 8 rows instead of 4 and saved a copy's
/// dispatch in 14 of 30 layers.
pub fn rope_into_textures(gpu: &Gpu, w: &Weight, rope: &RopeKv) -> bool {
    rope.into_textures
        .is_some_and(|(tex, _)| tex.holds(rope.heads, 1))
        && w.chunks.len() == 1
        && !gemv_lanes(gpu, w).1
        && rope.heads.hd.is_multiple_of(8)
}

/// Whether gemv.wgsl reads w's format with the fusions in `e` (GATE_UP needs [gate; up]
/// whole in one chunk, ROPE q|k|v whole and nothing else but the norm).
fn fusable(w: &Weight, e: &Epilogue) -> bool {
    let whole = w.chunks.len() == 1;
    let rope_fits = e.rope.is_none_or(|r| {
        let h = r.heads;
        let total = (h.heads + 2 * h.kv_heads) * h.hd;
        whole
            && match e.rope_from {
                None => w.rows == total,
                Some(from) => w.rows.is_multiple_of(h.hd) && from * h.hd + w.rows <= total,
            }
            && !e.gate_up
            && e.bias.is_none()
            && e.act == Act::None
            && !e.accumulate
            && e.y_col == 0
    });
    gemv_reads(w) && rope_fits && (!e.gate_up || (whole && w.rows.is_multiple_of(2)))
}

/// An error unless m rows of x, w and y fit together (and a bias has no column offset).
fn check_fit(what: &str, m: usize, x: &Tensor, w: &Weight, y: &Tensor, e: &Epilogue) -> Result<()> {
    let out_cols = match e.rope {
        Some(r) => {
            // a part (rope_from) lies inside q|k|v: fusable saw to it
            r.check(m, (r.heads.heads + 2 * r.heads.kv_heads) * r.heads.hd)?;
            r.heads.heads * r.heads.hd
        }
        None if e.gate_up => w.rows / 2,
        None => w.rows,
    };
    if e.bias.is_some() && e.y_col != 0 {
        bail!("{what}: a bias with an output column offset");
    }
    if x.rows < m || x.cols < w.cols || y.cols < e.y_col + out_cols || y.rows < m {
        bail!(
            "{what}: x {}x{}, w {}x{}, y {}x{} do not fit",
            x.rows,
            x.cols,
            w.rows,
            w.cols,
            y.rows,
            y.cols
        );
    }
    Ok(())
}

/// gemv.wgsl's variant for w with the fusions in `e`.
fn fused_defines(gpu: &Gpu, w: &Weight, e: &Epilogue) -> Defines {
    let mut d = gemv_defines(gpu, w);
    epilogue_flags(&mut d, e.bias.is_some(), e.act, e.accumulate);
    if e.norm.is_some() {
        d.flag("NORM");
    }
    if e.gate_up {
        d.flag("GATE_UP");
        d.flag("PAIRS");
    }
    if let Some(r) = e.rope {
        d.flag("ROPE");
        d.flag("PAIRS");
        d.set("HALF", format!("{}u", r.heads.hd / 2));
    }
    d
}

/// gemv.wgsl's buffer bindings (the weight chunk is bound by [`Kernel::with_weight`]).
fn fused_bindings<'a>(
    x: &'a Tensor,
    y: &'a Tensor,
    e: &Epilogue<'a>,
) -> Vec<(u32, &'a wgpu::Buffer)> {
    let mut bindings = vec![(1, &x.buf), (4, &y.buf)];
    if let Some(b) = e.bias {
        bindings.push((3, b));
    }
    if let Some((g, _)) = e.norm {
        bindings.push((6, g));
    }
    if let Some(r) = &e.rope {
        bindings.extend([
            (7, r.positions),
            (8, r.table),
            (9, &r.k_cache.buf),
            (10, &r.v_cache.buf),
            (11, r.step),
        ]);
    }
    bindings
}

/// gemv.wgsl's parameters for `m` rows of x (gemv reads row 0 only: m = 1).
fn fused_params(
    m: usize,
    x: &Tensor,
    w: &Weight,
    chunk: &WeightChunk,
    y: &Tensor,
    e: &Epilogue,
) -> GemvParams {
    GemvParams {
        n: chunk.rows as u32,
        k: w.cols as u32,
        row_vec4: (w.cols4 / 8) as u32,
        out_col: (e.y_col + chunk.row0) as u32,
        eps: e.norm.map_or(0.0, |n| n.1),
        out_stride: y.cols as u32,
        m: m as u32,
        x_stride4: (x.cols / 4) as u32,
        heads: e.rope.map_or(0, |r| r.heads.heads as u32),
        kv_heads: e.rope.map_or(0, |r| r.heads.kv_heads as u32),
        kv_stride: e.rope.map_or(0, |r| r.k_cache.cols as u32),
        g_row: e.norm_texels.map_or(0, |t| t.1),
        head0: e.rope_from.unwrap_or(0) as u32,
        pad: [0; 3],
    }
}

/// Whether the decode GEMV over rows of k values reads x (and the RMSNorm weight) from
/// uniform buffers (gemv.wgsl's XUBO): on devices that ask for it
/// ([`crate::gpu::Caps::uniform_x`]) while k values fit one uniform binding.
pub fn x_in_uniform(gpu: &Gpu, k: usize) -> bool {
    gpu.caps.uniform_x && x_bytes(k) <= gpu.caps.max_uniform_binding
}

/// The bytes of x that gemv.wgsl's XUBO declares: XLEN = k / 4 vec4 rows.
fn x_bytes(k: usize) -> u64 {
    16 * k.div_ceil(4) as u64
}

/// The bytes of x (and of the RMSNorm weight) that the decode GEMV binds as uniform buffers,
/// or None when it keeps storage buffers (see [`x_in_uniform`]; and for a buffer that is too
/// short or was not made with UNIFORM usage, which `Gpu::storage_buffer` gives every buffer
/// when `uniform_x` is on).
fn uniform_x(gpu: &Gpu, x: &Tensor, w: &Weight, e: &Epilogue) -> Option<u64> {
    let bytes = x_bytes(w.cols);
    let fits =
        |b: &wgpu::Buffer| b.size() >= bytes && b.usage().contains(wgpu::BufferUsages::UNIFORM);
    (x_in_uniform(gpu, w.cols) && fits(&x.buf) && e.norm.is_none_or(|(g, _)| fits(g)))
        .then_some(bytes)
}

/// The bytes of x and of the RMSNorm weight that gemm_tokens binds as uniform buffers
/// (gemv.wgsl's XUBO), or None when it keeps storage buffers: on devices that ask for it
/// ([`crate::gpu::Caps::uniform_x`]) when x's `m` rows fit [`UNIFORM_X_BYTES`] and x's buffer
/// holds that many bytes ([`Tensor::activation`]). x's binding is always that size, whatever
/// m, so that one pipeline serves every prompt length.
fn uniform_x_rows(gpu: &Gpu, m: usize, x: &Tensor, w: &Weight, e: &Epilogue) -> Option<(u64, u64)> {
    let (xb, gb) = (UNIFORM_X_BYTES, x_bytes(w.cols));
    let rows_fit = 16 * (m * x.cols.div_ceil(4)) as u64 <= xb;
    let fits = |b: &wgpu::Buffer, n: u64| {
        n <= gpu.caps.max_uniform_binding
            && b.size() >= n
            && b.usage().contains(wgpu::BufferUsages::UNIFORM)
    };
    (gpu.caps.uniform_x && rows_fit && fits(&x.buf, xb) && e.norm.is_none_or(|(g, _)| fits(g, gb)))
        .then_some((xb, gb))
}

/// gemv.wgsl's texture copies: x's (`x_tex`, XTEX, with the norm weight's texture in place
/// of its buffer) and y's (YTEX). Sets the flags, drops the buffers the textures replace,
/// and returns the textures to bind.
fn texel_bindings<'a>(
    d: &mut Defines,
    bindings: &mut Vec<(u32, &'a wgpu::Buffer)>,
    x_tex: Option<&'a wgpu::TextureView>,
    y: &'a Tensor,
    e: &Epilogue<'a>,
) -> Vec<(u32, &'a wgpu::TextureView)> {
    let mut textures = Vec::new();
    if let Some(t) = x_tex {
        d.flag("XTEX");
        bindings.retain(|(b, _)| *b != 1 && *b != 6);
        textures.push((1, t));
        if let Some((g, _)) = e.norm_texels {
            textures.push((6, g));
        }
    }
    if let Some(t) = &y.texels {
        d.flag("YTEX");
        textures.push((5, t));
    }
    textures
}

/// The first `size` bytes of `buf` as a binding.
fn range(buf: &wgpu::Buffer, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: 0,
        size: std::num::NonZeroU64::new(size),
    })
}

/// Whether products over m rows of x read x's texture copy where it has one
/// ([`crate::gpu::Tensor::texels`], gemv.wgsl's XTEX in `gemm_lanes` and `gemm_tokens`).
pub fn reads_texels(gpu: &Gpu, m: usize) -> bool {
    m > 1 && m < 1 << 16 && gpu.gemm_tile() == GemmTile::Lanes
}

/// Whether the prefill product of m rows by `w` into columns `y_col..` of y runs as
/// `gemm_tokens` or `gemm_lanes` and can write y's texture copy there
/// ([`crate::gpu::Tensor::texels`], gemv.wgsl's YTEX): a plain product whose every chunk
/// covers whole texels, in lane groups of whole texels.
pub fn lanes_write_texels(gpu: &Gpu, m: usize, w: &Weight, y_col: usize) -> bool {
    let lanes_take = by_token(m, w)
        || (w.cols >= lane_min_k(w.ty)
            && (w.chunks.iter()).all(|c| lane_rows(c.rows).is_multiple_of(4)));
    m > 1 && gpu.gemm_tile() == GemmTile::Lanes && lanes_take && gemv_writes_texels(w, y_col)
}

/// Whether the decode GEMV of `w` into columns `y_col..` of y can also write y's texture
/// copy ([`crate::gpu::Tensor::texels`], gemv.wgsl's YTEX): a plain product (no GATE_UP or
/// ROPE) whose every chunk covers whole texels.
pub fn gemv_writes_texels(w: &Weight, y_col: usize) -> bool {
    gemv_reads(w)
        && y_col.is_multiple_of(4)
        && (w.chunks.iter()).all(|c| c.row0.is_multiple_of(4) && c.rows.is_multiple_of(4))
}

/// The decode GEMV of row 0 of x with gemv.wgsl and the fusions in `e`, or None when that
/// kernel does not read w's format (or GATE_UP meets a weight split into chunks). Where x
/// has a texture copy (and a norm its row in `e.norm_texels`) it reads them there (XTEX);
/// where y has one it writes it too (YTEX), and fails where it cannot.
pub fn gemv(
    gpu: &Gpu,
    x: &Tensor,
    w: &Weight,
    y: &Tensor,
    e: Epilogue,
) -> Result<Option<Vec<Kernel>>> {
    if !fusable(w, &e) {
        return Ok(None);
    }
    check_fit("gemv", 1, x, w, y, &e)?;
    let pairs = e.gate_up || e.rope.is_some();
    if y.texels.is_some() && (pairs || !gemv_writes_texels(w, e.y_col)) {
        bail!(
            "gemv: a {}x{} product cannot write its output's texture copy",
            w.rows,
            w.cols
        );
    }
    let mut d0 = fused_defines(gpu, w, &e);
    if w.cols.is_multiple_of(32) {
        d0.flag("K_WHOLE"); // no group runs past the row: x's loads need no guard
    }
    let x_tex =
        (x.texels.as_ref()).filter(|_| x.rows == 1 && e.norm.is_some() == e.norm_texels.is_some());
    let x_ubo = uniform_x(gpu, x, w, &e).filter(|_| x_tex.is_none());
    let mut bindings = fused_bindings(x, y, &e);
    let textures = texel_bindings(&mut d0, &mut bindings, x_tex, y, &e);
    if let Some(bytes) = x_ubo {
        d0.flag("XUBO");
        d0.set("XLEN", format!("{}u", bytes / 16));
        d0.set("GLEN", format!("{}u", bytes / 16));
        bindings.retain(|(b, _)| *b != 1 && *b != 6);
    }
    // decode into a KV cache in textures: bindings 9 and 10 are its textures, 11 the Step
    // whose row they take
    let into_textures = e
        .rope
        .filter(|r| rope_into_textures(gpu, w, r))
        .and_then(|r| r.into_textures);
    if let Some((_, step)) = into_textures {
        d0.flag("KV_TEX");
        bindings.retain(|(b, _)| !(9..=11).contains(b));
        bindings.push((11, step));
    }
    let mut kernels = Vec::new();
    let (lanes, words) = gemv_lanes(gpu, w);
    if words {
        d0.set("GV_LANES", format!("{lanes}u"));
        // lane sums by subgroup shuffles only where a subgroup holds a whole lane group
        if gpu.caps.subgroup_min < lanes as u32 {
            d0.remove("SUBGROUPS");
        }
    }
    // the groups past the last whole round of 8 (if they divide 8): gemv.wgsl's TAIL
    let tail = if words { 0 } else { w.cols.div_ceil(32) % 8 };
    for chunk in &w.chunks {
        let outputs = if pairs { chunk.rows / 2 } else { chunk.rows };
        // YTEX: a lane group's rows are whole texels; KV_TEX: its pairs are
        let min_rows = match (y.texels.is_some(), into_textures.is_some()) {
            (_, true) => 8,
            (true, false) => 4,
            (false, false) => 2,
        };
        let rows = gemv_rows(gpu, w, chunk.rows).max(min_rows);
        let mut d = d0.clone();
        d.set("LG_ROWS", format!("{rows}u"));
        if tail > 0 && 8 % tail == 0 {
            d.set("TAIL", format!("{tail}u"));
        }
        // outputs per workgroup of 64 invocations: 64 / lanes lane groups of `rows` rows
        let groups = 64 / lanes;
        let per_wg = if pairs {
            groups * rows / 2
        } else {
            groups * rows
        };
        let params = fused_params(1, x, w, chunk, y, &e);
        let grid = fold_workgroups(
            outputs.div_ceil(per_wg) as u32,
            gpu.caps.max_workgroups_per_dim,
        );
        let mut ranges: Vec<_> = (textures.iter())
            .map(|(b, t)| (*b, wgpu::BindingResource::TextureView(t)))
            .collect();
        if let Some((tex, _)) = into_textures {
            let (k, v) = tex.views();
            ranges.push((9, wgpu::BindingResource::TextureView(k)));
            ranges.push((10, wgpu::BindingResource::TextureView(v)));
        }
        if let Some(size) = x_ubo {
            ranges.push((1, range(&x.buf, size)));
            if let Some((g, _)) = e.norm {
                ranges.push((6, range(g, size)));
            }
        }
        kernels.push(Kernel::with_weight(
            gpu,
            "gemv",
            "gemv",
            &d,
            bytes(&params),
            &bindings,
            chunk,
            ranges,
            grid,
        )?);
    }
    Ok(Some(kernels))
}
