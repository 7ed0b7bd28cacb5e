//! PosPrune's decoder stage: Positional Bias Correction, then Maximal-Marginal-Relevance
//! selection, at decoder layer K.
//!
//! - Relevance r_i: the attention of the text tokens after the image over visual token i in
//!   layer K−1 (mean over heads and over those queries; `--pbc-query last`: last token only).
//! - PBC: shallow-layer attention carries an architectural positional trend. It is divided
//!   out: r̃_i = r_i / β(p_i), then min-max normalised to [0, 1]. β comes from the
//!   calibration file (`vlm-run calibrate`) when there is one, else from a log-linear fit of
//!   r over the raster positions of the current sample.
//! - MMR over the hidden states h entering layer K: start from argmax r̃, then repeatedly add
//!   argmax_j λ·r̃_j − (1−λ)·max_{s∈S} cos(h_j, h_s).
//!
//! GPU: `prune_score.wgsl::attn_stats/attn_relevance`, `prune_select.wgsl::reweight` (PBC),
//! `prune_score.wgsl::normalize_rows/gram`, `prune_select.wgsl::mmr`.

use super::select::{argmax, log_linear_slope, min_max};

/// CPU reference of r̃: relevance divided by the positional profile (or by the fitted trend
/// e^(slope·p)), min-max normalised.
pub fn corrected(relevance: &[f32], raster: &[u32], profile: Option<&[f32]>) -> Vec<f32> {
    let divided: Vec<f32> = match profile {
        Some(beta) => relevance
            .iter()
            .enumerate()
            .map(|(i, &r)| r / beta[raster[i] as usize].max(1e-30))
            .collect(),
        None => {
            let slope = log_linear_slope(raster, relevance, |_| true);
            relevance
                .iter()
                .enumerate()
                .map(|(i, &r)| r * (-slope * raster[i] as f32).exp())
                .collect()
        }
    };
    min_max(&divided)
}

/// CPU reference of MMR: `keep` of the n tokens, from relevance `rel` and the cosine
/// similarity matrix `gram` [n×n]. Returns sorted indices.
pub fn mmr(rel: &[f32], gram: &[f32], keep: usize, lambda: f32) -> Vec<u32> {
    let n = rel.len();
    let mut chosen = vec![false; n];
    let mut max_sim = vec![f32::NEG_INFINITY; n];
    for step in 0..keep.min(n) {
        let pick = if step == 0 {
            argmax(0..n, |j| rel[j])
        } else {
            argmax((0..n).filter(|&j| !chosen[j]), |j| {
                lambda * rel[j] - (1.0 - lambda) * max_sim[j]
            })
        };
        chosen[pick] = true;
        for j in 0..n {
            max_sim[j] = max_sim[j].max(gram[pick * n + j]);
        }
    }
    (0..n).filter(|&i| chosen[i]).map(|i| i as u32).collect()
}
