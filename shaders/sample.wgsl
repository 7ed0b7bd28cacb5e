// sample.wgsl: choose the next token on the GPU; only its id (4 bytes) goes to the CPU.
//
// Bindings: 0 params {n, temperature, top_p}
//           1 logits f32 [n]
//           2 token  u32 [1]  (read by the next step's embed_gather)
//           3 step   (sample only: step.rand, uniform in [0, 1))
// argmax: greedy; ties go to the lower index.
// sample: softmax(logits / temperature), restricted to the smallest set of most likely
//   tokens whose mass reaches top_p (a threshold found by bisection on the probability),
//   then inverse-CDF sampling in index order with step.rand.
// Dispatch: (1, 1, 1), one workgroup of WG_SIZE.
#include "common"
#include "reduce"

const WG_SIZE: u32 = 256u;

struct Params {
    n: u32,
    temperature: f32,
    top_p: f32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> token: array<u32>;
@group(0) @binding(3) var<uniform> step: Step;

var<workgroup> best_v: array<f32, WG_SIZE>;
var<workgroup> best_i: array<u32, WG_SIZE>;
var<workgroup> chunk_mass: array<f32, WG_SIZE>;

@compute @workgroup_size(WG_SIZE)
fn argmax(@builtin(local_invocation_index) lid: u32) {
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = lid; i < p.n; i += WG_SIZE) {
        let v = logits[i];
        if v > bv || bi == 0xffffffffu {
            bv = v;
            bi = i;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let ov = best_v[lid + s];
            let oi = best_i[lid + s];
            if ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid]) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        token[0] = best_i[0];
    }
}

@compute @workgroup_size(WG_SIZE)
fn sample(ids: Ids) {
    let lane = lane_of(ids);
    let lid = ids.lid;
    let inv_t = 1.0 / p.temperature;
    var m = -3.4e38;
    for (var i = lid; i < p.n; i += WG_SIZE) {
        m = max(m, logits[i]);
    }
    m = wg_max(m, lane);
    // Probabilities relative to the most likely token: prob(i) = exp((l_i - m) / T) in (0, 1].
    var z = 0.0;
    for (var i = lid; i < p.n; i += WG_SIZE) {
        z += exp((logits[i] - m) * inv_t);
    }
    z = wg_sum(z, lane);
    // Largest threshold t with mass(prob >= t) >= top_p * z.
    var lo = 0.0;
    if p.top_p < 1.0 {
        var hi = 1.0;
        let target_mass = p.top_p * z;
        for (var it = 0u; it < 32u; it++) {
            let mid = 0.5 * (lo + hi);
            var mass = 0.0;
            for (var i = lid; i < p.n; i += WG_SIZE) {
                let q = exp((logits[i] - m) * inv_t);
                if q >= mid {
                    mass += q;
                }
            }
            mass = wg_sum(mass, lane);
            if mass >= target_mass {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    // Each invocation owns a contiguous chunk of the vocabulary.
    let chunk = (p.n + WG_SIZE - 1u) / WG_SIZE;
    let start = lid * chunk;
    let end = min(start + chunk, p.n);
    var mine = 0.0;
    for (var i = start; i < end; i++) {
        let q = exp((logits[i] - m) * inv_t);
        if q >= lo {
            mine += q;
        }
    }
    chunk_mass[lid] = mine;
    workgroupBarrier();
    if lid == 0u {
        var total = 0.0;
        for (var c = 0u; c < WG_SIZE; c++) {
            total += chunk_mass[c];
        }
        let goal = step.rand * total;
        var acc = 0.0;
        var chosen = 0xffffffffu;
        var last = 0u;
        for (var c = 0u; c < WG_SIZE && chosen == 0xffffffffu; c++) {
            if acc + chunk_mass[c] > goal {
                // The token lies in chunk c: walk it.
                let s0 = c * chunk;
                let e0 = min(s0 + chunk, p.n);
                for (var i = s0; i < e0; i++) {
                    let q = exp((logits[i] - m) * inv_t);
                    if q >= lo {
                        acc += q;
                        last = i;
                        if acc > goal {
                            chosen = i;
                            break;
                        }
                    }
                }
                if chosen == 0xffffffffu {
                    chosen = last;
                }
            } else {
                acc += chunk_mass[c];
                if chunk_mass[c] > 0.0 {
                    last = min(c * chunk + chunk, p.n) - 1u;
                }
            }
        }
        if chosen == 0xffffffffu {
            chosen = last;
        }
        token[0] = chosen;
    }
}
