//! Selection primitives shared by the CPU reference implementations. The GPU kernels in
//! `shaders/prune_select.wgsl` follow the same rules: larger score first, ties to the lower
//! index, and kept indices returned sorted.

/// True when (a at index i) ranks before (b at index j): larger first, ties to the lower index.
pub fn ranks_before(a: f32, i: usize, b: f32, j: usize) -> bool {
    a > b || (a == b && i < j)
}

/// Indices of the `k` best `scores`, sorted ascending. A token is kept when fewer than `k`
/// tokens rank before it, the same test the GPU makes per token.
pub fn top_k(scores: &[f32], k: usize) -> Vec<u32> {
    (0..scores.len())
        .filter(|&i| {
            let rank = (0..scores.len())
                .filter(|&j| ranks_before(scores[j], j, scores[i], i))
                .count();
            rank < k
        })
        .map(|i| i as u32)
        .collect()
}

/// The best index among `candidates` by `value`, ties to the lower index.
pub fn argmax(candidates: impl Iterator<Item = usize>, value: impl Fn(usize) -> f32) -> usize {
    let mut best: Option<(usize, f32)> = None;
    for i in candidates {
        let v = value(i);
        if best.is_none_or(|(bi, bv)| ranks_before(v, i, bv, bi)) {
            best = Some((i, v));
        }
    }
    best.map_or(usize::MAX, |(i, _)| i)
}

/// Rows scaled to unit L2 norm (a zero row stays zero).
pub fn normalize_rows(x: &[f32], cols: usize) -> Vec<f32> {
    x.chunks(cols)
        .flat_map(|row| {
            let mut s = 0.0f32;
            for v in row {
                s += v * v;
            }
            let inv = 1.0 / s.sqrt().max(1e-12);
            row.iter().map(move |v| v * inv)
        })
        .collect()
}

/// Cosine similarity of every pair of rows of `x`: [rows × rows].
pub fn cosine_gram(x: &[f32], cols: usize) -> Vec<f32> {
    let xn = normalize_rows(x, cols);
    let rows = x.len() / cols;
    let mut g = vec![0.0f32; rows * rows];
    for i in 0..rows {
        for j in 0..rows {
            let mut s = 0.0f32;
            for c in 0..cols {
                s += xn[i * cols + c] * xn[j * cols + c];
            }
            g[i * rows + j] = s;
        }
    }
    g
}

/// Least-squares slope of ln(value) against position, over the entries where `mask` is set.
/// Values are clamped to 1e-30 before the log. Returns 0 for fewer than two distinct positions.
pub fn log_linear_slope(pos: &[u32], values: &[f32], mask: impl Fn(usize) -> bool) -> f32 {
    let (mut n, mut sp, mut sy) = (0.0f32, 0.0f32, 0.0f32);
    for i in 0..values.len() {
        if mask(i) {
            n += 1.0;
            sp += pos[i] as f32;
            sy += values[i].max(1e-30).ln();
        }
    }
    if n < 2.0 {
        return 0.0;
    }
    let (mp, my) = (sp / n, sy / n);
    let (mut sxy, mut sxx) = (0.0f32, 0.0f32);
    for i in 0..values.len() {
        if mask(i) {
            let dx = pos[i] as f32 - mp;
            sxy += dx * (values[i].max(1e-30).ln() - my);
            sxx += dx * dx;
        }
    }
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

/// Values mapped linearly onto [0, 1] (all zero when they are all equal).
pub fn min_max(v: &[f32]) -> Vec<f32> {
    let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let span = hi - lo;
    v.iter()
        .map(|&x| if span > 0.0 { (x - lo) / span } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_breaks_ties_to_the_lower_index_and_sorts() {
        let s = [0.5, 0.9, 0.5, 0.1, 0.9, 0.5];
        assert_eq!(top_k(&s, 2), vec![1, 4]);
        assert_eq!(top_k(&s, 3), vec![0, 1, 4]);
        assert_eq!(top_k(&s, 4), vec![0, 1, 2, 4]);
        assert_eq!(top_k(&s, 0), Vec::<u32>::new());
        assert_eq!(top_k(&s, 9).len(), 6);
        assert_eq!(argmax(0..6, |i| s[i]), 1);
    }

    #[test]
    fn log_linear_slope_recovers_an_exponential() {
        let pos: Vec<u32> = (0..100).collect();
        let v: Vec<f32> = pos.iter().map(|&p| 2.0 * (0.01 * p as f32).exp()).collect();
        let s = log_linear_slope(&pos, &v, |_| true);
        assert!((s - 0.01).abs() < 1e-5, "{s}");
        assert_eq!(min_max(&[2.0, 4.0, 3.0]), vec![0.0, 1.0, 0.5]);
    }
}
