//! `--save-keep-map out.png`: the picture the vision tower saw, with each patch drawn by
//! what pruning decided:
//! - kept to the end: full brightness, green outline;
//! - kept by the encoder stage (ARP) but dropped at decoder layer K (MMR, FastV, PoRe):
//!   half brightness, orange outline;
//! - a VisionZip contextual token that other tokens were merged into: blue outline;
//! - pruned: dimmed to a quarter.

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

pub const GREEN: [u8; 3] = [40, 220, 60];
pub const ORANGE: [u8; 3] = [255, 150, 0];
pub const BLUE: [u8; 3] = [40, 120, 255];

/// The fate of one patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Pruned,
    /// Kept by the first stage, dropped by the second.
    FirstStageOnly,
    Kept,
    /// Kept, with other tokens merged into it (VisionZip).
    Merged,
}

/// The fate of each of `n` raster patches, from the raster positions that survive the
/// first stage (None: all) and the end (`kept`), and VisionZip's merge targets.
pub fn fates(n: usize, first: Option<&[u32]>, kept: &[u32], merged: &[u32]) -> Vec<Fate> {
    let mut f = vec![Fate::Pruned; n];
    if let Some(first) = first {
        for &p in first {
            f[p as usize] = Fate::FirstStageOnly;
        }
    }
    for &p in kept {
        f[p as usize] = Fate::Kept;
    }
    for &p in merged {
        f[p as usize] = Fate::Merged;
    }
    f
}

/// Draw the map at `scale`× the model's input size.
pub fn draw(view: &RgbImage, grid: usize, fates: &[Fate], scale: u32) -> RgbImage {
    let (w, h) = view.dimensions();
    let (ow, oh) = (w * scale, h * scale);
    let cell_w = ow as f32 / grid as f32;
    let cell_h = oh as f32 / grid as f32;
    let mut out = RgbImage::new(ow, oh);
    for y in 0..oh {
        for x in 0..ow {
            let col = ((x as f32 / cell_w) as usize).min(grid - 1);
            let row = ((y as f32 / cell_h) as usize).min(grid - 1);
            let fate = fates[row * grid + col];
            let px = view.get_pixel(x / scale, y / scale).0;
            let (x0, y0) = ((col as f32 * cell_w) as u32, (row as f32 * cell_h) as u32);
            let (x1, y1) = (
                (((col + 1) as f32 * cell_w) as u32).saturating_sub(1),
                (((row + 1) as f32 * cell_h) as u32).saturating_sub(1),
            );
            let edge = x == x0 || x == x1 || y == y0 || y == y1;
            let thick = x <= x0 + 1 || x + 1 >= x1 || y <= y0 + 1 || y + 1 >= y1;
            let dim = |f: f32| Rgb(px.map(|c| (c as f32 * f) as u8));
            let color = match fate {
                Fate::Pruned => dim(0.25),
                Fate::FirstStageOnly if edge => Rgb(ORANGE),
                Fate::FirstStageOnly => dim(0.5),
                Fate::Kept if thick => Rgb(GREEN),
                Fate::Merged if thick => Rgb(BLUE),
                Fate::Kept | Fate::Merged => Rgb(px),
            };
            out.put_pixel(x, y, color);
        }
    }
    out
}

pub fn save(img: &RgbImage, path: &Path) -> Result<()> {
    img.save(path)
        .with_context(|| format!("cannot write keep map {}", path.display()))
}
