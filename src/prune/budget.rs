//! The budget convention of PRUNING.md: `--keep B` is the average number of visual tokens per
//! decoder layer, so that methods are compared at equal decoder FLOPs. This file turns B into
//! per-stage token counts, per-layer KV sizes, and FLOP counts.

use super::Method;
use anyhow::{bail, Result};
use serde::Serialize;

/// How many visual tokens survive each stage of one method at one budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub method: Method,
    /// The average-tokens-per-layer budget B.
    pub budget: usize,
    /// Visual tokens the encoder produces (N).
    pub encoded: usize,
    /// Visual tokens that enter the decoder (after encoder-side pruning).
    pub encoder_keep: usize,
    /// Decoder layer K from which fewer tokens are kept; None for encoder-only methods.
    pub layer: Option<usize>,
    /// Visual tokens kept from layer K on (equals `encoder_keep` without a decoder stage).
    pub decoder_keep: usize,
    /// Decoder layers (L).
    pub layers: usize,
}

/// `a / b` rounded half away from zero, for non-negative integers.
fn div_round(a: usize, b: usize) -> usize {
    (2 * a + b) / (2 * b)
}

/// PosPrune's default first-stage budget B1 at budget `b` on a decoder of `layers` layers that
/// prunes at layer `k`. PRUNING.md's B1 = min(N, 2B) is LLaVA-1.5-7B's (K=2 of 32 layers):
/// there the layers after K keep B2 = 14B/15. On a shallower decoder those layers pay more for
/// each of the first stage's tokens (8 layers, K=1: B2 = 6B/7 at B1 = 2B), so B1 is the one
/// that leaves them 14/15 of B, B1 = B·(L + 14K)/(15K): 2B at 32 layers and K=2 (and on every
/// decoder of 16 or more layers with K=1), 22B/15 at 8 layers and K=1. It lies in B..=2B and
/// is at most N. On the tiny trained model (8 layers, B=28, val split) B1 = 41 answered 765
/// questions of 799, B1 = 56 (2B) 757 (docs/default-model.md, "The CLS attention finds
/// every object").
pub fn default_arp_keep(b: usize, n: usize, layers: usize, k: usize) -> usize {
    let k = k.max(1);
    div_round(b * (layers + 14 * k), 15 * k)
        .clamp(b, 2 * b)
        .min(n)
}

impl Plan {
    /// The plan for `method` at budget `b` (None: keep everything) on an image of `n` visual
    /// tokens and a decoder of `layers` layers, pruning at layer `k` where the method does.
    pub fn new(
        method: Method,
        b: Option<usize>,
        n: usize,
        layers: usize,
        k: usize,
    ) -> Result<Self> {
        Self::build(method, b, n, layers, k, None)
    }

    /// [`Plan::new`] with PosPrune's first-stage budget B1 given (default
    /// [`default_arp_keep`]).
    pub fn build(
        method: Method,
        b: Option<usize>,
        n: usize,
        layers: usize,
        k: usize,
        b1: Option<usize>,
    ) -> Result<Self> {
        let budget = b.unwrap_or(n);
        let mut plan = Self {
            method,
            budget,
            encoded: n,
            encoder_keep: n,
            layer: None,
            decoder_keep: n,
            layers,
        };
        if method == Method::None {
            if b.is_some_and(|b| b != n) {
                bail!("--keep needs a pruning method (--prune); --prune none keeps all {n} tokens");
            }
            return Ok(plan);
        }
        if budget == 0 {
            bail!("--keep must be at least 1 visual token");
        }
        if budget > n {
            bail!("--keep {budget} exceeds the image's {n} visual tokens");
        }
        if method.decoder_side() && (k == 0 || k >= layers) {
            bail!(
                "--prune-layer {k} is outside 1..{} (the model has {layers} decoder layers)",
                layers.saturating_sub(1)
            );
        }
        if budget == n {
            return Ok(plan); // B = N: nothing to prune, identical to --prune none
        }
        let first = if method.encoder_side() {
            match method {
                Method::PosPrune => b1
                    .unwrap_or_else(|| default_arp_keep(budget, n, layers, k))
                    .min(n),
                _ => budget,
            }
        } else {
            n
        };
        plan.encoder_keep = first;
        plan.decoder_keep = first;
        if method.decoder_side() {
            // (K·first + (L−K)·B') / L = B  →  B' = (L·B − K·first) / (L − K), rounded.
            let total = layers * budget;
            let before = k * first;
            let min_budget = (before + (layers - k)).div_ceil(layers);
            if total <= before || div_round(total - before, layers - k) == 0 {
                bail!(
                    "--keep {budget} is out of reach when pruning at layer {k}: the {k} layer(s) \
                     before it already hold {first} visual tokens each; use --keep {min_budget} \
                     or more, or a lower --prune-layer"
                );
            }
            plan.layer = Some(k);
            plan.decoder_keep = div_round(total - before, layers - k).min(first);
        }
        Ok(plan)
    }

    /// True when this plan keeps every token: the engine then runs the unpruned path.
    pub fn is_identity(&self) -> bool {
        self.encoder_keep == self.encoded && self.decoder_keep == self.encoded
    }

    /// Visual tokens each decoder layer sees.
    pub fn visual_per_layer(&self) -> Vec<usize> {
        (0..self.layers)
            .map(|l| match self.layer {
                Some(k) if l >= k => self.decoder_keep,
                _ => self.encoder_keep,
            })
            .collect()
    }

    /// The budget actually achieved: mean visual tokens per layer.
    pub fn achieved_budget(&self) -> f64 {
        self.visual_per_layer().iter().sum::<usize>() as f64 / self.layers as f64
    }

    /// Tokens each layer's KV cache holds after prefill, for a prompt with `text` non-visual
    /// tokens.
    pub fn tokens_per_layer(&self, text: usize) -> Vec<usize> {
        self.visual_per_layer().iter().map(|v| v + text).collect()
    }
}

/// Decoder shapes that FLOP counts need.
#[derive(Clone, Copy, Debug)]
pub struct DecoderShape {
    pub d: usize,
    pub d_kv: usize,
    pub m: usize,
}

/// Prefill FLOPs (2 per multiply-add) of the decoder layers for `tokens` per layer:
/// projections 2·n·d·(d + 2·d_kv + d), attention 4·n²·d, SwiGLU MLP 6·n·d·m.
pub fn decoder_flops(s: DecoderShape, tokens: &[usize]) -> u64 {
    tokens
        .iter()
        .map(|&n| {
            let (n, d, dkv, m) = (n as u64, s.d as u64, s.d_kv as u64, s.m as u64);
            2 * n * d * (2 * d + 2 * dkv) + 4 * n * n * d + 6 * n * d * m
        })
        .sum()
}

/// The literature's (FastV's) convention, counting multiply-adds: 4nd² + 2n²d + 2ndm per
/// layer.
pub fn decoder_flops_fastv(s: DecoderShape, tokens: &[usize]) -> u64 {
    tokens
        .iter()
        .map(|&n| {
            let (n, d, m) = (n as u64, s.d as u64, s.m as u64);
            4 * n * d * d + 2 * n * n * d + 2 * n * d * m
        })
        .sum()
}

/// KV-cache bytes: Σ_layers 2 · rows · d_kv · bytes per element.
pub fn kv_bytes(rows_per_layer: &[usize], d_kv: usize, elem_bytes: usize) -> u64 {
    rows_per_layer
        .iter()
        .map(|&r| 2 * (r * d_kv * elem_bytes) as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 576;
    const L: usize = 32;

    #[test]
    fn posprune_first_stage_follows_the_decoder_depth() {
        // LLaVA-1.5-7B (32 layers, K=2): PRUNING.md's 2B, capped at N.
        for b in [64, 128, 192, 300, 576] {
            assert_eq!(default_arp_keep(b, 576, 32, 2), (2 * b).min(576), "B={b}");
        }
        // 16 layers and more with K=1: (L + 14)/15 >= 2, so 2B as well.
        assert_eq!(default_arp_keep(28, 256, 16, 1), 56);
        assert_eq!(default_arp_keep(28, 256, 23, 1), 56);
        // The tiny trained model (8 layers, K=1, N=256): B·22/15 rounded (41.07, 83.6, 124.7).
        assert_eq!(default_arp_keep(28, 256, 8, 1), 41);
        assert_eq!(default_arp_keep(57, 256, 8, 1), 84);
        assert_eq!(default_arp_keep(85, 256, 8, 1), 125);
        // Never below B (a 2-layer decoder would ask (2 + 14)/15 of B).
        assert_eq!(default_arp_keep(30, 256, 2, 1), 32);
        assert_eq!(default_arp_keep(30, 256, 1, 1), 30);
        let p = Plan::new(Method::PosPrune, Some(28), 256, 8, 1).unwrap();
        // (8·28 − 41)/7 = 26.14 → 26, and 14/15 of B is 26.13.
        assert_eq!((p.encoder_keep, p.decoder_keep), (41, 26));
    }

    #[test]
    fn budgets_follow_the_convention_at_192_128_64() {
        // (method, B) → (encoder keep, layer, decoder keep), worked out by hand from
        // PRUNING.md: B' = round((L·B − K·first) / (L − K)) with K = 2.
        let cases: &[(Method, usize, usize, Option<usize>, usize)] = &[
            (Method::FasterVlm, 192, 192, None, 192),
            (Method::FasterVlm, 64, 64, None, 64),
            (Method::VisionZip, 128, 128, None, 128),
            (Method::DivPrune, 64, 64, None, 64),
            (Method::Arp, 128, 128, None, 128),
            // (32·192 − 2·576)/30 = 166.4 → 166; 128: 98.1 → 98; 64: 29.9 → 30.
            (Method::FastV, 192, 576, Some(2), 166),
            (Method::FastV, 128, 576, Some(2), 98),
            (Method::FastV, 64, 576, Some(2), 30),
            (Method::PoRe, 64, 576, Some(2), 30),
            (Method::PbcMmr, 128, 576, Some(2), 98),
            // PosPrune: B1 = 2B; B2 = (32·B − 2·B1)/30 = 28B/30.
            (Method::PosPrune, 192, 384, Some(2), 179), // 179.2
            (Method::PosPrune, 128, 256, Some(2), 119), // 119.47
            (Method::PosPrune, 64, 128, Some(2), 60),   // 59.73
        ];
        for &(m, b, first, layer, second) in cases {
            let p = Plan::new(m, Some(b), N, L, 2).unwrap();
            assert_eq!(
                (p.encoder_keep, p.layer, p.decoder_keep),
                (first, layer, second),
                "{m:?} at B={b}"
            );
            let per_layer = p.visual_per_layer();
            assert_eq!(per_layer.len(), L);
            let k = layer.unwrap_or(0);
            assert!(per_layer[..k].iter().all(|&t| t == first));
            assert!(per_layer[k..].iter().all(|&t| t == second));
            // The achieved average is within half a token per layer of B.
            let avg = p.achieved_budget();
            assert!((avg - b as f64).abs() <= 0.5, "{m:?} B={b}: average {avg}");
            assert_eq!(
                p.tokens_per_layer(40),
                per_layer.iter().map(|t| t + 40).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn bad_budgets_are_refused() {
        let err = |m, b, k| Plan::new(m, b, N, L, k).unwrap_err().to_string();
        assert!(err(Method::FastV, Some(0), 2).contains("at least 1"));
        assert!(err(Method::FastV, Some(577), 2).contains("exceeds"));
        // K·N / L = 36: a budget of 36 leaves nothing for layers ≥ K.
        let e = err(Method::FastV, Some(36), 2);
        assert!(e.contains("out of reach") && e.contains("--keep 37"), "{e}");
        assert!(Plan::new(Method::FastV, Some(37), N, L, 2).is_ok());
        assert!(err(Method::FastV, Some(64), 32).contains("outside 1..31"));
        assert!(err(Method::PoRe, Some(64), 0).contains("outside"));
        // Encoder-side methods ignore K.
        assert!(Plan::new(Method::FasterVlm, Some(64), N, L, 40).is_ok());
        assert!(err(Method::None, Some(64), 2).contains("--prune"));
    }

    #[test]
    fn full_budget_is_the_identity() {
        for m in Method::ALL {
            let p = Plan::new(m, Some(N), N, L, 2).unwrap();
            assert!(p.is_identity(), "{m:?}");
        }
        assert!(Plan::new(Method::None, None, N, L, 2)
            .unwrap()
            .is_identity());
    }

    #[test]
    fn flops_and_kv_bytes_are_exact() {
        let s = DecoderShape {
            d: 4096,
            d_kv: 4096,
            m: 11008,
        };
        // One layer of 1 token: 2·4096·16384 + 4·4096 + 6·4096·11008.
        assert_eq!(
            decoder_flops(s, &[1]),
            2 * 4096 * 16384 + 4 * 4096 + 6 * 4096 * 11008
        );
        assert_eq!(
            decoder_flops_fastv(s, &[2]),
            4 * 2 * 4096 * 4096 + 2 * 4 * 4096 + 2 * 2 * 4096 * 11008
        );
        assert_eq!(kv_bytes(&[10, 20], 8, 4), 2 * 10 * 8 * 4 + 2 * 20 * 8 * 4);
    }
}
