// rope.wgsl: rotary position embedding, rotate-half layout (HF Llama), in place.
// For each row r, head h and i < hd/2, with (c, s) = table[positions[r]]:
//   x1 = x[r, h, i], x2 = x[r, h, i + hd/2]
//   x[r, h, i] = x1 c - x2 s,   x[r, h, i + hd/2] = x2 c + x1 s
//
// Bindings: 0 params
//           1 x          f32 [rows, row_stride], heads * hd columns rotated
//           2 positions  u32 [rows]    position id of each row (kept tokens keep theirs)
//           3 table      f32 [max_pos, hd]: cos of the hd/2 frequencies, then their sin
// Dispatch: one invocation per (row, head, i), WG_SIZE per workgroup, fold.
#include "common"

const WG_SIZE: u32 = 64u;

struct Params {
    rows: u32,
    heads: u32,
    hd: u32,
    row_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn rope(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let half = p.hd / 2u;
    let idx = linear_wg(wid, nwg) * WG_SIZE + lid;
    if idx >= p.rows * p.heads * half {
        return;
    }
    let i = idx % half;
    let h = (idx / half) % p.heads;
    let r = idx / (half * p.heads);
    let pos = positions[r];
    let c = table[pos * p.hd + i];
    let s = table[pos * p.hd + half + i];
    let base = r * p.row_stride + h * p.hd;
    let x1 = x[base + i];
    let x2 = x[base + half + i];
    x[base + i] = x1 * c - x2 * s;
    x[base + half + i] = x2 * c + x1 * s;
}
