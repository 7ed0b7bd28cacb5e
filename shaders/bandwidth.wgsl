// bandwidth.wgsl: the device's copy bandwidth, the yardstick for decode's effective
// bandwidth in `vlm-run bench`.
//
// copy: dst[i] = src[i] for i < n, 16 bytes per element, grid-stride.
//   Bindings: 0 params {n}, 1 src vec4<u32> [n], 2 dst vec4<u32> [n]
//   Dispatch (workgroups, 1, 1) of 64 invocations.
struct Params {
    n: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 64u;
    for (var i = gid.x; i < p.n; i += stride) {
        dst[i] = src[i];
    }
}
