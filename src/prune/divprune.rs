//! DivPrune: diversity by greedy max-min selection on the projector outputs, with distance
//! D = 1 − cosine. The first pick maximises its minimum distance to every other token; then
//! each step adds argmax_j min_{s∈S} D[s, j].
//!
//! GPU: `prune_score.wgsl::normalize_rows/gram` over the projector output, each row's
//! smallest distance (`prune_score.wgsl::row_min_distance`, for the first pick),
//! `prune_select.wgsl::max_min`, then `prune_gather.wgsl::gather_rows`.

use super::select::argmax;

/// CPU reference: sorted indices of `keep` of the n tokens, from the cosine matrix [n×n].
pub fn select(gram: &[f32], n: usize, keep: usize) -> Vec<u32> {
    let d = |i: usize, j: usize| 1.0 - gram[i * n + j];
    let mut chosen = vec![false; n];
    let mut min_d = vec![f32::INFINITY; n];
    for step in 0..keep.min(n) {
        let pick = if step == 0 {
            argmax(0..n, |i| {
                (0..n)
                    .filter(|&j| j != i)
                    .map(|j| d(i, j))
                    .fold(f32::INFINITY, f32::min)
            })
        } else {
            argmax((0..n).filter(|&j| !chosen[j]), |j| min_d[j])
        };
        chosen[pick] = true;
        for (j, m) in min_d.iter_mut().enumerate() {
            *m = m.min(d(pick, j));
        }
    }
    (0..n).filter(|&i| chosen[i]).map(|i| i as u32).collect()
}
