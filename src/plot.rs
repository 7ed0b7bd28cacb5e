//! A small line-plot renderer for the PNGs that `eval --sweep` and `calibrate` write: axes,
//! ticks, lines with markers, an optional right-hand axis and a legend, in a built-in 5×7
//! bitmap font (upper case, digits and a few signs). No font files, no plotting crate.

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

/// One line of the plot.
pub struct Series {
    pub name: String,
    pub color: [u8; 3],
    pub points: Vec<(f64, f64)>,
    /// Plotted against the right-hand axis (dashed).
    pub right_axis: bool,
    pub markers: bool,
}

pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Label of the right-hand axis; it is drawn when a series uses it.
    pub y2_label: String,
    /// Log₂ x axis with ticks at the data's x values.
    pub x_log: bool,
    /// Fixed left-axis range; None: from the data.
    pub y_range: Option<(f64, f64)>,
    pub series: Vec<Series>,
}

/// Distinct, print-safe line colours.
pub const PALETTE: [[u8; 3]; 8] = [
    [0, 0, 0],
    [228, 26, 28],
    [55, 126, 184],
    [77, 175, 74],
    [152, 78, 163],
    [255, 127, 0],
    [166, 86, 40],
    [247, 129, 191],
];

const W: u32 = 960;
const H: u32 = 600;
const LEFT: i64 = 90;
const RIGHT: i64 = 110;
const TOP: i64 = 60;
const BOTTOM: i64 = 80;
const SCALE: i64 = 2;
const GREY: [u8; 3] = [150, 150, 150];

/// 5×7 glyphs, rows top to bottom, bit 4 = leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' | '×' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '-' | '−' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        _ => [0; 7],
    }
}

/// Width in pixels of `text` at the plot's font scale.
pub fn text_width(text: &str) -> i64 {
    text.chars().count() as i64 * 6 * SCALE
}

struct Canvas {
    img: RgbImage,
}

impl Canvas {
    fn dot(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, c: [u8; 3]) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.dot(x, y, c);
            }
        }
    }

    /// A line `width` pixels thick; `dash` > 0 draws dash-long pieces with equal gaps.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), c: [u8; 3], width: i64, dash: f64) {
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let steps = len.ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            if dash > 0.0 && (t * len / dash) as i64 % 2 == 1 {
                continue;
            }
            let x = (a.0 + (b.0 - a.0) * t).round() as i64;
            let y = (a.1 + (b.1 - a.1) * t).round() as i64;
            self.rect(x - width / 2, y - width / 2, width, width, c);
        }
    }

    fn text(&mut self, x: i64, y: i64, text: &str, c: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            let g = glyph(ch);
            let x0 = x + i as i64 * 6 * SCALE;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.rect(x0 + col * SCALE, y + row as i64 * SCALE, SCALE, SCALE, c);
                    }
                }
            }
        }
    }

    /// Text rotated a quarter turn anticlockwise, reading upwards, centred on (cx, cy).
    fn text_up(&mut self, cx: i64, cy: i64, text: &str, c: [u8; 3]) {
        let half = text_width(text) / 2;
        for (i, ch) in text.chars().enumerate() {
            let g = glyph(ch);
            let along = cy + half - i as i64 * 6 * SCALE;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let x = cx - 7 * SCALE / 2 + row as i64 * SCALE;
                        let y = along - col * SCALE;
                        self.rect(x, y - SCALE, SCALE, SCALE, c);
                    }
                }
            }
        }
    }
}

/// "Nice" tick values covering [lo, hi], about `n` of them.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= n as f64)
        .unwrap_or(10.0 * mag);
    let mut out = Vec::new();
    let mut v = (lo / step).ceil() * step;
    while v <= hi + step * 1e-9 {
        out.push(v);
        v += step;
    }
    out
}

fn label(v: f64) -> String {
    let v = if v.abs() < 1e-12 { 0.0 } else { v }; // no "-0"
    if v.abs() >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if (v * 10.0).fract().abs() < 1e-9 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn range(points: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = points.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() && hi.is_finite() {
        if hi - lo < 1e-12 {
            Some((lo - 0.5, hi + 0.5))
        } else {
            Some((lo, hi))
        }
    } else {
        None
    }
}

impl Plot {
    pub fn render(&self) -> RgbImage {
        let mut c = Canvas {
            img: RgbImage::from_pixel(W, H, Rgb([255, 255, 255])),
        };
        let (x0, x1) = (LEFT, W as i64 - RIGHT);
        let (y0, y1) = (TOP, H as i64 - BOTTOM);
        let xs = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0));
        let fx = |v: f64| if self.x_log { v.max(1e-9).log2() } else { v };
        let (xlo, xhi) = range(xs.clone().map(fx)).unwrap_or((0.0, 1.0));
        let pad = (xhi - xlo) * 0.04;
        let (xlo, xhi) = (xlo - pad, xhi + pad);
        let left_vals = self
            .series
            .iter()
            .filter(|s| !s.right_axis)
            .flat_map(|s| s.points.iter().map(|p| p.1));
        let (ylo, yhi) = self
            .y_range
            .or_else(|| range(left_vals))
            .unwrap_or((0.0, 1.0));
        let right_vals = self
            .series
            .iter()
            .filter(|s| s.right_axis)
            .flat_map(|s| s.points.iter().map(|p| p.1));
        let right = range(right_vals).map(|(_, hi)| (0.0, hi * 1.1));
        let px = |v: f64| x0 as f64 + (fx(v) - xlo) / (xhi - xlo) * (x1 - x0) as f64;
        let py = |v: f64, (lo, hi): (f64, f64)| y1 as f64 - (v - lo) / (hi - lo) * (y1 - y0) as f64;

        // Frame, grid and ticks.
        let black = [0, 0, 0];
        let light = [225, 225, 225];
        for t in ticks(ylo, yhi, 6) {
            let y = py(t, (ylo, yhi));
            c.line((x0 as f64, y), (x1 as f64, y), light, 1, 0.0);
            let s = label(t);
            c.text(x0 - 10 - text_width(&s), y as i64 - 7, &s, black);
        }
        let mut xt: Vec<f64> = if self.x_log {
            xs.collect()
        } else {
            ticks(xlo, xhi, 8)
        };
        xt.sort_by(f64::total_cmp);
        xt.dedup();
        for t in xt {
            let x = px(t);
            c.line((x, y0 as f64), (x, y1 as f64), light, 1, 0.0);
            let s = label(t);
            c.text(x as i64 - text_width(&s) / 2, y1 + 10, &s, black);
        }
        if let Some(r) = right {
            for t in ticks(r.0, r.1, 6) {
                let y = py(t, r);
                c.line((x1 as f64, y), (x1 as f64 + 6.0, y), GREY, 1, 0.0);
                c.text(x1 + 10, y as i64 - 7, &label(t), GREY);
            }
            c.text_up(W as i64 - 18, (y0 + y1) / 2, &self.y2_label, GREY);
        }
        // Frame: left and bottom axes heavier than the top and right edges.
        let (fx0, fx1, fy0, fy1) = (x0 as f64, x1 as f64, y0 as f64, y1 as f64);
        for (a, b, w) in [
            ((fx0, fy0), (fx0, fy1), 2),
            ((fx0, fy1), (fx1, fy1), 2),
            ((fx1, fy0), (fx1, fy1), 1),
            ((fx0, fy0), (fx1, fy0), 1),
        ] {
            c.line(a, b, black, w, 0.0);
        }
        c.text(
            (W as i64 - text_width(&self.title)) / 2,
            20,
            &self.title,
            black,
        );
        c.text(
            (x0 + x1 - text_width(&self.x_label)) / 2,
            H as i64 - 40,
            &self.x_label,
            black,
        );
        c.text_up(20, (y0 + y1) / 2, &self.y_label, black);

        // Lines.
        for s in &self.series {
            let axis = if s.right_axis {
                right.unwrap_or((0.0, 1.0))
            } else {
                (ylo, yhi)
            };
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .map(|&(x, y)| (px(x), py(y, axis)))
                .collect();
            let dash = if s.right_axis { 8.0 } else { 0.0 };
            for w in pts.windows(2) {
                c.line(w[0], w[1], s.color, 3, dash);
            }
            if s.markers {
                for &(x, y) in &pts {
                    c.rect(x as i64 - 4, y as i64 - 4, 9, 9, s.color);
                }
            }
        }

        // Legend, top right inside the frame, on white.
        let rows = self.series.len() as i64;
        let lw = self
            .series
            .iter()
            .map(|s| text_width(&s.name))
            .max()
            .unwrap_or(0)
            + 50;
        let (lx, ly) = (x1 - lw - 10, y0 + 10);
        c.rect(lx - 6, ly - 6, lw + 12, rows * 22 + 8, [255, 255, 255]);
        for (i, s) in self.series.iter().enumerate() {
            let y = ly + i as i64 * 22 + 7;
            let dash = if s.right_axis { 8.0 } else { 0.0 };
            c.line(
                (lx as f64, y as f64),
                (lx as f64 + 34.0, y as f64),
                s.color,
                3,
                dash,
            );
            c.text(lx + 42, y - 7, &s.name, s.color);
        }
        c.img
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.render()
            .save(path)
            .with_context(|| format!("{}: cannot write the plot", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 100.0, 5),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(ticks(91.0, 99.0, 4), vec![92.0, 94.0, 96.0, 98.0]);
    }

    #[test]
    fn lines_and_text_land_where_expected() {
        let plot = Plot {
            title: "T".into(),
            x_label: String::new(),
            y_label: String::new(),
            y2_label: String::new(),
            x_log: false,
            y_range: Some((0.0, 1.0)),
            series: vec![Series {
                name: "A".into(),
                color: [255, 0, 0],
                points: vec![(0.0, 0.5), (1.0, 0.5)],
                right_axis: false,
                markers: false,
            }],
        };
        let img = plot.render();
        // The series is a horizontal red line halfway up the frame.
        let mid_y = ((TOP + H as i64 - BOTTOM) / 2) as u32;
        assert_eq!(img.get_pixel(W / 2, mid_y).0, [255, 0, 0]);
        // The title's "T" has its top bar centred at the top.
        let tx = (W as i64 - text_width("T")) / 2;
        assert_eq!(img.get_pixel(tx as u32, 20).0, [0, 0, 0]);
        assert_eq!(
            img.get_pixel(tx as u32, 20 + 2 * SCALE as u32).0,
            [255, 255, 255]
        );
    }
}
