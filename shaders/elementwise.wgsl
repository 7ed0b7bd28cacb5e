// elementwise.wgsl: one invocation per element, WG_SIZE per workgroup, fold(ceil(n/WG_SIZE)).
//
// Bindings: 0 params {n, ...}
//   add:        1 a f32[n], 2 b f32[n], 3 y f32[n]         y = a + b
//   swiglu:     1 a f32[rows, 2 cols] (gate | up), 3 y f32[rows, cols]
//               y[r, c] = silu(a[r, c]) * a[r, cols + c]
//   gelu:       3 y f32[n]                                  y = gelu_erf(y)      (in place)
//   quick_gelu: 3 y f32[n]                                  y = quick_gelu(y)    (in place)
//   copy_rows:  1 a src, 3 y dst (+ 4 step with STEP_OFFSET)
//               y[(dst_row0 [+ step.kv_offset] + r) * dst_stride + dst_col + c]
//                 = a[(src_row0 + r) * src_stride + c]   for r < rows, c < cols; n = rows * cols
//               Y_TEX (cols, dst_col multiples of 4; no STEP_OFFSET): also into 5 y_tex,
//               rgba32float [dst_stride / 4, rows], y's texture copy; an invocation per texel
#include "common"
#include "activations"

const WG_SIZE: u32 = 64u;

struct Params {
    n: u32,
    cols: u32,
    src_stride: u32,
    src_row0: u32,
    dst_stride: u32,
    dst_row0: u32,
    dst_col: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#ifdef STEP_OFFSET
@group(0) @binding(4) var<uniform> step: Step;
#endif
#ifdef Y_TEX
@group(0) @binding(5) var y_tex: texture_storage_2d<rgba32float, write>;
#endif

fn index(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return linear_wg(wid, nwg) * WG_SIZE + lid;
}

@compute @workgroup_size(WG_SIZE)
fn add(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
       @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(lid, wid, nwg);
    if i < p.n {
        y[i] = a[i] + b[i];
    }
}

@compute @workgroup_size(WG_SIZE)
fn swiglu(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(lid, wid, nwg);
    if i < p.n {
        let g = (i / p.cols) * 2u * p.cols + i % p.cols;
        y[i] = silu(a[g]) * a[g + p.cols];
    }
}

@compute @workgroup_size(WG_SIZE)
fn gelu(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(lid, wid, nwg);
    if i < p.n {
        y[i] = gelu_erf(y[i]);
    }
}

@compute @workgroup_size(WG_SIZE)
fn quick_gelu_inplace(@builtin(local_invocation_index) lid: u32,
                      @builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(lid, wid, nwg);
    if i < p.n {
        y[i] = quick_gelu(y[i]);
    }
}

@compute @workgroup_size(WG_SIZE)
fn copy_rows(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(lid, wid, nwg);
#ifdef Y_TEX
    // texel i: values 4c .. 4c + 3 of row r
    if i >= p.n / 4u {
        return;
    }
    let r = i / (p.cols / 4u);
    let c = i % (p.cols / 4u);
    let src = (p.src_row0 + r) * p.src_stride + 4u * c;
    let to = (p.dst_row0 + r) * p.dst_stride + p.dst_col + 4u * c;
    let t = vec4<f32>(a[src], a[src + 1u], a[src + 2u], a[src + 3u]);
    y[to] = t.x;
    y[to + 1u] = t.y;
    y[to + 2u] = t.z;
    y[to + 3u] = t.w;
    textureStore(y_tex, vec2<u32>(p.dst_col / 4u + c, p.dst_row0 + r), t);
#else
    if i >= p.n {
        return;
    }
    let r = i / p.cols;
    let c = i % p.cols;
    var row = p.dst_row0 + r;
#ifdef STEP_OFFSET
    row += step.kv_offset;
#endif
    y[row * p.dst_stride + p.dst_col + c] = a[(p.src_row0 + r) * p.src_stride + c];
#endif
}
