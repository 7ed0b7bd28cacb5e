//! Image preprocessing as llava-hf's CLIPImageProcessor does it: RGB, resize the shortest
//! edge (bicubic, PIL's fixed-point two-pass resampler with antialiasing, so the uint8
//! picture matches HF's bit for bit), centre crop, rescale and normalise. `--pad-square`
//! first pads to a square with the mean colour, centred, as original LLaVA does.

use crate::model::config::PreprocessorConfig;
use anyhow::{bail, Context, Result};
use image::RgbImage;
use std::path::Path;

/// Decode an image file into RGB, with errors that name the file.
pub fn load(path: &Path) -> Result<RgbImage> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    let img = image::load_from_memory(&bytes)
        .with_context(|| format!("{}: not a readable image", path.display()))?;
    if img.width() == 0 || img.height() == 0 {
        bail!(
            "{}: image is empty ({}x{})",
            path.display(),
            img.width(),
            img.height()
        );
    }
    Ok(img.to_rgb8())
}

/// Pad to a square with `color`, centred (LLaVA's expand2square).
pub fn pad_square(img: &RgbImage, color: [u8; 3]) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == h {
        return img.clone();
    }
    let s = w.max(h);
    let mut out = RgbImage::from_pixel(s, s, image::Rgb(color));
    let (x0, y0) = ((s - w) / 2, (s - h) / 2);
    image::imageops::replace(&mut out, img, x0 as i64, y0 as i64);
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// For each output index: first input index, and fixed-point weights.
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let s = v * (1i64 << PRECISION_BITS) as f64;
                    (if s < 0.0 { s - 0.5 } else { s + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize like PIL's `Image.resize(size, BICUBIC)`: horizontal pass, then vertical, each
/// rounding to uint8. Sums are i32 as in PIL: 255 times the weights' absolute sum (under
/// 1.3 · 2^22) stays below 2^31.
pub fn resize_bicubic(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut cur: Vec<u8> = img.as_raw().clone();
    let mut cw = iw as usize;
    let half = 1i32 << (PRECISION_BITS - 1);
    if w != cw {
        let co = coefficients(cw, w);
        let mut out = vec![0u8; w * ih as usize * 3];
        let (src, co) = (&cur, &co);
        on_row_bands(&mut out, w * 3, |y0, band| {
            let rows = src[y0 * cw * 3..].chunks_exact(cw * 3);
            for (row, orow) in rows.zip(band.chunks_exact_mut(w * 3)) {
                for (o, (x0, k)) in orow.chunks_exact_mut(3).zip(co) {
                    let px = &row[x0 * 3..(x0 + k.len()) * 3];
                    let mut acc = [half; 3];
                    for (p, &kw) in px.chunks_exact(3).zip(k) {
                        for c in 0..3 {
                            acc[c] += p[c] as i32 * kw;
                        }
                    }
                    for c in 0..3 {
                        o[c] = clip8(acc[c]);
                    }
                }
            }
        });
        cur = out;
        cw = w;
    }
    if h != ih as usize {
        let co = coefficients(ih as usize, h);
        let stride = cw * 3;
        let mut out = vec![0u8; stride * h];
        let (src, co) = (&cur, &co);
        on_row_bands(&mut out, stride, |first, band| {
            let mut acc = vec![0i32; stride];
            for (orow, (y0, k)) in band.chunks_exact_mut(stride).zip(&co[first..]) {
                acc.fill(half);
                for (i, &kw) in k.iter().enumerate() {
                    let row = &src[(y0 + i) * stride..(y0 + i + 1) * stride];
                    for (a, &p) in acc.iter_mut().zip(row) {
                        *a += p as i32 * kw;
                    }
                }
                for (o, &a) in orow.iter_mut().zip(&acc) {
                    *o = clip8(a);
                }
            }
        });
        cur = out;
    }
    RgbImage::from_raw(w as u32, h as u32, cur).expect("sizes agree")
}

/// Run `f(first_row, rows)` over bands of `out`'s rows of `stride` bytes, one band per core
/// (preprocessing runs before the GPU has work, so the cores are free).
fn on_row_bands(out: &mut [u8], stride: usize, f: impl Fn(usize, &mut [u8]) + Sync) {
    if out.is_empty() || stride == 0 {
        return;
    }
    let rows = out.len() / stride;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = rows.div_ceil(cores.clamp(1, 8)).max(1);
    std::thread::scope(|s| {
        for (i, band) in out.chunks_mut(per * stride).enumerate() {
            let f = &f;
            s.spawn(move || f(i * per, band));
        }
    });
}

/// Resize (shortest edge) and centre-crop to the model's square input, as uint8.
pub fn resize_and_crop(img: &RgbImage, shortest_edge: usize, crop: (usize, usize)) -> RgbImage {
    let (w, h) = img.dimensions();
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (shortest_edge as f64 * long as f64 / short as f64) as u32;
    let (nw, nh) = if w <= h {
        (shortest_edge as u32, new_long)
    } else {
        (new_long, shortest_edge as u32)
    };
    let resized = resize_bicubic(img, nw, nh);
    let (ch, cw) = (crop.0 as u32, crop.1 as u32);
    // HF's centre crop: offsets rounded down; pads with zeros if the image is smaller.
    let top = (nh as i64 - ch as i64).div_euclid(2);
    let left = (nw as i64 - cw as i64).div_euclid(2);
    let mut out = RgbImage::new(cw, ch);
    for y in 0..ch as i64 {
        for x in 0..cw as i64 {
            let (sx, sy) = (x + left, y + top);
            if sx >= 0 && sy >= 0 && sx < nw as i64 && sy < nh as i64 {
                out.put_pixel(x as u32, y as u32, *resized.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

/// The model's input: f32 [3, size, size], rescaled and normalised.
pub fn normalize(img: &RgbImage, cfg: &PreprocessorConfig) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let n = (w * h) as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            let v = (p[c] as f64 * cfg.rescale_factor) as f32;
            out[c * n + i] = (v - cfg.image_mean[c]) / cfg.image_std[c];
        }
    }
    out
}

/// Everything from a decoded image to the pixel tensor of a `size`-pixel model.
pub fn preprocess(
    img: &RgbImage,
    cfg: &PreprocessorConfig,
    size: usize,
    pad: bool,
) -> Result<Vec<f32>> {
    Ok(normalize(&model_view(img, cfg, size, pad)?, cfg))
}

/// The uint8 picture the vision tower sees: padded (optionally), resized and cropped.
pub fn model_view(
    img: &RgbImage,
    cfg: &PreprocessorConfig,
    size: usize,
    pad: bool,
) -> Result<RgbImage> {
    let padded;
    let img = if pad {
        let mean = cfg
            .image_mean
            .map(|m| (m * 255.0).round().clamp(0.0, 255.0) as u8);
        padded = pad_square(img, mean);
        &padded
    } else {
        img
    };
    let crop = cfg.crop(size);
    if crop != (size, size) {
        bail!("crop size {crop:?} differs from the vision tower's image size {size}");
    }
    let edge = cfg.shortest_edge(size);
    Ok(resize_and_crop(img, edge, crop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(500, 336), (280, 336), (7, 3), (3, 7)] {
            for (_, k) in coefficients(i, o) {
                let s: i64 = k.iter().map(|&v| v as i64).sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}: {s}"
                );
            }
        }
    }

    /// The resampler as PIL writes it, pixel by pixel in i64: what `resize_bicubic`'s
    /// row-wise i32 passes must reproduce bit for bit.
    fn resize_reference(img: &RgbImage, w: usize, h: usize) -> Vec<u8> {
        let (iw, ih) = (img.width() as usize, img.height() as usize);
        let px =
            |v: &[u8], stride: usize, x: usize, y: usize, c: usize| v[(y * stride + x) * 3 + c];
        let half = 1i64 << (PRECISION_BITS - 1);
        let clip = |v: i64| (v >> PRECISION_BITS).clamp(0, 255) as u8;
        let mut tmp = vec![0u8; w * ih * 3];
        let co = coefficients(iw, w);
        for y in 0..ih {
            for (x, (x0, k)) in co.iter().enumerate() {
                for c in 0..3 {
                    let s: i64 = k
                        .iter()
                        .enumerate()
                        .map(|(i, &kw)| px(img.as_raw(), iw, x0 + i, y, c) as i64 * kw as i64)
                        .sum();
                    tmp[(y * w + x) * 3 + c] = clip(half + s);
                }
            }
        }
        let mut out = vec![0u8; w * h * 3];
        for (y, (y0, k)) in coefficients(ih, h).iter().enumerate() {
            for x in 0..w {
                for c in 0..3 {
                    let s: i64 = k
                        .iter()
                        .enumerate()
                        .map(|(i, &kw)| px(&tmp, w, x, y0 + i, c) as i64 * kw as i64)
                        .sum();
                    out[(y * w + x) * 3 + c] = clip(half + s);
                }
            }
        }
        out
    }

    #[test]
    fn resize_matches_the_pixel_by_pixel_resampler() {
        // extremes (0 and 255 next to each other) drive the sums to their largest
        let img = RgbImage::from_fn(37, 23, |x, y| {
            let v = if (x * 7 + y * 3) % 5 < 2 {
                255
            } else {
                (x * 31 + y * 17) as u8
            };
            image::Rgb([v, 255 - v, ((x ^ y) * 40) as u8])
        });
        for (w, h) in [(336, 200), (11, 7), (37, 50), (20, 23), (5, 3)] {
            let got = resize_bicubic(&img, w as u32, h as u32);
            assert_eq!(got.as_raw(), &resize_reference(&img, w, h), "{w}x{h}");
        }
    }

    #[test]
    fn same_size_resize_is_identity_and_pad_centres() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 10, y as u8 * 20, 7]));
        assert_eq!(resize_bicubic(&img, 5, 3), img);
        let sq = pad_square(&img, [1, 2, 3]);
        assert_eq!(sq.dimensions(), (5, 5));
        assert_eq!(sq.get_pixel(0, 0).0, [1, 2, 3]);
        assert_eq!(sq.get_pixel(2, 1).0, img.get_pixel(2, 0).0);
    }
}
