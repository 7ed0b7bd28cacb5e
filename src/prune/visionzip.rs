//! VisionZip, at vision layer −2:
//! - d dominant tokens by CLS attention (head mean; the head sum of the paper ranks alike);
//! - from the remaining tokens, in raster order, every ⌊rest/c⌋-th one is a contextual target
//!   (at most c of them);
//! - every other remaining token joins its most similar target, by the dot product of the
//!   L2-normalised head-mean keys of that layer;
//! - each target becomes itself plus the mean of the tokens that joined it.
//!
//! B = d + c with c = round(10·B/64) by default (B=64 gives 54 + 10, the paper's split).
//! Deviation: the kept tokens (dominant and targets) go on in raster order, as every method
//! here returns sorted indices, where the paper puts the contextual tokens last.
//!
//! GPU: CLS attention as FasterVLM, `prune_score.wgsl::key_mean/normalize_rows/gram`,
//! `prune_select.wgsl::visionzip`, then `prune_gather.wgsl::merge_rows`.

use super::select::{argmax, top_k};

/// What VisionZip decided for each of the N tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Sorted indices of the kept tokens (dominant and contextual targets).
    pub kept: Vec<u32>,
    /// Per kept token: true for a contextual target.
    pub is_target: Vec<bool>,
    /// Per token: the slot in `kept` of the target it merged into (None if kept itself).
    pub merged_into: Vec<Option<u32>>,
}

/// The default split of B into (dominant, contextual).
pub fn split(budget: usize, contextual: Option<usize>) -> (usize, usize) {
    let c = contextual
        .unwrap_or((10 * budget + 32) / 64)
        .clamp(1.min(budget), budget);
    (budget - c, c)
}

/// CPU reference. `key_gram` is the cosine similarity of the head-mean keys, [n×n].
pub fn select(
    cls_attention: &[f32],
    key_gram: &[f32],
    dominant: usize,
    contextual: usize,
) -> Selection {
    let n = cls_attention.len();
    let dom = top_k(cls_attention, dominant);
    let mut is_dom = vec![false; n];
    for &i in &dom {
        is_dom[i as usize] = true;
    }
    let rest: Vec<usize> = (0..n).filter(|&i| !is_dom[i]).collect();
    let step = (rest.len() / contextual.max(1)).max(1);
    let mut is_target = vec![false; n];
    for (r, &i) in rest.iter().enumerate() {
        if r % step == 0 && r / step < contextual {
            is_target[i] = true;
        }
    }
    let kept: Vec<u32> = (0..n)
        .filter(|&i| is_dom[i] || is_target[i])
        .map(|i| i as u32)
        .collect();
    let slot = |i: usize| kept.iter().position(|&k| k as usize == i).unwrap() as u32;
    let targets: Vec<usize> = (0..n).filter(|&i| is_target[i]).collect();
    let merged_into = (0..n)
        .map(|j| {
            if is_dom[j] || is_target[j] || targets.is_empty() {
                None
            } else {
                let t = argmax(targets.iter().copied(), |t| key_gram[j * n + t]);
                Some(slot(t))
            }
        })
        .collect();
    Selection {
        is_target: kept.iter().map(|&k| is_target[k as usize]).collect(),
        kept,
        merged_into,
    }
}

/// CPU reference of the merge: the kept rows of `hidden` [n × cols], each target plus the
/// mean of the rows merged into it.
pub fn merge(hidden: &[f32], cols: usize, sel: &Selection) -> Vec<f32> {
    let mut out = Vec::with_capacity(sel.kept.len() * cols);
    for (slot, &k) in sel.kept.iter().enumerate() {
        let row = &hidden[k as usize * cols..(k as usize + 1) * cols];
        let members: Vec<usize> = (0..sel.merged_into.len())
            .filter(|&j| sel.merged_into[j] == Some(slot as u32))
            .collect();
        for c in 0..cols {
            let mut s = 0.0f32;
            for &j in &members {
                s += hidden[j * cols + c];
            }
            let mean = if members.is_empty() {
                0.0
            } else {
                s / members.len() as f32
            };
            out.push(row[c] + mean);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_the_paper() {
        assert_eq!(split(64, None), (54, 10));
        assert_eq!(split(128, None), (108, 20));
        assert_eq!(split(192, None), (162, 30));
        assert_eq!(split(3, None), (2, 1));
    }
}
