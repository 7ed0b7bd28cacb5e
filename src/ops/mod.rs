//! GPU ops. Each function checks its shapes, picks its kernel variant and dispatch size, and
//! returns [`Kernel`]s to be encoded, in order, into a forward pass. Nothing runs until the
//! pass is submitted, and nothing is allocated when it is re-encoded.

pub mod attention;
pub mod autotune;
pub mod bandwidth;
pub mod decode_attention;
pub mod elementwise;
pub mod embed;
pub mod flash_attention;
pub mod layer_tail;
pub mod matmul;
pub mod norm;
pub mod prune;
pub mod rope;
pub mod sample;

pub use crate::gpu::Kernel;

/// Pod parameter blocks are passed to kernels as bytes.
pub(crate) fn bytes<T: bytemuck::Pod>(p: &T) -> &[u8] {
    bytemuck::bytes_of(p)
}

/// An f32 buffer binding checked to hold at least `floats` values.
pub(crate) fn check_len(label: &str, buf: &wgpu::Buffer, floats: usize) -> anyhow::Result<()> {
    if buf.size() < 4 * floats as u64 {
        anyhow::bail!(
            "{label}: buffer of {} bytes is too small for {floats} values",
            buf.size()
        );
    }
    Ok(())
}
