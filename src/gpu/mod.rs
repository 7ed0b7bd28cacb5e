//! The GPU runtime: adapter and device, shader preprocessing, pipeline cache, kernels and buffers.

mod context;
mod kernel;
mod pipeline;
pub mod shader;
mod tensor;
pub mod tile;
mod timestamps;
mod token_queue;
mod weight_store;

pub use context::{Caps, Gpu, GpuOptions};
pub use kernel::{Kernel, Step};
pub use pipeline::{Compiler, Pipeline};
pub use tensor::{Tensor, Weight, WeightChunk, UNIFORM_X_BYTES};
pub use tile::{GemmTile, TileChoice};
pub use timestamps::{DispatchTimes, TimestampWay};
pub use token_queue::TokenQueue;
pub use weight_store::{WeightStore, MIN_TEXTURE_BYTES, TEX_ROW_TEXELS};

/// Split `n` workgroups into a 2-D grid whose x dimension stays within `max_per_dim`.
/// Shaders recover the linear index as `wid.y * nwg.x + wid.x` and return when it is >= n.
pub fn fold_workgroups(n: u32, max_per_dim: u32) -> [u32; 3] {
    if n <= max_per_dim {
        [n.max(1), 1, 1]
    } else {
        let y = n.div_ceil(max_per_dim);
        [n.div_ceil(y), y, 1]
    }
}

#[cfg(test)]
mod tests {
    use super::fold_workgroups;

    #[test]
    fn folding_covers_every_workgroup_within_the_limit() {
        for n in [1u32, 7, 65535, 65536, 100_000, 1_000_000] {
            let [x, y, _] = fold_workgroups(n, 65535);
            assert!(x <= 65535 && y <= 65535);
            assert!(x as u64 * y as u64 >= n as u64, "n={n}");
            assert!(
                (x as u64) * (y as u64 - 1) < n as u64,
                "too many rows for n={n}"
            );
        }
        assert_eq!(fold_workgroups(0, 65535), [1, 1, 1]);
    }
}
