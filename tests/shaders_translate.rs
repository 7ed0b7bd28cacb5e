//! Every kernel, in every variant the engine builds, parses and validates with naga and
//! translates to MSL (Metal) and HLSL (DX12), so those backends cannot rot unseen.

use vlm_run::gpu::shader::{preprocess, Defines, KERNEL_FAMILIES};
use vlm_run::ops::decode_attention;
use vlm_run::ops::flash_attention::FlashShape;

/// Flags each family is built with besides F16 / SUBGROUPS (each list is one variant).
fn family_variants(family: &str) -> Vec<Vec<&'static str>> {
    match family {
        "matmul" => vec![
            vec![],
            vec!["BIAS"],
            vec!["BIAS", "ACT_GELU"],
            vec!["BIAS", "ACT_QUICK_GELU"],
            vec!["ACT_QUICK_GELU"],
            vec!["ACCUMULATE"],
            vec!["BIAS", "ACCUMULATE"],
            // weights in a texture (the CPU-device default, weight_texture.wgsl)
            vec!["WTEX", "BIAS"],
        ],
        "matmul_quant" => vec![
            vec!["Q4_0"],
            vec!["Q4_1"],
            vec!["Q8_0", "ACCUMULATE"],
            vec!["Q4_K", "BIAS", "ACT_GELU"],
            vec!["Q4_K", "WTEX", "ACCUMULATE"],
            vec!["Q6_K", "BIAS", "ACT_QUICK_GELU"],
            vec!["Q4_1", "WTEX"],
            vec!["Q6_K", "WTEX", "ACCUMULATE"],
            // the Q5 formats: nibbles with a word of fifth bits a group
            vec!["Q5_0", "BIAS"],
            vec!["Q5_1", "WTEX", "ACCUMULATE"],
            vec!["Q5_K", "WTEX", "BIAS", "ACT_GELU"],
            vec!["Q3_K", "WTEX", "ACCUMULATE"],
            vec!["IQ4_NL", "BIAS", "ACT_GELU"],
        ],
        "gemv" => vec![
            vec!["WF16"],
            vec!["WF16", "BIAS", "ACT_GELU"],
            vec!["Q4_0", "NORM"],
            vec!["Q4_1", "NORM", "GATE_UP", "PAIRS"],
            vec!["Q8_0", "ACCUMULATE"],
            // decode's q|k|v with RoPE and the KV-cache write (HALF gets a value)
            vec!["Q4_1", "NORM", "ROPE", "PAIRS"],
            vec!["WF16", "WTEX", "NORM", "ROPE", "PAIRS"],
            // ... into a KV cache kept in textures (CPU devices)
            vec![
                "Q4_1", "WTEX", "NORM", "ROPE", "PAIRS", "TAIL", "XUBO", "KV_TEX",
            ],
            vec!["Q4_1", "BIAS", "ACT_QUICK_GELU"],
            // decode with the residual stream's texture copy (CPU devices): the norm GEMVs
            // read x and the norm weight from textures, the residual adds write it
            vec![
                "Q4_1", "WTEX", "NORM", "GATE_UP", "PAIRS", "TAIL", "K_WHOLE", "XTEX",
            ],
            vec![
                "Q4_1", "WTEX", "NORM", "ROPE", "PAIRS", "TAIL", "XTEX", "KV_TEX",
            ],
            vec!["Q4_1", "WTEX", "ACCUMULATE", "TAIL", "K_WHOLE", "YTEX"],
            vec!["WF16", "XTEX", "NORM", "ACCUMULATE", "YTEX"],
            // the GPUs' layout (GV_LANES gets a value): f16 words, quant blocks
            vec!["WF16", "GV_LANES", "NORM", "GATE_UP", "PAIRS"],
            vec!["WF16", "GV_LANES", "NORM", "ROPE", "PAIRS"],
            vec!["WF16", "GV_LANES", "ACCUMULATE", "K_WHOLE"],
            vec!["Q4_0", "GV_LANES", "NORM"],
            vec!["Q4_1", "GV_LANES", "NORM", "ROPE", "PAIRS"],
            vec!["Q8_0", "GV_LANES", "BIAS", "ACCUMULATE"],
            // Q4_K's sub-blocks as Q4_1 blocks, d and m from their super-block's header
            vec!["Q4_K", "GV_LANES", "NORM", "GATE_UP", "PAIRS"],
            vec![
                "Q4_K", "WTEX", "NORM", "ROPE", "PAIRS", "TAIL", "XTEX", "KV_TEX",
            ],
            vec!["Q4_K", "WTEX", "TOKENS", "NORM", "GATE_UP"],
            vec!["Q4_K", "WTEX", "ACCUMULATE", "TAIL", "K_WHOLE", "YTEX"],
            // Q6_K's nibbles with their 2-bit highs, two scales a group
            vec!["Q6_K", "GV_LANES", "NORM", "ROPE", "PAIRS"],
            vec!["Q6_K", "WTEX", "NORM", "GATE_UP", "PAIRS", "XUBO"],
            vec!["Q6_K", "WTEX", "TOKENS", "ACCUMULATE"],
            // the Q5 formats' nibbles with their fifth bits (Q5_K: Q4_K's headers)
            vec!["Q5_0", "GV_LANES", "NORM", "ROPE", "PAIRS"],
            vec!["Q5_0", "WTEX", "NORM", "GATE_UP", "PAIRS", "TAIL", "XUBO"],
            vec!["Q5_1", "WTEX", "TOKENS", "NORM", "GATE_UP"],
            vec!["Q5_1", "GV_LANES", "ACCUMULATE", "K_WHOLE"],
            vec!["Q5_K", "GV_LANES", "NORM", "GATE_UP", "PAIRS"],
            vec!["Q5_K", "WTEX", "TOKENS", "ACCUMULATE"],
            // Q3_K's 2-bit lows with their high bits, two scales a group
            vec!["Q3_K", "GV_LANES", "NORM", "ROPE", "PAIRS"],
            vec!["Q3_K", "WTEX", "NORM", "GATE_UP", "PAIRS", "TAIL", "XUBO"],
            vec!["Q3_K", "WTEX", "TOKENS", "ACCUMULATE"],
            // IQ4_NL's nibbles indexing its levels
            vec!["IQ4_NL", "GV_LANES", "NORM", "GATE_UP", "PAIRS"],
            vec![
                "IQ4_NL", "WTEX", "NORM", "ROPE", "PAIRS", "TAIL", "XUBO", "KV_TEX",
            ],
            vec!["IQ4_NL", "WTEX", "TOKENS", "NORM"],
            // lane teams over the groups past the whole rounds (TAIL gets a value)
            vec!["Q4_1", "NORM", "GATE_UP", "PAIRS", "TAIL"],
            vec!["WF16", "WTEX", "NORM", "ROPE", "PAIRS", "TAIL"],
            // x and the RMSNorm weight in uniform buffers (XLEN gets a value)
            vec!["Q4_1", "WTEX", "NORM", "GATE_UP", "PAIRS", "TAIL", "XUBO"],
            vec!["WF16", "NORM", "ROPE", "PAIRS", "XUBO"],
            // gemm_lanes, the prefill kernel of the CPU-device table (TOKENS gets a value)
            vec!["WF16", "TOKENS", "BIAS", "ACT_GELU"],
            vec!["Q4_0", "TOKENS", "ACCUMULATE"],
            // and its prefill fusions: RMSNorm on load, SwiGLU of [gate; up]
            vec!["WF16", "TOKENS", "NORM", "GATE_UP"],
            vec!["Q4_1", "TOKENS", "NORM"],
            // weights in a texture: the decode GEMV and both prefill kernels
            vec!["Q4_1", "WTEX", "NORM", "GATE_UP", "PAIRS"],
            vec!["Q8_0", "WTEX", "TOKENS", "ACCUMULATE"],
            vec!["WF16", "WTEX", "TOKENS", "BIAS"],
            // gemm_tokens' x (m rows) and RMSNorm weight in uniform buffers (CPU devices)
            vec!["WF16", "TOKENS", "NORM", "XUBO"],
            vec!["WF16", "WTEX", "TOKENS", "NORM", "GATE_UP", "XUBO"],
            // gemm_tokens' prefill q|k|v with RoPE, the cache writes and the attention's
            // textures
            vec![
                "WF16",
                "WTEX",
                "TOKENS",
                "NORM",
                "ROPE",
                "PAIRS",
                "XUBO",
                "KV_TEX_COPY",
            ],
            // ... with its weight words shared by subgroup shuffles (the engine sets it only
            // with SUBGROUPS), alone and with that epilogue
            vec!["WF16", "WTEX", "TOKENS", "NORM", "XUBO", "SHARED_W"],
            vec!["WF16", "TOKENS", "ROPE", "PAIRS", "KV_TEX_COPY", "SHARED_W"],
            // the vision tower's products: x's rows from its texture copy, y's written too
            vec![
                "WF16",
                "WTEX",
                "TOKENS",
                "XTEX",
                "YTEX",
                "BIAS",
                "ACT_QUICK_GELU",
            ],
            vec!["WF16", "TOKENS", "XTEX", "YTEX", "ACCUMULATE", "SHARED_W"],
        ],
        // o_proj, the MLP and both residual adds by token: each weight in a buffer or in a
        // texture (all three, or a mix as small matrices stay in buffers)
        "layer_tail" => vec![
            vec![],
            vec!["WTEX_O", "WTEX_GU", "WTEX_DOWN"],
            vec!["WTEX_GU"],
        ],
        // KV_TEX_COPY: a prefill's keys and values into the attention's textures too
        "rope" => vec![vec![], vec!["KV_CACHE"], vec!["KV_CACHE", "KV_TEX_COPY"]],
        "attention" => vec![
            vec![],
            vec!["DIRECT_KV"],
            // the direct prefill with 2 or 4 query rows per invocation (QPI_4 comes with QPI_2)
            vec!["DIRECT_KV", "QPI_2"],
            vec!["DIRECT_KV", "QPI_2", "QPI_4", "KV_TEX"],
            // the CPU-device decode attention (the engine sets it only with SUBGROUPS)
            vec!["DIRECT_KV", "DECODE_LANES"],
            // the direct prefill reading K/V from textures (kv_texture.wgsl fills them)
            vec!["DIRECT_KV", "KV_TEX"],
            // ... and the lane-group decode attention reading a KV cache kept in textures
            vec!["DIRECT_KV", "DECODE_LANES", "KV_TEX"],
            // the direct prefill writing its output's texture copy too (the vision tower)
            vec!["DIRECT_KV", "QPI_2", "QPI_4", "KV_TEX", "OUT_TEX"],
            vec!["DIRECT_KV", "OUT_TEX"],
        ],
        // the tiled GPU prefill in the shapes the engine builds (below) for head dims 64,
        // 128 and 256 (1, 2 and 4 output column quads per invocation) with 32 KiB of
        // workgroup memory, and 128 with 16 KiB (4 quads, 128 invocations)
        "flash_attention" => vec![
            vec!["HD_64"],
            vec!["HD_128"],
            vec!["HD_256"],
            vec!["HD_128", "MEMORY_16K"],
        ],
        // the GPUs' decode attention for head dims 64 and 128 (8 lanes per key) and 80 (4)
        "decode_attention" => vec![vec!["HD_64"], vec!["HD_128"], vec!["HD_80"]],
        "norm" => vec![
            vec![],
            vec!["LAYER_NORM"],
            // the CPU-device variant (the engine sets it only with SUBGROUPS)
            vec!["ROW_LANES"],
            vec!["LAYER_NORM", "ROW_LANES"],
            // ... writing its output's texture copy too (the vision tower)
            vec!["LAYER_NORM", "ROW_LANES", "Y_TEX"],
            vec!["LAYER_NORM", "ROW_LANES", "Y_TEX", "X_TEX"],
            vec!["ROW_LANES", "Y_TEX"],
        ],
        // Y_TEX: copy_rows into a texture copy too (the projector's input on CPU devices)
        "elementwise" => vec![vec![], vec!["STEP_OFFSET"], vec!["Y_TEX"]],
        // decode's copy of its new K/V row into a KV cache kept in textures
        "kv_texture" => vec![vec![], vec!["STEP_ROW"], vec!["K_ONLY"]],
        // OUT_TEX: im2col writing its output's texture copy too
        "embed" => vec![vec![], vec!["WTEX"], vec!["OUT_TEX"]],
        // SELECT_WG: the CPU-device workgroup of one SIMD row (it gets a value)
        // KEY_ROWS: VisionZip's similarities from the key rows
        "prune_select" => vec![
            vec![],
            vec!["REGIONS"],
            vec!["PORE"],
            vec!["SELECT_WG"],
            vec!["KEY_ROWS"],
            // max_min's running distances in registers (a value)
            vec!["SELECT_WG", "MAXMIN_SLOTS"],
        ],
        // the unit rows as texels: normalize_rows writes them, the Gram reads them
        "prune_score" => vec![
            vec![],
            vec!["UNIT_TEX_OUT"],
            vec!["UNIT_TEX"],
            vec!["UNIT_TEX", "GRAM_ROWS"],
            // ... normalize_rows reading its input's texture copy (DivPrune on CPU devices)
            vec!["UNIT_TEX_OUT", "A_TEX"],
            // row_min_distance reading the Gram as vec4s
            vec!["ROW_MIN_VEC4"],
        ],
        _ => vec![vec![]],
    }
}

/// Parse, validate and translate one variant to MSL and HLSL; panics naming it otherwise.
fn translate(family: &str, d: &Defines) {
    let src = preprocess(family, d).unwrap();
    let what = format!("{family}.wgsl [{}]", d.key());
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&src)));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
    .validate(&module)
    .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&src)));

    let msl_opts = naga::back::msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    naga::back::msl::write_string(&module, &info, &msl_opts, &Default::default())
        .unwrap_or_else(|e| panic!("{what} -> MSL: {e}"));

    let hlsl_opts = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_2,
        ..Default::default()
    };
    let pipeline = naga::back::hlsl::PipelineOptions::default();
    let mut out = String::new();
    naga::back::hlsl::Writer::new(&mut out, &hlsl_opts, &pipeline)
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{what} -> HLSL: {e}"));
    assert!(
        out.contains("numthreads"),
        "{what}: no compute entry in HLSL"
    );
}

#[test]
fn every_kernel_variant_translates_to_msl_and_hlsl() {
    let mut count = 0;
    for family in KERNEL_FAMILIES {
        for extra in family_variants(family) {
            for (f16, sg) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut d = Defines::new();
                if f16 {
                    d.flag("F16");
                }
                if sg {
                    d.flag("SUBGROUPS");
                }
                for f in &extra {
                    d.flag(f);
                }
                d.set("HD", 64).set("KT", 16).set("LG_ROWS", "4u");
                if extra.contains(&"TOKENS") {
                    // gemm_lanes' input rows per lane group: 8 for f16, 4 for the quant types
                    let tokens = if extra.contains(&"WF16") { "8u" } else { "4u" };
                    d.set("TOKENS", tokens)
                        .set("TOKENS_WG", "32u")
                        .set("TPI", "2u");
                }
                if extra.contains(&"DIRECT_KV") {
                    d.set("QB", "8u");
                }
                if extra.contains(&"SELECT_WG") {
                    d.set("SELECT_WG", "8u");
                }
                if extra.contains(&"MAXMIN_SLOTS") {
                    d.set("MAXMIN_SLOTS", "72u");
                }
                if extra.contains(&"ROPE") {
                    d.set("HALF", "32u");
                }
                if extra.contains(&"GV_LANES") {
                    d.set("GV_LANES", "32u");
                }
                if extra.contains(&"TAIL") {
                    d.set("TAIL", "2u");
                }
                if *family == "flash_attention" {
                    let hd = [64, 128, 256]
                        .into_iter()
                        .find(|hd| extra.contains(&format!("HD_{hd}").as_str()))
                        .unwrap();
                    let memory = if extra.contains(&"MEMORY_16K") {
                        16384
                    } else {
                        32768
                    };
                    FlashShape::for_limits(hd, 256, memory)
                        .unwrap()
                        .set_defines(&mut d, hd);
                }
                if *family == "decode_attention" {
                    let hd = [64, 128, 80]
                        .into_iter()
                        .find(|hd| extra.contains(&format!("HD_{hd}").as_str()))
                        .unwrap();
                    decode_attention::set_defines(&mut d, hd);
                }
                if *family == "layer_tail" {
                    d.set("D", "32u").set("A", "32u").set("I", "64u");
                    d.set("VMAX", "16u").set("TOKENS_WG", "8u");
                }
                if extra.contains(&"XUBO") {
                    d.set("XLEN", "144u").set("GLEN", "16u");
                }
                // the GEMM families in both tiles of the table (TN: invocations per side)
                for tn in [16, 8] {
                    if tn == 16 || family.starts_with("matmul") {
                        translate(family, &d.clone().with("TN", tn));
                        count += 1;
                    }
                }
            }
        }
    }
    // matmul 8 and matmul_quant 13 (each in two tiles), gemv 56, layer_tail 3, norm 7,
    // elementwise 3,
    // rope 3, attention 9, flash_attention 4, decode_attention 3, embed 3, kv_texture 3, sample, bandwidth,
    // random_fill 1 each, prune_select 6, prune_score 6 and prune_gather 1.
    assert_eq!(
        count,
        4 * (2 * (8 + 13) + 56 + 3 + 7 + 3 + 3 + 9 + 4 + 3 + 3 + 3 + 3 + 6 + 6 + 1)
    );
}
