//! FastV: at decoder layer K, the last prompt token's attention over the visual tokens in
//! layer K−1 (head mean) ranks them; the top B' stay for layers K and later, keeping their
//! original position ids.
//!
//! GPU: `prune_score.wgsl::attn_stats/attn_relevance` over the last query row of layer K−1,
//! `prune_select.wgsl::top_k`, then `prune_gather.wgsl::splice_rows` compacts the hidden
//! states and position ids.

use super::select::top_k;

/// CPU reference: the sorted indices of the `keep` visual tokens with the most attention.
pub fn select(last_token_attention: &[f32], keep: usize) -> Vec<u32> {
    top_k(last_token_attention, keep)
}
