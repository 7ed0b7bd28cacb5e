//! ARP, Asymmetric Region-aware Pruning (PosPrune's encoder stage, at vision layer −2).
//!
//! The G×G patch grid is split into r×r regions. A region's saliency is the mean CLS
//! attention of its patches. Every region first gets a floor of max(1, ⌊α·B1/R⌋) tokens
//! (capped at its size); the rest of B1 goes to regions in proportion to saliency by largest
//! remainder, capped at region size. Inside each region the patches with the most CLS
//! attention are kept. Rich regions keep many tokens, poor ones few, none goes empty.
//!
//! The allocation is integer arithmetic on fixed-point saliency (attention × 2^19, which
//! keeps rem·w below 2^32 for N ≤ 4096), so the GPU (`prune_select.wgsl::arp_budget`) and
//! this reference agree exactly. Deviation: the saliency exponent γ of PRUNING.md is fixed
//! at its default 1.
//!
//! GPU: CLS attention as FasterVLM, `arp_budget`, then `top_k` with REGIONS.

use super::select::ranks_before;
use anyhow::{bail, Result};

/// Fixed-point scale of attention in the allocation.
pub const FIXED_ONE: f32 = 524_288.0; // 2^19

/// Largest N the fixed-point allocation supports.
pub const MAX_TOKENS: usize = 4096;

/// Region (0..r²) of raster patch `p` on a `grid`×`grid` grid split r×r.
pub fn region_of(p: usize, grid: usize, r: usize) -> usize {
    let (row, col) = (p / grid, p % grid);
    (row * r / grid) * r + col * r / grid
}

/// The per-region floor max(1, ⌊α·B1/R⌋), lowered to ⌊B1/R⌋ when R floors would not fit.
pub fn floor_count(alpha: f32, b1: usize, regions: usize) -> usize {
    let f = ((alpha * b1 as f32) / regions as f32).floor().max(1.0) as usize;
    if f * regions > b1 {
        b1 / regions
    } else {
        f
    }
}

/// Regions (r x r) that `prune_select.wgsl` holds per-region state for (its MAX_REGIONS).
pub const MAX_REGIONS: usize = 64;

pub fn check(n: usize, grid: usize, r: usize) -> Result<()> {
    if grid * grid != n {
        bail!("ARP needs a square patch grid; {n} visual tokens are not one");
    }
    if n > MAX_TOKENS {
        bail!("ARP supports at most {MAX_TOKENS} visual tokens, the image has {n}");
    }
    if r > grid {
        bail!("--arp-regions {r} exceeds the {grid}-patch grid");
    }
    if r * r > MAX_REGIONS {
        bail!(
            "--arp-regions {r} gives {} regions; the GPU passes hold at most {MAX_REGIONS} (8 x 8)",
            r * r
        );
    }
    Ok(())
}

/// CPU reference of the region budgets b_k (they sum to `b1`).
pub fn budgets(attention: &[f32], grid: usize, r: usize, floor: usize, b1: usize) -> Vec<u32> {
    let regions = r * r;
    let mut size = vec![0u32; regions];
    let mut sum = vec![0u32; regions];
    for (p, &a) in attention.iter().enumerate() {
        let k = region_of(p, grid, r);
        size[k] += 1;
        sum[k] += (a.clamp(0.0, 1.0) * FIXED_ONE) as u32;
    }
    let w: Vec<u32> = (0..regions)
        .map(|k| sum[k].checked_div(size[k]).unwrap_or(0))
        .collect();
    let mut alloc: Vec<u32> = size.iter().map(|&s| s.min(floor as u32)).collect();
    let mut rem = b1 as u32 - alloc.iter().sum::<u32>();
    while rem > 0 {
        let open: Vec<usize> = (0..regions).filter(|&k| alloc[k] < size[k]).collect();
        if open.is_empty() {
            break;
        }
        let total: u32 = open.iter().map(|&k| w[k]).sum();
        let weight = |k: usize| if total == 0 { 1 } else { w[k] };
        let total = if total == 0 { open.len() as u32 } else { total };
        let mut frac = vec![0u32; regions];
        let mut given = 0;
        for &k in &open {
            let q = rem * weight(k);
            let give = (q / total).min(size[k] - alloc[k]);
            alloc[k] += give;
            given += give;
            frac[k] = q % total;
        }
        let mut left = rem - given;
        // Largest remainder, one token each, ties to the lower region.
        let mut visited = vec![false; regions];
        while left > 0 {
            let mut best: Option<usize> = None;
            for &k in &open {
                if !visited[k] && alloc[k] < size[k] && best.is_none_or(|b| frac[k] > frac[b]) {
                    best = Some(k);
                }
            }
            let Some(k) = best else { break };
            visited[k] = true;
            alloc[k] += 1;
            left -= 1;
        }
        rem = left;
    }
    alloc
}

/// CPU reference: sorted indices of the patches ARP keeps.
pub fn select(attention: &[f32], grid: usize, r: usize, floor: usize, b1: usize) -> Vec<u32> {
    let alloc = budgets(attention, grid, r, floor, b1);
    let n = attention.len();
    (0..n)
        .filter(|&i| {
            let k = region_of(i, grid, r);
            let rank = (0..n)
                .filter(|&j| {
                    region_of(j, grid, r) == k && ranks_before(attention[j], j, attention[i], i)
                })
                .count();
            rank < alloc[k] as usize
        })
        .map(|i| i as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_keeps_its_floor_and_rich_regions_keep_more() {
        // 8x8 grid, 2x2 regions of 16 patches; region 0 holds most of the attention.
        let grid = 8;
        let mut a = vec![0.001f32; 64];
        for (p, v) in a.iter_mut().enumerate() {
            if region_of(p, grid, 2) == 0 {
                *v = 0.05 + 0.0001 * p as f32;
            }
        }
        let floor = floor_count(0.3, 20, 4);
        assert_eq!(floor, 1);
        let b = budgets(&a, grid, 2, floor, 20);
        assert_eq!(b.iter().sum::<u32>(), 20);
        assert!(b.iter().all(|&x| x >= 1));
        assert!(b[0] >= 16, "{b:?}");
        let keep = select(&a, grid, 2, floor, 20);
        assert_eq!(keep.len(), 20);
        assert!(keep.windows(2).all(|w| w[0] < w[1]));
        // Caps: a budget of all patches keeps all.
        assert_eq!(select(&a, grid, 2, floor_count(0.3, 64, 4), 64).len(), 64);
    }

    #[test]
    fn uneven_grids_and_tiny_budgets() {
        // 24x24 split 5x5 gives unequal regions; B1 = 3 < R gives floors of 0.
        assert_eq!(floor_count(0.3, 3, 25), 0);
        let a: Vec<f32> = (0..576).map(|i| ((i * 37) % 101) as f32 / 1e4).collect();
        for b1 in [3, 25, 64, 128, 575] {
            let keep = select(&a, 24, 5, floor_count(0.3, b1, 25), b1);
            assert_eq!(keep.len(), b1);
        }
    }
}
