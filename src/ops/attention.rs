//! Attention: fused prefill kernels (online softmax, causal or not; on GPUs the tiled one
//! of [`super::flash_attention`]) and split-KV decode attention (a pass over key splits,
//! then a merge).

use super::decode_attention;
use super::flash_attention::{self, FlashShape};
use super::{bytes, Kernel};
use crate::gpu::{Gpu, Tensor};
use anyhow::{bail, Result};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    kv_len: u32,
    heads: u32,
    kv_heads: u32,
    q_stride: u32,
    kv_stride: u32,
    o_stride: u32,
    causal: u32,
    q_pos0: u32,
    ctx: u32,
    scale: f32,
    pad: u32,
}

/// Head layout shared by the attention ops.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub hd: usize,
}

impl Heads {
    /// [`Heads::check_q`], and an error unless k holds the KV heads.
    fn check(&self, q: &Tensor, k: &Tensor) -> Result<()> {
        self.check_q(q)?;
        if k.cols < self.kv_heads * self.hd {
            bail!("attention: k is narrower than its heads");
        }
        Ok(())
    }

    /// An error unless the heads can share the KV heads and q holds them.
    fn check_q(&self, q: &Tensor) -> Result<()> {
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            bail!(
                "attention: {} heads cannot share {} KV heads",
                self.heads,
                self.kv_heads
            );
        }
        if q.cols < self.heads * self.hd {
            bail!("attention: q is narrower than its heads");
        }
        Ok(())
    }

    fn defines(&self, gpu: &Gpu) -> Result<crate::gpu::shader::Defines> {
        let direct = self.direct_kv(gpu);
        // Keys per workgroup-memory tile: K and V tiles of KT x hd f32 must fit.
        let kt = (gpu.caps.workgroup_memory as usize / (8 * self.hd)).min(32);
        if kt == 0 && direct.is_none() {
            bail!(
                "attention: head dim {} needs more than the device's {} bytes of workgroup memory",
                self.hd,
                gpu.caps.workgroup_memory
            );
        }
        let mut d = gpu.base_defines().with("HD", self.hd).with("KT", kt.max(1));
        if let Some(qpi) = direct {
            d.flag("DIRECT_KV");
            d.set("QB", format!("{DIRECT_QB}u"));
            // the rows per invocation, as attention.wgsl reads them (its QPI constant)
            if qpi >= 2 {
                d.flag("QPI_2");
            }
            if qpi == 4 {
                d.flag("QPI_4");
            }
        }
        if self.decode_lanes(gpu) {
            d.flag("DECODE_LANES");
        }
        Ok(d)
    }

    /// The prefill attention's CPU-device variant (K/V read straight from the buffers, no
    /// barriers) when it runs: its query rows per invocation.
    fn direct_kv(&self, gpu: &Gpu) -> Option<u32> {
        (!gpu.attention_tiles() && self.hd.is_multiple_of(4)).then(|| direct_shape(self.hd))
    }

    /// Decode attention's partials (HD + 2 values each) per head over a cache of `ctx` rows.
    fn partials(&self, gpu: &Gpu, ctx: usize) -> usize {
        if self.one_pass(gpu, ctx) || decode_attention::one(gpu, self.hd, ctx) {
            return 1; // attn_lanes_one and decode_one write none; one keeps a valid tensor
        }
        ctx.div_ceil(SPLIT) * (SPLIT / self.part_keys(gpu))
    }

    /// Whether decode attention over a cache of `ctx` rows is `attn_lanes_one`: a single
    /// dispatch, one workgroup per head, no partials.
    fn one_pass(&self, gpu: &Gpu, ctx: usize) -> bool {
        self.decode_lanes(gpu) && ctx <= ONE_PASS_KEYS
    }

    /// Whether decode attention runs `attn_lanes` (no barriers, a partial per 8 keys): on
    /// the CPU-device row of the table, with subgroups of at least 8 and whole lanes of dims.
    fn decode_lanes(&self, gpu: &Gpu) -> bool {
        !gpu.attention_tiles() && gpu.lane_groups() && self.hd.is_multiple_of(8)
    }

    /// Whether decode attention can read K and V from a cache's [`KvTextures`]: the lane-group
    /// kernels, which load whole texels per lane, so each lane's dims must be whole texels.
    pub fn decode_textures(&self, gpu: &Gpu) -> bool {
        self.decode_lanes(gpu) && self.hd.is_multiple_of(32)
    }

    /// Keys per partial of the decode attention.
    fn part_keys(&self, gpu: &Gpu) -> usize {
        if self.decode_lanes(gpu) {
            LANE_KEYS
        } else {
            SPLIT
        }
    }
}

/// Textures that the direct prefill attention reads K and V from (its KV_TEX variant), after
/// `kv_texture.wgsl` copies them there: on devices where textures read faster than storage
/// buffers ([`crate::gpu::Caps::weight_textures`]: CPU drivers), since every query tile
/// re-reads every K and V row. The vision tower shares one pair over its layers. A decoder's
/// [`crate::model::llama::KvCache`] can keep a layer's cache in a pair
/// ([`Heads::decode_textures`]): prefill copies its rows in, each decode step its new row,
/// and the lane-group decode attention reads them there.
pub struct KvTextures {
    k: wgpu::TextureView,
    v: wgpu::TextureView,
    rows: usize,
    width4: usize,
}

impl KvTextures {
    /// A pair for up to `rows` keys of `h`'s KV heads, or None where the prefill attention
    /// reads buffers: GPUs, the workgroup-tile variant, or shapes past the texture limits.
    pub fn new(gpu: &Gpu, h: Heads, rows: usize) -> Option<Self> {
        let width4 = h.kv_heads * h.hd / 4;
        if !gpu.caps.weight_textures || h.direct_kv(gpu).is_none() {
            return None;
        }
        let texture = |label| gpu.rgba32float_texture(label, width4, rows);
        Some(Self {
            k: texture("attn.k_tex")?,
            v: texture("attn.v_tex")?,
            rows,
            width4,
        })
    }

    /// The K and V textures' views, to bind.
    pub(crate) fn views(&self) -> (&wgpu::TextureView, &wgpu::TextureView) {
        (&self.k, &self.v)
    }

    /// Rows `0 .. rows` of K and of V, f32 [rows, kv_heads·hd] (for tests and debugging).
    pub fn read(&self, gpu: &Gpu, rows: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        if rows == 0 || rows > self.rows {
            bail!("KV textures: cannot read {rows} of {} rows", self.rows);
        }
        let read = |view: &wgpu::TextureView| -> Result<Vec<f32>> {
            let bytes = gpu.read_texture_rows(view.texture(), self.width4 as u32, rows as u32)?;
            Ok(bytemuck::pod_collect_to_vec(&bytes))
        };
        Ok((read(&self.k)?, read(&self.v)?))
    }

    /// Key rows the textures hold.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether these textures can stand for a cache of `rows` rows of `h`'s KV heads.
    pub(crate) fn holds(&self, h: Heads, rows: usize) -> bool {
        rows <= self.rows && self.width4 == h.kv_heads * h.hd / 4
    }

    /// `kv_texture.wgsl` copying `rows` rows of k and v into the textures: to rows 0..
    /// (prefill), or with `step` to rows from `step.kv_offset` on (decode's new row).
    pub fn copy(
        &self,
        gpu: &Gpu,
        k: &Tensor,
        v: &Tensor,
        rows: usize,
        step: Option<&wgpu::Buffer>,
    ) -> Result<Kernel> {
        let cp = CopyParams {
            rows: rows as u32,
            stride: k.cols as u32,
            width4: self.width4 as u32,
            row0: 0,
        };
        let mut buffers = vec![(1, &k.buf), (2, &v.buf)];
        let mut defines = gpu.base_defines();
        if let Some(step) = step {
            buffers.push((5, step));
            defines.flag("STEP_ROW");
        }
        Kernel::with_resources(
            gpu,
            "kv_texture",
            "kv_texture",
            &defines,
            bytes(&cp),
            &buffers,
            vec![
                (3, wgpu::BindingResource::TextureView(&self.k)),
                (4, wgpu::BindingResource::TextureView(&self.v)),
            ],
            crate::gpu::fold_workgroups(
                ((rows * self.width4) as u32).div_ceil(64),
                gpu.caps.max_workgroups_per_dim,
            ),
        )
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CopyParams {
    rows: u32,
    stride: u32,
    width4: u32,
    row0: u32,
}

/// `kv_texture.wgsl` for one tensor (K_ONLY): all rows of `x` into texture rows `row0 ..` of
/// `tex` (rgba32float, at least x.cols / 4 texels wide), 4 values a texel.
pub fn rows_to_texels(
    gpu: &Gpu,
    x: &Tensor,
    tex: &wgpu::TextureView,
    row0: usize,
) -> Result<Kernel> {
    let t = tex.texture();
    let width4 = x.cols / 4;
    if !x.cols.is_multiple_of(4)
        || width4 > t.width() as usize
        || row0 + x.rows > t.height() as usize
    {
        bail!(
            "rows_to_texels: {}x{} values do not fit rows {row0}.. of a {}x{} texture",
            x.rows,
            x.cols,
            t.width(),
            t.height()
        );
    }
    let cp = CopyParams {
        rows: x.rows as u32,
        stride: x.cols as u32,
        width4: width4 as u32,
        row0: row0 as u32,
    };
    Kernel::with_resources(
        gpu,
        "kv_texture",
        "kv_texture",
        &gpu.base_defines().with_flag("K_ONLY"),
        bytes(&cp),
        &[(1, &x.buf)],
        vec![(3, wgpu::BindingResource::TextureView(tex))],
        crate::gpu::fold_workgroups(
            ((x.rows * width4) as u32).div_ceil(64),
            gpu.caps.max_workgroups_per_dim,
        ),
    )
}

/// Where the prefill attention reads K and V from.
#[derive(Clone, Copy)]
pub enum PrefillKv<'a> {
    /// The buffers.
    Buffers,
    /// Textures (see [`KvTextures::new`]) that K and V are first copied into.
    Copy(&'a KvTextures),
    /// Textures that already hold them (`rope::rope_kv_into_textures` wrote both).
    Filled(&'a KvTextures),
}

impl<'a> PrefillKv<'a> {
    /// Copy into `tex` where there is one.
    pub fn copy(tex: Option<&'a KvTextures>) -> Self {
        tex.map_or(Self::Buffers, Self::Copy)
    }
}

/// Fused attention for `q.rows` query rows over the first `kv_len` rows of k and v.
/// Causal: query row i sits at position `q_pos0 + i` and sees keys up to that position.
/// `kv` says where K and V are read from (textures that cannot hold `kv_len` rows of `h`'s
/// KV heads fall back to the buffers, or fail if they were filled instead of the buffers).
#[allow(clippy::too_many_arguments)]
pub fn prefill(
    gpu: &Gpu,
    h: Heads,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kv_len: usize,
    causal: bool,
    q_pos0: usize,
    out: &Tensor,
    kv: PrefillKv,
) -> Result<Vec<Kernel>> {
    h.check(q, k)?;
    if kv_len > k.rows || out.rows < q.rows || out.cols < h.heads * h.hd {
        bail!(
            "attention: {kv_len} keys of {} rows, output {}x{}",
            k.rows,
            out.rows,
            out.cols
        );
    }
    let p = Params {
        m: q.rows as u32,
        kv_len: kv_len as u32,
        heads: h.heads as u32,
        kv_heads: h.kv_heads as u32,
        q_stride: q.cols as u32,
        kv_stride: k.cols as u32,
        o_stride: out.cols as u32,
        causal: causal as u32,
        q_pos0: q_pos0 as u32,
        ctx: 0,
        scale: 1.0 / (h.hd as f32).sqrt(),
        pad: 0,
    };
    if out.texels.is_some() && !writes_texels(gpu, h, out) {
        bail!("attention: this variant cannot write its output's texture copy");
    }
    if let Some(shape) = FlashShape::new(gpu, h.hd) {
        if let PrefillKv::Filled(_) = kv {
            bail!("attention: the tiled kernel reads K and V from buffers, not textures");
        }
        let rows_per_wg = flash_attention::ROWS_PER_WORKGROUP;
        return Ok(vec![Kernel::new(
            gpu,
            "flash_attention",
            "flash_attention",
            &shape.defines(gpu, h.hd),
            bytes(&p),
            &[(1, &q.buf), (2, &k.buf), (3, &v.buf), (4, &out.buf)],
            [q.rows.div_ceil(rows_per_wg) as u32, h.heads as u32, 1],
        )?]);
    }
    let mut defines = h.defines(gpu)?;
    let mut textures = Vec::new();
    if let Some(t) = &out.texels {
        defines.flag("OUT_TEX");
        textures.push((7, wgpu::BindingResource::TextureView(t)));
    }
    let rows_per_wg = h.direct_kv(gpu).map_or(32, |qpi| DIRECT_QB * qpi);
    let grid = [(q.rows as u32).div_ceil(rows_per_wg), h.heads as u32, 1];
    let (tex, filled) = match kv {
        PrefillKv::Buffers => (None, false),
        PrefillKv::Copy(t) => (Some(t).filter(|t| t.holds(h, kv_len)), false),
        PrefillKv::Filled(t) if t.holds(h, kv_len) => (Some(t), true),
        PrefillKv::Filled(_) => bail!("attention: {kv_len} keys do not fit their textures"),
    };
    let Some(t) = tex else {
        let bindings = [(1, &q.buf), (2, &k.buf), (3, &v.buf), (4, &out.buf)];
        let attention = Kernel::with_resources(
            gpu,
            "attention",
            "attention",
            &defines,
            bytes(&p),
            &bindings,
            textures,
            grid,
        )?;
        return Ok(vec![attention]);
    };
    let mut ks = Vec::new();
    if !filled {
        ks.push(t.copy(gpu, k, v, kv_len, None)?);
    }
    ks.push(Kernel::with_resources(
        gpu,
        "attention",
        "attention",
        &defines.with_flag("KV_TEX"),
        bytes(&p),
        &[(1, &q.buf), (4, &out.buf)],
        [
            (2, wgpu::BindingResource::TextureView(&t.k)),
            (3, wgpu::BindingResource::TextureView(&t.v)),
        ]
        .into_iter()
        .chain(textures)
        .collect(),
        grid,
    )?);
    Ok(ks)
}

/// Whether the prefill attention of heads `h` into `out` can also write out's texture copy
/// ([`crate::gpu::Tensor::texels`], attention.wgsl's OUT_TEX): the direct variant, with the
/// heads from column 0.
pub fn writes_texels(gpu: &Gpu, h: Heads, out: &Tensor) -> bool {
    h.direct_kv(gpu).is_some() && out.cols == h.heads * h.hd
}

/// The direct prefill variant's query rows per invocation (QPI). Measured on lavapipe: 4
/// rows of 16-dim heads run the CLIP encoder's attention 2.3x faster than one; for 64-dim
/// heads the unrolled block of 4 rows compiles for seconds and runs slower, so wide heads
/// take one row.
fn direct_shape(hd: usize) -> u32 {
    match hd {
        0..=16 => 4,
        17..=32 => 2,
        _ => 1,
    }
}

/// Invocations per workgroup (QB) of the direct prefill variant: one SIMD row of a CPU
/// device, so a workgroup spans QB * QPI query rows and a causal one stops at its own last
/// key. Measured on lavapipe with tiny-llava-32l (profile): the 32 decoder layers' attention
/// over a 94-token prefill (pruned to 64 visual tokens) took 6.0-6.9 ms against 10.2-10.6
/// with QB = 32, whose single workgroup per head walked every key for 128 rows; the vision
/// tower's (577 rows, not causal) measured the same either way.
const DIRECT_QB: u32 = 8;

/// Keys per split of the decode attention (attention.wgsl's SPLIT).
const SPLIT: usize = 64;
/// The longest cache whose decode attention `attn_lanes_one` takes: one workgroup per head
/// over every key, no merge dispatch. Its heads are the only parallelism, enough for a CPU
/// device's cores; longer caches split the keys over workgroups (`attn_lanes`).
pub const ONE_PASS_KEYS: usize = 4096;
/// Keys per lane group in `attn_lanes`.
const LANE_KEYS: usize = 8;

/// Scratch for [`decode`] over a cache of `ctx` rows: per head and partial, HD + 2 values.
pub fn decode_partials(gpu: &Gpu, h: Heads, ctx: usize) -> Result<Tensor> {
    Tensor::new(
        gpu,
        "attn.partials",
        h.heads,
        h.partials(gpu, ctx) * (h.hd + 2),
    )
}

/// The KV cache that decode attention reads.
#[derive(Clone, Copy)]
pub enum DecodeKv<'a> {
    /// Buffers of [ctx, kv_heads·hd] rows, K and V; this step's row is already in them.
    Buffers { k: &'a Tensor, v: &'a Tensor },
    /// A cache kept in textures ([`Heads::decode_textures`]). With `new_row`, this step's
    /// K and V row is row 0 of those two buffers, and is first copied to texture row
    /// `step.kv_offset`; without, the q|k|v GEMV has already written it there
    /// ([`crate::ops::rope::RopeKv::into_textures`]).
    Textures {
        tex: &'a KvTextures,
        new_row: Option<(&'a Tensor, &'a Tensor)>,
    },
}

/// Split-KV decode attention of one query row over the KV cache rows `0 .. step.kv_len`:
/// one pass over splits of SPLIT keys, then a merge (on GPUs [`decode_attention`]'s kernels
/// where they take the head dim); on the CPU-device row, for caches of up to
/// [`ONE_PASS_KEYS`] rows, a single dispatch. `partials` comes from
/// [`decode_partials`] for a context of at least the cache's rows.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    gpu: &Gpu,
    h: Heads,
    q: &Tensor,
    kv: DecodeKv,
    partials: &Tensor,
    step: &wgpu::Buffer,
    out: &Tensor,
) -> Result<Vec<Kernel>> {
    let (kv_stride, ctx) = match kv {
        DecodeKv::Buffers { k, .. } => {
            h.check(q, k)?;
            (k.cols, k.rows)
        }
        DecodeKv::Textures { tex, new_row } => {
            // (the textures' width is checked below)
            match new_row {
                Some((k_new, _)) => h.check(q, k_new)?,
                None => h.check_q(q)?,
            }
            (h.kv_heads * h.hd, tex.rows)
        }
    };
    if let DecodeKv::Textures { tex, .. } = kv {
        if !h.decode_textures(gpu) || !tex.holds(h, ctx) {
            bail!("attention: this device's decode attention cannot read a KV cache in textures");
        }
    }
    let splits = ctx.div_ceil(SPLIT);
    let parts = h.partials(gpu, ctx);
    if partials.rows != h.heads || partials.cols < parts * (h.hd + 2) {
        bail!(
            "attention: partials must hold {} partials of {} heads",
            parts,
            h.heads
        );
    }
    let p = Params {
        m: 1,
        heads: h.heads as u32,
        kv_heads: h.kv_heads as u32,
        kv_stride: kv_stride as u32,
        ctx: (partials.cols / (h.hd + 2)) as u32,
        scale: 1.0 / (h.hd as f32).sqrt(),
        ..Default::default()
    };
    let d = h.defines(gpu)?;
    let mut ks = Vec::new();
    let (kv_defines, kv_bindings) = match kv {
        DecodeKv::Textures { tex, new_row } => {
            if let Some((k_new, v_new)) = new_row {
                ks.push(tex.copy(gpu, k_new, v_new, 1, Some(step))?);
            }
            let b = vec![
                (2, wgpu::BindingResource::TextureView(&tex.k)),
                (3, wgpu::BindingResource::TextureView(&tex.v)),
            ];
            (d.clone().with_flag("KV_TEX"), b)
        }
        DecodeKv::Buffers { k, v } => {
            let b = vec![
                (2, k.buf.as_entire_binding()),
                (3, v.buf.as_entire_binding()),
            ];
            (d.clone(), b)
        }
    };
    if h.one_pass(gpu, ctx) {
        ks.push(Kernel::with_resources(
            gpu,
            "attention",
            "attn_lanes_one",
            &kv_defines,
            bytes(&p),
            &[(1, &q.buf), (4, &out.buf), (6, step)],
            kv_bindings,
            [1, h.heads as u32, 1],
        )?);
        return Ok(ks);
    }
    if let (DecodeKv::Buffers { k, v }, true) = (kv, decode_attention::takes(gpu, h.hd)) {
        ks.extend(decode_attention::kernels(
            gpu,
            h,
            splits,
            bytes(&p),
            q,
            (k, v),
            partials,
            step,
            out,
        )?);
        return Ok(ks);
    }
    ks.push(Kernel::with_resources(
        gpu,
        "attention",
        if h.decode_lanes(gpu) {
            "attn_lanes"
        } else {
            "attn_split"
        },
        &kv_defines,
        bytes(&p),
        &[(1, &q.buf), (5, &partials.buf), (6, step)],
        kv_bindings,
        [splits as u32, h.heads as u32, 1],
    )?);
    let merge = Kernel::new(
        gpu,
        "attention",
        "attn_merge",
        &d,
        bytes(&p),
        &[(5, &partials.buf), (4, &out.buf), (6, step)],
        [1, h.heads as u32, 1],
    )?;
    ks.push(merge);
    Ok(ks)
}
