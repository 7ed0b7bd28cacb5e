//! The GPUs' split-KV decode attention (`decode_attention.wgsl`): a workgroup of 256
//! invocations per split of 64 cached keys and head, K and V read as vec4s by lanes that
//! share a key row, then a merge with a workgroup per head. It writes the same partials as
//! attention.wgsl's `attn_split` (which it replaces) and runs where decode attention is not
//! the CPU devices' lane kernels: the device class's table stages attention through
//! workgroup memory ([`crate::gpu::Gpu::attention_tiles`]), it is not turned off
//! ([`crate::gpu::Gpu::decode_attention`]), and the head dim is a multiple of 16.
//!
//! With [`crate::gpu::Gpu::decode_one`], caches of up to [`ONE_KEYS`] rows take `decode_one`
//! instead: one workgroup per head walks the splits in turn with an online softmax and
//! writes the output, so a layer's decode attention is one dispatch, not two that wait on
//! each other. Its chunks run one after another, so it pays only where the cache is short.

use super::attention::Heads;
use super::Kernel;
use crate::gpu::shader::Defines;
use crate::gpu::{Gpu, Tensor};
use anyhow::Result;

/// Invocations per workgroup (the shader's WG): wgpu's default limit, which every backend
/// meets.
const INVOCATIONS: usize = 256;

/// The longest cache `decode_one` walks: 4 chunks of 64 keys in turn, against a split
/// pass and a merge.
pub const ONE_KEYS: usize = 256;

/// Whether decode attention over a cache of `ctx` rows of heads of `hd` dims runs
/// `decode_one`: this module's kernels, switched on, and a cache short enough.
pub fn one(gpu: &Gpu, hd: usize, ctx: usize) -> bool {
    takes(gpu, hd) && gpu.decode_one() && ctx <= ONE_KEYS
}

/// Whether decode attention over heads of `hd` dims runs this module's kernels.
pub fn takes(gpu: &Gpu, hd: usize) -> bool {
    gpu.attention_tiles()
        && gpu.decode_attention()
        && fits(
            hd,
            gpu.caps.max_invocations as usize,
            gpu.caps.workgroup_memory as usize,
        )
}

/// Whether the kernels take head dim `hd` on a device with these limits (invocations per
/// workgroup, bytes of workgroup memory): a multiple of 16 with a column quad per invocation.
fn fits(hd: usize, max_invocations: usize, workgroup_memory: usize) -> bool {
    hd > 0
        && hd.is_multiple_of(16)
        && hd <= 4 * INVOCATIONS
        && max_invocations >= INVOCATIONS
        && workgroup_bytes(hd) <= workgroup_memory
}

/// Lanes that share a key row in the scores: each load of theirs reads 16 · lanes
/// contiguous bytes, 2 passes of 32 keys (8 lanes) or 1 of 64 (4 lanes) per split.
pub fn lanes_per_key(hd: usize) -> usize {
    if hd.is_multiple_of(32) {
        8
    } else {
        4
    }
}

/// Workgroup memory of either kernel: the lanes' partial scores, the split's scores, the
/// max tree, and the key groups' vec4 and scalar sums.
fn workgroup_bytes(hd: usize) -> usize {
    4 * (64 * lanes_per_key(hd) + 64 + INVOCATIONS + 4 * INVOCATIONS + INVOCATIONS)
}

/// The shader's defines for heads of `hd` dims.
pub fn defines(gpu: &Gpu, hd: usize) -> Defines {
    let mut d = gpu.base_defines();
    set_defines(&mut d, hd);
    d
}

/// HD and LK, for a caller that builds its own defines (the translation test).
pub fn set_defines(d: &mut Defines, hd: usize) {
    d.set("HD", format!("{hd}u"))
        .set("LK", format!("{}u", lanes_per_key(hd)));
}

/// The split pass and the merge, or `decode_one` alone where [`one`] says so for the cache's
/// rows, as [`super::attention::decode`] dispatches them: `params` are attention.wgsl's,
/// `splits` the splits of the cache's capacity.
#[allow(clippy::too_many_arguments)]
pub fn kernels(
    gpu: &Gpu,
    h: Heads,
    splits: usize,
    params: &[u8],
    q: &Tensor,
    kv: (&Tensor, &Tensor),
    partials: &Tensor,
    step: &wgpu::Buffer,
    out: &Tensor,
) -> Result<Vec<Kernel>> {
    let d = defines(gpu, h.hd);
    let (k, v) = kv;
    if one(gpu, h.hd, k.rows) {
        let walk = Kernel::new(
            gpu,
            "decode_attention",
            "decode_one",
            &d,
            params,
            &[
                (1, &q.buf),
                (2, &k.buf),
                (3, &v.buf),
                (4, &out.buf),
                (6, step),
            ],
            [1, h.heads as u32, 1],
        )?;
        return Ok(vec![walk]);
    }
    let split = Kernel::new(
        gpu,
        "decode_attention",
        "decode_split",
        &d,
        params,
        &[
            (1, &q.buf),
            (2, &k.buf),
            (3, &v.buf),
            (5, &partials.buf),
            (6, step),
        ],
        [splits as u32, h.heads as u32, 1],
    )?;
    let merge = Kernel::new(
        gpu,
        "decode_attention",
        "decode_merge",
        &d,
        params,
        &[(5, &partials.buf), (4, &out.buf), (6, step)],
        [1, h.heads as u32, 1],
    )?;
    Ok(vec![split, merge])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_dims_and_limits_it_takes() {
        // the engine's decoders (Llama 128, SmolLM2 64, the fixtures 16) at wgpu's defaults
        for hd in [16, 32, 64, 80, 128, 256, 1024] {
            assert!(fits(hd, 256, 16384), "hd {hd}");
        }
        // 8 lanes per key where a lane's quads are whole rounds of 8, else 4
        assert_eq!(lanes_per_key(128), 8);
        assert_eq!(lanes_per_key(80), 4);
        assert_eq!(workgroup_bytes(128), 4 * (512 + 64 + 256 + 1024 + 256));
        // no multiple of 16, wider than a quad per invocation, or a device below 256
        // invocations or the kernels' 8.4 KB of workgroup memory: attn_split's
        for hd in [0, 8, 12, 100, 1040] {
            assert!(!fits(hd, 256, 16384), "hd {hd}");
        }
        assert!(!fits(128, 128, 16384));
        assert!(!fits(128, 256, 8192));
    }
}
