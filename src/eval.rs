//! `vlm-run eval`: accuracy on a visual-QA file, per category, with and without pruning.
//!
//! Two question formats, told apart per line:
//! - this repo's synthetic VQA (`scripts/vqa/make_dataset.py`):
//!   `{"image","question","answer","category"[,"top"]}`, the image path relative to the file.
//!   The first sentence of the reply, lower-cased and without punctuation, must equal the
//!   answer.
//! - POPE (`{"question_id","image","text","label"[,"category"]}`, images in `--images DIR`).
//!   Scored as LLaVA's eval_pope: the first sentence decides, and a reply with the word
//!   "no" or "not" means no.

use crate::{Engine, GenerateOptions};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq)]
pub enum Scoring {
    /// Exact match of the normalised first sentence.
    Exact,
    /// LLaVA's POPE rule: yes unless the first sentence has "no" or "not".
    Pope,
}

#[derive(Clone, Debug)]
pub struct Question {
    pub image: PathBuf,
    pub question: String,
    pub answer: String,
    pub category: String,
    /// Asks about an object in the top third of the image (synthetic set).
    pub top: bool,
    pub scoring: Scoring,
}

/// Read a JSONL question file. Relative image paths resolve against `images` when given,
/// else against the file's folder.
pub fn load_questions(path: &Path, images: Option<&Path>) -> Result<Vec<Question>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the question file", path.display()))?;
    let base = match images {
        Some(d) => d.to_path_buf(),
        None => path.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", where_()))?;
        let field = |k: &str| -> Result<String> {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{}: no string field {k:?}", where_()))
        };
        let image = base.join(field("image")?);
        let q = if v.get("label").is_some() && v.get("text").is_some() {
            let label = field("label")?.to_lowercase();
            if label != "yes" && label != "no" {
                bail!("{}: POPE label must be yes or no, got {label:?}", where_());
            }
            Question {
                image,
                question: field("text")?,
                answer: label,
                category: field("category").unwrap_or_else(|_| "pope".into()),
                top: false,
                scoring: Scoring::Pope,
            }
        } else {
            Question {
                image,
                question: field("question")?,
                answer: normalise(&field("answer")?),
                category: field("category").unwrap_or_else(|_| "all".into()),
                top: v.get("top").and_then(|x| x.as_bool()).unwrap_or(false),
                scoring: Scoring::Exact,
            }
        };
        out.push(q);
    }
    if out.is_empty() {
        bail!("{}: no questions", path.display());
    }
    Ok(out)
}

fn first_sentence(reply: &str) -> &str {
    let line = reply.trim().lines().next().unwrap_or("");
    match line.find('.') {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Lower case, punctuation dropped, single spaces.
pub fn normalise(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// LLaVA eval_pope's reading of a reply.
pub fn pope_answer(reply: &str) -> &'static str {
    let s = first_sentence(reply).replace(',', "");
    if s.split(' ').any(|w| w == "No" || w == "no" || w == "not") {
        "no"
    } else {
        "yes"
    }
}

/// Is `reply` right for `q`?
pub fn correct(q: &Question, reply: &str) -> bool {
    match q.scoring {
        Scoring::Exact => normalise(first_sentence(reply)) == q.answer,
        Scoring::Pope => pope_answer(reply) == q.answer,
    }
}

/// Right answers out of questions asked.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tally {
    pub right: usize,
    pub total: usize,
}

impl Tally {
    pub fn accuracy(&self) -> f64 {
        self.right as f64 / self.total.max(1) as f64
    }
    fn add(&mut self, ok: bool) {
        self.right += ok as usize;
        self.total += 1;
    }
}

/// One configuration's results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub method: String,
    pub budget: usize,
    pub overall: Tally,
    pub categories: BTreeMap<String, Tally>,
    /// Questions about objects in the image's top third.
    pub top: Tally,
    /// POPE extras over yes/no questions: precision, recall and F1 of "yes", share of yes.
    pub pope: Option<PopeStats>,
    /// Means per question: visual tokens entering the decoder, average visual tokens per
    /// decoder layer, and prefill FLOPs (encoder + projector + decoder). `seconds`: time
    /// spent in this configuration's requests (the vision tower counts where it ran: in the
    /// first configuration of each image).
    pub mean_visual_in: f64,
    pub mean_visual_per_layer: f64,
    pub mean_flops: f64,
    pub mean_decoder_flops: f64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PopeStats {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub yes_ratio: f64,
}

fn pope_stats(pairs: &[(bool, bool)]) -> PopeStats {
    // (predicted yes, label yes)
    let tp = pairs.iter().filter(|p| p.0 && p.1).count() as f64;
    let fp = pairs.iter().filter(|p| p.0 && !p.1).count() as f64;
    let fnn = pairs.iter().filter(|p| !p.0 && p.1).count() as f64;
    let precision = tp / (tp + fp).max(1.0);
    let recall = tp / (tp + fnn).max(1.0);
    PopeStats {
        precision,
        recall,
        f1: 2.0 * precision * recall / (precision + recall).max(1e-12),
        yes_ratio: pairs.iter().filter(|p| p.0).count() as f64 / pairs.len().max(1) as f64,
    }
}

/// Answer every question under every configuration and score the replies: one report per
/// configuration. Questions run in order, each under all configurations in turn, so that the
/// vision tower runs once per image (`reuse_vision`). `on_done(config, question, reply, ok)`
/// is called after each answer (progress).
pub fn run(
    engine: &Engine,
    questions: &[Question],
    configs: &[GenerateOptions],
    on_done: &mut dyn FnMut(usize, &Question, &str, bool),
) -> Result<Vec<Report>> {
    let n_vis = engine.model.visual_tokens();
    let mut reports: Vec<Report> = configs
        .iter()
        .map(|o| Report {
            method: o.prune.method.to_string(),
            budget: o.prune.keep.unwrap_or(n_vis),
            ..Default::default()
        })
        .collect();
    let configs: Vec<GenerateOptions> = configs
        .iter()
        .map(|o| GenerateOptions {
            reuse_vision: true,
            ..o.clone()
        })
        .collect();
    let mut image: Option<(PathBuf, image::RgbImage)> = None;
    let mut pope = vec![Vec::new(); configs.len()];
    let layers = engine.model.llm.cfg.num_hidden_layers as f64;
    for q in questions {
        if image.as_ref().map(|(p, _)| p != &q.image).unwrap_or(true) {
            image = Some((q.image.clone(), crate::image::load(&q.image)?));
        }
        let img = &image.as_ref().expect("image loaded above").1;
        for (c, opts) in configs.iter().enumerate() {
            let t = std::time::Instant::now();
            let out = engine.generate(Some(img), &q.question, opts, &mut |_| {})?;
            let report = &mut reports[c];
            report.seconds += t.elapsed().as_secs_f64();
            let ok = correct(q, &out.text);
            report.overall.add(ok);
            report
                .categories
                .entry(q.category.clone())
                .or_default()
                .add(ok);
            if q.top {
                report.top.add(ok);
            }
            if q.scoring == Scoring::Pope {
                pope[c].push((pope_answer(&out.text) == "yes", q.answer == "yes"));
            }
            let text_rows = out.prompt_tokens - out.visual_tokens;
            let per_layer: f64 = out
                .tokens_per_layer
                .iter()
                .map(|&n| n.saturating_sub(text_rows) as f64)
                .sum::<f64>()
                / layers;
            let f = &out.flops;
            report.mean_visual_in += out.visual_tokens_kept as f64;
            report.mean_visual_per_layer += per_layer;
            report.mean_flops += (f.encoder + f.projector + f.decoder) as f64;
            report.mean_decoder_flops += f.decoder as f64;
            on_done(c, q, &out.text, ok);
        }
    }
    let n = questions.len().max(1) as f64;
    for (report, pope) in reports.iter_mut().zip(&pope) {
        report.mean_visual_in /= n;
        report.mean_visual_per_layer /= n;
        report.mean_flops /= n;
        report.mean_decoder_flops /= n;
        if !pope.is_empty() {
            report.pope = Some(pope_stats(pope));
        }
    }
    Ok(reports)
}

/// The sweep's budgets for N visual tokens: 576/192/128/64 scaled by N/576.
pub fn sweep_budgets(n: usize) -> Vec<usize> {
    [576usize, 192, 128, 64]
        .iter()
        .map(|b| ((b * n) as f64 / 576.0).round().max(1.0) as usize)
        .collect()
}

fn pct(v: f64) -> String {
    format!("{:.1}", 100.0 * v)
}

/// The sweep as a markdown table: accuracy and retention (÷ unpruned) per method and budget.
pub fn sweep_markdown(none: &Report, rows: &[Report], budgets: &[usize]) -> String {
    let mut s = String::new();
    s.push_str("| method |");
    for b in budgets {
        s.push_str(&format!(" B={b} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(budgets.len()));
    s.push('\n');
    let base = none.overall.accuracy();
    s.push_str(&format!("| none | {} (100%) |", pct(base)));
    s.push_str(&" |".repeat(budgets.len().saturating_sub(1)));
    s.push('\n');
    let mut methods: Vec<&str> = rows.iter().map(|r| r.method.as_str()).collect();
    methods.dedup();
    for m in methods {
        s.push_str(&format!("| {m} |"));
        for b in budgets {
            match rows.iter().find(|r| r.method == m && r.budget == *b) {
                Some(r) => {
                    let a = r.overall.accuracy();
                    s.push_str(&format!(" {} ({}%) |", pct(a), pct(a / base.max(1e-12))));
                }
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}

/// The sweep as CSV: one row per (method, budget), with per-category accuracies.
pub fn sweep_csv(none: &Report, rows: &[Report]) -> String {
    let cats: Vec<&String> = none.categories.keys().collect();
    let mut s = String::from(
        "method,budget,accuracy,retention,top_accuracy,visual_in,visual_per_layer,\
         decoder_gflop,total_gflop,seconds",
    );
    for c in &cats {
        s.push_str(&format!(",acc_{c}"));
    }
    s.push('\n');
    let base = none.overall.accuracy().max(1e-12);
    for r in std::iter::once(none).chain(rows) {
        s.push_str(&format!(
            "{},{},{:.4},{:.4},{:.4},{:.1},{:.1},{:.4},{:.4},{:.1}",
            r.method,
            r.budget,
            r.overall.accuracy(),
            r.overall.accuracy() / base,
            r.top.accuracy(),
            r.mean_visual_in,
            r.mean_visual_per_layer,
            r.mean_decoder_flops / 1e9,
            r.mean_flops / 1e9,
            r.seconds
        ));
        for c in &cats {
            let a = r
                .categories
                .get(*c)
                .map(Tally::accuracy)
                .unwrap_or(f64::NAN);
            s.push_str(&format!(",{a:.4}"));
        }
        s.push('\n');
    }
    s
}

/// Accuracy against the budget per method, with total prefill GFLOP on the right axis.
pub fn sweep_plot(none: &Report, rows: &[Report], budgets: &[usize]) -> crate::plot::Plot {
    use crate::plot::{Series, PALETTE};
    let mut series = Vec::new();
    let mut methods: Vec<&str> = rows.iter().map(|r| r.method.as_str()).collect();
    methods.dedup();
    let full = budgets.iter().copied().max().unwrap_or(none.budget);
    for (i, m) in methods.iter().enumerate() {
        let mut points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.method == *m)
            .map(|r| (r.budget as f64, 100.0 * r.overall.accuracy()))
            .collect();
        if !points.iter().any(|p| p.0 as usize == full) {
            points.push((full as f64, 100.0 * none.overall.accuracy()));
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        series.push(Series {
            name: m.to_string(),
            color: PALETTE[(i + 1) % PALETTE.len()],
            points,
            right_axis: false,
            markers: true,
        });
    }
    // FLOPs per budget, averaged over the methods (they are equal by the budget convention).
    let mut flops: Vec<(f64, f64)> = budgets
        .iter()
        .map(|&b| {
            let at: Vec<f64> = rows
                .iter()
                .filter(|r| r.budget == b)
                .map(|r| r.mean_flops)
                .collect();
            let mean = if at.is_empty() {
                none.mean_flops
            } else {
                at.iter().sum::<f64>() / at.len() as f64
            };
            (b as f64, mean / 1e9)
        })
        .collect();
    flops.sort_by(|a, b| a.0.total_cmp(&b.0));
    series.push(Series {
        name: "GFLOP (right)".into(),
        color: [120, 120, 120],
        points: flops,
        right_axis: true,
        markers: false,
    });
    let lo = rows
        .iter()
        .chain(std::iter::once(none))
        .map(|r| 100.0 * r.overall.accuracy())
        .fold(100.0f64, f64::min);
    crate::plot::Plot {
        title: "accuracy vs visual tokens kept".into(),
        x_label: "budget B (visual tokens per decoder layer)".into(),
        y_label: "accuracy %".into(),
        y2_label: "prefill GFLOP".into(),
        x_log: true,
        y_range: Some(((lo - 5.0).floor().max(0.0), 100.0)),
        series,
    }
}

/// Text lines for one report: overall, top-third and per-category accuracy.
pub fn summary(r: &Report) -> String {
    let mut s = format!(
        "{} B={}: accuracy {:.2}% ({}/{})",
        r.method,
        r.budget,
        100.0 * r.overall.accuracy(),
        r.overall.right,
        r.overall.total
    );
    if r.top.total > 0 {
        s.push_str(&format!(
            ", top-third objects {:.2}% ({}/{})",
            100.0 * r.top.accuracy(),
            r.top.right,
            r.top.total
        ));
    }
    if let Some(p) = &r.pope {
        s.push_str(&format!(
            ", precision {:.3} recall {:.3} F1 {:.3} yes {:.1}%",
            p.precision,
            p.recall,
            p.f1,
            100.0 * p.yes_ratio
        ));
    }
    s.push_str(&format!(
        "; {:.0} visual tokens in, {:.1} per layer, {:.3} GFLOP, {:.0} s\n",
        r.mean_visual_in,
        r.mean_visual_per_layer,
        r.mean_flops / 1e9,
        r.seconds
    ));
    for (c, t) in &r.categories {
        s.push_str(&format!(
            "  {c:<10} {:6.2}%  ({}/{})\n",
            100.0 * t.accuracy(),
            t.right,
            t.total
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pope_rule_follows_llava() {
        assert_eq!(pope_answer("No, there is no dog."), "no");
        assert_eq!(pope_answer("Yes, there is a dog."), "yes");
        assert_eq!(pope_answer("There is not a dog in the image"), "no");
        // Only the first sentence counts.
        assert_eq!(pope_answer("Yes. No dog though."), "yes");
        // Whole words only: "nothing", "Norway" are not "no".
        assert_eq!(pope_answer("Nothing suggests Norway"), "yes");
    }

    #[test]
    fn exact_scoring_normalises_the_first_sentence() {
        let q = Question {
            image: PathBuf::new(),
            question: String::new(),
            answer: normalise("top left"),
            category: "position".into(),
            top: false,
            scoring: Scoring::Exact,
        };
        assert!(correct(&q, " Top left."));
        assert!(correct(&q, "top  left. It is red."));
        assert!(!correct(&q, "top right"));
        assert!(!correct(&q, "top left corner"));
    }

    #[test]
    fn both_question_formats_load() {
        let dir = std::env::temp_dir().join(format!("vlm-run-eval-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q.jsonl");
        std::fs::write(
            &path,
            "{\"question_id\": 1, \"image\": \"COCO_val2014_000000310196.jpg\", \
             \"text\": \"Is there a snowboard in the image?\", \"label\": \"yes\"}\n\n\
             {\"image\": \"images/a.png\", \"question\": \"Where is the star?\", \
             \"answer\": \"Top left\", \"category\": \"position\", \"top\": true}\n",
        )
        .unwrap();
        let qs = load_questions(&path, Some(Path::new("/coco/val2014"))).unwrap();
        assert_eq!(qs.len(), 2);
        assert_eq!(qs[0].scoring, Scoring::Pope);
        assert_eq!(qs[0].answer, "yes");
        assert_eq!(qs[0].category, "pope");
        assert_eq!(
            qs[0].image,
            Path::new("/coco/val2014/COCO_val2014_000000310196.jpg")
        );
        assert_eq!(qs[1].scoring, Scoring::Exact);
        assert_eq!(qs[1].answer, "top left");
        assert!(qs[1].top);
        let bad = dir.join("bad.jsonl");
        std::fs::write(
            &bad,
            "{\"image\": \"a.png\", \"text\": \"?\", \"label\": \"maybe\"}\n",
        )
        .unwrap();
        let err = load_questions(&bad, None).unwrap_err().to_string();
        assert!(
            err.contains("bad.jsonl:1: POPE label must be yes or no"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn budgets_scale_with_the_token_count() {
        assert_eq!(sweep_budgets(576), vec![576, 192, 128, 64]);
        assert_eq!(sweep_budgets(256), vec![256, 85, 57, 28]);
    }
}
