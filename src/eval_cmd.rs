//! `vlm-run eval`: load the model once, answer every question with a progress bar, print
//! accuracy; with `--sweep`, every method at every budget, written as sweep.md/.csv/.png.

use crate::cli::EvalArgs;
use anyhow::{bail, Context, Result};
use std::io::IsTerminal;
use vlm_run::eval::{self, Question, Report};
use vlm_run::{Engine, GenerateOptions, Method};

fn bar(n: usize, label: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(n as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>18} {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_prefix(label.to_string());
    b
}

/// Run `configs` over the questions with one progress bar, and print each report.
fn evaluate(
    engine: &Engine,
    questions: &[Question],
    configs: &[GenerateOptions],
    args: &EvalArgs,
) -> Result<Vec<Report>> {
    let label = match configs {
        [one] => match one.prune.keep {
            Some(b) => format!("{} B={b}", one.prune.method),
            None => one.prune.method.to_string(),
        },
        _ => format!("{} configurations", configs.len()),
    };
    let pb = bar(questions.len() * configs.len(), &label, args.json);
    let (mut right, mut done) = (0usize, 0usize);
    let verbose = args.verbose;
    let reports = eval::run(engine, questions, configs, &mut |c, q, reply, ok| {
        pb.inc(1);
        if c == 0 {
            right += ok as usize;
            done += 1;
            pb.set_message(format!(
                "{:.1}% ({})",
                100.0 * right as f64 / done as f64,
                configs[0].prune.method
            ));
        }
        if verbose {
            pb.suspend(|| {
                eprintln!(
                    "{} [{} {}] {} | {} -> {:?} (expected {:?})",
                    if ok { "ok  " } else { "MISS" },
                    configs[c].prune.method,
                    configs[c]
                        .prune
                        .keep
                        .map_or("all".into(), |b| b.to_string()),
                    q.image.display(),
                    q.question,
                    reply.trim(),
                    q.answer
                )
            });
        }
    })?;
    pb.finish_and_clear();
    for report in &reports {
        if args.json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            print!("{}", eval::summary(report));
        }
    }
    Ok(reports)
}

pub fn run(args: &EvalArgs) -> Result<()> {
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let mut questions = eval::load_questions(&args.data, args.images.as_deref())?;
    if let Some(n) = args.limit {
        if n == 0 {
            bail!("--limit must be at least 1");
        }
        questions.truncate(n);
    }
    if let Some(q) = questions.iter().find(|q| !q.image.is_file()) {
        bail!(
            "{}: image not found (give the images folder with --images)",
            q.image.display()
        );
    }
    let prune = args.prune.options();
    prune.validate()?;
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| crate::repo_path(crate::cli::DEFAULT_MODEL));
    let engine = crate::load(Some(&model), args.mmproj.as_deref(), args.json)?;
    if engine.model.vision.is_none() {
        bail!(
            "{} has no vision encoder: give its --mmproj file",
            model.display()
        );
    }
    let base = GenerateOptions {
        max_tokens: args.max_tokens,
        template: args.template.clone(),
        prune: prune.clone(),
        ..Default::default()
    };
    if !args.json {
        println!(
            "model {} on {}: {} questions from {}",
            model.display(),
            engine.gpu.describe(),
            questions.len(),
            args.data.display()
        );
    }
    if !args.sweep {
        evaluate(&engine, &questions, std::slice::from_ref(&base), args)?;
        return Ok(());
    }

    // The sweep: unpruned, then every method at every budget below N (at B = N every
    // method keeps every token, which is the unpruned run). All configurations share one
    // vision-tower run per image.
    let n = engine.model.visual_tokens();
    let budgets = if args.budgets.is_empty() {
        eval::sweep_budgets(n)
    } else {
        args.budgets.clone()
    };
    if let Some(&b) = budgets.iter().find(|&&b| b == 0 || b > n) {
        bail!("--budgets: {b} is outside 1..={n} visual tokens");
    }
    let mut configs = vec![GenerateOptions {
        prune: vlm_run::PruneOptions {
            method: Method::None,
            keep: None,
            ..prune.clone()
        },
        ..base.clone()
    }];
    let methods: Vec<Method> = args
        .methods
        .iter()
        .copied()
        .filter(|&m| m != Method::None)
        .collect();
    // A budget a method cannot reach on this decoder (a decoder-side method whose first K
    // layers alone exceed B on average) is left out of the sweep and shown as "–".
    let layers = engine.model.llm.cfg.num_hidden_layers;
    let mut cells = Vec::new();
    for &method in &methods {
        for &b in &budgets {
            if b == n {
                cells.push((method, b, false));
                continue;
            }
            let mut opts = base.clone();
            opts.prune.method = method;
            opts.prune.keep = Some(b);
            if let Err(e) = opts.prune.plan(n, layers) {
                let e = format!("{e:#}");
                if !e.contains("out of reach") {
                    bail!(e);
                }
                if !args.json {
                    eprintln!("{method} B={b}: left out: {e}");
                }
                continue;
            }
            configs.push(opts);
            cells.push((method, b, true));
        }
    }
    let mut reports = evaluate(&engine, &questions, &configs, args)?.into_iter();
    let none = reports.next().context("no unpruned report")?;
    let mut rows = Vec::new();
    for (method, b, ran) in cells {
        let mut r = if ran {
            reports.next().context("missing report")?
        } else {
            none.clone()
        };
        r.method = method.to_string();
        r.budget = b;
        rows.push(r);
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the folder", args.out.display()))?;
    let md = eval::sweep_markdown(&none, &rows, &budgets);
    let write = |name: &str, text: &str| -> Result<()> {
        let p = args.out.join(name);
        std::fs::write(&p, text).with_context(|| format!("{}: cannot write", p.display()))
    };
    write("sweep.md", &md)?;
    write("sweep.csv", &eval::sweep_csv(&none, &rows))?;
    eval::sweep_plot(&none, &rows, &budgets).save(&args.out.join("sweep.png"))?;
    if !args.json {
        println!("\naccuracy (retention vs unpruned):\n{md}");
        println!(
            "wrote {0}/sweep.md, {0}/sweep.csv and {0}/sweep.png",
            args.out.display()
        );
    }
    Ok(())
}
