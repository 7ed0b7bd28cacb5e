// prune_select.wgsl: the selection passes of visual-token pruning. Each runs as ONE
// workgroup (dispatch (1, 1, 1)) of WG invocations (256, or SELECT_WG, a value: 8 on CPU
// devices): n is at most a few thousand, and a single workgroup keeps the greedy
// loops free of cross-workgroup synchronisation. Ranking rule
// everywhere: larger score first, ties to the lower index. Kept indices come out sorted.
//
// Bindings (each entry uses a subset):
//   0 params (read-only storage, not uniform: see below), 1 scores f32 [n], 2 gram f32 [n, n],
//   3 keep u32 [k] (out),
//   4 work f32 [n] (scratch, or reweighted scores out), 5 flags u32 [2n] (scratch),
//   6 budget u32 [r*r] (ARP region budgets), 7 raster u32 [n] (raster position of each
//   candidate), 8 aux f32 [N] (PoRe: padding mask by raster position; PBC: bias profile),
//   9 assign u32 [n] (VisionZip: slot of the tgt a token merges into, or NONE).
//
// top_k      1 -> 3 (5): keep the k best scores. REGIONS: the best within each ARP region,
//            budget[region] of them instead of k (6).
// arp_budget 1 -> 6: ARP's integer region budgets (one invocation; see src/prune/arp.rs).
// reweight   1, 7, 8 -> 4: PORE: s = rho^p * mask[p] * a (rho <= 0: fitted);
//            PBC: r / profile[p] (has_profile) or r * e^(-slope p) (fitted), then min-max.
//            One invocation, serial, in the CPU reference's order.
// mmr        1, 2 -> 3 (4, 5): maximal marginal relevance, k picks.
// max_min    1, 2 -> 3 (4, 5): DivPrune's greedy max-min diversity, k picks; 1 holds each
//            token's smallest distance to another (prune_score.wgsl's row_min_distance).
//            MAXMIN_SLOTS (a value >= ceil(n / WG)): the running distances in registers.
// visionzip  1, 2 -> 3, 9 (5): dominant + contextual selection and merge assignment;
//            then flags[n + slot] = how many tokens merge into kept slot (slot < k).
//            KEY_ROWS: 2 holds the unit-norm key rows [n, cols] instead of their Gram
//            matrix, and the similarities to the few targets are computed here (each
//            summed over the columns in order, as prune_score.wgsl's gram does).

// Why the parameters are a storage buffer: lavapipe (Mesa 22.3) substitutes the values of
// uniforms that bound a loop into the shader and compiles it again, at every dispatch.
// Measured on reweight alone: a bound of 3 to 32 cost ~1 ms per trip per dispatch (perf:
// the time in the driver, none in the kernel), 2 or 33 and more 0.05 ms. These serial
// loops run over n or k, often 32 or fewer: PosPrune at B=16 on weights/tiny-llava-vqa
// (23 tokens, 15 picks) spent 22 ms in reweight and 5 in mmr (`VLM_RUN_PROFILE`), 0.09
// and 0.1 from storage; VisionZip's stage on tests/fixtures/tiny-llava-32l took 3.1 ms
// against 1.6. The loops that run after barriers read them from registers (`let n = p.n`).

#ifndef SELECT_WG
const WG: u32 = 256u;
#else
const WG: u32 = SELECT_WG;
#endif
const NONE: u32 = 0xffffffffu;
const MAX_REGIONS: u32 = 64u;
const FIXED_ONE: f32 = 524288.0;

struct Params {
    n: u32,
    k: u32,
    grid: u32,
    regions: u32,
    floor_count: u32,
    dominant: u32,
    contextual: u32,
    has_profile: u32,
    lambda: f32,
    rho: f32,
    cols: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> p: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read> gram: array<f32>;
@group(0) @binding(3) var<storage, read_write> keep: array<u32>;
@group(0) @binding(4) var<storage, read_write> work: array<f32>;
@group(0) @binding(5) var<storage, read_write> flags: array<u32>;
@group(0) @binding(6) var<storage, read_write> budget: array<u32>;
@group(0) @binding(7) var<storage, read> raster: array<u32>;
@group(0) @binding(8) var<storage, read> aux: array<f32>;
@group(0) @binding(9) var<storage, read_write> assign: array<u32>;

var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

fn before(a: f32, i: u32, b: f32, j: u32) -> bool {
    return j == NONE || a > b || (a == b && i < j);
}

fn region_of(q: u32) -> u32 {
    let row = q / p.grid;
    let col = q % p.grid;
    return (row * p.regions / p.grid) * p.regions + col * p.regions / p.grid;
}

fn barrier_all() {
    storageBarrier();
    workgroupBarrier();
}

// keep[slot] = i for every i with flags[i] == 1, slot = number of flagged j < i: one
// invocation's serial pass, O(n) loads where a count per flagged token would be O(n^2).
fn compact(lid: u32) {
    if lid == 0u {
        var slot = 0u;
        for (var i = 0u; i < p.n; i++) {
            if flags[i] == 1u {
                keep[slot] = i;
                slot++;
            }
        }
    }
}

// Workgroup argmax of each invocation's (v, i) candidate; every invocation gets the winner.
fn wg_argmax(lid: u32, v: f32, i: u32) -> u32 {
    best_v[lid] = v;
    best_i[lid] = i;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            let j = best_i[lid + stride];
            if j != NONE && before(best_v[lid + stride], j, best_v[lid], best_i[lid]) {
                best_v[lid] = best_v[lid + stride];
                best_i[lid] = j;
            }
        }
        workgroupBarrier();
    }
    let w = best_i[0];
    workgroupBarrier();
    return w;
}

// A key that orders as the score does (larger score, larger key; -0 as +0, which compare
// equal).
fn order_key(v: f32) -> u32 {
    let b = select(bitcast<u32>(v), 0u, v == 0.0);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Group of token i for the best-first selection: its ARP region (REGIONS) or 0.
fn group_of(i: u32) -> u32 {
#ifdef REGIONS
    return region_of(i);
#else
    return 0u;
#endif
}

// How many tokens group g keeps: budget[g] (REGIONS) or `k`.
fn group_limit(g: u32, k: u32) -> u32 {
#ifdef REGIONS
    return budget[g];
#else
    return k;
#endif
}

// Radix of select_best's key search: 4-bit digits, 8 passes over the scores.
const DIGITS: u32 = 16u;

var<workgroup> group_key: array<u32, MAX_REGIONS>;
// keys of group g above its key so far in the digits already fixed
var<workgroup> group_above: array<u32, MAX_REGIONS>;
var<workgroup> digit_count: array<atomic<u32>, MAX_REGIONS * DIGITS>;

// flags[at + i] = 1 for the best group_limit(g, k) scores of each group g (ranking rule
// above), else 0. Rather than count each token's rank (O(n^2)), the key of each group's
// last kept score (the largest key that at least the limit of keys reach) is found a 4-bit
// digit at a time, from the top: each pass counts, per digit, the keys that share the digits
// fixed so far, and keeps the largest digit that the limit of keys still reach (8 parallel
// passes, O(8 n); bit by bit it took 32). Then one serial pass keeps the keys above it and,
// of those equal to it, the first in index order.
fn select_best(lid: u32, k: u32, at: u32) {
#ifdef REGIONS
    let groups = p.regions * p.regions;
#else
    let groups = 1u;
#endif
    for (var g = lid; g < groups; g += WG) {
        group_key[g] = 0u;
        group_above[g] = 0u;
    }
    workgroupBarrier();
    for (var digit = 8u; digit > 0u; digit--) {
        let shift = 4u * (digit - 1u);
        for (var c = lid; c < groups * DIGITS; c += WG) {
            atomicStore(&digit_count[c], 0u);
        }
        workgroupBarrier();
        for (var i = lid; i < p.n; i += WG) {
            let g = group_of(i);
            let key = order_key(scores[i]);
            // the digits above this one match those fixed so far (none in the first pass)
            let higher = select(0u, (key ^ group_key[g]) >> (shift + 4u), shift < 28u);
            if higher == 0u {
                atomicAdd(&digit_count[g * DIGITS + ((key >> shift) & 15u)], 1u);
            }
        }
        workgroupBarrier();
        for (var g = lid; g < groups; g += WG) {
            let limit = group_limit(g, k);
            var reach = group_above[g];
            var d = DIGITS;
            loop {
                d--;
                let c = atomicLoad(&digit_count[g * DIGITS + d]);
                if reach + c >= limit || d == 0u {
                    // a group past its limit's reach ends at digit 0 (key 0)
                    if reach + c >= limit {
                        group_key[g] |= d << shift;
                    }
                    break;
                }
                reach += c;
            }
            group_above[g] = reach;
        }
        workgroupBarrier();
    }
    // group_key[g] is the key of group g's last kept score (all ones for a limit of 0; 0,
    // below every score's key, for a limit past the group's size), and group_above[g] the
    // number of its keys above that
    if lid == 0u {
        var above: array<u32, MAX_REGIONS>;
        for (var g = 0u; g < groups; g++) {
            above[g] = group_above[g];
        }
        for (var i = 0u; i < p.n; i++) {
            let g = group_of(i);
            let key = order_key(scores[i]);
            var keep_it = key > group_key[g];
            if key == group_key[g] && above[g] < group_limit(g, k) {
                keep_it = true;
                above[g] += 1u;
            }
            flags[at + i] = select(0u, 1u, keep_it);
        }
    }
}

@compute @workgroup_size(WG)
fn top_k(@builtin(local_invocation_index) lid: u32) {
    select_best(lid, p.k, 0u);
    barrier_all();
    compact(lid);
}

@compute @workgroup_size(1)
fn arp_budget() {
    let regions = p.regions * p.regions;
    var size: array<u32, MAX_REGIONS>;
    var sum: array<u32, MAX_REGIONS>;
    var w: array<u32, MAX_REGIONS>;
    var alloc: array<u32, MAX_REGIONS>;
    var frac: array<u32, MAX_REGIONS>;
    var visited: array<bool, MAX_REGIONS>;
    for (var q = 0u; q < p.n; q++) {
        let k = region_of(q);
        size[k] += 1u;
        sum[k] += u32(clamp(scores[q], 0.0, 1.0) * FIXED_ONE);
    }
    var used = 0u;
    for (var k = 0u; k < regions; k++) {
        w[k] = select(0u, sum[k] / max(size[k], 1u), size[k] > 0u);
        alloc[k] = min(size[k], p.floor_count);
        used += alloc[k];
    }
    var rem = p.k - used;
    loop {
        if rem == 0u {
            break;
        }
        var total = 0u;
        var n_open = 0u;
        for (var k = 0u; k < regions; k++) {
            if alloc[k] < size[k] {
                total += w[k];
                n_open++;
            }
        }
        if n_open == 0u {
            break;
        }
        let uniform_w = total == 0u;
        if uniform_w {
            total = n_open;
        }
        var given = 0u;
        var open: array<bool, MAX_REGIONS>;
        for (var k = 0u; k < regions; k++) {
            open[k] = alloc[k] < size[k];
            visited[k] = false;
            if open[k] {
                let q = rem * select(w[k], 1u, uniform_w);
                let give = min(q / total, size[k] - alloc[k]);
                alloc[k] += give;
                given += give;
                frac[k] = q % total;
            }
        }
        var left = rem - given;
        loop {
            if left == 0u {
                break;
            }
            var best = NONE;
            for (var k = 0u; k < regions; k++) {
                if open[k] && !visited[k] && alloc[k] < size[k] && (best == NONE || frac[k] > frac[best]) {
                    best = k;
                }
            }
            if best == NONE {
                break;
            }
            visited[best] = true;
            alloc[best] += 1u;
            left -= 1u;
        }
        rem = left;
    }
    for (var k = 0u; k < regions; k++) {
        budget[k] = alloc[k];
    }
}

// Least-squares slope of ln(max(v, 1e-30)) over raster positions, where use(i).
fn log_slope(masked: bool) -> f32 {
    var n = 0.0;
    var sp = 0.0;
    var sy = 0.0;
    for (var i = 0u; i < p.n; i++) {
        if !masked || aux[raster[i]] > 0.0 {
            n += 1.0;
            sp += f32(raster[i]);
            sy += log(max(scores[i], 1e-30));
        }
    }
    if n < 2.0 {
        return 0.0;
    }
    let mp = sp / n;
    let my = sy / n;
    var sxy = 0.0;
    var sxx = 0.0;
    for (var i = 0u; i < p.n; i++) {
        if !masked || aux[raster[i]] > 0.0 {
            let dx = f32(raster[i]) - mp;
            sxy += dx * (log(max(scores[i], 1e-30)) - my);
            sxx += dx * dx;
        }
    }
    return select(0.0, sxy / sxx, sxx > 0.0);
}

@compute @workgroup_size(1)
fn reweight() {
#ifdef PORE
    var rho = p.rho;
    if rho <= 0.0 {
        rho = exp(-log_slope(true));
    }
    for (var i = 0u; i < p.n; i++) {
        work[i] = pow(rho, f32(raster[i])) * aux[raster[i]] * scores[i];
    }
#else
    var slope = 0.0;
    if p.has_profile == 0u {
        slope = log_slope(false);
    }
    var lo = 3.0e38;
    var hi = -3.0e38;
    for (var i = 0u; i < p.n; i++) {
        var v: f32;
        if p.has_profile != 0u {
            v = scores[i] / max(aux[raster[i]], 1e-30);
        } else {
            v = scores[i] * exp(-slope * f32(raster[i]));
        }
        work[i] = v;
        lo = min(lo, v);
        hi = max(hi, v);
    }
    let span = hi - lo;
    for (var i = 0u; i < p.n; i++) {
        work[i] = select(0.0, (work[i] - lo) / span, span > 0.0);
    }
#endif
}

@compute @workgroup_size(WG)
fn mmr(@builtin(local_invocation_index) lid: u32) {
    // the parameters in registers: a storage load in the loops is redone after each barrier
    let n = p.n;
    let lambda = p.lambda;
    for (var i = lid; i < n; i += WG) {
        flags[i] = 0u;
        work[i] = -3.0e38;
    }
    barrier_all();
    for (var step = 0u; step < min(p.k, n); step++) {
        var bv = 0.0;
        var bi = NONE;
        for (var j = lid; j < n; j += WG) {
            if flags[j] == 0u {
                var v = scores[j];
                if step > 0u {
                    v = lambda * scores[j] - (1.0 - lambda) * work[j];
                }
                if before(v, j, bv, bi) {
                    bv = v;
                    bi = j;
                }
            }
        }
        let pick = wg_argmax(lid, bv, bi);
        for (var j = lid; j < n; j += WG) {
            work[j] = max(work[j], gram[pick * n + j]);
        }
        if lid == 0u {
            flags[pick] = 1u;
        }
        barrier_all();
    }
    compact(lid);
}

// max_min's mark of a picked token in work (a distance is never below -2).
const PICKED: f32 = -3.0e38;

// max_min's distances: token j = t * WG + lid at slot t of its invocation. MAXMIN_SLOTS (a
// value, at least ceil(n / WG)): in a private array, which lavapipe keeps as one vector per
// slot, where a storage buffer at per-lane addresses is a gather and a scatter per step;
// copied to work at the end.
#ifdef MAXMIN_SLOTS
var<private> work_slots: array<f32, MAXMIN_SLOTS>;
fn work_get(t: u32, j: u32) -> f32 {
    return work_slots[t];
}
fn work_set(t: u32, j: u32, v: f32) {
    work_slots[t] = v;
}
#else
fn work_get(t: u32, j: u32) -> f32 {
    return work[j];
}
fn work_set(t: u32, j: u32, v: f32) {
    work[j] = v;
}
#endif

@compute @workgroup_size(WG)
fn max_min(@builtin(local_invocation_index) lid: u32) {
    // the parameters in registers: a storage load in the loops is redone after each barrier
    let n = p.n;
    let k = min(p.k, n);
    // The first pick: the largest of the row minima (prune_score.wgsl's row_min_distance,
    // in scores). Each invocation keeps to the same tokens j throughout, so work needs no
    // barrier between the steps.
    var bv = 0.0;
    var bi = NONE;
    for (var t = 0u; t * WG + lid < n; t++) {
        let j = t * WG + lid;
        flags[j] = 0u;
        work_set(t, j, 3.0e38);
        let v = scores[j];
        if before(v, j, bv, bi) {
            bv = v;
            bi = j;
        }
    }
    if k > 0u {
        var pick = wg_argmax(lid, bv, bi);
        for (var step = 1u; step < k; step++) {
            if lid == 0u {
                flags[pick] = 1u;
            }
            // one pass: each token's distance to the picks so far, and the next pick
            bv = 0.0;
            bi = NONE;
            for (var t = 0u; t * WG + lid < n; t++) {
                let j = t * WG + lid;
                var w = min(work_get(t, j), 1.0 - gram[pick * n + j]);
                if j == pick {
                    w = PICKED;
                }
                work_set(t, j, w);
                if w != PICKED && before(w, j, bv, bi) {
                    bv = w;
                    bi = j;
                }
            }
            pick = wg_argmax(lid, bv, bi);
        }
        if lid == 0u {
            flags[pick] = 1u;
        }
    }
#ifdef MAXMIN_SLOTS
    for (var t = 0u; t * WG + lid < n; t++) {
        work[t * WG + lid] = work_slots[t];
    }
#endif
    barrier_all();
    compact(lid);
}

// VisionZip's similarity of token j to target t.
fn key_similarity(j: u32, t: u32) -> f32 {
#ifdef KEY_ROWS
    var s = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        s += gram[j * p.cols + c] * gram[t * p.cols + c];
    }
    return s;
#else
    return gram[j * p.n + t];
#endif
}

@compute @workgroup_size(WG)
fn visionzip(@builtin(local_invocation_index) lid: u32) {
    let n = p.n;
    // 1. Dominant tokens: the best by CLS attention.
    select_best(lid, p.dominant, n);
    barrier_all();
    // 2. One serial pass (a prefix over the tokens, O(n), where a parallel count would be
    //    O(n^2)): contextual targets are every stride-th of the remaining tokens in raster
    //    order; kept tokens (dominant or target) take their slots in keep, sorted; the
    //    targets' slots are listed in flags[n ..] (c <= k <= n entries).
    let rest = n - p.dominant;
    let stride = max(1u, rest / max(p.contextual, 1u));
    if lid == 0u {
        var r = 0u;
        var slot = 0u;
        var targets = 0u;
        for (var i = 0u; i < n; i++) {
            var kept = flags[n + i];
            if kept == 0u {
                if r % stride == 0u && r / stride < p.contextual {
                    kept = 2u;
                }
                r++;
            }
            flags[i] = kept; // 0 merged, 1 dominant, 2 tgt
            if kept != 0u {
                keep[slot] = i;
                if kept == 2u {
                    flags[n + targets] = slot;
                    targets++;
                }
                slot++;
            }
        }
    }
    barrier_all();
    // 3. Merge assignment: the most similar tgt (ties to the lower index), as its slot among
    //    the kept tokens. The targets come in raster order, so `before` keeps the first of
    //    equal similarities.
    let targets = min(p.contextual, (rest + stride - 1u) / stride);
    for (var j = lid; j < n; j += WG) {
        var tgt = NONE;
        var slot = NONE;
        if flags[j] == 0u {
            var bv = 0.0;
            for (var c = 0u; c < targets; c++) {
                let s = flags[n + c];
                let t = keep[s];
                let g = key_similarity(j, t);
                if before(g, t, bv, tgt) {
                    bv = g;
                    tgt = t;
                    slot = s;
                }
            }
        }
        assign[j] = slot;
    }
    barrier_all();
    // 4. Members per kept slot, in flags[n + slot] (merge_rows skips the slots with none:
    //    the dominant tokens).
    if lid == 0u {
        for (var s = 0u; s < p.k; s++) {
            flags[n + s] = 0u;
        }
        for (var j = 0u; j < n; j++) {
            let a = assign[j];
            if a != NONE {
                flags[n + a] += 1u;
            }
        }
    }
}
