//! The tiled prefill attention for GPUs (`flash_attention.wgsl`): a workgroup takes 64 query
//! rows of one head through tiles of keys, its scores and outputs in 4x4 register blocks,
//! Q, K, V and the probabilities staged through workgroup memory. It runs where the device
//! class's table stages attention through workgroup memory
//! ([`crate::gpu::Gpu::attention_tiles`]), unless turned off
//! ([`crate::gpu::Gpu::flash_attention`]), and the head dim has a shape (below); elsewhere
//! attention.wgsl's kernels do.

use crate::gpu::shader::Defines;
use crate::gpu::Gpu;

/// Query rows per workgroup (flash_attention.wgsl's BQ).
pub const ROWS_PER_WORKGROUP: usize = 64;
/// Row quads per workgroup: each invocation's 4 rows.
const ROW_QUADS: usize = ROWS_PER_WORKGROUP / 4;
/// Dims of Q and K staged at a time (the shader's DC).
const STAGED_DIMS: usize = 16;
/// The largest workgroup the kernel asks for: wgpu's default limit, which every backend
/// meets.
const MAX_INVOCATIONS: usize = 256;

/// One head dim's kernel shape on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashShape {
    /// Output column quads per invocation (1, 2 or 4).
    pub col_quads: usize,
    /// Invocations per workgroup: 16 row quads times hd / (4 · col_quads) column groups.
    pub invocations: usize,
    /// Keys per tile: 4 per column group, one 4x4 block of scores per invocation.
    pub keys: usize,
    /// Keys of V staged at a time (divides `keys`).
    pub v_keys: usize,
    /// vec4s of the staging array: the larger of a Q and K chunk and a V chunk.
    pub stage: usize,
}

impl FlashShape {
    /// The shape for head dim `hd` on this device, or None where the kernel does not run:
    /// head dims that are no multiple of 4, or whose workgroup would pass the device's
    /// invocation or workgroup-memory limits.
    pub fn new(gpu: &Gpu, hd: usize) -> Option<Self> {
        if !gpu.attention_tiles() || !gpu.flash_attention() {
            return None;
        }
        let max_invocations = MAX_INVOCATIONS.min(gpu.caps.max_invocations as usize);
        Self::for_limits(hd, max_invocations, gpu.caps.workgroup_memory as usize)
    }

    /// The shape for head dim `hd` on a device with these limits (invocations per workgroup,
    /// bytes of workgroup memory), or None.
    pub fn for_limits(hd: usize, max_invocations: usize, workgroup_memory: usize) -> Option<Self> {
        if hd == 0 || !hd.is_multiple_of(4) {
            return None;
        }
        let hd4 = hd / 4;
        // the fewest column quads per invocation (the most invocations) that fit
        [1, 2, 4]
            .into_iter()
            .filter(|&o| hd4.is_multiple_of(o) && ROW_QUADS * hd4 / o <= max_invocations)
            .map(|col_quads| {
                let groups = hd4 / col_quads;
                let keys = 4 * groups;
                // V chunks as large as the Q and K chunks' room allows
                let qk_stage = STAGED_DIMS * (ROW_QUADS + groups);
                let v_keys = (1..=keys)
                    .rev()
                    .find(|&c| keys.is_multiple_of(c) && c * hd4 <= qk_stage)
                    .unwrap_or(1);
                Self {
                    col_quads,
                    invocations: ROW_QUADS * groups,
                    keys,
                    v_keys,
                    stage: qk_stage.max(v_keys * hd4),
                }
            })
            .find(|s| s.workgroup_bytes() <= workgroup_memory)
    }

    /// Workgroup memory: the probabilities (keys x 64 rows), the staging array and one
    /// vec4 per invocation for the row reductions.
    pub fn workgroup_bytes(&self) -> usize {
        16 * (self.keys * ROW_QUADS + self.stage + self.invocations)
    }

    /// The shader's defines for head dim `hd`.
    pub fn defines(&self, gpu: &Gpu, hd: usize) -> Defines {
        let mut d = gpu.base_defines();
        self.set_defines(&mut d, hd);
        d
    }

    /// Add this shape's values and flags for head dim `hd` to `d`.
    pub fn set_defines(&self, d: &mut Defines, hd: usize) {
        d.set("HD", hd)
            .set("WG", format!("{}u", self.invocations))
            .set("VC", format!("{}u", self.v_keys))
            .set("STAGE", format!("{}u", self.stage));
        if self.col_quads >= 2 {
            d.flag("OB_2");
        }
        if self.col_quads == 4 {
            d.flag("OB_4");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FlashShape;

    #[test]
    fn shapes_for_the_model_head_dims_and_limits() {
        // CLIP-L (64) and Llama-7B (128) on 32 KiB of workgroup memory (lavapipe, Metal)
        let s = FlashShape::for_limits(64, 256, 32768).unwrap();
        assert_eq!((s.col_quads, s.invocations, s.keys), (1, 256, 64));
        assert_eq!((s.v_keys, s.stage, s.workgroup_bytes()), (32, 512, 28672));
        let s = FlashShape::for_limits(128, 256, 32768).unwrap();
        assert_eq!((s.col_quads, s.invocations, s.keys), (2, 256, 64));
        assert_eq!((s.v_keys, s.stage, s.workgroup_bytes()), (16, 512, 28672));
        // 80 dims: 20 quads, 2 per invocation, 40 keys a tile, V in halves
        let s = FlashShape::for_limits(80, 256, 32768).unwrap();
        assert_eq!(
            (s.col_quads, s.invocations, s.keys, s.v_keys),
            (2, 160, 40, 20)
        );
        assert_eq!((s.stage, s.workgroup_bytes()), (416, 19456));
        // 256 dims: 4 quads per invocation
        let s = FlashShape::for_limits(256, 256, 32768).unwrap();
        assert_eq!(
            (s.col_quads, s.invocations, s.keys, s.v_keys),
            (4, 256, 64, 8)
        );
        // small heads: a smaller workgroup
        let s = FlashShape::for_limits(16, 256, 32768).unwrap();
        assert_eq!(
            (s.col_quads, s.invocations, s.keys, s.v_keys),
            (1, 64, 16, 16)
        );
        // 16 KiB of workgroup memory (wgpu's default limit): half the keys a tile
        let s = FlashShape::for_limits(64, 256, 16384).unwrap();
        assert_eq!(
            (s.col_quads, s.invocations, s.keys, s.v_keys),
            (2, 128, 32, 16)
        );
        assert_eq!(s.workgroup_bytes(), 16384);
        let s = FlashShape::for_limits(128, 256, 16384).unwrap();
        assert_eq!(
            (s.col_quads, s.invocations, s.keys, s.v_keys),
            (4, 128, 32, 8)
        );
        assert_eq!(s.workgroup_bytes(), 16384);
        assert_eq!(FlashShape::for_limits(128, 256, 16383), None);
        // no shape: head dims off the quads, 25 quads (no 1/2/4 split under 256)
        assert_eq!(FlashShape::for_limits(6, 256, 32768), None);
        assert_eq!(FlashShape::for_limits(100, 256, 32768), None);
        // fewer invocations: more column quads each
        let s = FlashShape::for_limits(64, 128, 32768).unwrap();
        assert_eq!((s.col_quads, s.invocations, s.keys), (2, 128, 32));
    }
}
