//! ggml tensor types as GGUF stores them, and their CPU dequantisation (the reference the
//! GPU kernels are tested against).
//!
//! Block layouts (little-endian, `d`/`m`/`dmin` are f16):
//! - Q4_0: 32 values in 18 bytes: d, then 16 bytes; value j = d·(nibble − 8), low nibbles
//!   holding values 0..16 and high nibbles 16..32.
//! - Q4_1: 32 values in 20 bytes: d, m, 16 bytes of nibbles (same order); value = d·q + m.
//! - Q5_0: 32 values in 22 bytes: d, a 32-bit word of high bits (bit j for value j), 16
//!   bytes of nibbles (Q4_0's order); value = d·(q − 16) for the 5-bit q.
//! - Q5_1: 32 values in 24 bytes: d, m, the high bits, the nibbles; value = d·q + m.
//! - Q8_0: 32 values in 34 bytes: d, 32 signed bytes; value = d·q.
//! - IQ4_NL: 32 values in 18 bytes: Q4_0's, but value = d·`IQ4NL_VALUES[nibble]`.
//! - Q3_K: 256 values in 110 bytes: 32 bytes of high bits (bit p of byte l for value 32p +
//!   l), 64 bytes of 2-bit lows (bits 2s of byte 32h + l for value 128h + 32s + l), 12 bytes
//!   of sixteen packed 6-bit scales (one per 16 values), d; value = d·(sc − 32)·(q − 4) for
//!   the 3-bit q.
//! - Q4_K: 256 values in 144 bytes: d, dmin, 12 bytes of packed 6-bit (scale, min) pairs for
//!   8 sub-blocks of 32, then 128 bytes of nibbles; value = d·sc·q − dmin·mn.
//! - Q5_K: 256 values in 176 bytes: Q4_K's d, dmin and scales, 32 bytes of high bits (bit
//!   2p of byte l for value 64p + l, bit 2p + 1 for value 64p + 32 + l), then Q4_K's 128
//!   bytes of nibbles; value = d·sc·q − dmin·mn for the 5-bit q.
//! - Q6_K: 256 values in 210 bytes: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs,
//!   16 signed 8-bit scales (one per 16 values), d; value = d·sc·(q − 32).

use anyhow::{bail, Result};
use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    IQ4NL,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    /// The type for a GGUF type id, or an error naming ids this engine does not read.
    pub fn from_id(id: u32) -> Result<Self> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            20 => Self::IQ4NL,
            30 => Self::BF16,
            9 | 10 | 15..=19 | 21..=29 => {
                const NAMES: [&str; 21] = [
                    "Q8_1", "Q2_K", "", "", "", "", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS",
                    "IQ1_S", "", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64",
                    "IQ1_M",
                ];
                bail!(
                    "ggml type {id} ({}) is not supported \
                     (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q3_K, Q4_K, Q5_K, \
                     Q6_K)",
                    NAMES[id as usize - 9]
                )
            }
            _ => bail!("unknown ggml type {id}"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::IQ4NL => "IQ4_NL",
            Self::Q3K => "Q3_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::IQ4NL => 32,
            Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::IQ4NL => 18,
            Self::Q3K => 110,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block_values() > 1
    }

    /// Bytes of a row of `cols` values, or None when `cols` is not whole blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_values()) {
            return None;
        }
        (cols / self.block_values()).checked_mul(self.block_bytes())
    }

    /// The WGSL variant flag of the quantized matmul kernels.
    pub fn shader_flag(self) -> Option<&'static str> {
        match self {
            Self::Q4_0 => Some("Q4_0"),
            Self::Q4_1 => Some("Q4_1"),
            Self::Q5_0 => Some("Q5_0"),
            Self::Q5_1 => Some("Q5_1"),
            Self::Q8_0 => Some("Q8_0"),
            Self::Q4K => Some("Q4_K"),
            Self::IQ4NL => Some("IQ4_NL"),
            Self::Q3K => Some("Q3_K"),
            Self::Q5K => Some("Q5_K"),
            Self::Q6K => Some("Q6_K"),
            _ => None,
        }
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Q4_K's 6-bit scale and min of sub-block `j` (0..8) from its 12 packed bytes.
pub fn q4k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// IQ4_NL's 16 levels, which its nibbles index (ggml's `kvalues_iq4nl`; shaders/iq4_nl.wgsl
/// holds the same bytes).
pub const IQ4NL_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Q3_K's 6-bit scale `i` (0..16, one per 16 values) from its 12 packed bytes: the low 4
/// bits in byte i % 8 (its high nibble for i ≥ 8), the high 2 in byte 8 + i % 4, bits 2(i / 4).
pub fn q3k_scale(s: &[u8], i: usize) -> u8 {
    ((s[i % 8] >> (4 * (i / 8))) & 15) | (((s[8 + i % 4] >> (2 * (i / 4))) & 3) << 4)
}

fn dequant_block(t: GgmlType, b: &[u8], out: &mut [f32]) {
    match t {
        GgmlType::F32 => out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => out[0] = half(b, 0),
        GgmlType::BF16 => out[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let d = half(b, 0);
            let (m, qs) = if t == GgmlType::Q4_1 {
                (half(b, 2), &b[4..20])
            } else {
                (-8.0 * d, &b[2..18])
            };
            for j in 0..16 {
                out[j] = d * (qs[j] & 0xF) as f32 + m;
                out[j + 16] = d * (qs[j] >> 4) as f32 + m;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let d = half(b, 0);
            let (m, at) = if t == GgmlType::Q5_1 {
                (half(b, 2), 4)
            } else {
                (-16.0 * d, 2)
            };
            let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            let qs = &b[at + 4..at + 20];
            let high = |j: usize| (((qh >> j) & 1) << 4) as u8;
            for j in 0..16 {
                out[j] = d * ((qs[j] & 0xF) | high(j)) as f32 + m;
                out[j + 16] = d * ((qs[j] >> 4) | high(j + 16)) as f32 + m;
            }
        }
        GgmlType::IQ4NL => {
            let d = half(b, 0);
            for j in 0..16 {
                out[j] = d * IQ4NL_VALUES[(b[2 + j] & 15) as usize] as f32;
                out[j + 16] = d * IQ4NL_VALUES[(b[2 + j] >> 4) as usize] as f32;
            }
        }
        GgmlType::Q8_0 => {
            let d = half(b, 0);
            for j in 0..32 {
                out[j] = d * (b[2 + j] as i8) as f32;
            }
        }
        GgmlType::Q4K => {
            let (d, dmin) = (half(b, 0), half(b, 2));
            let (scales, qs) = (&b[4..16], &b[16..144]);
            for pair in 0..4 {
                let (s1, m1) = q4k_scale_min(scales, 2 * pair);
                let (s2, m2) = q4k_scale_min(scales, 2 * pair + 1);
                let q = &qs[32 * pair..32 * pair + 32];
                for l in 0..32 {
                    out[64 * pair + l] = d * s1 as f32 * (q[l] & 0xF) as f32 - dmin * m1 as f32;
                    out[64 * pair + 32 + l] = d * s2 as f32 * (q[l] >> 4) as f32 - dmin * m2 as f32;
                }
            }
        }
        GgmlType::Q3K => {
            let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
            let d = half(b, 108);
            for (v, o) in out.iter_mut().enumerate() {
                let (h, s, l) = (v / 128, v % 128 / 32, v % 32);
                let low = (qs[32 * h + l] >> (2 * s)) & 3;
                let high = (hmask[l] >> (4 * h + s)) & 1;
                *o = d
                    * (q3k_scale(scales, v / 16) as f32 - 32.0)
                    * ((low | high << 2) as f32 - 4.0);
            }
        }
        GgmlType::Q5K => {
            let (d, dmin) = (half(b, 0), half(b, 2));
            let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
            for pair in 0..4 {
                let (s1, m1) = q4k_scale_min(scales, 2 * pair);
                let (s2, m2) = q4k_scale_min(scales, 2 * pair + 1);
                let q = &qs[32 * pair..32 * pair + 32];
                for l in 0..32 {
                    let h1 = ((qh[l] >> (2 * pair)) & 1) << 4;
                    let h2 = ((qh[l] >> (2 * pair + 1)) & 1) << 4;
                    out[64 * pair + l] =
                        d * s1 as f32 * ((q[l] & 0xF) | h1) as f32 - dmin * m1 as f32;
                    out[64 * pair + 32 + l] =
                        d * s2 as f32 * ((q[l] >> 4) | h2) as f32 - dmin * m2 as f32;
                }
            }
        }
        GgmlType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = half(b, 208);
            for n in 0..2 {
                let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
                let o = &mut out[128 * n..];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    o[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    o[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    o[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    o[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }
}

/// Dequantise `bytes` (whole blocks of type `t`) to f32.
pub fn dequantize(t: GgmlType, bytes: &[u8]) -> Result<Vec<f32>> {
    let (bv, bb) = (t.block_values(), t.block_bytes());
    if !bytes.len().is_multiple_of(bb) {
        bail!(
            "{} data of {} bytes is not whole blocks of {bb}",
            t.name(),
            bytes.len()
        );
    }
    let mut out = vec![0f32; bytes.len() / bb * bv];
    for (b, o) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bv)) {
        dequant_block(t, b, o);
    }
    Ok(out)
}

/// Quantise f32 values (whole blocks) to Q8_0, Q4_0 or Q4_1 the way ggml's reference code
/// does: tests and the converter round-trip through these.
pub fn quantize(t: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    let bv = t.block_values();
    if !values.len().is_multiple_of(bv) {
        bail!("{} values are not whole blocks of {bv}", values.len());
    }
    let mut out = Vec::with_capacity(values.len() / bv * t.block_bytes());
    for x in values.chunks_exact(bv) {
        match t {
            GgmlType::Q8_0 => {
                let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_bits().to_le_bytes());
                out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
            }
            GgmlType::Q4_0 => {
                let max = x
                    .iter()
                    .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_bits().to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
            }
            GgmlType::Q4_1 => {
                let min = x.iter().fold(f32::INFINITY, |a, &v| a.min(v));
                let max = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_bits().to_le_bytes());
                out.extend(f16::from_f32(min).to_bits().to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
            }
            _ => bail!("quantising to {} is not implemented", t.name()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_q4_1_q8_0_round_trip_within_their_step() {
        // Values in [-2, 2]: Q8_0's step is 2/127 (error ≤ half of it); Q4_1's is 4/15
        // (half); Q4_0's is 2/8, and the end opposite the largest magnitude is clamped to
        // 7 steps, so its error reaches one step there.
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) / 7.0)
            .collect();
        for (t, tol) in [
            (GgmlType::Q8_0, 1.0 / 127.0 + 1e-3),
            (GgmlType::Q4_0, 0.25 + 1e-3),
            (GgmlType::Q4_1, 2.0 / 15.0 + 1e-3),
        ] {
            let q = quantize(t, &x).unwrap();
            assert_eq!(q.len(), 2 * t.block_bytes());
            let y = dequantize(t, &q).unwrap();
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= tol, "{t:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn k_quant_blocks_decode_by_hand() {
        // Q4_K: d = 1, dmin = 0.5; sub-block 0 has scale 2, min 3; the first byte's nibbles
        // are 5 (value 0) and 7 (value 32, sub-block 1, scale 1, min 0).
        let mut b = vec![0u8; 144];
        b[0..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        b[4] = 2; // scale of sub-block 0
        b[5] = 1; // scale of sub-block 1
        b[8] = 3; // min of sub-block 0
        b[16] = 5 | (7 << 4);
        let y = dequantize(GgmlType::Q4K, &b).unwrap();
        assert_eq!(y[0], 2.0 * 5.0 - 0.5 * 3.0);
        assert_eq!(y[32], 7.0);
        assert_eq!(y[1], -1.5);
        // Sub-block 4 takes its high bits from byte 0: scale = (s[8] & 15) | (s[0] >> 6) << 4.
        assert_eq!(
            q4k_scale_min(&[0xC0, 0, 0, 0, 0x40, 0, 0, 0, 0x21, 0, 0, 0], 4),
            (49, 18)
        );
        // Q6_K: d = 0.25, scale[0] = −2; value 0 = 0.25 · −2 · ((3 | 1 << 4) − 32).
        let mut b = vec![0u8; 210];
        b[0] = 3;
        b[128] = 1;
        b[192] = (-2i8) as u8;
        b[208..210].copy_from_slice(&f16::from_f32(0.25).to_bits().to_le_bytes());
        let y = dequantize(GgmlType::Q6K, &b).unwrap();
        assert_eq!(y[0], 0.25 * -2.0 * (19.0 - 32.0));
    }
}
