//! Every kernel against a CPU reference, over odd shapes (not multiples of any tile), in
//! every (f16, subgroups) variant the adapter offers. Weights are f16 on the GPU, so the
//! references use the same f16-rounded weights; the tolerances cover f32 summation order.

#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

mod common;
use common::*;
use vlm_run::gpu::{GemmTile, Gpu, GpuOptions, Step, Tensor, Weight, MIN_TEXTURE_BYTES};
use vlm_run::ops::attention::{DecodeKv, Heads, KvTextures, PrefillKv};
use vlm_run::ops::matmul::{by_token, lane_min_k};
use vlm_run::ops::{self, matmul::Act};

fn cpu_linear(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for t in 0..k {
                s += x[i * k + t] as f64 * w[j * k + t] as f64;
            }
            y[i * n + j] = s as f32 + bias.map_or(0.0, |b| b[j]);
        }
    }
    y
}

fn gelu(x: f32) -> f32 {
    // erf by a high-order series/continued fraction is overkill here: use libm-free erf via f64.
    0.5 * x * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2) as f32)
}

fn erf(x: f64) -> f64 {
    // Taylor series for |x| < 3, asymptotic 1 beyond (ample for the test's range).
    if x.abs() > 5.0 {
        return x.signum();
    }
    let mut sum = 0.0;
    let mut term = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 || n < 5.0 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
        if n > 200.0 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn step_buffer(gpu: &Gpu, step: Step) -> wgpu::Buffer {
    gpu.uniform_init("step", bytemuck::bytes_of(&step))
}

/// The entry point `linear` must pick: the decode GEMV for one row, the lane kernels where
/// the tile asks for them and they read the format (an invocation per input row for short
/// f16 rows), else the workgroup-memory tile.
fn expected_entry(tile: GemmTile, m: usize, w: &Weight) -> &'static str {
    match (m, tile) {
        (1, _) => "gemv",
        (_, GemmTile::Lanes) if ops::matmul::gemv_reads(w) && w.cols >= lane_min_k(w.ty) => {
            if by_token(m, w) {
                "gemm_tokens"
            } else {
                "gemm_lanes"
            }
        }
        _ => "gemm",
    }
}

/// The decode GEMV over rows that end inside their last group of 32 (k = 100): its groups
/// run past k, so x's loads there are guarded (gemv.wgsl without K_WHOLE). x is a wider
/// tensor whose columns past k hold NaN: a load that escaped the guard would meet a
/// zero-padded weight and turn the sum into NaN.
#[test]
fn decode_gemv_reads_nothing_of_x_past_k() {
    let mut rng = Rng::new(5);
    let (k, n, wide) = (100, 67, 128);
    for (name, gpu) in variants() {
        let w16 = to_f16_bits(&rng.vec(n * k, 0.5));
        let w = from_f16_bits(&w16);
        let mut x = rng.vec(wide, 1.0);
        x[k..].fill(f32::NAN);
        let xt = Tensor::from_f32(&gpu, "x", 1, wide, &x).unwrap();
        let wt = Weight::upload(&gpu, "w", n, k, &w16).unwrap();
        let y = Tensor::new(&gpu, "y", 1, n).unwrap();
        let ks = ops::matmul::linear(&gpu, &xt, &wt, None, &y, Act::None, false).unwrap();
        assert_eq!(ks[0].label, "gemv", "{name}");
        gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
        let want = cpu_linear(&x[..k], 1, k, &w, n, None);
        assert_close(
            &format!("{name} gemv k={k}"),
            &y.read(&gpu).unwrap(),
            &want,
            2e-5 * k as f32,
        );
    }
}

/// The decode GEMV of a residual stream kept in a texture too (`Tensor::texels`): it reads x
/// and the RMSNorm weight from their textures (XTEX), not from x's buffer, which holds NaN
/// here, nor from the norm texture's other rows; and it adds into y's buffer and writes
/// y's texture (YTEX), both matching the CPU. Products that cannot write whole texels, and
/// products over several rows, refuse a y with a texture rather than leave it stale.
#[test]
fn decode_gemv_reads_and_writes_texture_copies() {
    let mut rng = Rng::new(8);
    // k = 96: 3 groups of 32, less than a lane round; n = 68: a partial lane group
    let (k, n, eps) = (96, 68, 1e-5);
    let (mut textured, mut cpu) = (0, false);
    for (name, gpu) in variants() {
        cpu |= gpu.caps.cpu;
        let texels = |t: Tensor, label| t.with_texels(&gpu, label);
        let probe = texels(Tensor::new(&gpu, "probe", 1, k).unwrap(), "probe");
        assert_eq!(probe.texels.is_some(), gpu.caps.x_textures, "{name}");
        if !gpu.caps.x_textures {
            continue;
        }
        textured += 1;
        let copy = |t: &Tensor, tex: &wgpu::TextureView, row| {
            let c = ops::attention::rows_to_texels(&gpu, t, tex, row).unwrap();
            gpu.run(&[&c]).unwrap();
        };
        let x = rng.vec(k, 1.0);
        let g = rng.vec(k, 1.0);
        let y0 = rng.vec(n, 1.0);
        let w16 = to_f16_bits(&rng.vec(n * k, 0.5));
        let w = from_f16_bits(&w16);
        let wt = Weight::upload(&gpu, "w", n, k, &w16).unwrap();
        // x: NaN in the buffer, the values in the texture
        let xt = texels(
            Tensor::from_f32(&gpu, "x", 1, k, &vec![f32::NAN; k]).unwrap(),
            "x",
        );
        copy(
            &Tensor::from_f32(&gpu, "xv", 1, k, &x).unwrap(),
            xt.texels.as_ref().unwrap(),
            0,
        );
        // the norm weight at row 2 of its texture, NaN in rows 0 and 1
        let gtex = gpu.rgba32float_texture("g", k / 4, 3).unwrap();
        copy(
            &Tensor::from_f32(&gpu, "nan", 2, k, &vec![f32::NAN; 2 * k]).unwrap(),
            &gtex,
            0,
        );
        let gt = Tensor::from_f32(&gpu, "g", 1, k, &g).unwrap();
        copy(&gt, &gtex, 2);
        let y = texels(Tensor::from_f32(&gpu, "y", 1, n, &y0).unwrap(), "y");
        let e = ops::matmul::Epilogue {
            norm: Some((&gt.buf, eps)),
            norm_texels: Some((&gtex, 2)),
            accumulate: true,
            ..Default::default()
        };
        let ks = ops::matmul::gemv(&gpu, &xt, &wt, &y, e).unwrap().unwrap();
        gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
        let ms = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / k as f64;
        let scale = 1.0 / (ms + eps as f64).sqrt();
        let xn: Vec<f32> = (0..k)
            .map(|i| (x[i] as f64 * scale) as f32 * g[i])
            .collect();
        let prod = cpu_linear(&xn, 1, k, &w, n, None);
        let want: Vec<f32> = (0..n).map(|i| y0[i] + prod[i]).collect();
        let tol = 2e-5 * k as f32;
        assert_close(&format!("{name} y"), &y.read(&gpu).unwrap(), &want, tol);
        let tex = y.texels.as_ref().unwrap().texture();
        let got = gpu.read_texture_rows(tex, (n / 4) as u32, 1).unwrap();
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(&got);
        assert_close(&format!("{name} y's texture"), &got, &want, tol);

        // a product into a y whose last texel it cannot fill whole, and SwiGLU's pairs
        let y67 = texels(Tensor::new(&gpu, "y67", 1, 68).unwrap(), "y67");
        let w67 = Weight::upload(&gpu, "w67", 67, k, &w16[..67 * k]).unwrap();
        let err = ops::matmul::linear(&gpu, &xt, &w67, None, &y67, Act::None, false);
        let err = err.err().expect("a 67-row product into texels").to_string();
        assert!(err.contains("texture copy"), "{name}: {err}");
        let swiglu = ops::matmul::Epilogue {
            gate_up: true,
            ..Default::default()
        };
        let half = texels(Tensor::new(&gpu, "half", 1, 36).unwrap(), "half");
        assert!(half.texels.is_some(), "{name}");
        let err = ops::matmul::gemv(&gpu, &xt, &wt, &half, swiglu);
        let err = err.err().expect("SwiGLU into texels").to_string();
        assert!(err.contains("texture copy"), "{name}: {err}");
        // and a prefill's rows whose last texel the product cannot fill whole
        let x2 = Tensor::from_f32(&gpu, "x2", 2, k, &rng.vec(2 * k, 1.0)).unwrap();
        let y2 = texels(Tensor::new(&gpu, "y2", 2, 68).unwrap(), "y2");
        let err = ops::matmul::linear(&gpu, &x2, &w67, None, &y2, Act::None, false);
        let err = err.err().expect("2 rows of 67 into texels").to_string();
        assert!(err.contains("texture copy"), "{name}: {err}");
    }
    // on a CPU device every variant but the flipped last one keeps texture copies
    if cpu {
        assert!(textured >= 1);
    }
}

#[test]
fn linear_gemm_and_gemv_match_cpu_for_odd_shapes() {
    let mut rng = Rng::new(1);
    for ((name, gpu), tile) in variants()
        .into_iter()
        .flat_map(|v| GemmTile::ALL.map(|t| (v.clone(), t)))
    {
        // both GEMM tiles of the table, on shapes that are no multiple of either
        gpu.set_gemm_tile(tile);
        let name = format!("{name} tile {}", tile.side());
        for &(m, k, n) in &[
            (1usize, 37usize, 19usize),
            (1, 256, 130),
            (70, 37, 67),
            (130, 100, 5),
            (3, 8, 200),
            (70, 96, 67),
            (13, 256, 130),
            (9, 300, 70),
            // short f16 rows: the lane kernel steps 8 values per lane (k = 40: 5 of 8 busy)
            (41, 64, 130),
            (20, 40, 33),
            // narrow f16 matrices go by token below k = 1024 (TOKENS_NARROW_MAX_K) only
            (40, 1016, 70),
            (40, 1024, 70),
        ] {
            let x = rng.vec(m * k, 1.0);
            let w16 = to_f16_bits(&rng.vec(n * k, 0.5));
            let w = from_f16_bits(&w16);
            let b = rng.vec(n, 0.5);
            let xt = Tensor::from_f32(&gpu, "x", m, k, &x).unwrap();
            let wt = Weight::upload(&gpu, "w", n, k, &w16).unwrap();
            // the variant's store: textures on CPU devices unless turned off, for chunks of
            // at least one texture row
            assert_eq!(
                wt.chunks[0].store.is_texture(),
                gpu.caps.weight_textures && n * wt.row_bytes >= MIN_TEXTURE_BYTES,
                "{name}"
            );
            let bias = gpu.storage_init("b", bytemuck::cast_slice(&b)).unwrap();
            let want = cpu_linear(&x, m, k, &w, n, Some(&b));
            let tol = 2e-5 * k as f32;

            let y = Tensor::new(&gpu, "y", m, n).unwrap();
            let ks =
                ops::matmul::linear(&gpu, &xt, &wt, Some(&bias), &y, Act::None, false).unwrap();
            assert_eq!(
                ks[0].label,
                expected_entry(tile, m, &wt),
                "{name} {m}x{k}x{n}"
            );
            if tile == GemmTile::Lanes && m == 40 {
                let by_token = k < ops::matmul::TOKENS_NARROW_MAX_K;
                let want = ["gemm_lanes", "gemm_tokens"][by_token as usize];
                assert_eq!(ks[0].label, want, "{name} {m}x{k}x{n}");
            }
            gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
            assert_close(
                &format!("{name} linear {m}x{k}x{n}"),
                &y.read(&gpu).unwrap(),
                &want,
                tol,
            );

            // Fused GELU epilogue, then accumulate (residual) on top of it.
            let ks =
                ops::matmul::linear(&gpu, &xt, &wt, Some(&bias), &y, Act::Gelu, false).unwrap();
            let acc = ops::matmul::linear(&gpu, &xt, &wt, None, &y, Act::None, true).unwrap();
            gpu.run(&ks.iter().chain(acc.iter()).collect::<Vec<_>>())
                .unwrap();
            let nobias = cpu_linear(&x, m, k, &w, n, None);
            let want2: Vec<f32> = want
                .iter()
                .zip(&nobias)
                .map(|(v, a)| gelu(*v) + a)
                .collect();
            assert_close(
                &format!("{name} gelu+acc {m}x{k}x{n}"),
                &y.read(&gpu).unwrap(),
                &want2,
                tol,
            );

            let ks = ops::matmul::linear(&gpu, &xt, &wt, None, &y, Act::QuickGelu, false).unwrap();
            gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
            let want3: Vec<f32> = nobias
                .iter()
                .map(|v| v / (1.0 + (-1.702 * v).exp()))
                .collect();
            assert_close(
                &format!("{name} quick_gelu {m}x{k}x{n}"),
                &y.read(&gpu).unwrap(),
                &want3,
                tol,
            );
        }
    }
}

#[test]
fn weights_over_the_binding_limit_are_split_by_rows() {
    // A 1 KiB binding limit forces a 300x37 weight (row stride 80 bytes) into 25 chunks.
    let gpu = Gpu::new(&GpuOptions {
        max_binding: Some(1024),
        ..Default::default()
    })
    .unwrap();
    // weights live in textures exactly on CPU devices unless an option says otherwise
    assert_eq!(gpu.caps.weight_textures, gpu.caps.cpu);
    let mut rng = Rng::new(2);
    let (k, n) = (37, 300);
    let w16 = to_f16_bits(&rng.vec(n * k, 0.5));
    let w = from_f16_bits(&w16);
    let wt = Weight::upload(&gpu, "w", n, k, &w16).unwrap();
    assert_eq!(wt.chunks.len(), 300usize.div_ceil(1024 / 80));
    for m in [1usize, 9] {
        let x = rng.vec(m * k, 1.0);
        let xt = Tensor::from_f32(&gpu, "x", m, k, &x).unwrap();
        let y = Tensor::new(&gpu, "y", m, n).unwrap();
        let ks = ops::matmul::linear(&gpu, &xt, &wt, None, &y, Act::None, false).unwrap();
        assert_eq!(ks.len(), wt.chunks.len());
        gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
        assert_close(
            "chunked linear",
            &y.read(&gpu).unwrap(),
            &cpu_linear(&x, m, k, &w, n, None),
            1e-3,
        );
    }
    // Embedding gather across chunks.
    let ids: Vec<u32> = vec![0, 299, 12, 150, 13, 12];
    let idb = gpu.storage_init("ids", bytemuck::cast_slice(&ids)).unwrap();
    let out = Tensor::new(&gpu, "out", ids.len(), k).unwrap();
    let ks = ops::embed::gather(&gpu, &idb, &wt, &out).unwrap();
    gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| w[i as usize * k..(i as usize + 1) * k].to_vec())
        .collect();
    assert_eq!(out.read(&gpu).unwrap(), want);
}

#[test]
fn norms_match_cpu() {
    let mut rng = Rng::new(3);
    // Workgroups of the 13-row norms, per variant: 13 (one per row) or, for a lane group
    // per row, 2 (one full workgroup of 8 rows and a partial one).
    let (mut grids, mut cpu_with_lanes) = (Vec::new(), false);
    for (name, gpu) in variants() {
        cpu_with_lanes |= gpu.caps.cpu && gpu.lane_groups();
        // 13 rows: one full workgroup of 8 lane groups and a partial one
        for &(rows, d) in &[(1usize, 7usize), (5, 96), (3, 1000), (13, 64)] {
            let x: Vec<f32> = rng
                .vec((rows + 2) * d, 2.0)
                .iter()
                .map(|v| v + 0.5)
                .collect();
            let g = rng.vec(d, 1.0);
            let b = rng.vec(d, 1.0);
            let xt = Tensor::from_f32(&gpu, "x", rows + 2, d, &x).unwrap();
            let gb = gpu.storage_init("g", bytemuck::cast_slice(&g)).unwrap();
            let bb = gpu.storage_init("b", bytemuck::cast_slice(&b)).unwrap();
            let y = Tensor::new(&gpu, "y", rows, d).unwrap();
            // Rows 2.. of x (exercises in_row0).
            let src = &x[2 * d..];
            let ln = ops::norm::norm(&gpu, &xt, 2, &gb, Some(&bb), 1e-5, &y).unwrap();
            if rows == 13 {
                grids.push(ln.workgroups[0] * ln.workgroups[1]);
            }
            gpu.run(&[&ln]).unwrap();
            let mut want = vec![0f32; rows * d];
            for r in 0..rows {
                let row = &src[r * d..(r + 1) * d];
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
                for i in 0..d {
                    want[r * d + i] =
                        ((row[i] as f64 - mean) / (var + 1e-5).sqrt()) as f32 * g[i] + b[i];
                }
            }
            assert_close(
                &format!("{name} layer_norm {rows}x{d}"),
                &y.read(&gpu).unwrap(),
                &want,
                1e-4,
            );
            let rn = ops::norm::norm(&gpu, &xt, 2, &gb, None, 1e-6, &y).unwrap();
            gpu.run(&[&rn]).unwrap();
            for r in 0..rows {
                let row = &src[r * d..(r + 1) * d];
                let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
                for i in 0..d {
                    want[r * d + i] = (row[i] as f64 / (ms + 1e-6).sqrt()) as f32 * g[i];
                }
            }
            assert_close(
                &format!("{name} rms_norm {rows}x{d}"),
                &y.read(&gpu).unwrap(),
                &want,
                1e-4,
            );
        }
    }
    // On a CPU device with subgroups (lavapipe) both variants ran: the lane-group one (a
    // lane group per row, no barriers) and the workgroup reduction without subgroups.
    if cpu_with_lanes {
        assert!(grids.contains(&2) && grids.contains(&13), "{grids:?}");
    }
}

#[test]
fn elementwise_kernels_match_cpu() {
    let mut rng = Rng::new(4);
    for (name, gpu) in variants() {
        let (r, c) = (3, 101);
        let a = rng.vec(r * c, 4.0);
        let b = rng.vec(r * c, 4.0);
        let at = Tensor::from_f32(&gpu, "a", r, c, &a).unwrap();
        let bt = Tensor::from_f32(&gpu, "b", r, c, &b).unwrap();
        let y = Tensor::new(&gpu, "y", r, c).unwrap();
        gpu.run(&[&ops::elementwise::add(&gpu, &at, &bt, &y).unwrap()])
            .unwrap();
        let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_close(&format!("{name} add"), &y.read(&gpu).unwrap(), &want, 1e-6);
        // gate|up stacked by columns: row i is [a row i | b row i].
        let gu: Vec<f32> = (0..r)
            .flat_map(|i| a[i * c..(i + 1) * c].iter().chain(&b[i * c..(i + 1) * c]))
            .copied()
            .collect();
        let gut = Tensor::from_f32(&gpu, "gu", r, 2 * c, &gu).unwrap();
        gpu.run(&[&ops::elementwise::swiglu(&gpu, &gut, &y).unwrap()])
            .unwrap();
        let want: Vec<f32> = a
            .iter()
            .zip(&b)
            .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        assert_close(
            &format!("{name} swiglu"),
            &y.read(&gpu).unwrap(),
            &want,
            1e-5,
        );
        let g = Tensor::from_f32(&gpu, "g", r, c, &a).unwrap();
        gpu.run(&[&ops::elementwise::gelu(&gpu, &g).unwrap()])
            .unwrap();
        let want: Vec<f32> = a.iter().map(|&v| gelu(v)).collect();
        assert_close(
            &format!("{name} gelu"),
            &g.read(&gpu).unwrap(),
            &want,
            2e-6 * 4.0,
        );
        let q = Tensor::from_f32(&gpu, "q", r, c, &a).unwrap();
        gpu.run(&[&ops::elementwise::quick_gelu(&gpu, &q).unwrap()])
            .unwrap();
        let want: Vec<f32> = a.iter().map(|v| v / (1.0 + (-1.702 * v).exp())).collect();
        assert_close(
            &format!("{name} quick_gelu"),
            &q.read(&gpu).unwrap(),
            &want,
            1e-5,
        );
        // Row copy into a wider buffer at a row offset taken from the step uniform.
        let dst = Tensor::new(&gpu, "dst", 10, c + 5).unwrap();
        let step = step_buffer(
            &gpu,
            Step {
                kv_offset: 4,
                ..Default::default()
            },
        );
        let k = ops::elementwise::copy_rows(
            &gpu,
            &at,
            1,
            2,
            ops::elementwise::RowDest {
                buf: &dst.buf,
                stride: c + 5,
                row0: 1,
                col: 3,
                step: Some(&step),
                texels: None,
            },
        )
        .unwrap();
        gpu.run(&[&k]).unwrap();
        let got = dst.read(&gpu).unwrap();
        for rr in 0..2 {
            for cc in 0..c {
                assert_eq!(got[(5 + rr) * (c + 5) + 3 + cc], a[(1 + rr) * c + cc]);
            }
        }
    }
}

#[test]
fn rope_matches_cpu_rotate_half() {
    let mut rng = Rng::new(5);
    for (name, gpu) in variants() {
        let (rows, heads, hd) = (7, 3, 16);
        let cols = heads * hd + 4;
        let x = rng.vec(rows * cols, 1.0);
        let positions: Vec<u32> = vec![0, 1, 2, 50, 7, 8, 600];
        let table = ops::rope::rope_table(10000.0, hd, 700);
        let xt = Tensor::from_f32(&gpu, "x", rows, cols, &x).unwrap();
        let pb = gpu
            .storage_init("pos", bytemuck::cast_slice(&positions))
            .unwrap();
        let tb = gpu
            .storage_init("tab", bytemuck::cast_slice(&table))
            .unwrap();
        gpu.run(&[&ops::rope::rope(&gpu, &xt, heads, hd, &pb, &tb).unwrap()])
            .unwrap();
        let mut want = x.clone();
        for r in 0..rows {
            for h in 0..heads {
                for i in 0..hd / 2 {
                    let f = 1.0 / 10000f64.powf(2.0 * i as f64 / hd as f64);
                    let ang = positions[r] as f64 * f;
                    let (s, c) = ang.sin_cos();
                    let b = r * cols + h * hd;
                    let (x1, x2) = (x[b + i] as f64, x[b + i + hd / 2] as f64);
                    want[b + i] = (x1 * c - x2 * s) as f32;
                    want[b + i + hd / 2] = (x2 * c + x1 * s) as f32;
                }
            }
        }
        assert_close(
            &format!("{name} rope"),
            &xt.read(&gpu).unwrap(),
            &want,
            2e-4,
        );
    }
}

/// A prefill's RoPE inputs: rotary positions `pos(r)` for `rows` rows, the table for heads
/// of `hd`, and the Step of a prefill (cache rows from 0).
struct RopeInputs {
    positions: wgpu::Buffer,
    table: wgpu::Buffer,
    step: wgpu::Buffer,
}

/// Fresh destinations of a prefill's RoPE: q, the K and V cache of `ctx` rows, and the
/// prefill attention's textures where the device keeps them.
struct RopeOutputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tex: Option<KvTextures>,
}

impl RopeInputs {
    fn new(gpu: &Gpu, rows: usize, hd: usize, pos: impl Fn(u32) -> u32) -> Self {
        let positions: Vec<u32> = (0..rows as u32).map(pos).collect();
        let max_pos = positions.iter().max().map_or(1, |&p| p as usize + 1);
        let table = ops::rope::rope_table(10000.0, hd, max_pos);
        Self {
            positions: gpu
                .storage_init("pos", bytemuck::cast_slice(&positions))
                .unwrap(),
            table: gpu
                .storage_init("tab", bytemuck::cast_slice(&table))
                .unwrap(),
            step: step_buffer(gpu, Step::default()),
        }
    }

    fn outputs(&self, gpu: &Gpu, h: Heads, rows: usize, ctx: usize) -> RopeOutputs {
        RopeOutputs {
            q: Tensor::new(gpu, "q", rows, h.heads * h.hd).unwrap(),
            k: Tensor::new(gpu, "k", ctx, h.kv_heads * h.hd).unwrap(),
            v: Tensor::new(gpu, "v", ctx, h.kv_heads * h.hd).unwrap(),
            tex: KvTextures::new(gpu, h, ctx),
        }
    }
}

impl RopeOutputs {
    fn rope<'a>(&'a self, inputs: &'a RopeInputs, h: Heads) -> ops::rope::RopeKv<'a> {
        ops::rope::RopeKv {
            heads: h,
            positions: &inputs.positions,
            table: &inputs.table,
            q: &self.q,
            k_cache: &self.k,
            v_cache: &self.v,
            step: &inputs.step,
            into_textures: None,
        }
    }

    /// q and both cache buffers, and the first `rows` rows of the textures.
    fn read(&self, gpu: &Gpu, rows: usize) -> RopeRead {
        let texels = self.tex.as_ref().map(|t| t.read(gpu, rows).unwrap());
        (
            [&self.q, &self.k, &self.v].map(|t| t.read(gpu).unwrap()),
            texels,
        )
    }
}

type RopeRead = ([Vec<f32>; 3], Option<(Vec<f32>, Vec<f32>)>);

/// `run(false)` (the reference) against `run(true)` (the fused kernel), each giving whether
/// the fused kernel wrote the textures, q and the cache buffers, and the textures: they
/// must match bit for bit, and the textures be written exactly where the device keeps
/// them and a head's half is whole texels. Returns the reference buffers and the textures.
fn fused_rope_matches(
    what: &str,
    gpu: &Gpu,
    hd: usize,
    run: impl Fn(bool) -> (bool, [Vec<f32>; 3], Option<(Vec<f32>, Vec<f32>)>),
) -> RopeRead {
    let (_, want, want_tex) = run(false);
    let (filled, got, got_tex) = run(true);
    let whole_texels = (hd / 2).is_multiple_of(4);
    assert_eq!(
        filled,
        gpu.caps.weight_textures && whole_texels,
        "{what}: textures written by the fused kernel"
    );
    assert_eq!(got, want, "{what}: q and the cache buffers");
    assert_eq!(got_tex, want_tex, "{what}: the textures");
    (want, got_tex)
}

#[test]
fn rope_kv_into_textures_writes_what_rope_kv_and_the_copy_write() {
    // A prefill's q|k|v rows: rope_kv, then kv_texture's copy into the attention's
    // textures, against rope_kv_into_textures, one dispatch. q and the cache buffers must
    // come out bit for bit the same, and the textures hold the cache rows.
    let mut rng = Rng::new(9);
    for (name, gpu) in variants() {
        for &(rows, heads, kv_heads, hd) in &[
            (37usize, 4usize, 2usize, 8usize),
            (5, 2, 2, 16),
            (9, 4, 1, 32),
            // halves that are no multiple of 4: the copy stays
            (6, 2, 1, 4),
            (6, 2, 2, 12),
        ] {
            let h = Heads {
                heads,
                kv_heads,
                hd,
            };
            let cols = (heads + 2 * kv_heads) * hd + 4;
            let qkv =
                Tensor::from_f32(&gpu, "qkv", rows, cols, &rng.vec(rows * cols, 1.0)).unwrap();
            let inputs = RopeInputs::new(&gpu, rows, hd, |r| 3 * r + 1);
            let run = |into: bool| {
                let out = inputs.outputs(&gpu, h, rows, rows + 2);
                let rope = out.rope(&inputs, h);
                let fused = match (&out.tex, into) {
                    (Some(t), true) => {
                        ops::rope::rope_kv_into_textures(&gpu, &qkv, &rope, t).unwrap()
                    }
                    _ => None,
                };
                let filled = fused.is_some();
                let k = fused.unwrap_or_else(|| ops::rope::rope_kv(&gpu, &qkv, &rope).unwrap());
                gpu.run(&[&k]).unwrap();
                if let (Some(t), false) = (&out.tex, filled) {
                    gpu.run(&[&t.copy(&gpu, &out.k, &out.v, rows, None).unwrap()])
                        .unwrap();
                }
                let (buffers, texels) = out.read(&gpu, rows);
                (filled, buffers, texels)
            };
            let what = format!("{name} hd {hd} (rope_kv_into_textures)");
            let (want, got_tex) = fused_rope_matches(&what, &gpu, hd, run);
            if let Some((k, v)) = &got_tex {
                let w = kv_heads * hd;
                assert_eq!(k[..], want[1][..rows * w], "{name} hd {hd}: K texels");
                assert_eq!(v[..], want[2][..rows * w], "{name} hd {hd}: V texels");
            }
        }
    }
}

#[test]
fn prefill_qkv_by_token_ropes_as_rope_kv_does() {
    // A prefill's stacked q|k|v product by token (gemm_tokens) with RoPE and the cache
    // writes as its epilogue, against the same product into a q|k|v tensor followed by
    // rope_kv and the attention's texture copy: q, the cache buffers and the prefill
    // textures must come out bit for bit the same (one summation order, one rope_pair).
    let mut rng = Rng::new(12);
    let mut fused_runs = 0;
    for (name, gpu) in variants() {
        // the lane kernels (CPU devices' default) on every device, so that GPUs run it too
        gpu.set_gemm_tile(GemmTile::Lanes);
        for &(rows, heads, kv_heads, hd, k) in &[
            (37usize, 4usize, 2usize, 8usize, 32usize),
            (94, 4, 2, 8, 32),
            (130, 2, 2, 16, 64),
            // a half of 2: no whole texels, so the textures get the attention's copy
            (11, 2, 1, 4, 40),
        ] {
            let h = Heads {
                heads,
                kv_heads,
                hd,
            };
            let n = (heads + 2 * kv_heads) * hd;
            let x = Tensor::from_f32(&gpu, "x", rows, k, &rng.vec(rows * k, 1.0)).unwrap();
            let w = Weight::upload(&gpu, "w", n, k, &to_f16_bits(&rng.vec(n * k, 0.5))).unwrap();
            let g = gpu
                .storage_init("g", bytemuck::cast_slice(&rng.vec(k, 1.0)))
                .unwrap();
            let inputs = RopeInputs::new(&gpu, rows, hd, |r| 2 * r + 3);
            let norm = Some((&g, 1e-5f32));
            let run = |fused: bool| {
                let out = inputs.outputs(&gpu, h, rows, rows + 3);
                let rope = out.rope(&inputs, h);
                let copy = out
                    .tex
                    .as_ref()
                    .filter(|t| ops::matmul::copy_fits(h, t, rows));
                let filled = fused && copy.is_some();
                if fused {
                    let e = ops::matmul::Epilogue {
                        norm,
                        rope: Some(rope),
                        kv_copy: copy,
                        ..Default::default()
                    };
                    let ks = ops::matmul::fused(&gpu, &x, &w, &out.q, e)
                        .unwrap()
                        .expect("gemm_tokens takes RoPE");
                    gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
                } else {
                    let qkv = Tensor::new(&gpu, "qkv", rows, n).unwrap();
                    let e = ops::matmul::Epilogue {
                        norm,
                        ..Default::default()
                    };
                    let ks = ops::matmul::fused(&gpu, &x, &w, &qkv, e).unwrap().unwrap();
                    gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
                    gpu.run(&[&ops::rope::rope_kv(&gpu, &qkv, &rope).unwrap()])
                        .unwrap();
                }
                if let (Some(t), false) = (&out.tex, filled) {
                    gpu.run(&[&t.copy(&gpu, &out.k, &out.v, rows, None).unwrap()])
                        .unwrap();
                }
                let (buffers, texels) = out.read(&gpu, rows);
                (filled, buffers, texels)
            };
            if !ops::matmul::rope_by_token(&gpu, rows, &w) {
                continue;
            }
            fused_runs += 1;
            let what = format!("{name} {rows} rows hd {hd} (q|k|v by token)");
            fused_rope_matches(&what, &gpu, hd, run);
        }
    }
    assert!(fused_runs > 0, "no variant ran q|k|v by token with RoPE");
}

/// CPU reference of a decoder layer's second half, in f64: x += o·attn, then
/// x += down(silu(gate·h) · (up·h)) with h = RMSNorm(x) · g.
fn cpu_layer_tail(
    attn: &[f32],
    x: &[f32],
    g: &[f32],
    (o, gu, down): (&[f32], &[f32], &[f32]),
    (m, d, a, i): (usize, usize, usize, usize),
) -> Vec<f32> {
    let dot = |w: &[f32], v: &[f64]| -> f64 { w.iter().zip(v).map(|(w, v)| *w as f64 * v).sum() };
    let mut out = Vec::with_capacity(m * d);
    for t in 0..m {
        let av: Vec<f64> = attn[t * a..(t + 1) * a].iter().map(|v| *v as f64).collect();
        let mut xr: Vec<f64> = (0..d)
            .map(|j| x[t * d + j] as f64 + dot(&o[j * a..(j + 1) * a], &av))
            .collect();
        let ms = xr.iter().map(|v| v * v).sum::<f64>() / d as f64;
        let h: Vec<f64> = (0..d)
            .map(|j| xr[j] / (ms + 1e-5).sqrt() * g[j] as f64)
            .collect();
        let act: Vec<f64> = (0..i)
            .map(|r| {
                let gate = dot(&gu[r * d..(r + 1) * d], &h);
                let up = dot(&gu[(i + r) * d..(i + r + 1) * d], &h);
                gate / (1.0 + (-gate).exp()) * up
            })
            .collect();
        for j in 0..d {
            xr[j] += dot(&down[j * i..(j + 1) * i], &act);
        }
        out.extend(xr.iter().map(|v| *v as f32));
    }
    out
}

#[test]
fn layer_tail_matches_the_three_products_and_cpu() {
    // A prefill's o_proj + residual, RMSNorm, [gate; up] + SwiGLU and down + residual in one
    // dispatch per token (layer_tail.wgsl), against a CPU reference, and bit for bit against
    // the three gemm_tokens dispatches it replaces where those run by token (one summation
    // order). The shapes put the weights in buffers and textures in several mixes.
    let mut rng = Rng::new(21);
    let (mut fused_runs, mut bit_exact_runs) = (0, 0);
    for (name, gpu) in variants() {
        // the lane kernels (CPU devices' default) on every device, so that GPUs run it too
        gpu.set_gemm_tile(GemmTile::Lanes);
        for &(m, d, a, i) in &[
            (37usize, 32usize, 32usize, 64usize),
            (70, 64, 64, 256),
            (5, 8, 16, 24),
            (130, 32, 64, 128),
        ] {
            let attn = rng.vec(m * a, 1.0);
            let x = rng.vec(m * d, 1.0);
            let g = rng.vec(d, 1.0);
            let o16 = to_f16_bits(&rng.vec(d * a, 0.3));
            let gu16 = to_f16_bits(&rng.vec(2 * i * d, 0.3));
            let down16 = to_f16_bits(&rng.vec(d * i, 0.3));
            let o = Weight::upload(&gpu, "o", d, a, &o16).unwrap();
            let gu = Weight::upload(&gpu, "gu", 2 * i, d, &gu16).unwrap();
            let down = Weight::upload(&gpu, "down", d, i, &down16).unwrap();
            let gb = gpu.storage_init("g", bytemuck::cast_slice(&g)).unwrap();
            let tail = ops::layer_tail::TailWeights {
                o_proj: &o,
                gate_up: &gu,
                down: &down,
                norm: (&gb, 1e-5),
            };
            if !ops::layer_tail::fits(&gpu, m, &tail) {
                continue;
            }
            fused_runs += 1;
            let at = Tensor::from_f32(&gpu, "attn", m, a, &attn).unwrap();
            let xt = Tensor::from_f32(&gpu, "x", m, d, &x).unwrap();
            gpu.run(&[&ops::layer_tail::layer_tail(&gpu, &at, &xt, &tail).unwrap()])
                .unwrap();
            let got = xt.read(&gpu).unwrap();
            let what = format!("{name} layer_tail {m} rows d {d} a {a} i {i}");
            let want = cpu_layer_tail(
                &attn,
                &x,
                &g,
                (
                    &from_f16_bits(&o16),
                    &from_f16_bits(&gu16),
                    &from_f16_bits(&down16),
                ),
                (m, d, a, i),
            );
            assert_close(&what, &got, &want, 1e-4 * (a + i) as f32);

            // the three products: o_proj accumulating into x, [gate; up] with the norm on
            // load and SwiGLU, down accumulating into x
            if ![&o, &gu, &down].iter().all(|w| by_token(m, w)) {
                continue;
            }
            let x3 = Tensor::from_f32(&gpu, "x3", m, d, &x).unwrap();
            let act = Tensor::new(&gpu, "act", m, i).unwrap();
            let mut ks = ops::matmul::linear(&gpu, &at, &o, None, &x3, Act::None, true).unwrap();
            let e = ops::matmul::Epilogue {
                norm: Some((&gb, 1e-5)),
                gate_up: true,
                ..Default::default()
            };
            // (rows under gemm_lanes' shortest take a norm dispatch first: another order)
            let Some(gate_up) = ops::matmul::fused(&gpu, &x3, &gu, &act, e).unwrap() else {
                continue;
            };
            ks.extend(gate_up);
            ks.extend(ops::matmul::linear(&gpu, &act, &down, None, &x3, Act::None, true).unwrap());
            assert!(ks.iter().all(|k| k.label == "gemm_tokens"), "{what}");
            bit_exact_runs += 1;
            gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
            let three = x3.read(&gpu).unwrap();
            let differ = got
                .iter()
                .zip(&three)
                .filter(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(differ.count(), 0, "{what}: against the three products");
        }
    }
    assert!(fused_runs > 0, "no variant ran layer_tail");
    assert!(
        bit_exact_runs > 0,
        "no shape compared against the three products"
    );
}

fn cpu_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    m: usize,
    kv_len: usize,
    h: Heads,
    causal: bool,
    q_pos0: usize,
) -> Vec<f32> {
    let (qs, ks) = (h.heads * h.hd, h.kv_heads * h.hd);
    let mut out = vec![0f32; m * qs];
    for i in 0..m {
        for hh in 0..h.heads {
            let kvh = hh / (h.heads / h.kv_heads);
            let end = if causal {
                (q_pos0 + i + 1).min(kv_len)
            } else {
                kv_len
            };
            let s: Vec<f64> = (0..end)
                .map(|j| {
                    (0..h.hd)
                        .map(|d| {
                            q[i * qs + hh * h.hd + d] as f64 * k[j * ks + kvh * h.hd + d] as f64
                        })
                        .sum::<f64>()
                        / (h.hd as f64).sqrt()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
            for d in 0..h.hd {
                out[i * qs + hh * h.hd + d] = (0..end)
                    .map(|j| (s[j] - mx).exp() / z * v[j * ks + kvh * h.hd + d] as f64)
                    .sum::<f64>() as f32;
            }
        }
    }
    out
}

#[test]
fn prefill_attention_matches_cpu_causal_and_not_with_gqa() {
    let mut rng = Rng::new(6);
    for ((name, gpu), (tiles, flash)) in variants()
        .into_iter()
        .flat_map(|v| [(true, true), (true, false), (false, true)].map(|t| (v.clone(), t)))
    {
        // K/V through workgroup-memory tiles (GPUs: the tiled kernel, and the fallback of one
        // row per invocation), and read directly (CPU devices)
        gpu.set_attention_tiles(tiles);
        gpu.set_flash_attention(flash);
        let name = format!("{name} attention tiles {tiles} flash {flash}");
        for &(m, kv_len, heads, kv_heads, hd, causal, q_pos0) in &[
            (37usize, 37usize, 4usize, 4usize, 16usize, false, 0usize),
            (45, 45, 6, 2, 16, true, 0),
            (5, 50, 6, 3, 32, true, 45),
            (1, 20, 2, 1, 64, true, 19),
            // LLaVA-1.5-7B's head dim (the direct variant's key-by-key form)
            (3, 21, 2, 1, 128, true, 18),
            // 8-dim heads over several workgroups of the direct variant (32 rows each), each
            // stopping at its own last key; the second after 12 cached keys
            (70, 70, 4, 2, 8, true, 0),
            (40, 52, 4, 2, 8, true, 12),
            // a head dim the direct variant does not take (not a multiple of 4): tiles
            (9, 9, 2, 2, 6, true, 0),
            // the tiled GPU kernel (flash_attention.wgsl) over several tiles of 64 query rows
            // and of keys (64 a tile for head dims 64 and 128, 40 for 80), rows and keys
            // ending inside a tile, causal after cached keys, and not (the vision tower)
            (150, 150, 4, 2, 64, true, 0),
            (70, 135, 2, 1, 128, true, 65),
            (97, 97, 2, 2, 80, false, 0),
            (130, 130, 3, 3, 32, false, 0),
            (66, 200, 2, 1, 16, true, 134),
            // 256 dims: four column quads per invocation
            (20, 70, 2, 1, 256, true, 50),
        ] {
            let h = Heads {
                heads,
                kv_heads,
                hd,
            };
            let q = rng.vec(m * heads * hd, 2.0);
            let k = rng.vec(kv_len * kv_heads * hd, 2.0);
            let v = rng.vec(kv_len * kv_heads * hd, 1.0);
            let qt = Tensor::from_f32(&gpu, "q", m, heads * hd, &q).unwrap();
            let kt = Tensor::from_f32(&gpu, "k", kv_len, kv_heads * hd, &k).unwrap();
            let vt = Tensor::from_f32(&gpu, "v", kv_len, kv_heads * hd, &v).unwrap();
            let want = cpu_attention(&q, &k, &v, m, kv_len, h, causal, q_pos0);
            // K/V from the buffers, and copied into textures (on CPU devices with the direct
            // variant; the pair may hold more rows than this pass uses)
            let tex = ops::attention::KvTextures::new(&gpu, h, kv_len + 3);
            let direct = !tiles && hd % 4 == 0;
            assert_eq!(tex.is_some(), gpu.caps.weight_textures && direct, "{name}");
            // and from textures filled beforehand (as rope_kv_into_textures does), with no
            // copy of their own
            let mut sources = vec![PrefillKv::Buffers];
            if let Some(t) = &tex {
                sources.extend([PrefillKv::Copy(t), PrefillKv::Filled(t)]);
            }
            for kv in sources {
                let out = Tensor::new(&gpu, "o", m, heads * hd).unwrap();
                let ks = ops::attention::prefill(
                    &gpu, h, &qt, &kt, &vt, kv_len, causal, q_pos0, &out, kv,
                )
                .unwrap();
                let labels: Vec<_> = ks.iter().map(|k| k.label).collect();
                let (want_labels, what) = match kv {
                    PrefillKv::Copy(_) => (vec!["kv_texture", "attention"], "copied"),
                    PrefillKv::Filled(t) => {
                        // garbage in the rows past kv_len, which no query may read
                        let junk = Tensor::from_f32(
                            &gpu,
                            "junk",
                            kv_len + 3,
                            kv_heads * hd,
                            &vec![1e6; (kv_len + 3) * kv_heads * hd],
                        )
                        .unwrap();
                        gpu.run(&[&t.copy(&gpu, &junk, &junk, kv_len + 3, None).unwrap()])
                            .unwrap();
                        gpu.run(&[&t.copy(&gpu, &kt, &vt, kv_len, None).unwrap()])
                            .unwrap();
                        (vec!["attention"], "filled")
                    }
                    PrefillKv::Buffers if tiles && flash && hd % 4 == 0 => {
                        (vec!["flash_attention"], "buffers")
                    }
                    PrefillKv::Buffers => (vec!["attention"], "buffers"),
                };
                assert_eq!(labels, want_labels, "{name}");
                gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
                assert_close(
                    &format!("{name} attention m={m} kv={kv_len} K/V {what}"),
                    &out.read(&gpu).unwrap(),
                    &want,
                    2e-5,
                );
            }
        }
    }
}

#[test]
fn decode_attention_over_the_cache_matches_cpu() {
    let mut rng = Rng::new(7);
    // (attention tiles, decode_attention.wgsl, its decode_one): the GPU row with each
    // kernel, the CPU row
    let rows = [
        (true, true, false),
        (true, true, true),
        (true, false, false),
        (false, true, false),
    ];
    for ((name, gpu), (tiles, split, walk)) in variants()
        .into_iter()
        .flat_map(|v| rows.map(|t| (v.clone(), t)))
    {
        // decode_split (GPUs; attn_split with VLM_RUN_DECODE_ATTN=0 or head dims that are
        // no multiple of 16), or decode_one for caches of up to ONE_KEYS rows with
        // VLM_RUN_DECODE_ONE=1, and, on the CPU-device row with subgroups, attn_lanes_one,
        // or attn_lanes past ONE_PASS_KEYS cache rows
        gpu.set_attention_tiles(tiles);
        gpu.set_decode_attention(split);
        gpu.set_decode_one(walk);
        let lanes = !tiles && gpu.lane_groups();
        let name = format!(
            "{name} attention tiles {tiles} decode_attention.wgsl {split} decode_one {walk}"
        );
        // 3 splits (or rounds) of 64 keys: kv_len inside the first, at its end, across, and
        // with the last split empty; odd lengths end inside a lane group's 8 keys. Then the
        // longest cache of one pass, all rows used, and one row longer.
        let one = ops::attention::ONE_PASS_KEYS;
        // Head dims 12 and 16 (buffers only) and 32 and 64 (whole texels per lane: on CPU devices
        // the lane kernels read a cache kept in textures too).
        for (ctx, lens, hd) in [
            (190usize, vec![1usize, 8, 13, 64, 67, 128, 190], 16usize),
            (190, vec![1, 9, 64, 67, 190], 32),
            // head dims past attn_split's rounds of 32 dims (12: none whole; 80: two and
            // a tail, and dims past its first 64 invocations)
            (190, vec![1, 13, 67], 12),
            (190, vec![1, 13, 67, 190], 80),
            (190, vec![1, 13, 67, 190], 64),
            // decode_split's 8 key groups (128) and 4, with 8 quads per lane (256)
            (190, vec![1, 67, 190], 128),
            (130, vec![2, 130], 256),
            // decode_one's longest cache (4 chunks) and one row past it (splits again)
            (256, vec![64, 65, 256], 128),
            (257, vec![1, 257], 64),
            (one, vec![13, one], 16),
            (one + 1, vec![13, one + 1], 16),
            (one + 1, vec![70, one + 1], 64),
        ] {
            // the lane kernels take head dims of whole lane rounds (HD % 8 == 0)
            let lanes = lanes && hd % 8 == 0;
            // decode_attention.wgsl takes head dims of whole 16-value rounds
            let split = tiles && split && hd % 16 == 0;
            decode_case(&mut rng, &gpu, &name, (lanes, split), ctx, &lens, hd);
        }
    }
}

/// Decode attention over a cache of `ctx` rows, for each kv_len of `lens`, against CPU: from
/// the buffers, and (CPU devices) from a cache in textures that holds rows 0..kv_len − 1, so
/// that the newest row is there only if the decode's own copy put it there.
fn decode_case(
    rng: &mut Rng,
    gpu: &Gpu,
    name: &str,
    (lanes, split): (bool, bool),
    ctx: usize,
    lens: &[usize],
    hd: usize,
) {
    let one = ops::attention::ONE_PASS_KEYS;
    let (heads, kv_heads) = (6usize, 2usize);
    let h = Heads {
        heads,
        kv_heads,
        hd,
    };
    let q = rng.vec(heads * hd, 2.0);
    let k = rng.vec(ctx * kv_heads * hd, 2.0);
    let v = rng.vec(ctx * kv_heads * hd, 1.0);
    let qt = Tensor::from_f32(gpu, "q", 1, heads * hd, &q).unwrap();
    let kt = Tensor::from_f32(gpu, "k", ctx, kv_heads * hd, &k).unwrap();
    let vt = Tensor::from_f32(gpu, "v", ctx, kv_heads * hd, &v).unwrap();
    let partials = ops::attention::decode_partials(gpu, h, ctx).unwrap();
    let out = Tensor::new(gpu, "o", 1, heads * hd).unwrap();
    let tex = ops::attention::KvTextures::new(gpu, h, ctx);
    let from_tex = h.decode_textures(gpu) && tex.is_some();
    assert_eq!(
        from_tex,
        lanes && hd.is_multiple_of(32) && gpu.caps.weight_textures,
        "{name} hd {hd}"
    );
    for &kv_len in lens {
        let step = step_buffer(
            gpu,
            Step {
                kv_offset: kv_len as u32 - 1,
                kv_len: kv_len as u32,
                ..Default::default()
            },
        );
        // the texture case: rows 0..kv_len − 1 copied in as prefill does, the newest row
        // only in one-row buffers, as a decode step's q|k|v leave it
        let w = kv_heads * hd;
        let last = (kv_len - 1) * w..kv_len * w;
        let k_new = Tensor::from_f32(gpu, "k_new", 1, w, &k[last.clone()]).unwrap();
        let v_new = Tensor::from_f32(gpu, "v_new", 1, w, &v[last]).unwrap();
        let cases = [
            Some(DecodeKv::Buffers { k: &kt, v: &vt }),
            from_tex.then(|| DecodeKv::Textures {
                tex: tex.as_ref().unwrap(),
                new_row: Some((&k_new, &v_new)),
            }),
        ];
        for kv in cases.into_iter().flatten() {
            let in_tex = matches!(kv, DecodeKv::Textures { .. });
            if let (DecodeKv::Textures { tex, .. }, true) = (kv, kv_len > 1) {
                let fill = tex.copy(gpu, &kt, &vt, kv_len - 1, None).unwrap();
                gpu.run(&[&fill]).unwrap();
            }
            let ks = ops::attention::decode(gpu, h, &qt, kv, &partials, &step, &out).unwrap();
            let walk = split && gpu.decode_one() && ctx <= ops::decode_attention::ONE_KEYS;
            let entry = match (lanes, ctx <= one) {
                (false, _) if walk => "decode_one",
                (false, _) if split => "decode_split",
                (false, _) => "attn_split",
                (true, true) => "attn_lanes_one",
                (true, false) => "attn_lanes",
            };
            let mut labels: Vec<_> = ks.iter().map(|k| k.label).collect();
            if in_tex {
                assert_eq!(labels.remove(0), "kv_texture", "{name} ctx {ctx} hd {hd}");
            }
            assert_eq!(labels[0], entry, "{name} ctx {ctx} hd {hd}");
            if split && !walk {
                assert_eq!(labels[1..], ["decode_merge"], "{name} ctx {ctx} hd {hd}");
            }
            if walk {
                assert_eq!(labels.len(), 1, "{name} ctx {ctx} hd {hd}");
                assert_eq!(
                    partials.cols,
                    h.hd + 2,
                    "{name}: decode_one needs no partials"
                );
            }
            gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
            let want = cpu_attention(&q, &k, &v, 1, kv_len, h, false, 0);
            assert_close(
                &format!(
                    "{name} decode attention over {kv_len} of {ctx} keys, hd {hd}, textures {in_tex}"
                ),
                &out.read(gpu).unwrap(),
                &want,
                2e-5,
            );
        }
    }
}

#[test]
fn patch_embedding_matches_cpu_convolution() {
    let mut rng = Rng::new(9);
    for (name, gpu) in variants() {
        let (img, patch, d) = (42usize, 14usize, 24usize);
        let g = img / patch;
        let kdim = 3 * patch * patch;
        let pix = rng.vec(3 * img * img, 1.0);
        let w16 = to_f16_bits(&rng.vec(d * kdim, 0.1));
        let w = from_f16_bits(&w16);
        let cls = rng.vec(d, 1.0);
        let pos = rng.vec((g * g + 1) * d, 1.0);
        let pb = gpu.storage_init("pix", bytemuck::cast_slice(&pix)).unwrap();
        let cols = Tensor::new(&gpu, "cols", g * g, kdim).unwrap();
        let wt = Weight::upload(&gpu, "w", d, kdim, &w16).unwrap();
        let patches = Tensor::new(&gpu, "patches", g * g, d).unwrap();
        let out = Tensor::new(&gpu, "out", g * g + 1, d).unwrap();
        let cb = gpu.storage_init("cls", bytemuck::cast_slice(&cls)).unwrap();
        let posb = gpu.storage_init("pos", bytemuck::cast_slice(&pos)).unwrap();
        let mut ks = vec![ops::embed::im2col(&gpu, &pb, img, patch, &cols).unwrap()];
        ks.extend(ops::matmul::linear(&gpu, &cols, &wt, None, &patches, Act::None, false).unwrap());
        ks.push(ops::embed::clip_embed(&gpu, &patches, &cb, &posb, &out).unwrap());
        gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
        let mut want = vec![0f32; (g * g + 1) * d];
        for o in 0..d {
            want[o] = cls[o] + pos[o];
        }
        for py in 0..g {
            for px in 0..g {
                for o in 0..d {
                    let mut s = 0f64;
                    for c in 0..3 {
                        for ky in 0..patch {
                            for kx in 0..patch {
                                let wv = w[o * kdim + c * patch * patch + ky * patch + kx] as f64;
                                s += wv
                                    * pix[c * img * img + (py * patch + ky) * img + px * patch + kx]
                                        as f64;
                            }
                        }
                    }
                    let t = 1 + py * g + px;
                    want[t * d + o] = s as f32 + pos[t * d + o];
                }
            }
        }
        assert_close(
            &format!("{name} patch embedding"),
            &out.read(&gpu).unwrap(),
            &want,
            1e-4,
        );
    }
}

#[test]
fn argmax_and_sampling_choose_valid_tokens() {
    let mut rng = Rng::new(10);
    for (name, gpu) in variants() {
        let n = 1003;
        let mut logits = rng.vec(n, 3.0);
        logits[777] = 9.0;
        logits[901] = 9.0; // a tie: the lower index wins
        let lb = gpu
            .storage_init("logits", bytemuck::cast_slice(&logits))
            .unwrap();
        let tok = gpu.storage_buffer("tok", 4).unwrap();
        let step = step_buffer(
            &gpu,
            Step {
                rand: 0.5,
                ..Default::default()
            },
        );
        let greedy = ops::sample::Sampling::greedy();
        gpu.run(&[&ops::sample::choose(&gpu, greedy, &lb, n, &tok, &step).unwrap()])
            .unwrap();
        let t: u32 = bytemuck::pod_read_unaligned(&gpu.read_bytes(&tok, 0, 4).unwrap());
        assert_eq!(t, 777, "{name}");

        // A tiny top-p keeps only the most likely tokens (here the two tied ones).
        let s = ops::sample::Sampling {
            temperature: 0.7,
            top_p: 0.05,
        };
        for rand in [0.0f32, 0.3, 0.99] {
            let step = step_buffer(
                &gpu,
                Step {
                    rand,
                    ..Default::default()
                },
            );
            gpu.run(&[&ops::sample::choose(&gpu, s, &lb, n, &tok, &step).unwrap()])
                .unwrap();
            let t: u32 = bytemuck::pod_read_unaligned(&gpu.read_bytes(&tok, 0, 4).unwrap());
            assert!(t == 777 || t == 901, "{name}: top-p sample {t}");
        }
        // With top-p 1, the inverse CDF at rand picks the token a CPU walk picks.
        let s = ops::sample::Sampling {
            temperature: 1.5,
            top_p: 1.0,
        };
        for rand in [0.01f32, 0.25, 0.5, 0.75, 0.999] {
            let step = step_buffer(
                &gpu,
                Step {
                    rand,
                    ..Default::default()
                },
            );
            gpu.run(&[&ops::sample::choose(&gpu, s, &lb, n, &tok, &step).unwrap()])
                .unwrap();
            let t: u32 = bytemuck::pod_read_unaligned(&gpu.read_bytes(&tok, 0, 4).unwrap());
            let mx = logits.iter().cloned().fold(f32::MIN, f32::max);
            let p: Vec<f64> = logits
                .iter()
                .map(|l| (((l - mx) / 1.5) as f64).exp())
                .collect();
            let z: f64 = p.iter().sum();
            let mut acc = 0.0;
            let mut want = n - 1;
            for (i, pi) in p.iter().enumerate() {
                acc += pi;
                if acc > rand as f64 * z {
                    want = i;
                    break;
                }
            }
            assert!(
                (t as i64 - want as i64).abs() <= 1,
                "{name}: rand {rand}: got {t}, want {want}"
            );
        }
    }
}

/// Pipelines compile on worker threads: a good one runs; one the driver rejects (a
/// workgroup far over the device's limits, which naga alone cannot know) comes back as an
/// error naming it when a dispatch needs it, rather than a hang or a panic.
#[test]
fn pipelines_compiled_on_workers_run_or_fail_with_their_error() {
    use vlm_run::gpu::Compiler;
    let gpu = Gpu::new(&GpuOptions::default()).unwrap();
    let compiler = Compiler::new(&gpu.device);
    let src = |size: u32| {
        format!(
            "@group(0) @binding(0) var<storage, read_write> y: array<f32>;
             @compute @workgroup_size({size})
             fn main(@builtin(global_invocation_id) g: vec3<u32>) {{
                 if g.x < arrayLength(&y) {{ y[g.x] = f32(g.x) * 2.0; }}
             }}"
        )
    };
    let good = compiler.make(src(8), "main", "good".into()).unwrap();
    let too_big = compiler.make(src(4096), "main", "too big".into()).unwrap();
    let e = too_big
        .get()
        .expect_err("a workgroup of 4096 invocations compiled");
    assert!(e.to_string().starts_with("too big failed"), "{e}");
    let y = gpu.storage_buffer("y", 4 * 16).unwrap();
    let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &good.layout,
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: y.as_entire_binding(),
        }],
    });
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(good.get().unwrap());
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(2, 1, 1);
    }
    gpu.queue.submit([enc.finish()]);
    let got = gpu.read_f32(&y, 16).unwrap();
    let want: Vec<f32> = (0..16).map(|i| 2.0 * i as f32).collect();
    assert_eq!(got, want);
}

/// Dropping the compiler waits for the compiles in flight and settles the queued ones with an
/// error: a worker still inside the driver when the process exits crashes it (this made a
/// failed load end in SIGSEGV about one run in twenty).
#[test]
fn dropping_the_compiler_leaves_no_pipeline_compiling() {
    use vlm_run::gpu::Compiler;
    let gpu = Gpu::new(&GpuOptions::default()).unwrap();
    let compiler = Compiler::new(&gpu.device);
    // distinct shaders, so that none is a cache hit in the driver
    let pipelines: Vec<_> = (0..24)
        .map(|i| {
            let src = format!(
                "@group(0) @binding(0) var<storage, read_write> y: array<f32>;
                 @compute @workgroup_size(64)
                 fn main(@builtin(global_invocation_id) g: vec3<u32>) {{
                     var a = f32(g.x);
                     for (var k = 0u; k < {n}u; k++) {{ a = a * 1.0001 + {i}.0; }}
                     if g.x < arrayLength(&y) {{ y[g.x] = a; }}
                 }}",
                n = 8 + i
            );
            compiler.make(src, "main", format!("shader {i}")).unwrap()
        })
        .collect();
    drop(compiler);
    let mut skipped = 0;
    for (i, p) in pipelines.iter().enumerate() {
        match p.poll() {
            None => panic!("shader {i} is still compiling after the compiler was dropped"),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                assert!(e.to_string().contains("was dropped"), "shader {i}: {e}");
                skipped += 1;
            }
        }
    }
    eprintln!("{skipped} of 24 queued compiles skipped");
}

/// Inside `with_empty_grids` this thread's dispatches run nothing, while another thread's on
/// the same device compute; the setting ends with the closure, also when it panics.
#[test]
fn empty_grids_belong_to_the_thread_that_asked_for_them() {
    let gpu = Gpu::new(&GpuOptions::default()).unwrap();
    let ones = vec![1.0f32; 64];
    let a = Tensor::from_f32(&gpu, "a", 1, 64, &ones).unwrap();
    let add_into = |y: &Tensor| ops::elementwise::add(&gpu, &a, &a, y).unwrap();
    let (mine, theirs) = (
        Tensor::new(&gpu, "mine", 1, 64).unwrap(),
        Tensor::new(&gpu, "theirs", 1, 64).unwrap(),
    );
    let (k_mine, k_theirs) = (add_into(&mine), add_into(&theirs));
    gpu.with_empty_grids(|| {
        gpu.run(&[&k_mine]).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| gpu.run(&[&k_theirs]).unwrap());
        });
    });
    assert_eq!(
        mine.read(&gpu).unwrap(),
        vec![0.0; 64],
        "empty grids computed"
    );
    assert_eq!(
        theirs.read(&gpu).unwrap(),
        vec![2.0; 64],
        "the other thread ran empty"
    );
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gpu.with_empty_grids(|| panic!("inside"))
    }));
    assert!(panicked.is_err());
    gpu.run(&[&k_mine]).unwrap();
    assert_eq!(
        mine.read(&gpu).unwrap(),
        vec![2.0; 64],
        "still empty after the closure"
    );
}

/// The vision tower's products over many rows read x from its texture copy (XTEX in
/// `gemm_tokens` and `gemm_lanes`), not from x's buffer, which holds NaN here; `gemm_tokens`
/// writes y's texture copy beside y (YTEX: bias, QuickGELU, and a residual add); and the
/// kernels that feed them (LayerNorm, the direct prefill attention, im2col, copy_rows) write
/// texture copies equal to their buffers; LayerNorm reads x's texture copy (X_TEX). A product
/// that cannot fill y's last texel refuses a y with texels.
#[test]
fn prefill_products_read_and_write_texture_copies() {
    let mut rng = Rng::new(12);
    let mut textured = 0;
    for (name, gpu) in variants() {
        if !gpu.caps.x_textures || !ops::matmul::reads_texels(&gpu, 45) {
            continue;
        }
        textured += 1;
        let texels = |t: Tensor, label| t.with_texels(&gpu, label);
        let texture_of = |t: &Tensor| -> Vec<f32> {
            let tex = t.texels.as_ref().unwrap().texture();
            let raw = gpu.read_texture_rows(tex, (t.cols / 4) as u32, t.rows as u32);
            bytemuck::pod_collect_to_vec(&raw.unwrap())
        };
        // x of m rows: NaN in the buffer, the values in its texture
        let x_in = |m: usize, k: usize, x: &[f32]| {
            let xt = texels(
                Tensor::from_f32(&gpu, "x", m, k, &vec![f32::NAN; m * k]).unwrap(),
                "x",
            );
            let src = Tensor::from_f32(&gpu, "xv", m, k, x).unwrap();
            let c = ops::attention::rows_to_texels(&gpu, &src, xt.texels.as_ref().unwrap(), 0);
            gpu.run(&[&c.unwrap()]).unwrap();
            xt
        };

        // gemm_tokens: 45 rows, k = 64 (by token), n = 68 (a partial workgroup of rows)
        let (m, k, n) = (45, 64, 68);
        let x = rng.vec(m * k, 1.0);
        let w16 = to_f16_bits(&rng.vec(n * k, 0.5));
        let w = from_f16_bits(&w16);
        let bias = rng.vec(n, 0.5);
        let wt = Weight::upload(&gpu, "w", n, k, &w16).unwrap();
        assert!(by_token(m, &wt), "{name}");
        let xt = x_in(m, k, &x);
        let bb = gpu.storage_init("b", bytemuck::cast_slice(&bias)).unwrap();
        let y = texels(Tensor::new(&gpu, "y", m, n).unwrap(), "y");
        let ks = ops::matmul::linear(&gpu, &xt, &wt, Some(&bb), &y, Act::QuickGelu, false);
        let ks = ks.unwrap();
        assert_eq!(ks[0].label, "gemm_tokens", "{name}");
        gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
        let quick_gelu = |v: f32| v / (1.0 + (-1.702 * v).exp());
        let want: Vec<f32> = cpu_linear(&x, m, k, &w, n, Some(&bias))
            .into_iter()
            .map(quick_gelu)
            .collect();
        // y's buffer and its texture both hold `want`
        let both_close = |what: &str, t: &Tensor, want: &[f32], tol: f32| {
            assert_close(&format!("{name} {what}"), &t.read(&gpu).unwrap(), want, tol);
            let tex = texture_of(t);
            assert_close(&format!("{name} {what}'s texture"), &tex, want, tol);
        };
        let tol = 2e-5 * k as f32;
        both_close("gemm_tokens y", &y, &want, tol);

        // the residual add (ACCUMULATE) into y and its texture
        let y0 = rng.vec(m * n, 1.0);
        let acc = texels(Tensor::from_f32(&gpu, "acc", m, n, &y0).unwrap(), "acc");
        let ks = ops::matmul::linear(&gpu, &xt, &wt, None, &acc, Act::None, true).unwrap();
        gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
        let prod = cpu_linear(&x, m, k, &w, n, None);
        let want: Vec<f32> = (0..m * n).map(|i| y0[i] + prod[i]).collect();
        both_close("residual add", &acc, &want, tol);

        // gemm_lanes (9 rows, k = 96: not by token) reads x's texture too and writes y's (lane
        // groups of 8 rows), but not where the last texel is partial (67 rows)
        let (m2, k2) = (9, 96);
        let x2 = rng.vec(m2 * k2, 1.0);
        let w2_16 = to_f16_bits(&rng.vec(n * k2, 0.5));
        let w2 = Weight::upload(&gpu, "w2", n, k2, &w2_16).unwrap();
        assert!(!by_token(m2, &w2), "{name}");
        let x2t = x_in(m2, k2, &x2);
        let y2t = texels(Tensor::new(&gpu, "y2t", m2, n).unwrap(), "y2t");
        let ks = ops::matmul::linear(&gpu, &x2t, &w2, None, &y2t, Act::None, false).unwrap();
        assert_eq!(ks[0].label, "gemm_lanes", "{name}");
        gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
        let want = cpu_linear(&x2, m2, k2, &from_f16_bits(&w2_16), n, None);
        both_close("gemm_lanes y", &y2t, &want, 2e-5 * k2 as f32);
        let w67 = Weight::upload(&gpu, "w67", 67, k2, &w2_16[..67 * k2]).unwrap();
        let y67 = texels(Tensor::new(&gpu, "y67", m2, 68).unwrap(), "y67");
        let err = ops::matmul::linear(&gpu, &x2t, &w67, None, &y67, Act::None, false);
        let err = err
            .err()
            .expect("gemm_lanes of 67 rows into texels")
            .to_string();
        assert!(err.contains("texture copy"), "{name}: {err}");

        // LayerNorm, attention and im2col: their texture copies hold what their buffers hold
        let d = 64;
        let h = Heads {
            heads: 4,
            kv_heads: 4,
            hd: 16,
        };
        let qkv: Vec<Tensor> = (0..3)
            .map(|_| Tensor::from_f32(&gpu, "qkv", m, d, &rng.vec(m * d, 1.0)).unwrap())
            .collect();
        let attn = texels(Tensor::new(&gpu, "attn", m, d).unwrap(), "attn");
        assert!(ops::attention::writes_texels(&gpu, h, &attn), "{name}");
        let kv_tex = KvTextures::new(&gpu, h, m);
        let ks = ops::attention::prefill(
            &gpu,
            h,
            &qkv[0],
            &qkv[1],
            &qkv[2],
            m,
            false,
            0,
            &attn,
            PrefillKv::copy(kv_tex.as_ref()),
        )
        .unwrap();
        gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
        let (img, patch) = (42, 14);
        let pix = rng.vec(3 * img * img, 1.0);
        let pb = gpu.storage_init("pix", bytemuck::cast_slice(&pix)).unwrap();
        let cols = texels(
            Tensor::new(&gpu, "cols", 9, 3 * patch * patch).unwrap(),
            "cols",
        );
        let im2col = ops::embed::im2col(&gpu, &pb, img, patch, &cols).unwrap();
        gpu.run(&[&im2col]).unwrap();
        let xv = rng.vec(m * d, 2.0);
        let xn = Tensor::from_f32(&gpu, "xn", m, d, &xv).unwrap();
        let (gamma, beta) = (rng.vec(d, 1.0), rng.vec(d, 1.0));
        let gb = gpu.storage_init("g", bytemuck::cast_slice(&gamma)).unwrap();
        let betab = gpu
            .storage_init("beta", bytemuck::cast_slice(&beta))
            .unwrap();
        let ln = texels(Tensor::new(&gpu, "ln", m, d).unwrap(), "ln");
        // LayerNorm's input held only in its texture (X_TEX)
        let xln = x_in(m, d, &xv);
        let norm = ops::norm::norm(&gpu, &xln, 0, &gb, Some(&betab), 1e-5, &ln);
        // only the lane-group variant (subgroups of 8 or more) writes texels
        let mut copies = vec![("attention", &attn), ("im2col", &cols)];
        if ops::norm::norms_write_texels(&gpu, d) {
            gpu.run(&[&norm.unwrap()]).unwrap();
            let mut want = Vec::with_capacity(m * d);
            for row in xv.chunks(d) {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
                let inv = 1.0 / (var + 1e-5).sqrt();
                for i in 0..d {
                    want.push(((row[i] as f64 - mean) * inv) as f32 * gamma[i] + beta[i]);
                }
            }
            assert_close(
                &format!("{name} layer norm"),
                &ln.read(&gpu).unwrap(),
                &want,
                1e-4,
            );
            copies.push(("layer norm", &ln));
        } else {
            let err = norm.err().expect("a norm into texels").to_string();
            assert!(err.contains("texture copy"), "{name}: {err}");
        }
        // DivPrune's cosine Gram over the projector's output: the unit rows from its texture
        let (gn, gd) = (130, 96);
        let gx = rng.vec(gn * gd, 1.0);
        let gxt = x_in(gn, gd, &gx);
        let unit = Tensor::new(&gpu, "unit", gn, gd).unwrap();
        let gram = Tensor::new(&gpu, "gram", gn, gn).unwrap();
        let ks = ops::prune::cosine_gram(&gpu, &gxt, 0..gn, &unit, &gram).unwrap();
        assert!(ks[0].label == "normalize_rows", "{name}");
        gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
        let want = vlm_run::prune::select::cosine_gram(&gx, gd);
        assert_close(
            &format!("{name} cosine Gram"),
            &gram.read(&gpu).unwrap(),
            &want,
            1e-5,
        );
        // copy_rows: rows 1.. of the LayerNorm's input (the projector's from the tower's)
        let rows = Tensor::new(&gpu, "rows", m - 1, d).unwrap();
        let rows = texels(rows, "rows");
        let dst = ops::elementwise::RowDest {
            buf: &rows.buf,
            stride: d,
            row0: 0,
            col: 0,
            step: None,
            texels: rows.texels.as_ref(),
        };
        let copy = ops::elementwise::copy_rows(&gpu, &xn, 1, m - 1, dst).unwrap();
        gpu.run(&[&copy]).unwrap();
        assert_eq!(
            rows.read(&gpu).unwrap(),
            xn.read(&gpu).unwrap()[d..],
            "{name}"
        );
        copies.push(("copy_rows", &rows));
        for (what, t) in copies {
            let buf = t.read(&gpu).unwrap();
            assert!(buf.iter().all(|v| v.is_finite()), "{name} {what}");
            assert_eq!(texture_of(t), buf, "{name} {what}'s texture");
        }
        // im2col's columns: patch 4's pixel (channel 2, ky 13, kx 13)
        let (py, px) = (1, 1);
        let at = 2 * img * img + (py * patch + 13) * img + px * patch + 13;
        assert_eq!(cols.read(&gpu).unwrap()[4 * 588 + 587], pix[at], "{name}");
    }
    assert!(textured >= 1 || !variants().iter().any(|(_, g)| g.caps.cpu));
}

/// The f16 decode GEMV at every word-lane setting (0: 32-value groups over lane groups of 8;
/// 8, 16, 32: lanes stepping over 16-byte words, the GPU default; subgroup sums where a
/// subgroup holds the lane group, workgroup memory elsewhere) against the CPU: plain products
/// over x rows with NaN past k, RMSNorm on load with a residual add, SwiGLU's pairs, and
/// RoPE's pairs with the cache writes against the unfused product followed by rope_kv.
#[test]
fn decode_gemv_word_lanes_match_cpu() {
    let mut rng = Rng::new(21);
    let eps = 1e-5;
    for (name, gpu) in variants() {
        for lanes in [0u32, 8, 16, 32] {
            gpu.set_gemv_word_lanes(lanes);
            assert_eq!(gpu.gemv_word_lanes(), lanes);
            let name = format!("{name} word lanes {lanes}");
            // k = 100: the last word half past k; 1000: words no multiple of the lanes;
            // 256: whole 32-value groups (K_WHOLE)
            for &(k, n) in &[(100usize, 67usize), (256, 130), (1000, 36)] {
                let wide = k + 12;
                let mut x = rng.vec(wide, 1.0);
                x[k..].fill(f32::NAN);
                let w16 = to_f16_bits(&rng.vec(n * k, 0.5));
                let w = from_f16_bits(&w16);
                let xt = Tensor::from_f32(&gpu, "x", 1, wide, &x).unwrap();
                let wt = Weight::upload(&gpu, "w", n, k, &w16).unwrap();
                let tol = 2e-5 * k as f32;
                let what = format!("{name} {k}x{n}");

                let y = Tensor::new(&gpu, "y", 1, n).unwrap();
                let ks = ops::matmul::linear(&gpu, &xt, &wt, None, &y, Act::None, false).unwrap();
                assert_eq!(ks[0].label, "gemv", "{what}");
                gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
                let prod = cpu_linear(&x[..k], 1, k, &w, n, None);
                assert_close(&format!("{what} plain"), &y.read(&gpu).unwrap(), &prod, tol);

                // RMSNorm on load, added into y
                let g = rng.vec(k, 1.0);
                let gt = Tensor::from_f32(&gpu, "g", 1, k, &g).unwrap();
                let y0 = rng.vec(n, 1.0);
                let y = Tensor::from_f32(&gpu, "y0", 1, n, &y0).unwrap();
                let e = ops::matmul::Epilogue {
                    norm: Some((&gt.buf, eps)),
                    accumulate: true,
                    ..Default::default()
                };
                let ks = ops::matmul::gemv(&gpu, &xt, &wt, &y, e).unwrap().unwrap();
                gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
                let ms = x[..k].iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / k as f64;
                let scale = 1.0 / (ms + eps as f64).sqrt();
                let xn: Vec<f32> = (0..k)
                    .map(|i| (x[i] as f64 * scale) as f32 * g[i])
                    .collect();
                let normed = cpu_linear(&xn, 1, k, &w, n, None);
                let want: Vec<f32> = (0..n).map(|i| y0[i] + normed[i]).collect();
                assert_close(
                    &format!("{what} norm+add"),
                    &y.read(&gpu).unwrap(),
                    &want,
                    tol,
                );

                // SwiGLU of [gate; up] (n even: the first n / 2 rows gate the rest)
                let half = n / 2;
                let wg = Weight::upload(&gpu, "gu", 2 * half, k, &w16[..2 * half * k]).unwrap();
                let y = Tensor::new(&gpu, "act", 1, half).unwrap();
                let e = ops::matmul::Epilogue {
                    gate_up: true,
                    ..Default::default()
                };
                let ks = ops::matmul::gemv(&gpu, &xt, &wg, &y, e).unwrap().unwrap();
                gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
                let want: Vec<f32> = (0..half)
                    .map(|i| {
                        let (a, b) = (prod[i], prod[half + i]);
                        a / (1.0 + (-a).exp()) * b
                    })
                    .collect();
                assert_close(
                    &format!("{what} swiglu"),
                    &y.read(&gpu).unwrap(),
                    &want,
                    tol,
                );
            }

            // RoPE's epilogue on a decode's q|k|v (2 query heads, 1 KV head of 8), written at
            // cache row 3, against the product into a tensor and rope_kv
            let h = Heads {
                heads: 2,
                kv_heads: 1,
                hd: 8,
            };
            let (k, n) = (100, 32);
            let x = rng.vec(k, 1.0);
            let w16 = to_f16_bits(&rng.vec(n * k, 0.5));
            let xt = Tensor::from_f32(&gpu, "x", 1, k, &x).unwrap();
            let wt = Weight::upload(&gpu, "qkv", n, k, &w16).unwrap();
            let inputs = RopeInputs {
                step: step_buffer(
                    &gpu,
                    Step {
                        kv_offset: 3,
                        kv_len: 4,
                        ..Default::default()
                    },
                ),
                ..RopeInputs::new(&gpu, 1, h.hd, |_| 7)
            };
            let run = |fused: bool| {
                let out = inputs.outputs(&gpu, h, 1, 5);
                let rope = out.rope(&inputs, h);
                if fused {
                    let e = ops::matmul::Epilogue {
                        rope: Some(rope),
                        ..Default::default()
                    };
                    let ks = ops::matmul::gemv(&gpu, &xt, &wt, &out.q, e)
                        .unwrap()
                        .unwrap();
                    gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
                } else {
                    let qkv = Tensor::new(&gpu, "qkv_out", 1, n).unwrap();
                    let mut ks =
                        ops::matmul::linear(&gpu, &xt, &wt, None, &qkv, Act::None, false).unwrap();
                    ks.push(ops::rope::rope_kv(&gpu, &qkv, &rope).unwrap());
                    gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
                }
                out.read(&gpu, 1).0
            };
            let (want, got) = (run(false), run(true));
            for (i, part) in ["q", "k cache", "v cache"].iter().enumerate() {
                assert_close(&format!("{name} rope {part}"), &got[i], &want[i], 1e-4);
            }
            // the cache rows other than 3 stay zero
            assert!(want[1][..3 * 8].iter().all(|v| *v == 0.0), "{name}");
            assert!(want[1][3 * 8..4 * 8].iter().any(|v| *v != 0.0), "{name}");
        }
    }
}

/// Device timestamps (`VLM_RUN_PROFILE=gpu`): each way the device has times every dispatch
/// of a pass in order, a product over 4M values longer than one over 64, all within the
/// host's wall time, and the kernels still compute; passes longer than a query set (4096
/// timestamps) come back whole. lavapipe has both ways.
#[test]
fn device_timestamps_time_each_dispatch_in_place() {
    use vlm_run::gpu::TimestampWay;
    let gpu = Gpu::new(&GpuOptions::default()).unwrap();
    let ways = gpu.timestamp_ways();
    if gpu.caps.cpu {
        assert_eq!(
            ways,
            [TimestampWay::InsidePass, TimestampWay::PassPerDispatch]
        );
    }
    let sized = |n: usize| {
        let x = Tensor::from_f32(&gpu, "x", 1, n, &vec![1.0f32; n]).unwrap();
        let y = Tensor::new(&gpu, "y", 1, n).unwrap();
        let k = ops::elementwise::add(&gpu, &x, &x, &y).unwrap();
        (k, y)
    };
    let (small, small_y) = sized(64);
    let (big, big_y) = sized(1 << 22);
    let ks = [&small, &big, &small, &big];
    for way in ways {
        let t = gpu.time_dispatches(&ks, way).unwrap();
        assert_eq!(t.way, way);
        assert_eq!(t.secs.len(), 4, "{way:?}");
        assert!(
            t.secs.iter().all(|s| s.is_finite() && *s >= 0.0),
            "{way:?} {:?}",
            t.secs
        );
        for (b, s) in [(1, 0), (3, 2), (1, 2), (3, 0)] {
            assert!(
                t.secs[b] > t.secs[s],
                "{way:?}: 4M values not slower: {:?}",
                t.secs
            );
        }
        assert!(
            t.total() <= t.wall,
            "{way:?}: {} s on the device, {} s wall",
            t.total(),
            t.wall
        );
        let rows = vlm_run::profile::by_kernel(&ks, &t.secs);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].dispatches, rows[0].secs),
            (2, t.secs[1] + t.secs[3])
        );
        assert!(rows[0].kernel.starts_with("add ["), "{}", rows[0].kernel);
        // more dispatches than a query set has timestamps for
        let many = vec![&small; 4100];
        assert_eq!(gpu.time_dispatches(&many, way).unwrap().secs.len(), 4100);
    }
    assert_eq!(small_y.read(&gpu).unwrap(), vec![2.0; 64]);
    assert!(big_y.read(&gpu).unwrap().iter().all(|v| *v == 2.0));
}
