//! Image preprocessing as llava-hf's CLIPImageProcessor does it: RGB, resize the shortest
//! edge (bicubic, PIL's fixed-point two-pass resampler with antialiasing, so the uint8
//! picture matches HF's bit for bit), centre crop, rescale and normalise. `--pad-square`
//! first pads to a square with the mean colour, centred, as original LLaVA does.

use crate::model::config::PreprocessorConfig;
use anyhow::{bail, Context, Result};
use image::RgbImage;
use std::ops::Range;
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

/// The colour original LLaVA pads with: the mean, `int(x * 255)` per channel (truncated:
/// (122, 116, 104) for CLIP's mean).
pub fn pad_colour(cfg: &PreprocessorConfig) -> [u8; 3] {
    cfg.image_mean
        .map(|m| (m as f64 * 255.0).clamp(0.0, 255.0) as u8)
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

/// Output index `xx`'s first input index and fixed-point weights, for a resize of
/// `in_size` to `out_size` samples.
fn coefficient(in_size: usize, out_size: usize, xx: usize) -> (usize, Vec<i32>) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
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
}

/// The coefficients of output indices `range`.
fn coefficients(in_size: usize, out_size: usize, range: Range<usize>) -> Vec<(usize, Vec<i32>)> {
    range.map(|xx| coefficient(in_size, out_size, xx)).collect()
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A picture to resample: an image, optionally centred on a square of `fill` (LLaVA's
/// expand2square), which is drawn a row at a time and never stored whole, so that a
/// 1 × 20000 image padded costs rows of 20000 pixels, not 20000².
struct Source<'a> {
    img: &'a RgbImage,
    /// The picture's size, and where the image sits in it.
    w: usize,
    h: usize,
    x0: usize,
    y0: usize,
    fill: [u8; 3],
}

impl<'a> Source<'a> {
    fn plain(img: &'a RgbImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        Self {
            img,
            w,
            h,
            x0: 0,
            y0: 0,
            fill: [0; 3],
        }
    }

    /// The image padded to a square, as [`pad_square`] draws it.
    fn padded(img: &'a RgbImage, fill: [u8; 3]) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let s = w.max(h);
        Self {
            img,
            w: s,
            h: s,
            x0: (s - w) / 2,
            y0: (s - h) / 2,
            fill,
        }
    }

    /// The image's columns within the picture.
    fn image_cols(&self) -> Range<usize> {
        self.x0..self.x0 + self.img.width() as usize
    }

    /// Row `y` of the image, if the picture's row `y` holds one.
    fn image_row(&self, y: usize) -> Option<&[u8]> {
        let stride = self.img.width() as usize * 3;
        let iy = y
            .checked_sub(self.y0)
            .filter(|&iy| iy < self.img.height() as usize)?;
        Some(&self.img.as_raw()[iy * stride..(iy + 1) * stride])
    }

    /// A row of the picture that holds only `fill`.
    fn fill_row(&self) -> Vec<u8> {
        self.fill.repeat(self.w)
    }
}

/// One pass of PIL's resampler along a row: output pixels `co` of `row` into `out`.
fn resample_row(row: &[u8], co: &[(usize, Vec<i32>)], out: &mut [u8]) {
    let half = 1i32 << (PRECISION_BITS - 1);
    for (o, (x0, k)) in out.chunks_exact_mut(3).zip(co) {
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

/// The window `cols` × `rows` of `src` resized to `w` × `h` as PIL's
/// `Image.resize((w, h), BICUBIC)` does it: a horizontal pass, then a vertical one, each
/// rounding to uint8, with i32 sums as in PIL (255 times the weights' absolute sum, under
/// 1.3 · 2^22, stays below 2^31). Each output pixel depends on its own coefficients alone,
/// so the window comes out bit for bit as it does in the whole resized picture, at the cost
/// of the window: the horizontal pass runs over the source rows the window's rows read, and
/// an output pixel whose taps see only the padding takes the padding row's value.
fn resample(src: &Source, w: usize, h: usize, cols: Range<usize>, rows: Range<usize>) -> Vec<u8> {
    let out_w = cols.len();
    let stride = out_w * 3;
    if out_w == 0 || rows.is_empty() {
        return Vec::new();
    }
    // the source rows the vertical pass reads, and its coefficients relative to them
    let (src_rows, vco) = if h != src.h {
        let co = coefficients(src.h, h, rows.clone());
        let first = co[0].0;
        let last = co.iter().map(|(y0, k)| y0 + k.len()).max().unwrap_or(first);
        let rel: Vec<_> = co.into_iter().map(|(y0, k)| (y0 - first, k)).collect();
        (first..last, Some(rel))
    } else {
        (rows.clone(), None)
    };
    // horizontal pass over those rows, the window's columns only
    let hco = (w != src.w).then(|| coefficients(src.w, w, cols.clone()));
    let fill = src.fill_row();
    let fill_out = {
        let mut o = vec![0u8; stride];
        match &hco {
            Some(co) => resample_row(&fill, co, &mut o),
            None => o.copy_from_slice(&fill[cols.start * 3..cols.end * 3]),
        }
        o
    };
    let image_cols = src.image_cols();
    let mut tmp = vec![0u8; stride * src_rows.len()];
    on_row_bands(&mut tmp, stride, |first, band| {
        let mut padded = fill.clone();
        for (i, o) in band.chunks_exact_mut(stride).enumerate() {
            let Some(img_row) = src.image_row(src_rows.start + first + i) else {
                o.copy_from_slice(&fill_out);
                continue;
            };
            // the picture's row: the image's own where it spans the picture
            let row = if img_row.len() == padded.len() {
                img_row
            } else {
                padded[image_cols.start * 3..image_cols.end * 3].copy_from_slice(img_row);
                &padded
            };
            match &hco {
                Some(co) => {
                    o.copy_from_slice(&fill_out);
                    // only the pixels whose taps reach the image differ from the fill's
                    let from = co.partition_point(|(x0, k)| x0 + k.len() <= image_cols.start);
                    let to = co.partition_point(|(x0, _)| *x0 < image_cols.end);
                    if from < to {
                        resample_row(row, &co[from..to], &mut o[from * 3..to * 3]);
                    }
                }
                None => o.copy_from_slice(&row[cols.start * 3..cols.end * 3]),
            }
        }
    });
    let Some(vco) = vco else {
        return tmp;
    };
    // vertical pass
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; stride * rows.len()];
    let (tmp, vco) = (&tmp, &vco);
    on_row_bands(&mut out, stride, |first, band| {
        let mut acc = vec![0i32; stride];
        for (orow, (y0, k)) in band.chunks_exact_mut(stride).zip(&vco[first..]) {
            acc.fill(half);
            for (i, &kw) in k.iter().enumerate() {
                let row = &tmp[(y0 + i) * stride..(y0 + i + 1) * stride];
                for (a, &p) in acc.iter_mut().zip(row) {
                    *a += p as i32 * kw;
                }
            }
            for (o, &a) in orow.iter_mut().zip(&acc) {
                *o = clip8(a);
            }
        }
    });
    out
}

/// Resize like PIL's `Image.resize(size, BICUBIC)`: a horizontal pass, then a vertical one,
/// each rounding to uint8, with i32 sums as PIL has them.
pub fn resize_bicubic(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (w, h) = (w as usize, h as usize);
    let out = resample(&Source::plain(img), w, h, 0..w, 0..h);
    RgbImage::from_raw(w as u32, h as u32, out).expect("sizes agree")
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
    crop_resized(&Source::plain(img), shortest_edge, crop)
}

/// HF's resize of the shortest edge to `shortest_edge` and centre crop to `crop` (height,
/// width), computing only the pixels the crop keeps: a picture of extreme aspect ratio
/// (1 × 20000 pixels resizes to 336 × 6 720 000) costs the crop, not the resized picture.
fn crop_resized(src: &Source, shortest_edge: usize, crop: (usize, usize)) -> RgbImage {
    let (w, h) = (src.w, src.h);
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // at most 2^32 - 1 pixels long: past that the cast saturates; only the crop is computed
    let new_long = (shortest_edge as f64 * long as f64 / short as f64) as u32 as usize;
    let (nw, nh) = if w <= h {
        (shortest_edge, new_long)
    } else {
        (new_long, shortest_edge)
    };
    let (ch, cw) = crop;
    // HF's centre crop: offsets rounded down; pads with zeros if the image is smaller.
    let top = (nh as i64 - ch as i64).div_euclid(2);
    let left = (nw as i64 - cw as i64).div_euclid(2);
    let clamp = |v: i64, n: usize| v.clamp(0, n as i64) as usize;
    let cols = clamp(left, nw)..clamp(left + cw as i64, nw);
    let rows = clamp(top, nh)..clamp(top + ch as i64, nh);
    let window = resample(src, nw, nh, cols.clone(), rows.clone());
    let mut out = RgbImage::new(cw as u32, ch as u32);
    let stride = cols.len() * 3;
    if stride > 0 {
        let (dx, dy) = (cols.start as i64 - left, rows.start as i64 - top);
        for (i, row) in window.chunks_exact(stride).enumerate() {
            let o = ((dy as usize + i) * cw + dx as usize) * 3;
            out.as_mut()[o..o + stride].copy_from_slice(row);
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
    let src = if pad {
        Source::padded(img, pad_colour(cfg))
    } else {
        Source::plain(img)
    };
    cfg.validate(size)?;
    Ok(crop_resized(&src, cfg.shortest_edge(size), (size, size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(500, 336), (280, 336), (7, 3), (3, 7)] {
            for (_, k) in coefficients(i, o, 0..o) {
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
        let co = coefficients(iw, w, 0..w);
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
        for (y, (y0, k)) in coefficients(ih, h, 0..h).iter().enumerate() {
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

    /// HF's order, materialised: pad (optionally), resize the whole picture, then crop.
    fn crop_of_whole(img: &RgbImage, pad: Option<[u8; 3]>, edge: usize, crop: usize) -> RgbImage {
        let img = pad.map_or_else(|| img.clone(), |c| pad_square(img, c));
        let (w, h) = (img.width() as usize, img.height() as usize);
        let long = (edge as f64 * w.max(h) as f64 / w.min(h) as f64) as usize;
        let (nw, nh) = if w <= h { (edge, long) } else { (long, edge) };
        let whole = resize_bicubic(&img, nw as u32, nh as u32);
        let (top, left) = (
            (nh as i64 - crop as i64).div_euclid(2),
            (nw as i64 - crop as i64).div_euclid(2),
        );
        RgbImage::from_fn(crop as u32, crop as u32, |x, y| {
            let (sx, sy) = (x as i64 + left, y as i64 + top);
            if sx >= 0 && sy >= 0 && sx < nw as i64 && sy < nh as i64 {
                *whole.get_pixel(sx as u32, sy as u32)
            } else {
                image::Rgb([0, 0, 0])
            }
        })
    }

    #[test]
    fn the_crop_alone_matches_the_crop_of_the_whole_resized_picture() {
        // wide, tall, square, one pixel thin, extreme aspect ratios (1 x 2000 resizes to
        // 16 x 32000), pictures smaller than the crop (zero padding), padded and not
        let pic = |w: u32, h: u32| {
            RgbImage::from_fn(w, h, |x, y| {
                let v = if (x * 7 + y * 3) % 5 < 2 {
                    255
                } else {
                    (x * 31 + y * 17) as u8
                };
                image::Rgb([v, 255 - v, ((x ^ y) * 40) as u8])
            })
        };
        let fill = [120, 7, 250];
        for (w, h, edge, crop) in [
            (37, 23, 16, 16),
            (23, 37, 16, 14),
            (40, 40, 17, 17),
            (1, 2000, 16, 16),
            (2000, 3, 16, 16),
            (60, 9, 31, 31),
            (5, 4, 12, 16),
            (3, 3, 8, 10),
        ] {
            let img = pic(w, h);
            for pad in [None, Some(fill)] {
                let want = crop_of_whole(&img, pad, edge, crop);
                let src = match pad {
                    None => Source::plain(&img),
                    Some(c) => Source::padded(&img, c),
                };
                let got = crop_resized(&src, edge, (crop, crop));
                assert_eq!(got, want, "{w}x{h} edge {edge} crop {crop} pad {pad:?}");
            }
        }
        // the thinnest picture at LLaVA's sizes, whose whole resize would hold 6.7 G pixels
        let thin = pic(1, 20000);
        let got = crop_resized(&Source::plain(&thin), 336, (336, 336));
        assert_eq!(got.dimensions(), (336, 336));
        let padded = crop_resized(&Source::padded(&thin, fill), 336, (336, 336));
        assert_eq!(
            padded.get_pixel(0, 0).0,
            fill,
            "the padding's colour at the corner"
        );
    }

    #[test]
    fn pads_with_llavas_truncated_mean() {
        let cfg = PreprocessorConfig::for_size(336);
        assert_eq!(pad_colour(&cfg), [122, 116, 104]);
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
