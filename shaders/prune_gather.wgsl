// prune_gather.wgsl: move the kept tokens' rows into compact buffers on the GPU.
//
// gather_rows: out[i] = src[row0 + keep[i]] for i < rows (encoder side: the kept patches
//   before the projector, or the kept projector rows).
//   Bindings: 0 params, 1 keep u32 [rows], 2 src f32 [*, src_stride], 3 out f32 [rows, cols]
//   One invocation per output value, grid folded (gpu::fold_workgroups). Dispatch
//   fold(ceil(rows * cols / WG)).
// splice_rows: the decoder's sequence after pruning at layer K: text before the image
//   (rows < slot), the kept visual rows, the text after. Also writes each new row's position
//   id (its row before pruning: kept tokens keep their positions).
//   Bindings: 0 params, 1 keep u32 [kept], 2 src f32 [n, cols], 3 out f32 [rows, cols],
//             4 positions u32 [rows] (out). Same geometry as gather_rows.
// merge_rows: VisionZip: out[i] = src[row0 + keep[i]] + mean of the rows j with
//   assign[j] == i (rows row0 + j). members[n + i] counts them (prune_select.wgsl's
//   visionzip writes it): rows with none (the dominant tokens) skip the scan of assign.
//   Bindings: 0 params, 1 keep, 2 src, 3 out, 5 assign u32 [n], 8 members u32 [n + rows].
//   Same geometry.
// compose: out_idx[i] = base[keep[i]] (raster positions of the survivors of two stages).
//   Bindings: 0 params, 1 keep, 6 base u32, 7 out_idx u32 [rows]. Dispatch (ceil(rows/WG)).
#include "common"

const WG: u32 = 64u;

struct Params {
    rows: u32,
    cols: u32,
    src_stride: u32,
    row0: u32,
    slot: u32,
    kept: u32,
    n_vis: u32,
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> keep: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> positions: array<u32>;
@group(0) @binding(5) var<storage, read> assign: array<u32>;
@group(0) @binding(6) var<storage, read> base: array<u32>;
@group(0) @binding(7) var<storage, read_write> out_idx: array<u32>;
@group(0) @binding(8) var<storage, read> members: array<u32>;

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return linear_wg(wid, nwg) * WG + lid;
}

@compute @workgroup_size(WG)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let e = flat_index(wid, nwg, lid);
    if e >= p.rows * p.cols {
        return;
    }
    let i = e / p.cols;
    let c = e % p.cols;
    out[e] = src[(p.row0 + keep[i]) * p.src_stride + c];
}

@compute @workgroup_size(WG)
fn splice_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let e = flat_index(wid, nwg, lid);
    if e >= p.rows * p.cols {
        return;
    }
    let i = e / p.cols;
    let c = e % p.cols;
    var from_row = i;
    if i >= p.slot + p.kept {
        from_row = i - p.kept + p.n_vis;
    } else if i >= p.slot {
        from_row = p.slot + keep[i - p.slot];
    }
    out[e] = src[from_row * p.src_stride + c];
    if c == 0u {
        positions[i] = from_row;
    }
}

@compute @workgroup_size(WG)
fn merge_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let e = flat_index(wid, nwg, lid);
    if e >= p.rows * p.cols {
        return;
    }
    let i = e / p.cols;
    let c = e % p.cols;
    let count = members[p.n + i];
    var s = 0.0;
    if count > 0u {
        for (var j = 0u; j < p.n; j++) {
            if assign[j] == i {
                s += src[(p.row0 + j) * p.src_stride + c];
            }
        }
    }
    var mean = 0.0;
    if count > 0u {
        mean = s / f32(count);
    }
    out[e] = src[(p.row0 + keep[i]) * p.src_stride + c] + mean;
}

@compute @workgroup_size(WG)
fn compose(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i < p.rows {
        out_idx[i] = base[keep[i]];
    }
}
