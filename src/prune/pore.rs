//! PoRe: position-reweighted FastV. s_i = w(p_i) · m_i · a_i, with a the last token's
//! attention (as FastV), w(p) = ρ^p compensating the recency trend of shallow-layer
//! attention (later raster positions get inflated attention), and m_i = 0 for patches that
//! are mostly padding when the image was padded to a square. The top B' of s are kept.
//!
//! ρ comes from `--pore-rho`, else from the calibration file, else from a log-linear fit of
//! a over positions on the current sample: ln a(p) ≈ c + slope·p, ρ = e^(−slope).
//! (PRUNING.md writes the fit as c − β·p with ρ = e^(−β); we use the sign that makes
//! w = 1/trend, which is what compensating an upward trend needs.)
//!
//! GPU: FastV's attention passes, then `prune_select.wgsl::reweight` (PORE), then `top_k`.

use super::select::{log_linear_slope, top_k};

/// ρ fitted on the sample: e^(−slope) of ln a over the raster positions of unmasked tokens.
pub fn fit_rho(attention: &[f32], raster: &[u32], mask: &[f32]) -> f32 {
    (-log_linear_slope(raster, attention, |i| mask[i] > 0.0)).exp()
}

/// CPU reference of the reweighted scores.
pub fn scores(attention: &[f32], raster: &[u32], mask: &[f32], rho: f32) -> Vec<f32> {
    attention
        .iter()
        .enumerate()
        .map(|(i, &a)| rho.powf(raster[i] as f32) * mask[i] * a)
        .collect()
}

/// CPU reference: sorted indices of the `keep` best reweighted tokens.
pub fn select(attention: &[f32], raster: &[u32], mask: &[f32], rho: f32, keep: usize) -> Vec<u32> {
    top_k(&scores(attention, raster, mask, rho), keep)
}

/// The padding mask of a `grid`×`grid` patch grid for an image of `w`×`h` pixels padded to a
/// square: 0 for a patch more than half of whose area is padding, 1 otherwise.
pub fn padding_mask(w: u32, h: u32, grid: usize) -> Vec<f32> {
    let side = w.max(h) as f64;
    // The image occupies [x0, x0 + w) × [y0, y0 + h) of the square, in units of the side.
    let (x0, y0) = ((side - w as f64) / 2.0, (side - h as f64) / 2.0);
    let cell = side / grid as f64;
    let overlap = |lo: f64, len: f64, i: usize| {
        let (a, b) = (i as f64 * cell, (i + 1) as f64 * cell);
        (b.min(lo + len) - a.max(lo)).max(0.0)
    };
    let mut m = Vec::with_capacity(grid * grid);
    for row in 0..grid {
        for col in 0..grid {
            let inside = overlap(x0, w as f64, col) * overlap(y0, h as f64, row);
            m.push(if inside >= 0.5 * cell * cell {
                1.0
            } else {
                0.0
            });
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_mask_marks_the_bands() {
        // 2:1 landscape on a 4x4 grid: rows 0 and 3 are all padding, rows 1 and 2 image.
        let m = padding_mask(200, 100, 4);
        assert_eq!(&m[0..4], &[0.0; 4]);
        assert_eq!(&m[4..12], &[1.0; 8]);
        assert_eq!(&m[12..16], &[0.0; 4]);
        assert!(padding_mask(50, 50, 24).iter().all(|&v| v == 1.0));
    }

    #[test]
    fn reweighting_demotes_late_positions() {
        let a = [0.1, 0.1, 0.1, 0.1];
        let raster = [0, 1, 2, 3];
        let keep = select(&a, &raster, &[1.0; 4], 0.5, 2);
        assert_eq!(keep, vec![0, 1]);
        let rho = fit_rho(&[1.0, 2.0, 4.0, 8.0], &raster, &[1.0; 4]);
        assert!((rho - 0.5).abs() < 1e-5, "{rho}");
    }
}
