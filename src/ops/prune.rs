//! The Rust side of the pruning kernels (`prune_score.wgsl`, `prune_select.wgsl`,
//! `prune_gather.wgsl`). Each function checks its shapes and returns the dispatches; the
//! methods in `src/prune/` put them together.

use super::{attention::Heads, bytes, check_len, Kernel};
use crate::gpu::{fold_workgroups, Gpu, Tensor};
use anyhow::{bail, Result};
use std::ops::Range;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ScoreParams {
    n_q: u32,
    q_row0: u32,
    key0: u32,
    n_keys: u32,
    kv_len: u32,
    causal: u32,
    heads: u32,
    kv_heads: u32,
    a_stride: u32,
    b_stride: u32,
    hd: u32,
    rows: u32,
    cols: u32,
    row0: u32,
    scale: f32,
    pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SelectParams {
    pub n: u32,
    pub k: u32,
    pub grid: u32,
    pub regions: u32,
    pub floor_count: u32,
    pub dominant: u32,
    pub contextual: u32,
    pub has_profile: u32,
    pub lambda: f32,
    pub rho: f32,
    /// VisionZip with KEY_ROWS: the width of the key rows bound as binding 2.
    pub cols: u32,
    pub pad1: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GatherParams {
    rows: u32,
    cols: u32,
    src_stride: u32,
    row0: u32,
    slot: u32,
    kept: u32,
    n_vis: u32,
    n: u32,
}

/// Which queries of an attention layer score the visual keys.
#[derive(Clone, Debug)]
pub struct Queries {
    /// Query rows.
    pub rows: Range<usize>,
    /// Causal attention (decoder): a query sees keys up to its own row. Otherwise every query
    /// sees `kv_len` keys (encoder).
    pub causal: bool,
    pub kv_len: usize,
}

/// The softmax probability each visual key (rows `keys`) receives from `queries`, averaged
/// over heads and queries, into `out` [keys.len()]. `stats` is scratch of
/// 2·heads·queries floats.
#[allow(clippy::too_many_arguments)]
pub fn attention_relevance(
    gpu: &Gpu,
    h: Heads,
    q: &Tensor,
    k: &Tensor,
    queries: &Queries,
    keys: Range<usize>,
    stats: &wgpu::Buffer,
    out: &Tensor,
) -> Result<Vec<Kernel>> {
    let n_q = queries.rows.len();
    if n_q == 0 || keys.is_empty() {
        bail!("attention relevance: no queries or no keys");
    }
    if queries.rows.end > q.rows || keys.end > k.rows || out.rows * out.cols < keys.len() {
        bail!("attention relevance: rows out of range");
    }
    if q.cols < h.heads * h.hd || k.cols < h.kv_heads * h.hd {
        bail!("attention relevance: q or k is narrower than its heads");
    }
    check_len("attention stats", stats, 2 * h.heads * n_q)?;
    let p = ScoreParams {
        n_q: n_q as u32,
        q_row0: queries.rows.start as u32,
        key0: keys.start as u32,
        n_keys: keys.len() as u32,
        kv_len: queries.kv_len as u32,
        causal: queries.causal as u32,
        heads: h.heads as u32,
        kv_heads: h.kv_heads as u32,
        a_stride: q.cols as u32,
        b_stride: k.cols as u32,
        hd: h.hd as u32,
        scale: 1.0 / (h.hd as f32).sqrt(),
        ..Default::default()
    };
    let d = gpu.base_defines();
    Ok(vec![
        Kernel::new(
            gpu,
            "prune_score",
            "attn_stats",
            &d,
            bytes(&p),
            &[(1, &q.buf), (2, &k.buf), (3, stats)],
            [n_q as u32, h.heads as u32, 1],
        )?,
        Kernel::new(
            gpu,
            "prune_score",
            "attn_relevance",
            &d,
            bytes(&p),
            &[(1, &q.buf), (2, &k.buf), (3, stats), (4, &out.buf)],
            [(keys.len() as u32).div_ceil(64), 1, 1],
        )?,
    ])
}

/// Head mean of key rows `rows` of `k` into `out` [rows, hd].
pub fn key_mean(
    gpu: &Gpu,
    h: Heads,
    k: &Tensor,
    rows: Range<usize>,
    out: &Tensor,
) -> Result<Kernel> {
    if rows.end > k.rows || out.rows < rows.len() || out.cols != h.hd || k.cols < h.kv_heads * h.hd
    {
        bail!("key mean: shapes do not match");
    }
    let p = ScoreParams {
        key0: rows.start as u32,
        rows: rows.len() as u32,
        heads: h.kv_heads as u32,
        a_stride: k.cols as u32,
        hd: h.hd as u32,
        ..Default::default()
    };
    Kernel::new(
        gpu,
        "prune_score",
        "key_mean",
        &gpu.base_defines(),
        bytes(&p),
        &[(1, &k.buf), (4, &out.buf)],
        [((rows.len() * h.hd) as u32).div_ceil(64), 1, 1],
    )
}

/// Rows `rows` of `x` scaled to unit L2 norm, into `unit` [rows, x.cols].
pub fn normalize_rows(gpu: &Gpu, x: &Tensor, rows: Range<usize>, unit: &Tensor) -> Result<Kernel> {
    normalize_kernel(gpu, x, rows, unit, None)
}

/// [`normalize_rows`], and with `tex` the unit rows also as its texels (`UNIT_TEX_OUT`).
fn normalize_kernel(
    gpu: &Gpu,
    x: &Tensor,
    rows: Range<usize>,
    unit: &Tensor,
    tex: Option<&wgpu::TextureView>,
) -> Result<Kernel> {
    let n = rows.len();
    if rows.end > x.rows || unit.rows < n || unit.cols != x.cols {
        bail!("normalize rows: shapes do not match");
    }
    let mut defines = gpu.base_defines();
    let mut textures = Vec::new();
    let mut buffers = vec![(1, &x.buf), (4, &unit.buf)];
    if let Some(t) = tex {
        defines.flag("UNIT_TEX_OUT");
        textures.push((5, wgpu::BindingResource::TextureView(t)));
        // x's rows from its texture copy where it has one (CPU devices)
        if let Some(xt) = &x.texels {
            defines.flag("A_TEX");
            textures.push((6, wgpu::BindingResource::TextureView(xt)));
            buffers.retain(|(b, _)| *b != 1);
        }
    }
    Kernel::with_resources(
        gpu,
        "prune_score",
        "normalize_rows",
        &defines,
        bytes(&unit_params(x, rows)),
        &buffers,
        textures,
        [(n as u32).div_ceil(64), 1, 1],
    )
}

fn unit_params(x: &Tensor, rows: Range<usize>) -> ScoreParams {
    ScoreParams {
        rows: rows.len() as u32,
        cols: x.cols as u32,
        row0: rows.start as u32,
        a_stride: x.cols as u32,
        ..Default::default()
    }
}

/// The fewest rows for which the Gram takes `gram_rows` (prune_score.wgsl) on CPU devices
/// rather than `gram`'s 4x4 blocks. Measured on lavapipe (`VLM_RUN_PROFILE`, 2 cores):
/// PosPrune's MMR Gram of 68 rows took 0.17-0.18 ms against 0.13-0.14, of ~100 and ~136
/// rows the same either way, of ~200 rows 0.37-0.39 against 0.43-0.44; DivPrune's of 256
/// and 576 rows 0.55 against 0.69 and 1.7 against 2.4 ms.
const GRAM_ROWS_MIN: usize = 128;

/// `gram_rows`' rows i per workgroup (IPI x GWG in prune_score.wgsl) and rows j (JB).
const GRAM_ROWS_I_BLOCK: u32 = 64;
const GRAM_ROWS_J_BLOCK: u32 = 4;

/// `gram_rows`' workgroups: for each block b of rows i, the blocks of rows j from its first
/// row on (those before it hold only mirrored pairs). Dispatching only these, rather than a
/// full grid whose lower half returns at once, took DivPrune's Gram of 576 rows on lavapipe
/// from 1.6-1.7 ms to 1.2 (VLM_RUN_PROFILE).
fn gram_rows_workgroups(rows: u32) -> u32 {
    let j_blocks = rows.div_ceil(GRAM_ROWS_J_BLOCK);
    let per_i_block = GRAM_ROWS_I_BLOCK / GRAM_ROWS_J_BLOCK;
    (0..rows.div_ceil(GRAM_ROWS_I_BLOCK))
        .map(|b| j_blocks - (per_i_block * b).min(j_blocks))
        .sum()
}

/// Cosine similarity of rows `rows` of `x` with each other: `unit` [rows, x.cols] receives
/// the unit rows ([`normalize_rows`]), `out` [rows, rows] the similarities.
pub fn cosine_gram(
    gpu: &Gpu,
    x: &Tensor,
    rows: Range<usize>,
    unit: &Tensor,
    out: &Tensor,
) -> Result<Vec<Kernel>> {
    let n = rows.len();
    if out.rows * out.cols < n * n {
        bail!("cosine gram: shapes do not match");
    }
    // the Gram reads the unit rows as texels where it can
    let tex = unit_texture(gpu, n, x.cols);
    let normalize = normalize_kernel(gpu, x, rows.clone(), unit, tex.as_ref())?;
    let rows_n = n as u32;
    let (entry, defines, buffers, textures, grid) = match &tex {
        // a row i per invocation, 8 rows j per workgroup shared by lane shuffles
        Some(t) if gpu.lane_groups() && n >= GRAM_ROWS_MIN => (
            "gram_rows",
            gpu.base_defines()
                .with_flag("UNIT_TEX")
                .with_flag("GRAM_ROWS"),
            vec![(4, &out.buf)],
            vec![(5, wgpu::BindingResource::TextureView(t))],
            fold_workgroups(
                gram_rows_workgroups(rows_n),
                gpu.caps.max_workgroups_per_dim,
            ),
        ),
        // 32x32 pairs per workgroup
        Some(t) => (
            "gram",
            gpu.base_defines().with_flag("UNIT_TEX"),
            vec![(4, &out.buf)],
            vec![(5, wgpu::BindingResource::TextureView(t))],
            [rows_n.div_ceil(32), rows_n.div_ceil(32), 1],
        ),
        None => (
            "gram",
            gpu.base_defines(),
            vec![(1, &unit.buf), (4, &out.buf)],
            Vec::new(),
            [rows_n.div_ceil(32), rows_n.div_ceil(32), 1],
        ),
    };
    let gram = Kernel::with_resources(
        gpu,
        "prune_score",
        entry,
        &defines,
        bytes(&unit_params(x, rows)),
        &buffers,
        textures,
        grid,
    )?;
    Ok(vec![normalize, gram])
}

/// `out[i]` = min over j ≠ i of `1 − gram[i, j]` for the `n` rows of a cosine Gram
/// ([`cosine_gram`]): the value DivPrune's first pick maximises, in a pass of n invocations
/// rather than inside the single-workgroup `max_min` (tiny-llava-32l, 576 tokens, on
/// lavapipe: its n² scan took ~2.7 ms there).
pub fn row_min_distance(gpu: &Gpu, gram: &Tensor, n: usize, out: &Tensor) -> Result<Kernel> {
    if gram.rows * gram.cols < n * n || out.rows * out.cols < n {
        bail!("row minima: shapes do not match");
    }
    let p = ScoreParams {
        rows: n as u32,
        ..Default::default()
    };
    // 4 values a load where the rows are whole vec4s (lavapipe, 576 rows: 0.25 -> 0.16 ms)
    let (defines, gram_binding) = match n.is_multiple_of(4) {
        true => (gpu.base_defines().with_flag("ROW_MIN_VEC4"), 7),
        false => (gpu.base_defines(), 1),
    };
    Kernel::new(
        gpu,
        "prune_score",
        "row_min_distance",
        &defines,
        bytes(&p),
        &[(gram_binding, &gram.buf), (4, &out.buf)],
        [(n as u32).div_ceil(64), 1, 1],
    )
}

/// An rgba32float texture for `rows` unit rows of `cols` values, which the Gram reads faster
/// than a storage buffer on CPU devices (measured on lavapipe, tiny-llava-32l's 576 × 32
/// projector rows, profile: 1.9-5.3 ms against 4.8-6.8 from the buffer, both computing half
/// the blocks; 10.8-12.4 ms before the mirroring); None elsewhere, where the rows are no
/// whole texels, or past the texture limits.
fn unit_texture(gpu: &Gpu, rows: usize, cols: usize) -> Option<wgpu::TextureView> {
    if !gpu.caps.weight_textures || !cols.is_multiple_of(4) {
        return None;
    }
    gpu.rgba32float_texture("prune.unit_tex", cols / 4, rows)
}

/// A single-workgroup selection pass of `prune_select.wgsl`.
pub fn select(
    gpu: &Gpu,
    entry: &'static str,
    flag: Option<&str>,
    p: SelectParams,
    buffers: &[(u32, &wgpu::Buffer)],
) -> Result<Kernel> {
    let mut d = select_defines(gpu);
    if let Some(f) = flag {
        d.flag(f);
    }
    Kernel::new(
        gpu,
        "prune_select",
        entry,
        &d,
        bytes(&p),
        buffers,
        [1, 1, 1],
    )
}

/// The most distances per invocation that DivPrune's `max_min` keeps in registers.
const MAX_MIN_SLOTS: u32 = 128;

/// DivPrune's greedy picks (`prune_select.wgsl::max_min`). On CPU devices, whose workgroup
/// is one SIMD row, its running distances stay in each invocation's registers where they
/// fit (MAXMIN_SLOTS; lavapipe, 576 tokens at B = 64: 0.20 ms against 0.28, VLM_RUN_PROFILE);
/// GPUs keep them in storage.
pub fn max_min(gpu: &Gpu, p: SelectParams, buffers: &[(u32, &wgpu::Buffer)]) -> Result<Kernel> {
    let mut d = select_defines(gpu);
    let slots = p.n.div_ceil(select_workgroup(gpu)).max(1);
    if select_workgroup(gpu) == CPU_SELECT_WG && slots <= MAX_MIN_SLOTS {
        d.set("MAXMIN_SLOTS", format!("{slots}u"));
    }
    Kernel::new(
        gpu,
        "prune_select",
        "max_min",
        &d,
        bytes(&p),
        buffers,
        [1, 1, 1],
    )
}

/// The selection workgroup on CPU devices: one SIMD row (as for the direct prefill
/// attention), since a CPU driver runs the workgroup on one thread, where 256 invocations'
/// barriers cost more than the parallel steps save (tiny-llava-32l at B = 64 on lavapipe:
/// DivPrune's stage 7.5-11 ms against 13-15, PosPrune's 4.4-6 against 7-8.6). Elsewhere
/// the shader's own 256.
const CPU_SELECT_WG: u32 = 8;

fn select_workgroup(gpu: &Gpu) -> u32 {
    match gpu.attention_tiles() {
        true => 256,
        false => CPU_SELECT_WG,
    }
}

fn select_defines(gpu: &Gpu) -> crate::gpu::shader::Defines {
    let mut d = gpu.base_defines();
    if !gpu.attention_tiles() {
        d.set("SELECT_WG", format!("{CPU_SELECT_WG}u"));
    }
    d
}

impl SelectParams {
    pub fn new(n: usize, k: usize) -> Self {
        Self {
            n: n as u32,
            k: k as u32,
            ..Default::default()
        }
    }
}

fn gather_grid(gpu: &Gpu, elems: usize) -> [u32; 3] {
    fold_workgroups((elems as u32).div_ceil(64), gpu.caps.max_workgroups_per_dim)
}

/// `out[i] = src[row0 + keep[i]]` for the out.rows kept rows.
pub fn gather_rows(
    gpu: &Gpu,
    keep: &wgpu::Buffer,
    src: &Tensor,
    row0: usize,
    out: &Tensor,
) -> Result<Kernel> {
    if out.cols > src.cols {
        bail!("gather rows: output wider than its source");
    }
    check_len("gather keep", keep, out.rows)?;
    let p = GatherParams {
        rows: out.rows as u32,
        cols: out.cols as u32,
        src_stride: src.cols as u32,
        row0: row0 as u32,
        ..Default::default()
    };
    Kernel::new(
        gpu,
        "prune_gather",
        "gather_rows",
        &gpu.base_defines(),
        bytes(&p),
        &[(1, keep), (2, &src.buf), (3, &out.buf)],
        gather_grid(gpu, out.rows * out.cols),
    )
}

/// The decoder sequence after pruning: rows before `slot`, the `kept` visual rows chosen by
/// `keep` among `n_vis`, then the rest; `positions` receives each row's original position.
#[allow(clippy::too_many_arguments)]
pub fn splice_rows(
    gpu: &Gpu,
    keep: &wgpu::Buffer,
    src: &Tensor,
    slot: usize,
    n_vis: usize,
    kept: usize,
    out: &Tensor,
    positions: &wgpu::Buffer,
) -> Result<Kernel> {
    if src.rows != out.rows + n_vis - kept || src.cols != out.cols || slot + n_vis > src.rows {
        bail!("splice rows: shapes do not match");
    }
    check_len("splice positions", positions, out.rows)?;
    let p = GatherParams {
        rows: out.rows as u32,
        cols: out.cols as u32,
        src_stride: src.cols as u32,
        slot: slot as u32,
        kept: kept as u32,
        n_vis: n_vis as u32,
        ..Default::default()
    };
    Kernel::new(
        gpu,
        "prune_gather",
        "splice_rows",
        &gpu.base_defines(),
        bytes(&p),
        &[(1, keep), (2, &src.buf), (3, &out.buf), (4, positions)],
        gather_grid(gpu, out.rows * out.cols),
    )
}

/// VisionZip's merge: each kept row plus the mean of the `n` source rows assigned to it.
/// `members`: the selection's flags, whose entry n + slot counts the rows assigned to a
/// kept slot (`prune_select.wgsl::visionzip` writes them; slots with none skip the scan).
#[allow(clippy::too_many_arguments)]
pub fn merge_rows(
    gpu: &Gpu,
    keep: &wgpu::Buffer,
    assign: &wgpu::Buffer,
    members: &wgpu::Buffer,
    n: usize,
    src: &Tensor,
    row0: usize,
    out: &Tensor,
) -> Result<Kernel> {
    if row0 + n > src.rows || out.cols > src.cols {
        bail!("merge rows: shapes do not match");
    }
    check_len("merge assign", assign, n)?;
    check_len("merge members", members, n + out.rows)?;
    let p = GatherParams {
        rows: out.rows as u32,
        cols: out.cols as u32,
        src_stride: src.cols as u32,
        row0: row0 as u32,
        n: n as u32,
        ..Default::default()
    };
    Kernel::new(
        gpu,
        "prune_gather",
        "merge_rows",
        &gpu.base_defines(),
        bytes(&p),
        &[
            (1, keep),
            (2, &src.buf),
            (3, &out.buf),
            (5, assign),
            (8, members),
        ],
        gather_grid(gpu, out.rows * out.cols),
    )
}

/// `out_idx[i] = base[keep[i]]` for i < rows.
pub fn compose(
    gpu: &Gpu,
    keep: &wgpu::Buffer,
    base: &wgpu::Buffer,
    rows: usize,
    out_idx: &wgpu::Buffer,
) -> Result<Kernel> {
    check_len("compose keep", keep, rows)?;
    check_len("compose out", out_idx, rows)?;
    let p = GatherParams {
        rows: rows as u32,
        ..Default::default()
    };
    Kernel::new(
        gpu,
        "prune_gather",
        "compose",
        &gpu.base_defines(),
        bytes(&p),
        &[(1, keep), (6, base), (7, out_idx)],
        [(rows as u32).div_ceil(64), 1, 1],
    )
}
