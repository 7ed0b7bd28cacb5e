//! GGUF: the reader and CPU dequantisation against the `gguf` package's own decoding of a
//! fixture holding every supported type; the quantized GPU kernels (GEMV, GEMM, embedding
//! rows) against CPU dequantise-then-matmul over odd shapes; and malformed files, each of
//! which must give a clear error and no panic.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use vlm_run::gguf::quant::{dequantize, GgmlType};
use vlm_run::gguf::{GgufFile, Value};
use vlm_run::gpu::{GemmTile, Gpu, GpuOptions, Tensor, Weight};
use vlm_run::ops::{self, matmul::Act};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/quant-types.gguf")
}

const TYPES: [GgmlType; 10] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::IQ4NL,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

#[test]
fn reader_and_dequantisation_agree_with_the_gguf_package() {
    let f = GgufFile::open(&fixture()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.get("test.u32"), Some(&Value::U64(7)));
    assert_eq!(f.get("test.i32"), Some(&Value::I64(-7)));
    assert_eq!(f.get("test.f32"), Some(&Value::F64(0.5)));
    assert_eq!(f.get("test.bool"), Some(&Value::Bool(true)));
    assert_eq!(f.str("test.str"), Some("héllo"));
    assert_eq!(f.u64("test.u64").unwrap(), 1 << 40);
    assert_eq!(f.str("general.architecture"), Some("llama"));
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().with_extension("json")).unwrap())
            .unwrap();
    let reference = reference.as_object().unwrap();
    assert_eq!(reference.len(), 12);
    for (name, r) in reference {
        let t = f.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(t.ty.name(), r["type"].as_str().unwrap(), "{name}");
        let (rows, cols) = (
            r["rows"].as_u64().unwrap() as usize,
            r["cols"].as_u64().unwrap() as usize,
        );
        assert_eq!(t.shape(), vec![rows, cols], "{name}");
        let want: Vec<f32> = serde_json::from_value(r["values"].clone()).unwrap();
        let got = f.f32(t).unwrap();
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        // Both sides compute in f32; only the order of the scale products may differ.
        assert_close(&format!("{name} dequantised"), &got, &want, 1e-6 * scale);
    }
}

fn cpu_linear(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                .sum();
            y[i * n + j] = s as f32;
        }
    }
    y
}

/// Random blocks of `ty` with small finite scales.
fn random_blocks(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let blocks = rows * cols / ty.block_values();
    let mut out = Vec::new();
    for _ in 0..blocks {
        let mut b: Vec<u8> = (0..ty.block_bytes())
            .map(|_| rng.next_u32() as u8)
            .collect();
        let mut put = |at: usize, v: f32| {
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes())
        };
        match ty {
            GgmlType::Q4K | GgmlType::Q5K => {
                put(0, 0.01 * rng.uniform());
                put(2, 0.01 * rng.uniform());
            }
            GgmlType::Q6K => put(208, 0.002 * rng.uniform()),
            GgmlType::Q3K => put(108, 0.002 * rng.uniform()),
            GgmlType::Q4_1 | GgmlType::Q5_1 => {
                put(0, 0.1 * rng.uniform());
                put(2, rng.uniform());
            }
            _ => put(0, 0.1 * rng.uniform()),
        }
        out.extend(b);
    }
    out
}

#[test]
fn quantized_gemv_gemm_and_embedding_match_cpu_dequantisation() {
    let mut rng = Rng::new(7);
    for ((variant, gpu), tile) in variants()
        .into_iter()
        .flat_map(|v| GemmTile::ALL.map(|t| (v.clone(), t)))
    {
        gpu.set_gemm_tile(tile);
        // and with each tile one of the decode GEMV's layouts: 32-value groups over lane
        // groups of 8 (CPU devices), or the GPUs' blocks over 8 or 32 lanes
        let lanes = match tile {
            GemmTile::T64 => 32,
            GemmTile::T32 => 8,
            GemmTile::Lanes => 0,
        };
        gpu.set_gemv_word_lanes(lanes);
        let variant = format!("{variant} tile {} word lanes {lanes}", tile.side());
        for ty in TYPES {
            let bv = ty.block_values();
            for &(m, blocks, n) in &[
                (1usize, 1usize, 19usize),
                (1, 3, 67),
                (70, 3, 130),
                (3, 2, 5),
            ] {
                let k = blocks * bv.max(32) * if bv == 32 { 3 } else { 1 };
                let raw = random_blocks(&mut rng, ty, n, k);
                let w = dequantize(ty, &raw).unwrap();
                let wt = Weight::upload_quantized(&gpu, "w", ty, n, k, &raw).unwrap();
                assert_eq!(wt.gpu_bytes(), raw.len() as u64);
                let x = rng.vec(m * k, 1.0);
                let xt = Tensor::from_f32(&gpu, "x", m, k, &x).unwrap();
                let y = Tensor::new(&gpu, "y", m, n).unwrap();
                let want = cpu_linear(&x, m, k, &w, n);
                let scale = want.iter().fold(1e-3f32, |a, v| a.max(v.abs()));
                let what = format!("{variant} {} {m}x{k}x{n}", ty.name());
                let ks = ops::matmul::linear(&gpu, &xt, &wt, None, &y, Act::None, false).unwrap();
                if m > 1 {
                    // every block type goes to the lane kernel when the tile asks for it
                    let lanes = tile == GemmTile::Lanes
                        && ops::matmul::gemv_reads(&wt)
                        && k >= ops::matmul::lane_min_k(wt.ty);
                    let want = if lanes { "gemm_lanes" } else { "gemm" };
                    assert_eq!(ks[0].label, want, "{what}");
                }
                gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
                assert_close(
                    &what,
                    &y.read(&gpu).unwrap(),
                    &want,
                    1e-5 * scale * (k as f32).sqrt(),
                );

                // Bias and accumulation epilogues on the quantized path.
                let b = rng.vec(n, 1.0);
                let bias = gpu.storage_init("b", bytemuck::cast_slice(&b)).unwrap();
                let ks =
                    ops::matmul::linear(&gpu, &xt, &wt, Some(&bias), &y, Act::None, true).unwrap();
                gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
                let want2: Vec<f32> = (0..m * n).map(|i| 2.0 * want[i] + b[i % n]).collect();
                assert_close(
                    &format!("{what} bias+acc"),
                    &y.read(&gpu).unwrap(),
                    &want2,
                    2e-5 * scale * (k as f32).sqrt() + 1e-6,
                );

                // Embedding rows, ids out of order and repeated.
                let ids: Vec<u32> = vec![n as u32 - 1, 0, 2 % n as u32, 0];
                let idb = gpu.storage_init("ids", bytemuck::cast_slice(&ids)).unwrap();
                let out = Tensor::new(&gpu, "out", ids.len(), k).unwrap();
                let ks = ops::embed::gather(&gpu, &idb, &wt, &out).unwrap();
                gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
                let want: Vec<f32> = ids
                    .iter()
                    .flat_map(|&i| w[i as usize * k..(i as usize + 1) * k].to_vec())
                    .collect();
                assert_eq!(out.read(&gpu).unwrap(), want, "{what} embedding rows");
            }
        }
    }
}

#[test]
fn quantized_weights_split_by_rows_over_the_binding_limit() {
    // 600 bytes per chunk: Q6_K rows of 210 bytes (not a multiple of 4) go 2 to a chunk,
    // Q5_0 rows of 176 bytes (16-byte quants, 4-byte highs, 2-byte d's a block) 3.
    let gpu = Gpu::new(&GpuOptions {
        max_binding: Some(600),
        ..Default::default()
    })
    .unwrap();
    let mut rng = Rng::new(3);
    for ty in [GgmlType::Q6K, GgmlType::Q5_0, GgmlType::Q3K, GgmlType::Q8_0] {
        let (k, n) = (256, 9);
        let raw = random_blocks(&mut rng, ty, n, k);
        let w = dequantize(ty, &raw).unwrap();
        let wt = Weight::upload_quantized(&gpu, "w", ty, n, k, &raw).unwrap();
        let per_chunk = 596 / ty.row_bytes(k).unwrap();
        assert_eq!(wt.chunks.len(), n.div_ceil(per_chunk), "{}", ty.name());
        for m in [1usize, 5] {
            let x = rng.vec(m * k, 1.0);
            let xt = Tensor::from_f32(&gpu, "x", m, k, &x).unwrap();
            let y = Tensor::new(&gpu, "y", m, n).unwrap();
            let ks = ops::matmul::linear(&gpu, &xt, &wt, None, &y, Act::None, false).unwrap();
            gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
            let want = cpu_linear(&x, m, k, &w, n);
            let scale = want.iter().fold(1e-3f32, |a, v| a.max(v.abs()));
            assert_close(
                &format!("chunked {}", ty.name()),
                &y.read(&gpu).unwrap(),
                &want,
                1e-4 * scale,
            );
        }
    }
}

/// A GGUF v3 file: metadata (key, type id, value bytes), then tensor infos (name, dims, type
/// id, offset) and `data` zero bytes after 32-byte alignment.
fn gguf_bytes(
    kv: &[(&str, u32, Vec<u8>)],
    tensors: &[(&str, Vec<u64>, u32, u64)],
    data: usize,
) -> Vec<u8> {
    let s = |v: &str| {
        let mut b = (v.len() as u64).to_le_bytes().to_vec();
        b.extend(v.as_bytes());
        b
    };
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kv.len() as u64).to_le_bytes());
    for (k, t, v) in kv {
        b.extend(s(k));
        b.extend(t.to_le_bytes());
        b.extend(v);
    }
    for (name, dims, ty, off) in tensors {
        b.extend(s(name));
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(off.to_le_bytes());
    }
    b.resize(b.len().next_multiple_of(32) + data, 0);
    b
}

fn open_bytes(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    match GgufFile::open(&path) {
        Ok(_) => panic!("{name}: a malformed file was accepted"),
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(
                msg.contains(name),
                "{name}: error does not name the file: {msg}"
            );
            assert!(!msg.contains('\n'), "{name}: error is not one line: {msg}");
            msg
        }
    }
}

#[test]
fn malformed_gguf_files_are_clear_errors() {
    let str_kv = |v: &str| {
        let mut b = (v.len() as u64).to_le_bytes().to_vec();
        b.extend(v.as_bytes());
        b
    };
    let good = gguf_bytes(
        &[("general.architecture", 8, str_kv("llama"))],
        &[("t", vec![32, 2], 8, 0)],
        68,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.gguf"), &good).unwrap();
    let f = GgufFile::open(&dir.path().join("good.gguf")).unwrap();
    assert_eq!(f.tensor("t").unwrap().shape(), vec![2, 32]);

    // Truncated anywhere: in the header, in the metadata, in the tensor data.
    for cut in [3, 10, 30, 60, good.len() - 1] {
        let e = open_bytes("truncated.gguf", &good[..cut]);
        assert!(
            e.contains("past the end") || e.contains("bad magic"),
            "cut {cut}: {e}"
        );
    }
    let mut b = good.clone();
    b[0] = b'X';
    assert!(open_bytes("magic.gguf", &b).contains("bad magic"));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(open_bytes("version1.gguf", &b).contains("version 1"));
    b[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert!(open_bytes("version9.gguf", &b).contains("version 9"));

    // Tensor data past the end of the file.
    let b = gguf_bytes(&[], &[("t", vec![32, 2], 8, 64)], 68);
    let e = open_bytes("data_past_end.gguf", &b);
    assert!(e.contains("tensor t") && e.contains("past the end"), "{e}");

    // Huge dimension and huge element count.
    let b = gguf_bytes(&[], &[("t", vec![1 << 50, 2], 0, 0)], 64);
    assert!(open_bytes("huge_dim.gguf", &b).contains("dimension"));
    let b = gguf_bytes(&[], &[("t", vec![1 << 39, 1 << 39, 1 << 39], 0, 0)], 64);
    assert!(open_bytes("huge_count.gguf", &b).contains("overflows"));
    let mut b = gguf_bytes(&[], &[], 0);
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(open_bytes("huge_tensor_count.gguf", &b).contains("tensor count"));
    let arr = [8u32.to_le_bytes().to_vec(), u64::MAX.to_le_bytes().to_vec()].concat();
    let b = gguf_bytes(&[("a", 9, arr)], &[], 0);
    assert!(open_bytes("huge_array.gguf", &b).contains("array"));

    // Unknown tensor type and unknown metadata type.
    let b = gguf_bytes(&[], &[("t", vec![32], 99, 0)], 64);
    assert!(open_bytes("unknown_type.gguf", &b).contains("unknown ggml type 99"));
    let b = gguf_bytes(&[], &[("t", vec![256], 10, 0)], 128);
    assert!(
        open_bytes("unsupported_type.gguf", &b).contains("ggml type 10 (Q2_K) is not supported")
    );
    let b = gguf_bytes(&[("k", 77, vec![0; 8])], &[], 0);
    assert!(open_bytes("unknown_value.gguf", &b).contains("value type 77"));

    // A metadata string whose length runs past the end.
    let mut long = str_kv("llama");
    long[0..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let b = gguf_bytes(&[("general.architecture", 8, long)], &[], 0);
    assert!(open_bytes("string_past_end.gguf", &b).contains("past the end"));

    // Rows that are not whole blocks, and misaligned data.
    let b = gguf_bytes(&[], &[("t", vec![33, 2], 8, 0)], 128);
    assert!(open_bytes("partial_block.gguf", &b).contains("whole Q8_0 blocks"));
    let b = gguf_bytes(&[], &[("t", vec![8], 0, 4)], 64);
    assert!(open_bytes("misaligned.gguf", &b).contains("aligned"));
}

/// The fusions of the decode GEMV (one row), of gemm_lanes (6 rows: a full and a partial
/// block of 4) and of gemm_tokens (f16 rows of k <= 64; 70 rows: a full workgroup of 64 rows,
/// 2 per invocation, and a partial one, x in a uniform buffer on CPU devices; and an odd
/// number of rows past UNIFORM_X_BYTES, x in storage) against CPU arithmetic: RMSNorm of x on load, SwiGLU over a stacked
/// [gate; up] weight, and accumulation, for f16 and every block format, with and
/// without subgroups (their lane sums differ).
#[test]
fn fused_gemv_and_gemm_lanes_match_cpu() {
    let mut rng = Rng::new(11);
    let formats = [
        None,
        Some(GgmlType::Q4_0),
        Some(GgmlType::Q4_1),
        Some(GgmlType::Q8_0),
        Some(GgmlType::Q5_0),
        Some(GgmlType::Q5_1),
        Some(GgmlType::IQ4NL),
        Some(GgmlType::Q3K),
        Some(GgmlType::Q4K),
        Some(GgmlType::Q5K),
        Some(GgmlType::Q6K),
    ];
    for (variant, gpu) in variants() {
        gpu.set_gemm_tile(GemmTile::Lanes);
        // On a CPU device the decode GEMV reads x from a uniform buffer (all but the last
        // variant), up to the uniform-binding limit; elsewhere, and past it, from storage.
        let limit = gpu.caps.max_uniform_binding as usize / 4;
        assert_eq!(
            ops::matmul::x_in_uniform(&gpu, 576),
            gpu.caps.uniform_x,
            "{variant}"
        );
        assert!(!ops::matmul::x_in_uniform(&gpu, limit + 4), "{variant}");
        // the device class's choice, flipped in the last variant (tests/common::variants)
        let flipped = variant.contains(" weights in ");
        assert_eq!(gpu.caps.uniform_x, gpu.caps.cpu != flipped, "{variant}");
        // The decode GEMV's lanes take groups of 32 values in rounds of 8; the groups left
        // after the whole rounds are shared out by lane teams (TAIL) when they divide 8:
        // k = 288 leaves 1 group, 576 leaves 2, 128 is 4 and no whole round, 256 is one round
        // exactly, and 96 (3 groups) leaves some lanes idle instead. k = 288 also spans a
        // partial lane round of gemm_lanes; k = 44 (five and a half units of 8) is short
        // enough for gemm_tokens, whose invocations walk all of k alone. Q4_K's rows are
        // whole 256-value super-blocks (Q5_K's and Q6_K's too): k = 256 and 768 (one and three
        // rounds of 8 groups).
        // gemm_tokens' x past its uniform array (k = 44: 176 bytes a row)
        let past = vlm_run::gpu::UNIFORM_X_BYTES as usize / 176 + 3;
        let cases = formats
            .into_iter()
            .flat_map(|t| {
                let (ks, lanes_k): (&[usize], usize) = match t {
                    Some(GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K) => {
                        (&[256, 768], 768)
                    }
                    _ => (&[288, 576, 128, 256, 96], 288),
                };
                (ks.iter().map(move |&k| (t, 1usize, k, "gemv"))).chain([(
                    t,
                    6,
                    lanes_k,
                    "gemm_lanes",
                )])
            })
            .chain([
                (None, 70, 44, "gemm_tokens"),
                (None, past, 44, "gemm_tokens"),
            ]);
        for (ty, rows, k, entry) in cases {
            // n: 2m rows of [gate; up]
            let m = 37usize;
            let n = 2 * m;
            let (w, wt) = match ty {
                Some(ty) => {
                    let raw = random_blocks(&mut rng, ty, n, k);
                    let w = dequantize(ty, &raw).unwrap();
                    (
                        w,
                        Weight::upload_quantized(&gpu, "w", ty, n, k, &raw).unwrap(),
                    )
                }
                None => {
                    let w: Vec<f32> = rng
                        .vec(n * k, 0.2)
                        .iter()
                        .map(|&v| half::f16::from_f32(v).to_f32())
                        .collect();
                    let bits: Vec<u16> = w
                        .iter()
                        .map(|&v| half::f16::from_f32(v).to_bits())
                        .collect();
                    (w, Weight::upload(&gpu, "w", n, k, &bits).unwrap())
                }
            };
            assert!(ops::matmul::gemv_reads(&wt));
            // rows of different scales, so that a row's RMS cannot stand in for another's
            let x: Vec<f32> = (0..rows).flat_map(|r| rng.vec(k, 0.5 + r as f32)).collect();
            let g = rng.vec(k, 1.0);
            let eps = 1e-5f32;
            // an activation, as the decoder's scratch: on CPU devices its buffer holds the
            // uniform array that gemm_tokens binds (UNIFORM_X_BYTES)
            let xt = Tensor::activation(&gpu, "x", rows, k).unwrap();
            gpu.queue.write_buffer(&xt.buf, 0, bytemuck::cast_slice(&x));
            let gb = gpu.storage_init("g", bytemuck::cast_slice(&g)).unwrap();
            let xn: Vec<f32> = x
                .chunks(k)
                .flat_map(|row| {
                    let ms = row.iter().map(|v| v * v).sum::<f32>() / k as f32;
                    let rms = 1.0 / (ms + eps).sqrt();
                    row.iter().zip(&g).map(move |(a, b)| a * b * rms)
                })
                .collect();
            let plain = cpu_linear(&xn, rows, k, &w, n);
            let scale = plain.iter().fold(1e-3f32, |a, v| a.max(v.abs()));
            let tol = 2e-5 * scale * (k as f32).sqrt();
            let name = format!(
                "{variant} {} rows={rows} k={k}",
                ty.map_or("F16", |t| t.name())
            );

            // RMSNorm fused, accumulating onto y = 1.
            let y = Tensor::from_f32(&gpu, "y", rows, n, &vec![1.0; rows * n]).unwrap();
            let e = ops::matmul::Epilogue {
                norm: Some((&gb, eps)),
                accumulate: true,
                ..Default::default()
            };
            let ks = ops::matmul::fused(&gpu, &xt, &wt, &y, e).unwrap().unwrap();
            assert_eq!(ks[0].label, entry, "{name}");
            gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
            let want: Vec<f32> = plain.iter().map(|v| v + 1.0).collect();
            assert_close(
                &format!("{name} norm+acc"),
                &y.read(&gpu).unwrap(),
                &want,
                tol,
            );

            // RMSNorm and SwiGLU fused.
            let act = Tensor::new(&gpu, "act", rows, m).unwrap();
            let e = ops::matmul::Epilogue {
                norm: Some((&gb, eps)),
                gate_up: true,
                ..Default::default()
            };
            let ks = ops::matmul::fused(&gpu, &xt, &wt, &act, e)
                .unwrap()
                .unwrap();
            assert_eq!(ks[0].label, entry, "{name}");
            gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
            let want: Vec<f32> = (0..rows * m)
                .map(|i| {
                    let (r, j) = (i / m, i % m);
                    let (gate, up) = (plain[r * n + j], plain[r * n + m + j]);
                    gate / (1.0 + (-gate).exp()) * up
                })
                .collect();
            assert_close(
                &format!("{name} swiglu"),
                &act.read(&gpu).unwrap(),
                &want,
                tol * scale,
            );
        }
    }
}

/// Decode's q|k|v GEMV with RoPE and the KV-cache write as its epilogue (gemv.wgsl's ROPE):
/// the rotated queries, key row and value row must match RMSNorm, the CPU product and
/// rotate-half, and no other cache row may change. On CPU devices it also writes a cache
/// kept in textures (ROPE with KV_TEX), where a lane group's pairs are whole texels: then
/// the textures' row must match and the buffers stay as they were. q|k|v in two parts of
/// different types (llama.cpp's K-quant mixes): one GEMV a part, from its first head on.
#[test]
fn qkv_gemv_rotates_into_the_kv_cache() {
    let mut rng = Rng::new(29);
    let (k, ctx, at, pos) = (288usize, 6usize, 3u32, 37u32);
    // (heads, kv_heads, hd, type, into textures, parts apart: (first head of the second
    // part, its type)); None types are f16
    type Split = Option<(usize, Option<GgmlType>)>;
    let cases: [(usize, usize, usize, Option<GgmlType>, bool, Split); 11] = [
        (4, 2, 16, None, false, None),
        (4, 2, 16, Some(GgmlType::Q4_1), false, None),
        (4, 2, 16, Some(GgmlType::Q8_0), false, None),
        // 512 rows: lane groups of 8 rows, 4 pairs, one texel each of K or V
        (8, 4, 32, Some(GgmlType::Q4_1), false, None),
        (8, 4, 32, Some(GgmlType::Q4_1), true, None),
        (8, 4, 32, None, true, None),
        // 128 rows: lane groups of at least 8 rows where the row goes to textures
        (4, 2, 16, Some(GgmlType::Q8_0), true, None),
        // q|k and v apart (v_proj with more bits), into buffers and into textures
        (
            4,
            2,
            16,
            Some(GgmlType::Q5_0),
            false,
            Some((6, Some(GgmlType::Q8_0))),
        ),
        (8, 4, 32, Some(GgmlType::Q5_1), true, Some((12, None))),
        // q and k|v apart: the second part's keys still rotate
        (4, 2, 16, None, false, Some((4, Some(GgmlType::Q5_0)))),
        (
            8,
            4,
            32,
            Some(GgmlType::Q4_0),
            true,
            Some((8, Some(GgmlType::Q8_0))),
        ),
    ];
    // and the GPUs' layout of the GEMV (word lanes 8 and 32), which writes the buffers
    let runs = variants()
        .into_iter()
        .flat_map(|v| [0u32, 8, 32].map(|l| (v.clone(), l)));
    for ((variant, gpu), lanes) in runs {
        gpu.set_gemv_word_lanes(lanes);
        let variant = format!("{variant} word lanes {lanes}");
        for &(heads, kv_heads, hd, ty, to_tex, split) in &cases {
            if lanes > 0 && to_tex {
                continue;
            }
            let n = (heads + 2 * kv_heads) * hd;
            let h = ops::attention::Heads {
                heads,
                kv_heads,
                hd,
            };
            let tex = if to_tex {
                match ops::attention::KvTextures::new(&gpu, h, ctx) {
                    Some(t) => Some(t),
                    None => continue, // GPUs: no cache in textures
                }
            } else {
                None
            };
            let name = format!(
                "{variant} {} {heads}+2x{kv_heads}x{hd}{}{}",
                ty.map_or("F16", |t| t.name()),
                if to_tex { " textures" } else { "" },
                split.map_or(String::new(), |(h, t)| format!(
                    " apart from head {h} in {}",
                    t.map_or("F16", |t| t.name())
                ))
            );
            // rows of q|k|v of one type: their values and the weight
            let mut make = |ty: Option<GgmlType>, rows: usize| -> (Vec<f32>, Weight) {
                match ty {
                    Some(ty) => {
                        let raw = random_blocks(&mut rng, ty, rows, k);
                        let wt = Weight::upload_quantized(&gpu, "w", ty, rows, k, &raw).unwrap();
                        (dequantize(ty, &raw).unwrap(), wt)
                    }
                    None => {
                        let bits: Vec<u16> = rng
                            .vec(rows * k, 0.2)
                            .iter()
                            .map(|&v| half::f16::from_f32(v).to_bits())
                            .collect();
                        let w = bits.iter().map(|&b| half::f16::from_bits(b).to_f32());
                        (
                            w.collect(),
                            Weight::upload(&gpu, "w", rows, k, &bits).unwrap(),
                        )
                    }
                }
            };
            // the parts and the heads they start at
            let (w, parts) = match split {
                None => {
                    let (w, wt) = make(ty, n);
                    (w, vec![(None, wt)])
                }
                Some((h, ty2)) => {
                    let (mut w, a) = make(ty, h * hd);
                    let (w2, b) = make(ty2, n - h * hd);
                    w.extend(w2);
                    (w, vec![(Some(0), a), (Some(h), b)])
                }
            };
            let x = rng.vec(k, 2.0);
            let g = rng.vec(k, 1.0);
            let eps = 1e-5f32;
            let rms = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / k as f32 + eps).sqrt();
            let xn: Vec<f32> = x.iter().zip(&g).map(|(a, b)| a * b * rms).collect();
            let qkv = cpu_linear(&xn, 1, k, &w, n);

            let xt = Tensor::from_f32(&gpu, "x", 1, k, &x).unwrap();
            let gb = gpu.storage_init("g", bytemuck::cast_slice(&g)).unwrap();
            let table = ops::rope::rope_table(10000.0, hd, 64);
            let tb = gpu
                .storage_init("tab", bytemuck::cast_slice(&table))
                .unwrap();
            let pb = gpu.storage_init("pos", bytemuck::bytes_of(&pos)).unwrap();
            let fill = vec![7.0f32; ctx * kv_heads * hd];
            let kc = Tensor::from_f32(&gpu, "k", ctx, kv_heads * hd, &fill).unwrap();
            let vc = Tensor::from_f32(&gpu, "v", ctx, kv_heads * hd, &fill).unwrap();
            let q = Tensor::new(&gpu, "q", 1, heads * hd).unwrap();
            let step = vlm_run::gpu::Step {
                kv_offset: at,
                kv_len: at + 1,
                ..Default::default()
            };
            let sb = gpu.uniform_init("step", bytemuck::bytes_of(&step));
            if let Some(t) = &tex {
                gpu.run(&[&t.copy(&gpu, &kc, &vc, ctx, None).unwrap()])
                    .unwrap();
            }
            let rope = ops::rope::RopeKv {
                heads: h,
                positions: &pb,
                table: &tb,
                q: &q,
                k_cache: &kc,
                v_cache: &vc,
                step: &sb,
                into_textures: tex.as_ref().map(|t| (t, &sb)),
            };
            let into_tex =
                (parts.iter()).all(|(_, w)| ops::matmul::rope_into_textures(&gpu, w, &rope));
            // CPU devices' lane groups take 8 rows or more where they write the textures
            assert_eq!(into_tex, to_tex, "{name}: into textures");
            for (from, wt) in &parts {
                let e = ops::matmul::Epilogue {
                    norm: Some((&gb, eps)),
                    rope: Some(rope),
                    rope_from: *from,
                    ..Default::default()
                };
                let ks = ops::matmul::gemv(&gpu, &xt, wt, &q, e).unwrap().unwrap();
                assert_eq!(ks.len(), 1, "{name}: one dispatch a part");
                gpu.run(&ks.iter().collect::<Vec<_>>()).unwrap();
            }

            // rotate-half at `pos`, in f64
            let rotate = |head: &[f32]| -> Vec<f32> {
                let mut out = head.to_vec();
                for i in 0..hd / 2 {
                    let f = 1.0 / 10000f64.powf(2.0 * i as f64 / hd as f64);
                    let (s, c) = (pos as f64 * f).sin_cos();
                    let (x1, x2) = (head[i] as f64, head[i + hd / 2] as f64);
                    out[i] = (x1 * c - x2 * s) as f32;
                    out[i + hd / 2] = (x2 * c + x1 * s) as f32;
                }
                out
            };
            let heads_of = |from: usize, count: usize, rot: bool| -> Vec<f32> {
                (from..from + count)
                    .flat_map(|h| {
                        let head = &qkv[h * hd..(h + 1) * hd];
                        if rot {
                            rotate(head)
                        } else {
                            head.to_vec()
                        }
                    })
                    .collect()
            };
            let scale = qkv.iter().fold(1e-3f32, |a, v| a.max(v.abs()));
            let tol = 2e-5 * scale * (k as f32).sqrt();
            assert_close(
                &format!("{name} q"),
                &q.read(&gpu).unwrap(),
                &heads_of(0, heads, true),
                tol,
            );
            let row = |want: Vec<f32>| -> Vec<f32> {
                let mut all = fill.clone();
                let o = at as usize * kv_heads * hd;
                all[o..o + kv_heads * hd].copy_from_slice(&want);
                all
            };
            let want_k = row(heads_of(heads, kv_heads, true));
            let want_v = row(heads_of(heads + kv_heads, kv_heads, false));
            let (got_k, got_v) = match &tex {
                Some(t) if into_tex => {
                    assert_eq!(kc.read(&gpu).unwrap(), fill, "{name}: K buffer written");
                    assert_eq!(vc.read(&gpu).unwrap(), fill, "{name}: V buffer written");
                    t.read(&gpu, ctx).unwrap()
                }
                _ => (kc.read(&gpu).unwrap(), vc.read(&gpu).unwrap()),
            };
            assert_close(&format!("{name} k"), &got_k, &want_k, tol);
            assert_close(&format!("{name} v"), &got_v, &want_v, tol);
        }
    }
}
