// embed.wgsl: getting tokens and patches into the residual stream.
//
// embed_gather: out[t, c] = table[ids[t] - row0, c] for ids in this chunk's rows
//               [row0, row0 + rows) (big tables are split into chunks, one dispatch each).
//   Bindings: 0 params, 1 ids u32 [n], 2 table W4 [rows, d4 / 4] (WTEX: in a texture,
//             weight_texture.wgsl), 3 out f32 [n, d]
//   One invocation per (t, c), WG_SIZE per workgroup, fold.
// im2col: the patch-embedding convolution as a GEMM input. Patch n of a grid x grid layout,
//   column (ch, ky, kx) in the conv weight's order.
//   Bindings: 0 params, 4 pixels f32 [3, img, img], 3 out f32 [grid * grid, 3 * patch * patch]
//   One invocation per (n, ch, ky): a pixel row of `patch` values (the index arithmetic,
//   integer divisions, is paid once per row, not per value). WG_SIZE per workgroup, fold.
//   OUT_TEX (even patch and image sizes): 7 out_tex rgba32float [3 * patch * patch / 4, n],
//   out's texture copy (gpu::Tensor::texels), written with out. An invocation then takes
//   two pixel rows (ky, ky + 1), whose 2 * patch values are patch / 2 whole texels, loaded
//   in pairs and stored in fours (lavapipe loads and stores a storage buffer lane by lane:
//   fewer, wider accesses; 0.61 -> 0.52 ms on the tiny fixtures' 576 patches).
// clip_embed: out[0] = cls + pos[0]; out[1 + i] = patches[i] + pos[1 + i].
//   Bindings: 0 params, 4 patches f32 [n, d], 5 cls f32 [d], 6 pos f32 [n + 1, d], 3 out
#include "common"

const WG_SIZE: u32 = 64u;

struct Params {
    n: u32,
    d: u32,
    d4: u32,
    row0: u32,
    rows: u32,
    grid: u32,
    patch_size: u32,
    img: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
#ifdef WTEX
#include "weight_texture"
fn w_w4(i: u32) -> vec4<f32> { return weight_texel_w4(i); }
#else
@group(0) @binding(2) var<storage, read> table: array<W4>;
fn w_w4(i: u32) -> vec4<f32> { return w4(table[i]); }
#endif
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> src: array<f32>;
@group(0) @binding(5) var<storage, read> cls: array<f32>;
@group(0) @binding(6) var<storage, read> pos: array<f32>;
#ifdef OUT_TEX
@group(0) @binding(7) var out_tex: texture_storage_2d<rgba32float, write>;
// im2col's views of out and src in 16- and 8-byte units (no other entry uses them)
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> src2: array<vec2<f32>>;
#endif

fn index(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return linear_wg(wid, nwg) * WG_SIZE + lid;
}

@compute @workgroup_size(WG_SIZE)
fn embed_gather(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(lid, wid, nwg);
    if i >= p.n * p.d {
        return;
    }
    let t = i / p.d;
    let c = i % p.d;
    let id = ids[t];
    if id < p.row0 || id >= p.row0 + p.rows {
        return;
    }
    let e = (id - p.row0) * p.d4 + c;
    out[i] = w_w4(e / 4u)[e % 4u];
}

@compute @workgroup_size(WG_SIZE)
fn im2col(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let ps = p.patch_size;
#ifdef OUT_TEX
    let rows = 2u; // pixel rows per invocation
#else
    let rows = 1u;
#endif
    let i = index(lid, wid, nwg) * rows;
    if i >= p.grid * p.grid * 3u * ps {
        return;
    }
    let n = i / (3u * ps);
    let ch = (i / ps) % 3u;
    let ky = i % ps;
    let py = n / p.grid;
    let px = n % p.grid;
    let at = ch * p.img * p.img + (py * ps + ky) * p.img + px * ps;
    let to = i * ps; // = n * 3 * ps * ps + (ch * ps + ky) * ps
#ifdef OUT_TEX
    // values 0 .. ps of pixel row ky, then ps .. 2 ps of row ky + 1, as ps pairs: ps and
    // img even, so `at`, `to` / 4 and every pair are whole units (ky is even too)
    let half = ps / 2u;
    let a2 = at / 2u;
    let c0 = (to - n * 3u * ps * ps) / 4u;
    for (var c = 0u; c < half; c++) {
        let q0 = 2u * c;
        let q1 = q0 + 1u;
        let lo = src2[select(a2 + q0, a2 + p.img / 2u + q0 - half, q0 >= half)];
        let hi = src2[select(a2 + q1, a2 + p.img / 2u + q1 - half, q1 >= half)];
        let t = vec4<f32>(lo, hi);
        out4[to / 4u + c] = t;
        textureStore(out_tex, vec2<u32>(c0 + c, n), t);
    }
#else
    for (var kx = 0u; kx < ps; kx++) {
        out[to + kx] = src[at + kx];
    }
#endif
}

@compute @workgroup_size(WG_SIZE)
fn clip_embed(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(lid, wid, nwg);
    if i >= (p.n + 1u) * p.d {
        return;
    }
    let t = i / p.d;
    let c = i % p.d;
    if t == 0u {
        out[i] = cls[c] + pos[c];
    } else {
        out[i] = src[(t - 1u) * p.d + c] + pos[i];
    }
}
