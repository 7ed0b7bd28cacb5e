//! The developer switch `VLM_RUN_PROFILE`: after a request, where each of its passes spends
//! its time, printed to stderr (only after the request, since the replays re-run residual
//! adds). Two kinds of table, grouped by kernel and grid, slowest first:
//! - `VLM_RUN_PROFILE=gpu`: device timestamps around every dispatch of each pass, the
//!   kernels in their places in one compute pass as the request runs them (or a pass per
//!   dispatch where the device has no timestamps inside passes;
//!   [`crate::gpu::TimestampWay`]), best of 3 runs of the pass by its total;
//! - `VLM_RUN_PROFILE=1` (or N > 1): each group of dispatches run alone, back to back, the
//!   decode step's N times (default 5), timed on the host. This works on every device.

use crate::gpu::{DispatchTimes, Gpu, Kernel, TimestampWay};
use crate::model::llava::EncodePass;
use anyhow::Result;
use std::time::Instant;

/// A request's passes: the vision tower, the projector, the pruning passes, the prefill
/// (after any prune layer) and a decode step.
pub struct ProfiledPasses<'a> {
    pub encode: Option<&'a EncodePass>,
    pub decoder_prune: &'a [Kernel],
    pub prefill: &'a [Kernel],
    pub decode: &'a [&'a Kernel],
}

impl ProfiledPasses<'_> {
    /// The tables for `setting` (the variable's value).
    pub fn print(&self, gpu: &Gpu, setting: &std::ffi::OsStr) -> Result<()> {
        let setting = setting.to_str().unwrap_or("");
        let way = gpu.timestamp_ways().first().copied();
        match (setting, way) {
            ("gpu", Some(way)) => return self.print_timestamps(gpu, way),
            ("gpu", None) => eprintln!(
                "{:?} has no timestamp queries: each kernel timed alone on the host instead",
                gpu.info.name
            ),
            _ => {}
        }
        let decode_reps = setting.parse().ok().filter(|&r: &usize| r > 1).unwrap_or(5);
        let table = |header: String, ks: &[&Kernel], reps: usize| -> Result<()> {
            eprintln!("{header}");
            for (l, n, t) in gpu.profile(ks, reps)? {
                eprintln!("  {l:<16} x{n:<4} {t:8.2} ms");
            }
            Ok(())
        };
        for (title, ks) in self.passes() {
            if title != DECODE {
                table(format!("{title}: {} dispatches", ks.len()), &ks, 3)?;
                continue;
            }
            let t = Instant::now();
            gpu.run(&ks)?;
            let secs = t.elapsed().as_secs_f64();
            let whole = format!("{title}: {:.2} ms, {} dispatches", secs * 1e3, ks.len());
            table(whole, &ks, decode_reps)?;
        }
        Ok(())
    }

    /// The passes that have kernels, titled.
    fn passes(&self) -> Vec<(&'static str, Vec<&Kernel>)> {
        let mut out = Vec::new();
        if let Some(ep) = self.encode {
            out.push(("vision tower", ep.tower()));
            out.push(("projector", ep.projector.iter().collect()));
        }
        let prune: Vec<&Kernel> = (self.encode.iter())
            .flat_map(|ep| ep.prune.iter().chain(&ep.prune_after))
            .chain(self.decoder_prune)
            .collect();
        if !prune.is_empty() {
            out.push(("pruning passes", prune));
        }
        out.push((
            "prefill (after any prune layer)",
            self.prefill.iter().collect(),
        ));
        out.push((DECODE, self.decode.to_vec()));
        out
    }

    fn print_timestamps(&self, gpu: &Gpu, way: TimestampWay) -> Result<()> {
        let how = match way {
            TimestampWay::InsidePass => "timestamps inside one pass",
            TimestampWay::PassPerDispatch => "a pass per dispatch, timestamps at its ends",
        };
        eprintln!("device timestamps ({how}), best of 3 runs of each pass:");
        for (title, ks) in self.passes() {
            let mut best: Option<DispatchTimes> = None;
            for _ in 0..3 {
                let t = gpu.time_dispatches(&ks, way)?;
                if best.as_ref().is_none_or(|b| t.total() < b.total()) {
                    best = Some(t);
                }
            }
            let Some(times) = best else { continue };
            eprintln!(
                "{title}: {} dispatches, {:.3} ms on the device, {:.3} ms on the host (submit to readback)",
                ks.len(),
                times.total() * 1e3,
                times.wall * 1e3
            );
            for row in by_kernel(&ks, &times.secs) {
                eprintln!(
                    "  {:<28} x{:<4} {:8.3} ms {:5.1}%  {:8.1} µs each",
                    row.kernel,
                    row.dispatches,
                    row.secs * 1e3,
                    100.0 * row.secs / times.total().max(f64::MIN_POSITIVE),
                    row.secs * 1e6 / row.dispatches as f64
                );
            }
        }
        Ok(())
    }
}

const DECODE: &str = "decode step";

/// One kernel and grid's share of a pass.
#[derive(Debug, PartialEq)]
pub struct KernelRow {
    pub kernel: String,
    pub dispatches: usize,
    pub secs: f64,
}

/// The seconds `secs` of dispatches `ks` (in the same order) summed per kernel and grid,
/// slowest first.
pub fn by_kernel(ks: &[&Kernel], secs: &[f64]) -> Vec<KernelRow> {
    let mut rows: Vec<KernelRow> = Vec::new();
    for (k, &s) in ks.iter().zip(secs) {
        let name = k.name();
        match rows.iter_mut().find(|r| r.kernel == name) {
            Some(r) => {
                r.dispatches += 1;
                r.secs += s;
            }
            None => rows.push(KernelRow {
                kernel: name,
                dispatches: 1,
                secs: s,
            }),
        }
    }
    rows.sort_by(|a, b| b.secs.total_cmp(&a.secs));
    rows
}
