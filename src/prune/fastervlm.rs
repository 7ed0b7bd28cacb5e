//! FasterVLM (\[CLS\] attention): at the vision feature layer (−2), the CLS query's attention
//! over the N patch keys (head mean) ranks the patches; the top B go on to the projector.
//!
//! GPU: `prune_score.wgsl::attn_stats/attn_relevance` with the CLS row as the only query,
//! then `prune_select.wgsl::top_k`, then `prune_gather.wgsl::gather_rows`.

use super::select::top_k;

/// CPU reference: the sorted indices of the `keep` patches with the most CLS attention.
pub fn select(cls_attention: &[f32], keep: usize) -> Vec<u32> {
    top_k(cls_attention, keep)
}
