//! `distill compare`: the paired comparison of two arms of finished runs (one run directory per
//! seed), for studies run as separate commands, such as the text recipes.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use crate::stats::{mean, paired_diff, sample_std, PairedDiff};
use crate::train::RunRecord;

/// Options of `distill compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Run directories of the control arm (e.g. students trained on labels alone), one per seed.
    #[arg(long, num_args = 1.., required = true)]
    pub control: Vec<PathBuf>,
    /// Run directories of the treatment arm (e.g. distilled students), one per seed; paired with
    /// the control run of the same seed.
    #[arg(long, num_args = 1.., required = true)]
    pub treatment: Vec<PathBuf>,
    /// Name of the control arm in the table.
    #[arg(long, default_value = "control")]
    pub control_name: String,
    /// Name of the treatment arm in the table.
    #[arg(long, default_value = "treatment")]
    pub treatment_name: String,
    /// Print one JSON object instead of the Markdown table.
    #[arg(long)]
    pub json: bool,
}

/// One arm: its runs' seeds and final evaluation accuracies.
#[derive(Debug, Serialize)]
struct Arm {
    name: String,
    seeds: Vec<u64>,
    accuracies: Vec<f64>,
    mean: f64,
    std: f64,
    seconds: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Comparison {
    control: Arm,
    treatment: Arm,
    /// Treatment minus control, per seed, in accuracy points (fractions x 100).
    paired_points: PairedDiff,
    verdict: &'static str,
}

fn arm(name: &str, dirs: &[PathBuf]) -> anyhow::Result<Arm> {
    let records = dirs
        .iter()
        .map(|d| RunRecord::read(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let accuracies: Vec<f64> = records.iter().map(RunRecord::final_accuracy).collect();
    Ok(Arm {
        name: name.to_string(),
        seeds: records.iter().map(|r| r.seed).collect(),
        mean: mean(&accuracies),
        std: sample_std(&accuracies),
        accuracies,
        seconds: records.iter().map(RunRecord::seconds).collect(),
    })
}

/// `distill compare`.
pub fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    if args.control.len() != args.treatment.len() {
        bail!(
            "--control names {} runs but --treatment {}; pair one run of each arm per seed",
            args.control.len(),
            args.treatment.len()
        );
    }
    let control = arm(&args.control_name, &args.control)?;
    let mut treatment = arm(&args.treatment_name, &args.treatment)?;
    // Pair by seed, whatever order the directories were given in.
    let mut order = Vec::new();
    for &seed in &control.seeds {
        let Some(j) = treatment.seeds.iter().position(|&s| s == seed) else {
            bail!(
                "the control run of seed {seed} has no treatment run of the same seed (treatment seeds: {:?})",
                treatment.seeds
            );
        };
        order.push(j);
    }
    treatment.seeds = order.iter().map(|&j| treatment.seeds[j]).collect();
    treatment.accuracies = order.iter().map(|&j| treatment.accuracies[j]).collect();
    treatment.seconds = order.iter().map(|&j| treatment.seconds[j]).collect();
    let points = |xs: &[f64]| xs.iter().map(|x| 100.0 * x).collect::<Vec<_>>();
    let paired = paired_diff(&points(&treatment.accuracies), &points(&control.accuracies))?;
    let verdict = match (paired.is_gain(), paired.is_loss()) {
        (Some(true), _) => "gain (the 95% interval lies above zero)",
        (_, Some(true)) => "loss (the 95% interval lies below zero)",
        (Some(false), _) => "no clear difference (the 95% interval contains zero)",
        _ => "one seed: no interval, no verdict",
    };
    let comparison = Comparison {
        control,
        treatment,
        paired_points: paired,
        verdict,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        print!("{}", markdown(&comparison));
    }
    Ok(())
}

fn markdown(c: &Comparison) -> String {
    let mut out = String::from("| arm | seeds | accuracy (mean ± std) | per seed | minutes per run |\n|---|---|---|---|---|\n");
    for arm in [&c.control, &c.treatment] {
        let per_seed: Vec<String> = arm
            .accuracies
            .iter()
            .map(|a| format!("{:.2}", 100.0 * a))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {:.2} ± {:.2}% | {} | {:.1} |\n",
            arm.name,
            arm.seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            100.0 * arm.mean,
            100.0 * arm.std,
            per_seed.join(", "),
            mean(&arm.seconds) / 60.0
        ));
    }
    let d = &c.paired_points;
    let interval = d
        .ci95
        .map(|[lo, hi]| format!("[{lo:+.2}, {hi:+.2}]"))
        .unwrap_or_else(|| "n/a".into());
    out.push_str(&format!(
        "\n{} − {}, paired over {} seeds: {:+.2} points (std {:.2}), 95% interval {interval}: {}\n",
        c.treatment.name, c.control.name, d.n, d.mean, d.std, c.verdict
    ));
    out
}
